//! The durable binding store: the truth every other tier is refilled from.
//!
//! Two backends behind [`DurableStore`]: SQLite (`bindings.db` in the data folder, WAL with
//! `synchronous=FULL`, so a committed bind survives power loss) and PostgreSQL. In both,
//! the `request_id` primary key refuses a second bind of one code, and a bind writes its
//! binding and its image in one transaction — shared with the binds that arrived with it
//! ([`crate::group_commit`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{FromRow, PgPool, SqlitePool};

use config::{PostgresSettings, Settings, StoreBackend};
use records::{Binding, CodeImage, Params, RequestId, Tags, Tenant};

use crate::group_commit::{GroupCommit, Pending, WriteBatch};
use crate::retirement::Retirements;
use crate::{BindError, StoreError};

/// Binds committed in one transaction at most.
const MAX_BATCH: usize = 512;

/// PostgreSQL commits in flight at once when binds queue behind a slow one (see
/// [`GroupCommit::start`]); each holds a connection of the pool.
const COMMITS_IN_FLIGHT: usize = 4;

/// How long start-up keeps trying to reach PostgreSQL before it gives up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// The database behind the store, for the parts that keep their own tables beside the
/// bindings (the links of `redirect`) rather than open a second one.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug, Clone)]
pub enum DurableStore {
    Embedded(SqliteStore),
    Postgres(PostgresStore),
}

impl DurableStore {
    /// Opens the store named by `store.backend` and brings its schema up to date.
    pub async fn connect(settings: &Settings) -> Result<Self, StoreError> {
        Ok(match settings.store.backend {
            StoreBackend::Embedded => {
                DurableStore::Embedded(SqliteStore::open(&settings.embedded.data_dir).await?)
            }
            StoreBackend::Postgres => {
                let url = settings
                    .postgres
                    .url
                    .as_ref()
                    .map(ExposeSecret::expose_secret)
                    .unwrap_or_default();
                let options: PgConnectOptions = url.parse()?;
                DurableStore::Postgres(PostgresStore::connect(options, &settings.postgres).await?)
            }
        })
    }

    pub fn database(&self) -> Database {
        match self {
            DurableStore::Embedded(store) => Database::Sqlite(store.db.clone()),
            DurableStore::Postgres(store) => Database::Postgres(store.db.clone()),
        }
    }

    pub(crate) async fn insert(
        &self,
        binding: &Binding,
        image: Option<&CodeImage>,
        idempotency_key: Option<&str>,
    ) -> Result<(), BindError> {
        let commits = match self {
            DurableStore::Embedded(store) => &store.commits,
            DurableStore::Postgres(store) => &store.commits,
        };
        let inserted = commits
            .insert(
                binding.clone(),
                image.cloned(),
                idempotency_key.map(str::to_owned),
            )
            .await?;
        if inserted {
            Ok(())
        } else {
            Err(BindError::AlreadyBound)
        }
    }

    pub async fn get(&self, id: RequestId) -> Result<Option<Binding>, StoreError> {
        let row = match self {
            DurableStore::Embedded(store) => store.get(id).await?,
            DurableStore::Postgres(store) => store.get(id).await?,
        };
        row.map(BindingRow::into_binding).transpose()
    }

    /// The binding an app's earlier request with this `Idempotency-Key` made, if any.
    pub async fn by_idempotency_key(
        &self,
        tenant: &Tenant,
        key: &str,
    ) -> Result<Option<Binding>, StoreError> {
        let query = SELECT_BY_IDEMPOTENCY_KEY;
        let row: Option<BindingRow> = match self {
            DurableStore::Embedded(store) => {
                sqlx::query_as(query)
                    .bind(tenant.as_str())
                    .bind(key)
                    .fetch_optional(&store.db)
                    .await?
            }
            DurableStore::Postgres(store) => {
                sqlx::query_as(query)
                    .bind(tenant.as_str())
                    .bind(key)
                    .fetch_optional(&store.db)
                    .await?
            }
        };
        row.map(BindingRow::into_binding).transpose()
    }

    pub(crate) async fn image(&self, id: RequestId) -> Result<Option<CodeImage>, StoreError> {
        let query = "SELECT media_type, bytes FROM code_images WHERE request_id = $1";
        let row: Option<(String, Vec<u8>)> = match self {
            DurableStore::Embedded(store) => {
                sqlx::query_as(query)
                    .bind(id.to_text().as_str())
                    .fetch_optional(&store.db)
                    .await?
            }
            DurableStore::Postgres(store) => {
                sqlx::query_as(query)
                    .bind(id.to_text().as_str())
                    .fetch_optional(&store.db)
                    .await?
            }
        };
        Ok(row.map(|(media_type, bytes)| CodeImage { media_type, bytes }))
    }

    pub(crate) async fn check(&self) -> Result<(), StoreError> {
        match self {
            DurableStore::Embedded(store) => {
                sqlx::query("SELECT 1").execute(&store.db).await.map(drop)?
            }
            DurableStore::Postgres(store) => {
                sqlx::query("SELECT 1").execute(&store.db).await.map(drop)?
            }
        }
        Ok(())
    }

    /// How many codes are bound; for operators and tests.
    pub async fn count(&self) -> Result<i64, StoreError> {
        let query = "SELECT COUNT(*) FROM bindings";
        Ok(match self {
            DurableStore::Embedded(store) => sqlx::query_scalar(query).fetch_one(&store.db).await?,
            DurableStore::Postgres(store) => sqlx::query_scalar(query).fetch_one(&store.db).await?,
        })
    }
}

/// A binding as both databases return it.
#[derive(FromRow)]
struct BindingRow {
    request_id: String,
    tenant: String,
    params: Json<serde_json::Value>,
    content: String,
    issuer: String,
    version: i32,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    tags: Option<Json<Vec<String>>>,
}

/// Tags as stored: `NULL` for none.
pub(crate) fn stored_tags(tags: &Tags) -> Option<Json<&[String]>> {
    (!tags.is_empty()).then(|| Json(tags.as_slice()))
}

/// Tags as read back.
pub(crate) fn read_tags(stored: Option<Json<Vec<String>>>) -> Result<Tags, StoreError> {
    stored
        .map(|Json(tags)| Tags::parse(tags))
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|error| StoreError::Corrupt(format!("tags: {error}")))
}

impl BindingRow {
    fn into_binding(self) -> Result<Binding, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("bad {what}"));
        Ok(Binding {
            v: Binding::LAYOUT,
            request_id: RequestId::parse(&self.request_id).map_err(|_| corrupt("request_id"))?,
            tenant: Tenant::parse(&self.tenant).map_err(|_| corrupt("tenant"))?,
            params: serde_json::from_value::<Params>(self.params.0)
                .map_err(|error| StoreError::Corrupt(format!("params: {error}")))?,
            content: self.content,
            issuer: self.issuer,
            version: u32::try_from(self.version).map_err(|_| corrupt("version"))?,
            created_at: self.created_at,
            expires_at: self.expires_at,
            tags: read_tags(self.tags)?,
        })
    }
}

macro_rules! select_binding_where {
    ($condition:literal) => {
        concat!(
            "SELECT request_id, tenant, params, content, issuer, version, created_at, expires_at, tags \
             FROM bindings WHERE ",
            $condition
        )
    };
}
const SELECT_BINDING: &str = select_binding_where!("request_id = $1");
const SELECT_BY_IDEMPOTENCY_KEY: &str =
    select_binding_where!("tenant = $1 AND idempotency_key = $2");

/// Brings a part's tables up to date in the database the bindings share: `sqlite`'s
/// migrations or `postgres`'s, each part's recorded in the same table (so others' are not
/// missing ones). Any number of processes may start at once on one database: PostgreSQL
/// migrations run under sqlx's advisory lock; SQLite has none, so they run under an
/// exclusive lock on a file beside the database (`<file>.migrate-lock`) — without it two
/// processes on a new data folder both apply the first migration and one fails.
pub async fn migrate(
    db: &Database,
    mut sqlite: sqlx::migrate::Migrator,
    mut postgres: sqlx::migrate::Migrator,
) -> Result<(), sqlx::migrate::MigrateError> {
    match db {
        Database::Sqlite(pool) => {
            sqlite.set_ignore_missing(true);
            let lock = lock_file(pool.connect_options().get_filename()).await?;
            let migrated = sqlite.run(pool).await;
            drop(lock);
            migrated
        }
        Database::Postgres(pool) => {
            postgres.set_ignore_missing(true);
            postgres.run(pool).await
        }
    }
}

/// An exclusive lock on `<database>.migrate-lock`, held until the file is dropped (waits
/// for another process's migrations to end).
async fn lock_file(
    database: &std::path::Path,
) -> Result<std::fs::File, sqlx::migrate::MigrateError> {
    let mut path = database.as_os_str().to_owned();
    path.push(".migrate-lock");
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|error| sqlx::migrate::MigrateError::Source(Box::new(error)))?
    .map_err(|error| sqlx::migrate::MigrateError::Source(Box::new(error)))
}

/// The embedded store: `bindings.db` in the data folder.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(crate) db: SqlitePool,
    commits: GroupCommit,
    /// Keeps a restore from replacing the database under this process.
    _in_use: std::sync::Arc<crate::backup::InUse>,
}

impl SqliteStore {
    pub async fn open(data_dir: &std::path::Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let folder = data_dir.to_owned();
        let in_use = tokio::task::spawn_blocking(move || crate::backup::InUse::hold(&folder))
            .await
            .map_err(|error| {
                StoreError::Corrupt(format!("the in-use lock task failed: {error}"))
            })??;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("bindings.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // Creating the file and turning on WAL take locks SQLite does not wait for: processes
        // opening a new data folder at once do that one at a time.
        let creating = lock_file(&data_dir.join("bindings.db")).await?;
        let db = SqlitePoolOptions::new()
            .max_connections(8)
            // sqlx's lifetime and idle limits free what a server holds per session; a file has
            // no server, and a new connection starts with a cold page cache and no statements.
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(options)
            .await;
        drop(creating);
        let db = db?;
        // Other parts keep tables in this database (links) and record their migrations in
        // the same table: theirs are not ours to miss.
        migrate(
            &Database::Sqlite(db.clone()),
            sqlx::migrate!("./migrations/sqlite"),
            sqlx::migrate!("./migrations/postgres"),
        )
        .await?;
        // SQLite has one writer at a time: one commit at a time, batches as large as they come.
        let commits = GroupCommit::start(SqliteBatches(db.clone()), MAX_BATCH, 1);
        Ok(SqliteStore {
            db,
            commits,
            _in_use: std::sync::Arc::new(in_use),
        })
    }

    async fn get(&self, id: RequestId) -> Result<Option<BindingRow>, sqlx::Error> {
        sqlx::query_as(SELECT_BINDING)
            .bind(id.to_text().as_str())
            .fetch_optional(&self.db)
            .await
    }
}

#[derive(Clone)]
struct SqliteBatches(SqlitePool);

impl WriteBatch for SqliteBatches {
    async fn write_batch(&self, batch: &[Pending]) -> Result<Vec<bool>, StoreError> {
        let mut connection = self.0.acquire().await?;
        let written = sqlite_write_batch(&mut connection, batch).await;
        if written.is_err() {
            // After a failed write (a full disk, say) SQLite may have ended the transaction
            // itself and the connection may go on holding the write lock, so that every later
            // write waits out the busy timeout: a new connection starts clean.
            connection.close_on_drop();
        }
        written
    }
}

async fn sqlite_write_batch(
    connection: &mut sqlx::SqliteConnection,
    batch: &[Pending],
) -> Result<Vec<bool>, StoreError> {
    let mut tx = sqlx::Connection::begin(connection).await?;
    let mut inserted = Vec::with_capacity(batch.len());
    for Pending {
        binding,
        image,
        idempotency_key,
        ..
    } in batch
    {
        let id = binding.request_id.to_text();
        // No conflict target: a clash on the request id (bound already) or on the
        // tenant's idempotency key (a retried request) both leave the row out.
        let new = sqlx::query(
            "INSERT INTO bindings (request_id, tenant, params, content, issuer, version, created_at, expires_at, idempotency_key, tags) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        )
        .bind(id.as_str())
        .bind(binding.tenant.as_str())
        .bind(Json(&binding.params))
        .bind(&binding.content)
        .bind(&binding.issuer)
        .bind(i64::from(binding.version))
        .bind(binding.created_at)
        .bind(binding.expires_at)
        .bind(idempotency_key.as_deref())
        .bind(stored_tags(&binding.tags))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if new && let Some(image) = image {
            sqlx::query(
                "INSERT INTO code_images (request_id, media_type, bytes) VALUES ($1, $2, $3)",
            )
            .bind(id.as_str())
            .bind(&image.media_type)
            .bind(&image.bytes)
            .execute(&mut *tx)
            .await?;
        }
        inserted.push(new);
    }
    tx.commit().await?;
    Ok(inserted)
}

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pub(crate) db: PgPool,
    commits: GroupCommit,
}

impl PostgresStore {
    /// Connects (retrying for a while, since databases often start after us) and migrates.
    pub async fn connect(
        options: PgConnectOptions,
        settings: &PostgresSettings,
    ) -> Result<Self, StoreError> {
        let retirements = Arc::new(Retirements::new(
            Duration::from_secs(settings.connection_lifetime_secs),
            settings.max_connections,
        ));
        let pool_options = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
            // Replaced by `retirements`, one connection at a time.
            .max_lifetime(None)
            .after_release(move |_, meta| {
                let keep = !retirements.retire(meta.age, Instant::now());
                if !keep {
                    metrics::counter!("bindings_postgres_connections_retired_total").increment(1);
                    tracing::debug!(
                        age_secs = meta.age.as_secs(),
                        "retiring a PostgreSQL connection"
                    );
                }
                Box::pin(std::future::ready(Ok(keep)))
            });
        let started = tokio::time::Instant::now();
        let db = loop {
            match pool_options.clone().connect_with(options.clone()).await {
                Ok(db) => break db,
                Err(error) if started.elapsed() < CONNECT_PATIENCE => {
                    tracing::warn!(%error, "PostgreSQL not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        Self::migrate(&db).await?;
        let commits = GroupCommit::start(PgBatches(db.clone()), MAX_BATCH, COMMITS_IN_FLIGHT);
        Ok(PostgresStore { db, commits })
    }

    /// Brings the schema up to date (at every start, and what `qrpool migrate` runs).
    async fn migrate(db: &PgPool) -> Result<(), StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        // Other parts keep tables in this database (links) and record their migrations in
        // the same table: theirs are not ours to miss.
        migrator.set_ignore_missing(true);
        migrator.run(db).await?;
        Ok(())
    }

    async fn get(&self, id: RequestId) -> Result<Option<BindingRow>, sqlx::Error> {
        sqlx::query_as(SELECT_BINDING)
            .bind(id.to_text().as_str())
            .fetch_optional(&self.db)
            .await
    }
}

#[derive(Clone)]
struct PgBatches(PgPool);

impl WriteBatch for PgBatches {
    /// One statement for the whole batch — one round trip, one implicit transaction: the
    /// bindings, and the images of those that were new. Rows go in in request-id order: two
    /// binders whose batches share ids (the same code delivered twice, racing) then wait on
    /// each other in one order and never deadlock, which unordered they did (PostgreSQL
    /// aborted one batch, and its binds failed).
    async fn write_batch(&self, batch: &[Pending]) -> Result<Vec<bool>, StoreError> {
        let ids: Vec<String> = batch
            .iter()
            .map(|p| p.binding.request_id.to_string())
            .collect();
        let inserted: Vec<String> = sqlx::query_scalar(
            "WITH input AS ( \
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::JSONB[], $4::TEXT[], $5::TEXT[], \
                                      $6::INT[], $7::TIMESTAMPTZ[], $8::TIMESTAMPTZ[], $9::TEXT[], $10::BYTEA[], \
                                      $11::TEXT[], $12::JSONB[]) \
                 AS t(request_id, tenant, params, content, issuer, version, created_at, expires_at, media_type, bytes, \
                      idempotency_key, tags)), \
             inserted AS ( \
                 INSERT INTO bindings (request_id, tenant, params, content, issuer, version, created_at, expires_at, idempotency_key, tags) \
                 SELECT request_id, tenant, params, content, issuer, version, created_at, expires_at, idempotency_key, tags FROM input \
                 ORDER BY request_id \
                 ON CONFLICT DO NOTHING \
                 RETURNING request_id), \
             images AS ( \
                 INSERT INTO code_images (request_id, media_type, bytes) \
                 SELECT input.request_id, input.media_type, input.bytes \
                 FROM input JOIN inserted USING (request_id) WHERE input.bytes IS NOT NULL) \
             SELECT request_id FROM inserted",
        )
        .bind(&ids)
        .bind(batch.iter().map(|p| p.binding.tenant.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| Json(&p.binding.params)).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.binding.content.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.binding.issuer.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| i32::try_from(p.binding.version).unwrap_or(i32::MAX)).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.binding.created_at).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.binding.expires_at).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.image.as_ref().map(|i| i.media_type.as_str())).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.image.as_ref().map(|i| i.bytes.as_slice())).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.idempotency_key.as_deref()).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| stored_tags(&p.binding.tags)).collect::<Vec<_>>())
        .fetch_all(&self.0)
        .await?;
        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        Ok(ids.iter().map(|id| inserted.contains(id)).collect())
    }
}
