//! The cluster's metadata, replicated by the cluster group: who the members are, where
//! they are reached, and the parameters of the ring.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::NodeId;
use crate::placement::Placement;

pub use dcache_protocol::cluster::{LostPartition, Member};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster_id: String,
    pub partitions: u32,
    pub replication: usize,
    pub vnodes: u32,
    /// Members by name: the desired member set.
    pub members: BTreeMap<String, Member>,
    /// Former members still being drained of their replicas.
    #[serde(default)]
    pub leaving: BTreeMap<String, Member>,
    /// Bumped by every change of membership.
    pub epoch: u64,
    /// Partitions that lost every replica and were re-formed empty, oldest first (the
    /// last [`LOST_PARTITIONS_KEPT`]).
    #[serde(default)]
    pub lost: Vec<LostPartition>,
}

/// How many records of lost partitions the cluster state keeps.
pub const LOST_PARTITIONS_KEPT: usize = 100;

/// Changes to the cluster state, as replicated commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// Sets the initial state; ignored once the cluster has one.
    Init(ClusterState),
    /// Replaces the desired member set; the balancer then moves replicas to match.
    /// Members left out are drained before they are forgotten.
    SetMembers(BTreeMap<String, Member>),
    /// Forgets a drained former member.
    Forget(String),
    /// Records that a partition lost every replica and was re-formed empty.
    PartitionLost(LostPartition),
}

impl fmt::Display for ClusterCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Init(state) => write!(
                f,
                "init {} with {} members",
                state.cluster_id,
                state.members.len()
            ),
            Self::SetMembers(members) => write!(f, "set {} members", members.len()),
            Self::Forget(name) => write!(f, "forget drained member {name}"),
            Self::PartitionLost(lost) => {
                write!(f, "partition {} lost: {}", lost.partition, lost.reason)
            }
        }
    }
}

impl ClusterState {
    /// Where every partition should live, computed afresh: readers of the current
    /// state use [`ClusterView::placement`] instead.
    pub fn compute_placement(&self) -> Placement {
        let names: Vec<&String> = self.members.keys().collect();
        Placement::compute(&names, self.partitions, self.replication, self.vnodes)
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    /// Members and the former members still being drained: every node that may hold
    /// a replica.
    pub fn members_and_leaving(&self) -> impl Iterator<Item = &Member> {
        self.members.values().chain(self.leaving.values())
    }

    /// A member or a leaving member by its Raft identity.
    pub fn member_by_raft_id(&self, raft_id: NodeId) -> Option<&Member> {
        self.members_and_leaving().find(|m| m.raft_id == raft_id)
    }

    /// Applies `command` to the state `current` (None before init).
    pub fn apply(current: &mut Option<ClusterState>, command: &ClusterCommand) {
        match command {
            ClusterCommand::Init(state) => {
                if current.is_none() {
                    *current = Some(state.clone());
                }
            }
            ClusterCommand::SetMembers(members) => {
                if let Some(state) = current
                    && state.members != *members
                {
                    for (name, member) in &state.members {
                        if !members.contains_key(name) {
                            state.leaving.insert(name.clone(), member.clone());
                        }
                    }
                    state.leaving.retain(|name, _| !members.contains_key(name));
                    state.members = members.clone();
                    state.epoch += 1;
                }
            }
            ClusterCommand::Forget(name) => {
                if let Some(state) = current {
                    state.leaving.remove(name);
                }
            }
            ClusterCommand::PartitionLost(lost) => {
                if let Some(state) = current {
                    state.lost.push(lost.clone());
                    let excess = state.lost.len().saturating_sub(LOST_PARTITIONS_KEPT);
                    state.lost.drain(..excess);
                }
            }
        }
    }
}

/// A cluster state and what follows from it, computed once when the state changes and
/// shared by every reader: serving a request clones no state and recomputes no
/// placement.
#[derive(Debug)]
pub struct ClusterView {
    pub state: ClusterState,
    pub placement: Placement,
}

impl ClusterView {
    pub fn new(state: ClusterState) -> Self {
        let placement = state.compute_placement();
        Self { state, placement }
    }

    /// The API address of `partition`'s placement leader: where a request for a
    /// partition this node does not hold is sent.
    pub fn placement_leader(&self, partition: u32) -> Option<&Member> {
        let name = self.placement.leaders.get(partition as usize)?;
        self.state.member(name)
    }
}

impl Deref for ClusterView {
    type Target = ClusterState;

    fn deref(&self) -> &ClusterState {
        &self.state
    }
}

/// Where the cluster group's state machine publishes the current [`ClusterView`].
#[derive(Debug, Clone, Default)]
pub struct SharedClusterView(Arc<RwLock<Option<Arc<ClusterView>>>>);

impl SharedClusterView {
    pub fn get(&self) -> Option<Arc<ClusterView>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the state (a restored snapshot).
    pub fn set(&self, state: Option<ClusterState>) {
        let view = state.map(|state| Arc::new(ClusterView::new(state)));
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = view;
    }

    /// Applies `command` to the current state and publishes the result (the views
    /// already handed out keep the state they were made from).
    pub fn apply(&self, command: &ClusterCommand) {
        let mut current = self.0.write().unwrap_or_else(|p| p.into_inner());
        let mut state = current.as_ref().map(|view| view.state.clone());
        ClusterState::apply(&mut state, command);
        if state.as_ref() != current.as_ref().map(|view| &view.state) {
            *current = state.map(|state| Arc::new(ClusterView::new(state)));
        }
    }
}
