//! The binary's subcommands as a user runs them.

use std::process::Command;

#[test]
fn crd_prints_the_checked_in_definition() {
    let output = Command::new(env!("CARGO_BIN_EXE_dcache-operator"))
        .arg("crd")
        .output()
        .expect("dcache-operator runs");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("UTF-8 YAML");
    let checked_in = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/distributedcache.yaml"
    ))
    .expect("crds/distributedcache.yaml exists");
    assert!(
        printed == checked_in,
        "crds/distributedcache.yaml differs from `dcache-operator crd`: run `make crds`"
    );
}

#[test]
fn run_without_a_cluster_fails_with_a_reason() {
    let output = Command::new(env!("CARGO_BIN_EXE_dcache-operator"))
        .args(["run", "--no-leader-election"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("dcache-operator runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Kubernetes configuration"), "{stderr}");
}
