//! Backups of the embedded store, taken while it serves, and putting one back.
//!
//! `bindings.db` holds what cannot be made again: the bindings and their versions, the
//! drawn images of remote codes, API keys, console sessions, and the tables other parts keep
//! beside them (links, their versions and audit, conversions). [`back_up`] copies it with
//! `VACUUM INTO`: SQLite writes the copy from one read transaction, so it is one consistent
//! moment of the database however many binds commit meanwhile, never a file copy of a live
//! database. Every bind acknowledged before the backup starts is in it.
//!
//! The pool (`pool.db`) is deliberately not part of a backup. A code waiting in an old copy
//! of the pool may have been handed out after that copy was taken, and bound to something
//! the restored bindings do not know: handing it out again would make one printed code show
//! another listing. So [`restore`] keeps the live pool, whose waiting codes were never handed
//! out, and where the pool is lost too, pregen fills a new one.
//!
//! A restore replaces the live database only when no qrpool process has the folder open:
//! every process holds a shared lock on `<data dir>/bindings.db.in-use` for as long as its
//! store is open ([`InUse`]), and a restore takes it exclusively for its whole run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

const DATABASE: &str = "bindings.db";
const IN_USE: &str = "bindings.db.in-use";

/// Why a backup or a restore did not happen. Nothing is left half-written in either case.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("there is no embedded store at `{0}` (no bindings.db)")]
    NoStore(PathBuf),
    #[error("`{0}` already holds a backup; choose an empty or new folder")]
    NotEmpty(PathBuf),
    #[error("`{0}` holds no backup (no bindings.db)")]
    NoBackup(PathBuf),
    #[error("the backup in `{path}` is damaged: {problem}")]
    Damaged { path: PathBuf, problem: String },
    #[error("a qrpool process has `{0}` open; stop every process on this data folder first")]
    InUse(PathBuf),
    #[error("`{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the database failed")]
    Database(#[from] sqlx::Error),
}

/// What a backup or a restore holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contents {
    pub bindings: i64,
    pub api_keys: i64,
}

/// The shared lock a process holds on its data folder while its store is open.
#[derive(Debug)]
pub struct InUse {
    _lock: File,
}

impl InUse {
    /// Waits while a restore runs on `data_dir`, then holds the folder as in use.
    pub fn hold(data_dir: &Path) -> Result<InUse, BackupError> {
        let (file, path) = in_use_file(data_dir)?;
        file.lock_shared().map_err(|source| io(&path, source))?;
        Ok(InUse { _lock: file })
    }
}

/// `<data dir>/bindings.db.in-use`, opened (created when missing) for locking.
fn in_use_file(data_dir: &Path) -> Result<(File, PathBuf), BackupError> {
    let path = data_dir.join(IN_USE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| io(&path, source))?;
    Ok((file, path))
}

/// Copies the live store of `data_dir` into the folder `into` (created when missing; it must
/// not hold a backup already), consistently, while the store is in use.
pub async fn back_up(data_dir: &Path, into: &Path) -> Result<Contents, BackupError> {
    let live = data_dir.join(DATABASE);
    if !live.is_file() {
        return Err(BackupError::NoStore(data_dir.to_owned()));
    }
    std::fs::create_dir_all(into).map_err(|source| io(into, source))?;
    let target = into.join(DATABASE);
    if target.exists() {
        return Err(BackupError::NotEmpty(into.to_owned()));
    }
    let partial = into.join("bindings.db.partial");
    remove_if_present(&partial)?;
    let copied = async {
        // Read-write: a read-only connection cannot always join a database in WAL mode.
        let db = open(&live, false).await?;
        sqlx::query("VACUUM INTO ?")
            .bind(partial.to_string_lossy().as_ref())
            .execute(&db)
            .await?;
        db.close().await;
        let contents = check(&partial).await?;
        std::fs::rename(&partial, &target).map_err(|source| io(&target, source))?;
        Ok(contents)
    }
    .await;
    if copied.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    copied
}

/// Puts the backup in `from` back as the store of `data_dir`, which no process may have open.
pub async fn restore(data_dir: &Path, from: &Path) -> Result<Contents, BackupError> {
    let backup = from.join(DATABASE);
    if !backup.is_file() {
        return Err(BackupError::NoBackup(from.to_owned()));
    }
    std::fs::create_dir_all(data_dir).map_err(|source| io(data_dir, source))?;
    let (lock, lock_path) = in_use_file(data_dir)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(BackupError::InUse(data_dir.to_owned()));
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(io(&lock_path, source)),
    }
    let contents = check(&backup).await.map_err(|error| match error {
        BackupError::Database(error) => BackupError::Damaged {
            path: from.to_owned(),
            problem: error.to_string(),
        },
        other => other,
    })?;
    // The copy goes in beside the live file first, so that the swap is a rename.
    let incoming = data_dir.join("bindings.db.restoring");
    std::fs::copy(&backup, &incoming).map_err(|source| io(&incoming, source))?;
    File::open(&incoming)
        .and_then(|file| file.sync_all())
        .map_err(|source| io(&incoming, source))?;
    // The live database's write-ahead log belongs to the file being replaced: left behind,
    // SQLite would apply it to the restored one.
    let live = data_dir.join(DATABASE);
    for stale in ["bindings.db-wal", "bindings.db-shm"] {
        remove_if_present(&data_dir.join(stale))?;
    }
    std::fs::rename(&incoming, &live).map_err(|source| io(&live, source))?;
    drop(lock);
    Ok(contents)
}

/// Checks a copy is whole and says what it holds.
async fn check(path: &Path) -> Result<Contents, BackupError> {
    let db = open(path, true).await?;
    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&db)
        .await?;
    if verdict != "ok" {
        db.close().await;
        return Err(BackupError::Damaged {
            path: path.to_owned(),
            problem: verdict,
        });
    }
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM bindings) AS bindings, \
                (SELECT COUNT(*) FROM api_keys) AS api_keys",
    )
    .fetch_one(&db)
    .await?;
    let contents = Contents {
        bindings: row.try_get("bindings")?,
        api_keys: row.try_get("api_keys")?,
    };
    db.close().await;
    Ok(contents)
}

async fn open(path: &Path, read_only: bool) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(read_only)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
}

fn remove_if_present(path: &Path) -> Result<(), BackupError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io(path, source)),
    }
}

fn io(path: &Path, source: std::io::Error) -> BackupError {
    BackupError::Io {
        path: path.to_owned(),
        source,
    }
}
