//! The `dcache` binary: bad arguments are refused clearly, and the one-shot commands
//! work against a real cluster.

mod support;

use std::process::{Command, Output};

fn dcache(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcache"))
        .args(args)
        .env_remove("DCACHE_NODES")
        .output()
        .expect("dcache runs")
}

/// Runs `dcache args`, expects it to fail, and returns what it printed on stderr.
fn refused(args: &[&str]) -> String {
    let output = dcache(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "dcache {args:?} was accepted; stderr: {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "a refusal prints nothing on stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

#[test]
fn bad_arguments_are_refused_with_a_clear_message() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["local", "--nodes", "0"],
            &["--nodes", "0 is not in 1..=64"],
        ),
        (&["local", "--nodes", "many"], &["--nodes", "many"]),
        (
            &["bench", "--ratio", "9-1"],
            &["--ratio", "not a GETS:SETS ratio like 9:1"],
        ),
        (&["bench", "--ratio", "0:0"], &["at least one side"]),
        (&["bench", "--connections", "0"], &["--connections"]),
        (
            &["bench", "--requests", "10", "--duration", "5s"],
            &["cannot be used with"],
        ),
        (&["bench", "--duration", "soon"], &["not a duration"]),
        (&["bench", "--distribution", "pareto"], &["uniform", "zipf"]),
        (&["bench", "--zipf-exponent=-1"], &["not a positive number"]),
        (
            &["--nodes", "localhost", "get", "k"],
            &["not a node address", "host:port"],
        ),
        (
            &["--nodes", "127.0.0.1:7000,:7001", "stats"],
            &["\":7001\" is not a node address"],
        ),
        (
            &["demo", "--nodes", "127.0.0.1:99999"],
            &["not a node address"],
        ),
        (
            &["set", "k", "v", "--ttl=-5"],
            &["ttl must be a positive number"],
        ),
        (&["set", "k"], &["<VALUE>"]),
        (&["frobnicate"], &["unrecognized subcommand"]),
    ];
    for (args, expected) in cases {
        let stderr = refused(args);
        for fragment in *expected {
            assert!(
                stderr.contains(fragment),
                "dcache {args:?}: stderr lacks {fragment:?}:\n{stderr}"
            );
        }
    }
}

#[test]
fn an_unknown_local_cluster_is_reported() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-local-cluster-here");
    let stderr = refused(&["local", "remove-node", "--data-dir", dir.to_str().unwrap()]);
    assert!(stderr.contains("no local cluster recorded"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_against_a_cluster() {
    let cluster = support::start_cluster(3, 8).await;
    let nodes = cluster.api_addrs().join(",");
    let run = |args: &[&str]| {
        let mut all = vec!["--nodes", nodes.as_str()];
        all.extend_from_slice(args);
        dcache(&all)
    };
    let stdout = |output: &Output| String::from_utf8_lossy(&output.stdout).into_owned();

    let set = run(&["set", "user:1", r#"{"name":"Alice"}"#, "--ttl", "60"]);
    assert!(set.status.success(), "{set:?}");
    let get = run(&["get", "user:1"]);
    assert!(get.status.success());
    let value: serde_json::Value = serde_json::from_str(&stdout(&get)).unwrap();
    assert_eq!(value, serde_json::json!({"name": "Alice"}));

    assert!(run(&["set", "greeting", "hello"]).status.success());
    assert_eq!(stdout(&run(&["get", "greeting"])).trim(), "\"hello\"");
    assert!(run(&["set", "blob", "raw bytes", "--raw"]).status.success());
    assert_eq!(stdout(&run(&["get", "blob"])), "raw bytes");

    assert!(run(&["del", "user:1"]).status.success());
    let missing = run(&["get", "user:1"]);
    assert_eq!(missing.status.code(), Some(1), "a missing key exits 1");

    let report = run(&["cluster"]);
    assert!(report.status.success());
    let report = stdout(&report);
    for fragment in [
        "MEMBERS",
        "PARTITIONS",
        "REBALANCE",
        "node-0",
        "node-1",
        "node-2",
    ] {
        assert!(
            report.contains(fragment),
            "cluster report lacks {fragment}:\n{report}"
        );
    }
    let stats = run(&["stats"]);
    assert!(stats.status.success());
    assert!(stdout(&stats).contains("node-2"));

    let bench = run(&[
        "bench",
        "-n",
        "200",
        "-c",
        "4",
        "--keyspace",
        "50",
        "--json",
    ]);
    assert!(bench.status.success(), "{bench:?}");
    let results: serde_json::Value = serde_json::from_str(&stdout(&bench)).unwrap();
    assert_eq!(results["total_ops"], 200);
    assert_eq!(results["total_errors"], 0);
    cluster.stop();
}
