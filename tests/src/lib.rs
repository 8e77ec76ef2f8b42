//! Helpers for the black-box tests in `tests/tests/`: spawn a qrpool process's parts on port
//! 0, give each test its own database, Redis prefix and Kafka topic, and talk to it over
//! HTTP like a listing app or a phone would.
//!
//! The backends come from the environment, with the loopback defaults that `scripts/test`
//! starts: `QRPOOL_TEST_POSTGRES_URL`, `QRPOOL_TEST_REDIS_URL`, `QRPOOL_TEST_KAFKA_BROKERS`.
//! Logs are shown only with `TEST_LOG=1`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rand::Rng;
use secrecy::SecretString;
use serde_json::Value;
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use config::{PoolBackend, Settings, StoreBackend};
use qrpool::{App, Parts};

/// Where the real backends listen.
#[derive(Debug, Clone)]
pub struct Backends {
    pub postgres_url: String,
    pub redis_url: String,
    pub kafka_brokers: String,
}

impl Backends {
    pub fn from_env() -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Backends {
            postgres_url: var(
                "QRPOOL_TEST_POSTGRES_URL",
                "postgres://postgres:postgres@127.0.0.1:5432/postgres",
            ),
            redis_url: var("QRPOOL_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            kafka_brokers: var("QRPOOL_TEST_KAFKA_BROKERS", "127.0.0.1:9092"),
        }
    }

    /// The Redis server's address, for a [`FaultyLink`] in front of it.
    pub fn redis_address(&self) -> SocketAddr {
        self.redis_url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .parse()
            .expect("QRPOOL_TEST_REDIS_URL is redis://<ip>:<port>")
    }
}

/// The `qrpool` binary of this build (`target/<profile>/qrpool`), for tests that run it as
/// a process; `scripts/test` builds it first.
pub fn qrpool_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("qrpool");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p qrpool` first (scripts/test does)",
        binary.display()
    );
    binary
}

/// A `qrpool up` process of this build, its output in a log file; killed and reaped when
/// dropped, however the test ends.
#[derive(Debug)]
pub struct QrpoolProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl QrpoolProcess {
    /// Starts `qrpool up` with `env` (on top of the test's own), its stdout and stderr in
    /// `log`, and waits up to 60 s until `ready_url` answers 200. Panics with the log when the
    /// process exits first.
    pub async fn start(env: &[(String, String)], ready_url: &str, log: std::path::PathBuf) -> Self {
        let output = std::fs::File::create(&log).expect("the process's log file");
        let child = std::process::Command::new(qrpool_binary())
            .arg("up")
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdout(output.try_clone().expect("the log file again"))
            .stderr(output)
            .spawn()
            .expect("qrpool starts");
        let mut process = QrpoolProcess { child, log };
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if let Ok(response) = client.get(ready_url).send().await
                && response.status() == 200
            {
                return process;
            }
            if let Some(status) = process.exited() {
                panic!("qrpool exited with {status}:\n{}", process.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{ready_url} did not answer 200 within 60 s:\n{}",
            process.log()
        );
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-TERM`, …) with `kill`.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal}");
    }

    /// SIGKILL: no shutdown at all. Returns once the process is gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to 30 s for it to exit; its exit status.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        for _ in 0..300 {
            if let Some(status) = self.exited() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "qrpool did not stop within 30 s of SIGTERM:\n{}",
            self.log()
        );
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("the process's state")
    }

    /// What it wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for QrpoolProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new link of `tenant` with one version, `target`, made by `actor` now (a random key, a
/// 302): what a test hands `LinkStore::create` to start a history.
pub fn new_link(
    tenant: &records::Tenant,
    target: records::LinkTarget,
    actor: &str,
) -> records::Link {
    let now = chrono::Utc::now();
    records::Link {
        v: records::Link::LAYOUT,
        key: records::LinkKey::generate(),
        tenant: tenant.clone(),
        status: records::RedirectStatus::Found,
        created_at: now,
        deleted_at: None,
        tags: records::Tags::default(),
        versions: vec![records::LinkVersion {
            version: 1,
            target,
            created_at: now,
            created_by: actor.to_owned(),
            note: None,
        }],
    }
}

/// A port on loopback that nothing listened on a moment ago, for a server a test starts
/// itself (a process of its own, which cannot be handed a bound socket).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on loopback")
        .port()
}

/// A short random suffix, so that tests never share a database, key or topic.
pub fn unique(prefix: &str) -> String {
    let suffix: u64 = rand::rng().random();
    format!("{prefix}_{suffix:016x}")
}

/// A fresh PostgreSQL database for one test, dropped by [`TestDatabase::drop_now`]; and the
/// test's own data folder (the analytics store on Kafka), removed when it is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    pub data_dir: tempfile::TempDir,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create(backends: &Backends) -> TestDatabase {
        let name = unique("qrpool_test");
        let mut admin = sqlx::PgConnection::connect(&backends.postgres_url)
            .await
            .expect("PostgreSQL must be running (scripts/test starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        let (base, _) = backends
            .postgres_url
            .rsplit_once('/')
            .expect("a database URL has a path");
        TestDatabase {
            url: format!("{base}/{name}"),
            data_dir: tempfile::tempdir().expect("a temporary folder"),
            name,
            admin_url: backends.postgres_url.clone(),
        }
    }

    pub async fn count_bindings(&self) -> i64 {
        let mut connection = sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect");
        sqlx::query_scalar("SELECT COUNT(*) FROM bindings")
            .fetch_one(&mut connection)
            .await
            .expect("count")
    }

    /// Every bound request id, as the store holds them.
    pub async fn request_ids(&self) -> std::collections::HashSet<String> {
        let mut connection = sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect");
        sqlx::query_scalar("SELECT request_id FROM bindings")
            .fetch_all(&mut connection)
            .await
            .expect("read the bindings")
            .into_iter()
            .collect()
    }

    pub async fn drop_now(self) {
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await;
        }
    }
}

/// Settings for the embedded backends in `data_dir`, sized for tests.
pub fn embedded_settings(data_dir: &Path) -> Settings {
    let mut settings = Settings::default();
    settings.embedded.data_dir = data_dir.to_owned();
    // Tests watch the pool itself: a dry lane answers 503 unless a test turns this back on.
    settings.binder.on_demand_local = false;
    settings.pregen.target_depth = 300;
    settings.pregen.low_water = 100;
    settings.pregen.batch = 100;
    settings
}

/// Settings for Kafka + Redis + PostgreSQL, each private to the calling test (topics named
/// after `topic`, the database's data folder).
pub fn distributed_settings(
    backends: &Backends,
    database: &TestDatabase,
    topic: &str,
    redis_prefix: &str,
) -> Settings {
    let mut settings = Settings::default();
    settings.pool.backend = PoolBackend::Kafka;
    settings.store.backend = StoreBackend::Postgres;
    settings.postgres.url = Some(SecretString::from(database.url.clone()));
    settings.redis.url = Some(SecretString::from(backends.redis_url.clone()));
    settings.redis.key_prefix = redis_prefix.to_owned();
    settings.kafka.brokers = backends.kafka_brokers.clone();
    settings.kafka.pool_topic = topic.to_owned();
    settings.kafka.group_id = format!("{topic}-binders");
    settings.kafka.events_topic = format!("{topic}.scans");
    settings.embedded.data_dir = database.data_dir.path().to_owned();
    settings.kafka.partitions = 4;
    settings.kafka.session_timeout_ms = 6_000;
    settings.binder.on_demand_local = false;
    // tansu reports a partition's high watermark as the last *batch's* base offset + 1, so
    // with multi-record batches the pool depth reads low and pregen over-fills. Single-record
    // batches keep its watermarks exact; Apache Kafka needs no such setting.
    settings
        .kafka
        .producer_options
        .insert("batch.num.messages".into(), "1".into());
    settings.pregen.target_depth = 200;
    settings.pregen.low_water = 0;
    settings.pregen.batch = 100;
    // The first bind waits for the consumer group to form.
    settings.binder.claim_wait_ms = 25_000;
    settings.server.request_timeout_ms = 30_000;
    settings
}

/// Parts of qrpool serving on a loopback port chosen by the OS.
#[derive(Debug)]
pub struct TestApp {
    pub address: SocketAddr,
    pub base: String,
    /// Sends `key` with every request.
    pub client: reqwest::Client,
    /// An API key of tenant `default` with every scope (when the app runs the binder).
    pub key: Option<String>,
    shutdown: CancellationToken,
    running: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// Builds the parts, fills the pool like `qrpool up` does, and serves.
    pub async fn spawn(mut settings: Settings, parts: Parts) -> TestApp {
        init_test_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a port");
        let address = listener.local_addr().expect("local address");
        settings.server.listen = address;
        settings.server.public_url = Some(format!("http://{address}"));
        settings.validate().expect("test settings are valid");

        let shutdown = CancellationToken::new();
        let app = App::build(&settings, parts).await.expect("the app builds");
        let key = if parts.binder {
            Some(Self::make_key(&settings, &records::Tenant::default(), "bind read admin").await)
        } else {
            None
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = &key {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {key}").parse().expect("a header value"),
            );
        }
        app.prime(&shutdown).await.expect("the pool fills");
        let running = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { app.run(listener, shutdown).await }
        });
        TestApp {
            address,
            base: format!("http://{address}"),
            key,
            client: reqwest::Client::builder()
                .default_headers(headers)
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            shutdown,
            running,
        }
    }

    /// Stops the app the way SIGTERM does and waits until it has stopped cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.running)
            .await
            .expect("the app stops within 30 s")
            .expect("the app task did not panic");
        if let Err(error) = result {
            panic!("the app stopped with an error: {error:#}");
        }
    }

    /// Makes an API key in the app's store, as `qrpool keys create` does.
    pub async fn make_key(settings: &Settings, tenant: &records::Tenant, scopes: &str) -> String {
        let store = bindings::DurableStore::connect(settings)
            .await
            .expect("open the key store");
        let scopes = records::Scopes::parse(scopes).expect("scopes");
        let (token, _) = store
            .create_api_key(tenant, scopes, 1_000_000)
            .await
            .expect("create a key");
        token.reveal()
    }

    /// Signs in to the console with `key`; the session cookie (`name=value`).
    pub async fn console_sign_in(&self, key: &str) -> String {
        let answer = no_redirects()
            .post(self.url("/console/sign-in"))
            .form(&[("key", key)])
            .send()
            .await
            .expect("POST /console/sign-in");
        assert_eq!(answer.status(), reqwest::StatusCode::SEE_OTHER);
        let cookie = answer.headers()[reqwest::header::SET_COOKIE]
            .to_str()
            .expect("a cookie")
            .to_owned();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        cookie.split(';').next().unwrap_or_default().to_owned()
    }

    /// The sum of every series of metric `name` in `/metrics` (all label sets).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .get("/metrics")
            .await
            .text()
            .await
            .expect("/metrics answers");
        text.lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /v1/codes` with a JSON body.
    pub async fn bind(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/codes"))
            .json(body)
            .send()
            .await
            .expect("POST /v1/codes")
    }

    /// `POST /v1/codes` with a raw body and content type.
    pub async fn bind_raw(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: &str,
    ) -> reqwest::Response {
        self.client
            .post(self.url("/v1/codes"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /v1/codes")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// Binds `count` codes from `concurrency` clients at once; returns every 201 body.
    pub async fn bind_many(&self, count: usize, concurrency: usize) -> Vec<Value> {
        use futures::StreamExt;
        futures::stream::iter(0..count)
            .map(|i| async move {
                let response = self
                    .bind(&serde_json::json!({"params": {"listing": format!("L-{i}"), "n": i}}))
                    .await;
                let status = response.status();
                let body: Value = response.json().await.expect("a JSON answer");
                assert_eq!(status, 201, "bind {i} answered {status}: {body}");
                body
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }
}

/// A client that follows no redirect and keeps no cookie: each test says what it sends.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

/// Decodes a PNG with a real QR decoder and returns the text of its one code.
pub fn decode_qr(png: &[u8]) -> String {
    render::decode::png_text(png).expect("the PNG reads back as one QR code")
}

fn init_test_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_test_writer()
            .try_init();
    }
}

/// A TCP link on loopback in front of a real server, which a test can cut and restore: the
/// way a network partition or a restarting database looks to qrpool. While cut, open
/// connections are dropped and new ones are closed as soon as they are accepted.
#[derive(Debug)]
pub struct FaultyLink {
    pub address: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    accepting: JoinHandle<()>,
}

impl FaultyLink {
    pub async fn to(upstream: SocketAddr) -> FaultyLink {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a port");
        let address = listener.local_addr().expect("local address");
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0_u64);
        let generation = std::sync::Arc::new(generation);
        let accepting = tokio::spawn({
            let (cut, generation) = (cut.clone(), generation.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed
                    }
                    let mut cuts = generation.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await
                        else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cuts.changed() => {}
                        }
                    });
                }
            }
        });
        FaultyLink {
            address,
            cut,
            generation,
            accepting,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|generation| *generation += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FaultyLink {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl TestDatabase {
    /// The same database, reached through `link` instead of directly.
    pub fn url_through(&self, link: &FaultyLink) -> String {
        let (scheme_and_credentials, rest) =
            self.url.split_once('@').expect("a URL with credentials");
        let (_, path) = rest.split_once('/').expect("a URL with a database");
        format!("{scheme_and_credentials}@{}/{path}", link.address)
    }

    /// Where the server behind this database listens.
    pub fn server_address(&self) -> SocketAddr {
        let (_, rest) = self.url.split_once('@').expect("a URL with credentials");
        let (host_port, _) = rest.split_once('/').expect("a URL with a database");
        host_port
            .parse()
            .expect("the test database URL names an IP and port")
    }
}

pub mod chdb;
pub mod servers;
pub mod wechat_api;
