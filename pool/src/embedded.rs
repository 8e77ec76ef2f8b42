//! The embedded pool: a table in a local SQLite file (`pool.db` in the data folder), one
//! lane per issuer (an `issuer` column).
//!
//! Takers of a lane share an in-memory prefetch buffer filled in `seq` order; acks are collected and
//! deleted in one transaction every [`ACK_FLUSH_INTERVAL`]. A crash before that flush loses
//! nothing: the un-deleted codes come back at the next start and the binding store's unique
//! key skips the ones already bound. One process owns the file.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::Notify;

use records::PoolRecord;

use crate::{Delivery, PoolError, Receipt, record_undecodable};

/// How often acked rows are deleted.
const ACK_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Rows read into memory at a time.
const PREFETCH: i64 = 512;

/// A pool in a local SQLite file. Cheap to clone: clones share one database and buffers.
#[derive(Debug, Clone)]
pub struct EmbeddedPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: SqlitePool,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    /// Acked rows not yet deleted, in the order they were acked.
    acked: Mutex<Vec<Acked>>,
    /// Held by the flush deleting rows: one at a time, so that a flush returns only once
    /// every ack made before it is durable, even those another flush was already deleting.
    flushing: tokio::sync::Mutex<()>,
    /// Wakes takers waiting on a dry lane when pregen pushes.
    pushed: Notify,
}

/// The taking side of one issuer's lane, shared by every taker of that lane in the process.
#[derive(Debug)]
struct Lane {
    issuer: Arc<str>,
    buffer: Mutex<VecDeque<Delivery>>,
    /// Highest `seq` read into the buffer; the next refill starts after it.
    cursor: tokio::sync::Mutex<i64>,
}

/// A row bound and waiting to be deleted; until then it still counts in no lane's depth.
#[derive(Debug)]
struct Acked {
    seq: i64,
    issuer: Arc<str>,
}

/// Takes one issuer's codes from an [`EmbeddedPool`].
#[derive(Debug, Clone)]
pub struct EmbeddedLane {
    pool: EmbeddedPool,
    lane: Arc<Lane>,
}

/// Waits for and takes an exclusive lock on `path`, held until the file is dropped.
async fn migration_lock(path: std::path::PathBuf) -> Result<std::fs::File, PoolError> {
    let locked = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|error| std::io::Error::other(error.to_string()));
    locked
        .and_then(|file| file)
        .map_err(|source| PoolError::DataDir {
            path: "pool.db.migrate-lock".into(),
            source,
        })
}

impl EmbeddedPool {
    /// Opens (creating when missing) `pool.db` in `data_dir`.
    pub async fn open(data_dir: &Path) -> Result<Self, PoolError> {
        std::fs::create_dir_all(data_dir).map_err(|source| PoolError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("pool.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        // Several processes may open a new data folder at once (three `pregen fill`s): the
        // file's creation, the switch to WAL (locks SQLite does not wait for) and the
        // migrations (which take none of their own) run under an exclusive lock on a file
        // beside the database.
        let lock = migration_lock(data_dir.join("pool.db.migrate-lock")).await?;
        let opened = async {
            let db = SqlitePoolOptions::new()
                .max_connections(4)
                // sqlx's lifetime and idle limits free what a server holds per session; a file
                // has no server, and a new connection starts with a cold page cache and no
                // statements.
                .max_lifetime(None)
                .idle_timeout(None)
                .connect_with(options)
                .await?;
            sqlx::migrate!("./migrations").run(&db).await?;
            Ok::<_, PoolError>(db)
        }
        .await;
        drop(lock);
        let db = opened?;

        let pool = EmbeddedPool {
            inner: Arc::new(Inner {
                db,
                lanes: Mutex::default(),
                acked: Mutex::new(Vec::new()),
                flushing: tokio::sync::Mutex::new(()),
                pushed: Notify::new(),
            }),
        };
        tokio::spawn(flush_acks_periodically(Arc::downgrade(&pool.inner)));
        Ok(pool)
    }

    pub(crate) async fn push(&self, records: &[PoolRecord]) -> Result<(), PoolError> {
        in_transaction(&self.inner.db, async |tx| {
            for record in records {
                sqlx::query("INSERT INTO pool (issuer, record) VALUES (?, ?)")
                    .bind(&record.issuer)
                    .bind(record.encode())
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        })
        .await?;
        self.inner.pushed.notify_waiters();
        Ok(())
    }

    /// The taker of `issuer`'s lane (one per issuer and process: takers share its buffer).
    pub fn lane(&self, issuer: &str) -> EmbeddedLane {
        let lane = Arc::clone(
            lock(&self.inner.lanes)
                .entry(issuer.to_owned())
                .or_insert_with(|| {
                    Arc::new(Lane {
                        issuer: issuer.into(),
                        buffer: Mutex::default(),
                        cursor: tokio::sync::Mutex::new(0),
                    })
                }),
        );
        EmbeddedLane {
            pool: self.clone(),
            lane,
        }
    }

    pub(crate) async fn depth(&self, issuer: &str) -> Result<u64, PoolError> {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pool WHERE issuer = ?")
            .bind(issuer)
            .fetch_one(&self.inner.db)
            .await?;
        let acked_not_deleted = lock(&self.inner.acked)
            .iter()
            .filter(|acked| &*acked.issuer == issuer)
            .count() as i64;
        Ok(u64::try_from(rows - acked_not_deleted).unwrap_or(0))
    }

    /// Codes waiting in each lane that holds any, by issuer.
    pub(crate) async fn depth_per_issuer(&self) -> Result<Vec<(String, u64)>, PoolError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT issuer, COUNT(*) FROM pool GROUP BY issuer ORDER BY issuer")
                .fetch_all(&self.inner.db)
                .await?;
        let acked = lock(&self.inner.acked);
        Ok(rows
            .into_iter()
            .map(|(issuer, count)| {
                let bound = acked.iter().filter(|a| *a.issuer == *issuer).count() as i64;
                (issuer, u64::try_from(count - bound).unwrap_or(0))
            })
            .collect())
    }

    /// Whether the database answers.
    pub(crate) async fn check(&self) -> Result<(), PoolError> {
        sqlx::query("SELECT 1").execute(&self.inner.db).await?;
        Ok(())
    }

    /// Deletes the acked rows now.
    pub(crate) async fn flush_acks(&self) -> Result<(), PoolError> {
        flush(&self.inner).await
    }
}

impl EmbeddedLane {
    pub fn issuer(&self) -> &str {
        &self.lane.issuer
    }

    pub(crate) async fn take(&self, wait: Duration) -> Result<Option<Delivery>, PoolError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for a wake-up before looking, so a push in between is not missed.
            let pushed = self.pool.inner.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();

            if let Some(delivery) = lock(&self.lane.buffer).pop_front() {
                return Ok(Some(delivery));
            }
            if self.refill().await? {
                continue;
            }
            if tokio::time::timeout_at(deadline, pushed).await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Reads the lane's next rows after the cursor into the buffer. Returns whether the
    /// buffer holds anything afterwards.
    async fn refill(&self) -> Result<bool, PoolError> {
        let mut cursor = self.lane.cursor.lock().await;
        // Another taker may have refilled while this one waited for the cursor.
        if !lock(&self.lane.buffer).is_empty() {
            return Ok(true);
        }
        let rows = sqlx::query(
            "SELECT seq, record FROM pool WHERE issuer = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(&*self.lane.issuer)
        .bind(*cursor)
        .bind(PREFETCH)
        .fetch_all(&self.pool.inner.db)
        .await?;
        let mut buffer = lock(&self.lane.buffer);
        for row in rows {
            let seq: i64 = row.get(0);
            let bytes: Vec<u8> = row.get(1);
            *cursor = seq;
            match PoolRecord::decode(&bytes) {
                Ok(record) => buffer.push_back(Delivery {
                    record,
                    receipt: Receipt::Embedded { seq },
                }),
                Err(error) => {
                    record_undecodable(&error);
                    self.ack(seq);
                }
            }
        }
        Ok(!buffer.is_empty())
    }

    pub(crate) fn ack(&self, seq: i64) {
        lock(&self.pool.inner.acked).push(Acked {
            seq,
            issuer: Arc::clone(&self.lane.issuer),
        });
    }

    pub(crate) fn give_back(&self, delivery: Delivery) {
        lock(&self.lane.buffer).push_front(delivery);
        // Every waiter, not one: a single wake-up could go to a taker of another lane.
        self.pool.inner.pushed.notify_waiters();
    }

    pub(crate) async fn flush_acks(&self) -> Result<(), PoolError> {
        self.pool.flush_acks().await
    }

    pub(crate) async fn check(&self) -> Result<(), PoolError> {
        self.pool.check().await
    }
}

/// Runs `write` in one transaction. After a failure the connection is closed rather than
/// returned to the pool: on a full disk, say, SQLite may end the transaction itself and the
/// connection go on holding the write lock, so that every later write waits out the busy
/// timeout; a new connection starts clean.
async fn in_transaction<T>(
    db: &SqlitePool,
    write: impl AsyncFnOnce(&mut sqlx::SqliteConnection) -> Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    let mut connection = db.acquire().await?;
    let result = async {
        let mut tx = sqlx::Connection::begin(&mut *connection).await?;
        let value = write(&mut tx).await?;
        tx.commit().await?;
        Ok(value)
    }
    .await;
    if result.is_err() {
        connection.close_on_drop();
    }
    result
}

async fn flush(inner: &Inner) -> Result<(), PoolError> {
    let _flushing = inner.flushing.lock().await;
    // Copied, not taken: until their rows are deleted they still count out of the depth.
    let seqs: Vec<i64> = lock(&inner.acked).iter().map(|acked| acked.seq).collect();
    if seqs.is_empty() {
        return Ok(());
    }
    in_transaction(&inner.db, async |tx| {
        for seq in &seqs {
            sqlx::query("DELETE FROM pool WHERE seq = ?")
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    })
    .await?;
    // Acks are only appended, and only a flush removes them: the first ones are those deleted.
    lock(&inner.acked).drain(..seqs.len());
    Ok(())
}

async fn flush_acks_periodically(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(ACK_FLUSH_INTERVAL);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(error) = flush(&inner).await {
            tracing::warn!(error = %error, "deleting bound codes from the embedded pool failed; will retry");
        }
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (a buffer
/// or a list of numbers) is still consistent, so carry on rather than cascade the panic.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PoolReader, PoolWriter};
    use records::RequestId;

    fn records(n: usize) -> Vec<PoolRecord> {
        (0..n)
            .map(|i| PoolRecord {
                request_id: RequestId::generate(),
                issuer: "local".into(),
                content: format!("http://x/m/{i}"),
                image: None,
                created_at: chrono::Utc::now(),
            })
            .collect()
    }

    #[tokio::test]
    async fn codes_come_out_in_order_and_acked_ones_do_not_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let pool = EmbeddedPool::open(dir.path()).await.unwrap();
        let (writer, reader) = (
            PoolWriter::Embedded(pool.clone()),
            PoolReader::Embedded(pool.lane("local")),
        );
        let pushed = records(5);
        writer.push(&pushed).await.unwrap();
        assert_eq!(writer.depth("local").await.unwrap(), 5);

        for expected in &pushed[..3] {
            let delivery = reader.take(Duration::ZERO).await.unwrap().unwrap();
            assert_eq!(delivery.record.request_id, expected.request_id);
            reader.ack(&delivery);
        }
        assert_eq!(writer.depth("local").await.unwrap(), 2);
        reader.close().await.unwrap();
        drop((writer, reader));

        // Reopen: the two unacked codes are still there, the three acked ones are gone.
        let pool = EmbeddedPool::open(dir.path()).await.unwrap();
        let reader = PoolReader::Embedded(pool.lane("local"));
        let mut left = Vec::new();
        while let Some(delivery) = reader.take(Duration::ZERO).await.unwrap() {
            left.push(delivery.record.request_id);
        }
        assert_eq!(left, vec![pushed[3].request_id, pushed[4].request_id]);
    }

    #[tokio::test]
    async fn a_flush_returns_once_the_acks_another_flush_was_deleting_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let pool = EmbeddedPool::open(dir.path()).await.unwrap();
        PoolWriter::Embedded(pool.clone())
            .push(&records(600))
            .await
            .unwrap();
        let reader = PoolReader::Embedded(pool.lane("local"));
        for _ in 0..500 {
            let delivery = reader.take(Duration::ZERO).await.unwrap().unwrap();
            reader.ack(&delivery);
        }
        let rows = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM pool")
                .fetch_one(&pool.inner.db)
                .await
                .unwrap()
        };
        // The periodic flush is deleting the 500 when the shutdown's flush (`close`) runs:
        // the shutdown's must not return before those deletes are committed.
        let (periodic, (closed, left)) = tokio::join!(pool.flush_acks(), async {
            let closed = reader.close().await;
            (closed, rows().await)
        });
        periodic.unwrap();
        closed.unwrap();
        assert_eq!(left, 100);
        assert_eq!(
            PoolWriter::Embedded(pool.clone())
                .depth("local")
                .await
                .unwrap(),
            100
        );
    }

    #[tokio::test]
    async fn each_issuer_has_a_lane_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let pool = EmbeddedPool::open(dir.path()).await.unwrap();
        let writer = PoolWriter::Embedded(pool.clone());
        let mut mixed = records(3);
        mixed[1].issuer = "wx".into();
        writer.push(&mixed).await.unwrap();
        assert_eq!(writer.depth("local").await.unwrap(), 2);
        assert_eq!(writer.depth("wx").await.unwrap(), 1);

        let wx = PoolReader::Embedded(pool.lane("wx"));
        let delivery = wx.take(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(delivery.record.request_id, mixed[1].request_id);
        wx.ack(&delivery);
        assert!(
            wx.take(Duration::ZERO).await.unwrap().is_none(),
            "local codes stay out"
        );

        let status: Vec<(String, u64)> = writer
            .status()
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.issuer, p.depth))
            .collect();
        assert_eq!(status, vec![("local".into(), 2), ("wx".into(), 0)]);
    }

    #[tokio::test]
    async fn a_code_given_back_is_the_next_one_taken() {
        let dir = tempfile::tempdir().unwrap();
        let pool = EmbeddedPool::open(dir.path()).await.unwrap();
        PoolWriter::Embedded(pool.clone())
            .push(&records(2))
            .await
            .unwrap();
        let reader = PoolReader::Embedded(pool.lane("local"));
        let first = reader.take(Duration::ZERO).await.unwrap().unwrap();
        let id = first.record.request_id;
        reader.give_back(first);
        assert_eq!(
            reader
                .take(Duration::ZERO)
                .await
                .unwrap()
                .unwrap()
                .record
                .request_id,
            id
        );
    }

    #[tokio::test]
    async fn a_dry_pool_answers_none_after_the_wait_and_wakes_on_push() {
        let dir = tempfile::tempdir().unwrap();
        let pool = EmbeddedPool::open(dir.path()).await.unwrap();
        let reader = PoolReader::Embedded(pool.lane("local"));
        assert!(
            reader
                .take(Duration::from_millis(20))
                .await
                .unwrap()
                .is_none()
        );

        let waiting = tokio::spawn(async move { reader.take(Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        PoolWriter::Embedded(pool).push(&records(1)).await.unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(delivery.is_some());
    }

    #[tokio::test]
    async fn an_unreadable_row_is_skipped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let pool = EmbeddedPool::open(dir.path()).await.unwrap();
        sqlx::query("INSERT INTO pool (record) VALUES (?)")
            .bind(vec![9_u8, 9, 9])
            .execute(&pool.inner.db)
            .await
            .unwrap();
        let good = records(1);
        PoolWriter::Embedded(pool.clone())
            .push(&good)
            .await
            .unwrap();
        let reader = PoolReader::Embedded(pool.lane("local"));
        let delivery = reader.take(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(delivery.record.request_id, good[0].request_id);
    }

    #[tokio::test]
    async fn concurrent_takers_never_get_the_same_code() {
        let dir = tempfile::tempdir().unwrap();
        let pool = EmbeddedPool::open(dir.path()).await.unwrap();
        PoolWriter::Embedded(pool.clone())
            .push(&records(2000))
            .await
            .unwrap();
        let reader = PoolReader::Embedded(pool.lane("local"));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let reader = reader.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    while let Some(d) = reader.take(Duration::ZERO).await.unwrap() {
                        ids.push(d.record.request_id);
                        reader.ack(&d);
                    }
                    ids
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 2000);
        assert_eq!(distinct.len(), 2000);
    }
}
