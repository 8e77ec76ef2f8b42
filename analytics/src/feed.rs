//! Feeding the store: the tasks that move scan events into it.
//!
//! - [`FileFeed`] (embedded): every `analytics.flush_secs`, an ingest round from the daily
//!   event files into Parquet; every minute, merges and retention. Runs inside the process
//!   that writes the event files (`qrpool up`, or `qrpool middle-page` on the embedded pool).
//!   On the Kafka pool the events come from the topic through a
//!   [`TopicRelay`](crate::TopicRelay) in the process that serves the analytics API.
//! - [`KafkaFeed`] (ClickHouse): `qrpool analytics ingest`, a consumer group on the events
//!   topic that inserts batches and commits offsets only after ClickHouse took them. A
//!   crash between the two delivers the batch again; the event ids make that harmless.
//!
//! Both export `analytics_lag_seconds`: how old the oldest event of the last batch was when
//! it became queryable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use config::Settings;
use records::ScanEvent;

use crate::AnalyticsError;
use crate::clickhouse::{ClickHouseStore, cutoff};
use crate::embedded::ingest::{Ingest, Round};
use crate::embedded::{EmbeddedStore, background};
use crate::relay::Appending;

/// How often merges and retention run.
const MAINTAIN_EVERY: Duration = Duration::from_secs(60);

fn record_lag(oldest: Option<chrono::DateTime<Utc>>) {
    if let Some(oldest) = oldest {
        let lag = (Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::gauge!("analytics_lag_seconds").set(lag);
    }
}

/// The embedded store's ingest, as a task.
#[derive(Debug)]
pub struct FileFeed {
    /// `None` after a round panicked (a bug), until it is opened again from its checkpoint.
    ingest: Option<Ingest>,
    store: EmbeddedStore,
    events_dir: PathBuf,
    every: Duration,
    retention_days: u32,
    /// Held while a round reads the files, when a [`TopicRelay`](crate::TopicRelay) writes them.
    appending: Option<Appending>,
}

impl FileFeed {
    /// The feed of `<data_dir>/scans/*.jsonl` into `store`.
    pub fn open(
        store: EmbeddedStore,
        events_dir: &Path,
        settings: &Settings,
    ) -> Result<FileFeed, AnalyticsError> {
        Ok(FileFeed {
            ingest: Some(Ingest::open(store.clone(), events_dir)?),
            store,
            events_dir: events_dir.to_owned(),
            every: Duration::from_secs(settings.analytics.flush_secs),
            retention_days: settings.analytics.retention_days,
            appending: None,
        })
    }

    /// Reads the files only while `appending` is free: they are a relay's
    /// ([`TopicRelay::appending`](crate::TopicRelay::appending)).
    pub fn appended_under(mut self, appending: Appending) -> FileFeed {
        self.appending = Some(appending);
        self
    }

    /// Ingests until `stop`, then gives itself back for the last round ([`FileFeed::finish`]).
    pub async fn run(mut self, stop: CancellationToken) -> FileFeed {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut maintained = Instant::now();
        let mut backlog = false;
        loop {
            if !backlog {
                tokio::select! {
                    () = stop.cancelled() => return self,
                    _ = tick.tick() => {}
                }
            } else if stop.is_cancelled() {
                return self;
            }
            let round = self.round().await;
            backlog = round.is_some_and(|round| round.more);
            if maintained.elapsed() >= MAINTAIN_EVERY {
                maintained = Instant::now();
                let retention_days = self.retention_days;
                self.blocking(move |ingest| {
                    maintain(ingest, Utc::now().date_naive(), retention_days)
                })
                .await;
            }
        }
    }

    /// One last round, for the events written at shutdown.
    pub async fn finish(mut self) {
        if let Some(round) = self.round().await {
            tracing::info!(events = round.events, "scan events ingested at shutdown");
        }
    }

    async fn round(&mut self) -> Option<Round> {
        let appending = self.appending.clone();
        let round = self
            .blocking(move |ingest| {
                let _held = appending.as_ref().map(Appending::hold);
                ingest.round()
            })
            .await?;
        metrics::counter!("analytics_ingested_events_total").increment(round.events);
        metrics::counter!("analytics_ingest_skipped_total").increment(round.skipped);
        record_lag(round.oldest);
        if round.events > 0 {
            tracing::debug!(
                events = round.events,
                files = round.files_written,
                "scan events ingested"
            );
        }
        Some(round)
    }

    /// Runs `work` on the ingest on a blocking thread; `None` when it failed (logged and
    /// counted: the next round tries again).
    async fn blocking<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Ingest) -> Result<T, AnalyticsError> + Send + 'static,
    ) -> Option<T> {
        let mut ingest = match self.ingest.take() {
            Some(ingest) => ingest,
            None => match Ingest::open(self.store.clone(), &self.events_dir) {
                Ok(ingest) => ingest,
                Err(error) => {
                    metrics::counter!("analytics_ingest_errors_total").increment(1);
                    tracing::warn!(%error, "reopening the analytics ingest failed; retrying later");
                    return None;
                }
            },
        };
        let done = tokio::task::spawn_blocking(move || {
            let result = work(&mut ingest);
            (ingest, result)
        })
        .await;
        match done {
            Ok((ingest, Ok(value))) => {
                self.ingest = Some(ingest);
                Some(value)
            }
            Ok((ingest, Err(error))) => {
                self.ingest = Some(ingest);
                metrics::counter!("analytics_ingest_errors_total").increment(1);
                tracing::warn!(error = %error, source = ?std::error::Error::source(&error), "analytics ingest or upkeep failed; retrying later");
                None
            }
            // A panic is a bug; the ingest is opened again from its checkpoint next time,
            // which also removes whatever the interrupted round left.
            Err(error) => {
                metrics::counter!("analytics_ingest_errors_total").increment(1);
                tracing::error!(%error, "the analytics ingest panicked; it starts again from its checkpoint");
                None
            }
        }
    }
}

/// Merges, then retention: days before the cutoff leave the store and the event files.
fn maintain(
    ingest: &mut Ingest,
    today: chrono::NaiveDate,
    retention_days: u32,
) -> Result<(), AnalyticsError> {
    // On the threads below the API's: a merge rewrites today's partition, and the binds
    // and scans come first (the ingest waits for it; events are then queryable later, and
    // `analytics_lag_seconds` says by how much).
    let store = ingest.store().clone();
    let merged = background::merge(|| store.compact(today))?;
    metrics::counter!("analytics_files_merged_total").increment(merged.files_merged);
    let cutoff = cutoff(today, retention_days);
    let dropped = ingest.store().drop_days_before(cutoff)?;
    if !dropped.is_empty() {
        tracing::info!(days = dropped.len(), %cutoff, "dropped analytics days past retention");
        metrics::counter!("analytics_days_dropped_total").increment(dropped.len() as u64);
    }
    // The raw event files of those days go too: retention covers every copy.
    let events_dir = ingest.events_dir().to_owned();
    if let Ok(entries) = std::fs::read_dir(&events_dir) {
        for entry in entries.flatten() {
            let old = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_suffix(".jsonl"))
                .and_then(|day| chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok())
                .is_some_and(|day| day < cutoff);
            if old {
                std::fs::remove_file(entry.path())
                    .map_err(|source| AnalyticsError::io(&entry.path(), source))?;
            }
        }
    }
    ingest.forget_before(cutoff)
}

/// `qrpool analytics ingest`: the events topic into ClickHouse.
#[derive(Debug)]
pub struct KafkaFeed {
    consumer: ConsumerHandle,
    store: ClickHouseStore,
    batch: usize,
    every: Duration,
    retention_days: u32,
}

/// A consumer, wrapped so that what holds it can be `Debug`.
pub(crate) struct ConsumerHandle(pub(crate) Arc<StreamConsumer>);

impl std::fmt::Debug for ConsumerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamConsumer")
    }
}

impl KafkaFeed {
    /// Joins the ingest group on the events topic.
    pub fn connect(
        settings: &Settings,
        store: ClickHouseStore,
    ) -> Result<KafkaFeed, AnalyticsError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka.brokers)
            .set("group.id", &settings.analytics.clickhouse.ingest_group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                settings.kafka.session_timeout_ms.to_string(),
            )
            .create()
            .map_err(AnalyticsError::Kafka)?;
        consumer
            .subscribe(&[&settings.kafka.events_topic])
            .map_err(AnalyticsError::Kafka)?;
        Ok(KafkaFeed {
            consumer: ConsumerHandle(Arc::new(consumer)),
            store,
            batch: settings.analytics.clickhouse.batch,
            every: Duration::from_secs(settings.analytics.flush_secs),
            retention_days: settings.analytics.retention_days,
        })
    }

    /// Inserts batches until `stop`; the batch in hand when it comes is inserted first.
    pub async fn run(self, stop: CancellationToken) -> Result<(), AnalyticsError> {
        let mut maintained: Option<Instant> = None;
        loop {
            if maintained.is_none_or(|at| at.elapsed() >= MAINTAIN_EVERY) {
                maintained = Some(Instant::now());
                let cutoff = cutoff(Utc::now().date_naive(), self.retention_days);
                match self.store.drop_days_before(cutoff).await {
                    Ok(dropped) if !dropped.is_empty() => {
                        metrics::counter!("analytics_days_dropped_total")
                            .increment(dropped.len() as u64);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "dropping old days failed; retrying later")
                    }
                }
            }
            let Batch {
                events,
                next,
                skipped,
            } = read_batch(&self.consumer, self.batch, self.every, &stop).await?;
            let mut offsets = TopicPartitionList::new();
            for ((topic, partition), offset) in next {
                offsets
                    .add_partition_offset(&topic, partition, Offset::Offset(offset))
                    .map_err(AnalyticsError::Kafka)?;
            }
            metrics::counter!("analytics_ingest_skipped_total").increment(skipped);
            if !events.is_empty() {
                self.insert(&events, &stop).await?;
                metrics::counter!("analytics_ingested_events_total").increment(events.len() as u64);
                record_lag(events.iter().map(|event| event.at).min());
            }
            if offsets.count() > 0 {
                self.consumer
                    .0
                    .commit(&offsets, CommitMode::Sync)
                    .map_err(AnalyticsError::Kafka)?;
            }
            if stop.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Inserts, retrying with backoff while ClickHouse is away (the offsets wait).
    async fn insert(
        &self,
        events: &[ScanEvent],
        stop: &CancellationToken,
    ) -> Result<(), AnalyticsError> {
        let mut wait = Duration::from_millis(200);
        loop {
            match self.store.insert(events).await {
                Ok(_) => return Ok(()),
                Err(error) if !stop.is_cancelled() => {
                    metrics::counter!("analytics_ingest_errors_total").increment(1);
                    tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "inserting scan events into ClickHouse failed");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// What [`read_batch`] read.
pub(crate) struct Batch {
    /// The messages that were scan events of a tenant.
    pub(crate) events: Vec<ScanEvent>,
    /// By topic and partition: the offset after the last message read.
    pub(crate) next: BTreeMap<(String, i32), i64>,
    /// Messages that were no events, or events of no tenant (a scan of an unknown code).
    pub(crate) skipped: u64,
}

/// Up to `most` events from `consumer`, or what came within `every` (or until `stop`).
pub(crate) async fn read_batch(
    consumer: &ConsumerHandle,
    most: usize,
    every: Duration,
    stop: &CancellationToken,
) -> Result<Batch, AnalyticsError> {
    let mut batch = Batch {
        events: Vec::new(),
        next: BTreeMap::new(),
        skipped: 0,
    };
    let deadline = tokio::time::sleep(every);
    tokio::pin!(deadline);
    while batch.events.len() < most {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            () = &mut deadline => break,
            message = consumer.0.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "reading the events topic failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        batch.next.insert(
            (message.topic().to_owned(), message.partition()),
            message.offset() + 1,
        );
        match message.payload().map(ScanEvent::from_json) {
            Some(Ok(event)) if event.tenant.is_some() => batch.events.push(event),
            _ => batch.skipped += 1,
        }
    }
    Ok(batch)
}
