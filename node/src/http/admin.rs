//! Cluster administration: `POST /cluster/init`, `PUT /cluster/members`, `GET /cluster`.
//!
//! With `--tokens-file` the admin calls need the `admin` scope (`GET /cluster`: `read`)
//! and are rate limited (see `super::guard`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;

use super::forward::unavailable;
use super::{ApiError, Node};
use crate::cluster::{AdminError, Cluster, ClusterStatus, InitRequest, MembersRequest};
use crate::raft::ClusterState;

fn cluster(node: &Node) -> Result<&Arc<Cluster>, ApiError> {
    node.cluster.as_ref().ok_or_else(|| {
        ApiError::BadRequest(
            "this node runs standalone: start it with --raft-listen to form a cluster".into(),
        )
    })
}

fn admin_error(error: AdminError) -> ApiError {
    match error {
        AdminError::Invalid(message) => ApiError::BadRequest(message),
        AdminError::Conflict(message) => ApiError::Conflict(message),
        AdminError::Unavailable(message) => unavailable(message),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

pub async fn init(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<ClusterState>, ApiError> {
    let cluster = cluster(&node)?;
    let request: InitRequest = parse(&body)?;
    cluster.init(request).await.map(Json).map_err(admin_error)
}

/// `PUT /cluster/members`: the desired member set; the balancer does the rest.
pub async fn set_members(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<ClusterState>, ApiError> {
    let cluster = cluster(&node)?;
    let request: MembersRequest = parse(&body)?;
    cluster
        .set_members(request.members)
        .await
        .map(Json)
        .map_err(admin_error)
}

pub async fn status(State(node): State<Arc<Node>>) -> Result<Json<ClusterStatus>, ApiError> {
    Ok(Json(cluster(&node)?.status()))
}

/// Body of `POST /admin/fault`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// Cut this node off from every peer (Raft traffic both ways, request forwarding).
    pub isolated: bool,
    /// Raft addresses (`host:port`) this node stops sending Raft traffic to, replacing
    /// any earlier cut; cut both ends of a link for a symmetric cut.
    #[serde(default)]
    pub cut_links: Vec<String>,
}

pub async fn fault(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !node.fault_injection {
        return Err(ApiError::NotFound(
            "fault injection is off: start the node with --enable-fault-injection".into(),
        ));
    }
    let cluster = cluster(&node)?;
    let request: FaultRequest = parse(&body)?;
    cluster.groups.transport.set_isolated(request.isolated);
    cluster
        .groups
        .transport
        .set_cut_links(request.cut_links.iter().cloned().collect());
    tracing::warn!(isolated = request.isolated, cut_links = ?request.cut_links, "fault injection");
    Ok(Json(serde_json::json!({
        "isolated": request.isolated,
        "cut_links": request.cut_links,
    })))
}
