//! Graceful shutdown finishes in-flight requests, but within a bound.

use std::time::{Duration, Instant};

use clap::Parser;
use dcache_node::config::NodeConfig;
use dcache_node::server::{ServeOptions, build_node, serve};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn shutdown_waits_for_in_flight_requests_only_as_long_as_the_grace_period() {
    let config = NodeConfig::parse_from(["dcache-node"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grace = Duration::from_millis(500);
    let options = ServeOptions {
        sweep_interval: Duration::from_millis(100),
        balance_interval: Duration::from_secs(1),
        http_workers: 2,
        grace,
        safe_stop: Duration::ZERO,
        raft_heartbeat: Duration::from_millis(150),
    };
    let node = build_node(&config, addr, None, None).unwrap();
    let server = tokio::spawn(serve(listener, None, node, options, async {
        let _ = stop_rx.await;
    }));

    // A request whose body never finishes arriving stays in flight.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"PUT /cache/k HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"value\":")
        .await
        .unwrap();
    // A completed request proves the server is up and the stalled one was accepted.
    let ok = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(ok.status(), 200);

    let stopped_at = Instant::now();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve returns after the grace period")
        .unwrap()
        .unwrap();
    let took = stopped_at.elapsed();
    assert!(
        took >= grace,
        "returned after {took:?}, before in-flight requests had their grace"
    );
    drop(stalled);
}
