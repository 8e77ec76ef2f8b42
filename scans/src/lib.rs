//! Scan events: every scan is recorded, and no scan waits for it.
//!
//! A scan hands its [`ScanEvent`] to [`ScanEvents::record`], which puts it in a bounded
//! in-process queue without waiting: when the queue is full the event is dropped and counted
//! (`scan_events_dropped_total`), the scan goes on. One writer task drains the queue every
//! [`DRAIN_EVERY`] into the sink — on a timer rather than woken by each event, because a
//! wake-up per scan cost a fifth of the scan path's throughput:
//!
//! - **files** (embedded): `<data_dir>/scans/<UTC date>.jsonl`, one JSON object per line,
//!   appended;
//! - **Kafka** (when the pool is on Kafka): the `kafka.events_topic`, keyed by the scanned key,
//!   through a producer that never blocks (a full producer queue drops and counts too).
//!
//! Events are analytics, not bookings: they are written promptly and flushed at shutdown, but
//! not fsynced one by one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::header::InvalidHeaderName;
use axum::http::{HeaderMap, HeaderName, header};
use chrono::{NaiveDate, Utc};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use records::{DeviceClass, ScanEvent};

/// Events written per batch at most.
const BATCH: usize = 4_096;
/// How often the writer takes what is queued.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How long shutdown waits for queued events to be written.
const FINISH_WITHIN: Duration = Duration::from_secs(10);
/// Longest referrer kept (characters); the rest is cut.
const MAX_REFERRER: usize = 256;

/// Where events go.
#[derive(Debug, Clone)]
pub enum ScanSink {
    Files(PathBuf),
    Kafka { brokers: String, topic: String },
}

/// The recording side, shared by every scan handler. Cheap to clone.
#[derive(Clone)]
pub struct ScanEvents {
    queue: mpsc::Sender<ScanEvent>,
    dropped: Arc<AtomicU64>,
    salt: Arc<Mutex<(NaiveDate, [u8; 16])>>,
    country_header: Option<HeaderName>,
}

/// The proxy header whose first hop is the scanner's address (digested, never stored).
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// `scans.country_header` as a header name, checked once at start.
pub fn country_header(name: Option<&str>) -> Result<Option<HeaderName>, InvalidHeaderName> {
    name.map(HeaderName::try_from).transpose()
}

impl std::fmt::Debug for ScanEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanEvents")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The writer task; [`ScanWriter::finish`] waits until every queued event is written.
#[derive(Debug)]
pub struct ScanWriter(JoinHandle<()>);

impl ScanWriter {
    /// Waits for the writer to drain the queue; call after every [`ScanEvents`] is dropped.
    /// Gives up after [`FINISH_WITHIN`]: something still holds a sender (a connection open
    /// past the shutdown grace), so events queued after this may be lost.
    pub async fn finish(self) -> Result<(), ScanWriterError> {
        match tokio::time::timeout(FINISH_WITHIN, self.0).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ScanWriterError::Failed(error)),
            Err(_) => Err(ScanWriterError::NotDrained(FINISH_WITHIN)),
        }
    }
}

/// Why the writer did not end cleanly at shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ScanWriterError {
    #[error(
        "the scan event queue was still open {0:?} after shutdown; events queued since may be lost"
    )]
    NotDrained(Duration),
    #[error("the scan event writer failed")]
    Failed(#[source] tokio::task::JoinError),
}

#[derive(Debug, thiserror::Error)]
pub enum ScanSinkError {
    #[error("the scan events producer cannot be created")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl ScanEvents {
    /// Starts the writer for `sink` with a queue of `capacity` events.
    pub fn start(
        sink: ScanSink,
        capacity: usize,
        country_header: Option<HeaderName>,
    ) -> Result<(ScanEvents, ScanWriter), ScanSinkError> {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = match sink {
            ScanSink::Files(dir) => tokio::spawn(write_files(dir, receiver)),
            ScanSink::Kafka { brokers, topic } => {
                let producer: ThreadedProducer<Delivery> = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .set("linger.ms", "50")
                    .set("queue.buffering.max.messages", "100000")
                    .create_with_context(Delivery)?;
                tokio::spawn(write_kafka(producer, topic, receiver))
            }
        };
        let events = ScanEvents {
            queue,
            dropped,
            salt: Arc::new(Mutex::new((NaiveDate::MIN, [0; 16]))),
            country_header,
        };
        Ok((events, ScanWriter(writer)))
    }

    /// Queues one event; never waits. A full queue drops it and counts it.
    pub fn record(&self, event: ScanEvent) {
        if self.queue.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("scan_events_dropped_total").increment(1);
        }
    }

    /// Events dropped because the queue was full (or the writer gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The event of one scan of `key`, from the request's headers and query.
    /// `device` is [`device`] of the same headers, which a caller may need for itself too.
    pub fn event(
        &self,
        key: String,
        outcome: &'static str,
        tenant: Option<String>,
        device: DeviceClass,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> ScanEvent {
        // Looked up by `HeaderName`, not `&str`: a name given as text is parsed on every call.
        let header = |name: &HeaderName| headers.get(name).and_then(|value| value.to_str().ok());
        let user_agent = header(&header::USER_AGENT);
        ScanEvent {
            v: ScanEvent::LAYOUT,
            at: Utc::now(),
            key,
            outcome: outcome.into(),
            tenant,
            device,
            country: country(headers, self.country_header.as_ref()),
            referrer: header(&header::REFERER)
                .map(|referrer| referrer.chars().take(MAX_REFERRER).collect()),
            variant: None,
            via_qr: query
                .is_some_and(|query| query.split('&').any(|pair| pair == records::PRINTED_MARKER)),
            visitor: header(&X_FORWARDED_FOR)
                .and_then(|hops| hops.split(',').next())
                .map(|address| self.visitor(address.trim(), user_agent.unwrap_or_default())),
        }
    }

    /// A digest of the address and user agent under today's salt (see [`records::scan_event`]).
    fn visitor(&self, address: &str, user_agent: &str) -> String {
        let today = Utc::now().date_naive();
        let salt = {
            let mut salt = self
                .salt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if salt.0 != today {
                *salt = (today, rand::random());
            }
            salt.1
        };
        let digest = Sha256::new()
            .chain_update(salt)
            .chain_update(address.as_bytes())
            .chain_update([0])
            .chain_update(user_agent.as_bytes())
            .finalize();
        digest[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// The kind of device that scanned, from its user agent.
pub fn device(headers: &HeaderMap) -> DeviceClass {
    DeviceClass::from_user_agent(
        headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok()),
    )
}

/// The scanner's country, upper-case ISO alpha-2, from the header a trusted proxy fills
/// (`scans.country_header`); `None` without one, or for anything not shaped like a code.
pub fn country(headers: &HeaderMap, country_header: Option<&HeaderName>) -> Option<String> {
    headers
        .get(country_header?)?
        .to_str()
        .ok()
        .filter(|code| code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()))
        .map(str::to_ascii_uppercase)
}

/// Takes up to [`BATCH`] queued events into `batch`; `false` once the queue is closed and
/// empty. It waits for the next tick first unless the last batch was full (a backlog), so a
/// busy queue is written in a few large batches a second rather than one per wake-up, and it
/// never waits on the queue itself, so recording an event never wakes this task.
async fn next_batch(
    receiver: &mut mpsc::Receiver<ScanEvent>,
    batch: &mut Vec<ScanEvent>,
    tick: &mut tokio::time::Interval,
    backlog: bool,
) -> bool {
    if !backlog {
        tick.tick().await;
    }
    loop {
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(event) => batch.push(event),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return !batch.is_empty(),
            }
        }
        if !batch.is_empty() {
            return true;
        }
        tick.tick().await;
    }
}

fn drain_timer() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

async fn write_files(dir: PathBuf, mut receiver: mpsc::Receiver<ScanEvent>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut tick = drain_timer();
    let mut backlog = false;
    while next_batch(&mut receiver, &mut batch, &mut tick, backlog).await {
        backlog = batch.len() == BATCH;
        let count = batch.len() as u64;
        // One blocking task per batch does the encoding and the file work (`tokio::fs` would
        // hand each of its calls to the blocking pool in turn).
        let dir_for_write = dir.clone();
        let written = tokio::task::spawn_blocking(move || {
            let result = append(&dir_for_write, &batch);
            batch.clear();
            (batch, result)
        })
        .await;
        let result = match written {
            Ok((emptied, result)) => {
                batch = emptied;
                result
            }
            Err(error) => {
                batch = Vec::with_capacity(BATCH);
                Err(std::io::Error::other(error))
            }
        };
        match result {
            Ok(()) => metrics::counter!("scan_events_written_total").increment(count),
            Err(error) => {
                tracing::warn!(%error, events = count, dir = %dir.display(), "writing scan events failed; dropped");
                metrics::counter!("scan_events_dropped_total").increment(count);
            }
        }
    }
}

/// Appends `events` to the files of their days (blocking).
fn append(dir: &std::path::Path, events: &[ScanEvent]) -> std::io::Result<()> {
    let mut lines = Vec::with_capacity(events.len() * 200);
    // A batch may straddle midnight: each event goes to the file of its own day.
    let mut day = None;
    for event in events {
        let date = event.at.date_naive();
        if day.is_some_and(|day| day != date) {
            write_day(dir, day, &lines)?;
            lines.clear();
        }
        day = Some(date);
        event.write_json(&mut lines);
        lines.push(b'\n');
    }
    write_day(dir, day, &lines)
}

/// Opened per batch, a few times a second: a file moved away by log rotation is followed.
fn write_day(dir: &std::path::Path, day: Option<NaiveDate>, lines: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let Some(day) = day else { return Ok(()) };
    std::fs::create_dir_all(dir)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{day}.jsonl")))?
        .write_all(lines)
}

async fn write_kafka(
    producer: ThreadedProducer<Delivery>,
    topic: String,
    mut receiver: mpsc::Receiver<ScanEvent>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut tick = drain_timer();
    let mut backlog = false;
    // One buffer for every payload: librdkafka copies a payload when it takes the record.
    let mut payload = Vec::with_capacity(512);
    while next_batch(&mut receiver, &mut batch, &mut tick, backlog).await {
        backlog = batch.len() == BATCH;
        for event in batch.drain(..) {
            payload.clear();
            event.write_json(&mut payload);
            let record = BaseRecord::to(&topic)
                .key(event.key.as_bytes())
                .payload(&payload);
            if producer.send(record).is_err() {
                metrics::counter!("scan_events_dropped_total").increment(1);
            }
        }
    }
    // Shutdown: deliver what librdkafka still holds, well within `finish`'s limit (a broker
    // that is gone must not turn a clean stop into an abandoned writer).
    let flushed = tokio::task::spawn_blocking(move || producer.flush(FINISH_WITHIN / 2)).await;
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::warn!("some scan events were not delivered before shutdown");
    }
}

/// Counts what the events topic accepted and refused.
struct Delivery;

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => metrics::counter!("scan_events_written_total").increment(1),
            Err((error, _)) => {
                tracing::debug!(%error, "a scan event was not delivered");
                metrics::counter!("scan_events_dropped_total").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let (queue, _receiver_never_drained) = mpsc::channel(2);
        let events = ScanEvents {
            queue,
            dropped: Arc::default(),
            salt: Arc::new(Mutex::new((NaiveDate::MIN, [0; 16]))),
            country_header: None,
        };
        for n in 0..5 {
            events.record(events.event(
                format!("k{n}"),
                "bound",
                None,
                DeviceClass::Unknown,
                &HeaderMap::new(),
                None,
            ));
        }
        assert_eq!(events.dropped(), 3, "two fit, three were dropped");
    }

    #[tokio::test]
    async fn the_visitor_is_a_salted_digest_never_the_address() {
        let (events, _writer) = ScanEvents::start(
            ScanSink::Files(std::env::temp_dir()),
            8,
            country_header(Some("CF-IPCountry")).unwrap(),
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.1".parse().unwrap());
        headers.insert("cf-ipcountry", "cn".parse().unwrap());
        let event = events.event(
            "k".into(),
            "bound",
            None,
            device(&headers),
            &headers,
            Some("qr=1&x=2"),
        );
        let visitor = event.visitor.clone().unwrap();
        assert_eq!(visitor.len(), 16);
        assert!(!serde_json::to_string(&event).unwrap().contains("203.0.113"));
        assert_eq!(event.country.as_deref(), Some("CN"));
        assert!(event.via_qr);
        let again = events.event("k".into(), "bound", None, device(&headers), &headers, None);
        assert_eq!(again.visitor.unwrap(), visitor, "stable within a day");
        assert!(!again.via_qr);
    }
}
