//! `/cache/{key}`: get, set and delete.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use dcache_protocol::partition_of;
use dcache_protocol::wire::{
    CacheQuery, Consistency, DeleteResponse, SetRequest, SetResponse, validate_ttl,
};
use percent_encoding::percent_decode_str;

use super::forward::{forward, refuse_if_past_deadline, unavailable};
use super::{ApiError, Limits, Node};
use crate::clock::UnixMillis;
use crate::cluster::Route;
use crate::raft::{Command, CommandResult};
use crate::store::{Entry, ValueKind};

/// Header carrying the remaining TTL (whole seconds) of a raw-bytes value.
pub const TTL_HEADER: &str = "x-dcache-ttl";

/// JSON bodies may carry this much envelope (`{"value": ..., "ttl": ...}`, whitespace)
/// around a value of the maximum size.
const JSON_ENVELOPE_SLACK: usize = 64 * 1024;

/// The largest request body a node reads: a JSON envelope around the largest value.
pub fn max_request_body(limits: &Limits) -> usize {
    limits.max_value_bytes + JSON_ENVELOPE_SLACK
}

// The handlers take the request whole and borrow its URI and headers: extracting them
// would clone the header map (two allocations a request) for the rare forward.
pub async fn get_value(
    State(node): State<Arc<Node>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (uri, headers) = (request.uri(), request.headers());
    let key = cache_key(uri, &node.limits)?;
    let query = parse_query(Query::try_from_uri(uri))?;
    if let Some(cluster) = &node.cluster {
        let partition = partition_of(&key, node.partitions);
        let linearizable = query.consistency == Consistency::Linearizable;
        match cluster.read(partition, linearizable).await {
            Route::Here(()) => {}
            Route::Forward(member) => {
                return forward(
                    &node,
                    &member.api_addr,
                    Method::GET,
                    uri,
                    headers,
                    Bytes::new(),
                )
                .await;
            }
            Route::Unavailable(why) | Route::OutcomeUnknown(why) => {
                return Err(unavailable(why));
            }
        }
    }
    let Some(entry) = node.store.get(&key) else {
        return Err(not_found(&key));
    };
    let ttl = remaining_seconds(&entry, node.store.clock().now_ms());
    Ok(match entry.kind {
        ValueKind::Json => json_value_response(&key, &entry.data, ttl),
        ValueKind::Bytes => {
            let mut response = Response::new(Body::from(entry.data));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Some(ttl) = ttl {
                headers.insert(TTL_HEADER, HeaderValue::from(ttl));
            }
            response
        }
    })
}

pub async fn set_value(
    State(node): State<Arc<Node>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let (uri, headers, method) = (&parts.uri, &parts.headers, parts.method.clone());
    let key = cache_key(uri, &node.limits)?;
    let query = parse_query(Query::try_from_uri(uri))?;
    let kind = body_kind(headers)?;
    let max_value = node.limits.max_value_bytes;
    let body_limit = match kind {
        ValueKind::Json => max_request_body(&node.limits),
        ValueKind::Bytes => max_value,
    };
    let body = read_body(headers, body, body_limit, max_value).await?;
    let original_body = body.clone();
    let (data, ttl_seconds) = match kind {
        ValueKind::Json => {
            let set: SetRequest<'_> = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
            let value = set.value.get();
            if value.len() > max_value {
                return Err(value_too_large(value.len(), max_value));
            }
            (
                Bytes::copy_from_slice(value.as_bytes()),
                set.ttl.or(query.ttl),
            )
        }
        // Copied, never sliced: a slice would pin the connection's whole read buffer
        // in memory, unseen by the memory budget.
        ValueKind::Bytes => (Bytes::copy_from_slice(&body), query.ttl),
    };
    let ttl = match ttl_seconds {
        Some(seconds) => Some(validate_ttl(seconds).map_err(ApiError::BadRequest)?),
        None => node.default_ttl,
    };
    let clock = node.store.clock();
    let entry = Entry {
        kind,
        data,
        expires_at: ttl.map(|ttl| clock.after(ttl)),
    };
    let ttl_left = remaining_seconds(&entry, clock.now_ms());
    let key_bytes = Bytes::copy_from_slice(&key);
    match &node.cluster {
        None => node.store.set(key_bytes, entry),
        Some(cluster) => {
            refuse_if_past_deadline(&node, headers)?;
            let command = Command::Set {
                key: key_bytes,
                kind: entry.kind,
                data: entry.data,
                expires_at: entry.expires_at,
            };
            match cluster
                .write(partition_of(&key, node.partitions), command)
                .await
            {
                Route::Here(_) => {}
                Route::Forward(member) => {
                    return forward(&node, &member.api_addr, method, uri, headers, original_body)
                        .await;
                }
                Route::Unavailable(why) => return Err(unavailable(why)),
                Route::OutcomeUnknown(why) => return Err(ApiError::OutcomeUnknown(why)),
            }
        }
    }
    Ok(axum::Json(SetResponse {
        key: String::from_utf8_lossy(&key).into_owned(),
        stored: true,
        ttl: ttl_left,
    })
    .into_response())
}

pub async fn delete_value(
    State(node): State<Arc<Node>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (uri, headers) = (request.uri(), request.headers());
    let key = cache_key(uri, &node.limits)?;
    let deleted = match &node.cluster {
        None => node.store.delete(&key),
        Some(cluster) => {
            refuse_if_past_deadline(&node, headers)?;
            let command = Command::Delete {
                key: Bytes::copy_from_slice(&key),
            };
            match cluster
                .write(partition_of(&key, node.partitions), command)
                .await
            {
                Route::Here(result) => matches!(result, CommandResult::Deleted { existed: true }),
                Route::Forward(member) => {
                    return forward(
                        &node,
                        &member.api_addr,
                        Method::DELETE,
                        uri,
                        headers,
                        Bytes::new(),
                    )
                    .await;
                }
                Route::Unavailable(why) => return Err(unavailable(why)),
                Route::OutcomeUnknown(why) => return Err(ApiError::OutcomeUnknown(why)),
            }
        }
    };
    Ok(axum::Json(DeleteResponse {
        key: String::from_utf8_lossy(&key).into_owned(),
        deleted,
    })
    .into_response())
}

pub async fn missing_key() -> ApiError {
    ApiError::BadRequest("empty key: use /cache/{key}".into())
}

/// The key of a `/cache/{key}` request: everything after `/cache/`, percent-decoded to
/// bytes, so `a/b`, `user%3A1` and non-UTF-8 keys all work.
fn cache_key<'a>(uri: &'a Uri, limits: &Limits) -> Result<Cow<'a, [u8]>, ApiError> {
    let raw = uri.path().strip_prefix("/cache/").unwrap_or_default();
    let key: Cow<'a, [u8]> = percent_decode_str(raw).into();
    if key.is_empty() {
        return Err(ApiError::BadRequest("empty key: use /cache/{key}".into()));
    }
    if key.len() > limits.max_key_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "key is {} bytes, over the limit of {} (--max-key-bytes)",
            key.len(),
            limits.max_key_bytes
        )));
    }
    Ok(key)
}

fn parse_query(query: Result<Query<CacheQuery>, QueryRejection>) -> Result<CacheQuery, ApiError> {
    query
        .map(|Query(query)| query)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
}

/// Which kind of value the body carries, from its Content-Type. A missing Content-Type
/// is taken as JSON, as the reference documents' clients send it.
fn body_kind(headers: &HeaderMap) -> Result<ValueKind, ApiError> {
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return Ok(ValueKind::Json);
    };
    let mime = content_type
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || mime.ends_with("+json") {
        Ok(ValueKind::Json)
    } else if mime == "application/octet-stream" {
        Ok(ValueKind::Bytes)
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Type {content_type:?}: send application/json with \
             {{\"value\": ..., \"ttl\": ...}} or application/octet-stream with raw bytes"
        )))
    }
}

/// Reads the whole body, refusing with 413 as soon as it is known to be over `limit`.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    max_value: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(length) = declared.filter(|&length| length > limit) {
        return Err(value_too_large(length, max_value));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            value_too_large(limit + 1, max_value)
        } else {
            ApiError::BadRequest(format!("could not read the request body: {e}"))
        }
    })
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

fn value_too_large(size: usize, max_value: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "value is over the limit of {max_value} bytes (--max-value-bytes); got {size}"
    ))
}

fn not_found(key: &[u8]) -> ApiError {
    ApiError::NotFound(format!("key {:?} not found", String::from_utf8_lossy(key)))
}

/// Whole seconds left, rounded up so that a live key never shows 0.
fn remaining_seconds(entry: &Entry, now: UnixMillis) -> Option<u64> {
    entry
        .remaining(now)
        .map(|left| left.as_millis().div_ceil(1000) as u64)
}

/// `{"key": ..., "value": <stored JSON>, "ttl": ...}`, spliced from the stored text so
/// that reads never re-parse values.
fn json_value_response(key: &[u8], value: &[u8], ttl: Option<u64>) -> Response {
    let mut body = Vec::with_capacity(value.len() + key.len() + 40);
    body.extend_from_slice(b"{\"key\":");
    serde_json::to_writer(&mut body, &String::from_utf8_lossy(key))
        .expect("writing a string into a Vec cannot fail");
    body.extend_from_slice(b",\"value\":");
    body.extend_from_slice(value);
    body.extend_from_slice(b",\"ttl\":");
    match ttl {
        Some(ttl) => body.extend_from_slice(ttl.to_string().as_bytes()),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
