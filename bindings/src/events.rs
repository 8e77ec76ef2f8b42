//! What the binding tiers report: each event logs and counts in one place.

use std::sync::LazyLock;

use metrics::Counter;

/// Where a lookup looked.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tier {
    Local,
    /// The short negative cache of ids found unbound.
    LocalUnbound,
    Redis,
    Database,
}

impl Tier {
    const ALL: [Tier; 4] = [Tier::Local, Tier::LocalUnbound, Tier::Redis, Tier::Database];

    fn label(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::LocalUnbound => "local_unbound",
            Tier::Redis => "redis",
            Tier::Database => "database",
        }
    }
}

/// A lookup in one tier hit or missed. Every scan counts one, so the handles are found once
/// (building a metric key from labels per call showed in the scan path's profile).
pub(crate) fn lookup(tier: Tier, hit: bool) {
    static LOOKUPS: LazyLock<[[Counter; 2]; 4]> = LazyLock::new(|| {
        Tier::ALL.map(|tier| {
            ["miss", "hit"].map(|outcome| {
                metrics::counter!("bindings_lookups_total", "tier" => tier.label(), "outcome" => outcome)
            })
        })
    });
    LOOKUPS[tier as usize][usize::from(hit)].increment(1);
}

/// Redis failed or timed out; the caller went on without it.
pub(crate) fn redis_skipped(operation: &'static str, error: &dyn std::fmt::Display) {
    tracing::warn!(operation, %error, "Redis unavailable; going on without the hot tier");
    metrics::counter!("bindings_redis_errors_total", "operation" => operation).increment(1);
}
