//! The API driven through the router, without a socket.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::clock::Clock;
use crate::store::{EvictionPolicy, StoreConfig};

fn node() -> Arc<Node> {
    node_with(Limits {
        max_key_bytes: 1024,
        max_value_bytes: 1024 * 1024,
    })
}

fn node_with(limits: Limits) -> Arc<Node> {
    let store = Store::new(
        StoreConfig {
            max_memory: 16 << 20,
            eviction_policy: EvictionPolicy::Tinylfu,
        },
        Clock::new(),
    );
    Arc::new(Node::new("test".into(), store, limits, None, 64))
}

struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field in {:?}", self.json()))
            .to_owned()
    }
}

async fn call(node: &Arc<Node>, request: Request<Body>) -> Reply {
    let response = router(node.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        content_type,
        headers,
        body,
    }
}

fn request(
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder.body(body.into()).unwrap()
}

async fn put_json(node: &Arc<Node>, uri: &str, body: Value) -> Reply {
    call(
        node,
        request(Method::PUT, uri, Some("application/json"), body.to_string()),
    )
    .await
}

async fn get(node: &Arc<Node>, uri: &str) -> Reply {
    call(node, request(Method::GET, uri, None, Body::empty())).await
}

#[tokio::test]
async fn json_round_trip_with_reference_document_body() {
    let node = node();
    let value = json!({"name": "Alice", "age": 30, "tags": ["a", "b"], "nested": {"x": null}});
    let set = call(
        &node,
        request(
            Method::POST,
            "/cache/user:123",
            Some("application/json"),
            json!({"value": value, "ttl": 3600}).to_string(),
        ),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(
        set.json(),
        json!({"key": "user:123", "stored": true, "ttl": 3600})
    );

    let got = get(&node, "/cache/user:123").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        got.json(),
        json!({"key": "user:123", "value": value, "ttl": 3600})
    );
}

#[tokio::test]
async fn values_of_every_json_type_and_no_ttl() {
    let node = node();
    for (i, value) in [
        json!(null),
        json!(1.5),
        json!("text"),
        json!(true),
        json!([1, [2]]),
    ]
    .into_iter()
    .enumerate()
    {
        let uri = format!("/cache/k{i}");
        assert_eq!(
            put_json(&node, &uri, json!({"value": value})).await.status,
            StatusCode::OK
        );
        let got = get(&node, &uri).await.json();
        assert_eq!(got["value"], value);
        assert_eq!(got["ttl"], Value::Null);
    }
}

#[tokio::test]
async fn raw_bytes_round_trip_with_query_ttl() {
    let node = node();
    let bytes: Vec<u8> = (0..=255).collect();
    let set = call(
        &node,
        request(
            Method::PUT,
            "/cache/blob?ttl=60",
            Some("application/octet-stream"),
            bytes.clone(),
        ),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK, "{:?}", set.json());
    let got = get(&node, "/cache/blob").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(got.headers.get(cache::TTL_HEADER).unwrap(), "60");
    assert_eq!(got.body, bytes);
}

#[tokio::test]
async fn keys_are_percent_decoded_bytes() {
    let node = node();
    for (uri, key) in [
        ("/cache/a/b", "a/b"),
        ("/cache/a%2Fb%20c", "a/b c"),
        ("/cache/%E2%9C%93%20caf%C3%A9", "✓ café"),
        ("/cache/user%3A123", "user:123"),
    ] {
        assert_eq!(
            put_json(&node, uri, json!({"value": key})).await.status,
            StatusCode::OK
        );
        let got = get(&node, uri).await.json();
        assert_eq!(got["key"], key, "{uri}");
        assert_eq!(got["value"], key, "{uri}");
    }
    // The same key however it is spelled.
    assert_eq!(
        get(&node, "/cache/user:123").await.json()["value"],
        "user:123"
    );
}

#[tokio::test]
async fn missing_keys_are_404_and_delete_says_whether_it_existed() {
    let node = node();
    let missing = get(&node, "/cache/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.error().contains("not found"));

    put_json(&node, "/cache/k", json!({"value": 1})).await;
    let delete = || {
        call(
            &node,
            request(Method::DELETE, "/cache/k", None, Body::empty()),
        )
    };
    let first = delete().await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json(), json!({"key": "k", "deleted": true}));
    assert_eq!(delete().await.json(), json!({"key": "k", "deleted": false}));
    assert_eq!(get(&node, "/cache/k").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let node = node();
    put_json(&node, "/cache/k", json!({"value": "original"})).await;
    let json_put = |body: &str| {
        request(
            Method::PUT,
            "/cache/k",
            Some("application/json"),
            body.to_owned(),
        )
    };
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            json_put("{not json"),
            StatusCode::BAD_REQUEST,
            "invalid JSON",
        ),
        (
            json_put(r#"{"ttl": 5}"#),
            StatusCode::BAD_REQUEST,
            "missing field `value`",
        ),
        (
            json_put(r#"{"value": 1, "tll": 5}"#),
            StatusCode::BAD_REQUEST,
            "unknown field `tll`",
        ),
        (
            json_put(r#"{"value": 1, "ttl": -1}"#),
            StatusCode::BAD_REQUEST,
            "positive",
        ),
        (
            json_put(r#"{"value": 1, "ttl": 0}"#),
            StatusCode::BAD_REQUEST,
            "positive",
        ),
        (
            json_put(r#"{"value": 1, "ttl": "5"}"#),
            StatusCode::BAD_REQUEST,
            "invalid type",
        ),
        (
            json_put(r#"{"value": 1, "ttl": 1e300}"#),
            StatusCode::BAD_REQUEST,
            "maximum",
        ),
        (
            request(
                Method::PUT,
                "/cache/k?ttl=-3",
                Some("application/octet-stream"),
                "x",
            ),
            StatusCode::BAD_REQUEST,
            "positive",
        ),
        (
            request(
                Method::PUT,
                "/cache/k?ttl=soon",
                Some("application/octet-stream"),
                "x",
            ),
            StatusCode::BAD_REQUEST,
            "invalid query",
        ),
        (
            request(
                Method::PUT,
                "/cache/k?tll=5",
                Some("application/octet-stream"),
                "x",
            ),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            request(
                Method::GET,
                "/cache/k?consistency=eventual",
                None,
                Body::empty(),
            ),
            StatusCode::BAD_REQUEST,
            "unknown variant",
        ),
        (
            request(Method::PUT, "/cache/k", Some("text/plain"), "hello"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            request(
                Method::PUT,
                "/cache/",
                Some("application/json"),
                r#"{"value": 1}"#,
            ),
            StatusCode::BAD_REQUEST,
            "empty key",
        ),
        (
            request(Method::GET, "/cache", None, Body::empty()),
            StatusCode::BAD_REQUEST,
            "empty key",
        ),
        (
            request(
                Method::PATCH,
                "/cache/k",
                Some("application/json"),
                r#"{"value": 1}"#,
            ),
            StatusCode::METHOD_NOT_ALLOWED,
            "not allowed",
        ),
        (
            request(Method::POST, "/stats", None, Body::empty()),
            StatusCode::METHOD_NOT_ALLOWED,
            "not allowed",
        ),
        (
            request(Method::GET, "/nowhere", None, Body::empty()),
            StatusCode::NOT_FOUND,
            "no route",
        ),
    ];
    for (request, status, message) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let reply = call(&node, request).await;
        assert_eq!(reply.status, status, "{what}");
        assert_eq!(
            reply.content_type.as_deref(),
            Some("application/json"),
            "{what}"
        );
        assert!(
            reply.error().contains(message),
            "{what}: {:?}",
            reply.error()
        );
    }
    let got = get(&node, "/cache/k").await.json();
    assert_eq!(got["value"], "original");
    assert_eq!(
        node.store.stats().sets,
        1,
        "no failed request wrote anything"
    );
}

#[tokio::test]
async fn over_limit_keys_and_values_are_413_and_not_stored() {
    let node = node_with(Limits {
        max_key_bytes: 8,
        max_value_bytes: 100,
    });
    let long_key = put_json(&node, "/cache/123456789", json!({"value": 1})).await;
    assert_eq!(long_key.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(long_key.error().contains("--max-key-bytes"));

    let big_json = put_json(&node, "/cache/big", json!({"value": "x".repeat(100)})).await;
    assert_eq!(big_json.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(big_json.error().contains("--max-value-bytes"));

    let big_raw = call(
        &node,
        request(
            Method::PUT,
            "/cache/raw",
            Some("application/octet-stream"),
            vec![7u8; 101],
        ),
    )
    .await;
    assert_eq!(big_raw.status, StatusCode::PAYLOAD_TOO_LARGE);

    // A body with no Content-Length, streamed past the limit.
    let chunks: Vec<Result<_, std::io::Error>> = (0..200)
        .map(|_| Ok(axum::body::Bytes::from_static(b"x")))
        .collect();
    let streamed = call(
        &node,
        request(
            Method::PUT,
            "/cache/raw",
            Some("application/octet-stream"),
            Body::from_stream(futures_util::stream::iter(chunks)),
        ),
    )
    .await;
    assert_eq!(streamed.status, StatusCode::PAYLOAD_TOO_LARGE);

    for key in ["big", "raw"] {
        assert_eq!(
            get(&node, &format!("/cache/{key}")).await.status,
            StatusCode::NOT_FOUND
        );
    }
    let exactly = call(
        &node,
        request(
            Method::PUT,
            "/cache/raw",
            Some("application/octet-stream"),
            vec![7u8; 100],
        ),
    )
    .await;
    assert_eq!(
        exactly.status,
        StatusCode::OK,
        "a value of exactly the limit fits"
    );
    assert_eq!(node.store.stats().sets, 1);
}

#[tokio::test(start_paused = true)]
async fn ttl_counts_down_and_expires() {
    let node = node();
    put_json(&node, "/cache/s", json!({"value": "tok", "ttl": 2})).await;
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_eq!(get(&node, "/cache/s").await.json()["ttl"], 1);
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(get(&node, "/cache/s").await.status, StatusCode::NOT_FOUND);
    assert_eq!(node.store.stats().expirations, 1);
}

#[tokio::test]
async fn default_ttl_applies_to_writes_without_one() {
    let store = Store::new(
        StoreConfig {
            max_memory: 1 << 20,
            eviction_policy: EvictionPolicy::Lru,
        },
        Clock::new(),
    );
    let limits = Limits {
        max_key_bytes: 64,
        max_value_bytes: 64,
    };
    let node = Arc::new(Node::new(
        "t".into(),
        store,
        limits,
        Some(Duration::from_secs(30)),
        8,
    ));
    put_json(&node, "/cache/k", json!({"value": 1})).await;
    assert_eq!(get(&node, "/cache/k").await.json()["ttl"], 30);
}

#[tokio::test]
async fn operational_endpoints() {
    let node = node();
    assert_eq!(get(&node, "/health").await.json()["status"], "ok");
    assert_eq!(get(&node, "/ready").await.json()["ready"], true);

    put_json(&node, "/cache/a", json!({"value": 1})).await;
    get(&node, "/cache/a").await;
    get(&node, "/cache/b").await;
    let stats = get(&node, "/stats").await.json();
    assert_eq!(stats["keys"], 1);
    assert_eq!(stats["hits"], 1);
    assert_eq!(stats["misses"], 1);
    assert_eq!(stats["sets"], 1);
    assert_eq!(stats["hit_ratio"], 0.5);
    assert_eq!(stats["eviction_policy"], "tinylfu");
    assert_eq!(stats["max_memory"], 16 << 20);

    let metrics = get(&node, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.content_type.unwrap().starts_with("text/plain"));
    let text = String::from_utf8(metrics.body).unwrap();
    for series in [
        r#"dcache_http_requests_total{method="GET",route="/cache/{*key}",status="200"} 1"#,
        r#"dcache_http_requests_total{method="GET",route="/cache/{*key}",status="404"} 1"#,
        r#"dcache_http_request_duration_seconds_bucket{method="PUT",route="/cache/{*key}",le="+Inf"} 1"#,
        "dcache_cache_hits_total 1",
        "dcache_cache_misses_total 1",
        "dcache_cache_keys 1",
        "dcache_cache_max_bytes 16777216",
        "dcache_node_ready 1",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }

    node.set_ready(false);
    let ready = get(&node, "/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.headers.contains_key(header::RETRY_AFTER));
    let text = String::from_utf8(get(&node, "/metrics").await.body).unwrap();
    assert!(text.contains("dcache_node_ready 0"), "{text}");
}
