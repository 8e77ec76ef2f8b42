//! A WeChat-style mini-program code issuer (`getwxacodeunlimit`).
//!
//! Every code opens the fixed middle page of the mini program with `scene = request_id`; the
//! page then asks `/v1/scene/{request_id}` what the code is bound to. What the API does, and
//! what this module does about it:
//!
//! | answer | meaning | here |
//! | --- | --- | --- |
//! | image bytes | the code | checked by content type *and* magic bytes, then pooled |
//! | `45009` | over the per-minute quota | the window is closed for every worker; wait for the next |
//! | `40001`, `42001` | token invalid or expired | one token refresh, then retry once |
//! | `-1` | busy | retry with jittered exponential backoff, up to `max_retries` |
//! | `41030`, `40129`, `40169` | page not published, bad scene | stop the issuer, loudly; no retries |
//! | anything else, timeouts | passing trouble | retry like busy, then give the code up (counted) |

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use secrecy::SecretString;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use config::{LineColor, WechatIssuerSettings};
use records::{CodeImage, PoolRecord, RequestId};

use super::IssueError;
use super::access_token::{AccessTokens, TokenError};
use crate::events;
use crate::quota::CallQuota;
use crate::shared_redis::SharedRedis;

const OVER_QUOTA: i64 = 45009;
const TOKEN_REJECTED: [i64; 2] = [40001, 42001];
const MISCONFIGURED: [i64; 3] = [41030, 40129, 40169];
/// First retry delay; doubled per attempt, with ±50 % jitter so retries do not align.
const BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct WechatIssuer {
    name: String,
    url: String,
    request: CodeRequest,
    concurrency: usize,
    max_retries: u32,
    http: reqwest::Client,
    tokens: AccessTokens,
    quota: CallQuota,
    stopped: AtomicBool,
}

/// The body of `getwxacodeunlimit`, minus the scene.
#[derive(Debug, Clone, serde::Serialize)]
struct CodeRequest {
    page: String,
    check_path: bool,
    env_version: String,
    width: u32,
    auto_color: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    line_color: Option<Rgb>,
    is_hyaline: bool,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Rgb {
    r: u8,
    g: u8,
    b: u8,
}

impl From<LineColor> for Rgb {
    fn from(colour: LineColor) -> Self {
        Rgb {
            r: colour.r,
            g: colour.g,
            b: colour.b,
        }
    }
}

#[derive(Deserialize)]
struct ErrorAnswer {
    errcode: i64,
    #[serde(default)]
    errmsg: String,
}

/// What one call came back with.
enum Answer {
    Image(CodeImage),
    Error { code: i64, message: String },
    Failed(String),
}

impl WechatIssuer {
    pub fn new(
        name: &str,
        settings: &WechatIssuerSettings,
        redis: Option<SharedRedis>,
    ) -> Result<Self, IssueError> {
        let secret: SecretString = settings.app_secret.clone().ok_or_else(|| {
            IssueError::Setup(format!("pregen.issuers.{name}.app_secret is not set"))
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .pool_max_idle_per_host(settings.concurrency)
            .build()
            .map_err(|error| IssueError::Setup(format!("HTTP client: {error}")))?;
        let endpoint = settings.endpoint.trim_end_matches('/');
        Ok(WechatIssuer {
            name: name.to_owned(),
            url: format!("{endpoint}/wxa/getwxacodeunlimit"),
            request: CodeRequest {
                page: settings.page.clone(),
                check_path: settings.check_path,
                env_version: settings.env_version.clone(),
                width: settings.width,
                auto_color: settings.auto_color,
                line_color: settings.line_color.map(Rgb::from),
                is_hyaline: settings.is_hyaline,
            },
            concurrency: settings.concurrency,
            max_retries: settings.max_retries,
            tokens: AccessTokens::new(
                name,
                http.clone(),
                endpoint,
                &settings.app_id,
                secret,
                redis.clone(),
            ),
            quota: CallQuota::new(name, settings.quota, redis),
            http,
            stopped: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn issue(
        &self,
        count: usize,
        share: f64,
        shutdown: &CancellationToken,
    ) -> Result<Vec<PoolRecord>, IssueError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(self.stopped_error("stopped earlier; fix the settings and restart"));
        }
        // A misconfiguration found by one call stops the others from starting.
        let stop = shutdown.child_token();
        let mut outcomes = futures::stream::iter(0..count)
            .map(|_| self.issue_one(share, &stop))
            .buffer_unordered(self.concurrency);
        let mut records = Vec::with_capacity(count);
        let mut misconfigured = None;
        while let Some(outcome) = outcomes.next().await {
            match outcome {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(error) => {
                    stop.cancel();
                    misconfigured.get_or_insert(error);
                }
            }
        }
        match misconfigured {
            // The codes already made are good; the caller pools them before it stops.
            Some(error) if records.is_empty() => Err(error),
            Some(error) => {
                events::issuer_stopped(&self.name, &error);
                Ok(records)
            }
            None => Ok(records),
        }
    }

    /// This process's calls over the last window as a share of the quota; sets the gauge too,
    /// which calls alone would leave at its last value once they stop.
    pub fn quota_used(&self) -> f64 {
        self.quota.report()
    }

    /// Whether a misconfiguration has stopped this issuer.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn stopped_error(&self, message: &str) -> IssueError {
        IssueError::Misconfigured {
            issuer: self.name.clone(),
            code: 0,
            message: message.to_owned(),
        }
    }

    /// One code: `Ok(None)` when it was given up (counted) or `stop` fired.
    async fn issue_one(
        &self,
        share: f64,
        stop: &CancellationToken,
    ) -> Result<Option<PoolRecord>, IssueError> {
        if stop.is_cancelled() || self.is_stopped() {
            return Ok(None);
        }
        let request_id = RequestId::generate();
        let scene = request_id.to_string();
        let mut token = match self.tokens.current().await {
            Ok(token) => token,
            Err(error) => return self.token_failed(error),
        };
        let mut refreshed = false;
        let mut failures = 0;
        loop {
            if stop.is_cancelled() || !self.quota.acquire(share, stop).await {
                return Ok(None);
            }
            match self.call(&token, &scene).await {
                Answer::Image(image) => {
                    events::issued(&self.name);
                    return Ok(Some(PoolRecord {
                        request_id,
                        issuer: self.name.clone(),
                        content: scene,
                        image: Some(image),
                        created_at: Utc::now(),
                    }));
                }
                Answer::Error {
                    code: OVER_QUOTA, ..
                } => {
                    events::over_quota(&self.name);
                    self.quota.exhausted().await;
                }
                Answer::Error { code, .. } if TOKEN_REJECTED.contains(&code) && !refreshed => {
                    refreshed = true;
                    token = match self.tokens.replace(&token).await {
                        Ok(token) => token,
                        Err(error) => return self.token_failed(error),
                    };
                }
                Answer::Error { code, message } if MISCONFIGURED.contains(&code) => {
                    self.stopped.store(true, Ordering::Release);
                    stop.cancel();
                    let error = IssueError::Misconfigured {
                        issuer: self.name.clone(),
                        code,
                        message,
                    };
                    events::issuer_stopped(&self.name, &error);
                    return Err(error);
                }
                other => {
                    let reason = match other {
                        Answer::Error { code, message } => format!("{code} {message}"),
                        Answer::Failed(reason) => reason,
                        Answer::Image(_) => String::new(),
                    };
                    failures += 1;
                    if failures > self.max_retries {
                        events::gave_up(&self.name, &reason);
                        return Ok(None);
                    }
                    events::retrying(&self.name, &reason);
                    let backoff = BACKOFF * 2_u32.pow((failures - 1).min(8));
                    let jittered = backoff.mul_f64(rand::random_range(0.5..1.5));
                    tokio::select! {
                        () = stop.cancelled() => return Ok(None),
                        () = tokio::time::sleep(jittered) => {}
                    }
                }
            }
        }
    }

    fn token_failed(&self, error: TokenError) -> Result<Option<PoolRecord>, IssueError> {
        match error {
            TokenError::Misconfigured { code, message } => {
                self.stopped.store(true, Ordering::Release);
                Err(IssueError::Misconfigured {
                    issuer: self.name.clone(),
                    code,
                    message,
                })
            }
            TokenError::Unavailable(reason) => {
                events::gave_up(&self.name, &reason);
                Ok(None)
            }
        }
    }

    async fn call(&self, token: &str, scene: &str) -> Answer {
        let mut body = serde_json::to_value(&self.request).unwrap_or_default();
        body["scene"] = serde_json::Value::from(scene);
        let response = match self
            .http
            .post(&self.url)
            .query(&[("access_token", token)])
            .json(&body)
            .send()
            .await
        {
            Ok(response) => response,
            // Without the URL: it carries the access token.
            Err(error) => return Answer::Failed(error.without_url().to_string()),
        };
        let status = response.status();
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| {
                value
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(error) => return Answer::Failed(error.without_url().to_string()),
        };
        let is_image =
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") || bytes.starts_with(&[0xFF, 0xD8, 0xFF]);
        if status.is_success() && media_type.starts_with("image/") && is_image {
            return Answer::Image(CodeImage {
                media_type,
                bytes: bytes.to_vec(),
            });
        }
        match serde_json::from_slice::<ErrorAnswer>(&bytes) {
            Ok(ErrorAnswer { errcode, errmsg }) if errcode != 0 => Answer::Error {
                code: errcode,
                message: errmsg,
            },
            _ => Answer::Failed(format!(
                "unexpected answer: HTTP {status}, {media_type:?}, {} bytes",
                bytes.len()
            )),
        }
    }
}
