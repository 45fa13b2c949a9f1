//! `dcache`: the command line of dcache. One-shot cache commands, a local cluster
//! runner, a load generator and the demo.

mod bench;
mod demo;
mod local_cmd;
mod oneshot;
mod peers;
mod resp_demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Nodes used when neither --nodes nor DCACHE_NODES names any.
const DEFAULT_NODES: &str = "127.0.0.1:7000";

#[derive(Debug, Parser)]
#[command(
    name = "dcache",
    version,
    about = "The dcache command line: read and write a cluster, run one locally, load it, demo it.",
    after_help = "Examples:\n  dcache local --nodes 3                  start a 3-node cluster on 127.0.0.1:7000-7002\n  \
                  dcache set user:1 '{\"name\":\"Alice\"}' --ttl 60\n  dcache get user:1\n  \
                  dcache cluster\n  dcache bench --connections 50 --duration 10s --ratio 9:1\n  dcache demo"
)]
struct Cli {
    /// Nodes to contact, as host:port, comma-separated. Any members will do: the
    /// client learns the others from them. [default: 127.0.0.1:7000]
    #[arg(long, env = "DCACHE_NODES", value_delimiter = ',', value_parser = parse_node_addr)]
    nodes: Option<Vec<String>>,

    /// API token for nodes started with --tokens-file, sent as `Authorization:
    /// Bearer <token>`.
    #[arg(long, env = "DCACHE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,

    /// PEM CA certificate(s) to trust (the cluster's ca.crt); talks https to the
    /// nodes. Nodes given as https://host:port also turn https on.
    #[arg(long, env = "DCACHE_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the value of KEY (JSON as JSON, raw bytes as they are).
    Get {
        key: String,
        /// `local` reads from any replica, possibly stale.
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
    },
    /// Store VALUE under KEY: as JSON if it parses as JSON, else as a JSON string.
    Set {
        key: String,
        value: String,
        /// Time to live in seconds (fractions allowed).
        #[arg(long, value_parser = parse_ttl_seconds)]
        ttl: Option<Duration>,
        /// Store VALUE as raw bytes (application/octet-stream) instead of JSON.
        #[arg(long)]
        raw: bool,
    },
    /// Delete KEY.
    Del { key: String },
    /// Statistics of every member: keys, bytes, hits, misses, partitions led.
    Stats,
    /// Members, partitions with replicas and leaders, leaders per node, rebalancing.
    Cluster,
    /// Run a cluster of dcache-node processes on 127.0.0.1 (Ctrl-C stops it), or
    /// change the running one.
    Local(LocalArgs),
    /// Load generator: concurrent gets and sets, a latency table at the end.
    Bench(BenchArgs),
    /// Play the demo scenarios against a cluster (one it starts itself by default).
    Demo(DemoArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ConsistencyArg {
    Linearizable,
    Local,
}

impl ConsistencyArg {
    fn name(self) -> &'static str {
        match self {
            Self::Linearizable => "linearizable",
            Self::Local => "local",
        }
    }
}

impl From<ConsistencyArg> for dcache_client::Consistency {
    fn from(consistency: ConsistencyArg) -> Self {
        match consistency {
            ConsistencyArg::Linearizable => Self::Linearizable,
            ConsistencyArg::Local => Self::Local,
        }
    }
}

#[derive(Debug, Args)]
struct LocalArgs {
    #[command(subcommand)]
    action: Option<LocalAction>,
    /// How many nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    nodes: u16,
    /// API port of the first node; node i listens on BASE+i, its Raft endpoint on
    /// BASE+100+i. 0 picks free ports.
    #[arg(long, default_value_t = 7000)]
    base_port: u16,
    /// Where node logs and the record of the running cluster go.
    #[arg(long, global = true, default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Partitions of the cluster.
    #[arg(long, default_value_t = dcache_protocol::DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    partitions: u32,
    /// Replicas per partition (capped by the node count).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=7))]
    replication: u8,
    /// The dcache-node executable [default: next to this program].
    #[arg(long)]
    node_binary: Option<PathBuf>,
    /// More dcache-node flags for every node, after `--` (e.g. `-- --read-policy lease`).
    #[arg(last = true, value_name = "NODE_FLAGS")]
    node_args: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum LocalAction {
    /// Start one more node and add it to the running local cluster.
    AddNode {
        /// Wait at most this long for the balancer to move replicas onto it.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Drain a node out of the running local cluster, then stop it.
    RemoveNode {
        /// Its name (node-N) [default: the newest node].
        id: Option<String>,
        /// Wait at most this long for it to be drained.
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, Args, Clone)]
struct BenchArgs {
    /// Concurrent requests in flight (each one a pooled connection).
    #[arg(long, short = 'c', default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// Total requests to send [default: 100000 unless --duration is given].
    #[arg(long, short = 'n', conflicts_with = "duration",
          value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Run for this long instead of a number of requests (10s, 1m).
    #[arg(long, short = 'd', value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Bytes per value written.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    value_size: u32,
    /// Gets to sets, as GETS:SETS (9:1 is nine gets for every set).
    #[arg(long, default_value = "9:1", value_parser = parse_ratio)]
    ratio: bench::Ratio,
    /// Distinct keys the load is spread over.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keyspace: u64,
    /// How keys are picked: evenly, or a few hot keys (Zipf).
    #[arg(long, value_enum, default_value_t = bench::Distribution::Uniform)]
    distribution: bench::Distribution,
    /// Exponent of the Zipf distribution (larger is more skewed).
    #[arg(long, default_value_t = 1.0, value_parser = parse_positive_float)]
    zipf_exponent: f64,
    /// `smart`: each request to its partition's leader. `http`: everything through the
    /// first node, which forwards.
    #[arg(long, value_enum, default_value_t = bench::Mode::Smart)]
    mode: bench::Mode,
    /// Consistency of the gets: `local` reads from any replica, skipping the leader's
    /// read-index round.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    consistency: ConsistencyArg,
    /// Write the keyspace once before the run, so that gets hit.
    #[arg(long)]
    preload: bool,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// What to load: dcache at --nodes, or a peer to compare with — Redis at the first
    /// --nodes address, or etcd at the --nodes client addresses (its v3 JSON gateway).
    #[arg(long, value_enum, default_value_t = peers::Target::Dcache)]
    target: peers::Target,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// The cluster to play against; without it (and without the global --nodes or
    /// DCACHE_NODES) the demo starts a 3-node cluster of its own in a temporary
    /// directory, which also lets it kill and add nodes.
    #[arg(long = "nodes", value_delimiter = ',', value_parser = parse_node_addr)]
    demo_nodes: Option<Vec<String>>,
    /// The dcache-node executable for a cluster of its own [default: next to this
    /// program].
    #[arg(long)]
    node_binary: Option<PathBuf>,
}

fn default_data_dir() -> PathBuf {
    std::env::temp_dir().join("dcache-local")
}

fn parse_node_addr(text: &str) -> Result<String, String> {
    dcache_client::normalize_addr(text).map_err(|_| {
        format!("{text:?} is not a node address: expected host:port, like 127.0.0.1:7000")
    })
}

fn parse_ttl_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    dcache_protocol::wire::validate_ttl(seconds)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration like 10s or 2m: {e}"))?,
    };
    if duration.is_zero() {
        return Err(format!("{text:?}: the duration must be greater than zero"));
    }
    Ok(duration)
}

fn parse_ratio(text: &str) -> Result<bench::Ratio, String> {
    let malformed = || format!("{text:?} is not a GETS:SETS ratio like 9:1 or 1:0");
    let (gets, sets) = text.split_once(':').ok_or_else(malformed)?;
    let gets: u32 = gets.trim().parse().map_err(|_| malformed())?;
    let sets: u32 = sets.trim().parse().map_err(|_| malformed())?;
    if gets == 0 && sets == 0 {
        return Err(format!(
            "{text:?}: at least one side of the ratio must be above zero"
        ));
    }
    Ok(bench::Ratio { gets, sets })
}

fn parse_positive_float(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes
    // away (`dcache cluster | head`) instead of failing to print.
    // SAFETY: called before any thread starts; SIG_DFL is always a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DCACHE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the one-shot commands and the bench connect, and with which credentials.
pub struct Connection {
    pub nodes: Vec<String>,
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
}

impl Connection {
    /// A client builder for these nodes, with the token and CA if given.
    pub fn builder(&self) -> dcache_client::ClientBuilder {
        let mut builder = dcache_client::Client::builder(self.nodes.iter().cloned());
        if let Some(token) = &self.token {
            builder = builder.token(token.clone());
        }
        if let Some(pem) = &self.ca_pem {
            builder = builder.ca_certificate_pem(pem.clone());
        }
        builder
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let explicit_nodes = cli.nodes.clone();
    let ca_pem = match &cli.ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read --ca-file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let nodes = Connection {
        nodes: cli.nodes.unwrap_or_else(|| vec![DEFAULT_NODES.to_owned()]),
        token: cli.token,
        ca_pem,
    };
    let nodes = &nodes;
    match cli.command {
        Command::Get { key, consistency } => oneshot::get(nodes, &key, consistency.into()).await,
        Command::Set {
            key,
            value,
            ttl,
            raw,
        } => oneshot::set(nodes, &key, &value, ttl, raw).await,
        Command::Del { key } => oneshot::delete(nodes, &key).await,
        Command::Stats => oneshot::stats(nodes).await,
        Command::Cluster => oneshot::cluster(nodes).await,
        Command::Local(args) => local_cmd::run(args).await,
        Command::Bench(args) => bench::command(nodes, args).await,
        Command::Demo(args) => {
            let target = args.demo_nodes.clone().or(explicit_nodes);
            demo::run(target, args.node_binary).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ratios_parse() {
        let ratio = parse_ratio("9:1").unwrap();
        assert_eq!((ratio.gets, ratio.sets), (9, 1));
        assert_eq!(parse_ratio(" 1 : 0 ").unwrap().sets, 0);
        for bad in ["9", "9-1", "a:b", "0:0", "-1:2", "1:2:3"] {
            assert!(parse_ratio(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn durations_and_ttls_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_ttl_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_ttl_seconds("0").is_err());
        assert!(parse_ttl_seconds("soon").is_err());
    }
}
