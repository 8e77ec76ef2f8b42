//! The layer every qrpool router runs behind, written by hand for the scan path.
//!
//! One [`Observe`] service does what tower-http's request-id and trace layers and a metrics
//! middleware did as four: a request id, a span, a time limit, per-route metrics. Scans are
//! the largest crowd (tens of thousands a second on one process), and the profile of the
//! layered stack showed each layer's per-request clone, boxed future, label strings and
//! metric lookups; here a request costs one id, one clock read and, only when the handler
//! actually waits, one timer. Metric handles are looked up once per route, method and status
//! on each worker thread, not built from labels per request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use tower::{Layer, Service};

use crate::Problem;

/// The header a request id travels in, both ways. A `HeaderName` made once: inserting by a
/// `&str` name that is not a standard header copies the name on every request.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps `router` with: a request id (`x-request-id`, kept when the caller sent a usable one)
/// that every log line of the request carries and the answer repeats, per-route metrics, a
/// time limit answered with a problem+json 503 (counted under its route too), and a body limit
/// answered with 413.
pub fn around(router: Router, max_body_bytes: usize, timeout: Duration) -> Router {
    router
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(ObserveLayer { limit: timeout })
}

/// Builds [`Observe`] around each route (inside the router, so the matched route is known).
#[derive(Debug, Clone, Copy)]
pub struct ObserveLayer {
    limit: Duration,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            limit: self.limit,
        }
    }
}

/// Request id, span, time limit and metrics around one route's service.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    limit: Duration,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = match request.extensions().get::<MatchedPath>() {
            Some(matched) => Route::Matched(matched.clone()),
            None => Route::Fixed("unmatched"),
        };
        observe(request, route, self.limit, |request| {
            self.inner.call(request)
        })
    }
}

/// The route a request is counted under: the router's pattern, never the raw path (ids
/// would make the label set unbounded).
#[derive(Debug, Clone)]
pub enum Route {
    Matched(MatchedPath),
    /// A route answered before the router (see [`crate::front`]), or none matched.
    Fixed(&'static str),
}

impl Route {
    fn as_str(&self) -> &str {
        match self {
            Route::Matched(matched) => matched.as_str(),
            Route::Fixed(pattern) => pattern,
        }
    }
}

/// Gives `request` its id and span and starts `answer` on it, observed: see [`Observe`].
pub fn observe<F>(
    request: Request,
    route: Route,
    limit: Duration,
    answer: impl FnOnce(Request) -> F,
) -> Observed<F> {
    let started = Instant::now();
    // Not written into the request: nothing further in reads it there (the span carries it).
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .filter(|id| usable_request_id(id.as_bytes()))
        .cloned()
        .unwrap_or_else(next_request_id);
    let method = request.method().clone();
    let span = request_span(&request, &id);
    let inner = span.in_scope(|| answer(request));
    Observed {
        inner,
        timer: None,
        started,
        limit,
        span,
        id,
        route,
        method,
    }
}

pin_project_lite::pin_project! {
    /// A request being answered; see [`Observe`].
    pub struct Observed<F> {
        #[pin]
        inner: F,
        // Armed only when the handler first waits: most scans are answered on the first poll
        // from the in-process cache, and a timer per request showed in their profile.
        #[pin]
        timer: Option<tokio::time::Sleep>,
        started: Instant,
        limit: Duration,
        span: tracing::Span,
        id: HeaderValue,
        route: Route,
        method: Method,
    }
}

impl<F> Future for Observed<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let mut response = match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => {
                if this.timer.is_none() {
                    let deadline = tokio::time::Instant::from_std(*this.started + *this.limit);
                    this.timer.set(Some(tokio::time::sleep_until(deadline)));
                }
                let Some(timer) = this.timer.as_pin_mut() else {
                    return Poll::Pending;
                };
                if timer.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Dropping the handler's future (with this one) releases what it held: a
                // claimed code goes back to the pool.
                metrics::counter!("http_requests_timed_out_total").increment(1);
                Problem::unavailable(format!(
                    "the request took longer than {} ms",
                    this.limit.as_millis()
                ))
                .into_response()
            }
        };
        let elapsed = this.started.elapsed();
        let status = response.status();
        RouteMetrics::with(
            this.route.as_str(),
            this.method,
            status.as_u16(),
            |counter, duration| {
                counter.increment(1);
                duration.record(elapsed.as_secs_f64());
            },
        );
        if status.is_server_error() {
            tracing::error!(
                status = status.as_u16(),
                latency_ms = elapsed.as_millis(),
                "answered with a server error"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                latency_ms = elapsed.as_millis(),
                "answered"
            );
        }
        // Moved, not cloned: a clone of a header value made from bytes allocates. This future
        // is not polled again once it is ready.
        let id = std::mem::replace(this.id, HeaderValue::from_static(""));
        response.headers_mut().insert(REQUEST_ID.clone(), id);
        Poll::Ready(Ok(response))
    }
}

/// Paths of the scan-time crowd: tens of thousands of requests a second on one process.
const SCAN_PATHS: [&str; 3] = ["/m/", "/v1/scene/", "/r/"];

/// The span every log line of a request carries. API calls get an `info` span; scans a
/// `debug` one, because at the default `info` level building a span per scan cost about a
/// quarter of the scan path's throughput (measured with `benches/scan-vs-nginx.sh`). Errors
/// of a scan are still logged, without the span.
fn request_span(request: &Request, id: &HeaderValue) -> tracing::Span {
    let id = id.to_str().unwrap_or_default();
    let path = request.uri().path();
    if SCAN_PATHS.iter().any(|prefix| path.starts_with(prefix)) {
        tracing::debug_span!("request", method = %request.method(), uri = %path, id)
    } else {
        tracing::info_span!("request", method = %request.method(), uri = %path, id)
    }
}

/// A caller's request id is kept when it is short and plain (it lands in logs).
fn usable_request_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Request ids unique across processes without a system call per request (a UUID v4 asks the
/// kernel for randomness every time, which showed up in scan-path profiles): a random
/// 64-bit process prefix, drawn once, then a counter. `<16 hex>-<16 hex>`.
fn next_request_id() -> HeaderValue {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(process_prefix);
    let counter = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut text = [b'-'; 33];
    write_hex(&mut text[..16], prefix);
    write_hex(&mut text[17..], counter);
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn write_hex(into: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (place, digit) in into.iter_mut().rev().enumerate() {
        *digit = DIGITS[((value >> (place * 4)) & 0xf) as usize];
    }
}

/// 64 random bits, once per process: the standard library seeds every `RandomState` from the
/// operating system, so hashing anything with a fresh one yields an unpredictable number.
fn process_prefix() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// `http_requests_total{route,method,status}` and `http_request_duration_seconds{route}`
/// handles, found once per worker thread. Routes are the router's patterns (never raw paths,
/// whose ids would make the label set unbounded), so the cache stays small.
#[derive(Default)]
struct RouteMetrics {
    routes: HashMap<Box<str>, RouteHandles>,
}

struct RouteHandles {
    duration: Histogram,
    requests: Vec<(Method, u16, Counter)>,
}

impl RouteMetrics {
    fn with(route: &str, method: &Method, status: u16, record: impl FnOnce(&Counter, &Histogram)) {
        thread_local! {
            static HANDLES: RefCell<RouteMetrics> = RefCell::default();
        }
        HANDLES.with_borrow_mut(|cache| {
            let handles = match cache.routes.get_mut(route) {
                Some(handles) => handles,
                None => cache.routes.entry(route.into()).or_insert_with(|| RouteHandles {
                    duration: metrics::histogram!("http_request_duration_seconds", "route" => route.to_owned()),
                    requests: Vec::new(),
                }),
            };
            let position = handles
                .requests
                .iter()
                .position(|(m, s, _)| m == method && *s == status)
                .unwrap_or_else(|| {
                    let counter = metrics::counter!(
                        "http_requests_total",
                        "route" => route.to_owned(),
                        "method" => method.as_str().to_owned(),
                        "status" => status.to_string()
                    );
                    handles.requests.push((method.clone(), status, counter));
                    handles.requests.len() - 1
                });
            record(&handles.requests[position].2, &handles.duration);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_share_a_process_prefix_and_never_repeat() {
        let ids: Vec<String> = (0..1000)
            .map(|_| next_request_id().to_str().expect("ASCII").to_owned())
            .collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let prefix = &ids[0][..16];
        assert!(ids.iter().all(|id| id.len() == 33
            && id.starts_with(prefix)
            && id.as_bytes()[16] == b'-'
            && id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())));
    }

    #[test]
    fn a_caller_id_is_kept_only_when_plain_and_short() {
        assert!(usable_request_id(b"abc-123_x.y"));
        assert!(!usable_request_id(b""));
        assert!(!usable_request_id(&[b'a'; 65]));
        assert!(!usable_request_id(b"a b"));
        assert!(!usable_request_id(b"a\"<script>"));
    }

    #[test]
    fn hex_fills_the_whole_field() {
        let mut field = [0u8; 16];
        write_hex(&mut field, 0xab);
        assert_eq!(&field, b"00000000000000ab");
    }
}
