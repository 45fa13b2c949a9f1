//! A node killed under `redis-benchmark --cluster` load, as Redis Cluster clients meet
//! a failover: `kill -9` of the node leading the most partitions, down for a while,
//! then started again empty at its addresses.
//!
//! - redis-benchmark, run in a loop against a node that stays up, recovers: its rounds
//!   die with the connections they held to the killed node (redis-benchmark's own way),
//!   and a round started once the node is back completes, following the slot map the
//!   cluster names then (MOVED, CLUSTERDOWN while partitions elect). dcache's counters
//!   show its SETs were served.
//! - Writers on the Rust `redis` crate's cluster client and readers, meanwhile, are
//!   held to the chaos test's history checker: no GET on a plain connection (no
//!   READONLY, following MOVED) answers a value older than one acknowledged before it
//!   began; no GET of the cluster client (which sends READONLY, so reads from any
//!   voting replica, as from a Redis replica) answers a value nobody wrote; and at the
//!   end every acknowledged SET reads back (its value or a later one its writer sent)
//!   through every node's RESP listener.
//!
//! What settles no outcome (`-ERR outcome unknown`, `-CLUSTERDOWN`/`-TRYAGAIN` once the
//! client's retries ran out, a dropped connection, a time-out) leaves the write
//! unanswered: it may still be applied, so reading it back later is no violation.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestCluster;
use common::history::History;
use common::redis_tools::install_redis_tools;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, cmd};

const NODES: usize = 3;
const PARTITIONS: u32 = 8;
const WRITERS: usize = 4;
/// Half of them linearizable readers on plain connections, half READONLY cluster clients.
const READERS: usize = 4;
const KEYS_PER_WRITER: usize = 25;
/// A client hang must not hang the test: a request unanswered after this is counted
/// as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// As the chaos test's `heal_within`: a loaded two-core machine running debug builds.
const READY_WITHIN: Duration = Duration::from_secs(120);
/// SETs per redis-benchmark round: short rounds, so that one started after the node
/// is back ends soon.
const BENCHMARK_REQUESTS: u32 = 5_000;
/// A round that answered nothing for this long is stopped and counted as stalled.
const BENCHMARK_STALL: Duration = Duration::from_secs(10);

fn key_of(writer: usize, index: usize) -> String {
    format!("resp-chaos-w{writer}-k{index}")
}

/// Where the test is, for counting acknowledged writes by phase.
#[derive(Debug, Clone, Copy)]
enum Phase {
    BeforeKill,
    /// From the kill until the node's new process is started.
    Down,
    /// From the restart until every node is ready.
    Rejoining,
    /// Every node ready again.
    Restarted,
}

const PHASES: [Phase; 4] = [
    Phase::BeforeKill,
    Phase::Down,
    Phase::Rejoining,
    Phase::Restarted,
];

/// What the history clients were told, with acknowledged writes counted by phase and
/// failed requests by kind of error.
#[derive(Default)]
struct Observed {
    history: History,
    phase: AtomicU8,
    acknowledged_by_phase: [AtomicU64; PHASES.len()],
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Observed {
    fn enter(&self, phase: Phase) {
        eprintln!("resp-chaos: {phase:?}");
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn acknowledge(&self, key: &str, value: u64) {
        self.history.acknowledge(key, value);
        self.acknowledged_by_phase[self.phase.load(Ordering::Relaxed) as usize]
            .fetch_add(1, Ordering::Relaxed);
    }

    fn acknowledged_in(&self, phase: Phase) -> u64 {
        self.acknowledged_by_phase[phase as usize].load(Ordering::Relaxed)
    }

    /// SETs the history writers sent, answered or not.
    fn attempted(&self) -> u64 {
        self.history.acknowledged.load(Ordering::Relaxed)
            + self.history.unacknowledged.load(Ordering::Relaxed)
    }

    fn count_error(&self, kind: String) {
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// How a failed request is counted: the server's error code (with `ERR outcome
/// unknown` apart from other `ERR`s), else the client's category (I/O, timeout).
fn error_kind(error: &RedisError) -> String {
    match error.code() {
        Some("ERR") if error.to_string().contains("outcome unknown") => {
            "ERR outcome unknown".to_owned()
        }
        Some(code) => code.to_owned(),
        None => error.category().to_owned(),
    }
}

async fn cluster_connection(cluster: &TestCluster) -> ClusterConnection {
    // The crate waits 1.28 s or more between retries by default; an election here
    // takes about that, so shorter waits let a request see its end within
    // REQUEST_TIMEOUT.
    ClusterClient::builder(cluster.redis_seeds())
        .retries(20)
        .min_retry_wait(50)
        .max_retry_wait(1_000)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(3))
        .overall_response_timeout(None)
        .build()
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

/// A value as the history writers wrote it, or a description of what it is instead.
fn parse_value(read: Option<String>) -> Result<Option<u64>, String> {
    read.map(|text| text.parse().map_err(|_| format!("not a value: {text:?}")))
        .transpose()
}

async fn writer(
    id: usize,
    mut connection: ClusterConnection,
    observed: Arc<Observed>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_value: u64 = 1;
    while !stop.load(Ordering::Relaxed) {
        let key = key_of(id, rng.random_range(0..KEYS_PER_WRITER));
        let value = next_value;
        next_value += 1;
        observed.history.attempt(&key, value);
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            cmd("SET")
                .arg(&key)
                .arg(value)
                .query_async::<()>(&mut connection),
        )
        .await;
        match answer {
            Ok(Ok(())) => observed.acknowledge(&key, value),
            failed => {
                observed.history.unanswered(&key, value);
                observed.count_error(match failed {
                    Ok(Err(e)) => error_kind(&e),
                    _ => "timeout".to_owned(),
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How a reader reaches the cluster, which decides what its GETs promise.
enum ReadVia {
    /// Plain connections that send no READONLY, following MOVED from a node picked at
    /// random: linearizable reads, held to everything acknowledged before they began.
    Leader {
        nodes: Vec<String>,
        connections: HashMap<String, MultiplexedConnection>,
    },
    /// The redis crate's cluster client, which sends READONLY on every connection it
    /// opens (redis 1.2, cluster_async: "we don't know whether we'll be making read
    /// calls to replicas"), a no-op on a Redis master. After READONLY dcache, as a
    /// Redis replica, answers from whichever voting replica the client reaches, which
    /// may lag: such a read may be stale, but never answers a value nobody wrote.
    ReadOnlyClusterClient(ClusterConnection),
}

async fn reader(mut via: ReadVia, observed: Arc<Observed>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let history = &observed.history;
    while !stop.load(Ordering::Relaxed) {
        let key = key_of(
            rng.random_range(0..WRITERS),
            rng.random_range(0..KEYS_PER_WRITER),
        );
        let floor = history.get(&key).acknowledged;
        let (answer, floor, label) = match &mut via {
            ReadVia::Leader { nodes, connections } => {
                let node = nodes[rng.random_range(0..nodes.len())].clone();
                let answer = read_following_moved(connections, &node, &key).await;
                (answer, floor, "a plain connection")
            }
            ReadVia::ReadOnlyClusterClient(connection) => {
                let answer = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    cmd("GET")
                        .arg(&key)
                        .query_async::<Option<String>>(connection),
                )
                .await;
                let answer = match answer {
                    Ok(Ok(read)) => parse_value(read).map_err(|what| {
                        history.violation(format!("{key}: {what}"));
                        what
                    }),
                    Ok(Err(e)) => Err(format!("GET {}", error_kind(&e))),
                    Err(_) => Err("GET timeout".to_owned()),
                };
                (answer, None, "the READONLY cluster client")
            }
        };
        match answer {
            Ok(value) => {
                history.reads.fetch_add(1, Ordering::Relaxed);
                history.check_read(&key, floor, value, label);
            }
            Err(what) => {
                observed.count_error(what);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How a redis-benchmark round ended.
enum RoundOutcome {
    /// Exited 0: every request of the round was answered.
    Completed,
    /// Exited with an error: its exit status and last lines.
    Failed(String),
    /// Answered nothing for BENCHMARK_STALL, so stopped: its last lines.
    Stalled(String),
    /// Stopped because the load ended.
    Stopped,
}

/// One run of redis-benchmark.
struct Round {
    started: Instant,
    ended: Instant,
    outcome: RoundOutcome,
}

impl Round {
    fn completed(&self) -> bool {
        matches!(self.outcome, RoundOutcome::Completed)
    }

    fn describe(&self, killed_at: Instant) -> String {
        let started = if self.started < killed_at {
            "before the kill".to_owned()
        } else {
            format!(
                "{:.1}s after the kill",
                (self.started - killed_at).as_secs_f64()
            )
        };
        let outcome = match &self.outcome {
            RoundOutcome::Completed => "completed".to_owned(),
            RoundOutcome::Failed(why) => format!("failed: {why}"),
            RoundOutcome::Stalled(why) => format!("stalled: {why}"),
            RoundOutcome::Stopped => "stopped with the load".to_owned(),
        };
        format!(
            "started {started}, ran {:.1}s, {outcome}",
            (self.ended - self.started).as_secs_f64()
        )
    }
}

/// `redis-benchmark --cluster` started again and again until stopped, each round's
/// output in a file of its own.
struct BenchmarkLoop {
    stop: Arc<AtomicBool>,
    rounds: Arc<Mutex<Vec<Round>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BenchmarkLoop {
    fn start(resp: &str, output_dir: PathBuf) -> Self {
        let (host, port) = resp.rsplit_once(':').expect("host:port");
        let requests = BENCHMARK_REQUESTS.to_string();
        let args: Vec<String> = [
            "--cluster",
            "-h",
            host,
            "-p",
            port,
            "-t",
            "set",
            "-c",
            "20",
            "-d",
            "100",
            "-r",
            "10000",
            "-n",
            &requests,
            "-q",
        ]
        .map(str::to_owned)
        .into();
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let (stop, rounds) = (stop.clone(), rounds.clone());
            move || {
                for number in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let output = output_dir.join(format!("round-{number}.out"));
                    let round = run_round(&args, &output, &stop);
                    let failed = matches!(round.outcome, RoundOutcome::Failed(_));
                    rounds.lock().unwrap().push(round);
                    if failed {
                        // A round refused at once (a node not listening yet) must not
                        // spin.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        });
        Self {
            stop,
            rounds,
            thread: Some(thread),
        }
    }

    /// Whether a round that started after `since` completed.
    fn completed_since(&self, since: Instant) -> bool {
        self.rounds
            .lock()
            .unwrap()
            .iter()
            .any(|round| round.started >= since && round.completed())
    }

    fn finish(mut self) -> Vec<Round> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the benchmark loop");
        }
        std::mem::take(&mut *self.rounds.lock().unwrap())
    }
}

impl Drop for BenchmarkLoop {
    /// A test that fails half-way stops the loop too, rather than leave it starting
    /// rounds against a cluster that is gone.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The last lines redis-benchmark printed (its progress lines are rewritten in place
/// with \r).
fn last_lines(output: &str, count: usize) -> String {
    let lines: Vec<&str> = output
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines[lines.len().saturating_sub(count)..].join(" | ")
}

/// The requests per second of the last progress line redis-benchmark printed.
fn last_rate(output: &str) -> Option<f64> {
    let at = output.rfind("rps=")?;
    output[at + 4..].split_whitespace().next()?.parse().ok()
}

/// Runs redis-benchmark once, its stdout and stderr to `output`, until it exits, `stop`
/// is set or it answers nothing for BENCHMARK_STALL.
fn run_round(args: &[String], output: &Path, stop: &AtomicBool) -> Round {
    let file = File::create(output).unwrap();
    let started = Instant::now();
    let mut child = Command::new("redis-benchmark")
        .args(args)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("redis-benchmark starts");
    let read_output = || std::fs::read_to_string(output).unwrap_or_default();
    let mut last_progress = started;
    let outcome = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break if status.success() {
                RoundOutcome::Completed
            } else {
                RoundOutcome::Failed(format!("{status}: {}", last_lines(&read_output(), 3)))
            };
        }
        if last_rate(&read_output()).is_some_and(|rate| rate > 0.0) {
            last_progress = Instant::now();
        }
        let stopped = stop.load(Ordering::Relaxed);
        let stalled = last_progress.elapsed() > BENCHMARK_STALL;
        if stopped || stalled {
            let _ = child.kill();
            let _ = child.wait();
            break if stopped {
                RoundOutcome::Stopped
            } else {
                RoundOutcome::Stalled(last_lines(&read_output(), 8))
            };
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    Round {
        started,
        ended: Instant::now(),
        outcome,
    }
}

/// Reads `key` through the RESP listener `resp` on a plain connection, following MOVED
/// (as a cluster client would, but from this very node's answer); `Err` for an answer
/// that is no value (CLUSTERDOWN while electing, a time-out).
async fn read_following_moved(
    connections: &mut HashMap<String, MultiplexedConnection>,
    resp: &str,
    key: &str,
) -> Result<Option<u64>, String> {
    let mut address = resp.to_owned();
    for _ in 0..4 {
        let mut connection = match connections.get(&address) {
            Some(connection) => connection.clone(),
            None => {
                let client = redis::Client::open(format!("redis://{address}")).unwrap();
                let connecting = client.get_multiplexed_async_connection();
                let connection = tokio::time::timeout(REQUEST_TIMEOUT, connecting)
                    .await
                    .map_err(|_| format!("connecting to {address} timed out"))?
                    .map_err(|e| format!("connecting to {address}: {e}"))?;
                connections.insert(address.clone(), connection.clone());
                connection
            }
        };
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut connection),
        )
        .await
        .map_err(|_| format!("GET via {address} timed out"))?;
        match answer {
            Ok(read) => return parse_value(read),
            Err(e) => match e.redirect_node() {
                Some((to, _slot)) => address = to.to_owned(),
                None => {
                    connections.remove(&address);
                    return Err(format!("via {address}: {e}"));
                }
            },
        }
    }
    Err(format!("{key}: redirected more than 3 times from {resp}"))
}

/// Waits `at_least`, then until `done` holds, at most until `deadline`.
async fn keep_load(at_least: Duration, deadline: Instant, what: &str, done: impl Fn() -> bool) {
    tokio::time::sleep(at_least).await;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_under_redis_benchmark_load_loses_no_acknowledged_set() {
    let started = Instant::now();
    install_redis_tools();
    let seed: u64 = std::env::var("DCACHE_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("resp-chaos: seed {seed} (DCACHE_CHAOS_SEED={seed} replays the clients' keys)");
    let mut cluster = TestCluster::start_with(NODES, PARTITIONS).await;
    let all: Vec<usize> = (0..NODES).collect();

    // The benchmark's seed node stays up: redis-benchmark learns the slot map from it
    // at the start of every round.
    let benchmark_node = 0;
    let benchmark_resp = cluster.nodes[benchmark_node].resp.clone().unwrap();
    let output_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("resp-chaos-benchmark-{}", std::process::id()));
    std::fs::create_dir_all(&output_dir).unwrap();
    let benchmark = BenchmarkLoop::start(&benchmark_resp, output_dir.clone());

    let observed = Arc::new(Observed::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 0..WRITERS {
        clients.push(tokio::spawn(writer(
            id,
            cluster_connection(&cluster).await,
            observed.clone(),
            stop.clone(),
            seed.wrapping_add(id as u64),
        )));
    }
    let resp_addrs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| node.resp.clone().expect("a RESP listener"))
        .collect();
    for id in 0..READERS {
        let via = if id % 2 == 0 {
            ReadVia::Leader {
                nodes: resp_addrs.clone(),
                connections: HashMap::new(),
            }
        } else {
            ReadVia::ReadOnlyClusterClient(cluster_connection(&cluster).await)
        };
        clients.push(tokio::spawn(reader(
            via,
            observed.clone(),
            stop.clone(),
            seed.wrapping_add(100 + id as u64),
        )));
    }
    eprintln!(
        "resp-chaos: cluster ready and load started at {:.1}s; redis-benchmark against {benchmark_resp}, output in {}",
        started.elapsed().as_secs_f64(),
        output_dir.display()
    );

    keep_load(
        Duration::from_secs(3),
        Instant::now() + Duration::from_secs(60),
        "a SET acknowledged before the kill",
        || observed.acknowledged_in(Phase::BeforeKill) > 0,
    )
    .await;

    // The node leading the most partitions, other than the benchmark's seed.
    let leaders = cluster.partition_leaders(&all).await;
    let led_by = |node: usize| {
        let name = &cluster.nodes[node].name;
        leaders
            .iter()
            .filter(|leader| leader.as_ref() == Some(name))
            .count()
    };
    let victim = (0..NODES)
        .filter(|&node| node != benchmark_node)
        .max_by_key(|&node| led_by(node))
        .unwrap();
    let victim_led = led_by(victim);
    assert!(
        victim_led > 0,
        "the node to kill leads some partition, so that its kill moves leaders: {leaders:?}"
    );
    let killed_at = Instant::now();
    cluster.nodes[victim].kill();
    observed.enter(Phase::Down);
    eprintln!(
        "resp-chaos: node-{victim} (leader of {victim_led} of {PARTITIONS} partitions) killed at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    cluster.start_again(victim);
    observed.enter(Phase::Rejoining);
    cluster.wait_ready(READY_WITHIN).await;
    let ready_at = Instant::now();
    observed.enter(Phase::Restarted);
    eprintln!(
        "resp-chaos: node-{victim} started again empty, every node ready {:.1}s after the kill",
        (ready_at - killed_at).as_secs_f64()
    );
    let sets_served_at_ready = cluster
        .resp_commands_labelled(&[("command", "set"), ("result", "ok")])
        .await;
    let history_sets_at_ready = observed.attempted();

    keep_load(
        Duration::from_secs(3),
        Instant::now() + Duration::from_secs(90),
        "a redis-benchmark round started after the restart to complete, and a SET of the \
         history writers acknowledged",
        || benchmark.completed_since(ready_at) && observed.acknowledged_in(Phase::Restarted) > 0,
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let rounds = benchmark.finish();
    for client in clients {
        client.await.unwrap();
    }
    let sets_served = cluster
        .resp_commands_labelled(&[("command", "set"), ("result", "ok")])
        .await
        - sets_served_at_ready;
    let history_sets = observed.attempted() - history_sets_at_ready;

    // Every key reads back its last acknowledged value or a later attempt, through
    // every node's RESP listener.
    cluster.wait_ready(READY_WITHIN).await;
    let history = &observed.history;
    let keys = history.keys();
    let mut connections = HashMap::new();
    for node in &cluster.nodes {
        let resp = node.resp.clone().unwrap();
        for (key, known) in &keys {
            let deadline = Instant::now() + Duration::from_secs(30);
            let value = loop {
                match read_following_moved(&mut connections, &resp, key).await {
                    Ok(value) => break value,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("final read of {key} via {resp}: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("final read of {key} via {resp} never answered: {e}"),
                }
            };
            history.check_read(
                key,
                known.acknowledged,
                value,
                &format!("{resp} at the end"),
            );
        }
    }

    let acknowledged = history.acknowledged.load(Ordering::Relaxed);
    let unacknowledged = history.unacknowledged.load(Ordering::Relaxed);
    let reads = history.reads.load(Ordering::Relaxed);
    let by_phase: Vec<String> = PHASES
        .iter()
        .map(|&phase| format!("{phase:?} {}", observed.acknowledged_in(phase)))
        .collect();
    let errors = observed.errors.lock().unwrap().clone();
    for round in &rounds {
        eprintln!(
            "resp-chaos: redis-benchmark round {}",
            round.describe(killed_at)
        );
    }
    let rounds_where = |which: fn(&RoundOutcome) -> bool| {
        rounds.iter().filter(|round| which(&round.outcome)).count()
    };
    let completed = rounds_where(|o| matches!(o, RoundOutcome::Completed));
    let failed = rounds_where(|o| matches!(o, RoundOutcome::Failed(_)));
    let stalled = rounds_where(|o| matches!(o, RoundOutcome::Stalled(_)));
    let after_restart: Vec<&Round> = rounds.iter().filter(|r| r.started >= ready_at).collect();
    let completed_after_restart = after_restart.iter().filter(|r| r.completed()).count();
    eprintln!(
        "resp-chaos: {acknowledged} SETs acknowledged ({}), {unacknowledged} not, {reads} GETs \
         checked, {} keys read back through each of {NODES} nodes; failed requests: {errors:?}; \
         redis-benchmark rounds: {completed} completed ({completed_after_restart} of them \
         started after the restart), {failed} failed, {stalled} stalled; {sets_served} SETs \
         served after the restart, {history_sets} of them the history writers'; {:.1}s in all",
        by_phase.join(", "),
        keys.len(),
        started.elapsed().as_secs_f64()
    );

    let violations = history.violations.lock().unwrap();
    assert!(
        violations.is_empty(),
        "{} violations (seed {seed}), the first:\n{}",
        violations.len(),
        violations[..violations.len().min(20)].join("\n")
    );
    assert!(
        observed.acknowledged_in(Phase::BeforeKill) > 0
            && observed.acknowledged_in(Phase::Restarted) > 0,
        "the cluster client's SETs were acknowledged before the kill and after the restart: \
         {by_phase:?}"
    );
    // A round that started while the node was down may stall for good: redis-benchmark
    // drops a client whose connection to the dead master failed without counting the
    // request it had issued, so the round never reaches -n. Once every node is back,
    // nothing excuses a stall.
    let stalled_after_restart: Vec<String> = after_restart
        .iter()
        .filter(|r| matches!(r.outcome, RoundOutcome::Stalled(_)))
        .map(|r| r.describe(killed_at))
        .collect();
    assert!(
        stalled_after_restart.is_empty(),
        "redis-benchmark rounds started after the restart stalled: {stalled_after_restart:#?}"
    );
    assert!(
        completed_after_restart > 0,
        "a redis-benchmark round started after the restart completed: {:#?}",
        after_restart
            .iter()
            .map(|r| r.describe(killed_at))
            .collect::<Vec<_>>()
    );
    assert!(
        sets_served > history_sets as f64,
        "dcache served redis-benchmark's SETs after the restart: {sets_served} SETs \
         answered OK, {history_sets} of them at most the history writers'"
    );
}
