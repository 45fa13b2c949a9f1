//! Scaling a live cluster: replicas move to the placement of the new member set, few
//! leaders move, drained members leave, and no key is lost.

mod common;

use std::time::Duration;

use common::TestCluster;
use dcache_protocol::partition_of;

const KEYS: usize = 10_000;
const REBALANCE_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_3_to_4_moves_few_leaders_then_drain_back_to_3() {
    // The default partition count: leader movement is measured at its real granularity.
    let mut cluster = TestCluster::start_with(3, dcache_protocol::DEFAULT_PARTITIONS).await;
    cluster.write_keys(&[0, 1, 2], KEYS).await;
    cluster.wait_rebalanced(&[0, 1, 2], REBALANCE_WITHIN).await;
    let before = cluster.partition_leaders(&[0, 1, 2]).await;

    let added = cluster.add_node();
    cluster.set_members(0, &[0, 1, 2, added]).await;
    cluster
        .wait_rebalanced(&[0, 1, 2, added], REBALANCE_WITHIN)
        .await;
    let after = cluster.partition_leaders(&[0, 1, 2, added]).await;

    let moved = (0..KEYS)
        .filter(|i| {
            let p = partition_of(format!("key-{i}").as_bytes(), cluster.partitions) as usize;
            before[p] != after[p]
        })
        .count();
    let fraction = moved as f64 / KEYS as f64;
    println!(
        "3 -> 4: {moved} of {KEYS} keys changed leader ({:.1}%)",
        fraction * 100.0
    );
    assert!(
        fraction <= 0.30,
        "{:.1}% of keys changed leader",
        fraction * 100.0
    );
    assert!(
        after.iter().any(|l| l.as_deref() == Some("node-3")),
        "the new node leads nothing: {after:?}"
    );
    cluster.check_keys(&[0, 1, 2, added], KEYS).await;

    // 4 -> 3 by drain: the leaving node hands everything over before it is forgotten.
    cluster.set_members(1, &[0, 1, 2]).await;
    cluster.wait_rebalanced(&[0, 1, 2], REBALANCE_WITHIN).await;
    let drained = cluster.get_json(added, "/stats").await;
    assert_eq!(
        drained["partitions_held"], 0,
        "drained node still holds replicas: {drained}"
    );
    cluster.nodes[added].kill();
    cluster.check_keys(&[0, 1, 2], KEYS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_3_to_5_to_3_loses_nothing() {
    let mut cluster = TestCluster::start(3).await;
    cluster.write_keys(&[0, 1, 2], KEYS / 2).await;
    let four = cluster.add_node();
    let five = cluster.add_node();
    cluster.set_members(2, &[0, 1, 2, four, five]).await;
    cluster
        .wait_rebalanced(&[0, 1, 2, four, five], REBALANCE_WITHIN)
        .await;
    cluster.check_keys(&[four, five], KEYS / 2).await;

    cluster.set_members(0, &[0, 1, 2]).await;
    cluster.wait_rebalanced(&[0, 1, 2], REBALANCE_WITHIN).await;
    cluster.nodes[four].kill();
    cluster.nodes[five].kill();
    cluster.check_keys(&[0, 1, 2], KEYS / 2).await;
}
