//! `dcache local`: a cluster of dcache-node processes on 127.0.0.1 in the foreground,
//! and `add-node` / `remove-node` to change it from another terminal.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use dcache_client::local::{self, LocalCluster, LocalOptions, LocalState};
use tokio::signal::unix::{SignalKind, signal};

use crate::{LocalAction, LocalArgs};

pub async fn run(args: LocalArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        None => run_foreground(args).await,
        Some(LocalAction::AddNode { timeout }) => {
            let node = local::add_node_to_recorded(&args.data_dir).await?;
            eprintln!(
                "added {} (api {}, raft {}, resp {}, pid {}); rebalancing…",
                node.name,
                node.api_addr,
                node.raft_addr,
                node.resp_addr.as_deref().unwrap_or("off"),
                node.pid
            );
            let state = LocalState::load(&args.data_dir)?;
            let client = dcache_client::Client::builder(state.api_addrs()).build()?;
            let view = local::wait_rebalanced(&client, Instant::now() + timeout).await?;
            println!(
                "rebalanced: {} replicas moved, {} bytes sent",
                view.rebalance.moved, view.rebalance.bytes_moved
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(LocalAction::RemoveNode { id, timeout }) => {
            eprintln!("draining {}…", id.as_deref().unwrap_or("the newest node"));
            let node =
                local::remove_node_from_recorded(&args.data_dir, id.as_deref(), timeout).await?;
            println!("removed {}: drained and stopped", node.name);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_foreground(args: LocalArgs) -> anyhow::Result<ExitCode> {
    if let Ok(state) = LocalState::load(&args.data_dir) {
        if let Some(pid) = state.runner_pid.filter(|&pid| process_alive(pid)) {
            bail!(
                "a local cluster already runs from {} (dcache local, pid {pid}); stop it \
                 first or pass another --data-dir",
                args.data_dir.display()
            );
        }
        // A runner that was killed outright leaves behind the nodes that `add-node`
        // started (its own children died with it).
        let stopped = local::stop_recorded_nodes(&state);
        if stopped > 0 {
            eprintln!("stopped {stopped} nodes left over from an earlier local cluster");
        }
    }
    let mut options = LocalOptions::new(
        usize::from(args.nodes),
        &args.data_dir,
        args.node_binary.clone(),
    )?;
    options.base_port = args.base_port;
    options.partitions = args.partitions;
    options.replication = args.replication;
    options.node_args = args.node_args.clone();
    eprintln!(
        "starting {} dcache-node processes ({} partitions, replication {})…",
        args.nodes, args.partitions, args.replication
    );
    let started = Instant::now();
    let mut cluster = LocalCluster::start(options).await?;
    println!(
        "local cluster ready in {:.1}s; logs and state in {}",
        started.elapsed().as_secs_f64(),
        cluster.data_dir().display()
    );
    println!(
        "{:<10} {:<22} {:<22} {:<22} {:>8}",
        "node", "api", "raft", "resp", "pid"
    );
    for node in &cluster.state.nodes {
        println!(
            "{:<10} {:<22} {:<22} {:<22} {:>8}",
            node.name,
            node.api_addr,
            node.raft_addr,
            node.resp_addr.as_deref().unwrap_or("off"),
            node.pid
        );
    }
    println!(
        "\nexport DCACHE_NODES={}\n\ntry: dcache cluster | dcache set user:1 '{{\"name\":\"Alice\"}}' | \
         dcache local add-node | dcache bench -d 10s",
        cluster.api_addrs().join(",")
    );
    if let Some(resp) = cluster
        .state
        .nodes
        .iter()
        .find_map(|n| n.resp_addr.as_deref())
    {
        let port = resp.rsplit(':').next().unwrap_or(resp);
        println!("Redis clients: redis-cli -c -p {port}");
    }
    println!("Ctrl-C stops every node.");

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = watch.tick() => {
                for (name, status) in cluster.exited_children() {
                    eprintln!("{name} exited on its own ({status}); see its log in {}", cluster.data_dir().display());
                }
                // Nodes added or removed by `dcache local add-node/remove-node`.
                if let Err(e) = cluster.reload_state() {
                    tracing::debug!(error = %e, "could not re-read the local cluster state");
                }
            }
        }
    }
    let count = cluster.state.nodes.len();
    eprintln!("stopping {count} nodes…");
    tokio::task::spawn_blocking(move || cluster.stop()).await?;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
