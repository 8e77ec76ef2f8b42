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
        format!("{}b:{}", self.prefix, id)
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

    /// The hot copy, or `None` on a miss or when Redis is unavailable.
    pub(crate) async fn get(&self, id: RequestId) -> Option<Binding> {
        let mut connection = self.connection().await?;
        let key = self.key(id);
        let reply: Result<Result<Option<String>, _>, _> =
            tokio::time::timeout(COMMAND_TIMEOUT, connection.get(&key)).await;
        match reply {
            Ok(Ok(Some(json))) => match serde_json::from_str::<Binding>(&json) {
                Ok(binding) if binding.v == Binding::LAYOUT && binding.request_id == id => {
                    Some(binding)
                }
                Ok(_) | Err(_) => {
                    // A copy we cannot trust: drop it, the durable store has the truth.
                    let _: Result<(), _> = connection.del(&key).await;
                    None
                }
            },
            Ok(Ok(None)) => None,
            Ok(Err(error)) => {
                redis_skipped("get", &error);
                None
            }
            Err(elapsed) => {
                self.rest();
                redis_skipped("get", &elapsed);
                None
            }
        }
    }

    /// Removes the hot copy of `id`; `false` when Redis could not be told.
    pub(crate) async fn forget(&self, id: RequestId) -> bool {
        let Some(mut connection) = self.connection().await else {
            return false;
        };
        let reply: Result<Result<(), _>, _> =
            tokio::time::timeout(COMMAND_TIMEOUT, connection.del(self.key(id))).await;
        match reply {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                redis_skipped("del", &error);
                false
            }
            Err(elapsed) => {
                self.rest();
                redis_skipped("del", &elapsed);
                false
            }
        }
    }

    /// Stores the hot copy (an expired binding removes it: the store answers for those);
    /// failures are counted and otherwise ignored.
    pub(crate) async fn set(&self, binding: &Binding) {
        let Some(mut connection) = self.connection().await else {
            return;
        };
        let key = self.key(binding.request_id);
        let mut ttl = self.ttl_secs;
        if let Some(expires_at) = binding.expires_at {
            let left = (expires_at - chrono::Utc::now()).num_seconds();
            match u64::try_from(left) {
                Ok(0) | Err(_) => {
                    let reply: Result<Result<(), _>, _> =
                        tokio::time::timeout(COMMAND_TIMEOUT, connection.del(&key)).await;
                    match reply {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => redis_skipped("del", &error),
                        Err(elapsed) => {
                            self.rest();
                            redis_skipped("del", &elapsed);
                        }
                    }
                    return;
                }
                Ok(left) => ttl = ttl.min(left),
            }
        }
        let Ok(json) = serde_json::to_string(binding) else {
            return;
        };
        let reply: Result<Result<(), _>, _> =
            tokio::time::timeout(COMMAND_TIMEOUT, connection.set_ex(&key, json, ttl)).await;
        match reply {
            Ok(Ok(())) => {}
            Ok(Err(error)) => redis_skipped("set", &error),
            Err(elapsed) => {
                self.rest();
                redis_skipped("set", &elapsed);
            }
        }
    }
}
