//! The client against one real node: values of both kinds, TTLs, and single-flight
//! loads that reach the origin exactly once.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dcache_client::{Client, Error, Value};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    age: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_raw_and_expiring_values_round_trip() {
    let cluster = support::start_cluster(1, 4).await;
    let client = Client::connect(cluster.api_addrs()).await.unwrap();

    let alice = User {
        name: "Alice".into(),
        age: 30,
    };
    client.set("user:123", &alice, None).await.unwrap();
    assert_eq!(
        client.get::<User>("user:123").await.unwrap(),
        Some(alice.clone())
    );
    assert!(matches!(
        client.get::<u64>("user:123").await,
        Err(Error::Decode { .. })
    ));

    // Keys are bytes: separators and non-UTF-8 survive the trip through the path.
    let odd_key: &[u8] = b"a/b c?d#e%\xff";
    client
        .set_bytes(odd_key, vec![0u8, 1, 2, 255], None)
        .await
        .unwrap();
    assert_eq!(
        client.get_bytes(odd_key).await.unwrap().as_deref(),
        Some(&[0u8, 1, 2, 255][..])
    );
    assert!(matches!(
        client.get_value(odd_key).await.unwrap().map(|e| e.value),
        Some(Value::Bytes(_))
    ));

    client
        .set("session", "data", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let entry = client
        .get_entry::<String>("session")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.value, "data");
    assert!(entry.ttl.is_some_and(|ttl| ttl <= Duration::from_secs(60)));

    assert!(client.delete("user:123").await.unwrap());
    assert_eq!(client.get::<User>("user:123").await.unwrap(), None);
    assert!(!client.delete("user:123").await.unwrap());

    let refused = client
        .set("big", &"x".repeat(2 << 20), None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::Refused { status: 413, .. }),
        "{refused}"
    );
    // Larger than the socket buffers take: the node answers before it is all sent.
    let refused = client
        .set_bytes("bigger", vec![0u8; 64 << 20], None)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::Refused { status: 413, .. }),
        "{refused}"
    );
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_get_or_loads_call_the_origin_once() {
    let cluster = support::start_cluster(1, 4).await;
    let client = Client::connect(cluster.api_addrs()).await.unwrap();
    let origin_calls = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (client, origin_calls) = (client.clone(), origin_calls.clone());
            tokio::spawn(async move {
                client
                    .get_or_load("report:7", Some(Duration::from_secs(300)), || async {
                        origin_calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, std::io::Error>(json!({"rows": 1234}))
                    })
                    .await
            })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), json!({"rows": 1234}));
    }
    assert_eq!(origin_calls.load(Ordering::SeqCst), 1);
    // The loaded value was cached: a later call reads it without loading.
    let cached: serde_json::Value = client
        .get_or_load("report:7", None, || async {
            Err::<serde_json::Value, _>(std::io::Error::other("must not be called"))
        })
        .await
        .unwrap();
    assert_eq!(cached, json!({"rows": 1234}));

    // A failing origin: every waiter gets the error, nothing is cached.
    let failing_calls = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let (client, failing_calls) = (client.clone(), failing_calls.clone());
            tokio::spawn(async move {
                client
                    .get_or_load("report:down", None, || async {
                        failing_calls.fetch_add(1, Ordering::SeqCst);
                        // Long enough for all 20 callers' first reads to miss and join;
                        // a failed load caches nothing, so a latecomer would load again.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        Err::<u32, _>(std::io::Error::other("origin down"))
                    })
                    .await
            })
        })
        .collect();
    for caller in callers {
        let error = caller.await.unwrap().unwrap_err();
        assert!(
            matches!(&error, Error::Load(e) if e.to_string() == "origin down"),
            "{error}"
        );
    }
    assert_eq!(failing_calls.load(Ordering::SeqCst), 1);
    assert_eq!(client.get::<u32>("report:down").await.unwrap(), None);
    cluster.stop();
}
