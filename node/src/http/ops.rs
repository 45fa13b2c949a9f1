//! Liveness, readiness, statistics and metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};
use dcache_protocol::wire::Stats;
use serde_json::json;

use super::{ApiError, Node};

pub async fn health(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "node_id": node.node_id}))
}

pub async fn ready(State(node): State<Arc<Node>>) -> Response {
    match node.not_ready_reason() {
        None => Json(json!({"ready": true})).into_response(),
        Some(reason) => ApiError::Unavailable {
            message: format!("not ready: {reason}"),
            retry_after_secs: 1,
        }
        .into_response(),
    }
}

pub async fn stats(State(node): State<Arc<Node>>) -> Json<Stats> {
    // Settle pending evictions so that keys and bytes are exact, not a moment behind.
    node.store.run_maintenance();
    let store = node.store.stats();
    let reads = store.hits + store.misses;
    // A standalone node holds and leads every partition.
    let (led, held) = node
        .cluster
        .as_ref()
        .map_or((node.partitions, node.partitions), |c| c.partition_counts());
    Json(Stats {
        node_id: node.node_id.clone(),
        keys: store.keys,
        bytes: store.bytes,
        max_memory: node.store.config().max_memory,
        eviction_policy: node.store.config().eviction_policy.as_str().into(),
        hits: store.hits,
        misses: store.misses,
        hit_ratio: if reads == 0 {
            0.0
        } else {
            store.hits as f64 / reads as f64
        },
        sets: store.sets,
        deletes: store.deletes,
        evictions: store.evictions,
        expirations: store.expirations,
        partitions: node.partitions,
        partitions_led: led,
        partitions_held: held,
        uptime_seconds: node.uptime().as_secs(),
    })
}

pub async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        node.metrics.render(node.not_ready_reason().is_none()),
    )
}

pub async fn no_such_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
