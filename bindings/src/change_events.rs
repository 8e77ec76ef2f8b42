//! Change events: when a binding changes, every process drops its in-process copy.
//!
//! The process that commits a change publishes the request id on the Redis channel
//! `<prefix>changes`; every process with Redis configured listens and invalidates that id in
//! its cache, so the next scan reads the new version (from Redis, which the changer wrote
//! through, or the database). Pub/sub delivers nothing missed while a listener was
//! disconnected, so each (re)subscription drops the whole cache first: a listener that was
//! away serves nothing older than its reconnection. Without Redis, other processes keep an
//! old version until their entry expires (`middle_page.cache_ttl_secs`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::AsyncCommands;

use records::{Binding, RequestId};

use crate::{RedisTier, ScanCache};

/// The channel (under the key prefix) of binding changes.
const BINDING_CHANGES: &str = "changes";
/// Wait before listening again after the subscription broke.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

/// Keeps a cache in step with the changes of every process while it lives; dropping it
/// stops listening.
#[derive(Debug)]
pub struct ChangeListener(tokio::task::JoinHandle<()>);

impl Drop for ChangeListener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl RedisTier {
    /// Tells every process that `payload` (an id or key) changed, on `channel` under the key
    /// prefix; failures are counted and otherwise ignored.
    pub async fn publish(&self, channel: &str, payload: &str) {
        let sent = match self.connection().await {
            Some(mut connection) => self
                .command::<i64, _>(
                    "publish",
                    connection.publish(self.prefixed(channel), payload),
                )
                .await
                .is_some(),
            None => false,
        };
        if !sent {
            tracing::warn!(channel, payload, "publishing a change event failed");
            metrics::counter!("change_events_unsent_total", "channel" => channel.to_owned())
                .increment(1);
        }
    }

    /// Drops from `local` every key announced on `channel` (read by `parse`), until the
    /// returned listener is dropped. Each (re)subscription drops the whole cache first:
    /// pub/sub keeps nothing for a listener that was away.
    pub fn invalidate_on_changes<K, V>(
        &self,
        channel: &'static str,
        local: ScanCache<K, V>,
        parse: fn(&str) -> Option<K>,
    ) -> ChangeListener
    where
        K: std::hash::Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let client = self.client.clone();
        let full_channel = self.prefixed(channel);
        ChangeListener(tokio::spawn(async move {
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(&full_channel).await {
                        Ok(()) => {
                            // Whatever changed while nobody listened is gone from the cache.
                            local.invalidate_all();
                            let mut messages = pubsub.on_message();
                            while let Some(message) = messages.next().await {
                                let key = message
                                    .get_payload::<String>()
                                    .ok()
                                    .and_then(|text| parse(&text));
                                if let Some(key) = key {
                                    local.invalidate(&key).await;
                                    metrics::counter!("change_events_received_total", "channel" => channel)
                                        .increment(1);
                                }
                            }
                            tracing::warn!(
                                channel,
                                "the change-event subscription ended; listening again"
                            );
                        }
                        Err(error) => {
                            tracing::warn!(channel, %error, "subscribing to change events failed")
                        }
                    },
                    Err(error) => tracing::debug!(%error, "change events: Redis unreachable"),
                }
                // While away, cached versions may go stale: drop them rather than serve them.
                local.invalidate_all();
                tokio::time::sleep(RESUBSCRIBE_AFTER).await;
            }
        }))
    }

    /// Announces a change of binding `id`.
    pub(crate) async fn publish_change(&self, id: RequestId) {
        self.publish(BINDING_CHANGES, id.to_text().as_str()).await;
    }

    /// Keeps `local` in step with the binding changes of every process.
    pub(crate) fn listen_for_changes(
        &self,
        local: ScanCache<RequestId, Arc<Binding>>,
    ) -> ChangeListener {
        self.invalidate_on_changes(BINDING_CHANGES, local, |text| RequestId::parse(text).ok())
    }
}
