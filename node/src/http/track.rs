//! Counts and times every request by route, method and status.
//!
//! A plain tower layer rather than `middleware::from_fn`: it adds no boxed future or
//! cloned router per request, which is a tenth of the throughput of a cache GET.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

use super::Node;
use crate::metrics::RequestLabels;

#[derive(Clone)]
pub struct TrackRequestsLayer {
    node: Arc<Node>,
}

impl TrackRequestsLayer {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

impl<S> Layer<S> for TrackRequestsLayer {
    type Service = TrackRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackRequests {
            inner,
            node: self.node.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TrackRequests<S> {
    inner: S,
    node: Arc<Node>,
}

impl<S> Service<Request> for TrackRequests<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let labels = self
            .node
            .metrics
            .requests
            .labels(request.uri().path(), request.method());
        Tracked {
            inner: self.inner.call(request),
            node: self.node.clone(),
            labels,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        node: Arc<Node>,
        labels: RequestLabels,
        start: Instant,
    }
}

impl<F, E> Future for Tracked<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.node.metrics.requests.observe(
                *this.labels,
                response.status(),
                this.start.elapsed(),
            );
        }
        Poll::Ready(result)
    }
}
