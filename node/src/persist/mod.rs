//! Persistence (`--persistence disk`): the node's identity, one write-ahead log shared
//! by every Raft group the node hosts, and each group's latest snapshot, in the data
//! directory:
//!
//! ```text
//! data-dir/
//!   LOCK            flock'ed while a process uses the directory
//!   identity.json   raft id, node name, partition count
//!   wal/            the write-ahead log, in segments (see [`wal`])
//!   snapshots/      one file per group snapshot (see [`snapshots`])
//! ```
//!
//! Memory-only (the default) touches none of this.

pub mod snapshots;
pub mod wal;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::raft::{GroupId, NodeId};

/// When an appended entry counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After fdatasync of its bytes.
    Always,
    /// After write(2); fdatasync at most this long after.
    Interval(Duration),
}

impl FsyncPolicy {
    /// Parses `always` or `interval:<ms>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "always" {
            return Ok(Self::Always);
        }
        let millis = text
            .strip_prefix("interval:")
            .and_then(|ms| ms.trim_end_matches("ms").parse::<u64>().ok())
            .filter(|ms| (1..=60_000).contains(ms))
            .ok_or_else(|| {
                format!("{text:?} is not `always` or `interval:<ms>` with 1 <= ms <= 60000")
            })?;
        Ok(Self::Interval(Duration::from_millis(millis)))
    }
}

/// Who a data directory belongs to, fixed when it is first used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub raft_id: NodeId,
    pub node_name: String,
    pub partitions: u32,
    /// How the log and snapshots are laid out ([`DATA_FORMAT`]); directories written
    /// before it was recorded read as 0.
    #[serde(default)]
    pub format: u32,
}

/// The layout this build reads and writes. 1: keys in partitions by Redis Cluster
/// slot (0 placed them by XXH3), members with a RESP address, read-modify-write
/// commands in the log.
pub const DATA_FORMAT: u32 = 1;

const IDENTITY_FILE: &str = "identity.json";
const LOCK_FILE: &str = "LOCK";

/// A data directory in use by this process: locked, with its identity.
#[derive(Debug)]
pub struct DataDir {
    pub path: PathBuf,
    pub identity: Identity,
    /// Whether the identity was read back (a restart) rather than created.
    pub restarted: bool,
    // Held for the life of the process: the flock goes with the descriptor.
    _lock: File,
}

impl DataDir {
    /// Locks `path` (creating it if needed) and reads its identity, or creates one with
    /// a fresh Raft id. Refuses a directory another process holds, or one that belongs
    /// to another node name or partition count: its log would be some other member's.
    pub fn open(path: &Path, node_name: &str, partitions: u32) -> io::Result<Self> {
        fs::create_dir_all(path).map_err(|e| context(e, path, "cannot create"))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| context(e, &lock_path, "cannot open"))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "data directory {} is in use by another process (it holds {})",
                    path.display(),
                    lock_path.display()
                ),
            ));
        }
        let identity_path = path.join(IDENTITY_FILE);
        let (identity, restarted) = match fs::read(&identity_path) {
            Ok(bytes) => {
                let identity: Identity = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is unreadable: {e}", identity_path.display()),
                    )
                })?;
                if identity.node_name != node_name {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "data directory {} belongs to node {:?}, not {node_name:?}: give each \
                             node its own directory",
                            path.display(),
                            identity.node_name
                        ),
                    ));
                }
                if identity.format != DATA_FORMAT {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "data directory {} holds data format {}, and this build reads \
                             only format {DATA_FORMAT}, which places keys by Redis Cluster \
                             slot: a cluster written by an older release cannot be read \
                             by this one; start the new release with empty data directories",
                            path.display(),
                            identity.format
                        ),
                    ));
                }
                if identity.partitions != partitions {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "data directory {} was written with {} partitions, not {partitions}: \
                             the partition count is fixed for the life of a cluster",
                            path.display(),
                            identity.partitions
                        ),
                    ));
                }
                (identity, true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let identity = Identity {
                    raft_id: rand::random::<u64>().max(1),
                    node_name: node_name.to_owned(),
                    partitions,
                    format: DATA_FORMAT,
                };
                let json = serde_json::to_vec_pretty(&identity).map_err(io::Error::other)?;
                write_atomically(&identity_path, &json)?;
                (identity, false)
            }
            Err(e) => return Err(context(e, &identity_path, "cannot read")),
        };
        Ok(Self {
            path: path.to_owned(),
            identity,
            restarted,
            _lock: lock,
        })
    }
}

/// Everything persistence keeps for the Raft groups: the write-ahead log, the snapshot
/// files, and what start-up recovered, handed to each group as it is created.
pub struct Disk {
    pub data_dir: DataDir,
    pub wal: wal::Wal,
    pub snapshots: snapshots::SnapshotFiles,
    pub metrics: wal::WalMetrics,
    recovered: std::sync::Mutex<std::collections::BTreeMap<GroupId, wal::RecoveredGroup>>,
    /// Bumped each time a group is dropped: a snapshot of a dropped copy, finished late,
    /// must not be recorded after the reset and bring the copy back at the next start.
    generations: std::sync::Mutex<std::collections::HashMap<GroupId, u64>>,
}

impl Disk {
    /// Replays the log of `data_dir` and drops snapshot files the log does not name.
    pub fn open(data_dir: DataDir, options: wal::WalOptions) -> io::Result<Self> {
        let metrics = wal::WalMetrics::new();
        let (wal, recovered) =
            wal::Wal::open(&data_dir.path.join("wal"), options, metrics.clone())?;
        let snapshots = snapshots::SnapshotFiles::open(&data_dir.path.join("snapshots"))?;
        let named = recovered
            .iter()
            .filter_map(|(group, r)| Some((*group, r.snapshot?)))
            .collect();
        snapshots.retain(&named)?;
        Ok(Self {
            data_dir,
            wal,
            snapshots,
            metrics,
            recovered: std::sync::Mutex::new(recovered),
            generations: Default::default(),
        })
    }

    fn generations(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<GroupId, u64>> {
        self.generations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current life of `group` on this node.
    pub fn generation(&self, group: GroupId) -> u64 {
        self.generations().get(&group).copied().unwrap_or_default()
    }

    /// Writes `snapshot` as `group`'s (in its life `generation`) and deletes the one
    /// before it. Refused for a copy dropped since.
    pub async fn save_snapshot(
        self: &std::sync::Arc<Self>,
        group: GroupId,
        generation: u64,
        snapshot: openraft::type_config::alias::SnapshotOf<
            crate::raft::TypeConfig,
            crate::raft::SnapshotData,
        >,
    ) -> io::Result<()> {
        let disk = self.clone();
        let id = tokio::task::spawn_blocking(move || disk.snapshots.save(group, &snapshot))
            .await
            .map_err(io::Error::other)??;
        let recorded = {
            let generations = self.generations();
            if generations.get(&group).copied().unwrap_or_default() != generation {
                None
            } else {
                Some(self.wal.save_snapshot(group, id))
            }
        };
        let keep = match recorded {
            Some(recorded) => {
                recorded.wait().await?;
                Some(id)
            }
            None => None,
        };
        let disk = self.clone();
        let removed = tokio::task::spawn_blocking(move || {
            if keep.is_some() {
                disk.snapshots.remove_except(group, keep)
            } else {
                disk.snapshots.remove_where_id(group, id)
            }
        });
        removed.await.map_err(io::Error::other)??;
        if keep.is_none() {
            return Err(io::Error::other(format!(
                "group {group} was dropped from this node"
            )));
        }
        Ok(())
    }

    /// Forgets `group` for good: its log and its snapshot.
    pub async fn drop_group(self: &std::sync::Arc<Self>, group: GroupId) -> io::Result<()> {
        let reset = {
            let mut generations = self.generations();
            *generations.entry(group).or_default() += 1;
            self.wal.reset(group)
        };
        reset.wait().await?;
        self.take_recovered(group);
        let disk = self.clone();
        tokio::task::spawn_blocking(move || disk.snapshots.remove_except(group, None))
            .await
            .map_err(io::Error::other)?
    }

    /// The groups the log holds, to be started at once.
    pub fn recovered_groups(&self) -> Vec<GroupId> {
        self.recovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// What the log held of `group` (once: a group created again later starts empty).
    pub fn take_recovered(&self, group: GroupId) -> wal::RecoveredGroup {
        self.recovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group)
            .unwrap_or_default()
    }
}

fn context(error: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{what} {}: {error}", path.display()))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one:
/// a temporary file, synced, renamed over, and the directory synced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary).map_err(|e| context(e, &temporary, "cannot create"))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path).map_err(|e| context(e, path, "cannot rename onto"))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes a directory's entries (files created, renamed or removed) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| context(e, dir, "cannot sync directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policies_parse() {
        assert_eq!(FsyncPolicy::parse("always"), Ok(FsyncPolicy::Always));
        assert_eq!(
            FsyncPolicy::parse("interval:10"),
            Ok(FsyncPolicy::Interval(Duration::from_millis(10)))
        );
        assert_eq!(
            FsyncPolicy::parse("interval:250ms"),
            Ok(FsyncPolicy::Interval(Duration::from_millis(250)))
        );
        for bad in [
            "never",
            "interval:",
            "interval:0",
            "interval:x",
            "interval:99999",
        ] {
            assert!(FsyncPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_data_dir_keeps_its_identity_and_refuses_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path(), "a", 64).unwrap();
        assert!(!first.restarted);
        let raft_id = first.identity.raft_id;

        let busy = DataDir::open(dir.path(), "a", 64).unwrap_err();
        assert!(
            busy.to_string().contains("in use by another process"),
            "{busy}"
        );
        drop(first);

        let again = DataDir::open(dir.path(), "a", 64).unwrap();
        assert!(again.restarted);
        assert_eq!(again.identity.raft_id, raft_id);
        drop(again);

        let other = DataDir::open(dir.path(), "b", 64).unwrap_err();
        assert!(
            other.to_string().contains("belongs to node \"a\""),
            "{other}"
        );
        let partitions = DataDir::open(dir.path(), "a", 32).unwrap_err();
        assert!(
            partitions.to_string().contains("64 partitions"),
            "{partitions}"
        );
        // Refusals change nothing.
        assert_eq!(
            DataDir::open(dir.path(), "a", 64).unwrap().identity.raft_id,
            raft_id
        );
    }

    #[test]
    fn a_data_dir_of_an_older_format_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let older = br#"{"raft_id": 7, "node_name": "a", "partitions": 64}"#;
        std::fs::write(dir.path().join(IDENTITY_FILE), older).unwrap();
        let refused = DataDir::open(dir.path(), "a", 64).unwrap_err();
        assert!(refused.to_string().contains("data format 0"), "{refused}");
        assert_eq!(
            std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap(),
            older.to_vec()
        );
    }
}
