//! The node's Prometheus metrics, all named `dcache_*`, in a registry of its own so that
//! several nodes can live in one test process.

use std::time::Duration;

use axum::http::StatusCode;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::store::Store;

/// Request latency buckets, in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    store: Store,
    requests: IntCounterVec,
    latency: HistogramVec,
    keys: IntGauge,
    bytes: IntGauge,
    resident_memory: IntGauge,
}

impl Metrics {
    pub fn new(store: Store, node_id: &str) -> Self {
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

        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(keys.clone()),
            Box::new(bytes.clone()),
            Box::new(budget),
            Box::new(resident_memory.clone()),
            Box::new(info),
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
            requests,
            latency,
            keys,
            bytes,
            resident_memory,
        }
    }

    pub fn observe_request(
        &self,
        route: &str,
        method: &str,
        status: StatusCode,
        elapsed: Duration,
    ) {
        self.requests
            .with_label_values(&[route, method, status.as_str()])
            .inc();
        self.latency
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric, gauges refreshed first.
    pub fn render(&self) -> String {
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
