//! Claiming: one pooled code, bound to one caller's params, exactly once.
//!
//! The order is what makes the guarantees:
//! 1. take a code from the pool (held by a [`Claim`] guard);
//! 2. insert the binding in the durable store: its primary key refuses a code bound before
//!    (a redelivery after a crash or a rebalance), which is then acked and skipped;
//! 3. only after the commit, ack the code to the pool and answer.
//!
//! A request that fails or is dropped at any point (client gone, time limit) drops its
//! [`Claim`], which gives the code back; if the bind had in fact committed, the next taker
//! finds it bound and skips it. So a code is bound at most once and never lost.

use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;

use bindings::{BindError, StoreError};
use pool::{Delivery, PoolError, PoolReader};
use records::{Binding, Params, ParamsError, PoolRecord};

use crate::{Binder, events};

/// A dry pool is retried this many times within one request when every code taken turns
/// out to be bound already (a burst of redeliveries after a crash).
const MAX_SKIPS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    InvalidParams(#[from] ParamsError),
    #[error("the pool has no code left right now")]
    PoolDry,
    #[error("the pool is unavailable")]
    Pool(#[from] PoolError),
    #[error("the binding store is unavailable")]
    Store(#[from] StoreError),
}

/// A code taken from the pool and not yet settled. Dropping it gives the code back.
struct Claim<'a> {
    pool: &'a PoolReader,
    delivery: Option<Delivery>,
}

impl<'a> Claim<'a> {
    fn new(pool: &'a PoolReader, delivery: Delivery) -> Self {
        Claim {
            pool,
            delivery: Some(delivery),
        }
    }

    fn record(&self) -> &PoolRecord {
        match &self.delivery {
            Some(delivery) => &delivery.record,
            None => unreachable!("a claim holds its delivery until it is settled or dropped"),
        }
    }

    /// The code is bound (by us or before us): it leaves the pool for good.
    fn settle(mut self) {
        if let Some(delivery) = self.delivery.take() {
            self.pool.ack(&delivery);
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(delivery) = self.delivery.take() {
            events::code_given_back();
            self.pool.give_back(delivery);
        }
    }
}

impl Binder {
    /// Binds the next pooled code to `params` and returns the durable binding.
    pub async fn claim(&self, params: Value) -> Result<Arc<Binding>, ClaimError> {
        let params = Params::parse(params, &self.limits)?;
        for _ in 0..MAX_SKIPS {
            let Some(delivery) = self.pool.take(self.claim_wait).await? else {
                events::pool_dry();
                return Err(ClaimError::PoolDry);
            };
            let claim = Claim::new(&self.pool, delivery);
            let record = claim.record();
            let created_at = Utc::now();
            let binding = Binding {
                v: Binding::LAYOUT,
                request_id: record.request_id,
                tenant: self.tenant.clone(),
                params: params.clone(),
                content: record.content.clone(),
                issuer: record.issuer.clone(),
                version: 1,
                created_at,
                expires_at: self.binding_ttl.map(|ttl| created_at + ttl),
            };
            match self.bindings.bind(binding, record.image.as_ref()).await {
                Ok(binding) => {
                    claim.settle();
                    events::bound(&binding);
                    return Ok(binding);
                }
                Err(BindError::AlreadyBound) => {
                    events::already_bound_skipped(record.request_id);
                    claim.settle();
                }
                Err(BindError::Store(error)) => return Err(error.into()),
            }
        }
        Err(ClaimError::PoolDry)
    }
}
