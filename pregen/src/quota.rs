//! [`CallQuota`]: keeps the calls to one remote issuer within its quota, across every worker,
//! and uses as much of it as the quota allows.
//!
//! An issuer says "`calls` per `window_ms`" and does not say whether its windows are aligned
//! to the clock or slide. One schedule of evenly spaced slots ([`pacing`]) keeps both: every
//! call takes a slot, and slots are `(window + guard) / calls` apart, so **any** interval of one
//! window, aligned or sliding, holds at most `calls` of them. The guard (2 % of the window) is
//! room for a call's travel time to vary by up to that much between us and the issuer; it is
//! also what the schedule leaves unused, so a fill that always has a call waiting uses 98 % of
//! the quota.
//!
//! With Redis configured the schedule is one key in Redis that every pregen process draws
//! from, so several workers on several machines together keep the same bound and together
//! keep the issuer busy at the allowed rate. A worker reserves no further than two slots
//! ahead: one that dies strands at most that, and one that joins takes the next free slot at
//! once. Without Redis the process keeps the schedule in memory, which is only right when it
//! is the issuer's one worker; several workers need Redis. While a configured Redis is
//! unreachable no call is made (a worker alone cannot know what the others took); calls
//! resume by themselves when it answers again.
//!
//! `share` (below 1 outside off-peak windows) widens this worker's slots to `interval /
//! share`, so that a fill at peak takes at most that share of the quota.
//!
//! When the issuer still answers "over quota" (another client shares the app id),
//! [`CallQuota::exhausted`] holds every worker off for a whole window, which empties any
//! window of the issuer's of our calls.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use config::QuotaSettings;
use pacing::{LocalSchedule, Reservation};

use crate::events;
use crate::shared_redis::SharedRedis;

/// Share of the window kept free of slots, for the variation in a call's travel time.
const GUARD_SHARE: f64 = 0.02;
/// A worker reserves at most this many slots ahead.
const SLOTS_AHEAD: u32 = 2;
/// How long a worker waits before asking an unreachable Redis again.
const UNREACHABLE_PAUSE: Duration = Duration::from_secs(1);

pub struct CallQuota {
    issuer: String,
    settings: QuotaSettings,
    /// Between two slots at a share of 1.
    interval: Duration,
    schedule: Schedule,
    /// When this worker's calls of the last window were made, for the used-ratio gauge.
    made: Mutex<VecDeque<Instant>>,
}

impl std::fmt::Debug for CallQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallQuota")
            .field("issuer", &self.issuer)
            .field("settings", &self.settings)
            .field("interval", &self.interval)
            .field("shared", &matches!(self.schedule, Schedule::Shared { .. }))
            .finish_non_exhaustive()
    }
}

enum Schedule {
    Local(LocalSchedule),
    Shared { redis: SharedRedis, key: String },
}

impl CallQuota {
    /// `redis`: the shared schedule; `None` when this process is the issuer's one worker.
    pub fn new(issuer: &str, settings: QuotaSettings, redis: Option<SharedRedis>) -> Self {
        let window = Duration::from_millis(settings.window_ms.max(1));
        let interval = window.mul_f64(1.0 + GUARD_SHARE) / settings.calls.max(1);
        let schedule = match redis {
            Some(redis) => {
                let key = redis.key(&format!("quota:{issuer}:schedule"));
                Schedule::Shared { redis, key }
            }
            None => Schedule::Local(LocalSchedule::new()),
        };
        CallQuota {
            issuer: issuer.to_owned(),
            settings,
            interval,
            schedule,
            made: Mutex::new(VecDeque::new()),
        }
    }

    /// Waits for this worker's next slot, taking at most `share` of the quota, and returns
    /// `true` when the call may be made now; `false` when `shutdown` fires first.
    pub async fn acquire(&self, share: f64, shutdown: &CancellationToken) -> bool {
        if share <= 0.0 {
            // No share of the quota: nothing may be called until the caller gives up.
            shutdown.cancelled().await;
            return false;
        }
        let increment = self.interval.div_f64(share.min(1.0));
        let horizon = increment * SLOTS_AHEAD;
        loop {
            let wait = match self.reserve(increment, horizon).await {
                Ok(Reservation::Slot(wait)) => {
                    if !sleep_unless(shutdown, wait).await {
                        return false;
                    }
                    self.made_one();
                    return true;
                }
                Ok(Reservation::Full(retry)) => {
                    events::quota_wait(&self.issuer);
                    // Spread the callers that were told the same instant, so that they do not
                    // all ask at once; one of them still asks before the slot passes.
                    retry + horizon.mul_f64(rand::random_range(0.0..0.5))
                }
                Err(error) => {
                    events::quota_unreachable(&self.issuer, &error);
                    UNREACHABLE_PAUSE
                }
            };
            if !sleep_unless(shutdown, wait).await {
                return false;
            }
        }
    }

    /// The issuer answered "over quota": no worker calls again for a window.
    pub async fn exhausted(&self) {
        let pause = Duration::from_millis(self.settings.window_ms);
        match &self.schedule {
            Schedule::Local(schedule) => schedule.hold_off(pause),
            Schedule::Shared { redis, key } => {
                let held = match redis.connection().await {
                    Ok(mut connection) => pacing::shared::hold_off(&mut connection, key, pause)
                        .await
                        .map_err(|error| format!("Redis failed: {error}")),
                    Err(error) => Err(error),
                };
                if let Err(error) = held {
                    events::quota_unreachable(&self.issuer, &error);
                }
            }
        }
    }

    /// This worker's calls over the last window, as a share of the quota.
    pub fn used_ratio(&self) -> f64 {
        let mut made = self
            .made
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.forget_old(&mut made);
        made.len() as f64 / f64::from(self.settings.calls.max(1))
    }

    /// [`CallQuota::used_ratio`], also set on the gauge (which each call sets too; this is
    /// for when calls stop).
    pub fn report(&self) -> f64 {
        let ratio = self.used_ratio();
        events::quota_used(&self.issuer, ratio);
        ratio
    }

    async fn reserve(&self, increment: Duration, horizon: Duration) -> Result<Reservation, String> {
        match &self.schedule {
            Schedule::Local(schedule) => Ok(schedule.reserve(increment, horizon)),
            Schedule::Shared { redis, key } => {
                let mut connection = redis.connection().await?;
                let reserve = pacing::shared::reserve(&mut connection, key, increment, horizon);
                tokio::time::timeout(crate::shared_redis::COMMAND_LIMIT, reserve)
                    .await
                    .map_err(|_| "Redis timed out".to_owned())?
                    .map_err(|error| format!("Redis failed: {error}"))
            }
        }
    }

    fn made_one(&self) {
        self.made
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back(Instant::now());
        self.report();
    }

    fn forget_old(&self, made: &mut VecDeque<Instant>) {
        let window = Duration::from_millis(self.settings.window_ms);
        while made.front().is_some_and(|at| at.elapsed() >= window) {
            made.pop_front();
        }
    }
}

/// Sleeps `wait`; `false` when `shutdown` fired first.
async fn sleep_unless(shutdown: &CancellationToken, wait: Duration) -> bool {
    if wait.is_zero() {
        return !shutdown.is_cancelled();
    }
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_leave_the_guard_unused() {
        let quota = CallQuota::new(
            "wx",
            QuotaSettings {
                calls: 100,
                window_ms: 5_000,
            },
            None,
        );
        assert_eq!(quota.interval, Duration::from_millis(51));
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_widens_the_slots() {
        let quota = CallQuota::new(
            "wx",
            QuotaSettings {
                calls: 100,
                window_ms: 1_000,
            },
            None,
        );
        let never = CancellationToken::new();
        let started = tokio::time::Instant::now();
        for _ in 0..11 {
            assert!(quota.acquire(0.25, &never).await);
        }
        // Ten intervals of 10.2 ms / 0.25 (the clock is paused: exact).
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(408), "{took:?}");
        assert!(took < Duration::from_millis(409), "{took:?}");
    }
}
