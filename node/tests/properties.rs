//! Property tests of the two pieces every answer rests on: where a key lives
//! (placement) and what the store gives back (the store against a model of it).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use dcache_node::clock::Clock;
use dcache_node::placement::Placement;
use dcache_node::store::{Entry, EvictionPolicy, Store, StoreConfig, ValueKind, entry_weight};
use dcache_protocol::partition_of;
use proptest::prelude::*;

const VNODES: u32 = 32;

/// Distinct member names, as a StatefulSet or a local runner would give them.
fn members(max: usize) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::btree_set("[a-z]{1,6}-[0-9]{1,2}", 1..=max)
        .prop_map(|set| set.into_iter().collect())
}

fn placement(members: &[String], partitions: u32, replication: usize) -> Placement {
    Placement::compute(members, partitions, replication, VNODES)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_partition_has_distinct_replicas_among_the_members_and_a_leader_among_them(
        members in members(9),
        partitions in 1u32..=128,
        replication in 1usize..=5,
    ) {
        let placement = placement(&members, partitions, replication);
        prop_assert_eq!(placement.replicas.len(), partitions as usize);
        prop_assert_eq!(placement.leaders.len(), partitions as usize);
        for (replicas, leader) in placement.replicas.iter().zip(&placement.leaders) {
            let distinct: BTreeSet<&String> = replicas.iter().collect();
            prop_assert_eq!(distinct.len(), replicas.len(), "replicas repeat: {:?}", replicas);
            prop_assert_eq!(replicas.len(), replication.min(members.len()));
            prop_assert!(replicas.iter().all(|r| members.contains(r)));
            prop_assert!(replicas.contains(leader), "{} leads {:?}", leader, replicas);
        }
    }

    #[test]
    fn placement_ignores_member_order_and_repeats(
        members in members(8),
        partitions in 1u32..=64,
        replication in 1usize..=4,
        rotation in 0usize..8,
    ) {
        let mut shuffled = members.clone();
        shuffled.reverse();
        let by = rotation % shuffled.len();
        shuffled.rotate_left(by);
        shuffled.push(members[0].clone());
        prop_assert_eq!(
            placement(&members, partitions, replication),
            placement(&shuffled, partitions, replication)
        );
    }

    /// Consistent hashing's promise: a new member takes replicas, and nothing else
    /// moves between the members that were already there.
    #[test]
    fn a_joining_member_only_takes_replicas(
        members in members(7),
        newcomer in "[A-Z]{3}",
        partitions in 1u32..=128,
        replication in 1usize..=3,
    ) {
        let before = placement(&members, partitions, replication);
        let mut grown = members.clone();
        grown.push(newcomer.clone());
        let after = placement(&grown, partitions, replication);
        for (old, new) in before.replicas.iter().zip(&after.replicas) {
            let old: BTreeSet<&String> = old.iter().collect();
            let new: BTreeSet<&String> = new.iter().collect();
            let gained: Vec<_> = new.difference(&old).collect();
            let lost: Vec<_> = old.difference(&new).collect();
            if gained.is_empty() {
                prop_assert!(lost.is_empty(), "{:?} left without a newcomer", lost);
            } else {
                prop_assert!(gained.len() == 1 && **gained[0] == newcomer, "gained {:?}", gained);
                prop_assert!(lost.len() <= 1, "one replica makes room: {:?}", lost);
            }
        }
    }

    /// And a leaving member's replicas go elsewhere; partitions it did not hold stay.
    #[test]
    fn a_leaving_member_only_gives_up_its_replicas(
        members in members(8).prop_filter("someone stays", |m| m.len() >= 2),
        leaver in any::<prop::sample::Index>(),
        partitions in 1u32..=128,
        replication in 1usize..=3,
    ) {
        let leaver = members[leaver.index(members.len())].clone();
        let before = placement(&members, partitions, replication);
        let shrunk: Vec<String> = members.iter().filter(|m| **m != leaver).cloned().collect();
        let after = placement(&shrunk, partitions, replication);
        for (old, new) in before.replicas.iter().zip(&after.replicas) {
            if old.contains(&leaver) {
                let kept: BTreeSet<&String> = old.iter().filter(|m| **m != leaver).collect();
                let new_set: BTreeSet<&String> = new.iter().collect();
                prop_assert!(kept.is_subset(&new_set), "{:?} -> {:?}", old, new);
            } else {
                prop_assert_eq!(old, new);
            }
        }
    }

    #[test]
    fn every_key_has_one_partition_in_range(
        key in proptest::collection::vec(any::<u8>(), 0..64),
        partitions in 1u32..=4096,
    ) {
        let partition = partition_of(&key, partitions);
        prop_assert!(partition < partitions);
        prop_assert_eq!(partition, partition_of(&key, partitions));
    }
}

/// A write or read the store is asked for; keys come from a small set so they collide.
#[derive(Debug, Clone)]
enum Op {
    Set { key: u8, value: Vec<u8>, ttl: Ttl },
    Delete { key: u8 },
    Get { key: u8 },
}

#[derive(Debug, Clone, Copy)]
enum Ttl {
    Never,
    /// Already past when written (a late replay): the write removes the key.
    Past,
    /// An hour from now: alive for the whole test.
    Future,
}

fn op(keys: u8, max_value: usize) -> impl Strategy<Value = Op> {
    let ttl = prop_oneof![Just(Ttl::Never), Just(Ttl::Past), Just(Ttl::Future)];
    prop_oneof![
        4 => (0..keys, proptest::collection::vec(any::<u8>(), 0..max_value), ttl)
            .prop_map(|(key, value, ttl)| Op::Set { key, value, ttl }),
        1 => (0..keys).prop_map(|key| Op::Delete { key }),
        3 => (0..keys).prop_map(|key| Op::Get { key }),
    ]
}

fn key_bytes(key: u8) -> Bytes {
    Bytes::from(format!("key-{key}"))
}

fn entry(clock: &Clock, value: &[u8], ttl: Ttl) -> Entry {
    let now = clock.now_ms();
    Entry {
        kind: ValueKind::Bytes,
        data: Bytes::copy_from_slice(value),
        expires_at: match ttl {
            Ttl::Never => None,
            Ttl::Past => Some(now.saturating_sub(1_000)),
            Ttl::Future => Some(now + 3_600_000),
        },
    }
}

fn store(max_memory: u64, eviction_policy: EvictionPolicy) -> Store {
    Store::new(
        StoreConfig {
            max_memory,
            eviction_policy,
        },
        Clock::new(),
    )
}

fn policy() -> impl Strategy<Value = EvictionPolicy> {
    prop_oneof![Just(EvictionPolicy::Tinylfu), Just(EvictionPolicy::Lru)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// With room for everything, the store is a map: every read answers what the model
    /// says, and deletes say whether the key was there.
    #[test]
    fn with_room_the_store_answers_like_a_map(
        ops in proptest::collection::vec(op(12, 64), 1..200),
        policy in policy(),
    ) {
        let store = store(64 << 20, policy);
        let mut model: HashMap<u8, Vec<u8>> = HashMap::new();
        for op in ops {
            match op {
                Op::Set { key, value, ttl } => {
                    store.set(key_bytes(key), entry(store.clock(), &value, ttl));
                    match ttl {
                        Ttl::Past => model.remove(&key),
                        Ttl::Never | Ttl::Future => model.insert(key, value),
                    };
                }
                Op::Delete { key } => {
                    prop_assert_eq!(store.delete(&key_bytes(key)), model.remove(&key).is_some());
                }
                Op::Get { key } => {
                    let found = store.get(&key_bytes(key)).map(|e| e.data.to_vec());
                    prop_assert_eq!(found.as_ref(), model.get(&key));
                }
            }
        }
        store.run_maintenance();
        prop_assert_eq!(store.stats().keys, model.len() as u64);
    }

    /// Under a budget too small for everything, eviction may turn a read into a miss,
    /// but never into an older value, and the store stays within its budget.
    #[test]
    fn over_budget_the_store_misses_but_never_answers_an_older_value(
        ops in proptest::collection::vec(op(40, 2048), 1..300),
        budget_entries in 2u64..12,
        policy in policy(),
    ) {
        let budget = budget_entries * (ENTRY_BUDGET_UNIT);
        let store = store(budget, policy);
        let mut latest: HashMap<u8, Option<Vec<u8>>> = HashMap::new();
        for op in ops {
            match op {
                Op::Set { key, value, ttl } => {
                    store.set(key_bytes(key), entry(store.clock(), &value, ttl));
                    let live = !matches!(ttl, Ttl::Past);
                    latest.insert(key, live.then_some(value));
                }
                Op::Delete { key } => {
                    let existed = store.delete(&key_bytes(key));
                    if existed {
                        prop_assert!(latest.get(&key).is_some_and(Option::is_some));
                    }
                    latest.insert(key, None);
                }
                Op::Get { key } => {
                    if let Some(found) = store.get(&key_bytes(key)) {
                        let expected = latest.get(&key).cloned().flatten();
                        prop_assert_eq!(Some(found.data.to_vec()), expected);
                    }
                }
            }
            store.run_maintenance();
            prop_assert!(
                store.stats().bytes <= budget,
                "{} bytes held over a budget of {}", store.stats().bytes, budget
            );
        }
    }

    /// A partition's snapshot restored elsewhere holds exactly its live entries.
    #[test]
    fn a_partition_snapshot_restores_exactly_its_entries(
        entries in proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 1..24),
            (proptest::collection::vec(any::<u8>(), 0..128), any::<bool>()),
            0..60,
        ),
        partitions in 1u32..=8,
        partition in any::<prop::sample::Index>(),
    ) {
        let partition = partition.index(partitions as usize) as u32;
        let source = store(64 << 20, EvictionPolicy::Lru);
        for (key, (value, json)) in &entries {
            let mut e = entry(source.clock(), value, Ttl::Future);
            if *json {
                e.kind = ValueKind::Json;
            }
            source.set(Bytes::copy_from_slice(key), e);
        }
        let mut snapshot = Vec::new();
        source.snapshot_partition(partition, partitions, &mut snapshot).unwrap();

        let target = store(64 << 20, EvictionPolicy::Lru);
        target.set(Bytes::from_static(b"stale"), entry(target.clock(), b"old", Ttl::Never));
        target.restore_partition(partition, partitions, &snapshot[..]).unwrap();

        let expected: BTreeMap<Vec<u8>, Entry> = source
            .partition_entries(partition, partitions)
            .map(|(k, e)| (k.to_vec(), e))
            .collect();
        let restored: BTreeMap<Vec<u8>, Entry> = target
            .partition_entries(partition, partitions)
            .map(|(k, e)| (k.to_vec(), e))
            .collect();
        prop_assert_eq!(restored, expected);
    }

    /// Any bytes offered as a snapshot either restore or are refused; a refused one
    /// leaves the store as it was.
    #[test]
    fn a_garbled_snapshot_changes_nothing(
        garbage in proptest::collection::vec(any::<u8>(), 0..512),
        flip in any::<prop::sample::Index>(),
    ) {
        let source = store(64 << 20, EvictionPolicy::Lru);
        for i in 0..5u8 {
            source.set(key_bytes(i), entry(source.clock(), &[i; 8], Ttl::Never));
        }
        let mut snapshot = Vec::new();
        source.snapshot_partition(0, 1, &mut snapshot).unwrap();
        let at = flip.index(snapshot.len());
        snapshot[at] ^= 0x5a;

        let target = store(64 << 20, EvictionPolicy::Lru);
        target.set(key_bytes(99), entry(target.clock(), b"kept", Ttl::Never));
        for input in [&garbage[..], &snapshot[..]] {
            if target.restore_partition(0, 1, input).is_err() {
                prop_assert_eq!(
                    target.get(&key_bytes(99)).map(|e| e.data),
                    Some(Bytes::from_static(b"kept"))
                );
            }
        }
    }
}

/// What one mid-sized entry of the budget test weighs: a short key and a 1 KiB value.
const ENTRY_BUDGET_UNIT: u64 = 1024 + 8 + dcache_node::store::ENTRY_OVERHEAD_BYTES;

#[test]
fn the_budget_unit_is_the_weight_of_a_mid_sized_entry() {
    let clock = Clock::new();
    let weight = entry_weight(b"key-1234", &entry(&clock, &[0; 1024], Ttl::Never));
    assert_eq!(weight, ENTRY_BUDGET_UNIT);
}
