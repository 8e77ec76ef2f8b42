//! The console's calls to qrpool's own API, made in process through the same router that
//! serves apps: every check (scopes, tenant, validation, destinations allowed) is the API's,
//! so the console can show nothing and change nothing that the signed-in key could not.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use crate::ConsoleError;

/// The largest API answer the console reads (a print run's batch answer is the largest).
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// The API, as the console calls it.
#[derive(Debug, Clone)]
pub struct Api {
    router: Router,
}

/// One answer of the API.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// What a problem+json answer says, for showing it to a person.
#[derive(Debug, serde::Deserialize)]
struct ProblemText {
    title: Option<String>,
    detail: Option<String>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The body as `T`; an answer that is not one is the console's error.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ConsoleError> {
        if !self.status.is_success() {
            return Err(ConsoleError::Api {
                status: self.status,
                message: self.message(),
            });
        }
        serde_json::from_slice(&self.body)
            .map_err(|error| ConsoleError::Unexpected(error.to_string()))
    }

    /// What went wrong, in the API's words (a problem's detail, else its title).
    pub fn message(&self) -> String {
        serde_json::from_slice::<ProblemText>(&self.body)
            .ok()
            .and_then(|problem| problem.detail.or(problem.title))
            .unwrap_or_else(|| {
                self.status
                    .canonical_reason()
                    .unwrap_or("the request failed")
                    .to_owned()
            })
    }

    /// `Ok` when the API did it; its error otherwise.
    pub fn done(self) -> Result<Answer, ConsoleError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(ConsoleError::Api {
                status: self.status,
                message: self.message(),
            })
        }
    }
}

impl Api {
    pub fn new(router: Router) -> Self {
        Api { router }
    }

    /// `method path` with the session's token as the caller's credential, and a JSON body.
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path_and_query: impl Into<String>,
        body: Option<&serde_json::Value>,
        accept: Option<&'static str>,
    ) -> Result<Answer, ConsoleError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query.into())
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(body).map_err(|error| {
                    ConsoleError::Unexpected(error.to_string())
                })?)),
            None => request.body(Body::empty()),
        }
        .map_err(|error| ConsoleError::BadRequest(format!("not a valid request: {error}")))?;
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let body = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
            .await
            .map_err(|error| ConsoleError::Unexpected(format!("reading an API answer: {error}")))?;
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }

    pub async fn get(
        &self,
        token: &str,
        path_and_query: impl Into<String>,
    ) -> Result<Answer, ConsoleError> {
        self.call(token, Method::GET, path_and_query, None, None)
            .await
    }

    /// A `GET` whose answer must be a success and a `T`.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        token: &str,
        path_and_query: impl Into<String>,
    ) -> Result<T, ConsoleError> {
        self.get(token, path_and_query).await?.json()
    }
}
