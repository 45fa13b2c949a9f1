//! Applies committed commands: a partition group's to the node's store, the cluster
//! group's to the cluster state.
//!
//! A snapshot holds exactly the state at its `last_log_id`. Commands are not all
//! idempotent (INCR, APPEND): a snapshot holding values newer than its position would
//! have them applied twice by a replica that installs it and then replays the entries
//! after that position.
//!
//! A partition's snapshot is rebuilt from the one before it and the log since: the
//! previous snapshot's entries, the commands after it applied to them by the rules the
//! store applies them by ([`update::apply`]), less the expired ones and, when the store
//! evicted anything since the last rebuild, the keys it no longer holds. That costs the
//! partition's own keys, not the whole store's (which one node shares among all its
//! partitions), and stops no apply meanwhile. Only when the log no longer holds those commands is the store copied
//! instead, holding the group's apply gate so that no entry is applied during the copy.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StoredMembership};

use super::cluster_state::{ClusterSnapshot, SharedClusterView};
use super::log_store::LogStore;
use super::snapshot::ChunkWriter;
use super::{Command, CommandResult, GroupId, SnapshotData, TypeConfig};
use crate::clock::UnixMillis;
use crate::persist::Disk;
use crate::store::update::{self, Entries};
use crate::store::{Entry, Store, read_snapshot, write_snapshot};

/// What a group's state machine applies to.
#[derive(Clone)]
pub enum Target {
    Cluster(SharedClusterView),
    Partition {
        partition: dcache_protocol::PartitionId,
        partitions: u32,
        store: Store,
    },
}

#[derive(Default)]
struct Applied {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    snapshot: Option<SnapshotOf<TypeConfig, SnapshotData>>,
}

/// Where a group's snapshots are kept on disk, with persistence.
struct SnapshotDisk {
    disk: Arc<Disk>,
    group: GroupId,
    generation: u64,
    /// The log position of the snapshot on disk. Held while one is written: a build and
    /// an install may finish in either order, and the newer one must stay.
    saved: tokio::sync::Mutex<Option<LogIdOf<TypeConfig>>>,
}

/// The state machine of one group. Clones share their state.
#[derive(Clone)]
pub struct GroupStateMachine {
    target: Target,
    applied: Arc<Mutex<Applied>>,
    disk: Option<Arc<SnapshotDisk>>,
    /// Held while entries are applied and while a snapshot copies the data.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// The group's log, which a partition's snapshot is rebuilt from.
    log: Option<LogStore>,
    /// The store's eviction count when the last rebuild began (`u64::MAX` before the
    /// first): while it stays the same, no key of the previous snapshot was evicted,
    /// and the rebuild need not ask the store which keys it still holds.
    evictions_at_rebuild: Arc<AtomicU64>,
}

impl GroupStateMachine {
    /// A state machine whose snapshots live in memory only.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            applied: Arc::default(),
            disk: None,
            gate: Arc::default(),
            log: None,
            evictions_at_rebuild: Arc::new(u64::MAX.into()),
        }
    }

    /// Rebuilds partition snapshots from the previous one and `log` since.
    pub fn with_log(mut self, log: LogStore) -> Self {
        self.log = Some(log);
        self
    }

    /// A state machine that keeps each snapshot of `group` on `disk`, starting from
    /// the one there if any (openraft replays the log after it).
    pub fn durable(
        target: Target,
        disk: Arc<Disk>,
        group: GroupId,
        snapshot_id: Option<u64>,
    ) -> io::Result<Self> {
        let snapshot = snapshot_id
            .map(|id| disk.snapshots.load(group, id))
            .transpose()?;
        let machine = Self {
            target,
            applied: Arc::default(),
            disk: Some(Arc::new(SnapshotDisk {
                generation: disk.generation(group),
                saved: tokio::sync::Mutex::new(snapshot.as_ref().and_then(|s| s.meta.last_log_id)),
                disk,
                group,
            })),
            gate: Arc::default(),
            log: None,
            evictions_at_rebuild: Arc::new(u64::MAX.into()),
        };
        if let Some(snapshot) = snapshot {
            machine.restore(&snapshot.snapshot)?;
            let mut applied = machine.applied();
            applied.last_applied = snapshot.meta.last_log_id;
            applied.membership = snapshot.meta.last_membership.clone();
            applied.snapshot = Some(snapshot);
        }
        Ok(machine)
    }

    /// Writes `snapshot` to disk, with persistence, unless a newer one is there.
    async fn keep(&self, snapshot: &SnapshotOf<TypeConfig, SnapshotData>) -> io::Result<()> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let mut saved = disk.saved.lock().await;
        if *saved >= snapshot.meta.last_log_id && saved.is_some() {
            return Ok(());
        }
        disk.disk
            .save_snapshot(disk.group, disk.generation, snapshot.clone())
            .await?;
        *saved = snapshot.meta.last_log_id;
        Ok(())
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn apply_command(&self, command: &Command) -> CommandResult {
        match (&self.target, command) {
            (Target::Cluster(view), Command::Cluster(command)) => {
                view.apply(command);
                CommandResult::Done
            }
            (Target::Partition { store, .. }, command) => apply_to_store(store, command),
            // Only this node's own code proposes commands, always to the right group; a
            // mismatch is a bug, not input, and applying nothing keeps replicas in step.
            (Target::Cluster(_), command) => {
                tracing::error!(%command, "command proposed to the wrong kind of group; ignored");
                CommandResult::Done
            }
        }
    }

    fn snapshot_data(&self) -> io::Result<SnapshotData> {
        let mut out = ChunkWriter::default();
        match &self.target {
            Target::Partition {
                partition,
                partitions,
                store,
            } => {
                store.snapshot_partition(*partition, *partitions, &mut out)?;
            }
            Target::Cluster(view) => {
                let snapshot = view.get().map(|view| view.snapshot());
                serde_json::to_writer(&mut out, &snapshot).map_err(io::Error::other)?;
            }
        }
        Ok(out.finish())
    }

    fn restore(&self, data: &SnapshotData) -> io::Result<()> {
        match &self.target {
            Target::Partition {
                partition,
                partitions,
                store,
            } => store
                .restore_partition(*partition, *partitions, data.reader())
                .map(drop)
                .map_err(io::Error::other),
            Target::Cluster(view) => {
                let restored: Option<ClusterSnapshot> =
                    serde_json::from_reader(data.reader()).map_err(io::Error::other)?;
                view.set(restored);
                Ok(())
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let started = std::time::Instant::now();
        let (snapshot, how) = match self.rebuild_from_log().await? {
            Some(snapshot) => (snapshot, "rebuilt from the previous one and the log"),
            None => (self.copy_under_gate().await?, "copied"),
        };
        tracing::debug!(last_log_id = ?snapshot.meta.last_log_id, elapsed = ?started.elapsed(), how, "snapshot built");
        // On disk before openraft purges the log it covers.
        self.keep(&snapshot).await?;
        let mut applied = self.applied();
        if applied
            .snapshot
            .as_ref()
            .is_none_or(|kept| kept.meta.last_log_id <= snapshot.meta.last_log_id)
        {
            applied.snapshot = Some(snapshot.clone());
        }
        Ok(snapshot)
    }
}

impl GroupStateMachine {
    /// A partition's snapshot at the last applied entry, from the previous snapshot
    /// and the log since; `None` where that cannot be (the cluster group, a log
    /// without those entries).
    async fn rebuild_from_log(&self) -> io::Result<Option<SnapshotOf<TypeConfig, SnapshotData>>> {
        let (Target::Partition { store, .. }, Some(log)) = (&self.target, &self.log) else {
            return Ok(None);
        };
        let (meta, base) = {
            let applied = self.applied();
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            };
            (meta, applied.snapshot.clone())
        };
        let Some(up_to) = meta.last_log_id else {
            return Ok(None);
        };
        let after = base
            .as_ref()
            .and_then(|base| base.meta.last_log_id)
            .map(|id| id.index);
        let Some(entries) = log.entries_between(after, up_to.index) else {
            return Ok(None);
        };
        let store = store.clone();
        let evictions = store.counters().evictions.get();
        let evicted = self.evictions_at_rebuild.load(Ordering::Relaxed) != evictions;
        let data = tokio::task::spawn_blocking(move || -> io::Result<SnapshotData> {
            let now = store.clock().now_ms();
            let mut rebuilt = RebuiltEntries::default();
            if let Some(base) = base {
                let base_entries =
                    read_snapshot(base.snapshot.reader()).map_err(io::Error::other)?;
                rebuilt.0.extend(base_entries);
            }
            // As every replica applied them; a set of an entry already expired is kept
            // here and left out with the other expired ones below.
            for entry in &entries {
                if let EntryPayload::Normal(command) = &entry.payload {
                    apply_command(&mut rebuilt, command, now);
                }
            }
            let mut out = ChunkWriter::default();
            write_snapshot(
                &mut out,
                rebuilt.0.into_iter().filter(|(key, entry)| {
                    !entry.is_expired(now) && (!evicted || store.contains(key))
                }),
            )?;
            Ok(out.finish())
        })
        .await
        .map_err(io::Error::other)??;
        self.evictions_at_rebuild
            .store(evictions, Ordering::Relaxed);
        Ok(Some(Snapshot {
            meta,
            snapshot: data,
        }))
    }

    /// The state as it is, copied while no entry is applied.
    async fn copy_under_gate(&self) -> io::Result<SnapshotOf<TypeConfig, SnapshotData>> {
        let gate = self.gate.clone().lock_owned().await;
        let meta = {
            let applied = self.applied();
            SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            }
        };
        let machine = self.clone();
        let data = tokio::task::spawn_blocking(move || {
            let data = machine.snapshot_data();
            drop(gate);
            data
        })
        .await
        .map_err(io::Error::other)??;
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

/// A partition's entries as a snapshot is rebuilt in: the commands of the log applied
/// to them by the store's rules, with no memory budget (the keys the store evicted are
/// left out once the rebuild is done).
#[derive(Default)]
struct RebuiltEntries(HashMap<Bytes, Entry>);

impl Entries for RebuiltEntries {
    fn live_at(&mut self, key: &[u8], now: UnixMillis) -> Option<Entry> {
        self.0
            .get(key)
            .filter(|entry| !entry.is_expired(now))
            .cloned()
    }

    fn insert(&mut self, key: Bytes, entry: Entry) {
        self.0.insert(key, entry);
    }

    fn remove(&mut self, key: &[u8], _live: bool) {
        self.0.remove(key);
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let applied = self.applied();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Entries>(&mut self, mut entries: Entries) -> Result<(), io::Error>
    where
        Entries:
            Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let _gate = self.gate.lock().await;
        while let Some((entry, responder)) = entries.try_next().await? {
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::Done,
                EntryPayload::Normal(command) => self.apply_command(command),
                EntryPayload::Membership(membership) => {
                    self.applied().membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    CommandResult::Done
                }
            };
            self.applied().last_applied = Some(entry.log_id);
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let snapshot = Snapshot {
            meta: meta.clone(),
            snapshot,
        };
        self.keep(&snapshot).await?;
        let Snapshot { snapshot, .. } = snapshot;
        self.restore(&snapshot)?;
        let mut applied = self.applied();
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        applied.snapshot = Some(Snapshot {
            meta: meta.clone(),
            snapshot,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        Ok(self.applied().snapshot.clone())
    }
}

/// Applies a partition's command to `store`: what every replica does with a committed
/// entry, and what a standalone node does with a write at once.
pub fn apply_to_store(store: &Store, command: &Command) -> CommandResult {
    apply_command(&mut &*store, command, store.clock().now_ms())
}

/// Applies a partition's command to `entries` (the store, or a snapshot being rebuilt);
/// `now` judges whether a plain delete removed a live value.
fn apply_command(entries: &mut impl Entries, command: &Command, now: UnixMillis) -> CommandResult {
    match command {
        Command::Set {
            key,
            kind,
            data,
            expires_at,
        } => {
            entries.insert(
                key.clone(),
                Entry {
                    kind: *kind,
                    data: data.clone(),
                    expires_at: *expires_at,
                },
            );
            CommandResult::Done
        }
        Command::Delete { key } => CommandResult::Deleted {
            existed: entries.delete(key, now),
        },
        Command::Update { now, update } => {
            CommandResult::Updated(update::apply(update, *now, entries))
        }
        Command::Cluster(command) => {
            tracing::error!(%command, "cluster command proposed to a partition; ignored");
            CommandResult::Done
        }
    }
}
