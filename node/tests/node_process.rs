//! The real `dcache-node` binary, driven over a socket as a user would.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::NodeProcess;

use serde_json::{Value, json};

async fn stats(client: &reqwest::Client, node: &NodeProcess) -> Value {
    client
        .get(node.url("/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn serves_the_api_over_a_socket() {
    let node = NodeProcess::start(&[
        "--max-value-bytes",
        "1KiB",
        "--expiry-sweep-interval",
        "100ms",
    ]);
    let client = reqwest::Client::new();

    // A key set with ttl 1 is gone within 2 s without anyone reading it, and counted.
    let set_at = Instant::now();
    let set = client
        .put(node.url("/cache/session:1"))
        .json(&json!({"value": {"user": 1}, "ttl": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    loop {
        let stats = stats(&client, &node).await;
        if stats["keys"] == 0 && stats["expirations"] == 1 {
            break;
        }
        assert!(
            set_at.elapsed() < Duration::from_secs(2),
            "still there after 2 s: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = client
        .get(node.url("/cache/session:1"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);

    // An over-limit value gets 413 and is not stored.
    let big = client
        .put(node.url("/cache/big"))
        .json(&json!({"value": "x".repeat(2000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert!(
        big.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("limit")
    );
    assert_eq!(
        client
            .get(node.url("/cache/big"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Malformed JSON gets 400 with a JSON error.
    let bad = client
        .post(node.url("/cache/k"))
        .header("content-type", "application/json")
        .body("{\"value\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(
        bad.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );

    // /metrics is valid Prometheus text with the dcache_ series.
    let text = common::metrics_text(&client, &node.url("/metrics")).await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text");
    let names: std::collections::BTreeSet<_> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "dcache_http_requests_total",
        "dcache_http_request_duration_seconds",
        "dcache_cache_expirations_total",
        "dcache_cache_keys",
        "dcache_cache_bytes",
        "dcache_cache_max_bytes",
        "dcache_process_resident_memory_bytes",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    assert!(names.iter().all(|n| n.starts_with("dcache_")), "{names:?}");
}

#[test]
fn exits_cleanly_on_sigterm() {
    let mut node = NodeProcess::start(&[]);
    let status = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dcache-node did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn refuses_bad_flags_with_a_clear_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_dcache-node"))
        .args(["--max-memory", "plenty"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a size like 512MiB"), "{stderr}");

    let help = Command::new(env!("CARGO_BIN_EXE_dcache-node"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--max-memory",
        "DCACHE_MAX_MEMORY",
        "--eviction-policy",
        "--default-ttl",
        "--log-format",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
