//! Pregen: keeps the pool filled so that a bind never waits on an issuer.
//!
//! - [`Pregen::fill`] issues and enqueues a number of codes, a batch at a time (one batch in
//!   flight bounds the work); `qrpool pregen fill` drives it with a progress bar.
//! - [`Pregen::top_up`] is one scheduling decision: inside an off-peak window fill to the
//!   high-water mark (`pregen.target_depth`) with the whole quota; outside, only when the pool
//!   is below `pregen.low_water`, only up to it, and with no more than `peak_quota_share` of a
//!   remote issuer's quota, the rest being left for peak.
//! - [`Pregen::run`] is the long-running scheduler: one decision per `check_interval_ms`.
//!
//! Who makes the codes is an [`Issuer`]: the local renderer, or a remote API under a shared
//! [`quota`].

mod drain;
mod events;
pub mod issuer;
pub mod quota;
mod shared_redis;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use config::{PregenSettings, Settings};
use pool::{PoolError, PoolWriter};

pub use issuer::{IssueError, Issuer};
pub use shared_redis::SharedRedis;

/// The issuer name of locally rendered codes.
pub const LOCAL_ISSUER: &str = config::LOCAL_ISSUER;

#[derive(Debug, thiserror::Error)]
pub enum PregenError {
    #[error("enqueueing codes failed")]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Issue(#[from] IssueError),
}

/// Batches in a row that may come back empty before a fill gives up on its issuer.
const MAX_EMPTY_BATCHES: u32 = 3;

#[derive(Debug, Clone)]
pub struct Pregen {
    writer: PoolWriter,
    issuer: Arc<Issuer>,
    settings: PregenSettings,
    drain: Arc<std::sync::Mutex<drain::DrainRate>>,
    /// Whether the last decision found the pool below low water.
    was_below_low_water: Arc<AtomicBool>,
}

/// What one scheduling decision asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Codes to add.
    pub missing: u64,
    /// Share of a remote issuer's quota this fill may use.
    pub quota_share: f64,
    pub off_peak: bool,
}

impl Pregen {
    /// Pregen for `pregen.issuer`, sharing quota and tokens through Redis when `redis.url` is
    /// set.
    pub fn from_settings(writer: PoolWriter, settings: &Settings) -> Result<Self, PregenError> {
        Self::for_issuer(writer, settings, &settings.pregen.issuer)
    }

    /// Pregen for the issuer called `name`.
    pub fn for_issuer(
        writer: PoolWriter,
        settings: &Settings,
        name: &str,
    ) -> Result<Self, PregenError> {
        let redis = settings
            .redis
            .url
            .as_ref()
            .map(|url| SharedRedis::new(url, &settings.redis.key_prefix))
            .transpose()
            .map_err(|error| IssueError::Setup(format!("redis.url: {error}")))?;
        let issuer = Issuer::from_settings(name, settings, redis)?;
        Ok(Pregen {
            writer,
            issuer: Arc::new(issuer),
            settings: settings.pregen.clone(),
            drain: Arc::default(),
            was_below_low_water: Arc::default(),
        })
    }

    fn drain(&self) -> std::sync::MutexGuard<'_, drain::DrainRate> {
        self.drain
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// Issues and enqueues `count` codes with `quota_share` of a remote issuer's quota; stops
    /// early (the batch in flight still lands) when `shutdown` fires. Returns how many codes
    /// landed in the pool.
    pub async fn fill(
        &self,
        count: u64,
        quota_share: f64,
        shutdown: &CancellationToken,
    ) -> Result<u64, PregenError> {
        self.fill_reporting(count, quota_share, shutdown, |_| {})
            .await
    }

    /// [`Pregen::fill`], calling `landed` with the running total after each batch.
    pub async fn fill_reporting(
        &self,
        count: u64,
        quota_share: f64,
        shutdown: &CancellationToken,
        mut landed: impl FnMut(u64),
    ) -> Result<u64, PregenError> {
        // One batch is enqueued while the next is issued, so that a slow enqueue does not leave
        // quota unused; that is also the bound on work in flight: two batches.
        let mut total = 0_u64;
        let mut requested = 0_u64;
        let mut enqueueing: Option<tokio::task::JoinHandle<Result<usize, PoolError>>> = None;
        let mut issue_error = None;
        let mut empty_batches = 0;
        while requested < count && !shutdown.is_cancelled() {
            let batch = usize::try_from(count - requested)
                .unwrap_or(usize::MAX)
                .min(self.settings.batch);
            requested += batch as u64;
            let records = match self.issuer.issue(batch, quota_share, shutdown).await {
                Ok(records) => records,
                Err(error) => {
                    issue_error = Some(error);
                    break;
                }
            };
            if let Some(previous) = enqueueing.take() {
                total += self.enqueued(previous).await? as u64;
                landed(total);
            }
            // Codes given up were not made: ask for them again in a later batch, unless
            // nothing at all comes back batch after batch.
            requested -= (batch - records.len()) as u64;
            empty_batches = if records.is_empty() && !shutdown.is_cancelled() {
                empty_batches + 1
            } else {
                0
            };
            if empty_batches == MAX_EMPTY_BATCHES {
                issue_error = Some(IssueError::Failing {
                    issuer: self.issuer.name().to_owned(),
                    batches: MAX_EMPTY_BATCHES,
                });
                break;
            }
            if !records.is_empty() {
                let writer = self.writer.clone();
                let span = tracing::debug_span!("enqueue", codes = records.len());
                enqueueing = Some(tokio::spawn(
                    async move { writer.push(&records).await.map(|()| records.len()) }
                        .instrument(span),
                ));
            }
            if self.issuer.is_stopped() {
                break;
            }
        }
        if let Some(previous) = enqueueing.take() {
            total += self.enqueued(previous).await? as u64;
            landed(total);
        }
        self.writer.flush().await?;
        match issue_error {
            Some(error) if total == 0 => Err(error.into()),
            Some(error) => {
                tracing::error!(error = %error, landed = total, "issuing stopped");
                Err(error.into())
            }
            None => Ok(total),
        }
    }

    async fn enqueued(
        &self,
        push: tokio::task::JoinHandle<Result<usize, PoolError>>,
    ) -> Result<usize, PregenError> {
        let codes = push
            .await
            .map_err(|error| IssueError::Setup(format!("the enqueue task failed: {error}")))??;
        events::enqueued(self.issuer.name(), codes);
        Ok(codes)
    }

    /// What the schedule asks for at a pool depth of `depth`, now. Without windows there is
    /// no peak: fill to the target at start and whenever the pool falls below low water (the
    /// gap between the marks keeps fills few and large).
    pub fn plan(&self, depth: u64, starting: bool) -> Plan {
        let off_peak = self.settings.is_off_peak(Utc::now());
        let no_windows = self.settings.off_peak.is_empty();
        let (goal, quota_share) = if no_windows && !starting && depth >= self.settings.low_water {
            (depth, 0.0)
        } else if off_peak {
            (self.settings.target_depth, 1.0)
        } else if depth < self.settings.low_water {
            (self.settings.low_water, self.settings.peak_quota_share)
        } else {
            (depth, 0.0)
        };
        Plan {
            missing: goal.saturating_sub(depth),
            quota_share,
            off_peak,
        }
    }

    /// The first scheduling decision (at start every plan may fill to the target).
    pub async fn top_up(&self, shutdown: &CancellationToken) -> Result<u64, PregenError> {
        self.decide(shutdown, true).await
    }

    /// One scheduling decision, carried out. Returns how many codes were added.
    async fn decide(
        &self,
        shutdown: &CancellationToken,
        starting: bool,
    ) -> Result<u64, PregenError> {
        // Asking a broker that is gone waits out its timeouts (metadata, offsets, watermarks in
        // turn): shutdown does not wait for that answer. The query holds nothing to undo.
        let depth = tokio::select! {
            depth = self.writer.depth(self.issuer.name()) => depth?,
            () = shutdown.cancelled() => return Ok(0),
        };
        events::depth(depth);
        self.issuer.quota_used();
        let rate = self.drain().observe(std::time::Instant::now(), depth);
        if let Some(rate) = rate {
            events::draining(self.issuer.name(), rate, drain::seconds_left(depth, rate));
        }
        let plan = self.plan(depth, starting);
        events::low_water(
            self.issuer.name(),
            depth,
            self.settings.low_water,
            self.low_water_news(depth, starting, plan.off_peak),
        );
        if plan.missing == 0 {
            return Ok(0);
        }
        let added = self.fill(plan.missing, plan.quota_share, shutdown).await?;
        self.drain().added(added);
        events::topped_up(depth, added, &plan);
        Ok(added)
    }

    /// Notes a depth read at a check; whether it is news for an operator that the pool is
    /// below low water ([`low_water_alarm`]; never at start, when every pool is new).
    fn low_water_news(&self, depth: u64, starting: bool, off_peak: bool) -> bool {
        let below = depth < self.settings.low_water;
        let was_below = self.was_below_low_water.swap(below, Ordering::Relaxed);
        !starting && low_water_alarm(below, was_below, off_peak)
    }

    /// Keeps the pool filled by the schedule until `shutdown` fires. A failing pool or
    /// issuer is retried on the next tick, never fatal: pregen is off the bind path. A
    /// misconfigured issuer is not retried: it stays stopped, and says so on every tick.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.settings.check_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut starting = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.issuer.is_stopped() {
                events::issuer_still_stopped(self.issuer.name());
                continue;
            }
            match self.decide(&shutdown, starting).await {
                Ok(_) => starting = false,
                Err(error) => events::failed(&error),
            }
        }
        if let Err(error) = self.writer.flush().await {
            events::failed(&error.into());
        }
    }
}

/// Whether a pool below low water is news for an operator. Inside an off-peak window (every
/// hour, without windows) low water is where refills start, and a busy lane reaches it on
/// every cycle: news only when the refill since the last check has not brought the pool
/// back. Outside the windows the pool was meant to last until the next one, and falling
/// below low water at all is.
fn low_water_alarm(below: bool, was_below: bool, off_peak: bool) -> bool {
    below && (was_below || !off_peak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_water_warns_when_a_refill_did_not_bring_the_pool_back_or_outside_the_windows() {
        // Off peak: the first crossing is the refill's cue; still below at the next check is not.
        assert!(!low_water_alarm(true, false, true));
        assert!(low_water_alarm(true, true, true));
        // At peak, the pool was meant to last.
        assert!(low_water_alarm(true, false, false));
        assert!(low_water_alarm(true, true, false));
        // Above low water, nothing to say.
        assert!(!low_water_alarm(false, true, true));
        assert!(!low_water_alarm(false, true, false));
    }

    #[tokio::test]
    async fn checks_in_a_row_warn_of_low_water_once_a_refill_has_not_brought_the_pool_back() {
        let dir = tempfile::tempdir().unwrap();
        let (pregen, _pool) = pregen_in(dir.path(), 100, 40).await;
        // Depths read at consecutive checks: (depth, starting, off peak, news?, why).
        let checks = [
            (5, true, true, false, "at start every pool is new"),
            (5, false, true, true, "still below after the start's fill"),
            (60, false, true, false, "above the mark"),
            (30, false, true, false, "a first crossing is a refill's cue"),
            (35, false, true, true, "the refill did not bring it back"),
            (40, false, true, false, "at the mark is not below it"),
            (39, false, false, true, "at peak the pool was meant to last"),
        ];
        for (depth, starting, off_peak, news, why) in checks {
            assert_eq!(
                pregen.low_water_news(depth, starting, off_peak),
                news,
                "{why}"
            );
        }
    }

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
            Pregen::from_settings(PoolWriter::Embedded(pool.clone()), &settings).unwrap(),
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
        assert_eq!(
            PoolWriter::Embedded(pool)
                .depth(LOCAL_ISSUER)
                .await
                .unwrap(),
            30
        );
    }

    #[tokio::test]
    async fn pooled_codes_encode_the_middle_page_url_of_their_own_id() {
        let dir = tempfile::tempdir().unwrap();
        let (pregen, pool) = pregen_in(dir.path(), 3, 0).await;
        pregen
            .fill(3, 1.0, &CancellationToken::new())
            .await
            .unwrap();
        let reader = pool::PoolReader::Embedded(pool.lane(LOCAL_ISSUER));
        while let Some(delivery) = reader.take(Duration::ZERO).await.unwrap() {
            let record = delivery.record;
            assert_eq!(
                record.content,
                format!("https://qr.example.com/m/{}?qr=1", record.request_id)
            );
            assert_eq!(record.issuer, LOCAL_ISSUER);
            let image = record.image.unwrap();
            assert_eq!(image.media_type, "image/png");
            assert!(image.bytes.starts_with(b"\x89PNG"));
        }
    }

    #[tokio::test]
    async fn outside_the_windows_only_an_emergency_refill_to_low_water() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pregen, _pool) = pregen_in(dir.path(), 100, 40).await;
        assert_eq!(
            pregen.plan(10, false),
            Plan {
                missing: 90,
                quota_share: 1.0,
                off_peak: true
            }
        );
        assert_eq!(
            pregen.plan(50, false).missing,
            0,
            "no windows: refill only below low water"
        );
        assert_eq!(pregen.plan(50, true).missing, 50, "or at start");
        // A window that is never now: 00:00-00:01 on a day that is not today.
        let today =
            chrono::Datelike::weekday(&Utc::now().with_timezone(&pregen.settings.time_zone));
        let other_day = today.succ().succ();
        pregen.settings.off_peak = vec![format!("{other_day} 00:00-00:01").parse().unwrap()];
        pregen.settings.peak_quota_share = 0.25;
        assert_eq!(
            pregen.plan(10, false),
            Plan {
                missing: 30,
                quota_share: 0.25,
                off_peak: false
            }
        );
        assert_eq!(
            pregen.plan(40, true).missing,
            0,
            "at low water: nothing to do at peak"
        );
        assert_eq!(pregen.plan(70, false).missing, 0);
    }

    #[tokio::test]
    async fn a_cancelled_fill_stops_between_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (pregen, _pool) = pregen_in(dir.path(), 100, 0).await;
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert_eq!(pregen.fill(100, 1.0, &cancelled).await.unwrap(), 0);
    }
}
