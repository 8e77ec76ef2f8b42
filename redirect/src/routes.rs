//! The HTTP surface of links.
//!
//! | route | for | answer |
//! | --- | --- | --- |
//! | `GET /r/{key}` (and `HEAD`) | scanners | the link's status (302 unless set) to the destination its policy picks; friendly `404` / `410` / `503` pages |
//! | `POST /v1/links` `{"target": {...}, "status"?, "note"?, "signatures"?}` | marketers (scope `admin`) | `201` with the link |
//! | `GET /v1/links?after=&limit=` | `read` | the tenant's links, in key order |
//! | `GET /v1/links/{key}` | `read` | the link: current version, the version serving now |
//! | `PATCH /v1/links/{key}` `{"target"?, "status"?, "note"?, "base_version"?, "signatures"?}` | `admin` | a new version; `409` when `base_version` is not the latest |
//! | `DELETE /v1/links/{key}` | `admin` | soft delete: scans get `410` until restored or purged |
//! | `POST /v1/links/{key}/restore` | `admin` | undoes a delete within the retention window |
//! | `POST /v1/links/{key}/rollback` `{"version": n}` | `admin` | a new version with version `n`'s target |
//! | `GET /v1/links/{key}/versions?after=&limit=` | `read` | its versions, oldest first, a page at a time |
//! | `GET /v1/links/{key}/audit?order=&after=&limit=` | `read` | every change (who, when, what), oldest or newest first, a page at a time |
//! | `GET /v1/links/{key}/qr.png` (`qr.svg`) `?scale=&margin=&dark=&light=&ec=` | `read` | the link's printed URL as a QR code |
//! | `GET /v1/links/openapi.json` | anyone | the OpenAPI 3.1 document of these routes |
//!
//! A tenant sees only its own links: another tenant's key is the same `404` as no key at all.
//! Destinations are checked against the tenant's allowed hosts or a signature ([`crate::allow`]).
//!
//! Caching: a `302`/`307` is `no-store` (the next scan may be sent elsewhere: a new version, a
//! window, another variant); a `301`/`308` is what browsers keep for good, and says so
//! (`max-age` of a day). A split sets a `qrv` cookie, a random visitor id, so a visitor keeps
//! its variant.

use metrics::Counter;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use records::{
    Link, LinkKey, LinkTarget, LinkVersion, RedirectStatus, ScanKind, Scope, Tags, Tenant, Visit,
};
use scans::ScanEvents;
use service::{JsonObject, Keys, Problem, ScanRoute};

use crate::store::{AuditOrder, Edit, EditError, LinkStoreError};
use crate::{Destinations, Redirects};

/// The links API's OpenAPI 3.1 document, kept by hand beside the routes.
pub const OPENAPI: &str = include_str!("../api/openapi.json");

const SCAN: &str = "/r/{key}";
const LINKS: &str = "/v1/links";
const LINK: &str = "/v1/links/{key}";
const LINK_RESTORE: &str = "/v1/links/{key}/restore";
const LINK_ROLLBACK: &str = "/v1/links/{key}/rollback";
const LINK_VERSIONS: &str = "/v1/links/{key}/versions";
const LINK_AUDIT: &str = "/v1/links/{key}/audit";
const LINK_PNG: &str = "/v1/links/{key}/qr.png";
const LINK_SVG: &str = "/v1/links/{key}/qr.svg";
const OPENAPI_PATH: &str = "/v1/links/openapi.json";
/// Every API path the router serves, for the document check.
pub const API_PATHS: [&str; 9] = [
    LINKS,
    LINK,
    LINK_RESTORE,
    LINK_ROLLBACK,
    LINK_VERSIONS,
    LINK_AUDIT,
    LINK_PNG,
    LINK_SVG,
    OPENAPI_PATH,
];

/// The cookie that keeps a visitor in its A/B bucket.
const VISITOR_COOKIE: &str = "qrv";
/// Links listed per page at most.
const MAX_PAGE: u32 = 1_000;
/// Longest `note` kept with a version.
const MAX_NOTE: usize = 500;

/// What the link routes share.
#[derive(Debug)]
pub struct LinkService {
    pub redirects: Redirects,
    pub keys: Keys,
    pub destinations: Destinations,
    /// `None` when scan events are off.
    pub scans: Option<ScanEvents>,
    /// Where scanners are (for rules by country): the CDN's header, else GeoIP.
    pub clients: scans::Clients,
    /// Where links are printed from: `<public_url>/r/<key>`.
    pub public_url: String,
    /// Whether the visitor cookie needs HTTPS (`public_url` is `https`).
    pub secure_cookie: bool,
    /// How a link's code is drawn unless the request asks otherwise (`render` settings).
    pub style: render::Style,
}

/// `/r/{key}` for [`service::Front`], which answers scans before the router.
pub fn scan_route(service: &Arc<LinkService>) -> ScanRoute {
    let service = Arc::clone(service);
    ScanRoute {
        prefix: "/r/",
        pattern: SCAN,
        answer: Arc::new(move |key, request, peer| {
            let service = Arc::clone(&service);
            Box::pin(
                async move { answer_scan(&service, &key, &request.into_parts().0, peer).await },
            )
        }),
    }
}

pub fn router(service: Arc<LinkService>) -> Router {
    Router::new()
        .route(SCAN, get(scan))
        .route(LINKS, post(create_link).get(list_links))
        .route(LINK, get(read_link).patch(edit_link).delete(delete_link))
        .route(LINK_RESTORE, post(restore_link))
        .route(LINK_ROLLBACK, post(rollback_link))
        .route(LINK_VERSIONS, get(link_versions))
        .route(LINK_AUDIT, get(link_audit))
        .route(LINK_PNG, get(link_png))
        .route(LINK_SVG, get(link_svg))
        .route(OPENAPI_PATH, get(openapi))
        .with_state(service)
}

// ---- scanners ---------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    heading: &'a str,
    text: &'a str,
}

fn page(status: StatusCode, title: &str, heading: &str, text: &str) -> Response {
    let html = MessagePage {
        title,
        heading,
        text,
    }
    .render();
    let mut response = match html {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "rendering a page failed");
            (status, "Something went wrong.").into_response()
        }
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    service::page::add_security_headers(response.headers_mut(), service::page::default_policy());
    response
}

fn not_found_page() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not found",
        "This link doesn't lead anywhere",
        "We couldn't find where this code or link points. It may have been mistyped.",
    )
}

fn gone_page() -> Response {
    page(
        StatusCode::GONE,
        "Link no longer active",
        "This link is no longer active",
        "The campaign or offer behind this code has ended, or has not started yet.",
    )
}

fn unavailable_page() -> Response {
    let mut response = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again",
        "We can't open this link right now",
        "Something on our side is not answering. Please scan again in a moment.",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1));
    response
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    service::cookie(headers, name)
        // Only ids we could have set: a cookie is input like any other.
        .filter(|value| {
            (8..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// What served a scan, for its event.
#[derive(Default)]
struct Served {
    variant: Option<String>,
    click_id: Option<String>,
}

/// What `redirect_scans_total` counts by.
const SCAN_OUTCOMES: [&str; 5] = ["redirected", "unknown", "gone", "unavailable", "malformed"];

/// Counts a scan; the handles are found once, not built from labels per scan (that showed in
/// the scan path's profile).
fn count_scan(outcome: &str) {
    static SCANS: LazyLock<[Counter; 5]> = LazyLock::new(|| {
        SCAN_OUTCOMES.map(|outcome| metrics::counter!("redirect_scans_total", "outcome" => outcome))
    });
    if let Some(index) = SCAN_OUTCOMES.iter().position(|known| *known == outcome) {
        SCANS[index].increment(1);
    }
}

async fn scan(
    State(service): State<Arc<LinkService>>,
    Path(key): Path<String>,
    request: Request,
) -> Response {
    let parts = request.into_parts().0;
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    answer_scan(&service, &key, &parts, peer).await
}

#[tracing::instrument(name = "redirect", level = "debug", skip_all)]
async fn answer_scan(
    service: &LinkService,
    key: &str,
    request: &Parts,
    peer: Option<IpAddr>,
) -> Response {
    // Read in place: the `HeaderMap` extractor would copy every header of every scan.
    let headers = &request.headers;
    let Ok(key) = LinkKey::parse(key) else {
        count_scan("malformed");
        return not_found_page();
    };
    // A `HEAD` is a link checker or a preview, not a person scanning: answered, counted, and
    // left out of the scan events.
    let scan_events = service
        .scans
        .as_ref()
        .filter(|_| request.method != Method::HEAD);
    let record = |outcome: &'static str, link: Option<&Link>, served: Served| {
        if let Some(scans) = scan_events {
            let mut scan = scans.scan(ScanKind::Link, key.to_string(), outcome, request, peer);
            if let Some(link) = link {
                scan.tenant = Some(link.tenant.as_str().to_owned());
                scan.tags = link.tags.clone();
            }
            scan.variant = served.variant;
            scan.click_id = served.click_id;
            scans.record(scan);
        }
        count_scan(outcome);
    };
    let link = match service.redirects.resolve(&key).await {
        Ok(Some(link)) => link,
        Ok(None) => {
            record("unknown", None, Served::default());
            return not_found_page();
        }
        Err(error) => {
            tracing::error!(%error, "resolving a link failed");
            record("unavailable", None, Served::default());
            return unavailable_page();
        }
    };
    let now = Utc::now();
    let version = match (&link.deleted_at, link.effective(now)) {
        (None, Some(version)) => version,
        _ => {
            record("gone", Some(&link), Served::default());
            return gone_page();
        }
    };
    let target = &version.target;
    // Classified and located only for a version whose rules ask (the scan's event gets its
    // device from the writer, off the scan's path).
    let device = if target.rules.iter().any(|rule| !rule.devices.is_empty()) {
        scans::device(headers)
    } else {
        records::DeviceClass::Unknown
    };
    let country = target
        .rules
        .iter()
        .any(|rule| !rule.countries.is_empty())
        .then(|| service.clients.country(request, peer))
        .flatten();
    let mut new_visitor = None;
    let visitor = match cookie(headers, VISITOR_COOKIE) {
        Some(visitor) => Some(visitor.to_owned()),
        None if target.has_split() => {
            let visitor = LinkKey::generate().to_string() + LinkKey::generate().as_str();
            new_visitor = Some(visitor.clone());
            Some(visitor)
        }
        None => None,
    };
    let served = target.serve(
        &link.key,
        &Visit {
            device,
            country: country.as_deref(),
            visitor: visitor.as_deref(),
        },
    );
    // A conversion-tracked link sends a click id along, which the scan's event records.
    let click_id = target.track_conversions.then(|| {
        // The link's key, then a request id (122 random bits): a conversion names its link by it.
        format!("{}{}", link.key, records::RequestId::generate())
    });
    let destination = match &click_id {
        Some(click_id) => {
            std::borrow::Cow::Owned(records::with_click_id(served.destination, click_id))
        }
        None => std::borrow::Cow::Borrowed(served.destination),
    };
    let Ok(location) = HeaderValue::from_str(&destination) else {
        // Checked when written; a stored destination that is no header value is a bug.
        tracing::error!(key = %link.key, "a stored destination is not a valid header value");
        record("unavailable", Some(&link), Served::default());
        return unavailable_page();
    };
    record(
        "redirected",
        Some(&link),
        Served {
            variant: served.by.label(),
            click_id,
        },
    );
    let status = match link.status {
        RedirectStatus::MovedPermanently => StatusCode::MOVED_PERMANENTLY,
        RedirectStatus::Found => StatusCode::FOUND,
        RedirectStatus::TemporaryRedirect => StatusCode::TEMPORARY_REDIRECT,
        RedirectStatus::PermanentRedirect => StatusCode::PERMANENT_REDIRECT,
    };
    let cache = match link.status {
        RedirectStatus::MovedPermanently | RedirectStatus::PermanentRedirect => {
            "public, max-age=86400"
        }
        RedirectStatus::Found | RedirectStatus::TemporaryRedirect => "no-store",
    };
    let mut response = (
        status,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
    )
        .into_response();
    if let Some(visitor) = new_visitor {
        let secure = if service.secure_cookie {
            "; Secure"
        } else {
            ""
        };
        let cookie = format!(
            "{VISITOR_COOKIE}={visitor}; Path=/r; Max-Age=31536000; HttpOnly; SameSite=Lax{secure}"
        );
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
    }
    response
}

// ---- marketers --------------------------------------------------------------------------

/// A link as the API shows it.
#[derive(Serialize)]
struct LinkView<'a> {
    key: &'a LinkKey,
    url: String,
    status: RedirectStatus,
    version: u32,
    target: Option<&'a LinkTarget>,
    /// The version a scan gets now; `null` when none is effective or the link is deleted.
    serving_version: Option<u32>,
    created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Tags::is_empty")]
    tags: &'a Tags,
}

impl LinkService {
    fn view<'a>(&self, link: &'a Link) -> LinkView<'a> {
        let current = link.current();
        LinkView {
            key: &link.key,
            url: format!("{}/r/{}", self.public_url, link.key),
            status: link.status,
            version: current.map_or(0, |v| v.version),
            target: current.map(|v| &v.target),
            serving_version: link
                .deleted_at
                .is_none()
                .then(|| link.effective(Utc::now()).map(|v| v.version))
                .flatten(),
            created_at: link.created_at,
            deleted_at: link.deleted_at,
            tags: &link.tags,
        }
    }

    /// Checks a target written by `tenant`: shape first, then its destinations.
    fn check_target(
        &self,
        tenant: &Tenant,
        target: &LinkTarget,
        signatures: &HashMap<String, String>,
    ) -> Result<(), Problem> {
        target.check().map_err(|error| invalid(error.to_string()))?;
        self.destinations
            .check(tenant, target, signatures)
            .map_err(|error| {
                metrics::counter!("redirect_destinations_refused_total").increment(1);
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "urn:qrpool:problem:destination-not-allowed",
                    "Destination not allowed",
                )
                .with_detail(error.to_string())
            })
    }

    async fn owned(&self, key: &str, tenant: &Tenant) -> Result<Link, Problem> {
        let key = LinkKey::parse(key).map_err(|_| Problem::not_found("link"))?;
        self.redirects
            .store()
            .servable_owned(&key, tenant, Utc::now())
            .await
            .map_err(store_unavailable)?
            .ok_or_else(|| Problem::not_found("link"))
    }
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "urn:qrpool:problem:invalid-link",
        "Invalid link",
    )
    .with_detail(detail)
}

fn store_unavailable(error: LinkStoreError) -> Problem {
    tracing::error!(%error, "the link store failed");
    Problem::unavailable("the link store is unavailable")
}

fn cache_unavailable() -> Problem {
    Problem::unavailable("the cache tier is unavailable; the change was not made")
}

fn edit_problem(error: EditError) -> Problem {
    match error {
        EditError::NotFound => Problem::not_found("link"),
        EditError::Conflict { .. } => Problem::new(
            StatusCode::CONFLICT,
            "urn:qrpool:problem:conflict",
            "Conflict",
        )
        .with_detail(error.to_string()),
        EditError::Deleted => Problem::new(
            StatusCode::CONFLICT,
            "urn:qrpool:problem:link-deleted",
            "Link deleted",
        )
        .with_detail(error.to_string()),
        EditError::NoSuchVersion(_) => invalid(error.to_string()),
        EditError::Store(error) => store_unavailable(error),
    }
}

fn note(note: Option<String>) -> Result<Option<String>, Problem> {
    match note {
        Some(note) if note.chars().count() > MAX_NOTE => {
            Err(invalid(format!("`note` is at most {MAX_NOTE} characters")))
        }
        other => Ok(other),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateLink {
    target: LinkTarget,
    #[serde(default)]
    status: RedirectStatus,
    note: Option<String>,
    #[serde(default)]
    signatures: HashMap<String, String>,
    #[serde(default)]
    tags: Vec<String>,
}

fn tags(tags: Vec<String>) -> Result<Tags, Problem> {
    Tags::parse(tags).map_err(|error| invalid(format!("`tags`: {error}")))
}

async fn create_link(
    State(service): State<Arc<LinkService>>,
    headers: HeaderMap,
    body: Result<JsonObject<CreateLink>, Problem>,
) -> Result<Response, Problem> {
    let caller = service.keys.authorize(&headers, Scope::Admin).await?;
    let JsonObject(body) = body?;
    service.check_target(&caller.tenant, &body.target, &body.signatures)?;
    let note = note(body.note)?;
    let tags = tags(body.tags)?;
    let now = Utc::now();
    // A taken key is astronomically unlikely; try a few before calling it a failure.
    for _ in 0..3 {
        let link = Link {
            v: Link::LAYOUT,
            key: LinkKey::generate(),
            tenant: caller.tenant.clone(),
            status: body.status,
            created_at: now,
            deleted_at: None,
            tags: tags.clone(),
            versions: vec![LinkVersion {
                version: 1,
                target: body.target.clone(),
                created_at: now,
                created_by: caller.key_id.clone(),
                note: note.clone(),
            }],
        };
        if service
            .redirects
            .store()
            .create(&link, &caller.key_id)
            .await
            .map_err(store_unavailable)?
        {
            // Announces it (a scan may have cached the key as missing); the link is in hand.
            let _ = service.redirects.after_change(&link.key).await;
            metrics::counter!("redirect_links_created_total").increment(1);
            tracing::info!(key = %link.key, tenant = %link.tenant, "link created");
            let location = format!("{LINKS}/{}", link.key);
            return Ok((
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(service.view(&link)),
            )
                .into_response());
        }
    }
    Err(Problem::unavailable(
        "no free link key was found; try again",
    ))
}

/// A page's size as asked (`limit`, 100 when not), within 1 to [`MAX_PAGE`].
fn page_limit(limit: Option<u32>) -> Result<u32, Problem> {
    let limit = limit.unwrap_or(100);
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(invalid(format!("`limit` is 1 to {MAX_PAGE}")))
    }
}

/// The `next_after` of a page: its last item's cursor when the page is full (there may be
/// more), `None` when it is the last.
fn next_after<T, C>(page: &[T], limit: u32, cursor: impl FnOnce(&T) -> C) -> Option<C> {
    if page.len() == limit as usize {
        page.last().map(cursor)
    } else {
        None
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after: Option<String>,
    limit: Option<u32>,
}

async fn list_links(
    State(service): State<Arc<LinkService>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let caller = service.keys.authorize(&headers, Scope::Read).await?;
    let Query(query) = query.map_err(|error| invalid(error.body_text()))?;
    let after = query
        .after
        .as_deref()
        .map(LinkKey::parse)
        .transpose()
        .map_err(|error| invalid(format!("`after`: {error}")))?;
    let limit = page_limit(query.limit)?;
    let links = service
        .redirects
        .store()
        .list(&caller.tenant, after.as_ref(), limit)
        .await
        .map_err(store_unavailable)?;
    let next = next_after(&links, limit, |link| link.key.clone());
    Ok(Json(serde_json::json!({ "links": links, "next_after": next })).into_response())
}

async fn read_link(
    State(service): State<Arc<LinkService>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = service.keys.authorize(&headers, Scope::Read).await?;
    let link = service.owned(&key, &caller.tenant).await?;
    Ok(Json(service.view(&link)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditLink {
    target: Option<LinkTarget>,
    status: Option<RedirectStatus>,
    note: Option<String>,
    #[serde(default, deserialize_with = "service::json::whole_u32_or_null")]
    base_version: Option<u32>,
    #[serde(default)]
    signatures: HashMap<String, String>,
    tags: Option<Vec<String>>,
}

/// Applies an edit that `service` checked, around the cache-tier steps every change needs.
async fn apply(service: &LinkService, edit: Edit<'_>, action: &str) -> Result<Response, Problem> {
    let key = edit.key.clone();
    let tenant = edit.tenant.clone();
    if !service.redirects.before_change(&key).await {
        return Err(cache_unavailable());
    }
    let outcome = service.redirects.store().edit(edit, action).await;
    // Also after a refusal: the copy was removed, and this process may hold an old one.
    let link = service.redirects.after_change(&key).await;
    outcome.map_err(edit_problem)?;
    metrics::counter!("redirect_link_changes_total", "action" => action.to_owned()).increment(1);
    view_of_changed(service, link, &tenant)
}

/// The answer to a change: the link as it now is, read once by `after_change`.
fn view_of_changed(
    service: &LinkService,
    link: Result<Option<Link>, LinkStoreError>,
    tenant: &Tenant,
) -> Result<Response, Problem> {
    let link = link
        .map_err(store_unavailable)?
        .filter(|link| link.tenant == *tenant)
        .ok_or_else(|| Problem::not_found("link"))?;
    Ok(Json(service.view(&link)).into_response())
}

async fn edit_link(
    State(service): State<Arc<LinkService>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<JsonObject<EditLink>, Problem>,
) -> Result<Response, Problem> {
    let caller = service.keys.authorize(&headers, Scope::Admin).await?;
    let JsonObject(body) = body?;
    let link = service.owned(&key, &caller.tenant).await?;
    if body.target.is_none() && body.status.is_none() && body.tags.is_none() {
        return Err(invalid("send `target`, `status`, `tags`, or several"));
    }
    let new_tags = body.tags.map(tags).transpose()?;
    if let Some(target) = &body.target {
        service.check_target(&caller.tenant, target, &body.signatures)?;
    }
    let current = link.current().map_or(0, |v| v.version);
    let edit = Edit {
        key: &link.key,
        tenant: &caller.tenant,
        base_version: body.base_version.unwrap_or(current),
        target: body.target,
        status: body.status,
        tags: new_tags,
        note: note(body.note)?,
        actor: &caller.key_id,
    };
    apply(&service, edit, "update").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    #[serde(deserialize_with = "service::json::whole_u32")]
    version: u32,
    note: Option<String>,
}

async fn rollback_link(
    State(service): State<Arc<LinkService>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<JsonObject<Rollback>, Problem>,
) -> Result<Response, Problem> {
    let caller = service.keys.authorize(&headers, Scope::Admin).await?;
    let JsonObject(body) = body?;
    let link = service.owned(&key, &caller.tenant).await?;
    let old = service
        .redirects
        .store()
        .version(&link.key, body.version)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(|| edit_problem(EditError::NoSuchVersion(body.version)))?;
    let edit = Edit {
        key: &link.key,
        tenant: &caller.tenant,
        base_version: link.current().map_or(0, |v| v.version),
        target: Some(old.target.clone()),
        status: None,
        tags: None,
        note: Some(
            note(body.note)?.unwrap_or_else(|| format!("rollback to version {}", body.version)),
        ),
        actor: &caller.key_id,
    };
    apply(&service, edit, "rollback").await
}

async fn delete_link(
    State(service): State<Arc<LinkService>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    set_deleted(&service, &key, &headers, true).await
}

async fn restore_link(
    State(service): State<Arc<LinkService>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    set_deleted(&service, &key, &headers, false).await
}

async fn set_deleted(
    service: &LinkService,
    key: &str,
    headers: &HeaderMap,
    delete: bool,
) -> Result<Response, Problem> {
    let caller = service.keys.authorize(headers, Scope::Admin).await?;
    let key = LinkKey::parse(key).map_err(|_| Problem::not_found("link"))?;
    if !service.redirects.before_change(&key).await {
        return Err(cache_unavailable());
    }
    let changed = service
        .redirects
        .store()
        .set_deleted(&key, &caller.tenant, delete, &caller.key_id)
        .await;
    let link = service.redirects.after_change(&key).await;
    match changed.map_err(store_unavailable)? {
        None => Err(Problem::not_found("link")),
        Some(_) => {
            let action = if delete { "delete" } else { "restore" };
            metrics::counter!("redirect_link_changes_total", "action" => action).increment(1);
            view_of_changed(service, link, &caller.tenant)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionsQuery {
    after: Option<u32>,
    limit: Option<u32>,
}

async fn link_versions(
    State(service): State<Arc<LinkService>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    query: Result<Query<VersionsQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let caller = service.keys.authorize(&headers, Scope::Read).await?;
    let Query(query) = query.map_err(|error| invalid(error.body_text()))?;
    let limit = page_limit(query.limit)?;
    let key = LinkKey::parse(&key).map_err(|_| Problem::not_found("link"))?;
    let versions = service
        .redirects
        .store()
        .versions(&key, &caller.tenant, query.after.unwrap_or(0), limit)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(|| Problem::not_found("link"))?;
    let next = next_after(&versions, limit, |version| version.version);
    Ok(
        Json(serde_json::json!({ "key": key, "versions": versions, "next_after": next }))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    order: Option<AuditOrder>,
    after: Option<u32>,
    limit: Option<u32>,
}

async fn link_audit(
    State(service): State<Arc<LinkService>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let caller = service.keys.authorize(&headers, Scope::Read).await?;
    let Query(query) = query.map_err(|error| invalid(error.body_text()))?;
    let limit = page_limit(query.limit)?;
    let order = query.order.unwrap_or(AuditOrder::OldestFirst);
    let link = service.owned(&key, &caller.tenant).await?;
    let entries = service
        .redirects
        .store()
        .audit(&link.key, &caller.tenant, order, query.after, limit)
        .await
        .map_err(store_unavailable)?;
    let next = next_after(&entries, limit, |entry| entry.seq);
    Ok(
        Json(serde_json::json!({ "key": link.key, "audit": entries, "next_after": next }))
            .into_response(),
    )
}

/// The URL printed for a link, drawn with the caller's options.
async fn link_image<T: Send + 'static>(
    service: &LinkService,
    key: &str,
    headers: &HeaderMap,
    options: Result<Query<service::image::ImageOptions>, QueryRejection>,
    draw: fn(&str, &render::Style) -> Result<T, render::RenderError>,
) -> Result<T, Problem> {
    let caller = service.keys.authorize(headers, Scope::Read).await?;
    let style = service::image::options(options)?.style(service.style)?;
    let link = service.owned(key, &caller.tenant).await?;
    let url = format!("{}/r/{}", service.public_url, link.key);
    service::image::draw(&url, style, draw).await
}

async fn link_png(
    State(service): State<Arc<LinkService>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    options: Result<Query<service::image::ImageOptions>, QueryRejection>,
) -> Result<Response, Problem> {
    let png = link_image(&service, &key, &headers, options, render::png).await?;
    // A link's key never changes, and neither does its printed URL: a code drawn once is
    // right for good.
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=86400"),
            ),
        ],
        png,
    )
        .into_response())
}

async fn link_svg(
    State(service): State<Arc<LinkService>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    options: Result<Query<service::image::ImageOptions>, QueryRejection>,
) -> Result<Response, Problem> {
    let svg = link_image(&service, &key, &headers, options, render::svg).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=86400"),
            ),
        ],
        svg,
    )
        .into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_names_exactly_the_routes_served() {
        service::openapi::check(OPENAPI, &API_PATHS).unwrap();
    }
}
