//! Keeping the store small and within its retention: merging a partition's files, dropping
//! old days, erasing a tenant.
//!
//! An ingest round writes one small file per active tenant every few seconds. During the day,
//! once a partition has [`PARTS_BEFORE_MERGE`] of them they are merged into one (`L1`); once it
//! has [`MERGES_BEFORE_FULL`] merged files, the whole partition is merged (`L2`); and once its
//! day is over, whatever is left becomes one `L2` file. Each merge keeps the file order
//! (visitor, then time) and is written whole before the files it replaces are deleted (see
//! [`super::live_files`] for why a crash in between counts nothing twice).

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMicrosecondType, UInt64Type};
use arrow_array::{Array, RecordBatch, UInt32Array};
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};

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

/// Reads every row of `paths`, puts them in file order and writes them as `target`.
fn merge_files(paths: &[PathBuf], target: &std::path::Path) -> Result<(), AnalyticsError> {
    let mut batches = Vec::new();
    for path in paths {
        let file = std::fs::File::open(path).map_err(|source| AnalyticsError::io(path, source))?;
        // Read as written (plain text columns), whatever schema the file's metadata names.
        let options = ArrowReaderOptions::new().with_schema(schema::schema());
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)?
            .with_batch_size(1 << 16)
            .build()?;
        for batch in reader {
            batches.push(batch?);
        }
    }
    let all = arrow_select::concat::concat_batches(&schema::schema(), &batches)?;
    let sorted = in_file_order(&all)?;
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
    writer.write(&sorted)?;
    let file = writer.into_inner()?;
    file.sync_data()
        .map_err(|source| AnalyticsError::io(&temporary, source))?;
    std::fs::rename(&temporary, target).map_err(|source| AnalyticsError::io(target, source))?;
    match target.parent() {
        Some(dir) => super::sync_dir(dir),
        None => Ok(()),
    }
}

/// `batch`'s rows by visitor (unknown last), then time.
fn in_file_order(batch: &RecordBatch) -> Result<RecordBatch, AnalyticsError> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| AnalyticsError::Corrupt(format!("a scans file without `{name}`")))
    };
    let visitors = column("visitor")?;
    let visitors = visitors.as_primitive::<UInt64Type>();
    let times = column("at")?;
    let times = times.as_primitive::<TimestampMicrosecondType>();
    let mut order: Vec<u32> = (0..u32::try_from(batch.num_rows()).unwrap_or(u32::MAX)).collect();
    order.sort_by_key(|&row| {
        let row = row as usize;
        let visitor = visitors.is_valid(row).then(|| visitors.value(row));
        (visitor.is_none(), visitor, times.value(row))
    });
    let indices = UInt32Array::from(order);
    let columns = arrow_select::take::take_arrays(batch.columns(), &indices, None)?;
    Ok(RecordBatch::try_new(
        Arc::clone(batch.schema_ref()),
        columns,
    )?)
}
