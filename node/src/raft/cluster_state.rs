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
    /// Publishes the leader the balancer steers each partition toward (member names,
    /// by partition) for the member set of `epoch`; ignored for any other epoch.
    SetLeaders { epoch: u64, leaders: Vec<String> },
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
            Self::SetLeaders { epoch, leaders } => {
                write!(
                    f,
                    "publish {} partition leaders for epoch {epoch}",
                    leaders.len()
                )
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
            // Kept beside the state, in the view (see `SharedClusterView::apply`).
            ClusterCommand::SetLeaders { .. } => {}
        }
    }
}

/// The leaders the balancer published for one member set (`epoch`), by partition.
///
/// They live beside [`ClusterState`] rather than in it, since the state is encoded in
/// the log and on disk in a format that has no room for a new field; the cluster
/// group's snapshot carries them (`ClusterSnapshot`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedLeaders {
    pub epoch: u64,
    pub leaders: Vec<String>,
}

/// What the cluster group's snapshot holds: the state and, when published, the
/// leaders; a snapshot written before leaders were published reads with none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    #[serde(flatten)]
    pub state: ClusterState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_leaders: Option<PublishedLeaders>,
}

/// A cluster state and what follows from it, computed once when the state changes and
/// shared by every reader: serving a request clones no state and recomputes no
/// placement.
///
/// The placement's leaders are the ones the balancer published for this member set
/// when it did (the leaders it keeps and hands leadership to), so that every node
/// names the same leader for a partition, whether it holds a replica or not.
#[derive(Debug)]
pub struct ClusterView {
    pub state: ClusterState,
    pub placement: Placement,
    /// The leaders published for `state.epoch`, if any.
    pub published_leaders: Option<PublishedLeaders>,
}

impl ClusterView {
    pub fn new(state: ClusterState, published: Option<PublishedLeaders>) -> Self {
        let mut placement = state.compute_placement();
        let published = published.filter(|published| published.epoch == state.epoch);
        if let Some(published) = &published {
            for (partition, leader) in published.leaders.iter().enumerate() {
                if let Some(replicas) = placement.replicas.get(partition)
                    && replicas.contains(leader)
                {
                    placement.leaders[partition] = leader.clone();
                }
            }
        }
        Self {
            state,
            placement,
            published_leaders: published,
        }
    }

    /// What the cluster group's snapshot keeps of this view.
    pub fn snapshot(&self) -> ClusterSnapshot {
        ClusterSnapshot {
            state: self.state.clone(),
            published_leaders: self.published_leaders.clone(),
        }
    }

    /// `partition`'s leader as the cluster knows it: the published one, else the
    /// placement's choice. Where a request for a partition this node does not hold
    /// is sent.
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
    pub fn set(&self, snapshot: Option<ClusterSnapshot>) {
        let view = snapshot
            .map(|snapshot| Arc::new(ClusterView::new(snapshot.state, snapshot.published_leaders)));
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = view;
    }

    /// Applies `command` to the current state and publishes the result (the views
    /// already handed out keep the state they were made from).
    pub fn apply(&self, command: &ClusterCommand) {
        let mut current = self.0.write().unwrap_or_else(|p| p.into_inner());
        if let ClusterCommand::SetLeaders { epoch, leaders } = command {
            let published = PublishedLeaders {
                epoch: *epoch,
                leaders: leaders.clone(),
            };
            if let Some(view) = current.as_ref()
                && view.state.epoch == *epoch
                && view.published_leaders.as_ref() != Some(&published)
            {
                *current = Some(Arc::new(ClusterView::new(
                    view.state.clone(),
                    Some(published),
                )));
            }
            return;
        }
        let mut state = current.as_ref().map(|view| view.state.clone());
        ClusterState::apply(&mut state, command);
        if state.as_ref() != current.as_ref().map(|view| &view.state) {
            let published = current
                .as_ref()
                .and_then(|view| view.published_leaders.clone());
            *current = state.map(|state| Arc::new(ClusterView::new(state, published)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::MemberNode;

    fn state(members: &[&str]) -> ClusterState {
        ClusterState {
            cluster_id: "test".into(),
            partitions: 8,
            replication: 2,
            vnodes: 16,
            members: members
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let member = Member {
                        raft_id: i as u64 + 1,
                        node: MemberNode {
                            name: (*name).to_owned(),
                            api_addr: format!("127.0.0.1:{}", 7000 + i),
                            raft_addr: format!("127.0.0.1:{}", 7100 + i),
                            resp_addr: None,
                        },
                    };
                    ((*name).to_owned(), member)
                })
                .collect(),
            leaving: BTreeMap::new(),
            epoch: 1,
            lost: Vec::new(),
        }
    }

    /// For every partition, the replica that is not the computed leader.
    fn other_replicas(view: &ClusterView) -> Vec<String> {
        view.placement
            .replicas
            .iter()
            .zip(&view.placement.leaders)
            .map(|(replicas, leader)| replicas.iter().find(|r| *r != leader).unwrap().clone())
            .collect()
    }

    #[test]
    fn published_leaders_name_each_partitions_leader_for_their_member_set_only() {
        let shared = SharedClusterView::default();
        shared.apply(&ClusterCommand::Init(state(&["a", "b", "c"])));
        let computed = shared.get().unwrap();
        let others = other_replicas(&computed);

        // Another epoch's leaders change nothing.
        shared.apply(&ClusterCommand::SetLeaders {
            epoch: 7,
            leaders: others.clone(),
        });
        assert_eq!(
            shared.get().unwrap().placement.leaders,
            computed.placement.leaders
        );

        shared.apply(&ClusterCommand::SetLeaders {
            epoch: 1,
            leaders: others.clone(),
        });
        assert_eq!(shared.get().unwrap().placement.leaders, others);

        // A change that keeps the member set keeps them; a new member set drops them.
        shared.apply(&ClusterCommand::Forget("gone".into()));
        assert_eq!(shared.get().unwrap().placement.leaders, others);
        let bigger = state(&["a", "b", "c", "d"]);
        shared.apply(&ClusterCommand::SetMembers(bigger.members.clone()));
        let view = shared.get().unwrap();
        assert_eq!(view.state.epoch, 2);
        assert_eq!(view.published_leaders, None);
        assert_eq!(
            view.placement.leaders,
            view.state.compute_placement().leaders
        );
    }

    #[test]
    fn a_published_leader_that_holds_no_replica_is_not_taken() {
        let shared = SharedClusterView::default();
        shared.apply(&ClusterCommand::Init(state(&["a", "b", "c"])));
        let computed = shared.get().unwrap().placement.leaders.clone();
        shared.apply(&ClusterCommand::SetLeaders {
            epoch: 1,
            leaders: vec!["nobody".into(); 8],
        });
        assert_eq!(shared.get().unwrap().placement.leaders, computed);
    }

    #[test]
    fn the_cluster_snapshot_keeps_published_leaders_and_reads_older_snapshots() {
        let shared = SharedClusterView::default();
        shared.apply(&ClusterCommand::Init(state(&["a", "b", "c"])));
        let others = other_replicas(&shared.get().unwrap());
        shared.apply(&ClusterCommand::SetLeaders {
            epoch: 1,
            leaders: others.clone(),
        });
        let json = serde_json::to_string(&shared.get().map(|view| view.snapshot())).unwrap();
        let restored = SharedClusterView::default();
        restored.set(serde_json::from_str(&json).unwrap());
        assert_eq!(restored.get().unwrap().placement.leaders, others);

        // A snapshot from before leaders were published: the state alone.
        let older = serde_json::to_string(&Some(state(&["a", "b", "c"]))).unwrap();
        let restored = SharedClusterView::default();
        restored.set(serde_json::from_str(&older).unwrap());
        let view = restored.get().unwrap();
        assert_eq!(view.state, state(&["a", "b", "c"]));
        assert_eq!(view.published_leaders, None);
    }
}
