//! The binder: what listing apps call to get a code.
//!
//! - [`claim`]: takes a code from the pool and binds it, at most once, durably.
//! - [`routes`]: the HTTP API (`POST /v1/codes`, `GET /v1/codes/{id}`, its images).
//!
//! Every route checks the caller's API key ([`service::Keys`]) and is tenant-scoped.
//!
//! Only the binder writes bindings.

pub mod claim;
mod events;
pub mod routes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bindings::Bindings;
use config::Settings;
use pool::PoolReader;
use records::ParamsLimits;

pub use claim::ClaimError;
pub use routes::router;

/// Everything a bind needs; shared by every request.
#[derive(Debug)]
pub struct Binder {
    /// One reader per issuer lane the binder serves, by issuer name.
    lanes: BTreeMap<String, PoolReader>,
    /// The lane of a request that names no issuer (`pregen.issuer`).
    default_issuer: String,
    /// Draws a code at bind time when the local lane is dry (`binder.on_demand_local`).
    on_demand: Option<pregen::issuer::LocalIssuer>,
    bindings: Bindings,
    keys: service::Keys,
    limits: ParamsLimits,
    claim_wait: Duration,
    binding_ttl: Option<chrono::Duration>,
    style: render::Style,
    public_base: String,
}

impl Binder {
    /// A binder taking from the lanes of `readers` (one per issuer), checking callers with
    /// `keys` (shared with the other APIs of the process, so a key has one rate limit).
    pub fn new(
        readers: Vec<PoolReader>,
        bindings: Bindings,
        keys: service::Keys,
        settings: &Settings,
    ) -> Arc<Self> {
        let binder = &settings.binder;
        Arc::new(Binder {
            lanes: readers
                .into_iter()
                .map(|reader| (reader.issuer().to_owned(), reader))
                .collect(),
            default_issuer: settings.pregen.issuer.clone(),
            on_demand: binder
                .on_demand_local
                .then(|| pregen::issuer::LocalIssuer::new(settings)),
            keys,
            bindings,
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
