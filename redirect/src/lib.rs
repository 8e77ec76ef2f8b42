//! Dynamic redirects: a printed code carries `<public_url>/r/<key>`, an immutable short key;
//! where it sends scanners is a versioned, tenant-owned [`records::Link`] that marketers
//! change at will.
//!
//! - [`store`]: links, their versions and their audit log, beside the bindings in the same
//!   database;
//! - [`Redirects`]: the tiered lookup a scan goes through — in-process cache, then Redis, then
//!   the database — with concurrent misses on one key coalesced into one database read, a
//!   short negative cache for unknown keys, and change events that drop every process's copy
//!   of a link that changed. The database read, the caches and the read after each edit hold
//!   a link without the versions that can never serve again ([`Link::servable_from`]), so a
//!   link edited thousands of times costs a scan or an edit no more than a new one;
//! - [`routes`]: `GET /r/{key}` for scanners and the links admin API for marketers;
//! - [`allow`]: which destinations a tenant may send scanners to (no open redirect).

pub mod allow;
pub mod routes;
pub mod store;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bindings::{ChangeListener, RedisTier, ScanCache};
use records::{Link, LinkKey};

pub use allow::Destinations;
pub use routes::{router, scan_route};
pub use store::{AuditOrder, LinkStore, LinkStoreError};

/// The Redis channel (under the key prefix) on which link changes are announced.
const CHANGES_CHANNEL: &str = "link-changes";

/// Links as scans see them; cheap to clone.
#[derive(Debug, Clone)]
pub struct Redirects {
    store: LinkStore,
    redis: Option<RedisTier>,
    ttl_secs: u64,
    local: ScanCache<LinkKey, Arc<Link>>,
    /// Keys recently found missing; `None` when turned off.
    missing: Option<ScanCache<LinkKey, ()>>,
    _listening: Option<Arc<ChangeListener>>,
}

/// A lookup's failure, shared by the coalesced callers.
#[derive(Debug, thiserror::Error)]
enum Lookup {
    #[error("no such link")]
    Missing,
    #[error(transparent)]
    Store(Arc<LinkStoreError>),
}

impl Redirects {
    pub fn new(store: LinkStore, redis: Option<RedisTier>, settings: &config::Settings) -> Self {
        let (local, missing) = bindings::scan_caches(&settings.middle_page);
        let listening = redis.as_ref().map(|redis| {
            Arc::new(
                redis.invalidate_on_changes(CHANGES_CHANNEL, local.clone(), |text| {
                    LinkKey::parse(text).ok()
                }),
            )
        });
        Redirects {
            store,
            redis,
            ttl_secs: settings.redis.ttl_secs,
            local,
            missing,
            _listening: listening,
        }
    }

    pub fn store(&self) -> &LinkStore {
        &self.store
    }

    fn redis_key(redis: &RedisTier, key: &LinkKey) -> String {
        redis.prefixed(&format!("l:{key}"))
    }

    /// The link behind `key` as scans from now on see it ([`Link::servable_from`]: its spent
    /// versions left out), deleted ones included; `None` when there is none.
    pub async fn resolve(&self, key: &LinkKey) -> Result<Option<Arc<Link>>, Arc<LinkStoreError>> {
        // Every cached scan counts one: the handle is found once, not built from labels.
        static LOCAL_HITS: LazyLock<metrics::Counter> =
            LazyLock::new(|| metrics::counter!("redirect_lookups_total", "tier" => "local"));
        if let Some(link) = self.local.get(key).await {
            LOCAL_HITS.increment(1);
            return Ok(Some(link));
        }
        if let Some(missing) = &self.missing
            && missing.contains_key(key)
        {
            metrics::counter!("redirect_lookups_total", "tier" => "local_missing").increment(1);
            return Ok(None);
        }
        // Boxed: the miss path's future (Redis, then the database) is many times the size of
        // the hit path's, and inline it would be moved around with every cached scan.
        Box::pin(self.resolve_missed(key)).await
    }

    async fn resolve_missed(
        &self,
        key: &LinkKey,
    ) -> Result<Option<Arc<Link>>, Arc<LinkStoreError>> {
        match self.local.try_get_with(key.clone(), self.fetch(key)).await {
            Ok(link) => Ok(Some(link)),
            Err(lookup) => match &*lookup {
                Lookup::Missing => Ok(None),
                Lookup::Store(error) => Err(Arc::clone(error)),
            },
        }
    }

    async fn fetch(&self, key: &LinkKey) -> Result<Arc<Link>, Lookup> {
        // A caller that checked the negative cache just before an earlier fetch marked the
        // key, and came here just after that fetch ended, finds the mark now.
        if let Some(missing) = &self.missing
            && missing.contains_key(key)
        {
            return Err(Lookup::Missing);
        }
        if let Some(redis) = &self.redis {
            let cached: Option<Link> = redis.get_json(&Self::redis_key(redis, key)).await;
            if let Some(link) = cached.filter(|link| link.v == Link::LAYOUT && link.key == *key) {
                metrics::counter!("redirect_lookups_total", "tier" => "redis").increment(1);
                return Ok(Arc::new(link));
            }
        }
        metrics::counter!("redirect_lookups_total", "tier" => "database").increment(1);
        let Some(link) = self
            .store
            .servable(key, chrono::Utc::now())
            .await
            .map_err(|error| Lookup::Store(Arc::new(error)))?
        else {
            if let Some(missing) = &self.missing {
                missing.insert(key.clone(), ()).await;
            }
            return Err(Lookup::Missing);
        };
        if let Some(redis) = &self.redis {
            redis
                .set_json(&Self::redis_key(redis, key), &link, self.ttl_secs)
                .await;
        }
        Ok(Arc::new(link))
    }

    /// Before a change is committed: removes Redis's copy, `false` when Redis is configured
    /// and could not be told (then the change must not be made, or a stale copy would serve
    /// the old version for `redis.ttl_secs`).
    async fn before_change(&self, key: &LinkKey) -> bool {
        match &self.redis {
            Some(redis) => redis.delete(&Self::redis_key(redis, key)).await,
            None => true,
        }
    }

    /// After a change is committed (or refused: Redis's copy was removed either way): reads
    /// the link once, writes it through to this process's cache and to Redis (so the other
    /// processes' next read finds it there), tells them to drop their copy, and returns it —
    /// `None` when it is gone (purged).
    async fn after_change(&self, key: &LinkKey) -> Result<Option<Link>, LinkStoreError> {
        if let Some(missing) = &self.missing {
            missing.invalidate(key).await;
        }
        let link = self.store.servable(key, chrono::Utc::now()).await;
        match &link {
            Ok(Some(found)) => {
                if let Some(redis) = &self.redis {
                    redis
                        .set_json(&Self::redis_key(redis, key), found, self.ttl_secs)
                        .await;
                }
                self.local
                    .insert(key.clone(), Arc::new(found.clone()))
                    .await;
            }
            Ok(None) | Err(_) => self.local.invalidate(key).await,
        }
        if let Some(redis) = &self.redis {
            redis.publish(CHANGES_CHANNEL, key.as_str()).await;
        }
        link
    }

    /// Purges links deleted longer ago than `retention`, every `every`, until cancelled.
    pub async fn purge_periodically(
        self,
        retention: chrono::Duration,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self
                .store
                .purge_deleted_before(chrono::Utc::now() - retention)
                .await
            {
                Ok(purged) => {
                    for key in &purged {
                        // Gone from the store: this only drops the cached copies.
                        let _ = self.after_change(key).await;
                    }
                    if !purged.is_empty() {
                        tracing::info!(count = purged.len(), "purged deleted links past retention");
                        metrics::counter!("redirect_links_purged_total")
                            .increment(purged.len() as u64);
                    }
                }
                Err(error) => tracing::warn!(%error, "purging deleted links failed; will retry"),
            }
        }
    }
}
