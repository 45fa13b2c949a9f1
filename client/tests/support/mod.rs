//! Real `dcache-node` processes on loopback for the client's tests.
#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dcache_client::local::{LocalCluster, LocalOptions};

/// The `dcache-node` binary of this workspace's target directory, built first if it
/// is not there yet (a `cargo test -p dcache-client` does not build other packages'
/// binaries).
pub fn node_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let test_exe = std::env::current_exe().expect("the test binary has a path");
        // target/<profile>/deps/<test> → target/<profile>/dcache-node
        let profile_dir = test_exe
            .parent()
            .and_then(Path::parent)
            .expect("test binaries live in target/<profile>/deps");
        let binary = profile_dir.join("dcache-node");
        if !binary.is_file() {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let status = Command::new(option_env!("CARGO").unwrap_or("cargo"))
                .args(["build", "-p", "dcache-node", "--locked"])
                .current_dir(&workspace)
                .status()
                .expect("cargo runs");
            assert!(status.success(), "cargo build -p dcache-node failed");
        }
        assert!(
            binary.is_file(),
            "{} missing after the build",
            binary.display()
        );
        binary
    })
}

/// Raft timing for tests: short enough to fail over quickly, long enough for a loaded
/// two-core CI machine.
pub const HEARTBEAT: Duration = Duration::from_millis(300);
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(1500);

/// Starts a local cluster of `nodes` nodes with `partitions` partitions on free ports.
pub async fn start_cluster(nodes: usize, partitions: u32) -> LocalCluster {
    static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
    let data_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "client-cluster-{}-{}",
        std::process::id(),
        CLUSTERS.fetch_add(1, Ordering::Relaxed)
    ));
    let mut options = LocalOptions::new(nodes, &data_dir, Some(node_binary().to_path_buf()))
        .expect("local options");
    options.partitions = partitions;
    options.raft_heartbeat = HEARTBEAT;
    options.raft_election_timeout = ELECTION_TIMEOUT;
    options.startup_timeout = Duration::from_secs(90);
    LocalCluster::start(options)
        .await
        .expect("the local cluster starts")
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
