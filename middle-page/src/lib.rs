//! The middle page: what a scanned code opens, resolved at scan time.
//!
//! | route | for | answer |
//! | --- | --- | --- |
//! | `GET /m/{request_id}` | people | an HTML landing page built from the params (escaped) |
//! | `GET /v1/scene/{request_id}` | mini-programs (the `scene` they were opened with) | the params as JSON |
//!
//! People get friendly pages for unknown (404), expired (410) and unavailable (503) codes;
//! programs get `application/problem+json`. Resolution goes through the tiered lookup of
//! [`bindings::Bindings`] and never writes.

use std::sync::Arc;

use askama::Template;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Serialize;

use bindings::Bindings;
use records::{Binding, RequestId};
use service::Problem;

pub fn router(bindings: Bindings) -> Router {
    Router::new()
        .route("/m/{request_id}", get(landing))
        .route("/v1/scene/{request_id}", get(scene))
        .with_state(Arc::new(bindings))
}

/// What a scan found.
enum Resolved {
    Bound(Arc<Binding>),
    Unknown,
    Expired,
    Unavailable,
}

async fn resolve(bindings: &Bindings, request_id: &str) -> Resolved {
    let Ok(id) = RequestId::parse(request_id) else {
        metrics::counter!("middle_page_resolves_total", "outcome" => "malformed").increment(1);
        return Resolved::Unknown;
    };
    let (resolved, outcome) = match bindings.resolve(id).await {
        Ok(Some(binding)) if binding.is_expired(Utc::now()) => (Resolved::Expired, "expired"),
        Ok(Some(binding)) => (Resolved::Bound(binding), "bound"),
        Ok(None) => (Resolved::Unknown, "unknown"),
        Err(error) => {
            tracing::error!(error = %error, "resolving a scan failed");
            (Resolved::Unavailable, "unavailable")
        }
    };
    metrics::counter!("middle_page_resolves_total", "outcome" => outcome).increment(1);
    resolved
}

#[derive(Template)]
#[template(path = "landing.html")]
struct Landing {
    request_id: String,
    fields: Vec<(String, String)>,
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

#[tracing::instrument(name = "scan", skip_all)]
async fn landing(
    State(bindings): State<Arc<Bindings>>,
    Path(request_id): Path<String>,
) -> Response {
    match resolve(&bindings, &request_id).await {
        Resolved::Bound(binding) => {
            let fields = binding
                .params
                .as_map()
                .iter()
                .map(|(key, value)| {
                    let text = match value {
                        serde_json::Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    (key.clone(), text)
                })
                .collect();
            let page = Landing {
                request_id: binding.request_id.to_string(),
                fields,
            };
            let mut response = page_response(StatusCode::OK, page.render());
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        Resolved::Unknown => page_response(StatusCode::NOT_FOUND, UnknownPage.render()),
        Resolved::Expired => page_response(StatusCode::GONE, ExpiredPage.render()),
        Resolved::Unavailable => {
            let mut response =
                page_response(StatusCode::SERVICE_UNAVAILABLE, UnavailablePage.render());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
            response
        }
    }
}

fn page_response(status: StatusCode, rendered: askama::Result<String>) -> Response {
    match rendered {
        Ok(html) => (status, Html(html)).into_response(),
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

async fn scene(State(bindings): State<Arc<Bindings>>, Path(request_id): Path<String>) -> Response {
    match resolve(&bindings, &request_id).await {
        Resolved::Bound(binding) => Json(Scene {
            request_id: binding.request_id,
            params: &binding.params,
            created_at: binding.created_at,
            expires_at: binding.expires_at,
        })
        .into_response(),
        Resolved::Unknown => Problem::not_found("code").into_response(),
        Resolved::Expired => Problem::new(StatusCode::GONE, "about:blank", "Gone")
            .with_detail("this code has expired")
            .into_response(),
        Resolved::Unavailable => {
            Problem::unavailable("the binding store is unavailable").into_response()
        }
    }
}
