//! The cluster as Redis Cluster clients see it: every partition is a contiguous range
//! of hash slots, its Raft leader the range's master and its other replicas the
//! range's replicas (`CLUSTER SLOTS`, `SHARDS`, `NODES`, `INFO`).
//!
//! A node knows the actual leader only of the partitions it holds; for the others it
//! names the leader the balancer published for the current member set (the one it
//! keeps and hands leadership back to), so that every node names the same masters once
//! leadership has settled. A client sent to the wrong node meanwhile (an election in
//! progress) is redirected with `-MOVED`, as after a Redis failover.

use std::fmt::Write as _;

use bytes::Bytes;
use dcache_protocol::{PartitionId, Slot, partition_slots};
use openraft::async_runtime::WatchReceiver;
use sha2::{Digest, Sha256};

use super::codec::Reply;
use crate::http::Node;
use crate::raft::{CLUSTER_GROUP, MemberNode, partition_group};

/// A range of slots and the nodes serving it, the master first.
pub struct SlotRange {
    pub first: Slot,
    pub last: Slot,
    pub nodes: Vec<MemberNode>,
}

/// The Redis Cluster node id of a member: 40 hex digits, stable for its name.
pub fn node_id(member: &MemberNode) -> String {
    let digest = Sha256::digest(member.name.as_bytes());
    digest[..20]
        .iter()
        .fold(String::with_capacity(40), |mut id, byte| {
            let _ = write!(id, "{byte:02x}");
            id
        })
}

/// `host` and `port` of a member's RESP address; `None` for a member without one.
pub fn endpoint(member: &MemberNode) -> Option<(&str, u16)> {
    let addr = member.resp_addr.as_deref()?;
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

/// Every partition as a slot range, adjacent ranges with the same nodes merged.
pub fn slot_ranges(node: &Node) -> Vec<SlotRange> {
    let Some(cluster) = &node.cluster else {
        return Vec::new();
    };
    let Some(view) = cluster.state() else {
        return Vec::new();
    };
    let mut ranges: Vec<SlotRange> = Vec::new();
    for partition in 0..node.partitions {
        let Some((first, last)) = partition_slots(partition, node.partitions) else {
            continue;
        };
        let leader = actual_leader(node, partition)
            .or_else(|| view.placement_leader(partition).map(|m| m.node.clone()));
        let mut nodes: Vec<MemberNode> = leader.into_iter().collect();
        for name in view
            .placement
            .replicas
            .get(partition as usize)
            .into_iter()
            .flatten()
        {
            if let Some(member) = view.state.member(name)
                && !nodes.iter().any(|known| known.name == member.node.name)
            {
                nodes.push(member.node.clone());
            }
        }
        match ranges.last_mut() {
            Some(previous) if previous.last + 1 == first && same_nodes(&previous.nodes, &nodes) => {
                previous.last = last;
            }
            _ => ranges.push(SlotRange { first, last, nodes }),
        }
    }
    ranges
}

fn same_nodes(a: &[MemberNode], b: &[MemberNode]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.name == b.name)
}

/// The leader of `partition` as this node's replica knows it, if it holds one.
fn actual_leader(node: &Node, partition: PartitionId) -> Option<MemberNode> {
    let cluster = node.cluster.as_ref()?;
    let raft = cluster.groups.get(partition_group(partition))?;
    let leader = raft.metrics().borrow_watched().current_leader?;
    cluster
        .state()?
        .member_by_raft_id(leader)
        .map(|member| member.node.clone())
}

/// `CLUSTER SLOTS`.
pub fn slots(node: &Node) -> Reply {
    Reply::Array(
        slot_ranges(node)
            .into_iter()
            .map(|range| {
                let mut entry = vec![
                    Reply::Integer(range.first.into()),
                    Reply::Integer(range.last.into()),
                ];
                entry.extend(range.nodes.iter().filter_map(|member| {
                    let (host, port) = endpoint(member)?;
                    Some(Reply::Array(vec![
                        Reply::Bulk(Bytes::copy_from_slice(host.as_bytes())),
                        Reply::Integer(port.into()),
                        Reply::Bulk(node_id(member).into()),
                        Reply::Map(Vec::new()),
                    ]))
                }));
                Reply::Array(entry)
            })
            .collect(),
    )
}

/// `CLUSTER SHARDS`: one shard per slot range.
pub fn shards(node: &Node) -> Reply {
    Reply::Array(
        slot_ranges(node)
            .into_iter()
            .map(|range| {
                let nodes = range
                    .nodes
                    .iter()
                    .enumerate()
                    .filter_map(|(at, member)| {
                        let (host, port) = endpoint(member)?;
                        let text = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
                        Some(Reply::Map(vec![
                            (text("id"), text(&node_id(member))),
                            (text("port"), Reply::Integer(port.into())),
                            (text("ip"), text(host)),
                            (text("endpoint"), text(host)),
                            (text("hostname"), text(host)),
                            (
                                text("role"),
                                text(if at == 0 { "master" } else { "replica" }),
                            ),
                            (text("replication-offset"), Reply::Integer(0)),
                            (text("health"), text("online")),
                        ]))
                    })
                    .collect();
                Reply::Map(vec![
                    (
                        Reply::Bulk(Bytes::from_static(b"slots")),
                        Reply::Array(vec![
                            Reply::Integer(range.first.into()),
                            Reply::Integer(range.last.into()),
                        ]),
                    ),
                    (
                        Reply::Bulk(Bytes::from_static(b"nodes")),
                        Reply::Array(nodes),
                    ),
                ])
            })
            .collect(),
    )
}

/// `CLUSTER NODES`: every member a master of the ranges it leads (a dcache node leads
/// some partitions and follows others, which Redis's one-master-per-node lines cannot
/// say otherwise).
pub fn nodes(node: &Node) -> String {
    let ranges = slot_ranges(node);
    let Some(view) = node.cluster.as_ref().and_then(|cluster| cluster.state()) else {
        return String::new();
    };
    let me = node
        .cluster
        .as_ref()
        .map(|cluster| cluster.groups.me.name.clone());
    let mut out = String::new();
    for member in view.state.members.values() {
        let Some((host, port)) = endpoint(&member.node) else {
            continue;
        };
        let myself = me.as_deref() == Some(member.node.name.as_str());
        let _ = write!(
            out,
            "{} {host}:{port}@{port},{host} {}master - 0 0 {} connected",
            node_id(&member.node),
            if myself { "myself," } else { "" },
            view.state.epoch,
        );
        for range in ranges
            .iter()
            .filter(|range| range.nodes.first().map(|m| &m.name) == Some(&member.node.name))
        {
            if range.first == range.last {
                let _ = write!(out, " {}", range.first);
            } else {
                let _ = write!(out, " {}-{}", range.first, range.last);
            }
        }
        out.push('\n');
    }
    out
}

/// `CLUSTER INFO`.
pub fn info(node: &Node) -> String {
    let ranges = slot_ranges(node);
    let assigned: u32 = ranges
        .iter()
        .filter(|range| !range.nodes.is_empty())
        .map(|range| u32::from(range.last - range.first) + 1)
        .sum();
    let (members, epoch, has_leader) = match &node.cluster {
        Some(cluster) => {
            let view = cluster.state();
            let has_leader = cluster
                .groups
                .get(CLUSTER_GROUP)
                .is_some_and(|raft| raft.metrics().borrow_watched().current_leader.is_some());
            (
                view.as_ref().map_or(0, |view| view.state.members.len()),
                view.as_ref().map_or(0, |view| view.state.epoch),
                has_leader,
            )
        }
        None => (0, 0, false),
    };
    let ok = has_leader && assigned == u32::from(dcache_protocol::SLOTS);
    format!(
        "cluster_enabled:1\r\ncluster_state:{}\r\ncluster_slots_assigned:{assigned}\r\n\
         cluster_slots_ok:{assigned}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\n\
         cluster_known_nodes:{members}\r\ncluster_size:{members}\r\n\
         cluster_current_epoch:{epoch}\r\ncluster_my_epoch:{epoch}\r\n\
         cluster_partitions:{}\r\n",
        if ok { "ok" } else { "fail" },
        node.partitions,
    )
}
