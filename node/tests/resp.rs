//! The Redis-protocol listener as Redis Cluster clients meet it: the Rust `redis`
//! crate's cluster client against a 3-node cluster, and plain connections for what a
//! cluster client would hide (CROSSSLOT, MOVED, AUTH).

mod common;

use std::time::Duration;

use common::{NodeProcess, TestCluster};
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, Value, cmd};

async fn cluster_connection(cluster: &TestCluster) -> ClusterConnection {
    ClusterClient::builder(cluster.redis_seeds())
        .retries(20)
        .build()
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

async fn plain_connection(resp: &str) -> MultiplexedConnection {
    redis::Client::open(format!("redis://{resp}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// How many of 32 GETs of keys spread over the partitions a fresh connection to `resp`
/// (after READONLY if `readonly`) is answered `-MOVED` for.
async fn moved_gets(resp: &str, readonly: bool) -> usize {
    let mut connection = plain_connection(resp).await;
    if readonly {
        let _: () = cmd("READONLY").query_async(&mut connection).await.unwrap();
    }
    let mut moved = 0;
    for i in 0..32 {
        let answer: RedisResult<Option<String>> = cmd("GET")
            .arg(format!("probe-{i}"))
            .query_async(&mut connection)
            .await;
        if let Err(e) = answer {
            let text = e.to_string().to_lowercase();
            assert!(text.contains("moved"), "{text}");
            moved += 1;
        }
    }
    moved
}

/// For clients that send READONLY on every connection whether or not they mean to
/// read from replicas (the Rust redis crate's cluster client does), a node started
/// with `--resp-readonly linearizable` keeps their reads linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readonly_can_be_kept_linearizable() {
    let cluster = TestCluster::start_configured(3, 8, &["--resp-readonly", "linearizable"]).await;
    let resp = cluster.nodes[0].resp.clone().unwrap();
    assert!(moved_gets(&resp, true).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_clients_work_against_a_three_node_cluster() {
    let mut cluster = TestCluster::start(3).await;
    let mut redis = cluster_connection(&cluster).await;

    // Strings, deletes, existence.
    let _: () = cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query_async(&mut redis)
        .await
        .unwrap();
    let got: Option<String> = cmd("GET")
        .arg("greeting")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("hello"));
    let appended: i64 = cmd("APPEND")
        .arg("greeting")
        .arg(", world")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(appended, 12);
    let len: i64 = cmd("STRLEN")
        .arg("greeting")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(len, 12);
    let deleted: i64 = cmd("DEL")
        .arg("greeting")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let gone: Option<String> = cmd("GET")
        .arg("greeting")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(gone, None);
    let exists: i64 = cmd("EXISTS")
        .arg("greeting")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(exists, 0);

    // TTLs.
    let _: () = cmd("SET")
        .arg("session")
        .arg("s")
        .arg("EX")
        .arg(100)
        .query_async(&mut redis)
        .await
        .unwrap();
    let ttl: i64 = cmd("TTL")
        .arg("session")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((99..=100).contains(&ttl), "TTL {ttl}");
    let pttl: i64 = cmd("PTTL")
        .arg("session")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((98_000..=100_000).contains(&pttl), "PTTL {pttl}");
    let persisted: i64 = cmd("PERSIST")
        .arg("session")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(persisted, 1);
    let ttl: i64 = cmd("TTL")
        .arg("session")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(ttl, -1);
    let later: i64 = cmd("EXPIRE")
        .arg("session")
        .arg(50)
        .arg("NX")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(later, 1);
    let not_later: i64 = cmd("EXPIRE")
        .arg("session")
        .arg(10)
        .arg("GT")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(not_later, 0);
    let _: () = cmd("SET")
        .arg("blink")
        .arg("b")
        .arg("PX")
        .arg(150)
        .query_async(&mut redis)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let expired: Option<String> = cmd("GET")
        .arg("blink")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(expired, None);
    let missing_ttl: i64 = cmd("TTL")
        .arg("blink")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(missing_ttl, -2);

    // NX / XX / GET.
    let first: Option<String> = cmd("SET")
        .arg("lock")
        .arg("a")
        .arg("NX")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(first.as_deref(), Some("OK"));
    let second: Option<String> = cmd("SET")
        .arg("lock")
        .arg("b")
        .arg("NX")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(second, None);
    let absent: Option<String> = cmd("SET")
        .arg("nobody")
        .arg("x")
        .arg("XX")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(absent, None);
    let previous: Option<String> = cmd("SET")
        .arg("lock")
        .arg("c")
        .arg("GET")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(previous.as_deref(), Some("a"));
    let setnx: i64 = cmd("SETNX")
        .arg("lock")
        .arg("d")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(setnx, 0);
    let taken: Option<String> = cmd("GETDEL")
        .arg("lock")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(taken.as_deref(), Some("c"));

    // INCR from 8 clients at once ends at the exact total.
    let clients = 8;
    let each = 40;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut connection = cluster_connection(&cluster).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                let _: i64 = cmd("INCR")
                    .arg("counter")
                    .query_async(&mut connection)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total: i64 = cmd("GET")
        .arg("counter")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(total, clients * each);
    let float: String = cmd("INCRBYFLOAT")
        .arg("counter")
        .arg("0.5")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(float, format!("{}.5", clients * each));
    let not_a_number: RedisResult<i64> = cmd("INCR").arg("session").query_async(&mut redis).await;
    assert!(
        not_a_number
            .unwrap_err()
            .to_string()
            .contains("not an integer")
    );

    // Several keys of one slot, by hash tag.
    let _: () = cmd("MSET")
        .arg("{user:7}:name")
        .arg("Ada")
        .arg("{user:7}:lang")
        .arg("en")
        .query_async(&mut redis)
        .await
        .unwrap();
    let both: Vec<Option<String>> = cmd("MGET")
        .arg("{user:7}:name")
        .arg("{user:7}:lang")
        .arg("{user:7}:none")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(both, [Some("Ada".into()), Some("en".into()), None]);
    let removed: i64 = cmd("DEL")
        .arg("{user:7}:name")
        .arg("{user:7}:lang")
        .arg("{user:7}:none")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(removed, 2);

    // What a cluster client hides: keys across slots, and the redirect itself.
    let resp0 = cluster.nodes[0].resp.clone().unwrap();
    let mut plain = plain_connection(&resp0).await;
    let crossslot: RedisResult<Value> = cmd("MGET").arg("a").arg("b").query_async(&mut plain).await;
    let crossslot = crossslot.unwrap_err().to_string().to_lowercase();
    assert!(crossslot.contains("crossslot"), "{crossslot}");
    let slot: i64 = cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("foo")
        .query_async(&mut plain)
        .await
        .unwrap();
    assert_eq!(slot, 12182);
    let mut redirected = false;
    for i in 0..32 {
        let key = format!("probe-{i}");
        match cmd("SET")
            .arg(&key)
            .arg("v")
            .query_async::<Value>(&mut plain)
            .await
        {
            Ok(_) => {}
            Err(e) => {
                let text = e.to_string().to_lowercase();
                assert!(text.contains("moved"), "{text}");
                redirected = true;
            }
        }
    }
    assert!(
        redirected,
        "a third of the keys are led elsewhere: some SET must be MOVED"
    );
    // Reads of keys led elsewhere are MOVED too, unless the connection sent READONLY:
    // every node holds a replica of every partition here and answers from it.
    let resp = cluster.nodes[0].resp.clone().unwrap();
    assert!(moved_gets(&resp, false).await > 0);
    assert_eq!(moved_gets(&resp, true).await, 0);

    // One value, two protocols.
    let _: () = cmd("SET")
        .arg("shared")
        .arg(&b"raw\x00bytes"[..])
        .query_async(&mut redis)
        .await
        .unwrap();
    let over_http = cluster
        .client
        .get(cluster.nodes[0].url("/cache/shared"))
        .send()
        .await
        .unwrap();
    assert_eq!(over_http.status(), 200);
    assert_eq!(
        over_http.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(&over_http.bytes().await.unwrap()[..], b"raw\x00bytes");
    assert!(
        cluster
            .set(1, "json-doc", &serde_json::json!({"a": [1, 2]}))
            .await
    );
    let json_text: String = cmd("GET")
        .arg("json-doc")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(json_text, r#"{"a":[1,2]}"#);

    // Write 200 keys, add a node: the client follows MOVED to the new leaders.
    for i in 0..200 {
        let _: () = cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let moved_before = cluster.resp_commands_with_result("moved").await;
    let added = cluster.add_node();
    cluster.set_members(0, &[0, 1, 2, added]).await;
    cluster
        .wait_rebalanced(&[0, 1, 2, added], Duration::from_secs(90))
        .await;
    for i in 0..200 {
        let value: i64 = cmd("GET")
            .arg(format!("k{i}"))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(value, i);
        let _: () = cmd("SET")
            .arg(format!("k{i}"))
            .arg(i + 1)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let moved_after = cluster.resp_commands_with_result("moved").await;
    assert!(
        moved_after > moved_before,
        "the new node leads some partitions: the client must have been redirected"
    );
    let slots: Vec<Value> = cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut plain)
        .await
        .unwrap();
    let new_resp = cluster.nodes[added].resp.clone().unwrap();
    let port: u16 = new_resp.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        format!("{slots:?}").contains(&format!("int({port})")),
        "CLUSTER SLOTS names the new node: {slots:?}"
    );
}

#[tokio::test]
async fn tokens_and_scopes_apply_to_resp_commands() {
    let dir = std::env::temp_dir().join(format!("dcache-resp-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        "reader-token-0123456789 read\nwriter-token-0123456789 read,write\n",
    )
    .unwrap();
    let node = NodeProcess::start(&[
        "--resp-listen",
        "127.0.0.1:0",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    let resp = node.resp.clone().unwrap();
    let mut anonymous = plain_connection(&resp).await;
    let refused: RedisResult<Value> = cmd("GET").arg("k").query_async(&mut anonymous).await;
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .to_lowercase()
            .contains("noauth")
    );
    let wrong: RedisResult<Value> = cmd("AUTH").arg("nope").query_async(&mut anonymous).await;
    assert!(
        wrong
            .unwrap_err()
            .to_string()
            .to_lowercase()
            .contains("wrongpass")
    );

    let mut reader = plain_connection(&resp).await;
    let _: () = cmd("AUTH")
        .arg("reader-token-0123456789")
        .query_async(&mut reader)
        .await
        .unwrap();
    let nothing: Option<String> = cmd("GET").arg("k").query_async(&mut reader).await.unwrap();
    assert_eq!(nothing, None);
    let denied: RedisResult<Value> = cmd("SET").arg("k").arg("v").query_async(&mut reader).await;
    let denied = denied.unwrap_err().to_string().to_lowercase();
    assert!(denied.contains("noperm"), "{denied}");

    let mut writer = plain_connection(&resp).await;
    let _: () = cmd("AUTH")
        .arg("default")
        .arg("writer-token-0123456789")
        .query_async(&mut writer)
        .await
        .unwrap();
    let _: () = cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut writer)
        .await
        .unwrap();
    let value: Option<String> = cmd("GET").arg("k").query_async(&mut reader).await.unwrap();
    assert_eq!(
        value.as_deref(),
        Some("v"),
        "the refused SET changed nothing, the allowed one did"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
