use std::time::Duration;

use openraft::entry::RaftEntry;
use openraft::type_config::TypeConfigExt;

use super::*;

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry::new_blank(log_id(term, index))
}

fn options(segment_bytes: u64) -> WalOptions {
    WalOptions {
        policy: FsyncPolicy::Always,
        segment_bytes,
    }
}

fn open(dir: &Path, segment_bytes: u64) -> io::Result<(Wal, BTreeMap<GroupId, RecoveredGroup>)> {
    Wal::open(dir, options(segment_bytes), WalMetrics::new())
}

/// Appends `entries` to `group` and waits until they are synced.
async fn append(wal: &Wal, group: GroupId, entries: &[Entry]) {
    let (sender, receiver) = TypeConfig::oneshot();
    wal.append_entries(group, entries, IOFlushed::signal(sender));
    receiver.await.unwrap().unwrap();
}

fn indexes(recovered: &BTreeMap<GroupId, RecoveredGroup>, group: GroupId) -> Vec<u64> {
    recovered
        .get(&group)
        .map(|g| g.log.entries.keys().copied().collect())
        .unwrap_or_default()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn every_kind_of_record_is_replayed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, recovered) = open(dir.path(), SEGMENT_BYTES).unwrap();
        assert!(recovered.is_empty());
        append(&wal, 1, &(1..=10).map(|i| blank(1, i)).collect::<Vec<_>>()).await;
        append(&wal, 2, &[blank(1, 1), blank(1, 2)]).await;
        wal.save_vote(1, Vote::new(3, 7)).await.unwrap();
        wal.save_committed(1, Some(log_id(1, 8))).unwrap();
        wal.truncate(1, Some(log_id(1, 9))).unwrap();
        append(&wal, 1, &[blank(3, 10)]).await;
        wal.purge(1, log_id(1, 4)).unwrap();
        wal.save_snapshot(1, 42).wait().await.unwrap();
        wal.reset(2).wait().await.unwrap();
        wal.close();
    }
    let (wal, recovered) = open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(
        recovered.keys().copied().collect::<Vec<_>>(),
        [1],
        "group 2 was reset"
    );
    let group = &recovered[&1];
    assert_eq!(indexes(&recovered, 1), (5..=10).collect::<Vec<_>>());
    assert_eq!(
        group.log.entries[&10].log_id,
        log_id(3, 10),
        "the entry after the truncation"
    );
    assert_eq!(group.log.vote, Some(Vote::new(3, 7)));
    assert_eq!(group.log.committed, Some(log_id(1, 8)));
    assert_eq!(group.log.purged, Some(log_id(1, 4)));
    assert_eq!(group.snapshot, Some(42));
    wal.close();
}

/// Writes three records of group 1 (entries 1, 2, 3), closes, and returns the path of
/// the segment that holds them and where the third record starts.
async fn three_records(dir: &Path) -> (PathBuf, u64) {
    let (wal, _) = open(dir, SEGMENT_BYTES).unwrap();
    append(&wal, 1, &[blank(1, 1)]).await;
    append(&wal, 1, &[blank(1, 2)]).await;
    let path = segments(dir).pop().unwrap();
    let third_at = fs::metadata(&path).unwrap().len();
    append(&wal, 1, &[blank(1, 3)]).await;
    wal.close();
    (path, third_at)
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_what_came_before_survives() {
    let dir = tempfile::tempdir().unwrap();
    let (path, third_at) = three_records(dir.path()).await;
    let full = fs::metadata(&path).unwrap().len();
    // The crash cut the last record short.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full - 3)
        .unwrap();
    let (wal, recovered) = open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(indexes(&recovered, 1), [1, 2]);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        third_at,
        "the tail is cut"
    );
    // What is appended next lands after the cut, and survives another restart.
    append(&wal, 1, &[blank(1, 3)]).await;
    wal.close();
    let (wal, recovered) = open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(indexes(&recovered, 1), [1, 2, 3]);
    wal.close();
}

#[tokio::test]
async fn garbled_last_bytes_are_cut_like_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let (path, third_at) = three_records(dir.path()).await;
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    // And zeros after it, as a file system that extended the file may leave.
    bytes.extend_from_slice(&[0; 64]);
    fs::write(&path, &bytes).unwrap();
    let (wal, recovered) = open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(indexes(&recovered, 1), [1, 2]);
    assert_eq!(fs::metadata(&path).unwrap().len(), third_at);
    wal.close();
}

/// A bad checksum in the middle of the last segment: nothing after an unsynced write
/// was ever synced either, so reading stops there and the rest is cut.
#[tokio::test]
async fn a_bad_record_in_the_last_segment_stops_the_replay_there() {
    let dir = tempfile::tempdir().unwrap();
    let (path, third_at) = three_records(dir.path()).await;
    let mut bytes = fs::read(&path).unwrap();
    // Flip a byte inside the second record's body.
    bytes[third_at as usize - 2] ^= 0x55;
    fs::write(&path, &bytes).unwrap();
    let (wal, recovered) = open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(indexes(&recovered, 1), [1], "stops at the damaged record");
    assert!(fs::metadata(&path).unwrap().len() < third_at);
    wal.close();
}

/// A sealed segment was synced before the next was opened: damage there is not a crash,
/// and the node refuses to start rather than forget what it acknowledged.
#[tokio::test]
async fn a_bad_record_in_a_sealed_segment_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (path, third_at) = three_records(dir.path()).await;
    // Reopening seals that segment and starts another.
    let (wal, _) = open(dir.path(), SEGMENT_BYTES).unwrap();
    wal.close();
    let mut bytes = fs::read(&path).unwrap();
    bytes[third_at as usize - 2] ^= 0x55;
    fs::write(&path, &bytes).unwrap();
    let error = open(dir.path(), SEGMENT_BYTES).err().expect("refused");
    let text = error.to_string();
    assert!(text.contains("is damaged at offset"), "{text}");
    assert!(text.contains("Move the data directory aside"), "{text}");
    // Refusing changed nothing: the same error again.
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert!(open(dir.path(), SEGMENT_BYTES).is_err());
}

#[tokio::test]
async fn purged_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 1024).unwrap();
    for i in 1..=200 {
        append(&wal, 1, &[blank(1, i)]).await;
    }
    let before = segments(dir.path()).len();
    assert!(before > 3, "small segments roll: {before}");
    wal.purge(1, log_id(1, 190)).unwrap();
    // The deletion is queued behind the purge; a synced record after it waits for both.
    wal.save_vote(1, Vote::new(1, 1)).await.unwrap();
    let after = segments(dir.path()).len();
    assert!(after <= 2, "{before} segments, {after} after the purge");
    wal.close();
    let (wal, recovered) = open(dir.path(), 1024).unwrap();
    assert_eq!(indexes(&recovered, 1), (191..=200).collect::<Vec<_>>());
    assert_eq!(recovered[&1].log.purged, Some(log_id(1, 190)));
    wal.close();
}

/// A group that writes rarely would keep old segments forever: its live entries are
/// copied forward and the segments go.
#[tokio::test]
async fn a_quiet_group_does_not_hold_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 1024).unwrap();
    // The quiet group goes through its real log store, which registers it.
    let mut quiet = crate::raft::log_store::LogStore::durable(2, Log::default(), wal.clone());
    let (sender, receiver) = TypeConfig::oneshot();
    openraft::storage::RaftLogStorage::append(
        &mut quiet,
        [blank(1, 1), blank(1, 2)],
        IOFlushed::signal(sender),
    )
    .await
    .unwrap();
    receiver.await.unwrap().unwrap();
    for i in 1..=1000 {
        append(&wal, 1, &[blank(1, i)]).await;
        if i % 20 == 0 {
            wal.purge(1, log_id(1, i)).unwrap();
        }
    }
    wal.save_vote(1, Vote::new(1, 1)).await.unwrap();
    let kept = segments(dir.path());
    let last_seq: usize = kept
        .last()
        .unwrap()
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(last_seq > 2 * MAX_SEALED, "rolled {last_seq} times");
    assert!(kept.len() <= MAX_SEALED + 2, "{} segments kept", kept.len());
    wal.close();
    let (wal, recovered) = open(dir.path(), 1024).unwrap();
    assert_eq!(
        indexes(&recovered, 2),
        [1, 2],
        "the quiet group's entries survive"
    );
    assert_eq!(indexes(&recovered, 1), Vec::<u64>::new());
    wal.close();
}

#[tokio::test]
async fn with_an_interval_appends_complete_before_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = WalMetrics::new();
    // Far longer than the test: no sync comes from the interval while it runs.
    let (wal, _) = Wal::open(
        dir.path(),
        WalOptions {
            policy: FsyncPolicy::Interval(Duration::from_secs(3600)),
            segment_bytes: SEGMENT_BYTES,
        },
        metrics.clone(),
    )
    .unwrap();
    let syncs_at_start = metrics.syncs.get();
    append(&wal, 1, &[blank(1, 1)]).await;
    append(&wal, 1, &[blank(1, 2)]).await;
    assert_eq!(
        metrics.syncs.get(),
        syncs_at_start,
        "completed after write(2), unsynced"
    );
    // A vote is synced whatever the policy, and the entries before it with it.
    wal.save_vote(1, Vote::new(1, 1)).await.unwrap();
    assert_eq!(metrics.syncs.get(), syncs_at_start + 1);
    assert_eq!(metrics.unsynced_window.get_sample_count(), 1);
    append(&wal, 1, &[blank(1, 3)]).await;
    wal.close();
    assert_eq!(
        metrics.syncs.get(),
        syncs_at_start + 2,
        "closing syncs the rest"
    );
    let (wal, recovered) = open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(indexes(&recovered, 1), [1, 2, 3]);
    wal.close();
}
