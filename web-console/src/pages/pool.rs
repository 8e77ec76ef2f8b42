//! Pool and issuers, for operators: each lane's depth against its marks, how fast it drains
//! and how long it lasts at that rate, the off-peak schedule, and each issuer's quota and
//! whether it stopped.
//!
//! The drain rate is measured here, from the pool's depth sampled every
//! [`SAMPLE_EVERY`]: the pool is shared by every binder, so its depth is the one figure that
//! counts them all. A rise (a refill) between two samples hides the codes taken meanwhile,
//! so the rate is a floor while pregen is filling.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use futures::future::BoxFuture;

use records::Scope;

use crate::chart::grouped;
use crate::session::Visit;
use crate::{Console, ConsoleError, Frame, Section, render};

/// How often the depths are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How far back the drain rate looks.
const DRAIN_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Reads one lane's depth.
pub type DepthProbe = Arc<dyn Fn() -> BoxFuture<'static, Result<u64, String>> + Send + Sync>;
/// Says why an issuer stopped, or `None` while it works.
pub type StoppedProbe = Arc<dyn Fn() -> Option<String> + Send + Sync>;
/// This process's calls to an issuer over the last window, as a share of its quota.
pub type UsedProbe = Arc<dyn Fn() -> Option<f64> + Send + Sync>;

/// One lane of the pool.
#[derive(Clone)]
pub struct Lane {
    pub issuer: String,
    pub depth: DepthProbe,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for IssuerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerInfo")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

/// One issuer pregen calls.
#[derive(Clone)]
pub struct IssuerInfo {
    pub name: String,
    pub kind: &'static str,
    /// Calls per window, and the window.
    pub quota: Option<(u32, Duration)>,
    /// Only where pregen runs in this process.
    pub stopped: Option<StoppedProbe>,
    /// Only where pregen runs in this process, for a remote issuer.
    pub used: Option<UsedProbe>,
}

/// What the pool page shows; built by the process that serves the console.
#[derive(Clone)]
pub struct PoolView {
    lanes: Vec<Lane>,
    issuers: Vec<IssuerInfo>,
    target_depth: u64,
    low_water: u64,
    schedule: Vec<String>,
    time_zone: String,
    peak_quota_share: f64,
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl std::fmt::Debug for PoolView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolView")
            .field(
                "lanes",
                &self
                    .lanes
                    .iter()
                    .map(|lane| &lane.issuer)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads_in_the_unit_that_fits() {
        assert_eq!(lasts(700, Some(1_500.0)), "about 28 s");
        assert_eq!(lasts(9_000, Some(1_500.0)), "about 6 min");
        assert_eq!(lasts(500_000, Some(1_000.0)), "about 8 h");
        assert_eq!(lasts(10, Some(0.1)), "not draining");
        assert_eq!(lasts(10, None), "measuring…");
    }
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    /// Per lane, in `lanes` order; `None` when the read failed.
    depths: Vec<Option<u64>>,
}

impl PoolView {
    /// Starts sampling the lanes (a task that ends when the view is dropped).
    pub fn start(
        lanes: Vec<Lane>,
        issuers: Vec<IssuerInfo>,
        settings: &config::Settings,
    ) -> PoolView {
        let view = PoolView {
            lanes,
            issuers,
            target_depth: settings.pregen.target_depth,
            low_water: settings.pregen.low_water,
            schedule: settings
                .pregen
                .off_peak
                .iter()
                .map(|window| format!("{window:?}"))
                .collect(),
            time_zone: settings.pregen.time_zone.name().to_owned(),
            peak_quota_share: settings.pregen.peak_quota_share,
            samples: Arc::new(Mutex::new(VecDeque::new())),
        };
        let lanes = view.lanes.clone();
        let samples = Arc::downgrade(&view.samples);
        tokio::spawn(sample(lanes, samples));
        view
    }

    /// Codes taken per minute from each lane over the window, and the depth now.
    fn drain_per_minute(&self) -> Vec<Option<f64>> {
        let samples = self
            .samples
            .lock()
            .map(|samples| samples.clone())
            .unwrap_or_default();
        (0..self.lanes.len())
            .map(|lane| {
                let series: Vec<(Instant, u64)> = samples
                    .iter()
                    .filter_map(|sample| Some((sample.at, sample.depths.get(lane).copied()??)))
                    .collect();
                let (first, last) = (series.first()?, series.last()?);
                let elapsed = last.0.duration_since(first.0).as_secs_f64();
                if elapsed < SAMPLE_EVERY.as_secs_f64() {
                    return None;
                }
                let taken: u64 = series
                    .windows(2)
                    .map(|pair| pair[0].1.saturating_sub(pair[1].1))
                    .sum();
                Some(taken as f64 * 60.0 / elapsed)
            })
            .collect()
    }
}

async fn sample(lanes: Vec<Lane>, samples: Weak<Mutex<VecDeque<Sample>>>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let depths = futures::future::join_all(lanes.iter().map(|lane| (lane.depth)())).await;
        let Some(samples) = samples.upgrade() else {
            return;
        };
        let Ok(mut samples) = samples.lock() else {
            return;
        };
        let now = Instant::now();
        samples.push_back(Sample {
            at: now,
            depths: depths.into_iter().map(Result::ok).collect(),
        });
        while samples
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.at) > DRAIN_WINDOW)
        {
            samples.pop_front();
        }
    }
}

struct LaneRow {
    issuer: String,
    depth: String,
    /// Depth against the target, in percent (for the bar).
    fill: u32,
    state: &'static str,
    state_class: &'static str,
    drain: String,
    lasts: String,
}

struct IssuerRow {
    name: String,
    kind: &'static str,
    quota: String,
    /// Share of the quota this process used over the last window.
    used: String,
    state: String,
    state_class: &'static str,
}

#[derive(Template)]
#[template(path = "pool.html")]
struct PoolPage {
    frame: Frame,
    lanes: Vec<LaneRow>,
    issuers: Vec<IssuerRow>,
    target_depth: String,
    low_water: String,
    schedule: Vec<String>,
    time_zone: String,
    peak_share: String,
    here: bool,
}

fn lasts(depth: u64, per_minute: Option<f64>) -> String {
    match per_minute {
        None => "measuring…".to_owned(),
        Some(rate) if rate < 0.5 => "not draining".to_owned(),
        Some(rate) => {
            let seconds = depth as f64 / rate * 60.0;
            if seconds >= 2.0 * 3600.0 {
                format!("about {:.0} h", seconds / 3600.0)
            } else if seconds >= 120.0 {
                format!("about {:.0} min", seconds / 60.0)
            } else {
                format!("about {seconds:.0} s")
            }
        }
    }
}

pub async fn page(
    State(console): State<Arc<Console>>,
    visit: Visit,
) -> Result<Response, ConsoleError> {
    if !visit.can(Scope::Admin) {
        return Err(ConsoleError::Forbidden(
            "the pool page is for operators: it needs a key with the `admin` scope".into(),
        ));
    }
    let frame = Frame::new(&visit, Section::Pool, "Pool and issuers");
    let Some(view) = &console.pool else {
        return Ok(render(&PoolPage {
            frame,
            lanes: Vec::new(),
            issuers: Vec::new(),
            target_depth: String::new(),
            low_water: String::new(),
            schedule: Vec::new(),
            time_zone: String::new(),
            peak_share: String::new(),
            here: false,
        }));
    };
    let depths = futures::future::join_all(view.lanes.iter().map(|lane| (lane.depth)())).await;
    let drains = view.drain_per_minute();
    let lanes = view
        .lanes
        .iter()
        .zip(depths)
        .zip(drains)
        .map(|((lane, depth), drain)| match depth {
            Ok(depth) => {
                let (state, state_class) = if depth == 0 {
                    ("dry", "bad")
                } else if depth < view.low_water {
                    ("below low water", "warn")
                } else {
                    ("healthy", "good")
                };
                LaneRow {
                    issuer: lane.issuer.clone(),
                    depth: grouped(depth),
                    fill: u32::try_from(depth.saturating_mul(100) / view.target_depth.max(1))
                        .unwrap_or(100)
                        .min(100),
                    state,
                    state_class,
                    drain: drain
                        .map(|rate| format!("{rate:.0} codes/min"))
                        .unwrap_or_else(|| "measuring…".to_owned()),
                    lasts: lasts(depth, drain),
                }
            }
            Err(error) => LaneRow {
                issuer: lane.issuer.clone(),
                depth: "–".to_owned(),
                fill: 0,
                state: "not answering",
                state_class: "bad",
                drain: error,
                lasts: "–".to_owned(),
            },
        })
        .collect();
    let issuers = view
        .issuers
        .iter()
        .map(|issuer| {
            let (state, state_class) = match &issuer.stopped {
                None => ("runs in another process".to_owned(), "warn"),
                Some(probe) => match probe() {
                    None => ("working".to_owned(), "good"),
                    Some(reason) => (format!("stopped: {reason}"), "bad"),
                },
            };
            IssuerRow {
                name: issuer.name.clone(),
                kind: issuer.kind,
                quota: issuer
                    .quota
                    .map(|(calls, window)| {
                        format!(
                            "{} calls per {} s",
                            grouped(u64::from(calls)),
                            window.as_secs()
                        )
                    })
                    .unwrap_or_else(|| "none (drawn here)".to_owned()),
                used: match (issuer.used.as_ref().and_then(|probe| probe()), issuer.quota) {
                    (Some(ratio), Some((calls, _))) => format!(
                        "{:.1} % ({} calls)",
                        ratio * 100.0,
                        grouped((ratio * f64::from(calls)).round() as u64)
                    ),
                    (_, Some(_)) => "– (pregen runs elsewhere)".to_owned(),
                    (_, None) => "–".to_owned(),
                },
                state,
                state_class,
            }
        })
        .collect();
    Ok(render(&PoolPage {
        frame,
        lanes,
        issuers,
        target_depth: grouped(view.target_depth),
        low_water: grouped(view.low_water),
        schedule: view.schedule.clone(),
        time_zone: view.time_zone.clone(),
        peak_share: format!("{:.0} %", view.peak_quota_share * 100.0),
        here: true,
    }))
}
