//! Pure builders of the Kubernetes objects a `DistributedCache` owns. Nothing here talks
//! to the API server, so every choice is unit-tested with plain asserts.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, SleepAction,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::DistributedCache;

/// Port of the node's HTTP API (cache, admin, health, metrics).
pub const API_PORT: i32 = 7000;
/// Port of the node's Raft RPC endpoint.
pub const RAFT_PORT: i32 = 7100;
/// Port of the node's Redis protocol (RESP) front door, Redis Cluster semantics: the
/// port Redis clients expect, on the pods and on both Services.
pub const RESP_PORT: i32 = 6379;
/// Where a node's volume is mounted when persistence is on.
pub const DATA_DIR: &str = "/data";
/// How long the node may take to finish in-flight requests after SIGTERM.
pub const SHUTDOWN_TIMEOUT_SECONDS: i64 = 20;
/// The preStop pause: endpoints controllers and load balancers stop sending before the
/// node stops accepting.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;
/// How long a node, on SIGTERM, holds its stop while some partition would lose its
/// majority by its going (another pod restarting or catching up): a `kubectl delete
/// pod` or a drain right after another pod's restart waits for the partitions to
/// re-form instead of taking a majority away.
pub const SAFE_STOP_SECONDS: i64 = 60;
/// The whole grace period: the preStop pause, the safe-stop hold, the node's own
/// shutdown timeout and room for Raft to hand leadership over when the node stops.
pub const TERMINATION_GRACE_SECONDS: i64 =
    PRE_STOP_SLEEP_SECONDS + SAFE_STOP_SECONDS + SHUTDOWN_TIMEOUT_SECONDS + 35;

pub const FIELD_MANAGER: &str = "dcache-operator";

/// Where the user's auth Secret, the operator's internal Secret and the TLS Secret are
/// mounted in a node.
pub const AUTH_DIR: &str = "/etc/dcache/auth";
pub const INTERNAL_DIR: &str = "/etc/dcache/internal";
pub const TLS_DIR: &str = "/etc/dcache/tls";
/// Keys of the Secrets: the user's token file, and the internal Secret's token file
/// (the operator's admin token) and cluster secret.
pub const TOKENS_KEY: &str = "tokens";
pub const CLUSTER_SECRET_KEY: &str = "cluster-secret";
/// The CA certificate in a cert-manager TLS Secret.
pub const CA_KEY: &str = "ca.crt";

/// The names of everything a cache owns, derived from its name.
pub fn statefulset_name(dc: &DistributedCache) -> String {
    dc.name_any()
}
/// The Secret the operator generates for a cache with auth: the cluster secret and the
/// operator's own admin token.
pub fn internal_secret_name(dc: &DistributedCache) -> String {
    format!("{}-internal", dc.name_any())
}

pub fn client_service_name(dc: &DistributedCache) -> String {
    dc.name_any()
}
pub fn headless_service_name(dc: &DistributedCache) -> String {
    format!("{}-peers", dc.name_any())
}
pub fn pod_name(dc: &DistributedCache, ordinal: usize) -> String {
    format!("{}-{ordinal}", dc.name_any())
}

/// Labels that select a cache's pods.
pub fn selector_labels(dc: &DistributedCache) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "dcache".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), dc.name_any()),
    ])
}

/// The selector as the scale subresource wants it: `key=value,...`.
pub fn selector_string(dc: &DistributedCache) -> String {
    selector_labels(dc)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn labels(dc: &DistributedCache) -> BTreeMap<String, String> {
    let mut labels = selector_labels(dc);
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        FIELD_MANAGER.to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/component".to_owned(),
        "cache-node".to_owned(),
    );
    labels
}

fn owner_reference(dc: &DistributedCache) -> OwnerReference {
    dc.controller_owner_ref(&())
        .expect("a DistributedCache read from the API server has a name and uid")
}

fn metadata(dc: &DistributedCache, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: dc.namespace(),
        labels: Some(labels(dc)),
        owner_references: Some(vec![owner_reference(dc)]),
        ..ObjectMeta::default()
    }
}

/// `host:port` of a pod's API, Raft and RESP endpoints: its stable DNS name under the
/// headless Service.
pub fn pod_api_addr(dc: &DistributedCache, ordinal: usize) -> String {
    format!("{}:{API_PORT}", pod_host(dc, ordinal))
}
pub fn pod_raft_addr(dc: &DistributedCache, ordinal: usize) -> String {
    format!("{}:{RAFT_PORT}", pod_host(dc, ordinal))
}
/// What the node advertises to Redis Cluster clients (CLUSTER SLOTS, MOVED) and what
/// its `DCACHE_ADVERTISE_RESP` expands to in the pod.
pub fn pod_resp_addr(dc: &DistributedCache, ordinal: usize) -> String {
    format!("{}:{RESP_PORT}", pod_host(dc, ordinal))
}
fn pod_host(dc: &DistributedCache, ordinal: usize) -> String {
    format!(
        "{}.{}.{}.svc",
        pod_name(dc, ordinal),
        headless_service_name(dc),
        dc.namespace().unwrap_or_else(|| "default".to_owned())
    )
}

/// The headless Service: stable DNS names for Raft peers, and the per-pod names Redis
/// Cluster clients are sent to (CLUSTER SLOTS and MOVED name `POD.NAME-peers.NS.svc`,
/// so it carries the RESP port too). It publishes pods before they are ready because a
/// new pod is not ready until it joined the ring, and it cannot join unless its peers
/// can reach it.
pub fn desired_headless_service(dc: &DistributedCache) -> Service {
    let mut meta = metadata(dc, headless_service_name(dc));
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert("dcache.io/service".to_owned(), "peers".to_owned());
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(dc)),
            ports: Some(vec![
                service_port("http", API_PORT),
                service_port("raft", RAFT_PORT),
                service_port("resp", RESP_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The client Service: load-balances cache requests over ready nodes (any node
/// serves any key over HTTP, forwarding to the partition leader). Its RESP port is a
/// Redis Cluster client's seed: the client asks CLUSTER SLOTS there, then talks to the
/// pods by the names the nodes advertise.
pub fn desired_client_service(dc: &DistributedCache) -> Service {
    Service {
        metadata: metadata(dc, client_service_name(dc)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(dc)),
            ports: Some(vec![
                service_port("http", API_PORT),
                service_port("resp", RESP_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// Bytes of a Kubernetes quantity like `512Mi`, `2Gi`, `500M` or `1048576`; None when
/// it is not one of those forms.
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    let digits_end = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(digits_end);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(multiplier).filter(|&bytes| bytes > 0)
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The node's configuration, as the `DCACHE_*` environment its flags read. Env rather
/// than a ConfigMap: a change is part of the pod template, so it rolls the pods by
/// itself, one at a time.
///
/// Every node listens for RESP on [`RESP_PORT`] and advertises its pod's stable name
/// under the headless Service, so in-cluster Redis Cluster clients can follow CLUSTER
/// SLOTS and MOVED. With TLS on, the node serves RESP with the API's certificate (the
/// same `DCACHE_TLS_*` files); nothing here is RESP-specific.
pub fn node_environment(dc: &DistributedCache, max_memory_bytes: u64) -> Vec<EnvVar> {
    let headless = headless_service_name(dc);
    let spec = &dc.spec;
    let mut vars = vec![
        env_from_field("POD_NAME", "metadata.name"),
        env_from_field("POD_NAMESPACE", "metadata.namespace"),
        env("DCACHE_LISTEN", format!("0.0.0.0:{API_PORT}")),
        env("DCACHE_RAFT_LISTEN", format!("0.0.0.0:{RAFT_PORT}")),
        env("DCACHE_NODE_ID", "$(POD_NAME)"),
        env(
            "DCACHE_ADVERTISE_API",
            format!("$(POD_NAME).{headless}.$(POD_NAMESPACE).svc:{API_PORT}"),
        ),
        env(
            "DCACHE_ADVERTISE_RAFT",
            format!("$(POD_NAME).{headless}.$(POD_NAMESPACE).svc:{RAFT_PORT}"),
        ),
        env("DCACHE_RESP_LISTEN", format!("0.0.0.0:{RESP_PORT}")),
        env(
            "DCACHE_ADVERTISE_RESP",
            format!("$(POD_NAME).{headless}.$(POD_NAMESPACE).svc:{RESP_PORT}"),
        ),
        env("DCACHE_PARTITIONS", spec.partitions.to_string()),
        env("DCACHE_REPLICATION", spec.replication_factor.to_string()),
        env("DCACHE_MAX_MEMORY", max_memory_bytes.to_string()),
        env("DCACHE_EVICTION_POLICY", spec.eviction_policy.as_flag()),
        env("DCACHE_LOG_FORMAT", "json"),
        env(
            "DCACHE_SHUTDOWN_TIMEOUT",
            format!("{SHUTDOWN_TIMEOUT_SECONDS}s"),
        ),
        env("DCACHE_SAFE_STOP_TIMEOUT", format!("{SAFE_STOP_SECONDS}s")),
    ];
    if let Some(ttl) = spec.default_ttl_seconds {
        vars.push(env("DCACHE_DEFAULT_TTL", ttl.to_string()));
    }
    if spec.auth.is_some() {
        vars.push(env(
            "DCACHE_TOKENS_FILE",
            format!("{AUTH_DIR}/{TOKENS_KEY},{INTERNAL_DIR}/{TOKENS_KEY}"),
        ));
        vars.push(env(
            "DCACHE_CLUSTER_SECRET_FILE",
            format!("{INTERNAL_DIR}/{CLUSTER_SECRET_KEY}"),
        ));
    }
    if spec.tls.is_some() {
        vars.push(env("DCACHE_TLS_CERT_FILE", format!("{TLS_DIR}/tls.crt")));
        vars.push(env("DCACHE_TLS_KEY_FILE", format!("{TLS_DIR}/tls.key")));
        vars.push(env("DCACHE_TLS_CA_FILE", format!("{TLS_DIR}/{CA_KEY}")));
    }
    if spec.persistence.enabled {
        // The claim `data` is mounted there: the node keeps its identity, Raft log and
        // snapshots on it and comes back with them after a restart.
        vars.push(env("DCACHE_PERSISTENCE", "disk"));
        vars.push(env("DCACHE_DATA_DIR", DATA_DIR));
    }
    vars
}

/// The Secret volumes of a node (auth, internal, TLS) and where each is mounted.
/// Mounted whole, not by `subPath`: only a whole mount follows a Secret's updates,
/// which the node picks up without a restart.
fn secret_volumes(dc: &DistributedCache) -> Vec<(Volume, VolumeMount)> {
    let secret = |volume: &str, secret_name: String, dir: &str| {
        (
            Volume {
                name: volume.to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret_name),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            VolumeMount {
                name: volume.to_owned(),
                mount_path: dir.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        )
    };
    let mut volumes = Vec::new();
    if let Some(auth) = &dc.spec.auth {
        volumes.push(secret("auth", auth.secret_name.clone(), AUTH_DIR));
        volumes.push(secret("internal", internal_secret_name(dc), INTERNAL_DIR));
    }
    if let Some(tls) = &dc.spec.tls {
        volumes.push(secret("tls", tls.secret_name.clone(), TLS_DIR));
    }
    volumes
}

/// The internal Secret of a cache with auth, owned by it so that it goes with it.
pub fn desired_internal_secret(
    dc: &DistributedCache,
    cluster_secret: &str,
    operator_token: &str,
) -> Secret {
    Secret {
        metadata: metadata(dc, internal_secret_name(dc)),
        data: Some(BTreeMap::from([
            (
                CLUSTER_SECRET_KEY.to_owned(),
                ByteString(cluster_secret.as_bytes().to_vec()),
            ),
            (
                TOKENS_KEY.to_owned(),
                ByteString(
                    format!("# the dcache operator's own token\n{operator_token} admin,read\n")
                        .into_bytes(),
                ),
            ),
        ])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    }
}

/// One node per host where the scheduler can manage it, and zones evened out when
/// they exist: losing a host or a zone then takes as few replicas of a partition as
/// the cluster's shape allows.
pub fn default_topology_spread(dc: &DistributedCache) -> Vec<TopologySpreadConstraint> {
    let selector = LabelSelector {
        match_labels: Some(selector_labels(dc)),
        ..LabelSelector::default()
    };
    vec![
        TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(selector.clone()),
            ..TopologySpreadConstraint::default()
        },
        TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(selector),
            ..TopologySpreadConstraint::default()
        },
    ]
}

fn http_probe(path: &str, period: i32, failures: i32, tls: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            // The kubelet does not verify the certificate; it only needs to speak TLS.
            scheme: tls.then(|| "HTTPS".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The StatefulSet of cache nodes with `replicas` pods (the lifecycle decides the
/// number; it is the spec's only once the ring agrees).
///
/// Updates roll with `RollingUpdate`: the StatefulSet controller replaces one pod at a
/// time, highest ordinal first, and waits for the new pod to be Ready before the next.
/// Ready means `/ready`: joined the cluster and every replica it holds caught up, so a
/// second pod never goes while the first one's partitions are short of a replica. Pods
/// are created in parallel so a scale-up never waits for readiness a new pod cannot
/// have before it joins the ring.
pub fn desired_statefulset(
    dc: &DistributedCache,
    replicas: i32,
    max_memory_bytes: u64,
) -> StatefulSet {
    let spec = &dc.spec;
    let mut volume_mounts = vec![VolumeMount {
        name: "tmp".to_owned(),
        mount_path: "/tmp".to_owned(),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "tmp".to_owned(),
        empty_dir: Some(Default::default()),
        ..Volume::default()
    }];
    for (volume, mount) in secret_volumes(dc) {
        volumes.push(volume);
        volume_mounts.push(mount);
    }
    let mut claim_templates = None;
    let mut claim_retention = None;
    if spec.persistence.enabled {
        volume_mounts.push(VolumeMount {
            name: "data".to_owned(),
            mount_path: DATA_DIR.to_owned(),
            ..VolumeMount::default()
        });
        claim_templates = Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".to_owned()),
                labels: Some(selector_labels(dc)),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                storage_class_name: spec.persistence.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        Quantity(spec.persistence.size.clone()),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        }]);
        // A drained member's volume holds nothing the cluster still needs, and a
        // volume kept past scale-down would bring stale state back on the next
        // scale-up, so claims go with their pods.
        claim_retention = Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
            when_scaled: Some("Delete".to_owned()),
            when_deleted: Some("Delete".to_owned()),
        });
    }
    let container = Container {
        name: "dcache-node".to_owned(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        env: Some(node_environment(dc, max_memory_bytes)),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".to_owned()),
                container_port: API_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("raft".to_owned()),
                container_port: RAFT_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("resp".to_owned()),
                container_port: RESP_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        resources: spec.resources.clone(),
        liveness_probe: Some(http_probe("/health", 10, 3, spec.tls.is_some())),
        readiness_probe: Some(http_probe("/ready", 5, 2, spec.tls.is_some())),
        lifecycle: Some(Lifecycle {
            // The pause (Kubernetes' own sleep action: the image needs no shell) lets
            // endpoints drop the pod; then SIGTERM makes the node hand every partition
            // leadership it holds to a caught-up replica before it stops serving.
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    };
    let scheduling = &spec.scheduling;
    let pod = PodSpec {
        containers: vec![container],
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        affinity: scheduling.affinity.clone(),
        tolerations: (!scheduling.tolerations.is_empty()).then(|| scheduling.tolerations.clone()),
        node_selector: (!scheduling.node_selector.is_empty())
            .then(|| scheduling.node_selector.clone()),
        topology_spread_constraints: Some(
            scheduling
                .topology_spread_constraints
                .clone()
                .unwrap_or_else(|| default_topology_spread(dc)),
        ),
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    StatefulSet {
        metadata: metadata(dc, statefulset_name(dc)),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(headless_service_name(dc)),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(dc)),
                ..LabelSelector::default()
            },
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(0),
                    max_unavailable: None,
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(dc)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: claim_templates,
            persistent_volume_claim_retention_policy: claim_retention,
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// How many pods may be evicted at once without any partition losing its Raft quorum.
///
/// A partition with R voters keeps a majority, floor(R/2)+1, while at most
/// floor((R-1)/2) of them are down. Replica sets overlap arbitrarily on the ring, so
/// any set of evicted pods may all hold the same partition: the pod budget is that
/// per-partition tolerance, with R capped by the node count. Expressed as
/// maxUnavailable rather than minAvailable so it follows scaling by itself. With R of
/// 1 or 2 no eviction keeps every quorum; the budget still allows one, because a
/// budget of zero would block node drains for ever, and such a cluster accepted that
/// risk when it chose R.
pub fn max_unavailable_pods(replication_factor: u8, replicas: i32) -> i32 {
    let voters = i32::from(replication_factor).min(replicas.max(1));
    ((voters - 1) / 2).max(1)
}

pub fn desired_pod_disruption_budget(dc: &DistributedCache) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(dc, statefulset_name(dc)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable_pods(
                dc.spec.replication_factor,
                dc.spec.replicas,
            ))),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(dc)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// The Prometheus Operator's ServiceMonitor kind, which may not be installed.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// Scrapes every node through the headless Service (which lists pods that are not
/// ready yet, so a node's metrics are there while it catches up).
pub fn desired_service_monitor(dc: &DistributedCache) -> DynamicObject {
    let mut selector = selector_labels(dc);
    selector.insert("dcache.io/service".to_owned(), "peers".to_owned());
    let mut endpoint = json!({"port": "http", "path": "/metrics", "interval": "30s"});
    if let Some(tls) = &dc.spec.tls {
        // Prometheus scrapes pod IPs: verify against the cluster's CA, under the client
        // Service's name, which the certificate carries.
        endpoint["scheme"] = json!("https");
        endpoint["tlsConfig"] = json!({
            "ca": {"secret": {"name": tls.secret_name, "key": CA_KEY}},
            "serverName": format!("{}.{}.svc", client_service_name(dc), dc.namespace().unwrap_or_default()),
        });
    }
    let mut monitor = DynamicObject::new(&dc.name_any(), &service_monitor_resource()).data(json!({
        "spec": {
            "selector": {"matchLabels": selector},
            "endpoints": [endpoint],
        }
    }));
    monitor.metadata = metadata(dc, dc.name_any());
    monitor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DistributedCacheSpec;

    fn cache(spec: serde_json::Value) -> DistributedCache {
        let spec: DistributedCacheSpec = serde_json::from_value(spec).unwrap();
        let mut dc = DistributedCache::new("cache", spec);
        dc.metadata.namespace = Some("prod".to_owned());
        dc.metadata.uid = Some("uid-1".to_owned());
        dc
    }

    #[test]
    fn service_monitor_scrapes_over_https_when_tls_is_on() {
        let plain = desired_service_monitor(&cache(serde_json::json!({})));
        assert!(plain.data["spec"]["endpoints"][0].get("scheme").is_none());
        let tls = desired_service_monitor(&cache(
            serde_json::json!({"tls": {"secretName": "cache-tls"}}),
        ));
        let endpoint = &tls.data["spec"]["endpoints"][0];
        assert_eq!(endpoint["scheme"], "https");
        assert_eq!(endpoint["tlsConfig"]["ca"]["secret"]["name"], "cache-tls");
        assert_eq!(endpoint["tlsConfig"]["serverName"], "cache.prod.svc");
    }

    #[test]
    fn quantities_convert_to_bytes() {
        assert_eq!(quantity_bytes("512Mi"), Some(512 << 20));
        assert_eq!(quantity_bytes("2Gi"), Some(2 << 30));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("4096"), Some(4096));
        assert_eq!(quantity_bytes("0Mi"), None);
        assert_eq!(quantity_bytes("lots"), None);
        assert_eq!(quantity_bytes("1.5Gi"), None);
        assert_eq!(quantity_bytes("99999999999Ti"), None);
    }

    #[test]
    fn pod_disruption_budget_follows_quorum() {
        assert_eq!(max_unavailable_pods(3, 3), 1);
        assert_eq!(max_unavailable_pods(5, 7), 2);
        // Five voters wanted but only three nodes: three voters, one may go.
        assert_eq!(max_unavailable_pods(5, 3), 1);
        assert_eq!(max_unavailable_pods(1, 3), 1);
    }

    #[test]
    fn statefulset_is_restricted_parallel_and_configured_from_the_spec() {
        let dc = cache(
            json!({"replicas": 3, "maxMemory": "1Gi", "evictionPolicy": "lru",
                              "defaultTtlSeconds": 60}),
        );
        let sts = desired_statefulset(&dc, 4, 1 << 30);
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(spec.service_name.as_deref(), Some("cache-peers"));
        assert!(spec.volume_claim_templates.is_none());
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("DistributedCache", Some(true))
        );

        let pod = spec.template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(
            pod_security.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        assert_eq!(pod.topology_spread_constraints.as_ref().unwrap().len(), 2);
        assert!(
            pod.termination_grace_period_seconds.unwrap()
                > SHUTDOWN_TIMEOUT_SECONDS + PRE_STOP_SLEEP_SECONDS + SAFE_STOP_SECONDS
        );
        let probe_path = |probe: &Option<Probe>| {
            probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .clone()
                .unwrap()
        };
        assert_eq!(probe_path(&container.liveness_probe), "/health");
        assert_eq!(probe_path(&container.readiness_probe), "/ready");

        let env: BTreeMap<_, _> = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|v| Some((v.name.as_str(), v.value.clone()?)))
            .collect();
        assert_eq!(env["DCACHE_MAX_MEMORY"], (1u64 << 30).to_string());
        assert_eq!(env["DCACHE_EVICTION_POLICY"], "lru");
        assert_eq!(env["DCACHE_DEFAULT_TTL"], "60");
        assert_eq!(env["DCACHE_PARTITIONS"], "64");
        assert_eq!(env["DCACHE_NODE_ID"], "$(POD_NAME)");
        assert_eq!(
            env["DCACHE_ADVERTISE_RAFT"],
            "$(POD_NAME).cache-peers.$(POD_NAMESPACE).svc:7100"
        );
    }

    #[test]
    fn persistence_adds_claims_that_go_with_their_pods() {
        let dc = cache(json!({"persistence": {"enabled": true, "size": "5Gi",
                                              "storageClassName": "fast"}}));
        let sts = desired_statefulset(&dc, 3, 1 << 29);
        let spec = sts.spec.unwrap();
        let claim = &spec.volume_claim_templates.unwrap()[0];
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"]
                .0,
            "5Gi"
        );
        let retention = spec.persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(retention.when_scaled.as_deref(), Some("Delete"));
        assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));

        // The node is told to keep its state on the claim's mount.
        let pod = spec.template.spec.unwrap();
        let container = &pod.containers[0];
        let mount = container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == claim.metadata.name.clone().unwrap())
            .expect("the claim is mounted");
        let env: BTreeMap<_, _> = container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|v| Some((v.name.as_str(), v.value.clone()?)))
            .collect();
        assert_eq!(env["DCACHE_PERSISTENCE"], "disk");
        assert_eq!(env["DCACHE_DATA_DIR"], mount.mount_path);
    }

    fn sts_has_no_claims(dc: &DistributedCache) -> bool {
        desired_statefulset(dc, 3, 1 << 29)
            .spec
            .unwrap()
            .volume_claim_templates
            .is_none()
    }

    #[test]
    fn without_persistence_the_node_stays_in_memory() {
        let sts = desired_statefulset(&cache(json!({})), 3, 1 << 29);
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        assert!(
            env.iter()
                .all(|v| v.name != "DCACHE_PERSISTENCE" && v.name != "DCACHE_DATA_DIR")
        );
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        assert!(mounts.iter().all(|m| m.mount_path != DATA_DIR));
        assert!(sts_has_no_claims(&cache(json!({}))));
    }

    #[test]
    fn headless_service_publishes_pods_before_they_are_ready() {
        let dc = cache(json!({}));
        let service = desired_headless_service(&dc);
        let spec = service.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(pod_api_addr(&dc, 2), "cache-2.cache-peers.prod.svc:7000");
        assert_eq!(
            selector_string(&dc),
            "app.kubernetes.io/instance=cache,app.kubernetes.io/name=dcache"
        );
    }

    /// The container's environment as the kubelet resolves it in pod `ordinal`: field
    /// references filled in, and `$(VAR)` expanded only from variables defined earlier
    /// in the list (the kubelet leaves a later or unknown one as written).
    fn resolved_env(dc: &DistributedCache, ordinal: usize) -> BTreeMap<String, String> {
        let sts = desired_statefulset(dc, 3, 1 << 29);
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let mut resolved: BTreeMap<String, String> = BTreeMap::new();
        for var in pod.containers[0].env.clone().unwrap() {
            let value = match (var.value, var.value_from) {
                (Some(mut value), None) => {
                    for (name, earlier) in &resolved {
                        value = value.replace(&format!("$({name})"), earlier);
                    }
                    value
                }
                (None, Some(from)) => match from.field_ref.unwrap().field_path.as_str() {
                    "metadata.name" => pod_name(dc, ordinal),
                    "metadata.namespace" => dc.namespace().unwrap(),
                    other => panic!("{}: an unexpected field {other}", var.name),
                },
                _ => panic!("{}: a value or a field reference", var.name),
            };
            resolved.insert(var.name, value);
        }
        resolved
    }

    #[test]
    fn every_node_listens_for_resp_and_advertises_its_stable_pod_name() {
        let dc = cache(json!({}));
        let env = resolved_env(&dc, 1);
        assert_eq!(env["DCACHE_RESP_LISTEN"], "0.0.0.0:6379");
        // What CLUSTER SLOTS and MOVED send Redis Cluster clients to: the pod's own
        // name under the headless Service, like the API and Raft addresses.
        assert_eq!(env["DCACHE_ADVERTISE_RESP"], pod_resp_addr(&dc, 1));
        assert_eq!(pod_resp_addr(&dc, 1), "cache-1.cache-peers.prod.svc:6379");
        assert_eq!(env["DCACHE_ADVERTISE_API"], pod_api_addr(&dc, 1));
        assert_eq!(env["DCACHE_ADVERTISE_RAFT"], pod_raft_addr(&dc, 1));
        assert!(env.values().all(|v| !v.contains("$(")), "{env:?}");
    }

    #[test]
    fn the_resp_port_is_on_the_pods_and_on_both_services() {
        let dc = cache(json!({}));
        let sts = desired_statefulset(&dc, 3, 1 << 29);
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let container_ports: BTreeMap<String, (i32, String)> = pod.containers[0]
            .ports
            .clone()
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), (p.container_port, p.protocol.unwrap())))
            .collect();
        assert_eq!(container_ports["resp"], (RESP_PORT, "TCP".to_owned()));
        assert_eq!(RESP_PORT, 6379, "the port Redis clients expect");
        for service in [desired_headless_service(&dc), desired_client_service(&dc)] {
            let name = service.metadata.name.unwrap();
            let ports = service.spec.unwrap().ports.unwrap();
            let resp = ports
                .iter()
                .find(|p| p.name.as_deref() == Some("resp"))
                .unwrap_or_else(|| panic!("{name} has no resp port"));
            assert_eq!(resp.port, RESP_PORT, "{name}");
            // Every Service port reaches a port the container declares.
            for port in &ports {
                let Some(IntOrString::String(target)) = &port.target_port else {
                    panic!("{name}: {port:?} targets no named port");
                };
                assert!(container_ports.contains_key(target), "{name}: {target}");
                assert_eq!(port.protocol.as_deref(), Some("TCP"));
            }
        }
    }

    #[test]
    fn with_tls_resp_shares_the_api_certificate() {
        let plain = resolved_env(&cache(json!({})), 0);
        let dc = cache(json!({"tls": {"secretName": "cache-tls"}}));
        let tls = resolved_env(&dc, 0);
        // The node serves RESP with the API's certificate: TLS changes nothing about the
        // RESP listener, and no RESP-only setting could disagree with the API's.
        let resp_vars = |env: &BTreeMap<String, String>| {
            env.iter()
                .filter(|(name, _)| name.contains("RESP"))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(resp_vars(&tls), resp_vars(&plain));
        assert_eq!(resp_vars(&tls).len(), 2);
        assert_eq!(tls["DCACHE_TLS_CERT_FILE"], "/etc/dcache/tls/tls.crt");
        // A TLS client following a redirect checks the advertised host against the
        // certificate, which names `*.<name>-peers.<namespace>.svc` (spec.tls's doc).
        let host = tls["DCACHE_ADVERTISE_RESP"].rsplit_once(':').unwrap().0;
        let (pod, rest) = host.split_once('.').unwrap();
        assert_eq!((pod, rest), ("cache-0", "cache-peers.prod.svc"));
        use kube::CustomResourceExt;
        let doc = serde_json::to_string(&crate::crd::DistributedCache::crd()).unwrap();
        assert!(
            doc.contains("*.<name>-peers.<namespace>.svc"),
            "spec.tls's doc"
        );
    }

    #[test]
    fn service_monitor_scrapes_the_peers_service() {
        let dc = cache(json!({"monitoring": {"enabled": true}}));
        let monitor = serde_json::to_value(desired_service_monitor(&dc)).unwrap();
        assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(monitor["kind"], "ServiceMonitor");
        assert_eq!(
            monitor["spec"]["selector"]["matchLabels"]["dcache.io/service"],
            "peers"
        );
        assert_eq!(monitor["metadata"]["ownerReferences"][0]["name"], "cache");
    }
}
