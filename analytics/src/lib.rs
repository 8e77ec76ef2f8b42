//! Scan analytics: where the scan events end up, and how tenants read them.
//!
//! - [`query`]: the questions ([`ScansQuery`]) and answers ([`Answer`]) every engine shares.
//! - [`embedded`]: the default store — Parquet files by day and tenant in the data folder,
//!   fed from the daily event files by an in-process ingest, queried in process; on the
//!   Kafka pool a [`relay`] writes those files from the events topic.
//! - [`reference`]: the plainly right answer from events in memory, that tests hold the
//!   engines to; [`synthetic`]: realistic made-up events for tests and benchmarks.
//!
//! The scan path never waits for any of it: events reach the store through the `scans`
//! writer's files (or the Kafka events topic) and an ingest that runs apart.

pub mod clickhouse;
pub mod conversions;
pub mod embedded;
pub mod experiment;
pub mod feed;
pub mod query;
pub mod reference;
pub mod relay;
pub mod routes;
pub mod store;
pub mod synthetic;

use std::path::{Path, PathBuf};

pub use feed::{FileFeed, KafkaFeed};
pub use query::{Answer, Dimension, Granularity, Row, ScansQuery, Totals};
pub use relay::TopicRelay;
pub use routes::{AnalyticsService, router};
pub use store::Store;

/// Why the analytics store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("analytics file `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading or writing Parquet")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("building columns")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("the analytics store holds something unexpected: {0}")]
    Corrupt(String),
    #[error("ClickHouse")]
    ClickHouse(#[from] ::clickhouse::error::Error),
    #[error("the events topic")]
    Kafka(#[source] rdkafka::error::KafkaError),
    #[error("the query was abandoned: whoever asked has gone")]
    Abandoned,
    #[error("applying the ClickHouse schema file `{0}`")]
    Schema(&'static str, #[source] ::clickhouse::error::Error),
}

impl AnalyticsError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        AnalyticsError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
