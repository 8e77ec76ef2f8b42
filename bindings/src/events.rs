//! What the binding tiers report: each event logs and counts in one place.

/// A lookup in one tier hit or missed.
pub(crate) fn lookup(tier: &'static str, hit: bool) {
    let outcome = if hit { "hit" } else { "miss" };
    metrics::counter!("bindings_lookups_total", "tier" => tier, "outcome" => outcome).increment(1);
}

/// Redis failed or timed out; the caller went on without it.
pub(crate) fn redis_skipped(operation: &'static str, error: &dyn std::fmt::Display) {
    tracing::warn!(operation, %error, "Redis unavailable; going on without the hot tier");
    metrics::counter!("bindings_redis_errors_total", "operation" => operation).increment(1);
}
