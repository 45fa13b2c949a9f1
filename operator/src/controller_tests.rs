//! Reconcile against a mocked API server and fake nodes: every request asserted in
//! order, then answered.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::runtime::controller::Action;
use serde_json::json;

use super::{error_policy, reconcile};
use crate::crd::{DistributedCache, DistributedCacheStatus, Phase};
use crate::fixtures::*;

/// Runs one reconcile of `dc` while `script` plays the API server; returns its action.
async fn reconcile_with<F, Fut>(dc: DistributedCache, nodes: &Arc<FakeNodes>, script: F) -> Action
where
    F: FnOnce(ApiServer) -> Fut,
    Fut: std::future::Future<Output = ApiServer>,
{
    let (ctx, server) = context(nodes.clone());
    let running = tokio::spawn(reconcile(Arc::new(dc), ctx));
    let mut server = script(server).await;
    let finished = tokio::time::timeout(Duration::from_secs(5), running).await;
    let Ok(joined) = finished else {
        let extra = server.next_unanswered().await;
        panic!("reconcile still waits on a request the script did not expect: {extra}");
    };
    let action = joined
        .expect("reconcile did not panic")
        .expect("reconcile succeeded");
    server.expect_nothing_more().await;
    action
}

#[tokio::test]
async fn creates_services_budget_and_statefulset_from_nothing() {
    let nodes = Arc::new(FakeNodes::default());
    let mut written = None;
    let action = reconcile_with(cache(json!({"replicas": 3})), &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server.expect_statefulset_read(None).await;
        let (replicas, sts) = server.expect_statefulset_apply().await;
        assert_eq!(replicas, 3);
        assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
        // The Redis protocol door: listened on, advertised by pod name, declared.
        let container = &sts["spec"]["template"]["spec"]["containers"][0];
        let env = container["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "DCACHE_RESP_LISTEN", "value": "0.0.0.0:6379"})));
        assert!(env.contains(&json!({"name": "DCACHE_ADVERTISE_RESP",
            "value": "$(POD_NAME).cache-peers.$(POD_NAMESPACE).svc:6379"})));
        assert!(
            container["ports"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "resp", "containerPort": 6379, "protocol": "TCP"}))
        );
        written = Some(server.expect_status().await);
        server
    })
    .await;
    let status = written.unwrap();
    assert_eq!(status.phase, Phase::Creating);
    assert_eq!(status.replicas, 3);
    assert_eq!(
        status.selector,
        "app.kubernetes.io/instance=cache,app.kubernetes.io/name=dcache"
    );
    assert_eq!(status.cluster_id, None);
    assert_eq!(condition(&status, "Ready").0, "False");
    assert!(nodes.calls().is_empty(), "no pods yet, no admin call");
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
}

#[tokio::test]
async fn initialises_the_cluster_once_its_pods_answer_and_records_the_id() {
    let nodes = Arc::new(FakeNodes::default());
    nodes.set_healthy(0..3);
    let mut written = None;
    reconcile_with(cache(json!({"replicas": 3})), &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(3, 0)))
            .await;
        assert_eq!(server.expect_statefulset_apply().await.0, 3);
        let note = server.expect_event("ClusterInitialized").await;
        assert!(note.contains(CLUSTER_ID), "{note}");
        written = Some(server.expect_status().await);
        server
    })
    .await;
    assert_eq!(
        nodes.calls(),
        [format!("init {CLUSTER_ID} cache-0,cache-1,cache-2")]
    );
    let status = written.unwrap();
    assert_eq!(status.cluster_id.as_deref(), Some(CLUSTER_ID));

    // The next round finds the cluster formed and does not initialise again.
    let dc = with_status(cache(json!({"replicas": 3})), status);
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(3, 0)))
            .await;
        server.expect_statefulset_apply().await;
        let status = server.expect_status().await;
        assert_eq!(status.phase, Phase::Rebalancing);
        server
    })
    .await;
    assert_eq!(nodes.calls().len(), 1);
}

#[tokio::test]
async fn a_spec_update_is_applied_to_the_statefulset_without_touching_the_ring() {
    let nodes = Arc::new(FakeNodes::default());
    nodes.set_healthy(0..3);
    nodes.set_cluster(0..3, &[], true);
    let spec = json!({"replicas": 3, "image": "dcache/dcache-node:0.2.0", "maxMemory": "1Gi"});
    let dc = with_status(cache(spec), running_status(3));
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(3, 3)))
            .await;
        let (replicas, sts) = server.expect_statefulset_apply().await;
        assert_eq!(replicas, 3);
        let container = &sts["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "dcache/dcache-node:0.2.0");
        let env = container["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "DCACHE_MAX_MEMORY", "value": "1073741824"})));
        assert_eq!(sts["spec"]["updateStrategy"]["type"], "RollingUpdate");
        let status = server.expect_status().await;
        assert_eq!(status.phase, Phase::Running);
        assert_eq!(condition(&status, "Ready").0, "True");
        server
    })
    .await;
    assert!(nodes.calls().is_empty());
}

#[tokio::test]
async fn scales_up_in_steps_pods_first_then_members_then_rebalance() {
    let nodes = Arc::new(FakeNodes::default());
    nodes.set_healthy(0..3);
    nodes.set_cluster(0..3, &[], true);
    let spec = json!({"replicas": 5});

    // 1: the StatefulSet grows; the new pods are not up, so the ring waits.
    let dc = with_status(cache(spec.clone()), running_status(3));
    let mut status = DistributedCacheStatus::default();
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(3, 3)))
            .await;
        assert_eq!(server.expect_statefulset_apply().await.0, 5);
        assert!(
            server
                .expect_event("StatefulSetScaled")
                .await
                .contains("3 -> 5")
        );
        status = server.expect_status().await;
        server
    })
    .await;
    assert_eq!(status.phase, Phase::ScalingUp);
    let (rebalancing, reason, message) = condition(&status, "Rebalancing");
    assert_eq!(
        (rebalancing.as_str(), reason.as_str()),
        ("True", "WaitingForPods")
    );
    assert!(message.contains("cache-3, cache-4"), "{message}");
    assert!(
        nodes.calls().is_empty(),
        "no member added before its pod is up"
    );

    // 2: the pods answer /health: they join the ring.
    nodes.set_healthy(0..5);
    let dc = with_status(cache(spec.clone()), status.clone());
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(5, 3)))
            .await;
        assert_eq!(server.expect_statefulset_apply().await.0, 5);
        server.expect_event("MembersChanged").await;
        status = server.expect_status().await;
        server
    })
    .await;
    assert_eq!(
        nodes.calls(),
        ["members cache-0,cache-1,cache-2,cache-3,cache-4"]
    );
    assert_eq!(status.phase, Phase::ScalingUp);

    // 3: replicas move; status shows the progress.
    let dc = with_status(cache(spec.clone()), status.clone());
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(5, 3)))
            .await;
        server.expect_statefulset_apply().await;
        status = server.expect_status().await;
        server
    })
    .await;
    assert_eq!(status.phase, Phase::Rebalancing);
    assert_eq!(status.members.len(), 5);
    let progress = status.rebalance.clone().unwrap();
    assert_eq!((progress.replicas_to_move, progress.moving), (4, 2));

    // 4: the balancer is done: an event, Running and Ready.
    nodes.finish_rebalance();
    let dc = with_status(cache(spec.clone()), status.clone());
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(5, 5)))
            .await;
        server.expect_statefulset_apply().await;
        server.expect_event("RebalanceDone").await;
        status = server.expect_status().await;
        server
    })
    .await;
    assert_eq!(status.phase, Phase::Running);
    assert_eq!(condition(&status, "Ready").0, "True");
    assert_eq!(condition(&status, "Rebalancing").0, "False");
    assert_eq!(nodes.calls().len(), 1);
}

#[tokio::test]
async fn scales_down_in_steps_and_shrinks_the_statefulset_only_after_the_drain() {
    let nodes = Arc::new(FakeNodes::default());
    nodes.set_healthy(0..5);
    nodes.set_cluster(0..5, &[], true);
    let spec = json!({"replicas": 3});

    // 1: the leaving members are taken out of the ring; every pod stays.
    let dc = with_status(cache(spec.clone()), running_status(5));
    let mut status = DistributedCacheStatus::default();
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(5, 5)))
            .await;
        assert_eq!(server.expect_statefulset_apply().await.0, 5);
        server.expect_event("MembersChanged").await;
        status = server.expect_status().await;
        server
    })
    .await;
    assert_eq!(nodes.calls(), ["members cache-0,cache-1,cache-2"]);
    assert_eq!(status.phase, Phase::ScalingDown);

    // 2: they are still draining: the StatefulSet keeps five pods.
    let dc = with_status(cache(spec.clone()), status.clone());
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(5, 5)))
            .await;
        assert_eq!(
            server.expect_statefulset_apply().await.0,
            5,
            "no shrink before the drain"
        );
        status = server.expect_status().await;
        server
    })
    .await;
    assert_eq!(status.phase, Phase::ScalingDown);
    assert_eq!(status.leaving, ["cache-3", "cache-4"]);
    assert_eq!(condition(&status, "Rebalancing").1, "Draining");

    // 3: the cluster reports them drained: now the pods go.
    nodes.finish_rebalance();
    let dc = with_status(cache(spec.clone()), status.clone());
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(5, 5)))
            .await;
        assert_eq!(server.expect_statefulset_apply().await.0, 3);
        assert!(
            server
                .expect_event("StatefulSetScaled")
                .await
                .contains("5 -> 3")
        );
        server.expect_event("RebalanceDone").await;
        status = server.expect_status().await;
        server
    })
    .await;
    assert_eq!(status.phase, Phase::Running);
    assert!(status.leaving.is_empty());
    assert_eq!(nodes.calls().len(), 1);
}

#[tokio::test]
async fn a_resource_being_deleted_is_left_to_the_garbage_collector() {
    let nodes = Arc::new(FakeNodes::default());
    nodes.set_healthy(0..3);
    nodes.set_cluster(0..3, &[], true);
    let mut dc = with_status(cache(json!({"replicas": 3})), running_status(3));
    dc.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let action = reconcile_with(dc, &nodes, |server| async { server }).await;
    assert_eq!(action, Action::await_change());
    assert!(nodes.calls().is_empty());
}

#[tokio::test]
async fn a_bad_spec_is_reported_in_the_degraded_condition_and_nothing_is_applied() {
    let nodes = Arc::new(FakeNodes::default());
    let mut written = None;
    let action = reconcile_with(
        cache(json!({"maxMemory": "lots"})),
        &nodes,
        |mut server| async {
            let note = server.expect_event("InvalidSpec").await;
            assert!(note.contains("maxMemory"), "{note}");
            written = Some(server.expect_status().await);
            server
        },
    )
    .await;
    let status = written.unwrap();
    assert_eq!(status.phase, Phase::Degraded);
    let (degraded, reason, message) = condition(&status, "Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(message.contains("512Mi or 2Gi"), "{message}");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn nodes_that_forgot_their_cluster_are_degraded_not_reinitialised() {
    let nodes = Arc::new(FakeNodes::default());
    nodes.set_healthy(0..3);
    let dc = with_status(cache(json!({"replicas": 3})), running_status(3));
    let mut written = None;
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(3, 3)))
            .await;
        assert_eq!(server.expect_statefulset_apply().await.0, 3);
        written = Some(server.expect_status().await);
        server
    })
    .await;
    let status = written.unwrap();
    assert_eq!(status.phase, Phase::Degraded);
    assert_eq!(status.cluster_id.as_deref(), Some(CLUSTER_ID));
    let (degraded, reason, _) = condition(&status, "Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "ClusterIdentityConflict")
    );
    assert!(nodes.calls().is_empty(), "never re-initialised silently");
}

#[tokio::test]
async fn failures_back_off_exponentially_and_are_counted_by_kind() {
    let nodes = Arc::new(FakeNodes::default());
    let (ctx, _server) = context(nodes);
    let dc = Arc::new(cache(json!({})));
    let error = crate::Error::MissingField("uid");
    let delays: Vec<Action> = (0..3)
        .map(|_| error_policy(dc.clone(), &error, ctx.clone()))
        .collect();
    assert_eq!(
        delays,
        [2, 4, 8].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    let counted = ctx
        .metrics
        .reconcile_errors
        .with_label_values(&["missing_field"])
        .get();
    assert_eq!(counted, 3);
}

#[tokio::test]
async fn a_lost_partition_raises_a_warning_event_once_and_degrades() {
    let nodes = Arc::new(FakeNodes::default());
    nodes.set_healthy(0..3);
    nodes.set_cluster(0..3, &[], true);
    nodes.lose_partition(7);
    let mut status = DistributedCacheStatus::default();
    let dc = with_status(cache(json!({"replicas": 3})), running_status(3));
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(3, 3)))
            .await;
        server.expect_statefulset_apply().await;
        let note = server.expect_event("PartitionDataLost").await;
        assert!(note.contains("partition 7"), "{note}");
        status = server.expect_status().await;
        server
    })
    .await;
    assert_eq!(status.lost_partitions.len(), 1);
    assert_eq!(condition(&status, "Degraded").1, "PartitionsLost");

    // Already reported: no second event.
    let dc = with_status(cache(json!({"replicas": 3})), status.clone());
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(3, 3)))
            .await;
        server.expect_statefulset_apply().await;
        server.expect_status().await;
        server
    })
    .await;
}

#[tokio::test]
async fn monitoring_applies_a_service_monitor_only_where_its_crd_exists() {
    let nodes = Arc::new(FakeNodes::default());
    nodes.set_healthy(0..3);
    nodes.set_cluster(0..3, &[], true);
    let spec = json!({"replicas": 3, "monitoring": {"enabled": true}});
    let crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servicemonitors.monitoring.coreos.com";

    let dc = with_status(cache(spec.clone()), running_status(3));
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced", "versions": [],
                     "names": {"kind": "ServiceMonitor", "plural": "servicemonitors"}},
        });
        server
            .expect(http::Method::GET, crd_path)
            .await
            .reply(http::StatusCode::OK, &crd);
        let monitor = server
            .expect_apply(&format!(
                "/apis/monitoring.coreos.com/v1/namespaces/{NAMESPACE}/servicemonitors/{NAME}"
            ))
            .await;
        assert_eq!(monitor.body["spec"]["endpoints"][0]["path"], "/metrics");
        monitor.echo();
        server
            .expect_statefulset_read(Some(statefulset(3, 3)))
            .await;
        server.expect_statefulset_apply().await;
        server.expect_status().await;
        server
    })
    .await;

    let dc = with_status(cache(spec), running_status(3));
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server.expect(http::Method::GET, crd_path).await.not_found();
        server
            .expect_statefulset_read(Some(statefulset(3, 3)))
            .await;
        server.expect_statefulset_apply().await;
        let status = server.expect_status().await;
        let (ready, _, message) = condition(&status, "Ready");
        assert_eq!(ready, "True");
        assert!(message.contains("ServiceMonitor CRD"), "{message}");
        server
    })
    .await;
}

#[tokio::test]
async fn a_missing_crd_is_detected_at_startup() {
    let (ctx, mut server) = context(Arc::new(FakeNodes::default()));
    let check = tokio::spawn(async move { super::crd_installed(&ctx.client).await });
    server
        .expect(
            http::Method::GET,
            "/apis/dcache.io/v1alpha1/distributedcaches",
        )
        .await
        .not_found();
    assert!(!check.await.unwrap().unwrap());
}

#[tokio::test]
async fn a_spec_change_mid_scale_moves_the_target_without_flapping() {
    let nodes = Arc::new(FakeNodes::default());
    // Scaling 3 -> 5: the new pods are up but not yet members when the spec says 4.
    nodes.set_healthy(0..5);
    nodes.set_cluster(0..3, &[], true);
    let mut status = DistributedCacheStatus::default();
    let dc = with_status(cache(json!({"replicas": 4})), running_status(3));
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(5, 3)))
            .await;
        assert_eq!(server.expect_statefulset_apply().await.0, 4);
        assert!(
            server
                .expect_event("StatefulSetScaled")
                .await
                .contains("5 -> 4")
        );
        server.expect_event("MembersChanged").await;
        status = server.expect_status().await;
        server
    })
    .await;
    assert_eq!(nodes.calls(), ["members cache-0,cache-1,cache-2,cache-3"]);

    // The next round finds the ring it asked for: no further member change, and the
    // StatefulSet stays at four.
    let dc = with_status(cache(json!({"replicas": 4})), status);
    reconcile_with(dc, &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(4, 3)))
            .await;
        assert_eq!(server.expect_statefulset_apply().await.0, 4);
        let status = server.expect_status().await;
        assert_eq!(status.phase, Phase::Rebalancing);
        server
    })
    .await;
    assert_eq!(nodes.calls().len(), 1);
}

#[tokio::test]
async fn auth_and_tls_mount_the_secrets_and_the_operator_calls_with_its_own_token() {
    let nodes = Arc::new(FakeNodes::default());
    nodes.set_healthy(0..3);
    let spec = json!({
        "replicas": 3,
        "auth": {"secretName": "cache-tokens"},
        "tls": {"secretName": "cache-tls"},
    });
    let mut created_tokens = None;
    let mut applied = None;
    reconcile_with(cache(spec), &nodes, |mut server| async {
        server.expect_services_and_budget().await;
        server
            .expect_statefulset_read(Some(statefulset(3, 0)))
            .await;
        let secrets = format!("/api/v1/namespaces/{NAMESPACE}/secrets");
        server
            .expect(Method::GET, &format!("{secrets}/{NAME}-internal"))
            .await
            .not_found();
        let create = server.expect(Method::POST, &secrets).await;
        assert_eq!(create.body["metadata"]["name"], format!("{NAME}-internal"));
        assert_eq!(create.body["metadata"]["ownerReferences"][0]["uid"], UID);
        let secret: k8s_openapi::ByteString =
            serde_json::from_value(create.body["data"]["cluster-secret"].clone()).unwrap();
        assert_eq!(secret.0.len(), 64, "256 bits, hex");
        let tokens: k8s_openapi::ByteString =
            serde_json::from_value(create.body["data"]["tokens"].clone()).unwrap();
        created_tokens = Some(String::from_utf8(tokens.0).unwrap());
        create.echo();
        server
            .expect(Method::GET, &format!("{secrets}/cache-tls"))
            .await
            .reply(
                http::StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cache-tls"},
                        "data": {"ca.crt": "Y2EtcGVt", "tls.crt": "", "tls.key": ""}}),
            );
        applied = Some(server.expect_statefulset_apply().await.1);
        server.expect_event("ClusterInitialized").await;
        server.expect_status().await;
        server
    })
    .await;

    let tokens = created_tokens.unwrap();
    let line = tokens.lines().find(|l| !l.starts_with('#')).unwrap();
    let (token, scopes) = line.split_once(' ').unwrap();
    assert_eq!(scopes, "admin,read");
    let credentials = nodes
        .credentials()
        .expect("the nodes were called with credentials");
    assert_eq!(credentials.token.as_deref(), Some(token));
    assert_eq!(credentials.ca_pem.as_deref(), Some(&b"ca-pem"[..]));

    let sts = applied.unwrap();
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env: std::collections::BTreeMap<String, String> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| {
            Some((
                v["name"].as_str()?.to_owned(),
                v["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert_eq!(
        env["DCACHE_TOKENS_FILE"],
        "/etc/dcache/auth/tokens,/etc/dcache/internal/tokens"
    );
    assert_eq!(
        env["DCACHE_CLUSTER_SECRET_FILE"],
        "/etc/dcache/internal/cluster-secret"
    );
    assert_eq!(env["DCACHE_TLS_CERT_FILE"], "/etc/dcache/tls/tls.crt");
    assert_eq!(env["DCACHE_TLS_CA_FILE"], "/etc/dcache/tls/ca.crt");
    let secret_volumes: Vec<(&str, &str)> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["secret"]["secretName"].as_str()?)))
        .collect();
    assert_eq!(
        secret_volumes,
        [
            ("auth", "cache-tokens"),
            ("internal", "cache-internal"),
            ("tls", "cache-tls")
        ]
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
}
