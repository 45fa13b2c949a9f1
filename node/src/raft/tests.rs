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
        let machine = GroupStateMachine::new(Target::Partition {
            partition: 0,
            partitions: 1,
            store,
        });
        Ok(((), LogStore::memory(), machine))
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
        let machine = GroupStateMachine::durable(target, disk.clone(), group, recovered.snapshot)
            .expect("state machine");
        let log = LogStore::durable(group, recovered.log, disk.wal.clone());
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
