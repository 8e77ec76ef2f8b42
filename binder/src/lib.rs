//! The binder: what listing apps call to get a code.
//!
//! - [`claim`]: takes a code from the pool and binds it, at most once, durably.
//! - [`routes`]: the HTTP API (`POST /v1/codes`, `GET /v1/codes/{id}`, its images).
//!
//! Only the binder writes bindings.

pub mod claim;
mod events;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use bindings::Bindings;
use config::Settings;
use pool::PoolReader;
use records::{ParamsLimits, Tenant};

pub use claim::ClaimError;
pub use routes::router;

/// Everything a bind needs; shared by every request.
#[derive(Debug)]
pub struct Binder {
    pool: PoolReader,
    bindings: Bindings,
    tenant: Tenant,
    limits: ParamsLimits,
    claim_wait: Duration,
    binding_ttl: Option<chrono::Duration>,
    style: render::Style,
    public_base: String,
}

impl Binder {
    pub fn new(pool: PoolReader, bindings: Bindings, settings: &Settings) -> Arc<Self> {
        let binder = &settings.binder;
        Arc::new(Binder {
            pool,
            bindings,
            tenant: binder.tenant.clone(),
            limits: ParamsLimits {
                max_bytes: binder.max_params_bytes,
                ..ParamsLimits::default()
            },
            claim_wait: Duration::from_millis(binder.claim_wait_ms),
            binding_ttl: binder
                .binding_ttl_days
                .map(|days| chrono::Duration::days(i64::from(days))),
            style: settings.render.into(),
            public_base: settings.server.public_base(),
        })
    }
}
