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
//!
//! A console session (`Bearer qrs_…`, see [`records::SessionToken`]) is accepted wherever a
//! key is: it acts with its key's tenant, scopes and rate bucket, for as long as the key is
//! valid and the session is neither ended nor idle past its limit. The console checks the
//! session against the store on every page ([`Keys::session`]); the calls it then makes
//! through the API find it here without reading the store again.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::future::Cache;

use crate::Problem;
use bindings::{ApiKey, ConsoleSession, DurableStore};
use records::{KeyToken, Scope, Scopes, SessionToken, Tenant};

/// How long a looked-up key (or the absence of one) is trusted.
pub const KEY_TTL: Duration = Duration::from_secs(10);
/// How long an idle key's rate bucket is kept.
const BUCKET_IDLE: Duration = Duration::from_secs(600);
/// How long a console session may go unused before it ends, unless set otherwise.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A session's last use is written at most this often (not at every page).
const SESSION_TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The caller of one request, once its key is checked.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Tenant,
    pub key_id: String,
    pub scopes: Scopes,
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
            buckets: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(BUCKET_IDLE)
                .build(),
            sessions: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(KEY_TTL)
                .build(),
            session_idle: DEFAULT_SESSION_IDLE,
        }
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
        let bucket = self.within_rate(&key).await?;
        Ok(Caller {
            tenant: key.tenant.clone(),
            key_id: key.key_id.clone(),
            scopes: key.scopes,
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
