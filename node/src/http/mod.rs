//! The HTTP API of a node, exactly as DESIGN.md states it.
//!
//! [`router`] builds the whole API over a [`Node`]; tests drive it with `oneshot`
//! without a socket.

mod cache;
mod error;
mod ops;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get};

pub use error::ApiError;

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
        let metrics = Metrics::new(store.clone(), &node_id);
        Self {
            node_id,
            store,
            metrics,
            limits,
            default_ttl,
            partitions,
            ready: AtomicBool::new(true),
            started: Instant::now(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
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

/// The route label of requests that matched no route.
const UNMATCHED_ROUTE: &str = "unmatched";

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route(
            "/cache/{*key}",
            get(cache::get_value)
                .put(cache::set_value)
                .post(cache::set_value)
                .delete(cache::delete_value),
        )
        .route("/cache", any(cache::missing_key))
        .route("/cache/", any(cache::missing_key))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/stats", get(ops::stats))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::no_such_route)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(middleware::from_fn_with_state(node.clone(), track_requests))
        .with_state(node)
}

/// Counts and times every request by route, method and status.
async fn track_requests(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route.as_ref().map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
    node.metrics
        .observe_request(route, method.as_str(), response.status(), start.elapsed());
    response
}

#[cfg(test)]
mod tests;
