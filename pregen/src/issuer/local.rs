//! The local issuer: every code is the fixed middle-page URL with its request id, drawn by
//! our own renderer. No quota: the limit is the CPU.
//!
//! Two callers, two priorities. Pregen's refills are work ahead of demand: their batches
//! render on threads nicer than the ones answering requests ([`REFILLS`]), so that at a busy
//! peak a refill takes what scans and binds leave rather than slow them down (the pool is
//! the head start; a bind that finds it dry draws its own code). A bind on a dry lane has a
//! person waiting: [`LocalIssuer::draw_now`] renders its one code on the calling blocking
//! thread at the process's priority, without a hop to another pool.

use chrono::Utc;

use config::Settings;
use records::{CodeImage, PoolRecord, RequestId};
use render::Style;

use super::IssueError;
use crate::events;

/// The threads pregen's batches render on: nice 10 above the process (see the module doc).
static REFILLS: background::Lowered = background::Lowered::nicer("pregen-render");

#[derive(Debug, Clone)]
pub struct LocalIssuer {
    style: Style,
    public_base: String,
}

impl LocalIssuer {
    pub fn new(settings: &Settings) -> Self {
        LocalIssuer {
            style: settings.render.into(),
            public_base: settings.server.public_base(),
        }
    }

    /// Draws `count` new codes for the pool on the refill threads; the async worker only
    /// waits.
    pub async fn issue(&self, count: usize) -> Result<Vec<PoolRecord>, IssueError> {
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
            let pngs = REFILLS.install(|| render::png_batch(&urls, &style));
            (urls, pngs)
        })
        .await?;
        events::rendered(count, started.elapsed());
        let created_at = Utc::now();
        ids.into_iter()
            .zip(urls)
            .zip(pngs)
            .map(|((request_id, content), png)| Ok(record(request_id, content, png?, created_at)))
            .collect()
    }

    /// Draws one new code for a bind that waits on it, on a blocking thread at the process's
    /// priority. Not counted in pregen's render metrics, which describe the refills' batches:
    /// the binder counts these (`binder_on_demand_codes_total`), and its bind time holds the
    /// drawing.
    pub async fn draw_now(&self) -> Result<PoolRecord, IssueError> {
        let request_id = RequestId::generate();
        let content = records::middle_page_url(&self.public_base, request_id);
        let style = self.style;
        let (content, png) = tokio::task::spawn_blocking(move || {
            let png = render::png(&content, &style);
            (content, png)
        })
        .await?;
        Ok(record(request_id, content, png?, Utc::now()))
    }
}

fn record(
    request_id: RequestId,
    content: String,
    png: Vec<u8>,
    created_at: chrono::DateTime<Utc>,
) -> PoolRecord {
    PoolRecord {
        request_id,
        issuer: config::LOCAL_ISSUER.to_owned(),
        content,
        image: Some(CodeImage {
            media_type: "image/png".to_owned(),
            bytes: png,
        }),
        created_at,
    }
}
