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
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::auth::{Authenticator, ClusterSecret};
use crate::cluster::{Cluster, RingSettings};
use crate::config::NodeConfig;
use crate::http::door::{self, DoorLimits, Ended, Rewind};
use crate::http::{Limits, Node, Protection, TokenBucket, max_request_body, router};
use crate::metrics::{Rejection, Rejections};
use crate::persist::wal::{self, WalOptions};
use crate::persist::{DataDir, Disk};
use crate::raft::groups::Groups;
use crate::raft::transport::{PeerSecurity, Transport};
use crate::raft::{self, MemberNode, NodeId};
use crate::store::{Store, StoreConfig};

/// How long a stopping node spends handing its leaderships away.
const STEP_DOWN_AT_MOST: Duration = Duration::from_secs(5);

/// Builds a node from its configuration, given where its listeners are bound (the API,
/// for a cluster member Raft, and RESP if it listens).
pub fn build_node(
    config: &NodeConfig,
    api_addr: SocketAddr,
    raft_addr: Option<SocketAddr>,
    resp_addr: Option<SocketAddr>,
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
    node.resp_readonly = config.resp_readonly;
    node.protection = protection(config)?;
    if node.protection.auth.is_none() && !api_addr.ip().is_loopback() {
        warn!(listen = %api_addr, "the API is open to anyone who can reach it: --tokens-file turns authentication on");
    }
    let Some(raft_addr) = raft_addr else {
        return Ok(Arc::new(node));
    };
    let peers = peer_security(config, node.metrics.rejections.clone())?;
    if peers.cluster_secret.is_none() && !raft_addr.ip().is_loopback() {
        warn!(raft = %raft_addr, "the cluster is unauthenticated: anyone who reaches the Raft endpoint can send it Raft messages; --cluster-secret-file closes it");
    }
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
        resp_addr: resp_addr.map(|bound| {
            config
                .advertise_resp
                .clone()
                .unwrap_or_else(|| bound.to_string())
        }),
    };
    let heartbeat = config.raft_heartbeat.as_millis() as u64;
    let election = config.raft_election_timeout.as_millis() as u64;
    let raft_config = openraft::Config {
        cluster_name: "dcache".into(),
        // The heartbeats themselves go at `--raft-heartbeat`, from one ticker for all
        // groups (below). openraft derives each group's own tick from this interval
        // (13/64 of it): every tick wakes the group, so ticking at election-timeout
        // granularity instead of heartbeat granularity is most of an idle node's CPU.
        // The tick only has to notice an election timeout: just under the minimum it
        // comes every ~20% of it (idle CPU per node 4.1% -> 3.3% against half of it).
        heartbeat_interval: heartbeat.max(election.saturating_sub(1)),
        election_timeout_min: election,
        election_timeout_max: election * 2,
        // A node coming back from a partition must not depose a healthy leader.
        enable_pre_vote: Some(true),
        // One ticker sends the heartbeats of every group led here at once (see
        // `Groups::run_heartbeats`), so each peer gets them in one batch per tick.
        enable_heartbeat: false,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.raft_snapshot_entries),
        max_in_snapshot_log_to_keep: config.raft_snapshot_entries.min(1000) / 2,
        ..Default::default()
    }
    .validate()
    .context("invalid Raft timing: the election timeout must exceed the heartbeat")?;
    // Memory-only: a fresh Raft identity every start, since nothing survives a restart
    // and the node must never vote under an identity it may have voted with before.
    // With its disk, the node keeps its identity along with its votes and log.
    let disk = match config.data_dir().map_err(anyhow::Error::msg)? {
        None => None,
        Some(dir) => {
            let data_dir = DataDir::open(dir, &me.name, config.partitions)
                .with_context(|| format!("cannot use data directory {}", dir.display()))?;
            let options = WalOptions {
                policy: config.fsync,
                segment_bytes: wal::SEGMENT_BYTES,
            };
            info!(
                dir = %dir.display(),
                raft_id = data_dir.identity.raft_id,
                restarted = data_dir.restarted,
                fsync = ?config.fsync,
                "persistence on disk"
            );
            let disk = Disk::open(data_dir, options)
                .with_context(|| format!("cannot recover data directory {}", dir.display()))?;
            Some(Arc::new(disk))
        }
    };
    let raft_id: NodeId = match &disk {
        Some(disk) => disk.data_dir.identity.raft_id,
        None => rand::random::<u64>().max(1),
    };
    let mut groups = Groups::new(
        raft_id,
        me,
        Arc::new(raft_config),
        Transport::secured(peers),
        store,
        config.partitions,
    );
    groups.lease = config.read_policy.lease(config.raft_election_timeout);
    if groups.lease.is_some() && disk.is_some() {
        // Restarted with its votes but not with the leases it granted: until those
        // have run out, a vote from this node could elect a leader while the old one
        // still serves reads on its lease.
        groups.grants_votes_from =
            Some(std::time::Instant::now() + config.raft_election_timeout * 2);
    }
    groups.disk = disk;
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

/// The API's protections from the configuration: tokens, admin rate, request timeout.
fn protection(config: &NodeConfig) -> anyhow::Result<Protection> {
    let auth = if config.tokens_file.is_empty() {
        None
    } else {
        let auth = Authenticator::load(config.tokens_file.clone(), config.secret_reload_interval)
            .map_err(anyhow::Error::msg)
            .context("invalid --tokens-file")?;
        Some(auth)
    };
    Ok(Protection {
        auth,
        metrics_auth: config.metrics_auth,
        admin_rate: Some(TokenBucket::per_second(config.admin_rate_limit)),
        request_timeout: Some(config.request_timeout),
    })
}

/// How this node calls and admits its peers: TLS trusting the cluster CA, the cluster
/// secret.
fn peer_security(config: &NodeConfig, rejections: Rejections) -> anyhow::Result<PeerSecurity> {
    let tls = match (&config.tls_cert_file, &config.tls_ca_file) {
        (None, _) => None,
        (Some(_), None) => anyhow::bail!(
            "a cluster member serving TLS needs --tls-ca-file to verify its peers' certificates"
        ),
        (Some(_), Some(ca)) => Some(
            crate::tls::client_config(ca.clone(), config.secret_reload_interval)
                .map_err(anyhow::Error::msg)
                .context("invalid --tls-ca-file")?,
        ),
    };
    let cluster_secret = match &config.cluster_secret_file {
        None => None,
        Some(path) => Some(Arc::new(
            ClusterSecret::load(path.clone(), config.secret_reload_interval)
                .map_err(anyhow::Error::msg)
                .context("invalid --cluster-secret-file")?,
        )),
    };
    Ok(PeerSecurity {
        tls,
        cluster_secret,
        rejections: Some(rejections),
    })
}

/// How a node's listeners take connections: TLS, how long a client may take to send
/// its headers, how many API connections may be open.
#[derive(Clone)]
pub struct Listening {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Listening {
    fn default() -> Self {
        Self {
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

impl Listening {
    /// Reads the certificate files: an invalid one refuses the start.
    pub fn from_config(config: &NodeConfig) -> anyhow::Result<Self> {
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => {
                let cert = crate::tls::ReloadingCert::load(
                    cert.clone(),
                    key.clone(),
                    config.secret_reload_interval,
                )
                .map_err(anyhow::Error::msg)
                .context("invalid --tls-cert-file or --tls-key-file")?;
                Some(crate::tls::server_config(cert).map_err(anyhow::Error::msg)?)
            }
            _ => None,
        };
        Ok(Self {
            tls,
            header_read_timeout: config.header_read_timeout,
            max_connections: config.max_connections as usize,
        })
    }
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
    /// How long a stop is held while a partition needs this node for its majority.
    pub safe_stop: Duration,
    /// How often every group led here heartbeats its followers.
    pub raft_heartbeat: Duration,
}

impl ServeOptions {
    pub fn from_config(config: &NodeConfig) -> Self {
        Self {
            sweep_interval: config.expiry_sweep_interval,
            balance_interval: config.balance_interval,
            http_workers: config.http_workers,
            grace: config.shutdown_timeout,
            safe_stop: config.safe_stop_timeout,
            raft_heartbeat: config.raft_heartbeat,
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
    serve_with(
        Listeners {
            api: listener,
            raft: raft_listener,
            resp: None,
        },
        node,
        options,
        Listening::default(),
        shutdown,
    )
    .await
}

/// The bound sockets a node serves: the HTTP API, Raft (a cluster member) and RESP
/// (with `--resp-listen`).
pub struct Listeners {
    pub api: TcpListener,
    pub raft: Option<TcpListener>,
    pub resp: Option<TcpListener>,
}

/// [`serve`], with TLS, connection limits and every listener.
pub async fn serve_with(
    listeners: Listeners,
    node: Arc<Node>,
    options: ServeOptions,
    listening: Listening,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(cluster) = &node.cluster {
        cluster
            .groups
            .restore()
            .await
            .map_err(std::io::Error::other)?;
    }
    let stop = CancellationToken::new();
    let balancer = node.cluster.clone().map(|cluster| {
        let stop = stop.clone();
        let every = options.balance_interval;
        tokio::spawn(async move { cluster.run_balancer(every, stop).await })
    });
    let heartbeats = node.cluster.clone().map(|cluster| {
        let stop = stop.clone();
        let every = options.raft_heartbeat;
        tokio::spawn(async move { cluster.groups.run_heartbeats(every, stop).await })
    });
    let Listeners {
        api: listener,
        raft: raft_listener,
        resp: resp_listener,
    } = listeners;
    let raft_connections = TaskTracker::new();
    let raft_server = match (raft_listener, &node.cluster) {
        (Some(raft_listener), Some(cluster)) => Some(tokio::spawn(accept_raft(
            raft_listener,
            raft::rpc::router(cluster.groups.clone()),
            Accepting {
                listening: listening.clone(),
                rejections: node.metrics.rejections.clone(),
                stop: stop.clone(),
                connections: raft_connections.clone(),
            },
        ))),
        _ => None,
    };
    let maintenance = tokio::spawn(run_maintenance(
        node.clone(),
        options.sweep_interval,
        stop.clone(),
    ));
    let connections = TaskTracker::new();
    let accepting = Accepting {
        listening,
        rejections: node.metrics.rejections.clone(),
        stop: stop.clone(),
        connections: connections.clone(),
    };
    let workers = spawn_client_workers(
        router(node.clone()),
        node.clone(),
        options.http_workers,
        accepting.clone(),
    )?;
    // One cap for every client connection, HTTP and RESP together.
    let open = Arc::new(Semaphore::new(accepting.listening.max_connections));
    let mut acceptors = vec![tokio::spawn(accept_loop(
        listener,
        FrontDoor::Http,
        workers.clone(),
        open.clone(),
        accepting.clone(),
    ))];
    if let Some(resp_listener) = resp_listener {
        acceptors.push(tokio::spawn(accept_loop(
            resp_listener,
            FrontDoor::Resp,
            workers,
            open,
            accepting,
        )));
    } else {
        drop(workers);
    }

    shutdown.await;
    info!("shutting down: refusing new connections, finishing in-flight requests");
    node.set_ready(false);
    if let Some(cluster) = &node.cluster
        && let Some(reason) = cluster.wait_until_safe_to_stop(options.safe_stop).await
    {
        warn!(%reason, waited = ?options.safe_stop, "stopping although a partition still needs this node for its majority");
    }
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
    for acceptor in acceptors {
        let _ = acceptor.await;
    }
    if let Some(balancer) = balancer {
        let _ = balancer.await;
    }
    if let Some(heartbeats) = heartbeats {
        let _ = heartbeats.await;
    }
    if let Some(cluster) = &node.cluster {
        cluster.groups.shutdown().await;
    }
    if let Some(raft_server) = raft_server {
        let _ = raft_server.await;
        raft_connections.close();
        let _ = tokio::time::timeout(options.grace, raft_connections.wait()).await;
    }
    // Worker threads whose connections outlived the grace period are not joined: they
    // end with the process.
    Ok(())
}

/// Starts the client worker threads, each with its own runtime serving the HTTP and
/// RESP connections the accept loops hand it, round-robin, so that load spreads evenly
/// however the kernel wakes threads.
fn spawn_client_workers(
    app: Router,
    node: Arc<Node>,
    workers: usize,
    accepting: Accepting,
) -> std::io::Result<Vec<tokio::sync::mpsc::UnboundedSender<Admitted>>> {
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        workers
    };
    let mut inboxes = Vec::with_capacity(workers);
    let lean_path = DoorLimits {
        max_body: max_request_body(&node.limits),
    };
    for worker in 0..workers {
        let (inbox, mut incoming) = tokio::sync::mpsc::unbounded_channel::<Admitted>();
        inboxes.push(inbox);
        let (app, node, accepting) = (app.clone(), node.clone(), accepting.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("dcache-http-{worker}"))
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some((stream, admission, door)) = incoming.recv().await {
                        match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => match door {
                                FrontDoor::Http => {
                                    serve_connection(
                                        stream,
                                        &app,
                                        &accepting,
                                        Some(admission),
                                        Some(lean_path),
                                    );
                                }
                                FrontDoor::Resp => {
                                    serve_resp_connection(stream, &node, &accepting, admission);
                                }
                            },
                            Err(e) => warn!(error = %e, "cannot register a connection"),
                        }
                    }
                    accepting.connections.wait().await;
                });
                // Connections still open past the grace period are dropped here.
                runtime.shutdown_background();
            })?;
    }
    Ok(inboxes)
}

/// Which protocol an accepted connection speaks.
#[derive(Debug, Clone, Copy)]
enum FrontDoor {
    Http,
    Resp,
}

/// An accepted client connection's place under `--max-connections`, and its place among
/// the connections shutdown waits for, both held from the accept on: a connection still
/// on its way to a worker when shutdown begins is waited for too.
struct Admission {
    _permit: OwnedSemaphorePermit,
    _tracked: tokio_util::task::task_tracker::TaskTrackerToken,
}

/// An accepted client connection on its way to a worker.
type Admitted = (std::net::TcpStream, Admission, FrontDoor);

/// What every accepted connection is served with.
#[derive(Clone)]
struct Accepting {
    listening: Listening,
    rejections: Rejections,
    stop: CancellationToken,
    connections: TaskTracker,
}

async fn accept_loop(
    listener: TcpListener,
    door: FrontDoor,
    workers: Vec<tokio::sync::mpsc::UnboundedSender<Admitted>>,
    open: Arc<Semaphore>,
    accepting: Accepting,
) {
    let stop = accepting.stop.clone();
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
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // Over the cap: closed at once, so the client learns now rather than at a
            // timeout, and the node's memory and descriptors stay bounded.
            accepting.rejections.count(Rejection::ConnectionLimit);
            drop(stream);
            continue;
        };
        let admission = Admission {
            _permit: permit,
            _tracked: accepting.connections.token(),
        };
        // Small request/response pairs: never wait on Nagle.
        let _ = stream.set_nodelay(true);
        match stream.into_std() {
            Ok(stream) => {
                if workers[next].send((stream, admission, door)).is_err() {
                    error!("client worker {next} is gone");
                }
            }
            Err(e) => warn!(error = %e, "cannot hand a connection to a worker"),
        }
    }
    // Dropping the senders lets each worker finish once its connections are done.
}

/// Serves Raft RPC: one task accepting, one per connection, on the node's main runtime
/// (Raft messages are few and large next to cache requests).
async fn accept_raft(listener: TcpListener, app: Router, accepting: Accepting) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "Raft accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = accepting.stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        serve_connection(stream, &app, &accepting, None, None);
    }
}

/// Serves one connection to its end: the TLS handshake if TLS is on, then HTTP/1.1
/// with a deadline on every request's headers (which also bounds keep-alive idling).
fn serve_connection(
    stream: tokio::net::TcpStream,
    app: &Router,
    accepting: &Accepting,
    admission: Option<Admission>,
    lean_path: Option<DoorLimits>,
) {
    let app = app.clone();
    let Accepting {
        listening,
        rejections,
        stop,
        connections,
    } = accepting.clone();
    tokio::spawn(connections.track_future(async move {
        let _admission = admission;
        let Some(stream) = handshake(stream, &listening, &rejections).await else {
            return;
        };
        if let Some(rejection) =
            serve_http(stream, app, &stop, listening.header_read_timeout, lean_path).await
        {
            rejections.count(rejection);
        }
    }));
}

/// Serves HTTP/1.1 on `stream` to its end: on the lean path ([`door`]) when given its
/// limits, by hyper from the first request the lean path does not take (or from the
/// start). `stop` ends the connection between requests. Answers the rejection to
/// count, if the connection ended with one.
pub async fn serve_http<S>(
    stream: S,
    app: Router,
    stop: &CancellationToken,
    header_read_timeout: Duration,
    lean_path: Option<DoorLimits>,
) -> Option<Rejection>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stream = match lean_path {
        None => Rewind::new(stream),
        Some(limits) => match door::serve(stream, &app, stop, header_read_timeout, limits).await {
            Ok(Ended::Handover(stream)) => stream,
            Ok(Ended::Closed) => return None,
            Ok(Ended::HeaderTimeout) => return Some(Rejection::HeaderTimeout),
            Err(e) => {
                debug!(error = %e, "connection ended with an error");
                return None;
            }
        },
    };
    // Half-closed: a client that shuts its sending side after its requests still gets
    // every answer, as on the lean path.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .half_close(true)
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    match result {
        Ok(()) => None,
        Err(e) => {
            debug!(error = %e, "connection ended with an error");
            e.is_timeout().then_some(Rejection::HeaderTimeout)
        }
    }
}

/// The TLS handshake when TLS is on, bounded by the header timeout; `None` when it
/// failed or took too long.
async fn handshake(
    stream: tokio::net::TcpStream,
    listening: &Listening,
    rejections: &Rejections,
) -> Option<Either<tokio::net::TcpStream, tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let Some(config) = &listening.tls else {
        return Some(Either::Left(stream));
    };
    let handshake = tokio_rustls::TlsAcceptor::from(config.clone()).accept(stream);
    match tokio::time::timeout(listening.header_read_timeout, handshake).await {
        Ok(Ok(stream)) => Some(Either::Right(stream)),
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            rejections.count(Rejection::HeaderTimeout);
            None
        }
    }
}

/// Serves one RESP connection to its end, TLS first if TLS is on (`rediss://`).
fn serve_resp_connection(
    stream: tokio::net::TcpStream,
    node: &Arc<Node>,
    accepting: &Accepting,
    admission: Admission,
) {
    let node = node.clone();
    let Accepting {
        listening,
        rejections,
        stop,
        connections,
    } = accepting.clone();
    tokio::spawn(connections.track_future(async move {
        let _admission = admission;
        let Some(stream) = handshake(stream, &listening, &rejections).await else {
            return;
        };
        if let Err(e) = crate::resp::serve(stream, node, stop, listening.header_read_timeout).await
        {
            debug!(error = %e, "RESP connection ended with an error");
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

/// Completes on SIGTERM or Ctrl-C. SIGTERM is caught from the call on, not from the
/// first poll: a node that has announced it serves must never die of the default action.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let terminate = async {
            match terminate {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => info!("received Ctrl-C"),
            () = terminate => info!("received SIGTERM"),
        }
    }
}
