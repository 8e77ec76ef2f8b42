//! The middle page: what a scanned code opens, resolved at scan time.
//!
//! | route | for | answer |
//! | --- | --- | --- |
//! | `GET /m/{request_id}` | people | an HTML landing page built from the params (escaped) as the tenant's `landing` settings say (title, accent colour, logo, which params under which labels, a button into its app), or a `302` to the tenant's target the params name (`"target": "listing"`) |
//! | `GET /v1/scene/{request_id}` | mini-programs (the `scene` they were opened with) | the params as JSON |
//!
//! People get friendly pages for unknown (404), expired (410) and unavailable (503) codes;
//! programs get `application/problem+json`. Resolution goes through the tiered lookup of
//! [`bindings::Bindings`] and never writes; each scan's event goes to [`scans`], never in
//! the scan's way.
//!
//! Caching: a bound code's answer carries an `ETag` of its version and `Cache-Control:
//! private, no-cache`, so a browser may keep it but asks again (a `304` when unchanged), and a
//! change or revocation is seen at the next scan. Unknown and unavailable answers are
//! `no-store`: the code may be bound, or the store back, a moment later. `HEAD` answers as
//! `GET` without the body.
//!
//! A bound code's page and scene are rendered once per version and kept (by id, version and
//! kind, up to [`RENDERED_BYTES`]): a herd scanning one poster gets the same bytes, and a
//! change, being a new version, is rendered afresh. Each serving thread also keeps the last
//! few hundred answers it sent, so that a herd on one code does not even touch the shared
//! cache.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use metrics::Counter;
use moka::future::Cache;
use serde::Serialize;

use bindings::{Bindings, ScanCache};
use records::{Binding, RequestId, ScanKind, TargetTemplate};
use scans::ScanEvents;
use service::{Problem, ScanRoute};

/// Redirect targets by tenant, then by name (the `targets` settings, checked at start).
pub type Targets = BTreeMap<String, BTreeMap<String, TargetTemplate>>;

/// Reads the `targets` settings; they were validated at start, so none is dropped here
/// unless it is unreadable, which is logged.
pub fn targets(settings: &BTreeMap<String, BTreeMap<String, String>>) -> Targets {
    settings
        .iter()
        .map(|(tenant, named)| {
            let templates = named
                .iter()
                .filter_map(|(name, text)| match TargetTemplate::parse(text) {
                    Ok(template) => Some((name.clone(), template)),
                    Err(error) => {
                        tracing::error!(%tenant, %name, %error, "skipping a redirect target");
                        None
                    }
                })
                .collect();
            (tenant.clone(), templates)
        })
        .collect()
}

/// How each tenant's landing page looks (the `landing` settings, checked at start).
pub type Landings = BTreeMap<String, config::LandingSettings>;

/// What the scan routes share.
pub struct MiddlePage {
    bindings: Bindings,
    /// `None` when `scans.enabled` is off.
    scans: Option<ScanEvents>,
    targets: Targets,
    landings: Landings,
    /// The content security policy of each tenant's landing page that carries an accent
    /// colour (its style block's hash); the others get the default one.
    policies: HashMap<String, HeaderValue>,
    rendered: ScanCache<RenderedKey, Rendered>,
    /// Tells this page's answers from another's in the per-thread copies (tests run several
    /// pages, with other settings, in one process).
    instance: u64,
}

/// Most bytes of rendered answers kept.
const RENDERED_BYTES: u64 = 32 * 1024 * 1024;
/// A rendered answer not asked for this long is dropped (its code has gone quiet).
const RENDERED_IDLE: Duration = Duration::from_secs(600);

/// Most answers a serving thread keeps for itself (see [`MiddlePage::rendered`]).
const RECENT_PER_THREAD: usize = 256;

thread_local! {
    /// The answers this thread sent last, by page instance and key. A key names a version, so
    /// a copy here is never stale; when full, the map is emptied and fills again.
    static RECENT: RefCell<HashMap<(u64, RenderedKey), Rendered, foldhash::fast::RandomState>> =
        RefCell::default();
}

/// Which answer of which version of which code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RenderedKey {
    id: RequestId,
    version: u32,
    kind: AnswerKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AnswerKind {
    Landing,
    Scene,
}

impl AnswerKind {
    fn content_type(self) -> &'static str {
        match self {
            AnswerKind::Landing => "text/html; charset=utf-8",
            AnswerKind::Scene => "application/json",
        }
    }
}

/// A bound code's answer, ready to send: its entity tag and body, and for a page its
/// content security policy.
#[derive(Debug, Clone)]
struct Rendered {
    etag: HeaderValue,
    body: Bytes,
    policy: Option<HeaderValue>,
}

/// The style block of a landing page with an accent colour (`#rrggbb`, checked at start):
/// what the page carries and what its policy hashes, byte for byte.
fn accent_style(accent: &str) -> String {
    format!("h1.accent{{color:{accent}}}a.button.accent{{background:{accent}}}")
}

impl std::fmt::Debug for MiddlePage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiddlePage")
            .field("tenants_with_targets", &self.targets.len())
            .finish_non_exhaustive()
    }
}

impl MiddlePage {
    pub fn new(
        bindings: Bindings,
        scans: Option<ScanEvents>,
        targets: Targets,
        landings: Landings,
    ) -> Arc<Self> {
        let rendered = Cache::builder()
            .weigher(|_: &RenderedKey, rendered: &Rendered| {
                u32::try_from(rendered.body.len()).unwrap_or(u32::MAX)
            })
            .max_capacity(RENDERED_BYTES)
            .time_to_idle(RENDERED_IDLE)
            .build_with_hasher(foldhash::fast::RandomState::default());
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let policies = landings
            .iter()
            .filter_map(|(tenant, landing)| {
                let style = accent_style(landing.accent.as_deref()?);
                Some((
                    tenant.clone(),
                    service::page::content_security_policy(&[&style]),
                ))
            })
            .collect();
        Arc::new(MiddlePage {
            bindings,
            scans,
            targets,
            landings,
            policies,
            rendered,
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
        })
    }
}

const LANDING: &str = "/m/{request_id}";
const SCENE: &str = "/v1/scene/{request_id}";

pub fn router(page: Arc<MiddlePage>) -> Router {
    Router::new()
        .route(LANDING, get(landing))
        .route(SCENE, get(scene))
        .with_state(page)
}

/// The same routes for [`service::Front`], which answers scans before the router.
pub fn scan_routes(page: &Arc<MiddlePage>) -> Vec<ScanRoute> {
    let landing_page = Arc::clone(page);
    let scene_page = Arc::clone(page);
    vec![
        ScanRoute {
            prefix: "/m/",
            pattern: LANDING,
            answer: Arc::new(move |id, request, peer| {
                let page = Arc::clone(&landing_page);
                Box::pin(
                    async move { answer_landing(&page, &id, &request.into_parts().0, peer).await },
                )
            }),
        },
        ScanRoute {
            prefix: "/v1/scene/",
            pattern: SCENE,
            answer: Arc::new(move |id, request, peer| {
                let page = Arc::clone(&scene_page);
                Box::pin(
                    async move { answer_scene(&page, &id, &request.into_parts().0, peer).await },
                )
            }),
        },
    ]
}

/// The URL a binding sends scanners to: its `target` param names one of its tenant's
/// templates, filled from its params. `None` (the landing page) otherwise, and when the
/// template cannot be filled (counted).
fn redirect_target(targets: &Targets, binding: &Binding) -> Option<String> {
    let name = binding.params.as_map().get("target")?.as_str()?;
    let url = targets
        .get(binding.tenant.as_str())
        .and_then(|named| named.get(name))
        .and_then(|template| template.fill(&binding.params));
    if url.is_none() {
        metrics::counter!("middle_page_targets_unresolved_total").increment(1);
        tracing::debug!(request_id = %binding.request_id, target = name, "target not found or not fillable; landing page instead");
    }
    url
}

/// What a scan found.
enum Resolved {
    Bound(Arc<Binding>),
    Unknown,
    Expired,
    Unavailable,
}

impl Resolved {
    fn outcome(&self) -> &'static str {
        match self {
            Resolved::Bound(_) => "bound",
            Resolved::Unknown => "unknown",
            Resolved::Expired => "expired",
            Resolved::Unavailable => "unavailable",
        }
    }
}

/// Resolves a scan and records its event (off the scan's path: see [`scans`]).
async fn scan(
    page: &MiddlePage,
    request_id: &str,
    request: &Parts,
    peer: Option<IpAddr>,
) -> Resolved {
    // Malformed ids are probes, not scans of a code: counted in the resolve metric only.
    let Ok(id) = RequestId::parse(request_id) else {
        count_resolve("malformed");
        return Resolved::Unknown;
    };
    let resolved = resolve(&page.bindings, id).await;
    // A `HEAD` is a link checker or a preview, not a person scanning.
    if let Some(scans) = &page.scans
        && request.method != Method::HEAD
    {
        let mut scan = scans.scan(
            ScanKind::Code,
            request_id.to_owned(),
            resolved.outcome(),
            request,
            peer,
        );
        if let Resolved::Bound(binding) = &resolved {
            scan.tenant = Some(binding.tenant.as_str().to_owned());
            scan.tags = binding.tags.clone();
        }
        scans.record(scan);
    }
    resolved
}

/// The peer of a request the router answers (the front puts it there).
fn peer_of(request: &Parts) -> Option<IpAddr> {
    request
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

async fn resolve(bindings: &Bindings, id: RequestId) -> Resolved {
    let resolved = match bindings.resolve(id).await {
        // The clock is read only for a binding that can expire: most never do.
        Ok(Some(binding)) if binding.expires_at.is_some() && binding.is_expired(Utc::now()) => {
            Resolved::Expired
        }
        Ok(Some(binding)) => Resolved::Bound(binding),
        Ok(None) => Resolved::Unknown,
        Err(error) => {
            tracing::error!(error = %error, "resolving a scan failed");
            Resolved::Unavailable
        }
    };
    count_resolve(resolved.outcome());
    resolved
}

/// What `middle_page_resolves_total` counts by.
const OUTCOMES: [&str; 5] = ["bound", "unknown", "expired", "unavailable", "malformed"];

/// Counts a resolve; the handles are found once, not built from labels per scan (that showed
/// in the scan path's profile).
fn count_resolve(outcome: &str) {
    static RESOLVES: LazyLock<[Counter; 5]> = LazyLock::new(|| {
        OUTCOMES
            .map(|outcome| metrics::counter!("middle_page_resolves_total", "outcome" => outcome))
    });
    if let Some(index) = OUTCOMES.iter().position(|known| *known == outcome) {
        RESOLVES[index].increment(1);
    }
}

#[derive(Template)]
#[template(path = "landing.html")]
struct Landing<'a> {
    request_id: String,
    title: &'a str,
    /// The style block of the tenant's accent colour (see [`accent_style`]).
    accent_style: Option<String>,
    logo_url: Option<&'a str>,
    fields: Vec<(String, String)>,
    button: Option<(&'a str, String)>,
}

impl<'a> Landing<'a> {
    /// The page of `binding` as its tenant's `landing` settings want it.
    fn of(
        binding: &Binding,
        settings: Option<&'a config::LandingSettings>,
        targets: &Targets,
    ) -> Self {
        let text = |value: &serde_json::Value| match value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let params = binding.params.as_map();
        let label = |name: &str| {
            settings
                .and_then(|s| s.labels.get(name))
                .map_or_else(|| name.to_owned(), Clone::clone)
        };
        let fields = match settings.and_then(|s| s.fields.as_ref()) {
            Some(names) => names
                .iter()
                .filter_map(|name| Some((label(name), text(params.get(name)?))))
                .collect(),
            None => params
                .iter()
                .map(|(name, value)| (label(name), text(value)))
                .collect(),
        };
        let button = settings.and_then(|s| {
            let url = targets
                .get(binding.tenant.as_str())?
                .get(s.button_target.as_deref()?)?
                .fill(&binding.params)?;
            Some((s.button_label.as_deref().unwrap_or("Open"), url))
        });
        Landing {
            request_id: binding.request_id.to_string(),
            title: settings
                .and_then(|s| s.title.as_deref())
                .unwrap_or("Welcome"),
            accent_style: settings.and_then(|s| s.accent.as_deref()).map(accent_style),
            logo_url: settings.and_then(|s| s.logo_url.as_deref()),
            fields,
            button,
        }
    }
}

#[derive(Template)]
#[template(path = "unknown.html")]
struct UnknownPage;

#[derive(Template)]
#[template(path = "expired.html")]
struct ExpiredPage;

#[derive(Template)]
#[template(path = "unavailable.html")]
struct UnavailablePage;

/// Bound answers may be kept by the scanner's browser, but must be asked for again.
const REVALIDATE: &str = "private, no-cache";
/// Answers that may change any moment (not bound yet, store unavailable).
const NO_STORE: &str = "no-store";

/// The version of a binding as an entity tag: a change makes a new one.
fn etag(binding: &Binding) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}.{}\"", binding.request_id, binding.version))
        .unwrap_or(HeaderValue::from_static("\"\""))
}

/// `304 Not Modified` when the scanner already holds this version.
fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> Option<Response> {
    let held = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?;
    let current = etag.to_str().ok()?;
    held.split(',')
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == current || tag == "*")
        .then(|| {
            (
                StatusCode::NOT_MODIFIED,
                [
                    (header::ETAG, etag.clone()),
                    (header::CACHE_CONTROL, HeaderValue::from_static(REVALIDATE)),
                ],
            )
                .into_response()
        })
}

fn with_cache_headers(
    mut response: Response,
    cache: &'static str,
    etag: Option<HeaderValue>,
) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Some(etag) = etag {
        headers.insert(header::ETAG, etag);
    }
    response
}

async fn landing(
    State(page): State<Arc<MiddlePage>>,
    Path(request_id): Path<String>,
    request: Request,
) -> Response {
    let parts = request.into_parts().0;
    answer_landing(&page, &request_id, &parts, peer_of(&parts)).await
}

#[tracing::instrument(name = "scan", level = "debug", skip_all)]
async fn answer_landing(
    page: &MiddlePage,
    request_id: &str,
    request: &Parts,
    peer: Option<IpAddr>,
) -> Response {
    match scan(page, request_id, request, peer).await {
        Resolved::Bound(binding) => {
            if let Some(url) = redirect_target(&page.targets, &binding)
                && let Ok(location) = HeaderValue::from_str(&url)
            {
                return (
                    StatusCode::FOUND,
                    [
                        (header::LOCATION, location),
                        (header::CACHE_CONTROL, HeaderValue::from_static(REVALIDATE)),
                    ],
                )
                    .into_response();
            }
            let rendered = page
                .rendered(&binding, AnswerKind::Landing, || {
                    Landing::of(
                        &binding,
                        page.landings.get(binding.tenant.as_str()),
                        &page.targets,
                    )
                    .render()
                    .map(Bytes::from)
                    .map_err(|error| error.to_string())
                })
                .await;
            answer_rendered(&request.headers, AnswerKind::Landing, rendered)
        }
        Resolved::Unknown => with_cache_headers(
            page_response(StatusCode::NOT_FOUND, UnknownPage.render()),
            NO_STORE,
            None,
        ),
        Resolved::Expired => with_cache_headers(
            page_response(StatusCode::GONE, ExpiredPage.render()),
            REVALIDATE,
            None,
        ),
        Resolved::Unavailable => {
            let mut response = with_cache_headers(
                page_response(StatusCode::SERVICE_UNAVAILABLE, UnavailablePage.render()),
                NO_STORE,
                None,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
            response
        }
    }
}

impl MiddlePage {
    /// `binding`'s answer of `kind`, rendered by `render` unless this version's is kept.
    async fn rendered(
        &self,
        binding: &Binding,
        kind: AnswerKind,
        render: impl FnOnce() -> Result<Bytes, String>,
    ) -> Result<Rendered, String> {
        let key = RenderedKey {
            id: binding.request_id,
            version: binding.version,
            kind,
        };
        // This thread's copy first: the shared cache costs several times as much (its
        // bookkeeping is shared by every thread), and a herd asks for one answer over and over.
        let recent = RECENT.with_borrow(|recent| recent.get(&(self.instance, key)).cloned());
        if let Some(rendered) = recent {
            return Ok(rendered);
        }
        let rendered = match self.rendered.get(&key).await {
            Some(rendered) => rendered,
            None => {
                // Two scans racing here both render: harmless, the answers are the same.
                let policy = (kind == AnswerKind::Landing).then(|| {
                    self.policies
                        .get(binding.tenant.as_str())
                        .cloned()
                        .unwrap_or_else(service::page::default_policy)
                });
                let rendered = Rendered {
                    etag: etag(binding),
                    body: render()?,
                    policy,
                };
                self.rendered.insert(key, rendered.clone()).await;
                rendered
            }
        };
        RECENT.with_borrow_mut(|recent| {
            if recent.len() >= RECENT_PER_THREAD {
                recent.clear();
            }
            recent.insert((self.instance, key), rendered.clone());
        });
        Ok(rendered)
    }
}

/// A bound code's answer: `304` when the scanner holds this version, else the body.
fn answer_rendered(
    headers: &HeaderMap,
    kind: AnswerKind,
    rendered: Result<Rendered, String>,
) -> Response {
    let rendered = match rendered {
        Ok(rendered) => rendered,
        Err(error) => {
            tracing::error!(%error, "rendering an answer failed");
            return (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong.").into_response();
        }
    };
    if let Some(response) = not_modified(headers, &rendered.etag) {
        return response;
    }
    // Built in place: the scan path's most common answer, without the intermediate maps of
    // `IntoResponse` for a tuple.
    let mut response = Response::new(Body::from(rendered.body));
    let headers = response.headers_mut();
    // Room for all of them at once (ours, and the request id the observing layer adds):
    // growing the map mid-way rehashes it, a sixth of a scan's header work (callgrind).
    headers.reserve(8);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(kind.content_type()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(REVALIDATE));
    headers.insert(header::ETAG, rendered.etag);
    if let Some(policy) = rendered.policy {
        service::page::add_security_headers(headers, policy);
    }
    response
}

fn page_response(status: StatusCode, rendered: askama::Result<String>) -> Response {
    match rendered {
        Ok(html) => {
            let mut response = (status, Html(html)).into_response();
            service::page::add_security_headers(
                response.headers_mut(),
                service::page::default_policy(),
            );
            response
        }
        Err(error) => {
            tracing::error!(%error, "rendering a page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong.").into_response()
        }
    }
}

/// What a mini-program middle page needs to show the listing.
#[derive(Serialize)]
struct Scene<'a> {
    request_id: RequestId,
    params: &'a records::Params,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

async fn scene(
    State(page): State<Arc<MiddlePage>>,
    Path(request_id): Path<String>,
    request: Request,
) -> Response {
    let parts = request.into_parts().0;
    answer_scene(&page, &request_id, &parts, peer_of(&parts)).await
}

async fn answer_scene(
    page: &MiddlePage,
    request_id: &str,
    request: &Parts,
    peer: Option<IpAddr>,
) -> Response {
    match scan(page, request_id, request, peer).await {
        Resolved::Bound(binding) => {
            let rendered = page
                .rendered(&binding, AnswerKind::Scene, || {
                    serde_json::to_vec(&Scene {
                        request_id: binding.request_id,
                        params: &binding.params,
                        created_at: binding.created_at,
                        expires_at: binding.expires_at,
                    })
                    .map(Bytes::from)
                    .map_err(|error| error.to_string())
                })
                .await;
            answer_rendered(&request.headers, AnswerKind::Scene, rendered)
        }
        Resolved::Unknown => {
            with_cache_headers(Problem::not_found("code").into_response(), NO_STORE, None)
        }
        Resolved::Expired => with_cache_headers(
            Problem::new(StatusCode::GONE, "about:blank", "Gone")
                .with_detail("this code has expired")
                .into_response(),
            REVALIDATE,
            None,
        ),
        Resolved::Unavailable => with_cache_headers(
            Problem::unavailable("the binding store is unavailable").into_response(),
            NO_STORE,
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use records::{Params, ParamsLimits, Tenant};

    fn landings(title: &str) -> Landings {
        let settings = config::LandingSettings {
            title: Some(title.to_owned()),
            ..config::LandingSettings::default()
        };
        Landings::from([("acme".to_owned(), settings)])
    }

    async fn page_text(page: &MiddlePage, id: &str) -> String {
        let (parts, ()) = axum::http::Request::get(format!("/m/{id}"))
            .body(())
            .expect("a request")
            .into_parts();
        let response = answer_landing(page, id, &parts, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a body");
        String::from_utf8_lossy(&body).into_owned()
    }

    /// The per-thread copies are told apart by page: two pages with other settings, answering
    /// the same code on one thread, each send their own.
    #[tokio::test(flavor = "current_thread")]
    async fn pages_with_other_settings_keep_their_own_answers_on_one_thread() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut settings = config::Settings::default();
        settings.embedded.data_dir = dir.path().to_owned();
        let bindings = Bindings::connect(&settings).await.expect("the store");
        let params = Params::parse(
            serde_json::json!({"listing": "L-1"}),
            &ParamsLimits::default(),
        )
        .expect("params");
        let binding = Binding {
            v: Binding::LAYOUT,
            request_id: RequestId::generate(),
            tenant: Tenant::parse("acme").expect("a tenant"),
            params,
            content: String::new(),
            issuer: "local".to_owned(),
            version: 1,
            created_at: Utc::now(),
            expires_at: None,
            tags: records::Tags::default(),
        };
        let id = binding.request_id.to_string();
        bindings.bind(binding, None, None).await.expect("bound");
        let first = MiddlePage::new(
            bindings.clone(),
            None,
            Targets::new(),
            landings("First Realty"),
        );
        let second = MiddlePage::new(bindings, None, Targets::new(), landings("Second Homes"));
        // Twice each: rendered, then from this thread's copy.
        for _ in 0..2 {
            let text = page_text(&first, &id).await;
            assert!(text.contains("First Realty") && !text.contains("Second Homes"));
            let text = page_text(&second, &id).await;
            assert!(text.contains("Second Homes") && !text.contains("First Realty"));
        }
    }
}
