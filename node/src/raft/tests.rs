use openraft::testing::log::{StoreBuilder, Suite};

use super::log_store::LogStore;
use super::state_machine::{GroupStateMachine, Target};
use super::*;
use crate::clock::Clock;
use crate::store::{EvictionPolicy, Store, StoreConfig};

struct PartitionStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine> for PartitionStoreBuilder {
    async fn build(
        &self,
    ) -> Result<((), LogStore, GroupStateMachine), openraft::StorageError<TypeConfig>> {
        let store = Store::new(
            StoreConfig {
                max_memory: 16 << 20,
                eviction_policy: EvictionPolicy::Tinylfu,
            },
            Clock::new(),
        );
        let log = LogStore::memory();
        let machine = GroupStateMachine::new(Target::Partition {
            partition: 0,
            partitions: 1,
            store,
        })
        .with_log(log.clone());
        Ok(((), log, machine))
    }
}

struct ClusterStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine> for ClusterStoreBuilder {
    async fn build(
        &self,
    ) -> Result<((), LogStore, GroupStateMachine), openraft::StorageError<TypeConfig>> {
        let machine = GroupStateMachine::new(Target::Cluster(Default::default()));
        Ok(((), LogStore::memory(), machine))
    }
}

/// A disk-backed log and state machine in a fresh data directory each time; the
/// directory lives as long as the pair.
struct DiskStoreBuilder {
    policy: crate::persist::FsyncPolicy,
}

impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, tempfile::TempDir> for DiskStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, GroupStateMachine), openraft::StorageError<TypeConfig>>
    {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data_dir = crate::persist::DataDir::open(dir.path(), "suite", 1).expect("data dir");
        let options = crate::persist::wal::WalOptions {
            policy: self.policy,
            // Small segments, so that the suite's purges roll and delete some.
            segment_bytes: 4096,
        };
        let disk =
            std::sync::Arc::new(crate::persist::Disk::open(data_dir, options).expect("disk"));
        let group = partition_group(0);
        let recovered = disk.take_recovered(group);
        let store = Store::new(
            StoreConfig {
                max_memory: 16 << 20,
                eviction_policy: EvictionPolicy::Tinylfu,
            },
            Clock::new(),
        );
        let target = Target::Partition {
            partition: 0,
            partitions: 1,
            store,
        };
        let log = LogStore::durable(group, recovered.log, disk.wal.clone());
        let machine = GroupStateMachine::durable(target, disk.clone(), group, recovered.snapshot)
            .expect("state machine")
            .with_log(log.clone());
        Ok((dir, log, machine))
    }
}

#[tokio::test]
async fn disk_storage_passes_the_openraft_suite_with_fsync_always() {
    Suite::test_all(DiskStoreBuilder {
        policy: crate::persist::FsyncPolicy::Always,
    })
    .await
    .expect("openraft storage suite");
}

#[tokio::test]
async fn disk_storage_passes_the_openraft_suite_with_fsync_interval() {
    Suite::test_all(DiskStoreBuilder {
        policy: crate::persist::FsyncPolicy::Interval(std::time::Duration::from_millis(5)),
    })
    .await
    .expect("openraft storage suite");
}

#[tokio::test]
async fn partition_storage_passes_the_openraft_suite() {
    Suite::test_all(PartitionStoreBuilder)
        .await
        .expect("openraft storage suite");
}

#[tokio::test]
async fn cluster_storage_passes_the_openraft_suite() {
    Suite::test_all(ClusterStoreBuilder)
        .await
        .expect("openraft storage suite");
}

#[test]
fn commands_round_trip_through_the_wire_format() {
    let command = Command::Set {
        key: bytes::Bytes::from_static(b"user:1"),
        kind: crate::store::ValueKind::Json,
        data: bytes::Bytes::from_static(b"{\"a\":1}"),
        expires_at: Some(1_700_000_000_000),
    };
    let bytes = postcard::to_stdvec(&command).unwrap();
    assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), command);
    assert_eq!(group_partition(partition_group(7)), Some(7));
    assert_eq!(group_partition(CLUSTER_GROUP), None);
}

/// A partition's snapshot is rebuilt from the previous one and the log since; it must
/// hold exactly what the store the same commands were applied to holds, whatever the
/// commands (conditional, read-modify-write, deletes, expiries).
#[tokio::test]
async fn a_snapshot_rebuilt_from_the_log_holds_what_the_store_holds() {
    use bytes::Bytes;
    use openraft::RaftSnapshotBuilder;
    use openraft::entry::RaftEntry;
    type RaftLogEntry = openraft::type_config::alias::EntryOf<TypeConfig>;
    use openraft::storage::RaftStateMachine;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use crate::store::update::{ExpireCondition, Expiry, Presence, Update};
    use crate::store::{ValueKind, read_snapshot};

    let clock = Clock::new();
    let store = Store::new(
        StoreConfig {
            max_memory: 16 << 20,
            eviction_policy: EvictionPolicy::Tinylfu,
        },
        clock,
    );
    let log = LogStore::memory();
    let mut machine = GroupStateMachine::new(Target::Partition {
        partition: 0,
        partitions: 1,
        store: store.clone(),
    })
    .with_log(log.clone());
    let log_id = |index: u64| openraft::testing::log_id::<TypeConfig>(1, 1, index);
    let mut rng = StdRng::seed_from_u64(7);
    let mut next_index = 0u64;
    let later = clock.now_ms() + 3_600_000;

    // Three rounds of commands, a snapshot after each (the first from the log alone,
    // the others from the snapshot before them and the log since).
    for round in 0..3 {
        let mut entries = Vec::new();
        if next_index == 0 {
            entries.push(RaftLogEntry::new_blank(log_id(0)));
            next_index = 1;
        }
        for _ in 0..400 {
            let key = Bytes::from(format!("k{}", rng.random_range(0..40)));
            let now = clock.now_ms();
            let value = Bytes::from(format!("{}", rng.random_range(0..1000)));
            let expiry = match rng.random_range(0..4) {
                0 => Expiry::At(later),
                1 => Expiry::At(now.saturating_sub(1)),
                2 => Expiry::Keep,
                _ => Expiry::Never,
            };
            let update = |update| Command::Update { now, update };
            let command = match rng.random_range(0..10) {
                0 => Command::Set {
                    key,
                    kind: ValueKind::Json,
                    data: value,
                    expires_at: rng.random_bool(0.3).then_some(later),
                },
                1 => Command::Delete { key },
                2 => update(Update::Set {
                    key,
                    data: value,
                    expiry,
                    presence: [Presence::Any, Presence::Absent, Presence::Present]
                        [rng.random_range(0..3)],
                    get: true,
                }),
                3 => update(Update::IncrBy {
                    key,
                    by: rng.random_range(-5..5),
                }),
                4 => update(Update::IncrByFloat { key, by: 0.5 }),
                5 => update(Update::Append {
                    key,
                    data: value,
                    max_len: 1 << 20,
                }),
                6 => update(Update::Expire {
                    key,
                    expiry,
                    condition: ExpireCondition::Always,
                    get: false,
                }),
                7 => update(Update::GetDelete { key }),
                8 => update(Update::SetMany {
                    pairs: vec![(key, value.clone()), (Bytes::from_static(b"k0"), value)],
                    expiry,
                    only_if_none_exist: rng.random_bool(0.5),
                }),
                _ => update(Update::Delete {
                    keys: vec![key, Bytes::from_static(b"k1")],
                }),
            };
            entries.push(RaftLogEntry::new_normal(log_id(next_index), command));
            next_index += 1;
        }
        for entry in &entries {
            log.push(entry.clone());
        }
        machine
            .apply(futures_util::stream::iter(
                entries.into_iter().map(|entry| Ok((entry, None))),
            ))
            .await
            .unwrap();

        let snapshot = machine.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(next_index - 1)));
        let mut rebuilt = read_snapshot(snapshot.snapshot.reader()).unwrap();
        let mut copied = Vec::new();
        store.snapshot_partition(0, 1, &mut copied).unwrap();
        let mut copied = read_snapshot(&copied[..]).unwrap();
        rebuilt.sort_by(|a, b| a.0.cmp(&b.0));
        copied.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(!copied.is_empty(), "round {round} left some keys");
        assert_eq!(rebuilt, copied, "round {round}");
    }
}
