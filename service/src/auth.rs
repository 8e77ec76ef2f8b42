//! Who is calling an API (codes, links): API keys, their scopes, and a rate limit per key.
//!
//! Apps send `Authorization: Bearer qrp_<key id>_<secret>`. A key belongs to one tenant and
//! carries scopes (`bind`, `read`, `admin`); every route asks for the scope it needs, and
//! every read is limited to the caller's tenant (another tenant's code is a plain 404, so
//! ids cannot be probed across tenants).
//!
//! Keys are looked up in the binding store and kept in memory for [`KEY_TTL`], unknown ids
//! included (a flood of made-up keys costs one lookup per id); so a revoked key stops working
//! within that time.
//!
//! Each key has a rate (`rate_per_sec`, with a burst of as many). With Redis configured it is
//! one budget across every process: a GCRA schedule per key in Redis ([`pacing`]), so N
//! binders do not give a key N times its rate. A process takes a key's slots from Redis a
//! block at a time (1 % of the rate, at least one), so that a busy key costs one Redis call
//! per block rather than per request; a block not used within a second is let go, so a key
//! may get at most 1 % more than its rate per process, never N times it. While Redis fails each process falls back to a
//! bucket of its own (`governor`), counted in `api_rate_limit_local_total` and logged when it
//! starts and ends; the next request after Redis's rest (a second) tries it again.
//!
//! A console session (`Bearer qrs_…`, see [`records::SessionToken`]) is accepted wherever a
//! key is: it acts with its key's tenant, scopes and rate bucket, for as long as the key is
//! valid and the session is neither ended nor idle past its limit. The console checks the
//! session against the store on every page ([`Keys::session`]); the calls it then makes
//! through the API find it here without reading the store again.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::future::Cache;

use crate::Problem;
use bindings::{ApiKey, ConsoleSession, DurableStore, RedisTier};
use pacing::Reservation;
use records::{KeyToken, Scope, Scopes, SessionToken, Tenant};

/// How long a looked-up key (or the absence of one) is trusted.
pub const KEY_TTL: Duration = Duration::from_secs(10);
/// How long an idle key's rate bucket is kept.
const BUCKET_IDLE: Duration = Duration::from_secs(600);
/// How long a console session may go unused before it ends, unless set otherwise.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// How far ahead a batch may book its items' slots on a shared schedule.
const BATCH_HORIZON: Duration = Duration::from_secs(60);
/// How long a block of a key's shared slots is used before it is let go.
const LEASE_LIFE: Duration = Duration::from_secs(1);
/// A session's last use is written at most this often (not at every page).
const SESSION_TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The caller of one request, once its key is checked.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Tenant,
    pub key_id: String,
    pub scopes: Scopes,
    /// The key's rate, for requests that do the work of many (a batch).
    rate: Rate,
}

/// Where one key's rate is counted for this request.
#[derive(Debug, Clone)]
struct Rate {
    /// This process's state of the key's rate.
    key: Arc<KeyRate>,
    /// The schedule in Redis every process shares, when configured.
    shared: Option<SharedRate>,
}

/// One key's rate in this process, kept while the key is in use.
#[derive(Debug)]
struct KeyRate {
    /// The rate while Redis is not configured or fails.
    bucket: DefaultDirectRateLimiter,
    /// Slots of the shared schedule this process holds.
    lease: tokio::sync::Mutex<Lease>,
}

#[derive(Debug, Default)]
struct Lease {
    remaining: u32,
    until: Option<tokio::time::Instant>,
}

#[derive(Debug, Clone)]
struct SharedRate {
    redis: RedisTier,
    name: String,
    /// Between two of the key's slots.
    increment: Duration,
    /// Slots taken from Redis at a time.
    block: u32,
}

impl Rate {
    /// One slot of the shared schedule no further than `horizon` ahead: from this process's
    /// block when it holds one, else a new block from Redis. `None` when Redis fails (or is
    /// not configured).
    async fn shared_slot(&self, horizon: Duration) -> Option<Reservation> {
        let shared = self.shared.as_ref()?;
        let mut lease = self.key.lease.lock().await;
        let now = tokio::time::Instant::now();
        if lease.remaining > 0 && lease.until.is_some_and(|until| now < until) {
            lease.remaining -= 1;
            return Some(Reservation::Slot(Duration::ZERO));
        }
        let reservation = shared
            .redis
            .reserve_slot(&shared.name, shared.increment * shared.block, horizon)
            .await?;
        if let Reservation::Slot(wait) = reservation {
            *lease = Lease {
                remaining: shared.block - 1,
                until: Some(now + wait + LEASE_LIFE),
            };
        }
        Some(reservation)
    }
}

impl Caller {
    /// Waits for one more request's worth of the key's rate: a batch pays for each item
    /// after the first (which its request paid for), so a batch is paced to the key's rate
    /// rather than slipping past it, across processes when the rate is shared.
    pub async fn pace(&self) {
        loop {
            match self.rate.shared_slot(BATCH_HORIZON).await {
                Some(Reservation::Slot(wait)) => {
                    tokio::time::sleep(wait).await;
                    return;
                }
                Some(Reservation::Full(retry)) => tokio::time::sleep(retry).await,
                None => break,
            }
        }
        self.rate.key.bucket.until_ready().await;
    }
}

/// Checks API keys; cheap to share.
#[derive(Clone)]
pub struct Keys {
    store: DurableStore,
    known: Cache<String, Option<Arc<ApiKey>>>,
    rates: Cache<String, Arc<KeyRate>>,
    /// Where keys' rates are shared across processes, when Redis is configured.
    shared_rates: Option<RedisTier>,
    /// Whether the last shared check failed (so that the fallback is logged once, not per
    /// request).
    rates_local: Arc<AtomicBool>,
    /// Sessions the console checked a moment ago, by session id.
    sessions: Cache<String, Arc<ConsoleSession>>,
    session_idle: Duration,
}

/// A live console session and the key it acts for.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub session: Arc<ConsoleSession>,
    pub key: Arc<ApiKey>,
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
            rates: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(BUCKET_IDLE)
                .build(),
            sessions: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(KEY_TTL)
                .build(),
            shared_rates: None,
            rates_local: Arc::new(AtomicBool::new(false)),
            session_idle: DEFAULT_SESSION_IDLE,
        }
    }

    /// Counts each key's rate in `redis`, one budget for every process that shares it.
    pub fn with_shared_rates(mut self, redis: Option<RedisTier>) -> Self {
        self.shared_rates = redis;
        self
    }

    /// Console sessions end after `idle` without use.
    pub fn with_session_idle(mut self, idle: Duration) -> Self {
        self.session_idle = idle;
        self
    }

    pub fn session_idle(&self) -> Duration {
        self.session_idle
    }

    /// The key behind a whole key token, if it is valid (for signing in with it).
    pub async fn check_key(&self, token: &str) -> Result<Option<Arc<ApiKey>>, Problem> {
        let Some(token) = KeyToken::parse(token.trim()) else {
            return Ok(None);
        };
        let key = self.lookup(token.key_id()).await?;
        Ok(key.filter(|key| key.revoked_at.is_none() && token.matches(&key.secret_hash)))
    }

    /// Opens a console session for a valid key. Sessions idle past the limit are forgotten
    /// here (a sign-in is rare enough to pay for the sweep).
    pub async fn open_session(
        &self,
        key: &ApiKey,
    ) -> Result<(SessionToken, Arc<ConsoleSession>), Problem> {
        if let Err(error) = self.end_idle_sessions().await {
            tracing::warn!(%error, "forgetting idle console sessions failed");
        }
        let (token, session) = self
            .store
            .create_console_session(&key.key_id)
            .await
            .map_err(|error| {
                tracing::error!(%error, "opening a console session failed");
                Problem::unavailable("the session store is unavailable")
            })?;
        Ok((token, Arc::new(session)))
    }

    /// The session a console request carries, read from the store (never from memory, so
    /// that a sign-out anywhere ends it here at once); `None` when it is unknown, ended,
    /// idle too long, or its key is revoked. Marks it used.
    pub async fn session(&self, token: &SessionToken) -> Result<Option<SignedIn>, Problem> {
        let unavailable = |error: bindings::StoreError| {
            tracing::error!(%error, "reading a console session failed");
            Problem::unavailable("the session store is unavailable")
        };
        let Some(session) = self
            .store
            .console_session(token.session_id())
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let now = chrono::Utc::now();
        if !token.matches(&session.secret_hash) || self.is_idle(&session, now) {
            return Ok(None);
        }
        let Some(key) = self
            .lookup(&session.key_id)
            .await?
            .filter(|key| key.revoked_at.is_none())
        else {
            return Ok(None);
        };
        let mut session = session;
        if now - session.last_seen_at >= SESSION_TOUCH_EVERY {
            self.store
                .touch_console_session(&session.session_id, now)
                .await
                .map_err(unavailable)?;
            session.last_seen_at = now;
        }
        let session = Arc::new(session);
        self.sessions
            .insert(session.session_id.clone(), Arc::clone(&session))
            .await;
        Ok(Some(SignedIn { session, key }))
    }

    /// Ends a session (sign-out); the store is the truth, this process forgets it at once.
    pub async fn end_session(&self, session_id: &str) -> Result<(), Problem> {
        self.sessions.invalidate(session_id).await;
        self.store
            .end_console_session(session_id)
            .await
            .map(drop)
            .map_err(|error| {
                tracing::error!(%error, "ending a console session failed");
                Problem::unavailable("the session store is unavailable")
            })
    }

    /// Forgets sessions idle past the limit; returns how many.
    pub async fn end_idle_sessions(&self) -> Result<u64, bindings::StoreError> {
        let idle = chrono::TimeDelta::from_std(self.session_idle).unwrap_or(chrono::TimeDelta::MAX);
        self.store
            .end_console_sessions_idle_since(chrono::Utc::now() - idle)
            .await
    }

    fn is_idle(&self, session: &ConsoleSession, now: chrono::DateTime<chrono::Utc>) -> bool {
        let idle = chrono::TimeDelta::from_std(self.session_idle).unwrap_or(chrono::TimeDelta::MAX);
        now - session.last_seen_at > idle
    }

    /// The key a session token acts for, for an API call; the session from memory when the
    /// console checked it a moment ago.
    async fn session_key(&self, token: &SessionToken) -> Result<Option<Arc<ApiKey>>, Problem> {
        let session = match self.sessions.get(token.session_id()).await {
            Some(session) => session,
            None => return Ok(self.session(token).await?.map(|signed_in| signed_in.key)),
        };
        if !token.matches(&session.secret_hash) || self.is_idle(&session, chrono::Utc::now()) {
            return Ok(None);
        }
        Ok(self
            .lookup(&session.key_id)
            .await?
            .filter(|key| key.revoked_at.is_none()))
    }

    /// The caller, if the request carries a valid key with `scope` and within its rate.
    pub async fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, Problem> {
        let token = bearer_token(headers).ok_or_else(|| {
            unauthenticated(
                "send `Authorization: Bearer <API key>`; `qrpool keys create` makes one",
            )
        })?;
        let key = if let Some(session) = SessionToken::parse(token) {
            self.session_key(&session).await?.ok_or_else(invalid_key)?
        } else {
            let token = KeyToken::parse(token).ok_or_else(invalid_key)?;
            let key = self.lookup(token.key_id()).await?.ok_or_else(invalid_key)?;
            if key.revoked_at.is_some() || !token.matches(&key.secret_hash) {
                return Err(invalid_key());
            }
            key
        };
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
        let rate = self.within_rate(&key).await?;
        Ok(Caller {
            tenant: key.tenant.clone(),
            key_id: key.key_id.clone(),
            scopes: key.scopes,
            rate,
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

    /// One request's worth of `key`'s rate, or a 429 saying when to come back.
    async fn within_rate(&self, key: &ApiKey) -> Result<Rate, Problem> {
        let per_second = NonZeroU32::new(key.rate_per_sec).unwrap_or(NonZeroU32::MIN);
        let key_rate = self
            .rates
            .get_with(key.key_id.clone(), async move {
                Arc::new(KeyRate {
                    bucket: RateLimiter::direct(Quota::per_second(per_second)),
                    lease: tokio::sync::Mutex::new(Lease::default()),
                })
            })
            .await;
        let increment = Duration::from_secs(1) / per_second.get();
        let rate = Rate {
            key: key_rate,
            shared: self.shared_rates.as_ref().map(|redis| SharedRate {
                redis: redis.clone(),
                name: format!("rate:{}", key.key_id),
                increment,
                block: (per_second.get() / 100).max(1),
            }),
        };
        if rate.shared.is_some() {
            // A burst of `rate` requests: each may come up to `rate - 1` slots early.
            let burst = increment * (per_second.get() - 1);
            match rate.shared_slot(burst).await {
                Some(Reservation::Slot(_)) => {
                    if self.rates_local.swap(false, Ordering::Relaxed) {
                        tracing::info!("API key rates are shared through Redis again");
                    }
                    return Ok(rate);
                }
                Some(Reservation::Full(retry)) => return Err(rate_limited(per_second, retry)),
                None => {
                    metrics::counter!("api_rate_limit_local_total").increment(1);
                    if !self.rates_local.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "Redis is unavailable: each process limits API keys on its own \
                             until it is back (a key may get its rate from each process)"
                        );
                    }
                }
            }
        }
        match rate.key.bucket.check() {
            Ok(()) => Ok(rate),
            Err(not_until) => Err(rate_limited(
                per_second,
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
        }
    }
}

fn rate_limited(rate: NonZeroU32, wait: Duration) -> Problem {
    metrics::counter!("api_requests_rate_limited_total").increment(1);
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "urn:qrpool:problem:rate-limited",
        "Too Many Requests",
    )
    .with_detail(format!("this key may make {rate} requests per second"))
    .retry_after(u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX))
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
