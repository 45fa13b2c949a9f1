//! Applies committed commands: a partition group's to the node's store, the cluster
//! group's to the cluster state.
//!
//! A snapshot holds exactly the state at its `last_log_id`: building one holds the
//! group's apply gate while it copies the data, so no entry is applied meanwhile.
//! Commands are not all idempotent (INCR, APPEND): a snapshot holding values newer than
//! its position would have them applied twice by a replica that installs it and then
//! replays the entries after that position.

use std::io;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine, Snapshot};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StoredMembership};

use super::cluster_state::{ClusterSnapshot, SharedClusterView};
use super::snapshot::ChunkWriter;
use super::{Command, CommandResult, GroupId, SnapshotData, TypeConfig};
use crate::persist::Disk;
use crate::store::{Entry, Store};

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
}

impl GroupStateMachine {
    /// A state machine whose snapshots live in memory only.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            applied: Arc::default(),
            disk: None,
            gate: Arc::default(),
        }
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
        // Nothing is applied between reading the log position and copying the data.
        let gate = self.gate.clone().lock_owned().await;
        let meta = {
            let applied = self.applied();
            SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            }
        };
        let machine = self.clone();
        let started = std::time::Instant::now();
        let data = tokio::task::spawn_blocking(move || {
            let data = machine.snapshot_data();
            drop(gate);
            data
        })
        .await
        .map_err(io::Error::other)??;
        tracing::debug!(last_log_id = ?meta.last_log_id, elapsed = ?started.elapsed(), "snapshot built");
        let snapshot = Snapshot {
            meta,
            snapshot: data,
        };
        // On disk before openraft purges the log it covers.
        self.keep(&snapshot).await?;
        self.applied().snapshot = Some(snapshot.clone());
        Ok(snapshot)
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
    match command {
        Command::Set {
            key,
            kind,
            data,
            expires_at,
        } => {
            store.set(
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
            existed: store.delete(key),
        },
        Command::Update { now, update } => CommandResult::Updated(store.apply_update(update, *now)),
        Command::Cluster(command) => {
            tracing::error!(%command, "cluster command proposed to a partition; ignored");
            CommandResult::Done
        }
    }
}
