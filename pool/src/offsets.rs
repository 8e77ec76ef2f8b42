//! Which Kafka offset is safe to commit, per partition, and which deliveries are still ours.
//!
//! Codes are bound concurrently and finish out of order, but a committed offset says
//! "everything before this is done". So the commit point of a partition is the lowest offset
//! still in flight, or one past the highest offset seen when nothing is in flight.
//!
//! A rebalance can take a partition away while its codes wait in the prefetch buffer. Its new
//! owner delivers them again from the last commit, so the old owner drops them instead of
//! binding them too: every delivery carries the *epoch* its partition was assigned in, and a
//! delivery of a partition revoked since (or revoked and assigned again) is stale.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    partitions: HashMap<i32, PartitionState>,
    /// Bumped at every assignment, so a partition assigned again starts a new epoch.
    epoch: u64,
}

#[derive(Debug, Default)]
struct PartitionState {
    epoch: u64,
    in_flight: BTreeSet<i64>,
    next_after_seen: i64,
    /// Starts at the first offset received: the group's position when this binder got it.
    committable: Option<i64>,
    moved: bool,
}

impl OffsetTracker {
    /// The group gave us these partitions.
    pub(crate) fn assigned(&mut self, partitions: impl IntoIterator<Item = i32>) {
        self.epoch += 1;
        for partition in partitions {
            self.partitions.insert(
                partition,
                PartitionState {
                    epoch: self.epoch,
                    ..PartitionState::default()
                },
            );
        }
    }

    /// The group took these partitions away: their codes are no longer ours to bind or commit.
    pub(crate) fn revoked(&mut self, partitions: impl IntoIterator<Item = i32>) {
        for partition in partitions {
            self.partitions.remove(&partition);
        }
    }

    /// A message was received and is now in flight. Returns its partition's epoch, or `None`
    /// when the partition is not (or no longer) assigned to us.
    pub(crate) fn received(&mut self, partition: i32, offset: i64) -> Option<u64> {
        let state = self.partitions.get_mut(&partition)?;
        state.committable.get_or_insert(offset);
        state.in_flight.insert(offset);
        state.next_after_seen = state.next_after_seen.max(offset + 1);
        Some(state.epoch)
    }

    /// Whether a delivery of `partition` made in `epoch` is still ours.
    pub(crate) fn is_current(&self, partition: i32, epoch: u64) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|state| state.epoch == epoch)
    }

    /// A message is done. Returns the new commit point when it moved forward.
    pub(crate) fn done(&mut self, partition: i32, offset: i64, epoch: u64) -> Option<i64> {
        let state = self
            .partitions
            .get_mut(&partition)
            .filter(|state| state.epoch == epoch)?;
        state.in_flight.remove(&offset);
        let point = state
            .in_flight
            .first()
            .copied()
            .unwrap_or(state.next_after_seen);
        let committable = state.committable.get_or_insert(point);
        (point > *committable).then(|| {
            *committable = point;
            state.moved = true;
            point
        })
    }

    /// How many partitions the group has given us.
    pub(crate) fn held(&self) -> usize {
        self.partitions.len()
    }

    /// The commit point of every assigned partition that has one.
    pub(crate) fn commit_points(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter(|(_, state)| state.moved)
            .filter_map(|(&partition, state)| Some((partition, state.committable?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker_with(partitions: &[i32]) -> (OffsetTracker, u64) {
        let mut tracker = OffsetTracker::default();
        tracker.assigned(partitions.iter().copied());
        let epoch = tracker.epoch;
        (tracker, epoch)
    }

    #[test]
    fn the_commit_point_waits_for_the_lowest_offset_in_flight() {
        let (mut tracker, e) = tracker_with(&[0]);
        for offset in 10..15 {
            assert_eq!(tracker.received(0, offset), Some(e));
        }
        assert_eq!(
            tracker.done(0, 12, e),
            None,
            "10 and 11 are still in flight"
        );
        assert_eq!(tracker.done(0, 11, e), None);
        assert_eq!(
            tracker.done(0, 10, e),
            Some(13),
            "10..=12 done, 13 still in flight"
        );
        assert_eq!(tracker.done(0, 14, e), None);
        assert_eq!(tracker.done(0, 13, e), Some(15));
        assert_eq!(tracker.commit_points(), vec![(0, 15)]);
    }

    #[test]
    fn partitions_are_independent() {
        let (mut tracker, e) = tracker_with(&[0, 1]);
        tracker.received(0, 0);
        tracker.received(1, 100);
        assert_eq!(tracker.done(1, 100, e), Some(101));
        assert_eq!(tracker.commit_points(), vec![(1, 101)]);
    }

    #[test]
    fn a_redelivered_offset_does_not_move_the_point_backwards() {
        let (mut tracker, e) = tracker_with(&[0]);
        tracker.received(0, 5);
        assert_eq!(tracker.done(0, 5, e), Some(6));
        tracker.received(0, 5);
        assert_eq!(tracker.done(0, 5, e), None);
        assert_eq!(tracker.commit_points(), vec![(0, 6)]);
    }

    #[test]
    fn messages_of_a_partition_not_assigned_are_refused() {
        let (mut tracker, e) = tracker_with(&[0]);
        assert_eq!(tracker.received(3, 1), None);
        assert_eq!(tracker.done(3, 1, e), None);
    }

    #[test]
    fn a_revoked_partition_makes_its_deliveries_stale_even_when_assigned_again() {
        let (mut tracker, first) = tracker_with(&[0, 1]);
        tracker.received(0, 7);
        tracker.received(1, 9);
        tracker.revoked([0]);
        assert!(!tracker.is_current(0, first), "revoked");
        assert!(tracker.is_current(1, first), "kept");
        assert_eq!(tracker.done(0, 7, first), None, "not ours to commit");
        assert_eq!(tracker.commit_points(), vec![]);

        tracker.assigned([0]);
        let second = tracker.epoch;
        assert!(!tracker.is_current(0, first), "an old delivery stays stale");
        assert_eq!(tracker.received(0, 7), Some(second));
        assert_eq!(tracker.done(0, 7, second), Some(8));
        assert_eq!(tracker.done(1, 9, first), Some(10));
    }
}
