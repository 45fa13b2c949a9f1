//! Cluster administration: `POST /cluster/init` and `GET /cluster`.
//!
//! Authentication of admin calls comes with the security work; until then the admin
//! API is meant for the cluster's private network.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;

use super::forward::unavailable;
use super::{ApiError, Node};
use crate::cluster::{AdminError, Cluster, ClusterStatus, InitRequest};
use crate::raft::ClusterState;

fn cluster(node: &Node) -> Result<&Arc<Cluster>, ApiError> {
    node.cluster.as_ref().ok_or_else(|| {
        ApiError::BadRequest(
            "this node runs standalone: start it with --raft-listen to form a cluster".into(),
        )
    })
}

pub async fn init(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<ClusterState>, ApiError> {
    let cluster = cluster(&node)?;
    let request: InitRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    cluster.init(request).await.map(Json).map_err(|e| match e {
        AdminError::Invalid(message) => ApiError::BadRequest(message),
        AdminError::Conflict(message) => ApiError::Conflict(message),
        AdminError::Unavailable(message) => unavailable(message),
    })
}

pub async fn status(State(node): State<Arc<Node>>) -> Result<Json<ClusterStatus>, ApiError> {
    Ok(Json(cluster(&node)?.status()))
}
