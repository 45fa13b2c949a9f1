//! The reconcile loop: children by server-side apply, the cluster's life through
//! [`crate::lifecycle`], and a status that says where it is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::crd::{
    API_VERSION, DistributedCache, DistributedCacheStatus, KIND, LostPartitionStatus, Phase,
    RebalanceStatus,
};
use crate::lifecycle::{
    AdminAction, ClusterPhase, ClusterStatus, MemberNode, NodeAdmin, NodeCredentials, Observation,
    Plan, PlanInput,
};
use crate::metrics::Metrics;
use crate::resources::{self, FIELD_MANAGER};
use crate::{Error, Result};

/// Requeue while something is moving: the nodes do not notify the operator.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Requeue when all is well, to notice what the nodes did on their own (lost
/// partitions, a member that restarted).
const STEADY_INTERVAL: Duration = Duration::from_secs(60);
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const SERVICE_MONITOR_CRD: &str = "servicemonitors.monitoring.coreos.com";

/// What every reconcile needs, cloned into each.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub admin: Arc<dyn NodeAdmin>,
    /// Consecutive failures per resource, for the error policy's backoff.
    failures: Mutex<HashMap<ObjectRef<DistributedCache>, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, admin: Arc<dyn NodeAdmin>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            admin,
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<DistributedCache>, u32>> {
        // The map holds plain counters: a panic elsewhere cannot leave it inconsistent.
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs the controller until SIGTERM/Ctrl-C.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let caches = Api::<DistributedCache>::all(client.clone());
    Controller::new(caches, watcher::Config::default())
        .owns(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<PodDisruptionBudget>::all(client),
            watcher::Config::default(),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "reconcile round failed");
            }
        })
        .await;
}

/// Whether the CRD is installed, so startup can stop with an install hint instead of
/// a watch that fails for ever.
pub async fn crd_installed(client: &Client) -> Result<bool> {
    let caches = Api::<DistributedCache>::all(client.clone());
    match caches.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// The admin client for this cache's nodes: with the operator's own token when auth is
/// on (its internal Secret created on first need, owned by the cache), over https
/// trusting the TLS Secret's CA when TLS is on.
async fn node_admin(
    dc: &DistributedCache,
    ctx: &Context,
    namespace: &str,
) -> Result<Arc<dyn NodeAdmin>> {
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), namespace);
    let mut credentials = NodeCredentials::default();
    if dc.spec.auth.is_some() {
        let name = resources::internal_secret_name(dc);
        let internal = match secrets.get_opt(&name).await? {
            Some(secret) => secret,
            None => {
                // Generated once and never re-applied: rotating it under running
                // nodes would cut them off from each other until they all reload.
                let fresh =
                    resources::desired_internal_secret(dc, &random_secret(), &random_secret());
                match secrets.create(&PostParams::default(), &fresh).await {
                    Ok(created) => created,
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        secrets.get(&name).await?
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        };
        let tokens = secret_key(&internal, &name, resources::TOKENS_KEY)?;
        let token = String::from_utf8_lossy(&tokens)
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .and_then(|line| line.split_whitespace().next())
            .map(str::to_owned)
            .ok_or_else(|| Error::Secret(format!("Secret {name} holds no operator token")))?;
        credentials.token = Some(token);
    }
    if let Some(tls) = &dc.spec.tls {
        let secret = secrets.get(&tls.secret_name).await?;
        credentials.ca_pem = Some(secret_key(&secret, &tls.secret_name, resources::CA_KEY)?);
    }
    ctx.admin
        .clone()
        .with_credentials(credentials)
        .map_err(Error::Admin)
}

fn secret_key(secret: &Secret, name: &str, key: &str) -> Result<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|value| value.0.clone())
        .ok_or_else(|| Error::Secret(format!("Secret {name} has no key {key:?}")))
}

/// 256 random bits, hex-encoded.
fn random_secret() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Retries a failing resource after 2 s, doubling up to 5 minutes.
pub fn error_policy(dc: Arc<DistributedCache>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error);
    let mut failures = ctx.failures();
    let count = failures
        .entry(ObjectRef::from_obj(dc.as_ref()))
        .or_insert(0);
    *count += 1;
    let delay = BACKOFF_FIRST
        .saturating_mul(1 << (*count - 1).min(16))
        .min(BACKOFF_MAX);
    warn!(name = %dc.name_any(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[instrument(skip(dc, ctx), fields(name = %dc.name_any(), namespace = dc.namespace()))]
pub async fn reconcile(dc: Arc<DistributedCache>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let action = reconcile_cache(&dc, &ctx).await?;
    ctx.failures().remove(&ObjectRef::from_obj(dc.as_ref()));
    Ok(action)
}

async fn reconcile_cache(dc: &DistributedCache, ctx: &Context) -> Result<Action> {
    if dc.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove what this cache owns;
        // re-applying children now would only race it.
        return Ok(Action::await_change());
    }
    let namespace = dc.namespace().ok_or(Error::MissingField("namespace"))?;
    let uid = dc.uid().ok_or(Error::MissingField("uid"))?;
    let name = dc.name_any();
    let caches = Api::<DistributedCache>::namespaced(ctx.client.clone(), &namespace);
    let previous = dc.status.clone().unwrap_or_default();

    let Some(max_memory_bytes) = resources::quantity_bytes(&dc.spec.max_memory) else {
        let message = format!(
            "spec.maxMemory {:?} is not a quantity like 512Mi or 2Gi",
            dc.spec.max_memory
        );
        publish(
            ctx,
            dc,
            EventType::Warning,
            "InvalidSpec",
            "Validating",
            &message,
        )
        .await?;
        let mut status = previous.clone();
        status.phase = Phase::Degraded;
        status.observed_generation = dc.metadata.generation.unwrap_or_default();
        set_condition(
            &mut status,
            &previous,
            dc,
            "Degraded",
            true,
            "InvalidSpec",
            &message,
        );
        set_condition(
            &mut status,
            &previous,
            dc,
            "Ready",
            false,
            "InvalidSpec",
            &message,
        );
        patch_status(&caches, &name, &status).await?;
        return Ok(Action::await_change());
    };

    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    let services = Api::<Service>::namespaced(ctx.client.clone(), &namespace);
    let headless = resources::desired_headless_service(dc);
    services
        .patch(
            &resources::headless_service_name(dc),
            &ssa,
            &Patch::Apply(&headless),
        )
        .await?;
    let client_service = resources::desired_client_service(dc);
    services
        .patch(
            &resources::client_service_name(dc),
            &ssa,
            &Patch::Apply(&client_service),
        )
        .await?;
    let budgets = Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &namespace);
    if dc.spec.pod_disruption_budget.enabled {
        let budget = resources::desired_pod_disruption_budget(dc);
        budgets.patch(&name, &ssa, &Patch::Apply(&budget)).await?;
    } else {
        delete_if_present(&budgets, &name).await?;
    }
    let monitor_note = apply_service_monitor(dc, ctx, &namespace, &ssa).await?;

    let statefulsets = Api::<StatefulSet>::namespaced(ctx.client.clone(), &namespace);
    let existing = statefulsets
        .get_opt(&resources::statefulset_name(dc))
        .await?;
    let current_replicas = existing
        .as_ref()
        .and_then(|sts| sts.spec.as_ref()?.replicas)
        .unwrap_or(0)
        .max(0) as usize;
    let ready_replicas = existing
        .as_ref()
        .and_then(|sts| sts.status.as_ref()?.ready_replicas)
        .unwrap_or(0);

    let desired_replicas = dc.spec.replicas.max(1) as usize;
    let pods: Vec<MemberNode> = (0..desired_replicas.max(current_replicas))
        .map(|ordinal| MemberNode {
            name: resources::pod_name(dc, ordinal),
            api_addr: resources::pod_api_addr(dc, ordinal),
            raft_addr: resources::pod_raft_addr(dc, ordinal),
            resp_addr: None,
        })
        .collect();
    let admin = node_admin(dc, ctx, &namespace).await?;
    let observation = if existing.is_some() {
        Observation::gather(admin.as_ref(), &pods).await
    } else {
        Observation::default()
    };
    let new_cluster_id = format!("{namespace}.{name}.{uid}");
    let input = PlanInput {
        desired_replicas,
        current_replicas,
        recorded_cluster_id: previous.cluster_id.as_deref(),
        new_cluster_id: &new_cluster_id,
        pods: &pods,
    };
    let plan = crate::lifecycle::plan(&input, &observation);
    info!(?plan.phase, statefulset_replicas = plan.statefulset_replicas, "planned");

    let statefulset =
        resources::desired_statefulset(dc, plan.statefulset_replicas as i32, max_memory_bytes);
    statefulsets
        .patch(
            &resources::statefulset_name(dc),
            &ssa,
            &Patch::Apply(&statefulset),
        )
        .await?;
    if existing.is_some() && plan.statefulset_replicas != current_replicas {
        let note = format!(
            "StatefulSet {current_replicas} -> {} pods",
            plan.statefulset_replicas
        );
        publish(
            ctx,
            dc,
            EventType::Normal,
            "StatefulSetScaled",
            "Scaling",
            &note,
        )
        .await?;
    }

    let mut cluster_id = previous.cluster_id.clone().or(plan.cluster_id.clone());
    if let Some(action) = &plan.action {
        crate::lifecycle::execute(admin.as_ref(), action)
            .await
            .map_err(Error::Admin)?;
        match action {
            AdminAction::Init {
                request_id,
                members,
                ..
            } => {
                cluster_id = Some(request_id.clone());
                let note = format!(
                    "initialised cluster {request_id} with {}",
                    names(members).join(", ")
                );
                publish(
                    ctx,
                    dc,
                    EventType::Normal,
                    "ClusterInitialized",
                    "Initializing",
                    &note,
                )
                .await?;
            }
            AdminAction::SetMembers { members, .. } => {
                let note = format!("ring members set to {}", names(members).join(", "));
                publish(
                    ctx,
                    dc,
                    EventType::Normal,
                    "MembersChanged",
                    "Scaling",
                    &note,
                )
                .await?;
            }
        }
    }

    let view = observation.balancer_view();
    let status = next_status(
        dc,
        &previous,
        &plan,
        view,
        cluster_id,
        ready_replicas,
        monitor_note,
    );
    if previous.phase != Phase::Running
        && had_condition(&previous, "Rebalancing")
        && plan.phase == ClusterPhase::Steady
    {
        let note = format!("ring of {desired_replicas} members balanced");
        publish(
            ctx,
            dc,
            EventType::Normal,
            "RebalanceDone",
            "Rebalancing",
            &note,
        )
        .await?;
    }
    for lost in status
        .lost_partitions
        .iter()
        .filter(|lost| !previous.lost_partitions.contains(lost))
    {
        let note = format!(
            "partition {} lost its data and was re-formed empty at epoch {}: {}",
            lost.partition, lost.epoch, lost.reason
        );
        publish(
            ctx,
            dc,
            EventType::Warning,
            "PartitionDataLost",
            "Observing",
            &note,
        )
        .await?;
    }
    patch_status(&caches, &name, &status).await?;

    Ok(match plan.phase {
        ClusterPhase::Steady => Action::requeue(STEADY_INTERVAL),
        _ => Action::requeue(PROGRESS_INTERVAL),
    })
}

fn names(members: &[MemberNode]) -> Vec<&str> {
    members.iter().map(|m| m.name.as_str()).collect()
}

fn had_condition(status: &DistributedCacheStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Applies the ServiceMonitor when monitoring is on and the Prometheus Operator's CRD
/// exists; otherwise says why there is none (for the Ready condition's message).
async fn apply_service_monitor(
    dc: &DistributedCache,
    ctx: &Context,
    namespace: &str,
    ssa: &PatchParams,
) -> Result<Option<String>> {
    if !dc.spec.monitoring.enabled {
        return Ok(None);
    }
    let crds = Api::<CustomResourceDefinition>::all(ctx.client.clone());
    if crds.get_opt(SERVICE_MONITOR_CRD).await?.is_none() {
        return Ok(Some(
            "monitoring is on but the ServiceMonitor CRD (Prometheus Operator) is not installed"
                .to_owned(),
        ));
    }
    let monitors = Api::<DynamicObject>::namespaced_with(
        ctx.client.clone(),
        namespace,
        &resources::service_monitor_resource(),
    );
    let monitor = resources::desired_service_monitor(dc);
    monitors
        .patch(&dc.name_any(), ssa, &Patch::Apply(&monitor))
        .await?;
    Ok(None)
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

async fn publish(
    ctx: &Context,
    dc: &DistributedCache,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) -> Result<()> {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.to_owned()),
        action: action.to_owned(),
        secondary: None,
    };
    ctx.recorder.publish(&event, &dc.object_ref(&())).await?;
    Ok(())
}

async fn patch_status(
    caches: &Api<DistributedCache>,
    name: &str,
    status: &DistributedCacheStatus,
) -> Result<()> {
    let patch = Patch::Apply(json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "status": status,
    }));
    caches
        .patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &patch)
        .await?;
    Ok(())
}

/// Sets condition `type_`, keeping its transition time when its status did not change.
fn set_condition(
    status: &mut DistributedCacheStatus,
    previous: &DistributedCacheStatus,
    dc: &DistributedCache,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
) {
    let value = if value { "True" } else { "False" };
    let transition = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == value)
        .map_or_else(
            || Time(Timestamp::now()),
            |c| c.last_transition_time.clone(),
        );
    status.conditions.retain(|c| c.type_ != type_);
    status.conditions.push(Condition {
        type_: type_.to_owned(),
        status: value.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: dc.metadata.generation,
        last_transition_time: transition,
    });
}

/// The status after this reconcile, from the plan and the balancer's view.
fn next_status(
    dc: &DistributedCache,
    previous: &DistributedCacheStatus,
    plan: &Plan,
    view: Option<&ClusterStatus>,
    cluster_id: Option<String>,
    ready_replicas: i32,
    monitor_note: Option<String>,
) -> DistributedCacheStatus {
    let desired = dc.spec.replicas;
    let mut status = DistributedCacheStatus {
        replicas: plan.statefulset_replicas as i32,
        ready_replicas,
        selector: resources::selector_string(dc),
        observed_generation: dc.metadata.generation.unwrap_or_default(),
        cluster_id,
        members: previous.members.clone(),
        leaving: previous.leaving.clone(),
        rebalance: previous.rebalance.clone(),
        lost_partitions: previous.lost_partitions.clone(),
        conditions: previous.conditions.clone(),
        phase: Phase::Creating,
    };
    if let Some(view) = view {
        status.members = view.members.iter().map(|m| m.node.name.clone()).collect();
        status.leaving = view.leaving.iter().map(|m| m.node.name.clone()).collect();
        let progress = &view.rebalance;
        status.rebalance = Some(RebalanceStatus {
            epoch: progress.epoch,
            replicas_to_move: progress.replicas_to_move,
            moving: progress.moving,
            moved: progress.moved,
            bytes_moved: progress.bytes_moved,
        });
        for lost in &view.lost_partitions {
            let lost = LostPartitionStatus {
                partition: lost.partition,
                epoch: lost.epoch,
                at_unix_ms: lost.at_unix_ms,
                reason: lost.reason.clone(),
            };
            if !status.lost_partitions.contains(&lost) {
                status.lost_partitions.push(lost);
            }
        }
    }
    let growing = desired as usize > status.members.len();
    let (phase, rebalancing, reason, message) = match &plan.phase {
        ClusterPhase::WaitingForPods { pods } if status.cluster_id.is_none() => (
            Phase::Creating,
            false,
            "WaitingForPods",
            format!("waiting for pods to answer /health: {}", pods.join(", ")),
        ),
        ClusterPhase::WaitingForPods { pods } => (
            if growing {
                Phase::ScalingUp
            } else {
                Phase::Rebalancing
            },
            true,
            "WaitingForPods",
            format!(
                "waiting for pods to answer /health before they join: {}",
                pods.join(", ")
            ),
        ),
        ClusterPhase::Initialising => (
            Phase::Creating,
            false,
            "Initializing",
            "cluster initialised; waiting for its first balance".to_owned(),
        ),
        ClusterPhase::IdentityConflict { message } => (
            Phase::Degraded,
            false,
            "ClusterIdentityConflict",
            message.clone(),
        ),
        ClusterPhase::ChangingMembers { adding, removing } => (
            if adding.is_empty() {
                Phase::ScalingDown
            } else {
                Phase::ScalingUp
            },
            true,
            "MembersChanged",
            format!(
                "adding [{}], removing [{}]",
                adding.join(", "),
                removing.join(", ")
            ),
        ),
        ClusterPhase::Draining { leaving } => (
            Phase::ScalingDown,
            true,
            "Draining",
            format!(
                "draining {} before their pods go; {} replicas left to move",
                leaving.join(", "),
                view.map_or(0, |v| v
                    .rebalance
                    .leaving
                    .iter()
                    .map(|l| l.replicas)
                    .sum::<u64>())
            ),
        ),
        ClusterPhase::Rebalancing {
            progress: Some(progress),
        } => (
            Phase::Rebalancing,
            true,
            "ReplicasMoving",
            format!(
                "{} replicas to move, {} moving, {} moved",
                progress.replicas_to_move, progress.moving, progress.moved
            ),
        ),
        ClusterPhase::Rebalancing { progress: None } => (
            Phase::Rebalancing,
            true,
            "NoBalancer",
            "no node reports a running balancer (cluster leader election?)".to_owned(),
        ),
        ClusterPhase::Steady => (
            Phase::Running,
            false,
            "Balanced",
            "the ring matches the spec and no replica is moving".to_owned(),
        ),
    };
    status.phase = phase;
    set_condition(
        &mut status,
        previous,
        dc,
        "Rebalancing",
        rebalancing,
        reason,
        &message,
    );
    let degraded = matches!(plan.phase, ClusterPhase::IdentityConflict { .. });
    let lost = status.lost_partitions.len();
    let (degraded_reason, degraded_message) = if degraded {
        ("ClusterIdentityConflict", message.clone())
    } else if lost > 0 {
        (
            "PartitionsLost",
            format!("{lost} partition(s) lost their data; see status.lostPartitions"),
        )
    } else {
        ("AsExpected", "nothing needs attention".to_owned())
    };
    set_condition(
        &mut status,
        previous,
        dc,
        "Degraded",
        degraded || lost > 0,
        degraded_reason,
        &degraded_message,
    );
    let ready = plan.phase == ClusterPhase::Steady && ready_replicas >= desired;
    let ready_message = match (&monitor_note, ready) {
        (Some(note), true) => format!("all {desired} nodes ready; {note}"),
        (None, true) => format!("all {desired} nodes ready and balanced"),
        (_, false) => format!("{ready_replicas}/{desired} nodes ready; {message}"),
    };
    set_condition(
        &mut status,
        previous,
        dc,
        "Ready",
        ready,
        if ready { "Ready" } else { reason },
        &ready_message,
    );
    status
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
