//! `dcache local` as a user runs it: start, add a node, remove one, stop with SIGTERM,
//! and no node process left behind.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dcache_client::local::LocalState;

fn dcache(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dcache"))
        .args(args)
        .output()
        .expect("dcache runs")
}

/// Whether `pid` is gone (a zombie waiting to be reaped counts as gone).
fn process_gone(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty()
        || stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            == Some("Z")
}

fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn local_cluster_grows_shrinks_and_stops_without_orphans() {
    let data_dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("local-runner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir).unwrap();
    let dir = data_dir.to_str().unwrap();
    let runner_log = std::fs::File::create(data_dir.join("runner.log")).unwrap();
    let mut runner = Command::new(env!("CARGO_BIN_EXE_dcache"))
        .args([
            "local",
            "--nodes",
            "2",
            "--base-port",
            "0",
            "--partitions",
            "4",
        ])
        .args(["--data-dir", dir])
        .args(["--node-binary", support::node_binary().to_str().unwrap()])
        .stdout(Stdio::from(runner_log.try_clone().unwrap()))
        .stderr(Stdio::from(runner_log))
        .spawn()
        .unwrap();
    let runner_output = || std::fs::read_to_string(data_dir.join("runner.log")).unwrap_or_default();

    let started = wait_for(
        "the local cluster is ready",
        Duration::from_secs(90),
        || {
            if let Ok(Some(status)) = runner.try_wait() {
                panic!("dcache local exited ({status}): {}", runner_output());
            }
            runner_output()
                .contains("local cluster ready")
                .then(|| LocalState::load(&data_dir).unwrap())
        },
    );
    assert_eq!(started.nodes.len(), 2);
    assert_eq!(started.runner_pid, Some(runner.id()));

    let added = dcache(&["local", "add-node", "--data-dir", dir, "--timeout", "90s"]);
    assert!(added.status.success(), "add-node: {added:?}");
    let grown = LocalState::load(&data_dir).unwrap();
    assert_eq!(grown.nodes.len(), 3);
    let newcomer = grown
        .nodes
        .iter()
        .find(|n| n.name == "node-2")
        .unwrap()
        .clone();

    let removed = dcache(&["local", "remove-node", "node-0", "--data-dir", dir]);
    assert!(removed.status.success(), "remove-node: {removed:?}");
    let shrunk = LocalState::load(&data_dir).unwrap();
    let names: Vec<&str> = shrunk.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2"]);
    let node0 = started.nodes.iter().find(|n| n.name == "node-0").unwrap();
    assert!(process_gone(node0.pid), "the removed node was stopped");

    // The cluster still serves after the changes.
    let nodes = shrunk.api_addrs().join(",");
    let set = dcache(&["--nodes", &nodes, "set", "after-changes", "1"]);
    assert!(set.status.success(), "{set:?}");

    // SIGTERM stops every node, the added one (not the runner's child) included.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(runner.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = wait_for("dcache local exits", Duration::from_secs(30), || {
        runner.try_wait().unwrap()
    });
    assert!(status.success(), "{status}: {}", runner_output());
    for node in started.nodes.iter().chain([&newcomer]) {
        wait_for(
            &format!("{} (pid {}) stopped", node.name, node.pid),
            Duration::from_secs(10),
            || process_gone(node.pid).then_some(()),
        );
    }
    assert!(
        !LocalState::path(&data_dir).exists(),
        "the state file of a stopped cluster is removed"
    );
}
