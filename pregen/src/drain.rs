//! How fast the pool drains, and so how long it lasts: the low-water alarm's arithmetic.
//!
//! Pregen reads the depth of its lane at every check. What left the lane between two
//! checks is the depth before, plus what pregen added, minus the depth now; over the time
//! between them that is the binders' rate. It is smoothed (a moving average), so one quiet or
//! busy minute does not swing the estimate, and exported with the time left at that rate.

use std::time::{Duration, Instant};

/// Weight of the newest interval in the moving average.
const SMOOTHING: f64 = 0.3;

#[derive(Debug, Default)]
pub(crate) struct DrainRate {
    /// When the depth was last known, and what it was right after pregen's fill.
    last: Option<(Instant, u64)>,
    codes_per_sec: Option<f64>,
}

impl DrainRate {
    /// The depth read at `at`; returns the smoothed rate once two readings exist.
    pub(crate) fn observe(&mut self, at: Instant, depth: u64) -> Option<f64> {
        if let Some((then, depth_then)) = self.last {
            let elapsed = at.saturating_duration_since(then);
            if elapsed >= Duration::from_millis(100) {
                let taken = depth_then.saturating_sub(depth) as f64 / elapsed.as_secs_f64();
                self.codes_per_sec = Some(match self.codes_per_sec {
                    Some(rate) => rate + SMOOTHING * (taken - rate),
                    None => taken,
                });
                self.last = Some((at, depth));
            }
        } else {
            self.last = Some((at, depth));
        }
        self.codes_per_sec
    }

    /// Pregen added `codes` since the last reading.
    pub(crate) fn added(&mut self, codes: u64) {
        if let Some((_, depth)) = &mut self.last {
            *depth += codes;
        }
    }
}

/// Seconds the pool lasts at `rate`; infinite when nothing is taken.
pub(crate) fn seconds_left(depth: u64, rate: f64) -> f64 {
    if rate > 0.0 {
        depth as f64 / rate
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_counts_what_left_including_what_pregen_added_meanwhile() {
        let start = Instant::now();
        let mut drain = DrainRate::default();
        assert_eq!(drain.observe(start, 1_000), None, "one reading is no rate");
        drain.added(500);
        // 1,000 + 500 added − 1,300 left = 200 taken in 10 s.
        let rate = drain
            .observe(start + Duration::from_secs(10), 1_300)
            .unwrap();
        assert!((rate - 20.0).abs() < 1e-9, "{rate}");
        assert!((seconds_left(1_300, rate) - 65.0).abs() < 1e-9);
    }

    #[test]
    fn the_rate_is_smoothed_and_never_negative() {
        let start = Instant::now();
        let mut drain = DrainRate::default();
        drain.observe(start, 100);
        drain.observe(start + Duration::from_secs(1), 90); // 10/s
        // Depth grew without pregen adding (another worker filled): nothing taken, not < 0.
        let rate = drain.observe(start + Duration::from_secs(2), 500).unwrap();
        assert!((rate - 7.0).abs() < 1e-9, "10 + 0.3 × (0 − 10) = 7: {rate}");
        assert_eq!(seconds_left(500, 0.0), f64::INFINITY);
    }
}
