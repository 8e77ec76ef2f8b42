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
//!   yet merged into one file (today's, usually) keeps each file's visitors once per cell and
//!   merges the files' runs instead ([`Runs`]);
//! - the time column is read only when the range or a bucket edge cuts through the day.
//!
//! We wrote this rather than take DataFusion: the query shapes are few and fixed, the build
//! of DataFusion alone outweighs all of qrpool's, and knowing the storage order (visitor
//! digests sorted within a file) makes distinct counts cheap. See `docs/performance.md` for
//! the measurements that decided it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, TimestampMicrosecondType, UInt64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, DictionaryArray, ListArray, RecordBatch};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use rayon::prelude::*;

use super::background;
use super::column_cache::{self, ColumnCache};
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
        let buckets = query.bucket_starts();
        let first = query.from.date_naive();
        let last = (query.to - Duration::microseconds(1)).date_naive();
        let days: Vec<NaiveDate> = first.iter_days().take_while(|day| *day <= last).collect();
        let partials = background::run(|| {
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
            match scan_partition(&self.columns, query, buckets, day, &paths) {
                Err(AnalyticsError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempts < 3 =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }
}

/// What a partition's scan reads and decides per row.
struct Plan {
    columns: Vec<&'static str>,
    /// The time column is needed (the range or a bucket edge cuts through the day).
    times: bool,
    /// Bucket edges inside the day: (instant, index of the bucket starting there).
    edges: Vec<(i64, usize)>,
    /// The bucket at the day's first instant in range.
    first_bucket: usize,
    from: i64,
    to: i64,
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
    let mut columns = vec!["visitor"];
    if !query.bots {
        columns.push("bot");
    }
    if let Some(group) = query.group_by {
        columns.push(group.name());
    }
    for filter in &query.filters {
        columns.push(match filter.on {
            FilterOn::Dimension(dimension) => dimension.name(),
            FilterOn::Tag => "tags",
        });
    }
    let times = from > day_start || to < day_end || !edges.is_empty();
    if times {
        columns.push("at");
    }
    columns.sort_unstable();
    columns.dedup();
    Plan {
        columns,
        times,
        edges,
        first_bucket,
        from,
        to,
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

/// One (bucket, group) of a partition.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    scans: u64,
    visitors: u64,
    last_visitor: u64,
    seen: bool,
}

impl Cell {
    /// Counts a scan of `visitor`, which is never below the last one counted here when the
    /// rows come in visitor order.
    fn count(&mut self, visitor: Option<u64>) {
        self.scans += 1;
        if let Some(visitor) = visitor
            && (!self.seen || self.last_visitor != visitor)
        {
            self.visitors += 1;
            self.last_visitor = visitor;
            self.seen = true;
        }
    }
}

/// The visitors of a partition kept in several files, for distinct counts across them.
///
/// Each file is in visitor order, so a cell meets a file's visitors in order and keeps each
/// once per file without a set; the file's (visitor, cell) pairs are then in order once each
/// visitor's few cells are, and the files' runs are merged (the standard library's stable
/// sort finds sorted runs and merges them, O(n log files)) rather than sorted whole.
#[derive(Debug, Default)]
struct Runs {
    pairs: Vec<(u64, u32)>,
    /// Where the current file's pairs start.
    file_start: usize,
    /// The last visitor kept for each cell in the current file.
    last: Vec<Option<u64>>,
}

impl Runs {
    fn start_file(&mut self) {
        self.finish_file();
        self.last.clear();
    }

    fn push(&mut self, cell: usize, visitor: u64) {
        if self.last.len() <= cell {
            self.last.resize(cell + 1, None);
        }
        if self.last[cell] != Some(visitor) {
            self.last[cell] = Some(visitor);
            self.pairs
                .push((visitor, u32::try_from(cell).unwrap_or(u32::MAX)));
        }
    }

    /// Puts the current file's pairs in (visitor, cell) order: they are by visitor already.
    fn finish_file(&mut self) {
        for visitor in self.pairs[self.file_start..].chunk_by_mut(|a, b| a.0 == b.0) {
            visitor.sort_unstable();
        }
        self.file_start = self.pairs.len();
    }

    /// Adds each cell's distinct visitors to `cells`; returns the partition's.
    fn count(mut self, cells: &mut [Cell]) -> u64 {
        self.finish_file();
        self.pairs.sort();
        let mut visitors = 0;
        let mut previous: Option<(u64, u32)> = None;
        for pair in self.pairs {
            if previous == Some(pair) {
                continue;
            }
            if previous.is_none_or(|(visitor, _)| visitor != pair.0) {
                visitors += 1;
            }
            if let Some(cell) = cells.get_mut(pair.1 as usize) {
                cell.visitors += 1;
            }
            previous = Some(pair);
        }
        visitors
    }
}

fn scan_partition(
    columns: &ColumnCache,
    query: &ScansQuery,
    buckets: &[DateTime<Utc>],
    day: NaiveDate,
    paths: &[PathBuf],
) -> Result<Partial, AnalyticsError> {
    if paths.is_empty() {
        return Ok(Partial::default());
    }
    let plan = plan(query, buckets, day);
    // One file is in visitor order; several are not, taken together.
    let ordered = paths.len() == 1;
    let local_buckets = plan.edges.len() + 1;
    let mut groups: Vec<Option<String>> = Vec::new();
    let mut group_ids: HashMap<Option<String>, u32> = HashMap::new();
    let mut cells: Vec<Cell> = Vec::new();
    let mut total = Cell::default();
    let mut runs = Runs::default();
    for path in paths {
        runs.start_file();
        columns.for_each_batch(path, &plan.columns, BATCH_ROWS, |batch| {
            scan_batch(
                query,
                &plan,
                batch,
                ordered,
                local_buckets,
                &mut groups,
                &mut group_ids,
                &mut cells,
                &mut total,
                &mut runs,
            )
        })?;
    }
    let mut partial = Partial {
        totals: Totals {
            scans: total.scans,
            visitors: total.visitors,
        },
        cells: HashMap::new(),
    };
    if !ordered {
        partial.totals.visitors = runs.count(&mut cells);
    }
    for (index, cell) in cells.iter().enumerate() {
        if cell.scans == 0 {
            continue;
        }
        let group = groups[index / local_buckets].clone();
        let local = index % local_buckets;
        let bucket = if local == 0 {
            plan.first_bucket
        } else {
            plan.edges[local - 1].1
        };
        partial
            .cells
            .insert((bucket, group), (cell.scans, cell.visitors));
    }
    Ok(partial)
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

#[allow(clippy::too_many_arguments)]
fn scan_batch(
    query: &ScansQuery,
    plan: &Plan,
    batch: &RecordBatch,
    ordered: bool,
    local_buckets: usize,
    groups: &mut Vec<Option<String>>,
    group_ids: &mut HashMap<Option<String>, u32>,
    cells: &mut Vec<Cell>,
    total: &mut Cell,
    runs: &mut Runs,
) -> Result<(), AnalyticsError> {
    let mut id_of = |group: Option<String>| -> u32 {
        if let Some(id) = group_ids.get(&group) {
            return *id;
        }
        let id = u32::try_from(groups.len()).unwrap_or(u32::MAX);
        groups.push(group.clone());
        group_ids.insert(group, id);
        id
    };
    // Rows without a value (and every row, ungrouped) share this group.
    let null_group = id_of(None);
    let group = match query.group_by {
        None => GroupColumn::None,
        Some(dimension) if dimension.is_flag() => GroupColumn::Flag(
            column(batch, dimension.name())?.as_boolean(),
            [id_of(Some("false".into())), id_of(Some("true".into()))],
        ),
        Some(dimension) => {
            let array = dictionary(batch, dimension.name())?;
            let values = array.values().as_string::<i32>();
            let ids = (0..values.len())
                .map(|index| id_of(Some(values.value(index).to_owned())))
                .collect();
            GroupColumn::Text {
                keys: array.keys().values(),
                array,
                ids,
            }
        }
    };
    let mut tests = Vec::new();
    for filter in &query.filters {
        tests.push(match filter.on {
            FilterOn::Tag => Test::Tags(column(batch, "tags")?.as_list::<i32>(), &filter.values),
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
    let bots = if query.bots {
        None
    } else {
        Some(column(batch, "bot")?.as_boolean())
    };
    let visitors = column(batch, "visitor")?.as_primitive::<UInt64Type>();
    let times = if plan.times {
        Some(
            column(batch, "at")?
                .as_primitive::<TimestampMicrosecondType>()
                .values(),
        )
    } else {
        None
    };
    let group_count = groups.len();
    if cells.len() < group_count * local_buckets {
        cells.resize(group_count * local_buckets, Cell::default());
    }
    for row in 0..batch.num_rows() {
        if bots.is_some_and(|bots| bots.value(row)) {
            continue;
        }
        let mut local = 0;
        if let Some(times) = times {
            let at = times[row];
            if at < plan.from || at >= plan.to {
                continue;
            }
            local = plan.edges.partition_point(|(edge, _)| *edge <= at);
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
        let visitor = visitors.is_valid(row).then(|| visitors.value(row));
        let cell = group as usize * local_buckets + local;
        if ordered {
            cells[cell].count(visitor);
            total.count(visitor);
        } else {
            cells[cell].scans += 1;
            total.scans += 1;
            if let Some(visitor) = visitor {
                runs.push(cell, visitor);
            }
        }
    }
    Ok(())
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
        let found = background::run(|| {
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
