//! The events topic into the embedded store: for a process on the Kafka pool whose analytics
//! are embedded (`analytics.backend = "embedded"`, the default).
//!
//! On Kafka the middle pages put scan events on `kafka.events_topic`, not in files, so the
//! process that serves the analytics API reads the topic and appends its events to the daily
//! event files (`<data_dir>/scans/<UTC date>.jsonl`), which the [`FileFeed`](crate::FileFeed)
//! then ingests as it does on the embedded pool. It reads every partition itself, with no
//! consumer group: each data folder keeps a whole copy, and its position is its own, kept in
//! `relay.json` beside the store rather than in the broker.
//!
//! Exactly once into the files. After each batch the files are synced and then the
//! checkpoint (the next offset of each partition, the length of each file) is replaced,
//! written aside and renamed over. A crash between the two leaves lines beyond the
//! checkpoint's lengths: opening the relay cuts them off, and their messages are read again.
//! The ingest reads the files only while no batch is being appended (one lock, [`Appending`]),
//! so it never reads a line that is cut off later. A batch that fails to append (a full
//! disk) is cut off at once, and read again from the checkpoint after a pause.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use config::Settings;
use records::ScanEvent;

use crate::AnalyticsError;
use crate::feed::{ConsumerHandle, read_batch};

const CHECKPOINT: &str = "relay.json";
/// How often the topic's partitions are listed again (a topic may grow) and files that
/// retention removed are forgotten.
const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// Most events appended in one batch (a batch also ends `analytics.flush_secs` after its
/// first event).
const BATCH: usize = 20_000;
/// The longest pause after a failed append or an unreachable broker.
const MOST_BACKOFF: Duration = Duration::from_secs(30);

/// Held while event files change or are read: the relay appending a batch and writing its
/// checkpoint, the ingest reading them. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Appending(Arc<Mutex<()>>);

impl Appending {
    pub(crate) fn hold(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic while holding it left nothing half-changed that
        // the lock protects (the files are made whole again from the checkpoint).
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where the relay stands, in `<store>/relay.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Checkpoint {
    topic: String,
    /// By partition: the offset of the next message to read.
    offsets: BTreeMap<i32, i64>,
    /// By event file name (`2026-12-01.jsonl`): its length once the batches up to `offsets`
    /// were appended.
    lengths: BTreeMap<String, u64>,
}

/// The files side of the relay: appends batches and keeps the checkpoint. Blocking I/O.
#[derive(Debug)]
struct Files {
    events_dir: PathBuf,
    path: PathBuf,
    checkpoint: Checkpoint,
    appending: Appending,
    /// When the lengths of files retention removed were last dropped.
    forgotten: Instant,
}

impl Files {
    /// Reads the checkpoint and cuts each event file back to its length in it.
    fn open(store_root: &Path, events_dir: &Path, topic: &str) -> Result<Files, AnalyticsError> {
        let path = store_root.join(CHECKPOINT);
        let mut checkpoint: Checkpoint = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| AnalyticsError::Corrupt(format!("{}: {error}", path.display())))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Checkpoint::default(),
            Err(source) => return Err(AnalyticsError::io(&path, source)),
        };
        if checkpoint.topic != topic {
            if !checkpoint.topic.is_empty() {
                tracing::warn!(
                    was = %checkpoint.topic,
                    now = %topic,
                    "kafka.events_topic changed: the relay reads the new topic from its start"
                );
            }
            checkpoint.topic = topic.to_owned();
            checkpoint.offsets.clear();
        }
        std::fs::create_dir_all(events_dir)
            .map_err(|source| AnalyticsError::io(events_dir, source))?;
        let mut files = Files {
            events_dir: events_dir.to_owned(),
            path,
            checkpoint,
            appending: Appending::default(),
            forgotten: Instant::now(),
        };
        let lengths = files.checkpoint.lengths.clone();
        files.cut_back(&lengths)?;
        files.forget_removed();
        Ok(files)
    }

    /// Cuts each of `files` that is longer than its length there back to it: what lies
    /// beyond was appended by a batch whose checkpoint was never written.
    fn cut_back(&self, files: &BTreeMap<String, u64>) -> Result<(), AnalyticsError> {
        for (name, &length) in files {
            let path = self.events_dir.join(name);
            let file = match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(AnalyticsError::io(&path, source)),
            };
            let now = file
                .metadata()
                .map_err(|source| AnalyticsError::io(&path, source))?
                .len();
            if now > length {
                tracing::info!(
                    file = %path.display(),
                    bytes = now - length,
                    "cutting off events appended after the relay's last checkpoint; they are read again"
                );
                file.set_len(length)
                    .and_then(|()| file.sync_data())
                    .map_err(|source| AnalyticsError::io(&path, source))?;
            }
        }
        Ok(())
    }

    /// Drops the lengths of files that are gone (retention removed their day).
    fn forget_removed(&mut self) {
        self.forgotten = Instant::now();
        let events_dir = &self.events_dir;
        self.checkpoint
            .lengths
            .retain(|name, _| events_dir.join(name).exists());
    }

    /// Appends `events` to the files of their days, then records `offsets` as read.
    fn append(
        &mut self,
        events: &[ScanEvent],
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), AnalyticsError> {
        // Here, on the blocking thread, not in the loop that reads Kafka: it looks at files.
        if self.forgotten.elapsed() >= REFRESH_EVERY {
            self.forget_removed();
        }
        let mut by_day: BTreeMap<NaiveDate, Vec<u8>> = BTreeMap::new();
        for event in events {
            let lines = by_day.entry(event.at.date_naive()).or_default();
            // Written again rather than copied: a message with a line break in it would
            // otherwise become two broken lines.
            event.write_json(lines);
            lines.push(b'\n');
        }
        let appending = self.appending.clone();
        let _held = appending.hold();
        // Each file's length before this batch. One not in the checkpoint yet gets its length
        // there before anything is appended to it, so that whatever a crash leaves can be cut.
        let mut before = BTreeMap::new();
        let mut first_touched = false;
        for day in by_day.keys() {
            let name = file_name(*day);
            let length = match self.checkpoint.lengths.get(&name) {
                Some(&length) => length,
                None => {
                    first_touched = true;
                    let path = self.events_dir.join(&name);
                    match std::fs::metadata(&path) {
                        Ok(metadata) => metadata.len(),
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
                        Err(source) => return Err(AnalyticsError::io(&path, source)),
                    }
                }
            };
            before.insert(name, length);
        }
        if first_touched {
            let mut checkpoint = self.checkpoint.clone();
            checkpoint.lengths.extend(before.clone());
            self.save(checkpoint)?;
        }
        let mut next = self.checkpoint.clone();
        next.offsets.extend(offsets);
        let written = by_day.iter().try_for_each(|(day, lines)| {
            let name = file_name(*day);
            let length = append_synced(&self.events_dir.join(&name), lines)?;
            next.lengths.insert(name, length);
            Ok::<(), AnalyticsError>(())
        });
        let saved = written.and_then(|()| self.save(next));
        if saved.is_err() {
            // Nothing of this batch stays: its messages are read again after a pause.
            if let Err(error) = self.cut_back(&before) {
                tracing::warn!(%error, "cutting a failed batch off the event files failed; the relay cuts it when it opens again");
            }
        }
        saved
    }

    /// Replaces the checkpoint with `checkpoint`, durably.
    fn save(&mut self, checkpoint: Checkpoint) -> Result<(), AnalyticsError> {
        let temporary = self.path.with_file_name(format!(".{CHECKPOINT}.tmp"));
        let bytes = serde_json::to_vec(&checkpoint)
            .map_err(|error| AnalyticsError::Corrupt(error.to_string()))?;
        std::fs::write(&temporary, bytes)
            .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
            .map_err(|source| AnalyticsError::io(&temporary, source))?;
        std::fs::rename(&temporary, &self.path)
            .map_err(|source| AnalyticsError::io(&self.path, source))?;
        self.checkpoint = checkpoint;
        Ok(())
    }
}

/// Appends `lines` to the file at `path` in one write, syncs it, and returns its length.
fn append_synced(path: &Path, lines: &[u8]) -> Result<u64, AnalyticsError> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| AnalyticsError::io(path, source))?;
    file.write_all(lines)
        .and_then(|()| file.sync_data())
        .and_then(|()| file.metadata())
        .map(|metadata| metadata.len())
        .map_err(|source| AnalyticsError::io(path, source))
}

fn file_name(day: NaiveDate) -> String {
    format!("{day}.jsonl")
}

/// The events topic into the daily event files of one data folder.
#[derive(Debug)]
pub struct TopicRelay {
    consumer: ConsumerHandle,
    topic: String,
    /// `None` while a batch is appended on a blocking thread.
    files: Option<Files>,
    every: Duration,
    /// The partitions read now; empty until the topic could be listed.
    partitions: Vec<i32>,
}

impl TopicRelay {
    /// Opens the checkpoint in `store_root` (the embedded store's folder), makes the event
    /// files in `events_dir` whole again, and readies a consumer; nothing is read before
    /// [`TopicRelay::run`].
    pub fn open(
        settings: &Settings,
        store_root: &Path,
        events_dir: &Path,
    ) -> Result<TopicRelay, AnalyticsError> {
        let topic = settings.kafka.events_topic.clone();
        let files = Files::open(store_root, events_dir, &topic)?;
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &settings.kafka.brokers)
            // Only assigned partitions are read and no offset is committed: the group is a
            // name librdkafka asks for, not a consumer group anyone joins.
            .set("group.id", format!("{topic}.relay"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(AnalyticsError::Kafka)?;
        Ok(TopicRelay {
            consumer: ConsumerHandle(Arc::new(consumer)),
            topic,
            files: Some(files),
            every: Duration::from_secs(settings.analytics.flush_secs),
            partitions: Vec::new(),
        })
    }

    /// The lock the [`FileFeed`](crate::FileFeed) of the same files must hold while it reads
    /// them.
    pub fn appending(&self) -> Appending {
        self.files
            .as_ref()
            .map(|files| files.appending.clone())
            .unwrap_or_default()
    }

    /// Relays until `stop`; a batch in hand when it comes is appended first.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut refreshed: Option<Instant> = None;
        let mut backoff = Duration::from_millis(200);
        while !stop.is_cancelled() {
            if refreshed.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) {
                refreshed = Some(Instant::now());
                if let Err(error) = self.follow_partitions().await {
                    tracing::warn!(%error, topic = %self.topic, "listing the events topic's partitions failed; retrying");
                    refreshed = None;
                    pause(&stop, &mut backoff).await;
                    continue;
                }
            }
            let batch = match read_batch(&self.consumer, BATCH, self.every, &stop).await {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "reading the events topic failed");
                    pause(&stop, &mut backoff).await;
                    continue;
                }
            };
            let offsets: BTreeMap<i32, i64> = batch
                .next
                .into_iter()
                .filter(|((topic, _), _)| *topic == self.topic)
                .map(|((_, partition), offset)| (partition, offset))
                .collect();
            metrics::counter!("analytics_ingest_skipped_total").increment(batch.skipped);
            if offsets.is_empty() {
                continue;
            }
            match self.append(batch.events, offsets).await {
                Ok(count) => {
                    metrics::counter!("analytics_relayed_events_total").increment(count);
                    backoff = Duration::from_millis(200);
                }
                Err(error) => {
                    metrics::counter!("analytics_ingest_errors_total").increment(1);
                    tracing::warn!(%error, source = ?std::error::Error::source(&error), "appending scan events from the events topic failed; reading them again after a pause");
                    pause(&stop, &mut backoff).await;
                    // Back to where the checkpoint stands: the failed batch is read again.
                    if let Err(error) = self.assign() {
                        tracing::warn!(%error, "rewinding the events topic failed");
                        refreshed = None;
                    }
                }
            }
        }
    }

    /// Appends a batch on a blocking thread; how many events it held.
    async fn append(
        &mut self,
        events: Vec<records::ScanEvent>,
        offsets: BTreeMap<i32, i64>,
    ) -> Result<u64, AnalyticsError> {
        let Some(mut files) = self.files.take() else {
            return Err(AnalyticsError::Corrupt(
                "the relay's files were lost to an earlier panic".into(),
            ));
        };
        let count = events.len() as u64;
        let (files, appended) = tokio::task::spawn_blocking(move || {
            let appended = files.append(&events, &offsets);
            (files, appended)
        })
        .await
        .map_err(|error| AnalyticsError::Corrupt(format!("appending panicked: {error}")))?;
        self.files = Some(files);
        appended.map(|()| count)
    }

    /// Lists the topic's partitions; reads any it did not read yet.
    async fn follow_partitions(&mut self) -> Result<(), AnalyticsError> {
        let consumer = Arc::clone(&self.consumer.0);
        let topic = self.topic.clone();
        let partitions = tokio::task::spawn_blocking(move || {
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map_err(AnalyticsError::Kafka)?;
            let mut partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|listed| listed.name() == topic && listed.error().is_none())
                .flat_map(|listed| listed.partitions().iter().map(|partition| partition.id()))
                .collect();
            partitions.sort_unstable();
            Ok::<_, AnalyticsError>(partitions)
        })
        .await
        .map_err(|error| {
            AnalyticsError::Corrupt(format!("listing partitions panicked: {error}"))
        })??;
        if partitions.is_empty() {
            return Err(AnalyticsError::Corrupt(format!(
                "the events topic `{}` has no partitions yet",
                self.topic
            )));
        }
        if partitions != self.partitions {
            self.partitions = partitions;
            self.assign()?;
        }
        Ok(())
    }

    /// Reads every known partition from the checkpoint's offsets (a partition it has none
    /// for, from its start).
    fn assign(&self) -> Result<(), AnalyticsError> {
        let Some(files) = self.files.as_ref() else {
            return Ok(());
        };
        let mut assignment = TopicPartitionList::new();
        for &partition in &self.partitions {
            let offset = files
                .checkpoint
                .offsets
                .get(&partition)
                .map_or(Offset::Beginning, |&next| Offset::Offset(next));
            assignment
                .add_partition_offset(&self.topic, partition, offset)
                .map_err(AnalyticsError::Kafka)?;
        }
        self.consumer
            .0
            .assign(&assignment)
            .map_err(AnalyticsError::Kafka)
    }
}

/// Waits `backoff` (or until `stop`), then doubles it up to [`MOST_BACKOFF`].
async fn pause(stop: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(MOST_BACKOFF);
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::{TimeZone, Utc};
    use records::ScanKind;

    fn event(day: u32, key: &str) -> ScanEvent {
        let mut event = ScanEvent::new(
            ScanKind::Link,
            key.into(),
            "redirected",
            Utc.with_ymd_and_hms(2026, 12, day, 12, 0, 0).unwrap(),
        );
        event.tenant = Some("acme".into());
        event
    }

    /// Files in a new folder, after one batch of `k1` (day 1) that read partition 0 up to `next`.
    fn after_one_batch(next: i64) -> (tempfile::TempDir, PathBuf, Files) {
        let folder = tempfile::tempdir().unwrap();
        let events_dir = folder.path().join("scans");
        let mut files = Files::open(folder.path(), &events_dir, "scans").unwrap();
        files
            .append(&[event(1, "k1")], &BTreeMap::from([(0, next)]))
            .unwrap();
        (folder, events_dir, files)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| ScanEvent::from_json(line.as_bytes()).unwrap().key)
            .collect()
    }

    #[test]
    fn a_batch_goes_to_the_files_of_its_days_and_its_offsets_to_the_checkpoint() {
        let folder = tempfile::tempdir().unwrap();
        let events_dir = folder.path().join("scans");
        let mut files = Files::open(folder.path(), &events_dir, "scans").unwrap();
        files
            .append(
                &[event(1, "k1"), event(2, "k2"), event(1, "k3")],
                &BTreeMap::from([(0, 7), (1, 3)]),
            )
            .unwrap();
        assert_eq!(lines(&events_dir.join("2026-12-01.jsonl")), ["k1", "k3"]);
        assert_eq!(lines(&events_dir.join("2026-12-02.jsonl")), ["k2"]);
        let reopened = Files::open(folder.path(), &events_dir, "scans").unwrap();
        assert_eq!(
            reopened.checkpoint.offsets,
            BTreeMap::from([(0, 7), (1, 3)])
        );
        assert_eq!(
            reopened.checkpoint.lengths["2026-12-01.jsonl"],
            std::fs::metadata(events_dir.join("2026-12-01.jsonl"))
                .unwrap()
                .len()
        );
    }

    #[test]
    fn what_a_crash_appended_past_the_checkpoint_is_cut_off_when_the_relay_opens() {
        let folder = tempfile::tempdir().unwrap();
        let events_dir = folder.path().join("scans");
        // A file the embedded pool's writer had filled before the switch to Kafka.
        std::fs::create_dir_all(&events_dir).unwrap();
        let mut earlier = Vec::new();
        event(1, "before").write_json(&mut earlier);
        earlier.push(b'\n');
        std::fs::write(events_dir.join("2026-12-01.jsonl"), &earlier).unwrap();

        let mut files = Files::open(folder.path(), &events_dir, "scans").unwrap();
        files
            .append(&[event(1, "k1")], &BTreeMap::from([(0, 1)]))
            .unwrap();
        // The next batch reached the files, but the process died before its checkpoint.
        let mut lost = Vec::new();
        event(1, "k2").write_json(&mut lost);
        lost.push(b'\n');
        append_synced(&events_dir.join("2026-12-01.jsonl"), &lost).unwrap();
        append_synced(&events_dir.join("2026-12-03.jsonl"), &lost).unwrap();

        let reopened = Files::open(folder.path(), &events_dir, "scans").unwrap();
        assert_eq!(
            lines(&events_dir.join("2026-12-01.jsonl")),
            ["before", "k1"]
        );
        assert_eq!(reopened.checkpoint.offsets, BTreeMap::from([(0, 1)]));
        // A file the relay never wrote to is not its to cut.
        assert_eq!(lines(&events_dir.join("2026-12-03.jsonl")), ["k2"]);
    }

    #[test]
    fn a_batch_that_cannot_be_written_leaves_nothing_behind() {
        let (_folder, events_dir, mut files) = after_one_batch(1);
        // The second day's file cannot be made (a folder stands in its way), after the first
        // day's lines were appended.
        std::fs::create_dir(events_dir.join("2026-12-02.jsonl")).unwrap();
        let failed = files.append(&[event(1, "k2"), event(2, "k3")], &BTreeMap::from([(0, 3)]));
        assert!(failed.is_err());
        assert_eq!(lines(&events_dir.join("2026-12-01.jsonl")), ["k1"]);
        assert_eq!(files.checkpoint.offsets, BTreeMap::from([(0, 1)]));
    }

    #[test]
    fn another_topic_is_read_from_its_start() {
        let (folder, events_dir, _files) = after_one_batch(5);
        let other = Files::open(folder.path(), &events_dir, "other.scans").unwrap();
        assert!(other.checkpoint.offsets.is_empty());
        assert_eq!(
            other.checkpoint.lengths.len(),
            1,
            "the files stay the files"
        );
    }
}
