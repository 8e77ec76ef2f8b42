//! Scan events: every scan is recorded, and no scan waits for it.
//!
//! A scan hands its raw facts, a [`Scan`], to [`ScanEvents::record`], which puts it in a
//! bounded in-process queue without waiting: when the queue is full the scan is dropped and
//! counted (`scan_events_dropped_total`), the scan goes on. One writer task drains the queue
//! every [`DRAIN_EVERY`], on a timer rather than woken by each scan (a wake-up per scan cost a
//! fifth of the scan path's throughput), [enriches](enrich) each scan into a
//! [`records::ScanEvent`] on a blocking thread — client address behind trusted proxies,
//! GeoIP, user agent, bots, campaign, visitor digest — and writes the events to the sink:
//!
//! - **files** (embedded): `<data_dir>/scans/<UTC date>.jsonl`, one JSON object per line,
//!   appended; the embedded analytics store ingests them;
//! - **Kafka** (when the pool is on Kafka): the `kafka.events_topic`, keyed by the scanned key,
//!   through a producer that never blocks (a full producer queue drops and counts too).
//!
//! The scan path only copies what it read (a few short strings); the address and the raw
//! user agent never leave the writer. Events are analytics, not bookings: they are written
//! promptly and flushed at shutdown, but not fsynced one by one.

pub mod enrich;
mod sink;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::header::InvalidHeaderName;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, header};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use records::{DeviceClass, ScanKind, Tags};

pub use enrich::{Enricher, Forwarded, GeoIp, TrustedProxies};
pub use sink::ScanSink;

/// How often the writer takes what is queued.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How long shutdown waits for queued events to be written.
const FINISH_WITHIN: Duration = Duration::from_secs(10);
/// Longest referrer, user agent or query copied off a request (bytes); the rest is cut.
const MAX_COPIED: usize = 512;

/// What a scan path knows of one scan, handed to the writer as it is. The writer turns it
/// into an event ([`Enricher::enrich`]) and drops it.
#[derive(Debug, Clone)]
pub struct Scan {
    pub at: DateTime<Utc>,
    pub kind: ScanKind,
    pub key: String,
    pub outcome: &'static str,
    pub tenant: Option<String>,
    /// The rule or A/B variant that served it (`variant:a`, `rule:ios`).
    pub variant: Option<String>,
    pub click_id: Option<String>,
    pub tags: Tags,
    /// The query carried the printed-code marker (`qr=1`).
    pub via_qr: bool,
    /// The connection's peer.
    pub peer: Option<IpAddr>,
    /// The forwarding header, copied only when the peer is a trusted proxy.
    pub forwarded: Option<Forwarded>,
    pub user_agent: Option<Box<str>>,
    pub referrer: Option<Box<str>>,
    /// The query, copied only when it carries campaign parameters (`utm_`).
    pub query: Option<Box<str>>,
    /// The country a CDN's header named (`scans.country_header`).
    pub country: Option<[u8; 2]>,
}

/// Where scans come from: the trusted proxies, the CDN's country header and the GeoIP
/// database. Shared by the event capture and by link rules that route by country.
#[derive(Debug, Clone, Default)]
pub struct Clients {
    proxies: Arc<TrustedProxies>,
    country_header: Option<HeaderName>,
    geo: Option<Arc<GeoIp>>,
}

/// The proxy headers that may name the client (believed only from a trusted proxy).
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// `scans.country_header` as a header name, checked once at start.
pub fn country_header(name: Option<&str>) -> Result<Option<HeaderName>, InvalidHeaderName> {
    name.map(HeaderName::try_from).transpose()
}

impl Clients {
    pub fn new(
        proxies: TrustedProxies,
        country_header: Option<HeaderName>,
        geo: Option<GeoIp>,
    ) -> Clients {
        Clients {
            proxies: Arc::new(proxies),
            country_header,
            geo: geo.map(Arc::new),
        }
    }

    /// The forwarding header of a request from `peer`, when `peer` is a trusted proxy.
    fn forwarded(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<Forwarded> {
        if self.proxies.is_empty() || !peer.is_some_and(|peer| self.proxies.contains(peer)) {
            return None;
        }
        // Most requests carry one line of it: copied as it is; several are joined.
        let joined = |name: &HeaderName| {
            let mut values = headers
                .get_all(name)
                .iter()
                .filter_map(|value| value.to_str().ok());
            let mut text = values.next()?.to_owned();
            for value in values {
                text.push(',');
                text.push_str(value);
            }
            Some(text)
        };
        joined(&FORWARDED)
            .map(Forwarded::Standard)
            .or_else(|| joined(&X_FORWARDED_FOR).map(Forwarded::XForwardedFor))
    }

    /// The country the CDN's header names, upper-case ISO alpha-2.
    fn header_country(&self, headers: &HeaderMap) -> Option<[u8; 2]> {
        let value = headers.get(self.country_header.as_ref()?)?.as_bytes();
        match value {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
            }
            _ => None,
        }
    }

    /// The scanner's country for routing (a link's country rules): the CDN's header, else
    /// the GeoIP database's answer for the client; `None` when neither knows.
    pub fn country(&self, request: &Parts, peer: Option<IpAddr>) -> Option<String> {
        if let Some(code) = self.header_country(&request.headers) {
            return String::from_utf8(code.to_vec()).ok();
        }
        let geo = self.geo.as_ref()?;
        let forwarded = self.forwarded(&request.headers, peer);
        let client = self.proxies.client(peer?, forwarded.as_ref());
        geo.locate(client.address()?).country
    }

    /// The raw facts of one scan of `key` from its request (see [`Scan`]).
    pub fn scan(
        &self,
        kind: ScanKind,
        key: String,
        outcome: &'static str,
        request: &Parts,
        peer: Option<IpAddr>,
    ) -> Scan {
        // Looked up by `HeaderName`, not `&str`: a name given as text is parsed on every call.
        let headers = &request.headers;
        let copy = |name: &HeaderName| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(|text| cut(text, MAX_COPIED).into())
        };
        let query = request.uri.query();
        Scan {
            at: Utc::now(),
            kind,
            key,
            outcome,
            tenant: None,
            variant: None,
            click_id: None,
            tags: Tags::default(),
            via_qr: query
                .is_some_and(|query| query.split('&').any(|pair| pair == records::PRINTED_MARKER)),
            peer,
            forwarded: self.forwarded(headers, peer),
            user_agent: copy(&header::USER_AGENT),
            referrer: copy(&header::REFERER),
            query: query
                .filter(|query| query.contains("utm_"))
                .map(|query| cut(query, MAX_COPIED).into()),
            country: self.header_country(headers),
        }
    }
}

/// `text` cut to at most `bytes`, on a character boundary.
pub(crate) fn cut(text: &str, bytes: usize) -> &str {
    if text.len() <= bytes {
        return text;
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The recording side, shared by every scan handler. Cheap to clone.
#[derive(Clone)]
pub struct ScanEvents {
    queue: mpsc::Sender<Scan>,
    dropped: Arc<AtomicU64>,
    clients: Clients,
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
    #[error(transparent)]
    Agents(#[from] enrich::AgentsError),
}

impl ScanEvents {
    /// Starts the writer for `sink` with a queue of `capacity` scans.
    pub fn start(
        sink: ScanSink,
        capacity: usize,
        clients: Clients,
    ) -> Result<(ScanEvents, ScanWriter), ScanSinkError> {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let enricher = Enricher::new(Arc::clone(&clients.proxies), clients.geo.clone())?;
        let writer = sink::start(sink, enricher, receiver)?;
        let events = ScanEvents {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
            clients,
        };
        Ok((events, ScanWriter(writer)))
    }

    /// Queues one scan; never waits. A full queue drops it and counts it.
    pub fn record(&self, scan: Scan) {
        if self.queue.try_send(scan).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("scan_events_dropped_total").increment(1);
        }
    }

    /// Scans dropped because the queue was full (or the writer gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// See [`Clients::scan`].
    pub fn scan(
        &self,
        kind: ScanKind,
        key: String,
        outcome: &'static str,
        request: &Parts,
        peer: Option<IpAddr>,
    ) -> Scan {
        self.clients.scan(kind, key, outcome, request, peer)
    }
}

/// The kind of device that scanned, from its user agent (for routing; the writer names the
/// browser and OS).
pub fn device(headers: &HeaderMap) -> DeviceClass {
    DeviceClass::from_user_agent(
        headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = Request::builder().uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).expect("a request").into_parts().0
    }

    fn clients(proxies: &[&str]) -> Clients {
        Clients::new(
            TrustedProxies::parse(&proxies.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>())
                .expect("CIDRs"),
            country_header(Some("CF-IPCountry")).expect("a header name"),
            None,
        )
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let (queue, _receiver_never_drained) = mpsc::channel(2);
        let events = ScanEvents {
            queue,
            dropped: Arc::default(),
            clients: Clients::default(),
        };
        let request = parts("/m/x", &[]);
        for n in 0..5 {
            events.record(events.scan(ScanKind::Code, format!("k{n}"), "bound", &request, None));
        }
        assert_eq!(events.dropped(), 3, "two fit, three were dropped");
    }

    #[test]
    fn the_scan_path_copies_only_what_the_writer_needs() {
        let clients = clients(&["10.0.0.0/8"]);
        let request = parts(
            "/r/abc?qr=1&utm_source=poster",
            &[
                ("x-forwarded-for", "81.2.69.142"),
                ("cf-ipcountry", "se"),
                ("user-agent", "curl/8"),
                ("referer", "https://news.example/a"),
            ],
        );
        let from_proxy = clients.scan(
            ScanKind::Link,
            "abc".into(),
            "redirected",
            &request,
            Some("10.1.1.1".parse().expect("ip")),
        );
        assert_eq!(
            from_proxy.forwarded,
            Some(Forwarded::XForwardedFor("81.2.69.142".into()))
        );
        assert!(from_proxy.via_qr);
        assert_eq!(from_proxy.query.as_deref(), Some("qr=1&utm_source=poster"));
        assert_eq!(from_proxy.country, Some(*b"SE"));
        assert_eq!(from_proxy.user_agent.as_deref(), Some("curl/8"));
        // Not from a trusted proxy: its forwarding header is not even copied.
        let direct = clients.scan(
            ScanKind::Link,
            "abc".into(),
            "redirected",
            &request,
            Some("203.0.113.1".parse().expect("ip")),
        );
        assert_eq!(direct.forwarded, None);
        // A plain printed code's query is not copied.
        let plain = clients.scan(
            ScanKind::Code,
            "x".into(),
            "bound",
            &parts("/m/x?qr=1", &[]),
            None,
        );
        assert!(plain.via_qr && plain.query.is_none());
    }

    #[test]
    fn routing_asks_the_header_then_the_database() {
        let geo = GeoIp::open(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/data/geoip/GeoIP2-City-Test.mmdb"),
        )
        .expect("the test database");
        let clients = Clients::new(
            TrustedProxies::parse(&["127.0.0.1/32".into()]).expect("CIDR"),
            country_header(Some("cf-ipcountry")).expect("name"),
            Some(geo),
        );
        let loopback = Some("127.0.0.1".parse().expect("ip"));
        let proxied = parts("/r/x", &[("x-forwarded-for", "81.2.69.142")]);
        assert_eq!(clients.country(&proxied, loopback).as_deref(), Some("GB"));
        let with_header = parts(
            "/r/x",
            &[("x-forwarded-for", "81.2.69.142"), ("cf-ipcountry", "DE")],
        );
        assert_eq!(
            clients.country(&with_header, loopback).as_deref(),
            Some("DE")
        );
        assert_eq!(clients.country(&parts("/r/x", &[]), loopback), None);
    }
}
