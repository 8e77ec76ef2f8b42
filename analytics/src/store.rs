//! [`Store`]: the one interface the API queries, over either engine.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

use config::{AnalyticsBackend, Settings};

use crate::AnalyticsError;
use crate::clickhouse::ClickHouseStore;
use crate::embedded::EmbeddedStore;
use crate::query::{Answer, ScansQuery};

/// Where scans are kept: the embedded Parquet files or ClickHouse. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Store {
    Embedded(EmbeddedStore),
    ClickHouse(ClickHouseStore),
}

impl Store {
    /// The store `analytics.backend` names (the embedded one under `<data_dir>/analytics`).
    pub async fn open(settings: &Settings) -> Result<Store, AnalyticsError> {
        Ok(match settings.analytics.backend {
            AnalyticsBackend::Embedded => Store::Embedded(
                EmbeddedStore::open(&settings.embedded.data_dir.join("analytics"))?
                    .with_query_cache(settings.analytics.query_cache_mb * 1024 * 1024)
                    .with_concurrent_queries(settings.analytics.concurrent_queries as usize),
            ),
            AnalyticsBackend::Clickhouse => {
                Store::ClickHouse(ClickHouseStore::connect(&settings.analytics.clickhouse).await?)
            }
        })
    }

    /// Answers `query`.
    pub async fn scans(&self, query: ScansQuery) -> Result<Answer, AnalyticsError> {
        match self {
            Store::Embedded(store) => {
                let turn = take_turn(store).await?;
                let abandoned = AbandonOnDrop(Arc::new(AtomicBool::new(false)));
                let (store, flag) = (store.clone(), Arc::clone(&abandoned.0));
                tokio::task::spawn_blocking(move || {
                    // Held until the scan stops, not until its asker goes: the bound counts
                    // work being done.
                    let _turn = turn;
                    store.query_unless(&query, &flag)
                })
                .await
                .map_err(|error| AnalyticsError::Corrupt(format!("a query failed: {error}")))?
            }
            Store::ClickHouse(store) => store.scans(&query).await,
        }
    }

    /// The variant served to each of `clicks` among scans of `tenant`'s link `key`.
    pub async fn click_variants(
        &self,
        tenant: &str,
        key: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        clicks: HashSet<String>,
    ) -> Result<HashMap<String, String>, AnalyticsError> {
        if clicks.is_empty() {
            return Ok(HashMap::new());
        }
        match self {
            Store::Embedded(store) => {
                let turn = take_turn(store).await?;
                let (store, tenant, key) = (store.clone(), tenant.to_owned(), key.to_owned());
                tokio::task::spawn_blocking(move || {
                    let _turn = turn;
                    store.click_variants(&tenant, &key, from, to, &clicks)
                })
                .await
                .map_err(|error| AnalyticsError::Corrupt(format!("a lookup failed: {error}")))?
            }
            Store::ClickHouse(store) => store.click_variants(tenant, key, from, to, &clicks).await,
        }
    }

    /// Deletes every scan of `tenant`; for the embedded store, the number of days it had.
    pub async fn erase_tenant(&self, tenant: &str) -> Result<(), AnalyticsError> {
        match self {
            Store::Embedded(store) => {
                let (store, tenant) = (store.clone(), tenant.to_owned());
                tokio::task::spawn_blocking(move || store.erase_tenant(&tenant))
                    .await
                    .map_err(|error| AnalyticsError::Corrupt(format!("erasing failed: {error}")))?
                    .map(drop)
            }
            Store::ClickHouse(store) => store.erase_tenant(tenant).await,
        }
    }

    /// Whether queries can be answered (for `/readyz`).
    pub async fn check(&self) -> Result<(), AnalyticsError> {
        match self {
            Store::Embedded(store) => {
                let dir = store.scans_dir();
                std::fs::metadata(&dir)
                    .map(drop)
                    .map_err(|source| AnalyticsError::io(&dir, source))
            }
            Store::ClickHouse(store) => store.check().await,
        }
    }
}

/// Waits for a turn to read the embedded store. Waiting costs nothing: a request that runs
/// out of time in the queue never starts its scan.
async fn take_turn(
    store: &EmbeddedStore,
) -> Result<tokio::sync::OwnedSemaphorePermit, AnalyticsError> {
    let waiting = Waiting::start();
    let turn = Arc::clone(store.turns()).acquire_owned().await;
    drop(waiting);
    turn.map_err(|_| AnalyticsError::Corrupt("the store's query turns were closed".into()))
}

/// Tells a running scan its asker has gone when the request's future is dropped.
struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Counts a query waiting for its turn, until it has it or its asker gives up.
struct Waiting(metrics::Gauge);

impl Waiting {
    fn start() -> Self {
        let gauge = metrics::gauge!("analytics_queries_waiting");
        gauge.increment(1.0);
        Waiting(gauge)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
