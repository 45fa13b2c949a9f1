//! The `DistributedCache` custom resource: its spec (what the user asks for), its status
//! (what the operator saw and did) and the schema rules the API server enforces.

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GROUP: &str = "dcache.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "DistributedCache";
pub const API_VERSION: &str = "dcache.io/v1alpha1";

/// A distributed in-memory cache: a StatefulSet of `dcache-node` pods forming one Raft
/// cluster, sharded over `partitions` and replicated `replicationFactor` times.
// kube's derive takes one `printcolumn(...)` per column, which clippy reads as repeats.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dcache.io",
    version = "v1alpha1",
    kind = "DistributedCache",
    plural = "distributedcaches",
    shortname = "dc",
    namespaced,
    status = "DistributedCacheStatus",
    doc = "A distributed in-memory cache cluster of dcache nodes",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Rebalancing",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Rebalancing\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
// Transition rules: the node fixes partitions and replication at cluster
// initialisation, so a change could only be ignored or, worse, half-applied. The API
// server refuses it with these words.
#[x_kube(
    validation = Rule::new("self.partitions == oldSelf.partitions").message(
        "partitions is fixed when the cluster is created: keep the old value, or create a new DistributedCache to change it"
    ),
    validation = Rule::new("self.replicationFactor == oldSelf.replicationFactor").message(
        "replicationFactor is fixed when the cluster is created: keep the old value, or create a new DistributedCache to change it"
    ),
    // A StatefulSet's volume claim templates cannot change after it is created.
    validation = Rule::new("self.persistence == oldSelf.persistence").message(
        "persistence is fixed when the cluster is created (StatefulSet volume claims cannot change): keep the old value, or create a new DistributedCache to change it"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = kubernetes_formats)]
pub struct DistributedCacheSpec {
    /// Cache nodes (pods). Scaling drains or fills ring membership before pods go or
    /// after they come.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,

    /// Container image whose entrypoint is dcache-node.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1))]
    pub image: String,

    /// Pull policy of the image (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// CPU and memory of each node container. Give the memory limit headroom over
    /// maxMemory (Raft logs, connections, the runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Memory budget for cached entries per node, a Kubernetes quantity (512Mi, 2Gi).
    #[serde(default = "default_max_memory")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub max_memory: String,

    /// What makes room when a node's budget is full.
    #[serde(default)]
    pub eviction_policy: EvictionPolicy,

    /// Partitions the key space hashes into, 1 to 4096 (what dcache-node accepts).
    /// Partitions are contiguous ranges of Redis Cluster's 16,384 hash slots. Fixed for
    /// the life of the cluster.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 4096))]
    pub partitions: u32,

    /// Replicas of each partition (a Raft group each). Fixed for the life of the cluster.
    #[serde(default = "default_replication_factor")]
    #[schemars(range(min = 1, max = 5))]
    pub replication_factor: u8,

    /// TTL in seconds for writes that give none; unset, such keys never expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub default_ttl_seconds: Option<u64>,

    /// A PersistentVolumeClaim per node.
    #[serde(default)]
    pub persistence: Persistence,

    /// A Prometheus Operator ServiceMonitor for the nodes.
    #[serde(default)]
    pub monitoring: Monitoring,

    /// Secret whose key `tokens` holds the API tokens (`<token> <scope>[,<scope>...]`
    /// per line, scopes read, write, admin). Turns authentication on: the nodes then
    /// refuse calls without a token, and Raft traffic carries a cluster secret that the
    /// operator generates (in a Secret `<name>-internal` it owns, with its own admin
    /// token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SecretReference>,

    /// TLS Secret (as cert-manager writes it: `tls.crt`, `tls.key`, `ca.crt`) for the
    /// API (HTTP and the Redis protocol port, one certificate) and Raft. The certificate
    /// must name the pods, `*.<name>-peers.<namespace>.svc` (Redis Cluster clients are
    /// redirected to those names), and the client Service `<name>.<namespace>.svc`;
    /// renewals are picked up without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SecretReference>,

    /// Where pods may run.
    #[serde(default)]
    pub scheduling: Scheduling,

    /// The PodDisruptionBudget that keeps voluntary evictions within Raft quorum.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
}

fn default_replicas() -> i32 {
    3
}
/// The image `make image` builds (entrypoint dcache-node), at this operator's version.
fn default_image() -> String {
    concat!("dcache/dcache:", env!("CARGO_PKG_VERSION")).to_owned()
}
fn default_max_memory() -> String {
    "512Mi".to_owned()
}
fn default_partitions() -> u32 {
    64
}
fn default_replication_factor() -> u8 {
    3
}
fn default_true() -> bool {
    true
}
fn default_volume_size() -> String {
    "1Gi".to_owned()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EvictionPolicy {
    /// Frequency-based admission; resists scans.
    #[default]
    Tinylfu,
    /// Least recently used goes first.
    Lru,
}

impl EvictionPolicy {
    pub fn as_flag(self) -> &'static str {
        match self {
            Self::Tinylfu => "tinylfu",
            Self::Lru => "lru",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    #[serde(default)]
    pub enabled: bool,
    /// Size of each node's volume, a Kubernetes quantity.
    // Bounded lengths keep the CEL immutability rule's estimated cost low.
    #[serde(default = "default_volume_size")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"), length(max = 32))]
    pub size: String,
    /// StorageClass of the volumes; unset, the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

impl Default for Persistence {
    fn default() -> Self {
        Self {
            enabled: false,
            size: default_volume_size(),
            storage_class_name: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Monitoring {
    /// Create a ServiceMonitor (needs the Prometheus Operator's CRD installed).
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of a Secret in the resource's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Replaces the default spread (one node per host where possible, zones evened out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct PodDisruptionBudgetSpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// What the operator saw and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = kubernetes_formats)]
pub struct DistributedCacheStatus {
    /// Pods of the StatefulSet (the scale subresource reads it).
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, for the scale subresource (HPA, kubectl scale).
    #[serde(default)]
    pub selector: String,
    #[serde(default)]
    pub phase: Phase,
    #[serde(default)]
    pub observed_generation: i64,
    /// The Raft cluster these pods formed; never re-initialised silently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Ring members, as the cluster reports them.
    #[serde(default)]
    pub members: Vec<String>,
    /// Former members still being drained.
    #[serde(default)]
    pub leaving: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceStatus>,
    /// Partitions that lost their data and were re-formed empty.
    #[serde(default)]
    pub lost_partitions: Vec<LostPartitionStatus>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Pods are being created or the cluster initialised.
    #[default]
    Creating,
    /// Every member serves and holds what the placement wants.
    Running,
    /// Pods are being added and the ring filled.
    ScalingUp,
    /// Members are being drained before their pods go.
    ScalingDown,
    /// Replicas are moving to match the placement.
    Rebalancing,
    /// Something needs a human: see the Degraded condition.
    Degraded,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceStatus {
    /// The ring epoch this progress is about.
    pub epoch: u64,
    pub replicas_to_move: u64,
    pub moving: u64,
    pub moved: u64,
    pub bytes_moved: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LostPartitionStatus {
    pub partition: u32,
    pub epoch: u64,
    pub at_unix_ms: u64,
    pub reason: String,
}

/// Formats the API server knows on a string (or untyped) field: the list of
/// apiextensions-apiserver (`pkg/apiserver/validation/formats.go`), written without
/// `-` as it compares them (`date-time` is `datetime`). Only those every version knows:
/// `quantity`, `k8s-short-name` and `k8s-long-name` came later, and an older API
/// server would warn about them.
pub const KUBERNETES_STRING_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
];

/// Whether the API server knows `format` on a schema of type `type_` (None: no single
/// type), by the rule it applies: `int32` and `int64` on integers, `float` and `double`
/// on numbers, [`KUBERNETES_STRING_FORMATS`] on strings and untyped schemas, nothing on
/// any other type. It ignores any other format, and `kubectl apply` prints a warning
/// (`unrecognized format "uint64"`) for each.
pub fn kubernetes_knows_format(type_: Option<&str>, format: &str) -> bool {
    match type_ {
        None | Some("string") => {
            KUBERNETES_STRING_FORMATS.contains(&format.replace('-', "").as_str())
        }
        Some("integer") => matches!(format, "int32" | "int64"),
        Some("number") => matches!(format, "float" | "double"),
        Some(_) => false,
    }
}

/// A schemars transform, on the spec and the status (and so on everything inlined in
/// them), that drops every `format` the API server does not know: schemars writes
/// `uint8`, `uint32` and `uint64` for Rust's unsigned integers. Their bounds stay
/// (`minimum: 0`, or the field's own range), so nothing the API server checks is lost.
fn kubernetes_formats(schema: &mut schemars::Schema) {
    if let Some(object) = schema.as_object_mut() {
        // `Option<T>` is `[T, "null"]` until kube turns it into `nullable`.
        let type_ = match object.get("type") {
            Some(serde_json::Value::String(type_)) => Some(type_.clone()),
            Some(serde_json::Value::Array(types)) => {
                let mut named = types
                    .iter()
                    .filter_map(|t| t.as_str())
                    .filter(|t| *t != "null");
                match (named.next(), named.next()) {
                    (Some(type_), None) => Some(type_.to_owned()),
                    _ => None,
                }
            }
            _ => None,
        };
        let unknown = match object.get("format").and_then(|f| f.as_str()) {
            Some(format) => !kubernetes_knows_format(type_.as_deref(), format),
            None => false,
        };
        if unknown {
            object.remove("format");
        }
    }
    schemars::transform::transform_subschemas(&mut kubernetes_formats, schema);
}

/// The CRD as YAML, exactly what `dcache-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> String {
    let crd = DistributedCache::crd();
    serde_yaml::to_string(&crd).expect("a CRD serialises to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_an_almost_empty_spec() {
        let spec: DistributedCacheSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.partitions, 64);
        assert_eq!(spec.replication_factor, 3);
        assert_eq!(spec.max_memory, "512Mi");
        assert_eq!(spec.eviction_policy, EvictionPolicy::Tinylfu);
        assert!(!spec.persistence.enabled);
        assert!(spec.pod_disruption_budget.enabled);
    }

    #[test]
    fn schema_carries_ranges_enums_and_immutability_rules() {
        let crd = serde_json::to_value(DistributedCache::crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let props = &spec["properties"];
        let number = |field: &str, key: &str| props[field][key].as_f64();
        assert_eq!(number("partitions", "minimum"), Some(1.0));
        assert_eq!(number("partitions", "maximum"), Some(4096.0));
        assert_eq!(number("partitions", "default"), Some(64.0));
        let partitions = props["partitions"]["description"].as_str().unwrap();
        assert!(
            partitions.contains("contiguous ranges of Redis Cluster's 16,384 hash slots"),
            "{partitions}"
        );
        assert_eq!(number("replicationFactor", "minimum"), Some(1.0));
        assert_eq!(number("replicationFactor", "maximum"), Some(5.0));
        assert_eq!(number("replicas", "minimum"), Some(1.0));
        let policies = serde_json::to_string(&props["evictionPolicy"]).unwrap();
        assert!(
            policies.contains("tinylfu") && policies.contains("lru"),
            "{policies}"
        );
        let rules = serde_json::to_string(&spec["x-kubernetes-validations"]).unwrap();
        assert!(
            rules.contains("self.partitions == oldSelf.partitions"),
            "{rules}"
        );
        assert!(rules.contains("self.replicationFactor == oldSelf.replicationFactor"));
        assert!(rules.contains("self.persistence == oldSelf.persistence"));
        assert_eq!(
            version["subresources"]["scale"]["labelSelectorPath"],
            ".status.selector"
        );
        assert!(version["subresources"]["status"].is_object());
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "dc");
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Desired", "Ready", "Phase", "Rebalancing", "Age"]);
    }

    /// `(where, type, format)` of every `format` in the CRD's schema, at any depth.
    fn formats(value: &serde_json::Value, path: &str, out: &mut Vec<(String, String, String)>) {
        match value {
            serde_json::Value::Object(object) => {
                // A property called `format` is an object, not a string: not a format.
                if let Some(format) = object.get("format").and_then(|f| f.as_str()) {
                    let type_ = object.get("type").and_then(|t| t.as_str()).unwrap_or("");
                    out.push((path.to_owned(), type_.to_owned(), format.to_owned()));
                }
                for (key, value) in object {
                    formats(value, &format!("{path}.{key}"), out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    formats(item, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_format_in_the_schema_is_one_kubernetes_knows() {
        let crd = serde_json::to_value(DistributedCache::crd()).unwrap();
        let mut found = Vec::new();
        for (i, version) in crd["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let schema = &version["schema"]["openAPIV3Schema"];
            assert!(schema.is_object());
            formats(schema, &format!("versions[{i}]"), &mut found);
        }
        let unknown: Vec<_> = found
            .iter()
            .filter(|(_, type_, format)| {
                !kubernetes_knows_format((!type_.is_empty()).then_some(type_.as_str()), format)
            })
            .collect();
        assert!(
            unknown.is_empty(),
            "formats `kubectl apply` warns about: {unknown:?}"
        );
        // What it keeps: the k8s-openapi types' int32 and int64, Condition's date-time.
        let kept: std::collections::BTreeSet<&str> =
            found.iter().map(|(_, _, format)| format.as_str()).collect();
        assert!(kept.contains("int32") && kept.contains("int64"), "{kept:?}");
        assert!(kept.contains("date-time"), "{kept:?}");

        // The unsigned fields lost their format, not their bounds.
        let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        let spec = &props["spec"]["properties"];
        assert_eq!(spec["replicas"]["format"], "int32");
        for (field, minimum) in [
            ("partitions", 1.0),
            ("replicationFactor", 1.0),
            ("defaultTtlSeconds", 1.0),
        ] {
            assert!(spec[field].get("format").is_none(), "{field}");
            assert_eq!(spec[field]["type"], "integer", "{field}");
            assert_eq!(spec[field]["minimum"].as_f64(), Some(minimum), "{field}");
        }
        assert_eq!(spec["defaultTtlSeconds"]["nullable"], true);
        let rebalance = &props["status"]["properties"]["rebalance"]["properties"];
        assert!(rebalance["epoch"].get("format").is_none());
        assert_eq!(rebalance["epoch"]["minimum"].as_f64(), Some(0.0));
    }

    #[test]
    fn the_format_check_follows_the_api_servers_rule() {
        for (type_, format) in [
            (Some("integer"), "int32"),
            (Some("integer"), "int64"),
            (Some("number"), "double"),
            (Some("string"), "date-time"),
            (Some("string"), "byte"),
            (None, "uuid"),
        ] {
            assert!(kubernetes_knows_format(type_, format), "{type_:?} {format}");
        }
        for (type_, format) in [
            (Some("integer"), "uint64"),
            (Some("integer"), "uint8"),
            (Some("integer"), "uint32"),
            (Some("integer"), "date-time"),
            (Some("string"), "int32"),
            (Some("boolean"), "int32"),
            (Some("string"), "uint64"),
        ] {
            assert!(
                !kubernetes_knows_format(type_, format),
                "{type_:?} {format}"
            );
        }

        // The transform drops those, in nested and nullable schemas too.
        let mut schema = schemars::json_schema!({
            "type": "object",
            "properties": {
                "a": {"type": "integer", "format": "uint64", "minimum": 0},
                "b": {"type": ["integer", "null"], "format": "uint8"},
                "c": {"type": "array", "items": {"type": "integer", "format": "int32"}},
                "format": {"type": "string", "format": "date-time"},
            },
        });
        kubernetes_formats(&mut schema);
        let properties = &schema.as_value()["properties"];
        assert_eq!(
            properties["a"],
            serde_json::json!({"type": "integer", "minimum": 0})
        );
        assert!(properties["b"].get("format").is_none());
        assert_eq!(properties["c"]["items"]["format"], "int32");
        assert_eq!(properties["format"]["format"], "date-time");
    }

    #[test]
    fn checked_in_crd_matches_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/distributedcache.yaml");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == crd_yaml(),
            "crds/distributedcache.yaml is out of date: run `make crds` and commit it"
        );
    }
}
