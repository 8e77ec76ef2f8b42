//! Keeping the store small and within its retention: merging a partition's files, dropping
//! old days, erasing a tenant.
//!
//! An ingest round writes one small file per active tenant every few seconds. During the day
//! the files are kept in size classes, as a log-structured merge tree keeps its runs: once a
//! partition has [`PARTS_BEFORE_MERGE`] ingest parts (level 0) they are merged into one file
//! of level 1; once it has [`MERGES_BEFORE_NEXT`] files of a level above 0, they are merged
//! into one of the level above. Each scan is rewritten once per level it climbs (four at most
//! in a day of 5-second rounds), where merging the whole day again every so often rewrote it
//! over and over, at a cost that grew through the day, and each time dropped the answers kept
//! for its largest file. Once the day is over, whatever is left becomes one file. Each merge
//! keeps the file order (visitor, then time) and is written whole before the files it
//! replaces are deleted (see [`super::live_files`] for why a crash in between counts nothing
//! twice). Before its file is put in place, the questions asked lately are put to it and
//! their answers kept ([`super::asked`]); once it is, what was kept of its inputs is let go.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMicrosecondType, UInt64Type};
use arrow_array::{Array, RecordBatch, TimestampMicrosecondArray, UInt64Array};
use arrow_select::interleave::interleave_record_batch;
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};

use super::ingest::{remove, remove_temporary};
use super::{EmbeddedStore, FileName, live_files, schema};
use crate::AnalyticsError;

/// Ingest parts a partition may gather before they are merged.
pub const PARTS_BEFORE_MERGE: usize = 16;
/// Merged files of one level a partition may gather before they are merged into one of the
/// level above.
pub const MERGES_BEFORE_NEXT: usize = 8;

/// What a maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintained {
    pub merges: u64,
    pub files_merged: u64,
    pub days_dropped: u64,
}

impl EmbeddedStore {
    /// Merges the partitions that need it; `today` (UTC) is still being written.
    pub fn compact(&self, today: NaiveDate) -> Result<Maintained, AnalyticsError> {
        let mut done = Maintained::default();
        for day in self.days()? {
            for tenant in self.tenants_on(day)? {
                if let Some(merged) = self.compact_partition(day, &tenant, today)? {
                    done.merges += 1;
                    done.files_merged += merged;
                }
            }
        }
        Ok(done)
    }

    /// Merges one partition as far as it needs (a merge may fill the level above, which is
    /// then merged too); the number of files merged, if any.
    pub fn compact_partition(
        &self,
        day: NaiveDate,
        tenant: &str,
        today: NaiveDate,
    ) -> Result<Option<u64>, AnalyticsError> {
        let dir = self.partition_dir(day, tenant);
        let mut files_merged = 0;
        loop {
            let (live, redundant) =
                live_files(&dir).map_err(|source| AnalyticsError::io(&dir, source))?;
            for path in redundant {
                remove(&path)?;
            }
            let Some((level, inputs)) = next_merge(&live, day < today) else {
                break;
            };
            let name = FileName {
                level,
                start: inputs.iter().map(|(name, _)| name.start).min().unwrap_or(0),
                end: inputs.iter().map(|(name, _)| name.end).max().unwrap_or(0),
            };
            let paths: Vec<PathBuf> = inputs.iter().map(|(_, path)| path.clone()).collect();
            let written = merge_files(&paths, &dir.join(name.text()))?;
            // The partition as it will be: a file a further merge takes at once is not
            // worth answering ahead.
            let after: Vec<(FileName, PathBuf)> = live
                .iter()
                .filter(|(_, path)| !paths.contains(path))
                .cloned()
                .chain([(name, written.target.clone())])
                .collect();
            if next_merge(&after, day < today).is_none() {
                let pairs = day >= today || after.len() > 1;
                self.hand_over_answers(tenant, day, &written.temporary, &written.target, pairs);
            }
            written.publish()?;
            self.forget(|path| paths.iter().any(|input| input == path));
            for path in &paths {
                remove(path)?;
            }
            remove_temporary(&dir)?;
            files_merged += paths.len() as u64;
        }
        Ok((files_merged > 0).then_some(files_merged))
    }

    /// Drops every day before `cutoff`; the days dropped.
    pub fn drop_days_before(&self, cutoff: NaiveDate) -> Result<Vec<NaiveDate>, AnalyticsError> {
        let mut dropped = Vec::new();
        for day in self.days()?.into_iter().filter(|day| *day < cutoff) {
            let dir = self.day_dir(day);
            std::fs::remove_dir_all(&dir).map_err(|source| AnalyticsError::io(&dir, source))?;
            self.forget(|path| path.starts_with(&dir));
            dropped.push(day);
        }
        Ok(dropped)
    }

    /// Deletes every file of `tenant`; the number of days it had scans on.
    pub fn erase_tenant(&self, tenant: &str) -> Result<u64, AnalyticsError> {
        let mut erased = 0;
        for day in self.days()? {
            let dir = self.partition_dir(day, tenant);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    self.forget(|path| path.starts_with(&dir));
                    erased += 1;
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(AnalyticsError::io(&dir, source)),
            }
        }
        Ok(erased)
    }
}

/// The merge a partition needs next, if any: the level of the file it makes, and its inputs.
///
/// During the day, the lowest level that is full, all of its files: the files of a level
/// are always neighbours in the event file (the higher the level, the earlier), as each merge
/// takes a whole level, so the merged file's range holds theirs and nothing else. Once the
/// day is over, all of its files, into one of a level above all of theirs.
fn next_merge(
    live: &[(FileName, PathBuf)],
    day_over: bool,
) -> Option<(u8, Vec<&(FileName, PathBuf)>)> {
    let top = live.iter().map(|(name, _)| name.level).max()?;
    if day_over {
        return (live.len() > 1).then(|| (top.saturating_add(1), live.iter().collect()));
    }
    (0..=top).find_map(|level| {
        let files: Vec<&(FileName, PathBuf)> = live
            .iter()
            .filter(|(name, _)| name.level == level)
            .collect();
        let full = match level {
            0 => PARTS_BEFORE_MERGE,
            _ => MERGES_BEFORE_NEXT,
        };
        (files.len() >= full).then(|| (level.saturating_add(1), files))
    })
}

/// Rows a merge reads from each input at a time. Each input's batch stays in memory while
/// rows gathered from it wait to be written, so a merge holds about inputs × (1 + WRITE_ROWS /
/// inputs / READ_ROWS) batches: 8,192 and 65,536 took 154 MiB at the peak to merge eighteen
/// files of 167,000 rows; these, 75 MiB, for 8 % more time (`analytics-bench merge`,
/// docs/performance.md).
const READ_ROWS: usize = 1 << 10;
/// Rows a merge gathers before handing them to the writer.
const WRITE_ROWS: usize = 8 << 10;
/// What the row group being written may hold in memory before a merge closes it. The
/// writer keeps a row group encoded in memory until it is closed, up to the 1 M rows of
/// [`schema::writer_properties`]: closing it at 12 MiB took a merge of eighteen files of
/// 167,000 rows 17 MiB lower at its peak in the same time, and makes groups of about 426,000
/// rows, so a day of up to that many scans is still one group and what the month's queries
/// read is unchanged (`analytics-bench merge`, docs/performance.md).
const ROW_GROUP_BYTES: usize = 12 << 20;

/// A merged file, written and synced beside the place it goes to, not yet in it: until
/// [`Written::publish`], queries read the files it merged.
struct Written {
    temporary: PathBuf,
    target: PathBuf,
}

impl Written {
    /// Puts the file in its place, durably: from here on it stands for the files it merged
    /// (see [`super::live_files`]).
    fn publish(self) -> Result<(), AnalyticsError> {
        std::fs::rename(&self.temporary, &self.target)
            .map_err(|source| AnalyticsError::io(&self.target, source))?;
        match self.target.parent() {
            Some(dir) => super::sync_dir(dir),
            None => Ok(()),
        }
    }
}

/// Merges the rows of `paths`, each already in file order, into one file for `target` in file
/// order. It streams: a batch of each input is in memory at once (a page of each of its
/// columns behind it), the rows gathered for the next write and the row group being
/// written (closed at [`ROW_GROUP_BYTES`]), so its memory grows with the number of inputs,
/// not with their size (reading it all at once took about 0.7 KB a row; see
/// `docs/performance.md`).
fn merge_files(paths: &[PathBuf], target: &std::path::Path) -> Result<Written, AnalyticsError> {
    merge_files_in(
        paths,
        target,
        Sizes {
            read_rows: READ_ROWS,
            write_rows: WRITE_ROWS,
            row_group_bytes: ROW_GROUP_BYTES,
        },
    )
}

/// How much of its work a merge holds at once.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    read_rows: usize,
    write_rows: usize,
    row_group_bytes: usize,
}

fn merge_files_in(
    paths: &[PathBuf],
    target: &std::path::Path,
    sizes: Sizes,
) -> Result<Written, AnalyticsError> {
    let mut inputs = Vec::with_capacity(paths.len());
    for path in paths {
        if let Some(input) = Input::open(path, sizes.read_rows)? {
            inputs.push(input);
        }
    }
    let temporary = target.with_file_name(format!(
        ".{}.tmp",
        target
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("merge")
    ));
    let file = std::fs::File::create(&temporary)
        .map_err(|source| AnalyticsError::io(&temporary, source))?;
    let mut writer =
        ArrowWriter::try_new(file, schema::schema(), Some(schema::writer_properties()))?;
    // The smallest next row of each input; `Reverse` makes the max-heap a min-heap.
    let mut next: BinaryHeap<Reverse<(OrderKey, usize)>> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| Reverse((input.key(), index)))
        .collect();
    // The batches the rows gathered so far come from, and (batch, row) for each row.
    let mut held: Vec<RecordBatch> = Vec::new();
    let mut held_index: Vec<usize> = Vec::with_capacity(inputs.len());
    for input in &inputs {
        held_index.push(held.len());
        held.push(input.batch.clone());
    }
    let mut gathered: Vec<(usize, usize)> = Vec::with_capacity(sizes.write_rows);
    while let Some(Reverse((_, index))) = next.pop() {
        let input = &mut inputs[index];
        gathered.push((held_index[index], input.row));
        if input.advance()? {
            if input.row == 0 {
                held_index[index] = held.len();
                held.push(input.batch.clone());
            }
            next.push(Reverse((input.key(), index)));
        }
        if gathered.len() == sizes.write_rows || next.is_empty() {
            let batches: Vec<&RecordBatch> = held.iter().collect();
            writer.write(&interleave_record_batch(&batches, &gathered)?)?;
            if writer.in_progress_size() > sizes.row_group_bytes {
                writer.flush()?;
            }
            gathered.clear();
            // Only the inputs' current batches can be referred to from now on.
            held.clear();
            for (input, slot) in inputs.iter().zip(held_index.iter_mut()) {
                *slot = held.len();
                held.push(input.batch.clone());
            }
        }
    }
    let file = writer.into_inner()?;
    file.sync_data()
        .map_err(|source| AnalyticsError::io(&temporary, source))?;
    Ok(Written {
        temporary,
        target: target.to_owned(),
    })
}

/// Where a row goes in a file: by visitor (unknown last), then time.
type OrderKey = (bool, u64, i64);

fn order_key(visitors: &UInt64Array, times: &TimestampMicrosecondArray, row: usize) -> OrderKey {
    let known = visitors.is_valid(row);
    let visitor = if known { visitors.value(row) } else { 0 };
    (!known, visitor, times.value(row))
}

/// One file being merged: its current batch and the next row of it to take.
struct Input {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    batch: RecordBatch,
    visitors: UInt64Array,
    times: TimestampMicrosecondArray,
    row: usize,
}

impl Input {
    /// `path` ready at its first row; `None` if it has no rows.
    fn open(path: &std::path::Path, read_rows: usize) -> Result<Option<Input>, AnalyticsError> {
        let file = std::fs::File::open(path).map_err(|source| AnalyticsError::io(path, source))?;
        // Read as written (plain text columns), whatever schema the file's metadata names.
        let options = ArrowReaderOptions::new().with_schema(schema::schema());
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)?
            .with_batch_size(read_rows)
            .build()?;
        let mut input = Input {
            path: path.to_owned(),
            reader,
            batch: RecordBatch::new_empty(schema::schema()),
            visitors: UInt64Array::from(Vec::<u64>::new()),
            times: TimestampMicrosecondArray::from(Vec::<i64>::new()),
            row: 0,
        };
        Ok(input.load()?.then_some(input))
    }

    fn key(&self) -> OrderKey {
        order_key(&self.visitors, &self.times, self.row)
    }

    /// Moves to the next row, reading the next batch when this one is done; false at the end.
    fn advance(&mut self) -> Result<bool, AnalyticsError> {
        self.row += 1;
        if self.row < self.batch.num_rows() {
            return Ok(true);
        }
        self.load()
    }

    /// Reads the next batch that has rows; false if there is none.
    fn load(&mut self) -> Result<bool, AnalyticsError> {
        for batch in self.reader.by_ref() {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            let column = |name: &str| {
                batch.column_by_name(name).cloned().ok_or_else(|| {
                    AnalyticsError::Corrupt(format!(
                        "{} has no `{name}` column",
                        self.path.display()
                    ))
                })
            };
            self.visitors = column("visitor")?.as_primitive::<UInt64Type>().clone();
            self.times = column("at")?
                .as_primitive::<TimestampMicrosecondType>()
                .clone();
            self.batch = batch;
            self.row = 0;
            return Ok(true);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;
    use crate::embedded::line::Line;
    use crate::synthetic;

    fn write_sorted(path: &Path, lines: &[Line<'_>]) {
        let mut sorted: Vec<&Line<'_>> = lines.iter().collect();
        schema::sort_for_file(&mut sorted);
        let file = std::fs::File::create(path).unwrap();
        let mut writer =
            ArrowWriter::try_new(file, schema::schema(), Some(schema::writer_properties()))
                .unwrap();
        writer.write(&schema::to_batch(&sorted).unwrap()).unwrap();
        writer.close().unwrap();
    }

    fn read_all(path: &Path) -> Vec<RecordBatch> {
        let file = std::fs::File::open(path).unwrap();
        let options = ArrowReaderOptions::new().with_schema(schema::schema());
        ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn lines_of(json: &[Vec<u8>]) -> Vec<Line<'_>> {
        json.iter().map(|line| Line::parse(line).unwrap()).collect()
    }

    fn day_of_events(events: usize) -> Vec<Vec<u8>> {
        synthetic::events(&synthetic::Shape {
            events,
            tenants: 1,
            keys: 20,
            first_day: NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
            days: 1,
            seed: 11,
        })
        .iter()
        .map(|event| {
            let mut line = Vec::new();
            event.write_json(&mut line);
            line
        })
        .collect()
    }

    /// The ids in a partition's live files, each as often as it is there.
    fn ids_in(dir: &Path) -> Vec<Vec<u8>> {
        let batches: Vec<RecordBatch> = live_files(dir)
            .unwrap()
            .0
            .iter()
            .flat_map(|(_, path)| read_all(path))
            .collect();
        let mut ids = ids_of(&batches);
        ids.sort();
        ids
    }

    /// The ids of `batches`' rows, in their order.
    fn ids_of(batches: &[RecordBatch]) -> Vec<Vec<u8>> {
        batches
            .iter()
            .flat_map(|batch| {
                let ids = batch
                    .column_by_name("id")
                    .unwrap()
                    .as_fixed_size_binary()
                    .clone();
                (0..ids.len())
                    .map(|row| ids.value(row).to_vec())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A store under `root` with one partition's folder made, and its day, tenant and folder.
    fn empty_partition(root: &Path) -> (EmbeddedStore, NaiveDate, String, PathBuf) {
        let store = EmbeddedStore::open(root).unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 11, 2).unwrap();
        let tenant = synthetic::tenant(0);
        let partition = store.partition_dir(day, &tenant);
        std::fs::create_dir_all(&partition).unwrap();
        (store, day, tenant, partition)
    }

    #[test]
    fn during_the_day_files_are_merged_with_files_of_their_size_not_with_the_whole_day() {
        let dir = tempfile::tempdir().unwrap();
        let (store, day, tenant, partition) = empty_partition(dir.path());
        let per_part = 3;
        let parts = PARTS_BEFORE_MERGE * MERGES_BEFORE_NEXT * 2;
        let json = day_of_events(per_part * parts);
        let lines = lines_of(&json);
        let mut expected: Vec<Vec<u8>> = lines.iter().map(|line| line.id.to_vec()).collect();
        expected.sort();
        let mut first_level_2 = None;
        let mut most_files = 0;
        for (index, chunk) in lines.chunks(per_part).enumerate() {
            // Each part's range follows the one before, as an ingest's rounds do.
            let name = FileName {
                level: 0,
                start: index as u64 * 100,
                end: (index as u64 + 1) * 100,
            };
            write_sorted(&partition.join(name.text()), chunk);
            store.compact_partition(day, &tenant, day).unwrap();
            let (live, _) = live_files(&partition).unwrap();
            most_files = most_files.max(live.len());
            let level_2: Vec<&(FileName, PathBuf)> =
                live.iter().filter(|(name, _)| name.level == 2).collect();
            match (first_level_2, level_2.as_slice()) {
                (None, [(name, _)]) => first_level_2 = Some(*name),
                (Some(first), found) => assert!(
                    found.iter().any(|(name, _)| *name == first),
                    "after part {index}, the first level-2 file was rewritten: {live:?}"
                ),
                _ => {}
            }
        }
        let (live, _) = live_files(&partition).unwrap();
        let levels: Vec<(u8, u64, u64)> = live
            .iter()
            .map(|(name, _)| (name.level, name.start, name.end))
            .collect();
        let half = (parts as u64 / 2) * 100;
        assert_eq!(
            levels,
            vec![(2, 0, half), (2, half, 2 * half)],
            "two of the largest size, side by side"
        );
        assert!(
            most_files <= PARTS_BEFORE_MERGE + MERGES_BEFORE_NEXT,
            "{most_files} files at once"
        );
        assert_eq!(ids_in(&partition), expected, "every scan once");

        // The day is over: one file, above every level it held.
        let merged = store
            .compact_partition(day, &tenant, day.succ_opt().unwrap())
            .unwrap();
        assert_eq!(merged, Some(2));
        let (live, redundant) = live_files(&partition).unwrap();
        assert!(redundant.is_empty());
        let names: Vec<FileName> = live.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            vec![FileName {
                level: 3,
                start: 0,
                end: 2 * half
            }]
        );
        assert_eq!(ids_in(&partition), expected, "every scan once");
    }

    #[test]
    fn a_store_written_before_size_tiers_merges_on_with_each_scan_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, day, tenant, partition) = empty_partition(dir.path());
        let json = day_of_events(60);
        let lines = lines_of(&json);
        let mut expected: Vec<Vec<u8>> = lines.iter().map(|line| line.id.to_vec()).collect();
        expected.sort();
        // As the earlier version left them: the whole day to 1000 (`L2-<end>`), parts merged
        // to 2000 (`L1-<end>`) with two of its parts left by a crash before their deletion, a
        // later merge to 3000, and a part after it.
        let write = |name: &str, rows: std::ops::Range<usize>| {
            write_sorted(&partition.join(name), &lines[rows]);
        };
        write("L2-0000000000001000.parquet", 0..20);
        write("L1-0000000000002000.parquet", 20..35);
        write(
            &FileName {
                level: 0,
                start: 1000,
                end: 1500,
            }
            .text(),
            20..28,
        );
        write(
            &FileName {
                level: 0,
                start: 1500,
                end: 2000,
            }
            .text(),
            28..35,
        );
        write("L1-0000000000003000.parquet", 35..50);
        write(
            &FileName {
                level: 0,
                start: 3000,
                end: 3400,
            }
            .text(),
            50..60,
        );
        let (live, redundant) = live_files(&partition).unwrap();
        let names: Vec<(u8, u64, u64)> = live
            .iter()
            .map(|(name, _)| (name.level, name.start, name.end))
            .collect();
        assert_eq!(
            names,
            vec![
                (0, 3000, 3400),
                (1, 1000, 2000),
                (1, 2000, 3000),
                (2, 0, 1000)
            ]
        );
        assert_eq!(redundant.len(), 2, "the parts the first L1 holds");
        assert_eq!(ids_in(&partition), expected);
        store
            .compact_partition(day, &tenant, day.succ_opt().unwrap())
            .unwrap();
        let (live, _) = live_files(&partition).unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!((live[0].0.start, live[0].0.end), (0, 3400));
        assert_eq!(ids_in(&partition), expected);
    }

    #[test]
    fn a_merge_streams_its_inputs_into_one_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let events = synthetic::events(&synthetic::Shape {
            events: 3_000,
            tenants: 1,
            keys: 20,
            first_day: NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
            days: 1,
            seed: 5,
        });
        let json: Vec<Vec<u8>> = events
            .iter()
            .map(|event| {
                let mut line = Vec::new();
                event.write_json(&mut line);
                line
            })
            .collect();
        let mut lines: Vec<Line<'_>> = json.iter().map(|j| Line::parse(j).unwrap()).collect();
        // Some scans come without a visitor; they go last.
        for line in lines.iter_mut().step_by(9) {
            line.visitor = None;
        }
        // Inputs of uneven sizes, one of them empty; read 7 rows at a time and written 50
        // at a time, so rows cross batch boundaries on both sides.
        let mut paths = Vec::new();
        for (index, range) in [0..100, 100..1_900, 1_900..1_900, 1_900..3_000]
            .into_iter()
            .enumerate()
        {
            let path = dir.path().join(format!("in-{index}.parquet"));
            write_sorted(&path, &lines[range]);
            paths.push(path);
        }
        let target = dir.path().join("L2-1.parquet");
        let sizes = Sizes {
            read_rows: 7,
            write_rows: 50,
            row_group_bytes: ROW_GROUP_BYTES,
        };
        merge_files_in(&paths, &target, sizes)
            .unwrap()
            .publish()
            .unwrap();
        assert_eq!(row_groups(&target), 1, "3,000 rows are far below the cap");

        let merged = read_all(&target);
        let keys: Vec<OrderKey> = merged
            .iter()
            .flat_map(|batch| {
                let visitors = batch.column_by_name("visitor").unwrap();
                let visitors = visitors.as_primitive::<UInt64Type>().clone();
                let times = batch.column_by_name("at").unwrap();
                let times = times.as_primitive::<TimestampMicrosecondType>().clone();
                (0..batch.num_rows()).map(move |row| order_key(&visitors, &times, row))
            })
            .collect();
        assert!(keys.is_sorted(), "rows out of file order");
        let mut ids: Vec<Vec<u8>> = merged
            .iter()
            .flat_map(|batch| {
                let ids = batch.column_by_name("id").unwrap();
                let ids = ids.as_fixed_size_binary().clone();
                (0..ids.len()).map(move |row| ids.value(row).to_vec())
            })
            .collect();
        let mut expected: Vec<Vec<u8>> = lines.iter().map(|line| line.id.to_vec()).collect();
        ids.sort();
        expected.sort();
        assert_eq!(ids, expected);
        assert!(!dir.path().join(".L2-1.parquet.tmp").exists());
    }

    fn row_groups(path: &Path) -> usize {
        let file = std::fs::File::open(path).unwrap();
        ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .metadata()
            .num_row_groups()
    }

    #[test]
    fn a_merge_closes_its_row_group_once_it_holds_its_size_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let json = day_of_events(3_000);
        let lines = lines_of(&json);
        let mut paths = Vec::new();
        for (index, chunk) in lines.chunks(1_000).enumerate() {
            let path = dir.path().join(format!("in-{index}.parquet"));
            write_sorted(&path, chunk);
            paths.push(path);
        }
        let target = dir.path().join("L1-1.parquet");
        let sizes = Sizes {
            read_rows: 64,
            write_rows: 100,
            row_group_bytes: 32 << 10,
        };
        merge_files_in(&paths, &target, sizes)
            .unwrap()
            .publish()
            .unwrap();

        let groups = row_groups(&target);
        assert!(
            groups > 1,
            "3,000 scans in one row group despite a 32 KiB cap"
        );
        // A group is closed only after a whole write (100 rows), the last one aside.
        let file = std::fs::File::open(&target).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let rows: Vec<i64> = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|group| group.num_rows())
            .collect();
        assert_eq!(rows.iter().sum::<i64>(), 3_000, "{rows:?}");
        assert!(
            rows[..rows.len() - 1].iter().all(|&n| n % 100 == 0),
            "groups end on a write: {rows:?}"
        );
        let mut ids = ids_of(&read_all(&target));
        let mut expected: Vec<Vec<u8>> = lines.iter().map(|line| line.id.to_vec()).collect();
        ids.sort();
        expected.sort();
        assert_eq!(ids, expected, "every scan once");
    }
}
