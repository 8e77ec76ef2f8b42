//! The settings tree, its defaults, and its validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;

pub use crate::pregen::*;

/// Prefix of every environment variable qrpool reads.
pub const ENV_PREFIX: &str = "QRPOOL_";

/// Every part's settings. Unknown top-level keys are ignored (other tools share the
/// `QRPOOL_` prefix); unknown keys inside a section are errors (they are typos).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub server: ServerSettings,
    pub pool: PoolSettings,
    pub store: StoreSettings,
    pub embedded: EmbeddedSettings,
    pub kafka: KafkaSettings,
    pub redis: RedisSettings,
    pub postgres: PostgresSettings,
    pub render: RenderSettings,
    pub pregen: PregenSettings,
    pub binder: BinderSettings,
    pub middle_page: MiddlePageSettings,
    pub scans: ScanSettings,
    pub analytics: AnalyticsSettings,
    pub console: ConsoleSettings,
    pub redirect: RedirectSettings,
    /// Redirect targets per tenant: `[targets.<tenant>] <name> = "https://…/{param}"`. A
    /// binding whose params say `"target": "<name>"` sends scanners there with a 302.
    pub targets: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// The landing page of each tenant's codes: `[landing.<tenant>]`.
    pub landing: BTreeMap<String, LandingSettings>,
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// The base every middle-page URL starts with. It is what phones open, so it must be
    /// the address the public reaches, not the bind address behind a load balancer.
    pub public_url: Option<String>,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
    pub shutdown_grace_secs: u64,
    /// Threads that answer requests, each with its own event loop; 0: the shared runtime
    /// answers them. Unset: see [`ServerSettings::http_threads`].
    pub threads: Option<usize>,
    /// Proxies (addresses or CIDR blocks) whose `Forwarded` / `X-Forwarded-For` headers name
    /// the client. Anyone else's are ignored: a client could write anything there.
    pub trusted_proxies: Vec<String>,
    /// A connection that has not sent a whole request head within this long — a new one, or
    /// one kept alive between requests — is closed; 0: never. (A body is read within
    /// `request_timeout_ms`, like the rest of its request.)
    pub header_read_timeout_ms: u64,
    /// Connections open at once, at most; more are answered `503` and closed, instead of
    /// each holding a descriptor and a task until the process cannot accept any.
    pub max_connections: usize,
    /// Connections the kernel completes before the process accepts them, at most (the
    /// kernel caps it at `net.core.somaxconn`): beyond it, a connection's SYN is dropped and
    /// its client waits a second to send it again.
    pub listen_backlog: u32,
}

/// Bounds on the connections a process serves (see [`ServerSettings::connection_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Option<std::time::Duration>,
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ServerSettings::default().connection_limits()
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            max_body_bytes: 64 * 1024,
            request_timeout_ms: 5_000,
            shutdown_grace_secs: 10,
            threads: None,
            trusted_proxies: Vec::new(),
            header_read_timeout_ms: 15_000,
            max_connections: 10_000,
            listen_backlog: 4096,
        }
    }
}

impl ServerSettings {
    /// `threads`; unset, one per core in a process that answers scans but not binds, else 0.
    ///
    /// A scan is answered from memory on the thread that read it, so a thread per core with its
    /// own event loop serves more of them (`benches/scan-vs-nginx.sh`: `/r` 0.78 → 0.84×
    /// nginx). A bind crosses to the group-commit writer, the pool reader and the Redis
    /// connection, which run on the shared runtime, and back, each time waking a parked
    /// thread: with the binder in the process the shared runtime alone binds faster
    /// (`benches/bind-load.sh` on Kafka: 16,600–17,700 binds/s against 13,400, and ten times
    /// more codes drawn on demand when the reader's tasks wait for a core).
    pub fn http_threads(&self, binds_here: bool) -> usize {
        self.threads.unwrap_or_else(|| {
            if binds_here {
                0
            } else {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }
        })
    }

    /// What every served connection is held to.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: (self.header_read_timeout_ms > 0)
                .then(|| std::time::Duration::from_millis(self.header_read_timeout_ms)),
            max_connections: self.max_connections,
        }
    }

    /// `public_url` without a trailing slash, or `http://<listen>` when unset.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolBackend {
    /// A table in a local SQLite file: one process, no services.
    #[default]
    Embedded,
    /// A Kafka topic with partitions; binders form one consumer group.
    Kafka,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    pub backend: PoolBackend,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// A local SQLite file, with an in-process cache in front.
    #[default]
    Embedded,
    /// PostgreSQL as the truth, Redis in front when `redis.url` is set.
    Postgres,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: StoreBackend,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedSettings {
    pub data_dir: PathBuf,
}

impl Default for EmbeddedSettings {
    fn default() -> Self {
        EmbeddedSettings {
            data_dir: PathBuf::from("qrpool-data"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    pub brokers: String,
    pub pool_topic: String,
    pub partitions: i32,
    pub replication: i32,
    pub group_id: String,
    pub session_timeout_ms: u32,
    /// Codes a binder receives ahead of demand, so a bind never waits on a fetch: up to this
    /// many per assigned partition (librdkafka's queue of it), and this many handed on ready.
    pub prefetch: usize,
    /// Where scan events go when the pool is on Kafka.
    pub events_topic: String,
    /// Extra librdkafka properties for the pool producer (`linger.ms`, `batch.num.messages`,
    /// security settings…); they win over qrpool's own choices.
    pub producer_options: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            pool_topic: "qrpool.pool".into(),
            partitions: 8,
            replication: 1,
            group_id: "qrpool-binder".into(),
            session_timeout_ms: 10_000,
            prefetch: 512,
            events_topic: "qrpool.scans".into(),
            producer_options: Default::default(),
        }
    }
}

impl KafkaSettings {
    /// The topic of `issuer`'s codes. Each issuer has a lane of its own (`<pool_topic>.<issuer>`)
    /// so that its depth is the lag on its topic and a caller can ask for its kind of code.
    pub fn lane_topic(&self, issuer: &str) -> String {
        format!("{}.{issuer}", self.pool_topic)
    }

    /// The binder group reading `issuer`'s lane: one group per lane, so a binder joining one
    /// lane never rebalances another.
    pub fn lane_group(&self, issuer: &str) -> String {
        format!("{}.{issuer}", self.group_id)
    }

    /// The issuer whose lane `topic` is, when it is one.
    pub fn lane_of_topic<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.pool_topic.as_str())?
            .strip_prefix('.')
            .filter(|issuer| !issuer.is_empty())
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Secret (it may hold a password); environment only.
    pub url: Option<SecretString>,
    /// Every key qrpool writes starts with this, so one Redis can serve several deployments.
    pub key_prefix: String,
    pub ttl_secs: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: None,
            key_prefix: "qrpool:".into(),
            ttl_secs: 7 * 24 * 3600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSettings {
    /// Secret (it holds a password); environment only.
    pub url: Option<SecretString>,
    pub max_connections: u32,
    /// How long a request waits for a connection. Kept well under the request time limit so
    /// that a database outage answers a clear 503 instead of hanging until the limit.
    pub acquire_timeout_ms: u64,
    /// How long a connection serves before it is replaced, so that the server can free what a
    /// session accumulates. Connections past it are retired one at a time (see
    /// `bindings::durable`), never the whole pool at once.
    pub connection_lifetime_secs: u64,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            url: None,
            max_connections: 16,
            acquire_timeout_ms: 1_000,
            connection_lifetime_secs: 30 * 60,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum EcLevel {
    L,
    #[default]
    M,
    Q,
    H,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenderSettings {
    pub module_px: u32,
    pub quiet_zone: u32,
    pub ec_level: EcLevel,
}

impl Default for RenderSettings {
    fn default() -> Self {
        RenderSettings {
            module_px: 8,
            quiet_zone: 4,
            ec_level: EcLevel::M,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BinderSettings {
    /// The tenant of the first API key `qrpool up` makes when the store has none; every
    /// other key names its own tenant.
    pub tenant: records::Tenant,
    pub claim_wait_ms: u64,
    /// When the local lane is dry, draw a code on demand instead of answering 503 (remote
    /// issuers' codes are never made at bind time: their quota is pregen's).
    pub on_demand_local: bool,
    pub max_params_bytes: usize,
    pub binding_ttl_days: Option<u32>,
}

impl Default for BinderSettings {
    fn default() -> Self {
        BinderSettings {
            tenant: records::Tenant::default(),
            claim_wait_ms: 250,
            on_demand_local: true,
            max_params_bytes: 4096,
            binding_ttl_days: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MiddlePageSettings {
    pub cache_capacity: u64,
    pub cache_ttl_secs: u64,
    /// How long an id found unbound is answered "unknown" without asking the stores again:
    /// a herd on a bad code, or someone enumerating ids, costs one lookup per id per period.
    /// 0 turns it off.
    pub negative_ttl_ms: u64,
}

impl Default for MiddlePageSettings {
    fn default() -> Self {
        MiddlePageSettings {
            cache_capacity: 100_000,
            cache_ttl_secs: 300,
            negative_ttl_ms: 2_000,
        }
    }
}

/// Scan events: one per scan, off the scan's path.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanSettings {
    pub enabled: bool,
    /// Events waiting to be written; when full, new ones are dropped (and counted), never
    /// waited for.
    pub queue: usize,
    /// A request header a proxy or CDN fills with the scanner's country (`cf-ipcountry`, say).
    pub country_header: Option<String>,
}

impl Default for ScanSettings {
    fn default() -> Self {
        ScanSettings {
            enabled: true,
            queue: 65_536,
            country_header: None,
        }
    }
}

/// Where the analytics of scans are kept and queried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnalyticsBackend {
    /// Parquet files by day and tenant in the data folder, queried in process.
    #[default]
    Embedded,
    /// A ClickHouse server (MergeTree by day, the tenant first in the sort key).
    Clickhouse,
}

/// Scan analytics: enrichment, the store, the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalyticsSettings {
    /// Store scan events for the analytics API (the ingest and the API run; events are
    /// recorded either way while `scans.enabled`).
    pub enabled: bool,
    pub backend: AnalyticsBackend,
    /// An MMDB file (GeoLite2 / GeoIP2 City or Country, DB-IP Lite) that places scanners
    /// by their address; unset: only a CDN's country header (`scans.country_header`).
    pub geoip_db: Option<PathBuf>,
    /// How often new events are ingested: a scan shows in the API within about this long.
    pub flush_secs: u64,
    /// Days of scans kept; older days are dropped whole.
    pub retention_days: u32,
    /// Memory kept between queries (embedded store): decoded columns, and each file's answers
    /// to the questions asked of it in a quarter; 0 keeps none.
    pub query_cache_mb: u64,
    /// Queries the embedded store answers at once; the rest wait their turn within their
    /// request's time limit. Each already uses every core, so more at once only adds memory.
    pub concurrent_queries: u32,
    pub clickhouse: ClickHouseSettings,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        AnalyticsSettings {
            enabled: true,
            backend: AnalyticsBackend::Embedded,
            geoip_db: None,
            flush_secs: 5,
            retention_days: 400,
            query_cache_mb: 512,
            concurrent_queries: 2,
            clickhouse: ClickHouseSettings::default(),
        }
    }
}

/// The web console at `/console`, served where the binder runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    pub enabled: bool,
    /// A signed-in session ends after this many minutes without use.
    pub session_idle_minutes: u32,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            enabled: true,
            session_idle_minutes: 30,
        }
    }
}

/// The ClickHouse server of `analytics.backend = "clickhouse"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseSettings {
    /// Its HTTP interface.
    pub url: String,
    pub database: String,
    pub user: String,
    /// Secret; environment only (`QRPOOL_ANALYTICS__CLICKHOUSE__PASSWORD`).
    pub password: Option<SecretString>,
    /// The consumer group `qrpool analytics ingest` reads the events topic in.
    pub ingest_group: String,
    /// Most events inserted at once.
    pub batch: usize,
}

impl Default for ClickHouseSettings {
    fn default() -> Self {
        ClickHouseSettings {
            url: "http://127.0.0.1:8123".into(),
            database: "qrpool".into(),
            user: "default".into(),
            password: None,
            ingest_group: "qrpool-analytics".into(),
            batch: 50_000,
        }
    }
}

/// Whether `text` is an IP address or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`).
fn is_cidr(text: &str) -> bool {
    let (address, prefix) = match text.trim().split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text.trim(), None),
    };
    let Ok(address) = address.parse::<std::net::IpAddr>() else {
        return false;
    };
    let most = if address.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|prefix| prefix.parse::<u8>().is_ok_and(|bits| bits <= most))
}

/// How one tenant's landing page looks. Every value is shown escaped; params never reach
/// markup or style.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LandingSettings {
    /// The page title and heading (the tenant's name or brand); "Welcome" when unset.
    pub title: Option<String>,
    /// The colour of the heading and the button, `#rrggbb`.
    pub accent: Option<String>,
    /// An `https://` image shown above the heading.
    pub logo_url: Option<String>,
    /// The params shown, in this order; unset: all of them, by name.
    pub fields: Option<Vec<String>>,
    /// What a param is called on the page (`listing_id = "Listing"`).
    pub labels: BTreeMap<String, String>,
    /// A button into the tenant's app: the name of one of its `targets`, filled from the
    /// params (not shown when it cannot be filled).
    pub button_target: Option<String>,
    pub button_label: Option<String>,
}

/// Dynamic redirects (`/r/{key}`) and the links API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedirectSettings {
    /// Hosts each tenant's links may send scanners to: `"shop.example"` (that host) or
    /// `"*.example"` (its subdomains). A tenant without an entry may use signed
    /// destinations only.
    pub allowed_hosts: BTreeMap<String, Vec<String>>,
    /// Signs destinations outside the allowed hosts (HMAC-SHA256); from the environment
    /// only (`QRPOOL_REDIRECT__SIGNING_SECRET`), at least 32 bytes. Unset: no signatures.
    pub signing_secret: Option<SecretString>,
    /// How long a deleted link can be restored before it is purged.
    pub deleted_retention_days: u32,
    /// How often the purge runs.
    pub purge_every_secs: u64,
}

impl Default for RedirectSettings {
    fn default() -> Self {
        RedirectSettings {
            allowed_hosts: BTreeMap::new(),
            signing_secret: None,
            deleted_retention_days: 30,
            purge_every_secs: 3_600,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    pub format: LogFormat,
    pub filter: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

/// Why the settings cannot be used. The message always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("setting `{key}` {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl Settings {
    fn validate_landing(&self) -> Result<(), ConfigError> {
        for (tenant, landing) in &self.landing {
            let key = |field: &str| format!("landing.{tenant}.{field}");
            if records::Tenant::parse(tenant).is_err() {
                return Err(ConfigError::invalid(
                    format!("landing.{tenant}"),
                    "must be named by a tenant: a-z, 0-9, - and _",
                ));
            }
            if landing
                .title
                .as_ref()
                .is_some_and(|t| t.chars().count() > 100)
            {
                return Err(ConfigError::invalid(
                    key("title"),
                    "is at most 100 characters",
                ));
            }
            if let Some(accent) = &landing.accent {
                let hex = accent.strip_prefix('#').unwrap_or_default();
                if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ConfigError::invalid(
                        key("accent"),
                        "must be a colour like #0a7d5a",
                    ));
                }
            }
            if let Some(logo) = &landing.logo_url {
                let plain = logo.strip_prefix("https://").is_some_and(|rest| {
                    !rest.is_empty() && !rest.contains(['"', '\'', '<', '>', ' ', '\\'])
                });
                if !plain {
                    return Err(ConfigError::invalid(
                        key("logo_url"),
                        "must be an https:// URL",
                    ));
                }
            }
            if let Some(target) = &landing.button_target
                && !self
                    .targets
                    .get(tenant)
                    .is_some_and(|targets| targets.contains_key(target))
            {
                return Err(ConfigError::invalid(
                    key("button_target"),
                    format!("names no target of this tenant (`targets.{tenant}.{target}`)"),
                ));
            }
        }
        Ok(())
    }

    fn validate_redirect(&self) -> Result<(), ConfigError> {
        let redirect = &self.redirect;
        for (tenant, patterns) in &redirect.allowed_hosts {
            let key = format!("redirect.allowed_hosts.{tenant}");
            if records::Tenant::parse(tenant).is_err() {
                return Err(ConfigError::invalid(key, "is not a tenant name"));
            }
            for pattern in patterns {
                let host = pattern.strip_prefix("*.").unwrap_or(pattern);
                let plain = !host.is_empty()
                    && host.split('.').all(|label| {
                        !label.is_empty()
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !plain {
                    return Err(ConfigError::invalid(
                        key,
                        format!("`{pattern}` is not a host name or `*.` and a domain"),
                    ));
                }
            }
        }
        if let Some(secret) = &redirect.signing_secret
            && secrecy::ExposeSecret::expose_secret(secret).len() < 32
        {
            return Err(ConfigError::invalid(
                "redirect.signing_secret",
                "must be at least 32 bytes",
            ));
        }
        if redirect.deleted_retention_days == 0 || redirect.purge_every_secs == 0 {
            return Err(ConfigError::invalid(
                "redirect.deleted_retention_days",
                "and redirect.purge_every_secs must be at least 1",
            ));
        }
        Ok(())
    }

    fn validate_issuers(&self) -> Result<(), ConfigError> {
        let pregen = &self.pregen;
        if !(0.0..=1.0).contains(&pregen.peak_quota_share) {
            return Err(ConfigError::invalid(
                "pregen.peak_quota_share",
                "must be between 0 and 1",
            ));
        }
        if pregen.issuer != LOCAL_ISSUER && !pregen.issuers.contains_key(&pregen.issuer) {
            return Err(ConfigError::invalid(
                "pregen.issuer",
                format!("names no issuer: use `{LOCAL_ISSUER}` or a name under pregen.issuers"),
            ));
        }
        for (name, issuer) in &pregen.issuers {
            let key = |field: &str| format!("pregen.issuers.{name}.{field}");
            let valid_name = !name.is_empty()
                && name != LOCAL_ISSUER
                && name.len() <= 32
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid_name {
                return Err(ConfigError::invalid(
                    format!("pregen.issuers.{name}"),
                    "must be named with a-z, 0-9, - and _ (at most 32) and not `local`",
                ));
            }
            let quota = issuer.quota();
            if quota.calls == 0 || quota.window_ms == 0 {
                return Err(ConfigError::invalid(
                    key("quota"),
                    "calls and window_ms must be above 0",
                ));
            }
            match issuer {
                IssuerSettings::Wechat(wechat) => {
                    if !(wechat.endpoint.starts_with("https://")
                        || wechat.endpoint.starts_with("http://"))
                    {
                        return Err(ConfigError::invalid(
                            key("endpoint"),
                            "must start with https:// or http://",
                        ));
                    }
                    if wechat.app_id.is_empty() {
                        return Err(ConfigError::invalid(key("app_id"), "must be set"));
                    }
                    if wechat.app_secret.is_none() {
                        return Err(ConfigError::invalid(
                            key("app_secret"),
                            format!(
                                "must be set in the environment: QRPOOL_PREGEN__ISSUERS__{}__APP_SECRET",
                                name.to_uppercase()
                            ),
                        ));
                    }
                    if wechat.page.is_empty() || wechat.page.starts_with('/') {
                        return Err(ConfigError::invalid(
                            key("page"),
                            "must be a page path like pages/qr/index, without a leading /",
                        ));
                    }
                    if !["release", "trial", "develop"].contains(&wechat.env_version.as_str()) {
                        return Err(ConfigError::invalid(
                            key("env_version"),
                            "must be release, trial or develop",
                        ));
                    }
                    if !(280..=1280).contains(&wechat.width) {
                        return Err(ConfigError::invalid(
                            key("width"),
                            "must be between 280 and 1280",
                        ));
                    }
                    if wechat.concurrency == 0 || wechat.request_timeout_ms == 0 {
                        return Err(ConfigError::invalid(
                            key("concurrency"),
                            "concurrency and request_timeout_ms must be above 0",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Keys that hold secrets: a file must not set them.
const SECRET_KEYS: [&str; 4] = [
    "redis.url",
    "postgres.url",
    "redirect.signing_secret",
    "analytics.clickhouse.password",
];

impl Settings {
    /// Defaults ◄ `file` (when given) ◄ `QRPOOL_…` environment, then validated.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    /// The layered sources, before extraction (tests add their own layers to it).
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::new();
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(Env::prefixed(ENV_PREFIX).split("__"))
    }

    pub fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let issuer_names: Vec<String> = figment
            .extract_inner::<BTreeMap<String, figment::value::Value>>("pregen.issuers")
            .map(|issuers| issuers.into_keys().collect())
            .unwrap_or_default();
        let issuer_secrets = issuer_names
            .iter()
            .map(|name| format!("pregen.issuers.{name}.app_secret"));
        for key in SECRET_KEYS
            .map(str::to_owned)
            .into_iter()
            .chain(issuer_secrets)
        {
            let from_file = figment
                .find_metadata(&key)
                .is_some_and(|meta| !meta.name.to_lowercase().contains("environment"));
            if from_file {
                return Err(ConfigError::invalid(
                    key,
                    "is a secret: set it in the environment, not in a file",
                ));
            }
        }
        let settings: Settings = figment.extract().map_err(describe_load_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot: ranges and keys that depend on each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.server.public_url {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
                .ok_or_else(|| {
                    ConfigError::invalid("server.public_url", "must start with http:// or https://")
                })?;
            let host = rest.trim_end_matches('/');
            if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
                return Err(ConfigError::invalid(
                    "server.public_url",
                    "must be a scheme and host (and port) only, like https://qr.example.com",
                ));
            }
        }
        if self.analytics.concurrent_queries == 0 {
            return Err(ConfigError::invalid(
                "analytics.concurrent_queries",
                "must be at least 1",
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "server.max_body_bytes",
                "must be at least 1024",
            ));
        }
        if let Some(bad) = self
            .server
            .trusted_proxies
            .iter()
            .find(|cidr| !is_cidr(cidr))
        {
            return Err(ConfigError::invalid(
                "server.trusted_proxies",
                format!("`{bad}` is not an address or a CIDR block like 10.0.0.0/8"),
            ));
        }
        if self.server.max_connections == 0 {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        if self.server.listen_backlog == 0 {
            return Err(ConfigError::invalid(
                "server.listen_backlog",
                "must be at least 1",
            ));
        }
        if !(1..=300).contains(&self.analytics.flush_secs) {
            return Err(ConfigError::invalid(
                "analytics.flush_secs",
                "must be between 1 and 300",
            ));
        }
        if !(1..=7 * 24 * 60).contains(&self.console.session_idle_minutes) {
            return Err(ConfigError::invalid(
                "console.session_idle_minutes",
                "must be between 1 and 10080 (a week)",
            ));
        }
        if self.analytics.retention_days == 0 {
            return Err(ConfigError::invalid(
                "analytics.retention_days",
                "must be at least 1",
            ));
        }
        if self.analytics.backend == AnalyticsBackend::Clickhouse {
            if self.pool.backend != PoolBackend::Kafka {
                return Err(ConfigError::invalid(
                    "analytics.backend",
                    "= clickhouse is fed from the Kafka events topic (`qrpool analytics ingest`): \
                     set pool.backend = kafka, which sends scan events there",
                ));
            }
            let clickhouse = &self.analytics.clickhouse;
            if !(clickhouse.url.starts_with("http://") || clickhouse.url.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    "analytics.clickhouse.url",
                    "must be the HTTP interface, http(s)://host:8123",
                ));
            }
            let plain = |name: &str| {
                !name.is_empty()
                    && name.len() <= 64
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            };
            if !plain(&clickhouse.database) {
                return Err(ConfigError::invalid(
                    "analytics.clickhouse.database",
                    "must be a plain name: letters, digits and _",
                ));
            }
            if clickhouse.batch == 0 {
                return Err(ConfigError::invalid(
                    "analytics.clickhouse.batch",
                    "must be at least 1",
                ));
            }
        }
        if self.server.request_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "server.request_timeout_ms",
                "must be above 0",
            ));
        }
        if self.pool.backend == PoolBackend::Kafka {
            if self.kafka.brokers.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "kafka.brokers",
                    "must name at least one broker when pool.backend is kafka",
                ));
            }
            if self.kafka.pool_topic.is_empty()
                || !self
                    .kafka
                    .pool_topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(ConfigError::invalid(
                    "kafka.pool_topic",
                    "must be a Kafka topic name (a-z, A-Z, 0-9, '.', '_', '-')",
                ));
            }
            if self.kafka.partitions < 1 {
                return Err(ConfigError::invalid(
                    "kafka.partitions",
                    "must be at least 1",
                ));
            }
            if self.kafka.replication < 1 {
                return Err(ConfigError::invalid(
                    "kafka.replication",
                    "must be at least 1",
                ));
            }
            if self.kafka.group_id.is_empty() {
                return Err(ConfigError::invalid("kafka.group_id", "must not be empty"));
            }
        }
        self.validate_redirect()?;
        if self.kafka.prefetch == 0 {
            return Err(ConfigError::invalid("kafka.prefetch", "must be at least 1"));
        }
        if self.store.backend == StoreBackend::Postgres && self.postgres.url.is_none() {
            return Err(ConfigError::invalid(
                "postgres.url",
                "must be set (QRPOOL_POSTGRES__URL) when store.backend is postgres",
            ));
        }
        if self.redis.url.is_some()
            && self.store.backend == StoreBackend::Embedded
            && self.pregen.issuers.is_empty()
        {
            return Err(ConfigError::invalid(
                "redis.url",
                "is only used with store.backend = postgres or remote issuers (pregen.issuers); unset it or switch the store",
            ));
        }
        if self.postgres.acquire_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "postgres.acquire_timeout_ms",
                "must be above 0",
            ));
        }
        if self.postgres.acquire_timeout_ms >= self.server.request_timeout_ms {
            return Err(ConfigError::invalid(
                "postgres.acquire_timeout_ms",
                "must be below server.request_timeout_ms, so that an outage is answered before the time limit",
            ));
        }
        if self.postgres.connection_lifetime_secs == 0 {
            return Err(ConfigError::invalid(
                "postgres.connection_lifetime_secs",
                "must be above 0",
            ));
        }
        if !(1..=64).contains(&self.render.module_px) {
            return Err(ConfigError::invalid(
                "render.module_px",
                "must be between 1 and 64",
            ));
        }
        if self.render.quiet_zone > 16 {
            return Err(ConfigError::invalid(
                "render.quiet_zone",
                "must be between 0 and 16",
            ));
        }
        if self.pregen.batch == 0 {
            return Err(ConfigError::invalid("pregen.batch", "must be at least 1"));
        }
        if self.pregen.low_water > self.pregen.target_depth {
            return Err(ConfigError::invalid(
                "pregen.low_water",
                "must not exceed pregen.target_depth",
            ));
        }
        if self.pregen.check_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "pregen.check_interval_ms",
                "must be above 0",
            ));
        }
        self.validate_issuers()?;
        for (tenant, targets) in &self.targets {
            if records::Tenant::parse(tenant).is_err() {
                return Err(ConfigError::invalid(
                    format!("targets.{tenant}"),
                    "must be named by a tenant: a-z, 0-9, - and _",
                ));
            }
            for (name, template) in targets {
                if let Err(error) = records::TargetTemplate::parse(template) {
                    return Err(ConfigError::invalid(
                        format!("targets.{tenant}.{name}"),
                        error.to_string(),
                    ));
                }
            }
        }
        self.validate_landing()?;
        if !(16..=1024 * 1024).contains(&self.binder.max_params_bytes) {
            return Err(ConfigError::invalid(
                "binder.max_params_bytes",
                "must be between 16 and 1048576",
            ));
        }
        if self.binder.binding_ttl_days == Some(0) {
            return Err(ConfigError::invalid(
                "binder.binding_ttl_days",
                "must be above 0 (unset it for no expiry)",
            ));
        }
        if self.middle_page.negative_ttl_ms > self.middle_page.cache_ttl_secs * 1000 {
            return Err(ConfigError::invalid(
                "middle_page.negative_ttl_ms",
                "must not exceed middle_page.cache_ttl_secs",
            ));
        }
        Ok(())
    }
}

/// One line per problem, each naming the key in its lowercase dotted form (the form the
/// file uses) and where the value came from.
fn describe_load_error(error: figment::Error) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|error| {
            let key = error.path.join(".").to_lowercase();
            let origin = error
                .metadata
                .as_ref()
                .map(|meta| format!(" (from {})", meta.name))
                .unwrap_or_default();
            if key.is_empty() {
                format!("settings{origin}: {}", error.kind)
            } else {
                format!("setting `{key}`{origin}: {}", error.kind)
            }
        })
        .collect();
    ConfigError::Load(lines.join("\n"))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's `Jail` closures return its large error type
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in(jail: &Jail, toml: Option<&str>) -> Result<Settings, ConfigError> {
        let path = toml.map(|text| {
            jail.create_file("qrpool.toml", text)
                .expect("write the file");
            PathBuf::from("qrpool.toml")
        });
        Settings::load(path.as_deref())
    }

    #[test]
    fn no_file_and_no_environment_means_embedded_on_8080() {
        Jail::expect_with(|jail| {
            let settings = load_in(jail, None).expect("defaults load");
            assert_eq!(settings.server.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(settings.server.public_base(), "http://127.0.0.1:8080");
            assert_eq!(settings.pool.backend, PoolBackend::Embedded);
            assert_eq!(settings.store.backend, StoreBackend::Embedded);
            Ok(())
        });
    }

    #[test]
    fn the_environment_overrides_the_file() {
        Jail::expect_with(|jail| {
            jail.set_env("QRPOOL_SERVER__LISTEN", "127.0.0.1:9000");
            let settings = load_in(
                jail,
                Some("[server]\nlisten = \"0.0.0.0:7000\"\nmax_body_bytes = 2048\n"),
            )
            .expect("loads");
            assert_eq!(settings.server.listen.to_string(), "127.0.0.1:9000");
            assert_eq!(settings.server.max_body_bytes, 2048);
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_its_key() {
        Jail::expect_with(|jail| {
            jail.set_env("QRPOOL_KAFKA__PARTITIONS", "many");
            let error = load_in(jail, None).expect_err("must fail").to_string();
            assert!(error.contains("kafka.partitions"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn a_typo_inside_a_section_is_an_error() {
        Jail::expect_with(|jail| {
            let error = load_in(jail, Some("[server]\nlistn = \"x\"\n"))
                .expect_err("must fail")
                .to_string();
            assert!(error.contains("listn"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn cross_key_rules_name_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("QRPOOL_STORE__BACKEND", "postgres");
            let error = load_in(jail, None).expect_err("must fail").to_string();
            assert!(error.contains("postgres.url"), "{error}");
            jail.set_env("QRPOOL_POSTGRES__URL", "postgres://localhost/qrpool");
            jail.set_env("QRPOOL_PREGEN__LOW_WATER", "5000");
            let error = load_in(jail, None).expect_err("must fail").to_string();
            assert!(error.contains("pregen.low_water"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn analytics_answers_at_least_one_query_at_a_time() {
        Jail::expect_with(|jail| {
            jail.set_env("QRPOOL_ANALYTICS__CONCURRENT_QUERIES", "0");
            let error = load_in(jail, None).expect_err("must fail").to_string();
            assert!(error.contains("analytics.concurrent_queries"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn public_url_must_be_scheme_and_host() {
        Jail::expect_with(|jail| {
            jail.set_env("QRPOOL_SERVER__PUBLIC_URL", "https://qr.example.com/");
            assert_eq!(
                load_in(jail, None).expect("loads").server.public_base(),
                "https://qr.example.com"
            );
            jail.set_env("QRPOOL_SERVER__PUBLIC_URL", "javascript:alert(1)");
            assert!(
                load_in(jail, None)
                    .expect_err("must fail")
                    .to_string()
                    .contains("server.public_url")
            );
            jail.set_env("QRPOOL_SERVER__PUBLIC_URL", "https://qr.example.com/m?x=1");
            assert!(load_in(jail, None).is_err());
            Ok(())
        });
    }

    #[test]
    fn redirect_targets_must_keep_their_host() {
        let mut settings = Settings::default();
        settings.targets.insert(
            "acme".into(),
            [("listing".to_owned(), "https://{host}/x".to_owned())].into(),
        );
        let error = settings.validate().unwrap_err().to_string();
        assert!(error.contains("targets.acme.listing"), "{error}");
        settings.targets.insert(
            "acme".into(),
            [(
                "listing".to_owned(),
                "https://m.acme.example/{id}".to_owned(),
            )]
            .into(),
        );
        settings.validate().unwrap();
    }

    #[test]
    fn landing_and_link_settings_are_checked_with_the_key_named() {
        let refused = |change: &dyn Fn(&mut Settings)| {
            let mut settings = Settings::default();
            change(&mut settings);
            settings.validate().unwrap_err().to_string()
        };
        let landing = |landing: LandingSettings| {
            move |settings: &mut Settings| {
                settings.landing.insert("acme".into(), landing.clone());
            }
        };
        let error = refused(&landing(LandingSettings {
            accent: Some("red; background: url(x)".into()),
            ..LandingSettings::default()
        }));
        assert!(error.contains("landing.acme.accent"), "{error}");
        let error = refused(&landing(LandingSettings {
            logo_url: Some("javascript:alert(1)".into()),
            ..LandingSettings::default()
        }));
        assert!(error.contains("landing.acme.logo_url"), "{error}");
        let error = refused(&landing(LandingSettings {
            button_target: Some("app".into()),
            ..LandingSettings::default()
        }));
        assert!(error.contains("landing.acme.button_target"), "{error}");
        let error = refused(&|settings: &mut Settings| {
            settings
                .redirect
                .allowed_hosts
                .insert("acme".into(), vec!["shop.example/path".into()]);
        });
        assert!(error.contains("redirect.allowed_hosts.acme"), "{error}");
        let error = refused(&|settings: &mut Settings| {
            settings.redirect.signing_secret = Some(SecretString::from("short"));
        });
        assert!(error.contains("redirect.signing_secret"), "{error}");
    }

    #[test]
    fn a_tenant_must_be_a_slug() {
        Jail::expect_with(|jail| {
            jail.set_env("QRPOOL_BINDER__TENANT", "Acme Realty");
            let error = load_in(jail, None).expect_err("must fail").to_string();
            assert!(error.contains("binder.tenant"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn an_issuer_is_read_from_the_file_with_its_secret_from_the_environment() {
        Jail::expect_with(|jail| {
            let file = concat!(
                "[pregen]\nissuer = \"wx\"\ntime_zone = \"Asia/Shanghai\"\n",
                "off_peak = [\"Mon-Fri 22:00-07:00\"]\n",
                "[pregen.issuers.wx]\nkind = \"wechat\"\napp_id = \"wx123\"\npage = \"pages/qr/index\"\n",
                "quota = { calls = 100, window_ms = 2000 }\n",
            );
            let error = load_in(jail, Some(file))
                .expect_err("no secret yet")
                .to_string();
            assert!(
                error.contains("QRPOOL_PREGEN__ISSUERS__WX__APP_SECRET"),
                "{error}"
            );
            jail.set_env("QRPOOL_PREGEN__ISSUERS__WX__APP_SECRET", "s3cret");
            let settings = load_in(jail, Some(file)).expect("loads");
            let IssuerSettings::Wechat(wx) = &settings.pregen.issuers["wx"];
            assert_eq!(wx.quota.calls, 100);
            assert_eq!(wx.width, 430);
            assert_eq!(settings.pregen.time_zone, chrono_tz::Asia::Shanghai);
            jail.clear_env();
            let with_secret = format!("{file}app_secret = \"s3cret\"\n");
            let error = load_in(jail, Some(&with_secret))
                .expect_err("secret in file")
                .to_string();
            assert!(error.contains("pregen.issuers.wx.app_secret"), "{error}");
            let bad_window = file.replace("22:00-07:00", "22:00");
            let error = load_in(jail, Some(&bad_window))
                .expect_err("bad window")
                .to_string();
            assert!(error.contains("off_peak"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn trusted_proxies_and_analytics_settings_are_checked() {
        let refused = |change: &dyn Fn(&mut Settings)| {
            let mut settings = Settings::default();
            change(&mut settings);
            settings.validate().unwrap_err().to_string()
        };
        let error = refused(&|s| s.server.trusted_proxies = vec!["10.0.0.0/33".into()]);
        assert!(error.contains("server.trusted_proxies"), "{error}");
        let error = refused(&|s| s.server.trusted_proxies = vec!["proxy.local".into()]);
        assert!(error.contains("proxy.local"), "{error}");
        let error = refused(&|s| s.analytics.flush_secs = 0);
        assert!(error.contains("analytics.flush_secs"), "{error}");
        let error = refused(&|s| s.analytics.backend = AnalyticsBackend::Clickhouse);
        assert!(error.contains("pool.backend = kafka"), "{error}");
        let error = refused(&|s| {
            s.pool.backend = PoolBackend::Kafka;
            s.analytics.backend = AnalyticsBackend::Clickhouse;
            s.analytics.clickhouse.database = "qr; DROP".into();
        });
        assert!(error.contains("analytics.clickhouse.database"), "{error}");
        let mut settings = Settings::default();
        settings.server.trusted_proxies =
            vec!["10.0.0.0/8".into(), "::1".into(), "2001:db8::/32".into()];
        settings.validate().unwrap();
    }

    #[test]
    fn the_example_settings_file_loads() {
        Jail::expect_with(|jail| {
            jail.set_env("QRPOOL_POSTGRES__URL", "postgres://qrpool:secret@db/qrpool");
            jail.set_env("QRPOOL_REDIS__URL", "redis://cache:6379");
            let example = concat!(env!("CARGO_MANIFEST_DIR"), "/qrpool.example.toml");
            let settings = Settings::load(Some(Path::new(example))).expect("the example loads");
            assert_eq!(settings.analytics.backend, AnalyticsBackend::Clickhouse);
            assert_eq!(settings.server.trusted_proxies.len(), 2);
            let _ = jail;
            Ok(())
        });
    }

    #[test]
    fn secrets_are_refused_from_a_file() {
        Jail::expect_with(|jail| {
            let error = load_in(jail, Some("[postgres]\nurl = \"postgres://u:pw@db/q\"\n"))
                .expect_err("must fail")
                .to_string();
            assert!(
                error.contains("postgres.url") && error.contains("environment"),
                "{error}"
            );
            Ok(())
        });
    }
}
