//! One rate shared by many callers: every call takes a *slot*, and slots are at least one
//! `increment` apart, whoever takes them.
//!
//! This is GCRA (the generic cell rate algorithm) in its scheduling form. The whole state is
//! one instant, the next free slot. A caller asks for a slot no further than `horizon` ahead:
//!
//! - when the next free slot is within the horizon, the caller gets it
//!   ([`Reservation::Slot`], with how long until it starts) and the next free slot moves one
//!   increment on;
//! - otherwise nothing changes and the caller is told when to ask again
//!   ([`Reservation::Full`]).
//!
//! **The bound.** Slots are at least `increment` apart, so any interval of length `W`, aligned
//! to anything or sliding, holds at most `ceil(W / increment)` of them.
//!
//! **Why slots, and not "check, and retry when refused"** (what `governor` does, and what the
//! API's per-process fallback still uses): a refused caller wakes up a little late each time,
//! and without a burst allowance that lateness is lost from every interval, so a quota paced
//! that way is partly unused; with a burst allowance the bound loosens by the burst. A slot
//! taken ahead keeps its place: a schedule that always has a caller waiting runs exactly at
//! its rate. The horizon bounds what a caller that dies holding slots can waste.
//!
//! **As a rate limit with a burst**: with `horizon` set to the burst (`(burst - 1) ×
//! increment`), a request that gets a slot may go at once; one that does not is refused with
//! the time to retry. That is the classic GCRA limit.
//!
//! Two homes for the state:
//! - [`LocalSchedule`]: this process's memory, for a caller that owns the whole rate;
//! - [`shared`]: a key in Redis, changed by one Lua script against Redis's own clock, so that
//!   any number of processes on any number of machines share one schedule and no machine's
//!   clock matters.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub mod shared;

/// The answer to a request for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A slot is yours; it starts after this long (zero: now).
    Slot(Duration),
    /// No free slot within the horizon: ask again after this long.
    Full(Duration),
}

impl Reservation {
    /// Decides a request at `now` against the next free slot `next_free` (both in one
    /// clock's microseconds); returns the answer and the next free slot afterwards. The local
    /// schedule runs this; the Lua script in [`shared`] is the same arithmetic.
    fn decide(now: u64, next_free: u64, increment: u64, horizon: u64) -> (Reservation, u64) {
        let slot = next_free.max(now);
        let ahead = slot - now;
        if ahead > horizon {
            return (
                Reservation::Full(Duration::from_micros(ahead - horizon)),
                next_free,
            );
        }
        (
            Reservation::Slot(Duration::from_micros(ahead)),
            slot.saturating_add(increment),
        )
    }
}

/// A schedule kept in this process, on tokio's clock (so paused time in tests moves it).
#[derive(Debug)]
pub struct LocalSchedule {
    origin: Instant,
    /// Microseconds after `origin`.
    next_free: Mutex<u64>,
}

impl Default for LocalSchedule {
    fn default() -> Self {
        LocalSchedule {
            origin: Instant::now(),
            next_free: Mutex::new(0),
        }
    }
}

impl LocalSchedule {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for the next slot no further than `horizon` ahead; a granted slot moves the next
    /// free one `increment` on.
    pub fn reserve(&self, increment: Duration, horizon: Duration) -> Reservation {
        let now = self.now();
        let mut next_free = self.lock();
        let (reservation, after) = Reservation::decide(
            now,
            *next_free,
            increment_micros(increment),
            micros(horizon),
        );
        *next_free = after;
        reservation
    }

    /// No slot starts before `pause` from now.
    pub fn hold_off(&self, pause: Duration) {
        let until = self.now().saturating_add(micros(pause));
        let mut next_free = self.lock();
        *next_free = (*next_free).max(until);
    }

    fn now(&self) -> u64 {
        micros(self.origin.elapsed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        // The state is one number, valid whatever a panicking holder was doing.
        self.next_free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// An increment in whole microseconds, rounded up: a schedule may run slower than asked
/// (by under a microsecond a slot), never faster. Rates above a million a second are held
/// to a million.
fn increment_micros(increment: Duration) -> u64 {
    u64::try_from(increment.as_nanos().div_ceil(1_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;

    /// Replays requests at the given instants (µs) and returns the start of each granted slot.
    fn granted_slots(requests: &[u64], increment: u64, horizon: u64) -> Vec<u64> {
        let mut next_free = 0;
        let mut slots = Vec::new();
        for &now in requests {
            let (reservation, after) = Reservation::decide(now, next_free, increment, horizon);
            next_free = after;
            if let Reservation::Slot(wait) = reservation {
                slots.push(now + micros(wait));
            }
        }
        slots
    }

    #[test]
    fn slots_are_one_increment_apart_however_many_ask_at_once() {
        let slots = granted_slots(&[0; 10], 50 * MS, 1_000 * MS);
        let expected: Vec<u64> = (0..10).map(|n| n * 50 * MS).collect();
        assert_eq!(slots, expected);
    }

    #[test]
    fn no_slot_is_handed_out_beyond_the_horizon() {
        let (first, next_free) = Reservation::decide(0, 0, 50 * MS, 60 * MS);
        assert_eq!(first, Reservation::Slot(Duration::ZERO));
        let (second, next_free) = Reservation::decide(0, next_free, 50 * MS, 60 * MS);
        assert_eq!(second, Reservation::Slot(Duration::from_millis(50)));
        // The next slot is at 100 ms, 40 ms beyond the horizon: ask again in 40 ms.
        let (third, unchanged) = Reservation::decide(0, next_free, 50 * MS, 60 * MS);
        assert_eq!(third, Reservation::Full(Duration::from_millis(40)));
        assert_eq!(unchanged, next_free);
        let (fourth, _) = Reservation::decide(40 * MS, next_free, 50 * MS, 60 * MS);
        assert_eq!(fourth, Reservation::Slot(Duration::from_millis(60)));
    }

    #[test]
    fn an_idle_schedule_does_not_bank_slots_for_a_burst() {
        // Nobody asked for a second; then five ask at once: still one increment apart.
        let slots = granted_slots(&[0, 1_000 * MS, 1_000 * MS, 1_000 * MS], 100 * MS, u64::MAX);
        assert_eq!(slots, vec![0, 1_000 * MS, 1_100 * MS, 1_200 * MS]);
    }

    #[test]
    fn any_window_holds_at_most_its_share_of_slots() {
        // Requests at irregular instants from many callers, horizon of two slots, as the
        // issuer quota uses it; then count slots in every sliding window.
        let increment = 51 * MS;
        let window = 5_000 * MS;
        let mut requests = Vec::new();
        let mut at = 0;
        for step in 0..20_000_u64 {
            at += (step * 7_919) % (13 * MS);
            requests.push(at);
        }
        let slots = granted_slots(&requests, increment, 2 * increment);
        let most = slots
            .iter()
            .enumerate()
            .map(|(i, start)| {
                slots[i..]
                    .iter()
                    .take_while(|s| **s < start + window)
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert!(slots.len() > 1_000, "{}", slots.len());
        assert_eq!(most as u64, window.div_ceil(increment));
    }

    #[test]
    fn increments_round_up_to_whole_microseconds() {
        assert_eq!(increment_micros(Duration::from_nanos(100)), 1);
        assert_eq!(increment_micros(Duration::from_nanos(3_333)), 4);
        assert_eq!(increment_micros(Duration::from_millis(51)), 51_000);
    }

    #[test]
    fn hold_off_moves_the_next_slot_and_never_back() {
        let schedule = LocalSchedule::new();
        schedule.hold_off(Duration::from_secs(60));
        match schedule.reserve(Duration::from_millis(10), Duration::from_secs(1)) {
            Reservation::Full(wait) => assert!(wait > Duration::from_secs(58), "{wait:?}"),
            other => panic!("{other:?}"),
        }
        schedule.hold_off(Duration::from_secs(1));
        assert!(matches!(
            schedule.reserve(Duration::from_millis(10), Duration::from_secs(1)),
            Reservation::Full(_)
        ));
    }

    #[test]
    fn a_local_schedule_hands_out_consecutive_slots() {
        let schedule = LocalSchedule::new();
        let increment = Duration::from_millis(20);
        let horizon = Duration::from_secs(1);
        let Reservation::Slot(first) = schedule.reserve(increment, horizon) else {
            panic!("the first request gets a slot");
        };
        let Reservation::Slot(second) = schedule.reserve(increment, horizon) else {
            panic!("so does the second, within the horizon");
        };
        // Taken microseconds apart: the second starts one increment after the first.
        assert_eq!(first, Duration::ZERO);
        assert!(
            second <= increment && second + Duration::from_millis(5) > increment,
            "{second:?}"
        );
    }
}
