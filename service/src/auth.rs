//! Who is calling an API (codes, links): API keys, their scopes, and a rate limit per key.
//!
//! Apps send `Authorization: Bearer qrp_<key id>_<secret>`. A key belongs to one tenant and
//! carries scopes (`bind`, `read`, `admin`); every route asks for the scope it needs, and
//! every read is limited to the caller's tenant (another tenant's code is a plain 404, so
//! ids cannot be probed across tenants).
//!
//! Keys are looked up in the binding store and kept in memory for [`KEY_TTL`], unknown ids
//! included (a flood of made-up keys costs one lookup per id); so a revoked key stops working
//! within that time. Each key has its own token bucket (`rate_per_sec`, burst of as many).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::future::Cache;

use crate::Problem;
use bindings::{ApiKey, DurableStore};
use records::{KeyToken, Scope, Tenant};

/// How long a looked-up key (or the absence of one) is trusted.
pub const KEY_TTL: Duration = Duration::from_secs(10);
/// How long an idle key's rate bucket is kept.
const BUCKET_IDLE: Duration = Duration::from_secs(600);

/// The caller of one request, once its key is checked.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Tenant,
    pub key_id: String,
    /// The key's rate bucket, for requests that do the work of many (a batch).
    bucket: Arc<DefaultDirectRateLimiter>,
}

impl Caller {
    /// Waits for one more request's worth of the key's rate: a batch pays for each item
    /// after the first (which its request paid for), so a batch is paced to the key's rate
    /// rather than slipping past it.
    pub async fn pace(&self) {
        self.bucket.until_ready().await;
    }
}

/// Checks API keys; cheap to share.
#[derive(Clone)]
pub struct Keys {
    store: DurableStore,
    known: Cache<String, Option<Arc<ApiKey>>>,
    buckets: Cache<String, Arc<DefaultDirectRateLimiter>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("cached", &self.known.entry_count())
            .finish_non_exhaustive()
    }
}

impl Keys {
    pub fn new(store: DurableStore) -> Self {
        Keys {
            store,
            known: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(KEY_TTL)
                .build(),
            buckets: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(BUCKET_IDLE)
                .build(),
        }
    }

    /// The caller, if the request carries a valid key with `scope` and within its rate.
    pub async fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, Problem> {
        let token = bearer_token(headers).ok_or_else(|| {
            unauthenticated(
                "send `Authorization: Bearer <API key>`; `qrpool keys create` makes one",
            )
        })?;
        let token = KeyToken::parse(token).ok_or_else(invalid_key)?;
        let key = self.lookup(token.key_id()).await?.ok_or_else(invalid_key)?;
        if key.revoked_at.is_some() || !token.matches(&key.secret_hash) {
            return Err(invalid_key());
        }
        if !key.scopes.contains(scope) {
            metrics::counter!("api_requests_forbidden_total", "scope" => scope.as_str())
                .increment(1);
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "urn:qrpool:problem:missing-scope",
                "Forbidden",
            )
            .with_detail(format!("this key lacks the `{}` scope", scope.as_str())));
        }
        let bucket = self.within_rate(&key).await?;
        Ok(Caller {
            tenant: key.tenant.clone(),
            key_id: key.key_id.clone(),
            bucket,
        })
    }

    async fn lookup(&self, key_id: &str) -> Result<Option<Arc<ApiKey>>, Problem> {
        let store = &self.store;
        self.known
            .try_get_with(key_id.to_owned(), async move {
                store.api_key(key_id).await.map(|key| key.map(Arc::new))
            })
            .await
            .map_err(|error| {
                tracing::error!(%error, "looking up an API key failed");
                Problem::unavailable("the key store is unavailable")
            })
    }

    async fn within_rate(&self, key: &ApiKey) -> Result<Arc<DefaultDirectRateLimiter>, Problem> {
        let rate = NonZeroU32::new(key.rate_per_sec).unwrap_or(NonZeroU32::MIN);
        let bucket = self
            .buckets
            .get_with(key.key_id.clone(), async move {
                Arc::new(RateLimiter::direct(Quota::per_second(rate)))
            })
            .await;
        bucket
            .check()
            .map(|()| Arc::clone(&bucket))
            .map_err(|not_until| {
                metrics::counter!("api_requests_rate_limited_total").increment(1);
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "urn:qrpool:problem:rate-limited",
                    "Too Many Requests",
                )
                .with_detail(format!("this key may make {rate} requests per second"))
                .retry_after(u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX))
            })
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthenticated(detail: &str) -> Problem {
    metrics::counter!("api_requests_unauthenticated_total").increment(1);
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "urn:qrpool:problem:unauthenticated",
        "Unauthorized",
    )
    .with_detail(detail)
}

/// One answer for a malformed, unknown, revoked or wrong key: which it was is not told.
fn invalid_key() -> Problem {
    unauthenticated("the API key is not valid")
}
