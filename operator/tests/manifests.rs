//! The install manifest grants every permission the operator's calls need.

use serde::Deserialize;

/// (API group, resource, verb) of every call the operator makes: the controller's
/// watches and applies, status, events, the CRD checks and the leader Lease.
const CALLS: &[(&str, &str, &str)] = &[
    ("dcache.io", "distributedcaches", "list"),
    ("dcache.io", "distributedcaches", "watch"),
    ("dcache.io", "distributedcaches/status", "patch"),
    ("apps", "statefulsets", "get"),
    ("apps", "statefulsets", "watch"),
    ("apps", "statefulsets", "patch"),
    ("", "services", "watch"),
    ("", "services", "patch"),
    ("policy", "poddisruptionbudgets", "watch"),
    ("policy", "poddisruptionbudgets", "patch"),
    ("policy", "poddisruptionbudgets", "delete"),
    ("monitoring.coreos.com", "servicemonitors", "patch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "get"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

#[test]
fn the_cluster_role_allows_every_call_the_operator_makes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/operator.yaml");
    let text = std::fs::read_to_string(path).expect("manifests/operator.yaml exists");
    let documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde_yaml::Value::deserialize(document).expect("valid YAML"))
        .collect();
    let role = documents
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let rules: Vec<Rule> = serde_yaml::from_value(role["rules"].clone()).expect("RBAC rules");
    for (group, resource, verb) in CALLS {
        let allowed = rules.iter().any(|rule| {
            rule.api_groups.iter().any(|g| g == group)
                && rule.resources.iter().any(|r| r == resource)
                && rule.verbs.iter().any(|v| v == verb)
        });
        assert!(
            allowed,
            "the ClusterRole does not allow {verb} {group}/{resource}"
        );
    }
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(
        deployment["spec"]["replicas"], 2,
        "a standby for leader election"
    );
}
