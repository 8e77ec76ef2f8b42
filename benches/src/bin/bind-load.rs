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
//! The harness shares the machine with what it measures, so it is lean: one kept-alive
//! HTTP/1 connection per client on hyper's connection API, the body formatted by hand, the
//! answer read whole and its status checked. (On reqwest it took about 45 µs of CPU per bind,
//! a fifth of the machine in a Kafka + Redis + PostgreSQL run.)
//!
//! `cargo run --release -p benches --bin bind-load -- --base http://127.0.0.1:8080 --key qrp_… --requests 20000 --concurrency 64`
//! `cargo run --release -p benches --bin bind-load -- --base http://127.0.0.1:8080 --key qrp_… --requests 20000 --rate 5000 --concurrency 512`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use benches::Server;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Uri};

#[derive(Debug, Parser)]
struct Args {
    /// Where qrpool serves the codes API (`http://host:port`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// An API key with the `bind` scope (`qrpool keys create --tenant … --rate …`).
    #[arg(long, env = "QRPOOL_KEY")]
    key: String,
    /// Binds to make; each takes one code from the pool.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Clients, each on its own connection with one bind in flight. With `--rate`, the most
    /// binds in flight: a bind due when every client is busy waits, and the wait counts in
    /// its latency.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Binds started per second on a fixed schedule (open load), instead of closed load.
    #[arg(long)]
    rate: Option<u32>,
    /// A label for the printed line (which backends were measured).
    #[arg(long, default_value = "binds")]
    label: String,
}

/// Where and how to send a bind.
struct Target {
    server: Server,
    uri: Uri,
    authorization: HeaderValue,
}

impl Target {
    fn new(base: &str, key: &str) -> anyhow::Result<Self> {
        let server = Server::parse(base)?;
        Ok(Target {
            uri: format!("{}/v1/codes", server.base_path).parse()?,
            authorization: HeaderValue::from_str(&format!("Bearer {key}"))?,
            server,
        })
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        self.server.connect().await
    }

    /// One bind; `Err` with what went wrong unless it was answered 201.
    async fn bind(&self, sender: &mut SendRequest<Full<Bytes>>, i: usize) -> Result<(), String> {
        let body = format!(
            r#"{{"params":{{"listing":"L-{i}","agent":{},"channel":"load"}}}}"#,
            i % 977
        );
        let request = Request::post(self.uri.clone())
            .header(HOST, self.server.host.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| error.to_string())?;
        sender.ready().await.map_err(|error| error.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        // Read the whole answer: a bind is done when the client has it.
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| error.to_string())?
            .to_bytes();
        if status != 201 {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(())
    }
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = Arc::new(Target::new(&args.base, &args.key)?);

    // One bind first, so that a cold consumer group is not measured.
    let mut warm = target.connect().await?;
    if let Err(error) = target.bind(&mut warm, usize::MAX).await {
        bail!("the warm-up bind failed: {error}");
    }
    drop(warm);
    let mut senders = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency.max(1) {
        senders.push(target.connect().await?);
    }

    let next = Arc::new(AtomicUsize::new(0));
    // Open load: bind i is due at started + i / rate.
    let interval = args.rate.map(|rate| Duration::from_secs(1) / rate.max(1));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for mut sender in senders {
        let (target, next, requests) = (Arc::clone(&target), Arc::clone(&next), args.requests);
        clients.spawn(async move {
            let mut seen = Seen::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return seen;
                }
                let due = match interval {
                    Some(interval) => {
                        let due = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                match target.bind(&mut sender, i).await {
                    Ok(()) => seen.latencies.push(due.elapsed()),
                    Err(error) => {
                        seen.errors.push(error);
                        // The connection may be gone; the next bind gets a new one.
                        match target.connect().await {
                            Ok(fresh) => sender = fresh,
                            Err(error) => {
                                seen.errors.push(error.to_string());
                                return seen;
                            }
                        }
                    }
                }
            }
        });
    }
    let mut latencies = Vec::with_capacity(args.requests);
    let mut errors = Vec::new();
    while let Some(seen) = clients.join_next().await {
        let seen = seen?;
        latencies.extend(seen.latencies);
        errors.extend(seen.errors);
    }
    let elapsed = started.elapsed();

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
