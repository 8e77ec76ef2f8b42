//! [`AccessTokens`]: the access token of a WeChat-style API, fetched by one holder and read by
//! everyone else.
//!
//! Tokens come from the stable-token endpoint, which hands every caller the same token while
//! it is valid (the classic endpoint would invalidate the token of every other worker). Still,
//! only one refresh runs at a time: in process behind a lock, and across processes behind a
//! Redis lock, with the token itself cached in Redis for the other workers to read. When the
//! API rejects a token, [`AccessTokens::replace`] asks once more in normal mode and forces a
//! new token only if the endpoint hands back the one just rejected.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::events;
use crate::shared_redis::SharedRedis;

/// A token is refreshed this long before the endpoint says it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(300);
/// How long a worker waits for another worker's refresh before trying its own.
const REFRESH_LOCK: Duration = Duration::from_secs(10);
/// Stable-token answers that mean our settings are wrong (app id, secret, IP allow-list).
const MISCONFIGURED: [i64; 5] = [40002, 40013, 40125, 40164, 41004];

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token endpoint refuses our credentials: {code} {message}")]
    Misconfigured { code: i64, message: String },
    #[error("no access token: {0}")]
    Unavailable(String),
}

pub struct AccessTokens {
    issuer: String,
    http: reqwest::Client,
    url: String,
    app_id: String,
    secret: SecretString,
    cached: std::sync::Mutex<Option<Token>>,
    refreshing: tokio::sync::Mutex<()>,
    shared: Option<SharedRedis>,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokens")
            .field("issuer", &self.issuer)
            .field("url", &self.url)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Token {
    value: String,
    fresh_until: Instant,
}

/// The token as other workers read it from Redis.
#[derive(Serialize, Deserialize)]
struct SharedToken {
    access_token: String,
    /// Milliseconds left when it was written; Redis expires the key at the same time.
    fresh_for_ms: u64,
}

#[derive(Deserialize)]
struct Answer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

impl AccessTokens {
    pub fn new(
        issuer: &str,
        http: reqwest::Client,
        endpoint: &str,
        app_id: &str,
        secret: SecretString,
        shared: Option<SharedRedis>,
    ) -> Self {
        AccessTokens {
            issuer: issuer.to_owned(),
            http,
            url: format!("{}/cgi-bin/stable_token", endpoint.trim_end_matches('/')),
            app_id: app_id.to_owned(),
            secret,
            cached: std::sync::Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            shared,
        }
    }

    /// A token that is fresh, from memory when possible.
    pub async fn current(&self) -> Result<String, TokenError> {
        if let Some(token) = self.cached_fresh() {
            return Ok(token);
        }
        self.refresh(None).await
    }

    /// The API rejected `rejected` (expired or invalidated): get the token that replaced it.
    pub async fn replace(&self, rejected: &str) -> Result<String, TokenError> {
        self.refresh(Some(rejected)).await
    }

    fn cached_fresh(&self) -> Option<String> {
        let cached = self.cached.lock().ok()?;
        cached
            .as_ref()
            .filter(|token| token.fresh_until > Instant::now())
            .map(|token| token.value.clone())
    }

    fn remember(&self, value: &str, fresh_for: Duration) {
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some(Token {
                value: value.to_owned(),
                fresh_until: Instant::now() + fresh_for,
            });
        }
    }

    fn forget(&self, rejected: &str) {
        if let Ok(mut cached) = self.cached.lock()
            && cached.as_ref().is_some_and(|token| token.value == rejected)
        {
            *cached = None;
        }
    }

    async fn refresh(&self, rejected: Option<&str>) -> Result<String, TokenError> {
        if let Some(rejected) = rejected {
            self.forget(rejected);
        }
        let _one_at_a_time = self.refreshing.lock().await;
        // Another task may have refreshed while this one waited for the lock.
        if let Some(token) = self.cached_fresh() {
            return Ok(token);
        }
        match &self.shared {
            None => self.fetch_and_remember(rejected).await,
            Some(redis) => self.refresh_shared(redis, rejected).await,
        }
    }

    /// One worker (whoever takes the Redis lock) fetches; the others read what it wrote.
    async fn refresh_shared(
        &self,
        redis: &SharedRedis,
        rejected: Option<&str>,
    ) -> Result<String, TokenError> {
        let token_key = redis.key(&format!("issuer:{}:token", self.issuer));
        let lock_key = redis.key(&format!("issuer:{}:token-lock", self.issuer));
        let deadline = Instant::now() + REFRESH_LOCK * 2;
        let read = redis::pipe().get(&token_key).clone();
        // A token another worker shared that is not the rejected one.
        let shared_token = || async {
            let (json,): (Option<String>,) = redis.query(&read).await?;
            let shared = json.and_then(|json| serde_json::from_str::<SharedToken>(&json).ok());
            Ok::<_, String>(shared.filter(|shared| Some(shared.access_token.as_str()) != rejected))
        };
        loop {
            match shared_token().await {
                Ok(Some(shared)) => {
                    self.remember(
                        &shared.access_token,
                        Duration::from_millis(shared.fresh_for_ms),
                    );
                    return Ok(shared.access_token);
                }
                Ok(None) => {}
                Err(error) => {
                    // Without Redis, this worker fetches for itself: the stable endpoint
                    // returns the same token to every caller, so nobody is invalidated.
                    events::token_shared_unreachable(&self.issuer, &error);
                    return self.fetch_and_remember(rejected).await;
                }
            }
            let lock_ms = u64::try_from(REFRESH_LOCK.as_millis()).unwrap_or(u64::MAX);
            let take_lock = redis::pipe()
                .cmd("SET")
                .arg(&lock_key)
                .arg(std::process::id())
                .arg("NX")
                .arg("PX")
                .arg(lock_ms)
                .clone();
            let holder = matches!(
                redis.query::<(Option<String>,)>(&take_lock).await,
                Ok((Some(_),))
            );
            if holder {
                // The holder before us may have written its token between our read and our
                // lock: look once more before fetching.
                if let Ok(Some(shared)) = shared_token().await {
                    let release = redis::pipe().del(&lock_key).ignore().clone();
                    let _ = redis.query::<()>(&release).await;
                    self.remember(
                        &shared.access_token,
                        Duration::from_millis(shared.fresh_for_ms),
                    );
                    return Ok(shared.access_token);
                }
                let fetched = self.fetch(rejected).await;
                if let Ok((token, fresh_for)) = &fetched {
                    let shared = SharedToken {
                        access_token: token.clone(),
                        fresh_for_ms: u64::try_from(fresh_for.as_millis()).unwrap_or(u64::MAX),
                    };
                    let json = serde_json::to_string(&shared).unwrap_or_default();
                    let write = redis::pipe()
                        .cmd("SET")
                        .arg(&token_key)
                        .arg(json)
                        .arg("PX")
                        .arg(shared.fresh_for_ms.max(1))
                        .ignore()
                        .del(&lock_key)
                        .ignore()
                        .clone();
                    if let Err(error) = redis.query::<()>(&write).await {
                        events::token_shared_unreachable(&self.issuer, &error);
                    }
                    self.remember(token, *fresh_for);
                } else {
                    let release = redis::pipe().del(&lock_key).ignore().clone();
                    let _ = redis.query::<()>(&release).await;
                }
                return fetched.map(|(token, _)| token);
            }
            if Instant::now() > deadline {
                return Err(TokenError::Unavailable(
                    "another worker's token refresh did not finish".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn fetch_and_remember(&self, rejected: Option<&str>) -> Result<String, TokenError> {
        let (token, fresh_for) = self.fetch(rejected).await?;
        self.remember(&token, fresh_for);
        Ok(token)
    }

    /// Asks the stable-token endpoint in normal mode; forces a new token only when normal
    /// mode hands back the token the API just rejected.
    async fn fetch(&self, rejected: Option<&str>) -> Result<(String, Duration), TokenError> {
        let (token, fresh_for) = self.call(false).await?;
        if Some(token.as_str()) == rejected {
            return self.call(true).await;
        }
        Ok((token, fresh_for))
    }

    async fn call(&self, force_refresh: bool) -> Result<(String, Duration), TokenError> {
        events::token_fetched(&self.issuer, force_refresh);
        let body = serde_json::json!({
            "grant_type": "client_credential",
            "appid": self.app_id,
            "secret": self.secret.expose_secret(),
            "force_refresh": force_refresh,
        });
        let answer: Answer = self
            .http
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|error| TokenError::Unavailable(error.without_url().to_string()))?
            .json()
            .await
            .map_err(|error| TokenError::Unavailable(format!("unreadable answer: {error}")))?;
        match answer {
            Answer {
                access_token: Some(token),
                expires_in,
                errcode: 0,
                ..
            } => {
                let lifetime = Duration::from_secs(expires_in.unwrap_or(7_200));
                let fresh_for = lifetime.saturating_sub(EXPIRY_MARGIN).max(lifetime / 2);
                Ok((token, fresh_for))
            }
            Answer {
                errcode, errmsg, ..
            } if MISCONFIGURED.contains(&errcode) => Err(TokenError::Misconfigured {
                code: errcode,
                message: errmsg,
            }),
            Answer {
                errcode, errmsg, ..
            } => Err(TokenError::Unavailable(format!("{errcode} {errmsg}"))),
        }
    }
}
