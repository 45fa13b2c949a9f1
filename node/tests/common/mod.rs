//! Real `dcache-node` processes on loopback, for tests that drive them as users do.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct NodeProcess {
    pub child: Child,
    pub name: String,
    pub api: String,
    pub raft: Option<String>,
    pub base: String,
}

impl NodeProcess {
    /// Starts the binary on free loopback ports and waits until it serves.
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dcache-node"))
            .args(["--listen", "127.0.0.1:0", "--log-format", "text"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dcache-node starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("dcache-node serving") {
                    let field = |name: &str| {
                        line.split(&format!(" {name}="))
                            .nth(1)
                            .and_then(|rest| rest.split_whitespace().next())
                            .map(|v| v.trim_matches('"').to_owned())
                    };
                    let _ = tx.send((field("node_id"), field("listen"), field("raft")));
                }
            }
        });
        let (name, api, raft) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("dcache-node logs its listen addresses");
        let api = api.expect("listen address logged");
        Self {
            child,
            name: name.unwrap_or_default(),
            base: format!("http://{api}"),
            api,
            raft: raft.filter(|r| r != "standalone"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Raft timing for tests: short enough to fail over quickly, long enough for a loaded
/// two-core CI machine.
pub const HEARTBEAT: &str = "200ms";
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);
pub const PARTITIONS: u32 = 16;

pub struct TestCluster {
    pub nodes: Vec<NodeProcess>,
    pub client: reqwest::Client,
}

impl TestCluster {
    /// Starts `n` cluster nodes and initialises them as one cluster.
    pub async fn start(n: usize) -> Self {
        let election = format!("{}ms", ELECTION_TIMEOUT.as_millis());
        let partitions = PARTITIONS.to_string();
        let nodes: Vec<NodeProcess> = (0..n)
            .map(|i| {
                NodeProcess::start(&[
                    "--raft-listen",
                    "127.0.0.1:0",
                    "--node-id",
                    &format!("node-{i}"),
                    "--partitions",
                    &partitions,
                    "--raft-heartbeat",
                    HEARTBEAT,
                    "--raft-election-timeout",
                    &election,
                    "--enable-fault-injection",
                ])
            })
            .collect();
        let cluster = Self {
            nodes,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
        };
        let members: Vec<Value> = cluster
            .nodes
            .iter()
            .map(|n| json!({"name": n.name, "api_addr": n.api, "raft_addr": n.raft}))
            .collect();
        let init = cluster
            .client
            .post(cluster.nodes[0].url("/cluster/init"))
            .json(&json!({"cluster_id": "test", "members": members}))
            .send()
            .await
            .unwrap();
        assert_eq!(init.status(), 200, "{}", init.text().await.unwrap());
        cluster.wait_ready(Duration::from_secs(60)).await;
        cluster
    }

    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for node in &self.nodes {
            loop {
                let ready = self.client.get(node.url("/ready")).send().await;
                if ready.is_ok_and(|r| r.status() == 200) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} never became ready",
                    node.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub async fn cluster_status(&self, node: usize) -> Value {
        self.client
            .get(self.nodes[node].url("/cluster"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Sets `key` through `node`; true if acknowledged.
    pub async fn set(&self, node: usize, key: &str, value: &Value) -> bool {
        self.client
            .put(self.nodes[node].url(&format!("/cache/{key}")))
            .json(&json!({"value": value}))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    /// Sets `key` through any node, retrying until acknowledged or `within` passes.
    pub async fn set_until_acknowledged(
        &self,
        nodes: &[usize],
        key: &str,
        value: &Value,
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        for attempt in 0.. {
            if self.set(nodes[attempt % nodes.len()], key, value).await {
                return;
            }
            assert!(Instant::now() < deadline, "set {key} never acknowledged");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of `key` read through `node`, None if absent.
    pub async fn get(
        &self,
        node: usize,
        key: &str,
        consistency: &str,
    ) -> Result<Option<Value>, String> {
        let response = self
            .client
            .get(self.nodes[node].url(&format!("/cache/{key}?consistency={consistency}")))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200 => Ok(Some(
                response.json::<Value>().await.map_err(|e| e.to_string())?["value"].clone(),
            )),
            404 => Ok(None),
            status => Err(format!(
                "{status}: {}",
                response.text().await.unwrap_or_default()
            )),
        }
    }

    pub async fn isolate(&self, node: usize, isolated: bool) {
        let response = self
            .client
            .post(self.nodes[node].url("/admin/fault"))
            .json(&json!({"isolated": isolated}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}
