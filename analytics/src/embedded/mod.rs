//! The embedded analytics store: Parquet files by day and tenant, in the data folder.
//!
//! ```text
//! <data_dir>/analytics/
//!   ingest.json                                  how far each daily event file was ingested
//!   scans/day=2026-12-01/tenant=acme/L0-<start>-<end>.parquet   an ingest's part
//!                                    L1-<start>-<end>.parquet   16 parts merged
//!                                    L2-<start>-<end>.parquet   8 L1 merged, and so on up
//!                                    L<n>-<start>-<end>.parquet a day that is over, merged whole
//! ```
//!
//! The layout is Hive's (`key=value` folders), so other tools read it as it is — chDB,
//! DuckDB, Spark — and a query of one tenant's month opens only that tenant's 30 folders.
//! Dropping a day (retention) or a tenant (erasure) is deleting folders.
//!
//! A file's name says which bytes of the day's event file it holds (`start` is the offset
//! where its first line began, `end` the offset after its last), and that is how a crash
//! leaves nothing counted twice: a merge takes files whose ranges follow one another, its file
//! holds the range they span, it is written before the files it replaces are deleted, and
//! whoever lists a folder skips a file whose range lies within a larger one's, or within the
//! same range at a higher level ([`live_files`]).

pub mod answer_cache;
pub mod asked;
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
    /// 0: written by an ingest; n: made by merging files of level n - 1 (the size classes of
    /// [`compact`]), or, on a day that is over, the whole partition merged.
    pub level: u8,
    /// The offset in the day's event file where its first line began.
    pub start: u64,
    /// The offset just past its last line.
    pub end: u64,
}

impl FileName {
    pub fn text(&self) -> String {
        format!(
            "L{}-{:016}-{:016}.parquet",
            self.level, self.start, self.end
        )
    }

    pub fn parse(name: &str) -> Option<FileName> {
        let (level, rest) = level_and_rest(name)?;
        let (start, end) = rest.split_once('-')?;
        let (start, end) = (start.parse().ok()?, end.parse().ok()?);
        (start <= end).then_some(FileName { level, start, end })
    }

    /// Whether `other`, a merge, already holds this file's rows.
    fn covered_by(&self, other: &FileName) -> bool {
        let within = other.start <= self.start && self.end <= other.end;
        let larger = other.start < self.start || self.end < other.end;
        within && (larger || other.level > self.level)
    }
}

/// `L<level>` and what follows its `-` in a file name, without `.parquet`.
fn level_and_rest(name: &str) -> Option<(u8, &str)> {
    let stem = name.strip_suffix(".parquet")?;
    let (level, rest) = stem.strip_prefix('L')?.split_once('-')?;
    if level.is_empty() || !level.bytes().all(|digit| digit.is_ascii_digit()) {
        return None;
    }
    Some((level.parse().ok()?, rest))
}

/// A merged file named as before size tiers (2026-12): `L1-<end>` (parts merged during the
/// day, starting where the merged file before it ended) or `L2-<end>` (everything up to
/// `end`). Read as they were meant, so that a store written by an earlier version counts
/// each scan once.
fn legacy_merge(name: &str) -> Option<(u8, u64)> {
    let (level, end) = level_and_rest(name)?;
    if !matches!(level, 1 | 2) || end.contains('-') {
        return None;
    }
    Some((level, end.parse().ok()?))
}

/// A partition's files: those that hold its rows (no row twice), in name order, and those a
/// merge made redundant (to delete).
pub type Listing = (Vec<(FileName, PathBuf)>, Vec<PathBuf>);

/// The files of one partition (see [`Listing`]).
pub fn live_files(dir: &Path) -> std::io::Result<Listing> {
    let mut found = Vec::new();
    let mut legacy = Vec::new();
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
        let Some(name) = name.to_str() else { continue };
        if let Some(parsed) = FileName::parse(name) {
            found.push((parsed, entry.path()));
        } else if let Some((level, end)) = legacy_merge(name) {
            legacy.push((level, end, entry.path()));
        }
    }
    // An `L1-<end>` merged the parts after the merged file before it: its range starts where
    // the last merged file ending before it ends.
    let merged_ends: Vec<u64> = found
        .iter()
        .filter(|(name, _)| name.level > 0)
        .map(|(name, _)| name.end)
        .chain(legacy.iter().map(|(_, end, _)| *end))
        .collect();
    for (level, end, path) in legacy {
        let start = match level {
            2 => 0,
            _ => merged_ends
                .iter()
                .copied()
                .filter(|other| *other < end)
                .max()
                .unwrap_or(0),
        };
        found.push((FileName { level, start, end }, path));
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
    /// The questions asked lately, put by a merge to the file it makes (while answers are
    /// kept).
    asked: asked::Asked,
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
            asked: asked::Asked::default(),
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

    /// Lets go of what is kept of the files `gone` names, deleted or about to be.
    fn forget(&self, gone: impl Fn(&Path) -> bool) {
        self.answers.forget(&gone);
        self.columns.forget(&gone);
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
        for file in [
            name(0, 12, 345),
            name(1, 0, 999),
            name(2, 7, 8),
            name(12, 0, 1),
        ] {
            assert_eq!(FileName::parse(&file.text()), Some(file));
        }
        assert_eq!(FileName::parse(".L0-1-2.parquet.tmp"), None);
        assert_eq!(FileName::parse("L0-2-1.parquet"), None, "a range backwards");
        assert_eq!(FileName::parse("L-1-2.parquet"), None);
        assert_eq!(FileName::parse("L+1-1-2.parquet"), None);
        assert_eq!(legacy_merge("L2-0000000000000005.parquet"), Some((2, 5)));
        assert_eq!(legacy_merge("L3-5.parquet"), None);
        assert_eq!(legacy_merge("L1-1-5.parquet"), None);
    }

    #[test]
    fn a_merge_covers_what_it_was_made_from_and_nothing_after() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |file: FileName| std::fs::write(dir.path().join(file.text()), b"").unwrap();
        let listed = || {
            let (live, redundant) = live_files(dir.path()).unwrap();
            let live: Vec<FileName> = live.into_iter().map(|(name, _)| name).collect();
            (live, redundant.len())
        };
        // Parts 10-20 and 20-30 merged into L1 10-30 (the parts not yet deleted: a crash), a
        // later part 30-40, and an earlier merge L2 0-10 that L1 10-30 does not cover.
        for file in [
            name(0, 10, 20),
            name(0, 20, 30),
            name(1, 10, 30),
            name(0, 30, 40),
            name(2, 0, 10),
        ] {
            touch(file);
        }
        assert_eq!(
            listed(),
            (vec![name(0, 30, 40), name(1, 10, 30), name(2, 0, 10)], 2)
        );
        // A merge of the day that is over covers everything in its range, merges of a level
        // above its inputs included.
        touch(name(2, 0, 40));
        assert_eq!(listed(), (vec![name(2, 0, 40)], 5));
        // The same range at a higher level covers the lower one.
        touch(name(3, 0, 40));
        assert_eq!(listed(), (vec![name(3, 0, 40)], 6));
    }
}
