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
use moka::future::Cache;
use redis::AsyncCommands;

use records::{Binding, RequestId};

use crate::RedisTier;

/// Wait before listening again after the subscription broke.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

impl RedisTier {
    fn changes_channel(&self) -> String {
        format!("{}changes", self.prefix)
    }

    /// Tells every process that `id` changed; failures are counted and otherwise ignored.
    pub(crate) async fn publish_change(&self, id: RequestId) {
        let Some(mut connection) = self.connection().await else {
            metrics::counter!("binding_change_events_unsent_total").increment(1);
            return;
        };
        let sent: Result<Result<i64, _>, _> = tokio::time::timeout(
            crate::redis_tier::COMMAND_TIMEOUT,
            connection.publish(self.changes_channel(), id.to_text().as_str()),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::warn!(request_id = %id, "publishing a change event failed");
            metrics::counter!("binding_change_events_unsent_total").increment(1);
        }
    }

    /// Drops `id` from `local` whenever any process changes it, until the task is aborted.
    pub(crate) fn listen_for_changes(
        &self,
        local: Cache<RequestId, Arc<Binding>>,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let channel = self.changes_channel();
        tokio::spawn(async move {
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                        Ok(()) => {
                            // Whatever changed while nobody listened is gone from the cache.
                            local.invalidate_all();
                            let mut messages = pubsub.on_message();
                            while let Some(message) = messages.next().await {
                                let id = message
                                    .get_payload::<String>()
                                    .ok()
                                    .and_then(|text| RequestId::parse(&text).ok());
                                if let Some(id) = id {
                                    local.invalidate(&id).await;
                                    metrics::counter!("binding_change_events_received_total")
                                        .increment(1);
                                }
                            }
                            tracing::warn!("the change-event subscription ended; listening again");
                        }
                        Err(error) => tracing::warn!(%error, "subscribing to change events failed"),
                    },
                    Err(error) => tracing::debug!(%error, "change events: Redis unreachable"),
                }
                // While away, cached versions may go stale: drop them rather than serve them.
                local.invalidate_all();
                tokio::time::sleep(RESUBSCRIBE_AFTER).await;
            }
        })
    }
}
