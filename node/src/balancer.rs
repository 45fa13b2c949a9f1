//! The balancer: on the cluster group's leader, moves every group's replicas toward the
//! placement of the current member set, a bounded number of moves at a time per node,
//! re-admits members that restarted under a new identity, and forgets drained members.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use openraft::async_runtime::WatchReceiver;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use dcache_protocol::cluster::{LeavingMember, RebalanceProgress};

use crate::cluster::{Cluster, MAX_CLUSTER_VOTERS};
use crate::lost::LEADERLESS_BEFORE_CHECK;
use crate::placement::Placement;
use crate::raft::cluster_state::ClusterView;
use crate::raft::membership::{self, ReconcileOutcome, ReconcileRequest, VoterReport};
use crate::raft::transport::op;
use crate::raft::{
    CLUSTER_GROUP, ClusterCommand, ClusterState, GroupId, MemberNode, NodeId, partition_group,
};

/// Every this many rounds the balancer checks whether a member restarted.
const IDENTITY_CHECK_EVERY: u64 = 3;
/// A group's leadership is handed to its preferred member at most this often, so that
/// a transfer that does not take (a slow or busy member) cannot keep the group in
/// transfer, refusing writes, round after round.
const TRANSFER_AT_MOST_EVERY: Duration = Duration::from_secs(3);

/// What the balancer last saw and did.
#[derive(Default)]
pub struct BalancerState {
    voters: HashMap<GroupId, BTreeSet<NodeId>>,
    /// The raft address of each group's leader, as last learned.
    leaders: HashMap<GroupId, String>,
    moving: BTreeSet<GroupId>,
    /// When each group was last seen moving (a step, or its leadership handed over).
    transfers: HashMap<GroupId, Instant>,
    /// Since when each group has had no leader the balancer could reach.
    leaderless_since: HashMap<GroupId, Instant>,
    moved: u64,
    rounds: u64,
    /// The placement being worked toward, fixed per cluster-state epoch so that the
    /// target does not shift while leaders move.
    target: Option<(u64, Placement)>,
    progress: RebalanceProgress,
}

impl Cluster {
    /// Runs the balancer every `every` until `stop`.
    pub async fn run_balancer(&self, every: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.balance_once().await,
                () = stop.cancelled() => return,
            }
        }
    }

    fn leads_cluster_group(&self) -> bool {
        self.groups.get(CLUSTER_GROUP).is_some_and(|raft| {
            raft.metrics().borrow_watched().current_leader == Some(self.groups.id)
        })
    }

    pub fn rebalance_progress(&self) -> RebalanceProgress {
        let mut progress = self.balancer().progress.clone();
        progress.bytes_moved = self.groups.transport.counters.snapshot_bytes_sent.get();
        progress
    }

    fn balancer(&self) -> std::sync::MutexGuard<'_, BalancerState> {
        self.balancer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One round: learn every group's voters from its leader and take the next step
    /// where a group differs from the placement.
    pub async fn balance_once(&self) {
        self.groups.drop_abandoned().await;
        self.refresh_voter_report().await;
        let Some(state) = self.state() else { return };
        if !self.leads_cluster_group() {
            let mut balancer = self.balancer();
            if balancer.progress.active {
                *balancer = BalancerState::default();
            }
            return;
        }
        let round = {
            let mut balancer = self.balancer();
            balancer.rounds += 1;
            balancer.rounds
        };
        if round % IDENTITY_CHECK_EVERY == 1 && self.readmit_restarted_members(&state).await {
            return;
        }

        let placement = self.placement_keeping_leaders(&state);
        self.publish_leaders(&state).await;
        let desired = desired_groups(&state, &placement);
        let live: BTreeSet<NodeId> = state.members_and_leaving().map(|m| m.raft_id).collect();
        let requests = self.plan_moves(&desired, &live);
        let state_ref = &state;
        let outcomes = join_all(requests.into_iter().map(|(group, request)| async move {
            let outcome = self.reconcile(group, state_ref, request).await;
            (group, outcome)
        }))
        .await;

        let (drained, overdue) = {
            let mut balancer = self.balancer();
            let mut unknown = 0;
            for (group, outcome) in outcomes {
                let (voters, moving) = match outcome {
                    Some(ReconcileOutcome::InPlace { voters }) => (voters, false),
                    Some(ReconcileOutcome::Moving { voters }) => (voters, true),
                    Some(ReconcileOutcome::Waiting { voters }) => (voters, false),
                    Some(ReconcileOutcome::NotLeader(_)) | None => {
                        unknown += 1;
                        balancer
                            .leaderless_since
                            .entry(group)
                            .or_insert_with(Instant::now);
                        continue;
                    }
                };
                balancer.leaderless_since.remove(&group);
                let voters: BTreeSet<NodeId> = voters.into_iter().collect();
                if let Some(before) = balancer.voters.get(&group) {
                    balancer.moved += voters.difference(before).count() as u64;
                }
                balancer.voters.insert(group, voters);
                if moving {
                    balancer.moving.insert(group);
                } else {
                    balancer.moving.remove(&group);
                }
            }
            let to_move: u64 = desired
                .iter()
                .map(|(group, request)| {
                    let current = balancer.voters.get(group);
                    request
                        .voters
                        .keys()
                        .filter(|id| current.is_none_or(|voters| !voters.contains(id)))
                        .count() as u64
                })
                .sum();
            let leaving: Vec<LeavingMember> = state
                .leaving
                .iter()
                .map(|(name, member)| LeavingMember {
                    name: name.clone(),
                    replicas: balancer
                        .voters
                        .values()
                        .filter(|voters| voters.contains(&member.raft_id))
                        .count() as u64,
                })
                .collect();
            let drained: Vec<String> = if unknown == 0 {
                leaving
                    .iter()
                    .filter(|m| m.replicas == 0)
                    .map(|m| m.name.clone())
                    .collect()
            } else {
                Vec::new()
            };
            let live: BTreeSet<NodeId> = state.members_and_leaving().map(|m| m.raft_id).collect();
            let former_voters = desired
                .keys()
                .filter_map(|group| {
                    let former: BTreeSet<NodeId> = balancer
                        .voters
                        .get(group)?
                        .difference(&live)
                        .copied()
                        .collect();
                    (!former.is_empty()).then_some((*group, former))
                })
                .collect();
            self.groups.publish_voter_report(VoterReport {
                epoch: state.epoch,
                unknown_groups: unknown,
                former_voters,
            });
            balancer.progress = RebalanceProgress {
                active: true,
                epoch: state.epoch,
                replicas_to_move: to_move,
                moving: balancer.moving.len() as u64,
                moved: balancer.moved,
                bytes_moved: 0,
                leaving,
                unknown_groups: unknown,
            };
            let overdue: Vec<GroupId> = balancer
                .leaderless_since
                .iter()
                .filter(|(_, since)| since.elapsed() >= LEADERLESS_BEFORE_CHECK)
                .map(|(group, _)| *group)
                .collect();
            (drained, overdue)
        };
        if !overdue.is_empty() {
            self.reform_lost_partitions(&state, &placement, &overdue)
                .await;
        }

        for name in drained {
            info!(member = %name, "former member holds no replica any more; forgetting it");
            let deadline = Instant::now() + Duration::from_secs(5);
            if let Err(e) = self
                .propose_cluster_change(&state, ClusterCommand::Forget(name), deadline)
                .await
            {
                warn!(error = %e, "could not forget a drained member");
            }
        }
    }

    /// The placement of `state`'s members, keeping each partition's current leader
    /// where it stays a replica and the spread allows, so that a membership change
    /// moves as few leaders as possible.
    fn placement_keeping_leaders(&self, state: &ClusterState) -> Placement {
        let mut balancer = self.balancer();
        if let Some((epoch, target)) = &balancer.target
            && *epoch == state.epoch
        {
            return target.clone();
        }
        let name_at = |addr: &String| {
            state
                .members
                .values()
                .find(|m| &m.node.raft_addr == addr)
                .map(|m| m.node.name.clone())
                .unwrap_or_default()
        };
        let current = Placement {
            replicas: Vec::new(),
            leaders: (0..state.partitions)
                .map(|p| {
                    balancer
                        .leaders
                        .get(&partition_group(p))
                        .map(name_at)
                        .unwrap_or_default()
                })
                .collect(),
        };
        let names: Vec<&String> = state.members.keys().collect();
        let target = Placement::compute_from(
            Some(&current),
            &names,
            state.partitions,
            state.replication,
            state.vnodes,
        );
        // Fixed only once every group's leader is known: a target computed from a
        // partial view would move leaders that did not need to move.
        if current.leaders.iter().all(|leader| !leader.is_empty()) {
            balancer.target = Some((state.epoch, target.clone()));
        }
        target
    }

    /// Publishes the leaders of this member set's target, once it is fixed, so that
    /// every node names them for partitions it holds no replica of (Redis Cluster
    /// clients load their slot map from any node and must find the same masters).
    async fn publish_leaders(&self, view: &ClusterView) {
        let epoch = view.state.epoch;
        let leaders = match &self.balancer().target {
            Some((target_epoch, target)) if *target_epoch == epoch => target.leaders.clone(),
            _ => return,
        };
        if view
            .published_leaders
            .as_ref()
            .is_some_and(|published| published.epoch == epoch && published.leaders == leaders)
        {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let change = ClusterCommand::SetLeaders { epoch, leaders };
        if let Err(e) = self
            .propose_cluster_change(&view.state, change, deadline)
            .await
        {
            warn!(epoch, error = %e, "cannot publish the partition leaders; retrying next round");
        }
    }

    /// Decides which groups may start a move this round: at most
    /// `max_moves_per_node` groups moving replicas onto any one node, except repairs:
    /// a group that still counts a voter who is gone (a member that restarted without
    /// its state, under a new identity) takes its replacement at once, since it is one
    /// failure from losing its majority and the data must reach that node anyway.
    fn plan_moves(
        &self,
        desired: &BTreeMap<GroupId, ReconcileRequest>,
        live: &BTreeSet<NodeId>,
    ) -> Vec<(GroupId, ReconcileRequest)> {
        let mut balancer = self.balancer();
        let now = Instant::now();
        // A group that was moving may have just had its leadership handed over.
        let moving: Vec<GroupId> = balancer.moving.iter().copied().collect();
        for group in moving {
            balancer.transfers.insert(group, now);
        }
        let balancer = &*balancer;
        let mut load: HashMap<NodeId, usize> = HashMap::new();
        let incoming = |group: &GroupId, request: &ReconcileRequest| -> Vec<NodeId> {
            let current = balancer.voters.get(group);
            request
                .voters
                .keys()
                .filter(|id| current.is_none_or(|voters| !voters.contains(id)))
                .copied()
                .collect()
        };
        for group in &balancer.moving {
            if let Some(request) = desired.get(group) {
                for node in incoming(group, request) {
                    *load.entry(node).or_default() += 1;
                }
            }
        }
        desired
            .iter()
            .map(|(group, request)| {
                let mut request = request.clone();
                if balancer
                    .transfers
                    .get(group)
                    .is_some_and(|at| now.duration_since(*at) < TRANSFER_AT_MOST_EVERY)
                {
                    request.preferred_leader = None;
                }
                let nodes = incoming(group, &request);
                let repair = balancer
                    .voters
                    .get(group)
                    .is_some_and(|voters| voters.iter().any(|id| !live.contains(id)));
                if repair {
                    request.may_start = true;
                    return (*group, request);
                }
                request.may_start = balancer.moving.contains(group)
                    || nodes
                        .iter()
                        .all(|n| load.get(n).copied().unwrap_or(0) < self.ring.max_moves_per_node);
                if request.may_start && !balancer.moving.contains(group) {
                    for node in nodes {
                        *load.entry(node).or_default() += 1;
                    }
                }
                (*group, request)
            })
            .collect()
    }

    /// Sends `request` to `group`'s leader, found from the last known leader, the
    /// members holding it, or any member.
    async fn reconcile(
        &self,
        group: GroupId,
        state: &ClusterState,
        request: ReconcileRequest,
    ) -> Option<ReconcileOutcome> {
        let mut candidates: Vec<String> = Vec::new();
        if let Some(leader) = self.balancer().leaders.get(&group) {
            candidates.push(leader.clone());
        }
        candidates.extend(request.voters.values().map(|n| n.raft_addr.clone()));
        candidates.extend(
            state
                .members_and_leaving()
                .map(|m| m.node.raft_addr.clone()),
        );
        let mut tried = BTreeSet::new();
        let mut queue = std::collections::VecDeque::from(candidates);
        while let Some(addr) = queue.pop_front() {
            if !tried.insert(addr.clone()) {
                continue;
            }
            // Groups led here are asked here, not over a stream to this node itself.
            let answer = if addr == self.groups.me.raft_addr {
                membership::reconcile(&self.groups, group, request.clone()).await
            } else {
                self.groups
                    .transport
                    .call::<_, ReconcileOutcome>(
                        &addr,
                        group,
                        op::RECONCILE,
                        &request,
                        Duration::from_secs(5),
                    )
                    .await
                    .map_err(|e| e.to_string())
            };
            match answer {
                Ok(ReconcileOutcome::NotLeader(Some(leader))) => queue.push_front(leader.raft_addr),
                Ok(ReconcileOutcome::NotLeader(None)) => {}
                Ok(outcome) => {
                    self.balancer().leaders.insert(group, addr);
                    return Some(outcome);
                }
                Err(e) => tracing::debug!(group, %addr, error = %e, "reconcile failed"),
            }
        }
        None
    }

    /// Asks every member who it is now; a member that restarted without its state
    /// answers with a new Raft identity and is re-admitted under it. True if the member
    /// set changed.
    async fn readmit_restarted_members(&self, state: &ClusterState) -> bool {
        let answers = join_all(state.members.values().map(|member| async move {
            let identity = self
                .fetch_identity(&member.node.raft_addr, Duration::from_secs(1))
                .await;
            (member, identity.ok())
        }))
        .await;
        let mut members = state.members.clone();
        let mut changed = false;
        for (member, identity) in answers {
            if let Some(identity) = identity
                && identity.node.name == member.node.name
                && identity.raft_id != member.raft_id
            {
                info!(member = %member.node.name, old = member.raft_id, new = identity.raft_id, "member restarted under a new identity; re-admitting it");
                if let Some(entry) = members.get_mut(&member.node.name) {
                    entry.raft_id = identity.raft_id;
                    entry.node = identity.node;
                }
                changed = true;
            }
        }
        if !changed {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        match self
            .propose_cluster_change(state, ClusterCommand::SetMembers(members), deadline)
            .await
        {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, "could not re-admit a restarted member");
                false
            }
        }
    }
}

/// The voters (and learners) every group should have under `state`'s placement.
fn desired_groups(
    state: &ClusterState,
    placement: &Placement,
) -> BTreeMap<GroupId, ReconcileRequest> {
    let node = |name: &String| -> (NodeId, MemberNode) {
        let member = &state.members[name];
        (member.raft_id, member.node.clone())
    };
    let mut desired = BTreeMap::new();
    let names: Vec<&String> = state.members.keys().collect();
    desired.insert(
        CLUSTER_GROUP,
        ReconcileRequest {
            voters: names
                .iter()
                .take(MAX_CLUSTER_VOTERS)
                .map(|n| node(n))
                .collect(),
            learners: names
                .iter()
                .skip(MAX_CLUSTER_VOTERS)
                .map(|n| node(n))
                .collect(),
            preferred_leader: None,
            may_start: true,
        },
    );
    for (partition, replicas) in placement.replicas.iter().enumerate() {
        desired.insert(
            partition_group(partition as u32),
            ReconcileRequest {
                voters: replicas.iter().map(node).collect(),
                learners: BTreeMap::new(),
                preferred_leader: Some(state.members[&placement.leaders[partition]].raft_id),
                may_start: true,
            },
        );
    }
    desired
}
