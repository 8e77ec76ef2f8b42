//! Typed settings for every part of qrpool, loaded in three layers:
//! built-in defaults ◄ a TOML file ◄ `QRPOOL_…` environment variables.
//!
//! With no file and no environment, the defaults run the whole pipeline on the embedded
//! backends on `127.0.0.1:8080`. [`Settings::load`] fails at start, naming the key and what
//! it expects, rather than letting a bad value surface later as a confusing runtime error.
//!
//! # Environment variables
//!
//! Every key can be set as `QRPOOL_<SECTION>__<KEY>` (two underscores between levels):
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `QRPOOL_SERVER__LISTEN` | address the HTTP server binds | `127.0.0.1:8080` |
//! | `QRPOOL_SERVER__PUBLIC_URL` | base URL the codes encode (scheme and host, no path) | `http://<listen>` |
//! | `QRPOOL_SERVER__MAX_BODY_BYTES` | largest request body | `65536` |
//! | `QRPOOL_SERVER__REQUEST_TIMEOUT_MS` | time limit of one request | `5000` |
//! | `QRPOOL_SERVER__SHUTDOWN_GRACE_SECS` | how long shutdown waits for requests in flight | `10` |
//! | `QRPOOL_SERVER__TRUSTED_PROXIES` | proxies that may name the client in `Forwarded` / `X-Forwarded-For` (a list: `'["10.0.0.0/8"]'`) | none |
//! | `QRPOOL_SERVER__HEADER_READ_TIMEOUT_MS` | a connection that sends no whole request head within this long (new, or idle between requests) is closed; 0: never | `15000` |
//! | `QRPOOL_SERVER__MAX_CONNECTIONS` | connections open at once; more are answered 503 and closed | `10000` |
//! | `QRPOOL_POOL__BACKEND` | `embedded` or `kafka` | `embedded` |
//! | `QRPOOL_STORE__BACKEND` | `embedded` or `postgres` | `embedded` |
//! | `QRPOOL_EMBEDDED__DATA_DIR` | folder of the embedded databases | `qrpool-data` |
//! | `QRPOOL_KAFKA__BROKERS` | bootstrap servers | `127.0.0.1:9092` |
//! | `QRPOOL_KAFKA__POOL_TOPIC` | prefix of the pool topics: issuer `X`'s codes go to `<pool_topic>.X` | `qrpool.pool` |
//! | `QRPOOL_KAFKA__PARTITIONS` | partitions when qrpool creates the topic | `8` |
//! | `QRPOOL_KAFKA__REPLICATION` | replication factor when qrpool creates the topic | `1` |
//! | `QRPOOL_KAFKA__GROUP_ID` | prefix of the binder groups: `<group_id>.X` reads issuer `X`'s topic | `qrpool-binder` |
//! | `QRPOOL_KAFKA__SESSION_TIMEOUT_MS` | consumer-group session timeout | `10000` |
//! | `QRPOOL_KAFKA__PREFETCH` | codes a binder holds ready | `512` |
//! | `QRPOOL_REDIS__URL` | secret; Redis hot tier of the bindings (unset: no Redis) | unset |
//! | `QRPOOL_REDIS__KEY_PREFIX` | prefix of every key qrpool writes | `qrpool:` |
//! | `QRPOOL_REDIS__TTL_SECS` | how long a binding stays hot in Redis | `604800` |
//! | `QRPOOL_POSTGRES__URL` | secret; PostgreSQL of the bindings | unset |
//! | `QRPOOL_POSTGRES__MAX_CONNECTIONS` | pool size | `16` |
//! | `QRPOOL_POSTGRES__ACQUIRE_TIMEOUT_MS` | how long a request waits for a connection | `1000` |
//! | `QRPOOL_POSTGRES__CONNECTION_LIFETIME_SECS` | how long a connection serves; those past it are replaced one at a time | `1800` |
//! | `QRPOOL_RENDER__MODULE_PX` | pixels per QR module | `8` |
//! | `QRPOOL_RENDER__QUIET_ZONE` | modules of blank margin | `4` |
//! | `QRPOOL_RENDER__EC_LEVEL` | error correction: `L`, `M`, `Q` or `H` | `M` |
//! | `QRPOOL_PREGEN__TARGET_DEPTH` | codes pregen keeps in the pool | `2000` |
//! | `QRPOOL_PREGEN__LOW_WATER` | depth below which pregen refills | `1000` |
//! | `QRPOOL_PREGEN__BATCH` | codes rendered and enqueued at a time | `256` |
//! | `QRPOOL_PREGEN__CHECK_INTERVAL_MS` | how often pregen looks at the depth | `1000` |
//! | `QRPOOL_PREGEN__ISSUER` | who fills the pool: `local` or a name under `pregen.issuers` | `local` |
//! | `QRPOOL_PREGEN__TIME_ZONE` | IANA zone of the off-peak windows | `UTC` |
//! | `QRPOOL_PREGEN__PEAK_QUOTA_SHARE` | share of a remote quota pregen may use outside the windows | `0.2` |
//! | `QRPOOL_PREGEN__ISSUERS__<NAME>__APP_SECRET` | secret of a remote issuer | unset |
//! | `QRPOOL_BINDER__ON_DEMAND_LOCAL` | a dry local lane draws a code at bind time instead of answering 503 | `true` |
//! | `QRPOOL_BINDER__TENANT` | tenant of the first API key `qrpool up` makes when there is none (each key names its tenant) | `default` |
//! | `QRPOOL_BINDER__CLAIM_WAIT_MS` | how long a bind waits for a code when the pool is dry | `250` |
//! | `QRPOOL_BINDER__MAX_PARAMS_BYTES` | largest `params` object | `4096` |
//! | `QRPOOL_BINDER__BINDING_TTL_DAYS` | lifetime of a binding (unset: no expiry) | unset |
//! | `QRPOOL_MIDDLE_PAGE__CACHE_CAPACITY` | bindings held in process | `100000` |
//! | `QRPOOL_MIDDLE_PAGE__CACHE_TTL_SECS` | how long a binding stays in process | `300` |
//! | `QRPOOL_MIDDLE_PAGE__NEGATIVE_TTL_MS` | how long an unbound id is answered unknown without a lookup (0: off) | `2000` |
//! | `QRPOOL_SCANS__ENABLED` | record an event per scan | `true` |
//! | `QRPOOL_SCANS__QUEUE` | events waiting to be written before new ones are dropped (counted) | `65536` |
//! | `QRPOOL_SCANS__COUNTRY_HEADER` | request header carrying the scanner's country | unset |
//! | `QRPOOL_KAFKA__EVENTS_TOPIC` | topic of scan events when the pool is on Kafka | `qrpool.scans` |
//! | `QRPOOL_ANALYTICS__ENABLED` | keep scans for the analytics API (ingest and API) | `true` |
//! | `QRPOOL_ANALYTICS__BACKEND` | `embedded` (Parquet in the data folder) or `clickhouse` | `embedded` |
//! | `QRPOOL_ANALYTICS__GEOIP_DB` | an MMDB file that places scanners (GeoLite2/GeoIP2 City or Country, DB-IP Lite) | unset |
//! | `QRPOOL_ANALYTICS__FLUSH_SECS` | how often new scans are ingested | `5` |
//! | `QRPOOL_ANALYTICS__RETENTION_DAYS` | days of scans kept | `400` |
//! | `QRPOOL_ANALYTICS__QUERY_CACHE_MB` | memory for decoded columns kept between queries (embedded) | `512` |
//! | `QRPOOL_ANALYTICS__CLICKHOUSE__URL` | ClickHouse's HTTP interface | `http://127.0.0.1:8123` |
//! | `QRPOOL_ANALYTICS__CLICKHOUSE__DATABASE` | its database | `qrpool` |
//! | `QRPOOL_ANALYTICS__CLICKHOUSE__USER` | its user | `default` |
//! | `QRPOOL_ANALYTICS__CLICKHOUSE__PASSWORD` | secret: its password | unset |
//! | `QRPOOL_ANALYTICS__CLICKHOUSE__INGEST_GROUP` | consumer group of `qrpool analytics ingest` | `qrpool-analytics` |
//! | `QRPOOL_CONSOLE__ENABLED` | serve the web console at `/console` where the binder runs | `true` |
//! | `QRPOOL_CONSOLE__SESSION_IDLE_MINUTES` | a console session ends after this long unused | `30` |
//! | `QRPOOL_ANALYTICS__CLICKHOUSE__BATCH` | most events per insert | `50000` |
//! | `QRPOOL_TELEMETRY__FORMAT` | `pretty` or `json` log lines | `pretty` |
//! | `QRPOOL_TELEMETRY__FILTER` | tracing filter (`RUST_LOG` wins when set) | `info` |
//!
//! `kafka.producer_options` (extra librdkafka producer properties, whose names contain dots)
//! is set in the file: `[kafka.producer_options]` then `"linger.ms" = "10"`.
//!
//! `pregen.off_peak` (a list) and the issuers under `[pregen.issuers.<name>]` are set in the
//! file; see `config/qrpool.example.toml`.
//!
//! Secrets (`redis.url`, `postgres.url`, `redirect.signing_secret`,
//! `analytics.clickhouse.password`, `pregen.issuers.<name>.app_secret`) are read from the
//! environment only: a file that
//! sets them is refused, so that they never end up in a repository.

mod pregen;
mod settings;

pub use settings::*;
