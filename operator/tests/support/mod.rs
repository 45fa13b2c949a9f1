//! What several of the operator's integration tests need: the repository's files, helm,
//! the node binary, and the Prometheus Operator's PrometheusRule (which k8s-openapi
//! does not carry).

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// `path` from the repository root.
pub fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The non-empty documents of a YAML stream.
pub fn documents(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| serde_yaml::Value::deserialize(document).expect("valid YAML"))
        .filter(|document| !document.is_null())
        .collect()
}

/// helm, installed with kubectl by the project's own script when missing.
pub fn helm() -> PathBuf {
    let output = Command::new("bash")
        .arg(repo_path("tools/k8s-tools.sh"))
        .output()
        .expect("bash runs tools/k8s-tools.sh");
    assert!(
        output.status.success(),
        "tools/k8s-tools.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim()).join("helm")
}

/// helm's output; fails the test with helm's words when it fails.
pub fn run_helm(helm: &Path, args: &[&str]) -> String {
    let output = Command::new(helm)
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

/// The chart rendered in namespace `dcache-system`, CRD included, with `values`
/// (`--set` pairs).
pub fn render_chart(helm: &Path, values: &[&str]) -> String {
    let mut args = vec![
        "template",
        "dcache",
        "charts/dcache-operator",
        "--namespace",
        "dcache-system",
        "--include-crds",
    ];
    for value in values {
        args.extend(["--set", value]);
    }
    run_helm(helm, &args)
}

/// `<target>/debug/dcache-node`, built if missing: the test executable lives in
/// `<target>/debug/deps/`. `cargo test --workspace` builds it fresh; building it
/// here every time would resolve features for one package and rebuild half the
/// dependency tree.
pub fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in <target>/<profile>/deps");
    let binary = profile_dir.join("dcache-node");
    if !binary.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "dcache-node", "--locked"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building dcache-node failed");
    }
    binary
}

/// A `monitoring.coreos.com/v1` PrometheusRule, as far as the chart writes one; an
/// unknown field anywhere fails to parse, as the API server's schema would refuse it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusRule {
    pub api_version: String,
    pub kind: String,
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub spec: PrometheusRuleSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusRuleSpec {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    #[serde(default)]
    pub interval: Option<String>,
    pub rules: Vec<AlertingRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingRule {
    pub alert: String,
    pub expr: String,
    #[serde(default, rename = "for")]
    pub pending_for: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// The PrometheusRule among `documents`, typed; fails when it is not one.
pub fn prometheus_rule(document: &serde_yaml::Value) -> PrometheusRule {
    let rule: PrometheusRule = serde_yaml::from_value(document.clone())
        .unwrap_or_else(|e| panic!("not a PrometheusRule: {e}\n{document:?}"));
    assert_eq!(rule.api_version, "monitoring.coreos.com/v1");
    assert_eq!(rule.kind, "PrometheusRule");
    rule
}
