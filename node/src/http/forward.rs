//! Forwarding a request to the node that must serve it (a partition's leader), and
//! passing its answer back unchanged.
//!
//! The caller's `Authorization` header goes along: every node holds the same tokens,
//! so the leader checks the caller's own token and scope again, and forwarding can
//! never lend a caller more rights than its token has.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;

use super::cache::TTL_HEADER;
use super::{ApiError, Node};

/// Counts how many times a request was forwarded, so a stale leader hint can never send
/// it around in circles.
pub const FORWARDED_HEADER: &str = "x-dcache-forwarded";
/// A request is forwarded at most this many times: to a replica, then to its leader.
const MAX_HOPS: u32 = 2;
/// How long a forwarded request may take at the other node.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
    let mut request = cluster
        .groups
        .transport
        .http_client()
        .request(
            method,
            format!("{}://{addr}{path}", cluster.groups.transport.scheme()),
        )
        .timeout(FORWARD_TIMEOUT)
        .header(FORWARDED_HEADER, hops + 1)
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

pub fn unavailable(message: String) -> ApiError {
    ApiError::Unavailable {
        message,
        retry_after_secs: 1,
    }
}
