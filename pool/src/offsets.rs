//! Which Kafka offset is safe to commit, per partition.
//!
//! Codes are bound concurrently and finish out of order, but a committed offset says
//! "everything before this is done". So the commit point of a partition is the lowest offset
//! still in flight, or one past the highest offset seen when nothing is in flight.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    partitions: HashMap<i32, PartitionState>,
}

#[derive(Debug, Default)]
struct PartitionState {
    in_flight: BTreeSet<i64>,
    next_after_seen: i64,
    /// Starts at the first offset received: the group's position when this binder joined.
    committable: i64,
    moved: bool,
}

impl OffsetTracker {
    /// A message was received and is now in flight.
    pub(crate) fn received(&mut self, partition: i32, offset: i64) {
        let state = self
            .partitions
            .entry(partition)
            .or_insert_with(|| PartitionState {
                committable: offset,
                ..PartitionState::default()
            });
        state.in_flight.insert(offset);
        state.next_after_seen = state.next_after_seen.max(offset + 1);
    }

    /// A message is done. Returns the new commit point when it moved forward.
    pub(crate) fn done(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let state = self.partitions.get_mut(&partition)?;
        state.in_flight.remove(&offset);
        let point = state
            .in_flight
            .first()
            .copied()
            .unwrap_or(state.next_after_seen);
        (point > state.committable).then(|| {
            state.committable = point;
            state.moved = true;
            point
        })
    }

    /// The commit point of every partition that has one.
    pub(crate) fn commit_points(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter(|(_, state)| state.moved)
            .map(|(&partition, state)| (partition, state.committable))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_point_waits_for_the_lowest_offset_in_flight() {
        let mut tracker = OffsetTracker::default();
        for offset in 10..15 {
            tracker.received(0, offset);
        }
        assert_eq!(tracker.done(0, 12), None, "10 and 11 are still in flight");
        assert_eq!(tracker.done(0, 11), None);
        assert_eq!(
            tracker.done(0, 10),
            Some(13),
            "10..=12 done, 13 still in flight"
        );
        assert_eq!(tracker.done(0, 14), None);
        assert_eq!(tracker.done(0, 13), Some(15));
        assert_eq!(tracker.commit_points(), vec![(0, 15)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut tracker = OffsetTracker::default();
        tracker.received(0, 0);
        tracker.received(1, 100);
        assert_eq!(tracker.done(1, 100), Some(101));
        assert_eq!(tracker.commit_points(), vec![(1, 101)]);
    }

    #[test]
    fn a_redelivered_offset_does_not_move_the_point_backwards() {
        let mut tracker = OffsetTracker::default();
        tracker.received(0, 5);
        assert_eq!(tracker.done(0, 5), Some(6));
        tracker.received(0, 5);
        assert_eq!(tracker.done(0, 5), None);
        assert_eq!(tracker.commit_points(), vec![(0, 6)]);
    }

    #[test]
    fn an_unknown_partition_is_ignored() {
        let mut tracker = OffsetTracker::default();
        assert_eq!(tracker.done(3, 1), None);
    }
}
