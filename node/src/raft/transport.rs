//! The client side of Raft RPC: every group's messages to a peer travel on one
//! long-lived stream per peer, batched (see [`super::stream`] for its wire format);
//! snapshots stream over HTTP (`POST /raft/{group}/snapshot`, see [`super::snapshot`]),
//! and so does the identity check (`GET /raft/identity`). Every message carries the
//! postcard encoding of openraft's request, and its answer a postcard
//! `Result<Response, String>`; the cluster secret, when the cluster has one, opens
//! the stream and goes with every HTTP request.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::OptionalSend;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft_multi::{GroupNetworkAdapter, GroupNetworkFactory, GroupRouter};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::counters::RaftCounters;
use super::snapshot;
use super::stream::{self, BoxedStream, Dialer, StreamError, StreamReply, Streams};
use super::{GroupId, MemberNode, NodeId, SnapshotData, TypeConfig};
use crate::auth::{CLUSTER_SECRET_HEADER, ClusterSecret};
use crate::metrics::{Rejection, Rejections};

/// Raft RPC operations, as they appear in the URL.
pub mod op {
    pub const APPEND: &str = "append";
    pub const VOTE: &str = "vote";
    pub const PRE_VOTE: &str = "pre-vote";
    pub const SNAPSHOT: &str = "snapshot";
    pub const TRANSFER_LEADER: &str = "transfer-leader";
    pub const INITIALIZE: &str = "initialize";
    pub const WRITE: &str = "write";
    pub const RECONCILE: &str = "reconcile";
    pub const DROP: &str = "drop";
    pub const COPY_STATUS: &str = "copy-status";
    pub const VOTER_REPORT: &str = "voter-report";
    pub const MAY_LEAVE: &str = "may-leave";
}

/// Names the Raft identity a message is meant for.
pub const INCARNATION_HEADER: &str = "x-dcache-raft-to";

/// Held while an append to one (peer, group) is in flight.
type AppendTurn = Arc<tokio::sync::Mutex<()>>;

/// The shortest time a snapshot transfer is given, and the time added per MiB.
const SNAPSHOT_MIN_TIMEOUT: Duration = Duration::from_secs(10);
const SNAPSHOT_TIME_PER_MIB: Duration = Duration::from_millis(500);

/// The shortest time a Raft RPC is given.
const MIN_RPC_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a transport call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("call to {0} failed: {1}")]
    Failed(String, String),
    #[error("{0} refused: {1}")]
    Refused(String, String),
}

/// How this node talks to its peers and checks who talks to it.
#[derive(Default)]
pub struct PeerSecurity {
    /// TLS towards peers (their Raft and API listeners), trusting the cluster's CA.
    pub tls: Option<rustls::ClientConfig>,
    /// Sent with every Raft RPC and required on every one received.
    pub cluster_secret: Option<Arc<ClusterSecret>>,
    /// Where refused Raft RPCs are counted.
    pub rejections: Option<Rejections>,
}

/// One HTTP client for all Raft traffic of this node, and where each peer is.
#[derive(Clone)]
pub struct Transport {
    client: reqwest::Client,
    scheme: &'static str,
    cluster_secret: Option<Arc<ClusterSecret>>,
    rejections: Option<Rejections>,
    addresses: Arc<RwLock<HashMap<NodeId, String>>>,
    /// Fault injection: an isolated node neither sends nor accepts Raft traffic.
    isolated: Arc<AtomicBool>,
    /// Fault injection: Raft addresses this node does not send to (a cut link; cutting
    /// both ends makes it symmetric).
    cut_links: Arc<RwLock<HashSet<String>>>,
    /// The node's Raft event counters, reachable from everything that holds the
    /// transport.
    pub counters: RaftCounters,
    /// One append in flight per (peer, group): pooled connections would otherwise let
    /// a heartbeat overtake the append before it, and the follower would answer with
    /// a conflict for an entry it is about to receive.
    append_order: Arc<Mutex<HashMap<(NodeId, GroupId), AppendTurn>>>,
    /// The stream to each peer that every group's messages share.
    streams: Arc<Streams<PeerDialer>>,
}

/// Opens a stream to a peer's Raft listener: TCP, TLS when the cluster has it, and
/// the upgrade to the stream protocol with the cluster secret.
struct PeerDialer {
    tls: Option<tokio_rustls::TlsConnector>,
    cluster_secret: Option<Arc<ClusterSecret>>,
}

impl Dialer for PeerDialer {
    async fn dial(&self, addr: &str) -> Result<BoxedStream, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut stream: BoxedStream = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                )
                .map_err(|e| format!("{addr}: not a name TLS can check: {e}"))?;
                Box::new(
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS with {addr} failed: {e}"))?,
                )
            }
        };
        let mut head = format!(
            "GET {} HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: {}\r\n",
            stream::PATH,
            stream::PROTOCOL
        );
        if let Some(secret) = &self.cluster_secret {
            head.push_str(&format!(
                "{CLUSTER_SECRET_HEADER}: {}\r\n",
                secret.value().0
            ));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        // The answer's head, read byte by byte: nothing after it may be consumed here.
        let mut answer = Vec::with_capacity(256);
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() > 16 * 1024 {
                return Err(format!(
                    "{addr} sent an endless answer to the stream upgrade"
                ));
            }
            let byte = stream
                .read_u8()
                .await
                .map_err(|e| format!("{addr} closed during the stream upgrade: {e}"))?;
            answer.push(byte);
        }
        let status_line = String::from_utf8_lossy(&answer[..answer.len().min(200)])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        if !status_line.starts_with("HTTP/1.1 101") {
            return Err(format!("{addr} refused the Raft stream: {status_line}"));
        }
        Ok(stream)
    }
}

impl Transport {
    pub fn new() -> Self {
        Self::secured(PeerSecurity::default())
    }

    pub fn secured(security: PeerSecurity) -> Self {
        let mut builder = reqwest::Client::builder()
            // Below the peers' header read timeout, which also closes idle connections:
            // a pooled connection is dropped here before the peer drops it.
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2));
        let stream_tls = security
            .tls
            .clone()
            .map(|tls| tokio_rustls::TlsConnector::from(Arc::new(tls)));
        let scheme = match security.tls {
            Some(tls) => {
                builder = builder.use_preconfigured_tls(tls);
                "https"
            }
            None => "http",
        };
        let client = builder
            .build()
            .expect("an HTTP client over a built TLS configuration always builds");
        Self {
            client,
            scheme,
            cluster_secret: security.cluster_secret.clone(),
            rejections: security.rejections,
            addresses: Arc::default(),
            isolated: Arc::default(),
            cut_links: Arc::default(),
            counters: RaftCounters::new(),
            append_order: Arc::default(),
            streams: Arc::new(Streams::new(PeerDialer {
                tls: stream_tls,
                cluster_secret: security.cluster_secret,
            })),
        }
    }

    pub fn http_client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `http` or `https`: what peers' listeners speak (all nodes of a cluster alike).
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// A request to a peer's Raft endpoint, carrying the cluster secret.
    pub fn raft_request(
        &self,
        method: reqwest::Method,
        addr: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let request = self
            .client
            .request(method, format!("{}://{addr}{path}", self.scheme));
        match &self.cluster_secret {
            Some(secret) => request.header(CLUSTER_SECRET_HEADER, &secret.value().0),
            None => request,
        }
    }

    /// Whether a received Raft RPC may be served: it carries the cluster secret, or
    /// the cluster has none. Refusals are counted.
    pub fn admits(&self, presented: Option<&[u8]>) -> bool {
        let Some(secret) = &self.cluster_secret else {
            return true;
        };
        let admitted = secret.matches(presented);
        if let (false, Some(rejections)) = (admitted, &self.rejections) {
            rejections.count(Rejection::ClusterSecret);
        }
        admitted
    }

    pub fn learn(&self, id: NodeId, raft_addr: &str) {
        let known = self
            .addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        if known.as_deref() != Some(raft_addr) {
            self.addresses
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, raft_addr.to_owned());
        }
    }

    fn address(&self, id: NodeId) -> Result<String, CallError> {
        self.addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or_else(|| CallError::Unreachable(format!("node {id}"), "address unknown".into()))
    }

    pub fn set_isolated(&self, isolated: bool) {
        self.isolated.store(isolated, Ordering::Relaxed);
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::Relaxed)
    }

    /// Replaces the set of Raft addresses this node cannot reach (empty heals them).
    pub fn set_cut_links(&self, raft_addrs: HashSet<String>) {
        *self.cut_links.write().unwrap_or_else(|p| p.into_inner()) = raft_addrs;
    }

    fn is_cut_from(&self, raft_addr: &str) -> bool {
        self.cut_links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(raft_addr)
    }

    /// Sends one RPC to the Raft endpoint at `addr`.
    pub async fn call<Req, Resp>(
        &self,
        addr: &str,
        group: GroupId,
        operation: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_incarnation(addr, None, group, operation, request, timeout)
            .await
    }

    /// Sends one RPC to the Raft endpoint at `addr`, meant for the incarnation `to` if
    /// given: a node that restarted under a new identity on the same address refuses
    /// what was meant for its old one, or it would answer in a log it never had.
    pub async fn call_incarnation<Req, Resp>(
        &self,
        addr: &str,
        to: Option<NodeId>,
        group: GroupId,
        operation: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        if self.is_isolated() || self.is_cut_from(addr) {
            return Err(CallError::Unreachable(
                addr.into(),
                "cut off by fault injection".into(),
            ));
        }
        let body = postcard::to_stdvec(request)
            .map_err(|e| CallError::Failed(addr.into(), e.to_string()))?;
        let reply = self
            .streams
            .call(addr, to, group, operation, &body, timeout)
            .await;
        match reply {
            Ok(StreamReply::Answer(bytes)) => {
                let answer: Result<Resp, String> = postcard::from_bytes(&bytes).map_err(|e| {
                    CallError::Failed(addr.into(), format!("undecodable answer: {e}"))
                })?;
                answer.map_err(|e| CallError::Refused(addr.into(), e))
            }
            Ok(StreamReply::Gone(why)) => Err(CallError::Unreachable(addr.into(), why)),
            Ok(StreamReply::Refused(why)) => Err(CallError::Refused(addr.into(), why)),
            Err(StreamError::Connect(why)) => Err(CallError::Unreachable(addr.into(), why)),
            Err(StreamError::Lost(why)) => Err(CallError::Failed(addr.into(), why)),
        }
    }

    /// Posts `body` to a Raft endpoint and decodes the postcard answer.
    async fn send<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        to: Option<NodeId>,
        group: GroupId,
        operation: &str,
        body: reqwest::Body,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        if self.is_isolated() || self.is_cut_from(addr) {
            return Err(CallError::Unreachable(
                addr.into(),
                "cut off by fault injection".into(),
            ));
        }
        let mut post = self
            .raft_request(
                reqwest::Method::POST,
                addr,
                &format!("/raft/{group}/{operation}"),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(timeout);
        if let Some(to) = to {
            post = post.header(INCARNATION_HEADER, to);
        }
        let response = post.body(body).send().await.map_err(|e| {
            if e.is_connect() {
                CallError::Unreachable(addr.into(), error_chain(&e))
            } else {
                CallError::Failed(addr.into(), error_chain(&e))
            }
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Failed(addr.into(), e.to_string()))?;
        if status == reqwest::StatusCode::GONE {
            return Err(CallError::Unreachable(
                addr.into(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        if !status.is_success() {
            return Err(CallError::Refused(
                addr.into(),
                format!("{status}: {}", String::from_utf8_lossy(&bytes)),
            ));
        }
        let answer: Result<Resp, String> = postcard::from_bytes(&bytes)
            .map_err(|e| CallError::Failed(addr.into(), format!("undecodable answer: {e}")))?;
        answer.map_err(|e| CallError::Refused(addr.into(), e))
    }

    async fn raft_call<Req, Resp>(
        &self,
        target: NodeId,
        group: GroupId,
        operation: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let addr = self.address(target).map_err(to_rpc_error)?;
        // openraft derives the TTL from the heartbeat interval; on a loaded machine an
        // append of many entries can take longer, and a timed-out request costs its
        // pooled connection too, so never wait less than a floor.
        let timeout = option.hard_ttl().max(MIN_RPC_TIMEOUT);
        self.call_incarnation(&addr, Some(target), group, operation, request, timeout)
            .await
            .map_err(to_rpc_error)
    }
}

impl Default for Transport {
    fn default() -> Self {
        Self::new()
    }
}

/// An error with its causes, which reqwest keeps out of its own message.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn to_rpc_error(error: CallError) -> RPCError<TypeConfig> {
    match error {
        // Unreachable makes openraft back off instead of retrying at once.
        CallError::Unreachable(..) => {
            RPCError::Unreachable(Unreachable::from_string(error.to_string()))
        }
        other => RPCError::Network(NetworkError::from_string(other.to_string())),
    }
}

impl GroupRouter<TypeConfig, GroupId> for Transport {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &self,
        target: NodeId,
        group_id: GroupId,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let order = self
            .append_order
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((target, group_id))
            .or_default()
            .clone();
        let _in_order = order.lock().await;
        self.raft_call(target, group_id, op::APPEND, &rpc, &option)
            .await
    }

    async fn vote(
        &self,
        target: NodeId,
        group_id: GroupId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(target, group_id, op::VOTE, &rpc, &option)
            .await
    }

    async fn pre_vote(
        &self,
        target: NodeId,
        group_id: GroupId,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(target, group_id, op::PRE_VOTE, &rpc, &option)
            .await
    }

    async fn full_snapshot(
        &self,
        target: NodeId,
        group_id: GroupId,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let size = snapshot.snapshot.len();
        let send = async {
            let addr = self.address(target)?;
            let header = postcard::to_stdvec(&(vote, &snapshot.meta))
                .map_err(|e| CallError::Failed(addr.clone(), e.to_string()))?;
            let body =
                reqwest::Body::wrap_stream(snapshot::frames(header.into(), &snapshot.snapshot));
            // Streaming takes longer than any other RPC: a floor plus time per MiB.
            let timeout = option.hard_ttl().max(SNAPSHOT_MIN_TIMEOUT)
                + SNAPSHOT_TIME_PER_MIB * (size >> 20) as u32;
            self.send(&addr, Some(target), group_id, op::SNAPSHOT, body, timeout)
                .await
        };
        tokio::select! {
            result = send => result.inspect(|_| {
                self.counters.snapshot_bytes_sent.inc_by(size);
            }).map_err(|e| match to_rpc_error(e) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Network(n) => StreamingError::Network(n),
                other => StreamingError::Network(NetworkError::from_string(other.to_string())),
            }),
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &self,
        target: NodeId,
        group_id: GroupId,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(target, group_id, op::TRANSFER_LEADER, &req, &option)
            .await
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory<Transport, GroupId> {
    type Network = GroupNetworkAdapter<TypeConfig, GroupId, Transport>;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> Self::Network {
        self.factory.learn(target, &node.raft_addr);
        GroupNetworkAdapter::new(self.factory.clone(), target, self.group_id)
    }
}
