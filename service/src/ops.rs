//! The operator's endpoints: liveness, readiness and metrics.
//!
//! `/healthz` answers while the process runs. `/readyz` runs every named check and answers
//! 503 with the failing names when one fails, so a load balancer stops sending traffic to a
//! process whose truth store is unreachable. An optional check (Redis: an accelerator the
//! process serves without) is named in the answer when it fails but leaves it 200. Every
//! check has [`CHECK_LIMIT`]: a backend whose packets are dropped makes its check time out,
//! not the probe hang. `/metrics` is Prometheus text.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// One readiness check: a name, whether the process is ready without it, and an async probe
/// that says what is wrong.
pub type ReadinessCheck = (
    &'static str,
    Needed,
    Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
);

/// Whether a failing check makes the process unready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needed {
    Required,
    Optional,
}

/// How long one check may take before it counts as failed.
pub const CHECK_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The checks `/readyz` runs.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<ReadinessCheck>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|(name, _, _)| name))
            .finish()
    }
}

impl Readiness {
    /// A check the process is not ready without.
    pub fn with<F>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        self.checks.push((name, Needed::Required, Arc::new(check)));
        self
    }

    /// A check whose failure is reported but leaves the process ready.
    pub fn with_optional<F>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        self.checks.push((name, Needed::Optional, Arc::new(check)));
        self
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Durations by default; the one histogram that counts things gets buckets of its own.
        let builder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full("bindings_commit_batch_size".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                )
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let handle = match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (a test harness, say): keep ours unattached.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        };
        // Histograms keep every sample until upkeep folds them into their buckets; without
        // it, a process nobody scrapes grows by every request it serves.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start metrics upkeep; histograms will grow until scraped");
        }
        handle
    })
}

/// How often histogram samples are folded into buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub fn router(readiness: Readiness) -> Router {
    prometheus();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(|| async { prometheus().render() }))
        .with_state(Arc::new(readiness))
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> impl IntoResponse {
    readiness.report().await
}

impl Readiness {
    /// Runs every check at once, each within [`CHECK_LIMIT`]; the status and one line per
    /// check (`name: ok`, `name: unavailable`, or `name: unavailable (optional)`).
    pub async fn report(&self) -> (StatusCode, String) {
        let results = futures::future::join_all(self.checks.iter().map(|(name, needed, check)| {
            let probe = check();
            async move {
                let result = match tokio::time::timeout(CHECK_LIMIT, probe).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {CHECK_LIMIT:?}")),
                };
                (*name, *needed, result)
            }
        }))
        .await;
        let mut body = String::new();
        let mut ready = true;
        for (name, needed, result) in results {
            match (result, needed) {
                (Ok(()), _) => body.push_str(&format!("{name}: ok\n")),
                (Err(problem), Needed::Required) => {
                    ready = false;
                    tracing::warn!(check = name, %problem, "not ready");
                    body.push_str(&format!("{name}: unavailable\n"));
                }
                (Err(problem), Needed::Optional) => {
                    tracing::warn!(check = name, %problem, "degraded");
                    body.push_str(&format!("{name}: unavailable (optional)\n"));
                }
            }
        }
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_fails_in_time_and_an_optional_one_leaves_the_process_ready() {
        let hangs =
            || -> BoxFuture<'static, Result<(), String>> { Box::pin(futures::future::pending()) };
        let fine = || -> BoxFuture<'static, Result<(), String>> { Box::pin(async { Ok(()) }) };

        let optional = Readiness::default()
            .with("store", fine)
            .with_optional("redis", hangs);
        let (status, body) = optional.report().await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "store: ok\nredis: unavailable (optional)\n");

        let required = Readiness::default().with("store", hangs);
        let started = tokio::time::Instant::now();
        let (status, body) = required.report().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "store: unavailable\n");
        assert_eq!(started.elapsed(), CHECK_LIMIT, "answered at the limit");
    }

    #[test]
    fn durations_and_batch_sizes_have_buckets_of_their_own() {
        let handle = prometheus();
        metrics::histogram!("bindings_commit_batch_size").record(3.0);
        metrics::histogram!("bindings_commit_seconds").record(0.002);
        handle.run_upkeep();
        let rendered = handle.render();
        assert!(
            rendered.contains("bindings_commit_batch_size_bucket{le=\"4\"} 1"),
            "{rendered}"
        );
        assert!(
            rendered.contains("bindings_commit_seconds_bucket{le=\"0.0025\"} 1"),
            "{rendered}"
        );
    }
}
