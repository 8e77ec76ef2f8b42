//! A stand-in for the WeChat mini-program code API, the one service the tests cannot reach.
//!
//! It behaves as the real one does for what pregen relies on, and counts every call:
//!
//! - `POST /cgi-bin/stable_token`: checks app id and secret (`40125` otherwise); hands every
//!   caller the same token while it is valid, a new one when it has expired or on
//!   `force_refresh`.
//! - `POST /wxa/getwxacodeunlimit?access_token=…`: `40001` for a token that is not the current
//!   one, `45009` past `quota` calls in a window (every call counts, as on the real API), `-1`
//!   on every `busy_every`-th call, `41030` for a page that is not published, `40129` for a bad
//!   scene; otherwise a PNG of the scene, `image/png`. The window is either aligned to the
//!   wall clock or sliding (the last `window_ms` before each call): the real API says "per
//!   minute" and does not say which, so pregen must keep to both.
//! - `GET /stand-in/calls`: what it saw, for benchmarks that run it as its own process
//!   (`wechat-stand-in`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub const APP_ID: &str = "wx-test-app";
pub const APP_SECRET: &str = "test-secret";
pub const PAGE: &str = "pages/middle/index";

/// How the quota's window is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WindowKind {
    /// Windows start at multiples of `window_ms` since the epoch.
    #[default]
    Aligned,
    /// Each call counts the calls of the `window_ms` before it.
    Sliding,
}

impl std::str::FromStr for WindowKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "aligned" => Ok(WindowKind::Aligned),
            "sliding" => Ok(WindowKind::Sliding),
            other => Err(format!("window kind `{other}`: aligned or sliding")),
        }
    }
}

/// How the stand-in behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub quota: u32,
    pub window_ms: u64,
    pub window: WindowKind,
    /// Every n-th code call answers `-1` (0: never).
    pub busy_every: u64,
    /// The first token expires after this many successful code calls (0: never); later
    /// tokens live for the rest of the test.
    pub token_expires_after: u64,
    pub published_page: String,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            quota: 5_000,
            window_ms: 60_000,
            window: WindowKind::Aligned,
            busy_every: 0,
            token_expires_after: 0,
            published_page: PAGE.to_owned(),
        }
    }
}

/// What the stand-in saw.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub token_fetches: u64,
    pub forced_token_fetches: u64,
    pub code_calls: u64,
    pub images: u64,
    pub over_quota: u64,
    pub token_rejected: u64,
    pub busy: u64,
    pub misconfigured: u64,
    /// Calls per aligned window (window index → calls), whatever the window kind.
    pub calls_per_window: BTreeMap<u64, u64>,
    /// When each code call arrived (ms since the epoch), in order.
    pub call_times_ms: Vec<u64>,
    /// When each call that was not refused for quota arrived.
    pub accepted_times_ms: Vec<u64>,
}

impl Counts {
    /// The most calls that arrived within any `window_ms` (sliding).
    pub fn most_in_any_window(&self, window_ms: u64) -> usize {
        most_within(&self.call_times_ms, window_ms)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "token_fetches": self.token_fetches,
            "code_calls": self.code_calls,
            "images": self.images,
            "over_quota": self.over_quota,
            "busy": self.busy,
            "call_times_ms": self.call_times_ms,
            "accepted_times_ms": self.accepted_times_ms,
        })
    }
}

/// The most of `times` (sorted) within any half-open interval of `window_ms`.
fn most_within(times: &[u64], window_ms: u64) -> usize {
    let mut first = 0;
    let mut most = 0;
    for (last, at) in times.iter().enumerate() {
        while times[first] + window_ms <= *at {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

#[derive(Debug, Default)]
struct Inner {
    behaviour: Behaviour,
    counts: Counts,
    /// Calls of the last window, for the sliding kind.
    recent: std::collections::VecDeque<u64>,
    token: Option<String>,
    tokens_minted: u64,
    images_on_token: u64,
}

#[derive(Debug)]
pub struct WechatApi {
    pub address: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: JoinHandle<()>,
}

impl WechatApi {
    pub async fn start(behaviour: Behaviour) -> WechatApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in on loopback");
        Self::start_on(listener, behaviour)
    }

    /// The stand-in on a listener of the caller's.
    pub fn start_on(listener: tokio::net::TcpListener, behaviour: Behaviour) -> WechatApi {
        let inner = Arc::new(Mutex::new(Inner {
            behaviour,
            ..Inner::default()
        }));
        let router = Router::new()
            .route("/cgi-bin/stable_token", post(stable_token))
            .route("/wxa/getwxacodeunlimit", post(code))
            .route("/stand-in/calls", get(calls))
            .with_state(Arc::clone(&inner));
        let address = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        WechatApi {
            address,
            inner,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn counts(&self) -> Counts {
        self.inner.lock().expect("stand-in state").counts.clone()
    }

    /// The window index of `window_ms` windows that the stand-in is in now.
    pub fn window_now(&self) -> u64 {
        let window_ms = self
            .inner
            .lock()
            .expect("stand-in state")
            .behaviour
            .window_ms;
        now_ms() / window_ms
    }
}

impl Drop for WechatApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

async fn calls(State(inner): State<Arc<Mutex<Inner>>>) -> Response {
    let counts = inner.lock().expect("stand-in state").counts.to_json();
    Json(counts).into_response()
}

fn error(code: i64, message: &str) -> Response {
    // The real API answers errors with HTTP 200 and a JSON body.
    Json(json!({ "errcode": code, "errmsg": message })).into_response()
}

async fn stable_token(State(inner): State<Arc<Mutex<Inner>>>, Json(body): Json<Value>) -> Response {
    let mut inner = inner.lock().expect("stand-in state");
    inner.counts.token_fetches += 1;
    if body["appid"] != APP_ID || body["secret"] != APP_SECRET {
        return error(40125, "invalid appsecret");
    }
    let force = body["force_refresh"] == true;
    if force {
        inner.counts.forced_token_fetches += 1;
    }
    if force || inner.token.is_none() {
        inner.tokens_minted += 1;
        inner.token = Some(format!("token-{}", inner.tokens_minted));
        inner.images_on_token = 0;
    }
    let token = inner.token.clone().unwrap_or_default();
    Json(json!({ "access_token": token, "expires_in": 7200 })).into_response()
}

async fn code(
    State(inner): State<Arc<Mutex<Inner>>>,
    Query(query): Query<BTreeMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    let scene = {
        let mut inner = inner.lock().expect("stand-in state");
        let behaviour = inner.behaviour.clone();
        inner.counts.code_calls += 1;
        let now = now_ms();
        inner.counts.call_times_ms.push(now);
        let window = now / behaviour.window_ms;
        let in_aligned = {
            let calls = inner.counts.calls_per_window.entry(window).or_insert(0);
            *calls += 1;
            *calls
        };
        inner.recent.push_back(now);
        while inner
            .recent
            .front()
            .is_some_and(|at| at + behaviour.window_ms <= now)
        {
            inner.recent.pop_front();
        }
        let in_window = match behaviour.window {
            WindowKind::Aligned => in_aligned,
            WindowKind::Sliding => inner.recent.len() as u64,
        };
        let presented = query.get("access_token");
        if presented.is_none() || presented != inner.token.as_ref() {
            inner.counts.token_rejected += 1;
            return error(
                40001,
                "invalid credential, access_token is invalid or not latest",
            );
        }
        if in_window > u64::from(behaviour.quota) {
            inner.counts.over_quota += 1;
            return error(45009, "reach max api minute quota limit");
        }
        inner.counts.accepted_times_ms.push(now);
        if behaviour.busy_every > 0 && inner.counts.code_calls % behaviour.busy_every == 0 {
            inner.counts.busy += 1;
            return error(-1, "system error");
        }
        if body["page"] != behaviour.published_page.as_str() {
            inner.counts.misconfigured += 1;
            return error(41030, "invalid page rid");
        }
        let scene = body["scene"].as_str().unwrap_or_default().to_owned();
        let allowed = |c: char| c.is_ascii_alphanumeric() || "!#$&'()*+,/:;=?@-._~".contains(c);
        if scene.is_empty() || scene.len() > 32 || !scene.chars().all(allowed) {
            inner.counts.misconfigured += 1;
            return error(40129, "invalid scene");
        }
        inner.counts.images += 1;
        inner.images_on_token += 1;
        if behaviour.token_expires_after > 0
            && inner.tokens_minted == 1
            && inner.images_on_token >= behaviour.token_expires_after
        {
            // Expired: the next stable_token call (normal mode) mints a new one.
            inner.token = None;
        }
        scene
    };
    // Drawn off the async threads: they also run the workers under test, and a PNG drawn on
    // one (milliseconds in a debug build) would delay their calls and skew the arrival times
    // the quota tests read.
    let drawn =
        tokio::task::spawn_blocking(move || render::png(&scene, &render::Style::default())).await;
    match drawn {
        Ok(Ok(png)) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        _ => error(-1, "system error"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_busiest_window_is_counted_sliding() {
        assert_eq!(super::most_within(&[], 10), 0);
        assert_eq!(super::most_within(&[0, 5, 9, 10, 19, 20], 10), 3);
        assert_eq!(super::most_within(&[0, 10, 20], 10), 1);
    }
}
