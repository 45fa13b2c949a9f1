//! The Redis clients tests drive as their users would, installed by
//! `tools/redis-clients.sh` when missing: redis-cli and redis-benchmark from Debian's
//! redis-tools (apt-get), redis-py from PyPI into `target/redis-py-venv`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::repo_root;

/// Installs redis-cli, redis-benchmark and redis-py when missing; the venv's python.
pub fn install_clients() -> PathBuf {
    let started = Instant::now();
    let python = PathBuf::from(run_installer(&[]).trim());
    println!(
        "redis clients ready in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        python.display()
    );
    python
}

/// Installs redis-cli and redis-benchmark when missing.
pub fn install_redis_tools() {
    let started = Instant::now();
    run_installer(&["--tools-only"]);
    println!(
        "redis-cli and redis-benchmark ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Runs `tools/redis-clients.sh` with `args`; what it printed.
fn run_installer(args: &[&str]) -> String {
    let output = Command::new("bash")
        .arg(repo_root().join("tools/redis-clients.sh"))
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .expect("bash runs tools/redis-clients.sh");
    assert!(
        output.status.success(),
        "tools/redis-clients.sh {} could not install the Redis clients this test drives \
         (redis-cli and redis-benchmark from Debian's redis-tools via apt-get, redis-py \
         from PyPI into target/redis-py-venv); it said:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
