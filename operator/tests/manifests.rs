//! The install paths: the Helm chart lints and renders typed objects under several
//! value sets, manifests/install.yaml is that chart rendered, both grant every
//! permission the operator's calls need, and every file in manifests/ is a typed
//! object (or the chart's dashboard, copied).

mod support;

use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use support::{documents, helm, prometheus_rule, render_chart, repo_path, run_helm};

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
    assert!(
        documents.iter().any(|d| d["kind"] == "ConfigMap"),
        "the Grafana dashboard is on by default, so install.yaml carries it"
    );
}

/// Every object of an install path parses as its typed Kubernetes object, its
/// ClusterRole allows every call the operator makes, and a dashboard ConfigMap holds
/// exactly the chart's dashboard.
fn check_rendered(documents: &[serde_yaml::Value], source: &str) {
    for document in documents {
        parse_typed(document, source);
    }
    let role = documents
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    assert_allows_every_call(role, source);
    let dashboard = std::fs::read_to_string(repo_path(DASHBOARD)).unwrap();
    for config_map in documents.iter().filter(|d| d["kind"] == "ConfigMap") {
        assert_eq!(
            config_map["data"]["dcache.json"].as_str(),
            Some(dashboard.trim_end()),
            "{source}: the dashboard ConfigMap is not {DASHBOARD}"
        );
        assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    }
}

/// The dashboard's one source; manifests/grafana/dcache.json is a copy.
const DASHBOARD: &str = "charts/dcache-operator/dashboards/dcache.json";

/// Parses `document` into the typed object of its kind, failing on unknown kinds and
/// on fields the type does not know (see [`round_trips`]).
fn parse_typed(document: &serde_yaml::Value, source: &str) {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let kind = document["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("{source}: an object without a kind: {document:?}"));
    let parsed = match kind {
        "Namespace" => round_trips::<Namespace>(document),
        "ServiceAccount" => round_trips::<ServiceAccount>(document),
        "ClusterRole" => round_trips::<ClusterRole>(document),
        "ClusterRoleBinding" => round_trips::<ClusterRoleBinding>(document),
        "Service" => round_trips::<Service>(document),
        "Deployment" => round_trips::<Deployment>(document),
        "ConfigMap" => round_trips::<ConfigMap>(document),
        "Secret" => round_trips::<Secret>(document),
        "CustomResourceDefinition" => round_trips::<CustomResourceDefinition>(document),
        "DistributedCache" => round_trips::<dcache_operator::crd::DistributedCache>(document),
        "PrometheusRule" => {
            prometheus_rule(document);
            Ok(())
        }
        "ServiceMonitor" => {
            assert_eq!(document["apiVersion"], "monitoring.coreos.com/v1");
            assert!(document["spec"]["endpoints"][0]["port"].is_string());
            Ok(())
        }
        other => panic!("{source}: an unexpected kind {other}"),
    };
    if let Err(e) = parsed {
        panic!("{source}: {kind} is not a valid typed object: {e}\n{document:?}");
    }
}

/// Parses `document` as a `T` and serialises it back: every field the document sets
/// must come back with its value. Kubernetes types skip fields they do not know, so a
/// misspelt or misplaced field shows up here as one that did not come back.
fn round_trips<T: DeserializeOwned + Serialize>(
    document: &serde_yaml::Value,
) -> Result<(), String> {
    let typed: T = serde_yaml::from_value(document.clone()).map_err(|e| e.to_string())?;
    let original = serde_json::to_value(document).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match lost_field(&original, &back, String::new()) {
        None => Ok(()),
        Some(path) => Err(format!("field {path} is unknown to the type or changed")),
    }
}

/// The first path of `original` that `back` lacks or holds differently.
fn lost_field(
    original: &serde_json::Value,
    back: &serde_json::Value,
    path: String,
) -> Option<String> {
    use serde_json::Value;
    match (original, back) {
        (Value::Object(original), Value::Object(back)) => {
            original.iter().find_map(|(key, value)| {
                let path = format!("{path}.{key}");
                match back.get(key) {
                    Some(back) => lost_field(value, back, path),
                    None => Some(path),
                }
            })
        }
        (Value::Array(original), Value::Array(back)) if original.len() == back.len() => original
            .iter()
            .zip(back)
            .enumerate()
            .find_map(|(i, (original, back))| lost_field(original, back, format!("{path}[{i}]"))),
        (Value::Number(original), Value::Number(back)) => {
            (original.as_f64() != back.as_f64()).then_some(path)
        }
        (original, back) => (original != back).then_some(path),
    }
}

#[test]
fn a_misspelt_field_fails_the_typed_parse() {
    let good: serde_yaml::Value = serde_yaml::from_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, targetPort: http}]}",
    )
    .unwrap();
    assert_eq!(
        round_trips::<k8s_openapi::api::core::v1::Service>(&good),
        Ok(())
    );
    let misspelt: serde_yaml::Value = serde_yaml::from_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, tagetPort: http}]}",
    )
    .unwrap();
    let error = round_trips::<k8s_openapi::api::core::v1::Service>(&misspelt).expect_err("a typo");
    assert!(error.contains(".spec.ports[0].tagetPort"), "{error}");
    let misspelt_cache: serde_yaml::Value = serde_yaml::from_str(
        "apiVersion: dcache.io/v1alpha1\nkind: DistributedCache\nmetadata: {name: a}\nspec: {replica: 3}",
    )
    .unwrap();
    let error =
        round_trips::<dcache_operator::crd::DistributedCache>(&misspelt_cache).expect_err("a typo");
    assert!(error.contains(".spec.replica"), "{error}");
}

#[test]
fn the_helm_chart_lints_renders_typed_objects_and_carries_the_generated_crd() {
    let helm = helm();
    run_helm(&helm, &["lint", "--strict", "charts/dcache-operator"]);
    let value_sets: &[&[&str]] = &[
        &[],
        &[
            "serviceMonitor.enabled=true",
            "cluster.enabled=true",
            "prometheusRule.enabled=true",
            "prometheusRule.labels.release=prometheus",
            "grafanaDashboard.namespace=monitoring",
        ],
        &[
            "replicaCount=1",
            "image.tag=dev",
            "cluster.enabled=true",
            "cluster.spec.replicas=5",
            "grafanaDashboard.enabled=false",
            "prometheusRule.enabled=true",
            "prometheusRule.evictionsHigh.ratio=0.9",
        ],
    ];
    for values in value_sets {
        let rendered = render_chart(&helm, values);
        let documents = documents(&rendered);
        assert!(documents.len() >= 5, "{values:?}: {rendered}");
        check_rendered(&documents, &format!("the chart with {values:?}"));
        let has = |kind: &str| documents.iter().any(|d| d["kind"] == kind);
        let set = |value: &str| values.contains(&value);
        assert_eq!(has("PrometheusRule"), set("prometheusRule.enabled=true"));
        assert_eq!(has("ConfigMap"), !set("grafanaDashboard.enabled=false"));
        assert_eq!(has("ServiceMonitor"), set("serviceMonitor.enabled=true"));
        assert_eq!(has("DistributedCache"), set("cluster.enabled=true"));
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

/// What `helm install` prints once it installed the chart: its NOTES.txt, rendered
/// client-side (`--dry-run=client` needs no cluster) with `values` (`--set` pairs).
fn install_notes(helm: &std::path::Path, values: &[&str]) -> String {
    let mut args = vec![
        "install",
        "dcache",
        "charts/dcache-operator",
        "--dry-run=client",
        "--namespace",
        "dcache-system",
    ];
    for value in values {
        args.extend(["--set", value]);
    }
    let output = run_helm(helm, &args);
    let (_, notes) = output
        .rsplit_once("\nNOTES:\n")
        .unwrap_or_else(|| panic!("helm printed no notes: {output}"));
    notes.to_owned()
}

#[test]
fn the_install_notes_say_how_to_create_a_cache_and_reach_it_over_http_and_resp() {
    let helm = helm();
    let notes = install_notes(&helm, &[]);
    for needed in [
        "kubectl apply -f manifests/examples/minimal.yaml",
        "port-forward svc/cache 7000:7000",
        "curl localhost:7000/cache/greeting",
        "redis-cli -c -h cache.default.svc",
        "port-forward svc/cache 6379:6379",
        "MOVED",
        "cache-peers.default.svc:6379",
    ] {
        assert!(
            notes.contains(needed),
            "the notes lack {needed:?}:\n{notes}"
        );
    }
    assert!(repo_path("manifests/examples/minimal.yaml").is_file());
    // The cache they show is a DistributedCache the CRD's types accept.
    let (_, heredoc) = notes.split_once("<<EOF\n").expect("a cache to apply");
    let (heredoc, _) = heredoc.split_once("\n  EOF").expect("the heredoc's end");
    let yaml: Vec<&str> = heredoc
        .lines()
        .map(|line| line.strip_prefix("  ").unwrap_or(line))
        .collect();
    let documents = documents(&yaml.join("\n"));
    assert_eq!(documents.len(), 1, "{heredoc}");
    assert_eq!(documents[0]["kind"], "DistributedCache");
    parse_typed(&documents[0], "the install notes");

    // With the chart's own cache, they name it, in the release's namespace.
    let notes = install_notes(&helm, &["cluster.enabled=true", "cluster.name=sessions"]);
    for needed in [
        "get dc sessions",
        "port-forward svc/sessions 7000:7000",
        "redis-cli -c -h sessions.dcache-system.svc",
        "sessions-peers.dcache-system.svc:6379",
    ] {
        assert!(
            notes.contains(needed),
            "the notes lack {needed:?}:\n{notes}"
        );
    }
    assert!(
        !notes.contains("<<EOF"),
        "no second cache to create:\n{notes}"
    );
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn every_file_in_manifests_is_typed_objects_or_the_charts_dashboard() {
    let root = repo_path("manifests");
    let dashboard = std::fs::read_to_string(repo_path(DASHBOARD)).unwrap();
    let mut kinds = Vec::new();
    for path in files_under(&root) {
        let name = path.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") => {
                let documents = documents(&text);
                assert!(!documents.is_empty(), "manifests/{name} holds no object");
                for document in &documents {
                    parse_typed(document, &format!("manifests/{name}"));
                    kinds.push((name.clone(), document["kind"].as_str().unwrap().to_owned()));
                }
            }
            Some("json") => assert!(
                text == dashboard,
                "manifests/{name} differs from {DASHBOARD}: run `make manifests`"
            ),
            _ => panic!("manifests/{name}: neither Kubernetes YAML nor the dashboard"),
        }
    }
    for example in ["minimal", "persistence", "auth", "monitoring"] {
        let file = format!("examples/{example}.yaml");
        assert!(
            kinds.contains(&(file.clone(), "DistributedCache".to_owned())),
            "manifests/{file} has no DistributedCache"
        );
    }
    assert!(kinds.contains(&("examples/auth.yaml".to_owned(), "Secret".to_owned())));
    assert!(repo_path("manifests/grafana/dcache.json").is_file());
}

#[test]
fn the_examples_use_what_their_names_say() {
    let example = |name: &str| -> Vec<serde_yaml::Value> {
        let path = repo_path(&format!("manifests/examples/{name}.yaml"));
        documents(&std::fs::read_to_string(path).unwrap())
    };
    let cache = |documents: &[serde_yaml::Value]| {
        let document = documents
            .iter()
            .find(|d| d["kind"] == "DistributedCache")
            .unwrap();
        serde_yaml::from_value::<dcache_operator::crd::DistributedCache>(document.clone()).unwrap()
    };
    assert!(cache(&example("persistence")).spec.persistence.enabled);
    assert!(cache(&example("monitoring")).spec.monitoring.enabled);
    let auth = example("auth");
    let secret_name = cache(&auth).spec.auth.expect("auth is set").secret_name;
    let secret = auth.iter().find(|d| d["kind"] == "Secret").unwrap();
    assert_eq!(
        secret["metadata"]["name"].as_str(),
        Some(secret_name.as_str())
    );
    let tokens = secret["stringData"]["tokens"]
        .as_str()
        .expect("a tokens key");
    for line in tokens.lines() {
        let (token, scopes) = line.split_once(' ').expect("<token> <scopes>");
        assert!(!token.is_empty());
        for scope in scopes.split(',') {
            assert!(["read", "write", "admin"].contains(&scope), "{line}");
        }
    }
}
