//! The Kafka pool: one topic per issuer (its *lane*, `<pool_topic>.<issuer>`), keyed by
//! request id so that codes spread over the partitions; the binders read each lane as one
//! consumer group (`<group_id>.<issuer>`), so a lane's depth is that group's lag.
//!
//! Writer: an idempotent producer (`enable.idempotence`, `acks=all`): a retried send never
//! enqueues a code twice. An idempotent producer can fail for good: after a broker restart
//! that lost its producer state, librdkafka raises a *fatal* error ("out of order sequence
//! number") and refuses every send after it (librdkafka#3584). The writer then makes a new
//! producer, which gets a new producer id; the codes of the failed batch are not sent again
//! (pregen renders new ones), so nothing is enqueued twice.
//!
//! Reader: offsets are *stored* only up to the lowest code still in flight
//! ([`crate::offsets`]) and librdkafka commits the stored offsets; so a binder that dies
//! re-delivers every code it had not bound yet, and nothing more is lost than a re-delivery
//! of codes that the binding store then skips as already bound.
//!
//! The reader's prefetch is librdkafka's own, per partition: each partition's messages come
//! through a queue of their own (split from the consumer's), read by a task that hands codes
//! on only as takers make room; librdkafka stops fetching a partition whose queue holds
//! `prefetch` codes. The consumer's own queue then carries only events (a rebalance is served
//! from its poll), so it is polled all the time whatever the binds do. Pausing partitions
//! instead, as an earlier reader did, made librdkafka drop what it had fetched ahead and wait
//! out a fetch on every resume: about 1,000 codes/s from a topic a plain consumer reads at
//! 75,000/s (`benches/src/bin/pool-drain.rs` measures the reader).
//!
//! A reader that holds no partition takes no code: its binder draws every code on demand and
//! binds still succeed, so nothing but this reader's watch says so. That happens when a group
//! has more binders than the lane has partitions, and with tansu 0.6, whose coordinator never
//! forms a group again once its leader's session ran out while it was forming (see
//! `docs/operations.md`). After [`STARVED_AFTER_SESSIONS`] session timeouts without a partition
//! while the lane has codes, the reader warns once and [`KafkaReader::holding_check`] fails
//! (an optional line of `/readyz`) until a partition comes back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use config::KafkaSettings;
use records::PoolRecord;

use crate::offsets::OffsetTracker;
use crate::{Delivery, PoolError, Receipt, record_undecodable};

/// How long a metadata or offset request to the brokers may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// How soon librdkafka looks again at a partition whose prefetch queue was full. Its default
/// (1 s) suits queues of 100,000 messages; ours hold a few hundred codes, which a busy binder
/// takes in a few milliseconds.
const FULL_QUEUE_RECHECK_MS: &str = "5";

/// Session timeouts a reader may hold no partition of a lane that has codes before it says
/// so: a rebalance takes up to one (the group waits for every member's next heartbeat), and
/// a binder that just started or lost its broker for a moment must not raise an alarm.
pub const STARVED_AFTER_SESSIONS: u32 = 3;

/// Kilobytes a partition's prefetch queue may hold (librdkafka overshoots by one fetch):
/// codes are about a kilobyte, so this only caps a `prefetch` set far too high.
const PREFETCH_QUEUE_KBYTES: &str = "4096";

fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    config
}

/// Creates a lane's topic with the configured partitions when it does not exist yet.
pub async fn ensure_topic(settings: &KafkaSettings, topic: &str) -> Result<(), PoolError> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings).create()?;
    let topic = NewTopic::new(
        topic,
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
                    reason: format!("cannot be created: {code}"),
                });
            }
        }
    }
    Ok(())
}

/// Enqueues codes on the lane of their issuer.
#[derive(Clone)]
pub struct KafkaWriter {
    /// Replaced when librdkafka declares it fatally failed (see the module doc).
    producer: Arc<Mutex<FutureProducer>>,
    settings: Arc<KafkaSettings>,
    /// Lanes whose topic exists, with the probe that reads their binder group's offsets.
    lanes: Arc<Mutex<HashMap<String, Arc<Lane>>>>,
}

struct Lane {
    topic: String,
    /// Never subscribes: it only reads the lane's binder group offsets, for the depth.
    probe: BaseConsumer,
}

impl std::fmt::Debug for KafkaWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaWriter")
            .field("pool_topic", &self.settings.pool_topic)
            .finish_non_exhaustive()
    }
}

impl KafkaWriter {
    pub async fn connect(settings: &KafkaSettings) -> Result<Self, PoolError> {
        Ok(KafkaWriter {
            producer: Arc::new(Mutex::new(new_producer(settings)?)),
            settings: Arc::new(settings.clone()),
            lanes: Arc::default(),
        })
    }

    fn producer(&self) -> FutureProducer {
        lock(&self.producer).clone()
    }

    /// Makes a new producer when `used` failed for good and is still the one in use (another
    /// push may have replaced it already). The next push then sends again.
    fn renew_if_fatal(&self, used: FutureProducer) {
        let Some((code, reason)) = used.client().fatal_error() else {
            return;
        };
        let replaced = {
            let mut current = lock(&self.producer);
            if current.client().fatal_error().is_none() {
                None
            } else {
                match new_producer(&self.settings) {
                    Ok(fresh) => Some(std::mem::replace(&mut *current, fresh)),
                    Err(error) => {
                        tracing::error!(%error, %code, %reason, "the pool's Kafka producer failed for good and a new one cannot be made; retried on the next push");
                        None
                    }
                }
            }
        };
        if replaced.is_some() {
            metrics::counter!("pool_producers_renewed_total").increment(1);
            tracing::warn!(%code, %reason, "the pool's Kafka producer failed for good; a new one takes over");
        }
        // Dropping a producer purges it and waits up to half a second for its threads: not on
        // the runtime's threads.
        tokio::task::spawn_blocking(move || drop((used, replaced)));
    }

    /// `issuer`'s lane, creating its topic on first use.
    async fn lane(&self, issuer: &str) -> Result<Arc<Lane>, PoolError> {
        if let Some(lane) = lock(&self.lanes).get(issuer) {
            return Ok(Arc::clone(lane));
        }
        let topic = self.settings.lane_topic(issuer);
        ensure_topic(&self.settings, &topic).await?;
        let probe: BaseConsumer = base_config(&self.settings)
            .set("group.id", self.settings.lane_group(issuer))
            .set("enable.auto.commit", "false")
            .create()?;
        let lane = Arc::new(Lane { topic, probe });
        lock(&self.lanes).insert(issuer.to_owned(), Arc::clone(&lane));
        Ok(lane)
    }

    pub(crate) async fn push(&self, records: &[PoolRecord]) -> Result<(), PoolError> {
        let mut topics = HashMap::new();
        for record in records {
            if !topics.contains_key(record.issuer.as_str()) {
                let lane = self.lane(&record.issuer).await?;
                topics.insert(record.issuer.as_str(), lane.topic.clone());
            }
        }
        let producer = self.producer();
        let sends = records.iter().map(|record| {
            let producer = &producer;
            let key = record.request_id.to_text();
            let payload = record.encode();
            let topic = &topics[record.issuer.as_str()];
            async move {
                let message = FutureRecord::to(topic)
                    .key(key.as_bytes())
                    .payload(&payload);
                producer
                    .send(message, Timeout::After(BROKER_TIMEOUT))
                    .await
                    .map(drop)
                    .map_err(|(error, _)| error)
            }
        });
        if let Err(error) = futures::future::try_join_all(sends).await {
            self.renew_if_fatal(producer);
            return Err(error.into());
        }
        Ok(())
    }

    /// Codes of `issuer` between its binder group's committed offsets and the partition ends.
    pub(crate) async fn depth(&self, issuer: &str) -> Result<u64, PoolError> {
        Ok(self
            .depth_per_partition(issuer)
            .await?
            .iter()
            .map(|(_, depth)| depth)
            .sum())
    }

    /// The lag of `issuer`'s binder group on each partition of its topic.
    pub(crate) async fn depth_per_partition(
        &self,
        issuer: &str,
    ) -> Result<Vec<(i32, u64)>, PoolError> {
        let lane = self.lane(issuer).await?;
        tokio::task::spawn_blocking(move || depth_blocking(&lane.probe, &lane.topic))
            .await
            .map_err(|_| PoolError::Kafka(KafkaError::Canceled))?
    }

    /// The issuers that have a lane on the brokers (configured or not: a lane left by an
    /// issuer since removed may still hold codes).
    pub(crate) async fn issuers(&self) -> Result<Vec<String>, PoolError> {
        let producer = self.producer();
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, BROKER_TIMEOUT)
        })
        .await
        .map_err(|_| PoolError::Kafka(KafkaError::Canceled))??;
        let mut issuers: Vec<String> = metadata
            .topics()
            .iter()
            .filter_map(|topic| self.settings.lane_of_topic(topic.name()))
            .map(str::to_owned)
            .collect();
        issuers.sort_unstable();
        Ok(issuers)
    }

    pub fn lane_topic(&self, issuer: &str) -> String {
        self.settings.lane_topic(issuer)
    }

    pub(crate) async fn flush(&self) -> Result<(), PoolError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(BROKER_TIMEOUT)))
            .await
            .map_err(|_| PoolError::Kafka(KafkaError::Canceled))??;
        Ok(())
    }
}

fn new_producer(settings: &KafkaSettings) -> Result<FutureProducer, KafkaError> {
    let mut producer = base_config(settings);
    producer
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    for (key, value) in &settings.producer_options {
        producer.set(key, value);
    }
    producer.create()
}

fn depth_blocking<C: ConsumerContext>(
    probe: &impl Consumer<C>,
    topic: &str,
) -> Result<Vec<(i32, u64)>, PoolError> {
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

/// Takes codes from one issuer's lane as a member of that lane's binder group.
#[derive(Debug, Clone)]
pub struct KafkaReader {
    inner: Arc<ReaderInner>,
}

struct ReaderInner {
    consumer: Arc<StreamConsumer<LaneContext>>,
    issuer: String,
    topic: String,
    prefetched: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    /// Codes given back go into the prefetch channel, where waiting takers see them…
    requeue: mpsc::Sender<Delivery>,
    /// …or here when the channel is full (so no taker is waiting for want of codes); also
    /// where codes of a partition not split yet wait when the channel is full.
    given_back: Arc<Mutex<VecDeque<Delivery>>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    fetcher: JoinHandle<()>,
    /// What the holding watch found last; see the module doc.
    holding: Arc<Mutex<Holding>>,
    watch: JoinHandle<()>,
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
        self.watch.abort();
    }
}

impl KafkaReader {
    /// Joins the binder group of `issuer`'s lane and starts prefetching `settings.prefetch`
    /// codes.
    pub async fn connect(settings: &KafkaSettings, issuer: &str) -> Result<Self, PoolError> {
        let topic = settings.lane_topic(issuer);
        ensure_topic(settings, &topic).await?;
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        let context = LaneContext {
            issuer: issuer.to_owned(),
            tracker: Arc::clone(&tracker),
        };
        let consumer: StreamConsumer<LaneContext> = base_config(settings)
            .set("group.id", settings.lane_group(issuer))
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "500")
            .set("auto.offset.reset", "earliest")
            .set("queued.min.messages", settings.prefetch.to_string())
            .set("queued.max.messages.kbytes", PREFETCH_QUEUE_KBYTES)
            .set("fetch.queue.backoff.ms", FULL_QUEUE_RECHECK_MS)
            .set(
                "session.timeout.ms",
                settings.session_timeout_ms.to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (settings.session_timeout_ms / 4).max(100).to_string(),
            )
            .create_with_context(context)?;
        let consumer = Arc::new(consumer);
        // Split before subscribing, so that no message of these partitions is fetched into
        // the consumer's own queue.
        let partitions = partitions_of(&consumer, &topic).await?;
        let mut queues = Vec::new();
        for partition in partitions {
            let queue = consumer
                .split_partition_queue(&topic, partition)
                .ok_or_else(|| PoolError::Topic {
                    topic: topic.clone(),
                    reason: format!("partition {partition} cannot have a queue of its own"),
                })?;
            queues.push((partition, queue));
        }
        consumer.subscribe(&[&topic])?;
        let (sender, receiver) = mpsc::channel(settings.prefetch);
        let given_back = Arc::new(Mutex::new(VecDeque::new()));
        let fetcher = tokio::spawn(
            Fetcher {
                consumer: Arc::clone(&consumer),
                topic: topic.clone(),
                tracker: Arc::clone(&tracker),
                sender: sender.clone(),
                overflow: Arc::clone(&given_back),
            }
            .run(queues),
        );
        let holding = Arc::new(Mutex::new(Holding::default()));
        let watch = tokio::spawn(
            HoldingWatch {
                consumer: Arc::clone(&consumer),
                issuer: issuer.to_owned(),
                topic: topic.clone(),
                tracker: Arc::clone(&tracker),
                holding: Arc::clone(&holding),
                session: Duration::from_millis(u64::from(settings.session_timeout_ms)),
            }
            .run(),
        );
        Ok(KafkaReader {
            inner: Arc::new(ReaderInner {
                consumer,
                issuer: issuer.to_owned(),
                topic,
                prefetched: tokio::sync::Mutex::new(receiver),
                requeue: sender,
                given_back,
                tracker,
                fetcher,
                holding,
                watch,
            }),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    pub(crate) async fn take(&self, wait: Duration) -> Option<Delivery> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let given_back = lock(&self.inner.given_back).pop_front();
            let delivery = match given_back {
                Some(delivery) => delivery,
                None => {
                    // The wait covers queueing for the receiver too: takers line up behind
                    // each other when the pool is dry, and none may wait longer than allowed.
                    let next = async { self.inner.prefetched.lock().await.recv().await };
                    tokio::time::timeout_at(deadline, next)
                        .await
                        .ok()
                        .flatten()?
                }
            };
            if self.is_current(&delivery) {
                return Some(delivery);
            }
            // Its partition went to another binder, which delivers it again.
            metrics::counter!("pool_stale_deliveries_dropped_total", "issuer" => self.inner.issuer.clone())
                .increment(1);
        }
    }

    fn is_current(&self, delivery: &Delivery) -> bool {
        match delivery.receipt {
            Receipt::Kafka {
                partition, epoch, ..
            } => lock(&self.inner.tracker).is_current(partition, epoch),
            Receipt::Embedded { .. } => false,
        }
    }

    pub(crate) fn ack(&self, partition: i32, offset: i64, epoch: u64) {
        let point = lock(&self.inner.tracker).done(partition, offset, epoch);
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

    /// Fails while this reader has held no partition of a lane that has codes for
    /// [`STARVED_AFTER_SESSIONS`] session timeouts (see the module doc); for `/readyz`.
    pub(crate) fn holding_check(&self) -> Result<(), PoolError> {
        match &lock(&self.inner.holding).starved {
            Some(starved) => Err(PoolError::Starved(starved.clone())),
            None => Ok(()),
        }
    }

    /// Stops fetching and commits every stored offset synchronously.
    pub(crate) async fn close(&self) -> Result<(), PoolError> {
        self.inner.fetcher.abort();
        self.inner.watch.abort();
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
        // A synchronous commit to a broker that is gone can wait far longer than a shutdown
        // should; past the limit the positions stay uncommitted (redelivered, then skipped).
        let commit = tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync));
        tokio::time::timeout(BROKER_TIMEOUT, commit)
            .await
            .map_err(|_| PoolError::Kafka(KafkaError::Canceled))?
            .map_err(|_| PoolError::Kafka(KafkaError::Canceled))??;
        Ok(())
    }
}

/// The partitions `topic` has now.
async fn partitions_of(
    consumer: &Arc<StreamConsumer<LaneContext>>,
    topic: &str,
) -> Result<Vec<i32>, PoolError> {
    let consumer = Arc::clone(consumer);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&topic), BROKER_TIMEOUT)?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|meta| meta.name() == topic)
            .flat_map(|meta| meta.partitions().iter().map(|partition| partition.id()))
            .collect())
    })
    .await
    .map_err(|_| PoolError::Kafka(KafkaError::Canceled))?
}

type PartitionQueue = StreamPartitionQueue<LaneContext>;

/// Moves codes from the partition queues into the prefetch channel and serves the
/// consumer's events.
struct Fetcher {
    consumer: Arc<StreamConsumer<LaneContext>>,
    topic: String,
    tracker: Arc<Mutex<OffsetTracker>>,
    sender: mpsc::Sender<Delivery>,
    overflow: Arc<Mutex<VecDeque<Delivery>>>,
}

impl Fetcher {
    /// Runs until aborted (or the reader is gone). Dropping it aborts every partition task.
    async fn run(self, queues: Vec<(i32, PartitionQueue)>) {
        let mut forwarders = JoinSet::new();
        let mut split = HashSet::new();
        for (partition, queue) in queues {
            split.insert(partition);
            self.forward(&mut forwarders, queue);
        }
        loop {
            // Only events arrive here, but for messages of a partition the topic gained since
            // this reader started (split now, so its next ones come through its own queue).
            let received = self.consumer.recv().await;
            let partition = received.as_ref().ok().map(Message::partition);
            if let Some(delivery) = accept(received, &self.tracker).await {
                use mpsc::error::TrySendError;
                match self.sender.try_send(delivery) {
                    Ok(()) => {}
                    Err(TrySendError::Full(delivery)) => lock(&self.overflow).push_back(delivery),
                    Err(TrySendError::Closed(_)) => return,
                }
            }
            if let Some(partition) = partition
                && split.insert(partition)
                && let Some(queue) = self.consumer.split_partition_queue(&self.topic, partition)
            {
                tracing::info!(topic = %self.topic, partition, "pool partition added since start");
                self.forward(&mut forwarders, queue);
            }
        }
    }

    /// Hands one partition's codes on as takers make room; while the channel is full this
    /// task waits, its queue fills up to `prefetch`, and librdkafka stops fetching it.
    fn forward(&self, forwarders: &mut JoinSet<()>, queue: PartitionQueue) {
        let tracker = Arc::clone(&self.tracker);
        let sender = self.sender.clone();
        forwarders.spawn(async move {
            loop {
                let received = queue.recv().await;
                if let Some(delivery) = accept(received, &tracker).await
                    && sender.send(delivery).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

/// The delivery a received message makes, counting what makes none: a read error (after a
/// pause, so a failing broker is not asked in a loop), an undecodable record (done at once,
/// so it never holds the commit point back), a partition revoked since the fetch (its new
/// owner delivers it).
async fn accept(
    received: Result<BorrowedMessage<'_>, KafkaError>,
    tracker: &Mutex<OffsetTracker>,
) -> Option<Delivery> {
    let message = match received {
        Ok(message) => message,
        Err(error) => {
            tracing::warn!(%error, "reading the pool topic failed; retrying");
            metrics::counter!("pool_fetch_errors_total").increment(1);
            tokio::time::sleep(Duration::from_millis(500)).await;
            return None;
        }
    };
    let (partition, offset) = (message.partition(), message.offset());
    let epoch = lock(tracker).received(partition, offset)?;
    match PoolRecord::decode(message.payload().unwrap_or_default()) {
        Ok(record) => Some(Delivery {
            record,
            receipt: Receipt::Kafka {
                partition,
                offset,
                epoch,
            },
        }),
        Err(error) => {
            record_undecodable(&error);
            lock(tracker).done(partition, offset, epoch);
            None
        }
    }
}

/// A reader's partitions as its watch last saw them.
#[derive(Debug, Default)]
struct Holding {
    /// Since when the reader has held no partition, when it holds none.
    none_since: Option<Instant>,
    /// Set once the reader has held none for too long while the lane had codes.
    starved: Option<Starved>,
}

/// A reader that takes no code from a lane that has codes.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "this binder has held no partition of `{topic}` for {held_none_secs} s while the lane holds \
     {depth} codes: its binds take no pooled code (more binders than partitions, or a group the \
     broker does not form again)"
)]
pub struct Starved {
    pub topic: String,
    pub held_none_secs: u64,
    pub depth: u64,
}

/// Looks every half session at whether its reader holds a partition, and reads the lane's
/// depth when it has held none for [`STARVED_AFTER_SESSIONS`] sessions.
struct HoldingWatch {
    consumer: Arc<StreamConsumer<LaneContext>>,
    issuer: String,
    topic: String,
    tracker: Arc<Mutex<OffsetTracker>>,
    holding: Arc<Mutex<Holding>>,
    session: Duration,
}

impl HoldingWatch {
    async fn run(self) {
        let mut every = tokio::time::interval(self.session / 2);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let held = lock(&self.tracker).held();
            metrics::gauge!("pool_partitions_held", "issuer" => self.issuer.clone())
                .set(held as f64);
            if held > 0 {
                let was = std::mem::take(&mut *lock(&self.holding));
                if was.starved.is_some() {
                    let held_none_secs = was.none_since.map(|since| since.elapsed().as_secs());
                    tracing::info!(issuer = %self.issuer, partitions = held, ?held_none_secs, "this binder holds pool partitions again");
                }
                continue;
            }
            let none_since = *lock(&self.holding)
                .none_since
                .get_or_insert_with(Instant::now);
            let held_none_for = none_since.elapsed();
            if held_none_for < self.session * STARVED_AFTER_SESSIONS {
                continue;
            }
            let depth = match self.depth().await {
                Ok(depth) => depth,
                // The pool's own readiness check names a broker that does not answer.
                Err(error) => {
                    tracing::debug!(%error, issuer = %self.issuer, "reading the lane's depth failed");
                    continue;
                }
            };
            let starved = (depth > 0).then(|| Starved {
                topic: self.topic.clone(),
                held_none_secs: held_none_for.as_secs(),
                depth,
            });
            let mut holding = lock(&self.holding);
            match (&holding.starved, &starved) {
                (None, Some(starved)) => {
                    tracing::warn!(issuer = %self.issuer, error = %starved, "binds take no pooled codes");
                    metrics::counter!("pool_reader_starved_total", "issuer" => self.issuer.clone())
                        .increment(1);
                }
                (Some(_), None) => {
                    tracing::info!(issuer = %self.issuer, "the lane is empty; this binder holding none of it no longer matters");
                }
                _ => {}
            }
            holding.starved = starved;
        }
    }

    async fn depth(&self) -> Result<u64, PoolError> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        let depths = tokio::task::spawn_blocking(move || depth_blocking(&*consumer, &topic))
            .await
            .map_err(|_| PoolError::Kafka(KafkaError::Canceled))??;
        Ok(depths.iter().map(|(_, depth)| depth).sum())
    }
}

/// Keeps the offset tracker in step with the group's assignments, and says so in the logs.
struct LaneContext {
    issuer: String,
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl ClientContext for LaneContext {}

impl ConsumerContext for LaneContext {
    /// Runs before librdkafka applies the change, so no message of a new assignment arrives
    /// before the tracker knows it, and none of a revoked one is taken after.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = partition_ids(list);
                tracing::info!(issuer = %self.issuer, ?partitions, "pool partitions assigned");
                metrics::counter!("pool_rebalances_total", "issuer" => self.issuer.clone())
                    .increment(1);
                lock(&self.tracker).assigned(partitions);
            }
            Rebalance::Revoke(list) => {
                let partitions = partition_ids(list);
                tracing::info!(issuer = %self.issuer, ?partitions, "pool partitions revoked");
                lock(&self.tracker).revoked(partitions);
            }
            Rebalance::Error(error) => {
                tracing::warn!(issuer = %self.issuer, %error, "pool rebalance failed");
            }
        }
    }
}

fn partition_ids(list: &TopicPartitionList) -> Vec<i32> {
    list.elements()
        .iter()
        .map(|element| element.partition())
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use records::RequestId;

    fn code(n: usize) -> PoolRecord {
        PoolRecord {
            request_id: RequestId::generate(),
            issuer: "local".into(),
            content: format!("http://x/m/{n}"),
            image: None,
            created_at: chrono::Utc::now(),
        }
    }

    /// A broker that lost the producer's state (restarted without its log) answers the next
    /// produce with "out of order sequence number", which an idempotent producer takes as
    /// fatal: it refuses every send after it. The tests' tansu cannot be made to answer so on
    /// demand, so librdkafka's own mock cluster plays that broker here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_failed_for_good_is_replaced_and_the_next_push_goes_through() {
        let cluster = MockCluster::new(1).expect("librdkafka's mock cluster");
        let settings = KafkaSettings {
            brokers: cluster.bootstrap_servers(),
            partitions: 1,
            replication: 1,
            ..KafkaSettings::default()
        };
        let writer = KafkaWriter::connect(&settings).await.expect("a writer");
        // The mock cluster answers no CreateTopics: the lane is made here, as a broker's
        // operator would.
        let topic = settings.lane_topic("local");
        cluster
            .create_topic(&topic, 1, 1)
            .expect("the lane's topic on the mock cluster");
        let probe: BaseConsumer = base_config(&settings)
            .set("group.id", settings.lane_group("local"))
            .create()
            .expect("a probe");
        lock(&writer.lanes).insert("local".into(), Arc::new(Lane { topic, probe }));
        writer.push(&[code(1)]).await.expect("a first push");
        let before = writer.producer();

        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
        );
        let failed = writer.push(&[code(2)]).await;
        assert!(failed.is_err(), "the push the broker refused fails");
        assert!(
            before.client().fatal_error().is_some(),
            "librdkafka took the answer as fatal"
        );
        let after = writer.producer();
        assert!(
            after.client().fatal_error().is_none(),
            "a new producer took over"
        );

        writer
            .push(&[code(3), code(4)])
            .await
            .expect("the next push goes through the new producer");
    }
}
