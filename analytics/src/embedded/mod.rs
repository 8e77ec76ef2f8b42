//! The embedded analytics store: Parquet files by day and tenant, in the data folder.
//!
//! ```text
//! <data_dir>/analytics/
//!   ingest.json                                  how far each daily event file was ingested
//!   scans/day=2026-12-01/tenant=acme/L0-<start>-<end>.parquet   an ingest's part
//!                                    L1-<end>.parquet           parts merged during the day
//!                                    L2-<end>.parquet           the whole partition merged
//! ```
//!
//! The layout is Hive's (`key=value` folders), so other tools read it as it is — chDB,
//! DuckDB, Spark — and a query of one tenant's month opens only that tenant's 30 folders.
//! Dropping a day (retention) or a tenant (erasure) is deleting folders.
//!
//! A file's name says which bytes of the day's event file it holds (`end` is the offset after
//! the last line in it), and that is how a crash leaves nothing counted twice: a merged file
//! is written before the files it replaces are deleted, and whoever lists a folder skips the
//! files a merge already covers ([`live_files`]): `L2-<e>` covers every file ending at or
//! before `e`, `L1-<e>` every `L0` ending at or before `e`.

pub mod answer_cache;
pub mod background;
pub mod column_cache;
pub mod compact;
pub mod engine;
pub mod ingest;
pub mod line;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;

use line::Line;

use crate::AnalyticsError;

/// A scans file's place in its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileName {
    /// 0: written by an ingest; 1: parts merged; 2: the whole partition merged.
    pub level: u8,
    /// The offset in the day's event file where the first line in it began (level 0).
    pub start: u64,
    /// The offset just past the last line in it.
    pub end: u64,
}

impl FileName {
    pub fn text(&self) -> String {
        match self.level {
            0 => format!("L0-{:016}-{:016}.parquet", self.start, self.end),
            level => format!("L{level}-{:016}.parquet", self.end),
        }
    }

    pub fn parse(name: &str) -> Option<FileName> {
        let stem = name.strip_suffix(".parquet")?;
        let (level, rest) = stem.split_once('-')?;
        let level = match level {
            "L0" => 0,
            "L1" => 1,
            "L2" => 2,
            _ => return None,
        };
        if level == 0 {
            let (start, end) = rest.split_once('-')?;
            Some(FileName {
                level,
                start: start.parse().ok()?,
                end: end.parse().ok()?,
            })
        } else {
            Some(FileName {
                level,
                start: 0,
                end: rest.parse().ok()?,
            })
        }
    }

    /// Whether `other`, a merge, already holds this file's rows.
    fn covered_by(&self, other: &FileName) -> bool {
        match other.level {
            2 => other != self && self.end <= other.end && (self.level < 2 || self.end < other.end),
            1 => self.level == 0 && self.end <= other.end,
            _ => false,
        }
    }
}

/// A partition's files: those that hold its rows (no row twice), in name order, and those a
/// merge made redundant (to delete).
pub type Listing = (Vec<(FileName, PathBuf)>, Vec<PathBuf>);

/// The files of one partition (see [`Listing`]).
pub fn live_files(dir: &Path) -> std::io::Result<Listing> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), Vec::new()));
        }
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(parsed) = name.to_str().and_then(FileName::parse) {
            found.push((parsed, entry.path()));
        }
    }
    let names: Vec<FileName> = found.iter().map(|(name, _)| *name).collect();
    let (mut live, mut redundant) = (Vec::new(), Vec::new());
    for (name, path) in found {
        if names.iter().any(|other| name.covered_by(other)) {
            redundant.push(path);
        } else {
            live.push((name, path));
        }
    }
    live.sort();
    Ok((live, redundant))
}

/// The folders and files of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    root: PathBuf,
    /// Decoded columns kept between queries (none unless [`EmbeddedStore::with_query_cache`]).
    columns: column_cache::ColumnCache,
    /// Each file's answers to the questions asked of it (none unless
    /// [`EmbeddedStore::with_query_cache`]).
    answers: answer_cache::AnswerCache,
    /// Turns to answer a query from the async API ([`crate::Store`]); as many as asked for
    /// by [`EmbeddedStore::with_concurrent_queries`], unbounded otherwise.
    turns: Arc<tokio::sync::Semaphore>,
}

impl EmbeddedStore {
    /// The store under `root` (`<data_dir>/analytics`), made when missing.
    pub fn open(root: &Path) -> Result<EmbeddedStore, AnalyticsError> {
        let scans = root.join("scans");
        std::fs::create_dir_all(&scans).map_err(|source| AnalyticsError::io(&scans, source))?;
        Ok(EmbeddedStore {
            root: root.to_owned(),
            columns: column_cache::ColumnCache::new(0),
            answers: answer_cache::AnswerCache::new(0),
            turns: Arc::new(tokio::sync::Semaphore::new(
                tokio::sync::Semaphore::MAX_PERMITS,
            )),
        })
    }

    /// Answers at most `queries` at once from the async API; the others wait their turn.
    pub fn with_concurrent_queries(mut self, queries: usize) -> Self {
        self.turns = Arc::new(tokio::sync::Semaphore::new(queries.max(1)));
        self
    }

    /// The turns queries take (see [`EmbeddedStore::with_concurrent_queries`]).
    pub fn turns(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.turns
    }

    /// Keeps up to `bytes` in memory for the queries that follow (the API's store; the
    /// ingest needs none): each file's answers to the questions asked of it, in a quarter,
    /// and decoded columns for new questions in the rest.
    pub fn with_query_cache(mut self, bytes: u64) -> Self {
        let answers = bytes / answer_cache::ANSWERS_SHARE;
        self.answers = answer_cache::AnswerCache::new(answers);
        self.columns = column_cache::ColumnCache::new(bytes - answers);
        self
    }

    /// Bytes of file answers kept now (see [`EmbeddedStore::with_query_cache`]).
    pub fn kept_answer_bytes(&self) -> u64 {
        self.answers.kept_bytes()
    }

    /// File answers computed from rows so far rather than found kept.
    pub fn file_answers_read(&self) -> u64 {
        self.answers.answers_read()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of every day.
    pub fn scans_dir(&self) -> PathBuf {
        self.root.join("scans")
    }

    pub fn day_dir(&self, day: NaiveDate) -> PathBuf {
        self.scans_dir().join(format!("day={day}"))
    }

    pub fn partition_dir(&self, day: NaiveDate, tenant: &str) -> PathBuf {
        self.day_dir(day).join(format!("tenant={tenant}"))
    }

    /// The days that have a folder, oldest first.
    pub fn days(&self) -> Result<Vec<NaiveDate>, AnalyticsError> {
        let dir = self.scans_dir();
        let mut days = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|source| AnalyticsError::io(&dir, source))? {
            let entry = entry.map_err(|source| AnalyticsError::io(&dir, source))?;
            // Anything but a folder is not a day (a stray file, say).
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            if let Some(day) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_prefix("day="))
                .and_then(|day| NaiveDate::parse_from_str(day, "%Y-%m-%d").ok())
            {
                days.push(day);
            }
        }
        days.sort();
        Ok(days)
    }

    /// The tenants with a folder on `day`.
    pub fn tenants_on(&self, day: NaiveDate) -> Result<Vec<String>, AnalyticsError> {
        let dir = self.day_dir(day);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(AnalyticsError::io(&dir, source)),
        };
        let mut tenants = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| AnalyticsError::io(&dir, source))?;
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            if let Some(tenant) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_prefix("tenant="))
            {
                tenants.push(tenant.to_owned());
            }
        }
        tenants.sort();
        Ok(tenants)
    }

    /// Writes `lines` (one tenant, one day) as the file `name` of their partition, under a
    /// temporary name; [`EmbeddedStore::publish`] makes a round's files durable and visible
    /// together.
    pub fn write_file(
        &self,
        day: NaiveDate,
        tenant: &str,
        name: FileName,
        lines: &[&Line<'_>],
    ) -> Result<Written, AnalyticsError> {
        let dir = self.partition_dir(day, tenant);
        std::fs::create_dir_all(&dir).map_err(|source| AnalyticsError::io(&dir, source))?;
        let path = dir.join(name.text());
        let temporary = dir.join(format!(".{}.tmp", name.text()));
        let mut sorted: Vec<&Line<'_>> = lines.to_vec();
        schema::sort_for_file(&mut sorted);
        let batch = schema::to_batch(&sorted)?;
        let file = std::fs::File::create(&temporary)
            .map_err(|source| AnalyticsError::io(&temporary, source))?;
        let mut writer =
            ArrowWriter::try_new(file, schema::schema(), Some(schema::writer_properties()))?;
        writer.write(&batch)?;
        let file = writer.into_inner()?;
        Ok(Written {
            file,
            temporary,
            path,
        })
    }

    /// Makes `written` durable, then visible under their names, then durable names: each
    /// file synced (the first sync commits the journal for all of them, so the rest cost
    /// little), renamed, and each folder synced. Until this returns none of them counts.
    pub fn publish(&self, written: Vec<Written>) -> Result<(), AnalyticsError> {
        for file in &written {
            file.file
                .sync_data()
                .map_err(|source| AnalyticsError::io(&file.temporary, source))?;
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for file in written {
            std::fs::rename(&file.temporary, &file.path)
                .map_err(|source| AnalyticsError::io(&file.path, source))?;
            if let Some(dir) = file.path.parent()
                && !dirs.iter().any(|known| known == dir)
            {
                dirs.push(dir.to_owned());
            }
        }
        for dir in dirs {
            sync_dir(&dir)?;
        }
        Ok(())
    }
}

/// A file written under its temporary name, not yet published.
#[derive(Debug)]
pub struct Written {
    file: std::fs::File,
    temporary: PathBuf,
    path: PathBuf,
}

/// Makes a folder's entries (a rename into it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), AnalyticsError> {
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| AnalyticsError::io(dir, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(level: u8, start: u64, end: u64) -> FileName {
        FileName { level, start, end }
    }

    #[test]
    fn names_read_back() {
        for file in [name(0, 12, 345), name(1, 0, 999), name(2, 0, 1)] {
            assert_eq!(FileName::parse(&file.text()), Some(file));
        }
        assert_eq!(FileName::parse(".L0-1-2.parquet.tmp"), None);
        assert_eq!(FileName::parse("L3-5.parquet"), None);
    }

    #[test]
    fn a_merge_covers_what_it_was_made_from_and_nothing_after() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |file: FileName| std::fs::write(dir.path().join(file.text()), b"").unwrap();
        // Parts 0-10 and 10-20 merged into L1-20 (the parts not yet deleted: a crash), a
        // later part 20-30, and an older full merge L2-5 that L1-20 does not cover.
        for file in [
            name(0, 0, 10),
            name(0, 10, 20),
            name(1, 0, 20),
            name(0, 20, 30),
            name(2, 0, 5),
        ] {
            touch(file);
        }
        let (live, redundant) = live_files(dir.path()).unwrap();
        let live: Vec<FileName> = live.into_iter().map(|(name, _)| name).collect();
        assert_eq!(live, vec![name(0, 20, 30), name(1, 0, 20), name(2, 0, 5)]);
        assert_eq!(redundant.len(), 2);
        // A full merge covers everything up to its end, other full merges included.
        touch(name(2, 0, 30));
        let (live, redundant) = live_files(dir.path()).unwrap();
        assert_eq!(
            live.into_iter().map(|(n, _)| n).collect::<Vec<_>>(),
            vec![name(2, 0, 30)]
        );
        assert_eq!(redundant.len(), 5);
    }
}
