//! Real `dcache-node` processes on loopback, for tests that drive them as users do.
#![allow(dead_code)] // each test file uses a different part

pub mod history;
pub mod redis_tools;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The workspace's root directory, where `tools/` and `bench/` are.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds node/")
        .to_path_buf()
}

/// The Prometheus text served at `metrics_url`.
pub async fn metrics_text(client: &reqwest::Client, metrics_url: &str) -> String {
    client
        .get(metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub struct NodeProcess {
    pub child: Child,
    pub name: String,
    pub api: String,
    pub raft: Option<String>,
    /// Its RESP address, when started with `--resp-listen`.
    pub resp: Option<String>,
    pub base: String,
}

impl NodeProcess {
    /// Starts the binary on free loopback ports and waits until it serves.
    /// Listens on `--listen` if `args` give one, else on a free port.
    pub fn start(args: &[&str]) -> Self {
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_dcache-node"))
            .args(listen)
            .args(["--log-format", "text"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dcache-node starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Each node's log goes to a file under target/tmp for post-mortems.
        let log_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-logs");
        let _ = std::fs::create_dir_all(&log_dir);
        let mut log = std::fs::File::create(log_dir.join(format!("{}.log", child.id()))).ok();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(log) = log.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(log, "{line}");
                }
                if line.contains("dcache-node serving") {
                    let field = |name: &str| {
                        line.split(&format!(" {name}="))
                            .nth(1)
                            .and_then(|rest| rest.split_whitespace().next())
                            .map(|v| v.trim_matches('"').to_owned())
                    };
                    let _ = tx.send((
                        field("node_id"),
                        field("listen"),
                        field("raft"),
                        field("resp"),
                    ));
                }
            }
        });
        let (name, api, raft, resp) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("dcache-node logs its listen addresses");
        let api = api.expect("listen address logged");
        Self {
            child,
            name: name.unwrap_or_default(),
            base: format!("http://{api}"),
            api,
            raft: raft.filter(|r| r != "standalone"),
            resp: resp.filter(|r| r != "off"),
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
pub const HEARTBEAT: &str = "300ms";
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(1500);
pub const PARTITIONS: u32 = 16;

pub struct TestCluster {
    pub nodes: Vec<NodeProcess>,
    pub client: reqwest::Client,
    pub partitions: u32,
    /// Flags every node of this cluster starts with, beyond the test defaults.
    pub extra_args: Vec<String>,
    /// With persistence: node `i` keeps its state in `{data_root}/node-{i}`.
    pub data_root: Option<std::path::PathBuf>,
}

impl TestCluster {
    /// Starts one cluster node process named `node-{index}` listening on `api`, `raft`
    /// and `resp` (`127.0.0.1:0` for free ports).
    pub fn start_node_at(
        index: usize,
        partitions: u32,
        [api, raft, resp]: [&str; 3],
        extra_args: &[String],
    ) -> NodeProcess {
        let election = format!("{}ms", ELECTION_TIMEOUT.as_millis());
        let partitions = partitions.to_string();
        let name = format!("node-{index}");
        let mut args = vec![
            "--listen",
            api,
            "--raft-listen",
            raft,
            "--resp-listen",
            resp,
            "--node-id",
            &name,
            "--partitions",
            &partitions,
            "--raft-heartbeat",
            HEARTBEAT,
            "--raft-election-timeout",
            &election,
            "--balance-interval",
            "300ms",
            "--max-moves-per-node",
            "8",
            "--enable-fault-injection",
        ];
        args.extend(extra_args.iter().map(String::as_str));
        NodeProcess::start(&args)
    }

    /// The data directory of node `index`, with persistence.
    pub fn data_dir(&self, index: usize) -> Option<std::path::PathBuf> {
        self.data_root
            .as_ref()
            .map(|root| root.join(format!("node-{index}")))
    }

    /// The flags of node `index`: the cluster's, and its own data directory.
    fn node_args(&self, index: usize) -> Vec<String> {
        let mut args = self.extra_args.clone();
        if let Some(dir) = self.data_dir(index) {
            args.extend([
                "--persistence".to_owned(),
                "disk".to_owned(),
                "--data-dir".to_owned(),
                dir.display().to_string(),
            ]);
        }
        args
    }

    /// Starts one cluster node process named `node-{index}` on free ports.
    pub fn start_node(&self, index: usize) -> NodeProcess {
        Self::start_node_at(
            index,
            self.partitions,
            ["127.0.0.1:0"; 3],
            &self.node_args(index),
        )
    }

    /// Kills node `index` (SIGKILL) and starts a new process in its place, on the same
    /// addresses: with nothing of its former state, or with its data directory if the
    /// cluster has persistence.
    pub fn restart_node(&mut self, index: usize) {
        self.nodes[index].kill();
        self.start_again(index);
    }

    /// Starts node `index` again, after it was killed, on its former addresses.
    pub fn start_again(&mut self, index: usize) {
        let api = self.nodes[index].api.clone();
        let raft = self.nodes[index].raft.clone().expect("a cluster node");
        let resp = self.nodes[index].resp.clone().expect("a RESP listener");
        self.nodes[index] = Self::start_node_at(
            index,
            self.partitions,
            [&api, &raft, &resp],
            &self.node_args(index),
        );
    }

    /// Starts `n` cluster nodes and initialises them as one cluster.
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, PARTITIONS).await
    }

    /// Starts `n` cluster nodes with `partitions` partitions as one cluster.
    pub async fn start_with(n: usize, partitions: u32) -> Self {
        Self::start_configured(n, partitions, &[]).await
    }

    /// Starts `n` cluster nodes with `partitions` partitions and `extra_args` as one
    /// cluster.
    pub async fn start_configured(n: usize, partitions: u32, extra_args: &[&str]) -> Self {
        Self::start_in(n, partitions, extra_args, None).await
    }

    /// Starts `n` cluster nodes as one cluster, each keeping its state under
    /// `data_root` if given (`--persistence disk`).
    pub async fn start_in(
        n: usize,
        partitions: u32,
        extra_args: &[&str],
        data_root: Option<std::path::PathBuf>,
    ) -> Self {
        let mut cluster = Self {
            data_root,
            partitions,
            nodes: Vec::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        cluster.nodes = (0..n).map(|i| cluster.start_node(i)).collect();
        let members = cluster.members(&(0..n).collect::<Vec<_>>());
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

    /// Waits until every node answers `/ready` with 200; on a time-out the panic names
    /// the node and what its last `/ready` said it was waiting for.
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for node in 0..self.nodes.len() {
            self.wait_node_ready(node, deadline).await;
        }
    }

    /// Waits until node `index` answers `/ready` with 200, at most until `deadline`.
    pub async fn wait_node_ready(&self, index: usize, deadline: Instant) {
        let node = &self.nodes[index];
        loop {
            let last = match self.client.get(node.url("/ready")).send().await {
                Ok(answer) if answer.status() == 200 => return,
                Ok(answer) => format!(
                    "{}: {}",
                    answer.status(),
                    answer.text().await.unwrap_or_default()
                ),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "{} never became ready; its last /ready answer: {last}",
                node.name
            );
            // Asked often, as a kubelet probing every few milliseconds would: a test
            // that takes the next node down as soon as this one is ready must see the
            // first moment readiness is claimed.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The JSON answer of `GET path` on `node`.
    pub async fn get_json(&self, node: usize, path: &str) -> Value {
        self.client
            .get(self.nodes[node].url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn cluster_status(&self, node: usize) -> Value {
        self.get_json(node, "/cluster").await
    }

    /// Sets `key` through `node`; true if acknowledged.
    pub async fn set(&self, node: usize, key: &str, value: &Value) -> bool {
        self.try_set(node, key, value).await.is_ok()
    }

    /// Sets `key` through `node`; the error says why it was not acknowledged.
    pub async fn try_set(&self, node: usize, key: &str, value: &Value) -> Result<(), String> {
        let response = self
            .client
            .put(self.nodes[node].url(&format!("/cache/{key}")))
            .json(&json!({"value": value}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status() == 200 {
            return Ok(());
        }
        Err(format!(
            "{}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        ))
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
            let result = self.try_set(nodes[attempt % nodes.len()], key, value).await;
            let Err(e) = result else { return };
            assert!(
                Instant::now() < deadline,
                "set {key} never acknowledged: {e}"
            );
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

    /// The value of `key` read through `node`, retrying answers like 503 (a partition
    /// electing or handing over its leader) until `within` passes.
    pub async fn get_settled(
        &self,
        node: usize,
        key: &str,
        consistency: &str,
        within: Duration,
    ) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            match self.get(node, key, consistency).await {
                Ok(value) => return value,
                Err(e) => assert!(Instant::now() < deadline, "{key} via node {node}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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

impl TestCluster {
    /// The sum of metric `name` over every node of the cluster.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        for node in 0..self.nodes.len() {
            sum += self.metric(node, name).await;
        }
        sum
    }

    /// Every node's RESP listener as a `redis://` URL: the seeds of a cluster client.
    pub fn redis_seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://{}", node.resp.as_ref().expect("a RESP listener")))
            .collect()
    }

    /// `dcache_resp_commands_total` samples of one result, summed over the cluster.
    pub async fn resp_commands_with_result(&self, result: &str) -> f64 {
        self.resp_commands_labelled(&[("result", result)]).await
    }

    /// `dcache_resp_commands_total` samples with every one of `labels` (name, value),
    /// summed over the cluster.
    pub async fn resp_commands_labelled(&self, labels: &[(&str, &str)]) -> f64 {
        let mut sum = 0.0;
        for node in &self.nodes {
            let text = metrics_text(&self.client, &node.url("/metrics")).await;
            sum += text
                .lines()
                .filter(|line| {
                    line.starts_with("dcache_resp_commands_total{")
                        && labels
                            .iter()
                            .all(|(name, value)| line.contains(&format!("{name}=\"{value}\"")))
                })
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        sum
    }

    /// The sum of every sample of metric `name` on `node`.
    pub async fn metric(&self, node: usize, name: &str) -> f64 {
        let text = metrics_text(&self.client, &self.nodes[node].url("/metrics")).await;
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }
}

impl TestCluster {
    fn members(&self, indices: &[usize]) -> Vec<Value> {
        indices
            .iter()
            .map(|&i| {
                let n = &self.nodes[i];
                json!({"name": n.name, "api_addr": n.api, "raft_addr": n.raft})
            })
            .collect()
    }

    /// Starts one more node process (not yet a member); returns its index.
    pub fn add_node(&mut self) -> usize {
        let index = self.nodes.len();
        let node = self.start_node(index);
        self.nodes.push(node);
        index
    }

    /// Sets the member set to the nodes at `indices`, through `via`.
    pub async fn set_members(&self, via: usize, indices: &[usize]) {
        let response = self
            .client
            .put(self.nodes[via].url("/cluster/members"))
            .json(&json!({"members": self.members(indices)}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    /// Waits until the balancer reports the placement of the current member set
    /// reached, with no former member left, asking the nodes at `alive`.
    pub async fn wait_rebalanced(&self, alive: &[usize], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            for &node in alive {
                let Ok(response) = self
                    .client
                    .get(self.nodes[node].url("/cluster"))
                    .send()
                    .await
                else {
                    continue;
                };
                let Ok(status) = response.json::<Value>().await else {
                    continue;
                };
                let progress = &status["rebalance"];
                let epoch = status["epoch"].as_u64();
                if progress["active"] == true
                    && progress["epoch"].as_u64() == epoch
                    && progress["replicas_to_move"] == 0
                    && progress["moving"] == 0
                    && progress["unknown_groups"] == 0
                    && status["leaving"].as_array().is_some_and(Vec::is_empty)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "rebalance did not finish within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each partition's leader, from the nodes at `alive` that host it.
    pub async fn partition_leaders(&self, alive: &[usize]) -> Vec<Option<String>> {
        let mut leaders = vec![None; self.partitions as usize];
        for &node in alive {
            let status = self.cluster_status(node).await;
            for (p, partition) in status["partitions"].as_array().unwrap().iter().enumerate() {
                if leaders[p].is_none() && partition["hosted"] == true {
                    leaders[p] = partition["leader"].as_str().map(str::to_owned);
                }
            }
        }
        leaders
    }

    /// Writes `count` keys `key-{i}` = i through the nodes at `via`, 8 at a time.
    pub async fn write_keys(&self, via: &[usize], count: usize) {
        let mut pending = futures_util::stream::FuturesUnordered::new();
        use futures_util::StreamExt;
        for i in 0..count {
            let node = via[i % via.len()];
            pending.push(async move {
                self.set_until_acknowledged(
                    &[node],
                    &format!("key-{i}"),
                    &json!(i),
                    Duration::from_secs(30),
                )
                .await
            });
            if pending.len() >= 8 {
                pending.next().await;
            }
        }
        while pending.next().await.is_some() {}
    }

    /// Reads every `key-{i}` back through the nodes at `via`; panics on a lost key.
    pub async fn check_keys(&self, via: &[usize], count: usize) {
        let mut pending = futures_util::stream::FuturesUnordered::new();
        use futures_util::StreamExt;
        for i in 0..count {
            let node = via[i % via.len()];
            pending.push(async move {
                let key = format!("key-{i}");
                let value = self
                    .get_settled(node, &key, "linearizable", Duration::from_secs(30))
                    .await;
                assert_eq!(value, Some(json!(i)), "{key} via node {node}");
            });
            if pending.len() >= 8 {
                pending.next().await;
            }
        }
        while pending.next().await.is_some() {}
    }
}
