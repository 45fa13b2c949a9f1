//! Forwarding a request to the node that must serve it (a partition's leader), and
//! passing its answer back unchanged.
//!
//! The caller's `Authorization` header goes along: every node holds the same tokens,
//! so the leader checks the caller's own token and scope again, and forwarding can
//! never lend a caller more rights than its token has.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;

use std::time::Duration;

use dcache_protocol::wire::DEADLINE_HEADER;

use super::cache::TTL_HEADER;
use super::{ApiError, Node};

/// Counts how many times a request was forwarded, so a stale leader hint can never send
/// it around in circles.
pub const FORWARDED_HEADER: &str = "x-dcache-forwarded";
/// A request is forwarded at most this many times: to a replica, then to its leader.
const MAX_HOPS: u32 = 2;
/// How long a forwarded request may take at the other node.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn forward(
    node: &Node,
    addr: &str,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hops = headers
        .get(FORWARDED_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    if hops >= MAX_HOPS {
        return Err(unavailable(
            "the partition's leadership is moving; retry".into(),
        ));
    }
    let Some(cluster) = &node.cluster else {
        return Err(unavailable("this node is not part of a cluster".into()));
    };
    if cluster.groups.transport.is_isolated() {
        return Err(unavailable("this node is cut off from its peers".into()));
    }
    let method_writes = method != Method::GET && method != Method::HEAD;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    // A write carries the moment its caller stops waiting, so that the leader refuses
    // it rather than applies it late; this node waits no longer either.
    let now = node.store.clock().now_ms();
    let deadline = caller_deadline(headers).unwrap_or(now + FORWARD_TIMEOUT.as_millis() as u64);
    if method_writes && deadline <= now {
        return Err(unavailable(
            "the caller's deadline passed; not applied".into(),
        ));
    }
    let timeout = Duration::from_millis(deadline.saturating_sub(now)).min(FORWARD_TIMEOUT);
    let mut request = cluster
        .groups
        .transport
        .http_client()
        .request(
            method,
            format!("{}://{addr}{path}", cluster.groups.transport.scheme()),
        )
        .timeout(timeout)
        .header(FORWARDED_HEADER, hops + 1)
        .header(DEADLINE_HEADER, deadline)
        .body(body);
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value);
        }
    }
    // A write that reached the leader and got no answer may still be applied there:
    // only one that never left this node (no connection) is safe to call not applied.
    let in_doubt = |e: reqwest::Error, what: &str| {
        let message = format!("the partition's leader at {addr} {what}: {e}");
        if method_writes && !e.is_connect() {
            ApiError::OutcomeUnknown(message)
        } else {
            unavailable(message)
        }
    };
    let answer = request
        .send()
        .await
        .map_err(|e| in_doubt(e, "did not answer"))?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut passed = HeaderMap::new();
    for name in [
        header::CONTENT_TYPE,
        header::RETRY_AFTER,
        header::WWW_AUTHENTICATE,
    ] {
        if let Some(value) = answer.headers().get(&name) {
            passed.insert(name, value.clone());
        }
    }
    if let Some(value) = answer.headers().get(TTL_HEADER) {
        passed.insert(TTL_HEADER, value.clone());
    }
    let body = answer.bytes().await.map_err(|e| in_doubt(e, "broke off"))?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = passed;
    Ok(response)
}

/// The caller's deadline a request carries, if any (Unix milliseconds).
pub fn caller_deadline(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(DEADLINE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Refuses a write whose caller has stopped waiting: proposing it now could apply it
/// after a newer write the caller has made since.
pub fn refuse_if_past_deadline(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    match caller_deadline(headers) {
        Some(deadline) if deadline <= node.store.clock().now_ms() => Err(unavailable(
            "the caller's deadline passed before the write was proposed; not applied".into(),
        )),
        _ => Ok(()),
    }
}

pub fn unavailable(message: String) -> ApiError {
    ApiError::Unavailable {
        message,
        retry_after_secs: 1,
    }
}
