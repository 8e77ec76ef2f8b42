//! Answering a [`ScansQuery`] from the Parquet files, in process.
//!
//! A query of one tenant's month reads that tenant's partition of each day (and nothing
//! else: the folders are the index), only the columns it needs, in parallel (rayon, one
//! partition per task, on threads of lower priority than the API's: [`background`]), and adds
//! the partitions' answers up. Within a partition:
//!
//! - text columns arrive as dictionaries, so a group or a filter is decided once per
//!   dictionary value and each row costs an array lookup;
//! - rows are stored by visitor digest, so distinct visitors are counted by noticing where
//!   the digest changes within each (bucket, group) — no hash set, no sort. A partition not
//!   yet merged into one file (today's, usually) keeps each file's visitors' cells, in
//!   visitor order, and merges the files' runs ([`add_up`]);
//! - the time column is read only when the range or a bucket edge cuts through the file's
//!   scans;
//! - a file's answer is kept ([`answer_cache`](super::answer_cache)) and asked of it again
//!   rather than its rows.
//!
//! We wrote this rather than take DataFusion: the query shapes are few and fixed, the build
//! of DataFusion alone outweighs all of qrpool's, and knowing the storage order (visitor
//! digests sorted within a file) makes distinct counts cheap. See `docs/performance.md` for
//! the measurements that decided it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, TimestampMicrosecondType, UInt64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, DictionaryArray, ListArray, RecordBatch};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use rayon::prelude::*;

use super::answer_cache::{self, FileAnswer, Groups, PairCursor, Pairs, Question, Visitors};
use super::background;
use super::column_cache::{self, ColumnCache, FileId};
use super::{EmbeddedStore, live_files};
use crate::AnalyticsError;
use crate::query::{Answer, FilterOn, Granularity, Row, ScansQuery, Totals};

/// Rows decoded at a time.
const BATCH_ROWS: usize = 1 << 18;

/// One partition's answer: cells by (bucket, group).
#[derive(Debug, Default)]
struct Partial {
    cells: HashMap<(usize, Option<String>), (u64, u64)>,
    totals: Totals,
}

impl EmbeddedStore {
    /// Answers `query` from the files (blocking: call it off the async runtime).
    pub fn query(&self, query: &ScansQuery) -> Result<Answer, AnalyticsError> {
        self.query_unless(query, &AtomicBool::new(false))
    }

    /// As [`EmbeddedStore::query`], but stops at the next day it would read once
    /// `abandoned` is set: whoever asked has gone (a request past its time limit), and a
    /// month's scan should not go on taking the cores from the queries still wanted.
    pub fn query_unless(
        &self,
        query: &ScansQuery,
        abandoned: &AtomicBool,
    ) -> Result<Answer, AnalyticsError> {
        if self.answers.keeps() {
            self.asked.record(query, Utc::now());
        }
        let buckets = query.bucket_starts();
        let first = query.from.date_naive();
        let last = (query.to - Duration::microseconds(1)).date_naive();
        let days: Vec<NaiveDate> = first.iter_days().take_while(|day| *day <= last).collect();
        let partials = background::query(|| {
            days.par_iter()
                .map(|day| {
                    if abandoned.load(Ordering::Relaxed) {
                        return Err(AnalyticsError::Abandoned);
                    }
                    self.query_partition(query, &buckets, *day)
                })
                .collect::<Result<Vec<Partial>, AnalyticsError>>()
        })?;
        let mut cells: HashMap<(usize, Option<String>), (u64, u64)> = HashMap::new();
        let mut totals = Totals::default();
        for partial in partials {
            totals.scans += partial.totals.scans;
            totals.visitors += partial.totals.visitors;
            for (cell, (scans, visitors)) in partial.cells {
                let sum = cells.entry(cell).or_default();
                sum.0 += scans;
                sum.1 += visitors;
            }
        }
        let mut rows: Vec<Row> = cells
            .into_iter()
            .map(|((bucket, group), (scans, visitors))| Row {
                bucket: buckets.get(bucket).copied(),
                group,
                scans,
                visitors,
            })
            .collect();
        query.sort(&mut rows);
        Ok(Answer { rows, totals })
    }

    fn query_partition(
        &self,
        query: &ScansQuery,
        buckets: &[DateTime<Utc>],
        day: NaiveDate,
    ) -> Result<Partial, AnalyticsError> {
        let dir = self.partition_dir(day, query.tenant.as_str());
        // A merge may replace the files between listing and opening them: list again.
        let mut attempts = 0;
        loop {
            let (live, _) = live_files(&dir).map_err(|source| AnalyticsError::io(&dir, source))?;
            let paths: Vec<PathBuf> = live.into_iter().map(|(_, path)| path).collect();
            match self.scan_partition(query, buckets, day, &paths) {
                Err(AnalyticsError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempts < 3 =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    /// Each file's answer (kept or read), added up.
    fn scan_partition(
        &self,
        query: &ScansQuery,
        buckets: &[DateTime<Utc>],
        day: NaiveDate,
        paths: &[PathBuf],
    ) -> Result<Partial, AnalyticsError> {
        let plan = plan(query, buckets, day);
        // Today's partition will have more files, whose visitors must be told from these.
        let pairs = paths.len() > 1 || day >= Utc::now().date_naive();
        let mut counted = Vec::with_capacity(paths.len());
        for path in paths {
            let file = FileId::of(path)?;
            let span = self.answers.span(&file)?;
            let Some((question, offset)) = file_question(query, &plan, span, pairs) else {
                continue;
            };
            let (answer, visitors) = self.answers.answer(&file, &question, || {
                answer_file(&self.columns, &question, &file)
            })?;
            counted.push((
                file,
                Counted {
                    answer,
                    offset,
                    visitors,
                },
            ));
        }
        // Files' pairs are told apart by their visitors, needed only when there are several.
        if counted.len() > 1 {
            for (file, counted) in &mut counted {
                if counted.visitors.is_none() && !matches!(counted.answer.pairs, Pairs::Unkept) {
                    counted.visitors = Some(
                        self.answers
                            .visitors(file, || read_visitors(&self.columns, file))?,
                    );
                }
            }
        }
        let counted: Vec<Counted> = counted.into_iter().map(|(_, counted)| counted).collect();
        Ok(add_up(&plan, &counted))
    }

    /// Puts the questions asked lately about `tenant`'s `day` to a merged file written at
    /// `written`, not yet in its place `target`, and keeps the answers as those of the file
    /// at `target`: the first question after the merge finds them kept instead of reading
    /// the whole new file (see [`super::asked`]). Runs on the merge's thread; the file's
    /// columns are streamed, not kept (they would crowd the queries' out, and a merged file
    /// of today is most often larger than a file's share of the budget).
    ///
    /// An answer is only ever kept ahead, so a failure here costs time, not a right answer:
    /// it is logged and the merge goes on.
    pub(super) fn hand_over_answers(
        &self,
        tenant: &str,
        day: NaiveDate,
        written: &Path,
        target: &Path,
        pairs: bool,
    ) {
        if !self.answers.keeps() {
            return;
        }
        let queries = self.asked.about(tenant, day, Utc::now());
        if queries.is_empty() {
            return;
        }
        let answered = (|| -> Result<usize, AnalyticsError> {
            let reading = FileId::of(written)?;
            // A rename keeps a file's length and modification time: the key it will have.
            let file = FileId {
                path: target.to_owned(),
                ..reading.clone()
            };
            let span = answer_cache::read_span(written)?;
            self.answers.keep_span(&file, span);
            let mut questions: Vec<Question> = Vec::new();
            for query in &queries {
                let buckets = query.bucket_starts();
                let plan = plan(query, &buckets, day);
                if let Some((question, _)) = file_question(query, &plan, span, pairs)
                    && !questions.contains(&question)
                {
                    questions.push(question);
                }
            }
            let streamed = ColumnCache::new(0);
            for question in &questions {
                let (answer, visitors) = answer_file(&streamed, question, &reading)?;
                self.answers
                    .keep(&file, question, answer, visitors.as_ref());
            }
            Ok(questions.len())
        })();
        match answered {
            Ok(answered) => {
                metrics::counter!("analytics_file_answers_total", "from" => "merge")
                    .increment(answered as u64);
                tracing::debug!(tenant, %day, answered, "answers of a merged file kept ahead");
            }
            Err(error) => {
                tracing::warn!(tenant, %day, %error, "answering a merged file ahead failed; its first questions read its rows");
            }
        }
    }
}

/// A file's answer, as the partition counts it.
struct Counted {
    answer: Arc<FileAnswer>,
    /// The number of the day's bucket edges before the file's first scan.
    offset: usize,
    /// What its pairs number visitors by; needed when the partition has other files.
    visitors: Option<Visitors>,
}

/// What a partition's question asks of its day.
struct Plan {
    /// Bucket edges inside the day: (instant, index of the bucket starting there).
    edges: Vec<(i64, usize)>,
    /// The bucket at the day's first instant in range.
    first_bucket: usize,
    /// The instants of the day asked about, `[from, to)`.
    from: i64,
    to: i64,
    /// Whether `[from, to)` is less than the whole day.
    cut: bool,
}

fn plan(query: &ScansQuery, buckets: &[DateTime<Utc>], day: NaiveDate) -> Plan {
    let day_start = day
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_micros());
    let day_end = day_start + 86_400_000_000;
    let from = query.from.timestamp_micros();
    let to = query.to.timestamp_micros();
    let starts: Vec<i64> = buckets.iter().map(DateTime::timestamp_micros).collect();
    let first_instant = from.max(day_start);
    let first_bucket = if query.granularity == Granularity::None {
        0
    } else {
        starts
            .partition_point(|start| *start <= first_instant)
            .saturating_sub(1)
    };
    let edges: Vec<(i64, usize)> = starts
        .iter()
        .enumerate()
        .filter(|(_, start)| **start > first_instant && **start < day_end.min(to))
        .map(|(index, start)| (*start, index))
        .collect();
    Plan {
        edges,
        first_bucket,
        from: first_instant,
        to: to.min(day_end),
        cut: from > day_start || to < day_end,
    }
}

impl Plan {
    /// The bucket of the day's `local`th (0 before the first edge).
    fn bucket(&self, local: usize) -> usize {
        match local.checked_sub(1) {
            None => self.first_bucket,
            Some(edge) => self
                .edges
                .get(edge)
                .map_or(self.first_bucket, |edge| edge.1),
        }
    }
}

/// The question in the terms of a file whose scans span `span`, and the number of the day's
/// edges before its first scan (its buckets' offset among the day's); `None` when no scan of
/// the file is asked about.
fn file_question(
    query: &ScansQuery,
    plan: &Plan,
    span: Option<(i64, i64)>,
    pairs: bool,
) -> Option<(Question, usize)> {
    let (low, high) = span.unwrap_or((i64::MIN, i64::MAX));
    if high < plan.from || low >= plan.to {
        return None;
    }
    let holds_all = span.is_some() && plan.from <= low && high < plan.to;
    let range = (plan.cut && !holds_all).then_some((plan.from, plan.to));
    let offset = plan.edges.partition_point(|(edge, _)| *edge <= low);
    let edges = plan.edges[offset..]
        .iter()
        .map(|(edge, _)| *edge)
        .take_while(|edge| *edge <= high)
        .collect();
    let question = Question {
        group_by: query.group_by,
        filters: query.filters.clone(),
        bots: query.bots,
        range,
        edges,
        pairs,
    };
    Some((question, offset))
}

/// Adds the files' answers up into the partition's; a visitor of several files counts once.
fn add_up(plan: &Plan, files: &[Counted]) -> Partial {
    let cell_of = |answer: &FileAnswer, offset: usize, cell: usize| {
        let group = answer
            .groups
            .get(cell / answer.buckets)
            .flatten()
            .map(str::to_owned);
        (plan.bucket(offset + cell % answer.buckets), group)
    };
    let mut partial = Partial::default();
    if let [Counted { answer, offset, .. }] = files {
        partial.totals = Totals {
            scans: answer.total.0,
            visitors: answer.total.1,
        };
        for (cell, counts) in answer.cells.iter().enumerate() {
            if counts.0 > 0 {
                partial
                    .cells
                    .insert(cell_of(answer, *offset, cell), *counts);
            }
        }
        return partial;
    }
    // The partition's cells, numbered; each file's cells among them.
    let mut ids: HashMap<(usize, Option<String>), u32> = HashMap::new();
    let mut counts: Vec<(u64, u64)> = Vec::new();
    let mut runs: Vec<Run<'_>> = Vec::with_capacity(files.len());
    for Counted {
        answer,
        offset,
        visitors,
    } in files
    {
        partial.totals.scans += answer.total.0;
        let mut ours = vec![u32::MAX; answer.cells.len()];
        for (cell, (scans, _)) in answer.cells.iter().enumerate() {
            if *scans == 0 {
                continue;
            }
            let next = u32::try_from(counts.len()).unwrap_or(u32::MAX);
            let id = *ids.entry(cell_of(answer, *offset, cell)).or_insert(next);
            if id == next {
                counts.push((0, 0));
            }
            counts[id as usize].0 += scans;
            ours[cell] = id;
        }
        runs.push(Run {
            visitors: visitors.as_deref().unwrap_or(&[]),
            cursor: answer.pairs.cursor(),
            ours,
        });
    }
    // Each file's pairs are in visitor order: the files' runs are merged a visitor at a time
    // (a heap of each run's next visitor), so that a question over today costs no copy and
    // no sort of all of today's pairs, only a visitor's few cells.
    let mut next: BinaryHeap<Reverse<(u64, usize)>> = runs
        .iter_mut()
        .enumerate()
        .filter_map(|(index, run)| run.next_visitor().map(|visitor| Reverse((visitor, index))))
        .collect();
    let mut cells: Vec<u32> = Vec::new();
    let mut current: Option<u64> = None;
    let mut count_visitor = |cells: &mut Vec<u32>, totals: &mut Totals| {
        cells.sort_unstable();
        cells.dedup();
        for cell in cells.iter() {
            if let Some(counts) = counts.get_mut(*cell as usize) {
                counts.1 += 1;
            }
        }
        totals.visitors += u64::from(!cells.is_empty());
        cells.clear();
    };
    while let Some(Reverse((visitor, index))) = next.pop() {
        if current != Some(visitor) {
            count_visitor(&mut cells, &mut partial.totals);
            current = Some(visitor);
        }
        let run = &mut runs[index];
        let ours = &run.ours;
        run.cursor
            .take(|cell| cells.push(ours.get(cell as usize).copied().unwrap_or(u32::MAX)));
        if let Some(visitor) = run.next_visitor() {
            next.push(Reverse((visitor, index)));
        }
    }
    count_visitor(&mut cells, &mut partial.totals);
    let mut keys: Vec<Option<(usize, Option<String>)>> = vec![None; counts.len()];
    for (key, id) in ids {
        keys[id as usize] = Some(key);
    }
    for (key, counts) in keys.into_iter().zip(counts) {
        if let Some(key) = key {
            partial.cells.insert(key, counts);
        }
    }
    partial
}

/// One file's pairs not yet merged, and its cells' numbers among the partition's.
struct Run<'a> {
    visitors: &'a [u64],
    cursor: PairCursor<'a>,
    ours: Vec<u32>,
}

impl Run<'_> {
    /// The digest of the next visitor not yet merged.
    fn next_visitor(&mut self) -> Option<u64> {
        let number = self.cursor.peek()?;
        self.visitors.get(number as usize).copied()
    }
}

/// How a row's group is found.
enum GroupColumn<'a> {
    None,
    Text {
        keys: &'a [i32],
        array: &'a DictionaryArray<Int32Type>,
        /// Group id of each dictionary value.
        ids: Vec<u32>,
    },
    /// The flags, and the group ids of `false` and `true`.
    Flag(&'a BooleanArray, [u32; 2]),
}

/// How a row passes one filter.
enum Test<'a> {
    Text {
        keys: &'a [i32],
        array: &'a DictionaryArray<Int32Type>,
        /// Whether each dictionary value is one of the filter's.
        allowed: Vec<bool>,
    },
    Flag(&'a BooleanArray, bool),
    /// A flag asked for both ways: any row with a value.
    AnyFlag(&'a BooleanArray),
    Tags(&'a ListArray, &'a [String]),
}

impl Test<'_> {
    fn passes(&self, row: usize) -> bool {
        match self {
            Test::Text {
                keys,
                array,
                allowed,
            } => array.is_valid(row) && allowed[keys[row] as usize],
            Test::Flag(flags, wanted) => flags.is_valid(row) && flags.value(row) == *wanted,
            Test::AnyFlag(flags) => flags.is_valid(row),
            Test::Tags(lists, wanted) => {
                if !lists.is_valid(row) {
                    return false;
                }
                let tags = lists.value(row);
                let tags = tags.as_string::<i32>();
                tags.iter()
                    .flatten()
                    .any(|tag| wanted.iter().any(|w| w == tag))
            }
        }
    }
}

/// One cell of a file while it is read.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    scans: u64,
    visitors: u64,
    last_visitor: u64,
    seen: bool,
}

impl Cell {
    /// Counts a scan of `visitor`, which is never below the last one counted here (a file's
    /// rows are in visitor order); whether the visitor is new to the cell.
    fn count(&mut self, visitor: Option<u64>) -> bool {
        self.scans += 1;
        if let Some(visitor) = visitor
            && (!self.seen || self.last_visitor != visitor)
        {
            self.visitors += 1;
            self.last_visitor = visitor;
            self.seen = true;
            return true;
        }
        false
    }
}

/// A file's answer to `question`, from its rows; and the file's visitors, when the answer's
/// pairs are numbered by them.
fn answer_file(
    columns: &ColumnCache,
    question: &Question,
    file: &FileId,
) -> Result<(FileAnswer, Option<Visitors>), AnalyticsError> {
    let mut names = vec!["visitor"];
    if !question.bots {
        names.push("bot");
    }
    if let Some(group) = question.group_by {
        names.push(group.name());
    }
    for filter in &question.filters {
        names.push(match filter.on {
            FilterOn::Dimension(dimension) => dimension.name(),
            FilterOn::Tag => "tags",
        });
    }
    if question.needs_times() {
        names.push("at");
    }
    names.sort_unstable();
    names.dedup();
    let mut reading = Reading {
        buckets: question.edges.len() + 1,
        ..Reading::default()
    };
    columns.for_each_batch(file, &names, BATCH_ROWS, |batch| {
        reading.batch(question, batch)
    })?;
    let Reading {
        groups,
        buckets,
        cells,
        total,
        visitors,
        mut pairs,
        ..
    } = reading;
    // By visitor already; each visitor's cells in order too.
    for visitor in pairs.chunk_by_mut(|a, b| a.0 == b.0) {
        visitor.sort_unstable();
    }
    let answer = FileAnswer {
        groups,
        buckets,
        cells: cells
            .iter()
            .map(|cell| (cell.scans, cell.visitors))
            .collect(),
        total: (total.scans, total.visitors),
        pairs: if question.pairs {
            Pairs::from_sorted(pairs, visitors.len())
        } else {
            Pairs::Unkept
        },
    };
    Ok((answer, question.pairs.then(|| Visitors::from(visitors))))
}

/// A file's visitors, as [`answer_file`] numbers them: each digest once, in file order.
fn read_visitors(columns: &ColumnCache, file: &FileId) -> Result<Vec<u64>, AnalyticsError> {
    let mut visitors = Vec::new();
    columns.for_each_batch(file, &["visitor"], BATCH_ROWS, |batch| {
        let digests = column(batch, "visitor")?.as_primitive::<UInt64Type>();
        for digest in digests.iter().flatten() {
            if visitors.last() != Some(&digest) {
                visitors.push(digest);
            }
        }
        Ok(())
    })?;
    visitors.shrink_to_fit();
    Ok(visitors)
}

/// A file's answer as its rows are read.
#[derive(Default)]
struct Reading {
    groups: Groups,
    /// The id of each named group met (the unknown value's is in `groups`).
    group_ids: HashMap<String, u32>,
    buckets: usize,
    cells: Vec<Cell>,
    total: Cell,
    /// Every visitor of the file's rows, counted or not, when pairs are asked for: what
    /// they are numbered by.
    visitors: Vec<u64>,
    /// (visitor's number, cell), once each.
    pairs: Vec<(u32, u32)>,
}

impl Reading {
    fn group_id(&mut self, group: Option<&str>) -> Result<u32, AnalyticsError> {
        let met = match group {
            None => self.groups.unknown(),
            Some(name) => self.group_ids.get(name).copied(),
        };
        if let Some(id) = met {
            return Ok(id);
        }
        let id = self.groups.push(group)?;
        if let Some(name) = group {
            self.group_ids.insert(name.to_owned(), id);
        }
        Ok(id)
    }

    fn batch(&mut self, question: &Question, batch: &RecordBatch) -> Result<(), AnalyticsError> {
        // Rows without a value (and every row, ungrouped) share this group.
        let null_group = self.group_id(None)?;
        let group = match question.group_by {
            None => GroupColumn::None,
            Some(dimension) if dimension.is_flag() => GroupColumn::Flag(
                column(batch, dimension.name())?.as_boolean(),
                [self.group_id(Some("false"))?, self.group_id(Some("true"))?],
            ),
            Some(dimension) => {
                let array = dictionary(batch, dimension.name())?;
                let values = array.values().as_string::<i32>();
                let ids = (0..values.len())
                    .map(|index| self.group_id(Some(values.value(index))))
                    .collect::<Result<_, _>>()?;
                GroupColumn::Text {
                    keys: array.keys().values(),
                    array,
                    ids,
                }
            }
        };
        let mut tests = Vec::new();
        for filter in &question.filters {
            tests.push(match filter.on {
                FilterOn::Tag => {
                    Test::Tags(column(batch, "tags")?.as_list::<i32>(), &filter.values)
                }
                FilterOn::Dimension(dimension) if dimension.is_flag() => {
                    let flags = column(batch, dimension.name())?.as_boolean();
                    let wants = |value: &str| filter.values.iter().any(|v| v == value);
                    match (wants("true"), wants("false")) {
                        (true, true) => Test::AnyFlag(flags),
                        (true, false) => Test::Flag(flags, true),
                        _ => Test::Flag(flags, false),
                    }
                }
                FilterOn::Dimension(dimension) => {
                    let array = dictionary(batch, dimension.name())?;
                    let values = array.values().as_string::<i32>();
                    let allowed = (0..values.len())
                        .map(|index| filter.values.iter().any(|v| v == values.value(index)))
                        .collect();
                    Test::Text {
                        keys: array.keys().values(),
                        array,
                        allowed,
                    }
                }
            });
        }
        let bots = if question.bots {
            None
        } else {
            Some(column(batch, "bot")?.as_boolean())
        };
        let visitors = column(batch, "visitor")?.as_primitive::<UInt64Type>();
        let times = if question.needs_times() {
            Some(
                column(batch, "at")?
                    .as_primitive::<TimestampMicrosecondType>()
                    .values(),
            )
        } else {
            None
        };
        let (from, to) = question.range.unwrap_or((i64::MIN, i64::MAX));
        let buckets = self.buckets;
        let cells_needed = self.groups.len() * buckets;
        if self.cells.len() < cells_needed {
            self.cells.resize(cells_needed, Cell::default());
        }
        for row in 0..batch.num_rows() {
            let visitor = visitors.is_valid(row).then(|| visitors.value(row));
            if question.pairs
                && let Some(visitor) = visitor
                && self.visitors.last() != Some(&visitor)
            {
                self.visitors.push(visitor);
            }
            if bots.is_some_and(|bots| bots.value(row)) {
                continue;
            }
            let mut local = 0;
            if let Some(times) = times {
                let at = times[row];
                if at < from || at >= to {
                    continue;
                }
                local = question.edges.partition_point(|edge| *edge <= at);
            }
            if !tests.iter().all(|test| test.passes(row)) {
                continue;
            }
            let group = match &group {
                GroupColumn::None => null_group,
                GroupColumn::Text { keys, array, ids } => {
                    if array.is_valid(row) {
                        ids[keys[row] as usize]
                    } else {
                        null_group
                    }
                }
                GroupColumn::Flag(flags, ids) => ids[usize::from(flags.value(row))],
            };
            let cell = group as usize * buckets + local;
            let new_here = self.cells[cell].count(visitor);
            self.total.count(visitor);
            if question.pairs && new_here && visitor.is_some() {
                // The row's visitor is the last met: rows are in visitor order.
                let number = u32::try_from(self.visitors.len() - 1).unwrap_or(u32::MAX);
                self.pairs
                    .push((number, u32::try_from(cell).unwrap_or(u32::MAX)));
            }
        }
        Ok(())
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, AnalyticsError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| AnalyticsError::Corrupt(format!("a scans file without `{name}`")))
}

fn dictionary<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a DictionaryArray<Int32Type>, AnalyticsError> {
    column(batch, name)?
        .as_dictionary_opt::<Int32Type>()
        .ok_or_else(|| AnalyticsError::Corrupt(format!("`{name}` is not a dictionary column")))
}

impl EmbeddedStore {
    /// The variant each of `clicks` was served, for the clicks among scans of `tenant`'s link
    /// `key` in `[from, to)` (blocking).
    pub fn click_variants(
        &self,
        tenant: &str,
        key: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        clicks: &std::collections::HashSet<String>,
    ) -> Result<HashMap<String, String>, AnalyticsError> {
        let first = from.date_naive();
        let last = (to - Duration::microseconds(1)).date_naive();
        let days: Vec<NaiveDate> = first.iter_days().take_while(|day| *day <= last).collect();
        let found = background::query(|| {
            days.par_iter()
                .map(|day| {
                    let dir = self.partition_dir(*day, tenant);
                    let (live, _) =
                        live_files(&dir).map_err(|source| AnalyticsError::io(&dir, source))?;
                    let mut found = Vec::new();
                    for (_, path) in live {
                        clicks_in_file(&path, key, clicks, &mut found)?;
                    }
                    Ok(found)
                })
                .collect::<Result<Vec<Vec<(String, String)>>, AnalyticsError>>()
        })?;
        Ok(found.into_iter().flatten().collect())
    }
}

fn clicks_in_file(
    path: &std::path::Path,
    key: &str,
    clicks: &std::collections::HashSet<String>,
    found: &mut Vec<(String, String)>,
) -> Result<(), AnalyticsError> {
    // Read apart from the cache, a batch at a time: click ids are many and asked for rarely.
    column_cache::stream(path, &["key", "click_id", "variant"], BATCH_ROWS, |batch| {
        let keys = dictionary(batch, "key")?;
        let key_values = keys.values().as_string::<i32>();
        let Some(wanted_key) = (0..key_values.len()).find(|i| key_values.value(*i) == key) else {
            return Ok(());
        };
        let ids = column(batch, "click_id")?.as_string::<i32>();
        let variants = dictionary(batch, "variant")?;
        let variant_values = variants.values().as_string::<i32>();
        let key_codes = keys.keys().values();
        for row in 0..batch.num_rows() {
            if !keys.is_valid(row) || key_codes[row] as usize != wanted_key || !ids.is_valid(row) {
                continue;
            }
            let click = ids.value(row);
            if clicks.contains(click) && variants.is_valid(row) {
                let variant = variant_values.value(variants.keys().value(row) as usize);
                found.push((click.to_owned(), variant.to_owned()));
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's answer with its (visitor digest, cell) pairs, by visitor and cell.
    fn answer(groups: &[Option<&str>], cells: &[(u64, u64)], pairs: &[(u64, u32)]) -> Counted {
        let mut visitors: Vec<u64> = pairs.iter().map(|pair| pair.0).collect();
        visitors.dedup();
        let numbered = pairs
            .iter()
            .map(|(digest, cell)| {
                let number = visitors.binary_search(digest).unwrap_or(0);
                (u32::try_from(number).unwrap_or(0), *cell)
            })
            .collect();
        let mut named = Groups::default();
        for group in groups {
            named.push(*group).expect("a group id");
        }
        let answer = FileAnswer {
            groups: named,
            buckets: 1,
            cells: cells.to_vec(),
            total: (
                cells.iter().map(|cell| cell.0).sum(),
                visitors.len().try_into().unwrap_or(0),
            ),
            pairs: Pairs::from_sorted(numbered, visitors.len()),
        };
        Counted {
            answer: Arc::new(answer),
            offset: 0,
            visitors: Some(Visitors::from(visitors)),
        }
    }

    #[test]
    fn a_visitor_in_several_files_counts_once_per_cell_and_once_in_all() {
        let whole_day = Plan {
            edges: Vec::new(),
            first_bucket: 0,
            from: 0,
            to: 86_400_000_000,
            cut: false,
        };
        // Visitors 1 and 2 scanned `a`, 3 scanned `b`.
        let first = answer(
            &[None, Some("a"), Some("b")],
            &[(0, 0), (3, 2), (2, 1)],
            &[(1, 1), (2, 1), (3, 2)],
        );
        // Visitors 1 and 3 scanned `b`, 4 scanned `a`: the file numbers its groups otherwise.
        let second = answer(
            &[None, Some("b"), Some("a")],
            &[(0, 0), (2, 2), (1, 1)],
            &[(1, 1), (3, 1), (4, 2)],
        );
        // A third file in which visitor 2 scanned both.
        let third = answer(
            &[None, Some("a"), Some("b")],
            &[(0, 0), (1, 1), (1, 1)],
            &[(2, 1), (2, 2)],
        );
        let partial = add_up(&whole_day, &[first, second, third]);
        assert_eq!(partial.totals.scans, 10);
        assert_eq!(partial.totals.visitors, 4);
        let cell = |group: &str| partial.cells.get(&(0, Some(group.to_owned()))).copied();
        assert_eq!(cell("a"), Some((5, 3)), "visitors 1, 2 and 4");
        assert_eq!(cell("b"), Some((5, 3)), "visitors 1, 2 and 3");
        assert_eq!(partial.cells.len(), 2);
    }
}
