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
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use bindings::{BindError, StoreError};
use pool::{Delivery, PoolError, PoolReader};
use records::{Binding, Params, ParamsError, PoolRecord, Tenant};

use crate::{Binder, events};

/// A dry pool is retried this many times within one request when every code taken turns
/// out to be bound already (a burst of redeliveries after a crash).
const MAX_SKIPS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    InvalidParams(#[from] ParamsError),
    #[error("this Idempotency-Key was used with other params")]
    IdempotencyKeyReused,
    #[error("this binder serves no issuer `{0}`")]
    UnknownIssuer(String),
    #[error("the pool has no code left right now")]
    PoolDry,
    #[error("the pool is unavailable")]
    Pool(#[from] PoolError),
    #[error("the binding store is unavailable")]
    Store(#[from] StoreError),
}

/// The image a bind stores: a remote issuer's bytes, which cannot be made again. A local
/// code is drawn again when asked for (deterministically, from the content it encodes), so
/// its bytes are not written: a bind writes one row, not two.
fn image_to_keep(record: &PoolRecord) -> Option<&records::CodeImage> {
    record
        .image
        .as_ref()
        .filter(|_| record.issuer != config::LOCAL_ISSUER)
}

fn new_binding(
    record: &PoolRecord,
    request: &BindRequest<'_>,
    params: &Params,
    ttl: Option<chrono::Duration>,
) -> Binding {
    let created_at = Utc::now();
    Binding {
        v: Binding::LAYOUT,
        request_id: record.request_id,
        tenant: request.tenant.clone(),
        params: params.clone(),
        content: record.content.clone(),
        issuer: record.issuer.clone(),
        version: 1,
        created_at,
        expires_at: ttl.map(|ttl| created_at + ttl),
        tags: request.tags.clone(),
    }
}

/// One bind as an app asks for it.
#[derive(Debug)]
pub struct BindRequest<'a> {
    pub tenant: Tenant,
    pub params: Value,
    /// `local` or a remote issuer; the binder's default lane when `None`.
    pub issuer: Option<&'a str>,
    /// The app's `Idempotency-Key`: a retry with the same key gets the same code.
    pub idempotency_key: Option<&'a str>,
    /// Labels the code's scans carry (a campaign, a print run).
    pub tags: records::Tags,
}

/// What a bind produced.
#[derive(Debug)]
pub struct Bound {
    pub binding: Arc<Binding>,
    /// The binding an earlier request with the same idempotency key made.
    pub replayed: bool,
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
    /// Binds the next pooled code of the request's issuer (the default lane when it names
    /// none) to its params for its tenant, and returns the durable binding; or, when its
    /// idempotency key was used before by the tenant, the binding that request made.
    pub async fn claim(&self, mut request: BindRequest<'_>) -> Result<Bound, ClaimError> {
        let issuer = request.issuer.unwrap_or(&self.default_issuer);
        let pool = self
            .lanes
            .get(issuer)
            .ok_or_else(|| ClaimError::UnknownIssuer(issuer.to_owned()))?;
        // The raw JSON is read once, here; the validated params are what is kept.
        let params = Params::parse(std::mem::take(&mut request.params), &self.limits)?;
        if let Some(earlier) = self
            .replay(&request.tenant, request.idempotency_key, &params)
            .await?
        {
            return Ok(earlier);
        }
        // A dry local lane draws a code at once rather than make the app wait for one.
        let on_demand = self
            .on_demand
            .as_ref()
            .filter(|_| issuer == config::LOCAL_ISSUER);
        let wait = if on_demand.is_some() {
            Duration::ZERO
        } else {
            self.claim_wait
        };
        for _ in 0..MAX_SKIPS {
            let Some(delivery) = pool.take(wait).await? else {
                let Some(local) = on_demand else {
                    events::pool_dry();
                    return Err(ClaimError::PoolDry);
                };
                return self.bind_on_demand(local, &request, params).await;
            };
            let claim = Claim::new(pool, delivery);
            let record = claim.record();
            let bound = self
                .bindings
                .bind(
                    new_binding(record, &request, &params, self.binding_ttl),
                    image_to_keep(record),
                    request.idempotency_key,
                )
                .await;
            match bound {
                Ok(binding) => {
                    claim.settle();
                    events::bound(&binding);
                    return Ok(Bound {
                        binding,
                        replayed: false,
                    });
                }
                Err(BindError::AlreadyBound) => {
                    // A twin request with the same idempotency key may have committed first:
                    // then this code is still free (unless it was bound before, too).
                    let twin = self
                        .replay(&request.tenant, request.idempotency_key, &params)
                        .await?;
                    // Without a twin the clash was on the request id: bound before.
                    let code_bound = twin.is_none()
                        || self
                            .bindings
                            .durable()
                            .get(record.request_id)
                            .await?
                            .is_some();
                    if code_bound {
                        events::already_bound_skipped(record.request_id);
                        claim.settle();
                    }
                    if let Some(twin) = twin {
                        return Ok(twin);
                    }
                }
                Err(BindError::Store(error)) => return Err(error.into()),
            }
        }
        // Every code taken was bound already (a burst of redeliveries after a broker restart
        // or a crash): for this request the lane is as good as dry.
        match on_demand {
            Some(local) => self.bind_on_demand(local, &request, params).await,
            None => {
                events::pool_dry();
                Err(ClaimError::PoolDry)
            }
        }
    }

    /// Draws a new local code now and binds it: the pool is only a head start for these.
    async fn bind_on_demand(
        &self,
        local: &pregen::issuer::LocalIssuer,
        request: &BindRequest<'_>,
        params: Params,
    ) -> Result<Bound, ClaimError> {
        let record = local.draw_now().await.map_err(|error| {
            tracing::error!(%error, "drawing a code on demand failed");
            ClaimError::PoolDry
        })?;
        let binding = new_binding(&record, request, &params, self.binding_ttl);
        match self
            .bindings
            .bind(binding, image_to_keep(&record), request.idempotency_key)
            .await
        {
            Ok(binding) => {
                events::bound_on_demand(&binding);
                Ok(Bound {
                    binding,
                    replayed: false,
                })
            }
            // A fresh id cannot clash: only a twin with the same idempotency key can.
            Err(BindError::AlreadyBound) => self
                .replay(&request.tenant, request.idempotency_key, &params)
                .await?
                .ok_or(ClaimError::PoolDry),
            Err(BindError::Store(error)) => Err(error.into()),
        }
    }

    /// The binding an earlier request with `idempotency_key` made for `tenant`, if any; an
    /// error when that request asked for other params.
    async fn replay(
        &self,
        tenant: &Tenant,
        idempotency_key: Option<&str>,
        params: &Params,
    ) -> Result<Option<Bound>, ClaimError> {
        let Some(key) = idempotency_key else {
            return Ok(None);
        };
        let Some(earlier) = self
            .bindings
            .durable()
            .by_idempotency_key(tenant, key)
            .await?
        else {
            return Ok(None);
        };
        if earlier.params != *params {
            return Err(ClaimError::IdempotencyKeyReused);
        }
        events::idempotent_replay();
        Ok(Some(Bound {
            binding: Arc::new(earlier),
            replayed: true,
        }))
    }
}
