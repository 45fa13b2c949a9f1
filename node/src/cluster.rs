//! The node as a member of a cluster: initialising it, proposing writes to the right
//! group, and finding where a request for a partition must go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcache_protocol::PartitionId;
use futures_util::future::join_all;
use openraft::async_runtime::WatchReceiver;
use tracing::{info, warn};

pub use dcache_protocol::cluster::{ClusterStatus, InitRequest, MembersRequest, PartitionStatus};

use crate::balancer::BalancerState;
use crate::raft::cluster_state::ClusterView;
use crate::raft::cluster_state::Member;
use crate::raft::groups::{Groups, WriteRefused};
use crate::raft::membership::VoterReport;
use crate::raft::rpc::{Identity, WriteOutcome};
use crate::raft::transport::op;
use crate::raft::{
    CLUSTER_GROUP, ClusterCommand, ClusterState, Command, CommandResult, GroupId, MemberNode,
    NodeId, partition_group,
};

/// Voters of the cluster group at most; further members follow it as learners.
pub const MAX_CLUSTER_VOTERS: usize = 5;

/// How far (in log entries) a replica may trail the cluster's commit and still count as
/// caught up for `/ready`: entries keep arriving while it is asked.
pub const READY_LAG: u64 = 64;

/// How long admin calls keep retrying a cluster that is still electing leaders.
const ADMIN_DEADLINE: Duration = Duration::from_secs(20);

/// Ring parameters a cluster is created with.
#[derive(Debug, Clone, Copy)]
pub struct RingSettings {
    pub replication: usize,
    pub vnodes: u32,
    /// Moves the balancer runs at once onto any one node.
    pub max_moves_per_node: usize,
}

/// Where a request for a partition has to be served.
#[derive(Debug, Clone, PartialEq)]
pub enum Route<T> {
    /// Served here.
    Here(T),
    /// Another node must serve it (its leader, or a replica): how to reach it.
    Forward(MemberNode),
    /// Nobody can right now; nothing was done.
    Unavailable(String),
    /// A write was proposed here and got no outcome: it may still be applied.
    OutcomeUnknown(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

pub struct Cluster {
    pub groups: Arc<Groups>,
    pub ring: RingSettings,
    pub(crate) balancer: std::sync::Mutex<BalancerState>,
    /// Set once this incarnation held, as a voter, every replica the placement gives
    /// it; see [`crate::readiness`].
    pub(crate) filled: std::sync::atomic::AtomicBool,
    /// The cluster leader's last [`VoterReport`], fetched while not yet filled.
    pub(crate) voter_report: std::sync::Mutex<Option<VoterReport>>,
}

impl Cluster {
    pub fn new(groups: Arc<Groups>, ring: RingSettings) -> Self {
        Self {
            groups,
            ring,
            balancer: Default::default(),
            filled: Default::default(),
            voter_report: Default::default(),
        }
    }

    /// The cluster state as this node knows it, with its placement: shared, not
    /// copied.
    pub fn state(&self) -> Option<Arc<ClusterView>> {
        self.groups.cluster_state()
    }

    /// Creates the cluster: learns each member's Raft identity, starts the cluster group
    /// and every partition group on its replicas. Repeating it with the same cluster id
    /// changes nothing; another id is refused.
    pub async fn init(&self, request: InitRequest) -> Result<ClusterState, AdminError> {
        validate_init(&request)?;
        if let Some(state) = self.state() {
            return if state.cluster_id == request.cluster_id {
                Ok(state.state.clone())
            } else {
                Err(AdminError::Conflict(format!(
                    "this node already belongs to cluster {:?}; refusing to initialise {:?}",
                    state.cluster_id, request.cluster_id
                )))
            };
        }
        let deadline = Instant::now() + ADMIN_DEADLINE;
        let members = self.identify(&request.members, deadline).await?;
        let state = ClusterState {
            cluster_id: request.cluster_id.clone(),
            partitions: self.groups.partitions,
            replication: self.ring.replication,
            vnodes: self.ring.vnodes,
            members,
            leaving: BTreeMap::new(),
            epoch: 1,
            lost: Vec::new(),
        };

        let voters: BTreeMap<NodeId, MemberNode> = state
            .members
            .values()
            .take(MAX_CLUSTER_VOTERS)
            .map(|m| (m.raft_id, m.node.clone()))
            .collect();
        let first_voter = voters
            .values()
            .next()
            .expect("validated: at least one member");
        self.initialize_group(first_voter, CLUSTER_GROUP, &voters, deadline)
            .await?;
        let candidates: Vec<MemberNode> = voters.values().cloned().collect();
        self.propose(
            CLUSTER_GROUP,
            Command::Cluster(ClusterCommand::Init(state.clone())),
            &candidates,
            deadline,
        )
        .await
        .map_err(AdminError::Unavailable)?;

        let placement = state.compute_placement();
        let starts = placement
            .replicas
            .iter()
            .enumerate()
            .map(|(partition, replicas)| {
                let members: BTreeMap<NodeId, MemberNode> = replicas
                    .iter()
                    .map(|name| {
                        let member = &state.members[name];
                        (member.raft_id, member.node.clone())
                    })
                    .collect();
                let leader = &state.members[&placement.leaders[partition]].node;
                let group = partition_group(partition as PartitionId);
                async move {
                    self.initialize_group(leader, group, &members, deadline)
                        .await
                }
            });
        for started in join_all(starts).await {
            started?;
        }
        info!(cluster_id = %state.cluster_id, members = state.members.len(), "cluster initialised");
        Ok(state)
    }

    /// Learns each member's current Raft identity from its Raft endpoint.
    async fn identify(
        &self,
        members: &[MemberNode],
        deadline: Instant,
    ) -> Result<BTreeMap<String, Member>, AdminError> {
        let identities = join_all(members.iter().map(|m| self.identity(m, deadline))).await;
        let mut identified = BTreeMap::new();
        for identity in identities {
            let identity = identity?;
            identified.insert(
                identity.node.name.clone(),
                Member {
                    raft_id: identity.raft_id,
                    node: identity.node,
                },
            );
        }
        Ok(identified)
    }

    /// Replaces the member set (`PUT /cluster/members`): new members are added, missing
    /// ones drained, and members that restarted under a new identity re-admitted.
    pub async fn set_members(&self, members: Vec<MemberNode>) -> Result<ClusterState, AdminError> {
        validate_members(&members)?;
        let Some(state) = self.state() else {
            return Err(AdminError::Conflict(
                "the cluster is not initialised yet: POST /cluster/init first".into(),
            ));
        };
        let deadline = Instant::now() + ADMIN_DEADLINE;
        let identified = self.identify(&members, deadline).await?;
        self.propose_cluster_change(&state, ClusterCommand::SetMembers(identified), deadline)
            .await
            .map_err(AdminError::Unavailable)?;
        Ok(self
            .state()
            .map_or(state.state.clone(), |view| view.state.clone()))
    }

    /// Proposes a change of the cluster state through the cluster group's leader.
    pub(crate) async fn propose_cluster_change(
        &self,
        state: &ClusterState,
        change: ClusterCommand,
        deadline: Instant,
    ) -> Result<CommandResult, String> {
        let candidates: Vec<MemberNode> = state.members.values().map(|m| m.node.clone()).collect();
        self.propose(
            CLUSTER_GROUP,
            Command::Cluster(change),
            &candidates,
            deadline,
        )
        .await
    }

    /// Who answers at the Raft endpoint `raft_addr` now.
    pub(crate) async fn fetch_identity(
        &self,
        raft_addr: &str,
        timeout: Duration,
    ) -> Result<Identity, reqwest::Error> {
        self.groups
            .transport
            .raft_request(reqwest::Method::GET, raft_addr, "/raft/identity")
            .timeout(timeout)
            .send()
            .await?
            .error_for_status()?
            .json::<Identity>()
            .await
    }

    async fn identity(
        &self,
        member: &MemberNode,
        deadline: Instant,
    ) -> Result<Identity, AdminError> {
        loop {
            match self
                .fetch_identity(&member.raft_addr, Duration::from_secs(2))
                .await
            {
                Ok(identity) if identity.node.name == member.name => return Ok(identity),
                Ok(identity) => {
                    return Err(AdminError::Invalid(format!(
                        "{} answers as member {:?}, not {:?}",
                        member.raft_addr, identity.node.name, member.name
                    )));
                }
                Err(e) if Instant::now() < deadline => {
                    warn!(member = %member.name, error = %e, "member not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(AdminError::Unavailable(format!(
                        "member {:?} unreachable at {}: {e}",
                        member.name, member.raft_addr
                    )));
                }
            }
        }
    }

    pub(crate) async fn initialize_group(
        &self,
        at: &MemberNode,
        group: GroupId,
        members: &BTreeMap<NodeId, MemberNode>,
        deadline: Instant,
    ) -> Result<(), AdminError> {
        // Meant for the incarnation named in `members`: a node that restarted since
        // must not start the group under a membership that does not hold it.
        let incarnation = members
            .iter()
            .find(|(_, node)| *node == at)
            .map(|(id, _)| *id);
        loop {
            let sent: Result<(), _> = self
                .groups
                .transport
                .call_incarnation(
                    &at.raft_addr,
                    incarnation,
                    group,
                    op::INITIALIZE,
                    members,
                    Duration::from_secs(5),
                )
                .await;
            match sent {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    warn!(group, error = %e, "initialising group failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(AdminError::Unavailable(format!(
                        "cannot start group {group}: {e}"
                    )));
                }
            }
        }
    }

    /// Proposes `command` to `group` wherever its leader is, following leader hints
    /// from `candidates` on, until `deadline`.
    pub async fn propose(
        &self,
        group: GroupId,
        command: Command,
        candidates: &[MemberNode],
        deadline: Instant,
    ) -> Result<CommandResult, String> {
        let mut next: Option<String> = None;
        let mut attempt = 0usize;
        loop {
            let addr = next.take().or_else(|| {
                candidates
                    .get(attempt % candidates.len().max(1))
                    .map(|m| m.raft_addr.clone())
            });
            let outcome = match addr {
                Some(addr) => self
                    .groups
                    .transport
                    .call::<_, WriteOutcome>(
                        &addr,
                        group,
                        op::WRITE,
                        &command,
                        Duration::from_secs(5),
                    )
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("no member to propose to".to_owned()),
            };
            match outcome {
                Ok(WriteOutcome::Applied(result)) => return Ok(result),
                Ok(WriteOutcome::NotLeader(Some(leader))) => next = Some(leader.raft_addr),
                Ok(WriteOutcome::NotLeader(None)) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(WriteOutcome::NotLeader(None)) => {
                    return Err(format!("group {group} has no leader"));
                }
                Err(e) => return Err(e),
            }
            attempt += 1;
        }
    }

    /// Applies a write to `partition` here if this node leads it, else says where to go.
    pub async fn write(&self, partition: PartitionId, command: Command) -> Route<CommandResult> {
        match self.groups.write(partition_group(partition), command).await {
            Ok(result) => Route::Here(result),
            Err(refused) => self.reroute(partition, refused),
        }
    }

    /// Whether a read of `partition` can be served here: for a linearizable read, once
    /// this node (the leader) has confirmed its leadership and applied everything
    /// committed before the read (read-index); for a local read, if it holds a replica
    /// that votes (is not still catching up as a learner).
    pub async fn read(&self, partition: PartitionId, linearizable: bool) -> Route<()> {
        let group = partition_group(partition);
        if !linearizable {
            return match self.groups.check_local_read(group) {
                Ok(()) => Route::Here(()),
                Err(refused) => self.reroute(partition, refused),
            };
        }
        match self.groups.linearize(group).await {
            Ok(()) => Route::Here(()),
            Err(refused) => self.reroute(partition, refused),
        }
    }

    fn reroute<T>(&self, partition: PartitionId, refused: WriteRefused) -> Route<T> {
        match refused {
            WriteRefused::NotLeader(Some(leader)) => Route::Forward(leader),
            WriteRefused::NotHosted => match self.replica(partition) {
                Some(member) => Route::Forward(member),
                None => Route::Unavailable(format!(
                    "partition {partition} has no known replica: is the cluster initialised?"
                )),
            },
            WriteRefused::NotLeader(None) => {
                Route::Unavailable(format!("partition {partition} has no leader right now"))
            }
            WriteRefused::Unavailable(why) => {
                Route::Unavailable(format!("partition {partition} is unavailable: {why}"))
            }
            WriteRefused::OutcomeUnknown(why) => {
                Route::OutcomeUnknown(format!("partition {partition}: {why}"))
            }
        }
    }

    /// A node holding `partition`, for a request this node cannot serve.
    fn replica(&self, partition: PartitionId) -> Option<MemberNode> {
        let view = self.state()?;
        view.placement_leader(partition).map(|m| m.node.clone())
    }

    /// What `/cluster` reports.
    pub fn status(&self) -> ClusterStatus {
        let state = self.state();
        let placement = state.as_ref().map(|view| &view.placement);
        let name_of = |raft_id: NodeId| {
            state
                .as_ref()
                .and_then(|s| s.member_by_raft_id(raft_id))
                .map_or_else(|| format!("raft:{raft_id}"), |m| m.node.name.clone())
        };
        let partitions = (0..self.groups.partitions)
            .map(|partition| {
                let desired = placement
                    .as_ref()
                    .map(|p| p.replicas[partition as usize].clone())
                    .unwrap_or_default();
                match self.groups.get(partition_group(partition)) {
                    Some(raft) => {
                        let metrics = raft.metrics().borrow_watched().clone();
                        let voters: Vec<String> = metrics
                            .membership_config
                            .membership()
                            .voter_ids()
                            .map(name_of)
                            .collect();
                        PartitionStatus {
                            partition,
                            replicas: desired,
                            voters,
                            leader: metrics.current_leader.map(name_of),
                            term: Some(metrics.current_term),
                            last_applied: metrics.last_applied.map(|id| id.index),
                            hosted: true,
                        }
                    }
                    None => PartitionStatus {
                        partition,
                        replicas: desired,
                        voters: Vec::new(),
                        leader: None,
                        term: None,
                        last_applied: None,
                        hosted: false,
                    },
                }
            })
            .collect();
        let cluster_leader = self
            .groups
            .get(CLUSTER_GROUP)
            .and_then(|raft| raft.metrics().borrow_watched().current_leader)
            .map(name_of);
        ClusterStatus {
            cluster_id: state.as_ref().map(|s| s.cluster_id.clone()),
            cluster_leader,
            leaving: state
                .as_ref()
                .map(|s| s.leaving.values().cloned().collect())
                .unwrap_or_default(),
            rebalance: self.rebalance_progress(),
            epoch: state.as_ref().map_or(0, |s| s.epoch),
            node: self.groups.me.name.clone(),
            raft_id: self.groups.id,
            members: state
                .as_ref()
                .map(|s| s.members.values().cloned().collect())
                .unwrap_or_default(),
            partitions,
            lost_partitions: state.map(|s| s.lost.clone()).unwrap_or_default(),
        }
    }

    /// Partitions this node leads and holds.
    pub fn partition_counts(&self) -> (u32, u32) {
        let mut led = 0;
        let mut held = 0;
        for (group, raft) in self.groups.initialized() {
            if group == CLUSTER_GROUP {
                continue;
            }
            held += 1;
            if raft.metrics().borrow_watched().current_leader == Some(self.groups.id) {
                led += 1;
            }
        }
        (led, held)
    }
}

/// A group as people call it.
pub fn group_name(group: GroupId) -> String {
    match crate::raft::group_partition(group) {
        None => "the cluster group".into(),
        Some(partition) => format!("partition {partition}"),
    }
}

fn validate_init(request: &InitRequest) -> Result<(), AdminError> {
    if request.cluster_id.trim().is_empty() {
        return Err(AdminError::Invalid("cluster_id must not be empty".into()));
    }
    validate_members(&request.members)
}

fn validate_members(members: &[MemberNode]) -> Result<(), AdminError> {
    let request = MembersRequest {
        members: members.to_vec(),
    };
    if request.members.is_empty() {
        return Err(AdminError::Invalid(
            "members must name at least one node".into(),
        ));
    }
    let mut names: Vec<&str> = request.members.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(AdminError::Invalid(format!(
            "member {:?} is listed twice",
            pair[0]
        )));
    }
    if let Some(member) = request
        .members
        .iter()
        .find(|m| m.name.is_empty() || m.api_addr.is_empty() || m.raft_addr.is_empty())
    {
        return Err(AdminError::Invalid(format!(
            "every member needs name, api_addr and raft_addr: {member:?}"
        )));
    }
    Ok(())
}
