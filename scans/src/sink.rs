//! Where the writer puts events: daily files or the events topic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use records::ScanEvent;

use crate::{DRAIN_EVERY, Enricher, FINISH_WITHIN, Scan, ScanSinkError};

/// Scans enriched and written per batch at most.
const BATCH: usize = 4_096;

/// Where events go.
#[derive(Debug, Clone)]
pub enum ScanSink {
    /// `<dir>/<UTC date>.jsonl`.
    Files(PathBuf),
    Kafka {
        brokers: String,
        topic: String,
    },
}

/// Starts the writer task on the caller's runtime.
pub(crate) fn start(
    sink: ScanSink,
    enricher: Enricher,
    receiver: mpsc::Receiver<Scan>,
) -> Result<JoinHandle<()>, ScanSinkError> {
    let output = match sink {
        ScanSink::Files(dir) => Output::Files(dir),
        ScanSink::Kafka { brokers, topic } => {
            let producer: ThreadedProducer<Delivery> = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("linger.ms", "50")
                .set("queue.buffering.max.messages", "100000")
                .create_with_context(Delivery)?;
            Output::Kafka {
                producer: Arc::new(producer),
                topic,
            }
        }
    };
    Ok(tokio::spawn(write(output, enricher, receiver)))
}

enum Output {
    Files(PathBuf),
    Kafka {
        producer: Arc<ThreadedProducer<Delivery>>,
        topic: String,
    },
}

/// Takes up to [`BATCH`] queued scans into `batch`; `false` once the queue is closed and
/// empty. It waits for the next tick first unless the last batch was full (a backlog), so a
/// busy queue is written in a few large batches a second rather than one per wake-up, and it
/// never waits on the queue itself, so recording a scan never wakes this task.
async fn next_batch(
    receiver: &mut mpsc::Receiver<Scan>,
    batch: &mut Vec<Scan>,
    tick: &mut tokio::time::Interval,
    backlog: bool,
) -> bool {
    if !backlog {
        tick.tick().await;
    }
    loop {
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(scan) => batch.push(scan),
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

/// What one batch's blocking work gives back: the emptied batch and the enricher for the
/// next, and how it went.
struct Written {
    batch: Vec<Scan>,
    enricher: Enricher,
    result: std::io::Result<()>,
}

async fn write(output: Output, mut enricher: Enricher, mut receiver: mpsc::Receiver<Scan>) {
    let output = Arc::new(output);
    let mut batch = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backlog = false;
    while next_batch(&mut receiver, &mut batch, &mut tick, backlog).await {
        backlog = batch.len() == BATCH;
        let count = batch.len() as u64;
        // Enrichment (regexes for user agents not seen lately, GeoIP, digests), encoding and
        // the file work are one blocking task per batch, never on the runtime's threads.
        let output_for_batch = Arc::clone(&output);
        let written = tokio::task::spawn_blocking(move || {
            let mut batch = batch;
            let events: Vec<ScanEvent> =
                batch.drain(..).map(|scan| enricher.enrich(scan)).collect();
            let result = match &*output_for_batch {
                Output::Files(dir) => append(dir, &events),
                Output::Kafka { producer, topic } => {
                    produce(producer, topic, &events);
                    Ok(())
                }
            };
            Written {
                batch,
                enricher,
                result,
            }
        })
        .await;
        let result = match written {
            Ok(written) => {
                batch = written.batch;
                enricher = written.enricher;
                written.result
            }
            Err(error) => {
                // The blocking task panicked: a bug. The enricher went with it; without one
                // no event can be written, so stop (counted as dropped from here on).
                tracing::error!(%error, "the scan event writer failed; scan events stop");
                metrics::counter!("scan_events_dropped_total").increment(count);
                return;
            }
        };
        match (&*output, result) {
            (Output::Files(_), Ok(())) => {
                metrics::counter!("scan_events_written_total").increment(count);
            }
            // Delivery reports count what the topic took.
            (Output::Kafka { .. }, Ok(())) => {}
            (output, Err(error)) => {
                let dir = match output {
                    Output::Files(dir) => dir.display().to_string(),
                    Output::Kafka { topic, .. } => topic.clone(),
                };
                tracing::warn!(%error, events = count, %dir, "writing scan events failed; dropped");
                metrics::counter!("scan_events_dropped_total").increment(count);
            }
        }
    }
    if let Output::Kafka { producer, .. } = &*output {
        // Shutdown: deliver what librdkafka still holds, well within `finish`'s limit (a
        // broker that is gone must not turn a clean stop into an abandoned writer).
        let producer = Arc::clone(producer);
        let flushed = tokio::task::spawn_blocking(move || producer.flush(FINISH_WITHIN / 2)).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("some scan events were not delivered before shutdown");
        }
    }
}

/// Appends `events` to the files of their days (blocking).
fn append(dir: &Path, events: &[ScanEvent]) -> std::io::Result<()> {
    let mut lines = Vec::with_capacity(events.len() * 320);
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
/// One `write` of whole lines, so that a reader never sees half a line unless the disk filled.
fn write_day(dir: &Path, day: Option<NaiveDate>, lines: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let Some(day) = day else { return Ok(()) };
    std::fs::create_dir_all(dir)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{day}.jsonl")))?
        .write_all(lines)
}

fn produce(producer: &ThreadedProducer<Delivery>, topic: &str, events: &[ScanEvent]) {
    // One buffer for every payload: librdkafka copies a payload when it takes the record.
    let mut payload = Vec::with_capacity(512);
    for event in events {
        payload.clear();
        event.write_json(&mut payload);
        let record = BaseRecord::to(topic)
            .key(event.key.as_bytes())
            .payload(&payload);
        if producer.send(record).is_err() {
            metrics::counter!("scan_events_dropped_total").increment(1);
        }
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
