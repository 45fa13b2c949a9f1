//! The JSON bodies of the cluster admin API — `GET /cluster`, `POST /cluster/init`,
//! `PUT /cluster/members` — shared by the node that serves them, the client and the
//! operator that read them.
//!
//! Requests refuse unknown fields (a typo must not be silently ignored by a node);
//! status bodies take defaults for missing fields, so that a reader keeps working
//! against a node newer or older than itself.

use serde::{Deserialize, Serialize};

use crate::PartitionId;

/// A node's Raft identity: one per incarnation (a node that restarts without its state
/// gets a new one).
pub type RaftId = u64;

/// How a member is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// The stable member name (a pod name): its place on the ring.
    pub name: String,
    /// `host:port` of its HTTP cache API.
    pub api_addr: String,
    /// `host:port` of its Raft endpoint.
    pub raft_addr: String,
    /// `host:port` of its Redis-protocol listener, when it has one: what `CLUSTER
    /// SLOTS` and `-MOVED` send Redis Cluster clients to. Each node reports its own,
    /// so an admin request need not (and a value in one is replaced by the node's).
    #[serde(default)]
    pub resp_addr: Option<String>,
}

/// One member: its stable name and address, and its current Raft incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub raft_id: RaftId,
    pub node: MemberNode,
}

/// A partition whose data was lost: every replica gone for good, re-formed empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostPartition {
    pub partition: PartitionId,
    /// The cluster state epoch when it was re-formed.
    pub epoch: u64,
    /// When it was re-formed, in Unix milliseconds.
    pub at_unix_ms: u64,
    /// Why the old replicas could never serve again.
    pub reason: String,
}

/// One partition as the answering node sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PartitionStatus {
    pub partition: PartitionId,
    /// Member names where the placement wants its replicas.
    pub replicas: Vec<String>,
    /// Its Raft voters' names (empty if the answering node holds no replica).
    pub voters: Vec<String>,
    /// The leader's member name, if the answering node knows one.
    pub leader: Option<String>,
    pub term: Option<u64>,
    pub last_applied: Option<u64>,
    /// Whether the answering node holds a replica (only then are `leader` and `term`
    /// first-hand).
    pub hosted: bool,
}

/// A former member still being drained, and the replicas it still holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeavingMember {
    pub name: String,
    pub replicas: u64,
}

/// The balancer's progress; meaningful on the cluster group's leader (`active`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RebalanceProgress {
    /// Whether the answering node runs the balancer (it leads the cluster group).
    pub active: bool,
    /// The cluster state epoch (member set) this progress is about.
    pub epoch: u64,
    /// Replicas still to add to reach the placement.
    pub replicas_to_move: u64,
    /// Groups with a move under way.
    pub moving: u64,
    /// Replicas added since the answering node became the balancer.
    pub moved: u64,
    /// Snapshot bytes the answering node sent to new replicas.
    pub bytes_moved: u64,
    /// Former members and how many replicas they still hold.
    pub leaving: Vec<LeavingMember>,
    /// Groups whose state the balancer could not learn in its last round.
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
    /// Bumped by every change of the member set.
    pub epoch: u64,
    /// The answering node's member name.
    pub node: String,
    pub raft_id: RaftId,
    pub members: Vec<Member>,
    pub partitions: Vec<PartitionStatus>,
    /// Partitions that lost every replica and were re-formed empty: data was lost.
    pub lost_partitions: Vec<LostPartition>,
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

    pub fn member_names(&self) -> std::collections::BTreeSet<&str> {
        self.members.iter().map(|m| m.node.name.as_str()).collect()
    }

    pub fn leaving_names(&self) -> std::collections::BTreeSet<&str> {
        self.leaving.iter().map(|m| m.node.name.as_str()).collect()
    }
}

/// Body of `POST /cluster/init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    pub cluster_id: String,
    pub members: Vec<MemberNode>,
}

/// Body of `PUT /cluster/members`: the whole desired member set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersRequest {
    pub members: Vec<MemberNode>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_tolerate_missing_and_unknown_fields_requests_do_not() {
        let status: ClusterStatus =
            serde_json::from_str(r#"{"epoch": 3, "newer_field": 1}"#).unwrap();
        assert_eq!(status.epoch, 3);
        assert!(status.partitions.is_empty());
        let typo = serde_json::from_str::<MembersRequest>(r#"{"member": []}"#);
        assert!(typo.is_err());
    }
}
