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
//! To count a visitor once across several files, an answer keeps each visitor's cells
//! ([`Pairs`]) when its partition has other files or will have (today's); a finished day's
//! single file keeps only its counts, a few bytes per cell. Pairs name a visitor by its place
//! among the file's visitors ([`Visitors`], kept once per file beside its answers), and most
//! visitors have one cell: a phone has one country, one device. So a visitor costs an answer
//! 4 bytes where a (digest, cell) pair cost 16, and today's answers, most of what is kept
//! during a busy day, fit three times as many in the same budget.

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

/// A file's distinct visitor digests, ascending (a file's rows are in visitor order): what
/// an answer's [`Pairs`] number visitors by. A function of the file alone, so it is kept once
/// beside the file's answers, and read again from the file if it was let go.
pub type Visitors = Arc<[u64]>;

/// A visitor of the file without a row the question counts.
const NO_CELL: u32 = u32::MAX;

/// Each visitor's cells in one file's answer, a visitor named by its place in the file's
/// [`Visitors`].
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Pairs {
    /// The question did not ask for them.
    #[default]
    Unkept,
    /// Each visitor's lowest cell ([`NO_CELL`] when none), then the further cells of the
    /// visitors with more, by visitor and cell: 4 bytes a visitor, 8 a further cell.
    Dense {
        first: Vec<u32>,
        more: Vec<(u32, u32)>,
    },
    /// (visitor, cell) by visitor and cell, 8 bytes each: when few of the file's visitors
    /// have a cell (a filter left most rows out), cheaper than a number for every visitor.
    Sparse(Vec<(u32, u32)>),
}

impl Pairs {
    /// From (visitor, cell) pairs by visitor and cell, each once, of a file of `visitors`.
    pub fn from_sorted(pairs: Vec<(u32, u32)>, visitors: usize) -> Pairs {
        let with_cells = pairs.chunk_by(|a, b| a.0 == b.0).count();
        let dense = 4 * visitors + 8 * (pairs.len() - with_cells);
        if dense >= 8 * pairs.len() {
            return Pairs::Sparse(pairs);
        }
        let mut first = vec![NO_CELL; visitors];
        let mut more = Vec::with_capacity(pairs.len() - with_cells);
        for visitor in pairs.chunk_by(|a, b| a.0 == b.0) {
            let (number, lowest) = visitor[0];
            if let Some(slot) = first.get_mut(number as usize) {
                *slot = lowest;
                more.extend_from_slice(&visitor[1..]);
            }
        }
        Pairs::Dense { first, more }
    }

    /// The memory it holds, as allocated.
    fn bytes(&self) -> usize {
        match self {
            Pairs::Unkept => 0,
            Pairs::Dense { first, more } => first.capacity() * 4 + more.capacity() * 8,
            Pairs::Sparse(pairs) => pairs.capacity() * 8,
        }
    }

    fn shrink_to_fit(&mut self) {
        match self {
            Pairs::Unkept => {}
            Pairs::Dense { first, more } => {
                first.shrink_to_fit();
                more.shrink_to_fit();
            }
            Pairs::Sparse(pairs) => pairs.shrink_to_fit(),
        }
    }

    /// Reads them a visitor at a time, in visitor order.
    pub fn cursor(&self) -> PairCursor<'_> {
        PairCursor {
            pairs: self,
            next: 0,
            more: 0,
        }
    }
}

/// Where a reading of [`Pairs`] has got to.
#[derive(Debug)]
pub struct PairCursor<'a> {
    pairs: &'a Pairs,
    /// The next visitor (dense) or pair (sparse).
    next: usize,
    /// The next of the dense form's further cells.
    more: usize,
}

impl PairCursor<'_> {
    /// The next visitor with a cell (its place among the file's visitors), not yet taken.
    pub fn peek(&mut self) -> Option<u32> {
        match self.pairs {
            Pairs::Unkept => None,
            Pairs::Dense { first, .. } => {
                while first.get(self.next).is_some_and(|cell| *cell == NO_CELL) {
                    self.next += 1;
                }
                (self.next < first.len()).then(|| u32::try_from(self.next).unwrap_or(u32::MAX))
            }
            Pairs::Sparse(pairs) => pairs.get(self.next).map(|pair| pair.0),
        }
    }

    /// Takes the next visitor's cells, handing each to `cell`.
    pub fn take(&mut self, mut cell: impl FnMut(u32)) {
        let Some(visitor) = self.peek() else {
            return;
        };
        match self.pairs {
            Pairs::Unkept => {}
            Pairs::Dense { first, more } => {
                cell(first[self.next]);
                while let Some((_, further)) = more.get(self.more).filter(|m| m.0 == visitor) {
                    cell(*further);
                    self.more += 1;
                }
                self.next += 1;
            }
            Pairs::Sparse(pairs) => {
                while let Some((_, one)) = pairs.get(self.next).filter(|p| p.0 == visitor) {
                    cell(*one);
                    self.next += 1;
                }
            }
        }
    }
}

/// The groups of one answer by id, their names in one string.
///
/// A question grouped by a value nearly every scan has its own of (a link key, a code's
/// request id) has nearly a group a visitor; a `String` each cost 24 bytes and an
/// allocation of its own beside the name, and millions of small allocations kept for
/// minutes and let go in any order are what fragments a long-running heap. Here a group
/// costs its name and 4 bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Groups {
    names: String,
    /// Where each group's name ends in `names` (the unknown value's is empty).
    ends: Vec<u32>,
    /// The id of the unknown value (and of every row, ungrouped), once met.
    unknown: Option<u32>,
}

impl Groups {
    /// Adds a group not met before and gives its id.
    pub fn push(&mut self, group: Option<&str>) -> Result<u32, AnalyticsError> {
        let too_many = || AnalyticsError::Corrupt("a file's group names pass 4 GiB".into());
        let id = u32::try_from(self.ends.len()).map_err(|_| too_many())?;
        match group {
            Some(name) => self.names.push_str(name),
            None => self.unknown = Some(id),
        }
        self.ends
            .push(u32::try_from(self.names.len()).map_err(|_| too_many())?);
        Ok(id)
    }

    /// The group of `id`: `Some(None)` for the unknown value, `None` for no such group.
    pub fn get(&self, id: usize) -> Option<Option<&str>> {
        let end = *self.ends.get(id)? as usize;
        if self.unknown.is_some_and(|unknown| unknown as usize == id) {
            return Some(None);
        }
        let start = id
            .checked_sub(1)
            .map_or(0, |before| self.ends[before] as usize);
        self.names.get(start..end).map(Some)
    }

    /// The id of the unknown value, once met.
    pub fn unknown(&self) -> Option<u32> {
        self.unknown
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The memory it holds, as allocated.
    fn bytes(&self) -> usize {
        self.names.capacity() + self.ends.capacity() * 4
    }

    fn shrink_to_fit(&mut self) {
        self.names.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

/// One file's answer to one [`Question`].
#[derive(Debug, Default)]
pub struct FileAnswer {
    /// Each group met, by id.
    pub groups: Groups,
    /// Buckets per group: the question's edges plus one.
    pub buckets: usize,
    /// (scans, distinct visitors) of each cell, `group * buckets + bucket`.
    pub cells: Vec<(u64, u64)>,
    /// (scans, distinct visitors) of the whole file.
    pub total: (u64, u64),
    /// Each visitor's cells; unkept unless the question asked for them.
    pub pairs: Pairs,
}

impl FileAnswer {
    /// The memory it holds, as allocated (what the cache's budget is a budget of).
    fn bytes(&self) -> u64 {
        use std::mem::size_of;
        let cells = self.cells.capacity() * size_of::<(u64, u64)>();
        (size_of::<Self>() + self.groups.bytes() + cells + self.pairs.bytes()) as u64
    }
}

/// What is kept: answers, and the visitors their pairs are numbered by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Answer(FileId, Question),
    Visitors(FileId),
}

#[derive(Clone)]
enum Entry {
    Answer(Arc<FileAnswer>),
    Visitors(Visitors),
}

impl Entry {
    fn bytes(&self) -> u64 {
        match self {
            Entry::Answer(answer) => answer.bytes(),
            Entry::Visitors(visitors) => (visitors.len() * 8) as u64,
        }
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
    answers: Cache<Key, Entry>,
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
                    .weigher(|_: &Key, entry: &Entry| {
                        u32::try_from(entry.bytes() / 1024 + 1).unwrap_or(u32::MAX)
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
    /// enough). `compute` gives the file's visitors too when it numbered pairs by them; they
    /// are kept beside the answer and handed back with it.
    pub fn answer(
        &self,
        file: &FileId,
        question: &Question,
        compute: impl FnOnce() -> Result<(FileAnswer, Option<Visitors>), AnalyticsError>,
    ) -> Result<(Arc<FileAnswer>, Option<Visitors>), AnalyticsError> {
        let Some(kept) = &self.kept else {
            self.read.fetch_add(1, Ordering::Relaxed);
            return compute().map(|(answer, visitors)| (Arc::new(answer), visitors));
        };
        let key = Key::Answer(file.clone(), question.clone());
        if let Some(Entry::Answer(answer)) = kept.answers.get(&key) {
            metrics::counter!("analytics_file_answers_total", "from" => "cache").increment(1);
            return Ok((answer, None));
        }
        metrics::counter!("analytics_file_answers_total", "from" => "rows").increment(1);
        self.read.fetch_add(1, Ordering::Relaxed);
        let (answer, visitors) = compute()?;
        Ok((
            self.keep(file, question, answer, visitors.as_ref()),
            visitors,
        ))
    }

    /// Keeps `answer` of `file` to `question` when small enough (and the visitors its pairs
    /// number, when given), as if it had been asked: how a merge hands over the answers of
    /// the file it made before any question reaches it.
    pub fn keep(
        &self,
        file: &FileId,
        question: &Question,
        mut answer: FileAnswer,
        visitors: Option<&Visitors>,
    ) -> Arc<FileAnswer> {
        // Pairs are pushed as the rows are read, so their vectors have up to twice the room
        // they need; kept for minutes, the room is given back first.
        answer.pairs.shrink_to_fit();
        answer.groups.shrink_to_fit();
        let answer = Arc::new(answer);
        let Some(kept) = &self.kept else {
            return answer;
        };
        if answer.bytes() <= kept.largest {
            // Which questions fill the budget: bytes kept, by what the question groups by.
            metrics::counter!("analytics_query_answers_kept_bytes_total",
                "group_by" => question.group_by.map_or("none", Dimension::name))
            .increment(answer.bytes());
            kept.answers.insert(
                Key::Answer(file.clone(), question.clone()),
                Entry::Answer(Arc::clone(&answer)),
            );
            if let Some(visitors) = visitors {
                kept.keep_visitors(file, visitors);
            }
            metrics::gauge!("analytics_query_answers_bytes")
                .set((kept.answers.weighted_size() * 1024) as f64);
        }
        answer
    }

    /// Whether answers are kept at all (a store that keeps none has no use for answers
    /// computed ahead).
    pub fn keeps(&self) -> bool {
        self.kept.is_some()
    }

    /// Keeps the scan times `file` spans, known before its footer is read again (a merge
    /// read them off the file it wrote).
    pub fn keep_span(&self, file: &FileId, span: Option<(i64, i64)>) {
        if let Some(kept) = &self.kept {
            kept.spans.insert(file.clone(), span);
        }
    }

    /// Lets go of everything kept of the files `gone` names (deleted by a merge, by
    /// retention, by erasure).
    ///
    /// The cache would let them go in time, but not soon: it admits a new entry only when
    /// the entry it would evict was asked for less often, and the inputs of a merge were
    /// asked for by every question until the moment they went. Left in place, they keep out
    /// the answers of the file that replaced them, which are then read from rows at every
    /// question.
    pub fn forget(&self, gone: impl Fn(&Path) -> bool) {
        let Some(kept) = &self.kept else {
            return;
        };
        for (key, _) in kept.answers.iter() {
            let file = match &*key {
                Key::Answer(file, _) | Key::Visitors(file) => file,
            };
            if gone(&file.path) {
                kept.answers.invalidate(&*key);
            }
        }
        for (file, _) in kept.spans.iter() {
            if gone(&file.path) {
                kept.spans.invalidate(&*file);
            }
        }
    }

    /// The visitors of `file` that its answers' pairs are numbered by: kept, or from `read`.
    pub fn visitors(
        &self,
        file: &FileId,
        read: impl FnOnce() -> Result<Vec<u64>, AnalyticsError>,
    ) -> Result<Visitors, AnalyticsError> {
        let Some(kept) = &self.kept else {
            return read().map(Visitors::from);
        };
        if let Some(Entry::Visitors(visitors)) = kept.answers.get(&Key::Visitors(file.clone())) {
            return Ok(visitors);
        }
        let visitors = Visitors::from(read()?);
        kept.keep_visitors(file, &visitors);
        Ok(visitors)
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

impl Kept {
    fn keep_visitors(&self, file: &FileId, visitors: &Visitors) {
        let key = Key::Visitors(file.clone());
        if (visitors.len() * 8) as u64 <= self.largest && !self.answers.contains_key(&key) {
            self.answers
                .insert(key, Entry::Visitors(Arc::clone(visitors)));
        }
    }
}

/// The least and greatest `at` of the file, from its row groups' statistics.
pub(super) fn read_span(path: &Path) -> Result<Option<(i64, i64)>, AnalyticsError> {
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

    /// An answer as rows are read into it: its pairs' vectors have grown by doubling.
    fn answer_with_room(pairs: usize, room: usize) -> FileAnswer {
        let mut first = Vec::with_capacity(room);
        first.extend(0..pairs as u32);
        let mut groups = Groups::default();
        groups.push(None).expect("one group");
        FileAnswer {
            groups,
            buckets: 1,
            cells: vec![(pairs as u64, pairs as u64)],
            total: (pairs as u64, pairs as u64),
            pairs: Pairs::Dense {
                first,
                more: Vec::new(),
            },
        }
    }

    fn file(name: &str) -> FileId {
        FileId {
            path: PathBuf::from(name),
            len: 100,
            modified: None,
        }
    }

    /// Every (visitor, cell) a cursor hands out, in order.
    fn read_back(pairs: &Pairs) -> Vec<(u32, u32)> {
        let mut cursor = pairs.cursor();
        let mut read = Vec::new();
        while let Some(visitor) = cursor.peek() {
            cursor.take(|cell| read.push((visitor, cell)));
        }
        read
    }

    #[test]
    fn pairs_are_a_number_a_visitor_unless_few_visitors_have_a_cell() {
        // Ten visitors; 0, 3 and 7 in one cell each, 3 in two more.
        let few = vec![(0, 1), (3, 0), (3, 2), (3, 5), (7, 4)];
        let sparse = Pairs::from_sorted(few.clone(), 10);
        assert!(matches!(sparse, Pairs::Sparse(_)), "{sparse:?}");
        assert_eq!(read_back(&sparse), few);
        // All ten in a cell, one in two: a number each, and one pair.
        let most: Vec<(u32, u32)> = (0..10)
            .map(|visitor| (visitor, visitor % 3))
            .chain([(4, 7)])
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let dense = Pairs::from_sorted(most.clone(), 10);
        assert!(
            matches!(&dense, Pairs::Dense { first, more } if first.len() == 10 && more.len() == 1),
            "{dense:?}"
        );
        assert_eq!(read_back(&dense), most);
        assert!(dense.bytes() < most.len() * 16);
        // Visitors without a cell in the dense form are passed over.
        let gaps = vec![(1, 0), (2, 0), (4, 1), (4, 3), (5, 0), (6, 2)];
        let dense = Pairs::from_sorted(gaps.clone(), 8);
        assert!(matches!(dense, Pairs::Dense { .. }), "{dense:?}");
        assert_eq!(read_back(&dense), gaps);
        assert_eq!(read_back(&Pairs::Unkept), []);
    }

    #[test]
    fn groups_give_back_each_name_and_the_unknown_value_by_id() {
        let mut groups = Groups::default();
        let ids: Vec<u32> = [Some("ab"), None, Some(""), Some("é"), Some("xyz")]
            .into_iter()
            .map(|group| groups.push(group).expect("an id"))
            .collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        assert_eq!(groups.len(), 5);
        assert_eq!(groups.get(0), Some(Some("ab")));
        assert_eq!(groups.get(1), Some(None), "the unknown value");
        assert_eq!(
            groups.get(2),
            Some(Some("")),
            "an empty name is not the unknown value"
        );
        assert_eq!(groups.get(3), Some(Some("é")));
        assert_eq!(groups.get(4), Some(Some("xyz")));
        assert_eq!(groups.get(5), None);
        // A name and four bytes a group, in two allocations.
        groups.shrink_to_fit();
        assert_eq!(groups.bytes(), "ab".len() + "é".len() + "xyz".len() + 5 * 4);
    }

    #[test]
    fn an_answer_weighs_the_room_it_holds_not_only_its_pairs() {
        let answer = answer_with_room(1_000, 100_000);
        assert!(answer.bytes() >= 100_000 * 4, "{}", answer.bytes());
    }

    #[test]
    fn an_answer_is_kept_without_the_room_it_grew() {
        let cache = AnswerCache::new(64 << 20);
        let file = file("L0-0000000000000000-0000000000000100.parquet");
        let (kept, _) = cache
            .answer(&file, &today_question(), || {
                Ok((answer_with_room(1_000, 100_000), None))
            })
            .expect("an answer");
        assert!(kept.pairs.bytes() < 2_000 * 4, "{}", kept.pairs.bytes());
        // Asked again, it is the one kept, and the budget counts what it holds.
        let (again, _) = cache
            .answer(&file, &today_question(), || {
                Err(AnalyticsError::Corrupt("read again".into()))
            })
            .expect("the kept answer");
        assert!(Arc::ptr_eq(&kept, &again));
        assert!(cache.kept_bytes() < 64 << 10, "{}", cache.kept_bytes());
    }

    #[test]
    fn forgetting_files_lets_go_of_their_answers_visitors_and_spans_only() {
        let cache = AnswerCache::new(64 << 20);
        let gone = file("day=2026-12-07/t/L0-0000000000000000-0000000000000100.parquet");
        let stays = file("day=2026-12-07/t/L1-0000000000000000-0000000000000050.parquet");
        for file in [&gone, &stays] {
            cache.keep(
                file,
                &today_question(),
                answer_with_room(10_000, 10_000),
                Some(&Visitors::from(vec![1, 2, 3])),
            );
            cache.keep_span(file, Some((1, 2)));
        }
        let both = cache.kept_bytes();
        cache.forget(|path| path == gone.path);
        let one = cache.kept_bytes();
        assert!(one * 2 <= both + 2048 && one > 0, "{one} of {both}");
        let asked_again = |file: &FileId| {
            cache
                .answer(file, &today_question(), || {
                    Err(AnalyticsError::Corrupt("read again".into()))
                })
                .is_ok()
        };
        assert!(asked_again(&stays), "kept");
        assert!(!asked_again(&gone), "let go: read from rows");
        assert_eq!(cache.span(&stays).expect("kept"), Some((1, 2)));
        // Its span is read from the file again (which is not there).
        assert!(cache.span(&gone).is_err());
    }

    #[test]
    fn a_files_visitors_are_kept_with_its_answer_and_read_again_once_let_go() {
        let cache = AnswerCache::new(64 << 20);
        let file = file("L0-0000000000000000-0000000000000200.parquet");
        let visitors: Visitors = Visitors::from(vec![3, 5, 8]);
        let (_, handed) = cache
            .answer(&file, &today_question(), || {
                Ok((answer_with_room(3, 3), Some(Arc::clone(&visitors))))
            })
            .expect("an answer");
        assert_eq!(handed.as_deref(), Some(&[3, 5, 8][..]));
        let kept = cache
            .visitors(&file, || Err(AnalyticsError::Corrupt("read again".into())))
            .expect("kept beside the answer");
        assert!(Arc::ptr_eq(&kept, &visitors));
        // Nothing kept: read from the file each time.
        let none = AnswerCache::new(0);
        let read = none.visitors(&file, || Ok(vec![3, 5, 8])).expect("read");
        assert_eq!(&read[..], &[3, 5, 8]);
    }
}
