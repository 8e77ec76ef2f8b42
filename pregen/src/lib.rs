//! Pregen: keeps the pool filled so that a bind never waits on an issuer.
//!
//! - [`Pregen::fill`] renders and enqueues a number of codes, a batch at a time: each batch
//!   is drawn on the rayon pool (off the async runtime; one batch in flight bounds the work)
//!   and enqueued before the next one starts.
//! - [`Pregen::run`] is the long-running loop: fill to `pregen.target_depth` at start, then
//!   refill to the target whenever the depth falls below `pregen.low_water`.
//!
//! The issuer here is the local renderer: every code encodes the fixed middle-page URL with
//! its request id. Off-peak windows and remote issuers under quota build on this loop.

mod events;

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use config::{PregenSettings, Settings};
use pool::{PoolError, PoolWriter};
use records::{CodeImage, PoolRecord, RequestId};
use render::{RenderError, Style};

/// The issuer name of locally rendered codes.
pub const LOCAL_ISSUER: &str = "local";

#[derive(Debug, thiserror::Error)]
pub enum PregenError {
    #[error("enqueueing codes failed")]
    Pool(#[from] PoolError),
    #[error("rendering a code failed")]
    Render(#[from] RenderError),
    #[error("the render task stopped unexpectedly")]
    RenderTask(#[from] tokio::task::JoinError),
}

#[derive(Debug, Clone)]
pub struct Pregen {
    writer: PoolWriter,
    style: Style,
    public_base: String,
    settings: PregenSettings,
}

impl Pregen {
    pub fn new(writer: PoolWriter, settings: &Settings) -> Self {
        Pregen {
            writer,
            style: settings.render.into(),
            public_base: settings.server.public_base(),
            settings: settings.pregen,
        }
    }

    /// Renders and enqueues `count` codes; stops early (between batches) when `shutdown`
    /// fires. Returns how many codes landed in the pool.
    pub async fn fill(&self, count: u64, shutdown: &CancellationToken) -> Result<u64, PregenError> {
        let mut landed = 0_u64;
        while landed < count && !shutdown.is_cancelled() {
            let batch = usize::try_from(count - landed)
                .unwrap_or(usize::MAX)
                .min(self.settings.batch);
            let records = self.render_batch(batch).await?;
            let span = tracing::debug_span!("enqueue", codes = records.len());
            self.writer.push(&records).instrument(span).await?;
            events::enqueued(records.len());
            landed += records.len() as u64;
        }
        Ok(landed)
    }

    /// Draws `count` new codes on the rayon pool.
    async fn render_batch(&self, count: usize) -> Result<Vec<PoolRecord>, PregenError> {
        let ids: Vec<RequestId> = (0..count).map(|_| RequestId::generate()).collect();
        let urls: Vec<String> = ids
            .iter()
            .map(|&id| records::middle_page_url(&self.public_base, id))
            .collect();
        let style = self.style;
        let span = tracing::debug_span!("render", codes = count);
        let started = std::time::Instant::now();
        let (urls, pngs) = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let pngs = render::png_batch(&urls, &style);
            (urls, pngs)
        })
        .await?;
        events::rendered(count, started.elapsed());
        let created_at = Utc::now();
        ids.into_iter()
            .zip(urls)
            .zip(pngs)
            .map(|((request_id, content), png)| {
                Ok(PoolRecord {
                    request_id,
                    issuer: LOCAL_ISSUER.to_owned(),
                    content,
                    image: Some(CodeImage {
                        media_type: "image/png".to_owned(),
                        bytes: png?,
                    }),
                    created_at,
                })
            })
            .collect()
    }

    /// Fills the pool up to the target depth. Returns how many codes were added.
    pub async fn top_up(&self, shutdown: &CancellationToken) -> Result<u64, PregenError> {
        let depth = self.writer.depth().await?;
        events::depth(depth);
        let missing = self.settings.target_depth.saturating_sub(depth);
        if missing == 0 {
            return Ok(0);
        }
        let added = self.fill(missing, shutdown).await?;
        self.writer.flush().await?;
        events::topped_up(depth, added);
        Ok(added)
    }

    /// Keeps the pool between the low-water mark and the target until `shutdown` fires.
    /// A failing pool is retried on the next tick, never fatal: pregen is off the bind path.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut first = true;
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.settings.check_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let result = async {
                let depth = self.writer.depth().await?;
                events::depth(depth);
                if first || depth < self.settings.low_water {
                    self.top_up(&shutdown).await?;
                }
                Ok::<_, PregenError>(())
            }
            .await;
            match result {
                Ok(()) => first = false,
                Err(error) => events::failed(&error),
            }
        }
        if let Err(error) = self.writer.flush().await {
            events::failed(&error.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pregen_in(
        dir: &std::path::Path,
        target: u64,
        low: u64,
    ) -> (Pregen, pool::EmbeddedPool) {
        let pool = pool::EmbeddedPool::open(dir).await.unwrap();
        let mut settings = Settings::default();
        settings.pregen.target_depth = target;
        settings.pregen.low_water = low;
        settings.pregen.batch = 7;
        settings.server.public_url = Some("https://qr.example.com".into());
        (
            Pregen::new(PoolWriter::Embedded(pool.clone()), &settings),
            pool,
        )
    }

    #[tokio::test]
    async fn top_up_fills_exactly_to_the_target_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let (pregen, pool) = pregen_in(dir.path(), 30, 10).await;
        let never = CancellationToken::new();
        assert_eq!(pregen.top_up(&never).await.unwrap(), 30);
        assert_eq!(pregen.top_up(&never).await.unwrap(), 0);
        assert_eq!(PoolWriter::Embedded(pool).depth().await.unwrap(), 30);
    }

    #[tokio::test]
    async fn pooled_codes_encode_the_middle_page_url_of_their_own_id() {
        let dir = tempfile::tempdir().unwrap();
        let (pregen, pool) = pregen_in(dir.path(), 3, 0).await;
        pregen.fill(3, &CancellationToken::new()).await.unwrap();
        let reader = pool::PoolReader::Embedded(pool);
        while let Some(delivery) = reader.take(Duration::ZERO).await.unwrap() {
            let record = delivery.record;
            assert_eq!(
                record.content,
                format!("https://qr.example.com/m/{}", record.request_id)
            );
            assert_eq!(record.issuer, LOCAL_ISSUER);
            let image = record.image.unwrap();
            assert_eq!(image.media_type, "image/png");
            assert!(image.bytes.starts_with(b"\x89PNG"));
        }
    }

    #[tokio::test]
    async fn a_cancelled_fill_stops_between_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (pregen, _pool) = pregen_in(dir.path(), 100, 0).await;
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert_eq!(pregen.fill(100, &cancelled).await.unwrap(), 0);
    }
}
