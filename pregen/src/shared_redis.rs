//! The Redis that pregen workers share a quota budget and an access token through.
//! Connected on first use, so that a Redis down at start is no reason not to start; the
//! connection manager reconnects by itself afterwards.

use std::time::Duration;

use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::OnceCell;

/// Time limit of connecting, and of each command pregen sends.
pub(crate) const COMMAND_LIMIT: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct SharedRedis {
    client: redis::Client,
    connection: std::sync::Arc<OnceCell<ConnectionManager>>,
    prefix: String,
}

impl std::fmt::Debug for SharedRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRedis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl SharedRedis {
    pub fn new(url: &SecretString, prefix: &str) -> Result<Self, redis::RedisError> {
        Ok(SharedRedis {
            client: redis::Client::open(url.expose_secret())?,
            connection: Default::default(),
            prefix: prefix.to_owned(),
        })
    }

    /// `<redis.key_prefix><rest>`.
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    pub(crate) async fn connection(&self) -> Result<ConnectionManager, String> {
        let connect = self.connection.get_or_try_init(|| async {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(COMMAND_LIMIT)
                .set_response_timeout(COMMAND_LIMIT)
                .set_number_of_retries(1);
            ConnectionManager::new_with_config(self.client.clone(), config).await
        });
        tokio::time::timeout(COMMAND_LIMIT * 2, connect)
            .await
            .map_err(|_| "connecting to Redis timed out".to_owned())?
            .cloned()
            .map_err(|error| format!("connecting to Redis failed: {error}"))
    }

    /// Runs `command` with the time limit, as one string error on any failure.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Pipeline,
    ) -> Result<T, String> {
        let mut connection = self.connection().await?;
        tokio::time::timeout(COMMAND_LIMIT, command.query_async::<T>(&mut connection))
            .await
            .map_err(|_| "Redis timed out".to_owned())?
            .map_err(|error| format!("Redis failed: {error}"))
    }
}
