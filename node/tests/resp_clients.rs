//! The RESP compatibility suite through the Redis clients people run, against a
//! 3-node cluster this test starts: redis-py's `RedisCluster` (`tools/resp_suite.py`)
//! and `redis-cli -c` (`tools/resp_suite_cli.sh`), installed by
//! `tools/redis-clients.sh` when missing (Debian's redis-tools, PyPI's redis in
//! `target/redis-py-venv`). The Rust redis crate's cluster client runs the same checks
//! in `resp.rs`.
//!
//! After the basic checks, keys written by both clients must still be read and written
//! through them after a node joins (a redis-py client whose slot map predates it must
//! follow MOVED) and after a node is killed, so that the partitions it led elect
//! leaders elsewhere.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::redis_tools::install_clients;
use common::{NodeProcess, TestCluster, repo_root};

/// Keys each client writes before the cluster changes and checks after.
const KEYS: usize = 100;

/// Runs one suite to its end; panics with its output if it failed.
fn run_suite(what: &str, command: &mut Command) {
    let started = Instant::now();
    let output = command
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("{what} could not start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    println!(
        "{what}: passed in {:.1}s\n{}",
        started.elapsed().as_secs_f64(),
        text.trim_end()
    );
}

fn python_suite(python: &Path, seed: &str, args: &[&str]) -> Command {
    let mut command = Command::new(python);
    command
        .arg(repo_root().join("tools/resp_suite.py"))
        .arg(seed)
        .args(args);
    command
}

fn cli_suite(seed: &str, args: &[&str]) -> Command {
    let (host, port) = seed.rsplit_once(':').unwrap();
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("tools/resp_suite_cli.sh"))
        .args([host, port])
        .args(args)
        .env("SETTLE_SECONDS", "60");
    command
}

/// `resp_suite.py follow`: one RedisCluster kept across the cluster's changes, told on
/// stdin when to check its keys again.
struct Follower {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
    /// How much of the log was printed already.
    printed: usize,
}

impl Follower {
    fn start(python: &Path, seed: &str, prefix: &str) -> Self {
        let log = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("resp-follower-{}.log", std::process::id()));
        let mut child = python_suite(
            python,
            seed,
            &["follow", "--prefix", prefix, "--keys", &KEYS.to_string()],
        )
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("python runs tools/resp_suite.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut follower = Self {
            child,
            stdin,
            lines,
            log,
            printed: 0,
        };
        follower.expect("written", Duration::from_secs(60));
        follower
    }

    fn expect(&mut self, want: &str, within: Duration) {
        let got = self.lines.recv_timeout(within);
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert_eq!(
            got.as_deref().ok(),
            Some(want),
            "resp_suite.py follow: expected {want:?}; its log:\n{log}"
        );
    }

    /// Reads every key back and writes it again with the same client.
    fn check(&mut self, label: &str) {
        let started = Instant::now();
        writeln!(self.stdin, "{label}").unwrap();
        self.stdin.flush().unwrap();
        self.expect(&format!("ok {label}"), Duration::from_secs(120));
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        println!(
            "redis-py RedisCluster, {label}: {KEYS} keys read back and written again in \
             {:.1}s\n{}",
            started.elapsed().as_secs_f64(),
            log.get(self.printed..).unwrap_or_default().trim_end()
        );
        self.printed = log.len();
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `-a`/AUTH checks, against a standalone node with a token file: a read-only
/// token's SET is refused with NOPERM, in redis-py and in redis-cli.
fn auth_suites(python: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let (reader, writer) = ("reader-token-0123456789", "writer-token-0123456789");
    std::fs::write(&tokens, format!("{reader} read\n{writer} read,write\n")).unwrap();
    let node = NodeProcess::start(&[
        "--resp-listen",
        "127.0.0.1:0",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    let resp = node.resp.clone().unwrap();
    run_suite(
        "redis-py auth",
        &mut python_suite(
            python,
            &resp,
            &["auth", "--reader", reader, "--writer", writer],
        ),
    );
    run_suite(
        "redis-cli auth",
        &mut cli_suite(&resp, &["auth", reader, writer]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_and_redis_cli_pass_the_compatibility_suite() {
    let started = Instant::now();
    let python = install_clients();
    auth_suites(&python);

    let mut cluster = TestCluster::start(3).await;
    let resp = |cluster: &TestCluster, i: usize| cluster.nodes[i].resp.clone().unwrap();
    let seed = resp(&cluster, 0);
    println!(
        "3-node cluster ready at {:.1}s; RESP on {}",
        started.elapsed().as_secs_f64(),
        (0..3)
            .map(|i| resp(&cluster, i))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // redis-py as it comes (RESP3 from redis-py 6 on) and in RESP2, the default of
    // most deployed versions; then redis-cli.
    run_suite(
        "redis-py basic",
        &mut python_suite(&python, &seed, &["basic"]),
    );
    run_suite(
        "redis-py basic, RESP2",
        &mut python_suite(&python, &resp(&cluster, 1), &["basic", "--protocol", "2"]),
    );
    run_suite("redis-cli basic", &mut cli_suite(&seed, &["basic"]));

    // Keys written before the cluster changes, by a redis-py client that stays
    // connected with the slot map it has now, and by redis-cli.
    let mut follower = Follower::start(&python, &seed, "py");
    let keys = KEYS.to_string();
    run_suite(
        "redis-cli write",
        &mut cli_suite(&seed, &["write", "cli", &keys]),
    );

    // A fourth node joins and leads some partitions: the stale client is MOVED.
    let moved_before = cluster.resp_commands_with_result("moved").await;
    let added = cluster.add_node();
    cluster.set_members(0, &[0, 1, 2, added]).await;
    cluster
        .wait_rebalanced(&[0, 1, 2, added], Duration::from_secs(90))
        .await;
    println!(
        "node {added} added and rebalanced at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    follower.check("after add-node");
    let moved_after = cluster.resp_commands_with_result("moved").await;
    assert!(
        moved_after > moved_before,
        "the new node leads some partitions: redis-py's client must have been redirected \
         ({moved_before} MOVED before, {moved_after} after)"
    );
    let new_port = resp(&cluster, added).rsplit(':').next().unwrap().to_owned();
    run_suite(
        "redis-cli check after add-node",
        &mut cli_suite(&seed, &["check", "cli", &keys, &new_port]),
    );

    // The node (other than the seed) leading the most partitions is killed and
    // started empty: its partitions elect leaders elsewhere.
    let leaders = cluster.partition_leaders(&[0, 1, 2, added]).await;
    let victim = (1..=added)
        .max_by_key(|&i| {
            let name = &cluster.nodes[i].name;
            leaders
                .iter()
                .filter(|leader| leader.as_ref() == Some(name))
                .count()
        })
        .unwrap();
    cluster.restart_node(victim);
    println!(
        "node {victim} killed and restarted empty at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Both clients at once, while the partitions elect.
    let cli_check = std::thread::spawn({
        let (seed, keys) = (seed.clone(), keys.clone());
        move || {
            run_suite(
                "redis-cli check after a leader moved",
                &mut cli_suite(&seed, &["check", "cli", &keys]),
            )
        }
    });
    follower.check("after a leader moved");
    cli_check
        .join()
        .expect("redis-cli check after a leader moved");
    run_suite(
        "redis-cli reads redis-py's keys",
        &mut cli_suite(&seed, &["check", "py", &keys]),
    );
    println!(
        "the compatibility suite passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Each slot range's master as `CLUSTER SLOTS` on the RESP listener `resp` names it:
/// `(first, last, master port)`.
async fn slot_masters(resp: &str) -> Vec<(i64, i64, i64)> {
    use redis::Value;
    let mut connection = redis::Client::open(format!("redis://{resp}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let slots: Vec<Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut connection)
        .await
        .unwrap();
    slots
        .into_iter()
        .filter_map(|range| {
            let Value::Array(range) = range else {
                return None;
            };
            let (Value::Int(first), Value::Int(last), Value::Array(master)) =
                (&range[0], &range[1], &range[2])
            else {
                return None;
            };
            let Value::Int(port) = master[1] else {
                return None;
            };
            Some((*first, *last, port))
        })
        .collect()
}

/// What `redis-benchmark --cluster` tripped over on a cluster of more nodes than
/// replicas: a node named, for a partition it does not host, the leader its own
/// placement computed, not the one the balancer keeps (it works toward a placement
/// that keeps current leaders). The nodes' `CLUSTER SLOTS` disagreed, a client that
/// loaded its slot map from such a node was MOVED on every command of those slots, and
/// redis-benchmark re-fetched the map without end ("Cluster slots configuration
/// changed, fetching new one..."). The balancer now publishes its leaders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_names_the_same_masters_after_a_node_joins() {
    let mut cluster = TestCluster::start(3).await;
    let added = cluster.add_node();
    let all = [0, 1, 2, added];
    cluster.set_members(0, &all).await;
    cluster.wait_rebalanced(&all, Duration::from_secs(90)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views = Vec::new();
        for &i in &all {
            let resp = cluster.nodes[i].resp.clone().unwrap();
            views.push((resp.clone(), slot_masters(&resp).await));
        }
        // The master of every slot, per node.
        let master_of = |view: &[(i64, i64, i64)], slot: i64| {
            view.iter()
                .find(|(first, last, _)| (*first..=*last).contains(&slot))
                .map(|(_, _, port)| *port)
        };
        let disagreeing: Vec<String> = (0..16384)
            .step_by(64)
            .filter_map(|slot| {
                let masters: Vec<Option<i64>> = views
                    .iter()
                    .map(|(_, view)| master_of(view, slot))
                    .collect();
                (masters.windows(2).any(|pair| pair[0] != pair[1]))
                    .then(|| format!("slot {slot}: {masters:?}"))
            })
            .collect();
        if disagreeing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes {:?} name different masters for {} of 256 sampled slots, e.g. {:?}",
            views.iter().map(|(resp, _)| resp).collect::<Vec<_>>(),
            disagreeing.len(),
            &disagreeing[..disagreeing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
