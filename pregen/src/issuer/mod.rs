//! Issuers: who makes the codes that go into the pool.
//!
//! [`Issuer`] is the one interface the scheduler knows: "issue up to `count` codes, using at
//! most `share` of your quota, stop early when told". Each platform is a variant with its own
//! module: [`local`] renders the middle-page URL itself; [`wechat`] calls a WeChat-style
//! mini-program code API under a shared quota. Another platform (an Alipay-style API that
//! answers with an image URL, say) is another variant and module; the scheduler, the fill
//! command and the pool stay as they are.

pub mod access_token;
pub mod local;
pub mod wechat;

use tokio_util::sync::CancellationToken;

use config::{IssuerSettings, Settings};
use records::PoolRecord;

pub use local::LocalIssuer;
pub use wechat::WechatIssuer;

use crate::shared_redis::SharedRedis;

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The issuer refuses our configuration (unpublished page, bad app id or secret): calling
    /// again cannot help, so the issuer stops until an operator fixes the settings.
    #[error("issuer `{issuer}` is misconfigured: {code} {message}")]
    Misconfigured {
        issuer: String,
        code: i64,
        message: String,
    },
    /// Every code of several batches in a row was given up (the API unreachable or failing
    /// on every retry): a fill ends here rather than spin; the scheduler tries again later.
    #[error(
        "issuer `{issuer}` made no code in {batches} batches in a row; see the warnings for why"
    )]
    Failing { issuer: String, batches: u32 },
    #[error("rendering a code failed")]
    Render(#[from] render::RenderError),
    #[error("the render task stopped unexpectedly")]
    RenderTask(#[from] tokio::task::JoinError),
    #[error("issuer settings are unusable: {0}")]
    Setup(String),
}

#[derive(Debug)]
pub enum Issuer {
    Local(LocalIssuer),
    Wechat(Box<WechatIssuer>),
}

impl Issuer {
    /// The issuer called `name` in `settings` (`local`, or a name under `pregen.issuers`).
    /// `redis`: where several workers share quota and tokens; `None` on the embedded backend.
    pub fn from_settings(
        name: &str,
        settings: &Settings,
        redis: Option<SharedRedis>,
    ) -> Result<Self, IssueError> {
        if name == config::LOCAL_ISSUER {
            return Ok(Issuer::Local(LocalIssuer::new(settings)));
        }
        match settings.pregen.issuers.get(name) {
            Some(IssuerSettings::Wechat(wechat)) => Ok(Issuer::Wechat(Box::new(
                WechatIssuer::new(name, wechat, redis)?,
            ))),
            None => Err(IssueError::Setup(format!(
                "no issuer `{name}`: use `{}` or a name under pregen.issuers",
                config::LOCAL_ISSUER
            ))),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Issuer::Local(_) => config::LOCAL_ISSUER,
            Issuer::Wechat(wechat) => wechat.name(),
        }
    }

    /// Whether a configuration error has stopped this issuer (it makes no more calls).
    pub fn is_stopped(&self) -> bool {
        match self {
            Issuer::Local(_) => false,
            Issuer::Wechat(wechat) => wechat.is_stopped(),
        }
    }

    /// A remote issuer's calls from this process over the last window, as a share of its
    /// quota (and the gauge set to it); `None` for the local issuer, which has no quota.
    pub fn quota_used(&self) -> Option<f64> {
        match self {
            Issuer::Local(_) => None,
            Issuer::Wechat(wechat) => Some(wechat.quota_used()),
        }
    }

    /// Issues up to `count` codes. Stops starting new ones when `shutdown` fires, and returns
    /// the codes already made (finishing the calls in flight). Codes that failed for a
    /// passing reason are left out and counted; only a misconfiguration is an error.
    pub async fn issue(
        &self,
        count: usize,
        share: f64,
        shutdown: &CancellationToken,
    ) -> Result<Vec<PoolRecord>, IssueError> {
        match self {
            Issuer::Local(local) => local.issue(count).await,
            Issuer::Wechat(wechat) => wechat.issue(count, share, shutdown).await,
        }
    }
}
