//! Assembles the parts of qrpool into one process.
//!
//! [`App::build`] opens the backends the settings name and wires the chosen [`Parts`]
//! together; [`App::run`] serves them until shutdown and then stops them in order:
//! HTTP first (requests in flight finish), then pregen, then the pool readers (so every
//! ack is committed). The `qrpool` binary is a thin face over this; tests use it directly.

pub mod keys;

use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use binder::Binder;
use bindings::Bindings;
use config::{PoolBackend, Settings};
use pool::{EmbeddedPool, KafkaReader, KafkaWriter, PoolReader, PoolWriter};
use pregen::Pregen;
use service::Readiness;

/// Which parts run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    pub pregen: bool,
    pub binder: bool,
    pub middle_page: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        pregen: true,
        binder: true,
        middle_page: true,
    };
    pub const PREGEN: Parts = Parts {
        pregen: true,
        binder: false,
        middle_page: false,
    };
    pub const BINDER: Parts = Parts {
        pregen: false,
        binder: true,
        middle_page: false,
    };
    pub const MIDDLE_PAGE: Parts = Parts {
        pregen: false,
        binder: false,
        middle_page: true,
    };
}

/// The pool as pregen writes to it, for commands that only fill or inspect it.
pub async fn open_pool_writer(settings: &Settings) -> anyhow::Result<PoolWriter> {
    Ok(match settings.pool.backend {
        PoolBackend::Embedded => PoolWriter::Embedded(
            EmbeddedPool::open(&settings.embedded.data_dir)
                .await
                .context("opening the embedded pool")?,
        ),
        PoolBackend::Kafka => PoolWriter::Kafka(
            KafkaWriter::connect(&settings.kafka)
                .await
                .context("connecting the pool producer to Kafka")?,
        ),
    })
}

/// Creates the scan events topic on Kafka if it is not there.
async fn ensure_events_topic(settings: &Settings) -> anyhow::Result<()> {
    pool::kafka::ensure_topic(&settings.kafka, &settings.kafka.events_topic)
        .await
        .context("creating the scan events topic")
}

/// The issuers whose lanes a binder takes from: `local` and every configured issuer.
fn served_issuers(settings: &Settings) -> impl Iterator<Item = &str> {
    std::iter::once(config::LOCAL_ISSUER).chain(settings.pregen.issuers.keys().map(String::as_str))
}

/// What the console's pool page reads: each served lane's depth (from the pool itself, so
/// that every binder's takes count), the issuers and, where pregen runs here, their state.
async fn console_pool_view(
    settings: &Settings,
    pregen: Option<&Pregen>,
    pool: Option<PoolWriter>,
) -> anyhow::Result<web_console::PoolView> {
    // The process's own pool handle when it has one (pregen's, or the embedded pool);
    // a binder on Kafka alone opens a producer for the depths.
    let pool = match pool {
        Some(pool) => pool,
        None => open_pool_writer(settings)
            .await
            .context("opening the pool for the console's pool page")?,
    };
    let lanes = served_issuers(settings)
        .map(|issuer| {
            let (pool, name) = (pool.clone(), issuer.to_owned());
            web_console::pages::pool::Lane {
                issuer: issuer.to_owned(),
                depth: std::sync::Arc::new(move || {
                    let (pool, name) = (pool.clone(), name.clone());
                    Box::pin(
                        async move { pool.depth(&name).await.map_err(|error| error.to_string()) },
                    )
                }),
            }
        })
        .collect();
    let issuers = served_issuers(settings)
        .map(|name| {
            let remote = settings.pregen.issuers.get(name);
            let stopped: Option<web_console::pages::pool::StoppedProbe> = pregen
                .filter(|pregen| pregen.issuer().name() == name)
                .map(|pregen| {
                    let pregen = pregen.clone();
                    std::sync::Arc::new(move || {
                        pregen
                            .issuer()
                            .is_stopped()
                            .then(|| "a configuration error (see the log and /readyz)".to_owned())
                    }) as web_console::pages::pool::StoppedProbe
                })
                .or_else(|| {
                    (remote.is_none()).then(|| {
                        std::sync::Arc::new(|| None) as web_console::pages::pool::StoppedProbe
                    })
                });
            let used: Option<web_console::pages::pool::UsedProbe> = pregen
                .filter(|pregen| pregen.issuer().name() == name)
                .map(|pregen| {
                    let pregen = pregen.clone();
                    std::sync::Arc::new(move || pregen.issuer().quota_used())
                        as web_console::pages::pool::UsedProbe
                });
            web_console::pages::pool::IssuerInfo {
                name: name.to_owned(),
                kind: if remote.is_some() {
                    "mini-program code API"
                } else {
                    "drawn here"
                },
                quota: remote.map(|issuer| {
                    let quota = issuer.quota();
                    (quota.calls, Duration::from_millis(quota.window_ms))
                }),
                stopped,
                used,
            }
        })
        .collect();
    Ok(web_console::PoolView::start(lanes, issuers, settings))
}

#[derive(Debug)]
struct LinkPurge {
    redirects: redirect::Redirects,
    retention: chrono::Duration,
    every: Duration,
}

/// The parts of one process, built and ready to serve.
#[derive(Debug)]
pub struct App {
    /// Every route, for tests that call it without a socket.
    router: Router,
    /// What is served: the scan routes answered before the router (see [`service::front`]).
    front: service::Front,
    pregen: Option<Pregen>,
    /// One per issuer lane the binder serves; empty without the binder.
    readers: Vec<PoolReader>,
    /// Writes scan events; drained at shutdown once no request can record any more.
    scan_writer: Option<scans::ScanWriter>,
    /// Purges deleted links past their retention, when the scan side runs here.
    link_purge: Option<LinkPurge>,
    /// Ingests the event files into the embedded analytics store, when they are written here.
    analytics_feed: Option<analytics::FileFeed>,
    /// Writes those files from the events topic, on Kafka when the analytics API is served here.
    analytics_relay: Option<analytics::TopicRelay>,
    grace: Duration,
    /// Threads answering requests, 0 for the shared runtime (see [`service::serve`]).
    http_threads: usize,
    connection_limits: service::serve::ConnectionLimits,
}

impl App {
    /// Opens the backends the parts need and wires the routes.
    pub async fn build(settings: &Settings, parts: Parts) -> anyhow::Result<App> {
        // The recorder first: what happens while the backends open (a consumer group's first
        // assignment, say) is counted too, not sent to the no-op recorder.
        service::ops::prometheus();
        // The embedded pool is one SQLite file that pregen and binder share in-process.
        let embedded = match settings.pool.backend {
            PoolBackend::Embedded if parts.pregen || parts.binder => Some(
                EmbeddedPool::open(&settings.embedded.data_dir)
                    .await
                    .context("opening the embedded pool")?,
            ),
            _ => None,
        };
        let writer = match (&embedded, parts.pregen) {
            (_, false) => None,
            (Some(pool), true) => Some(PoolWriter::Embedded(pool.clone())),
            (None, true) => Some(open_pool_writer(settings).await?),
        };
        let mut readers = Vec::new();
        if parts.binder {
            for issuer in served_issuers(settings) {
                readers.push(match &embedded {
                    Some(pool) => PoolReader::Embedded(pool.lane(issuer)),
                    None => PoolReader::Kafka(
                        KafkaReader::connect(&settings.kafka, issuer)
                            .await
                            .with_context(|| {
                                format!("joining the binder group of `{issuer}` on Kafka")
                            })?,
                    ),
                });
            }
        }
        let bindings = if parts.binder || parts.middle_page {
            Some(
                Bindings::connect(settings)
                    .await
                    .context("opening the binding store")?,
            )
        } else {
            None
        };

        let mut readiness = Readiness::default();
        let mut router = Router::new();
        let mut scan_routes = Vec::new();
        if let Some(bindings) = &bindings {
            let store = bindings.clone();
            readiness = readiness.with("bindings", move || {
                let store = store.clone();
                Box::pin(async move { store.check().await.map_err(|error| error.to_string()) })
            });
            // Binds and scans go on without Redis: named when it fails, still ready.
            if let Some(redis) = bindings.redis() {
                let redis = redis.clone();
                readiness = readiness.with_optional("redis", move || {
                    let redis = redis.clone();
                    Box::pin(async move { redis.check().await })
                });
            }
        }
        if let Some(reader) = readers.first() {
            // Every lane lives on the same brokers (or file): one answers for all.
            let pool = reader.clone();
            readiness = readiness.with("pool", move || {
                let pool = pool.clone();
                Box::pin(async move { pool.check().await.map_err(|error| error.to_string()) })
            });
        } else if let Some(writer) = &writer {
            let pool = writer.clone();
            let issuer = settings.pregen.issuer.clone();
            readiness = readiness.with("pool", move || {
                let (pool, issuer) = (pool.clone(), issuer.clone());
                Box::pin(async move {
                    pool.depth(&issuer)
                        .await
                        .map(drop)
                        .map_err(|error| error.to_string())
                })
            });
        }
        // A Kafka binder that holds no partition takes no pooled code and still binds, on
        // codes drawn on demand: named, still ready.
        if readers
            .iter()
            .any(|reader| matches!(reader, PoolReader::Kafka(_)))
        {
            let lanes = readers.clone();
            readiness = readiness.with_optional("pool partitions", move || {
                let starved: Vec<String> = lanes
                    .iter()
                    .filter_map(|reader| reader.holding_check().err())
                    .map(|error| error.to_string())
                    .collect();
                Box::pin(async move {
                    if starved.is_empty() {
                        Ok(())
                    } else {
                        Err(starved.join("; "))
                    }
                })
            });
        }
        let console_pool = writer
            .clone()
            .or_else(|| embedded.clone().map(PoolWriter::Embedded));
        let pregen = writer
            .map(|writer| Pregen::from_settings(writer, settings))
            .transpose()
            .context("setting up pregen's issuer")?;
        if let Some(pregen) = &pregen {
            let pregen = pregen.clone();
            readiness = readiness.with("issuer", move || {
                let pregen = pregen.clone();
                Box::pin(async move {
                    let issuer = pregen.issuer();
                    if issuer.is_stopped() {
                        Err(format!(
                            "issuer `{}` is stopped by a configuration error",
                            issuer.name()
                        ))
                    } else {
                        Ok(())
                    }
                })
            });
        }
        // One key checker for every API of the process, so that a key has one rate limit.
        let keys = bindings.as_ref().map(|bindings| {
            service::Keys::new(bindings.durable().clone())
                .with_shared_rates(bindings.redis().cloned())
                .with_session_idle(Duration::from_secs(
                    u64::from(settings.console.session_idle_minutes) * 60,
                ))
        });
        if let (true, Some(bindings), Some(keys)) = (parts.binder, &bindings, &keys) {
            router = router.merge(binder::router(Binder::new(
                readers.clone(),
                bindings.clone(),
                keys.clone(),
                settings,
            )));
        }
        // On Kafka, the relay beside the analytics API reads the scan events topic and the
        // middle page writes it: made once for whichever of them runs here.
        let events_topic = tokio::sync::OnceCell::new();
        let mut scan_writer = None;
        let mut link_purge = None;
        let mut analytics_feed = None;
        // The store the analytics API asks, when this process serves it: the ingest shares
        // it, so that a merge hands the answers of the file it makes to the queries.
        let mut queried_store: Option<analytics::embedded::EmbeddedStore> = None;
        let mut analytics_relay = None;
        if let (true, Some(bindings), Some(keys)) = (parts.binder, &bindings, &keys)
            && settings.analytics.enabled
        {
            let store = analytics::Store::open(settings)
                .await
                .context("opening the analytics store")?;
            if let analytics::Store::Embedded(embedded) = &store {
                queried_store = Some(embedded.clone());
            }
            // On Kafka the scan events are on the events topic: the embedded store this API
            // reads is filled from there, here.
            if let (PoolBackend::Kafka, analytics::Store::Embedded(embedded)) =
                (settings.pool.backend, &store)
            {
                events_topic
                    .get_or_try_init(|| ensure_events_topic(settings))
                    .await?;
                let events_dir = settings.embedded.data_dir.join("scans");
                let relay = analytics::TopicRelay::open(settings, embedded.root(), &events_dir)
                    .context("opening the relay of scan events into the analytics store")?;
                analytics_feed = Some(
                    analytics::FileFeed::open(embedded.clone(), &events_dir, settings)
                        .context("opening the analytics ingest")?
                        .appended_under(relay.appending()),
                );
                analytics_relay = Some(relay);
            }
            let checked = store.clone();
            readiness = readiness.with("analytics", move || {
                let store = checked.clone();
                Box::pin(async move { store.check().await.map_err(|error| error.to_string()) })
            });
            let database = bindings.durable().database();
            let service = analytics::AnalyticsService {
                store,
                keys: keys.clone(),
                conversions: analytics::conversions::Conversions::open(database.clone())
                    .await
                    .context("opening the conversions table")?,
                links: redirect::LinkStore::open(database)
                    .await
                    .context("opening the link store")?,
            };
            router = router.merge(analytics::router(std::sync::Arc::new(service)));
        }
        if let (true, Some(bindings), Some(keys)) = (parts.middle_page, &bindings, &keys) {
            let country_header = scans::country_header(settings.scans.country_header.as_deref())
                .context("scans.country_header is not a header name")?;
            let proxies = scans::TrustedProxies::parse(&settings.server.trusted_proxies)
                .context("server.trusted_proxies")?;
            let geo = settings
                .analytics
                .geoip_db
                .as_deref()
                .map(scans::GeoIp::open)
                .transpose()
                .context("opening the GeoIP database (setting `analytics.geoip_db`)")?;
            if let Some(geo) = &geo {
                tracing::info!(database_type = geo.database_type(), "GeoIP database open");
            }
            let clients = scans::Clients::new(proxies, country_header, geo);
            let scans = if settings.scans.enabled {
                let sink = match settings.pool.backend {
                    PoolBackend::Kafka => {
                        events_topic
                            .get_or_try_init(|| ensure_events_topic(settings))
                            .await?;
                        scans::ScanSink::Kafka {
                            brokers: settings.kafka.brokers.clone(),
                            topic: settings.kafka.events_topic.clone(),
                        }
                    }
                    PoolBackend::Embedded => {
                        scans::ScanSink::Files(settings.embedded.data_dir.join("scans"))
                    }
                };
                if let scans::ScanSink::Files(events_dir) = &sink
                    && settings.analytics.enabled
                    && settings.analytics.backend == config::AnalyticsBackend::Embedded
                {
                    let store = match &queried_store {
                        Some(queried) => queried.clone(),
                        None => analytics::embedded::EmbeddedStore::open(
                            &settings.embedded.data_dir.join("analytics"),
                        )
                        .context("opening the analytics store")?,
                    };
                    analytics_feed = Some(
                        analytics::FileFeed::open(store, events_dir, settings)
                            .context("opening the analytics ingest")?,
                    );
                }
                let (events, writer) =
                    scans::ScanEvents::start(sink, settings.scans.queue, clients.clone())
                        .context("starting the scan event writer")?;
                scan_writer = Some(writer);
                Some(events)
            } else {
                None
            };
            let page = middle_page::MiddlePage::new(
                bindings.clone(),
                scans.clone(),
                middle_page::targets(&settings.targets),
                settings.landing.clone(),
            );
            scan_routes.extend(middle_page::scan_routes(&page));
            router = router.merge(middle_page::router(page));
            let links = redirect::LinkStore::open(bindings.durable().database())
                .await
                .context("opening the link store")?;
            let redirects = redirect::Redirects::new(links, bindings.redis().cloned(), settings);
            let public_base = settings.server.public_base();
            let links = std::sync::Arc::new(redirect::routes::LinkService {
                redirects: redirects.clone(),
                keys: keys.clone(),
                destinations: redirect::Destinations::new(
                    settings.redirect.allowed_hosts.clone(),
                    settings.redirect.signing_secret.clone(),
                ),
                scans,
                clients,
                secure_cookie: public_base.starts_with("https://"),
                public_url: public_base,
                style: settings.render.into(),
            });
            scan_routes.push(redirect::scan_route(&links));
            router = router.merge(redirect::router(links));
            link_purge = Some(LinkPurge {
                redirects,
                retention: chrono::Duration::days(i64::from(
                    settings.redirect.deleted_retention_days,
                )),
                every: Duration::from_secs(settings.redirect.purge_every_secs),
            });
        }
        if let (true, true, Some(keys)) = (parts.binder, settings.console.enabled, &keys) {
            // The console calls the API routes built above, in process.
            let pool = console_pool_view(settings, pregen.as_ref(), console_pool).await?;
            let console = web_console::Console::new(
                keys.clone(),
                router.clone(),
                settings,
                Some(pool),
                parts.middle_page,
            );
            router = router.merge(web_console::router(std::sync::Arc::new(console)));
        }
        let request_timeout = Duration::from_millis(settings.server.request_timeout_ms);
        let router =
            service::layers::around(router, settings.server.max_body_bytes, request_timeout)
                .merge(service::ops::router(readiness));
        let front = service::Front::new(scan_routes, router.clone(), request_timeout);

        Ok(App {
            router,
            front,
            pregen,
            readers,
            scan_writer,
            link_purge,
            analytics_feed,
            analytics_relay,
            grace: Duration::from_secs(settings.server.shutdown_grace_secs),
            http_threads: settings.server.http_threads(parts.binder),
            connection_limits: settings.server.connection_limits(),
        })
    }

    /// The whole HTTP surface, for tests that call it without a socket.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Fills the pool to its target before serving, so the first bind finds a code.
    /// Returns how many codes were added and how long it took.
    pub async fn prime(
        &self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<(u64, Duration)>> {
        let Some(pregen) = &self.pregen else {
            return Ok(None);
        };
        let started = Instant::now();
        let added = pregen
            .top_up(shutdown)
            .await
            .context("filling the pool at start")?;
        Ok(Some((added, started.elapsed())))
    }

    /// Serves until `shutdown` is cancelled, then stops every part without losing an ack.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let App {
            router,
            front,
            pregen,
            readers,
            scan_writer,
            link_purge,
            analytics_feed,
            analytics_relay,
            grace,
            http_threads,
            connection_limits,
        } = self;
        // The router holds the scan events' queue as much as `front` does: kept until the end,
        // it would keep the scan writer waiting for events that can no longer come.
        drop(router);
        let pregen = pregen.map(|pregen| tokio::spawn(pregen.run(shutdown.child_token())));
        let link_purge = link_purge.map(|purge| {
            tokio::spawn(purge.redirects.purge_periodically(
                purge.retention,
                purge.every,
                shutdown.child_token(),
            ))
        });
        let analytics_feed =
            analytics_feed.map(|feed| tokio::spawn(feed.run(shutdown.child_token())));
        let analytics_relay =
            analytics_relay.map(|relay| tokio::spawn(relay.run(shutdown.child_token())));
        let served = service::serve(
            listener,
            front,
            shutdown.clone().cancelled_owned(),
            grace,
            http_threads,
            connection_limits,
        )
        .await;
        shutdown.cancel();
        // Once no request runs, the parts stop side by side: each may wait on a broker that
        // is gone (a producer flush, an offset commit), and waiting in turn would add up.
        let pregen = async {
            if let Some(pregen) = pregen {
                pregen.await.context("the pregen task panicked")?;
            }
            anyhow::Ok(())
        };
        let link_purge = async {
            if let Some(purge) = link_purge {
                purge.await.context("the link purge task panicked")?;
            }
            anyhow::Ok(())
        };
        let scans = async {
            let written = match scan_writer {
                Some(writer) => writer.finish().await,
                None => Ok(()),
            };
            if let Some(relay) = analytics_relay {
                relay.await.context("the scan events relay task panicked")?;
            }
            // The events written at shutdown are ingested too, once the writer is done.
            if let Some(feed) = analytics_feed {
                feed.await
                    .context("the analytics ingest task panicked")?
                    .finish()
                    .await;
            }
            written?;
            anyhow::Ok(())
        };
        let readers = futures::future::join_all(readers.into_iter().map(|reader| async move {
            // Not an error of the shutdown: a position not committed only means the codes
            // after it are delivered again, and the binding store skips those already bound.
            if let Err(error) = reader.close().await {
                tracing::warn!(
                    issuer = reader.issuer(),
                    error = %error,
                    "could not commit the pool position at shutdown; bound codes after it will be redelivered and skipped"
                );
            }
        }));
        let (pregen, link_purge, scans, _) = tokio::join!(pregen, link_purge, scans, readers);
        pregen?;
        link_purge?;
        scans.context("stopping the scan events")?;
        drop(served.context("serving HTTP")?);
        Ok(())
    }
}
