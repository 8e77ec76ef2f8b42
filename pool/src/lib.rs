//! The pool: pre-generated codes waiting to be bound.
//!
//! Pregen writes with a [`PoolWriter`]; binders read with a [`PoolReader`]. Both come in
//! two backends chosen by `pool.backend`, behind one enum each so that nothing above this
//! crate knows which one runs:
//!
//! - [`embedded`]: a table in a local SQLite file; one process owns it.
//! - [`kafka`]: topics with partitions; binders form consumer groups.
//!
//! The pool has one **lane** per issuer: a writer puts each code in the lane of the issuer
//! that made it, a reader takes from one lane. So the depth of each issuer's codes is read
//! from the pool itself, and a caller who needs a mini-program code never gets a plain one.
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

pub use embedded::{EmbeddedLane, EmbeddedPool};
pub use kafka::{KafkaReader, KafkaWriter};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("embedded pool database failed")]
    Embedded(#[from] sqlx::Error),
    #[error("embedded pool migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("Kafka failed")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("Kafka topic `{topic}`: {reason}")]
    Topic { topic: String, reason: String },
    #[error(transparent)]
    Starved(#[from] kafka::Starved),
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
    Embedded {
        seq: i64,
    },
    Kafka {
        partition: i32,
        offset: i64,
        /// The assignment of its partition it was delivered under (see `offsets`).
        epoch: u64,
    },
}

/// Codes waiting in one partition of one issuer's lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDepth {
    pub issuer: String,
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
    /// Enqueues every record in its issuer's lane; returns once all are durable in the pool.
    pub async fn push(&self, records: &[PoolRecord]) -> Result<(), PoolError> {
        match self {
            PoolWriter::Embedded(pool) => pool.push(records).await,
            PoolWriter::Kafka(writer) => writer.push(records).await,
        }
    }

    /// Codes of `issuer` enqueued and not yet bound.
    pub async fn depth(&self, issuer: &str) -> Result<u64, PoolError> {
        match self {
            PoolWriter::Embedded(pool) => pool.depth(issuer).await,
            PoolWriter::Kafka(writer) => writer.depth(issuer).await,
        }
    }

    /// Depth per issuer and partition, for every lane the pool holds (Kafka: each lane
    /// group's lag per partition; embedded: a count per lane).
    pub async fn status(&self) -> Result<Vec<PartitionDepth>, PoolError> {
        match self {
            PoolWriter::Embedded(pool) => Ok(pool
                .depth_per_issuer()
                .await?
                .into_iter()
                .map(|(issuer, depth)| PartitionDepth {
                    issuer,
                    partition: "embedded".to_owned(),
                    depth,
                })
                .collect()),
            PoolWriter::Kafka(writer) => {
                let mut partitions = Vec::new();
                for issuer in writer.issuers().await? {
                    let topic = writer.lane_topic(&issuer);
                    for (partition, depth) in writer.depth_per_partition(&issuer).await? {
                        partitions.push(PartitionDepth {
                            issuer: issuer.clone(),
                            partition: format!("{topic}/{partition}"),
                            depth,
                        });
                    }
                }
                Ok(partitions)
            }
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

/// Takes pre-generated codes of one issuer for binding.
#[derive(Debug, Clone)]
pub enum PoolReader {
    Embedded(EmbeddedLane),
    Kafka(KafkaReader),
}

impl PoolReader {
    /// The issuer whose lane this reader takes from.
    pub fn issuer(&self) -> &str {
        match self {
            PoolReader::Embedded(lane) => lane.issuer(),
            PoolReader::Kafka(reader) => reader.issuer(),
        }
    }

    /// The next code, waiting up to `wait` when the pool is dry; `None` means still dry.
    pub async fn take(&self, wait: Duration) -> Result<Option<Delivery>, PoolError> {
        // A bind's wait for its code, beside `bindings_commit_seconds` (its wait for the
        // durable write): together they say which of the two a slow bind waited on.
        let started = std::time::Instant::now();
        let taken = match self {
            PoolReader::Embedded(pool) => pool.take(wait).await,
            PoolReader::Kafka(reader) => Ok(reader.take(wait).await),
        };
        metrics::histogram!("pool_take_seconds").record(started.elapsed().as_secs_f64());
        taken
    }

    /// The code is bound (or was found bound already): it must never be delivered again.
    pub fn ack(&self, delivery: &Delivery) {
        match (self, delivery.receipt) {
            (PoolReader::Embedded(pool), Receipt::Embedded { seq }) => pool.ack(seq),
            (
                PoolReader::Kafka(reader),
                Receipt::Kafka {
                    partition,
                    offset,
                    epoch,
                },
            ) => reader.ack(partition, offset, epoch),
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
            PoolReader::Embedded(lane) => lane.check().await,
            PoolReader::Kafka(reader) => reader.check().await,
        }
    }

    /// Fails while this reader takes no code from a lane that has codes (a Kafka reader left
    /// without partitions; see [`KafkaReader`]); for `/readyz`, where it is optional: binds
    /// still succeed, on codes drawn on demand.
    pub fn holding_check(&self) -> Result<(), PoolError> {
        match self {
            PoolReader::Embedded(_) => Ok(()),
            PoolReader::Kafka(reader) => reader.holding_check(),
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
