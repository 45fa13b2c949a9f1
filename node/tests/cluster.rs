//! Multi-node clusters of real processes: replication, failover, partitions, and a
//! history check that every acknowledged write is read back.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ELECTION_TIMEOUT, TestCluster};
use serde_json::{Value, json};

/// The name of the node leading `partition`, as `observer` sees it.
async fn leader_of(cluster: &TestCluster, observer: usize, partition: usize) -> Option<String> {
    let status = cluster.cluster_status(observer).await;
    status["partitions"][partition]["leader"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_and_failover_keeps_them() {
    let mut cluster = TestCluster::start(3).await;

    // Through each node in turn; a 503 while the balancer hands a leadership over is
    // retried on the same node.
    for i in 0..60 {
        let key = format!("key-{i}");
        cluster
            .set_until_acknowledged(&[i % 3], &key, &json!(i), Duration::from_secs(30))
            .await;
    }
    for node in 0..3 {
        for i in 0..60 {
            let key = format!("key-{i}");
            let value = cluster
                .get_settled(node, &key, "linearizable", Duration::from_secs(30))
                .await;
            assert_eq!(value, Some(json!(i)), "{key} via {node}");
        }
    }

    // Kill the leader of partition 0; a survivor must see a new one within two election
    // timeouts (the longest timeout is twice the configured minimum).
    let old_leader = leader_of(&cluster, 0, 0)
        .await
        .expect("partition 0 has a leader");
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.name == old_leader)
        .unwrap();
    let survivor = (victim + 1) % 3;
    let killed_at = Instant::now();
    cluster.nodes[victim].kill();
    loop {
        if let Some(leader) = leader_of(&cluster, survivor, 0).await
            && leader != old_leader
        {
            break;
        }
        assert!(
            killed_at.elapsed() < 2 * (2 * ELECTION_TIMEOUT) + Duration::from_secs(1),
            "no new leader for partition 0 after {:?}",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let survivors: Vec<usize> = (0..3).filter(|n| *n != victim).collect();
    for i in 60..120 {
        let key = format!("key-{i}");
        cluster
            .set_until_acknowledged(&survivors, &key, &json!(i), Duration::from_secs(30))
            .await;
    }
    for &node in &survivors {
        for i in 0..120 {
            let key = format!("key-{i}");
            // 503 while a partition elects is retried; the value must not be lost.
            let value = cluster
                .get_settled(node, &key, "linearizable", Duration::from_secs(30))
                .await;
            assert_eq!(
                value,
                Some(json!(i)),
                "{key} via node {node} after failover"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_node_acknowledges_nothing_and_catches_up_when_healed() {
    let cluster = TestCluster::start(3).await;
    let isolated = 2;
    cluster.isolate(isolated, true).await;

    // The isolated side acknowledges no write: not for partitions it led, which lost
    // their quorum, and not by forwarding. A write it proposed as leader and could not
    // commit is answered 504 (outcome unknown): should the majority side elect no new
    // leader for that partition before the cut heals (a loaded machine), the entry is
    // committed afterwards, which 504 allows. Refused writes (503) never take effect.
    let mut outcome_unknown = Vec::new();
    for i in 0..10 {
        let key = format!("cut-{i}");
        match cluster.try_set(isolated, &key, &json!(i)).await {
            Ok(()) => panic!("isolated node acknowledged {key}"),
            Err(why) if why.starts_with("504") => outcome_unknown.push(key),
            Err(_) => {}
        }
    }
    // The majority side keeps accepting writes once partitions led by the isolated
    // node have moved their leadership.
    for i in 0..30 {
        let key = format!("majority-{i}");
        cluster
            .set_until_acknowledged(&[0, 1], &key, &json!(i), Duration::from_secs(30))
            .await;
    }

    cluster.isolate(isolated, false).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..30 {
        let key = format!("majority-{i}");
        loop {
            if cluster.get(isolated, &key, "local").await == Ok(Some(json!(i))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "healed node never caught up on {key}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Nothing refused on the isolated side appeared anywhere.
    for i in 0..10 {
        let key = format!("cut-{i}");
        for node in 0..2 {
            let value = cluster
                .get_settled(node, &key, "linearizable", Duration::from_secs(30))
                .await;
            if outcome_unknown.contains(&key) {
                assert!(
                    value.is_none() || value == Some(json!(i)),
                    "{key} via {node}"
                );
            } else {
                assert_eq!(value, None, "{key} via {node}");
            }
        }
    }
}

/// Each client owns its keys and writes them one at a time, retrying until
/// acknowledged, so the last acknowledged write of every key is its expected value.
/// A leader is killed mid-run; afterwards every node must read back exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_check_every_acknowledged_write_is_the_latest_value() {
    const CLIENTS: usize = 4;
    const KEYS_PER_CLIENT: usize = 10;
    const OPS_PER_CLIENT: usize = 80;
    let cluster = Arc::new(tokio::sync::Mutex::new(TestCluster::start(3).await));
    let (client, nodes) = {
        let c = cluster.lock().await;
        (
            c.client.clone(),
            c.nodes.iter().map(|n| n.base.clone()).collect::<Vec<_>>(),
        )
    };
    let alive: Arc<std::sync::Mutex<Vec<usize>>> = Arc::new(std::sync::Mutex::new(vec![0, 1, 2]));

    let mut workers = Vec::new();
    for c in 0..CLIENTS {
        let (client, nodes, alive) = (client.clone(), nodes.clone(), alive.clone());
        workers.push(tokio::spawn(async move {
            let mut expected: BTreeMap<String, Option<Value>> = BTreeMap::new();
            for op in 0..OPS_PER_CLIENT {
                let key = format!("c{c}-k{}", op % KEYS_PER_CLIENT);
                // Sets with and without TTL, and deletes.
                let (method, body, outcome) = match op % 5 {
                    3 => ("DELETE", None, None),
                    4 => (
                        "PUT",
                        Some(json!({"value": op, "ttl": 3600})),
                        Some(json!(op)),
                    ),
                    _ => ("PUT", Some(json!({"value": op})), Some(json!(op))),
                };
                let deadline = Instant::now() + Duration::from_secs(60);
                for attempt in 0usize.. {
                    let targets = alive.lock().unwrap().clone();
                    let base = &nodes[targets[(op + attempt) % targets.len()]];
                    let url = format!("{base}/cache/{key}");
                    let request = match &body {
                        Some(body) => client.put(&url).json(body),
                        None => client.request(
                            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                            &url,
                        ),
                    };
                    if request.send().await.is_ok_and(|r| r.status() == 200) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{key} op {op} never acknowledged"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                expected.insert(key, outcome);
            }
            expected
        }));
    }

    // Kill a partition leader while the clients run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let mut c = cluster.lock().await;
        let leader = leader_of(&c, 0, 1).await.expect("partition 1 has a leader");
        let victim = c.nodes.iter().position(|n| n.name == leader).unwrap();
        alive.lock().unwrap().retain(|n| *n != victim);
        c.nodes[victim].kill();
    }

    let mut expected = BTreeMap::new();
    for worker in workers {
        expected.extend(worker.await.unwrap());
    }
    let c = cluster.lock().await;
    let survivors = alive.lock().unwrap().clone();
    for &node in &survivors {
        for (key, value) in &expected {
            let actual = c
                .get_settled(node, key, "linearizable", Duration::from_secs(30))
                .await;
            assert_eq!(&actual, value, "{key} via node {node}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_hands_its_leaderships_over_first() {
    let mut cluster = TestCluster::start(3).await;
    cluster
        .wait_rebalanced(&[0, 1, 2], Duration::from_secs(60))
        .await;
    let leaders = cluster.partition_leaders(&[0, 1, 2]).await;
    let victim = (0..3)
        .max_by_key(|i| {
            let name = &cluster.nodes[*i].name;
            leaders.iter().filter(|l| l.as_ref() == Some(name)).count()
        })
        .unwrap();
    let victim_name = cluster.nodes[victim].name.clone();
    assert!(leaders.contains(&Some(victim_name.clone())));

    let status = std::process::Command::new("kill")
        .args(["-TERM", &cluster.nodes[victim].child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.nodes[victim].child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the node did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Handed over before it exited: the survivors already name other leaders, well
    // before any election timeout could have passed.
    let survivors: Vec<usize> = (0..3).filter(|n| *n != victim).collect();
    let leaders = cluster.partition_leaders(&survivors).await;
    for (partition, leader) in leaders.iter().enumerate() {
        let leader = leader.as_deref();
        assert!(
            leader.is_some() && leader != Some(victim_name.as_str()),
            "partition {partition} led by {leader:?} right after {victim_name} stopped"
        );
    }
}

/// A pod deleted right after another one restarted empty (a `kubectl delete pod` that
/// no disruption budget sees): on SIGTERM the node holds its stop until the partitions
/// that need it for their majority have re-formed around the restarted member, so no
/// partition is lost and every key reads back. Without the hold, both of a partition's
/// other voters would be gone at once: its former incarnation of node-0 and node-1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_holds_its_stop_while_a_partition_needs_it() {
    let mut cluster = TestCluster::start(3).await;
    cluster.write_keys(&[0, 1, 2], 100).await;

    cluster.restart_node(0);
    let stopping = cluster.nodes[1].child.id();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &stopping.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.nodes[1].child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "node-1 never stopped after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("node-logs")
        .join(format!("{stopping}.log"));
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        log.contains("holding the stop"),
        "node-1 stopped without waiting for the restarted node-0 to take its place"
    );
    assert!(
        !log.contains("stopping although a partition still needs this node"),
        "node-1 gave up holding its stop"
    );

    cluster.start_again(1);
    cluster.wait_ready(Duration::from_secs(120)).await;
    let status = cluster.cluster_status(2).await;
    assert_eq!(status["lost_partitions"], json!([]), "{status}");
    cluster.check_keys(&[0, 1, 2], 100).await;
}

/// A write that reaches a node after its caller stopped waiting (a forward that took
/// too long, a client that gave up) is refused unapplied, through whichever node it
/// comes: applying it late could overwrite a newer acknowledged value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_its_callers_deadline_is_refused_unapplied() {
    let cluster = TestCluster::start(3).await;
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 1_000;
    for node in 0..3 {
        let key = format!("late-{node}");
        let answer = cluster
            .client
            .put(cluster.nodes[node].url(&format!("/cache/{key}")))
            .header(dcache_protocol::wire::DEADLINE_HEADER, past)
            .json(&json!({"value": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 503);
        let error = answer.text().await.unwrap();
        assert!(error.contains("deadline"), "{error}");
        assert_eq!(
            cluster
                .get_settled(node, &key, "linearizable", Duration::from_secs(30))
                .await,
            None,
            "{key} was applied"
        );
    }
}

/// The lease never outlives the leadership: a partition leader that served reads on
/// its lease is cut off, the majority elects another leader and acknowledges a newer
/// value, and a linearizable read through the cut-off leader then never answers with
/// the old value (its lease ran out before the others could elect anyone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_serves_no_read_on_its_lease_once_another_leads() {
    let cluster = TestCluster::start(3).await;
    let partition = 0;
    let old_leader = loop {
        if let Some(leader) = leader_of(&cluster, 0, partition).await {
            break leader;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let leader = cluster
        .nodes
        .iter()
        .position(|n| n.name == old_leader)
        .unwrap();
    let key = (0..)
        .map(|i| format!("leased-{i}"))
        .find(|key| {
            dcache_protocol::partition_of(key.as_bytes(), common::PARTITIONS) == partition as u32
        })
        .unwrap();
    cluster
        .set_until_acknowledged(&[leader], &key, &json!(1), Duration::from_secs(30))
        .await;
    let before = cluster.metric_sum("dcache_raft_lease_reads_total").await;
    for _ in 0..20 {
        let value = cluster
            .get_settled(leader, &key, "linearizable", Duration::from_secs(30))
            .await;
        assert_eq!(value, Some(json!(1)));
    }
    assert!(
        cluster.metric_sum("dcache_raft_lease_reads_total").await >= before + 1.0,
        "the leader answered reads on its lease"
    );

    cluster.isolate(leader, true).await;
    let majority: Vec<usize> = (0..3).filter(|n| *n != leader).collect();
    cluster
        .set_until_acknowledged(&majority, &key, &json!(2), Duration::from_secs(30))
        .await;
    // Each of these waits up to a lease for a quorum that never answers.
    for _ in 0..3 {
        let read = cluster.get(leader, &key, "linearizable").await;
        assert!(
            read.as_ref().is_err() || read == Ok(Some(json!(2))),
            "the cut-off leader answered {read:?} after the majority acknowledged 2"
        );
    }
    cluster.isolate(leader, false).await;
}

/// With `--read-policy read-index` every linearizable read waits for a quorum round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_index_policy_confirms_every_read_with_a_quorum() {
    let cluster =
        TestCluster::start_configured(3, common::PARTITIONS, &["--read-policy", "read-index"])
            .await;
    cluster
        .set_until_acknowledged(&[0], "confirmed", &json!(7), Duration::from_secs(30))
        .await;
    let value = cluster
        .get_settled(0, "confirmed", "linearizable", Duration::from_secs(30))
        .await;
    assert_eq!(value, Some(json!(7)));
    let lease = cluster.metric_sum("dcache_raft_lease_reads_total").await;
    let read_index = cluster
        .metric_sum("dcache_raft_read_index_reads_total")
        .await;
    assert_eq!(lease, 0.0, "no read was answered on a lease");
    assert!(read_index >= 1.0, "the read waited for a quorum round");
}
