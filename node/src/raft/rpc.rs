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
use super::stream;
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
        .route(stream::PATH, get(open_stream))
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

/// Upgrades an authenticated peer's connection to the Raft stream (see
/// [`super::stream`]) and serves it until it closes.
async fn open_stream(
    State(groups): State<Arc<Groups>>,
    mut request: axum::extract::Request,
) -> Response {
    if let Some(refused) = unauthenticated(&groups, request.headers()) {
        return refused;
    }
    let asks = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .is_some_and(|protocol| protocol == stream::PROTOCOL);
    let upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>();
    let (true, Some(upgrade)) = (asks, upgrade) else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            format!(
                "{} is opened with `upgrade: {}`",
                stream::PATH,
                stream::PROTOCOL
            ),
        )
            .into_response();
    };
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                stream::serve(hyper_util::rt::TokioIo::new(upgraded), groups).await;
            }
            Err(e) => tracing::debug!(error = %e, "a Raft stream upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, stream::PROTOCOL)
        .body(Body::empty())
        .expect("a valid response")
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

/// How a Raft message was answered, whichever way it came (an HTTP request or a frame
/// of a peer's stream).
pub(crate) enum Reply {
    /// A postcard `Result<Response, String>`.
    Answer(Vec<u8>),
    /// Meant for another Raft identity: this node restarted since the sender learned it.
    Gone(String),
    /// Not served, with the HTTP status that says why (isolated, no such group or
    /// operation).
    Refused(StatusCode, String),
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Self::Answer(bytes) => bytes.into_response(),
            Self::Gone(why) => (StatusCode::GONE, why).into_response(),
            Self::Refused(status, why) => (status, why).into_response(),
        }
    }
}

fn answer<T: Serialize>(result: Result<T, String>) -> Reply {
    match postcard::to_stdvec(&result) {
        Ok(bytes) => Reply::Answer(bytes),
        Err(e) => Reply::Refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Refuses traffic without the cluster secret, traffic while isolated by fault
/// injection, and traffic meant for another Raft identity (this node's former
/// incarnation on the same address).
fn refusal(groups: &Groups, headers: &HeaderMap) -> Option<Response> {
    if let Some(refused) = unauthenticated(groups, headers) {
        return Some(refused);
    }
    not_served(groups, meant_for(headers)).map(IntoResponse::into_response)
}

/// The Raft identity an HTTP message names as its addressee.
fn meant_for(headers: &HeaderMap) -> Option<NodeId> {
    headers
        .get(INCARNATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<NodeId>().ok())
}

/// Why an authenticated message addressed to `to` is not served here, if it is not.
fn not_served(groups: &Groups, to: Option<NodeId>) -> Option<Reply> {
    if groups.transport.is_isolated() {
        return Some(Reply::Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "isolated by fault injection".into(),
        ));
    }
    let meant_for = to?;
    (meant_for != groups.id).then(|| {
        Reply::Gone(format!(
            "Raft identity {meant_for} is gone from this address (now {}): the node restarted",
            groups.id
        ))
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
    answer(installed.await).into_response()
}

async fn dispatch(
    State(groups): State<Arc<Groups>>,
    Path((group, operation)): Path<(GroupId, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = unauthenticated(&groups, &headers) {
        return refused;
    }
    handle(&groups, group, &operation, meant_for(&headers), &body)
        .await
        .into_response()
}

/// Serves one Raft message for `group` (from an authenticated peer), addressed to the
/// identity `to` if it names one.
pub(crate) async fn handle(
    groups: &Groups,
    group: GroupId,
    operation: &str,
    to: Option<NodeId>,
    body: &[u8],
) -> Reply {
    if let Some(refused) = not_served(groups, to) {
        return refused;
    }
    let text = |e: &dyn std::fmt::Display| e.to_string();
    // Operations that act on a copy this node must already hold.
    match operation {
        op::RECONCILE => {
            return answer(match decode::<ReconcileRequest>(body) {
                Ok(request) => membership::reconcile(groups, group, request).await,
                Err(e) => Err(e),
            });
        }
        op::COPY_STATUS => {
            return answer(Ok::<_, String>((
                groups.id,
                membership::copy_status(groups, group),
            )));
        }
        op::VOTER_REPORT => return answer(Ok::<_, String>(groups.voter_report())),
        op::MAY_LEAVE => {
            return answer(
                decode::<NodeId>(body).map(|leaving| membership::may_leave(groups, group, leaving)),
            );
        }
        op::DROP => {
            return answer(match decode::<DropRequest>(body) {
                Ok(request) => groups.drop_group(group, request.removed_at).await,
                Err(e) => Err(e),
            });
        }
        op::WRITE => {
            return answer(match decode::<Command>(body) {
                Ok(command) => match groups.write(group, command).await {
                    Ok(result) => Ok(WriteOutcome::Applied(result)),
                    Err(WriteRefused::NotLeader(leader)) => Ok(WriteOutcome::NotLeader(leader)),
                    Err(WriteRefused::NotHosted) => Ok(WriteOutcome::NotLeader(None)),
                    Err(WriteRefused::Unavailable(e) | WriteRefused::OutcomeUnknown(e)) => Err(e),
                },
                Err(e) => Err(e),
            });
        }
        _ => {}
    }
    // Raft traffic may be the first this node hears of a group it is joining; a copy
    // is created only where the placement puts one (or when told to initialise it),
    // never for stray traffic to a copy this node dropped.
    let raft = match groups.get(group) {
        Some(raft) => raft,
        None => {
            let create = operation == op::INITIALIZE || groups.should_host(group);
            match groups.get_or_create(group, create).await {
                Ok(raft) => raft,
                Err(e) => return Reply::Refused(StatusCode::NOT_FOUND, e),
            }
        }
    };
    match operation {
        op::VOTE | op::PRE_VOTE if groups.withholds_votes() => answer::<()>(Err(
            "this node restarted within its peers' leader lease and grants no vote yet".into(),
        )),
        op::APPEND => answer(match decode(body) {
            Ok(rpc) => raft.append_entries(rpc).await.map_err(|e| text(&e)),
            Err(e) => Err(e),
        }),
        op::VOTE => answer(match decode(body) {
            Ok(rpc) => raft.vote(rpc).await.map_err(|e| text(&e)),
            Err(e) => Err(e),
        }),
        op::PRE_VOTE => answer(match decode(body) {
            Ok(rpc) => raft.pre_vote(rpc).await.map_err(|e| text(&e)),
            Err(e) => Err(e),
        }),
        // A stopping node takes no leadership (the balancer may still prefer it).
        op::TRANSFER_LEADER if groups.is_stepping_down() => {
            answer::<()>(Err("this node is stopping and takes no leadership".into()))
        }
        op::TRANSFER_LEADER => answer(match decode(body) {
            Ok(rpc) => raft.handle_transfer_leader(rpc).await.map_err(|e| text(&e)),
            Err(e) => Err(e),
        }),
        op::INITIALIZE => answer(match decode::<BTreeMap<NodeId, MemberNode>>(body) {
            Ok(members) => match raft.is_initialized().await {
                Ok(true) => Ok(()),
                _ => raft.initialize(members).await.map_err(|e| text(&e)),
            },
            Err(e) => Err(e),
        }),
        other => Reply::Refused(
            StatusCode::NOT_FOUND,
            format!("no Raft operation {other:?}"),
        ),
    }
}
