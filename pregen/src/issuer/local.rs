//! The local issuer: every code is the fixed middle-page URL with its request id, drawn by
//! our own renderer on the rayon pool. No quota: the limit is the CPU.

use chrono::Utc;

use config::Settings;
use records::{CodeImage, PoolRecord, RequestId};
use render::Style;

use super::IssueError;
use crate::events;

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

    /// Draws `count` new codes on the rayon pool; the async worker only waits.
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
                    issuer: config::LOCAL_ISSUER.to_owned(),
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
}
