//! `--persistence disk` with real node processes: a whole cluster killed with SIGKILL
//! under write load keeps every acknowledged write; a node restarted with its disk
//! keeps its identity and catches up only the tail; a data directory serves only the
//! node it belongs to.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{PARTITIONS, TestCluster};
use serde_json::{Value, json};

/// Each member's name and Raft id, as node `via` reports them.
async fn member_ids(cluster: &TestCluster, via: usize) -> Vec<(String, u64)> {
    let status = cluster.cluster_status(via).await;
    let mut ids: Vec<(String, u64)> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["node"]["name"].as_str().unwrap().to_owned(),
                m["raft_id"].as_u64().unwrap(),
            )
        })
        .collect();
    ids.sort();
    ids
}

/// What the load wrote to one key: the last value acknowledged, and the last value sent
/// (acknowledged or not: a write in flight when the nodes died may or may not be kept).
#[derive(Debug, Default, Clone)]
struct Written {
    acknowledged: Option<u64>,
    sent: u64,
    /// Values whose write got no answer (a timeout, a killed node): such a write may
    /// still be applied at any later moment, even after a newer acknowledged one.
    unanswered: Vec<u64>,
}

/// Writers each overwrite their own keys, one write at a time, until `stop`.
async fn write_load(
    urls: Vec<String>,
    writer: usize,
    keys: usize,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
    log: Arc<Mutex<HashMap<String, Written>>>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let mut value = 0u64;
    while !stop.load(Ordering::Relaxed) {
        value += 1;
        let key = format!("w{writer}-k{}", value as usize % keys);
        log.lock().unwrap().entry(key.clone()).or_default().sent = value;
        let url = format!("{}/cache/{key}", urls[value as usize % urls.len()]);
        let sent = client.put(&url).json(&json!({"value": value})).send().await;
        if sent.is_ok_and(|r| r.status() == 200) {
            log.lock().unwrap().get_mut(&key).unwrap().acknowledged = Some(value);
            acknowledged.fetch_add(1, Ordering::Relaxed);
        } else {
            log.lock()
                .unwrap()
                .get_mut(&key)
                .unwrap()
                .unanswered
                .push(value);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_sigkill_of_the_whole_cluster() {
    sigkill_the_whole_cluster_under_load("always").await;
}

/// With an interval, an append is acknowledged after write(2): the bytes are in the
/// page cache, which a killed process does not take with it. Only a machine crash can
/// lose the last interval (measured by `make bench-persistence`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_interval_a_killed_process_loses_nothing_either() {
    sigkill_the_whole_cluster_under_load("interval:50").await;
}

/// Kills every node with SIGKILL while six writers overwrite their keys, restarts them
/// on their data directories, and checks every key holds its last acknowledged value
/// (or the newer one in flight at the kill).
async fn sigkill_the_whole_cluster_under_load(fsync: &str) {
    let root = tempfile::tempdir().unwrap();
    // Snapshots every 100 entries: the restart restores snapshots and replays the log
    // after them, and old segments are purged while the load runs.
    let mut cluster = TestCluster::start_in(
        3,
        PARTITIONS,
        &["--fsync", fsync, "--raft-snapshot-entries", "100"],
        Some(root.path().to_owned()),
    )
    .await;
    let members_before = member_ids(&cluster, 0).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.base.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(HashMap::new()));
    let writers: Vec<_> = (0..6)
        .map(|writer| {
            tokio::spawn(write_load(
                urls.clone(),
                writer,
                40,
                stop.clone(),
                acknowledged.clone(),
                log.clone(),
            ))
        })
        .collect();
    // Mid-load: once enough writes are acknowledged that every partition snapshotted.
    while acknowledged.load(Ordering::Relaxed) < 2000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in &mut cluster.nodes {
        // SIGKILL, one right after the other, writes still in flight.
        let _ = node.child.kill();
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    for node in &mut cluster.nodes {
        let _ = node.child.wait();
    }
    let written = log.lock().unwrap().clone();
    let acknowledged = acknowledged.load(Ordering::Relaxed);

    for index in 0..3 {
        cluster.start_again(index);
    }
    cluster.wait_ready(Duration::from_secs(90)).await;
    assert_eq!(
        member_ids(&cluster, 1).await,
        members_before,
        "the same members under the same identities"
    );
    let mut checked = 0;
    for (key, write) in &written {
        let Some(last_acknowledged) = write.acknowledged else {
            continue;
        };
        let value = cluster
            .get_settled(checked % 3, key, "linearizable", Duration::from_secs(30))
            .await;
        let value = value
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| panic!("{key} lost: {last_acknowledged} was acknowledged"));
        assert!(
            (last_acknowledged..=write.sent).contains(&value) || write.unanswered.contains(&value),
            "{key} = {value}: {last_acknowledged} was acknowledged, {} the last sent",
            write.sent
        );
        checked += 1;
    }
    assert_eq!(checked, 6 * 40, "every key was acknowledged at least once");
    eprintln!("{acknowledged} writes acknowledged before SIGKILL; all {checked} keys intact");
    // The cluster takes writes again.
    cluster
        .set_until_acknowledged(&[0, 1, 2], "after", &json!(1), Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_its_disk_keeps_its_identity_and_catches_up_the_tail() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start_in(3, PARTITIONS, &[], Some(root.path().to_owned())).await;
    cluster.write_keys(&[0, 1, 2], 200).await;
    let members_before = member_ids(&cluster, 0).await;
    let epoch_before = cluster.cluster_status(0).await["epoch"].as_u64().unwrap();
    let raft_id_before = cluster.cluster_status(2).await["raft_id"].as_u64().unwrap();

    cluster.nodes[2].kill();
    // The tail it misses: new keys and overwrites of old ones.
    for i in 150..300 {
        cluster
            .set_until_acknowledged(
                &[0, 1],
                &format!("key-{i}"),
                &json!(i),
                Duration::from_secs(30),
            )
            .await;
    }
    cluster.start_again(2);
    cluster.wait_ready(Duration::from_secs(60)).await;

    let status = cluster.cluster_status(2).await;
    assert_eq!(
        status["raft_id"].as_u64(),
        Some(raft_id_before),
        "same identity"
    );
    // Every key, read locally on the restarted node: its own data and the tail.
    for i in 0..300 {
        let key = format!("key-{i}");
        let mut value = None;
        for _ in 0..100 {
            value = cluster.get(2, &key, "local").await.ok().flatten();
            if value.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Partitions whose replicas are elsewhere forward; either way the value is there.
        assert_eq!(value, Some(json!(i)), "{key} on the restarted node");
    }
    // Caught up from the log alone: no snapshot was sent to it.
    assert_eq!(
        cluster
            .metric(2, "dcache_raft_snapshot_received_bytes_total")
            .await,
        0.0
    );
    for node in [0, 1] {
        assert_eq!(
            cluster
                .metric(node, "dcache_raft_snapshot_sent_bytes_total")
                .await,
            0.0
        );
    }
    // Not a new member: the balancer had nothing to re-admit, so the cluster state did
    // not change. Several balancer rounds pass while the reads above run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(member_ids(&cluster, 0).await, members_before);
    assert_eq!(
        cluster.cluster_status(0).await["epoch"].as_u64(),
        Some(epoch_before)
    );
    let wal_bytes = cluster.metric(2, "dcache_wal_written_bytes_total").await;
    assert!(wal_bytes > 0.0, "the restarted node writes its log on disk");
}

/// Runs `dcache-node` with `args` and expects it to refuse to start.
fn refused(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dcache-node"))
        .args(["--listen", "127.0.0.1:0", "--raft-listen", "127.0.0.1:0"])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!output.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_serves_only_its_own_node() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start_in(1, PARTITIONS, &[], Some(root.path().to_owned())).await;
    let dir = cluster.data_dir(0).unwrap();
    let dir = dir.to_str().unwrap();
    let partitions = PARTITIONS.to_string();
    let disk = ["--persistence", "disk", "--data-dir", dir];

    let busy = refused(
        &[
            &disk[..],
            &["--node-id", "node-0", "--partitions", &partitions],
        ]
        .concat(),
    );
    assert!(busy.contains("in use by another process"), "{busy}");

    cluster.nodes[0].kill();
    let stranger = refused(
        &[
            &disk[..],
            &["--node-id", "node-9", "--partitions", &partitions],
        ]
        .concat(),
    );
    assert!(
        stranger.contains("belongs to node \"node-0\""),
        "{stranger}"
    );
    let resized = refused(&[&disk[..], &["--node-id", "node-0", "--partitions", "8"]].concat());
    assert!(resized.contains("partitions"), "{resized}");
    let no_dir = refused(&["--persistence", "disk"]);
    assert!(no_dir.contains("needs --data-dir"), "{no_dir}");

    // Nothing was changed by the refusals: the node comes back as itself.
    cluster.start_again(0);
    cluster.wait_ready(Duration::from_secs(60)).await;
    assert_eq!(
        cluster.cluster_status(0).await["cluster_id"],
        Value::from("test")
    );
}
