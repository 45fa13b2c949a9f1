//! Readiness as a safety promise: `/ready` answers 200 only when taking this node down
//! next cannot take a majority away from any partition.
//!
//! A node that starts empty (new, or restarted without its state under a new Raft
//! identity) is ready only once
//!
//! - every partition the placement gives it (and the cluster group, if it is among
//!   that group's voters) has *committed* a single (not joint)
//!   membership that counts its current incarnation as a voter, and no identity in it
//!   is a former incarnation of any member: a joint or an uncommitted configuration
//!   still needs the old voters for its quorum;
//! - the cluster group's leader, in a balancer round at the current epoch, reached the
//!   leader of every partition and found no voter anywhere that is not a current
//!   member's incarnation (a partition outside this node's placement may still count
//!   its former incarnation, while a rebalance is under way);
//! - every copy it holds knows its leader and has applied what was committed.
//!
//! Otherwise a rolling restart (Kubernetes restarts the next pod as soon as the last
//! one is Ready) stops the next node while some partition still counts the last one's
//! dead incarnation among its voters: two of three voters gone, and the partition
//! lost. Once met, the first two conditions are not asked again: replicas a ready node
//! takes on later (another member drained) are caught up while it keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use dcache_protocol::PartitionId;
use openraft::async_runtime::WatchReceiver;
use openraft::type_config::alias::StoredMembershipOf;

use crate::cluster::{Cluster, MAX_CLUSTER_VOTERS, READY_LAG, group_name};
use crate::raft::cluster_state::ClusterView;
use crate::raft::membership::{LeaveAnswer, VoterReport, may_leave};
use crate::raft::transport::op;
use crate::raft::{
    CLUSTER_GROUP, ClusterState, GroupId, GroupRaft, NodeId, TypeConfig, partition_group,
};

/// How long a node waits for the cluster leader's report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

impl Cluster {
    /// Why this node is not ready, if it is not: see the module documentation.
    pub fn not_ready_reason(&self) -> Option<String> {
        let Some(state) = self.state() else {
            return Some("not yet a member of an initialised cluster".into());
        };
        let initialized = self.groups.initialized();
        if !self.filled.load(Ordering::Relaxed) {
            if let Some(reason) = self.unfilled_reason(&state, &initialized) {
                return Some(reason);
            }
            self.filled.store(true, Ordering::Relaxed);
            tracing::info!(
                epoch = state.epoch,
                "every partition placed here counts this incarnation as a voter, and none \
                 depends on a former one: ready once caught up"
            );
        }
        initialized.iter().find_map(|(group, raft)| {
            let metrics = raft.metrics().borrow_watched().clone();
            let name = group_name(*group);
            let index = |log_id: Option<openraft::type_config::alias::LogIdOf<TypeConfig>>| {
                log_id.map_or(0, |id| id.index)
            };
            let applied = index(metrics.last_applied);
            let committed = index(metrics.cluster_committed);
            if metrics.current_leader.is_none() {
                Some(format!("{name} has no leader"))
            } else if applied + READY_LAG < committed {
                Some(format!(
                    "{name} is catching up: applied {applied} of {committed} committed entries"
                ))
            } else {
                None
            }
        })
    }

    /// How many partitions the placement gives this member that do not yet count its
    /// current incarnation as a voter in a committed configuration.
    pub fn partitions_missing_here(&self) -> usize {
        let Some(state) = self.state() else { return 0 };
        let initialized = self.groups.initialized();
        self.voting_here(&state)
            .into_iter()
            .filter(|group| *group != CLUSTER_GROUP)
            .filter(|group| self.group_reason(&state, &initialized, *group).is_some())
            .count()
    }

    /// The groups this member should vote in: the partitions the placement gives it,
    /// and the cluster group if it is among its first voters.
    fn voting_here(&self, state: &ClusterView) -> Vec<GroupId> {
        let me = &self.groups.me.name;
        if !state.members.contains_key(me) {
            return Vec::new();
        }
        let cluster_voter = state
            .members
            .keys()
            .take(MAX_CLUSTER_VOTERS)
            .any(|name| name == me);
        let partitions = state
            .placement
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, replicas)| replicas.contains(me))
            .map(|(partition, _)| partition_group(partition as PartitionId))
            .collect::<Vec<_>>();
        cluster_voter
            .then_some(CLUSTER_GROUP)
            .into_iter()
            .chain(partitions)
            .collect()
    }

    /// The first reason this incarnation does not yet hold its share safely, if any.
    fn unfilled_reason(
        &self,
        state: &ClusterView,
        initialized: &BTreeMap<GroupId, GroupRaft>,
    ) -> Option<String> {
        if let Some(reason) = self
            .voting_here(state)
            .into_iter()
            .find_map(|group| self.group_reason(state, initialized, group))
        {
            return Some(reason);
        }
        if !state.members.contains_key(&self.groups.me.name) {
            // Not in the ring (a new pod before the operator adds it): nothing to hold.
            return None;
        }
        self.cluster_reason(state)
    }

    /// Why `group` does not yet count this incarnation as a voter of a committed,
    /// single configuration made only of current incarnations.
    fn group_reason(
        &self,
        state: &ClusterState,
        initialized: &BTreeMap<GroupId, GroupRaft>,
        group: GroupId,
    ) -> Option<String> {
        let name = group_name(group);
        let Some(raft) = initialized.get(&group) else {
            return Some(format!(
                "{name} is not yet replicated here (this node started empty)"
            ));
        };
        let metrics = raft.metrics().borrow_watched().clone();
        let live: BTreeSet<NodeId> = state.members_and_leaving().map(|m| m.raft_id).collect();
        let check = |which: &str, config: &StoredMembershipOf<TypeConfig>| {
            let membership = config.membership();
            if membership.get_joint_config().len() > 1 {
                return Some(format!(
                    "{name} is changing its voters (joint {which} configuration)"
                ));
            }
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            if !voters.contains(&self.groups.id) {
                return Some(format!(
                    "{name} does not count this node as a voter yet ({which} voters {voters:?})"
                ));
            }
            let former: Vec<NodeId> = voters.difference(&live).copied().collect();
            (!former.is_empty()).then(|| {
                format!(
                    "{name} still counts a former incarnation {former:?} among its {which} \
                     voters"
                )
            })
        };
        check("committed", &metrics.committed_membership_config)
            .or_else(|| check("latest", &metrics.membership_config))
    }

    /// Why the cluster leader's last report says some partition still depends on an
    /// identity that is gone.
    fn cluster_reason(&self, state: &ClusterState) -> Option<String> {
        let report = self.voter_report.lock().unwrap_or_else(|p| p.into_inner());
        let Some(report) = report.as_ref() else {
            return Some(
                "waiting for the cluster leader's view of every partition's voters".into(),
            );
        };
        if report.epoch != state.epoch {
            return Some(format!(
                "waiting for a balancer round at epoch {} (the last was at {})",
                state.epoch, report.epoch
            ));
        }
        if report.unknown_groups > 0 {
            return Some(format!(
                "the cluster leader could not reach the leader of {} partitions in its last round",
                report.unknown_groups
            ));
        }
        report.former_voters.iter().next().map(|(group, ids)| {
            format!(
                "{} still counts former incarnations {ids:?} among its voters",
                group_name(*group)
            )
        })
    }

    /// Fetches the cluster leader's [`VoterReport`] while this node is not yet filled;
    /// called every balancer tick.
    pub(crate) async fn refresh_voter_report(&self) {
        if self.filled.load(Ordering::Relaxed) {
            return;
        }
        let Some(raft) = self.groups.get(CLUSTER_GROUP) else {
            return;
        };
        let metrics = raft.metrics().borrow_watched().clone();
        let report = match metrics.current_leader {
            Some(leader) if leader == self.groups.id => self.groups.voter_report(),
            Some(leader) => match metrics.membership_config.membership().get_node(&leader) {
                Some(node) => self
                    .groups
                    .transport
                    .call::<_, Option<VoterReport>>(
                        &node.raft_addr,
                        CLUSTER_GROUP,
                        op::VOTER_REPORT,
                        &(),
                        REPORT_TIMEOUT,
                    )
                    .await
                    .ok()
                    .flatten(),
                None => None,
            },
            None => None,
        };
        *self.voter_report.lock().unwrap_or_else(|p| p.into_inner()) = report;
    }
}

/// How often a stopping node asks again whether it may go.
const SAFE_STOP_POLL: Duration = Duration::from_millis(250);

impl Cluster {
    /// The other half of the promise, on SIGTERM: holds the stop (at most `within`)
    /// while some group this node votes in would lose its majority by its going,
    /// because another voter is down, restarting or still catching up. Returns what
    /// still held it when `within` ran out.
    pub async fn wait_until_safe_to_stop(&self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut logged = None;
        loop {
            let reason = self.unsafe_to_stop_reason().await?;
            if tokio::time::Instant::now() >= deadline {
                return Some(reason);
            }
            if logged.as_ref() != Some(&reason) {
                tracing::info!(%reason, "holding the stop until no partition needs this node for its majority");
                logged = Some(reason);
            }
            tokio::time::sleep(SAFE_STOP_POLL).await;
        }
    }

    /// Why stopping now would take a majority away from some group this node votes in.
    async fn unsafe_to_stop_reason(&self) -> Option<String> {
        let me = self.groups.id;
        let voting: Vec<(GroupId, GroupRaft)> = self
            .groups
            .initialized()
            .into_iter()
            .filter(|(_, raft)| {
                raft.metrics()
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|id| id == me)
            })
            .collect();
        // A leader learns that a voter died only when its heartbeats start failing;
        // asking each voter's address who answers there knows at once.
        let gone = self.gone_voters(&voting).await;
        let short = voting.iter().find_map(|(group, raft)| {
            let metrics = raft.metrics().borrow_watched().clone();
            metrics
                .membership_config
                .membership()
                .get_joint_config()
                .iter()
                .find(|voters| {
                    let staying = voters
                        .iter()
                        .filter(|id| **id != me && !gone.contains(id))
                        .count();
                    staying * 2 <= voters.len()
                })
                .map(|voters| {
                    let missing: Vec<&NodeId> =
                        voters.iter().filter(|id| gone.contains(id)).collect();
                    format!(
                        "{}: voters {missing:?} are down or restarted, and without this node \
                         too fewer than a majority of {} would remain",
                        group_name(*group),
                        voters.len()
                    )
                })
        });
        if short.is_some() {
            return short;
        }
        let answers =
            futures_util::future::join_all(voting.into_iter().map(|(group, raft)| async move {
                let metrics = raft.metrics().borrow_watched().clone();
                let answer = match metrics.current_leader {
                    Some(leader) if leader == me => may_leave(&self.groups, group, me),
                    Some(leader) => {
                        match metrics.membership_config.membership().get_node(&leader) {
                            Some(node) => self
                                .groups
                                .transport
                                .call::<_, LeaveAnswer>(
                                    &node.raft_addr,
                                    group,
                                    op::MAY_LEAVE,
                                    &me,
                                    REPORT_TIMEOUT,
                                )
                                .await
                                .unwrap_or_else(|e| {
                                    LeaveAnswer::Unsafe(format!("its leader does not answer: {e}"))
                                }),
                            None => LeaveAnswer::Unsafe("its leader is unknown".into()),
                        }
                    }
                    None => LeaveAnswer::Unsafe("it has no leader".into()),
                };
                (group, answer)
            }))
            .await;
        answers
            .into_iter()
            .find_map(|(group, answer)| match answer {
                LeaveAnswer::Safe => None,
                LeaveAnswer::NotLeader(_) => {
                    Some(format!("{}: its leader is changing", group_name(group)))
                }
                LeaveAnswer::Unsafe(why) => Some(format!("{}: {why}", group_name(group))),
            })
    }

    /// The voters of `groups` (other than this node) whose address does not answer
    /// with their identity: stopped, or restarted as someone new.
    async fn gone_voters(&self, groups: &[(GroupId, GroupRaft)]) -> BTreeSet<NodeId> {
        let mut voters: BTreeMap<NodeId, String> = BTreeMap::new();
        for (_, raft) in groups {
            let metrics = raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            for id in membership.voter_ids() {
                if id != self.groups.id
                    && let Some(node) = membership.get_node(&id)
                {
                    voters.insert(id, node.raft_addr.clone());
                }
            }
        }
        let answers =
            futures_util::future::join_all(voters.into_iter().map(|(id, addr)| async move {
                let identity = self.fetch_identity(&addr, REPORT_TIMEOUT).await;
                (id, identity.is_ok_and(|identity| identity.raft_id == id))
            }))
            .await;
        answers
            .into_iter()
            .filter(|(_, here)| !here)
            .map(|(id, _)| id)
            .collect()
    }
}
