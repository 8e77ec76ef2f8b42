//! [`CallQuota`]: keeps the calls to one remote issuer within its quota, across every worker.
//!
//! Two layers, because they solve different problems:
//!
//! - **pacing** (`governor`, in process): calls are spread evenly over the window instead of
//!   bursting at its start, so a worker never outruns the quota and a clock a little off the
//!   issuer's does not land two windows' worth of calls in one of theirs;
//! - **budget** (per window, aligned to the wall clock like the issuer's own): the hard limit.
//!   With Redis configured the budget is one counter per window that every pregen process
//!   draws leases from, so several workers on several machines together never exceed it. On
//!   the embedded backend the one process owns the whole quota and counts in memory.
//!
//! No call starts in the last 2 % of a window, so that one sent late cannot reach the issuer in
//! the next window on top of that window's quota.
//!
//! When the issuer still answers "over quota" (another client shares the app id, or clocks
//! disagree), [`CallQuota::exhausted`] closes the current window for everyone.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota as PaceQuota, RateLimiter};
use tokio_util::sync::CancellationToken;

use config::QuotaSettings;

use crate::events;
use crate::shared_redis::SharedRedis;

/// Leases are at most this many calls, and at most 1 % of a window's quota, so that what a
/// worker holds unused when a window ends is a small share of the quota.
const MAX_LEASE: u32 = 50;

pub struct CallQuota {
    issuer: String,
    settings: QuotaSettings,
    pacing: DefaultDirectRateLimiter,
    budget: Budget,
}

impl std::fmt::Debug for CallQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallQuota")
            .field("issuer", &self.issuer)
            .field("settings", &self.settings)
            .field("shared", &matches!(self.budget, Budget::Shared { .. }))
            .finish_non_exhaustive()
    }
}

enum Budget {
    Local(Mutex<Lease>),
    Shared {
        redis: SharedRedis,
        lease: tokio::sync::Mutex<Lease>,
    },
}

/// Calls this worker may still make in `window`.
#[derive(Default)]
struct Lease {
    window: u64,
    /// Local budget: calls made. Shared budget: calls leased and not yet made.
    count: u32,
    /// The issuer said "over quota" in this window: no more calls until the next.
    closed: bool,
}

impl CallQuota {
    /// `redis`: the shared budget; `None` when this process owns the whole quota.
    pub fn new(issuer: &str, settings: QuotaSettings, redis: Option<SharedRedis>) -> Self {
        let calls = NonZeroU32::new(settings.calls).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_millis(settings.window_ms) / calls.get();
        // A burst of about a second's worth keeps pacing smooth without starving a worker
        // whose calls came back late.
        let per_second = u64::from(calls.get()) * 1_000 / settings.window_ms.max(1);
        let burst = NonZeroU32::new(
            u32::try_from(per_second)
                .unwrap_or(u32::MAX)
                .clamp(1, calls.get()),
        )
        .unwrap_or(NonZeroU32::MIN);
        let pace = PaceQuota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| PaceQuota::per_second(calls))
            .allow_burst(burst);
        let budget = match redis {
            Some(redis) => Budget::Shared {
                redis,
                lease: tokio::sync::Mutex::new(Lease::default()),
            },
            None => Budget::Local(Mutex::new(Lease::default())),
        };
        CallQuota {
            issuer: issuer.to_owned(),
            settings,
            pacing: RateLimiter::direct(pace),
            budget,
        }
    }

    /// Waits until one call may be made, using at most `share` of each window's quota.
    /// Returns `false` when `shutdown` fires first.
    pub async fn acquire(&self, share: f64, shutdown: &CancellationToken) -> bool {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return false,
                _ = self.pacing.until_ready() => {}
            }
            let window = self.window_now();
            if self.until_window(window + 1) < self.guard() {
                // Too close to the window's end: the call could reach the issuer in the next
                // window, on top of that window's full quota.
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(self.until_window(window + 1)) => {}
                }
                continue;
            }
            let limit = (f64::from(self.settings.calls) * share).floor() as u32;
            match self.take(window, limit).await {
                Ok(true) => return true,
                Ok(false) => events::quota_wait(&self.issuer),
                Err(error) => {
                    events::quota_unreachable(&self.issuer, &error);
                }
            }
            // Spent (or unreachable): wait for the next window.
            let wait = self.until_window(window + 1);
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The issuer answered "over quota": no worker calls again before the next window.
    pub async fn exhausted(&self) {
        let window = self.window_now();
        match &self.budget {
            Budget::Local(lease) => {
                if let Ok(mut lease) = lease.lock() {
                    *lease = Lease {
                        window,
                        count: u32::MAX,
                        closed: true,
                    };
                }
            }
            Budget::Shared { redis, lease } => {
                *lease.lock().await = Lease {
                    window,
                    count: 0,
                    closed: true,
                };
                let key = self.key(redis, window);
                let closed = redis::pipe()
                    .incr(&key, self.settings.calls)
                    .ignore()
                    .pexpire(&key, self.expiry_ms())
                    .ignore()
                    .clone();
                if let Err(error) = redis.query::<()>(&closed).await {
                    events::quota_unreachable(&self.issuer, &error);
                }
            }
        }
    }

    /// No call starts in the last 2 % of a window (at most two seconds): longer than a call
    /// takes to arrive, short enough that pacing's burst makes up for it.
    fn guard(&self) -> Duration {
        Duration::from_millis(self.settings.window_ms / 50).min(Duration::from_secs(2))
    }

    fn window_now(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(now.as_millis()).unwrap_or(u64::MAX) / self.settings.window_ms
    }

    fn until_window(&self, window: u64) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let start = Duration::from_millis(window.saturating_mul(self.settings.window_ms));
        start.saturating_sub(now)
    }

    fn key(&self, redis: &SharedRedis, window: u64) -> String {
        redis.key(&format!("quota:{}:{window}", self.issuer))
    }

    fn expiry_ms(&self) -> i64 {
        i64::try_from(self.settings.window_ms.saturating_mul(2)).unwrap_or(i64::MAX)
    }

    /// Takes one call from the budget of `window`; `Ok(false)` when it is spent.
    async fn take(&self, window: u64, limit: u32) -> Result<bool, String> {
        match &self.budget {
            Budget::Local(lease) => {
                let mut lease = lease.lock().map_err(|_| "quota lock poisoned".to_owned())?;
                if lease.window != window {
                    *lease = Lease {
                        window,
                        ..Lease::default()
                    };
                }
                if lease.closed || lease.count >= limit {
                    return Ok(false);
                }
                lease.count += 1;
                Ok(true)
            }
            Budget::Shared { redis, lease } => {
                let mut lease = lease.lock().await;
                if lease.window != window {
                    *lease = Lease {
                        window,
                        ..Lease::default()
                    };
                }
                if lease.closed {
                    return Ok(false);
                }
                if lease.count == 0 {
                    let chunk = (limit / 100).clamp(1, MAX_LEASE);
                    let key = self.key(redis, window);
                    let draw = redis::pipe()
                        .incr(&key, chunk)
                        .pexpire(&key, self.expiry_ms())
                        .ignore()
                        .clone();
                    let (total,): (u64,) = redis.query(&draw).await?;
                    let before = total.saturating_sub(u64::from(chunk));
                    let granted = u64::from(limit)
                        .saturating_sub(before)
                        .min(u64::from(chunk));
                    lease.count = u32::try_from(granted).unwrap_or(0);
                    if lease.count == 0 {
                        lease.closed = true;
                        return Ok(false);
                    }
                }
                lease.count -= 1;
                Ok(true)
            }
        }
    }
}
