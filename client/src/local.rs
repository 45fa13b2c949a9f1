//! A cluster of real `dcache-node` processes on 127.0.0.1: what `dcache local` and
//! `dcache demo` run, and what the client's tests run against.
//!
//! Each node writes its log to `<data dir>/<name>.log`; the runner learns the
//! addresses a node bound from its "dcache-node serving" log line, so ports may be
//! picked by the kernel (port 0). The running cluster is recorded in
//! `<data dir>/local-cluster.json` so that later commands (`dcache local add-node`,
//! `remove-node`) can change it.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::cluster_status::{ClusterStatus, InitRequest, MemberNode, MembersRequest};
use crate::partition_map::PartitionMap;

/// Name of the file recording a running local cluster, in its data directory.
pub const STATE_FILE: &str = "local-cluster.json";

/// How a local cluster is started.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub nodes: usize,
    /// First API port; node `i` listens on `base_port + i` and its Raft endpoint on
    /// `base_port + 100 + i`. 0 lets the kernel pick free ports.
    pub base_port: u16,
    pub data_dir: PathBuf,
    pub partitions: u32,
    pub replication: u8,
    pub node_binary: PathBuf,
    pub raft_heartbeat: Duration,
    pub raft_election_timeout: Duration,
    pub balance_interval: Duration,
    pub max_moves_per_node: u16,
    /// How long starting (every node serving, every partition led) may take.
    pub startup_timeout: Duration,
    /// More flags for every node (`--read-policy lease`, `--max-memory 64MiB`, …).
    pub node_args: Vec<String>,
}

impl LocalOptions {
    /// Defaults for `nodes` nodes in `data_dir`; without `node_binary`, the node
    /// binary is the one next to the running executable.
    pub fn new(
        nodes: usize,
        data_dir: impl Into<PathBuf>,
        node_binary: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let node_binary = match node_binary {
            Some(path) => path,
            None => find_node_binary()?,
        };
        Ok(Self {
            nodes,
            base_port: 0,
            data_dir: data_dir.into(),
            partitions: dcache_protocol::DEFAULT_PARTITIONS,
            replication: 3,
            node_binary,
            raft_heartbeat: Duration::from_millis(150),
            raft_election_timeout: Duration::from_secs(1),
            // A laptop cluster has little data: let the balancer move briskly.
            balance_interval: Duration::from_millis(300),
            max_moves_per_node: 8,
            startup_timeout: Duration::from_secs(60),
            node_args: Vec::new(),
        })
    }
}

/// `dcache-node` next to the running executable (or one directory up, where a test
/// binary in `target/*/deps` finds it).
pub fn find_node_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot tell where this program is")?;
    let dir = exe.parent().context("the executable has no directory")?;
    [dir.to_path_buf(), dir.join("..")]
        .iter()
        .map(|d| d.join("dcache-node"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            anyhow!(
                "dcache-node not found next to {}: build it (cargo build -p dcache-node) \
                 or pass --node-binary",
                exe.display()
            )
        })
}

/// What `local-cluster.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalState {
    pub cluster_id: String,
    pub partitions: u32,
    pub replication: u8,
    pub base_port: u16,
    pub node_binary: PathBuf,
    /// The process running the cluster in the foreground (`dcache local`), if any.
    pub runner_pid: Option<u32>,
    pub raft_heartbeat_ms: u64,
    pub raft_election_timeout_ms: u64,
    pub balance_interval_ms: u64,
    pub max_moves_per_node: u16,
    /// Extra flags every node was started with; added nodes get them too.
    #[serde(default)]
    pub node_args: Vec<String>,
    pub nodes: Vec<LocalNodeState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalNodeState {
    pub name: String,
    /// Index in the name (`node-{index}`), which also picks its ports.
    pub index: usize,
    pub api_addr: String,
    pub raft_addr: String,
    /// Its Redis-protocol address (`redis-cli -c -p PORT`).
    #[serde(default)]
    pub resp_addr: Option<String>,
    pub pid: u32,
    pub log: PathBuf,
}

impl LocalNodeState {
    pub fn member(&self) -> MemberNode {
        MemberNode {
            name: self.name.clone(),
            api_addr: self.api_addr.clone(),
            raft_addr: self.raft_addr.clone(),
            resp_addr: self.resp_addr.clone(),
        }
    }

    /// Records the addresses the node logged once serving.
    fn serving_at(&mut self, serving: Serving) {
        self.api_addr = serving.api;
        self.raft_addr = serving.raft;
        self.resp_addr = serving.resp;
    }
}

/// The addresses a node logs when it starts serving.
struct Serving {
    api: String,
    raft: String,
    resp: Option<String>,
}

impl LocalState {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(STATE_FILE)
    }

    pub fn load(data_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(data_dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no local cluster recorded at {} (start one with `dcache local`)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
    }

    /// Writes the state through a temporary file, so a reader never sees half of it.
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(data_dir);
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&temporary, &path)?;
        Ok(())
    }

    pub fn api_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.api_addr.clone()).collect()
    }

    fn options(&self, data_dir: &Path) -> LocalOptions {
        LocalOptions {
            nodes: self.nodes.len(),
            base_port: self.base_port,
            data_dir: data_dir.to_path_buf(),
            partitions: self.partitions,
            replication: self.replication,
            node_binary: self.node_binary.clone(),
            raft_heartbeat: Duration::from_millis(self.raft_heartbeat_ms),
            raft_election_timeout: Duration::from_millis(self.raft_election_timeout_ms),
            balance_interval: Duration::from_millis(self.balance_interval_ms),
            max_moves_per_node: self.max_moves_per_node,
            startup_timeout: Duration::from_secs(60),
            node_args: self.node_args.clone(),
        }
    }
}

/// Whether a node process dies with the process that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifetime {
    /// The kernel sends it SIGTERM when its parent dies, so a killed runner leaves no
    /// orphans behind.
    TiedToParent,
    /// In its own process group, outliving a short-lived command such as `dcache local
    /// add-node`; the foreground runner stops it through the state file.
    Detached,
}

/// A running local cluster. Dropping it kills the node processes it started.
pub struct LocalCluster {
    pub state: LocalState,
    data_dir: PathBuf,
    children: Vec<(String, Child)>,
    client: Client,
}

impl LocalCluster {
    /// Starts the nodes, initialises the cluster, waits until every partition has a
    /// leader and records the cluster in the data directory.
    pub async fn start(options: LocalOptions) -> anyhow::Result<Self> {
        if options.nodes == 0 {
            bail!("a local cluster needs at least one node");
        }
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("cannot create data dir {}", options.data_dir.display()))?;
        let deadline = Instant::now() + options.startup_timeout;
        let mut children = Vec::new();
        let mut nodes = Vec::new();
        for index in 0..options.nodes {
            let (child, node) = spawn_node(&options, index, Lifetime::TiedToParent)?;
            children.push((node.name.clone(), child));
            nodes.push(node);
        }
        // Built before the nodes serve so that, if starting fails half-way, dropping
        // it stops the processes already started.
        let mut cluster = Self::from_parts(&options, nodes, children)?;
        for (node, (_, child)) in cluster.state.nodes.iter_mut().zip(&mut cluster.children) {
            node.serving_at(wait_serving(&node.log, &node.name, child, deadline)?);
        }
        cluster.client = client_for(&cluster.state.api_addrs())?;
        let members: Vec<MemberNode> = cluster.state.nodes.iter().map(|n| n.member()).collect();
        let init = InitRequest {
            cluster_id: cluster.state.cluster_id.clone(),
            members,
        };
        let first = cluster.state.nodes[0].api_addr.clone();
        cluster
            .client
            .send_json_to::<_, serde_json::Value>(
                Method::POST,
                &first,
                "/cluster/init",
                &init,
                options.startup_timeout,
            )
            .await
            .context("POST /cluster/init failed")?;
        cluster.wait_all_led(deadline).await?;
        cluster.state.save(&cluster.data_dir)?;
        Ok(cluster)
    }

    fn from_parts(
        options: &LocalOptions,
        nodes: Vec<LocalNodeState>,
        children: Vec<(String, Child)>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            state: LocalState {
                cluster_id: "local".to_owned(),
                partitions: options.partitions,
                replication: options.replication,
                base_port: options.base_port,
                node_binary: options.node_binary.clone(),
                runner_pid: Some(std::process::id()),
                raft_heartbeat_ms: options.raft_heartbeat.as_millis() as u64,
                raft_election_timeout_ms: options.raft_election_timeout.as_millis() as u64,
                balance_interval_ms: options.balance_interval.as_millis() as u64,
                max_moves_per_node: options.max_moves_per_node,
                node_args: options.node_args.clone(),
                nodes,
            },
            data_dir: options.data_dir.clone(),
            children,
            // A stand-in until the nodes have logged their addresses (start() replaces
            // it); nothing is sent through it.
            client: client_for(&["127.0.0.1:1".to_owned()])?,
        })
    }

    /// A client for this cluster.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// API addresses of the current nodes.
    pub fn api_addrs(&self) -> Vec<String> {
        self.state.api_addrs()
    }

    /// Waits until every partition has a leader, as merged from all nodes' views.
    pub async fn wait_all_led(&self, deadline: Instant) -> anyhow::Result<PartitionMap> {
        wait_all_led(&self.client, deadline).await
    }

    /// Starts one more node and makes it a member; returns its name. The balancer then
    /// moves replicas onto it; see [`wait_rebalanced`](Self::wait_rebalanced).
    pub async fn add_node(&mut self) -> anyhow::Result<String> {
        let options = self.state.options(&self.data_dir);
        let index = self
            .state
            .nodes
            .iter()
            .map(|n| n.index + 1)
            .max()
            .unwrap_or(0);
        let (mut child, mut node) = spawn_node(&options, index, Lifetime::TiedToParent)?;
        let deadline = Instant::now() + options.startup_timeout;
        let serving = wait_serving(&node.log, &node.name, &mut child, deadline);
        let name = node.name.clone();
        self.children.push((name.clone(), child));
        node.serving_at(serving?);
        self.state.nodes.push(node);
        set_members(&self.client, &self.state).await?;
        self.client = client_for(&self.state.api_addrs())?;
        self.state.save(&self.data_dir)?;
        Ok(name)
    }

    /// Kills `name` at once (SIGKILL), as a crash would; it stays a member.
    pub fn kill_node(&mut self, name: &str) -> anyhow::Result<()> {
        let (_, child) = self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("no running node {name:?} started here"))?;
        child.kill().context("kill failed")?;
        child.wait().context("wait failed")?;
        Ok(())
    }

    /// Waits until the balancer reports the placement reached and no member leaving.
    pub async fn wait_rebalanced(&self, within: Duration) -> anyhow::Result<ClusterStatus> {
        wait_rebalanced(&self.client, Instant::now() + within).await
    }

    /// Stops every node (SIGTERM, then SIGKILL after a grace period) and forgets the
    /// state file.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for (_, child) in &self.children {
            terminate(child.id());
        }
        // Nodes added by other commands are not our children: stop them by pid.
        let others: Vec<u32> = self
            .state
            .nodes
            .iter()
            .map(|n| n.pid)
            .filter(|pid| !self.children.iter().any(|(_, c)| c.id() == *pid))
            .collect();
        for &pid in &others {
            if is_node_process(pid) {
                terminate(pid);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in &mut self.children {
            wait_or_kill(child, deadline);
        }
        for pid in others {
            wait_pid_gone(pid, deadline);
        }
        self.children.clear();
        let _ = std::fs::remove_file(LocalState::path(&self.data_dir));
    }

    /// Reaps children that exited on their own; returns their names and statuses.
    pub fn exited_children(&mut self) -> Vec<(String, std::process::ExitStatus)> {
        let mut exited = Vec::new();
        self.children
            .retain_mut(|(name, child)| match child.try_wait() {
                Ok(Some(status)) => {
                    exited.push((name.clone(), status));
                    false
                }
                _ => true,
            });
        exited
    }

    /// Re-reads the state file (other commands may have added or removed nodes).
    pub fn reload_state(&mut self) -> anyhow::Result<()> {
        self.state = LocalState::load(&self.data_dir)?;
        self.client = client_for(&self.state.api_addrs())?;
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if !self.children.is_empty() {
            self.stop_all();
        }
    }
}

/// `dcache local add-node` against a cluster recorded in `data_dir`: starts a
/// detached node, makes it a member and records it.
pub async fn add_node_to_recorded(data_dir: &Path) -> anyhow::Result<LocalNodeState> {
    let mut state = LocalState::load(data_dir)?;
    let options = state.options(data_dir);
    let index = state.nodes.iter().map(|n| n.index + 1).max().unwrap_or(0);
    // Dropping the Child handle neither kills nor waits: the node outlives this
    // command by design, and the foreground runner stops it by pid.
    let (mut child, mut node) = spawn_node(&options, index, Lifetime::Detached)?;
    let deadline = Instant::now() + options.startup_timeout;
    node.serving_at(wait_serving(&node.log, &node.name, &mut child, deadline)?);
    let client = client_for(&state.api_addrs())?;
    state.nodes.push(node.clone());
    set_members(&client, &state).await?;
    state.save(data_dir)?;
    Ok(node)
}

/// `dcache local remove-node`: drains `name` (default: the newest node) out of the
/// cluster recorded in `data_dir`, stops it and records the change.
pub async fn remove_node_from_recorded(
    data_dir: &Path,
    name: Option<&str>,
    within: Duration,
) -> anyhow::Result<LocalNodeState> {
    let mut state = LocalState::load(data_dir)?;
    let position = match name {
        Some(name) => state
            .nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
                anyhow!("no node {name:?} in the local cluster; its nodes: {names:?}")
            })?,
        None => state
            .nodes
            .iter()
            .enumerate()
            .max_by_key(|(_, n)| n.index)
            .map(|(i, _)| i)
            .ok_or_else(|| anyhow!("the local cluster has no nodes"))?,
    };
    if state.nodes.len() == 1 {
        bail!("refusing to remove the last node of the cluster");
    }
    let node = state.nodes.remove(position);
    let client = client_for(&state.api_addrs())?;
    set_members(&client, &state).await?;
    state.save(data_dir)?;
    wait_drained(&client, &node.name, Instant::now() + within).await?;
    if is_node_process(node.pid) {
        terminate(node.pid);
        wait_pid_gone(node.pid, Instant::now() + Duration::from_secs(5));
    }
    Ok(node)
}

/// Stops the nodes recorded in `state` that still run; returns how many there were.
pub fn stop_recorded_nodes(state: &LocalState) -> usize {
    let running: Vec<u32> = state
        .nodes
        .iter()
        .map(|n| n.pid)
        .filter(|&pid| is_node_process(pid))
        .collect();
    for &pid in &running {
        terminate(pid);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for &pid in &running {
        wait_pid_gone(pid, deadline);
    }
    running.len()
}

fn client_for(addrs: &[String]) -> anyhow::Result<Client> {
    Ok(Client::builder(addrs.iter().cloned())
        .request_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(20))
        .build()?)
}

/// PUT /cluster/members with the nodes of `state`, through whichever node answers.
async fn set_members(client: &Client, state: &LocalState) -> anyhow::Result<()> {
    let request = MembersRequest {
        members: state.nodes.iter().map(|n| n.member()).collect(),
    };
    let mut failures = Vec::new();
    for addr in state.api_addrs() {
        match client
            .send_json_to::<_, serde_json::Value>(
                Method::PUT,
                &addr,
                "/cluster/members",
                &request,
                Duration::from_secs(30),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => failures.push(format!("{addr}: {e}")),
        }
    }
    bail!(
        "PUT /cluster/members failed everywhere: {}",
        failures.join("; ")
    )
}

/// Waits until the merged map has a leader for every partition.
pub async fn wait_all_led(client: &Client, deadline: Instant) -> anyhow::Result<PartitionMap> {
    loop {
        let last = match client.refresh_map().await {
            Ok(map) if map.all_led() => return Ok((*map).clone()),
            Ok(map) => format!(
                "{} of {} partitions without a leader",
                (0..map.partitions())
                    .filter(|&p| map.leader(p).is_none())
                    .count(),
                map.partitions()
            ),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("the cluster did not elect every partition's leader in time: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The view of the cluster group's leader, which runs the balancer.
pub async fn balancer_view(client: &Client) -> Option<ClusterStatus> {
    let views = client.answered_cluster_views().await;
    views
        .iter()
        .find(|v| v.rebalance.active && v.cluster_leader.as_deref() == Some(v.node.as_str()))
        .or_else(|| views.iter().find(|v| v.rebalance.active))
        .cloned()
}

/// Waits until the balancer reports the placement reached and no member leaving.
pub async fn wait_rebalanced(client: &Client, deadline: Instant) -> anyhow::Result<ClusterStatus> {
    loop {
        let last = match balancer_view(client).await {
            Some(view) if view.is_rebalanced() => return Ok(view),
            Some(view) => format!(
                "{} replicas to move, {} moving, {} leaving",
                view.rebalance.replicas_to_move,
                view.rebalance.moving,
                view.leaving.len()
            ),
            None => "no node reports the balancer's progress".to_owned(),
        };
        if Instant::now() >= deadline {
            bail!("rebalancing did not finish in time: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until no node lists `name` as a member or as leaving, and no partition
/// counts it among its voters.
async fn wait_drained(client: &Client, name: &str, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let views = client.answered_cluster_views().await;
        let holds = |v: &ClusterStatus| {
            v.members
                .iter()
                .chain(&v.leaving)
                .any(|m| m.node.name == name)
                || v.partitions
                    .iter()
                    .any(|p| p.voters.iter().any(|voter| voter == name))
        };
        if !views.is_empty() && !views.iter().any(holds) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{name} was not drained in time: a node still lists it");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The nodes of a local cluster share one machine: each gets its share of the cores
/// for its Raft runtime and its HTTP workers (at least one of each), unless the
/// node flags say otherwise. A node with a thread per core of the whole machine would
/// spend its time waking threads that the other nodes' threads have to wait for.
fn thread_args(options: &LocalOptions) -> Vec<String> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let share = (cores / options.nodes.max(1)).max(1).to_string();
    ["--worker-threads", "--http-workers"]
        .into_iter()
        .filter(|flag| !options.node_args.iter().any(|arg| arg.starts_with(flag)))
        .flat_map(|flag| [flag.to_owned(), share.clone()])
        .collect()
}

/// Starts node `node-{index}`; its addresses are filled in once it logs them.
fn spawn_node(
    options: &LocalOptions,
    index: usize,
    lifetime: Lifetime,
) -> anyhow::Result<(Child, LocalNodeState)> {
    let name = format!("node-{index}");
    let port = |offset: usize| match options.base_port {
        0 => Ok(0),
        base => u16::try_from(usize::from(base) + offset + index)
            .context("--base-port leaves no room for this many nodes"),
    };
    let (api_port, raft_port, resp_port) = (port(0)?, port(100)?, port(200)?);
    let log = options.data_dir.join(format!("{name}.log"));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let millis = |d: Duration| format!("{}ms", d.as_millis());
    let mut command = Command::new(&options.node_binary);
    command
        .args(["--listen", &format!("127.0.0.1:{api_port}")])
        .args(["--raft-listen", &format!("127.0.0.1:{raft_port}")])
        .args(["--node-id", &name])
        .args(["--partitions", &options.partitions.to_string()])
        .args(["--replication", &options.replication.to_string()])
        .args(["--raft-heartbeat", &millis(options.raft_heartbeat)])
        .args([
            "--raft-election-timeout",
            &millis(options.raft_election_timeout),
        ])
        .args(["--balance-interval", &millis(options.balance_interval)])
        .args([
            "--max-moves-per-node",
            &options.max_moves_per_node.to_string(),
        ])
        .args(["--shutdown-timeout", "2s", "--log-format", "text"])
        .args(thread_args(options))
        .args(
            (!options
                .node_args
                .iter()
                .any(|arg| arg.starts_with("--resp-listen")))
            .then(|| ["--resp-listen".to_owned(), format!("127.0.0.1:{resp_port}")])
            .into_iter()
            .flatten(),
        )
        .args(&options.node_args)
        .env("NO_COLOR", "1")
        // openraft logs every vote and heartbeat failure at info/warn; a busy laptop
        // cluster would spend its time writing logs. The node's own info lines stay
        // (the serving line is read from them).
        .env(
            "RUST_LOG",
            std::env::var("DCACHE_NODE_LOG")
                .unwrap_or_else(|_| "error,dcache_node=info".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    match lifetime {
        Lifetime::TiedToParent => {
            let parent = std::process::id();
            // SAFETY: between fork and exec only async-signal-safe calls are made
            // (prctl, getppid, _exit), as pre_exec requires.
            unsafe {
                command.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The parent may have died before prctl took effect.
                    if libc::getppid() as u32 != parent {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
        }
        Lifetime::Detached => {
            // Its own process group: a Ctrl-C meant for the short-lived command that
            // started it does not reach it.
            command.process_group(0);
        }
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", options.node_binary.display()))?;
    let node = LocalNodeState {
        name,
        index,
        api_addr: String::new(),
        raft_addr: String::new(),
        resp_addr: None,
        pid: child.id(),
        log,
    };
    Ok((child, node))
}

/// Waits for the node's "dcache-node serving" log line; returns the addresses in it.
fn wait_serving(
    log: &Path,
    name: &str,
    child: &mut Child,
    deadline: Instant,
) -> anyhow::Result<Serving> {
    loop {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(log) {
            let _ = file.read_to_string(&mut text);
        }
        if let Some(line) = text.lines().find(|l| l.contains("dcache-node serving")) {
            let field = |field: &str| {
                line.split(&format!(" {field}="))
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(|v| v.trim_matches('"').to_owned())
            };
            return match (field("listen"), field("raft")) {
                (Some(api), Some(raft)) if raft != "standalone" => Ok(Serving {
                    api,
                    raft,
                    resp: field("resp").filter(|resp| resp != "off"),
                }),
                _ => Err(anyhow!("{name} logged no addresses: {line}")),
            };
        }
        // What the node said last, or from its fatal error on if it printed one (the
        // backtrace after the cause is noise here).
        let tail = || {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines
                .iter()
                .position(|l| l.starts_with("Error:"))
                .unwrap_or(lines.len().saturating_sub(5));
            lines[from..]
                .iter()
                .take_while(|l| !l.starts_with("Stack backtrace"))
                .take(8)
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        };
        // A node that cannot bind its port (or has a bad flag) exits at once: say so
        // now rather than at the deadline.
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "{name} exited ({status}) before serving; its log {}:\n{}",
                log.display(),
                tail()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{name} did not start serving in time; its log {}:\n{}",
                log.display(),
                tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

fn wait_or_kill(child: &mut Child, deadline: Instant) {
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until `pid` is gone (or a zombie waiting for its parent to reap it).
fn wait_pid_gone(pid: u32, deadline: Instant) {
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        if stat.is_empty() || state == Some("Z") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Whether `pid` is still a dcache-node (guards against a recycled pid).
fn is_node_process(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| {
            cmdline
                .split(|&b| b == 0)
                .next()
                .is_some_and(|exe| exe.ends_with(b"dcache-node"))
        })
        .unwrap_or(false)
}
