//! The cluster's life through the nodes' admin API: initialise once, grow and drain ring
//! membership, tell when a rebalance is done. Kubernetes-free: [`plan`] is a pure
//! function of what the caller knows (desired and current pod counts, the cluster id it
//! recorded) and what the nodes report ([`Observation`]), so the same logic is driven
//! by the controller against pods and by tests against local `dcache-node` processes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};

pub use dcache_protocol::cluster::{
    ClusterStatus, InitRequest, LeavingMember, LostPartition, Member, MemberNode, RebalanceProgress,
};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{addr} unreachable: {message}")]
    Unreachable { addr: String, message: String },
    #[error("{addr} refused ({status}): {message}")]
    Refused {
        addr: String,
        status: u16,
        message: String,
    },
    #[error("{addr} answered what is not a cluster status: {message}")]
    BadAnswer { addr: String, message: String },
    #[error("unusable node credentials: {0}")]
    Credentials(String),
}

/// How the operator reaches the nodes of a cache with auth or TLS on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeCredentials {
    /// An admin (and read) token the nodes accept.
    pub token: Option<String>,
    /// The CA the nodes' certificates chain to; set means https.
    pub ca_pem: Option<Vec<u8>>,
}

/// The node admin API, one call per method. A trait so reconcile tests can answer for
/// the nodes.
pub trait NodeAdmin: Send + Sync {
    /// Whether the node's process answers `GET /health` (it may not have joined yet).
    fn healthy<'a>(&'a self, api_addr: &'a str) -> BoxFuture<'a, bool>;
    /// `GET /cluster`.
    fn cluster<'a>(&'a self, api_addr: &'a str)
    -> BoxFuture<'a, Result<ClusterStatus, AdminError>>;
    /// `POST /cluster/init`; the same id again is a no-op, another id a refusal (409).
    fn init<'a>(
        &'a self,
        api_addr: &'a str,
        request: &'a InitRequest,
    ) -> BoxFuture<'a, Result<(), AdminError>>;
    /// `PUT /cluster/members`: the whole desired member set.
    fn set_members<'a>(
        &'a self,
        api_addr: &'a str,
        members: &'a [MemberNode],
    ) -> BoxFuture<'a, Result<(), AdminError>>;
    /// The same calls, made with `credentials` (a token, https trusting a CA).
    fn with_credentials(
        self: Arc<Self>,
        credentials: NodeCredentials,
    ) -> Result<Arc<dyn NodeAdmin>, AdminError>;
}

/// [`NodeAdmin`] over HTTP, one pooled client for every node.
#[derive(Clone)]
pub struct HttpNodeAdmin {
    client: reqwest::Client,
    scheme: &'static str,
}

impl HttpNodeAdmin {
    pub fn new() -> Self {
        Self::with(&NodeCredentials::default()).expect("an HTTP client without TLS builds")
    }

    fn with(credentials: &NodeCredentials) -> Result<Self, AdminError> {
        let invalid = |e: &dyn std::fmt::Display| AdminError::Credentials(e.to_string());
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            // Below the nodes' header read timeout, which also ends idle connections.
            .pool_idle_timeout(Duration::from_secs(5));
        if let Some(token) = &credentials.token {
            let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|e| invalid(&e))?;
            value.set_sensitive(true);
            builder = builder.default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::AUTHORIZATION,
                value,
            )]));
        }
        let mut scheme = "http";
        if let Some(pem) = &credentials.ca_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| invalid(&e))?;
            if roots.is_empty() {
                return Err(AdminError::Credentials("no certificate in ca.crt".into()));
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
            scheme = "https";
        }
        Ok(Self {
            client: builder.build().map_err(|e| invalid(&e))?,
            scheme,
        })
    }

    async fn send(
        &self,
        addr: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AdminError> {
        let response = request.send().await.map_err(|e| AdminError::Unreachable {
            addr: addr.to_owned(),
            message: e.to_string(),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(AdminError::Refused {
            addr: addr.to_owned(),
            status: response.status().as_u16(),
            message: response.text().await.unwrap_or_default(),
        })
    }
}

impl Default for HttpNodeAdmin {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeAdmin for HttpNodeAdmin {
    fn healthy<'a>(&'a self, api_addr: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let request = self
                .client
                .get(format!("{}://{api_addr}/health", self.scheme));
            self.send(api_addr, request).await.is_ok()
        })
    }

    fn cluster<'a>(
        &'a self,
        api_addr: &'a str,
    ) -> BoxFuture<'a, Result<ClusterStatus, AdminError>> {
        Box::pin(async move {
            let request = self
                .client
                .get(format!("{}://{api_addr}/cluster", self.scheme));
            let response = self.send(api_addr, request).await?;
            response.json().await.map_err(|e| AdminError::BadAnswer {
                addr: api_addr.to_owned(),
                message: e.to_string(),
            })
        })
    }

    fn init<'a>(
        &'a self,
        api_addr: &'a str,
        request: &'a InitRequest,
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            let http = self
                .client
                .post(format!("{}://{api_addr}/cluster/init", self.scheme))
                .json(request);
            self.send(api_addr, http).await.map(drop)
        })
    }

    fn set_members<'a>(
        &'a self,
        api_addr: &'a str,
        members: &'a [MemberNode],
    ) -> BoxFuture<'a, Result<(), AdminError>> {
        Box::pin(async move {
            let http = self
                .client
                .put(format!("{}://{api_addr}/cluster/members", self.scheme))
                .json(&serde_json::json!({ "members": members }));
            self.send(api_addr, http).await.map(drop)
        })
    }

    fn with_credentials(
        self: Arc<Self>,
        credentials: NodeCredentials,
    ) -> Result<Arc<dyn NodeAdmin>, AdminError> {
        if credentials == NodeCredentials::default() {
            return Ok(self);
        }
        Ok(Arc::new(Self::with(&credentials)?))
    }
}

/// What the nodes said, per pod ordinal.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// Whether pod `i` answers `/health`.
    pub healthy: Vec<bool>,
    /// Pod `i`'s `GET /cluster`, when it answered.
    pub views: Vec<Option<ClusterStatus>>,
}

impl Observation {
    /// Asks every pod in `pods` (ordinal order) whether it lives and what it knows.
    pub async fn gather(admin: &dyn NodeAdmin, pods: &[MemberNode]) -> Self {
        let answers = join_all(pods.iter().map(|pod| async move {
            if !admin.healthy(&pod.api_addr).await {
                return (false, None);
            }
            (true, admin.cluster(&pod.api_addr).await.ok())
        }))
        .await;
        let (healthy, views) = answers.into_iter().unzip();
        Self { healthy, views }
    }

    fn cluster_ids(&self) -> BTreeSet<&str> {
        self.views
            .iter()
            .flatten()
            .filter_map(|view| view.cluster_id.as_deref())
            .collect()
    }

    /// The view to act on: the running balancer's (it leads the cluster group, so its
    /// member set is the newest committed one). None while no balancer answers, or
    /// while some node already knows a newer epoch than the balancer reports (a
    /// leader just elected may not have applied everything yet): acting on an old
    /// member set could shrink the StatefulSet under members it does not show.
    pub fn balancer_view(&self) -> Option<&ClusterStatus> {
        let views = || {
            self.views
                .iter()
                .flatten()
                .filter(|v| v.cluster_id.is_some())
        };
        let balancer = views()
            .filter(|view| view.rebalance.active)
            .max_by_key(|view| view.epoch)?;
        let newest = views().map(|view| view.epoch).max().unwrap_or(0);
        (balancer.epoch >= newest).then_some(balancer)
    }

    fn ordinal_healthy(&self, ordinal: usize) -> bool {
        self.healthy.get(ordinal).copied().unwrap_or(false)
    }
}

/// What the caller knows, besides what the nodes said.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// Pods the spec asks for.
    pub desired_replicas: usize,
    /// Pods the StatefulSet has now (0 before it exists).
    pub current_replicas: usize,
    /// The cluster id recorded when the cluster was initialised.
    pub recorded_cluster_id: Option<&'a str>,
    /// The id to initialise with (and to recognise as ours if the record was lost).
    pub new_cluster_id: &'a str,
    /// Pod `i`'s member identity, for every ordinal observed.
    pub pods: &'a [MemberNode],
}

/// What to call on the nodes.
#[derive(Clone, Debug, PartialEq)]
pub enum AdminAction {
    Init {
        via: String,
        request_id: String,
        members: Vec<MemberNode>,
    },
    SetMembers {
        via: String,
        members: Vec<MemberNode>,
    },
}

/// Where the cluster is, for status and events.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterPhase {
    /// Pods that must answer `/health` before the next step.
    WaitingForPods { pods: Vec<String> },
    /// The cluster is being formed now.
    Initialising,
    /// The nodes' cluster is not the one recorded: a human must decide.
    IdentityConflict { message: String },
    /// Members are being added and removed to reach the spec.
    ChangingMembers {
        adding: Vec<String>,
        removing: Vec<String>,
    },
    /// Former members still hold replicas.
    Draining { leaving: Vec<String> },
    /// Replicas are moving to the placement; None while no balancer answers.
    Rebalancing { progress: Option<RebalanceProgress> },
    /// The ring is the spec's and the balancer has nothing left to do.
    Steady,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Pods the StatefulSet should have now.
    pub statefulset_replicas: usize,
    pub action: Option<AdminAction>,
    pub phase: ClusterPhase,
    /// The cluster id the nodes report, when there is exactly one.
    pub cluster_id: Option<String>,
}

/// The next step toward `desired_replicas` members, computed from scratch every time so
/// that a spec change in the middle of a scale just changes the target.
///
/// Pods before members on the way up; members before pods on the way down: the
/// StatefulSet never has fewer pods than one past the highest ordinal that is a member
/// or still draining, and it shrinks only on the balancer's own word.
pub fn plan(input: &PlanInput<'_>, observation: &Observation) -> Plan {
    let desired = input.desired_replicas;
    let target: Vec<MemberNode> = input.pods.iter().take(desired).cloned().collect();
    let ids = observation.cluster_ids();
    let hold = |phase| Plan {
        statefulset_replicas: input.current_replicas.max(desired),
        action: None,
        phase,
        cluster_id: ids.first().map(|id| (*id).to_owned()),
    };
    // A conflict leaves the pods as they are: a human decides what happens to them.
    let conflict = |message| Plan {
        statefulset_replicas: if input.current_replicas == 0 {
            desired
        } else {
            input.current_replicas
        },
        ..hold(ClusterPhase::IdentityConflict { message })
    };

    if ids.len() > 1 {
        return conflict(format!("the pods report different clusters {ids:?}"));
    }
    let reported = ids.first().copied();
    let someone_answered = observation.views.iter().any(Option::is_some);
    match (input.recorded_cluster_id, reported) {
        (Some(recorded), None) if someone_answered => {
            return conflict(format!(
                "cluster {recorded} was initialised, but the nodes that answer belong to no \
                 cluster (did every node restart without its state?); not re-initialising: \
                 clear status.clusterId to start an empty cluster"
            ));
        }
        (Some(recorded), Some(reported)) if recorded != reported => {
            return conflict(format!(
                "the nodes belong to cluster {reported}, not to {recorded}"
            ));
        }
        (None, Some(reported)) if reported != input.new_cluster_id => {
            return conflict(format!(
                "the nodes belong to cluster {reported}, which this resource did not create"
            ));
        }
        _ => {}
    }

    let not_up = |members: &[MemberNode]| -> Vec<String> {
        members
            .iter()
            .enumerate()
            .filter(|(ordinal, _)| !observation.ordinal_healthy(*ordinal))
            .map(|(_, m)| m.name.clone())
            .collect()
    };

    if reported.is_none() {
        let waiting = not_up(&target);
        if !waiting.is_empty() || input.recorded_cluster_id.is_some() {
            return hold(ClusterPhase::WaitingForPods { pods: waiting });
        }
        return Plan {
            statefulset_replicas: input.current_replicas.max(desired),
            action: Some(AdminAction::Init {
                via: target[0].api_addr.clone(),
                request_id: input.new_cluster_id.to_owned(),
                members: target,
            }),
            phase: ClusterPhase::Initialising,
            cluster_id: None,
        };
    }

    // Shrinking waits for the balancer's word; without it only growing is safe.
    let Some(view) = observation.balancer_view() else {
        return hold(ClusterPhase::Rebalancing { progress: None });
    };
    let ordinal_of: BTreeMap<&str, usize> = input
        .pods
        .iter()
        .enumerate()
        .map(|(ordinal, pod)| (pod.name.as_str(), ordinal))
        .collect();
    let members = view.member_names();
    let leaving = view.leaving_names();
    let highest_in_ring = members
        .iter()
        .chain(leaving.iter())
        .filter_map(|name| ordinal_of.get(name))
        .max()
        .map_or(0, |ordinal| ordinal + 1);
    let statefulset_replicas = desired.max(highest_in_ring);
    let target_names: BTreeSet<&str> = target.iter().map(|m| m.name.as_str()).collect();
    let cluster_id = reported.map(str::to_owned);

    if members != target_names {
        let waiting = not_up(&target);
        if !waiting.is_empty() {
            return Plan {
                statefulset_replicas,
                action: None,
                phase: ClusterPhase::WaitingForPods { pods: waiting },
                cluster_id,
            };
        }
        let via = view
            .members
            .iter()
            .find(|m| Some(&m.node.name) == view.cluster_leader.as_ref())
            .map_or_else(|| target[0].api_addr.clone(), |m| m.node.api_addr.clone());
        let adding = target_names
            .difference(&members)
            .map(|s| (*s).to_owned())
            .collect();
        let removing = members
            .difference(&target_names)
            .map(|s| (*s).to_owned())
            .collect();
        return Plan {
            statefulset_replicas,
            action: Some(AdminAction::SetMembers {
                via,
                members: target,
            }),
            phase: ClusterPhase::ChangingMembers { adding, removing },
            cluster_id,
        };
    }
    let phase = if !leaving.is_empty() {
        ClusterPhase::Draining {
            leaving: leaving.iter().map(|s| (*s).to_owned()).collect(),
        }
    } else if !view.is_rebalanced() {
        ClusterPhase::Rebalancing {
            progress: Some(view.rebalance.clone()),
        }
    } else {
        ClusterPhase::Steady
    };
    Plan {
        statefulset_replicas,
        action: None,
        phase,
        cluster_id,
    }
}

/// Carries out a plan's admin call.
pub async fn execute(admin: &dyn NodeAdmin, action: &AdminAction) -> Result<(), AdminError> {
    match action {
        AdminAction::Init {
            via,
            request_id,
            members,
        } => {
            let request = InitRequest {
                cluster_id: request_id.clone(),
                members: members.clone(),
            };
            admin.init(via, &request).await
        }
        AdminAction::SetMembers { via, members } => admin.set_members(via, members).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(n: usize) -> Vec<MemberNode> {
        (0..n)
            .map(|i| MemberNode {
                name: format!("c-{i}"),
                api_addr: format!("c-{i}:7000"),
                raft_addr: format!("c-{i}:7100"),
                resp_addr: None,
            })
            .collect()
    }

    fn view(members: &[usize], leaving: &[usize], done: bool) -> ClusterStatus {
        let member = |i: &usize| Member {
            raft_id: *i as u64,
            node: pods(10)[*i].clone(),
        };
        ClusterStatus {
            cluster_id: Some("id".to_owned()),
            cluster_leader: Some("c-0".to_owned()),
            epoch: 4,
            members: members.iter().map(member).collect(),
            leaving: leaving.iter().map(member).collect(),
            rebalance: RebalanceProgress {
                active: true,
                epoch: 4,
                replicas_to_move: if done { 0 } else { 3 },
                ..RebalanceProgress::default()
            },
            ..ClusterStatus::default()
        }
    }

    fn observed(healthy: usize, of: usize, balancer: Option<ClusterStatus>) -> Observation {
        let mut views = vec![None; of];
        views[0] = balancer;
        Observation {
            healthy: (0..of).map(|i| i < healthy).collect(),
            views,
        }
    }

    fn input<'a>(
        desired: usize,
        current: usize,
        recorded: Option<&'static str>,
        pods: &'a [MemberNode],
    ) -> PlanInput<'a> {
        PlanInput {
            desired_replicas: desired,
            current_replicas: current,
            recorded_cluster_id: recorded,
            new_cluster_id: "id",
            pods,
        }
    }

    #[test]
    fn initialises_once_every_pod_is_up() {
        let pods = pods(3);
        let no_cluster = ClusterStatus::default();
        let mut observation = observed(2, 3, Some(no_cluster.clone()));
        let waiting = plan(&input(3, 3, None, &pods), &observation);
        assert_eq!(
            waiting.phase,
            ClusterPhase::WaitingForPods {
                pods: vec!["c-2".into()]
            }
        );
        assert_eq!(waiting.action, None);

        observation.healthy[2] = true;
        let init = plan(&input(3, 3, None, &pods), &observation);
        assert_eq!(init.phase, ClusterPhase::Initialising);
        let Some(AdminAction::Init {
            members,
            request_id,
            ..
        }) = init.action
        else {
            panic!("expected init, got {:?}", init.action)
        };
        assert_eq!((members.len(), request_id.as_str()), (3, "id"));
    }

    #[test]
    fn never_reinitialises_a_cluster_that_lost_its_state() {
        let pods = pods(3);
        let observation = observed(3, 3, Some(ClusterStatus::default()));
        let plan = plan(&input(5, 3, Some("id"), &pods), &observation);
        assert!(
            matches!(plan.phase, ClusterPhase::IdentityConflict { .. }),
            "{plan:?}"
        );
        assert_eq!(plan.action, None);
        assert_eq!(
            plan.statefulset_replicas, 3,
            "a conflict leaves the pods as they are"
        );
    }

    #[test]
    fn refuses_a_foreign_cluster() {
        let pods = pods(3);
        let mut foreign = view(&[0, 1, 2], &[], true);
        foreign.cluster_id = Some("other".to_owned());
        let plan = plan(
            &input(3, 3, Some("id"), &pods),
            &observed(3, 3, Some(foreign)),
        );
        assert!(
            matches!(plan.phase, ClusterPhase::IdentityConflict { .. }),
            "{plan:?}"
        );
    }

    #[test]
    fn scale_up_grows_pods_first_then_members() {
        let pods = pods(5);
        let ring = view(&[0, 1, 2], &[], true);
        let before_pods = plan(
            &input(5, 3, Some("id"), &pods),
            &observed(3, 5, Some(ring.clone())),
        );
        assert_eq!(before_pods.statefulset_replicas, 5);
        assert_eq!(before_pods.action, None);
        assert!(matches!(
            before_pods.phase,
            ClusterPhase::WaitingForPods { .. }
        ));

        let pods_up = plan(&input(5, 5, Some("id"), &pods), &observed(5, 5, Some(ring)));
        let Some(AdminAction::SetMembers { members, via }) = pods_up.action else {
            panic!("expected set members, got {:?}", pods_up.action)
        };
        assert_eq!((members.len(), via.as_str()), (5, "c-0:7000"));

        let joined = plan(
            &input(5, 5, Some("id"), &pods),
            &observed(5, 5, Some(view(&[0, 1, 2, 3, 4], &[], false))),
        );
        assert!(matches!(
            joined.phase,
            ClusterPhase::Rebalancing { progress: Some(_) }
        ));
        let done = plan(
            &input(5, 5, Some("id"), &pods),
            &observed(5, 5, Some(view(&[0, 1, 2, 3, 4], &[], true))),
        );
        assert_eq!((done.phase, done.action), (ClusterPhase::Steady, None));
    }

    #[test]
    fn scale_down_drains_before_the_statefulset_shrinks() {
        let pods = pods(5);
        let input = input(3, 5, Some("id"), &pods);
        let first = plan(
            &input,
            &observed(5, 5, Some(view(&[0, 1, 2, 3, 4], &[], true))),
        );
        assert_eq!(first.statefulset_replicas, 5);
        assert!(
            matches!(first.action, Some(AdminAction::SetMembers { ref members, .. }) if members.len() == 3)
        );

        let draining = plan(
            &input,
            &observed(5, 5, Some(view(&[0, 1, 2], &[3, 4], false))),
        );
        assert_eq!(draining.statefulset_replicas, 5);
        assert_eq!(draining.action, None);
        assert!(matches!(draining.phase, ClusterPhase::Draining { .. }));

        let mut stale = observed(5, 5, Some(view(&[0, 1, 2], &[], true)));
        stale.views[0].as_mut().unwrap().epoch = 2;
        let mut follower = view(&[0, 1, 2], &[3, 4], false);
        follower.rebalance.active = false;
        stale.views[1] = Some(follower);
        assert_eq!(
            plan(&input, &stale).statefulset_replicas,
            5,
            "a balancer behind another node's epoch is not trusted"
        );

        let no_balancer = plan(&input, &observed(5, 5, None));
        assert_eq!(
            no_balancer.statefulset_replicas, 5,
            "never shrink without the balancer's word"
        );

        let drained = plan(&input, &observed(5, 5, Some(view(&[0, 1, 2], &[], true))));
        assert_eq!(
            (drained.statefulset_replicas, drained.phase),
            (3, ClusterPhase::Steady)
        );
    }

    #[test]
    fn a_spec_change_mid_scale_only_moves_the_target() {
        let pods = pods(5);
        // Scaling 3 -> 5, pods up but not yet members, and the spec goes back to 4.
        let ring = view(&[0, 1, 2], &[], true);
        let plan = plan(&input(4, 5, Some("id"), &pods), &observed(5, 5, Some(ring)));
        assert_eq!(plan.statefulset_replicas, 4);
        assert!(
            matches!(plan.action, Some(AdminAction::SetMembers { ref members, .. }) if members.len() == 4)
        );
    }
}
