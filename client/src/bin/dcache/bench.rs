//! `dcache bench`: a load generator in the spirit of redis-benchmark.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::ValueEnum;
use dcache_client::Routing;

use crate::Connection;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution as _, Zipf};
use serde_json::json;

use crate::BenchArgs;
use crate::peers::{Backend, Target};

/// Requests sent when neither --requests nor --duration is given.
const DEFAULT_REQUESTS: u64 = 100_000;
/// Latencies are recorded in microseconds up to a minute, to 3 significant digits.
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    pub gets: u32,
    pub sets: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    Uniform,
    Zipf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The smart client: each request straight to its partition's leader.
    Smart,
    /// Plain HTTP through the first node, which forwards to the leader.
    Http,
}

impl Mode {
    pub fn routing(self) -> Routing {
        match self {
            Self::Smart => Routing::Smart,
            Self::Http => Routing::FirstNode,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Smart => "smart",
            Self::Http => "http",
        }
    }
}

/// When a run ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    After(u64),
    Elapsed(Duration),
}

/// What a run sends.
#[derive(Debug, Clone)]
pub struct Workload {
    pub connections: u32,
    pub stop: Stop,
    pub value_size: u32,
    pub ratio: Ratio,
    pub keyspace: u64,
    pub distribution: Distribution,
    pub zipf_exponent: f64,
    pub key_prefix: String,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

impl Workload {
    pub fn from_args(args: &BenchArgs) -> Self {
        Self {
            connections: args.connections,
            stop: match (args.requests, args.duration) {
                (_, Some(duration)) => Stop::Elapsed(duration),
                (Some(requests), None) => Stop::After(requests),
                (None, None) => Stop::After(DEFAULT_REQUESTS),
            },
            value_size: args.value_size,
            ratio: args.ratio,
            keyspace: args.keyspace,
            distribution: args.distribution,
            zipf_exponent: args.zipf_exponent,
            key_prefix: "bench:".to_owned(),
            progress: true,
        }
    }

    fn key(&self, index: u64) -> String {
        format!("{}{index}", self.key_prefix)
    }
}

/// What one kind of operation did.
#[derive(Clone)]
pub struct OpStats {
    pub latency_us: Histogram<u64>,
    pub errors: u64,
    /// Gets that found nothing.
    pub misses: u64,
    pub last_error: Option<String>,
}

impl OpStats {
    fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
            errors: 0,
            misses: 0,
            last_error: None,
        }
    }

    fn merge(&mut self, other: OpStats) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds");
        self.errors += other.errors;
        self.misses += other.misses;
        if other.last_error.is_some() {
            self.last_error = other.last_error;
        }
    }

    fn record(&mut self, started: Instant) {
        let micros = started
            .elapsed()
            .as_micros()
            .clamp(1, u128::from(MAX_LATENCY_US)) as u64;
        self.latency_us.saturating_record(micros);
    }

    /// Successful operations.
    pub fn count(&self) -> u64 {
        self.latency_us.len()
    }

    pub fn percentile_ms(&self, percentile: f64) -> f64 {
        self.latency_us.value_at_quantile(percentile / 100.0) as f64 / 1000.0
    }
}

pub struct Report {
    pub elapsed: Duration,
    pub get: OpStats,
    pub set: OpStats,
}

impl Report {
    pub fn ops_per_sec(&self, stats: &OpStats) -> f64 {
        stats.count() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn total_ops(&self) -> u64 {
        self.get.count() + self.set.count()
    }

    pub fn total_errors(&self) -> u64 {
        self.get.errors + self.set.errors
    }

    /// Gets and sets together: the latency of the mix as its callers see it.
    pub fn all(&self) -> OpStats {
        let mut all = self.get.clone();
        all.merge(self.set.clone());
        all
    }
}

enum KeyPicker {
    Uniform(u64),
    Zipf(Zipf<f64>),
}

impl KeyPicker {
    fn new(workload: &Workload) -> Self {
        match workload.distribution {
            Distribution::Uniform => Self::Uniform(workload.keyspace),
            Distribution::Zipf => Self::Zipf(
                Zipf::new(workload.keyspace as f64, workload.zipf_exponent)
                    .expect("keyspace >= 1 and exponent > 0 are checked by the parser"),
            ),
        }
    }

    fn pick(&self, rng: &mut StdRng) -> u64 {
        match self {
            Self::Uniform(keyspace) => rng.random_range(0..*keyspace),
            // Rank 1 is the hottest key: key 0.
            Self::Zipf(zipf) => zipf.sample(rng) as u64 - 1,
        }
    }
}

/// Writes every key of the keyspace once, `connections` at a time (at most 64).
pub async fn preload(backend: &Backend, workload: &Workload) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'x'; workload.value_size as usize]);
    let workers = (0..workload.connections.min(64)).map(|worker| {
        let (backend, next, value) = (backend.clone(), next.clone(), value.clone());
        let workload = workload.clone();
        tokio::spawn(async move {
            let mut connection = backend.connect(worker).await?;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= workload.keyspace {
                    return Ok::<_, String>(());
                }
                connection.set(&workload.key(index), &value).await?;
            }
        })
    });
    for worker in futures_util::future::join_all(workers).await {
        worker?.map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(())
}

/// Runs the workload against `backend` and measures it.
pub async fn run(backend: &Backend, workload: &Workload) -> Report {
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'x'; workload.value_size as usize]);
    let started = Instant::now();
    let progress = progress_bar(workload);
    let ticker = {
        let (progress, done, stop) = (progress.clone(), done.clone(), workload.stop);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            loop {
                ticks.tick().await;
                let ops = done.load(Ordering::Relaxed);
                let rate = ops as f64 / started.elapsed().as_secs_f64().max(1e-9);
                match stop {
                    Stop::After(_) => progress.set_position(ops),
                    Stop::Elapsed(_) => progress.set_position(started.elapsed().as_millis() as u64),
                }
                progress.set_message(format!("{ops} ops, {rate:.0} ops/s"));
            }
        })
    };
    let workers: Vec<_> = (0..workload.connections)
        .map(|worker| {
            let (backend, issued, done, value) =
                (backend.clone(), issued.clone(), done.clone(), value.clone());
            let workload = workload.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(rand::random::<u64>() ^ u64::from(worker));
                let picker = KeyPicker::new(&workload);
                let (mut get, mut set) = (OpStats::new(), OpStats::new());
                let mut connection = match backend.connect(worker).await {
                    Ok(connection) => connection,
                    Err(e) => {
                        get.errors += 1;
                        get.last_error = Some(e);
                        return (get, set);
                    }
                };
                let total_weight = workload.ratio.gets + workload.ratio.sets;
                loop {
                    match workload.stop {
                        Stop::After(requests) => {
                            if issued.fetch_add(1, Ordering::Relaxed) >= requests {
                                break;
                            }
                        }
                        Stop::Elapsed(duration) => {
                            if started.elapsed() >= duration {
                                break;
                            }
                        }
                    }
                    let key = workload.key(picker.pick(&mut rng));
                    let is_get = rng.random_range(0..total_weight) < workload.ratio.gets;
                    let began = Instant::now();
                    if is_get {
                        match connection.get(&key).await {
                            Ok(found) => {
                                get.record(began);
                                get.misses += u64::from(!found);
                            }
                            Err(e) => {
                                get.errors += 1;
                                get.last_error = Some(e);
                            }
                        }
                    } else {
                        match connection.set(&key, &value).await {
                            Ok(()) => set.record(began),
                            Err(e) => {
                                set.errors += 1;
                                set.last_error = Some(e);
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                (get, set)
            })
        })
        .collect();
    let mut report = Report {
        elapsed: Duration::ZERO,
        get: OpStats::new(),
        set: OpStats::new(),
    };
    for worker in futures_util::future::join_all(workers).await {
        let (get, set) = worker.expect("bench workers do not panic");
        report.get.merge(get);
        report.set.merge(set);
    }
    report.elapsed = started.elapsed();
    ticker.abort();
    progress.finish_and_clear();
    report
}

fn progress_bar(workload: &Workload) -> ProgressBar {
    if !workload.progress {
        return ProgressBar::hidden();
    }
    let (length, template) = match workload.stop {
        Stop::After(requests) => (
            requests,
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} requests  {msg}",
        ),
        Stop::Elapsed(duration) => (
            duration.as_millis() as u64,
            "{spinner} [{elapsed_precise}] {wide_bar} {percent}%  {msg}",
        ),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template(template).expect("a valid progress template"));
    bar
}

/// The latency table.
pub fn render_table(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:>10} {:>12} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "ok", "ops/s", "errors", "misses", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let all = report.all();
    let mixed = report.get.count() > 0 && report.set.count() > 0;
    for (name, stats) in [("get", &report.get), ("set", &report.set), ("all", &all)] {
        if stats.count() == 0 && stats.errors == 0 || name == "all" && !mixed {
            continue;
        }
        let _ = writeln!(
            out,
            "{:<5} {:>10} {:>12.0} {:>8} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            name,
            stats.count(),
            report.ops_per_sec(stats),
            stats.errors,
            stats.misses,
            stats.percentile_ms(50.0),
            stats.percentile_ms(90.0),
            stats.percentile_ms(99.0),
            stats.percentile_ms(99.9),
            stats.latency_us.max() as f64 / 1000.0,
        );
    }
    let _ = writeln!(
        out,
        "total {:>10} {:>12.0} {:>8}   in {:.2}s",
        report.total_ops(),
        report.total_ops() as f64 / report.elapsed.as_secs_f64().max(1e-9),
        report.total_errors(),
        report.elapsed.as_secs_f64()
    );
    for (name, stats) in [("get", &report.get), ("set", &report.set)] {
        if let Some(error) = &stats.last_error {
            let _ = writeln!(out, "last {name} error: {error}");
        }
    }
    out
}

fn op_json(report: &Report, stats: &OpStats) -> serde_json::Value {
    json!({
        "ok": stats.count(),
        "errors": stats.errors,
        "misses": stats.misses,
        "ops_per_sec": report.ops_per_sec(stats),
        "latency_ms": {
            "p50": stats.percentile_ms(50.0),
            "p90": stats.percentile_ms(90.0),
            "p99": stats.percentile_ms(99.0),
            "p99.9": stats.percentile_ms(99.9),
            "max": stats.latency_us.max() as f64 / 1000.0,
            "mean": stats.latency_us.mean() / 1000.0,
        },
        "last_error": stats.last_error,
    })
}

pub async fn command(connection: &Connection, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let nodes = &connection.nodes;
    let workload = Workload::from_args(&args);
    let backend = match args.target {
        Target::Dcache => Backend::Dcache(
            connection
                .builder()
                .routing(args.mode.routing())
                .read_consistency(args.consistency.into())
                .max_idle_connections_per_node(args.connections as usize)
                .connect()
                .await?,
        ),
        Target::Redis => Backend::Redis(nodes[0].clone()),
        Target::Etcd => Backend::Etcd(nodes.to_vec()),
    };
    if args.preload {
        eprintln!("preloading {} keys…", workload.keyspace);
        preload(&backend, &workload).await?;
    }
    let report = run(&backend, &workload).await;
    if args.json {
        let output = json!({
            "target": args.target.name(),
            "mode": args.mode.name(),
            "consistency": args.consistency.name(),
            "connections": args.connections,
            "value_size": args.value_size,
            "ratio": format!("{}:{}", args.ratio.gets, args.ratio.sets),
            "keyspace": args.keyspace,
            "distribution": match args.distribution {
                Distribution::Uniform => "uniform".to_owned(),
                Distribution::Zipf => format!("zipf({})", args.zipf_exponent),
            },
            "elapsed_s": report.elapsed.as_secs_f64(),
            "total_ops": report.total_ops(),
            "total_errors": report.total_errors(),
            "ops_per_sec": report.total_ops() as f64 / report.elapsed.as_secs_f64().max(1e-9),
            "get": op_json(&report, &report.get),
            "set": op_json(&report, &report.set),
            "all": op_json(&report, &report.all()),
        });
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        println!(
            "{} (mode {}), {} reads, {} connections, {}-byte values, ratio {}:{}, {} keys ({})",
            args.target.name(),
            args.mode.name(),
            args.consistency.name(),
            args.connections,
            args.value_size,
            args.ratio.gets,
            args.ratio.sets,
            args.keyspace,
            match args.distribution {
                Distribution::Uniform => "uniform".to_owned(),
                Distribution::Zipf => format!("zipf s={}", args.zipf_exponent),
            }
        );
        print!("{}", render_table(&report));
    }
    Ok(if report.total_ops() == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
