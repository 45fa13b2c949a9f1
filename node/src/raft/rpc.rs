//! The server side of Raft RPC: decodes each message and hands it to its group.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use openraft::storage::Snapshot;
use openraft::type_config::alias::{SnapshotMetaOf, VoteOf};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::groups::{Groups, WriteRefused};
use super::membership::{self, DropRequest, ReconcileRequest};
use super::snapshot;
use super::transport::{INCARNATION_HEADER, op};
use super::{Command, CommandResult, GroupId, MemberNode, NodeId, TypeConfig};
use crate::auth::CLUSTER_SECRET_HEADER;

/// Who answers on this Raft endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub raft_id: NodeId,
    pub node: MemberNode,
}

/// The answer to an internal write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WriteOutcome {
    Applied(CommandResult),
    NotLeader(Option<MemberNode>),
}

pub fn router(groups: Arc<Groups>) -> Router {
    Router::new()
        .route("/raft/identity", get(identity))
        .route(
            &format!("/raft/{{group}}/{}", op::SNAPSHOT),
            post(receive_snapshot),
        )
        .route("/raft/{group}/{operation}", post(dispatch))
        .with_state(groups)
}

async fn identity(State(groups): State<Arc<Groups>>, headers: HeaderMap) -> Response {
    if let Some(refused) = unauthenticated(&groups, &headers) {
        return refused;
    }
    axum::Json(Identity {
        raft_id: groups.id,
        node: groups.me.clone(),
    })
    .into_response()
}

/// Refuses a message without the cluster secret: only members may speak Raft here.
fn unauthenticated(groups: &Groups, headers: &HeaderMap) -> Option<Response> {
    let presented = headers.get(CLUSTER_SECRET_HEADER).map(|v| v.as_bytes());
    (!groups.transport.admits(presented)).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            "missing or wrong cluster secret: this endpoint serves cluster members only",
        )
            .into_response()
    })
}

/// Decodes a postcard RPC body (also the fuzz targets' way in).
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    postcard::from_bytes(body).map_err(|e| format!("undecodable request: {e}"))
}

fn answer<T: Serialize>(result: Result<T, String>) -> Response {
    match postcard::to_stdvec(&result) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Refuses traffic without the cluster secret, traffic while isolated by fault
/// injection, and traffic meant for another Raft identity (this node's former
/// incarnation on the same address).
fn refusal(groups: &Groups, headers: &HeaderMap) -> Option<Response> {
    if let Some(refused) = unauthenticated(groups, headers) {
        return Some(refused);
    }
    if groups.transport.is_isolated() {
        return Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "isolated by fault injection",
            )
                .into_response(),
        );
    }
    let meant_for = headers
        .get(INCARNATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<NodeId>().ok())?;
    (meant_for != groups.id).then(|| {
        (
            StatusCode::GONE,
            format!(
                "Raft identity {meant_for} is gone from this address (now {}): the node restarted",
                groups.id
            ),
        )
            .into_response()
    })
}

/// A snapshot streamed in frames (see [`super::snapshot`]), installed once whole.
async fn receive_snapshot(
    State(groups): State<Arc<Groups>>,
    Path(group): Path<GroupId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = refusal(&groups, &headers) {
        return refused;
    }
    let raft = match groups.get_or_create(group, groups.should_host(group)).await {
        Ok(raft) => raft,
        Err(e) => return (StatusCode::NOT_FOUND, e).into_response(),
    };
    let installed = async {
        let (header, snapshot) =
            snapshot::read_frames(body.into_data_stream(), groups.max_snapshot_bytes()).await?;
        let (vote, meta) = decode::<(VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>)>(&header)?;
        let size = snapshot.len();
        let response = raft
            .install_full_snapshot(vote, Snapshot { meta, snapshot })
            .await
            .map_err(|e| e.to_string())?;
        groups
            .transport
            .counters
            .snapshot_bytes_received
            .inc_by(size);
        Ok(response)
    };
    answer(installed.await)
}

async fn dispatch(
    State(groups): State<Arc<Groups>>,
    Path((group, operation)): Path<(GroupId, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = refusal(&groups, &headers) {
        return refused;
    }
    let text = |e: &dyn std::fmt::Display| e.to_string();
    // Operations that act on a copy this node must already hold.
    match operation.as_str() {
        op::RECONCILE => {
            return answer(match decode::<ReconcileRequest>(&body) {
                Ok(request) => membership::reconcile(&groups, group, request).await,
                Err(e) => Err(e),
            });
        }
        op::COPY_STATUS => {
            return answer(Ok::<_, String>((
                groups.id,
                membership::copy_status(&groups, group),
            )));
        }
        op::VOTER_REPORT => return answer(Ok::<_, String>(groups.voter_report())),
        op::MAY_LEAVE => {
            return answer(
                decode::<NodeId>(&body)
                    .map(|leaving| membership::may_leave(&groups, group, leaving)),
            );
        }
        op::DROP => {
            return answer(match decode::<DropRequest>(&body) {
                Ok(request) => groups.drop_group(group, request.removed_at).await,
                Err(e) => Err(e),
            });
        }
        op::WRITE => {
            return answer(match decode::<Command>(&body) {
                Ok(command) => match groups.write(group, command).await {
                    Ok(result) => Ok(WriteOutcome::Applied(result)),
                    Err(WriteRefused::NotLeader(leader)) => Ok(WriteOutcome::NotLeader(leader)),
                    Err(WriteRefused::NotHosted) => Ok(WriteOutcome::NotLeader(None)),
                    Err(WriteRefused::Unavailable(e)) => Err(e),
                },
                Err(e) => Err(e),
            });
        }
        _ => {}
    }
    // Raft traffic may be the first this node hears of a group it is joining; a copy
    // is created only where the placement puts one (or when told to initialise it),
    // never for stray traffic to a copy this node dropped.
    let create = operation == op::INITIALIZE || groups.should_host(group);
    let raft = match groups.get_or_create(group, create).await {
        Ok(raft) => raft,
        Err(e) => return (StatusCode::NOT_FOUND, e).into_response(),
    };
    match operation.as_str() {
        op::APPEND => answer(match decode(&body) {
            Ok(rpc) => raft.append_entries(rpc).await.map_err(|e| text(&e)),
            Err(e) => Err(e),
        }),
        op::VOTE => answer(match decode(&body) {
            Ok(rpc) => raft.vote(rpc).await.map_err(|e| text(&e)),
            Err(e) => Err(e),
        }),
        op::PRE_VOTE => answer(match decode(&body) {
            Ok(rpc) => raft.pre_vote(rpc).await.map_err(|e| text(&e)),
            Err(e) => Err(e),
        }),
        // A stopping node takes no leadership (the balancer may still prefer it).
        op::TRANSFER_LEADER if groups.is_stepping_down() => {
            answer::<()>(Err("this node is stopping and takes no leadership".into()))
        }
        op::TRANSFER_LEADER => answer(match decode(&body) {
            Ok(rpc) => raft.handle_transfer_leader(rpc).await.map_err(|e| text(&e)),
            Err(e) => Err(e),
        }),
        op::INITIALIZE => answer(match decode::<BTreeMap<NodeId, MemberNode>>(&body) {
            Ok(members) => match raft.is_initialized().await {
                Ok(true) => Ok(()),
                _ => raft.initialize(members).await.map_err(|e| text(&e)),
            },
            Err(e) => Err(e),
        }),
        other => (
            StatusCode::NOT_FOUND,
            format!("no Raft operation {other:?}"),
        )
            .into_response(),
    }
}
