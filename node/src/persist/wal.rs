//! One write-ahead log for every Raft group of the node, with group commit.
//!
//! A node hosts some 65 groups; a log per group, each fsynced on its own, would cost
//! one disk flush per group per batch. Here every group appends its records to one
//! queue. Once the runtime has run every task that was ready (one round of work: the
//! appends of all the groups woken together), a task writes what has gathered with one
//! write(2); with `--fsync always` it then asks the flusher thread for an fdatasync,
//! which covers every batch written before it starts; then it completes every append
//! of the batch (openraft's `IOFlushed`). Concurrent writes to many partitions share
//! each write and each flush, and the Raft thread is woken once per flush, not once
//! per append. With an interval the flusher syncs on its clock.
//!
//! ## Format
//!
//! Segments `wal/{seq}.wal`, each a sequence of records framed as
//! `[length: u32 LE][crc32 of body: u32 LE][body]`, the body a postcard [`Record`]
//! that names its group. Every segment starts with a checkpoint of every group's vote,
//! commit, purge point and snapshot, so that once no group needs the entries of the
//! oldest segments they can be deleted whole.
//!
//! ## Recovery
//!
//! The segments are replayed in order. Reading stops at the first record that is cut
//! short, has a zero length or fails its checksum:
//!
//! - in the last segment, that is a write the crash interrupted: nothing after it was
//!   ever synced (a sync covers every byte before it), so nothing after it was
//!   acknowledged with `--fsync always`; the tail is cut there and the node starts;
//! - in an older segment, which was synced before the next one was opened, it is not a
//!   crash but damage: the node refuses to start rather than forget votes and entries it
//!   has acknowledged. Move the data directory aside and the node rejoins as a new
//!   member that catches up from a snapshot.
//!
//! ## Purging
//!
//! Each segment remembers, per group, the last entry index it holds. A purge (after a
//! snapshot) or a reset (the group left this node) releases the segments whose entries
//! are all purged; the oldest released segments are deleted. A group that writes
//! rarely would hold old segments forever, so once more than [`MAX_SEALED`] segments
//! are sealed, the live entries of the groups holding the oldest one are written again
//! at the head of the log, and the segment goes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use openraft::storage::IOFlushed;
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use prometheus::{Histogram, HistogramOpts, IntCounter};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::{FsyncPolicy, sync_dir};
use crate::raft::log_store::Log;
use crate::raft::{GroupId, TypeConfig};

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

/// Segments are rolled at this size by default.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Sealed segments kept before the oldest is compacted away.
pub const MAX_SEALED: usize = 4;
const HEADER_BYTES: usize = 8;
/// No record is this large: a length past it is garbage, not a record.
const MAX_RECORD_BYTES: usize = 1 << 30;

/// What the log knows of a group besides its entries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupMeta {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
    /// The id of the group's snapshot file (see [`super::snapshots`]).
    pub snapshot: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Record<'a> {
    Checkpoint(Vec<(GroupId, GroupMeta)>),
    Entries {
        group: GroupId,
        entries: Cow<'a, [Entry]>,
    },
    Vote {
        group: GroupId,
        vote: Vote,
    },
    Committed {
        group: GroupId,
        committed: Option<LogId>,
    },
    Truncate {
        group: GroupId,
        after: Option<LogId>,
    },
    Purge {
        group: GroupId,
        upto: LogId,
    },
    Snapshot {
        group: GroupId,
        id: u64,
    },
    /// The group left this node: everything before is void.
    Reset {
        group: GroupId,
    },
}

/// A group as the log left it.
#[derive(Debug, Default, Clone)]
pub struct RecoveredGroup {
    pub log: Log,
    pub snapshot: Option<u64>,
}

impl RecoveredGroup {
    fn meta(&self) -> GroupMeta {
        GroupMeta {
            vote: self.log.vote,
            committed: self.log.committed,
            purged: self.log.purged,
            snapshot: self.snapshot,
        }
    }

    fn apply_meta(&mut self, meta: GroupMeta) {
        self.log.vote = meta.vote;
        self.log.committed = meta.committed;
        self.snapshot = meta.snapshot;
        if let Some(purged) = meta.purged {
            self.log.purge(purged);
        }
    }
}

/// Counters of the log's work, exported as `dcache_wal_*`.
#[derive(Clone)]
pub struct WalMetrics {
    pub bytes_written: IntCounter,
    pub syncs: IntCounter,
    /// With `--fsync interval`: how long acknowledged bytes waited for their sync, the
    /// window a machine crash could lose.
    pub unsynced_window: Histogram,
}

impl WalMetrics {
    pub fn new() -> Self {
        Self {
            bytes_written: IntCounter::new(
                "dcache_wal_written_bytes_total",
                "Bytes written to the write-ahead log.",
            )
            .expect("valid metric"),
            syncs: IntCounter::new(
                "dcache_wal_syncs_total",
                "fdatasync calls on the write-ahead log (each covers a batch of appends).",
            )
            .expect("valid metric"),
            unsynced_window: Histogram::with_opts(
                HistogramOpts::new(
                    "dcache_wal_unsynced_window_seconds",
                    "With --fsync interval: how long acknowledged writes waited for fdatasync \
                     (what a machine crash could lose).",
                )
                .buckets(vec![
                    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]),
            )
            .expect("valid metric"),
        }
    }

    pub fn collectors(&self) -> [Box<dyn prometheus::core::Collector>; 3] {
        [
            Box::new(self.bytes_written.clone()),
            Box::new(self.syncs.clone()),
            Box::new(self.unsynced_window.clone()),
        ]
    }
}

impl Default for WalMetrics {
    fn default() -> Self {
        Self::new()
    }
}

enum Op {
    Write(Vec<u8>),
    /// Sync the current segment and continue in segment `seq`.
    Roll(u64),
    /// Sync, then delete these segments.
    Delete(Vec<u64>),
}

enum Waiter {
    Flushed(IOFlushed<TypeConfig>),
    Notify(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl Waiter {
    fn complete(self, result: &Result<(), String>) {
        let result = result.clone().map_err(io::Error::other);
        match self {
            Self::Flushed(callback) => callback.io_completed(result),
            Self::Notify(sender) => {
                let _ = sender.send(result);
            }
        }
    }
}

struct State {
    ops: Vec<Op>,
    waiters: Vec<Waiter>,
    /// A waiter of the queued batch needs its bytes synced whatever the policy.
    sync_requested: bool,
    /// The flusher thread is to write what is queued: it was queued outside a Tokio
    /// runtime, where no task can write it (see [`Wal::flush_after_this_round`]).
    flush_requested: bool,
    /// A task is queued on the runtime to write what is queued once the runtime's
    /// ready tasks have run.
    flush_scheduled: bool,
    /// Written batches waiting for the flusher thread's next fdatasync.
    sync_waiters: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
    /// When the first write not yet synced was made (the interval policy's clock).
    unsynced_since: Option<Instant>,
    active: u64,
    active_bytes: u64,
    /// Per segment (the active one included), the last entry index of each group in it.
    pins: BTreeMap<u64, HashMap<GroupId, u64>>,
    metas: BTreeMap<GroupId, GroupMeta>,
    failed: Option<String>,
    closed: bool,
    compact: bool,
}

impl State {
    /// Why nothing more can be stored, once the log has failed (or closed).
    fn refusal(&self) -> Option<String> {
        self.failed
            .as_ref()
            .map(|failed| format!("the write-ahead log failed earlier: {failed}"))
    }
}

struct Shared {
    dir: PathBuf,
    policy: FsyncPolicy,
    segment_bytes: u64,
    metrics: WalMetrics,
    /// The active segment, locked while a batch is written so that batches reach it in
    /// the order they were queued. Taken before `state` when both are.
    segment: Mutex<Segment>,
    state: Mutex<State>,
    wake: Condvar,
    /// Each open group's in-memory log, for compaction.
    logs: Mutex<HashMap<GroupId, Weak<Mutex<Log>>>>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Segment {
    /// Shared so that a sync can run while the next batch is written.
    file: Arc<File>,
    seq: u64,
}

/// The node's write-ahead log. Clones share it.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn frame(record: &Record<'_>) -> io::Result<Vec<u8>> {
    let body = postcard::to_stdvec(record).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(HEADER_BYTES + body.len());
    framed.extend_from_slice(&(body.len() as u32).to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    framed.extend_from_slice(&body);
    Ok(framed)
}

/// The record at `data[pos..]`: `Ok(Some((record, next)))`, `Ok(None)` at the end, or
/// why the bytes there are no record.
fn read_record(data: &[u8], pos: usize) -> Result<Option<(Record<'static>, usize)>, String> {
    let rest = &data[pos..];
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < HEADER_BYTES {
        return Err(format!("a record header cut short ({} bytes)", rest.len()));
    }
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD_BYTES {
        return Err(format!("an impossible record length {len}"));
    }
    let Some(body) = rest.get(HEADER_BYTES..HEADER_BYTES + len) else {
        return Err(format!(
            "a record of {len} bytes cut short at {}",
            rest.len() - HEADER_BYTES
        ));
    };
    if crc32fast::hash(body) != crc {
        return Err("a record whose checksum does not match".into());
    }
    let record: Record<'_> =
        postcard::from_bytes(body).map_err(|e| format!("an undecodable record: {e}"))?;
    Ok(Some((record, pos + HEADER_BYTES + len)))
}

fn replay(
    groups: &mut BTreeMap<GroupId, RecoveredGroup>,
    pins: &mut HashMap<GroupId, u64>,
    record: Record<'_>,
) {
    match record {
        Record::Checkpoint(metas) => {
            for (group, meta) in metas {
                groups.entry(group).or_default().apply_meta(meta);
            }
        }
        Record::Entries { group, entries } => {
            let log = &mut groups.entry(group).or_default().log;
            let floor = log.purged.map_or(0, |p| p.index + 1);
            for entry in entries.iter() {
                if entry.log_id.index >= floor {
                    log.entries.insert(entry.log_id.index, entry.clone());
                }
            }
            if let Some(last) = entries.last() {
                let pin = pins.entry(group).or_default();
                *pin = (*pin).max(last.log_id.index);
            }
        }
        Record::Vote { group, vote } => groups.entry(group).or_default().log.vote = Some(vote),
        Record::Committed { group, committed } => {
            groups.entry(group).or_default().log.committed = committed;
        }
        Record::Truncate { group, after } => {
            groups.entry(group).or_default().log.truncate_after(after)
        }
        Record::Purge { group, upto } => groups.entry(group).or_default().log.purge(upto),
        Record::Snapshot { group, id } => groups.entry(group).or_default().snapshot = Some(id),
        Record::Reset { group } => {
            groups.remove(&group);
        }
    }
}

/// Drops, from every segment's pins, the groups whose entries there are all purged or
/// void.
fn release(pins: &mut BTreeMap<u64, HashMap<GroupId, u64>>, group: GroupId, upto: Option<u64>) {
    for held in pins.values_mut() {
        if held
            .get(&group)
            .is_some_and(|last| upto.is_none_or(|upto| *last <= upto))
        {
            held.remove(&group);
        }
    }
}

/// A record queued to be synced; [`Synced::wait`] completes once it is.
pub struct Synced(tokio::sync::oneshot::Receiver<io::Result<()>>);

impl Synced {
    pub async fn wait(self) -> io::Result<()> {
        self.0
            .await
            .map_err(|_| io::Error::other("the write-ahead log stopped"))?
    }
}

/// Options of a log, the segment size mainly (tests roll small segments).
#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    pub policy: FsyncPolicy,
    pub segment_bytes: u64,
}

impl Wal {
    /// Opens the log in `dir`, replaying it: every group it holds, as it left it.
    pub fn open(
        dir: &Path,
        options: WalOptions,
        metrics: WalMetrics,
    ) -> io::Result<(Self, BTreeMap<GroupId, RecoveredGroup>)> {
        fs::create_dir_all(dir)?;
        let mut segments: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".wal").and_then(|s| s.parse().ok()) {
                segments.push(seq);
            }
        }
        segments.sort_unstable();
        let mut groups = BTreeMap::new();
        let mut pins: BTreeMap<u64, HashMap<GroupId, u64>> = BTreeMap::new();
        for (i, &seq) in segments.iter().enumerate() {
            let path = segment_path(dir, seq);
            let data = fs::read(&path)?;
            pins.entry(seq).or_default();
            let mut pos = 0;
            loop {
                match read_record(&data, pos) {
                    Ok(None) => break,
                    Ok(Some((record, next))) => {
                        match &record {
                            Record::Reset { group } => release(&mut pins, *group, None),
                            Record::Purge { group, upto } => {
                                release(&mut pins, *group, Some(upto.index));
                            }
                            _ => {}
                        }
                        replay(&mut groups, pins.entry(seq).or_default(), record);
                        pos = next;
                    }
                    Err(why) if i + 1 == segments.len() => {
                        warn!(
                            segment = %path.display(),
                            offset = pos,
                            cut_bytes = data.len() - pos,
                            "write-ahead log: {why}; cutting the torn tail a crash left (it \
                             was never synced, so never acknowledged with --fsync always)"
                        );
                        let file = OpenOptions::new().write(true).open(&path)?;
                        file.set_len(pos as u64)?;
                        file.sync_all()?;
                        break;
                    }
                    Err(why) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "write-ahead log segment {} is damaged at offset {pos}: {why}. It \
                                 was synced before later segments were written, so this is not \
                                 a crash but damage; refusing to start rather than forget \
                                 acknowledged votes and entries. Move the data directory aside \
                                 to rejoin as a new member.",
                                path.display()
                            ),
                        ));
                    }
                }
            }
        }
        let active = segments.last().map_or(1, |last| last + 1);
        let metas = groups.iter().map(|(g, r)| (*g, r.meta())).collect();
        pins.insert(active, HashMap::new());
        let checkpoint = frame(&Record::Checkpoint(
            groups.iter().map(|(g, r)| (*g, r.meta())).collect(),
        ))?;
        let path = segment_path(dir, active);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        (&file).write_all(&checkpoint)?;
        file.sync_data()?;
        sync_dir(dir)?;
        let state = State {
            ops: Vec::new(),
            waiters: Vec::new(),
            sync_requested: false,
            flush_requested: false,
            flush_scheduled: false,
            sync_waiters: Vec::new(),
            unsynced_since: None,
            active,
            active_bytes: checkpoint.len() as u64,
            pins,
            metas,
            failed: None,
            closed: false,
            compact: false,
        };
        let wal = Self {
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                policy: options.policy,
                segment_bytes: options.segment_bytes,
                metrics,
                segment: Mutex::new(Segment {
                    file: Arc::new(file),
                    seq: active,
                }),
                state: Mutex::new(state),
                wake: Condvar::new(),
                logs: Mutex::default(),
                flusher: Mutex::default(),
            }),
        };
        {
            let mut state = wal.state();
            wal.collect_garbage(&mut state);
            state.compact = true;
        }
        let shared = wal.shared.clone();
        let flusher = std::thread::Builder::new()
            .name("dcache-wal".into())
            .spawn(move || flush_loop(&shared))?;
        *wal.shared.flusher.lock().unwrap_or_else(|p| p.into_inner()) = Some(flusher);
        wal.shared.wake.notify_one();
        info!(
            dir = %dir.display(),
            groups = groups.len(),
            segments = segments.len(),
            "write-ahead log replayed"
        );
        Ok((wal, groups))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets compaction copy `group`'s live entries forward.
    pub fn register(&self, group: GroupId, log: &Arc<Mutex<Log>>) {
        self.shared
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, Arc::downgrade(log));
    }

    /// Queues `framed`; `update` adjusts the bookkeeping in the same critical section,
    /// so that checkpoints and pins follow the order of the records exactly.
    fn push(
        &self,
        framed: Vec<u8>,
        waiter: Option<Waiter>,
        sync: bool,
        update: impl FnOnce(&mut State),
    ) {
        let someone_waits = waiter.is_some() || sync;
        let mut state = self.state();
        if let Some(refusal) = state.refusal() {
            drop(state);
            if let Some(waiter) = waiter {
                waiter.complete(&Err(refusal));
            }
            return;
        }
        state.active_bytes += framed.len() as u64;
        match state.ops.last_mut() {
            Some(Op::Write(bytes)) => bytes.extend_from_slice(&framed),
            _ => state.ops.push(Op::Write(framed)),
        }
        update(&mut state);
        if let Some(waiter) = waiter {
            state.waiters.push(waiter);
        }
        state.sync_requested |= sync;
        if state.active_bytes >= self.shared.segment_bytes {
            self.roll(&mut state);
        }
        // A record no one waits for (a commit index, a truncation, a purge) goes with
        // the next batch someone waits for: waking the flusher thread for it alone
        // would cost a wake-up per commit on every node.
        // A task already scheduled takes this record with the rest of its round.
        if !someone_waits || state.flush_scheduled {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                state.flush_scheduled = true;
                drop(state);
                self.flush_after_this_round(&runtime);
            }
            Err(_) => {
                state.flush_requested = true;
                drop(state);
                self.shared.wake.notify_one();
            }
        }
    }

    /// Writes what is queued once the runtime has run every task that is ready now,
    /// so that the appends of all the groups woken together (the leaders' new entries
    /// and the followers' appends that arrived in one stream batch) share one write(2)
    /// and, with `--fsync always`, one fdatasync; their waiters complete back on the
    /// runtime. Handing every append to the flusher thread, with every completion a
    /// wake-up from another thread, cost several thread switches per replicated write
    /// and nearly doubled a write's CPU.
    fn flush_after_this_round(&self, runtime: &tokio::runtime::Handle) {
        let wal = self.clone();
        runtime.spawn(async move {
            tokio::task::yield_now().await;
            let (waiters, sync_requested, mut result) = wal.write_queued();
            let sync = sync_requested || matches!(wal.shared.policy, FsyncPolicy::Always);
            if result.is_ok() && sync && !waiters.is_empty() {
                result = wal.synced_by_flusher().await;
            }
            for waiter in waiters {
                waiter.complete(&result);
            }
        });
    }

    /// Writes every queued record, in order, to the active segment; returns the
    /// waiters of the records written and whether one of them needs a sync.
    fn write_queued(&self) -> (Vec<Waiter>, bool, Result<(), String>) {
        let mut segment = self
            .shared
            .segment
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (ops, waiters, sync_requested) = {
            let mut state = self.state();
            state.flush_scheduled = false;
            state.flush_requested = false;
            let taken = (
                std::mem::take(&mut state.ops),
                std::mem::take(&mut state.waiters),
                std::mem::take(&mut state.sync_requested),
            );
            if let Some(refusal) = state.refusal() {
                return (taken.1, taken.2, Err(refusal));
            }
            taken
        };
        let mut written = 0;
        let mut result = Ok(());
        for op in ops {
            result = match op {
                Op::Write(bytes) => (&*segment.file).write_all(&bytes).map(|()| {
                    written += bytes.len() as u64;
                }),
                Op::Roll(next) => segment.file.sync_data().and_then(|()| {
                    let file = OpenOptions::new()
                        .create_new(true)
                        .append(true)
                        .open(segment_path(&self.shared.dir, next))?;
                    *segment = Segment {
                        file: Arc::new(file),
                        seq: next,
                    };
                    sync_dir(&self.shared.dir)
                }),
                Op::Delete(segments) => segment.file.sync_data().and_then(|()| {
                    for seq in segments {
                        debug_assert_ne!(seq, segment.seq);
                        fs::remove_file(segment_path(&self.shared.dir, seq))?;
                    }
                    sync_dir(&self.shared.dir)
                }),
            };
            if result.is_err() {
                break;
            }
        }
        if written > 0 {
            self.shared.metrics.bytes_written.inc_by(written);
            let mut state = self.state();
            if state.unsynced_since.is_none() {
                state.unsynced_since = Some(Instant::now());
                // The interval policy's flusher starts its clock.
                self.shared.wake.notify_one();
            }
        }
        let result = result.map_err(|e| self.fail(e));
        (waiters, sync_requested, result)
    }

    /// Every byte written so far synced to the disk, by the flusher thread: its sync
    /// covers every batch written before it starts, so batches written meanwhile share
    /// the next one.
    async fn synced_by_flusher(&self) -> Result<(), String> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        {
            let mut state = self.state();
            if let Some(refusal) = state.refusal() {
                return Err(refusal);
            }
            state.sync_waiters.push(sender);
        }
        self.shared.wake.notify_one();
        receiver
            .await
            .unwrap_or_else(|_| Err("the write-ahead log stopped".to_owned()))
    }

    /// Syncs what has been written to the active segment, if anything is unsynced.
    fn sync_written(&self) -> Result<(), String> {
        let file = self
            .shared
            .segment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .file
            .clone();
        let Some(since) = self.state().unsynced_since.take() else {
            return Ok(());
        };
        file.sync_data().map_err(|e| self.fail(e))?;
        self.shared.metrics.syncs.inc();
        if matches!(self.shared.policy, FsyncPolicy::Interval(_)) {
            self.shared
                .metrics
                .unsynced_window
                .observe(since.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Records that the log failed: every later append fails at once.
    fn fail(&self, error: io::Error) -> String {
        let error = error.to_string();
        error!(error = %error, "write-ahead log failed; the groups of this node stop");
        self.state().failed.get_or_insert_with(|| error.clone());
        error
    }

    fn roll(&self, state: &mut State) {
        let next = state.active + 1;
        state.ops.push(Op::Roll(next));
        state.active = next;
        state.pins.insert(next, HashMap::new());
        let checkpoint = frame(&Record::Checkpoint(
            state.metas.iter().map(|(g, m)| (*g, m.clone())).collect(),
        ))
        .expect("a checkpoint always encodes");
        state.active_bytes = checkpoint.len() as u64;
        state.ops.push(Op::Write(checkpoint));
        self.collect_garbage(state);
        state.compact = true;
        self.shared.wake.notify_one();
    }

    /// Queues the deletion of the oldest segments no group needs any more.
    fn collect_garbage(&self, state: &mut State) {
        let dead: Vec<u64> = state
            .pins
            .iter()
            .take_while(|(seq, held)| **seq != state.active && held.is_empty())
            .map(|(seq, _)| *seq)
            .collect();
        if dead.is_empty() {
            return;
        }
        for seq in &dead {
            state.pins.remove(seq);
        }
        state.ops.push(Op::Delete(dead));
    }

    /// Appends entries of `group`; `done` completes once they are stored under the
    /// policy. Call it with the group's log locked, so that the log's order on disk is
    /// its order in memory.
    pub fn append_entries(&self, group: GroupId, entries: &[Entry], done: IOFlushed<TypeConfig>) {
        let framed = frame(&Record::Entries {
            group,
            entries: Cow::Borrowed(entries),
        });
        let framed = match framed {
            Ok(framed) => framed,
            Err(e) => return done.io_completed(Err(e)),
        };
        let last = entries.last().map(|e| e.log_id.index);
        self.push(framed, Some(Waiter::Flushed(done)), false, |state| {
            if let Some(last) = last {
                let active = state.active;
                let pin = state
                    .pins
                    .get_mut(&active)
                    .expect("the active segment has pins")
                    .entry(group)
                    .or_default();
                *pin = (*pin).max(last);
            }
        });
    }

    /// Queues a record that must reach the disk (synced whatever the policy) before the
    /// caller goes on: votes, snapshots and resets. Queued at once; the returned future
    /// completes once it is synced.
    fn synced(&self, record: Record<'_>, update: impl FnOnce(&mut State)) -> Synced {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        match frame(&record) {
            Ok(framed) => self.push(framed, Some(Waiter::Notify(sender)), true, update),
            Err(e) => {
                let _ = sender.send(Err(e));
            }
        }
        Synced(receiver)
    }

    pub async fn save_vote(&self, group: GroupId, vote: Vote) -> io::Result<()> {
        self.synced(Record::Vote { group, vote }, |state| {
            state.metas.entry(group).or_default().vote = Some(vote);
        })
        .wait()
        .await
    }

    /// Records that `group`'s snapshot is now the file `id`.
    pub fn save_snapshot(&self, group: GroupId, id: u64) -> Synced {
        self.synced(Record::Snapshot { group, id }, |state| {
            state.metas.entry(group).or_default().snapshot = Some(id);
        })
    }

    /// Forgets `group` entirely: it left this node.
    pub fn reset(&self, group: GroupId) -> Synced {
        self.synced(Record::Reset { group }, |state| {
            state.metas.remove(&group);
            release(&mut state.pins, group, None);
            self.collect_garbage(state);
        })
    }

    fn queue(&self, record: Record<'_>, update: impl FnOnce(&mut State)) -> io::Result<()> {
        if let Some(refusal) = self.state().refusal() {
            return Err(io::Error::other(refusal));
        }
        self.push(frame(&record)?, None, false, update);
        Ok(())
    }

    /// Stored with the next batch; ordered before every later record.
    pub fn save_committed(&self, group: GroupId, committed: Option<LogId>) -> io::Result<()> {
        self.queue(Record::Committed { group, committed }, |state| {
            state.metas.entry(group).or_default().committed = committed;
        })
    }

    pub fn truncate(&self, group: GroupId, after: Option<LogId>) -> io::Result<()> {
        self.queue(Record::Truncate { group, after }, |_| {})
    }

    pub fn purge(&self, group: GroupId, upto: LogId) -> io::Result<()> {
        self.queue(Record::Purge { group, upto }, |state| {
            let meta = state.metas.entry(group).or_default();
            if meta.purged.is_none_or(|purged| purged < upto) {
                meta.purged = Some(upto);
            }
            release(&mut state.pins, group, Some(upto.index));
            self.collect_garbage(state);
        })
    }

    /// Copies forward the live entries of the groups that hold the oldest sealed
    /// segments, while more than [`MAX_SEALED`] are sealed.
    fn compact(&self) {
        loop {
            let holders: Vec<GroupId> = {
                let state = self.state();
                let sealed = state.pins.len().saturating_sub(1);
                if sealed <= MAX_SEALED || state.failed.is_some() || state.closed {
                    return;
                }
                let (_, oldest) = state.pins.iter().next().expect("sealed segments exist");
                oldest.keys().copied().collect()
            };
            let mut moved = false;
            for group in holders {
                let log = self
                    .shared
                    .logs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&group)
                    .and_then(Weak::upgrade);
                // A group not open (the node is stopping) keeps its segments.
                let Some(log) = log else { continue };
                let log = log.lock().unwrap_or_else(|p| p.into_inner());
                let entries: Vec<Entry> = log.entries.values().cloned().collect();
                let Ok(framed) = frame(&Record::Entries {
                    group,
                    entries: Cow::Owned(entries),
                }) else {
                    continue;
                };
                let last = log.entries.keys().next_back().copied();
                self.push(framed, None, false, |state| {
                    release(&mut state.pins, group, None);
                    if let Some(last) = last {
                        let active = state.active;
                        state
                            .pins
                            .get_mut(&active)
                            .expect("the active segment has pins")
                            .insert(group, last);
                    }
                    self.collect_garbage(state);
                });
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    /// Writes and syncs what is queued and stops the flusher.
    pub fn close(&self) {
        self.state().closed = true;
        self.shared.wake.notify_one();
        let flusher = self
            .shared
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(flusher) = flusher {
            let _ = flusher.join();
        }
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

/// The flusher thread: syncs for the batches that ask (`--fsync always`, votes,
/// snapshots), on the interval otherwise, and writes what was queued outside a
/// runtime; copies live entries forward after a roll.
fn flush_loop(shared: &Arc<Shared>) {
    let wal = Wal {
        shared: shared.clone(),
    };
    loop {
        let (sync_waiters, closed, compact) = {
            let mut state = wal.state();
            loop {
                if state.flush_requested
                    || !state.sync_waiters.is_empty()
                    || state.closed
                    || state.compact
                {
                    break;
                }
                match (shared.policy, state.unsynced_since) {
                    (FsyncPolicy::Interval(every), Some(since)) => {
                        let due = since + every;
                        let now = Instant::now();
                        if now >= due {
                            break;
                        }
                        state = shared
                            .wake
                            .wait_timeout(state, due - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    _ => {
                        state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                    }
                }
            }
            (
                std::mem::take(&mut state.sync_waiters),
                state.closed,
                std::mem::take(&mut state.compact),
            )
        };
        let (waiters, sync_requested, mut result) = wal.write_queued();
        let sync = match shared.policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => {
                sync_requested
                    || closed
                    || !sync_waiters.is_empty()
                    || wal
                        .state()
                        .unsynced_since
                        .is_some_and(|t| t.elapsed() >= every)
            }
        };
        if result.is_ok() && sync {
            result = wal.sync_written();
        }
        for waiter in waiters {
            waiter.complete(&result);
        }
        for waiter in sync_waiters {
            let _ = waiter.send(result.clone());
        }
        if compact && result.is_ok() {
            wal.compact();
        }
        if closed {
            let mut state = wal.state();
            if state.ops.is_empty() {
                // Whatever comes later fails at once rather than wait for a flusher
                // that is gone.
                state
                    .failed
                    .get_or_insert_with(|| "it is closed".to_owned());
                let stranded = std::mem::take(&mut state.sync_waiters);
                drop(state);
                for waiter in stranded {
                    let _ = waiter.send(Err("the write-ahead log is closed".to_owned()));
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
