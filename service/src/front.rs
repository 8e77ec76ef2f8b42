//! Scan paths answered before the router.
//!
//! A scan is `GET` (or `HEAD`) of a fixed prefix and one id: `/m/{id}`, `/v1/scene/{id}`,
//! `/r/{key}`. They are the largest crowd by far, and going through axum's router (route
//! lookup, boxed route services cloned per request, nested route futures, the `Path`
//! extractor) cost about as much CPU as answering them did (measured with
//! `benches/scan-vs-nginx.sh`). [`Front`] sends these straight to their answer, observed by
//! the same [`layers::observe`] as every routed request (request id, span, time limit,
//! metrics under the route's pattern); everything else goes to the router, which still holds
//! the scan routes too, for paths this cheap match leaves alone (a percent-encoded id, say).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, Method, header};
use axum::response::Response;
use futures::FutureExt;
use futures::future::{BoxFuture, Either, Map};
use tower::Service;

use crate::layers::{self, Observed, Route};

/// How a scan route answers: the id from the path, the request, and the connection's peer
/// (the scanner, or the proxy in front of it).
pub type ScanAnswer =
    Arc<dyn Fn(String, Request, Option<IpAddr>) -> BoxFuture<'static, Response> + Send + Sync>;

/// One scan route: `prefix` then a single path segment.
#[derive(Clone)]
pub struct ScanRoute {
    /// `"/r/"`.
    pub prefix: &'static str,
    /// The router's pattern for the same route (`"/r/{key}"`), for metrics.
    pub pattern: &'static str,
    pub answer: ScanAnswer,
}

impl std::fmt::Debug for ScanRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanRoute")
            .field("pattern", &self.pattern)
            .finish_non_exhaustive()
    }
}

/// The service a process serves: scan routes first, then the router. Each connection gets
/// its own copy, told its peer ([`crate::serve::ForPeer`]); routed requests find the peer as
/// axum's `ConnectInfo<SocketAddr>`.
#[derive(Clone, Debug)]
pub struct Front {
    scans: Arc<[ScanRoute]>,
    router: Router,
    limit: Duration,
    peer: Option<SocketAddr>,
}

impl crate::serve::ForPeer for Front {
    fn for_peer(&self, peer: SocketAddr) -> Self {
        Front {
            peer: Some(peer),
            ..self.clone()
        }
    }
}

impl Front {
    /// `limit` is the time limit of a scan, as the router's [`layers::around`] has it.
    pub fn new(scans: Vec<ScanRoute>, router: Router, limit: Duration) -> Self {
        Front {
            scans: scans.into(),
            router,
            limit,
            peer: None,
        }
    }

    /// The scan route and id `request` asks for, when it is one.
    fn scan_of(&self, request: &Request) -> Option<(&ScanRoute, String)> {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            return None;
        }
        let path = request.uri().path();
        self.scans
            .iter()
            .find_map(|route| scan_id(path, route.prefix).map(|id| (route, id.to_owned())))
    }
}

/// The id in `path` when it is `prefix` then one plain segment: not empty, no `/`, nothing
/// percent-encoded. Anything else is the router's to decode or refuse.
pub fn scan_id<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let id = path.strip_prefix(prefix)?;
    (!id.is_empty() && !id.contains(['/', '%'])).then_some(id)
}

type Answered = Map<BoxFuture<'static, Response>, fn(Response) -> Result<Response, Infallible>>;

impl Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Observed<Answered>, <Router as Service<Request>>::Future>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both sides are always ready: scan answers take no capacity, and a `Router` is
        // ready by construction.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some((route, id)) = self.scan_of(&request) else {
            let mut request = request;
            if let Some(peer) = self.peer {
                request.extensions_mut().insert(ConnectInfo(peer));
            }
            return Either::Right(self.router.call(request));
        };
        let peer = self.peer.map(|peer| peer.ip());
        let head = request.method() == Method::HEAD;
        Either::Left(layers::observe(
            request,
            Route::Fixed(route.pattern),
            self.limit,
            // Called at once, so the route is borrowed, not cloned: its answer's future owns
            // what it needs.
            |request| {
                let answered = (route.answer)(id, request, peer);
                let answered: BoxFuture<'static, Response> = if head {
                    Box::pin(answered.map(without_body))
                } else {
                    answered
                };
                answered.map(Ok as fn(Response) -> Result<Response, Infallible>)
            },
        ))
    }
}

/// `HEAD` answers as `GET` without the body, keeping the length it would have had.
fn without_body(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    if let Some(length) = body.size_hint().exact()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Response::from_parts(parts, Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt as _;

    /// A front whose `/r/` scan route and router answer with who answered (and the id seen).
    fn front() -> Front {
        let answer: ScanAnswer = Arc::new(|id, _request, _peer| {
            Box::pin(async move {
                Response::builder()
                    .header("answered-by", "front")
                    .body(Body::from(format!("front {id}")))
                    .unwrap_or_default()
            })
        });
        let router = Router::new().route(
            "/r/{key}",
            get(
                |axum::extract::Path(key): axum::extract::Path<String>| async move {
                    format!("router {key}")
                },
            ),
        );
        let scan = ScanRoute {
            prefix: "/r/",
            pattern: "/r/{key}",
            answer,
        };
        Front::new(vec![scan], router, Duration::from_secs(5))
    }

    async fn call(method: Method, uri: &str) -> (Response, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("a request");
        let response = front().oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 16).await.expect("a body");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (Response::from_parts(parts, Body::empty()), text)
    }

    #[tokio::test]
    async fn a_plain_scan_is_answered_before_the_router_and_observed() {
        let (response, body) = call(Method::GET, "/r/abc123").await;
        assert_eq!(body, "front abc123");
        assert!(response.headers().contains_key("x-request-id"));
    }

    #[tokio::test]
    async fn anything_but_one_plain_segment_is_left_to_the_router() {
        // Percent-encoded: the router decodes it, the front does not try.
        assert_eq!(call(Method::GET, "/r/ab%63").await.1, "router abc");
        // Not a scan's method.
        let (response, _) = call(Method::POST, "/r/abc").await;
        assert_eq!(
            response.status(),
            axum::http::StatusCode::METHOD_NOT_ALLOWED
        );
        // More than one segment, or none.
        let (response, _) = call(Method::GET, "/r/abc/def").await;
        assert_eq!(response.status(), axum::http::StatusCode::NOT_FOUND);
        let (response, _) = call(Method::GET, "/r/").await;
        assert_eq!(response.status(), axum::http::StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn head_answers_as_get_without_the_body_and_keeps_its_length() {
        let (response, body) = call(Method::HEAD, "/r/abc").await;
        assert_eq!(response.headers()["answered-by"], "front");
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "9");
        assert!(body.is_empty());
    }
}
