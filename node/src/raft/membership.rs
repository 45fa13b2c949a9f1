//! Moving a group's replicas toward a desired set, one safe step at a time, run on the
//! group's leader when the balancer asks: add the new members as learners, wait until
//! they have caught up, change the voters (joint consensus), drop leftover learners,
//! tell removed members to let go of their copy, then hand leadership to the preferred
//! member.

use std::collections::{BTreeMap, BTreeSet};

use openraft::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, Instant};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::groups::Groups;
use super::transport::op;
use super::{GroupId, MemberNode, NodeId, TypeConfig};
use openraft::RaftMetrics;

/// A new member counts as caught up when it is at most this many entries behind.
const CAUGHT_UP_LAG: u64 = 64;
/// A member is handed leadership only if it acknowledged a heartbeat this recently.
const RESPONSIVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// What the balancer wants a group to look like.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReconcileRequest {
    pub voters: BTreeMap<NodeId, MemberNode>,
    /// Members that follow the group without voting (the cluster group's beyond five).
    pub learners: BTreeMap<NodeId, MemberNode>,
    pub preferred_leader: Option<NodeId>,
    /// False when the balancer is at its limit of concurrent moves: report, don't act.
    pub may_start: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReconcileOutcome {
    /// Not the leader; try the one named, if any.
    NotLeader(Option<MemberNode>),
    /// Voters and learners are as desired.
    InPlace { voters: Vec<NodeId> },
    /// A step is under way (learners catching up, a membership change or a leadership
    /// transfer in flight).
    Moving { voters: Vec<NodeId> },
    /// A move is needed but was not started (`may_start` was false).
    Waiting { voters: Vec<NodeId> },
}

/// Asks a removed member to drop its copy of a group. `removed_at` is the log index of
/// the membership that removed it, so a stale request cannot drop a copy that was
/// added back since.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropRequest {
    pub removed_at: u64,
}

/// What a member holds of a group: the voter sets of its membership (two while a
/// change is in joint consensus; none for a copy not yet replicated to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStatus {
    pub voter_sets: Vec<BTreeSet<NodeId>>,
}

/// What the cluster group's leader learned of every group's voters in its last
/// balancer round.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterReport {
    /// The cluster-state epoch the round worked at.
    pub epoch: u64,
    /// Groups whose leader the round could not reach: their voters are unknown.
    pub unknown_groups: u64,
    /// Groups whose voters include an identity that is no current member's (a former
    /// incarnation of a restarted member), with those identities.
    pub former_voters: BTreeMap<GroupId, BTreeSet<NodeId>>,
}

/// This node's copy of `group`, if it holds one.
pub fn copy_status(groups: &Groups, group: GroupId) -> Option<CopyStatus> {
    let raft = groups.get(group)?;
    let metrics = raft.metrics().borrow_watched().clone();
    let voter_sets = if metrics.membership_config.log_id().is_some() {
        metrics
            .membership_config
            .membership()
            .get_joint_config()
            .clone()
    } else {
        Vec::new()
    };
    Some(CopyStatus { voter_sets })
}

pub async fn reconcile(
    groups: &Groups,
    group: GroupId,
    request: ReconcileRequest,
) -> Result<ReconcileOutcome, String> {
    let Some(raft) = groups.get(group) else {
        return Ok(ReconcileOutcome::NotLeader(None));
    };
    let metrics = raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership().clone();
    if metrics.current_leader != Some(groups.id) {
        let leader = metrics
            .current_leader
            .and_then(|id| membership.get_node(&id).cloned());
        return Ok(ReconcileOutcome::NotLeader(leader));
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let voter_list = || voters.iter().copied().collect::<Vec<_>>();
    if membership.get_joint_config().len() > 1 {
        return Ok(ReconcileOutcome::Moving {
            voters: voter_list(),
        });
    }
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    let desired_voters: BTreeSet<NodeId> = request.voters.keys().copied().collect();
    let wanted: BTreeMap<NodeId, MemberNode> = request
        .voters
        .iter()
        .chain(&request.learners)
        .map(|(id, node)| (*id, node.clone()))
        .collect();
    let extra_learners: BTreeSet<NodeId> = learners
        .iter()
        .filter(|id| !wanted.contains_key(id))
        .copied()
        .collect();
    let missing: Vec<(NodeId, MemberNode)> = wanted
        .iter()
        .filter(|(id, _)| !voters.contains(id) && !learners.contains(id))
        .map(|(id, node)| (*id, node.clone()))
        .collect();
    let membership_differs =
        voters != desired_voters || !extra_learners.is_empty() || !missing.is_empty();
    if membership_differs && !request.may_start {
        return Ok(ReconcileOutcome::Waiting {
            voters: voter_list(),
        });
    }

    // 1. New members join as learners and catch up (by snapshot if the log was purged).
    if !missing.is_empty() {
        for (id, node) in missing {
            info!(group, learner = id, name = %node.name, "adding learner");
            raft.add_learner(id, node, false)
                .await
                .map_err(|e| e.to_string())?;
            groups.transport.counters.membership_changes.inc();
        }
        return Ok(ReconcileOutcome::Moving {
            voters: voter_list(),
        });
    }

    // 2. Voters change only once every incoming voter has caught up.
    if voters != desired_voters {
        let last = metrics.last_log_index.unwrap_or(0);
        let replication = metrics.replication.clone().unwrap_or_default();
        let lagging = desired_voters
            .iter()
            .filter(|id| !voters.contains(id))
            .any(|id| {
                let matched = replication
                    .get(id)
                    .cloned()
                    .flatten()
                    .map_or(0, |log_id| log_id.index);
                matched + CAUGHT_UP_LAG < last
            });
        if lagging {
            return Ok(ReconcileOutcome::Moving {
                voters: voter_list(),
            });
        }
        // A leader never removes itself: it first hands leadership to a member that
        // stays (the preferred one if it can), which then makes the change.
        if !desired_voters.contains(&groups.id) {
            let successor = request
                .preferred_leader
                .filter(|id| voters.contains(id) && desired_voters.contains(id))
                .or_else(|| voters.intersection(&desired_voters).next().copied());
            match successor {
                Some(successor) => {
                    info!(
                        group,
                        to = successor,
                        "leaving the group: handing leadership over first"
                    );
                    groups.hand_over(group, &raft, successor).await?;
                }
                None => {
                    // No staying member votes yet: let the newcomers vote beside this node
                    // first, so that one of them can take over next round.
                    let mut interim = desired_voters.clone();
                    interim.insert(groups.id);
                    raft.change_membership(ChangeMembers::ReplaceAllVoters(interim), false)
                        .await
                        .map_err(|e| e.to_string())?;
                    groups.transport.counters.membership_changes.inc();
                }
            }
            return Ok(ReconcileOutcome::Moving {
                voters: voter_list(),
            });
        }
        let removed: Vec<(NodeId, MemberNode)> = voters
            .iter()
            .filter(|id| !desired_voters.contains(id))
            .filter_map(|id| membership.get_node(id).map(|node| (*id, node.clone())))
            .collect();
        info!(group, ?voters, ?desired_voters, "changing voters");
        let changed = raft
            .change_membership(
                ChangeMembers::ReplaceAllVoters(desired_voters.clone()),
                false,
            )
            .await
            .map_err(|e| e.to_string())?;
        groups.transport.counters.membership_changes.inc();
        release_removed(groups, group, &removed, changed.log_id.index).await;
        return Ok(ReconcileOutcome::Moving {
            voters: desired_voters.into_iter().collect(),
        });
    }

    // 3. Learners nobody wants any more leave.
    if !extra_learners.is_empty() {
        let removed: Vec<(NodeId, MemberNode)> = extra_learners
            .iter()
            .filter_map(|id| membership.get_node(id).map(|node| (*id, node.clone())))
            .collect();
        let changed = raft
            .change_membership(ChangeMembers::RemoveNodes(extra_learners), false)
            .await
            .map_err(|e| e.to_string())?;
        groups.transport.counters.membership_changes.inc();
        release_removed(groups, group, &removed, changed.log_id.index).await;
        return Ok(ReconcileOutcome::Moving {
            voters: voter_list(),
        });
    }

    // 4. Leadership goes to the preferred member, which spreads leaders evenly, but
    // only to one that has caught up and answers heartbeats: handing it to an
    // unreachable member would leave the group refusing writes until the hand-over
    // times out.
    if let Some(preferred) = request.preferred_leader
        && preferred != groups.id
        && voters.contains(&preferred)
        && request.may_start
        && can_take_over(&metrics, preferred)
    {
        info!(group, to = preferred, "transferring leadership");
        groups.hand_over(group, &raft, preferred).await?;
        return Ok(ReconcileOutcome::Moving {
            voters: voter_list(),
        });
    }
    Ok(ReconcileOutcome::InPlace {
        voters: voter_list(),
    })
}

/// Whether voter `id` may be handed the leadership of a group this node leads: it has
/// caught up and acknowledged a heartbeat recently. Handing it to a lagging or
/// unreachable member would leave the group refusing writes until the hand-over times
/// out.
pub fn can_take_over(metrics: &RaftMetrics<TypeConfig>, id: NodeId) -> bool {
    let last = metrics.last_log_index.unwrap_or(0);
    let matched = metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map_or(0, |log_id| log_id.index);
    let responsive = metrics
        .heartbeat
        .as_ref()
        .and_then(|acks| acks.get(&id).cloned().flatten())
        .is_some_and(|acked| acked.elapsed() < RESPONSIVE_WITHIN);
    matched + CAUGHT_UP_LAG >= last && responsive
}

/// What a group's leader says when a voter asks whether it may stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaveAnswer {
    /// Not the leader; ask the one named, if any.
    NotLeader(Option<MemberNode>),
    /// Every configuration keeps a majority of caught-up, responsive voters without it.
    Safe,
    /// Why the group would lose its majority if that voter stopped now.
    Unsafe(String),
}

/// Whether `group` keeps a quorum if voter `leaving` stops now, asked of this node as
/// its leader: in every configuration (two during a change), the other voters that have
/// caught up and answered a heartbeat recently, with the leader itself, must be a
/// majority.
pub fn may_leave(groups: &Groups, group: GroupId, leaving: NodeId) -> LeaveAnswer {
    let Some(raft) = groups.get(group) else {
        return LeaveAnswer::NotLeader(None);
    };
    let metrics = raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership();
    if metrics.current_leader != Some(groups.id) {
        let leader = metrics
            .current_leader
            .and_then(|id| membership.get_node(&id).cloned());
        return LeaveAnswer::NotLeader(leader);
    }
    for voters in membership.get_joint_config() {
        let staying = voters
            .iter()
            .filter(|id| **id != leaving)
            .filter(|id| **id == groups.id || can_take_over(&metrics, **id))
            .count();
        if staying * 2 <= voters.len() {
            return LeaveAnswer::Unsafe(format!(
                "only {staying} of its {} voters would remain caught up and in reach",
                voters.len()
            ));
        }
    }
    LeaveAnswer::Safe
}

/// Tells members removed from a group to drop their copy; best effort: a member that
/// is down drops it when its janitor notices (or never holds it again after a restart).
async fn release_removed(
    groups: &Groups,
    group: GroupId,
    removed: &[(NodeId, MemberNode)],
    removed_at: u64,
) {
    for (id, node) in removed {
        if *id == groups.id {
            continue;
        }
        let request = DropRequest { removed_at };
        let sent: Result<(), _> = groups
            .transport
            .call_incarnation(
                &node.raft_addr,
                Some(*id),
                group,
                op::DROP,
                &request,
                std::time::Duration::from_secs(5),
            )
            .await;
        if let Err(e) = sent {
            warn!(group, member = %node.name, error = %e, "could not tell a removed member to drop its copy");
        }
    }
}
