//! Decoded columns of the store's files, kept in memory between queries.
//!
//! A dashboard asks the same month of the same tenant again and again, and most of a query's
//! time is spent decoding Parquet pages into Arrow arrays. The files never change once
//! written (a merge writes new files and deletes the old), so a column decoded once stays
//! right: it is kept by file path, length and modification time, and by column, within a
//! budget of bytes (least recently used out first). A column not in memory is read from the
//! file alone with the others missing, so what one query decodes serves the next whatever
//! else it asks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use moka::sync::Cache;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};

use super::schema;
use crate::AnalyticsError;

/// One column of one file, as decoded: a piece per batch.
type Pieces = Arc<Vec<ArrayRef>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    column: &'static str,
}

/// The cache; cheap to clone (one cache behind it).
#[derive(Clone)]
pub struct ColumnCache {
    columns: Option<Cache<Key, Pieces>>,
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
        }
    }

    /// The batches of `path` with `columns` (by name, in that order), `batch_rows` rows each.
    pub fn batches(
        &self,
        path: &Path,
        columns: &[&'static str],
        batch_rows: usize,
    ) -> Result<Vec<RecordBatch>, AnalyticsError> {
        let Some(cache) = &self.columns else {
            return read(path, columns, batch_rows);
        };
        let metadata =
            std::fs::metadata(path).map_err(|source| AnalyticsError::io(path, source))?;
        let key = |column: &'static str| Key {
            path: path.to_owned(),
            len: metadata.len(),
            modified: metadata.modified().ok(),
            column,
        };
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
            let batches = read(path, &missing, batch_rows)?;
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
        }
        let found: Vec<Pieces> = found.into_iter().flatten().collect();
        assemble(columns, &found)
    }
}

/// Reads `columns` of `path` from the file.
pub(super) fn read(
    path: &Path,
    columns: &[&'static str],
    batch_rows: usize,
) -> Result<Vec<RecordBatch>, AnalyticsError> {
    let file = std::fs::File::open(path).map_err(|source| AnalyticsError::io(path, source))?;
    let schema = schema::read_schema();
    let options = ArrowReaderOptions::new().with_schema(Arc::clone(&schema));
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)?;
    let indices: Vec<usize> = columns
        .iter()
        .filter_map(|name| schema.index_of(name).ok())
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(batch_rows)
        .build()?;
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    // The reader keeps the file's column order; callers name theirs.
    batches
        .into_iter()
        .map(|batch| {
            let arrays = columns
                .iter()
                .map(|name| {
                    batch.column_by_name(name).cloned().ok_or_else(|| {
                        AnalyticsError::Corrupt(format!("{}: no column `{name}`", path.display()))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RecordBatch::try_new(projected(columns), arrays)?)
        })
        .collect()
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
