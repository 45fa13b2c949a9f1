//! `dcache demo`: the scenarios of the reference documents, each measured and judged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use dcache_client::local::{LocalCluster, LocalOptions};
use dcache_client::{Client, PartitionMap};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::json;

use crate::bench::{self, Distribution, Ratio, Stop, Workload};
use crate::peers::Backend;
use crate::resp_demo;

/// Keys written for the distribution and scaling scenarios.
const DISTRIBUTION_KEYS: usize = 3000;
const SCALING_KEYS: usize = 2000;
/// Writes in flight while filling the cache.
const WRITE_CONCURRENCY: usize = 32;

enum Verdict {
    Pass,
    Fail(String),
    Skip(String),
}

struct Outcome {
    name: &'static str,
    verdict: Verdict,
}

impl Outcome {
    fn judged(name: &'static str, result: anyhow::Result<()>) -> Self {
        let verdict = match result {
            Ok(()) => Verdict::Pass,
            Err(e) => {
                println!("  FAILED: {e:#}");
                Verdict::Fail(format!("{e:#}"))
            }
        };
        Self { name, verdict }
    }

    fn skipped(name: &'static str, why: &str) -> Self {
        println!("  skipped: {why}");
        Self {
            name,
            verdict: Verdict::Skip(why.to_owned()),
        }
    }
}

pub async fn run(
    target: Option<Vec<String>>,
    node_binary: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let prefix = format!("demo:{run_id}:");
    if cfg!(debug_assertions) {
        println!(
            "note: this is a debug build; its nodes are too slow for the demo's load on a \
             small machine (timeouts, minutes-long runs). `make demo` runs the release build."
        );
    }
    let mut own_cluster = match &target {
        Some(nodes) => {
            println!("dcache demo against {}", nodes.join(","));
            None
        }
        None => {
            let data_dir = std::env::temp_dir().join(format!("dcache-demo-{}", std::process::id()));
            println!(
                "dcache demo: starting a 3-node local cluster (logs in {})…",
                data_dir.display()
            );
            let options = LocalOptions::new(3, &data_dir, node_binary)?;
            let cluster = LocalCluster::start(options).await?;
            println!(
                "  ready in {:.1}s: {}",
                started.elapsed().as_secs_f64(),
                cluster.api_addrs().join(", ")
            );
            Some(cluster)
        }
    };
    let nodes = match (&target, &own_cluster) {
        (Some(nodes), _) => nodes.clone(),
        (None, Some(cluster)) => cluster.api_addrs(),
        (None, None) => unreachable!("a cluster was either given or started"),
    };
    let client = Client::builder(nodes)
        .deadline(Duration::from_secs(10))
        .connect()
        .await
        .context("cannot reach the cluster")?;

    let mut outcomes = Vec::new();
    section(1, "Basic operations: set, get, TTL expiry, delete");
    outcomes.push(Outcome::judged(
        "basic operations",
        basic(&client, &prefix).await,
    ));
    section(2, "Redis protocol: RESP on the first node, -MOVED followed");
    outcomes.push(match resp_demo::scenario(&client, &prefix).await {
        Ok(resp_demo::Ran::Played) => Outcome::judged("redis protocol", Ok(())),
        Ok(resp_demo::Ran::Skipped(why)) => Outcome::skipped("redis protocol", &why),
        Err(e) => Outcome::judged("redis protocol", Err(e)),
    });
    section(3, "Key distribution across nodes");
    outcomes.push(Outcome::judged(
        "key distribution",
        distribution(&client, &prefix).await,
    ));
    section(4, "Performance: throughput and latency");
    outcomes.push(Outcome::judged(
        "performance",
        performance(&client, &prefix).await,
    ));
    section(5, "Single-flight: 100 concurrent loads of one missing key");
    outcomes.push(Outcome::judged(
        "single-flight",
        single_flight(&client, &prefix).await,
    ));
    section(6, "Scaling: add a node, count the keys that change owner");
    outcomes.push(match own_cluster.as_mut() {
        Some(cluster) => Outcome::judged("scaling", scaling(cluster, &prefix).await),
        None => Outcome::skipped("scaling", "needs a cluster the demo started itself"),
    });
    section(7, "Fault tolerance: kill a node under load");
    outcomes.push(match own_cluster.as_mut() {
        Some(cluster) => {
            Outcome::judged("fault tolerance", fault_tolerance(cluster, &prefix).await)
        }
        None => Outcome::skipped("fault tolerance", "needs a cluster the demo started itself"),
    });

    println!("\n== Summary ({:.0}s) ==", started.elapsed().as_secs_f64());
    let mut failed = false;
    for outcome in &outcomes {
        match &outcome.verdict {
            Verdict::Pass => println!("PASS  {}", outcome.name),
            Verdict::Fail(why) => {
                failed = true;
                println!("FAIL  {}: {why}", outcome.name);
            }
            Verdict::Skip(why) => println!("SKIP  {}: {why}", outcome.name),
        }
    }
    if let Some(cluster) = own_cluster {
        let data_dir = cluster.data_dir().to_path_buf();
        tokio::task::spawn_blocking(move || cluster.stop()).await?;
        if failed {
            println!("node logs kept in {}", data_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&data_dir);
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn section(number: usize, title: &str) {
    println!("\n== {number}. {title} ==");
}

async fn basic(client: &Client, prefix: &str) -> anyhow::Result<()> {
    let user_key = format!("{prefix}user:123");
    let user = json!({"name": "Alice", "age": 30});
    client.set(&user_key, &user, None).await?;
    let read: Option<serde_json::Value> = client.get(&user_key).await?;
    println!("  set then get {user_key}: {}", json!(read));
    ensure!(
        read.as_ref() == Some(&user),
        "read back {read:?}, wrote {user}"
    );

    let blob_key = format!("{prefix}avatar:7");
    let blob = vec![0x89u8, b'P', b'N', b'G', 0, 255];
    client.set_bytes(&blob_key, blob.clone(), None).await?;
    let read_blob = client.get_bytes(&blob_key).await?;
    println!("  raw bytes round trip: {} bytes", blob.len());
    ensure!(
        read_blob.as_deref() == Some(&blob[..]),
        "raw bytes came back as {read_blob:?}"
    );

    let session_key = format!("{prefix}session:abc");
    let ttl = Duration::from_secs(1);
    let written = Instant::now();
    client.set(&session_key, "session_data", Some(ttl)).await?;
    let entry = client.get_entry::<String>(&session_key).await?;
    ensure!(
        entry.as_ref().is_some_and(|e| e.ttl.is_some()),
        "a key set with a TTL reads back as {entry:?}"
    );
    let deadline = written + ttl + Duration::from_secs(3);
    let expired_after = loop {
        if client.get::<String>(&session_key).await?.is_none() {
            break written.elapsed();
        }
        ensure!(
            Instant::now() < deadline,
            "{session_key} was still there 4 s after a 1 s TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "  {session_key} with ttl 1s: present, then gone after {} ms",
        expired_after.as_millis()
    );
    ensure!(
        expired_after >= ttl - Duration::from_millis(100),
        "expired after {expired_after:?}, before its TTL"
    );

    let deleted = client.delete(&user_key).await?;
    let after = client.get::<serde_json::Value>(&user_key).await?;
    let deleted_again = client.delete(&user_key).await?;
    println!(
        "  delete {user_key}: existed={deleted}, then get → {after:?}, delete again → existed={deleted_again}"
    );
    ensure!(
        deleted && after.is_none() && !deleted_again,
        "delete did not behave"
    );
    Ok(())
}

/// Writes `count` keys `{prefix}{i}` = i, `WRITE_CONCURRENCY` at a time.
async fn write_keys(client: &Client, prefix: &str, count: usize) -> anyhow::Result<()> {
    let mut pending = FuturesUnordered::new();
    for i in 0..count {
        pending.push(async move { client.set(format!("{prefix}{i}"), &i, None).await });
        if pending.len() >= WRITE_CONCURRENCY
            && let Some(result) = pending.next().await
        {
            result?;
        }
    }
    while let Some(result) = pending.next().await {
        result?;
    }
    Ok(())
}

/// Keys per member, by the member leading each key's partition.
fn owners(map: &PartitionMap, prefix: &str, count: usize) -> Vec<Option<String>> {
    (0..count)
        .map(|i| {
            let key = format!("{prefix}{i}");
            map.leader(map.partition_of(key.as_bytes()))
                .map(str::to_owned)
        })
        .collect()
}

async fn distribution(client: &Client, prefix: &str) -> anyhow::Result<()> {
    let key_prefix = format!("{prefix}dist:");
    let began = Instant::now();
    write_keys(client, &key_prefix, DISTRIBUTION_KEYS).await?;
    println!(
        "  wrote {DISTRIBUTION_KEYS} keys in {:.1}s",
        began.elapsed().as_secs_f64()
    );
    let map = client.refresh_map().await?;
    if map.is_standalone() {
        println!("  a standalone node holds every key: nothing to distribute");
        return Ok(());
    }
    let mut per_node: BTreeMap<String, usize> =
        map.members().keys().map(|name| (name.clone(), 0)).collect();
    for owner in owners(&map, &key_prefix, DISTRIBUTION_KEYS)
        .into_iter()
        .flatten()
    {
        *per_node.entry(owner).or_default() += 1;
    }
    let leaders = map.leader_counts();
    for (node, count) in &per_node {
        let share = *count as f64 * 100.0 / DISTRIBUTION_KEYS as f64;
        println!(
            "  {node:<10} {count:>5} keys ({share:>5.1}%) {:<50} leads {} partitions",
            "█".repeat((share / 2.0) as usize),
            leaders.get(node).copied().unwrap_or(0)
        );
    }
    let counts: Vec<f64> = per_node.values().map(|&c| c as f64).collect();
    let mean = counts.iter().sum::<f64>() / counts.len() as f64;
    let std_dev =
        (counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / counts.len() as f64).sqrt();
    println!(
        "  mean {mean:.0} keys per node, standard deviation {std_dev:.1} keys ({:.1}% of the mean)",
        std_dev * 100.0 / mean
    );
    ensure!(
        per_node.values().all(|&c| c > 0),
        "a node owns no keys: {per_node:?}"
    );
    ensure!(
        std_dev / mean < 0.25,
        "uneven: standard deviation {std_dev:.1} over a mean of {mean:.0}"
    );
    Ok(())
}

async fn performance(client: &Client, prefix: &str) -> anyhow::Result<()> {
    let mut errors = 0;
    for (mode, seconds, label) in [
        (
            bench::Mode::Smart,
            4,
            "smart client (straight to each partition's leader)",
        ),
        (
            bench::Mode::Http,
            3,
            "plain HTTP through the first node (which forwards)",
        ),
    ] {
        let client = match mode {
            bench::Mode::Smart => client.clone(),
            bench::Mode::Http => Client::builder(client.seeds().iter().cloned())
                .routing(mode.routing())
                .build()?,
        };
        let workload = Workload {
            connections: 32,
            stop: Stop::Elapsed(Duration::from_secs(seconds)),
            value_size: 100,
            ratio: Ratio { gets: 9, sets: 1 },
            keyspace: DISTRIBUTION_KEYS as u64,
            distribution: Distribution::Uniform,
            zipf_exponent: 1.0,
            key_prefix: format!("{prefix}perf:"),
            progress: true,
        };
        let backend = Backend::Dcache(client);
        bench::preload(&backend, &workload).await?;
        let report = bench::run(&backend, &workload).await;
        println!("  {label}, 32 connections, 9:1 gets:sets, {seconds}s:");
        for line in bench::render_table(&report).lines() {
            println!("    {line}");
        }
        ensure!(report.total_ops() > 0, "no operation succeeded");
        errors += report.total_errors();
    }
    ensure!(errors == 0, "{errors} operations failed");
    Ok(())
}

async fn single_flight(client: &Client, prefix: &str) -> anyhow::Result<()> {
    let key = format!("{prefix}expensive-report");
    let origin_calls = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (client, key, origin_calls) = (client.clone(), key.clone(), origin_calls.clone());
            tokio::spawn(async move {
                client
                    .get_or_load(&key, Some(Duration::from_secs(300)), || async {
                        origin_calls.fetch_add(1, Ordering::SeqCst);
                        // A slow origin: the window in which the other callers pile up.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, std::convert::Infallible>(json!({"rows": 1234}))
                    })
                    .await
            })
        })
        .collect();
    let mut answers = 0;
    for caller in callers {
        let value = caller.await??;
        ensure!(value == json!({"rows": 1234}), "a caller got {value}");
        answers += 1;
    }
    let calls = origin_calls.load(Ordering::SeqCst);
    println!(
        "  {answers} callers answered in {} ms with {calls} origin call(s); {} coalesced",
        began.elapsed().as_millis(),
        answers - calls
    );
    ensure!(calls == 1, "{calls} origin calls, expected exactly 1");
    Ok(())
}

async fn scaling(cluster: &mut LocalCluster, prefix: &str) -> anyhow::Result<()> {
    let key_prefix = format!("{prefix}scale:");
    let client = cluster.client().clone();
    write_keys(&client, &key_prefix, SCALING_KEYS).await?;
    let before_map = client.refresh_map().await?;
    let before = owners(&before_map, &key_prefix, SCALING_KEYS);
    let nodes_before = before_map.members().len();

    let began = Instant::now();
    let added = cluster.add_node().await?;
    println!("  added {added}; waiting for the balancer…");
    let status = cluster.wait_rebalanced(Duration::from_secs(90)).await?;
    println!(
        "  replicas placed in {:.1}s: {} moved, {} snapshot bytes sent",
        began.elapsed().as_secs_f64(),
        status.rebalance.moved,
        status.rebalance.bytes_moved
    );
    // Leadership is handed to the newcomer after its replicas are placed; owners are
    // compared once leaders are spread evenly again.
    let after_map = wait_leaders_spread(&client, Instant::now() + Duration::from_secs(30)).await?;
    println!(
        "  leaders spread after {:.1}s: {}",
        began.elapsed().as_secs_f64(),
        after_map
            .leader_counts()
            .iter()
            .map(|(node, led)| format!("{node} {led}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let after = owners(&after_map, &key_prefix, SCALING_KEYS);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let naive_moved = (0..SCALING_KEYS)
        .filter(|i| {
            let hash = dcache_protocol::key_hash(format!("{key_prefix}{i}").as_bytes());
            hash % nodes_before as u64 != hash % (nodes_before as u64 + 1)
        })
        .count();
    let percent = |n: usize| n as f64 * 100.0 / SCALING_KEYS as f64;
    println!(
        "  {nodes_before} → {} nodes: {moved} of {SCALING_KEYS} keys changed owner ({:.1}%); \
         naive hash % N would move {naive_moved} ({:.1}%); the minimum is {:.1}%",
        nodes_before + 1,
        percent(moved),
        percent(naive_moved),
        100.0 / (nodes_before + 1) as f64
    );
    let client = cluster.client().clone();
    let mut lost = 0;
    for i in 0..SCALING_KEYS {
        if client.get::<usize>(format!("{key_prefix}{i}")).await? != Some(i) {
            lost += 1;
        }
    }
    println!("  read back all {SCALING_KEYS} keys: {lost} lost");
    ensure!(lost == 0, "{lost} keys lost while rebalancing");
    ensure!(
        moved < naive_moved,
        "consistent hashing moved {moved} keys, no better than naive hashing ({naive_moved})"
    );
    Ok(())
}

/// Waits until every partition has a leader and no member leads more than one
/// partition above another.
async fn wait_leaders_spread(client: &Client, deadline: Instant) -> anyhow::Result<PartitionMap> {
    loop {
        let map = client.refresh_map().await?;
        let counts = map.leader_counts();
        let (fewest, most) = (counts.values().min(), counts.values().max());
        if map.all_led()
            && most
                .zip(fewest)
                .is_some_and(|(most, fewest)| most - fewest <= 1)
        {
            return Ok((*map).clone());
        }
        ensure!(
            Instant::now() < deadline,
            "leaders did not spread evenly over the members: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn fault_tolerance(cluster: &mut LocalCluster, prefix: &str) -> anyhow::Result<()> {
    let client = cluster.client().clone();
    let map = client.refresh_map().await?;
    let (victim, led) = map
        .leader_counts()
        .into_iter()
        .max_by_key(|(_, led)| *led)
        .ok_or_else(|| anyhow!("the cluster has no members"))?;
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let (client, killed, stop) = (client.clone(), killed.clone(), stop.clone());
            let prefix = format!("{prefix}ft:{writer}:");
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let (mut after_kill, mut failed, mut longest) = (0usize, 0usize, Duration::ZERO);
                let mut sequence = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{prefix}{sequence}");
                    let began = Instant::now();
                    match client.set(&key, &sequence, None).await {
                        Ok(()) => {
                            acknowledged.push((key, sequence));
                            after_kill += usize::from(killed.load(Ordering::Relaxed));
                        }
                        Err(_) => failed += 1,
                    }
                    longest = longest.max(began.elapsed());
                    sequence += 1;
                }
                (acknowledged, after_kill, failed, longest)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill_node(&victim)?;
    killed.store(true, Ordering::Relaxed);
    println!("  killed {victim} (it led {led} partitions) with 8 writers running");
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut acknowledged, mut after_kill, mut failed, mut longest) =
        (Vec::new(), 0, 0, Duration::ZERO);
    for writer in writers {
        let (acks, after, fails, slowest) = writer.await?;
        acknowledged.extend(acks);
        after_kill += after;
        failed += fails;
        longest = longest.max(slowest);
    }
    println!(
        "  {} writes acknowledged ({after_kill} after the kill), {failed} failed; longest write {} ms (the failover)",
        acknowledged.len(),
        longest.as_millis()
    );
    let mut lost = 0;
    for (key, value) in &acknowledged {
        if client.get::<usize>(key).await? != Some(*value) {
            lost += 1;
        }
    }
    println!("  read back every acknowledged write: {lost} lost");
    ensure!(lost == 0, "{lost} acknowledged writes lost");
    ensure!(after_kill > 0, "no write was acknowledged after the kill");
    ensure!(
        failed == 0,
        "{failed} writes failed within the client's 10 s deadline"
    );
    Ok(())
}
