//! The JSON bodies of the node's cluster admin API as the client reads and sends them:
//! `GET /cluster`, `POST /cluster/init`, `PUT /cluster/members`.
//!
//! They mirror the node's own types field for field. Unknown fields are ignored and
//! missing ones take defaults, so a client keeps working against a newer node.

use serde::{Deserialize, Serialize};

/// How a member is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// The stable member name: its place on the ring.
    pub name: String,
    /// `host:port` of its HTTP cache API.
    pub api_addr: String,
    /// `host:port` of its Raft endpoint.
    pub raft_addr: String,
}

/// A member and its current Raft incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    #[serde(default)]
    pub raft_id: u64,
    pub node: MemberNode,
}

/// One partition as the answering node sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PartitionStatus {
    pub partition: u32,
    /// Member names where the placement wants its replicas.
    pub replicas: Vec<String>,
    /// Its Raft voters (empty if the answering node holds no replica).
    pub voters: Vec<String>,
    /// The leader's member name, if the answering node knows one.
    pub leader: Option<String>,
    pub term: Option<u64>,
    pub last_applied: Option<u64>,
    /// Whether the answering node holds a replica (only then are `leader` and
    /// `term` first-hand).
    pub hosted: bool,
}

/// A former member still being drained, and the replicas it holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeavingMember {
    pub name: String,
    pub replicas: u64,
}

/// The balancer's progress; meaningful on the cluster group's leader.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RebalanceProgress {
    pub active: bool,
    pub epoch: u64,
    pub replicas_to_move: u64,
    pub moving: u64,
    pub moved: u64,
    pub bytes_moved: u64,
    pub leaving: Vec<LeavingMember>,
    pub unknown_groups: u64,
}

/// `GET /cluster`: one node's view of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterStatus {
    pub cluster_id: Option<String>,
    /// The member leading the cluster group (it runs the balancer).
    pub cluster_leader: Option<String>,
    /// Former members being drained.
    pub leaving: Vec<Member>,
    pub rebalance: RebalanceProgress,
    /// Version of the member set.
    pub epoch: u64,
    /// The answering node's member name.
    pub node: String,
    pub raft_id: u64,
    pub members: Vec<Member>,
    pub partitions: Vec<PartitionStatus>,
}

impl ClusterStatus {
    /// Whether the balancer (this view must come from the cluster leader) has reached
    /// the placement of the current member set and forgotten every former member.
    pub fn is_rebalanced(&self) -> bool {
        let progress = &self.rebalance;
        progress.active
            && progress.epoch == self.epoch
            && progress.replicas_to_move == 0
            && progress.moving == 0
            && progress.unknown_groups == 0
            && self.leaving.is_empty()
    }
}

/// Body of `POST /cluster/init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitRequest {
    pub cluster_id: String,
    pub members: Vec<MemberNode>,
}

/// Body of `PUT /cluster/members`: the whole desired member set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembersRequest {
    pub members: Vec<MemberNode>,
}
