//! The pool: pre-generated codes waiting to be bound.
//!
//! Pregen writes with a [`PoolWriter`]; binders read with a [`PoolReader`]. Both come in
//! two backends chosen by `pool.backend`, behind one enum each so that nothing above this
//! crate knows which one runs:
//!
//! - [`embedded`]: a table in a local SQLite file; one process owns it.
//! - [`kafka`]: a topic with partitions; binders form one consumer group.
//!
//! Delivery is **at least once**: a [`Delivery`] taken and never [acked](PoolReader::ack)
//! comes back (after a crash, a rebalance, or [`PoolReader::give_back`]). Binding is made
//! at most once one level up, by the binding store's unique key: a redelivered code that is
//! already bound is acked and skipped.

pub mod embedded;
pub mod kafka;
mod offsets;

use std::time::Duration;

use records::PoolRecord;

pub use embedded::EmbeddedPool;
pub use kafka::{KafkaReader, KafkaWriter};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("embedded pool database failed")]
    Embedded(#[from] sqlx::Error),
    #[error("embedded pool migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("Kafka failed")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("Kafka topic `{topic}` cannot be created: {reason}")]
    Topic { topic: String, reason: String },
    #[error("embedded pool folder `{path}` cannot be created")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One code taken from the pool, and what the pool needs to ack it.
#[derive(Debug)]
pub struct Delivery {
    pub record: PoolRecord,
    receipt: Receipt,
}

#[derive(Debug, Clone, Copy)]
enum Receipt {
    Embedded { seq: i64 },
    Kafka { partition: i32, offset: i64 },
}

/// Codes waiting in one partition of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDepth {
    pub partition: String,
    pub depth: u64,
}

/// Enqueues pre-generated codes.
#[derive(Debug, Clone)]
pub enum PoolWriter {
    Embedded(EmbeddedPool),
    Kafka(KafkaWriter),
}

impl PoolWriter {
    /// Enqueues every record; returns once all of them are durable in the pool.
    pub async fn push(&self, records: &[PoolRecord]) -> Result<(), PoolError> {
        match self {
            PoolWriter::Embedded(pool) => pool.push(records).await,
            PoolWriter::Kafka(writer) => writer.push(records).await,
        }
    }

    /// Codes enqueued and not yet bound.
    pub async fn depth(&self) -> Result<u64, PoolError> {
        match self {
            PoolWriter::Embedded(pool) => pool.depth().await,
            PoolWriter::Kafka(writer) => writer.depth().await,
        }
    }

    /// Depth per partition (Kafka: the binder group's lag on each; embedded: one table).
    pub async fn status(&self) -> Result<Vec<PartitionDepth>, PoolError> {
        match self {
            PoolWriter::Embedded(pool) => Ok(vec![PartitionDepth {
                partition: "embedded".to_owned(),
                depth: pool.depth().await?,
            }]),
            PoolWriter::Kafka(writer) => Ok(writer
                .depth_per_partition()
                .await?
                .into_iter()
                .map(|(partition, depth)| PartitionDepth {
                    partition: format!("{}/{partition}", writer.topic()),
                    depth,
                })
                .collect()),
        }
    }

    /// Delivers whatever is still buffered.
    pub async fn flush(&self) -> Result<(), PoolError> {
        match self {
            PoolWriter::Embedded(_) => Ok(()),
            PoolWriter::Kafka(writer) => writer.flush().await,
        }
    }
}

/// Takes pre-generated codes for binding.
#[derive(Debug, Clone)]
pub enum PoolReader {
    Embedded(EmbeddedPool),
    Kafka(KafkaReader),
}

impl PoolReader {
    /// The next code, waiting up to `wait` when the pool is dry; `None` means still dry.
    pub async fn take(&self, wait: Duration) -> Result<Option<Delivery>, PoolError> {
        match self {
            PoolReader::Embedded(pool) => pool.take(wait).await,
            PoolReader::Kafka(reader) => Ok(reader.take(wait).await),
        }
    }

    /// The code is bound (or was found bound already): it must never be delivered again.
    pub fn ack(&self, delivery: &Delivery) {
        match (self, delivery.receipt) {
            (PoolReader::Embedded(pool), Receipt::Embedded { seq }) => pool.ack(seq),
            (PoolReader::Kafka(reader), Receipt::Kafka { partition, offset }) => {
                reader.ack(partition, offset)
            }
            _ => tracing::error!("a delivery was acked on a pool of another backend"),
        }
    }

    /// The code was not bound: hand it to the next taker.
    pub fn give_back(&self, delivery: Delivery) {
        match self {
            PoolReader::Embedded(pool) => pool.give_back(delivery),
            PoolReader::Kafka(reader) => reader.give_back(delivery),
        }
    }

    /// Whether the backend answers; for `/readyz`.
    pub async fn check(&self) -> Result<(), PoolError> {
        match self {
            PoolReader::Embedded(pool) => pool.depth().await.map(drop),
            PoolReader::Kafka(reader) => reader.check().await,
        }
    }

    /// Makes every ack so far durable; codes taken and not acked will be delivered again.
    pub async fn close(&self) -> Result<(), PoolError> {
        match self {
            PoolReader::Embedded(pool) => pool.flush_acks().await,
            PoolReader::Kafka(reader) => reader.close().await,
        }
    }
}

/// Counts a record that could not be decoded; it is skipped so it cannot block the pool.
fn record_undecodable(error: &records::DecodeError) {
    tracing::warn!(error = %error, "skipping an unreadable pool record");
    metrics::counter!("pool_records_undecodable_total").increment(1);
}
