//! Command-line flags of `dcache-node`, each also settable as a `DCACHE_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::store::EvictionPolicy;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "dcache-node",
    version,
    about = "A dcache cache node: an in-memory cache with an HTTP API and Prometheus metrics.",
    after_help = "Sizes take binary or decimal units (512MiB, 1GiB, 64kB, or plain bytes). \
                  Durations take units (500ms, 30s, 5m) or plain seconds."
)]
pub struct NodeConfig {
    /// Address the HTTP cache API listens on.
    #[arg(long, env = "DCACHE_LISTEN", default_value = "0.0.0.0:7000")]
    pub listen: SocketAddr,

    /// Address the Raft RPC endpoint listens on. Setting it makes this node a cluster
    /// member (formed with POST /cluster/init); without it the node runs standalone.
    #[arg(long, env = "DCACHE_RAFT_LISTEN")]
    pub raft_listen: Option<SocketAddr>,

    /// `host:port` other nodes and clients use to reach this node's API. Defaults to
    /// the bound listen address.
    #[arg(long, env = "DCACHE_ADVERTISE_API")]
    pub advertise_api: Option<String>,

    /// `host:port` other nodes use to reach this node's Raft endpoint. Defaults to the
    /// bound Raft listen address.
    #[arg(long, env = "DCACHE_ADVERTISE_RAFT")]
    pub advertise_raft: Option<String>,

    /// Address the Redis-protocol (RESP) listener binds, e.g. `0.0.0.0:6379`: Redis
    /// Cluster clients (`redis-cli -c`, redis-py's RedisCluster, ...) then work against
    /// the cluster. Unset: no RESP listener.
    #[arg(long, env = "DCACHE_RESP_LISTEN")]
    pub resp_listen: Option<SocketAddr>,

    /// `host:port` Redis Cluster clients are sent to for this node (`CLUSTER SLOTS`,
    /// `-MOVED`). Defaults to the bound RESP address.
    #[arg(long, env = "DCACHE_ADVERTISE_RESP")]
    pub advertise_resp: Option<String>,

    /// What `READONLY` does on a RESP connection: `local` reads from whichever replica
    /// the command reaches, as a Redis replica does (possibly stale); `linearizable`
    /// keeps every read linearizable, for clients that send READONLY on every
    /// connection (the Rust `redis` crate's cluster client does).
    #[arg(long, env = "DCACHE_RESP_READONLY", value_enum, default_value_t = ReadonlyReads::Local)]
    pub resp_readonly: ReadonlyReads,

    /// Replicas per partition when this node initialises a cluster (capped by the
    /// member count).
    #[arg(long, env = "DCACHE_REPLICATION", default_value_t = 3,
          value_parser = clap::value_parser!(u8).range(1..=7))]
    pub replication: u8,

    /// Points per member on the consistent-hash ring when this node initialises a
    /// cluster.
    #[arg(long, env = "DCACHE_VNODES", default_value_t = crate::placement::DEFAULT_VNODES,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub vnodes: u32,

    /// Replica moves the balancer runs at once onto any one node.
    #[arg(long, env = "DCACHE_MAX_MOVES_PER_NODE", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_moves_per_node: u16,

    /// How often the balancer (on the cluster group's leader) compares replicas with
    /// the placement and takes the next steps.
    #[arg(long, env = "DCACHE_BALANCE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub balance_interval: Duration,

    /// How often a Raft leader heartbeats its followers.
    #[arg(long, env = "DCACHE_RAFT_HEARTBEAT", default_value = "150ms", value_parser = parse_duration)]
    pub raft_heartbeat: Duration,

    /// Shortest time without a leader before a follower stands for election (the
    /// longest is twice this).
    #[arg(long, env = "DCACHE_RAFT_ELECTION_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub raft_election_timeout: Duration,

    /// A partition takes a snapshot of its data after this many log entries and
    /// discards the log before it, but for the last min(N, 1000)/2 entries kept for
    /// followers that trail a little; a replica further behind catches up from the
    /// snapshot.
    #[arg(long, env = "DCACHE_RAFT_SNAPSHOT_ENTRIES", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub raft_snapshot_entries: u64,

    /// How a partition leader makes sure it still leads before a linearizable read:
    /// `lease` answers at once while a quorum acknowledged it within 9/10 of the
    /// election timeout (followers refuse to elect anyone else for twice that long),
    /// and otherwise confirms with a quorum first; `read-index` always confirms with a
    /// quorum (one heartbeat round, shared by the reads waiting at that moment; safe
    /// whatever the clocks do). `make bench-reads` compares them.
    #[arg(long, env = "DCACHE_READ_POLICY", value_enum, default_value_t = ReadPolicy::Lease)]
    pub read_policy: ReadPolicy,

    /// Serve POST /admin/fault, which cuts this node off from its peers (for
    /// partition tests). Never enable in production.
    #[arg(long, env = "DCACHE_ENABLE_FAULT_INJECTION", default_value_t = false)]
    pub enable_fault_injection: bool,

    /// This node's stable member name: its place on the ring, in logs, /stats and
    /// metrics. Defaults to the listen address.
    #[arg(long, env = "DCACHE_NODE_ID")]
    pub node_id: Option<String>,

    /// Memory budget for cached keys and values, per-entry overhead included. Past it
    /// the eviction policy makes room.
    #[arg(long, env = "DCACHE_MAX_MEMORY", default_value = "512MiB", value_parser = parse_size)]
    pub max_memory: u64,

    /// Which entries make room when the budget is full.
    #[arg(long, env = "DCACHE_EVICTION_POLICY", value_enum, default_value_t = EvictionPolicy::Tinylfu)]
    pub eviction_policy: EvictionPolicy,

    /// TTL applied to writes that do not give one. Unset: such keys never expire.
    #[arg(long, env = "DCACHE_DEFAULT_TTL", value_parser = parse_duration)]
    pub default_ttl: Option<Duration>,

    /// Largest key accepted, in bytes after percent-decoding; longer keys get 413.
    #[arg(long, env = "DCACHE_MAX_KEY_BYTES", default_value = "1KiB", value_parser = parse_size)]
    pub max_key_bytes: u64,

    /// Largest value accepted (JSON text or raw bytes); larger values get 413.
    #[arg(long, env = "DCACHE_MAX_VALUE_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub max_value_bytes: u64,

    /// Number of partitions keys hash into. Fixed for the life of a cluster.
    #[arg(long, env = "DCACHE_PARTITIONS", default_value_t = dcache_protocol::DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub partitions: u32,

    /// How often expired entries are swept out in the background.
    #[arg(long, env = "DCACHE_EXPIRY_SWEEP_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    pub expiry_sweep_interval: Duration,

    /// On SIGTERM or Ctrl-C, how long in-flight requests may take to finish before the
    /// node exits anyway.
    #[arg(long, env = "DCACHE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// On SIGTERM, how long a cluster node holds its stop, before the shutdown timeout
    /// starts, while some partition would lose its majority by its going (another
    /// replica down, restarting or catching up). 0 stops at once.
    #[arg(long, env = "DCACHE_SAFE_STOP_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub safe_stop_timeout: Duration,

    /// Threads serving HTTP, each with its own event loop; 0 means one per core.
    #[arg(long, env = "DCACHE_HTTP_WORKERS", default_value_t = 0)]
    pub http_workers: usize,

    /// Threads running the Raft groups, replication and the cluster's housekeeping;
    /// 0 means one per core. Nodes sharing a machine (`dcache local`) split its cores.
    #[arg(long, env = "DCACHE_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// API token files (comma-separated or repeated): one token per line,
    /// `<token> <scope>[,<scope>...]` with scopes read, write, admin. Setting it turns
    /// authentication on: every route but /health, /ready (and /metrics unless
    /// --metrics-auth) then needs `Authorization: Bearer <token>`. Re-read when the
    /// files change.
    #[arg(long, env = "DCACHE_TOKENS_FILE", value_delimiter = ',')]
    pub tokens_file: Vec<PathBuf>,

    /// With --tokens-file: /metrics needs a token with the read scope too.
    #[arg(
        long,
        env = "DCACHE_METRICS_AUTH",
        default_value_t = false,
        requires = "tokens_file"
    )]
    pub metrics_auth: bool,

    /// File holding the cluster secret (at least 16 characters, surrounding
    /// whitespace ignored): sent with every Raft RPC and required on every one
    /// received, so only members can speak Raft to this node. Every member needs the
    /// same secret. Re-read when the file changes.
    #[arg(long, env = "DCACHE_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// PEM certificate chain (e.g. a Secret's tls.crt): serves the API and Raft over
    /// TLS, and calls peers over https. Re-read when the file changes.
    #[arg(long, env = "DCACHE_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of --tls-cert-file (tls.key).
    #[arg(long, env = "DCACHE_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// PEM CA certificates (ca.crt) that peers' certificates are verified against;
    /// needed by cluster members with TLS on. Re-read when the file changes.
    #[arg(long, env = "DCACHE_TLS_CA_FILE", requires = "tls_cert_file")]
    pub tls_ca_file: Option<PathBuf>,

    /// How often token, secret and certificate files are checked for changes.
    #[arg(long, env = "DCACHE_SECRET_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub secret_reload_interval: Duration,

    /// Longest a client may take to send a request's headers (and the TLS handshake);
    /// also how long an idle keep-alive connection stays open. Slower clients are
    /// disconnected.
    #[arg(long, env = "DCACHE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Longest an API request may take from its headers to its response, body
    /// included; past it the answer is 408.
    #[arg(long, env = "DCACHE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Most API connections open at once; more are closed as soon as accepted.
    #[arg(long, env = "DCACHE_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Admin calls (/cluster/init, /cluster/members, /admin/*) served per second,
    /// in bursts of as many; more get 429.
    #[arg(long, env = "DCACHE_ADMIN_RATE_LIMIT", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_rate_limit: u32,

    /// Where the Raft log, votes and snapshots live: `none` keeps everything in memory
    /// (a restarted node rejoins as a new member and catches up from its peers), `disk`
    /// keeps them in `--data-dir`, so a restarted node keeps its identity and data.
    #[arg(long, env = "DCACHE_PERSISTENCE", value_enum, default_value_t = Persistence::None)]
    pub persistence: Persistence,

    /// The directory for `--persistence disk`: the node's identity, its write-ahead log
    /// and its snapshots. Locked while the node runs.
    #[arg(long, env = "DCACHE_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,

    /// When an appended entry counts as stored (`--persistence disk`): `always` after
    /// fdatasync (nothing acknowledged is ever lost), `interval:<ms>` after write(2)
    /// with fdatasync every <ms> (a crashed process loses nothing; a crashed machine
    /// may lose up to that long of acknowledged writes). Votes and snapshots are
    /// always synced.
    #[arg(long, env = "DCACHE_FSYNC", default_value = "always", value_parser = crate::persist::FsyncPolicy::parse)]
    pub fsync: crate::persist::FsyncPolicy,

    /// Log line format. The level comes from RUST_LOG (default: info).
    #[arg(long, env = "DCACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadPolicy {
    ReadIndex,
    Lease,
}

impl ReadPolicy {
    /// How long a partition leader trusts a quorum's last acknowledgement for a
    /// linearizable read, or `None` for read-index (a quorum round per read batch).
    ///
    /// The lease is bounded as TiKV bounds its own: shorter than the election timeout
    /// by a drift margin, on the monotonic clock. openraft's followers grant no vote
    /// for `election_timeout_max` (twice the minimum here) after they last heard from
    /// their leader, counted from when they received it, while the leader counts from
    /// when it sent what they acknowledged; a lease of 9/10 of the minimum leaves more
    /// than half of that as margin for clocks that run at different rates.
    pub fn lease(self, election_timeout_min: Duration) -> Option<Duration> {
        match self {
            ReadPolicy::ReadIndex => None,
            ReadPolicy::Lease => Some(election_timeout_min * 9 / 10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Persistence {
    None,
    Disk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl NodeConfig {
    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// The data directory if persistence is on; refuses flags that contradict each
    /// other rather than ignoring one of them.
    pub fn data_dir(&self) -> Result<Option<&std::path::Path>, String> {
        match (self.persistence, &self.data_dir) {
            (Persistence::None, None) => Ok(None),
            (Persistence::None, Some(_)) => {
                Err("--data-dir is only used with --persistence disk".into())
            }
            (Persistence::Disk, None) => Err("--persistence disk needs --data-dir".into()),
            (Persistence::Disk, Some(_)) if self.raft_listen.is_none() => Err(
                "--persistence disk keeps the Raft log: it needs a cluster member (--raft-listen)"
                    .into(),
            ),
            (Persistence::Disk, Some(dir)) => Ok(Some(dir)),
        }
    }
}

/// Parses `512MiB`, `1GiB`, `64kB` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a size like 512MiB: {e}"))?;
    if size.as_u64() == 0 {
        return Err(format!("{text:?}: size must be greater than zero"));
    }
    Ok(size.as_u64())
}

/// Parses `500ms`, `30s`, `5m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration like 30s: {e}"))?,
    };
    if duration.is_zero() {
        return Err(format!("{text:?}: duration must be greater than zero"));
    }
    Ok(duration)
}

/// What `READONLY` does on a RESP connection (`--resp-readonly`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReadonlyReads {
    /// As on a Redis replica: reads are answered by whichever voting replica the
    /// command reaches (`consistency=local`), and may be stale.
    #[default]
    Local,
    /// READONLY is accepted and changes nothing: every read stays linearizable. For
    /// clients that send READONLY on every connection whether or not they read from
    /// replicas (the Rust `redis` crate's cluster client does).
    Linearizable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("64kB"), Ok(64_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("-5MiB").is_err());
    }

    #[test]
    fn durations_parse_with_units_or_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn defaults_and_environment() {
        let config = NodeConfig::try_parse_from(["dcache-node"]).unwrap();
        assert_eq!(config.max_memory, 512 << 20);
        assert_eq!(config.max_key_bytes, 1024);
        assert_eq!(config.max_value_bytes, 1 << 20);
        assert_eq!(config.eviction_policy, EvictionPolicy::Tinylfu);
        assert_eq!(config.partitions, 64);
        assert!(config.tokens_file.is_empty() && config.cluster_secret_file.is_none());
        assert_eq!(config.header_read_timeout, Duration::from_secs(10));
        let config = NodeConfig::try_parse_from(["dcache-node", "--tokens-file", "a,b"]).unwrap();
        assert_eq!(config.tokens_file, [PathBuf::from("a"), PathBuf::from("b")]);
        let err = NodeConfig::try_parse_from(["dcache-node", "--tls-cert-file", "c"]).unwrap_err();
        assert!(err.to_string().contains("--tls-key-file"), "{err}");
        let err = NodeConfig::try_parse_from(["dcache-node", "--max-memory", "big"]).unwrap_err();
        assert!(err.to_string().contains("not a size"), "{err}");
        let err =
            NodeConfig::try_parse_from(["dcache-node", "--eviction-policy", "fifo"]).unwrap_err();
        assert!(err.to_string().contains("tinylfu"), "{err}");
        assert_eq!(config.persistence, Persistence::None);
        assert_eq!(config.data_dir(), Ok(None));
    }

    #[test]
    fn persistence_flags_must_agree() {
        let parse = |args: &[&str]| {
            NodeConfig::try_parse_from(
                ["dcache-node", "--raft-listen", "127.0.0.1:0"]
                    .iter()
                    .chain(args),
            )
        };
        let disk = parse(&[
            "--persistence",
            "disk",
            "--data-dir",
            "/tmp/d",
            "--fsync",
            "interval:10",
        ])
        .unwrap();
        assert_eq!(disk.data_dir(), Ok(Some(std::path::Path::new("/tmp/d"))));
        assert_eq!(
            disk.fsync,
            crate::persist::FsyncPolicy::Interval(Duration::from_millis(10))
        );
        let no_dir = parse(&["--persistence", "disk"]).unwrap();
        assert!(no_dir.data_dir().unwrap_err().contains("needs --data-dir"));
        let stray_dir = parse(&["--data-dir", "/tmp/d"]).unwrap();
        assert!(stray_dir.data_dir().unwrap_err().contains("only used with"));
        let standalone = NodeConfig::try_parse_from([
            "dcache-node",
            "--persistence",
            "disk",
            "--data-dir",
            "/tmp/d",
        ])
        .unwrap();
        assert!(standalone.data_dir().unwrap_err().contains("--raft-listen"));
        let err = parse(&["--fsync", "sometimes"]).unwrap_err();
        assert!(err.to_string().contains("interval:<ms>"), "{err}");
    }
}
