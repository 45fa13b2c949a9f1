//! The Raft groups this node hosts, created on demand: when the cluster is initialised
//! or when a peer first replicates a group to this node.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft_multi::GroupNetworkFactory;
use tracing::info;

use super::cluster_state::{ClusterView, SharedClusterView};
use super::log_store::LogStore;
use super::membership::{VoterReport, can_take_over};
use super::state_machine::{GroupStateMachine, Target};
use super::transport::Transport;
use super::{
    Command, CommandResult, GroupId, GroupRaft, MemberNode, NodeId, TypeConfig, group_partition,
};
use crate::persist::Disk;
use crate::store::Store;

/// How long a write or a linearizable read waits for a quorum before the client is told
/// to retry: a leader cut off from its followers must not hold requests forever.
pub const QUORUM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a write could not be applied here.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteRefused {
    /// This node does not host the group.
    NotHosted,
    /// Another node leads the group (if known).
    NotLeader(Option<MemberNode>),
    /// The group cannot take writes right now; nothing was proposed.
    Unavailable(String),
    /// The write was proposed but no outcome came within [`QUORUM_WAIT`] (or the
    /// leadership was lost meanwhile): it may still be committed.
    OutcomeUnknown(String),
}

pub struct Groups {
    pub id: NodeId,
    pub me: MemberNode,
    pub transport: Transport,
    pub partitions: u32,
    /// How long a leader serves linearizable reads on a quorum's last acknowledgement
    /// (see `ReadPolicy::lease`); `None`: a read-index round for every batch of reads.
    pub lease: Option<Duration>,
    /// A node restarted from its disk grants no vote before this instant (see
    /// [`Self::withholds_votes`]).
    pub grants_votes_from: Option<Instant>,
    /// The term in which this node last handed a group's leadership over: the new
    /// leader may be elected at once, lease or not, so no lease read in that term.
    handed_over_in_term: Mutex<HashMap<GroupId, u64>>,
    config: Arc<openraft::Config>,
    store: Store,
    cluster: SharedClusterView,
    groups: RwLock<HashMap<GroupId, GroupRaft>>,
    creating: tokio::sync::Mutex<()>,
    /// Set when the node is stopping: it hands its leaderships away and takes none.
    stepping_down: AtomicBool,
    /// With persistence: where logs and snapshots are kept.
    pub disk: Option<Arc<Disk>>,
    /// What this node's balancer learned of every group's voters in its last round as
    /// the cluster group's leader.
    voter_report: RwLock<Option<VoterReport>>,
}

impl Groups {
    pub fn new(
        id: NodeId,
        me: MemberNode,
        config: Arc<openraft::Config>,
        transport: Transport,
        store: Store,
        partitions: u32,
    ) -> Self {
        Self {
            id,
            me,
            transport,
            partitions,
            lease: None,
            grants_votes_from: None,
            handed_over_in_term: Mutex::default(),
            config,
            store,
            cluster: SharedClusterView::default(),
            groups: RwLock::default(),
            creating: tokio::sync::Mutex::new(()),
            stepping_down: AtomicBool::new(false),
            disk: None,
            voter_report: RwLock::default(),
        }
    }

    /// Starts every group the data directory holds, as it was: a node restarted with
    /// its disk is back in its groups under its own identity before it serves.
    pub async fn restore(&self) -> Result<usize, String> {
        let Some(disk) = &self.disk else {
            return Ok(0);
        };
        let groups = disk.recovered_groups();
        for &group in &groups {
            self.get_or_create(group, true).await?;
        }
        if !groups.is_empty() {
            info!(groups = groups.len(), "restored the groups kept on disk");
        }
        Ok(groups.len())
    }

    pub fn get(&self, group: GroupId) -> Option<GroupRaft> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }

    /// Every hosted group, by id.
    pub fn all(&self) -> BTreeMap<GroupId, GroupRaft> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, raft)| (*id, raft.clone()))
            .collect()
    }

    /// The current cluster state and its placement, shared (not copied).
    pub fn cluster_state(&self) -> Option<Arc<ClusterView>> {
        self.cluster.get()
    }

    /// The group's Raft, created empty (to be initialised or replicated to) if absent
    /// and `create` allows.
    pub async fn get_or_create(&self, group: GroupId, create: bool) -> Result<GroupRaft, String> {
        if let Some(raft) = self.get(group) {
            return Ok(raft);
        }
        if !create {
            return Err(format!("group {group} is not placed on this node"));
        }
        if group > self.partitions {
            return Err(format!(
                "no group {group}: this node has {} partitions",
                self.partitions
            ));
        }
        let _creating = self.creating.lock().await;
        if let Some(raft) = self.get(group) {
            return Ok(raft);
        }
        let target = match group_partition(group) {
            None => Target::Cluster(self.cluster.clone()),
            Some(partition) => Target::Partition {
                partition,
                partitions: self.partitions,
                store: self.store.clone(),
            },
        };
        let (log, machine) = match &self.disk {
            None => (LogStore::memory(), GroupStateMachine::new(target)),
            Some(disk) => {
                let recovered = disk.take_recovered(group);
                let machine =
                    GroupStateMachine::durable(target, disk.clone(), group, recovered.snapshot)
                        .map_err(|e| format!("cannot restore group {group}: {e}"))?;
                (
                    LogStore::durable(group, recovered.log, disk.wal.clone()),
                    machine,
                )
            }
        };
        let machine = machine.with_log(log.clone());
        let raft = GroupRaft::new(
            self.id,
            self.config.clone(),
            GroupNetworkFactory::new(self.transport.clone(), group),
            log,
            machine,
        )
        .await
        .map_err(|e| format!("cannot start group {group}: {e}"))?;
        raft.set_metrics_recorder(Some(self.transport.counters.recorder()))
            .await
            .map_err(|e| format!("cannot start group {group}: {e}"))?;
        info!(group, "raft group started");
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, raft.clone());
        Ok(raft)
    }

    /// Proposes `command` to `group` if this node leads it.
    pub async fn write(
        &self,
        group: GroupId,
        command: Command,
    ) -> Result<CommandResult, WriteRefused> {
        let raft = self.get(group).ok_or(WriteRefused::NotHosted)?;
        match tokio::time::timeout(QUORUM_WAIT, raft.client_write(command)).await {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(error)) => Err(refusal(error)),
            Err(_) => Err(WriteRefused::OutcomeUnknown(format!(
                "proposed, but not committed within {QUORUM_WAIT:?}"
            ))),
        }
    }

    /// Whether a local read of `group` (`consistency=local`, RESP after `READONLY`) may
    /// be answered from this node's store: by any replica that votes in the group. A
    /// learner is still copying the group's data (a node that joined, or restarted
    /// empty) and would answer "not found" for keys written long ago, so its reads go
    /// to the leader.
    pub fn check_local_read(&self, group: GroupId) -> Result<(), WriteRefused> {
        let raft = self.get(group).ok_or(WriteRefused::NotHosted)?;
        let metrics = raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        if membership.voter_ids().any(|id| id == self.id) {
            return Ok(());
        }
        Err(WriteRefused::NotLeader(
            metrics
                .current_leader
                .and_then(|leader| membership.get_node(&leader).cloned()),
        ))
    }

    /// Waits until a read on this node reflects every write committed before the call,
    /// if this node leads `group`: at once while its lease holds, else after a quorum
    /// confirmed its leadership (read-index).
    pub async fn linearize(&self, group: GroupId) -> Result<(), WriteRefused> {
        let raft = self.get(group).ok_or(WriteRefused::NotHosted)?;
        if self.lease_holds(group, &raft) {
            self.transport.counters.lease_reads.inc();
            return Ok(());
        }
        self.transport.counters.read_index_reads.inc();
        let linearizer = match self.lease {
            Some(lease) => openraft::LinearizerOption::new(Some(lease), true),
            None => openraft::ReadPolicy::ReadIndex.into(),
        };
        match raft.ensure_linearizable(linearizer).await {
            Ok(_) => Ok(()),
            Err(error) => match error.forward_to_leader() {
                Some(forward) => Err(WriteRefused::NotLeader(forward.leader_node.clone())),
                None => Err(WriteRefused::Unavailable(error.to_string())),
            },
        }
    }

    /// Whether this node may answer a linearizable read of `group` from its state
    /// machine as it is, without asking the group's core: it leads the group in a
    /// term in which it handed nothing over, a quorum acknowledged it less than the
    /// lease ago (so no other leader can have been elected since), and it has applied
    /// an entry of its own term (so everything committed before its term is applied;
    /// what it committed itself was applied before it was acknowledged).
    fn lease_holds(&self, group: GroupId, raft: &GroupRaft) -> bool {
        let Some(lease) = self.lease else {
            return false;
        };
        let metrics = raft.metrics();
        let metrics = metrics.borrow_watched();
        let term = metrics.current_term;
        let leading = metrics.state == openraft::ServerState::Leader
            && metrics.current_leader == Some(self.id)
            && metrics.vote.is_committed();
        let applied_own_term = metrics
            .last_applied
            .is_some_and(|applied| applied.committed_leader_id().term == term);
        let acknowledged = metrics
            .last_quorum_acked
            .is_some_and(|at| openraft::Instant::elapsed(&*at) < lease);
        leading
            && applied_own_term
            && acknowledged
            && self
                .handed_over_in(group)
                .is_none_or(|handed| handed < term)
    }

    fn handed_over_in(&self, group: GroupId) -> Option<u64> {
        self.handed_over_in_term
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .copied()
    }

    /// Hands `group`'s leadership to `to`. The lease fast path is closed for the
    /// current term first: a leadership transfer lets `to` be elected while the
    /// voters' leases still stand.
    pub async fn hand_over(
        &self,
        group: GroupId,
        raft: &GroupRaft,
        to: NodeId,
    ) -> Result<(), String> {
        let term = raft.metrics().borrow_watched().current_term;
        self.handed_over_in_term
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, term);
        raft.trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| e.to_string())
    }

    /// Whether this node still withholds its votes: restarted from its disk less than
    /// twice the election timeout (the lease a follower grants) ago, it may have
    /// acknowledged a leader just before it stopped, and that leader may still serve
    /// reads on its lease.
    pub fn withholds_votes(&self) -> bool {
        self.grants_votes_from
            .is_some_and(|from| Instant::now() < from)
    }

    /// Stops and forgets `group` and clears its partition's data, unless this node
    /// has since seen a committed membership, newer than the one that removed it
    /// (`removed_at`), that includes it again.
    pub async fn drop_group(&self, group: GroupId, removed_at: u64) -> Result<bool, String> {
        let Some(raft) = self.get(group) else {
            return Ok(false);
        };
        let metrics = raft.metrics().borrow_watched().clone();
        let committed = &metrics.committed_membership_config;
        let known = committed.log_id().map_or(0, |id| id.index);
        let still_member = committed.membership().get_node(&self.id).is_some();
        if known > removed_at && still_member {
            return Ok(false);
        }
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
        raft.shutdown().await.map_err(|e| e.to_string())?;
        if let Some(disk) = &self.disk {
            disk.drop_group(group)
                .await
                .map_err(|e| format!("cannot forget group {group} on disk: {e}"))?;
        }
        if let Some(partition) = group_partition(group) {
            let store = self.store.clone();
            let partitions = self.partitions;
            let _ =
                tokio::task::spawn_blocking(move || store.clear_partition(partition, partitions))
                    .await;
        }
        info!(group, "dropped this node's copy of the group");
        Ok(true)
    }

    /// The largest snapshot this node accepts: no partition can hold more than the
    /// node's whole memory budget.
    pub fn max_snapshot_bytes(&self) -> u64 {
        self.store.config().max_memory
    }

    /// Whether this node should hold a copy of `group` under the cluster's placement.
    /// Before this node knows the cluster state, only the cluster group qualifies.
    pub fn should_host(&self, group: GroupId) -> bool {
        let Some(partition) = group_partition(group) else {
            return true;
        };
        self.cluster_state().is_some_and(|view| {
            view.placement
                .replicas
                .get(partition as usize)
                .is_some_and(|replicas| replicas.contains(&self.me.name))
        })
    }

    /// Drops copies of partition groups this node no longer belongs to: those the
    /// placement moved away whose committed membership excludes it (a removal whose
    /// drop message it missed), and
    /// never-initialised ones the placement does not give it (created by a stray RPC).
    pub async fn drop_abandoned(&self) {
        for (group, raft) in self.all() {
            if group_partition(group).is_none() {
                continue;
            }
            // The memberships only (shared), not a copy of every metric of the group.
            let (committed, effective_unset) = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow_watched();
                (
                    metrics.committed_membership_config.clone(),
                    metrics.membership_config.log_id().is_none(),
                )
            };
            match committed.log_id() {
                // A learner catching up sees old configurations without itself: only
                // a copy the placement no longer wants may go.
                Some(log_id)
                    if committed.membership().get_node(&self.id).is_none()
                        && !self.should_host(group) =>
                {
                    let _ = self.drop_group(group, log_id.index).await;
                }
                None if effective_unset && !self.should_host(group) => {
                    let _ = self.drop_group(group, 0).await;
                }
                _ => {}
            }
        }
    }

    /// Groups that have joined a membership (as opposed to empty copies waiting to be
    /// replicated to).
    pub fn initialized(&self) -> BTreeMap<GroupId, GroupRaft> {
        self.all()
            .into_iter()
            .filter(|(_, raft)| {
                raft.metrics()
                    .borrow_watched()
                    .membership_config
                    .log_id()
                    .is_some()
            })
            .collect()
    }

    /// Keeps the report of this node's last balancer round as the cluster leader.
    pub fn publish_voter_report(&self, report: VoterReport) {
        *self.voter_report.write().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    /// The report of this node's last balancer round, if it leads the cluster group
    /// now (a former leader's report may be out of date).
    pub fn voter_report(&self) -> Option<VoterReport> {
        let leads = self
            .get(super::CLUSTER_GROUP)
            .is_some_and(|raft| raft.metrics().borrow_watched().current_leader == Some(self.id));
        if !leads {
            return None;
        }
        self.voter_report
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Heartbeats every group this node leads, all at once, every `every` until `stop`:
    /// the transport then carries one tick's heartbeats to each peer in one batch
    /// (CockroachDB coalesces heartbeats per peer for the same reason), instead of each
    /// group's timer waking the stream on its own.
    pub async fn run_heartbeats(
        &self,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => return,
            }
            let led: Vec<GroupRaft> = self
                .groups
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|raft| raft.metrics().borrow_watched().current_leader == Some(self.id))
                .cloned()
                .collect();
            for raft in led {
                let _ = raft.trigger().heartbeat().await;
            }
        }
    }

    /// Whether this node is stopping and must not be handed any leadership.
    pub fn is_stepping_down(&self) -> bool {
        self.stepping_down.load(Ordering::Relaxed)
    }

    /// Hands the leadership of every group led here to a voter that can take over, and
    /// waits (at most `within`) until this node leads none: a node about to stop must
    /// not leave its partitions refusing writes for an election timeout. Returns how
    /// many groups it still leads.
    pub async fn step_down(&self, within: std::time::Duration) -> usize {
        self.stepping_down.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut still_led = 0;
            for (group, raft) in self.initialized() {
                let metrics = raft.metrics().borrow_watched().clone();
                if metrics.current_leader != Some(self.id) {
                    continue;
                }
                still_led += 1;
                let successor = metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .find(|id| *id != self.id && can_take_over(&metrics, *id));
                if let Some(successor) = successor {
                    info!(group, to = successor, "stopping: handing leadership over");
                    let _ = self.hand_over(group, &raft, successor).await;
                }
            }
            if still_led == 0 || tokio::time::Instant::now() >= deadline {
                return still_led;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub async fn shutdown(&self) {
        for (group, raft) in self.all() {
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(group, error = %e, "raft group did not shut down cleanly");
            }
        }
        if let Some(disk) = &self.disk {
            let wal = disk.wal.clone();
            let _ = tokio::task::spawn_blocking(move || wal.close()).await;
        }
    }
}

fn refusal(error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> WriteRefused {
    match error {
        // Refused before its entry was appended: forwarding it to the leader is safe.
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            match forward.leader_node {
                Some(node) => WriteRefused::NotLeader(Some(node)),
                // A fresh leader refuses until a quorum acknowledged it: no one to name.
                None => WriteRefused::Unavailable("the partition is electing a leader".into()),
            }
        }
        // Appended here, then dropped when another leader's log won: it may have been
        // committed by that leader all the same, so it must not be proposed again.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward)) => {
            WriteRefused::OutcomeUnknown(format!(
                "the leadership changed while the write was in flight ({forward})"
            ))
        }
        RaftError::APIError(e) => WriteRefused::Unavailable(e.to_string()),
        // The group stopped: the entry may have been appended before it did.
        RaftError::Fatal(e) => WriteRefused::OutcomeUnknown(e.to_string()),
    }
}
