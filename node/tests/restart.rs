//! Nodes that come back without their state: re-admitted under a new Raft identity and
//! caught up from snapshots while the others keep quorum, and partitions that lost
//! every replica re-formed empty, loudly.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::TestCluster;
use dcache_protocol::partition_of;
use serde_json::{Value, json};

/// Keeps writing `during-{i}` through `urls` until `stop`; every write must be
/// acknowledged within 10 s (a partition that lost its leader elects another well
/// within that). Returns how many were written.
async fn write_until(urls: Vec<String>, stop: Arc<AtomicBool>) -> usize {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut written = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("during-{written}");
        let deadline = Instant::now() + Duration::from_secs(10);
        for attempt in 0.. {
            let url = format!("{}/cache/{key}", urls[attempt % urls.len()]);
            let sent = client
                .put(&url)
                .json(&json!({"value": written}))
                .send()
                .await;
            if sent.as_ref().is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{key} not acknowledged within 10 s: quorum lost ({sent:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        written += 1;
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_without_state_rejoins_under_a_new_incarnation() {
    // Snapshots every 20 entries: the log the restarted node would need is gone, so it
    // must catch up from snapshots.
    let mut cluster = TestCluster::start_configured(3, 4, &["--raft-snapshot-entries", "20"]).await;
    cluster.write_keys(&[0, 1, 2], 300).await;
    // Enough data that each partition's snapshot spans several chunks on the wire.
    let big = "b".repeat(20_000);
    for i in 0..80 {
        cluster
            .set_until_acknowledged(
                &[i % 3],
                &format!("big-{i}"),
                &json!(big),
                Duration::from_secs(30),
            )
            .await;
    }
    // More than 20 entries per partition after the big values, so that every
    // partition's latest snapshot holds them, whatever the writer below manages to add
    // on a loaded machine.
    for i in 0..200 {
        cluster
            .set_until_acknowledged(
                &[i % 3],
                &format!("after-{i}"),
                &json!(i),
                Duration::from_secs(30),
            )
            .await;
    }
    let old_id = cluster.cluster_status(1).await["raft_id"].as_u64().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(
        vec![cluster.nodes[0].base.clone(), cluster.nodes[2].base.clone()],
        stop.clone(),
    ));

    cluster.restart_node(1);
    let first = cluster
        .client
        .get(cluster.nodes[1].url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 503, "a node without state is not ready");
    let reason = first.text().await.unwrap();
    assert!(reason.contains("not ready"), "{reason}");
    cluster.wait_ready(Duration::from_secs(90)).await;
    // Ready only once it votes again wherever the placement puts it, so that a rolling
    // restart never takes the next node while a partition still counts the old one.
    for partition in cluster.cluster_status(1).await["partitions"]
        .as_array()
        .unwrap()
    {
        if partition["replicas"]
            .as_array()
            .unwrap()
            .contains(&json!("node-1"))
        {
            assert!(
                partition["voters"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("node-1")),
                "node-1 ready before it votes in {partition}"
            );
        }
    }
    cluster
        .wait_rebalanced(&[0, 1, 2], Duration::from_secs(90))
        .await;
    stop.store(true, Ordering::Relaxed);
    let during = writer.await.unwrap();
    assert!(during > 0, "the writer ran while node 1 restarted");

    let new_id = cluster.cluster_status(1).await["raft_id"].as_u64().unwrap();
    assert_ne!(new_id, old_id, "a restarted node never reuses its identity");
    let status = cluster.cluster_status(0).await;
    let member = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"]["name"] == "node-1")
        .expect("node-1 is still a member");
    assert_eq!(member["raft_id"].as_u64(), Some(new_id));
    for partition in cluster.cluster_status(1).await["partitions"]
        .as_array()
        .unwrap()
    {
        let voters: BTreeSet<&str> = partition["voters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            voters,
            BTreeSet::from(["node-0", "node-1", "node-2"]),
            "{partition}"
        );
    }

    // Its own copy holds everything: read locally until caught up to the last entry.
    let deadline = Instant::now() + Duration::from_secs(30);
    let keys: Vec<(String, usize)> = (0..300)
        .map(|i| (format!("key-{i}"), i))
        .chain((0..during).map(|i| (format!("during-{i}"), i)))
        .collect();
    for (key, value) in &keys {
        loop {
            let local = cluster.get(1, key, "local").await;
            if local == Ok(Some(json!(value))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{key} on the restarted node: {local:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for i in 0..80 {
        let key = format!("big-{i}");
        assert_eq!(
            cluster.get(1, &key, "local").await,
            Ok(Some(json!(big))),
            "{key}"
        );
    }
    assert!(
        cluster
            .metric(1, "dcache_raft_snapshot_received_bytes_total")
            .await
            > 1_000_000.0,
        "the restarted node caught up from snapshots"
    );

    // Metrics agree with the cluster: every partition led once, held three times.
    let mut led = 0.0;
    let mut balancers = 0.0;
    for node in 0..3 {
        led += cluster.metric(node, "dcache_raft_partitions_led").await;
        balancers += cluster.metric(node, "dcache_rebalance_active").await;
        assert_eq!(
            cluster.metric(node, "dcache_raft_partitions_held").await,
            4.0
        );
    }
    assert_eq!(led, 4.0);
    assert_eq!(balancers, 1.0);
    let elections = cluster.metric_sum("dcache_raft_elections_total").await;
    let changes = cluster
        .metric_sum("dcache_raft_membership_changes_total")
        .await;
    assert!(elections >= 1.0, "the restart caused elections");
    assert!(changes >= 4.0, "every partition re-admitted node-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_lost_every_replica_is_reformed_empty_and_said_so() {
    const PARTITIONS: u32 = 8;
    let mut cluster = TestCluster::start_configured(3, PARTITIONS, &["--replication", "1"]).await;
    cluster.write_keys(&[0, 1, 2], 200).await;
    let status = cluster.cluster_status(0).await;
    let on_node_1: BTreeSet<u64> = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["replicas"] == json!(["node-1"]))
        .map(|p| p["partition"].as_u64().unwrap())
        .collect();
    assert!(!on_node_1.is_empty(), "node-1 holds some partitions alone");

    // Its only replica restarts without state: those partitions' data is gone for good.
    cluster.restart_node(1);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = cluster.cluster_status(0).await;
        let lost: BTreeSet<u64> = status["lost_partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["partition"].as_u64().unwrap())
            .collect();
        let all_led = status["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| !p["leader"].is_null() || p["hosted"] == false);
        if lost == on_node_1 && all_led {
            break;
        }
        assert!(
            lost.is_subset(&on_node_1),
            "only node-1's partitions: {lost:?}"
        );
        assert!(
            Instant::now() < deadline,
            "lost partitions not re-formed: {}",
            status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.wait_ready(Duration::from_secs(60)).await;
    let lost = cluster.cluster_status(2).await["lost_partitions"].clone();
    assert_eq!(lost.as_array().unwrap().len(), on_node_1.len(), "{lost}");
    assert!(lost[0]["reason"].as_str().unwrap().contains("replica"));
    for node in 0..3 {
        assert_eq!(
            cluster.metric(node, "dcache_cluster_partitions_lost").await,
            on_node_1.len() as f64
        );
    }

    // Keys of the lost partitions are gone; every other key is intact; every
    // partition takes writes again.
    for i in 0..200 {
        let key = format!("key-{i}");
        let partition = partition_of(key.as_bytes(), PARTITIONS);
        let value = cluster
            .get_settled(i % 3, &key, "linearizable", Duration::from_secs(30))
            .await;
        if on_node_1.contains(&u64::from(partition)) {
            assert_eq!(value, None, "{key} was in a lost partition");
        } else {
            assert_eq!(value, Some(json!(i)), "{key} survives");
        }
    }
    cluster.write_keys(&[0, 1, 2], 200).await;
    cluster.check_keys(&[0, 1, 2], 200).await;
}
