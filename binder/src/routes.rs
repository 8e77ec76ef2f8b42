//! The codes API.
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /v1/codes` `{"params": {...}}` | `201` with the bound code; `422` bad params; `503` pool dry or store down |
//! | `GET /v1/codes/{request_id}` | the binding |
//! | `GET /v1/codes/{request_id}/qr.png` | the code's PNG |
//! | `GET /v1/codes/{request_id}/qr.svg` | the code drawn as SVG |
//!
//! Errors are `application/problem+json`.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use records::{Binding, RequestId};
use service::Problem;

use crate::{Binder, ClaimError};

pub fn router(binder: Arc<Binder>) -> Router {
    Router::new()
        .route("/v1/codes", post(create_code))
        .route("/v1/codes/{request_id}", get(read_code))
        .route("/v1/codes/{request_id}/qr.png", get(code_png))
        .route("/v1/codes/{request_id}/qr.svg", get(code_svg))
        .with_state(binder)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCode {
    params: serde_json::Value,
}

/// A bound code as the API shows it.
#[derive(Debug, Serialize)]
struct CodeView<'a> {
    request_id: RequestId,
    /// What the code encodes: the middle-page URL a phone opens.
    url: &'a str,
    tenant: &'a str,
    params: &'a records::Params,
    image: ImageLinks,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
struct ImageLinks {
    png: String,
    svg: String,
}

impl<'a> CodeView<'a> {
    fn new(binding: &'a Binding, public_base: &str) -> Self {
        let base = format!("{public_base}/v1/codes/{}", binding.request_id);
        CodeView {
            request_id: binding.request_id,
            url: &binding.content,
            tenant: binding.tenant.as_str(),
            params: &binding.params,
            image: ImageLinks {
                png: format!("{base}/qr.png"),
                svg: format!("{base}/qr.svg"),
            },
            created_at: binding.created_at,
            expires_at: binding.expires_at,
        }
    }
}

#[tracing::instrument(name = "bind", skip_all, fields(request_id))]
async fn create_code(
    State(binder): State<Arc<Binder>>,
    body: Result<Json<CreateCode>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(body) = body?;
    let binding = binder.claim(body.params).await.map_err(claim_problem)?;
    tracing::Span::current().record("request_id", tracing::field::display(binding.request_id));
    let view = CodeView::new(&binding, &binder.public_base);
    let location = format!("/v1/codes/{}", binding.request_id);
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn claim_problem(error: ClaimError) -> Problem {
    match error {
        ClaimError::InvalidParams(error) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:qrpool:problem:invalid-params",
            "Invalid params",
        )
        .with_detail(error.to_string()),
        ClaimError::PoolDry => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:qrpool:problem:pool-dry",
            "No code available",
        )
        .with_detail("the pool of pre-generated codes is empty; retry shortly")
        .retry_after(1),
        error @ (ClaimError::Pool(_) | ClaimError::Store(_)) => {
            tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "bind failed");
            Problem::unavailable(error.to_string())
        }
    }
}

/// Looks a code up for the read routes; malformed and unknown ids are the same 404.
async fn find(binder: &Binder, request_id: &str) -> Result<Arc<Binding>, Problem> {
    let id = RequestId::parse(request_id).map_err(|_| Problem::not_found("code"))?;
    match binder.bindings.resolve(id).await {
        Ok(Some(binding)) => Ok(binding),
        Ok(None) => Err(Problem::not_found("code")),
        Err(error) => {
            tracing::error!(error = %error, "reading a binding failed");
            Err(Problem::unavailable("the binding store is unavailable"))
        }
    }
}

async fn read_code(
    State(binder): State<Arc<Binder>>,
    Path(request_id): Path<String>,
) -> Result<Response, Problem> {
    let binding = find(&binder, &request_id).await?;
    Ok(Json(CodeView::new(&binding, &binder.public_base)).into_response())
}

/// Images never change for a request id, so caches may keep them for good.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

async fn code_png(
    State(binder): State<Arc<Binder>>,
    Path(request_id): Path<String>,
) -> Result<Response, Problem> {
    let binding = find(&binder, &request_id).await?;
    let stored = binder
        .bindings
        .image(binding.request_id)
        .await
        .map_err(|error| {
            tracing::error!(error = %error, "reading a code image failed");
            Problem::unavailable("the image store is unavailable")
        })?;
    let (media_type, bytes) = match stored {
        Some(image) => (image.media_type, image.bytes),
        // No stored bytes: a locally issued code is drawn again, identically.
        None => (
            "image/png".to_owned(),
            render::png(&binding.content, &binder.style).map_err(render_problem)?,
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
    Path(request_id): Path<String>,
) -> Result<Response, Problem> {
    let binding = find(&binder, &request_id).await?;
    let svg = render::svg(&binding.content, &binder.style).map_err(render_problem)?;
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

fn render_problem(error: render::RenderError) -> Problem {
    tracing::error!(error = %error, "drawing a bound code failed");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "about:blank",
        "Internal Server Error",
    )
}
