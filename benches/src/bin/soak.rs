//! The soak harness: a mix of what production sends (binds, scans of codes, scans of links,
//! link edits, analytics queries) for a long time, with a line a minute and a verdict at the
//! end. Run by `benches/soak.sh`, which starts qrpool on Kafka + Redis + PostgreSQL.
//!
//! Two steps. `--probe-secs N` first: closed load (every connection sends its next request as
//! soon as the last is answered) for N seconds to settle, then N seconds more give the
//! capacity of the mix on this machine.
//! Then open load at `--rate` requests/s for `--minutes`: request i is due at start + i / rate,
//! whatever the answers do, and its latency counts from when it was due (a stall shows in the
//! percentiles instead of slowing the schedule), each kind of request on connections of its
//! own, as different clients send them, on an idle one or a new one when all are busy (as a
//! client's connection pool does, up to a bound: within it the harness holds no due request
//! back). The mix is the same in both: of every 1,000
//! requests, 300 binds, 550 scans of bound codes, 140 scans of links, 9 link edits; beside
//! it, analytics queries at a rate of their own (`--queries-per-minute`, 30), as dashboards
//! are not asked once per thousand scans and each reads a month of the store, taking the
//! console's questions in turn ([`DASHBOARD`]).
//!
//! Scans come from phones ([`Phone`]): each names its address in `X-Forwarded-For` (qrpool
//! trusts the harness as its load balancer: `server.trusted_proxies`) and sends one of a few
//! hundred real-world user agents, so the analytics store counts as many visitors as a busy
//! day brings, not one.
//!
//! The verdict, after the warm-up (`--warmup-minutes`, 5): resident memory of the qrpool
//! process (`--pid`), read every second, does not grow: no stretch as long as the warm-up
//! after it has a median more than 10 % above the warm-up's (see [`Resident`] for why a
//! median of every second and not the highest of a sample a minute), its open
//! descriptors (less the harness's connections to it) in the median minute stay within 16
//! of the warm-up's, each minute's p99 is within 1.5x the first five minutes', no request
//! failed, `scan_events_dropped_total` is 0, and at least 99 % of the binds after the warm-up
//! took a code from the pool (a bind that finds its lane dry draws one on demand and
//! succeeds, so neither the errors nor the latencies would show a soak that has stopped
//! measuring the pool). It exits non-zero when one of those fails.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use benches::Server;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Uri};

/// What the console asks of the analytics API to draw its overview and audience pages, over
/// its default range (the last 30 days), asked in turn.
const DASHBOARD: [&str; 14] = [
    "granularity=day",
    "group_by=via_qr",
    "group_by=key&limit=10",
    "group_by=country&limit=300",
    "group_by=region&limit=10",
    "group_by=city&limit=10",
    "group_by=device&limit=10",
    "group_by=browser&limit=10",
    "group_by=os&limit=10",
    "group_by=referrer&limit=10",
    "group_by=utm_source&limit=10",
    "group_by=utm_medium&limit=10",
    "group_by=utm_campaign&limit=10",
    "group_by=variant&limit=10",
];

/// Phones that scan: a day of a busy tenant's visitors.
const PHONES: u64 = 200_000;

/// Phone user agents as they arrive, with the build that varies between phones as `{}`.
const USER_AGENTS: [&str; 8] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_{} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.{}(0x18003030) NetType/WIFI Language/zh_CN",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.{} Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.6045.{} Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 12; M2102J20SG) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/110.0.5481.{} Mobile Safari/537.36 XWEB/5023 MMWEBSDK/20230504 MicroMessenger/8.0.37.2380(0x2800253D) WeChat/arm64 Weixin NetType/4G Language/zh_CN ABI/arm64",
    "Mozilla/5.0 (Linux; Android 13; 22081212C) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.{} Mobile Safari/537.36 AlipayClient/10.5.{}",
    "Mozilla/5.0 (iPad; CPU OS 17_{} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.{} Safari/537.36",
];

/// Builds of each user agent in use: 8 x 50 = 400 distinct user agents, as a crowd sends.
const BUILDS: u64 = 50;

/// A phone that scans: its address (as its carrier's network shows it) and user agent.
struct Phone {
    address: HeaderValue,
    user_agent: HeaderValue,
}

impl Phone {
    /// The phone that sends scan `i` (Knuth's multiplicative hash spreads the scans of one
    /// phone through the run, as people scan at any time).
    fn of_scan(i: usize) -> Phone {
        let phone = (i as u64).wrapping_mul(2_654_435_761) % PHONES;
        let mixed = (phone.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32;
        let [first, b, c, d] = mixed.to_be_bytes();
        // Public-looking unicast: neither 0, 10 (private), 127 (loopback) nor multicast.
        let first = match 1 + first % 223 {
            10 | 127 => 11,
            other => other,
        };
        // Made once: the harness shares the machine with what it measures.
        static AGENTS: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
            (0..BUILDS)
                .flat_map(|build| {
                    USER_AGENTS.iter().map(move |agent| {
                        HeaderValue::from_str(&agent.replace("{}", &build.to_string()))
                            .unwrap_or(HeaderValue::from_static("Mozilla/5.0"))
                    })
                })
                .collect()
        });
        Phone {
            address: HeaderValue::from_str(&format!("{first}.{b}.{c}.{d}"))
                .unwrap_or(HeaderValue::from_static("192.0.2.1")),
            user_agent: AGENTS[(phone % (BUILDS * USER_AGENTS.len() as u64)) as usize].clone(),
        }
    }
}

#[derive(Debug, Parser)]
struct Args {
    /// Where qrpool serves (`http://host:port`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// An API key with the bind, read and admin scopes.
    #[arg(long, env = "QRPOOL_KEY")]
    key: String,
    /// The qrpool process, whose memory and descriptors are watched.
    #[arg(long)]
    pid: u32,
    /// Seconds of closed load to measure the mix's capacity; 0 skips it.
    #[arg(long, default_value_t = 0)]
    probe_secs: u64,
    /// Requests/s of the soak; by default half the probe's capacity (the probe still runs
    /// when both are given).
    #[arg(long)]
    rate: Option<u32>,
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    #[arg(long, default_value_t = 5)]
    warmup_minutes: u64,
    /// Writes a line a second of the binds due in it (count, p50, p99, slowest in ms) to
    /// this file: a minute's p99 averages a stall of a second or two away.
    #[arg(long)]
    binds_by_second: Option<std::path::PathBuf>,
    /// Writes qrpool's resident memory each second (`<unix second> <KiB>`) to this file.
    #[arg(long)]
    resident_by_second: Option<std::path::PathBuf>,
    /// Connections, each with one request in flight.
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Links made at the start, scanned and edited throughout.
    #[arg(long, default_value_t = 200)]
    links: usize,
    /// Analytics queries a minute in the soak, on a schedule of their own: a few marketers'
    /// dashboards, whatever the scan rate (each reads every scan of the tenant so far).
    #[arg(long, default_value_t = 30)]
    queries_per_minute: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Bind,
    Scan,
    LinkScan,
    LinkEdit,
    Query,
}

impl Kind {
    /// Request i's kind: of every 1,000, 300 binds, 550 scans, 140 link scans, 9 edits and 1
    /// query, spread through the thousand (7,919 is prime to 1,000) rather than in runs.
    fn of(i: usize) -> Kind {
        match (i % 1000) * 7919 % 1000 {
            0 => Kind::Query,
            1..=9 => Kind::LinkEdit,
            10..=309 => Kind::Bind,
            310..=449 => Kind::LinkScan,
            _ => Kind::Scan,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Bind => "bind",
            Kind::Scan => "scan",
            Kind::LinkScan => "link scan",
            Kind::LinkEdit => "link edit",
            Kind::Query => "query",
        }
    }
}

/// What the harness needs to make requests: the server, the key, bound codes and links.
struct Target {
    server: Server,
    authorization: HeaderValue,
    /// The most recent bound request ids (a ring), scanned as phones would.
    codes: Mutex<Vec<String>>,
    links: Vec<String>,
    edits: AtomicUsize,
    /// Analytics queries sent, to take the console's questions in turn.
    queries: AtomicUsize,
    /// Each query answered: its question (an index of [`DASHBOARD`]), when it was sent and
    /// how long it took to answer; printed by question at the end.
    answered: Mutex<Vec<(usize, Instant, Duration)>>,
}

const RECENT_CODES: usize = 20_000;

impl Target {
    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        self.server.connect().await
    }

    /// Sends one request; its body, or what went wrong (a status other than `expect`).
    async fn send(
        &self,
        sender: &mut SendRequest<Full<Bytes>>,
        method: Method,
        path: &str,
        body: Option<String>,
        phone: Option<Phone>,
        expect: fn(u16) -> bool,
    ) -> Result<Bytes, String> {
        let uri: Uri = format!("{}{path}", self.server.base_path)
            .parse()
            .map_err(|error: hyper::http::uri::InvalidUri| error.to_string())?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, self.server.host.clone())
            .header(AUTHORIZATION, self.authorization.clone());
        if body.is_some() {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(phone) = phone {
            request = request
                .header("x-forwarded-for", phone.address)
                .header(USER_AGENT, phone.user_agent);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|error| error.to_string())?;
        sender.ready().await.map_err(|error| error.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| error.to_string())?
            .to_bytes();
        if !expect(status) {
            return Err(format!(
                "{path}: status {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body)
    }

    /// Binds a code and keeps its id for the scans.
    async fn bind(&self, sender: &mut SendRequest<Full<Bytes>>, i: usize) -> Result<(), String> {
        let body = format!(r#"{{"params":{{"listing":"L-{i}","channel":"soak"}}}}"#);
        let answer = self
            .send(sender, Method::POST, "/v1/codes", Some(body), None, |s| {
                s == 201
            })
            .await?;
        let id = request_id_of(&answer).ok_or("a 201 without a request_id")?;
        let mut codes = self.codes.lock().map_err(|_| "poisoned")?;
        if codes.len() < RECENT_CODES {
            codes.push(id);
        } else {
            codes[i % RECENT_CODES] = id;
        }
        Ok(())
    }

    async fn request(&self, sender: &mut SendRequest<Full<Bytes>>, i: usize) -> Result<(), String> {
        match Kind::of(i) {
            Kind::Bind => self.bind(sender, i).await,
            Kind::Scan => {
                let id = {
                    let codes = self.codes.lock().map_err(|_| "poisoned")?;
                    codes[i % codes.len()].clone()
                };
                let phone = Some(Phone::of_scan(i));
                self.send(sender, Method::GET, &format!("/m/{id}"), None, phone, |s| {
                    s == 200
                })
                .await
                .map(drop)
            }
            Kind::LinkScan => {
                let key = &self.links[i % self.links.len()];
                let phone = Some(Phone::of_scan(i));
                self.send(
                    sender,
                    Method::GET,
                    &format!("/r/{key}"),
                    None,
                    phone,
                    |s| (300..400).contains(&s),
                )
                .await
                .map(drop)
            }
            Kind::LinkEdit => {
                // Each edit takes the next link in turn, so that two edits of one link rarely
                // overlap; when they do, the later is answered 409 and, as the answer says,
                // retried (once) like a marketer's browser would.
                let turn = self.edits.fetch_add(1, Ordering::Relaxed);
                let key = &self.links[turn % self.links.len()];
                let path = format!("/v1/links/{key}");
                let body = format!(
                    r#"{{"target":{{"destination":"https://shop.example/p/{}"}}}}"#,
                    i % 97
                );
                let first = self
                    .send(
                        sender,
                        Method::PATCH,
                        &path,
                        Some(body.clone()),
                        None,
                        |s| s == 200 || s == 409,
                    )
                    .await?;
                if first.starts_with(br#"{"type":"urn:qrpool:problem:conflict""#) {
                    self.send(sender, Method::PATCH, &path, Some(body), None, |s| s == 200)
                        .await?;
                }
                Ok(())
            }
            Kind::Query => {
                let turn = self.queries.fetch_add(1, Ordering::Relaxed) % DASHBOARD.len();
                let sent = Instant::now();
                self.send(
                    sender,
                    Method::GET,
                    &format!("/v1/analytics/scans?{}", DASHBOARD[turn]),
                    None,
                    None,
                    |s| s == 200,
                )
                .await?;
                self.answered
                    .lock()
                    .map_err(|_| "poisoned")?
                    .push((turn, sent, sent.elapsed()));
                Ok(())
            }
        }
    }
}

/// The `request_id` of a bind's answer, read without a JSON parser (the harness shares the
/// machine with what it measures).
fn request_id_of(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find(r#""request_id":""#)? + r#""request_id":""#.len();
    let end = start + text[start..].find('"')?;
    Some(text[start..end].to_owned())
}

/// What one minute saw.
#[derive(Default)]
struct Window {
    latencies: BTreeMap<Kind, Vec<Duration>>,
    errors: Vec<String>,
    /// The minute's slowest request other than a query (queries take seconds by design,
    /// at a lower priority), and the wall-clock time it was due: a stall lines up with what
    /// the machine's other processes did then (a checkpoint, the broker's log).
    slowest: Option<(Duration, Kind, SystemTime)>,
    /// The latencies of the binds due in each second (Unix time).
    binds_by_second: BTreeMap<u64, Vec<Duration>>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1);
    sorted.get(index).copied().unwrap_or_default()
}

/// Resident memory (KiB) and open descriptors of `pid`.
fn process_use(pid: u32) -> anyhow::Result<(u64, usize)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((resident_kib(pid)?, fds))
}

/// Resident memory (KiB) of `pid`: all the per-second reader needs, without listing the
/// process's descriptors every second.
fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is qrpool running?)"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// qrpool's resident memory, read every second.
///
/// It is a sawtooth, not a level: the answers and columns kept for today's newest files
/// climb by about a MiB a second until the merge of their level lets them go, and the merge
/// itself holds its inputs, its row group and the answers it computes ahead for two or three
/// seconds at the top (run S: 690 → 750 MiB over 80 s, 790-818 for two seconds, back to 690).
/// One sample a minute lands anywhere on it, and the highest of 25 such samples after the
/// warm-up against the highest of 5 in it failed runs whose memory did not grow. A leak
/// raises the sawtooth's middle; the median of every second over as long a stretch as the
/// warm-up is what the check compares, and the highest second is printed beside it.
#[derive(Debug, Default)]
struct Resident {
    /// KiB, a Vec of each minute's seconds.
    minutes: Vec<Vec<u64>>,
}

impl Resident {
    /// Reads `pid`'s resident memory every second into `seconds` (and `log`, if any) until
    /// the process is gone.
    fn sample(
        pid: u32,
        seconds: Arc<Mutex<Vec<u64>>>,
        log: Option<std::path::PathBuf>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let mut log = log
            .map(|path| {
                std::fs::File::create(&path)
                    .map(std::io::BufWriter::new)
                    .with_context(|| format!("creating {}", path.display()))
            })
            .transpose()?;
        Ok(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                let Ok(kib) = resident_kib(pid) else {
                    break;
                };
                if let Ok(mut seconds) = seconds.lock() {
                    seconds.push(kib);
                }
                if let Some(log) = log.as_mut() {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |since| since.as_secs());
                    // The file is for reading the run afterwards; the verdict does not use it.
                    let _ = writeln!(log, "{now} {kib}").and_then(|()| log.flush());
                }
            }
        }))
    }

    /// The median and the highest of a minute's seconds (KiB).
    fn minute(seconds: &[u64]) -> (u64, u64) {
        (
            median(seconds).unwrap_or(0),
            seconds.iter().copied().max().unwrap_or(0),
        )
    }

    /// The warm-up's median; the highest median of a stretch of as many minutes after it,
    /// and the minute that stretch ends on; the highest second in the warm-up and after it.
    fn growth(&self, warmup: usize) -> Option<Growth> {
        let warmup = warmup.max(1);
        let (before, after) = self.minutes.split_at_checked(warmup)?;
        let level = median(&before.concat())?;
        let stretches: Vec<(usize, u64)> = if after.len() >= warmup {
            after
                .windows(warmup)
                .enumerate()
                .map(|(index, minutes)| {
                    (
                        warmup + index + warmup,
                        median(&minutes.concat()).unwrap_or(0),
                    )
                })
                .collect()
        } else {
            vec![(warmup + after.len(), median(&after.concat()).unwrap_or(0))]
        };
        let (ends_on, highest) = stretches.into_iter().max_by_key(|(_, kib)| *kib)?;
        let peak = |minutes: &[Vec<u64>]| minutes.iter().flatten().copied().max().unwrap_or(0);
        (level > 0 && highest > 0).then(|| Growth {
            level,
            highest,
            ends_on,
            warmup_peak: peak(before),
            peak: peak(after),
        })
    }
}

#[derive(Debug)]
struct Growth {
    level: u64,
    highest: u64,
    ends_on: usize,
    warmup_peak: u64,
    peak: u64,
}

/// The median of `values` (the upper one of an even count); `None` when there are none.
fn median<T: Copy + Ord>(values: &[T]) -> Option<T> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

/// The connections of one kind of client and the requests they send: `nth(j)` is the index
/// (in the mix, and so in the schedule) of the j-th request they send.
struct Lane {
    /// Offsets in the thousand of this lane's kinds, ascending.
    offsets: Vec<usize>,
    /// Connections opened at the start (in open load, more are opened when all are busy).
    connections: usize,
    sent: AtomicUsize,
    /// In open load, the lane's own schedule: its n-th request is due at `every * n`.
    every: Option<Duration>,
    /// The most connections it had busy at once.
    busy_peak: AtomicUsize,
}

impl Lane {
    fn nth(&self, j: usize) -> usize {
        j / self.offsets.len() * 1000 + self.offsets[j % self.offsets.len()]
    }
}

/// Runs the mix from `connections` connections until `until`; the requests sent.
///
/// Closed load (`interval` `None`): every connection sends any kind, in the mix's order, its
/// next request as soon as the last is answered. Open load: request i is due at
/// `interval * i`, and each kind goes out on connections of its own (a share of
/// `connections` by its share of the mix, at least 8, opened first), as phones, listing apps
/// and marketers are different clients: a slow bind holds up no scan. A due request goes out
/// on an idle connection of its kind, or on a new one when all are busy, up to
/// [`CONNECTIONS_GROW`] times the first ones, as a client's connection pool does: with a
/// fixed set, a stretch of answers a few milliseconds slower than the set can carry at the
/// rate queued requests in the harness, and the tail measured was the harness's queue (a
/// minute of 1-second binds that the server had each answered within half a second,
/// docs/performance.md#soak).
/// Queries, in both, are due every `query_every` on two connections of their own instead of
/// at their share of the mix.
async fn run(
    target: &Arc<Target>,
    connections: usize,
    interval: Option<Duration>,
    query_every: Duration,
    until: Instant,
    window: &Arc<Mutex<Window>>,
) -> anyhow::Result<usize> {
    let kinds = [Kind::Bind, Kind::Scan, Kind::LinkScan, Kind::LinkEdit];
    let query_offsets: Vec<usize> = (0..1000).filter(|&i| Kind::of(i) == Kind::Query).collect();
    // Two connections carry the queries: on more, each would sit idle past the server's
    // keep-alive limit (`server.header_read_timeout_ms`) between them.
    let queries = Lane {
        offsets: query_offsets,
        connections: 2,
        sent: AtomicUsize::new(0),
        every: Some(query_every),
        busy_peak: AtomicUsize::new(0),
    };
    let lanes: Vec<Arc<Lane>> = match interval {
        None => vec![
            Arc::new(Lane {
                offsets: (0..1000).filter(|&i| Kind::of(i) != Kind::Query).collect(),
                connections,
                sent: AtomicUsize::new(0),
                every: None,
                busy_peak: AtomicUsize::new(0),
            }),
            Arc::new(queries),
        ],
        Some(_) => kinds
            .iter()
            .map(|&kind| {
                let offsets: Vec<usize> = (0..1000).filter(|&i| Kind::of(i) == kind).collect();
                Arc::new(Lane {
                    connections: (connections * offsets.len() / 1000).max(8),
                    offsets,
                    sent: AtomicUsize::new(0),
                    every: None,
                    busy_peak: AtomicUsize::new(0),
                })
            })
            .chain(std::iter::once(Arc::new(queries)))
            .collect(),
    };
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for lane in &lanes {
        match (interval, lane.every) {
            (Some(interval), None) => {
                let mut idle = Vec::with_capacity(lane.connections);
                for _ in 0..lane.connections {
                    idle.push((target.connect().await?, Instant::now()));
                }
                let (target, lane, window) =
                    (Arc::clone(target), Arc::clone(lane), Arc::clone(window));
                clients.spawn(dispatch(
                    target, lane, idle, interval, started, until, window,
                ));
            }
            _ => {
                for _ in 0..lane.connections {
                    let sender = target.connect().await?;
                    let (target, lane, window) =
                        (Arc::clone(target), Arc::clone(lane), Arc::clone(window));
                    clients.spawn(drive(target, lane, sender, started, until, window));
                }
            }
        }
    }
    while let Some(joined) = clients.join_next().await {
        joined?;
    }
    if interval.is_some() {
        for lane in lanes.iter().filter(|lane| lane.every.is_none()) {
            println!(
                "{:>10}: at most {} connections busy at once ({} opened first)",
                lane.offsets.first().map_or("-", |&i| Kind::of(i).name()),
                lane.busy_peak.load(Ordering::Relaxed),
                lane.connections
            );
        }
    }
    Ok(lanes
        .iter()
        .map(|lane| lane.sent.load(Ordering::Relaxed))
        .sum())
}

/// One connection of a closed-load lane (or of the queries' schedule): takes the lane's next
/// request, sends it when due (at once in closed load), records it, and stops at `until`.
async fn drive(
    target: Arc<Target>,
    lane: Arc<Lane>,
    mut sender: SendRequest<Full<Bytes>>,
    started: Instant,
    until: Instant,
    window: Arc<Mutex<Window>>,
) {
    loop {
        let n = lane.sent.fetch_add(1, Ordering::Relaxed);
        let i = lane.nth(n);
        let due = match lane.every {
            Some(every) => started + every * u32::try_from(n).unwrap_or(u32::MAX),
            None => Instant::now(),
        };
        if due >= until {
            lane.sent.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        tokio::time::sleep_until(due.into()).await;
        // A connection the server closed while it was idle is opened again, as a client's
        // pool does; only a failure of the request itself counts.
        if sender.is_closed() {
            match target.connect().await {
                Ok(fresh) => sender = fresh,
                Err(_) => return,
            }
        }
        let result = target.request(&mut sender, i).await;
        if !record(&window, i, due, result) {
            // The connection may be gone; the next request gets a new one.
            match target.connect().await {
                Ok(fresh) => sender = fresh,
                Err(_) => return,
            }
        }
    }
}

/// An open-load lane opens at most this many times the connections it started with: a
/// client's pool has a bound (a fleet of listing apps, phones behind a carrier's proxies),
/// and without one a stall of a second or two had the harness open 12,000 connections, whose
/// requests then all waited on the same Redis and database at once (docs/performance.md#soak).
/// At the bound, a due request waits for a connection, and its wait counts in its latency.
const CONNECTIONS_GROW: usize = 8;

/// How long a connection may stay idle in an open-load lane before it is let go: below the
/// server's keep-alive limit (`server.header_read_timeout_ms`, 15 s), so that no request is
/// sent on a connection the server is closing that instant (a client's pool is set the same
/// way; a request lost to that race is not the server's failure).
const IDLE_LIMIT: Duration = Duration::from_secs(10);

/// An open-load lane: each of its requests goes out when due, on the connection used last
/// among the idle ones or a new one, in a task of its own; a connection goes back to the idle
/// ones once answered, and is let go once idle past [`IDLE_LIMIT`].
async fn dispatch(
    target: Arc<Target>,
    lane: Arc<Lane>,
    idle: Vec<(SendRequest<Full<Bytes>>, Instant)>,
    interval: Duration,
    started: Instant,
    until: Instant,
    window: Arc<Mutex<Window>>,
) {
    let bound = lane.connections * CONNECTIONS_GROW;
    let open = Arc::new(tokio::sync::Semaphore::new(bound));
    let idle = Arc::new(Mutex::new(idle));
    let mut requests = tokio::task::JoinSet::new();
    for n in 0.. {
        let i = lane.nth(n);
        let due = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
        if due >= until {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = Arc::clone(&open).acquire_owned().await else {
            break;
        };
        lane.sent.fetch_add(1, Ordering::Relaxed);
        // A permit is held by each request in flight, so each busy connection.
        lane.busy_peak
            .fetch_max(bound - open.available_permits(), Ordering::Relaxed);
        let sender = idle.lock().ok().and_then(|mut idle| {
            // The most recently used first; pushed as they are answered, the idle ones are in
            // the order they became idle, so those idle too long are at the bottom.
            let stale = idle.partition_point(|(_, since)| since.elapsed() >= IDLE_LIMIT);
            idle.drain(..stale);
            idle.pop().map(|(sender, _)| sender)
        });
        let (target, idle, window) = (Arc::clone(&target), Arc::clone(&idle), Arc::clone(&window));
        requests.spawn(async move {
            // A connection the server closed while it was idle is opened again; only a
            // failure of the request itself counts.
            let sender = match sender.filter(|sender| !sender.is_closed()) {
                Some(sender) => Ok(sender),
                None => target.connect().await.map_err(|error| error.to_string()),
            };
            let (result, sender) = match sender {
                Ok(mut sender) => (target.request(&mut sender, i).await, Some(sender)),
                Err(error) => (Err(format!("connecting: {error}")), None),
            };
            // A connection whose request failed may be gone: it is not used again.
            if record(&window, i, due, result)
                && let (Some(sender), Ok(mut idle)) = (sender, idle.lock())
            {
                idle.push((sender, Instant::now()));
            }
            drop(permit);
        });
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
}

/// Records request `i`, due at `due`, in the window: its latency counted from when it was due,
/// or its error. Whether it succeeded.
fn record(window: &Mutex<Window>, i: usize, due: Instant, result: Result<(), String>) -> bool {
    let took = due.elapsed();
    let Ok(mut seen) = window.lock() else {
        return false;
    };
    match result {
        Ok(()) => {
            // When it was due, by the wall clock the machine's own traces keep.
            let due_at = SystemTime::now() - took;
            seen.latencies.entry(Kind::of(i)).or_default().push(took);
            if Kind::of(i) != Kind::Query
                && seen.slowest.is_none_or(|(slowest, _, _)| took > slowest)
            {
                seen.slowest = Some((took, Kind::of(i), due_at));
            }
            if Kind::of(i) == Kind::Bind {
                let second = due_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |since| since.as_secs());
                seen.binds_by_second.entry(second).or_default().push(took);
            }
            true
        }
        Err(error) => {
            seen.errors.push(error);
            false
        }
    }
}

/// `/metrics` as the server showed it when scraped.
struct Metrics(String);

impl Metrics {
    async fn scrape(base: &str) -> anyhow::Result<Metrics> {
        Ok(Metrics(reqwest_free_get(base, "/metrics").await?))
    }

    /// The sum of the samples of metric `name`.
    fn sum(&self, name: &str) -> f64 {
        self.0
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Binds made, and how many of them drew their code on demand for want of a pooled one.
    fn binds_and_drawn_on_demand(&self) -> (f64, f64) {
        (
            self.sum("binder_binds_total"),
            self.sum("binder_on_demand_codes_total"),
        )
    }
}

/// A GET on a connection of its own (for /metrics, once a minute).
async fn reqwest_free_get(base: &str, path: &str) -> anyhow::Result<String> {
    let server = Server::parse(base)?;
    let mut sender = server.connect().await?;
    let request = Request::get(path)
        .header(HOST, server.host)
        .body(Full::new(Bytes::new()))?;
    let body = sender
        .send_request(request)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Makes the links and a first few codes the scans need.
async fn prepare(args: &Args) -> anyhow::Result<Target> {
    let mut target = Target {
        server: Server::parse(&args.base)?,
        authorization: HeaderValue::from_str(&format!("Bearer {}", args.key))?,
        codes: Mutex::new(Vec::new()),
        links: Vec::new(),
        edits: AtomicUsize::new(0),
        queries: AtomicUsize::new(0),
        answered: Mutex::default(),
    };
    let mut sender = target.connect().await?;
    for n in 0..args.links {
        let body = format!(r#"{{"target":{{"destination":"https://shop.example/p/{n}"}}}}"#);
        let answer = target
            .send(
                &mut sender,
                Method::POST,
                "/v1/links",
                Some(body),
                None,
                |s| s == 201,
            )
            .await
            .map_err(anyhow::Error::msg)?;
        let text = String::from_utf8_lossy(&answer);
        let start = text.find(r#""key":""#).context("a link without a key")? + 7;
        let end = start + text[start..].find('"').context("a key")?;
        target.links.push(text[start..end].to_owned());
    }
    for n in 0..100 {
        target
            .bind(&mut sender, n)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    Ok(target)
}

/// Each dashboard question's answer time (median and slowest, ms) in the first five minutes,
/// up to the middle of the run and after it: a question over today whose cost grows with the
/// day shows here, and what it takes from the binds shows in the minutes' lines.
fn print_questions(target: &Target, started: Instant, minutes: u64) -> anyhow::Result<()> {
    let middle = (minutes / 2).max(6);
    let phases = [(0, 5), (5, middle), (middle, minutes)];
    let answered = target
        .answered
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    println!("\nquery answer times by question (ms: median / slowest)");
    print!("{:<32}", "question");
    for (from, to) in phases {
        print!("{:>22}", format!("minutes {}-{}", from + 1, to));
    }
    println!();
    for (index, question) in DASHBOARD.iter().enumerate() {
        print!("{question:<32}");
        for (from, to) in phases {
            let mut took: Vec<Duration> = answered
                .iter()
                .filter(|(asked, sent, _)| {
                    let minute = sent.saturating_duration_since(started).as_secs() / 60;
                    *asked == index && *sent >= started && (from..to).contains(&minute)
                })
                .map(|(_, _, took)| *took)
                .collect();
            took.sort_unstable();
            let cell = match took.last() {
                Some(slowest) => format!(
                    "{:.0} / {:.0}",
                    percentile(&took, 0.5).as_secs_f64() * 1e3,
                    slowest.as_secs_f64() * 1e3
                ),
                None => "-".to_owned(),
            };
            print!("{cell:>22}");
        }
        println!();
    }
    Ok(())
}

fn print_window(
    label: &str,
    window: &Window,
    elapsed: Duration,
    (rss, rss_max, fds): (u64, u64, usize),
) -> Duration {
    let mut all: Vec<Duration> = window.latencies.values().flatten().copied().collect();
    all.sort_unstable();
    let per_kind: Vec<String> = window
        .latencies
        .iter()
        .map(|(kind, latencies)| {
            let mut sorted = latencies.clone();
            sorted.sort_unstable();
            format!(
                "{} {:.1}",
                kind.name(),
                percentile(&sorted, 0.99).as_secs_f64() * 1e3
            )
        })
        .collect();
    let p99 = percentile(&all, 0.99);
    let slowest = window
        .slowest
        .map(|(took, kind, due)| {
            format!(
                "   slowest: {} {:.0} ms at {}",
                kind.name(),
                took.as_secs_f64() * 1e3,
                chrono::DateTime::<chrono::Utc>::from(due).format("%H:%M:%S")
            )
        })
        .unwrap_or_default();
    println!(
        "{label:>6} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>7.2} ms  errors {:>3}  rss {:>7.1} MiB (max {:>7.1})  fds {:>4}   p99 by kind (ms): {}{slowest}",
        all.len() as f64 / elapsed.as_secs_f64(),
        percentile(&all, 0.50).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        window.errors.len(),
        rss as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        fds,
        per_kind.join(", ")
    );
    p99
}

/// Binds by the second they were due, written out once no bind due then can still be
/// answered (a bind's time limit is far below [`BindSeconds::SETTLED`]).
struct BindSeconds {
    file: std::io::BufWriter<std::fs::File>,
    pending: BTreeMap<u64, Vec<Duration>>,
}

impl BindSeconds {
    const SETTLED: u64 = 60;

    fn create(path: &std::path::Path) -> anyhow::Result<BindSeconds> {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut file = std::io::BufWriter::new(file);
        writeln!(file, "clock binds p50_ms p99_ms max_ms")?;
        Ok(BindSeconds {
            file,
            pending: BTreeMap::new(),
        })
    }

    /// Takes a minute's binds; writes the seconds settled by `now` (all of them at the end).
    fn add(&mut self, seen: BTreeMap<u64, Vec<Duration>>, now: Option<u64>) -> anyhow::Result<()> {
        for (second, latencies) in seen {
            self.pending.entry(second).or_default().extend(latencies);
        }
        let settled = match now {
            Some(now) => self.pending.split_off(&now.saturating_sub(Self::SETTLED)),
            None => BTreeMap::new(),
        };
        for (second, mut latencies) in std::mem::replace(&mut self.pending, settled) {
            latencies.sort_unstable();
            let clock = i64::try_from(second)
                .ok()
                .and_then(|second| chrono::DateTime::from_timestamp(second, 0))
                .map_or_else(String::new, |at| at.format("%H:%M:%S").to_string());
            let ms = |p| percentile(&latencies, p).as_secs_f64() * 1e3;
            writeln!(
                self.file,
                "{clock} {} {:.2} {:.2} {:.2}",
                latencies.len(),
                ms(0.50),
                ms(0.99),
                ms(1.0)
            )?;
        }
        self.file.flush()?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = Arc::new(prepare(&args).await?);
    let window = Arc::new(Mutex::new(Window::default()));

    // The probe runs whenever asked, a fixed rate or not: it loads the warm-up's first
    // minutes as every run's, so that runs at one rate compare (memory's check is against the
    // warm-up's highest).
    let capacity = match args.probe_secs {
        0 => None,
        seconds => {
            let query_every = Duration::from_secs(60) / args.queries_per_minute.max(1);
            // The same load for as long again first, not counted: by then the pool has been
            // drawn down and pregen refills it, as it must all through the soak. A probe on a
            // full pool measures binds without their rendering (the first soak ran at "half
            // the capacity" on a machine it kept at 90 % busy).
            run(
                &target,
                args.connections,
                None,
                query_every,
                Instant::now() + Duration::from_secs(seconds),
                &window,
            )
            .await?;
            *window.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Window::default();
            let started = Instant::now();
            let done = run(
                &target,
                args.connections,
                None,
                query_every,
                started + Duration::from_secs(seconds),
                &window,
            )
            .await?;
            let elapsed = started.elapsed();
            let seen =
                std::mem::take(&mut *window.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
            let (rss, fds) = process_use(args.pid)?;
            print_window("probe", &seen, elapsed, (rss, rss, fds));
            if let Some(first) = seen.errors.first() {
                bail!(
                    "{} requests of the probe failed; the first: {first}",
                    seen.errors.len()
                );
            }
            let capacity = done as f64 / elapsed.as_secs_f64();
            println!(
                "capacity of the mix: {capacity:.0} requests/s (closed load, {} connections)",
                args.connections
            );
            Some(capacity)
        }
    };
    let rate = match (args.rate, capacity) {
        (Some(rate), _) => rate,
        (None, Some(capacity)) => (capacity / 2.0) as u32,
        (None, None) => bail!("give --rate, or --probe-secs to measure the capacity first"),
    };
    println!(
        "soak: {rate} requests/s for {} minutes, warm-up {} minutes; {} analytics queries a minute",
        args.minutes, args.warmup_minutes, args.queries_per_minute
    );

    let started = Instant::now();
    let until = started + Duration::from_secs(args.minutes * 60);
    let seconds = Arc::new(Mutex::new(Vec::new()));
    let sampler = Resident::sample(
        args.pid,
        Arc::clone(&seconds),
        args.resident_by_second.clone(),
    )?;
    let load = tokio::spawn({
        let (target, window) = (Arc::clone(&target), Arc::clone(&window));
        let interval = Duration::from_secs(1) / rate.max(1);
        let query_every = Duration::from_secs(60) / args.queries_per_minute.max(1);
        async move {
            run(
                &target,
                args.connections,
                Some(interval),
                query_every,
                until,
                &window,
            )
            .await
        }
    });

    let mut first_five: Vec<Duration> = Vec::new();
    let mut fds_at_warmup: Option<usize> = None;
    let mut resident = Resident::default();
    let mut fds_after: Vec<usize> = Vec::new();
    let mut worst_ratio = 0.0_f64;
    let mut errors = Vec::new();
    let mut minute = 0_u64;
    let mut p99s = Vec::new();
    // Binds, and of them drawn on demand, when the warm-up ended.
    let mut binds_at_warmup = (0.0, 0.0);
    let mut bind_seconds = args
        .binds_by_second
        .as_deref()
        .map(BindSeconds::create)
        .transpose()?;
    while minute < args.minutes {
        tokio::time::sleep_until((started + Duration::from_secs((minute + 1) * 60)).into()).await;
        minute += 1;
        let mut seen =
            std::mem::take(&mut *window.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        let use_now = process_use(args.pid)?;
        let this_minute =
            std::mem::take(&mut *seconds.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        let (rss, rss_max) = match this_minute.as_slice() {
            [] => (use_now.0, use_now.0),
            seconds => Resident::minute(seconds),
        };
        resident.minutes.push(this_minute);
        // qrpool's own descriptors: each of the harness's connections is one of its too, and
        // in open load the harness opens and lets go of connections as a client's pool does.
        let own_fds = use_now
            .1
            .saturating_sub(benches::OPEN_CONNECTIONS.load(Ordering::Relaxed));
        if let Some(bind_seconds) = bind_seconds.as_mut() {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            bind_seconds.add(std::mem::take(&mut seen.binds_by_second), Some(now))?;
        }
        let p99 = print_window(
            &format!("min {minute}"),
            &seen,
            Duration::from_secs(60),
            (rss, rss_max, use_now.1),
        );
        errors.extend(seen.errors.iter().take(5).cloned());
        errors.extend(std::iter::repeat_n(
            String::new(),
            seen.errors.len().saturating_sub(5),
        ));
        if minute <= 5 {
            first_five.extend(seen.latencies.values().flatten());
        } else {
            p99s.push(p99);
        }
        if minute <= args.warmup_minutes {
            fds_at_warmup = Some(own_fds);
            if minute == args.warmup_minutes {
                binds_at_warmup = Metrics::scrape(&args.base)
                    .await?
                    .binds_and_drawn_on_demand();
            }
        } else {
            fds_after.push(own_fds);
        }
    }
    sampler.abort();
    load.await??;
    if let Some(mut bind_seconds) = bind_seconds {
        let last = std::mem::take(
            &mut window
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .binds_by_second,
        );
        bind_seconds.add(last, None)?;
    }

    print_questions(&target, started, args.minutes)?;

    first_five.sort_unstable();
    let baseline = percentile(&first_five, 0.99);
    for p99 in &p99s {
        worst_ratio = worst_ratio.max(p99.as_secs_f64() / baseline.as_secs_f64().max(1e-9));
    }
    let end = Metrics::scrape(&args.base).await?;
    let dropped = end.sum("scan_events_dropped_total");
    // Not a check of the soak's, but what its analytics queries read: the events the store
    // took (from the files, or relayed from the events topic on Kafka) and how far behind.
    println!(
        "\nanalytics: {} scan events written, {} ingested into the store ({} relayed from the events topic); lag of the last round {:.1} s",
        end.sum("scan_events_written_total") as u64,
        end.sum("analytics_ingested_events_total") as u64,
        end.sum("analytics_relayed_events_total") as u64,
        end.sum("analytics_lag_seconds"),
    );
    let fds_base = fds_at_warmup.context("the soak is longer than its warm-up")?;
    // A leak climbs and stays; a merge holds its inputs (up to 25 files) open only while it
    // runs, so one minute's sample may catch it: the median minute is what stays.
    let fds_median = median(&fds_after).unwrap_or(fds_base);
    let fds_peak = fds_after.iter().copied().max().unwrap_or(fds_base);
    let warmup = usize::try_from(args.warmup_minutes).unwrap_or(usize::MAX);
    let growth = resident
        .growth(warmup)
        .context("no resident memory read after the warm-up")?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let grown = growth.highest as f64 / growth.level as f64 - 1.0;
    let mut failed = Vec::new();
    println!();
    let mut verdict = |ok: bool, line: String| {
        println!("{} {line}", if ok { "PASS" } else { "FAIL" });
        if !ok {
            failed.push(line);
        }
    };
    verdict(
        grown <= 0.10,
        format!(
            "resident memory: median {:.1} MiB over the warm-up's seconds; after it, {:.1} MiB over the {warmup} minutes to minute {} at the highest ({:+.1} %; limit +10 %). Highest second {:.1} MiB in the warm-up, {:.1} after",
            mib(growth.level),
            mib(growth.highest),
            growth.ends_on,
            grown * 100.0,
            mib(growth.warmup_peak),
            mib(growth.peak),
        ),
    );
    verdict(
        fds_median <= fds_base + 16,
        format!(
            "open descriptors after warm-up (less the harness's connections): {fds_base}, {fds_median} in the median minute after (limit +16); at most {fds_peak}"
        ),
    );
    // A run of five minutes or fewer has no minute to compare with the first five: that is
    // a check not made, not one passed.
    verdict(
        !p99s.is_empty() && worst_ratio <= 1.5,
        if p99s.is_empty() {
            format!(
                "p99 of the first five minutes {:.2} ms; no minute after them to compare (the run has {} minutes)",
                baseline.as_secs_f64() * 1e3,
                args.minutes
            )
        } else {
            format!(
                "p99 of the first five minutes {:.2} ms; worst minute after {:.2}x (limit 1.5x)",
                baseline.as_secs_f64() * 1e3,
                worst_ratio
            )
        },
    );
    verdict(
        errors.is_empty(),
        format!(
            "{} requests failed{}",
            errors.len(),
            errors
                .first()
                .map(|first| format!("; the first: {first}"))
                .unwrap_or_default()
        ),
    );
    verdict(
        dropped == 0.0,
        format!("scan events dropped: {}", dropped as u64),
    );
    let (binds, on_demand) = end.binds_and_drawn_on_demand();
    let binds = binds - binds_at_warmup.0;
    let pooled = binds - (on_demand - binds_at_warmup.1);
    verdict(
        binds > 0.0 && pooled >= 0.99 * binds,
        format!(
            "binds after the warm-up that took a pooled code: {} of {} ({:.1} %; limit 99 %, the rest drawn on demand)",
            pooled as u64,
            binds as u64,
            100.0 * pooled / binds.max(1.0)
        ),
    );
    if !failed.is_empty() {
        bail!("the soak failed {} of its checks", failed.len());
    }
    Ok(())
}
