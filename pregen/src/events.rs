//! What pregen reports: each event logs and counts in one place.

use std::time::Duration;

pub(crate) fn rendered(codes: usize, took: Duration) {
    metrics::counter!("pregen_codes_rendered_total").increment(codes as u64);
    metrics::histogram!("pregen_render_batch_seconds").record(took.as_secs_f64());
    tracing::debug!(codes, took_ms = took.as_millis() as u64, "batch rendered");
}

/// Also moves the depth gauge, which is otherwise set only between fills: a long fill would
/// leave it stale for minutes.
pub(crate) fn enqueued(issuer: &str, codes: usize) {
    metrics::counter!("pregen_codes_enqueued_total", "issuer" => issuer.to_owned())
        .increment(codes as u64);
    metrics::gauge!("pool_depth_codes").increment(codes as f64);
}

pub(crate) fn depth(depth: u64) {
    metrics::gauge!("pool_depth_codes").set(depth as f64);
}

/// How fast the binders take codes from the lane, and how long it lasts at that rate.
pub(crate) fn draining(issuer: &str, codes_per_sec: f64, seconds_left: f64) {
    metrics::gauge!("pool_drain_codes_per_second", "issuer" => issuer.to_owned())
        .set(codes_per_sec);
    metrics::gauge!("pool_seconds_left", "issuer" => issuer.to_owned()).set(seconds_left);
}

/// The low-water mark: a gauge an operator can alert on (with a `for:` longer than a
/// refill), and a warning in the log when `warn` (see `low_water_alarm`; at start an empty
/// pool is expected and not warned about).
pub(crate) fn low_water(issuer: &str, depth: u64, low_water: u64, warn: bool) {
    let below = depth < low_water;
    metrics::gauge!("pool_below_low_water", "issuer" => issuer.to_owned())
        .set(f64::from(u8::from(below)));
    if below && warn {
        tracing::warn!(
            issuer,
            depth,
            low_water,
            "the pool is below its low-water mark"
        );
    }
}

pub(crate) fn topped_up(depth_before: u64, added: u64, plan: &crate::Plan) {
    tracing::info!(
        depth_before,
        added,
        off_peak = plan.off_peak,
        quota_share = plan.quota_share,
        "pool topped up"
    );
}

pub(crate) fn failed(error: &crate::PregenError) {
    metrics::counter!("pregen_failures_total").increment(1);
    tracing::error!(error = %error, cause = ?std::error::Error::source(error), "pregen failed; retrying on the next tick");
}

pub(crate) fn issued(issuer: &str) {
    metrics::counter!("issuer_calls_total", "issuer" => issuer.to_owned(), "outcome" => "issued")
        .increment(1);
}

pub(crate) fn over_quota(issuer: &str) {
    metrics::counter!("issuer_calls_total", "issuer" => issuer.to_owned(), "outcome" => "over_quota").increment(1);
    tracing::warn!(
        issuer,
        "the issuer answered over quota; every worker holds off for a window"
    );
}

pub(crate) fn retrying(issuer: &str, reason: &str) {
    metrics::counter!("issuer_calls_total", "issuer" => issuer.to_owned(), "outcome" => "retried")
        .increment(1);
    tracing::debug!(issuer, reason, "issuer call failed; retrying");
}

pub(crate) fn gave_up(issuer: &str, reason: &str) {
    metrics::counter!("issuer_codes_given_up_total", "issuer" => issuer.to_owned()).increment(1);
    tracing::warn!(issuer, reason, "gave a code up after retries");
}

pub(crate) fn issuer_stopped(issuer: &str, error: &crate::IssueError) {
    metrics::gauge!("issuer_stopped", "issuer" => issuer.to_owned()).set(1.0);
    tracing::error!(issuer, error = %error, "issuer stopped: its settings are wrong; no more calls until they are fixed");
}

pub(crate) fn issuer_still_stopped(issuer: &str) {
    tracing::error!(
        issuer,
        "issuer is stopped by a configuration error; fix the settings and restart pregen"
    );
}

pub(crate) fn quota_wait(issuer: &str) {
    metrics::counter!("issuer_quota_waits_total", "issuer" => issuer.to_owned()).increment(1);
}

pub(crate) fn quota_unreachable(issuer: &str, error: &str) {
    metrics::counter!("issuer_quota_unreachable_total", "issuer" => issuer.to_owned()).increment(1);
    tracing::warn!(
        issuer,
        error,
        "the shared quota schedule is unreachable; no calls until Redis answers again"
    );
}

/// This worker's calls over the last window as a share of the quota (sum over workers for
/// the fleet's).
pub(crate) fn quota_used(issuer: &str, ratio: f64) {
    metrics::gauge!("pregen_issuer_quota_used_ratio", "issuer" => issuer.to_owned()).set(ratio);
}

pub(crate) fn token_fetched(issuer: &str, forced: bool) {
    metrics::counter!("issuer_token_fetches_total", "issuer" => issuer.to_owned(), "forced" => forced.to_string()).increment(1);
    tracing::info!(issuer, forced, "fetching an access token");
}

pub(crate) fn token_shared_unreachable(issuer: &str, error: &str) {
    tracing::warn!(
        issuer,
        error,
        "the shared token is unreachable; this worker fetches its own"
    );
}
