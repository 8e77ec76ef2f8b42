//! Each file's answer to each question, kept between queries.
//!
//! A dashboard asks the same dozen questions again and again, and a file never changes once
//! written; so what one file answers to one question (scans and distinct visitors per
//! bucket and group) is kept, and a question asked again reads no row of the files it has
//! seen. This is what keeps the cost of a question over today flat through a busy day: today
//! is a few merged files, the larger the older and the less often replaced (the size tiers
//! of [`super::compact`]), and a few small new ones, and only the new ones are read.
//!
//! A question is put to each file in the file's own terms ([`Question`]): a range that holds
//! all of a file's rows is no cut at all, and only the bucket edges among its rows count. The
//! API's default range ends at the moment it is asked, so without this no answer of today's
//! files would ever be asked for twice. A file's first and last scan times come from its
//! Parquet statistics, read once per file.
//!
//! To count a visitor once across several files, an answer keeps its (visitor, cell) pairs
//! when its partition has other files or will have (today's); a finished day's single file
//! keeps only its counts, a few bytes per cell.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use moka::sync::Cache;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::statistics::Statistics;

use super::column_cache::FileId;
use crate::AnalyticsError;
use crate::query::{Dimension, Filter};

/// The share of the query cache answers may take (the rest keeps decoded columns).
pub const ANSWERS_SHARE: u64 = 4;
/// The share of the answers' budget one answer may take to be kept: a question that groups
/// by a value nearly every scan has its own of (a link key, over a day of many links) has
/// nearly as many pairs as rows, and is recomputed rather than crowd out the rest.
const LARGEST_SHARE: u64 = 8;

/// A query as one file sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Question {
    pub group_by: Option<Dimension>,
    pub filters: Vec<Filter>,
    pub bots: bool,
    /// The instants asked about, `[from, to)` in microseconds, when they leave some of the
    /// file's rows out; `None` when they hold them all.
    pub range: Option<(i64, i64)>,
    /// Bucket edges among the file's rows: a row at or after an edge is in the next bucket.
    pub edges: Vec<i64>,
    /// Whether the answer keeps its (visitor, cell) pairs.
    pub pairs: bool,
}

impl Question {
    /// Whether the scan times must be read to answer it.
    pub fn needs_times(&self) -> bool {
        self.range.is_some() || !self.edges.is_empty()
    }
}

/// One file's answer to one [`Question`].
#[derive(Debug, Default)]
pub struct FileAnswer {
    /// Each group met, by id; `None` is the unknown value (and every row, ungrouped).
    pub groups: Vec<Option<String>>,
    /// Buckets per group: the question's edges plus one.
    pub buckets: usize,
    /// (scans, distinct visitors) of each cell, `group * buckets + bucket`.
    pub cells: Vec<(u64, u64)>,
    /// (scans, distinct visitors) of the whole file.
    pub total: (u64, u64),
    /// Each visitor's cells, once per (visitor, cell), in that order; empty unless the
    /// question asked for them.
    pub pairs: Vec<(u64, u32)>,
}

impl FileAnswer {
    /// The memory it holds, as allocated (what the cache's budget is a budget of).
    fn bytes(&self) -> u64 {
        use std::mem::size_of;
        let groups: usize = self
            .groups
            .iter()
            .map(|group| group.as_ref().map_or(0, String::capacity))
            .sum::<usize>()
            + self.groups.capacity() * size_of::<Option<String>>();
        let cells = self.cells.capacity() * size_of::<(u64, u64)>();
        let pairs = self.pairs.capacity() * size_of::<(u64, u32)>();
        (size_of::<Self>() + groups + cells + pairs) as u64
    }
}

/// The kept answers and file time spans; cheap to clone (one cache behind it).
#[derive(Clone)]
pub struct AnswerCache {
    kept: Option<Kept>,
    /// Answers computed from rows rather than found kept.
    read: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Kept {
    answers: Cache<(FileId, Question), Arc<FileAnswer>>,
    spans: Cache<FileId, Option<(i64, i64)>>,
    largest: u64,
}

impl std::fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCache")
            .field(
                "kib",
                &self.kept.as_ref().map(|kept| kept.answers.weighted_size()),
            )
            .finish()
    }
}

impl AnswerCache {
    /// Keeps up to `bytes` of answers; 0 keeps none (every question reads the files).
    pub fn new(bytes: u64) -> Self {
        let kib = bytes / 1024;
        AnswerCache {
            kept: (kib > 0).then(|| Kept {
                answers: Cache::builder()
                    .max_capacity(kib)
                    .weigher(|_: &(FileId, Question), answer: &Arc<FileAnswer>| {
                        u32::try_from(answer.bytes() / 1024 + 1).unwrap_or(u32::MAX)
                    })
                    .build(),
                // A file's span is two numbers; a day of a busy tenant has a few dozen files.
                spans: Cache::new(100_000),
                largest: bytes / LARGEST_SHARE,
            }),
            read: Arc::default(),
        }
    }

    /// The first and last scan time of `file` (microseconds), when known: `None` when
    /// nothing is kept (reading a file's footer to put a question in its terms only pays
    /// when the answer is kept) or the file has no statistics.
    pub fn span(&self, file: &FileId) -> Result<Option<(i64, i64)>, AnalyticsError> {
        let Some(kept) = &self.kept else {
            return Ok(None);
        };
        if let Some(span) = kept.spans.get(file) {
            return Ok(span);
        }
        let span = read_span(&file.path)?;
        kept.spans.insert(file.clone(), span);
        Ok(span)
    }

    /// The answer of `file` to `question`: kept, or from `compute` (and kept when small
    /// enough).
    pub fn answer(
        &self,
        file: &FileId,
        question: &Question,
        compute: impl FnOnce() -> Result<FileAnswer, AnalyticsError>,
    ) -> Result<Arc<FileAnswer>, AnalyticsError> {
        let Some(kept) = &self.kept else {
            self.read.fetch_add(1, Ordering::Relaxed);
            return compute().map(Arc::new);
        };
        let key = (file.clone(), question.clone());
        if let Some(answer) = kept.answers.get(&key) {
            metrics::counter!("analytics_file_answers_total", "from" => "cache").increment(1);
            return Ok(answer);
        }
        metrics::counter!("analytics_file_answers_total", "from" => "rows").increment(1);
        self.read.fetch_add(1, Ordering::Relaxed);
        let mut answer = compute()?;
        // Pairs are pushed as the rows are read, so their vector has up to twice the room it
        // needs; kept for minutes, the room is given back first.
        answer.pairs.shrink_to_fit();
        answer.groups.shrink_to_fit();
        let answer = Arc::new(answer);
        if answer.bytes() <= kept.largest {
            kept.answers.insert(key, Arc::clone(&answer));
            metrics::gauge!("analytics_query_answers_bytes")
                .set((kept.answers.weighted_size() * 1024) as f64);
        }
        Ok(answer)
    }

    /// File answers computed from rows so far (not found kept).
    pub fn answers_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Bytes of answers kept now, once the cache has settled what it has pending.
    pub fn kept_bytes(&self) -> u64 {
        self.kept.as_ref().map_or(0, |kept| {
            kept.answers.run_pending_tasks();
            kept.answers.weighted_size() * 1024
        })
    }
}

/// The least and greatest `at` of the file, from its row groups' statistics.
fn read_span(path: &Path) -> Result<Option<(i64, i64)>, AnalyticsError> {
    let file = std::fs::File::open(path).map_err(|source| AnalyticsError::io(path, source))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let mut span: Option<(i64, i64)> = None;
    for group in builder.metadata().row_groups() {
        let Some(at) = group
            .columns()
            .iter()
            .find(|column| column.column_path().string() == "at")
        else {
            return Ok(None);
        };
        let Some(Statistics::Int64(statistics)) = at.statistics() else {
            return Ok(None);
        };
        let (Some(min), Some(max)) = (statistics.min_opt(), statistics.max_opt()) else {
            return Ok(None);
        };
        span = Some(span.map_or((*min, *max), |(low, high)| (low.min(*min), high.max(*max))));
    }
    Ok(span)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn today_question() -> Question {
        Question {
            group_by: None,
            filters: Vec::new(),
            bots: false,
            range: None,
            edges: Vec::new(),
            pairs: true,
        }
    }

    /// An answer as rows are read into it: its pairs' vector has grown by doubling.
    fn answer_with_room(pairs: usize, room: usize) -> FileAnswer {
        let mut answer = FileAnswer {
            groups: vec![None],
            buckets: 1,
            cells: vec![(pairs as u64, pairs as u64)],
            total: (pairs as u64, pairs as u64),
            pairs: Vec::with_capacity(room),
        };
        answer
            .pairs
            .extend((0..pairs as u64).map(|visitor| (visitor, 0)));
        answer
    }

    #[test]
    fn an_answer_weighs_the_room_it_holds_not_only_its_pairs() {
        let answer = answer_with_room(1_000, 100_000);
        assert!(answer.bytes() >= 100_000 * 16, "{}", answer.bytes());
    }

    #[test]
    fn an_answer_is_kept_without_the_room_it_grew() {
        let cache = AnswerCache::new(64 << 20);
        let file = FileId {
            path: PathBuf::from("L0-0000000000000000-0000000000000100.parquet"),
            len: 100,
            modified: None,
        };
        let kept = cache
            .answer(&file, &today_question(), || {
                Ok(answer_with_room(1_000, 100_000))
            })
            .expect("an answer");
        assert!(kept.pairs.capacity() < 2_000, "{}", kept.pairs.capacity());
        // Asked again, it is the one kept, and the budget counts what it holds.
        let again = cache
            .answer(&file, &today_question(), || {
                Err(AnalyticsError::Corrupt("read again".into()))
            })
            .expect("the kept answer");
        assert!(Arc::ptr_eq(&kept, &again));
        assert!(cache.kept_bytes() < 64 << 10, "{}", cache.kept_bytes());
    }
}
