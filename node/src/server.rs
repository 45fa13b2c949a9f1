//! Running a node: the background maintenance task and the HTTP server with graceful,
//! bounded shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::http::{Limits, Node, router};
use crate::store::{Store, StoreConfig};

/// Builds a node from its configuration.
pub fn build_node(config: &NodeConfig) -> Arc<Node> {
    let store = Store::new(
        StoreConfig {
            max_memory: config.max_memory,
            eviction_policy: config.eviction_policy,
        },
        crate::clock::Clock::new(),
    );
    Arc::new(Node::new(
        config.node_id(),
        store,
        Limits {
            max_key_bytes: config.max_key_bytes as usize,
            max_value_bytes: config.max_value_bytes as usize,
        },
        config.default_ttl,
        config.partitions,
    ))
}

/// Serves `node` on an already bound `listener` until `shutdown` completes, then lets
/// in-flight requests finish for at most `grace`.
///
/// Taking a bound listener lets tests bind `127.0.0.1:0` and learn the port first.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    sweep_interval: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let maintenance = tokio::spawn(run_maintenance(node.clone(), sweep_interval, stop.clone()));

    let draining = stop.clone();
    let drain_node = node.clone();
    let listener = listener.tap_io(|tcp| {
        // Small request/response pairs: never wait on Nagle.
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, router(node)).with_graceful_shutdown(async move {
        shutdown.await;
        info!("shutting down: refusing new connections, finishing in-flight requests");
        drain_node.set_ready(false);
        draining.cancel();
    });
    let mut server = std::pin::pin!(server.into_future());
    let result = tokio::select! {
        result = &mut server => result,
        () = async {
            stop.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            warn!(?grace, "in-flight requests still running after the shutdown grace period; exiting");
            Ok(())
        }
    };
    stop.cancel();
    let _ = maintenance.await;
    result
}

async fn run_maintenance(node: Arc<Node>, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let store = node.store.clone();
                // moka's maintenance takes locks and may run for a while under heavy
                // eviction: keep it off the request threads' async path.
                let _ = tokio::task::spawn_blocking(move || store.run_maintenance()).await;
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
