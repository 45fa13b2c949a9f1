use openraft::testing::log::{StoreBuilder, Suite};

use super::log_store::MemLogStore;
use super::state_machine::{GroupStateMachine, Target};
use super::*;
use crate::clock::Clock;
use crate::store::{EvictionPolicy, Store, StoreConfig};

struct PartitionStoreBuilder;

impl StoreBuilder<TypeConfig, MemLogStore, GroupStateMachine> for PartitionStoreBuilder {
    async fn build(
        &self,
    ) -> Result<((), MemLogStore, GroupStateMachine), openraft::StorageError<TypeConfig>> {
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
        Ok(((), MemLogStore::default(), machine))
    }
}

struct ClusterStoreBuilder;

impl StoreBuilder<TypeConfig, MemLogStore, GroupStateMachine> for ClusterStoreBuilder {
    async fn build(
        &self,
    ) -> Result<((), MemLogStore, GroupStateMachine), openraft::StorageError<TypeConfig>> {
        let machine = GroupStateMachine::new(Target::Cluster(Default::default()));
        Ok(((), MemLogStore::default(), machine))
    }
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
