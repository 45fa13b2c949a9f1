//! Replication: one Raft group (openraft) per partition, plus the cluster group that
//! holds the cluster's metadata.
//!
//! The pieces, each in its own module: the [`log_store`] (in memory, and with
//! persistence also in the node's write-ahead log, see [`crate::persist`]), the
//! [`state_machine`] that applies commands to the node's store, the [`transport`] that
//! carries every group's RPCs between two nodes over one pooled HTTP client, the [`rpc`]
//! server that hands received RPCs to the right group, and the [`groups`] registry of
//! the groups this node hosts.

pub mod cluster_state;
pub mod counters;
pub mod groups;
pub mod log_store;
pub mod membership;
pub mod rpc;
pub mod snapshot;
pub mod state_machine;
pub mod stream;
pub mod transport;

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::store::ValueKind;
use crate::store::update::{Update, UpdateOutcome};
pub use cluster_state::{ClusterCommand, ClusterState};

/// A node's Raft identity: one per incarnation. A node that restarts without its state
/// gets a new one, so it can never vote twice in a term under an old identity; one that
/// restarts with its data directory keeps it, along with the votes it gave.
pub type NodeId = dcache_protocol::cluster::RaftId;

/// A Raft group: [`CLUSTER_GROUP`] or the group of one partition ([`partition_group`]).
pub type GroupId = u32;

/// The group that holds cluster metadata.
pub const CLUSTER_GROUP: GroupId = 0;

/// The group replicating partition `partition`.
pub fn partition_group(partition: dcache_protocol::PartitionId) -> GroupId {
    partition + 1
}

/// The partition a group replicates, or `None` for the cluster group.
pub fn group_partition(group: GroupId) -> Option<dcache_protocol::PartitionId> {
    group.checked_sub(1)
}

/// How other members reach a node, carried in Raft membership.
pub use dcache_protocol::cluster::MemberNode;

/// A replicated write. Expiry is absolute, chosen when the command is proposed, so every
/// replica agrees on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Set {
        key: Bytes,
        kind: ValueKind,
        data: Bytes,
        expires_at: Option<UnixMillis>,
    },
    Delete {
        key: Bytes,
    },
    Cluster(ClusterCommand),
    /// A conditional or read-modify-write command, decided when applied, with the
    /// proposer's clock (see [`crate::store::update`]).
    Update {
        now: UnixMillis,
        update: Update,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Set { key, data, .. } => {
                write!(
                    f,
                    "set {:?} ({} bytes)",
                    String::from_utf8_lossy(key),
                    data.len()
                )
            }
            Self::Delete { key } => write!(f, "delete {:?}", String::from_utf8_lossy(key)),
            Self::Cluster(command) => write!(f, "cluster {command}"),
            Self::Update { update, .. } => {
                let keys: Vec<_> = update.keys().map(|k| String::from_utf8_lossy(k)).collect();
                write!(f, "update {keys:?}")
            }
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    #[default]
    Done,
    /// A delete: whether the key held a live value.
    Deleted {
        existed: bool,
    },
    Updated(UpdateOutcome),
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = MemberNode,
);

/// A partition's or the cluster's Raft handle.
pub type GroupRaft = openraft::Raft<TypeConfig, state_machine::GroupStateMachine>;

/// Snapshot bytes, in bounded chunks: a partition's entries or the cluster state.
pub type SnapshotData = snapshot::SnapshotChunks;

#[cfg(test)]
mod tests;
