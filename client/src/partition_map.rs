//! Which node leads which partition, merged from the members' views of `GET /cluster`.

use std::collections::BTreeMap;
use std::time::Instant;

use dcache_protocol::{PartitionId, partition_of};

use crate::cluster_status::{ClusterStatus, MemberNode};

/// Where each partition's requests should go.
///
/// A node reports first-hand leaders only for the partitions it holds a replica of, so
/// the map is merged from several nodes' views: per partition, the leader reported with
/// the highest Raft term by a node that hosts it wins.
#[derive(Debug, Clone)]
pub struct PartitionMap {
    partitions: u32,
    /// Member name of each partition's leader, when known.
    leaders: Vec<Option<String>>,
    /// Member names where the placement wants each partition's replicas.
    replicas: Vec<Vec<String>>,
    /// Current members by name (from the view with the highest epoch).
    members: BTreeMap<String, MemberNode>,
    /// API addresses of members and of former members still draining, by name.
    api_addrs: BTreeMap<String, String>,
    epoch: u64,
    /// Set when the answering node runs standalone: it serves every key itself.
    standalone: Option<String>,
    fetched_at: Instant,
}

impl PartitionMap {
    /// The map of a standalone node at `api_addr`: it serves everything.
    pub fn standalone(api_addr: &str) -> Self {
        Self {
            partitions: 1,
            leaders: vec![None],
            replicas: vec![Vec::new()],
            members: BTreeMap::new(),
            api_addrs: BTreeMap::new(),
            epoch: 0,
            standalone: Some(api_addr.to_owned()),
            fetched_at: Instant::now(),
        }
    }

    /// Merges views of `GET /cluster` from different nodes; `None` if no view comes from
    /// an initialised cluster.
    pub fn from_views(views: &[ClusterStatus]) -> Option<Self> {
        let newest = views
            .iter()
            .filter(|v| v.cluster_id.is_some() && !v.partitions.is_empty())
            .max_by_key(|v| v.epoch)?;
        let partitions = newest.partitions.len() as u32;
        let members: BTreeMap<String, MemberNode> = newest
            .members
            .iter()
            .map(|m| (m.node.name.clone(), m.node.clone()))
            .collect();
        let mut api_addrs = BTreeMap::new();
        // Older views first, so the newest view's addresses win.
        let mut by_epoch: Vec<&ClusterStatus> = views.iter().collect();
        by_epoch.sort_by_key(|v| v.epoch);
        for view in by_epoch {
            for member in view.members.iter().chain(&view.leaving) {
                api_addrs.insert(member.node.name.clone(), member.node.api_addr.clone());
            }
        }
        let mut leaders: Vec<Option<(u64, String)>> = vec![None; partitions as usize];
        for view in views {
            for status in &view.partitions {
                let (Some(slot), true, Some(leader)) = (
                    leaders.get_mut(status.partition as usize),
                    status.hosted,
                    &status.leader,
                ) else {
                    continue;
                };
                let term = status.term.unwrap_or(0);
                if slot.as_ref().is_none_or(|(best, _)| term > *best) {
                    *slot = Some((term, leader.clone()));
                }
            }
        }
        let mut replicas = vec![Vec::new(); partitions as usize];
        for status in &newest.partitions {
            if let Some(slot) = replicas.get_mut(status.partition as usize) {
                slot.clone_from(&status.replicas);
            }
        }
        Some(Self {
            partitions,
            leaders: leaders
                .into_iter()
                .map(|leader| leader.map(|(_, name)| name))
                .collect(),
            replicas,
            members,
            api_addrs,
            epoch: newest.epoch,
            standalone: None,
            fetched_at: Instant::now(),
        })
    }

    /// Partitions in the cluster (1 for a standalone node).
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The version of the member set this map was built from.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Current members by name.
    pub fn members(&self) -> &BTreeMap<String, MemberNode> {
        &self.members
    }

    /// When the views behind this map were fetched.
    pub fn fetched_at(&self) -> Instant {
        self.fetched_at
    }

    /// Whether this is a standalone node's map.
    pub fn is_standalone(&self) -> bool {
        self.standalone.is_some()
    }

    /// The partition `key` belongs to.
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        partition_of(key, self.partitions)
    }

    /// Member name of the leader of `partition`, if known.
    pub fn leader(&self, partition: PartitionId) -> Option<&str> {
        self.leaders.get(partition as usize)?.as_deref()
    }

    /// Member names of the placement's replicas of `partition`.
    pub fn replicas(&self, partition: PartitionId) -> &[String] {
        self.replicas
            .get(partition as usize)
            .map_or(&[], Vec::as_slice)
    }

    /// Whether every partition has a known leader.
    pub fn all_led(&self) -> bool {
        self.standalone.is_some() || self.leaders.iter().all(Option::is_some)
    }

    /// API address of the member called `name`.
    pub fn api_addr(&self, name: &str) -> Option<&str> {
        self.api_addrs.get(name).map(String::as_str)
    }

    /// The node a request for `key` should go to: the partition's leader, else one of
    /// its replicas (which forwards), else `None` (any node will forward).
    pub fn route(&self, key: &[u8]) -> Option<&str> {
        if let Some(addr) = &self.standalone {
            return Some(addr);
        }
        let partition = self.partition_of(key);
        self.leader(partition)
            .into_iter()
            .chain(self.replicas(partition).iter().map(String::as_str))
            .find_map(|name| self.api_addr(name))
    }

    /// How many partitions each current member leads (members leading none included).
    pub fn leader_counts(&self) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> =
            self.members.keys().map(|name| (name.clone(), 0)).collect();
        for leader in self.leaders.iter().flatten() {
            *counts.entry(leader.clone()).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_status::{Member, PartitionStatus};

    fn member(name: &str) -> Member {
        Member {
            raft_id: 1,
            node: MemberNode {
                name: name.into(),
                api_addr: format!("{name}:7000"),
                raft_addr: format!("{name}:7100"),
                resp_addr: None,
            },
        }
    }

    fn view(
        node: &str,
        epoch: u64,
        members: &[&str],
        partitions: &[(Option<&str>, u64, bool)],
    ) -> ClusterStatus {
        ClusterStatus {
            cluster_id: Some("test".into()),
            node: node.into(),
            epoch,
            members: members.iter().map(|name| member(name)).collect(),
            partitions: partitions
                .iter()
                .enumerate()
                .map(|(p, (leader, term, hosted))| PartitionStatus {
                    partition: p as u32,
                    replicas: members.iter().map(|m| m.to_string()).collect(),
                    leader: leader.map(str::to_owned),
                    term: Some(*term),
                    hosted: *hosted,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_leader_with_the_highest_term_from_a_hosting_node_wins() {
        let a = view(
            "a",
            1,
            &["a", "b"],
            &[(Some("a"), 3, true), (Some("a"), 9, false)],
        );
        let b = view(
            "b",
            1,
            &["a", "b"],
            &[(Some("b"), 4, true), (Some("b"), 2, true)],
        );
        let map = PartitionMap::from_views(&[a, b]).unwrap();
        assert_eq!(map.leader(0), Some("b"), "term 4 beats term 3");
        assert_eq!(
            map.leader(1),
            Some("b"),
            "a does not host partition 1, so its term-9 hearsay does not count"
        );
        assert!(map.all_led());
        assert_eq!(map.leader_counts()["b"], 2);
        assert_eq!(map.leader_counts()["a"], 0);
    }

    #[test]
    fn requests_go_to_the_leader_else_a_replica() {
        let led = view("a", 2, &["a", "b"], &[(Some("b"), 1, true)]);
        let map = PartitionMap::from_views(&[led]).unwrap();
        assert_eq!(map.route(b"any key"), Some("b:7000"));

        let leaderless = view("a", 2, &["a", "b"], &[(None, 1, true)]);
        let map = PartitionMap::from_views(&[leaderless]).unwrap();
        assert!(!map.all_led());
        assert_eq!(map.route(b"any key"), Some("a:7000"), "first replica");
    }

    #[test]
    fn members_come_from_the_newest_epoch() {
        let old = view("a", 1, &["a", "b"], &[(Some("a"), 1, true)]);
        let new = view("c", 2, &["a", "b", "c"], &[(Some("a"), 1, true)]);
        let map = PartitionMap::from_views(&[old, new]).unwrap();
        assert_eq!(map.epoch(), 2);
        assert_eq!(map.members().len(), 3);
    }

    #[test]
    fn uninitialised_views_give_no_map() {
        let empty = ClusterStatus {
            node: "a".into(),
            ..Default::default()
        };
        assert!(PartitionMap::from_views(&[empty]).is_none());
    }

    #[test]
    fn a_standalone_node_serves_every_key() {
        let map = PartitionMap::standalone("127.0.0.1:7000");
        assert_eq!(map.route(b"x"), Some("127.0.0.1:7000"));
        assert!(map.all_led());
    }
}
