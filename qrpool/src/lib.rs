//! Assembles the parts of qrpool into one process.
//!
//! [`App::build`] opens the backends the settings name and wires the chosen [`Parts`]
//! together; [`App::run`] serves them until shutdown and then stops them in order:
//! HTTP first (requests in flight finish), then pregen, then the pool reader (so every
//! ack is committed). The `qrpool` binary is a thin face over this; tests use it directly.

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

/// The parts of one process, built and ready to serve.
#[derive(Debug)]
pub struct App {
    router: Router,
    pregen: Option<Pregen>,
    reader: Option<PoolReader>,
    grace: Duration,
}

impl App {
    /// Opens the backends the parts need and wires the routes.
    pub async fn build(settings: &Settings, parts: Parts) -> anyhow::Result<App> {
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
        let reader = match (&embedded, parts.binder) {
            (_, false) => None,
            (Some(pool), true) => Some(PoolReader::Embedded(pool.clone())),
            (None, true) => Some(PoolReader::Kafka(
                KafkaReader::connect(&settings.kafka)
                    .await
                    .context("joining the binder group on Kafka")?,
            )),
        };
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
        if let Some(bindings) = &bindings {
            let store = bindings.clone();
            readiness = readiness.with("bindings", move || {
                let store = store.clone();
                Box::pin(async move { store.check().await.map_err(|error| error.to_string()) })
            });
        }
        if let Some(reader) = &reader {
            let pool = reader.clone();
            readiness = readiness.with("pool", move || {
                let pool = pool.clone();
                Box::pin(async move { pool.check().await.map_err(|error| error.to_string()) })
            });
        } else if let Some(writer) = &writer {
            let pool = writer.clone();
            readiness = readiness.with("pool", move || {
                let pool = pool.clone();
                Box::pin(async move {
                    pool.depth()
                        .await
                        .map(drop)
                        .map_err(|error| error.to_string())
                })
            });
        }
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
        if let (true, Some(reader), Some(bindings)) = (parts.binder, &reader, &bindings) {
            router = router.merge(binder::router(Binder::new(
                reader.clone(),
                bindings.clone(),
                settings,
            )));
        }
        if let (true, Some(bindings)) = (parts.middle_page, &bindings) {
            router = router.merge(middle_page::router(bindings.clone()));
        }
        let router = service::layers::around(
            router,
            settings.server.max_body_bytes,
            Duration::from_millis(settings.server.request_timeout_ms),
        )
        .merge(service::ops::router(readiness));

        Ok(App {
            router,
            pregen,
            reader,
            grace: Duration::from_secs(settings.server.shutdown_grace_secs),
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
        let pregen = self
            .pregen
            .map(|pregen| tokio::spawn(pregen.run(shutdown.child_token())));
        let served = service::serve(
            listener,
            self.router,
            shutdown.clone().cancelled_owned(),
            self.grace,
        )
        .await;
        shutdown.cancel();
        if let Some(pregen) = pregen {
            pregen.await.context("the pregen task panicked")?;
        }
        if let Some(reader) = self.reader {
            reader
                .close()
                .await
                .context("committing the pool position at shutdown")?;
        }
        served.context("serving HTTP")
    }
}
