//! The node's Prometheus metrics, all named `dcache_*`, in a registry of its own so that
//! several nodes can live in one test process.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::cluster::Cluster;
use crate::cluster_metrics::ClusterCollector;
use crate::store::Store;

/// Request latency buckets, in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    store: Store,
    pub requests: RequestMetrics,
    pub rejections: Rejections,
    pub resp: RespMetrics,
    keys: IntGauge,
    bytes: IntGauge,
    resident_memory: IntGauge,
    ready: IntGauge,
}

impl Metrics {
    /// `routes` are the route labels requests are counted under, the router's own
    /// paths; anything else is counted as the last one.
    pub fn new(store: Store, node_id: &str, routes: &'static [&'static str]) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "dcache_http_requests_total",
                "HTTP requests served, by route, method and status.",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "dcache_http_request_duration_seconds",
                "Time from request to response, by route and method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let keys = gauge(
            "dcache_cache_keys",
            "Entries held, live or awaiting their expiry sweep.",
        );
        let bytes = gauge(
            "dcache_cache_bytes",
            "Bytes held by entries, as weighed against the budget.",
        );
        let budget = gauge(
            "dcache_cache_max_bytes",
            "The memory budget for entries, in bytes.",
        );
        budget.set(store.config().max_memory as i64);
        let resident_memory = gauge(
            "dcache_process_resident_memory_bytes",
            "Resident set size of the node process.",
        );
        // Kubernetes' own readiness is not in the node's metrics, and alerting on it
        // would need kube-state-metrics; this mirrors `/ready` instead.
        let ready = gauge(
            "dcache_node_ready",
            "1 while /ready answers 200 (joined, every replica here caught up), else 0.",
        );
        let info = IntGaugeVec::new(
            Opts::new(
                "dcache_node_info",
                "Constant 1, labelled with what this node is.",
            ),
            &["node_id", "version", "eviction_policy"],
        )
        .expect("valid metric");
        info.with_label_values(&[
            node_id,
            env!("CARGO_PKG_VERSION"),
            store.config().eviction_policy.as_str(),
        ])
        .set(1);

        let rejections = Rejections::new();
        let resp = RespMetrics::new();
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(rejections.counters.clone()),
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(keys.clone()),
            Box::new(bytes.clone()),
            Box::new(budget),
            Box::new(resident_memory.clone()),
            Box::new(ready.clone()),
            Box::new(info),
            Box::new(resp.commands.clone()),
            Box::new(resp.latency.clone()),
            Box::new(resp.connections.clone()),
        ];
        for collector in collectors {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        for counter in store.counters().all() {
            registry
                .register(Box::new(counter.clone()))
                .expect("metric registered once");
        }
        Self {
            registry,
            store,
            requests: RequestMetrics::new(requests, latency, routes),
            rejections,
            resp,
            keys,
            bytes,
            resident_memory,
            ready,
        }
    }

    /// Exports what a cluster member knows of its groups and the balancer.
    pub fn watch_cluster(&self, cluster: Arc<Cluster>) {
        if let Some(disk) = &cluster.groups.disk {
            for collector in disk.metrics.collectors() {
                self.registry
                    .register(collector)
                    .expect("write-ahead log metrics registered once");
            }
        }
        self.registry
            .register(Box::new(ClusterCollector::new(cluster)))
            .expect("cluster metrics registered once");
    }

    /// The Prometheus text exposition of every metric, gauges refreshed first;
    /// `ready` is whether the node would answer `/ready` with 200 right now.
    pub fn render(&self, ready: bool) -> String {
        self.ready.set(i64::from(ready));
        let stats = self.store.stats();
        self.keys.set(stats.keys as i64);
        self.bytes.set(stats.bytes as i64);
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory.set(rss as i64);
        }
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }
}

/// The process's resident set size, from `/proc/self/status` (Linux only).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Why a request or connection was turned away, as counted in
/// `dcache_http_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No API token, or an unknown one (401).
    Unauthenticated,
    /// A token without the scope the route needs (403).
    Forbidden,
    /// An admin call over the rate limit (429).
    RateLimited,
    /// A request not finished within `--request-timeout` (408).
    RequestTimeout,
    /// Headers (or the TLS handshake) not received within `--header-read-timeout`.
    HeaderTimeout,
    /// A connection over `--max-connections`, closed at once.
    ConnectionLimit,
    /// A Raft RPC without the cluster secret (401).
    ClusterSecret,
}

impl Rejection {
    const ALL: [Self; 7] = [
        Self::Unauthenticated,
        Self::Forbidden,
        Self::RateLimited,
        Self::RequestTimeout,
        Self::HeaderTimeout,
        Self::ConnectionLimit,
        Self::ClusterSecret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::RequestTimeout => "request_timeout",
            Self::HeaderTimeout => "header_timeout",
            Self::ConnectionLimit => "connection_limit",
            Self::ClusterSecret => "cluster_secret",
        }
    }
}

/// `dcache_http_rejected_total`, every reason present from the start so that a rate
/// over it never starts from a missing series. Cheap to clone: clones count together.
#[derive(Clone)]
pub struct Rejections {
    counters: IntCounterVec,
    by_reason: Vec<IntCounter>,
}

impl Rejections {
    fn new() -> Self {
        let counters = IntCounterVec::new(
            Opts::new(
                "dcache_http_rejected_total",
                "Requests and connections turned away, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let by_reason = Rejection::ALL
            .iter()
            .map(|reason| counters.with_label_values(&[reason.as_str()]))
            .collect();
        Self {
            counters,
            by_reason,
        }
    }

    pub fn count(&self, reason: Rejection) {
        let slot = Rejection::ALL
            .iter()
            .position(|known| *known == reason)
            .expect("every reason is in ALL");
        self.by_reason[slot].inc();
    }
}

/// HTTP methods counted by name; any other is counted as `OTHER`.
const METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "HEAD"];
/// Statuses the API answers with, each with its own pre-resolved counter slot.
const STATUSES: [u16; 12] = [200, 400, 401, 403, 404, 405, 408, 413, 415, 429, 500, 503];

/// Request counters and latency histograms, resolved once per (route, method, status)
/// and then reached by index: looking labels up in a `*Vec` on every request costs a
/// hash and a lock, which shows at 100k requests per second.
pub struct RequestMetrics {
    requests: IntCounterVec,
    routes: &'static [&'static str],
    counters: Vec<OnceLock<IntCounter>>,
    latencies: Vec<OnceLock<Histogram>>,
    latency: HistogramVec,
}

/// Where a request lands in [`RequestMetrics`]' tables.
#[derive(Debug, Clone, Copy)]
pub struct RequestLabels {
    route: usize,
    method: usize,
}

impl RequestMetrics {
    fn new(
        requests: IntCounterVec,
        latency: HistogramVec,
        routes: &'static [&'static str],
    ) -> Self {
        let slots = routes.len() * (METHODS.len() + 1);
        Self {
            requests,
            routes,
            counters: (0..slots * (STATUSES.len() + 1))
                .map(|_| OnceLock::new())
                .collect(),
            latencies: (0..slots).map(|_| OnceLock::new()).collect(),
            latency,
        }
    }

    /// The table position of a request. Its route is the known route equal to its
    /// path, else the first known route that ends in a `{*wildcard}` and whose prefix
    /// the path starts with, else the last, which stands for no route.
    pub fn labels(&self, path: &str, method: &Method) -> RequestLabels {
        let last = self.routes.len() - 1;
        let route = self
            .routes
            .iter()
            .position(|known| *known == path)
            .or_else(|| {
                self.routes.iter().position(|known| {
                    known
                        .find("{*")
                        .is_some_and(|wildcard| path.starts_with(&known[..wildcard]))
                })
            })
            .unwrap_or(last);
        let method = METHODS
            .iter()
            .position(|known| *known == method.as_str())
            .unwrap_or(METHODS.len());
        RequestLabels { route, method }
    }

    pub fn observe(&self, labels: RequestLabels, status: StatusCode, elapsed: Duration) {
        let slot = labels.route * (METHODS.len() + 1) + labels.method;
        let route = self.routes[labels.route];
        let method = METHODS.get(labels.method).copied().unwrap_or("OTHER");
        match STATUSES.iter().position(|known| *known == status.as_u16()) {
            Some(status_slot) => self.counters[slot * (STATUSES.len() + 1) + status_slot]
                .get_or_init(|| {
                    self.requests
                        .with_label_values(&[route, method, status.as_str()])
                })
                .inc(),
            None => self
                .requests
                .with_label_values(&[route, method, status.as_str()])
                .inc(),
        }
        self.latencies[slot]
            .get_or_init(|| self.latency.with_label_values(&[route, method]))
            .observe(elapsed.as_secs_f64());
    }
}

/// How a RESP command ended, as counted in `dcache_resp_commands_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespResult {
    Ok,
    /// Refused: bad arguments, a wrong value, an unknown command.
    Error,
    /// Sent elsewhere with `-MOVED`.
    Moved,
    /// `-CLUSTERDOWN` / `-TRYAGAIN`: no leader, or the outcome of a write unknown.
    Unavailable,
    /// `-NOAUTH` / `-NOPERM`.
    Denied,
}

impl RespResult {
    const ALL: [Self; 5] = [
        Self::Ok,
        Self::Error,
        Self::Moved,
        Self::Unavailable,
        Self::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Moved => "moved",
            Self::Unavailable => "unavailable",
            Self::Denied => "denied",
        }
    }
}

/// RESP commands by name and result, their latency, and the open RESP connections.
/// Counters are resolved once per (command, result), as for HTTP requests.
pub struct RespMetrics {
    commands: IntCounterVec,
    latency: HistogramVec,
    pub connections: IntGauge,
    counters: Vec<OnceLock<IntCounter>>,
    latencies: Vec<OnceLock<Histogram>>,
}

impl RespMetrics {
    /// Command names beyond this many share the last slot's lazily made series.
    const COMMAND_SLOTS: usize = 128;

    fn new() -> Self {
        let commands = IntCounterVec::new(
            Opts::new(
                "dcache_resp_commands_total",
                "Redis-protocol commands served, by command and result.",
            ),
            &["command", "result"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "dcache_resp_command_duration_seconds",
                "Time from a RESP command's arrival to its reply, by command.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["command"],
        )
        .expect("valid metric");
        let connections = IntGauge::new(
            "dcache_resp_connections",
            "Open Redis-protocol client connections.",
        )
        .expect("valid metric");
        Self {
            commands,
            latency,
            connections,
            counters: (0..Self::COMMAND_SLOTS * RespResult::ALL.len())
                .map(|_| OnceLock::new())
                .collect(),
            latencies: (0..Self::COMMAND_SLOTS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Counts one command: `index` is its place in the node's command table (the
    /// same name must always come with the same index), `name` its lowercase name.
    pub fn observe(&self, index: usize, name: &str, result: RespResult, elapsed: Duration) {
        let result_slot = RespResult::ALL
            .iter()
            .position(|known| *known == result)
            .expect("every result is in ALL");
        if index >= Self::COMMAND_SLOTS {
            self.commands
                .with_label_values(&[name, result.as_str()])
                .inc();
            self.latency
                .with_label_values(&[name])
                .observe(elapsed.as_secs_f64());
            return;
        }
        self.counters[index * RespResult::ALL.len() + result_slot]
            .get_or_init(|| self.commands.with_label_values(&[name, result.as_str()]))
            .inc();
        self.latencies[index]
            .get_or_init(|| self.latency.with_label_values(&[name]))
            .observe(elapsed.as_secs_f64());
    }
}
