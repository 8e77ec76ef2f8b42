//! The operator's endpoints: liveness, readiness and metrics.
//!
//! `/healthz` answers while the process runs. `/readyz` runs every named check and answers
//! 503 with the failing names when one fails, so a load balancer stops sending traffic to a
//! process whose truth store is unreachable. `/metrics` is Prometheus text.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// One readiness check: a name and an async probe that says what is wrong.
pub type ReadinessCheck = (
    &'static str,
    Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
);

/// The checks `/readyz` runs.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<ReadinessCheck>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Readiness {
    pub fn with<F>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        self.checks.push((name, Arc::new(check)));
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
    let results = futures::future::join_all(readiness.checks.iter().map(|(name, check)| {
        let probe = check();
        async move { (*name, probe.await) }
    }))
    .await;
    let mut body = String::new();
    let mut ready = true;
    for (name, result) in results {
        match result {
            Ok(()) => body.push_str(&format!("{name}: ok\n")),
            Err(problem) => {
                ready = false;
                tracing::warn!(check = name, %problem, "not ready");
                body.push_str(&format!("{name}: unavailable\n"));
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

#[cfg(test)]
mod tests {
    use super::*;

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
