//! The install paths: the Helm chart lints and renders typed objects under several
//! value sets, manifests/install.yaml is that chart rendered, and both grant every
//! permission the operator's calls need.

use serde::Deserialize;

/// (API group, resource, verb) of every call the operator makes: the controller's
/// watches and applies, status, events, the CRD checks, the leader Lease and the
/// Secrets of caches with auth or TLS.
const CALLS: &[(&str, &str, &str)] = &[
    ("dcache.io", "distributedcaches", "list"),
    ("dcache.io", "distributedcaches", "watch"),
    ("dcache.io", "distributedcaches/status", "patch"),
    ("apps", "statefulsets", "get"),
    ("apps", "statefulsets", "watch"),
    ("apps", "statefulsets", "patch"),
    ("", "services", "watch"),
    ("", "services", "patch"),
    ("", "secrets", "get"),
    ("", "secrets", "create"),
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

/// Fails unless `role` (a ClusterRole document) allows every call in [`CALLS`].
fn assert_allows_every_call(role: &serde_yaml::Value, source: &str) {
    let rules: Vec<Rule> = serde_yaml::from_value(role["rules"].clone()).expect("RBAC rules");
    for (group, resource, verb) in CALLS {
        let allowed = rules.iter().any(|rule| {
            rule.api_groups.iter().any(|g| g == group)
                && rule.resources.iter().any(|r| r == resource)
                && rule.verbs.iter().any(|v| v == verb)
        });
        assert!(
            allowed,
            "{source}: the ClusterRole does not allow {verb} {group}/{resource}"
        );
    }
}

fn documents(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| serde_yaml::Value::deserialize(document).expect("valid YAML"))
        .filter(|document| !document.is_null())
        .collect()
}

fn repo_path(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn install_yaml_is_the_rendered_chart_and_grants_every_call() {
    let text = std::fs::read_to_string(repo_path("manifests/install.yaml"))
        .expect("manifests/install.yaml exists");
    let rendered = std::process::Command::new("bash")
        .arg(repo_path("tools/render-install.sh"))
        .output()
        .expect("bash runs tools/render-install.sh");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(
        String::from_utf8(rendered.stdout).unwrap() == text,
        "manifests/install.yaml is stale: run `make manifests`"
    );
    let documents = documents(&text);
    check_rendered(&documents, "manifests/install.yaml");
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    assert_eq!(
        deployment["spec"]["replicas"], 2,
        "a standby for leader election"
    );
}

/// helm and kubectl, installed by the project's own script when missing.
fn helm() -> std::path::PathBuf {
    let output = std::process::Command::new("bash")
        .arg(repo_path("tools/k8s-tools.sh"))
        .output()
        .expect("bash runs tools/k8s-tools.sh");
    assert!(
        output.status.success(),
        "tools/k8s-tools.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::path::PathBuf::from(String::from_utf8(output.stdout).unwrap().trim()).join("helm")
}

fn run_helm(helm: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(helm)
        .args(args)
        .current_dir(repo_path(""))
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "helm {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Every object of an install path parses as its typed Kubernetes object, and its
/// ClusterRole allows every call the operator makes.
fn check_rendered(documents: &[serde_yaml::Value], source: &str) {
    for document in documents
        .iter()
        .filter(|d| d["kind"] != "CustomResourceDefinition")
    {
        parse_typed(document);
    }
    let role = documents
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    assert_allows_every_call(role, source);
}

/// Parses `document` into the typed Kubernetes object of its kind; unknown kinds fail.
fn parse_typed(document: &serde_yaml::Value) {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let kind = document["kind"].as_str().expect("every object has a kind");
    let value = document.clone();
    let parsed = match kind {
        "Namespace" => serde_yaml::from_value::<Namespace>(value).map(drop),
        "ServiceAccount" => serde_yaml::from_value::<ServiceAccount>(value).map(drop),
        "ClusterRole" => serde_yaml::from_value::<ClusterRole>(value).map(drop),
        "ClusterRoleBinding" => serde_yaml::from_value::<ClusterRoleBinding>(value).map(drop),
        "Service" => serde_yaml::from_value::<Service>(value).map(drop),
        "Deployment" => serde_yaml::from_value::<Deployment>(value).map(drop),
        "DistributedCache" => {
            serde_yaml::from_value::<dcache_operator::crd::DistributedCache>(value).map(drop)
        }
        "ServiceMonitor" => {
            assert_eq!(document["apiVersion"], "monitoring.coreos.com/v1");
            assert!(document["spec"]["endpoints"][0]["port"].is_string());
            Ok(())
        }
        other => panic!("the chart renders an unexpected kind {other}"),
    };
    if let Err(e) = parsed {
        panic!("{kind} does not parse as a Kubernetes object: {e}\n{document:?}");
    }
}

#[test]
fn the_helm_chart_lints_renders_typed_objects_and_carries_the_generated_crd() {
    let helm = helm();
    run_helm(&helm, &["lint", "--strict", "charts/dcache-operator"]);
    let value_sets: &[&[&str]] = &[
        &[],
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "cluster.enabled=true",
        ],
        &[
            "--set",
            "replicaCount=1",
            "--set",
            "image.tag=dev",
            "--set",
            "cluster.enabled=true",
            "--set",
            "cluster.spec.replicas=5",
        ],
    ];
    for values in value_sets {
        let mut args = vec![
            "template",
            "dcache",
            "charts/dcache-operator",
            "--namespace",
            "dcache-system",
            "--include-crds",
        ];
        args.extend_from_slice(values);
        let rendered = run_helm(&helm, &args);
        let documents = documents(&rendered);
        assert!(documents.len() >= 5, "{values:?}: {rendered}");
        check_rendered(&documents, "the chart");
    }
    let chart_crd = std::fs::read_to_string(repo_path(
        "charts/dcache-operator/crds/distributedcache.yaml",
    ))
    .expect("the chart carries the CRD");
    let generated = std::fs::read_to_string(repo_path("crds/distributedcache.yaml")).unwrap();
    assert_eq!(
        chart_crd, generated,
        "run `make crds` to refresh the chart's copy of the CRD"
    );
}
