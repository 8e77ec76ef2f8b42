//! Decoded columns of the store's files, kept in memory between queries.
//!
//! A dashboard asks the same month of the same tenant again and again, and most of a query's
//! time is spent decoding Parquet pages into Arrow arrays. The files never change once
//! written (a merge writes new files and deletes the old), so a column decoded once stays
//! right: it is kept by file path, length and modification time, and by column, within a
//! budget of bytes (least recently used out first). A column not in memory is read from the
//! file alone with the others missing, so what one query decodes serves the next whatever
//! else it asks.
//!
//! A file too large for its share of the budget (today's partition, merged, late in a busy
//! day) is not kept: it is decoded a batch at a time, each batch dropped once counted, so
//! that what a query holds stays bounded however large the day grows.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use moka::sync::Cache;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};

use super::schema;
use crate::AnalyticsError;

/// One column of one file, as decoded: a piece per batch.
type Pieces = Arc<Vec<ArrayRef>>;

/// A file as it is on disk: a merge replaces files, it never changes one, so what was read
/// of a file stays right while its length and modification time are the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileId {
    pub path: PathBuf,
    pub len: u64,
    pub modified: Option<SystemTime>,
}

impl FileId {
    pub fn of(path: &Path) -> Result<FileId, AnalyticsError> {
        let metadata =
            std::fs::metadata(path).map_err(|source| AnalyticsError::io(path, source))?;
        Ok(FileId {
            path: path.to_owned(),
            len: metadata.len(),
            modified: metadata.modified().ok(),
        })
    }
}

type Key = (FileId, &'static str);

/// The share of the budget one file's decoded columns may take to be kept; a larger file is
/// streamed. A sixteenth keeps a month of a busy tenant's days (each a few MiB) and leaves
/// room for the rest.
const LARGEST_SHARE: u64 = 16;
/// Bytes a decoded value takes at most, to size a file before decoding it: 8 for times and
/// visitor digests, 4 for dictionary keys, less for flags.
const VALUE_BYTES: u64 = 8;

/// The cache; cheap to clone (one cache behind it).
#[derive(Clone)]
pub struct ColumnCache {
    columns: Option<Cache<Key, Pieces>>,
    /// Bytes of decoded columns above which a file is streamed instead of kept.
    largest_file: u64,
}

impl std::fmt::Debug for ColumnCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColumnCache")
            .field(
                "kib",
                &self.columns.as_ref().map(|cache| cache.weighted_size()),
            )
            .finish()
    }
}

impl ColumnCache {
    /// Keeps up to `bytes` of decoded columns; 0 keeps none (every query reads the files).
    pub fn new(bytes: u64) -> Self {
        let kib = bytes / 1024;
        ColumnCache {
            columns: (kib > 0).then(|| {
                Cache::builder()
                    .max_capacity(kib)
                    .weigher(|_: &Key, pieces: &Pieces| {
                        let bytes: usize = pieces
                            .iter()
                            .map(|array| array.get_array_memory_size())
                            .sum();
                        u32::try_from(bytes / 1024 + 1).unwrap_or(u32::MAX)
                    })
                    .build()
            }),
            largest_file: bytes / LARGEST_SHARE,
        }
    }

    /// Bytes of decoded columns kept now, once the cache has settled what it has pending.
    pub fn kept_bytes(&self) -> u64 {
        self.columns.as_ref().map_or(0, |cache| {
            cache.run_pending_tasks();
            cache.weighted_size() * 1024
        })
    }

    /// Lets go of the columns of the files `gone` names (see [`super::answer_cache::AnswerCache::forget`]
    /// for why this is not left to the cache's own evictions).
    pub fn forget(&self, gone: impl Fn(&Path) -> bool) {
        let Some(cache) = &self.columns else {
            return;
        };
        for (key, _) in cache.iter() {
            if gone(&key.0.path) {
                cache.invalidate(&*key);
            }
        }
    }

    /// Calls `each` with the batches of `file` holding `columns` (by name, in that order),
    /// `batch_rows` rows each: from memory when kept, else decoded (and kept when the file
    /// is small enough, streamed when not).
    pub fn for_each_batch(
        &self,
        file: &FileId,
        columns: &[&'static str],
        batch_rows: usize,
        mut each: impl FnMut(&RecordBatch) -> Result<(), AnalyticsError>,
    ) -> Result<(), AnalyticsError> {
        let path = file.path.as_path();
        let Some(cache) = &self.columns else {
            return stream(path, columns, batch_rows, each);
        };
        let key = |column: &'static str| (file.clone(), column);
        let mut found: Vec<Option<Pieces>> = columns
            .iter()
            .map(|column| cache.get(&key(column)))
            .collect();
        let missing: Vec<&'static str> = columns
            .iter()
            .zip(&found)
            .filter(|(_, pieces)| pieces.is_none())
            .map(|(column, _)| *column)
            .collect();
        if !missing.is_empty() {
            let (reader, rows) = open(path, &missing, batch_rows)?;
            if rows.saturating_mul(VALUE_BYTES * missing.len() as u64) > self.largest_file {
                // A file this large is never kept, so all its columns are missing: the
                // reader just opened is the one to stream from.
                if missing.len() == columns.len() {
                    return drain(path, columns, reader, each);
                }
                return stream(path, columns, batch_rows, each);
            }
            let batches = reader
                .map(|batch| in_order(path, &missing, batch?))
                .collect::<Result<Vec<_>, _>>()?;
            for (index, column) in missing.iter().enumerate() {
                let pieces: Pieces = Arc::new(
                    batches
                        .iter()
                        .map(|batch| Arc::clone(batch.column(index)))
                        .collect(),
                );
                cache.insert(key(column), Arc::clone(&pieces));
                if let Some(position) = columns.iter().position(|wanted| wanted == column) {
                    found[position] = Some(pieces);
                }
            }
            // Weighed in KiB; moka settles its evictions lazily, so this runs a little ahead.
            metrics::gauge!("analytics_query_cache_bytes")
                .set((cache.weighted_size() * 1024) as f64);
        }
        let found: Vec<Pieces> = found.into_iter().flatten().collect();
        for batch in assemble(columns, &found)? {
            each(&batch)?;
        }
        Ok(())
    }
}

/// Decodes `columns` of `path` a batch at a time into `each`, keeping none.
pub(super) fn stream(
    path: &Path,
    columns: &[&'static str],
    batch_rows: usize,
    each: impl FnMut(&RecordBatch) -> Result<(), AnalyticsError>,
) -> Result<(), AnalyticsError> {
    let (reader, _) = open(path, columns, batch_rows)?;
    drain(path, columns, reader, each)
}

/// Hands each batch of `reader` (over `columns` of `path`) to `each`, in `columns`' order.
fn drain(
    path: &Path,
    columns: &[&'static str],
    reader: ParquetRecordBatchReader,
    mut each: impl FnMut(&RecordBatch) -> Result<(), AnalyticsError>,
) -> Result<(), AnalyticsError> {
    for batch in reader {
        each(&in_order(path, columns, batch?)?)?;
    }
    Ok(())
}

/// A reader of `columns` of `path` (in the file's order), and the rows the file holds.
fn open(
    path: &Path,
    columns: &[&'static str],
    batch_rows: usize,
) -> Result<(ParquetRecordBatchReader, u64), AnalyticsError> {
    let file = std::fs::File::open(path).map_err(|source| AnalyticsError::io(path, source))?;
    let schema = schema::read_schema();
    let options = ArrowReaderOptions::new().with_schema(Arc::clone(&schema));
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)?;
    let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let indices: Vec<usize> = columns
        .iter()
        .filter_map(|name| schema.index_of(name).ok())
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(batch_rows)
        .build()?;
    Ok((reader, rows))
}

/// A batch as the file holds it, with its columns in the caller's order.
fn in_order(
    path: &Path,
    columns: &[&'static str],
    batch: RecordBatch,
) -> Result<RecordBatch, AnalyticsError> {
    let arrays = columns
        .iter()
        .map(|name| {
            batch.column_by_name(name).cloned().ok_or_else(|| {
                AnalyticsError::Corrupt(format!("{}: no column `{name}`", path.display()))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(projected(columns), arrays)?)
}

fn projected(columns: &[&'static str]) -> SchemaRef {
    let schema = schema::read_schema();
    Arc::new(Schema::new(
        columns
            .iter()
            .filter_map(|name| schema.field_with_name(name).ok().cloned())
            .collect::<Vec<_>>(),
    ))
}

/// Batches again from each column's pieces (every column of one file is cut the same way).
fn assemble(
    columns: &[&'static str],
    pieces: &[Pieces],
) -> Result<Vec<RecordBatch>, AnalyticsError> {
    let schema = projected(columns);
    let count = pieces.first().map_or(0, |first| first.len());
    if pieces.iter().any(|column| column.len() != count) {
        return Err(AnalyticsError::Corrupt(
            "cached columns of one file are cut differently".into(),
        ));
    }
    (0..count)
        .map(|batch| {
            let arrays = pieces
                .iter()
                .map(|column| Arc::clone(&column[batch]))
                .collect();
            Ok(RecordBatch::try_new(Arc::clone(&schema), arrays)?)
        })
        .collect()
}
