//! Counters of Raft events on this node, shared by every group, the transport and the
//! membership steps, and exported as `dcache_raft_*_total`.
//!
//! Gauges (terms, lags, partitions led) are read from each group's metrics when
//! Prometheus scrapes; events that a scrape would miss between two reads (an election
//! that came and went) are counted here as they happen.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use openraft::metrics::MetricsRecorder;
use prometheus::IntCounter;

#[derive(Clone)]
pub struct RaftCounters {
    /// Elections this node's replicas started (became candidate).
    pub elections: IntCounter,
    /// Times one of this node's replicas became leader.
    pub leaderships_won: IntCounter,
    /// Membership changes this node's leaders committed (learner added, voters
    /// replaced, learners removed).
    pub membership_changes: IntCounter,
    pub snapshot_bytes_sent: IntCounter,
    pub snapshot_bytes_received: IntCounter,
    /// Linearizable reads a leader answered on its lease, without a quorum round.
    pub lease_reads: IntCounter,
    /// Linearizable reads that waited for a read-index round (read-index policy, or a
    /// lease that had run out).
    pub read_index_reads: IntCounter,
}

impl RaftCounters {
    pub fn new() -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        Self {
            elections: counter(
                "dcache_raft_elections_total",
                "Elections started by this node's replicas (a replica became candidate).",
            ),
            leaderships_won: counter(
                "dcache_raft_leader_changes_total",
                "Times a replica on this node became its group's leader.",
            ),
            membership_changes: counter(
                "dcache_raft_membership_changes_total",
                "Membership changes committed by groups this node leads.",
            ),
            snapshot_bytes_sent: counter(
                "dcache_raft_snapshot_sent_bytes_total",
                "Snapshot bytes sent to new or lagging replicas.",
            ),
            snapshot_bytes_received: counter(
                "dcache_raft_snapshot_received_bytes_total",
                "Snapshot bytes received and installed.",
            ),
            lease_reads: counter(
                "dcache_raft_lease_reads_total",
                "Linearizable reads answered by a partition leader on its lease.",
            ),
            read_index_reads: counter(
                "dcache_raft_read_index_reads_total",
                "Linearizable reads that waited for a quorum to confirm the leadership.",
            ),
        }
    }

    pub fn all(&self) -> [&IntCounter; 7] {
        [
            &self.elections,
            &self.leaderships_won,
            &self.membership_changes,
            &self.snapshot_bytes_sent,
            &self.snapshot_bytes_received,
            &self.lease_reads,
            &self.read_index_reads,
        ]
    }

    /// A recorder for one group, counting its state transitions.
    pub fn recorder(&self) -> Arc<dyn MetricsRecorder> {
        Arc::new(GroupRecorder {
            counters: self.clone(),
            state: AtomicU8::new(STATE_LEARNER),
        })
    }
}

impl Default for RaftCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RaftCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftCounters").finish_non_exhaustive()
    }
}

// Server states as openraft's MetricsRecorder numbers them.
const STATE_LEARNER: u8 = 0;
const STATE_CANDIDATE: u8 = 2;
const STATE_LEADER: u8 = 3;

/// Told of every metrics report of one group, synchronously from its Raft core, so no
/// transition is missed.
#[derive(Debug)]
struct GroupRecorder {
    counters: RaftCounters,
    state: AtomicU8,
}

impl MetricsRecorder for GroupRecorder {
    fn set_server_state(&self, state: u8) {
        let before = self.state.swap(state, Ordering::Relaxed);
        if before == state {
            return;
        }
        match state {
            STATE_CANDIDATE => self.counters.elections.inc(),
            STATE_LEADER => self.counters.leaderships_won.inc(),
            _ => {}
        }
    }

    fn record_apply_batch(&self, _entry_count: u64) {}
    fn record_append_batch(&self, _entry_count: u64) {}
    fn record_write_batch(&self, _entry_count: u64) {}
    fn set_current_term(&self, _term: u64) {}
    fn set_last_log_index(&self, _index: u64) {}
    fn set_committed_index(&self, _index: u64) {}
    fn set_applied_index(&self, _index: u64) {}
    fn set_snapshot_index(&self, _index: u64) {}
    fn set_purged_index(&self, _index: u64) {}
    fn increment_vote(&self) {}
    fn increment_heartbeat(&self) {}
    fn increment_append(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_counted_once() {
        let counters = RaftCounters::new();
        let recorder = counters.recorder();
        for state in [1, 2, 2, 2, 3, 3, 1, 2, 1] {
            recorder.set_server_state(state);
        }
        assert_eq!(counters.elections.get(), 2);
        assert_eq!(counters.leaderships_won.get(), 1);
    }
}
