//! Where partitions live: consistent hashing with virtual nodes.
//!
//! Every member owns `vnodes` points on a 64-bit ring, at the hashes of its name. The
//! `P` partitions sit at evenly spaced points; a partition's replica set is the first `R`
//! distinct members clockwise from its point. Adding or removing one member only changes
//! the replica sets in which that member enters or leaves the first `R`, so the data
//! that moves is close to the minimum.
//!
//! Members are placed by *name* (a pod's stable name), never by Raft identity, so a node
//! that restarts under a new incarnation keeps its place and nothing moves.
//!
//! Everything here is pure and deterministic: every node computes the same placement
//! from the same member list, and tests can check it without a cluster.

use std::collections::BTreeMap;

use dcache_protocol::{PartitionId, key_hash};

/// Virtual nodes per member unless configured otherwise.
pub const DEFAULT_VNODES: u32 = 150;
/// Replicas per partition unless configured otherwise (capped by the member count).
pub const DEFAULT_REPLICATION: usize = 3;

/// The consistent-hash ring of a member list.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Members by name, sorted, deduplicated.
    members: Vec<String>,
    /// (point, index into `members`), sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub fn new<S: AsRef<str>>(members: &[S], vnodes: u32) -> Self {
        let mut names: Vec<String> = members.iter().map(|m| m.as_ref().to_owned()).collect();
        names.sort();
        names.dedup();
        let mut points: Vec<(u64, usize)> = names
            .iter()
            .enumerate()
            .flat_map(|(index, name)| {
                (0..vnodes).map(move |v| (key_hash(format!("{name}#{v}").as_bytes()), index))
            })
            .collect();
        // Ties between two members' points (vanishingly rare) are broken by member order.
        points.sort_unstable();
        Self {
            members: names,
            points,
        }
    }

    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// The first `count` distinct members clockwise from `point` (fewer if the ring has
    /// fewer members), in ring order.
    pub fn successors(&self, point: u64, count: usize) -> Vec<&str> {
        let count = count.min(self.members.len());
        let mut found: Vec<usize> = Vec::with_capacity(count);
        let start = self.points.partition_point(|(p, _)| *p < point);
        for i in 0..self.points.len() {
            if found.len() == count {
                break;
            }
            let (_, member) = self.points[(start + i) % self.points.len()];
            if !found.contains(&member) {
                found.push(member);
            }
        }
        found
            .into_iter()
            .map(|m| self.members[m].as_str())
            .collect()
    }
}

/// The point of partition `partition` out of `partitions`: evenly spaced, each in the
/// middle of its slot.
pub fn partition_point(partition: PartitionId, partitions: u32) -> u64 {
    let slot = u64::MAX / u64::from(partitions);
    slot * u64::from(partition) + slot / 2
}

/// Every partition's replica set and preferred leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `replicas[p]`: the members holding partition `p`, in ring order.
    pub replicas: Vec<Vec<String>>,
    /// `leaders[p]`: the member that should lead partition `p`, one of its replicas.
    pub leaders: Vec<String>,
}

impl Placement {
    /// Computes the placement of `partitions` partitions with `replication` replicas each
    /// over `members`, with `vnodes` points per member.
    pub fn compute<S: AsRef<str>>(
        members: &[S],
        partitions: u32,
        replication: usize,
        vnodes: u32,
    ) -> Self {
        Self::compute_from(None, members, partitions, replication, vnodes)
    }

    /// Like [`Placement::compute`], but keeps each partition's leader from `previous`
    /// where it is still a replica and the spread allows, so that a membership change
    /// moves as few leaders as it can.
    pub fn compute_from<S: AsRef<str>>(
        previous: Option<&Placement>,
        members: &[S],
        partitions: u32,
        replication: usize,
        vnodes: u32,
    ) -> Self {
        let ring = Ring::new(members, vnodes);
        let replicas: Vec<Vec<String>> = (0..partitions)
            .map(|p| {
                ring.successors(partition_point(p, partitions), replication)
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
        let previous_leaders = previous.map_or(&[][..], |p| &p.leaders[..]);
        let leaders = spread_leaders(&replicas, ring.members(), previous_leaders);
        Self { replicas, leaders }
    }

    /// How many partition replicas each member holds.
    pub fn replica_counts(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for member in self.replicas.iter().flatten() {
            *counts.entry(member.as_str()).or_default() += 1;
        }
        counts
    }

    /// How many partitions each member should lead.
    pub fn leader_counts(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for member in &self.leaders {
            *counts.entry(member.as_str()).or_default() += 1;
        }
        counts
    }
}

/// Chooses a leader per partition: the previous leader wherever it is still a replica
/// (so that leadership is as stable as placement under membership change); elsewhere
/// the least loaded replica (ring order breaking ties, so a fresh placement starts from
/// the first replica). Then it moves leadership away from members over their fair
/// share to the least loaded replica of the same partition, until no move helps.
fn spread_leaders(
    replicas: &[Vec<String>],
    members: &[String],
    previous: &[String],
) -> Vec<String> {
    let mut counts: BTreeMap<String, usize> = members.iter().map(|m| (m.clone(), 0)).collect();
    let mut leaders: Vec<Option<String>> = replicas
        .iter()
        .enumerate()
        .map(|(partition, set)| match previous.get(partition) {
            Some(leader) if set.contains(leader) => {
                *counts.entry(leader.clone()).or_default() += 1;
                Some(leader.clone())
            }
            _ => None,
        })
        .collect();
    for (partition, set) in replicas.iter().enumerate() {
        if leaders[partition].is_some() {
            continue;
        }
        let Some(choice) = set
            .iter()
            .enumerate()
            .min_by_key(|(rank, m)| (counts.get(*m).copied().unwrap_or(0), *rank))
            .map(|(_, m)| m.clone())
        else {
            leaders[partition] = Some(String::new());
            continue;
        };
        *counts.entry(choice.clone()).or_default() += 1;
        leaders[partition] = Some(choice);
    }
    let mut leaders: Vec<String> = leaders.into_iter().map(Option::unwrap_or_default).collect();
    if members.is_empty() {
        return leaders;
    }
    let ceiling = replicas.len().div_ceil(members.len());
    let floor = replicas.len() / members.len();
    loop {
        let mut moved = false;
        for (partition, set) in replicas.iter().enumerate() {
            let current = &leaders[partition];
            let Some(best) = set
                .iter()
                .filter(|m| *m != current)
                .min_by_key(|m| (counts[*m], (*m).clone()))
            else {
                continue;
            };
            // Move only off a member over its share, or onto one under it.
            let needed =
                counts[current] > ceiling || (counts[best] < floor && counts[current] > floor);
            if needed && counts[best] + 1 < counts[current] {
                *counts.get_mut(current).expect("leader is a member") -= 1;
                *counts.get_mut(best).expect("replica is a member") += 1;
                leaders[partition] = best.clone();
                moved = true;
            }
        }
        if !moved {
            return leaders;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("dcache-{i}")).collect()
    }

    fn compute(n: usize) -> Placement {
        Placement::compute(&names(n), 64, DEFAULT_REPLICATION, DEFAULT_VNODES)
    }

    #[test]
    fn deterministic_and_independent_of_member_order() {
        let mut reversed = names(5);
        reversed.reverse();
        assert_eq!(
            compute(5),
            Placement::compute(&reversed, 64, 3, DEFAULT_VNODES)
        );
    }

    #[test]
    fn replica_sets_are_distinct_members_capped_by_the_member_count() {
        for n in 1..=7 {
            let placement = compute(n);
            for (p, set) in placement.replicas.iter().enumerate() {
                assert_eq!(set.len(), n.min(3), "partition {p} with {n} members");
                let mut unique = set.clone();
                unique.sort();
                unique.dedup();
                assert_eq!(unique.len(), set.len(), "duplicate replica in {set:?}");
                assert!(set.contains(&placement.leaders[p]));
            }
        }
        let empty = Placement::compute::<String>(&[], 8, 3, 10);
        assert!(empty.replicas.iter().all(Vec::is_empty));
    }

    #[test]
    fn replicas_are_balanced() {
        for n in [4, 5, 6, 8, 10] {
            let placement = compute(n);
            let counts = placement.replica_counts();
            let mean = 64.0 * 3.0 / n as f64;
            for (member, count) in &counts {
                let deviation = (*count as f64 - mean).abs() / mean;
                assert!(
                    deviation < 0.45,
                    "{n} members: {member} holds {count}, mean {mean:.1}"
                );
            }
            assert_eq!(counts.len(), n, "every member holds something");
        }
    }

    #[test]
    fn leaders_are_spread_evenly() {
        for n in 1..=10 {
            let placement = compute(n);
            let counts = placement.leader_counts();
            let (max, min) = (
                counts.values().max().unwrap(),
                counts.values().min().unwrap(),
            );
            assert!(max - min <= 2, "{n} members: leader counts {counts:?}");
        }
    }

    /// Members a partition gained and lost between two placements.
    fn changes(before: &Placement, after: &Placement) -> Vec<(Vec<String>, Vec<String>)> {
        before
            .replicas
            .iter()
            .zip(&after.replicas)
            .map(|(old, new)| {
                let gained = new.iter().filter(|m| !old.contains(m)).cloned().collect();
                let lost = old.iter().filter(|m| !new.contains(m)).cloned().collect();
                (gained, lost)
            })
            .collect()
    }

    #[test]
    fn adding_a_member_moves_only_what_it_takes_over() {
        for n in 3..=8 {
            let before = compute(n);
            let after = compute(n + 1);
            let newcomer = format!("dcache-{n}");
            let mut moved = 0;
            for (gained, lost) in changes(&before, &after) {
                assert!(
                    gained.iter().all(|m| *m == newcomer),
                    "only the newcomer gains: {gained:?}"
                );
                assert_eq!(gained.len(), lost.len());
                moved += gained.len();
            }
            // The newcomer takes about its fair share of replicas, not more.
            let fair = 64.0 * 3.0 / (n + 1) as f64;
            assert!(
                (moved as f64) < fair * 1.5,
                "{n}->{}: {moved} replicas moved, fair {fair:.1}",
                n + 1
            );
        }
    }

    #[test]
    fn removing_a_member_moves_only_what_it_held() {
        let before = compute(5);
        let leaving = "dcache-2".to_owned();
        let remaining: Vec<String> = names(5).into_iter().filter(|m| *m != leaving).collect();
        let after = Placement::compute(&remaining, 64, 3, DEFAULT_VNODES);
        for (gained, lost) in changes(&before, &after) {
            assert!(
                lost.iter().all(|m| *m == leaving),
                "only the leaver loses: {lost:?}"
            );
            assert_eq!(gained.len(), lost.len());
        }
        assert!(after.replicas.iter().flatten().all(|m| *m != leaving));
    }

    #[test]
    fn few_leaders_move_when_a_member_joins_or_leaves() {
        for n in 3..=7 {
            let before = compute(n);
            let after =
                Placement::compute_from(Some(&before), &names(n + 1), 64, 3, DEFAULT_VNODES);
            let moved = before
                .leaders
                .iter()
                .zip(&after.leaders)
                .filter(|(a, b)| a != b)
                .count();
            // The newcomer takes its share of leaders (sometimes by a short chain of
            // hand-overs, as it is not a replica of every partition), and little else moves.
            assert!(
                moved as f64 <= 64.0 * 0.30,
                "{n}->{}: {moved} of 64 leaders moved",
                n + 1
            );
            assert!(after.leader_counts()[format!("dcache-{n}").as_str()] > 0);
            let back = Placement::compute_from(Some(&after), &names(n), 64, 3, DEFAULT_VNODES);
            let moved_back = after
                .leaders
                .iter()
                .zip(&back.leaders)
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                moved_back as f64 <= 64.0 * 0.30,
                "{}->{n}: {moved_back} moved",
                n + 1
            );
        }
    }
}
