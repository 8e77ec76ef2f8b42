//! Keeping the store small and within its retention: merging a partition's files, dropping
//! old days, erasing a tenant.
//!
//! An ingest round writes one small file per active tenant every few seconds. During the day,
//! once a partition has [`PARTS_BEFORE_MERGE`] of them they are merged into one (`L1`); once it
//! has [`MERGES_BEFORE_FULL`] merged files, the whole partition is merged (`L2`); and once its
//! day is over, whatever is left becomes one `L2` file. Each merge keeps the file order
//! (visitor, then time) and is written whole before the files it replaces are deleted (see
//! [`super::live_files`] for why a crash in between counts nothing twice).

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
/// Merged files a partition may gather before it is merged whole.
pub const MERGES_BEFORE_FULL: usize = 8;

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

    /// Merges one partition if it needs it; the number of files merged.
    pub fn compact_partition(
        &self,
        day: NaiveDate,
        tenant: &str,
        today: NaiveDate,
    ) -> Result<Option<u64>, AnalyticsError> {
        let dir = self.partition_dir(day, tenant);
        let (live, redundant) =
            live_files(&dir).map_err(|source| AnalyticsError::io(&dir, source))?;
        for path in redundant {
            remove(&path)?;
        }
        let parts: Vec<&(FileName, PathBuf)> =
            live.iter().filter(|(name, _)| name.level == 0).collect();
        let merged = live.iter().filter(|(name, _)| name.level == 1).count();
        let (level, inputs): (u8, Vec<&(FileName, PathBuf)>) =
            if (day < today && live.len() > 1) || merged >= MERGES_BEFORE_FULL {
                (2, live.iter().collect())
            } else if parts.len() >= PARTS_BEFORE_MERGE {
                (1, parts)
            } else {
                return Ok(None);
            };
        let end = inputs.iter().map(|(name, _)| name.end).max().unwrap_or(0);
        let name = FileName {
            level,
            start: 0,
            end,
        };
        let paths: Vec<PathBuf> = inputs.iter().map(|(_, path)| path.clone()).collect();
        merge_files(&paths, &dir.join(name.text()))?;
        for path in &paths {
            remove(path)?;
        }
        remove_temporary(&dir)?;
        Ok(Some(paths.len() as u64))
    }

    /// Drops every day before `cutoff`; the days dropped.
    pub fn drop_days_before(&self, cutoff: NaiveDate) -> Result<Vec<NaiveDate>, AnalyticsError> {
        let mut dropped = Vec::new();
        for day in self.days()?.into_iter().filter(|day| *day < cutoff) {
            let dir = self.day_dir(day);
            std::fs::remove_dir_all(&dir).map_err(|source| AnalyticsError::io(&dir, source))?;
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
                Ok(()) => erased += 1,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(AnalyticsError::io(&dir, source)),
            }
        }
        Ok(erased)
    }
}

/// Rows a merge reads from each input at a time.
const READ_ROWS: usize = 8 << 10;
/// Rows a merge gathers before handing them to the writer.
const WRITE_ROWS: usize = 64 << 10;

/// Merges the rows of `paths`, each already in file order, into one file `target` in file
/// order. It streams: a few thousand rows of each input are in memory at once, plus the row
/// group being written, so its memory no longer grows with the partition (reading it all at
/// once took about 0.7 KB a row; see `docs/performance.md`).
fn merge_files(paths: &[PathBuf], target: &std::path::Path) -> Result<(), AnalyticsError> {
    merge_files_in(paths, target, READ_ROWS, WRITE_ROWS)
}

fn merge_files_in(
    paths: &[PathBuf],
    target: &std::path::Path,
    read_rows: usize,
    write_rows: usize,
) -> Result<(), AnalyticsError> {
    let mut inputs = Vec::with_capacity(paths.len());
    for path in paths {
        if let Some(input) = Input::open(path, read_rows)? {
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
    let mut gathered: Vec<(usize, usize)> = Vec::with_capacity(write_rows);
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
        if gathered.len() == write_rows || next.is_empty() {
            let batches: Vec<&RecordBatch> = held.iter().collect();
            writer.write(&interleave_record_batch(&batches, &gathered)?)?;
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
    std::fs::rename(&temporary, target).map_err(|source| AnalyticsError::io(target, source))?;
    match target.parent() {
        Some(dir) => super::sync_dir(dir),
        None => Ok(()),
    }
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
        merge_files_in(&paths, &target, 7, 50).unwrap();

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
}
