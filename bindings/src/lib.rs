//! Bindings: `request_id → params`, written once by the binder, read at every scan.
//!
//! - [`durable`]: the truth. An embedded SQLite file or PostgreSQL; its primary key is what
//!   makes a bind happen **at most once**, and a bind returns only once it is committed.
//! - [`redis_tier`]: the hot copy shared by every process, filled on bind and on a miss.
//! - [`api_keys`]: the tenants' API keys (hashed), kept in the same database, and
//!   [`console_sessions`]: the console's signed-in sessions opened with them.
//! - [`Database`]: that database, for parts that keep tables beside the bindings (links).
//! - [`versions`]: changing a binding as a new version, keeping the ones before.
//! - [`backup`]: consistent copies of the embedded store taken while it serves, and restores.
//! - [`Bindings`]: the tiered lookup: in-process cache → Redis → durable store, refilling
//!   the faster tiers, with concurrent lookups of one id coalesced into one.
//!
//! Degradation: Redis failing never fails a bind or a resolve (it is skipped and counted,
//! and used again as soon as it answers); the durable store failing fails both, cleanly.

pub mod api_keys;
pub mod backup;
mod change_events;
pub mod console_sessions;
pub mod durable;
mod events;
mod group_commit;
pub mod redis_tier;
mod retirement;
pub mod versions;

use std::sync::Arc;
use std::time::Duration;

use events::Tier;
use moka::future::Cache;
use records::{Binding, CodeImage, RequestId};

pub use api_keys::ApiKey;
pub use change_events::ChangeListener;
pub use console_sessions::ConsoleSession;
pub use durable::{Database, DurableStore, PostgresStore, SqliteStore};
pub use redis_tier::RedisTier;
pub use versions::{Change, ChangeError, PastVersion};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("binding database failed")]
    Database(#[from] sqlx::Error),
    #[error("binding database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a stored binding is unreadable: {0}")]
    Corrupt(String),
    #[error("setting `redis.url` is not a Redis URL")]
    RedisUrl(#[source] redis::RedisError),
    /// The same failure, reported to every caller of a coalesced lookup or a group commit.
    #[error(transparent)]
    Shared(Arc<StoreError>),
    #[error("the binding store is shutting down")]
    Stopped,
    #[error("the embedded store's folder is being restored or unusable")]
    InUse(#[from] backup::BackupError),
    #[error("embedded store folder `{path}` cannot be created")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the store failed for want of disk space: SQLite's `SQLITE_FULL`, PostgreSQL's
    /// `disk_full` (53100), or the operating system's "no space left on device".
    pub fn is_disk_full(&self) -> bool {
        const SQLITE_FULL: i32 = 13;
        const ENOSPC: i32 = 28;
        match self {
            StoreError::Database(sqlx::Error::Database(error)) => {
                error.code().is_some_and(|code| {
                    code == "53100"
                        || code
                            .parse::<i32>()
                            .is_ok_and(|code| code & 0xff == SQLITE_FULL)
                })
            }
            StoreError::Database(sqlx::Error::Io(error)) => error.raw_os_error() == Some(ENOSPC),
            StoreError::Shared(error) => error.is_disk_full(),
            _ => false,
        }
    }
}

/// Why a bind did not happen.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The request id is bound already; the earlier binding stands.
    #[error("request id is already bound")]
    AlreadyBound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The tiered binding store every part uses.
#[derive(Debug, Clone)]
pub struct Bindings {
    durable: DurableStore,
    redis: Option<RedisTier>,
    local: ScanCache<RequestId, Arc<Binding>>,
    /// Ids recently found unbound (negative cache); `None` when turned off.
    unbound: Option<ScanCache<RequestId, ()>>,
    /// Keeps `local` in step with changes made by other processes; stops with the last clone.
    _listening: Option<Arc<ChangeListener>>,
}

/// An in-process cache of the scan path. Hashed with foldhash, seeded per process, rather
/// than SipHash: every scan hashes its key at least twice, and SipHash was about 3 % of the
/// scan path's instructions (callgrind). Scanners choose the keys, so the hash stays seeded.
pub type ScanCache<K, V> = Cache<K, V, foldhash::fast::RandomState>;

/// The in-process caches of a scan-time lookup, as `middle_page` sizes them: the records,
/// and the keys recently found missing (`None` when `negative_ttl_ms` is 0).
pub fn scan_caches<K, V>(
    settings: &config::MiddlePageSettings,
) -> (ScanCache<K, V>, Option<ScanCache<K, ()>>)
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let found = Cache::builder()
        .max_capacity(settings.cache_capacity)
        .time_to_live(Duration::from_secs(settings.cache_ttl_secs))
        .build_with_hasher(foldhash::fast::RandomState::default());
    let missing = (settings.negative_ttl_ms > 0).then(|| {
        Cache::builder()
            .max_capacity(settings.cache_capacity)
            .time_to_live(Duration::from_millis(settings.negative_ttl_ms))
            .build_with_hasher(foldhash::fast::RandomState::default())
    });
    (found, missing)
}

/// What a lookup found; kept apart from errors so that coalesced lookups share it.
#[derive(Debug, thiserror::Error)]
enum Lookup {
    #[error("not bound")]
    NotBound,
    #[error(transparent)]
    Store(Arc<StoreError>),
}

impl From<StoreError> for Lookup {
    fn from(error: StoreError) -> Self {
        Lookup::Store(Arc::new(error))
    }
}

impl Bindings {
    pub fn new(
        durable: DurableStore,
        redis: Option<RedisTier>,
        cache: &config::MiddlePageSettings,
    ) -> Self {
        let (local, unbound) = scan_caches(cache);
        let listening = redis
            .as_ref()
            .map(|redis| Arc::new(redis.listen_for_changes(local.clone())));
        Bindings {
            durable,
            redis,
            local,
            unbound,
            _listening: listening,
        }
    }

    /// Opens the stores named by the settings, running migrations on the durable one.
    pub async fn connect(settings: &config::Settings) -> Result<Self, StoreError> {
        let durable = DurableStore::connect(settings).await?;
        let redis = match &settings.redis.url {
            Some(url) => Some(RedisTier::new(
                url,
                &settings.redis.key_prefix,
                settings.redis.ttl_secs,
            )?),
            None => None,
        };
        Ok(Bindings::new(durable, redis, &settings.middle_page))
    }

    /// Writes a binding (and its image) durably, then warms the faster tiers.
    /// `AlreadyBound` also when `idempotency_key` names another bind of the tenant.
    pub async fn bind(
        &self,
        binding: Binding,
        image: Option<&CodeImage>,
        idempotency_key: Option<&str>,
    ) -> Result<Arc<Binding>, BindError> {
        self.durable
            .insert(&binding, image, idempotency_key)
            .await?;
        if let Some(unbound) = &self.unbound {
            unbound.invalidate(&binding.request_id).await;
        }
        Ok(self.refresh(binding).await)
    }

    /// Puts a binding just committed into the faster tiers.
    async fn refresh(&self, binding: Binding) -> Arc<Binding> {
        let binding = Arc::new(binding);
        if let Some(redis) = &self.redis {
            redis.set(&binding).await;
        }
        self.local
            .insert(binding.request_id, Arc::clone(&binding))
            .await;
        binding
    }

    /// Finds a binding: in-process cache, then Redis, then the durable store. `None` means
    /// not bound; such an answer is remembered for `middle_page.negative_ttl_ms`.
    pub async fn resolve(&self, id: RequestId) -> Result<Option<Arc<Binding>>, StoreError> {
        if let Some(binding) = self.local.get(&id).await {
            events::lookup(Tier::Local, true);
            return Ok(Some(binding));
        }
        if let Some(unbound) = &self.unbound
            && unbound.contains_key(&id)
        {
            events::lookup(Tier::LocalUnbound, true);
            return Ok(None);
        }
        // Boxed: the miss path's future (Redis, then the database) is many times the size of
        // the hit path's, and inline it would be moved around with every cached scan.
        Box::pin(self.resolve_missed(id)).await
    }

    async fn resolve_missed(&self, id: RequestId) -> Result<Option<Arc<Binding>>, StoreError> {
        // Concurrent misses on one id wait for a single fetch (moka's `try_get_with`).
        match self.local.try_get_with(id, self.fetch(id)).await {
            Ok(binding) => Ok(Some(binding)),
            Err(lookup) => match &*lookup {
                Lookup::NotBound => Ok(None),
                Lookup::Store(error) => Err(StoreError::Shared(Arc::clone(error))),
            },
        }
    }

    async fn fetch(&self, id: RequestId) -> Result<Arc<Binding>, Lookup> {
        // A caller that checked the negative cache just before an earlier fetch marked the
        // id, and came here just after that fetch ended, finds the mark now.
        if let Some(unbound) = &self.unbound
            && unbound.contains_key(&id)
        {
            events::lookup(Tier::LocalUnbound, true);
            return Err(Lookup::NotBound);
        }
        if let Some(redis) = &self.redis {
            if let Some(binding) = redis.get(id).await {
                events::lookup(Tier::Redis, true);
                return Ok(Arc::new(binding));
            }
            events::lookup(Tier::Redis, false);
        }
        let Some(binding) = self.durable.get(id).await? else {
            events::lookup(Tier::Database, false);
            // Marked here, inside the one coalesced fetch, so that no request can slip in
            // between this answer and the mark and start a second lookup.
            if let Some(unbound) = &self.unbound {
                unbound.insert(id, ()).await;
            }
            return Err(Lookup::NotBound);
        };
        events::lookup(Tier::Database, true);
        if let Some(redis) = &self.redis {
            redis.set(&binding).await;
        }
        Ok(Arc::new(binding))
    }

    /// The stored image of a bound code.
    pub async fn image(&self, id: RequestId) -> Result<Option<CodeImage>, StoreError> {
        self.durable.image(id).await
    }

    /// Whether the durable store answers (Redis is optional, so it is not asked).
    pub async fn check(&self) -> Result<(), StoreError> {
        self.durable.check().await
    }

    pub fn durable(&self) -> &DurableStore {
        &self.durable
    }

    /// The Redis tier, when configured: other parts cache their own records in it.
    pub fn redis(&self) -> Option<&RedisTier> {
        self.redis.as_ref()
    }
}
