//! The Redis tier: a hot copy of each binding as JSON at `<prefix>b:<request_id>`, with the
//! binding's expiry (or `redis.ttl_secs`, whichever comes first).
//!
//! Redis is an accelerator, never the truth: every operation has a short time limit, a
//! failure is logged and counted and the caller goes on without it. After a connection
//! failure the tier rests for [`REST_AFTER_FAILURE`] so that a dead Redis costs scans
//! nothing; then it tries again, and it is back in use as soon as Redis answers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::OnceCell;

use records::{Binding, RequestId};

use crate::StoreError;
use crate::events::redis_skipped;

/// Time limit of one Redis command.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// How long the tier stays out of the way after Redis failed.
const REST_AFTER_FAILURE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct RedisTier {
    pub(crate) client: redis::Client,
    connection: std::sync::Arc<OnceCell<ConnectionManager>>,
    resting_until: std::sync::Arc<Mutex<Option<Instant>>>,
    pub(crate) prefix: String,
    ttl_secs: u64,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("prefix", &self.prefix)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl RedisTier {
    /// Checks the URL; connects on first use, so a Redis that is down at start is no reason
    /// not to start.
    pub fn new(url: &SecretString, prefix: &str, ttl_secs: u64) -> Result<Self, StoreError> {
        let client = redis::Client::open(url.expose_secret()).map_err(StoreError::RedisUrl)?;
        Ok(RedisTier {
            client,
            connection: Default::default(),
            resting_until: Default::default(),
            prefix: prefix.to_owned(),
            ttl_secs,
        })
    }

    pub fn key(&self, id: RequestId) -> String {
        self.prefixed(&format!("b:{id}"))
    }

    pub(crate) async fn connection(&self) -> Option<ConnectionManager> {
        if let Some(connection) = self.connection.get() {
            return Some(connection.clone());
        }
        let resting = self
            .resting_until
            .lock()
            .map(|until| until.is_some_and(|t| Instant::now() < t));
        if resting.unwrap_or(false) {
            return None;
        }
        // No retries inside the first connect: the caller is a request waiting on us. Once
        // connected, the manager reconnects by itself in the background.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(COMMAND_TIMEOUT)
            .set_response_timeout(COMMAND_TIMEOUT)
            .set_number_of_retries(0);
        let connect = self
            .connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config));
        match tokio::time::timeout(COMMAND_TIMEOUT * 2, connect).await {
            Ok(Ok(connection)) => Some(connection.clone()),
            Ok(Err(error)) => {
                self.rest();
                redis_skipped("connect", &error);
                None
            }
            Err(elapsed) => {
                self.rest();
                redis_skipped("connect", &elapsed);
                None
            }
        }
    }

    fn rest(&self) {
        if let Ok(mut until) = self.resting_until.lock() {
            *until = Some(Instant::now() + REST_AFTER_FAILURE);
        }
    }

    /// `name` under this deployment's key prefix.
    pub fn prefixed(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs one command with the time limit; a failure is counted (as `what`) and is `None`.
    pub(crate) async fn command<T, F>(&self, what: &'static str, command: F) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                redis_skipped(what, &error);
                None
            }
            Err(elapsed) => {
                self.rest();
                redis_skipped(what, &elapsed);
                None
            }
        }
    }

    /// Whether Redis answers a PING within the command limit, for `/readyz`.
    pub async fn check(&self) -> Result<(), String> {
        let mut connection = self
            .connection()
            .await
            .ok_or_else(|| "Redis is unreachable".to_owned())?;
        self.command::<(), _>("ping", redis::cmd("PING").query_async(&mut connection))
            .await
            .ok_or_else(|| "Redis did not answer a PING".to_owned())
    }

    /// A slot on the schedule `name` ([`pacing`]), shared by every process on this Redis;
    /// `None` when Redis is unavailable (counted like any failed command).
    pub async fn reserve_slot(
        &self,
        name: &str,
        increment: Duration,
        horizon: Duration,
    ) -> Option<pacing::Reservation> {
        let mut connection = self.connection().await?;
        let key = self.prefixed(name);
        self.command(
            "reserve",
            pacing::shared::reserve(&mut connection, &key, increment, horizon),
        )
        .await
    }

    /// The JSON value at `key`, or `None` on a miss, when Redis is unavailable, or when the
    /// value does not read as a `T` (then it is removed: the durable store has the truth).
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        let mut connection = self.connection().await?;
        let json: String = self
            .command::<Option<String>, _>("get", connection.get(key))
            .await??;
        match serde_json::from_str(&json) {
            Ok(value) => Some(value),
            Err(_) => {
                self.command::<(), _>("del", connection.del(key)).await;
                None
            }
        }
    }

    /// Stores `value` as JSON at `key` for `ttl_secs` (at most `redis.ttl_secs`); a TTL of
    /// zero removes it. Failures are counted and otherwise ignored.
    pub async fn set_json<T: serde::Serialize>(&self, key: &str, value: &T, ttl_secs: u64) {
        let Some(mut connection) = self.connection().await else {
            return;
        };
        let ttl = ttl_secs.min(self.ttl_secs);
        if ttl == 0 {
            self.command::<(), _>("del", connection.del(key)).await;
            return;
        }
        let Ok(json) = serde_json::to_string(value) else {
            return;
        };
        self.command::<(), _>("set", connection.set_ex(key, json, ttl))
            .await;
    }

    /// Removes `key`; `false` when Redis could not be told.
    pub async fn delete(&self, key: &str) -> bool {
        let Some(mut connection) = self.connection().await else {
            return false;
        };
        self.command::<(), _>("del", connection.del(key))
            .await
            .is_some()
    }

    /// The hot copy, or `None` on a miss, when Redis is unavailable, or when the copy is not
    /// one this release wrote for `id`.
    pub(crate) async fn get(&self, id: RequestId) -> Option<Binding> {
        let key = self.key(id);
        let binding: Binding = self.get_json(&key).await?;
        if binding.v == Binding::LAYOUT && binding.request_id == id {
            Some(binding)
        } else {
            self.delete(&key).await;
            None
        }
    }

    /// Removes the hot copy of `id`; `false` when Redis could not be told.
    pub(crate) async fn forget(&self, id: RequestId) -> bool {
        self.delete(&self.key(id)).await
    }

    /// Stores the hot copy until the binding expires (an expired one is removed: the store
    /// answers for those).
    pub(crate) async fn set(&self, binding: &Binding) {
        let ttl = match binding.expires_at {
            Some(expires_at) => {
                u64::try_from((expires_at - chrono::Utc::now()).num_seconds()).unwrap_or(0)
            }
            None => self.ttl_secs,
        };
        self.set_json(&self.key(binding.request_id), binding, ttl)
            .await;
    }
}
