//! `qrpool`: runs any part of qrpool, or all of them in one process.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use config::{LogFormat, PoolBackend, Settings, StoreBackend, TelemetrySettings};
use qrpool::{App, Parts};

/// The scan path allocates a little per request on every worker thread, and glibc's malloc
/// and free were a tenth of its CPU time in profiles: a thread-caching allocator pays. We ran
/// on mimalloc before; after a burst of load (the soak's capacity probe) it kept about
/// 800 MiB more resident than jemalloc for the rest of the run, and grew where jemalloc held
/// its level but for merges, and served scans at the same speed and CPU time a request in one
/// run of `benches/scan-vs-nginx.sh` beside it (docs/performance.md, 2026-12-06).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "qrpool",
    version,
    about = "Pre-generated QR codes, bound on demand, resolved at scan time"
)]
struct Cli {
    /// A TOML settings file; `QRPOOL_…` environment variables override it.
    #[arg(long, short, global = true, env = "QRPOOL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every part in one process (embedded backends unless configured otherwise).
    Up,
    /// Keeps the pool filled (`run`, the default), or fills it once (`fill`).
    Pregen {
        #[command(subcommand)]
        action: Option<PregenCommand>,
    },
    /// Looks at the pool.
    Pool {
        #[command(subcommand)]
        action: PoolCommand,
    },
    /// The codes API: binds pooled codes on demand.
    Binder,
    /// Scan-time resolution: the middle page, the scene API, and dynamic redirects with
    /// their links API.
    MiddlePage,
    /// Brings the schema of the binding and link stores up to date, then exits.
    Migrate,
    /// The API keys of the tenants' apps.
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Scan analytics: the ClickHouse ingest, erasing a tenant.
    Analytics {
        #[command(subcommand)]
        action: AnalyticsCommand,
    },
    /// Copies the embedded store (bindings, links, keys) into DIR while qrpool runs.
    Backup { dir: PathBuf },
    /// Puts a backup made by `qrpool backup` back; every qrpool on the data folder must be
    /// stopped. The pool is kept as it is (see docs/operations.md).
    Restore { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
enum AnalyticsCommand {
    /// Feeds ClickHouse from the Kafka events topic (`analytics.backend = "clickhouse"`): a
    /// consumer group; run one or more.
    Ingest,
    /// Deletes every scan and conversion of a tenant from the analytics store, for good.
    Erase {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Makes a key and prints it once.
    Create {
        #[arg(long)]
        tenant: String,
        /// What the key may do: bind, read, admin (repeat, or separate with commas).
        #[arg(long = "scope", default_value = "bind,read", num_args = 1..)]
        scopes: Vec<String>,
        /// Requests per second the key may make.
        #[arg(long, default_value_t = qrpool::keys::DEFAULT_RATE_PER_SEC)]
        rate: u32,
    },
    /// Every key: id, tenant, scopes, rate, when made and revoked.
    List,
    /// Revokes a key for good.
    Revoke { key_id: String },
}

#[derive(Debug, Subcommand)]
enum PregenCommand {
    /// The scheduler: fills in off-peak windows, refills below low water at peak.
    Run,
    /// Issues COUNT codes into the pool now, with a progress bar; Ctrl-C stops after the
    /// codes in flight and reports how many landed.
    Fill {
        #[arg(long)]
        count: u64,
        /// `local`, or a name under `pregen.issuers` (default: `pregen.issuer`).
        #[arg(long)]
        issuer: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Codes waiting, per partition.
    Status,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    init_telemetry(&settings.telemetry);
    // A huge page stays resident whole while any of it is used: with transparent huge pages,
    // the same analytics queries, at the same speed, held about 37 % more resident memory
    // (docs/performance.md, measured on mimalloc, which asks for them). The flag covers the
    // whole process, whatever its allocator.
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(%error, "could not turn transparent huge pages off; memory may run higher");
    }

    let parts = match cli.command {
        Command::Up => Parts::ALL,
        Command::Pregen {
            action: None | Some(PregenCommand::Run),
        } => Parts::PREGEN,
        Command::Pregen {
            action: Some(PregenCommand::Fill { count, issuer }),
        } => return fill(&settings, count, issuer.as_deref()).await,
        Command::Pool {
            action: PoolCommand::Status,
        } => return pool_status(&settings).await,
        Command::Binder => Parts::BINDER,
        Command::MiddlePage => Parts::MIDDLE_PAGE,
        Command::Keys { action } => {
            return match action {
                KeysCommand::Create {
                    tenant,
                    scopes,
                    rate,
                } => qrpool::keys::create(&settings, &tenant, &scopes.join(","), rate).await,
                KeysCommand::List => qrpool::keys::list(&settings).await,
                KeysCommand::Revoke { key_id } => qrpool::keys::revoke(&settings, &key_id).await,
            };
        }
        Command::Analytics { action } => {
            return match action {
                AnalyticsCommand::Ingest => analytics_ingest(&settings).await,
                AnalyticsCommand::Erase { tenant } => analytics_erase(&settings, &tenant).await,
            };
        }
        Command::Backup { dir } => return backup(&settings, &dir).await,
        Command::Restore { dir } => return restore(&settings, &dir).await,
        Command::Migrate => {
            let store = bindings::DurableStore::connect(&settings)
                .await
                .context("migrating the binding store")?;
            redirect::LinkStore::open(store.database())
                .await
                .context("migrating the link store")?;
            analytics::conversions::Conversions::open(store.database())
                .await
                .context("migrating the conversions table")?;
            println!("The binding, link and conversion stores are up to date.");
            return Ok(());
        }
    };

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    // The port first: a port in use should fail the start before any other work.
    let listener = service::serve::listen(settings.server.listen, settings.server.listen_backlog)
        .with_context(|| {
        format!(
            "binding {} (setting `server.listen`)",
            settings.server.listen
        )
    })?;
    let app = App::build(&settings, parts).await?;
    // `up` is the one-process path people try first: fill the pool before answering, so the
    // first bind finds a code. A lone pregen serves its health endpoints at once and fills
    // in the background, however large its target.
    let (primed, first_key) = if parts == Parts::ALL {
        (
            app.prime(&shutdown).await?,
            qrpool::keys::first_key(&settings).await?,
        )
    } else {
        (None, None)
    };
    print_banner(&settings, parts, primed);
    if let Some(key) = first_key {
        println!(
            "No API key existed, so one was made for tenant `{}` (every scope). It is shown \
             only now:\n\n  export QRPOOL_KEY={}\n\nMore with `qrpool keys create --tenant <name>`.\n",
            settings.binder.tenant.as_str(),
            key.reveal()
        );
    }
    app.run(listener, shutdown).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `qrpool analytics ingest`: the events topic into ClickHouse until Ctrl-C or SIGTERM, with
/// `/healthz`, `/readyz` and `/metrics` on `server.listen`.
async fn analytics_ingest(settings: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.analytics.backend == config::AnalyticsBackend::Clickhouse,
        "`qrpool analytics ingest` feeds ClickHouse: set analytics.backend = \"clickhouse\" \
         (the embedded store is fed in process by `qrpool up` / `qrpool middle-page`)"
    );
    service::ops::prometheus();
    let store = analytics::clickhouse::ClickHouseStore::connect(&settings.analytics.clickhouse)
        .await
        .context("connecting to ClickHouse (analytics.clickhouse.url)")?;
    pool::kafka::ensure_topic(&settings.kafka, &settings.kafka.events_topic)
        .await
        .context("creating the scan events topic")?;
    let feed = analytics::KafkaFeed::connect(settings, store.clone())
        .context("joining the analytics ingest group")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let listener = service::serve::listen(settings.server.listen, settings.server.listen_backlog)
        .with_context(|| {
        format!(
            "binding {} (setting `server.listen`)",
            settings.server.listen
        )
    })?;
    let readiness = service::Readiness::default().with("analytics", move || {
        let store = store.clone();
        Box::pin(async move { store.check().await.map_err(|error| error.to_string()) })
    });
    let ops = service::ops::router(readiness);
    let serving = tokio::spawn(service::serve(
        listener,
        ops,
        shutdown.clone().cancelled_owned(),
        std::time::Duration::from_secs(settings.server.shutdown_grace_secs),
        0,
        settings.server.connection_limits(),
    ));
    println!(
        "qrpool analytics ingest: {} → ClickHouse {} (group {}); health on http://{}",
        settings.kafka.events_topic,
        settings.analytics.clickhouse.database,
        settings.analytics.clickhouse.ingest_group,
        settings.server.listen
    );
    let fed = feed.run(shutdown.clone()).await;
    shutdown.cancel();
    drop(serving.await.context("the health endpoints failed")?);
    fed.context("ingesting scan events")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `qrpool analytics erase --tenant T`: the tenant's scans and conversions, gone.
async fn analytics_erase(settings: &Settings, tenant: &str) -> anyhow::Result<()> {
    let tenant = records::Tenant::parse(tenant).context("--tenant")?;
    let store = analytics::Store::open(settings)
        .await
        .context("opening the analytics store")?;
    store
        .erase_tenant(tenant.as_str())
        .await
        .context("erasing the tenant's scans")?;
    let durable = bindings::DurableStore::connect(settings)
        .await
        .context("opening the database")?;
    let conversions = analytics::conversions::Conversions::open(durable.database())
        .await
        .context("opening the conversions table")?
        .erase_tenant(&tenant)
        .await
        .context("erasing the tenant's conversions")?;
    println!(
        "Erased the analytics of tenant `{tenant}`: its scans, and {conversions} conversions. \
         Scans made from now on are recorded again."
    );
    Ok(())
}

/// Backups are of the embedded store; PostgreSQL has its own tools.
fn embedded_only(settings: &Settings, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.store.backend == StoreBackend::Embedded,
        "`qrpool {what}` is for the embedded store; with store.backend = postgres use \
         PostgreSQL's own (pg_dump, or continuous archiving)"
    );
    Ok(())
}

/// `qrpool backup DIR`.
async fn backup(settings: &Settings, dir: &std::path::Path) -> anyhow::Result<()> {
    embedded_only(settings, "backup")?;
    let contents = bindings::backup::back_up(&settings.embedded.data_dir, dir)
        .await
        .with_context(|| format!("backing up into {}", dir.display()))?;
    println!(
        "Backed up {} bindings and {} API keys (with links, versions and sessions) into {}.",
        contents.bindings,
        contents.api_keys,
        dir.display()
    );
    Ok(())
}

/// `qrpool restore DIR`.
async fn restore(settings: &Settings, dir: &std::path::Path) -> anyhow::Result<()> {
    embedded_only(settings, "restore")?;
    let contents = bindings::backup::restore(&settings.embedded.data_dir, dir)
        .await
        .with_context(|| format!("restoring from {}", dir.display()))?;
    println!(
        "Restored {} bindings and {} API keys into {}. The pool was kept: the codes waiting in \
         it were never handed out.",
        contents.bindings,
        contents.api_keys,
        settings.embedded.data_dir.display()
    );
    Ok(())
}

/// `qrpool pregen fill`: a batch with a progress bar, safe to interrupt.
async fn fill(settings: &Settings, count: u64, issuer: Option<&str>) -> anyhow::Result<()> {
    let writer = qrpool::open_pool_writer(settings).await?;
    let issuer = issuer.unwrap_or(&settings.pregen.issuer);
    let pregen = pregen::Pregen::for_issuer(writer, settings, issuer)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let bar = indicatif::ProgressBar::new(count).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} codes  {per_sec}  ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let result = pregen
        .fill_reporting(count, 1.0, &shutdown, |landed| bar.set_position(landed))
        .await;
    bar.finish_and_clear();
    let took = started.elapsed().as_secs_f64();
    let landed = result.as_ref().map_or(bar.position(), |landed| *landed);
    let how = if shutdown.is_cancelled() {
        "interrupted: "
    } else {
        ""
    };
    println!(
        "{how}{landed} of {count} codes from `{issuer}` landed in the pool in {took:.1} s ({:.0} codes/s)",
        landed as f64 / took.max(f64::EPSILON)
    );
    result.map(drop).context("filling the pool")
}

/// `qrpool pool status`: depth per issuer and partition, and the marks pregen works to.
async fn pool_status(settings: &Settings) -> anyhow::Result<()> {
    let writer = qrpool::open_pool_writer(settings).await?;
    let partitions = writer.status().await.context("reading the pool depth")?;
    println!("{:<16} {:<32} {:>12}", "issuer", "partition", "codes");
    for partition in &partitions {
        println!(
            "{:<16} {:<32} {:>12}",
            partition.issuer, partition.partition, partition.depth
        );
    }
    let mut per_issuer = std::collections::BTreeMap::<&str, u64>::new();
    for partition in &partitions {
        *per_issuer.entry(&partition.issuer).or_default() += partition.depth;
    }
    for (issuer, depth) in &per_issuer {
        println!("{:<16} {:<32} {:>12}", issuer, "(all partitions)", depth);
    }
    println!(
        "{:<16} {:<32} {:>12}",
        "total",
        "",
        per_issuer.values().sum::<u64>()
    );
    let pregen = &settings.pregen;
    println!(
        "pregen: issuer `{}`, high water {}, low water {}, off-peak now: {}",
        pregen.issuer,
        pregen.target_depth,
        pregen.low_water,
        pregen.is_off_peak(chrono::Utc::now())
    );
    Ok(())
}

fn init_telemetry(settings: &TelemetrySettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match settings.format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
    shutdown.cancel();
}

/// Tells a person where everything is.
fn print_banner(settings: &Settings, parts: Parts, primed: Option<(u64, std::time::Duration)>) {
    let base = settings.server.public_base();
    let listen = settings.server.listen;
    let pool = match settings.pool.backend {
        PoolBackend::Embedded => format!(
            "embedded ({})",
            settings.embedded.data_dir.join("pool.db").display()
        ),
        PoolBackend::Kafka => format!(
            "Kafka topics {}.<issuer> at {}",
            settings.kafka.pool_topic, settings.kafka.brokers
        ),
    };
    let store = match settings.store.backend {
        StoreBackend::Embedded => format!(
            "embedded ({})",
            settings.embedded.data_dir.join("bindings.db").display()
        ),
        StoreBackend::Postgres if settings.redis.url.is_some() => {
            "PostgreSQL, Redis in front".to_owned()
        }
        StoreBackend::Postgres => "PostgreSQL".to_owned(),
    };
    println!();
    println!(
        "qrpool {} is serving on http://{listen}",
        env!("CARGO_PKG_VERSION")
    );
    if parts.binder {
        println!(
            "  bind a code      POST {base}/v1/codes   {{\"params\": {{...}}}}  (Authorization: Bearer <key>)"
        );
        println!("  its image        GET  {base}/v1/codes/<request_id>/qr.png  (or qr.svg)");
        if settings.analytics.enabled {
            println!("  scan analytics   GET  {base}/v1/analytics/scans?group_by=country");
        }
        if settings.console.enabled {
            println!("  web console      {base}/console  (sign in with an API key)");
        }
    }
    if parts.middle_page {
        println!("  middle page      GET  {base}/m/<request_id>");
        println!("  scene API        GET  {base}/v1/scene/<request_id>");
        println!(
            "  dynamic links    POST {base}/v1/links   {{\"target\": {{\"destination\": \"https://…\"}}}}  → GET {base}/r/<key>"
        );
        if settings.redirect.allowed_hosts.is_empty() && settings.redirect.signing_secret.is_none()
        {
            println!(
                "                   (no tenant may create links yet: set redirect.allowed_hosts.<tenant>)"
            );
        }
    }
    println!("  operations       GET  http://{listen}/healthz  /readyz  /metrics");
    println!("  pool             {pool}");
    if parts.binder || parts.middle_page {
        println!("  bindings         {store}");
    }
    if let Some((added, took)) = primed {
        println!(
            "  pregen           topped the pool up with {added} codes in {:.2} s (target {})",
            took.as_secs_f64(),
            settings.pregen.target_depth
        );
    } else if parts.pregen {
        println!(
            "  pregen           filling the pool to {} codes in the background",
            settings.pregen.target_depth
        );
    }
    println!("Press Ctrl-C to stop.");
    println!();
}
