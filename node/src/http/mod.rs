//! The HTTP API of a node, exactly as DESIGN.md states it.
//!
//! [`router`] builds the whole API over a [`Node`]; tests drive it with `oneshot`
//! without a socket.

mod admin;
mod cache;
pub mod door;
mod error;
mod forward;
mod guard;
mod ops;
mod track;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{any, get};

pub use cache::max_request_body;
pub use error::ApiError;
pub use guard::{Access, Protection, TokenBucket, access};

use crate::cluster::Cluster;
use crate::config::ReadonlyReads;
use crate::metrics::Metrics;
use crate::store::Store;

/// Sizes the API refuses past (413).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

/// Everything a request handler may touch.
pub struct Node {
    pub node_id: String,
    pub store: Store,
    pub metrics: Metrics,
    pub limits: Limits,
    pub default_ttl: Option<Duration>,
    pub partitions: u32,
    /// The cluster this node is a member of; `None` for a standalone node.
    pub cluster: Option<Arc<Cluster>>,
    /// Whether `POST /admin/fault` may cut this node off (tests only).
    pub fault_injection: bool,
    /// What READONLY does on a RESP connection.
    pub resp_readonly: ReadonlyReads,
    /// API tokens, the admin rate limit and the request timeout.
    pub protection: Protection,
    ready: AtomicBool,
    started: Instant,
}

impl Node {
    pub fn new(
        node_id: String,
        store: Store,
        limits: Limits,
        default_ttl: Option<Duration>,
        partitions: u32,
    ) -> Self {
        let metrics = Metrics::new(store.clone(), &node_id, ROUTES);
        Self {
            node_id,
            store,
            metrics,
            limits,
            default_ttl,
            partitions,
            cluster: None,
            fault_injection: false,
            resp_readonly: ReadonlyReads::default(),
            protection: Protection::default(),
            ready: AtomicBool::new(true),
            started: Instant::now(),
        }
    }

    /// Makes this node a cluster member: cache requests then go through Raft.
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Self {
        self.metrics.watch_cluster(cluster.clone());
        self.cluster = Some(cluster);
        self
    }

    /// Why this node should not get traffic, if it should not: shutting down, or (in a
    /// cluster) not joined or a replica here not caught up.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Some("shutting down".into());
        }
        self.cluster
            .as_ref()
            .and_then(|cluster| cluster.not_ready_reason())
    }

    /// Marks the node unready, so that load balancers stop sending it new requests
    /// while it drains.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

const CACHE_ROUTE: &str = "/cache/{*key}";
/// Every route, as labelled in metrics; the last stands for requests that matched none.
const ROUTES: &[&str] = &[
    CACHE_ROUTE,
    "/cache",
    "/cache/",
    "/health",
    "/ready",
    "/stats",
    "/metrics",
    "/cluster",
    "/cluster/init",
    "/cluster/members",
    "/admin/fault",
    "unmatched",
];

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route(
            CACHE_ROUTE,
            get(cache::get_value)
                .put(cache::set_value)
                .post(cache::set_value)
                .delete(cache::delete_value),
        )
        .route(ROUTES[1], any(cache::missing_key))
        .route(ROUTES[2], any(cache::missing_key))
        .route(ROUTES[3], get(ops::health))
        .route(ROUTES[4], get(ops::ready))
        .route(ROUTES[5], get(ops::stats))
        .route(ROUTES[6], get(ops::metrics))
        .route(ROUTES[7], get(admin::status))
        .route(ROUTES[8], axum::routing::post(admin::init))
        .route(ROUTES[9], axum::routing::put(admin::set_members))
        .route(ROUTES[10], axum::routing::post(admin::fault))
        .fallback(ops::no_such_route)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(guard::GuardLayer::new(node.clone()))
        .layer(track::TrackRequestsLayer::new(node.clone()))
        .with_state(node)
}

/// A standalone node with small limits (keys up to 64 bytes, values up to 256) and a
/// 1 MiB store, for the tests of what serves connections.
#[cfg(test)]
pub(crate) fn small_test_node() -> Arc<Node> {
    let store = Store::new(
        crate::store::StoreConfig {
            max_memory: 1 << 20,
            eviction_policy: crate::store::EvictionPolicy::Tinylfu,
        },
        crate::clock::Clock::new(),
    );
    let limits = Limits {
        max_key_bytes: 64,
        max_value_bytes: 256,
    };
    Arc::new(Node::new("test".into(), store, limits, None, 8))
}

#[cfg(test)]
mod tests;
