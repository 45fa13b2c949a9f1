//! Partitions that lost every replica for good: all their voters (or a majority of
//! them) restarted without their state or left, so no leader can ever be elected
//! again. The balancer re-forms such a partition empty on its placement replicas and
//! says so loudly: an error in the log, an entry in the cluster state (shown by
//! `GET /cluster` and counted by `dcache_cluster_partitions_lost`), so that the data
//! loss is never silent and the partition never stays broken.
//!
//! A member's Raft identity is fresh at every start without its state (with
//! persistence it is kept only together with that state), so a voter id that is no
//! current member's incarnation can never answer again: that is what makes the verdict
//! certain.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tracing::{error, warn};

use crate::clock::Clock;
use crate::cluster::{Cluster, group_name};
use crate::placement::Placement;
use crate::raft::cluster_state::LostPartition;
use crate::raft::membership::{CopyStatus, DropRequest};
use crate::raft::transport::op;
use crate::raft::{ClusterCommand, ClusterState, GroupId, MemberNode, NodeId, group_partition};

/// A partition is examined only after it has had no reachable leader this long, so that
/// one being created or electing is never taken for lost.
pub const LEADERLESS_BEFORE_CHECK: Duration = Duration::from_secs(10);

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

impl Cluster {
    /// Re-forms, empty, each of `leaderless` that can never elect a leader again.
    pub(crate) async fn reform_lost_partitions(
        &self,
        state: &ClusterState,
        placement: &Placement,
        leaderless: &[GroupId],
    ) {
        for &group in leaderless {
            let Some(partition) = group_partition(group) else {
                continue;
            };
            if let Some(reason) = self.lost_for_good(state, group).await {
                self.reform(state, placement, partition, group, reason)
                    .await;
            }
        }
    }

    /// Why `group` can never elect a leader again, or `None` if it may (or if some
    /// member cannot be asked: it may hold a healthy copy).
    async fn lost_for_good(&self, state: &ClusterState, group: GroupId) -> Option<String> {
        let live: BTreeSet<NodeId> = state.members_and_leaving().map(|m| m.raft_id).collect();
        let answers = join_all(state.members_and_leaving().map(|member| async move {
            let answer = self
                .groups
                .transport
                .call::<_, (NodeId, Option<CopyStatus>)>(
                    &member.node.raft_addr,
                    group,
                    op::COPY_STATUS,
                    &(),
                    CALL_TIMEOUT,
                )
                .await;
            (member, answer)
        }))
        .await;
        let mut copies = Vec::new();
        for (member, answer) in answers {
            match answer {
                // A member that restarted is re-admitted under its new identity first,
                // so that the partition is re-formed with the right voters.
                Ok((raft_id, _)) if raft_id != member.raft_id => return None,
                Ok((_, copy)) => copies.extend(copy.filter(|c| !c.voter_sets.is_empty())),
                Err(e) => {
                    warn!(group = %group_name(group), error = %e, "cannot tell whether a leaderless partition is lost");
                    return None;
                }
            }
        }
        if copies.is_empty() {
            return Some("no member holds a replica of it".into());
        }
        let can_elect = |copy: &CopyStatus| {
            copy.voter_sets
                .iter()
                .all(|set| set.iter().filter(|id| live.contains(id)).count() * 2 > set.len())
        };
        if copies.iter().any(can_elect) {
            return None;
        }
        let gone: BTreeSet<NodeId> = copies
            .iter()
            .flat_map(|c| c.voter_sets.iter().flatten())
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        Some(format!(
            "a majority of its voters ({gone:?}) restarted without their state or left the \
             cluster, so no leader can ever be elected"
        ))
    }

    /// Drops every leftover copy of `group`, records the loss in the cluster state and
    /// starts the group afresh, empty, on its placement replicas. A step that fails
    /// leaves the rest to the next round.
    async fn reform(
        &self,
        state: &ClusterState,
        placement: &Placement,
        partition: u32,
        group: GroupId,
        reason: String,
    ) {
        error!(
            partition,
            %reason,
            "partition lost every replica for good: re-forming it empty; its data is gone"
        );
        let drop_everywhere = DropRequest {
            removed_at: u64::MAX,
        };
        let dropped = join_all(state.members_and_leaving().map(|member| {
            self.groups.transport.call_incarnation::<_, bool>(
                &member.node.raft_addr,
                Some(member.raft_id),
                group,
                op::DROP,
                &drop_everywhere,
                CALL_TIMEOUT,
            )
        }))
        .await;
        if let Some(Err(e)) = dropped.into_iter().find(Result::is_err) {
            warn!(partition, error = %e, "could not drop a leftover copy of a lost partition; retrying next round");
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let record = ClusterCommand::PartitionLost(LostPartition {
            partition,
            epoch: state.epoch,
            at_unix_ms: Clock::new().now_ms(),
            reason,
        });
        if let Err(e) = self.propose_cluster_change(state, record, deadline).await {
            warn!(partition, error = %e, "could not record a lost partition; retrying next round");
            return;
        }
        let voters: BTreeMap<NodeId, MemberNode> = placement.replicas[partition as usize]
            .iter()
            .filter_map(|name| state.members.get(name))
            .map(|m| (m.raft_id, m.node.clone()))
            .collect();
        let Some(first) = voters.values().next() else {
            return;
        };
        match self
            .initialize_group(first, group, &voters, Instant::now() + CALL_TIMEOUT)
            .await
        {
            Ok(()) => {
                error!(partition, replicas = ?voters.values().map(|n| &n.name).collect::<Vec<_>>(), "lost partition re-formed empty")
            }
            Err(e) => {
                warn!(partition, error = %e, "could not re-form a lost partition; retrying next round")
            }
        }
    }
}
