//! The lifecycle planner driven against real `dcache-node` processes on loopback, the
//! way the controller drives pods: start and stop processes to match the planned pod
//! count, make the planned admin calls, repeat until steady. 3 → 5 → 3 members with
//! every acknowledged key read back.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dcache_operator::lifecycle::{
    self, ClusterPhase, HttpNodeAdmin, MemberNode, Observation, PlanInput,
};
use serde_json::json;

mod support;
use support::node_binary;

const CLUSTER_ID: &str = "lifecycle-test";
const KEYS: usize = 300;

struct NodeProcess {
    child: Child,
    member: MemberNode,
}

impl NodeProcess {
    /// Starts `node-{ordinal}` on free loopback ports and reads its bound addresses
    /// from its "dcache-node serving" log line.
    fn start(binary: &PathBuf, ordinal: usize) -> Self {
        Self::start_at(binary, ordinal, "127.0.0.1:0", "127.0.0.1:0")
    }

    /// Starts `node-{ordinal}` listening on `api` and `raft`: a pod recreated under
    /// its stable name and address.
    fn start_at(binary: &PathBuf, ordinal: usize, api: &str, raft: &str) -> Self {
        let name = format!("node-{ordinal}");
        let mut child = Command::new(binary)
            .args(["--listen", api, "--raft-listen", raft])
            .args([
                "--node-id",
                &name,
                "--partitions",
                "16",
                "--log-format",
                "text",
            ])
            .args([
                "--raft-heartbeat",
                "300ms",
                "--raft-election-timeout",
                "1500ms",
            ])
            .args(["--balance-interval", "300ms", "--max-moves-per-node", "8"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dcache-node starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (addresses, received) = std::sync::mpsc::channel();
        // Each node's log goes to a file for post-mortems; the reader also keeps the
        // pipe drained so the node never blocks on it.
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("operator-node-logs");
        let _ = std::fs::create_dir_all(&log_dir);
        let mut log =
            std::fs::File::create(log_dir.join(format!("{name}-{}.log", child.id()))).ok();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(log) = log.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(log, "{line}");
                }
                if line.contains("dcache-node serving") {
                    let field = |key: &str| {
                        line.split(&format!(" {key}="))
                            .nth(1)
                            .and_then(|rest| rest.split_whitespace().next())
                            .map(|value| value.trim_matches('"').to_owned())
                    };
                    let _ = addresses.send((field("listen"), field("raft")));
                }
            }
        });
        let (api, raft) = received
            .recv_timeout(Duration::from_secs(60))
            .expect("dcache-node logs its addresses");
        Self {
            child,
            member: MemberNode {
                name,
                api_addr: api.expect("listen address logged"),
                raft_addr: raft.expect("raft address logged"),
                resp_addr: None,
            },
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes standing in for a StatefulSet's pods, by ordinal.
struct LocalStatefulSet {
    binary: PathBuf,
    pods: Vec<NodeProcess>,
}

impl LocalStatefulSet {
    /// What a StatefulSet's rolling update does to one pod: SIGTERM (the node may hold
    /// its stop while a partition needs it), then the pod is created again under the
    /// same name and address, empty.
    fn recreate(&mut self, ordinal: usize) {
        let old = &mut self.pods[ordinal];
        let stopped = Command::new("kill")
            .args(["-TERM", &old.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(stopped.success());
        let exited = old.child.wait().expect("the node exits after SIGTERM");
        assert!(exited.success(), "node-{ordinal} exited with {exited}");
        let member = old.member.clone();
        self.pods[ordinal] =
            NodeProcess::start_at(&self.binary, ordinal, &member.api_addr, &member.raft_addr);
    }

    fn scale(&mut self, replicas: usize) {
        while self.pods.len() < replicas {
            let pod = NodeProcess::start(&self.binary, self.pods.len());
            self.pods.push(pod);
        }
        // Highest ordinals go first, as a StatefulSet does.
        self.pods.truncate(replicas);
    }

    /// Member identities for ordinals `0..count`; an ordinal with no process gets an
    /// address nothing listens on, as a pod not yet scheduled.
    fn directory(&self, count: usize) -> Vec<MemberNode> {
        (0..count)
            .map(|ordinal| match self.pods.get(ordinal) {
                Some(pod) => pod.member.clone(),
                None => MemberNode {
                    name: format!("node-{ordinal}"),
                    api_addr: "127.0.0.1:9".to_owned(),
                    raft_addr: "127.0.0.1:9".to_owned(),
                    resp_addr: None,
                },
            })
            .collect()
    }
}

/// Plans and acts until the ring is `desired` members and balanced. Checks on the way
/// that no process stops while the balancer still counts it as a member or as leaving.
async fn converge(
    pods: &mut LocalStatefulSet,
    admin: &HttpNodeAdmin,
    recorded_cluster_id: &mut Option<String>,
    desired: usize,
    within: Duration,
) -> Vec<ClusterPhase> {
    converge_until(
        pods,
        admin,
        recorded_cluster_id,
        desired,
        within,
        Until::Steady,
    )
    .await
}

#[derive(Clone, Copy, PartialEq)]
enum Until {
    /// The ring is the desired one and balanced.
    Steady,
    /// The member set was just changed: the rebalance has begun, not ended.
    MembersChanged,
}

async fn converge_until(
    pods: &mut LocalStatefulSet,
    admin: &HttpNodeAdmin,
    recorded_cluster_id: &mut Option<String>,
    desired: usize,
    within: Duration,
    until: Until,
) -> Vec<ClusterPhase> {
    let deadline = Instant::now() + within;
    let mut phases = Vec::new();
    loop {
        let directory = pods.directory(desired.max(pods.pods.len()));
        let observation = Observation::gather(admin, &directory).await;
        let plan = lifecycle::plan(
            &PlanInput {
                desired_replicas: desired,
                current_replicas: pods.pods.len(),
                recorded_cluster_id: recorded_cluster_id.as_deref(),
                new_cluster_id: CLUSTER_ID,
                pods: &directory,
            },
            &observation,
        );
        if phases.last() != Some(&plan.phase) {
            phases.push(plan.phase.clone());
        }
        assert!(
            !matches!(plan.phase, ClusterPhase::IdentityConflict { .. }),
            "{plan:?}"
        );
        if plan.statefulset_replicas < pods.pods.len() {
            let view = observation
                .balancer_view()
                .expect("the planner shrinks only on the balancer's word");
            let in_ring: BTreeSet<&str> = view
                .member_names()
                .union(&view.leaving_names())
                .copied()
                .collect();
            for going in &pods.pods[plan.statefulset_replicas..] {
                assert!(
                    !in_ring.contains(going.member.name.as_str()),
                    "{} stopped while the ring still holds it: {view:?}",
                    going.member.name
                );
            }
        }
        pods.scale(plan.statefulset_replicas);
        if let Some(action) = &plan.action {
            match lifecycle::execute(admin, action).await {
                Ok(()) => match action {
                    lifecycle::AdminAction::Init { request_id, .. } => {
                        *recorded_cluster_id = Some(request_id.clone());
                    }
                    lifecycle::AdminAction::SetMembers { .. } if until == Until::MembersChanged => {
                        return phases;
                    }
                    lifecycle::AdminAction::SetMembers { .. } => {}
                },
                // A node can refuse while its cluster group elects; the next round
                // plans again from what the nodes say.
                Err(error) => eprintln!("admin call failed, planning again: {error}"),
            }
        }
        if plan.phase == ClusterPhase::Steady && pods.pods.len() == desired {
            return phases;
        }
        assert!(
            Instant::now() < deadline,
            "no steady ring of {desired} within {within:?}; phases seen: {phases:?}; \
             the balancer said {:?}",
            observation.balancer_view()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn write_keys(client: &reqwest::Client, nodes: &[MemberNode]) {
    for i in 0..KEYS {
        let node = &nodes[i % nodes.len()];
        let url = format!("http://{}/cache/key-{i}", node.api_addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = client.put(&url).json(&json!({"value": i})).send().await;
            match answer {
                Ok(response) if response.status() == 200 => break,
                other => assert!(
                    Instant::now() < deadline,
                    "key-{i} never acknowledged: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn check_keys(client: &reqwest::Client, nodes: &[MemberNode]) {
    check_numbered_keys(client, nodes, "key", KEYS).await;
}

/// Reads `{prefix}-0` .. `{prefix}-{count - 1}` back, each holding its number.
async fn check_numbered_keys(
    client: &reqwest::Client,
    nodes: &[MemberNode],
    prefix: &str,
    count: usize,
) {
    for i in 0..count {
        let node = &nodes[i % nodes.len()];
        let url = format!("http://{}/cache/{prefix}-{i}", node.api_addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.get(&url).send().await {
                Ok(response) if response.status() == 200 => {
                    let body: serde_json::Value = response.json().await.expect("JSON answer");
                    assert_eq!(body["value"], json!(i), "{prefix}-{i} via {}", node.name);
                    break;
                }
                Ok(response) if response.status() == 404 => {
                    panic!("{prefix}-{i} lost (404 via {})", node.name)
                }
                // 503 while a partition elects or hands over; connection errors
                // while a node is busy: both are retried.
                other => assert!(
                    Instant::now() < deadline,
                    "{prefix}-{i} unreadable via {}: {other:?}",
                    node.name
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialise_then_scale_3_to_5_to_3_without_losing_a_key() {
    let mut pods = LocalStatefulSet {
        binary: node_binary(),
        pods: Vec::new(),
    };
    let admin = HttpNodeAdmin::new();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let mut cluster_id = None;
    let within = Duration::from_secs(180);

    let phases = converge(&mut pods, &admin, &mut cluster_id, 3, within).await;
    assert!(phases.contains(&ClusterPhase::Initialising), "{phases:?}");
    assert_eq!(cluster_id.as_deref(), Some(CLUSTER_ID));
    let members: Vec<MemberNode> = pods.pods.iter().map(|p| p.member.clone()).collect();
    write_keys(&client, &members).await;

    let phases = converge(&mut pods, &admin, &mut cluster_id, 5, within).await;
    assert!(
        phases.iter().any(
            |p| matches!(p, ClusterPhase::ChangingMembers { adding, .. } if adding.len() == 2)
        ),
        "{phases:?}"
    );
    assert_eq!(pods.pods.len(), 5);
    let members: Vec<MemberNode> = pods.pods.iter().map(|p| p.member.clone()).collect();
    check_keys(&client, &members).await;

    let phases = converge(&mut pods, &admin, &mut cluster_id, 3, within).await;
    assert!(
        phases.iter().any(
            |p| matches!(p, ClusterPhase::ChangingMembers { removing, .. } if removing.len() == 2)
        ),
        "{phases:?}"
    );
    assert_eq!(pods.pods.len(), 3);
    let members: Vec<MemberNode> = pods.pods.iter().map(|p| p.member.clone()).collect();
    check_keys(&client, &members).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_in_the_middle_of_a_scale_up_settles_without_losing_a_key() {
    let mut pods = LocalStatefulSet {
        binary: node_binary(),
        pods: Vec::new(),
    };
    let admin = HttpNodeAdmin::new();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let mut cluster_id = None;
    let within = Duration::from_secs(180);
    converge(&mut pods, &admin, &mut cluster_id, 3, within).await;
    let members: Vec<MemberNode> = pods.pods.iter().map(|p| p.member.clone()).collect();
    write_keys(&client, &members).await;

    // 3 -> 5 begins: both new nodes join and replicas start moving to them...
    converge_until(
        &mut pods,
        &admin,
        &mut cluster_id,
        5,
        within,
        Until::MembersChanged,
    )
    .await;
    assert_eq!(pods.pods.len(), 5);
    // ...when the spec says 4: node-4 is drained mid-rebalance, then its process goes.
    let phases = converge(&mut pods, &admin, &mut cluster_id, 4, within).await;
    assert!(
        phases.iter().any(|p| matches!(p, ClusterPhase::ChangingMembers { removing, .. } if removing == &["node-4"])),
        "{phases:?}"
    );
    assert_eq!(pods.pods.len(), 4);
    let members: Vec<MemberNode> = pods.pods.iter().map(|p| p.member.clone()).collect();
    check_keys(&client, &members).await;
}

/// Waits until `node` answers `/ready` with 200, as the StatefulSet controller waits
/// for a recreated pod's readiness probe before it rolls the next one.
async fn wait_ready(client: &reqwest::Client, node: &MemberNode, within: Duration) -> Duration {
    let started = Instant::now();
    let url = format!("http://{}/ready", node.api_addr);
    loop {
        let last = match client.get(&url).send().await {
            Ok(response) if response.status() == 200 => return started.elapsed(),
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        assert!(
            started.elapsed() < within,
            "{} never became ready; it last said: {last}",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A spec change (a new image, say) rolls every pod of a memory-only cluster: the
/// StatefulSet recreates them from the highest ordinal down, each once the one before
/// is ready, while clients keep writing. Every key written before and during the roll
/// reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_of_every_pod_loses_no_key() {
    let mut pods = LocalStatefulSet {
        binary: node_binary(),
        pods: Vec::new(),
    };
    let admin = HttpNodeAdmin::new();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let mut cluster_id = None;
    let within = Duration::from_secs(180);
    converge(&mut pods, &admin, &mut cluster_id, 3, within).await;
    let members: Vec<MemberNode> = pods.pods.iter().map(|p| p.member.clone()).collect();
    write_keys(&client, &members).await;

    // Writes during the roll, each retried until acknowledged through any node.
    let writing = tokio::spawn({
        let client = client.clone();
        let members = members.clone();
        async move {
            for i in 0..200 {
                let deadline = Instant::now() + Duration::from_secs(60);
                for attempt in 0.. {
                    let node = &members[(i + attempt) % members.len()];
                    let url = format!("http://{}/cache/rolling-{i}", node.api_addr);
                    let answer = client.put(&url).json(&json!({"value": i})).send().await;
                    if answer.is_ok_and(|r| r.status() == 200) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "rolling-{i} never acknowledged");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    for ordinal in (0..pods.pods.len()).rev() {
        pods.recreate(ordinal);
        let took = wait_ready(&client, &pods.pods[ordinal].member, within).await;
        eprintln!("node-{ordinal} ready again {took:?} after it was recreated");
    }
    writing.await.expect("every write of the roll acknowledged");

    converge(&mut pods, &admin, &mut cluster_id, 3, within).await;
    check_keys(&client, &members).await;
    check_numbered_keys(&client, &members, "rolling", 200).await;
}
