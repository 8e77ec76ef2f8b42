//! The Kafka pool: one topic of pre-generated codes, keyed by request id so that they spread
//! over the partitions; binders read it as one consumer group.
//!
//! Writer: an idempotent producer (`enable.idempotence`, `acks=all`): a retried send never
//! enqueues a code twice. Reader: offsets are *stored* only up to the lowest code still in
//! flight ([`crate::offsets`]) and librdkafka commits the stored offsets; so a binder that
//! dies re-delivers every code it had not bound yet, and nothing more is lost than a
//! re-delivery of codes that the binding store then skips as already bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use config::KafkaSettings;
use records::PoolRecord;

use crate::offsets::OffsetTracker;
use crate::{Delivery, PoolError, Receipt, record_undecodable};

/// How long a metadata or offset request to the brokers may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    config
}

/// Creates the pool topic with the configured partitions when it does not exist yet.
pub async fn ensure_topic(settings: &KafkaSettings) -> Result<(), PoolError> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings).create()?;
    let topic = NewTopic::new(
        &settings.pool_topic,
        settings.partitions,
        TopicReplication::Fixed(settings.replication),
    );
    let options = AdminOptions::new().operation_timeout(Some(BROKER_TIMEOUT));
    for result in admin.create_topics([&topic], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(PoolError::Topic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Enqueues codes on the pool topic.
#[derive(Clone)]
pub struct KafkaWriter {
    producer: FutureProducer,
    /// Never subscribes: it only reads the binder group's committed offsets, for the depth.
    probe: Arc<BaseConsumer>,
    topic: String,
}

impl std::fmt::Debug for KafkaWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaWriter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaWriter {
    pub async fn connect(settings: &KafkaSettings) -> Result<Self, PoolError> {
        ensure_topic(settings).await?;
        let mut producer = base_config(settings);
        producer
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        for (key, value) in &settings.producer_options {
            producer.set(key, value);
        }
        let producer: FutureProducer = producer.create()?;
        let probe: BaseConsumer = base_config(settings)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .create()?;
        Ok(KafkaWriter {
            producer,
            probe: Arc::new(probe),
            topic: settings.pool_topic.clone(),
        })
    }

    pub(crate) async fn push(&self, records: &[PoolRecord]) -> Result<(), PoolError> {
        let sends = records.iter().map(|record| {
            let key = record.request_id.to_text();
            let payload = record.encode();
            async move {
                let message = FutureRecord::to(&self.topic)
                    .key(key.as_bytes())
                    .payload(&payload);
                self.producer
                    .send(message, Timeout::After(BROKER_TIMEOUT))
                    .await
                    .map(drop)
                    .map_err(|(error, _)| error)
            }
        });
        futures::future::try_join_all(sends).await?;
        Ok(())
    }

    /// Codes between the binder group's committed offsets and the end of each partition.
    pub(crate) async fn depth(&self) -> Result<u64, PoolError> {
        Ok(self
            .depth_per_partition()
            .await?
            .iter()
            .map(|(_, depth)| depth)
            .sum())
    }

    /// The binder group's lag on each partition of the pool topic.
    pub(crate) async fn depth_per_partition(&self) -> Result<Vec<(i32, u64)>, PoolError> {
        let probe = Arc::clone(&self.probe);
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || depth_blocking(&probe, &topic))
            .await
            .map_err(|_| PoolError::Kafka(KafkaError::Canceled))?
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub(crate) async fn flush(&self) -> Result<(), PoolError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(BROKER_TIMEOUT)))
            .await
            .map_err(|_| PoolError::Kafka(KafkaError::Canceled))??;
        Ok(())
    }
}

fn depth_blocking(probe: &BaseConsumer, topic: &str) -> Result<Vec<(i32, u64)>, PoolError> {
    let metadata = probe.fetch_metadata(Some(topic), BROKER_TIMEOUT)?;
    let mut partitions = TopicPartitionList::new();
    for meta in metadata.topics().iter().filter(|t| t.name() == topic) {
        for partition in meta.partitions() {
            partitions.add_partition(topic, partition.id());
        }
    }
    let committed = probe.committed_offsets(partitions, BROKER_TIMEOUT)?;
    let mut depths = Vec::new();
    for element in committed.elements() {
        let (low, high) = probe.fetch_watermarks(topic, element.partition(), BROKER_TIMEOUT)?;
        let start = match element.offset() {
            Offset::Offset(committed) => committed.max(low),
            _ => low,
        };
        depths.push((
            element.partition(),
            u64::try_from(high - start).unwrap_or(0),
        ));
    }
    depths.sort_unstable();
    Ok(depths)
}

/// Takes codes from the pool topic as a member of the binder consumer group.
#[derive(Debug, Clone)]
pub struct KafkaReader {
    inner: Arc<ReaderInner>,
}

struct ReaderInner {
    consumer: Arc<StreamConsumer>,
    topic: String,
    prefetched: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    /// Codes given back go into the prefetch channel, where waiting takers see them…
    requeue: mpsc::Sender<Delivery>,
    /// …or here when the channel is full (so no taker is waiting for want of codes).
    given_back: Mutex<VecDeque<Delivery>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    fetcher: JoinHandle<()>,
}

impl std::fmt::Debug for ReaderInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaReader")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Drop for ReaderInner {
    fn drop(&mut self) {
        self.fetcher.abort();
    }
}

impl KafkaReader {
    /// Joins the binder group and starts prefetching `settings.prefetch` codes.
    pub async fn connect(settings: &KafkaSettings) -> Result<Self, PoolError> {
        ensure_topic(settings).await?;
        let consumer: StreamConsumer = base_config(settings)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "500")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                settings.session_timeout_ms.to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (settings.session_timeout_ms / 4).max(100).to_string(),
            )
            .create()?;
        consumer.subscribe(&[&settings.pool_topic])?;
        let consumer = Arc::new(consumer);
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        let (sender, receiver) = mpsc::channel(settings.prefetch);
        let requeue = sender.clone();
        let fetcher = tokio::spawn(fetch(Arc::clone(&consumer), Arc::clone(&tracker), sender));
        Ok(KafkaReader {
            inner: Arc::new(ReaderInner {
                consumer,
                topic: settings.pool_topic.clone(),
                prefetched: tokio::sync::Mutex::new(receiver),
                requeue,
                given_back: Mutex::new(VecDeque::new()),
                tracker,
                fetcher,
            }),
        })
    }

    pub(crate) async fn take(&self, wait: Duration) -> Option<Delivery> {
        if let Some(delivery) = lock(&self.inner.given_back).pop_front() {
            return Some(delivery);
        }
        // The wait covers queueing for the receiver too: takers line up behind each other
        // when the pool is dry, and none may wait longer than it was allowed to.
        let next = async { self.inner.prefetched.lock().await.recv().await };
        tokio::time::timeout(wait, next).await.ok().flatten()
    }

    pub(crate) fn ack(&self, partition: i32, offset: i64) {
        let point = lock(&self.inner.tracker).done(partition, offset);
        if let Some(point) = point
            && let Err(error) = self.store(&[(partition, point)])
        {
            // Not fatal: the next ack of this partition stores a later point, and a
            // point never stored only means a redelivery that the store skips.
            tracing::debug!(%error, partition, "storing a pool offset failed");
        }
    }

    fn store(&self, points: &[(i32, i64)]) -> Result<TopicPartitionList, KafkaError> {
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in points {
            list.add_partition_offset(&self.inner.topic, partition, Offset::Offset(offset))?;
        }
        self.inner.consumer.store_offsets(&list)?;
        Ok(list)
    }

    pub(crate) fn give_back(&self, delivery: Delivery) {
        use mpsc::error::TrySendError;
        if let Err(TrySendError::Full(delivery) | TrySendError::Closed(delivery)) =
            self.inner.requeue.try_send(delivery)
        {
            lock(&self.inner.given_back).push_front(delivery);
        }
    }

    pub(crate) async fn check(&self) -> Result<(), PoolError> {
        let consumer = Arc::clone(&self.inner.consumer);
        let topic = self.inner.topic.clone();
        tokio::task::spawn_blocking(move || {
            consumer.fetch_metadata(Some(&topic), Duration::from_secs(2))
        })
        .await
        .map_err(|_| PoolError::Kafka(KafkaError::Canceled))??;
        Ok(())
    }

    /// Stops fetching and commits every stored offset synchronously.
    pub(crate) async fn close(&self) -> Result<(), PoolError> {
        self.inner.fetcher.abort();
        // A partition a rebalance took away is no longer ours to commit (librdkafka refuses
        // with "erroneous state"); its new owner redelivers from the last commit and the
        // binding store skips codes already bound.
        let assigned = self.inner.consumer.assignment()?;
        let points: Vec<(i32, i64)> = lock(&self.inner.tracker)
            .commit_points()
            .into_iter()
            .filter(|&(partition, _)| {
                assigned
                    .find_partition(&self.inner.topic, partition)
                    .is_some()
            })
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        let list = self.store(&points)?;
        let consumer = Arc::clone(&self.inner.consumer);
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(|_| PoolError::Kafka(KafkaError::Canceled))??;
        Ok(())
    }
}

/// Moves messages from the consumer into the prefetch channel; the channel's bound is the
/// prefetch depth, so a full channel simply pauses consumption.
async fn fetch(
    consumer: Arc<StreamConsumer>,
    tracker: Arc<Mutex<OffsetTracker>>,
    sender: mpsc::Sender<Delivery>,
) {
    loop {
        let message = match consumer.recv().await {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "reading the pool topic failed; retrying");
                metrics::counter!("pool_fetch_errors_total").increment(1);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let (partition, offset) = (message.partition(), message.offset());
        lock(&tracker).received(partition, offset);
        let record = PoolRecord::decode(message.payload().unwrap_or_default());
        drop(message);
        match record {
            Ok(record) => {
                let delivery = Delivery {
                    record,
                    receipt: Receipt::Kafka { partition, offset },
                };
                if sender.send(delivery).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                record_undecodable(&error);
                lock(&tracker).done(partition, offset);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
