//! The codes API.
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /v1/codes` `{"params": {...}, "issuer"?: "wx"}` | `201` with the bound code (the same one again for a retried `Idempotency-Key`); `422` bad params or issuer, or a key reused with other params; `503` pool dry or store down |
//! | `POST /v1/codes/batch` `{"items": [{"params": {...}, "issuer"?, "idempotency_key"?}, …]}` | up to 10,000 binds for a print run: `200` and one NDJSON line per item, in order, each `{"index", "status", "code"}` or `{"index", "status", "problem"}` |
//! | `GET /v1/codes/{request_id}` | the binding |
//! | `PATCH /v1/codes/{request_id}` `{"params"?: {...}, "expires_at"?: "…" \| null}` | a new version (scope `admin`); `409` when it changed meanwhile |
//! | `DELETE /v1/codes/{request_id}` | revokes it: a new version that expires now, so scans get the 410 page (scope `admin`) |
//! | `GET /v1/codes/{request_id}/versions` | the current version and every one before it |
//! | `GET /v1/codes/{request_id}/qr.png` | the code's PNG |
//! | `GET /v1/codes/{request_id}/qr.svg` | the code drawn as SVG |
//! | `GET /v1/openapi.json` | the OpenAPI 3.1 document of these routes (no key needed) |
//!
//! Every route needs an API key (`Authorization: Bearer …`): `bind` to create, `read` to
//! read; a caller sees only its own tenant's codes. Errors are `application/problem+json`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use records::{Binding, RequestId, Scope};
use service::image::ImageOptions;
use service::{JsonObject, Problem};

use crate::claim::{BindRequest, Bound};
use crate::{Binder, ClaimError};

/// Items in one batch at most.
pub const MAX_BATCH_ITEMS: usize = 10_000;
/// A batch body may be this large (10,000 items of modest params); other bodies keep
/// `server.max_body_bytes`.
const MAX_BATCH_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Binds of one batch in flight at once: enough to fill group commits, few enough to leave
/// the pool and the store to other callers.
const BATCH_CONCURRENCY: usize = 64;

/// The API's OpenAPI 3.1 document, kept by hand beside the routes (a test checks that
/// both name the same paths).
pub const OPENAPI: &str = include_str!("../api/openapi.json");

const CODES: &str = "/v1/codes";
const BATCH: &str = "/v1/codes/batch";
const CODE: &str = "/v1/codes/{request_id}";
const CODE_VERSIONS: &str = "/v1/codes/{request_id}/versions";
const CODE_PNG: &str = "/v1/codes/{request_id}/qr.png";
const CODE_SVG: &str = "/v1/codes/{request_id}/qr.svg";
const OPENAPI_PATH: &str = "/v1/openapi.json";
/// Every path the router serves, for the document check.
#[cfg(test)]
const PATHS: [&str; 7] = [
    CODES,
    BATCH,
    CODE,
    CODE_VERSIONS,
    CODE_PNG,
    CODE_SVG,
    OPENAPI_PATH,
];

pub fn router(binder: Arc<Binder>) -> Router {
    Router::new()
        .route(CODES, post(create_code))
        .route(
            BATCH,
            post(create_batch).layer(DefaultBodyLimit::max(MAX_BATCH_BODY_BYTES)),
        )
        .route(CODE, get(read_code).patch(change_code).delete(revoke_code))
        .route(CODE_VERSIONS, get(code_versions))
        .route(CODE_PNG, get(code_png))
        .route(CODE_SVG, get(code_svg))
        .route(OPENAPI_PATH, get(openapi))
        .with_state(binder)
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCode {
    params: serde_json::Value,
    /// Whose kind of code (`local`, or a remote issuer such as a mini-program API); the
    /// binder's default lane when absent.
    #[serde(default)]
    issuer: Option<String>,
    /// Labels the code's scans carry, for analytics filters.
    #[serde(default)]
    tags: Vec<String>,
}

/// `tags` checked, or the 422 that names them.
fn parse_tags(tags: Vec<String>) -> Result<records::Tags, Problem> {
    records::Tags::parse(tags).map_err(|error| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:qrpool:problem:invalid-tags",
            "Invalid tags",
        )
        .with_detail(error.to_string())
    })
}

/// A bound code as the API shows it.
#[derive(Debug, Serialize)]
struct CodeView<'a> {
    request_id: RequestId,
    /// What the code encodes: the middle-page URL a phone opens.
    url: &'a str,
    /// Starts at 1; each change adds one (`/versions` lists the ones before).
    version: u32,
    /// Who made the code: `local`, or the remote issuer (a mini-program code, say).
    issuer: &'a str,
    tenant: &'a str,
    params: &'a records::Params,
    #[serde(skip_serializing_if = "records::Tags::is_empty")]
    tags: &'a records::Tags,
    image: ImageLinks,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
struct ImageLinks {
    png: String,
    /// Only codes we draw ourselves: a remote issuer's picture (a mini-program code, say)
    /// exists only as the bytes it sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    svg: Option<String>,
}

impl<'a> CodeView<'a> {
    fn new(binding: &'a Binding, public_base: &str) -> Self {
        let base = format!("{public_base}/v1/codes/{}", binding.request_id);
        CodeView {
            request_id: binding.request_id,
            url: &binding.content,
            version: binding.version,
            issuer: &binding.issuer,
            tenant: binding.tenant.as_str(),
            params: &binding.params,
            tags: &binding.tags,
            image: ImageLinks {
                png: format!("{base}/qr.png"),
                svg: drawn_by_us(binding).then(|| format!("{base}/qr.svg")),
            },
            created_at: binding.created_at,
            expires_at: binding.expires_at,
        }
    }
}

#[tracing::instrument(name = "bind", skip_all, fields(request_id))]
async fn create_code(
    State(binder): State<Arc<Binder>>,
    headers: HeaderMap,
    body: Result<JsonObject<CreateCode>, Problem>,
) -> Result<Response, Problem> {
    let caller = binder.keys.authorize(&headers, Scope::Bind).await?;
    let JsonObject(body) = body?;
    let idempotency_key = idempotency_key(&headers)?;
    let tags = parse_tags(body.tags)?;
    let Bound { binding, replayed } = binder
        .claim(BindRequest {
            tenant: caller.tenant,
            params: body.params,
            issuer: body.issuer.as_deref(),
            idempotency_key,
            tags,
        })
        .await
        .map_err(claim_problem)?;
    tracing::Span::current().record("request_id", tracing::field::display(binding.request_id));
    let view = CodeView::new(&binding, &binder.public_base);
    let location = format!("/v1/codes/{}", binding.request_id);
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters, when present.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(valid_idempotency_key)
        .map(Some)
        .ok_or_else(bad_idempotency_key)
}

fn valid_idempotency_key(key: &str) -> Option<&str> {
    ((1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())).then_some(key)
}

fn bad_idempotency_key() -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "urn:qrpool:problem:bad-idempotency-key",
        "Bad Idempotency-Key",
    )
    .with_detail("an Idempotency-Key is 1 to 255 visible ASCII characters")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBatch {
    items: Vec<BatchItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    params: serde_json::Value,
    #[serde(default)]
    issuer: Option<String>,
    /// Makes this item safe to send again in a retried batch.
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// One line of a batch answer.
#[derive(Debug, Serialize)]
struct BatchLine<'a> {
    index: usize,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<CodeView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<Problem>,
}

/// Binds every item of a print run and streams one NDJSON line per item, in input order,
/// as they are done. Each item counts against the key's rate: a batch larger than the key
/// allows per second is paced, not refused. An item that fails gets its problem on its line; the others go on. A
/// client that goes away stops the batch: codes taken for items not yet bound go back.
#[tracing::instrument(name = "bind_batch", skip_all, fields(items))]
async fn create_batch(
    State(binder): State<Arc<Binder>>,
    headers: HeaderMap,
    body: Result<JsonObject<CreateBatch>, Problem>,
) -> Result<Response, Problem> {
    let caller = binder.keys.authorize(&headers, Scope::Bind).await?;
    let JsonObject(batch) = body?;
    tracing::Span::current().record("items", batch.items.len());
    if batch.items.is_empty() || batch.items.len() > MAX_BATCH_ITEMS {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:qrpool:problem:batch-size",
            "Bad batch size",
        )
        .with_detail(format!("a batch holds 1 to {MAX_BATCH_ITEMS} items")));
    }
    let lines = futures::stream::iter(batch.items.into_iter().enumerate())
        .map(move |(index, item)| {
            let binder = Arc::clone(&binder);
            let caller = caller.clone();
            async move {
                if index > 0 {
                    caller.pace().await;
                }
                let tenant = caller.tenant;
                let tags = parse_tags(item.tags);
                let bound = match (
                    item.idempotency_key.as_deref().map(valid_idempotency_key),
                    tags,
                ) {
                    (Some(None), _) => Err(bad_idempotency_key()),
                    (_, Err(problem)) => Err(problem),
                    (key, Ok(tags)) => binder
                        .claim(BindRequest {
                            tenant,
                            params: item.params,
                            issuer: item.issuer.as_deref(),
                            idempotency_key: key.flatten(),
                            tags,
                        })
                        .await
                        .map_err(claim_problem),
                };
                let line = match &bound {
                    Ok(Bound { binding, .. }) => BatchLine {
                        index,
                        status: StatusCode::CREATED.as_u16(),
                        code: Some(CodeView::new(binding, &binder.public_base)),
                        problem: None,
                    },
                    Err(problem) => BatchLine {
                        index,
                        status: problem.status.as_u16(),
                        code: None,
                        problem: Some(problem.clone()),
                    },
                };
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(bytes))
            }
        })
        .buffered(BATCH_CONCURRENCY);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

fn claim_problem(error: ClaimError) -> Problem {
    match error {
        ClaimError::InvalidParams(error) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:qrpool:problem:invalid-params",
            "Invalid params",
        )
        .with_detail(error.to_string()),
        ClaimError::IdempotencyKeyReused => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:qrpool:problem:idempotency-key-reused",
            "Idempotency-Key reused",
        )
        .with_detail(error.to_string()),
        ClaimError::UnknownIssuer(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:qrpool:problem:unknown-issuer",
            "Unknown issuer",
        )
        .with_detail(error.to_string()),
        ClaimError::PoolDry => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:qrpool:problem:pool-dry",
            "No code available",
        )
        .with_detail("the pool of pre-generated codes is empty; retry shortly")
        .retry_after(1),
        ClaimError::Store(error) if error.is_disk_full() => {
            tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "bind failed: the store's disk is full");
            Problem::unavailable("the binding store's disk is full")
        }
        error @ (ClaimError::Pool(_) | ClaimError::Store(_)) => {
            tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "bind failed");
            Problem::unavailable(error.to_string())
        }
    }
}

/// Looks a code up for the read routes. Malformed ids, unknown ids and another tenant's
/// codes are the same 404.
async fn find(
    binder: &Binder,
    headers: &HeaderMap,
    request_id: &str,
) -> Result<Arc<Binding>, Problem> {
    let caller = binder.keys.authorize(headers, Scope::Read).await?;
    let id = RequestId::parse(request_id).map_err(|_| Problem::not_found("code"))?;
    match binder.bindings.resolve(id).await {
        Ok(Some(binding)) if binding.tenant == caller.tenant => Ok(binding),
        Ok(_) => Err(Problem::not_found("code")),
        Err(error) => {
            tracing::error!(error = %error, "reading a binding failed");
            Err(Problem::unavailable("the binding store is unavailable"))
        }
    }
}

async fn read_code(
    State(binder): State<Arc<Binder>>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Result<Response, Problem> {
    let binding = find(&binder, &headers, &request_id).await?;
    Ok(Json(CodeView::new(&binding, &binder.public_base)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeCode {
    #[serde(default)]
    params: Option<serde_json::Value>,
    /// Absent: unchanged; `null`: never expires.
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<DateTime<Utc>>>,
    /// Absent: unchanged; `[]`: none.
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// Tells a field sent as `null` (`Some(None)`) from one not sent (`None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

async fn change_code(
    State(binder): State<Arc<Binder>>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
    body: Result<JsonObject<ChangeCode>, Problem>,
) -> Result<Response, Problem> {
    let caller = binder.keys.authorize(&headers, Scope::Admin).await?;
    let JsonObject(body) = body?;
    let params = body
        .params
        .map(|params| records::Params::parse(params, &binder.limits))
        .transpose()
        .map_err(|error| claim_problem(ClaimError::InvalidParams(error)))?;
    let tags = body.tags.map(parse_tags).transpose()?;
    if params.is_none() && body.expires_at.is_none() && tags.is_none() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:qrpool:problem:empty-change",
            "Nothing to change",
        )
        .with_detail("send `params`, `expires_at`, `tags` or any of them"));
    }
    let change = bindings::Change {
        params,
        expires_at: body.expires_at,
        tags,
    };
    apply(&binder, &caller, &request_id, change).await
}

/// Revoking is a change like any other: a new version that expires now.
async fn revoke_code(
    State(binder): State<Arc<Binder>>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Result<Response, Problem> {
    let caller = binder.keys.authorize(&headers, Scope::Admin).await?;
    let change = bindings::Change {
        params: None,
        expires_at: Some(Some(Utc::now())),
        tags: None,
    };
    apply(&binder, &caller, &request_id, change).await
}

async fn apply(
    binder: &Binder,
    caller: &service::auth::Caller,
    request_id: &str,
    change: bindings::Change,
) -> Result<Response, Problem> {
    let id = RequestId::parse(request_id).map_err(|_| Problem::not_found("code"))?;
    match binder
        .bindings
        .change(id, &caller.tenant, change, &caller.key_id)
        .await
    {
        Ok(binding) => Ok(Json(CodeView::new(&binding, &binder.public_base)).into_response()),
        Err(bindings::ChangeError::NotFound) => Err(Problem::not_found("code")),
        Err(bindings::ChangeError::Conflict) => Err(Problem::new(
            StatusCode::CONFLICT,
            "urn:qrpool:problem:changed-meanwhile",
            "Changed meanwhile",
        )
        .with_detail("the code changed while this change was made; read it again and retry")),
        Err(bindings::ChangeError::CacheUnavailable) => Err(Problem::unavailable(
            "the cache tier is unavailable; the change was not made",
        )),
        Err(bindings::ChangeError::Store(error)) => {
            tracing::error!(error = %error, "changing a binding failed");
            Err(Problem::unavailable("the binding store is unavailable"))
        }
    }
}

#[derive(Debug, Serialize)]
struct VersionsView<'a> {
    current: CodeView<'a>,
    /// Oldest first.
    past: Vec<bindings::PastVersion>,
}

async fn code_versions(
    State(binder): State<Arc<Binder>>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
) -> Result<Response, Problem> {
    let caller = binder.keys.authorize(&headers, Scope::Read).await?;
    let id = RequestId::parse(&request_id).map_err(|_| Problem::not_found("code"))?;
    let store_down = |error: bindings::StoreError| {
        tracing::error!(error = %error, "reading versions failed");
        Problem::unavailable("the binding store is unavailable")
    };
    let current = binder
        .bindings
        .durable()
        .get(id)
        .await
        .map_err(store_down)?
        .filter(|binding| binding.tenant == caller.tenant)
        .ok_or_else(|| Problem::not_found("code"))?;
    let past = binder
        .bindings
        .past_versions(id, &caller.tenant)
        .await
        .map_err(store_down)?
        .unwrap_or_default();
    Ok(Json(VersionsView {
        current: CodeView::new(&current, &binder.public_base),
        past,
    })
    .into_response())
}

/// Images never change for a request id, so caches may keep them for good.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn image_options(
    options: Result<Query<ImageOptions>, QueryRejection>,
    binding: &Binding,
) -> Result<ImageOptions, Problem> {
    let options = service::image::options(options)?;
    if !options.is_empty() && !drawn_by_us(binding) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:qrpool:problem:not-redrawable",
            "This code cannot be redrawn",
        )
        .with_detail(format!(
            "codes from issuer `{}` exist only as the image it sent",
            binding.issuer
        )));
    }
    Ok(options)
}

async fn code_png(
    State(binder): State<Arc<Binder>>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
    options: Result<Query<ImageOptions>, QueryRejection>,
) -> Result<Response, Problem> {
    let binding = find(&binder, &headers, &request_id).await?;
    let options = image_options(options, &binding)?;
    let stored = if options.is_empty() {
        binder
            .bindings
            .image(binding.request_id)
            .await
            .map_err(|error| {
                tracing::error!(error = %error, "reading a code image failed");
                Problem::unavailable("the image store is unavailable")
            })?
    } else {
        None
    };
    let (media_type, bytes) = match stored {
        Some(image) => (image.media_type, image.bytes),
        // No stored bytes, or other options: a local code is drawn again, deterministically.
        None => (
            "image/png".to_owned(),
            service::image::draw(&binding.content, options.style(binder.style)?, render::png)
                .await?,
        ),
    };
    let media_type =
        HeaderValue::from_str(&media_type).unwrap_or(HeaderValue::from_static("image/png"));
    Ok((
        [
            (header::CONTENT_TYPE, media_type),
            (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
        ],
        bytes,
    )
        .into_response())
}

async fn code_svg(
    State(binder): State<Arc<Binder>>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
    options: Result<Query<ImageOptions>, QueryRejection>,
) -> Result<Response, Problem> {
    let binding = find(&binder, &headers, &request_id).await?;
    if !drawn_by_us(&binding) {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "urn:qrpool:problem:no-svg",
            "No SVG for this code",
        )
        .with_detail(format!(
            "codes from issuer `{}` exist only as the PNG it sent",
            binding.issuer
        )));
    }
    let style = image_options(options, &binding)?.style(binder.style)?;
    let svg = service::image::draw(&binding.content, style, render::svg).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
        ],
        svg,
    )
        .into_response())
}

fn drawn_by_us(binding: &Binding) -> bool {
    binding.issuer == config::LOCAL_ISSUER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_names_exactly_the_routes_served() {
        service::openapi::check(OPENAPI, &PATHS).unwrap();
    }
}
