//! What the binder reports: each event logs and counts in one place.

use records::{Binding, RequestId};

pub(crate) fn bound(binding: &Binding) {
    metrics::counter!("binder_binds_total").increment(1);
    tracing::debug!(request_id = %binding.request_id, tenant = %binding.tenant, "code bound");
}

pub(crate) fn already_bound_skipped(id: RequestId) {
    metrics::counter!("binder_redelivered_codes_skipped_total").increment(1);
    tracing::info!(request_id = %id, "pooled code was bound already (redelivery); skipped");
}

pub(crate) fn pool_dry() {
    metrics::counter!("binder_pool_dry_total").increment(1);
    tracing::warn!("the pool is dry; answering 503");
}

pub(crate) fn code_given_back() {
    metrics::counter!("binder_codes_given_back_total").increment(1);
}

pub(crate) fn idempotent_replay() {
    metrics::counter!("binder_idempotent_replays_total").increment(1);
    tracing::debug!("a retried request got the code its first attempt bound");
}

pub(crate) fn bound_on_demand(binding: &Binding) {
    metrics::counter!("binder_binds_total").increment(1);
    metrics::counter!("binder_on_demand_codes_total", "issuer" => binding.issuer.clone())
        .increment(1);
    tracing::debug!(request_id = %binding.request_id, "local lane dry: code drawn on demand");
}
