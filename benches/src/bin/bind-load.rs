//! The bind load harness: drives `POST /v1/codes` like many listing apps at once and prints
//! binds/s with latency percentiles. Only 201 answers count as binds; anything else is
//! reported as an error and fails the run, so a figure is never made of failures.
//!
//! Two ways to load: closed (`--concurrency` clients, each sending its next bind when the last
//! one is answered: the most binds/s the system gives) and open (`--rate` binds/s started on
//! a fixed schedule whatever the answers do, as independent apps would: the latency at a
//! given load). An open run times each bind from when it was due, not from when it was sent,
//! so a stall shows in the percentiles instead of slowing the schedule (no coordinated
//! omission).
//!
//! `cargo run --release -p benches --bin bind-load -- --base http://127.0.0.1:8080 --key qrp_… --requests 20000 --concurrency 64`
//! `cargo run --release -p benches --bin bind-load -- --base http://127.0.0.1:8080 --key qrp_… --requests 20000 --rate 5000`

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use futures::StreamExt;

#[derive(Debug, Parser)]
struct Args {
    /// Where qrpool serves the codes API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// An API key with the `bind` scope (`qrpool keys create --tenant … --rate …`).
    #[arg(long, env = "QRPOOL_KEY")]
    key: String,
    /// Binds to make; each takes one code from the pool.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Requests in flight at once (closed load); with `--rate`, the most in flight (a bind due
    /// beyond it waits, and the wait counts in its latency).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Binds started per second on a fixed schedule (open load), instead of closed load.
    #[arg(long)]
    rate: Option<u32>,
    /// A label for the printed line (which backends were measured).
    #[arg(long, default_value = "binds")]
    label: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", args.key).parse()?,
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("{}/v1/codes", args.base);

    // One bind first, so that connection set-up and a cold consumer group are not measured.
    let warm = client
        .post(&url)
        .json(&serde_json::json!({"params": {"warmup": true}}))
        .send()
        .await?;
    if warm.status() != 201 {
        bail!(
            "the warm-up bind answered {}: {}",
            warm.status(),
            warm.text().await.unwrap_or_default()
        );
    }

    let started = Instant::now();
    // Open load: bind i is due at i / rate; a stream of due times, each waited for.
    let interval = args.rate.map(|rate| Duration::from_secs(1) / rate.max(1));
    let results: Vec<Result<Duration, String>> = futures::stream::iter(0..args.requests)
        .then(|i| async move {
            let due = match interval {
                Some(interval) => {
                    let due = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
                    tokio::time::sleep_until(due.into()).await;
                    due
                }
                None => Instant::now(),
            };
            (i, due)
        })
        .map(|(i, due)| {
            let (client, url) = (&client, &url);
            async move {
                let body = serde_json::json!({"params": {"listing": format!("L-{i}"), "agent": i % 977, "channel": "load"}});
                let sent = due;
                match client.post(url).json(&body).send().await {
                    Ok(response) if response.status() == 201 => {
                        // Read the whole answer: a bind is done when the client has it.
                        response.bytes().await.map_err(|e| e.to_string())?;
                        Ok(sent.elapsed())
                    }
                    Ok(response) => Err(format!("status {}", response.status())),
                    Err(error) => Err(error.to_string()),
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut latencies: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    latencies.sort_unstable();
    let percentile = |p: f64| -> Duration {
        let index = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        latencies.get(index).copied().unwrap_or_default()
    };
    let load = match args.rate {
        Some(rate) => format!("open load {rate}/s"),
        None => format!("concurrency {}", args.concurrency),
    };
    println!(
        "{:<28} {:>7} binds in {:>6.2} s = {:>8.0} binds/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({load}, errors {})",
        args.label,
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(0.50).as_secs_f64() * 1e3,
        percentile(0.99).as_secs_f64() * 1e3,
        errors.len(),
    );
    if let Some(first) = errors.first() {
        bail!("{} binds failed; the first: {first}", errors.len());
    }
    Ok(())
}
