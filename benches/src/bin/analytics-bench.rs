//! The embedded analytics store, measured: `benches/analytics-vs-peers.sh` drives it.
//!
//! ```text
//! analytics-bench generate --dir D --events 10000000 --tenants 50 --days 30
//!     realistic scan events (analytics::synthetic), written as the scan writer writes them:
//!     D/scans/<day>.jsonl
//! analytics-bench ingest --dir D [--keep-parts]
//!     ingests them all into D/analytics (Parquet by day and tenant), then merges the days
//!     (unless --keep-parts); prints events/s of the ingest and the time of the merges
//! analytics-bench merge --dir D [--ask TENANT] [--today DAY]
//!     merges what `ingest --keep-parts` left, as when the days are over (or as during DAY),
//!     in a process of its own: prints the merges' time and the resident memory they took at
//!     their peak (with --ask, after the dashboard's questions of TENANT, which the merges
//!     then answer ahead)
//! analytics-bench query --dir D --tenant T --runs 15
//!     the dashboard's queries over the last 30 days of T, each run RUNS times; one JSON line
//!     per query: its name, the median and the fastest time, and its answer's totals
//! ```

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use chrono::{Duration, NaiveDate};
use clap::{Parser, Subcommand};

use analytics::embedded::EmbeddedStore;
use analytics::embedded::ingest::Ingest;
use analytics::query::{Dimension, Granularity, ScansQuery};
use records::Tenant;

/// The allocator qrpool runs the ingest and the queries on (see `qrpool/src/main.rs`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Generate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 10_000_000)]
        events: usize,
        #[arg(long, default_value_t = 50)]
        tenants: usize,
        #[arg(long, default_value_t = 2_000)]
        keys: usize,
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(long, default_value = "2026-11-01")]
        first_day: NaiveDate,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    Ingest {
        #[arg(long)]
        dir: PathBuf,
        /// Leave each partition in the files the ingest wrote, as today's is during the day
        /// (queries then count distinct visitors across files), instead of merging them.
        #[arg(long)]
        keep_parts: bool,
    },
    Merge {
        #[arg(long)]
        dir: PathBuf,
        /// Before merging, ask the dashboard's questions of TENANT's days with the API's
        /// 512 MiB query cache, as a console open on them does: the merges then answer them
        /// ahead for the files they write, as qrpool's do, and the peak counts that too.
        #[arg(long, value_name = "TENANT")]
        ask: Option<String>,
        #[arg(long, default_value = "2026-11-01")]
        first_day: NaiveDate,
        #[arg(long, default_value_t = 1)]
        days: i64,
        /// Merge as qrpool does while DAY is today: that day's files by level (sixteen parts
        /// into one), their answers kept for counting visitors across files; by default every
        /// day is over and becomes one file.
        #[arg(long, value_name = "DAY")]
        today: Option<NaiveDate>,
    },
    Query {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "tenant-000")]
        tenant: String,
        #[arg(long, default_value = "2026-11-01")]
        first_day: NaiveDate,
        #[arg(long, default_value_t = 30)]
        days: i64,
        #[arg(long, default_value_t = 15)]
        runs: usize,
        /// Keep decoded columns and each file's answers between runs, as the API does
        /// (`analytics.query_cache_mb`): the first run reads the files, the others find
        /// their answers kept. 0 reads the files every time.
        #[arg(long, default_value_t = 0)]
        cache_mb: u64,
    },
}

/// The questions a dashboard asks of one tenant's month.
pub fn dashboard(
    tenant: &Tenant,
    first_day: NaiveDate,
    days: i64,
) -> Vec<(&'static str, ScansQuery)> {
    let from = first_day
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or_default();
    let base = ScansQuery {
        tenant: tenant.clone(),
        from,
        to: from + Duration::days(days),
        tz: chrono_tz::Tz::UTC,
        granularity: Granularity::None,
        group_by: None,
        filters: Vec::new(),
        bots: false,
        limit: 10,
    };
    let grouped = |dimension| ScansQuery {
        group_by: Some(dimension),
        ..base.clone()
    };
    vec![
        (
            "time series by day",
            ScansQuery {
                granularity: Granularity::Day,
                ..base.clone()
            },
        ),
        ("top countries", grouped(Dimension::Country)),
        ("devices", grouped(Dimension::Device)),
        ("browsers", grouped(Dimension::Browser)),
        ("referrers", grouped(Dimension::Referrer)),
        ("QR vs click", grouped(Dimension::ViaQr)),
        ("top keys", grouped(Dimension::Key)),
    ]
}

fn main() -> anyhow::Result<()> {
    // As qrpool runs (see `qrpool/src/main.rs`): without transparent huge pages.
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    match Cli::parse().command {
        Command::Generate {
            dir,
            events,
            tenants,
            keys,
            days,
            first_day,
            seed,
        } => {
            let scans = dir.join("scans");
            std::fs::create_dir_all(&scans).with_context(|| scans.display().to_string())?;
            let shape = analytics::synthetic::Shape {
                events,
                tenants,
                keys,
                first_day,
                days,
                seed,
            };
            let started = Instant::now();
            let mut written = 0usize;
            let mut bytes = 0usize;
            let mut failed = None;
            analytics::synthetic::for_each_day(&shape, |day| {
                let Some(first) = day.first() else { return };
                let path = scans.join(format!("{}.jsonl", first.at.date_naive()));
                let mut text = Vec::with_capacity(day.len() * 400);
                for event in &day {
                    event.write_json(&mut text);
                    text.push(b'\n');
                }
                written += day.len();
                bytes += text.len();
                if let Err(error) =
                    std::fs::File::create(&path).and_then(|mut f| f.write_all(&text))
                {
                    failed = Some((path, error));
                }
            });
            if let Some((path, error)) = failed {
                return Err(error).with_context(|| path.display().to_string());
            }
            println!(
                "generated {written} events ({:.0} MB of event files) in {:.1} s",
                bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
        Command::Ingest { dir, keep_parts } => {
            let store = EmbeddedStore::open(&dir.join("analytics"))?;
            let mut ingest = Ingest::open(store.clone(), &dir.join("scans"))?;
            let started = Instant::now();
            let mut events = 0;
            let mut files = 0;
            loop {
                let round = ingest.round()?;
                events += round.events;
                files += round.files_written;
                if !round.more {
                    break;
                }
            }
            let took = started.elapsed().as_secs_f64();
            println!(
                "ingested {events} events into {files} files in {took:.2} s: {:.0} events/s",
                events as f64 / took
            );
            if keep_parts {
                return Ok(());
            }
            let started = Instant::now();
            let merged = store.compact(NaiveDate::MAX)?;
            println!(
                "merged {} files into {} in {:.2} s",
                merged.files_merged,
                merged.merges,
                started.elapsed().as_secs_f64()
            );
        }
        Command::Merge {
            dir,
            ask,
            first_day,
            days,
            today,
        } => {
            let mut store = EmbeddedStore::open(&dir.join("analytics"))?;
            if let Some(tenant) = ask {
                let cache_mb = config::AnalyticsSettings::default().query_cache_mb;
                store = store.with_query_cache(cache_mb << 20);
                let tenant = Tenant::parse(&tenant).context("--ask")?;
                for (_, query) in dashboard(&tenant, first_day, days) {
                    store.query(&query)?;
                }
            }
            let before = resident_peak_reset()?;
            let started = Instant::now();
            let merged = store.compact(today.unwrap_or(NaiveDate::MAX))?;
            let took = started.elapsed().as_secs_f64();
            let peak = resident_kib("VmHWM")?;
            println!(
                "merged {} files into {} in {took:.2} s; resident peak {:.1} MiB, {:.1} MiB above the {:.1} MiB before",
                merged.files_merged,
                merged.merges,
                peak as f64 / 1024.0,
                peak.saturating_sub(before) as f64 / 1024.0,
                before as f64 / 1024.0,
            );
        }
        Command::Query {
            dir,
            tenant,
            first_day,
            days,
            runs,
            cache_mb,
        } => {
            let store =
                EmbeddedStore::open(&dir.join("analytics"))?.with_query_cache(cache_mb << 20);
            let tenant = Tenant::parse(&tenant).context("--tenant")?;
            for (name, query) in dashboard(&tenant, first_day, days) {
                let mut times = Vec::with_capacity(runs);
                let mut answer = None;
                for _ in 0..runs.max(1) {
                    let started = Instant::now();
                    answer = Some(store.query(&query)?);
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                }
                let first_ms = times[0];
                times.sort_by(f64::total_cmp);
                let answer = answer.context("no run")?;
                let first = answer.rows.first();
                println!(
                    "{}",
                    serde_json::json!({
                        "query": name,
                        "first_ms": first_ms,
                        "median_ms": times[times.len() / 2],
                        "fastest_ms": times[0],
                        "scans": answer.totals.scans,
                        "visitors": answer.totals.visitors,
                        "rows": answer.rows.len(),
                        "first_group": first.and_then(|row| row.group.clone()),
                        "first_scans": first.map(|row| row.scans),
                    })
                );
            }
        }
    }
    Ok(())
}

/// Resets the process's resident peak to what it holds now (Linux's `clear_refs` 5), and
/// returns that.
fn resident_peak_reset() -> anyhow::Result<u64> {
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the resident peak")?;
    resident_kib("VmHWM")
}

/// A `/proc/self/status` figure in KiB (`VmHWM`, the resident peak; `VmRSS`).
fn resident_kib(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}
