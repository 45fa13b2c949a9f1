//! Test doubles for reconcile tests: an API server verifier (each request's method,
//! path and body asserted in order, then answered), fake cache nodes behind the
//! [`NodeAdmin`] trait, and builders of test objects.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

use crate::controller::Context;
use crate::crd::{DistributedCache, DistributedCacheSpec, DistributedCacheStatus};
use crate::lifecycle::{
    AdminError, ClusterStatus, InitRequest, LostPartition, Member, MemberNode, NodeAdmin,
    NodeCredentials, RebalanceProgress,
};
use crate::metrics::Metrics;

pub const NAMESPACE: &str = "prod";
pub const NAME: &str = "cache";
pub const UID: &str = "uid-1";
pub const CLUSTER_ID: &str = "prod.cache.uid-1";

/// A `DistributedCache` as the API server would hand it to the controller.
pub fn cache(spec: Value) -> DistributedCache {
    let spec: DistributedCacheSpec = serde_json::from_value(spec).expect("a valid test spec");
    let mut dc = DistributedCache::new(NAME, spec);
    dc.metadata.namespace = Some(NAMESPACE.to_owned());
    dc.metadata.uid = Some(UID.to_owned());
    dc.metadata.generation = Some(1);
    dc
}

/// `cache` with the status a previous reconcile left.
pub fn with_status(mut dc: DistributedCache, status: DistributedCacheStatus) -> DistributedCache {
    dc.status = Some(status);
    dc
}

/// The status of a running, initialised cluster of `members` nodes.
pub fn running_status(members: usize) -> DistributedCacheStatus {
    DistributedCacheStatus {
        cluster_id: Some(CLUSTER_ID.to_owned()),
        phase: crate::crd::Phase::Running,
        replicas: members as i32,
        ready_replicas: members as i32,
        members: (0..members).map(pod).collect(),
        ..DistributedCacheStatus::default()
    }
}

/// An existing StatefulSet, as `GET` returns it.
pub fn statefulset(replicas: i32, ready: i32) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {"replicas": replicas, "selector": {}, "serviceName": "cache-peers", "template": {}},
        "status": {"replicas": replicas, "readyReplicas": ready},
    })
}

pub fn pod(ordinal: usize) -> String {
    format!("{NAME}-{ordinal}")
}

/// A context whose client talks to the returned verifier and whose nodes are `nodes`.
pub fn context(nodes: Arc<FakeNodes>) -> (Arc<Context>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let metrics = Metrics::register(&prometheus::Registry::new()).expect("fresh registry");
    (
        Arc::new(Context::new(client, metrics, nodes)),
        ApiServer { handle },
    )
}

/// The API server side of the mocked client.
pub struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
}

/// One request the controller made, to be answered.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    reply: SendResponse<Response<Body>>,
}

impl ApiServer {
    /// The next request, which must be `method path`; fails when none comes in 5 s.
    pub async fn expect(&mut self, method: Method, path: &str) -> Call {
        let next = tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("expected {method} {path}, but no request came"));
        let (request, reply) = next.expect("the client is still there");
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.expect("a readable body").to_bytes();
        let call = Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("a JSON body")
            },
            reply,
        };
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&method, path),
            "unexpected request (body {})",
            call.body
        );
        call
    }

    /// The next request must be a server-side apply of `path` by the operator.
    pub async fn expect_apply(&mut self, path: &str) -> Call {
        let call = self.expect(Method::PATCH, path).await;
        assert_eq!(call.content_type, "application/apply-patch+yaml", "{path}");
        assert!(
            call.query.contains("fieldManager=dcache-operator")
                && call.query.contains("force=true"),
            "apply of {path} without the operator's field manager: {}",
            call.query
        );
        call
    }

    /// The next request must publish an event with `reason`; returns its note.
    pub async fn expect_event(&mut self, reason: &str) -> String {
        let call = self
            .expect(
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events"),
            )
            .await;
        assert_eq!(call.body["reason"], reason, "event {}", call.body);
        assert_eq!(call.body["regarding"]["name"], NAME);
        let note = call.body["note"].as_str().unwrap_or_default().to_owned();
        call.echo();
        note
    }

    /// The status written by server-side apply, answered; returned for the next step.
    pub async fn expect_status(&mut self) -> DistributedCacheStatus {
        let call = self
            .expect_apply(&format!(
                "/apis/dcache.io/v1alpha1/namespaces/{NAMESPACE}/distributedcaches/{NAME}/status"
            ))
            .await;
        assert_eq!(call.body["apiVersion"], "dcache.io/v1alpha1");
        assert_eq!(call.body["kind"], "DistributedCache");
        let status = serde_json::from_value(call.body["status"].clone()).expect("a status");
        // The API server answers with the whole object, the new status in it.
        let mut object = serde_json::to_value(cache(json!({}))).expect("JSON");
        object["status"] = call.body["status"].clone();
        call.reply(StatusCode::OK, &object);
        status
    }

    /// The children applied before the StatefulSet: both Services and the budget.
    pub async fn expect_services_and_budget(&mut self) {
        let peers = self
            .expect_apply(&format!(
                "/api/v1/namespaces/{NAMESPACE}/services/{NAME}-peers"
            ))
            .await;
        assert_eq!(peers.body["spec"]["clusterIP"], "None");
        assert_eq!(peers.body["metadata"]["ownerReferences"][0]["uid"], UID);
        assert_eq!(
            service_ports(&peers.body),
            [("http", 7000), ("raft", 7100), ("resp", 6379)]
        );
        peers.echo();
        let client = self
            .expect_apply(&format!("/api/v1/namespaces/{NAMESPACE}/services/{NAME}"))
            .await;
        assert_eq!(
            service_ports(&client.body),
            [("http", 7000), ("resp", 6379)]
        );
        client.echo();
        let budget = self
            .expect_apply(&format!(
                "/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets/{NAME}"
            ))
            .await;
        assert_eq!(budget.body["spec"]["maxUnavailable"], 1);
        budget.echo();
    }

    /// `GET` of the StatefulSet, answered with `existing` or 404.
    pub async fn expect_statefulset_read(&mut self, existing: Option<Value>) {
        let call = self
            .expect(
                Method::GET,
                &format!("/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/{NAME}"),
            )
            .await;
        match existing {
            Some(object) => call.reply(StatusCode::OK, &object),
            None => call.not_found(),
        }
    }

    /// The StatefulSet applied; returns the replicas it asked for and the whole body.
    pub async fn expect_statefulset_apply(&mut self) -> (i64, Value) {
        let call = self
            .expect_apply(&format!(
                "/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/{NAME}"
            ))
            .await;
        let body = call.body.clone();
        assert_eq!(
            body["metadata"]["ownerReferences"][0]["kind"],
            "DistributedCache"
        );
        let replicas = body["spec"]["replicas"].as_i64().expect("replicas set");
        call.echo();
        (replicas, body)
    }

    /// The method and URI of a request waiting for an answer, for failure messages.
    pub async fn next_unanswered(&mut self) -> String {
        match tokio::time::timeout(Duration::from_millis(300), self.handle.next_request()).await {
            Ok(Some((request, _))) => format!("{} {}", request.method(), request.uri()),
            _ => "none seen".to_owned(),
        }
    }

    /// Fails if the controller makes another request.
    pub async fn expect_nothing_more(mut self) {
        let next =
            tokio::time::timeout(Duration::from_millis(300), self.handle.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

impl Call {
    pub fn reply(self, status: StatusCode, body: &Value) {
        let response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(body).expect("JSON")))
            .expect("a response");
        self.reply.send_response(response);
    }

    /// Answers with what was sent, as the API server does for an apply that it accepts.
    pub fn echo(self) {
        let body = self.body.clone();
        self.reply(StatusCode::OK, &body);
    }

    pub fn not_found(self) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "not found", "reason": "NotFound", "code": 404,
        });
        self.reply(StatusCode::NOT_FOUND, &status);
    }
}

/// Cache nodes as the admin API shows them, pod `i` at `cache-i.cache-peers.prod.svc`.
#[derive(Default)]
pub struct FakeNodes {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    credentials: Option<NodeCredentials>,
    healthy: BTreeSet<usize>,
    cluster: Option<FakeCluster>,
    calls: Vec<String>,
}

struct FakeCluster {
    lost: Vec<LostPartition>,
    id: String,
    epoch: u64,
    members: Vec<usize>,
    leaving: Vec<usize>,
    balanced: bool,
}

fn ordinal(api_addr: &str) -> usize {
    api_addr
        .strip_prefix(&format!("{NAME}-"))
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a pod address: {api_addr}"))
}

fn ordinals(members: &[MemberNode]) -> Vec<usize> {
    members.iter().map(|m| ordinal(&m.api_addr)).collect()
}

impl FakeNodes {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .expect("no test thread panicked holding it")
    }

    pub fn set_healthy(&self, pods: std::ops::Range<usize>) {
        self.state().healthy = pods.collect();
    }

    /// A cluster of `members`, balanced or not, with `leaving` still draining.
    pub fn set_cluster(&self, members: std::ops::Range<usize>, leaving: &[usize], balanced: bool) {
        self.state().cluster = Some(FakeCluster {
            lost: Vec::new(),
            id: CLUSTER_ID.to_owned(),
            epoch: 7,
            members: members.collect(),
            leaving: leaving.to_vec(),
            balanced,
        });
    }

    /// The balancer moves the last replicas and forgets drained members.
    pub fn finish_rebalance(&self) {
        let mut state = self.state();
        let cluster = state.cluster.as_mut().expect("a cluster");
        cluster.leaving.clear();
        cluster.balanced = true;
    }

    /// The balancer re-formed `partition` empty: its data is gone.
    pub fn lose_partition(&self, partition: u32) {
        let mut state = self.state();
        let cluster = state.cluster.as_mut().expect("a cluster");
        cluster.lost.push(LostPartition {
            partition,
            epoch: cluster.epoch,
            at_unix_ms: 1_700_000_000_000,
            reason: "every voter restarted without its state".to_owned(),
        });
    }

    /// Admin calls made so far, as `init ID a,b` and `members a,b`.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    fn view(&self, ordinal: usize) -> ClusterStatus {
        let state = self.state();
        let Some(cluster) = &state.cluster else {
            return ClusterStatus::default();
        };
        let member = |i: &usize| Member {
            raft_id: *i as u64 + 1,
            node: MemberNode {
                name: pod(*i),
                api_addr: crate::resources::pod_api_addr(&cache(json!({})), *i),
                raft_addr: crate::resources::pod_raft_addr(&cache(json!({})), *i),
                resp_addr: None,
            },
        };
        let leader = cluster.members[0];
        ClusterStatus {
            cluster_id: Some(cluster.id.clone()),
            cluster_leader: Some(pod(leader)),
            node: pod(ordinal),
            epoch: cluster.epoch,
            members: cluster.members.iter().map(member).collect(),
            leaving: cluster.leaving.iter().map(member).collect(),
            rebalance: RebalanceProgress {
                active: ordinal == leader,
                epoch: cluster.epoch,
                replicas_to_move: if cluster.balanced { 0 } else { 4 },
                moving: if cluster.balanced { 0 } else { 2 },
                moved: 10,
                ..RebalanceProgress::default()
            },
            lost_partitions: cluster.lost.clone(),
            ..ClusterStatus::default()
        }
    }
}

impl FakeNodes {
    /// The credentials the last reconcile called the nodes with.
    pub fn credentials(&self) -> Option<NodeCredentials> {
        self.state().credentials.clone()
    }
}

impl NodeAdmin for FakeNodes {
    fn with_credentials(
        self: Arc<Self>,
        credentials: NodeCredentials,
    ) -> Result<Arc<dyn NodeAdmin>, AdminError> {
        self.state().credentials = Some(credentials);
        Ok(self)
    }

    fn healthy<'a>(&'a self, api_addr: &'a str) -> BoxFuture<'a, bool> {
        let healthy = self.state().healthy.contains(&ordinal(api_addr));
        Box::pin(async move { healthy })
    }

    fn cluster<'a>(
        &'a self,
        api_addr: &'a str,
    ) -> BoxFuture<'a, Result<ClusterStatus, AdminError>> {
        let view = self.view(ordinal(api_addr));
        Box::pin(async move { Ok(view) })
    }

    fn init<'a>(
        &'a self,
        _api_addr: &'a str,
        request: &'a InitRequest,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        let mut state = self.state();
        let names: Vec<String> = request.members.iter().map(|m| m.name.clone()).collect();
        state
            .calls
            .push(format!("init {} {}", request.cluster_id, names.join(",")));
        state.cluster = Some(FakeCluster {
            lost: Vec::new(),
            id: request.cluster_id.clone(),
            epoch: 1,
            members: ordinals(&request.members),
            leaving: Vec::new(),
            balanced: false,
        });
        Box::pin(async { Ok(()) })
    }

    fn set_members<'a>(
        &'a self,
        _api_addr: &'a str,
        members: &'a [MemberNode],
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        let mut state = self.state();
        let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
        state.calls.push(format!("members {}", names.join(",")));
        let cluster = state
            .cluster
            .as_mut()
            .expect("members are set on a cluster");
        let new = ordinals(members);
        cluster.leaving = cluster
            .members
            .iter()
            .filter(|m| !new.contains(m))
            .copied()
            .collect();
        cluster.members = new;
        cluster.epoch += 1;
        cluster.balanced = false;
        Box::pin(async { Ok(()) })
    }
}

/// The condition `type_` of `status`: (status, reason, message).
pub fn condition(status: &DistributedCacheStatus, type_: &str) -> (String, String, String) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

/// `(name, port)` of every port of an applied Service, in order.
pub fn service_ports(service: &Value) -> Vec<(&str, i64)> {
    service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["port"].as_i64().unwrap()))
        .collect()
}
