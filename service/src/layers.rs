//! The layer stack every qrpool router runs behind.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use tower::ServiceBuilder;

use axum::http::HeaderValue;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::Problem;

/// Wraps `router` with: a request id (`x-request-id`, kept when the caller sent one) that
/// every log line of the request carries, per-route metrics, a time limit answered with a
/// problem+json 503 (counted under its route too), and a body limit answered with 413.
pub fn around(router: Router, max_body_bytes: usize, timeout: Duration) -> Router {
    router
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(timeout, observe))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(SequentialRequestIds))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
}

/// Paths of the scan-time crowd: tens of thousands of requests a second on one process.
const SCAN_PATHS: [&str; 3] = ["/m/", "/v1/scene/", "/r/"];

/// The span every log line of a request carries. API calls get an `info` span; scans a
/// `debug` one, because at the default `info` level building a span per scan cost about a
/// quarter of the scan path's throughput (measured with `benches/scan-vs-nginx.sh`). Errors
/// of a scan are still logged, without the span.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let path = request.uri().path();
    if SCAN_PATHS.iter().any(|prefix| path.starts_with(prefix)) {
        tracing::debug_span!("request", method = %request.method(), uri = %path, id)
    } else {
        tracing::info_span!("request", method = %request.method(), uri = %path, id)
    }
}

/// Request ids unique across processes without a system call per request (a UUID v4 asks the
/// kernel for randomness every time, which showed up in scan-path profiles): a random
/// 64-bit process prefix, drawn once, then a counter. `<16 hex>-<16 hex>`.
#[derive(Debug, Clone, Copy)]
struct SequentialRequestIds;

impl MakeRequestId for SequentialRequestIds {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(process_prefix);
        let id = format!(
            "{prefix:016x}-{:016x}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// 64 random bits, once per process: the standard library seeds every `RandomState` from the
/// operating system, so hashing anything with a fresh one yields an unpredictable number.
fn process_prefix() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// Answers 503 when a handler runs past `limit` (the handler's future is dropped, which
/// releases whatever it held: a claimed code goes back to the pool), and counts requests and
/// their latency by matched route (never the raw path: ids would make the label set
/// unbounded). One middleware rather than two: each `from_fn` layer clones the inner service
/// and boxes a future per request, which showed in scan-path profiles.
async fn observe(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("http_requests_timed_out_total").increment(1);
            Problem::unavailable(format!(
                "the request took longer than {} ms",
                limit.as_millis()
            ))
            .into_response()
        }
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_share_a_process_prefix_and_never_repeat() {
        let request = axum::http::Request::new(());
        let ids: Vec<String> = (0..1000)
            .map(|_| {
                let id = SequentialRequestIds
                    .make_request_id(&request)
                    .expect("an id");
                id.header_value().to_str().expect("ASCII").to_owned()
            })
            .collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let prefix = &ids[0][..16];
        assert!(
            ids.iter()
                .all(|id| id.len() == 33 && id.starts_with(prefix) && id.as_bytes()[16] == b'-')
        );
    }
}
