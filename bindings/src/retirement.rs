//! When PostgreSQL connections are replaced: one at a time, never the whole pool at once.
//!
//! Connections are replaced after a lifetime so that the server can free what a session
//! accumulates (plan and catalog caches). sqlx's own `max_lifetime` closes every connection
//! past it, at release and in a sweep every few minutes; but a pool opens its connections
//! together in the first seconds of load, so they all pass their lifetime together and the
//! whole pool reconnects at once (in the 30-minute soak every backend was new in minute 30 and
//! qrpool's descriptors fell from 200 to 105; the slow binds of that minute were mostly the
//! soak harness's own queue, see docs/performance.md). Here a connection past its lifetime is
//! closed at release only when no other was closed for a `spacing`: the pool rolls over a few
//! minutes, and the connections that replace it are born spread out, so the next generation
//! retires spread too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The shortest spacing between two retirements of one pool.
const MIN_SPACING: Duration = Duration::from_secs(1);

/// Decides, at each release, whether the connection is retired.
#[derive(Debug)]
pub(crate) struct Retirements {
    lifetime: Duration,
    spacing: Duration,
    origin: Instant,
    /// Milliseconds after `origin` before which no connection is retired.
    next_allowed_ms: AtomicU64,
}

impl Retirements {
    /// A pool of `max_connections`, each replaced after `lifetime`: one retirement every
    /// quarter lifetime divided by the pool size (at least [`MIN_SPACING`]), so that a pool
    /// that reached its lifetime together is replaced within a quarter of it.
    pub(crate) fn new(lifetime: Duration, max_connections: u32) -> Self {
        let spacing = (lifetime / 4 / max_connections.max(1)).max(MIN_SPACING);
        Retirements {
            lifetime,
            spacing,
            origin: Instant::now(),
            next_allowed_ms: AtomicU64::new(0),
        }
    }

    /// Whether a connection of `age`, released at `now`, is closed instead of kept.
    pub(crate) fn retire(&self, age: Duration, now: Instant) -> bool {
        if age < self.lifetime {
            return false;
        }
        let now_ms = millis(now.saturating_duration_since(self.origin));
        let allowed = self.next_allowed_ms.load(Ordering::Relaxed);
        if now_ms < allowed {
            return false;
        }
        // Of the releases that find the slot open at once, one takes it.
        self.next_allowed_ms
            .compare_exchange(
                allowed,
                now_ms + millis(self.spacing),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn spacing_is_a_quarter_lifetime_over_the_pool_and_at_least_a_second() {
        assert_eq!(
            Retirements::new(30 * MINUTE, 16).spacing,
            Duration::from_millis(28_125)
        );
        assert_eq!(Retirements::new(MINUTE, 100).spacing, MIN_SPACING);
        assert_eq!(Retirements::new(MINUTE, 0).spacing, Duration::from_secs(15));
    }

    #[test]
    fn young_connections_are_kept() {
        let retirements = Retirements::new(30 * MINUTE, 16);
        let now = retirements.origin + 40 * MINUTE;
        assert!(!retirements.retire(29 * MINUTE, now));
        assert!(retirements.retire(30 * MINUTE, now));
    }

    #[test]
    fn a_pool_past_its_lifetime_is_retired_one_connection_per_spacing() {
        let retirements = Retirements::new(30 * MINUTE, 16);
        let spacing = retirements.spacing;
        let expired = 31 * MINUTE;
        let first = retirements.origin + expired;
        // All sixteen released in the same millisecond: one goes.
        let retired = (0..16)
            .filter(|_| retirements.retire(expired, first))
            .count();
        assert_eq!(retired, 1);
        // Until the spacing has passed, none.
        let almost = first + spacing - Duration::from_millis(1);
        assert!(!retirements.retire(expired, almost));
        // Then the next, and so on: sixteen retirements take fifteen spacings.
        let mut retired = 1;
        for step in 1..16 {
            let now = first + spacing * step;
            retired += (0..16).filter(|_| retirements.retire(expired, now)).count();
        }
        assert_eq!(retired, 16);
    }
}
