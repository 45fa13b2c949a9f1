//! Chaos: writers and readers run against a 3-node cluster while nodes are killed and
//! restarted, cut off, and links between two nodes are cut. A checker holds every answer
//! to what was acknowledged:
//!
//! - no acknowledged write is lost: at the end every key reads back its last
//!   acknowledged value or a later one its writer attempted;
//! - no read is stale: a linearizable read never answers a value older than one
//!   acknowledged before the read began, nor one nobody wrote.
//!
//! Faults come one at a time and the cluster is let heal (every node ready) before the
//! next, which is the promise: nothing acknowledged is lost while fewer than a majority
//! of a partition's replicas fail at once.
//!
//! `DCACHE_CHAOS_SECONDS` sets how long faults are injected (default 40, bounded for CI);
//! `make chaos` runs it longer. `DCACHE_CHAOS_SEED` replays a schedule.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestCluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const NODES: usize = 3;
const PARTITIONS: u32 = 8;
const WRITERS: usize = 4;
const READERS: usize = 2;
const KEYS_PER_WRITER: usize = 25;

/// What the clients know about one key. Each key has one writer, whose values count up,
/// so "older" is "smaller".
#[derive(Debug, Default, Clone)]
struct KeyHistory {
    /// The highest value a write acknowledged.
    acknowledged: Option<u64>,
    /// The highest value ever sent (acknowledged or not: an unanswered write may still
    /// have been applied).
    attempted: Option<u64>,
    /// Values whose write got no answer (a timeout, a killed node): such a write may
    /// take effect at any later moment, even after a newer acknowledged one, so reading
    /// it back is no violation.
    unanswered: Vec<u64>,
}

#[derive(Default)]
struct History {
    keys: Mutex<HashMap<String, KeyHistory>>,
    acknowledged: AtomicU64,
    unacknowledged: AtomicU64,
    reads: AtomicU64,
    violations: Mutex<Vec<String>>,
}

impl History {
    fn get(&self, key: &str) -> KeyHistory {
        self.keys
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn update(&self, key: &str, change: impl FnOnce(&mut KeyHistory)) {
        change(self.keys.lock().unwrap().entry(key.to_owned()).or_default());
    }

    fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.lock().unwrap().push(what);
    }

    /// Checks a value read for `key` against what was acknowledged before the read
    /// began (`floor`) and what had been attempted by the time it answered.
    fn check_read(&self, key: &str, floor: Option<u64>, read: Option<u64>, via: &str) {
        let known = self.get(key);
        let attempted = known.attempted;
        match (floor, read) {
            (_, Some(value)) if known.unanswered.contains(&value) => {}
            (Some(floor), None) => self.violation(format!(
                "{key}: read via {via} found nothing, but {floor} was acknowledged before the read"
            )),
            (Some(floor), Some(value)) if value < floor => self.violation(format!(
                "{key}: stale read via {via}: {value}, but {floor} was acknowledged before the read"
            )),
            (_, Some(value)) if attempted.is_none_or(|a| value > a) => self.violation(format!(
                "{key}: read via {via} answered {value}, never written (highest sent {attempted:?})"
            )),
            _ => {}
        }
    }
}

fn key_of(writer: usize, index: usize) -> String {
    format!("chaos-w{writer}-k{index}")
}

fn seconds_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The nodes' API URLs as they are now (a restarted node keeps its addresses).
type Endpoints = Arc<Mutex<Vec<String>>>;

async fn writer(
    id: usize,
    endpoints: Endpoints,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_value: u64 = 1;
    while !stop.load(Ordering::Relaxed) {
        let key = key_of(id, rng.random_range(0..KEYS_PER_WRITER));
        let value = next_value;
        next_value += 1;
        history.update(&key, |h| h.attempted = Some(value));
        let base = {
            let endpoints = endpoints.lock().unwrap();
            endpoints[rng.random_range(0..endpoints.len())].clone()
        };
        let answer = client
            .put(format!("{base}/cache/{key}"))
            .json(&json!({"value": value}))
            .send()
            .await;
        if answer.is_ok_and(|a| a.status() == 200) {
            history.update(&key, |h| h.acknowledged = h.acknowledged.max(Some(value)));
            history.acknowledged.fetch_add(1, Ordering::Relaxed);
        } else {
            history.update(&key, |h| h.unanswered.push(value));
            history.unacknowledged.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A linearizable read of `key` through `base`: `Ok(None)` for 404, `Err` for an answer
/// that is not one (503 while electing, a killed node, a timeout).
async fn read(client: &reqwest::Client, base: &str, key: &str) -> Result<Option<u64>, String> {
    let answer = client
        .get(format!("{base}/cache/{key}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match answer.status().as_u16() {
        200 => {
            let body: serde_json::Value = answer.json().await.map_err(|e| e.to_string())?;
            body["value"]
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("not a value: {body}"))
        }
        404 => Ok(None),
        status => Err(format!("{status}")),
    }
}

async fn reader(endpoints: Endpoints, history: Arc<History>, stop: Arc<AtomicBool>, seed: u64) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let key = key_of(
            rng.random_range(0..WRITERS),
            rng.random_range(0..KEYS_PER_WRITER),
        );
        let base = {
            let endpoints = endpoints.lock().unwrap();
            endpoints[rng.random_range(0..endpoints.len())].clone()
        };
        let floor = history.get(&key).acknowledged;
        match read(&client, &base, &key).await {
            Ok(value) => {
                history.reads.fetch_add(1, Ordering::Relaxed);
                history.check_read(&key, floor, value, &base);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `kill -9`, down for a while, then started again with nothing (a new incarnation).
    Kill,
    /// Cut off from every peer, then healed.
    Isolate,
    /// The Raft link between two nodes cut both ways, then healed.
    CutLink,
}

async fn set_fault(cluster: &TestCluster, node: usize, isolated: bool, cut_links: &[String]) {
    let answer = cluster
        .client
        .post(cluster.nodes[node].url("/admin/fault"))
        .json(&json!({"isolated": isolated, "cut_links": cut_links}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
}

fn raft_addr(cluster: &TestCluster, node: usize) -> String {
    cluster.nodes[node].raft.clone().expect("a cluster node")
}

/// Injects `fault` on `victim` (and a peer for a cut link), holds it for `hold`, heals.
async fn inject(
    cluster: &mut TestCluster,
    fault: Fault,
    victim: usize,
    peer: usize,
    hold: Duration,
) {
    eprintln!("chaos: {fault:?} node-{victim} (peer node-{peer}) for {hold:?}");
    match fault {
        Fault::Kill => {
            let api = cluster.nodes[victim].api.clone();
            let raft = raft_addr(cluster, victim);
            cluster.nodes[victim].kill();
            tokio::time::sleep(hold).await;
            cluster.nodes[victim] = TestCluster::start_node_at(
                victim,
                cluster.partitions,
                &api,
                &raft,
                &cluster.extra_args,
            );
        }
        Fault::Isolate => {
            set_fault(cluster, victim, true, &[]).await;
            tokio::time::sleep(hold).await;
            set_fault(cluster, victim, false, &[]).await;
        }
        Fault::CutLink => {
            let (a, b) = (raft_addr(cluster, victim), raft_addr(cluster, peer));
            set_fault(cluster, victim, false, &[b]).await;
            set_fault(cluster, peer, false, &[a]).await;
            tokio::time::sleep(hold).await;
            set_fault(cluster, victim, false, &[]).await;
            set_fault(cluster, peer, false, &[]).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_write_is_lost_or_read_stale_under_kills_and_cut_links() {
    let chaos_for = Duration::from_secs(seconds_from_env("DCACHE_CHAOS_SECONDS", 40));
    let seed = seconds_from_env("DCACHE_CHAOS_SEED", rand::random());
    eprintln!("chaos: seed {seed} (DCACHE_CHAOS_SEED={seed} replays the schedule)");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut cluster = TestCluster::start_with(NODES, PARTITIONS).await;
    let endpoints: Endpoints = Arc::new(Mutex::new(
        cluster.nodes.iter().map(|n| n.base.clone()).collect(),
    ));
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 0..WRITERS {
        clients.push(tokio::spawn(writer(
            id,
            endpoints.clone(),
            history.clone(),
            stop.clone(),
            seed.wrapping_add(id as u64),
        )));
    }
    for id in 0..READERS {
        clients.push(tokio::spawn(reader(
            endpoints.clone(),
            history.clone(),
            stop.clone(),
            seed.wrapping_add(100 + id as u64),
        )));
    }

    let started = Instant::now();
    let mut faults = Vec::new();
    while started.elapsed() < chaos_for {
        let fault = match rng.random_range(0..3) {
            0 => Fault::Kill,
            1 => Fault::Isolate,
            _ => Fault::CutLink,
        };
        let victim = rng.random_range(0..NODES);
        let peer = (victim + rng.random_range(1..NODES)) % NODES;
        let hold = Duration::from_millis(rng.random_range(1_000..4_000));
        inject(&mut cluster, fault, victim, peer, hold).await;
        faults.push(fault);
        // Heal before the next fault: every node back and caught up.
        cluster.wait_ready(Duration::from_secs(120)).await;
    }

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    cluster.wait_ready(Duration::from_secs(120)).await;

    // Every key that was ever acknowledged reads back its last acknowledged value or a
    // later attempt, through every node.
    let keys: Vec<(String, KeyHistory)> = history
        .keys
        .lock()
        .unwrap()
        .iter()
        .map(|(k, h)| (k.clone(), h.clone()))
        .collect();
    let final_client = reqwest::Client::new();
    for (key, known) in &keys {
        for node in 0..NODES {
            let base = cluster.nodes[node].base.clone();
            let deadline = Instant::now() + Duration::from_secs(30);
            let value = loop {
                match read(&final_client, &base, key).await {
                    Ok(value) => break value,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("final read of {key} via {base}: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("final read of {key} via {base} never answered: {e}"),
                }
            };
            history.check_read(key, known.acknowledged, value, &base);
        }
    }

    let acknowledged = history.acknowledged.load(Ordering::Relaxed);
    let unacknowledged = history.unacknowledged.load(Ordering::Relaxed);
    let reads = history.reads.load(Ordering::Relaxed);
    eprintln!(
        "chaos: {} faults ({faults:?}), {acknowledged} writes acknowledged, {unacknowledged} not, \
         {reads} linearizable reads checked, {} keys checked at the end",
        faults.len(),
        keys.len()
    );
    let violations = history.violations.lock().unwrap();
    assert!(
        violations.is_empty(),
        "{} violations (seed {seed}):\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert!(!faults.is_empty(), "faults were injected");
    assert!(
        acknowledged > 100 && reads > 100,
        "the clients made progress through the faults: {acknowledged} writes, {reads} reads"
    );
}
