use std::time::Duration;

use super::*;

fn store(max_memory: u64, eviction_policy: EvictionPolicy) -> Store {
    Store::new(
        StoreConfig {
            max_memory,
            eviction_policy,
        },
        Clock::new(),
    )
}

fn json(text: &str, expires_at: Option<UnixMillis>) -> Entry {
    Entry {
        kind: ValueKind::Json,
        data: Bytes::copy_from_slice(text.as_bytes()),
        expires_at,
    }
}

#[tokio::test(start_paused = true)]
async fn ttl_expires_on_read_at_its_absolute_time() {
    let store = store(1 << 20, EvictionPolicy::Tinylfu);
    let expires = store.clock().after(Duration::from_secs(10));
    store.set(
        Bytes::from_static(b"session"),
        json("\"abc\"", Some(expires)),
    );
    store.set(Bytes::from_static(b"forever"), json("1", None));

    tokio::time::advance(Duration::from_millis(9_999)).await;
    let entry = store
        .get(b"session")
        .expect("alive one millisecond before expiry");
    assert_eq!(
        entry.remaining(store.clock().now_ms()),
        Some(Duration::from_millis(1))
    );

    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(store.get(b"session"), None);
    assert!(store.get(b"forever").is_some());

    let stats = store.stats();
    assert_eq!(stats.expirations, 1);
    assert_eq!((stats.hits, stats.misses), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn replacing_a_value_replaces_its_expiry() {
    let store = store(1 << 20, EvictionPolicy::Tinylfu);
    let key = Bytes::from_static(b"k");
    store.set(
        key.clone(),
        json("1", Some(store.clock().after(Duration::from_secs(1)))),
    );
    store.set(key.clone(), json("2", None));
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        store.get(&key).map(|e| e.data),
        Some(Bytes::from_static(b"2"))
    );
}

#[test]
fn expired_keys_are_removed_in_the_background() {
    let store = store(1 << 20, EvictionPolicy::Tinylfu);
    let soon = store.clock().after(Duration::from_millis(50));
    for i in 0..100 {
        store.set(Bytes::from(format!("k{i}")), json("1", Some(soon)));
    }
    store.run_maintenance();
    assert_eq!(store.stats().keys, 100);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Nothing reads the keys: only the maintenance pass may remove them.
    while store.stats().keys > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "expired keys never removed"
        );
        std::thread::sleep(Duration::from_millis(20));
        store.run_maintenance();
    }
    assert_eq!(store.stats().expirations, 100);
}

#[test]
fn an_already_expired_write_removes_the_key() {
    let store = store(1 << 20, EvictionPolicy::Tinylfu);
    let key = Bytes::from_static(b"k");
    store.set(key.clone(), json("1", None));
    store.set(key.clone(), json("2", Some(1)));
    assert_eq!(store.get(&key), None);
}

#[test]
fn delete_says_whether_the_key_existed() {
    let store = store(1 << 20, EvictionPolicy::Tinylfu);
    store.set(Bytes::from_static(b"k"), json("1", None));
    assert!(store.delete(b"k"));
    assert!(!store.delete(b"k"));
    assert_eq!(store.get(b"k"), None);
    assert_eq!(store.stats().deletes, 1);
}

#[test]
fn memory_budget_holds_and_evictions_are_counted() {
    for policy in [EvictionPolicy::Tinylfu, EvictionPolicy::Lru] {
        let budget = 256 * 1024;
        let store = store(budget, policy);
        let value = "x".repeat(1000);
        for i in 0..2_000 {
            store.set(Bytes::from(format!("key-{i}")), json(&value, None));
        }
        store.run_maintenance();
        let stats = store.stats();
        assert!(
            stats.bytes <= budget,
            "{policy:?}: {} over {budget}",
            stats.bytes
        );
        let per_entry = entry_weight(b"key-1000", &json(&value, None));
        assert!(
            stats.keys <= budget / per_entry,
            "{policy:?}: {} keys",
            stats.keys
        );
        assert!(stats.keys > 0, "{policy:?}: kept nothing");
        assert_eq!(stats.keys + stats.evictions, 2_000, "{policy:?}: {stats:?}");
    }
}

#[test]
fn lru_keeps_the_most_recent_writes() {
    let store = store(64 * 1024, EvictionPolicy::Lru);
    for i in 0..1_000 {
        store.set(Bytes::from(format!("key-{i}")), json("\"v\"", None));
        store.run_maintenance();
    }
    assert!(store.get(b"key-999").is_some());
    assert!(store.get(b"key-0").is_none());
}

#[test]
fn partition_snapshot_round_trips_with_absolute_expiry() {
    let partitions = 8;
    let source = store(1 << 20, EvictionPolicy::Tinylfu);
    let later = source.clock().after(Duration::from_secs(3600));
    for i in 0..200 {
        let entry = if i % 2 == 0 {
            json(&format!("{{\"n\":{i}}}"), Some(later))
        } else {
            Entry {
                kind: ValueKind::Bytes,
                data: Bytes::from(vec![i as u8; i]),
                expires_at: None,
            }
        };
        source.set(Bytes::from(format!("key-{i}")), entry);
    }
    let partition = partition_of(b"key-7", partitions);
    let mut expected: Vec<_> = source.partition_entries(partition, partitions).collect();
    assert!(!expected.is_empty());

    let mut buf = Vec::new();
    let written = source
        .snapshot_partition(partition, partitions, &mut buf)
        .unwrap();
    assert_eq!(written as usize, expected.len());

    let target = store(1 << 20, EvictionPolicy::Lru);
    // A stale key of the same partition must be gone after the restore.
    target.set(Bytes::from_static(b"key-7"), json("\"stale\"", None));
    target.set(Bytes::from_static(b"other"), json("1", None));
    let other_partition = partition_of(b"other", partitions);
    let restored = target
        .restore_partition(partition, partitions, &buf[..])
        .unwrap();
    assert_eq!(restored as usize, expected.len());

    let mut actual: Vec<_> = target.partition_entries(partition, partitions).collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    actual.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(actual, expected);
    if other_partition != partition {
        assert!(target.get(b"other").is_some(), "other partitions untouched");
    }
}

#[test]
fn corrupt_snapshot_changes_nothing() {
    let partitions = 4;
    let source = store(1 << 20, EvictionPolicy::Tinylfu);
    for i in 0..50 {
        source.set(Bytes::from(format!("key-{i}")), json("1", None));
    }
    let partition = partition_of(b"key-1", partitions);
    let mut buf = Vec::new();
    source
        .snapshot_partition(partition, partitions, &mut buf)
        .unwrap();

    let target = store(1 << 20, EvictionPolicy::Tinylfu);
    target.set(Bytes::from_static(b"key-1"), json("\"kept\"", None));
    for cut in [0, 3, 10, buf.len() - 1] {
        let result = target.restore_partition(partition, partitions, &buf[..cut]);
        assert!(result.is_err(), "truncated at {cut} accepted");
    }
    let mut bad_magic = buf.clone();
    bad_magic[0] = b'X';
    assert!(matches!(
        target.restore_partition(partition, partitions, &bad_magic[..]),
        Err(SnapshotError::BadMagic)
    ));
    assert!(matches!(
        target.restore_partition(partition + 1, partitions, &buf[..]),
        Err(SnapshotError::WrongPartition { .. })
    ));
    assert_eq!(
        target.get(b"key-1").unwrap().data,
        Bytes::from_static(b"\"kept\"")
    );
}
