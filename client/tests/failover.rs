//! The client keeps serving through a partition-leader change, and loses nothing.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dcache_client::Client;
use support::{start_cluster, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_continue_through_a_leader_kill_and_every_acknowledged_write_reads_back() {
    let mut cluster = start_cluster(3, 8).await;
    let client = Client::builder(cluster.api_addrs())
        .deadline(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();

    let acknowledged_total = Arc::new(AtomicUsize::new(0));
    let acknowledged_after_kill = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let client = client.clone();
            let (total, after_kill) = (acknowledged_total.clone(), acknowledged_after_kill.clone());
            let (killed, stop) = (killed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut failures = Vec::new();
                for sequence in 0usize.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("writer-{writer}:{sequence}");
                    match client.set(&key, &sequence, None).await {
                        Ok(()) => {
                            acknowledged.push((key, sequence));
                            total.fetch_add(1, Ordering::Relaxed);
                            if killed.load(Ordering::Relaxed) {
                                after_kill.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => failures.push(format!("{key}: {e}")),
                    }
                }
                (acknowledged, failures)
            })
        })
        .collect();

    wait_until("40 writes acknowledged", Duration::from_secs(60), || {
        acknowledged_total.load(Ordering::Relaxed) >= 40
    })
    .await;
    let map = client.refresh_map().await.unwrap();
    let (victim, led) = map
        .leader_counts()
        .into_iter()
        .max_by_key(|(_, led)| *led)
        .unwrap();
    assert!(led > 0, "someone leads partitions");
    cluster.kill_node(&victim).unwrap();
    killed.store(true, Ordering::Relaxed);

    wait_until(
        "40 writes acknowledged after the leader was killed",
        Duration::from_secs(90),
        || acknowledged_after_kill.load(Ordering::Relaxed) >= 40,
    )
    .await;
    stop.store(true, Ordering::Relaxed);

    let mut acknowledged = Vec::new();
    for writer in writers {
        let (acks, failures) = writer.await.unwrap();
        assert!(
            failures.is_empty(),
            "writes failed despite the 30 s retry deadline: {failures:?}"
        );
        acknowledged.extend(acks);
    }
    for (key, value) in &acknowledged {
        let read: Option<usize> = client.get(key).await.unwrap();
        assert_eq!(read, Some(*value), "{key} lost or wrong");
    }
    let map = client.refresh_map().await.unwrap();
    assert!(map.all_led(), "every partition has a new leader");
    assert_eq!(
        map.leader_counts().get(&victim).copied().unwrap_or(0),
        0,
        "the killed node leads nothing in the refreshed map"
    );
    cluster.stop();
}
