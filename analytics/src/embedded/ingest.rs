//! Ingest: the daily event files (`<data_dir>/scans/<date>.jsonl`) into Parquet.
//!
//! Each round reads what was appended to each day's file since the last round (whole lines
//! only: the writer appends whole lines, and a line still being written waits for the next
//! round), groups the events by tenant, and writes one `L0` file per tenant for that day,
//! named by the byte range it came from. Then the checkpoint (`ingest.json`, the offset
//! reached in each file) is replaced — written aside and renamed over, so it is either the
//! old one or the new one. A crash between the files and the checkpoint leaves files beyond
//! the checkpoint; opening the ingest deletes them, and the next round writes them again.
//! Exactly once, without an event id lookup.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use std::borrow::Cow;

use super::line::Line;

use super::{EmbeddedStore, FileName, live_files};
use crate::AnalyticsError;

/// Most bytes of one event file read in one round (the rest waits for the next).
const MAX_CHUNK: u64 = 64 << 20;
const CHECKPOINT: &str = "ingest.json";

/// How far each event file was ingested.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Checkpoint {
    /// By file name (`2026-12-01.jsonl`): the offset after the last line ingested.
    offsets: BTreeMap<String, u64>,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub events: u64,
    pub files_written: u64,
    /// Lines that were not events, or events without a tenant (an unknown code's scan).
    pub skipped: u64,
    /// Whether an event file still has more to read (a backlog larger than one chunk).
    pub more: bool,
    /// The oldest event ingested, so the lag from scan to store can be measured.
    pub oldest: Option<chrono::DateTime<Utc>>,
}

/// The ingest of one data folder; its rounds run one at a time (blocking I/O).
#[derive(Debug)]
pub struct Ingest {
    store: EmbeddedStore,
    events_dir: PathBuf,
    checkpoint: Checkpoint,
    /// The bytes read, kept between rounds: a new buffer of a chunk's size is a page fault
    /// per 4 KiB, which cost more than reading.
    buffer: Vec<u8>,
}

impl Ingest {
    /// Reads the checkpoint and deletes what a crash left beyond it.
    pub fn open(store: EmbeddedStore, events_dir: &Path) -> Result<Ingest, AnalyticsError> {
        let path = store.root().join(CHECKPOINT);
        let checkpoint = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| AnalyticsError::Corrupt(format!("{}: {error}", path.display())))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Checkpoint::default(),
            Err(source) => return Err(AnalyticsError::io(&path, source)),
        };
        let ingest = Ingest {
            store,
            events_dir: events_dir.to_owned(),
            checkpoint,
            buffer: Vec::new(),
        };
        ingest.clean()?;
        Ok(ingest)
    }

    /// Deletes temporary files, files a merge covers, and parts beyond the checkpoint.
    fn clean(&self) -> Result<(), AnalyticsError> {
        for day in self.store.days()? {
            let reached = self
                .checkpoint
                .offsets
                .get(&source_name(day))
                .copied()
                .unwrap_or(0);
            for tenant in self.store.tenants_on(day)? {
                let dir = self.store.partition_dir(day, &tenant);
                remove_temporary(&dir)?;
                let (live, redundant) =
                    live_files(&dir).map_err(|source| AnalyticsError::io(&dir, source))?;
                let uncommitted = live
                    .into_iter()
                    .filter(|(name, _)| name.level == 0 && name.start >= reached)
                    .map(|(_, path)| path);
                for path in redundant.into_iter().chain(uncommitted) {
                    tracing::info!(file = %path.display(), "removing an analytics file left by an interrupted ingest or merge");
                    remove(&path)?;
                }
            }
        }
        Ok(())
    }

    /// Ingests what was appended since the last round.
    pub fn round(&mut self) -> Result<Round, AnalyticsError> {
        let mut round = Round::default();
        let mut sources: Vec<(NaiveDate, PathBuf)> = Vec::new();
        let entries = match std::fs::read_dir(&self.events_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(round),
            Err(source) => return Err(AnalyticsError::io(&self.events_dir, source)),
        };
        for entry in entries {
            let entry = entry.map_err(|source| AnalyticsError::io(&self.events_dir, source))?;
            if let Some(day) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_suffix(".jsonl"))
                .and_then(|day| NaiveDate::parse_from_str(day, "%Y-%m-%d").ok())
            {
                sources.push((day, entry.path()));
            }
        }
        sources.sort();
        for (day, path) in sources {
            self.ingest_file(day, &path, &mut round)?;
        }
        Ok(round)
    }

    fn ingest_file(
        &mut self,
        day: NaiveDate,
        path: &Path,
        round: &mut Round,
    ) -> Result<(), AnalyticsError> {
        let name = source_name(day);
        let start = self.checkpoint.offsets.get(&name).copied().unwrap_or(0);
        let mut file =
            std::fs::File::open(path).map_err(|source| AnalyticsError::io(path, source))?;
        let length = file
            .metadata()
            .map_err(|source| AnalyticsError::io(path, source))?
            .len();
        if length <= start {
            return Ok(());
        }
        let wanted = (length - start).min(MAX_CHUNK);
        round.more |= length - start > MAX_CHUNK;
        file.seek(SeekFrom::Start(start))
            .map_err(|source| AnalyticsError::io(path, source))?;
        let mut bytes = std::mem::take(&mut self.buffer);
        bytes.clear();
        file.take(wanted)
            .read_to_end(&mut bytes)
            .map_err(|source| AnalyticsError::io(path, source))?;
        let result = self.ingest_chunk(day, path, &name, start, wanted, &bytes, round);
        self.buffer = bytes;
        result
    }

    /// Ingests the whole lines of `bytes`, read from `start` in `day`'s event file.
    #[allow(clippy::too_many_arguments)]
    fn ingest_chunk(
        &mut self,
        day: NaiveDate,
        path: &Path,
        name: &str,
        start: u64,
        wanted: u64,
        bytes: &[u8],
        round: &mut Round,
    ) -> Result<(), AnalyticsError> {
        // Whole lines only.
        let Some(last_newline) = bytes.iter().rposition(|b| *b == b'\n') else {
            if wanted == MAX_CHUNK {
                // A single "line" longer than a chunk is no event: step over it.
                tracing::warn!(file = %path.display(), offset = start, "skipping an overlong line in an event file");
                round.skipped += 1;
                self.commit(name, start + wanted)?;
            }
            return Ok(());
        };
        let end = start + last_newline as u64 + 1;
        // The writer files each event under its own UTC day; anything else was put there by
        // hand, and would be counted under the wrong day.
        let day_start = day
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp_micros());
        let day_end = day_start + 86_400_000_000;
        // Lines stay where they are parsed; each tenant gets the indices of its own.
        let chunk = &bytes[..=last_newline];
        // Checked as UTF-8 once, whole (lines are then sliced, not checked again); a chunk with
        // a bad byte somewhere is read line by line, and the bad line skipped.
        let text = std::str::from_utf8(chunk).ok();
        let mut lines: Vec<Line<'_>> = Vec::with_capacity(chunk.len() / 256);
        let mut by_tenant: BTreeMap<Cow<'_, str>, Vec<u32>> = BTreeMap::new();
        let mut oldest = i64::MAX;
        // Each line as text when the chunk is, else as bytes (checked on its own).
        let all_lines: Box<dyn Iterator<Item = Result<&str, &[u8]>>> = match text {
            Some(text) => Box::new(text.split('\n').map(Ok)),
            None => Box::new(chunk.split(|b| *b == b'\n').map(Err)),
        };
        for line in all_lines {
            let bytes = match line {
                Ok(text) => text.as_bytes(),
                Err(bytes) => bytes,
            };
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            lines.push(Line::default());
            let Some(slot) = lines.last_mut() else { break };
            let read = match line {
                Ok(text) => slot.read_text(text),
                Err(bytes) => slot.read(bytes),
            };
            if !read {
                lines.pop();
                tracing::debug!(file = %path.display(), "skipping a line that is no scan event");
                round.skipped += 1;
                continue;
            }
            let Some(event) = lines.last() else { break };
            // Events of no tenant (a scan of an unknown code) belong to nobody's analytics.
            // (A clone of a borrowed tenant copies nothing.)
            let tenant = event
                .tenant
                .clone()
                .filter(|_| (day_start..day_end).contains(&event.at));
            let Some(tenant) = tenant else {
                lines.pop();
                round.skipped += 1;
                continue;
            };
            oldest = oldest.min(event.at);
            let index = u32::try_from(lines.len() - 1).unwrap_or(u32::MAX);
            by_tenant.entry(tenant).or_default().push(index);
        }
        if oldest != i64::MAX {
            round.oldest = chrono::DateTime::from_timestamp_micros(oldest);
        }
        let file_name = FileName {
            level: 0,
            start,
            end,
        };
        let mut written = Vec::with_capacity(by_tenant.len());
        for (tenant, indices) in &by_tenant {
            let refs: Vec<&Line<'_>> = indices.iter().map(|i| &lines[*i as usize]).collect();
            written.push(self.store.write_file(day, tenant, file_name, &refs)?);
            round.files_written += 1;
            round.events += refs.len() as u64;
        }
        self.store.publish(written)?;
        self.commit(name, end)
    }

    /// Records `offset` as ingested in `source`, durably.
    fn commit(&mut self, source: &str, offset: u64) -> Result<(), AnalyticsError> {
        self.checkpoint.offsets.insert(source.to_owned(), offset);
        let path = self.store.root().join(CHECKPOINT);
        let temporary = self.store.root().join(format!(".{CHECKPOINT}.tmp"));
        let bytes = serde_json::to_vec_pretty(&self.checkpoint)
            .map_err(|error| AnalyticsError::Corrupt(error.to_string()))?;
        std::fs::write(&temporary, bytes)
            .map_err(|source| AnalyticsError::io(&temporary, source))?;
        std::fs::File::open(&temporary)
            .and_then(|file| file.sync_all())
            .map_err(|source| AnalyticsError::io(&temporary, source))?;
        std::fs::rename(&temporary, &path).map_err(|source| AnalyticsError::io(&path, source))
    }

    /// Forgets the event files of days before `day` (their files were deleted by retention).
    pub fn forget_before(&mut self, day: NaiveDate) -> Result<(), AnalyticsError> {
        let old: Vec<String> = self
            .checkpoint
            .offsets
            .keys()
            .filter(|name| {
                name.strip_suffix(".jsonl")
                    .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                    .is_some_and(|d| d < day)
            })
            .cloned()
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        for name in &old {
            self.checkpoint.offsets.remove(name);
        }
        // Rewrites the checkpoint with what is left.
        match self.checkpoint.offsets.iter().next() {
            Some((name, offset)) => {
                let (name, offset) = (name.clone(), *offset);
                self.commit(&name, offset)
            }
            None => {
                let path = self.store.root().join(CHECKPOINT);
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(source) => Err(AnalyticsError::io(&path, source)),
                }
            }
        }
    }

    /// The offset reached in `day`'s event file.
    pub fn reached(&self, day: NaiveDate) -> u64 {
        self.checkpoint
            .offsets
            .get(&source_name(day))
            .copied()
            .unwrap_or(0)
    }

    pub fn store(&self) -> &EmbeddedStore {
        &self.store
    }

    pub fn events_dir(&self) -> &Path {
        &self.events_dir
    }
}

fn source_name(day: NaiveDate) -> String {
    format!("{day}.jsonl")
}

pub(crate) fn remove(path: &Path) -> Result<(), AnalyticsError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AnalyticsError::io(path, source)),
    }
}

pub(crate) fn remove_temporary(dir: &Path) -> Result<(), AnalyticsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(AnalyticsError::io(dir, source)),
    };
    for entry in entries {
        let entry = entry.map_err(|source| AnalyticsError::io(dir, source))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with('.') && name.ends_with(".tmp"))
        {
            remove(&entry.path())?;
        }
    }
    Ok(())
}
