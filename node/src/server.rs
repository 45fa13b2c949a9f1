//! Running a node: the background maintenance task and the HTTP server with graceful,
//! bounded shutdown.
//!
//! HTTP is served thread-per-core: one task accepts connections and deals them out
//! round-robin to worker threads, each running its own single-threaded tokio runtime
//! that serves its connections to the end. A request never hops threads, which is worth
//! a tenth or more requests per second over a work-stealing runtime on a small machine
//! (see `make bench-node`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::cluster::{Cluster, RingSettings};
use crate::config::NodeConfig;
use crate::http::{Limits, Node, router};
use crate::raft::groups::Groups;
use crate::raft::transport::Transport;
use crate::raft::{self, MemberNode, NodeId};
use crate::store::{Store, StoreConfig};

/// How long a stopping node spends handing its leaderships away.
const STEP_DOWN_AT_MOST: Duration = Duration::from_secs(5);

/// Builds a node from its configuration, given where its listeners are bound (the API
/// and, for a cluster member, Raft).
pub fn build_node(
    config: &NodeConfig,
    api_addr: SocketAddr,
    raft_addr: Option<SocketAddr>,
) -> anyhow::Result<Arc<Node>> {
    let store = Store::new(
        StoreConfig {
            max_memory: config.max_memory,
            eviction_policy: config.eviction_policy,
        },
        crate::clock::Clock::new(),
    );
    let mut node = Node::new(
        config.node_id(),
        store.clone(),
        Limits {
            max_key_bytes: config.max_key_bytes as usize,
            max_value_bytes: config.max_value_bytes as usize,
        },
        config.default_ttl,
        config.partitions,
    );
    node.fault_injection = config.enable_fault_injection;
    let Some(raft_addr) = raft_addr else {
        return Ok(Arc::new(node));
    };
    let me = MemberNode {
        name: config.node_id(),
        api_addr: config
            .advertise_api
            .clone()
            .unwrap_or_else(|| api_addr.to_string()),
        raft_addr: config
            .advertise_raft
            .clone()
            .unwrap_or_else(|| raft_addr.to_string()),
    };
    let heartbeat = config.raft_heartbeat.as_millis() as u64;
    let election = config.raft_election_timeout.as_millis() as u64;
    let raft_config = openraft::Config {
        cluster_name: "dcache".into(),
        heartbeat_interval: heartbeat,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        // A node coming back from a partition must not depose a healthy leader.
        enable_pre_vote: Some(true),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.raft_snapshot_entries),
        max_in_snapshot_log_to_keep: config.raft_snapshot_entries.min(1000) / 2,
        ..Default::default()
    }
    .validate()
    .context("invalid Raft timing: the election timeout must exceed the heartbeat")?;
    // A fresh Raft identity every start: memory-only state never survives a restart,
    // so the node must never vote under an identity it may have voted with before.
    let raft_id: NodeId = rand::random::<u64>().max(1);
    let mut groups = Groups::new(
        raft_id,
        me,
        Arc::new(raft_config),
        Transport::new(),
        store,
        config.partitions,
    );
    groups.read_policy = config.read_policy.into();
    let groups = Arc::new(groups);
    let cluster = Cluster::new(
        groups,
        RingSettings {
            replication: usize::from(config.replication),
            vnodes: config.vnodes,
            max_moves_per_node: usize::from(config.max_moves_per_node),
        },
    );
    Ok(Arc::new(node.with_cluster(Arc::new(cluster))))
}

/// How a node serves: its sweep interval, HTTP worker threads and shutdown grace.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub sweep_interval: Duration,
    /// How often the balancer runs (cluster members only).
    pub balance_interval: Duration,
    /// Threads serving HTTP, each with its own runtime; 0 means one per core.
    pub http_workers: usize,
    /// How long in-flight requests may take to finish after shutdown begins.
    pub grace: Duration,
}

impl ServeOptions {
    pub fn from_config(config: &NodeConfig) -> Self {
        Self {
            sweep_interval: config.expiry_sweep_interval,
            balance_interval: config.balance_interval,
            http_workers: config.http_workers,
            grace: config.shutdown_timeout,
        }
    }
}

/// Serves `node` on an already bound `listener` until `shutdown` completes, then lets
/// in-flight requests finish for at most `options.grace`.
///
/// Taking a bound listener lets tests bind `127.0.0.1:0` and learn the port first.
pub async fn serve(
    listener: TcpListener,
    raft_listener: Option<TcpListener>,
    node: Arc<Node>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let balancer = node.cluster.clone().map(|cluster| {
        let stop = stop.clone();
        let every = options.balance_interval;
        tokio::spawn(async move { cluster.run_balancer(every, stop).await })
    });
    let raft_server = match (raft_listener, &node.cluster) {
        (Some(raft_listener), Some(cluster)) => {
            let app = raft::rpc::router(cluster.groups.clone());
            let stopped = stop.clone();
            Some(tokio::spawn(async move {
                let server = axum::serve(raft_listener, app)
                    .with_graceful_shutdown(async move { stopped.cancelled().await });
                if let Err(e) = server.await {
                    error!(error = %e, "Raft endpoint failed");
                }
            }))
        }
        _ => None,
    };
    let maintenance = tokio::spawn(run_maintenance(
        node.clone(),
        options.sweep_interval,
        stop.clone(),
    ));
    let connections = TaskTracker::new();
    let acceptor = spawn_http_workers(
        listener,
        router(node.clone()),
        options.http_workers,
        stop.clone(),
        connections.clone(),
    )?;

    shutdown.await;
    info!("shutting down: refusing new connections, finishing in-flight requests");
    node.set_ready(false);
    if let Some(cluster) = &node.cluster {
        // Leaderships first, while requests still flow, so that no partition waits an
        // election timeout for a new leader.
        let still_led = cluster
            .groups
            .step_down(options.grace.min(STEP_DOWN_AT_MOST))
            .await;
        if still_led > 0 {
            warn!(
                still_led,
                "stopping while still leading groups; they will elect new leaders"
            );
        }
    }
    stop.cancel();
    connections.close();
    if tokio::time::timeout(options.grace, connections.wait())
        .await
        .is_err()
    {
        warn!(grace = ?options.grace, "in-flight requests still running after the shutdown grace period; exiting");
    }
    let _ = maintenance.await;
    let _ = acceptor.await;
    if let Some(balancer) = balancer {
        let _ = balancer.await;
    }
    if let Some(cluster) = &node.cluster {
        cluster.groups.shutdown().await;
    }
    if let Some(raft_server) = raft_server {
        let _ = tokio::time::timeout(options.grace, raft_server).await;
    }
    // Worker threads whose connections outlived the grace period are not joined: they
    // end with the process.
    Ok(())
}

/// Starts the HTTP worker threads and the task that hands them accepted connections,
/// round-robin, so that load spreads evenly however the kernel wakes threads.
fn spawn_http_workers(
    listener: TcpListener,
    app: Router,
    workers: usize,
    stop: CancellationToken,
    connections: TaskTracker,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        workers
    };
    let mut inboxes = Vec::with_capacity(workers);
    for worker in 0..workers {
        let (inbox, mut incoming) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        inboxes.push(inbox);
        let (app, stop, connections) = (app.clone(), stop.clone(), connections.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("dcache-http-{worker}"))
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some(stream) = incoming.recv().await {
                        match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => {
                                serve_connection(stream, &app, &stop, &connections);
                            }
                            Err(e) => warn!(error = %e, "cannot register a connection"),
                        }
                    }
                    connections.wait().await;
                });
                // Connections still open past the grace period are dropped here.
                runtime.shutdown_background();
            })?;
    }
    Ok(tokio::spawn(accept_loop(listener, inboxes, stop)))
}

async fn accept_loop(
    listener: TcpListener,
    workers: Vec<tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>>,
    stop: CancellationToken,
) {
    for next in (0..workers.len()).cycle() {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Small request/response pairs: never wait on Nagle.
        let _ = stream.set_nodelay(true);
        match stream.into_std() {
            Ok(stream) => {
                if workers[next].send(stream).is_err() {
                    error!("HTTP worker {next} is gone");
                }
            }
            Err(e) => warn!(error = %e, "cannot hand a connection to a worker"),
        }
    }
    // Dropping the senders lets each worker finish once its connections are done.
}

fn serve_connection(
    stream: tokio::net::TcpStream,
    app: &Router,
    stop: &CancellationToken,
    connections: &TaskTracker,
) {
    let service = TowerToHyperService::new(app.clone());
    let stop = stop.clone();
    tokio::spawn(connections.track_future(async move {
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "connection ended with an error");
        }
    }));
}

async fn run_maintenance(node: Arc<Node>, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let store = node.store.clone();
                // moka's maintenance takes locks and may run for a while under heavy
                // eviction: keep it off the async threads.
                let _ = tokio::task::spawn_blocking(move || store.run_maintenance()).await;
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Completes on SIGTERM or Ctrl-C. The handlers are installed when this is called,
/// not when the future is first polled: a signal in between (a SIGTERM right after
/// the "serving" log line) would otherwise kill the process without a clean stop.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(handler) => Some(handler),
            Err(e) => {
                warn!(error = %e, "cannot listen for {name}");
                None
            }
        };
        (
            install(SignalKind::interrupt(), "Ctrl-C"),
            install(SignalKind::terminate(), "SIGTERM"),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (mut interrupt, mut terminate) = handlers;
            async fn received(handler: Option<&mut tokio::signal::unix::Signal>) {
                match handler {
                    Some(handler) => {
                        handler.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = received(interrupt.as_mut()) => info!("received Ctrl-C"),
                () = received(terminate.as_mut()) => info!("received SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            info!("received Ctrl-C");
        }
    }
}
