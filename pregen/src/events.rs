//! What pregen reports: each event logs and counts in one place.

use std::time::Duration;

pub(crate) fn rendered(codes: usize, took: Duration) {
    metrics::counter!("pregen_codes_rendered_total").increment(codes as u64);
    metrics::histogram!("pregen_render_batch_seconds").record(took.as_secs_f64());
    tracing::debug!(codes, took_ms = took.as_millis() as u64, "batch rendered");
}

/// Also moves the depth gauge, which is otherwise set only between fills: a long fill would
/// leave it stale for minutes.
pub(crate) fn enqueued(codes: usize) {
    metrics::counter!("pregen_codes_enqueued_total").increment(codes as u64);
    metrics::gauge!("pool_depth_codes").increment(codes as f64);
}

pub(crate) fn depth(depth: u64) {
    metrics::gauge!("pool_depth_codes").set(depth as f64);
}

pub(crate) fn topped_up(depth_before: u64, added: u64) {
    tracing::info!(depth_before, added, "pool topped up");
}

pub(crate) fn failed(error: &crate::PregenError) {
    metrics::counter!("pregen_failures_total").increment(1);
    tracing::error!(error = %error, cause = ?std::error::Error::source(error), "pregen failed; retrying on the next tick");
}
