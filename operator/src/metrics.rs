//! The operator's own Prometheus metrics, served on `/metrics`.

use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: IntCounter,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: Histogram,
}

impl Metrics {
    /// Creates the metrics and registers them with `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let reconciles = IntCounter::new(
            "dcache_operator_reconciles_total",
            "Reconciles of DistributedCache resources started",
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "dcache_operator_reconcile_errors_total",
                "Reconciles that failed, by kind of error",
            ),
            &["kind"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "dcache_operator_reconcile_duration_seconds",
                "How long one reconcile took",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        Ok(Self {
            reconciles,
            reconcile_errors,
            reconcile_duration,
        })
    }

    /// Counts a reconcile and times it until the returned guard drops, so every exit
    /// path, `?` included, is measured.
    pub fn reconcile_started(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.reconcile_duration.clone(),
        }
    }

    pub fn reconcile_failed(&self, error: &crate::Error) {
        self.reconcile_errors
            .with_label_values(&[error.metric_label()])
            .inc();
    }
}

pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// The operator's own HTTP endpoints: `/metrics` (Prometheus text) and `/health`.
pub fn router(registry: Registry) -> axum::Router {
    axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || async move { render(&registry) }),
        )
}

/// The registry's metrics in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut text)
        .expect("Prometheus text encoding writes to a String");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(registry: &Registry, path: &str) -> (u16, String) {
        let request = http::Request::get(path).body(Body::empty()).unwrap();
        let response = router(registry.clone()).oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_health_and_the_reconcile_metrics() {
        let registry = Registry::new();
        let metrics = Metrics::register(&registry).unwrap();
        drop(metrics.reconcile_started());
        metrics.reconcile_failed(&crate::Error::MissingField("uid"));
        assert_eq!(get(&registry, "/health").await, (200, "ok".to_owned()));
        let (status, text) = get(&registry, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            text.contains("dcache_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("dcache_operator_reconcile_errors_total{kind=\"missing_field\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dcache_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }
}
