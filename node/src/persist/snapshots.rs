//! Each group's latest snapshot, one file per snapshot: `snapshots/{group}-{id}.snap`.
//!
//! A file is written under a temporary name, synced, renamed and its directory synced;
//! only then does the write-ahead log record that the group's snapshot is `id`, and
//! only after that record is synced is the previous file deleted. Whatever the crash,
//! the log names a whole file. Files the log does not name (a crash between the rename
//! and the record, or a group that left) are deleted at start-up.
//!
//! Format: `DCSNAP01`, the metadata's length (u32 LE) and postcard bytes, the data's
//! length (u64 LE) and bytes, then a crc32 (u32 LE) of everything before it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use openraft::storage::Snapshot;
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf};

use super::sync_dir;
use crate::raft::snapshot::ChunkWriter;
use crate::raft::{GroupId, SnapshotData, TypeConfig};

const MAGIC: &[u8; 8] = b"DCSNAP01";

/// The snapshot files of a data directory.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
}

/// A writer that checksums what goes through it.
struct Summed<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl SnapshotFiles {
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, group: GroupId, id: u64) -> PathBuf {
        self.dir.join(format!("{group}-{id:016x}.snap"))
    }

    /// Writes `snapshot` durably as a new file of `group`; returns its id.
    pub fn save(
        &self,
        group: GroupId,
        snapshot: &SnapshotOf<TypeConfig, SnapshotData>,
    ) -> io::Result<u64> {
        let id = rand::random::<u64>();
        let path = self.path(group, id);
        let temporary = path.with_extension("tmp");
        let meta = postcard::to_stdvec(&snapshot.meta).map_err(io::Error::other)?;
        let file = File::create(&temporary)?;
        let mut out = Summed {
            inner: BufWriter::new(file),
            hasher: crc32fast::Hasher::new(),
        };
        out.write_all(MAGIC)?;
        out.write_all(&(meta.len() as u32).to_le_bytes())?;
        out.write_all(&meta)?;
        out.write_all(&snapshot.snapshot.len().to_le_bytes())?;
        for chunk in snapshot.snapshot.chunks() {
            out.write_all(chunk)?;
        }
        let crc = out.hasher.clone().finalize();
        let mut file = out.inner.into_inner().map_err(|e| e.into_error())?;
        file.write_all(&crc.to_le_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, &path)?;
        sync_dir(&self.dir)?;
        Ok(id)
    }

    /// Reads back the file `id` of `group`, refusing one that is cut or damaged.
    pub fn load(
        &self,
        group: GroupId,
        id: u64,
    ) -> io::Result<SnapshotOf<TypeConfig, SnapshotData>> {
        let path = self.path(group, id);
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot {} is unusable: {why}", path.display()),
            )
        };
        let bytes = fs::read(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("snapshot {} named by the log: {e}", path.display()),
            )
        })?;
        let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
            return Err(bad("too short"));
        };
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err(bad("checksum mismatch"));
        }
        let rest = body
            .strip_prefix(MAGIC)
            .ok_or_else(|| bad("not a snapshot file"))?;
        let (meta_len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("cut short"))?;
        let meta_len = u32::from_le_bytes(*meta_len) as usize;
        let (meta, rest) = rest
            .split_at_checked(meta_len)
            .ok_or_else(|| bad("cut short"))?;
        let meta: SnapshotMetaOf<TypeConfig> =
            postcard::from_bytes(meta).map_err(|e| bad(&e.to_string()))?;
        let (data_len, data) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| bad("cut short"))?;
        if u64::from_le_bytes(*data_len) != data.len() as u64 {
            return Err(bad("data length mismatch"));
        }
        let mut chunks = ChunkWriter::default();
        chunks.write_all(data)?;
        Ok(Snapshot {
            meta,
            snapshot: chunks.finish(),
        })
    }

    /// Deletes `group`'s files but `keep`.
    pub fn remove_except(&self, group: GroupId, keep: Option<u64>) -> io::Result<()> {
        self.remove_where(false, |g, id| g == group && Some(id) != keep)
    }

    /// Deletes the file `id` of `group`.
    pub fn remove_where_id(&self, group: GroupId, id: u64) -> io::Result<()> {
        self.remove_where(false, |g, i| g == group && i == id)
    }

    /// Deletes every file but those `named` (group → id), and unfinished writes: at
    /// start-up, before any group runs.
    pub fn retain(&self, named: &BTreeMap<GroupId, u64>) -> io::Result<()> {
        self.remove_where(true, |group, id| named.get(&group) != Some(&id))
    }

    fn remove_where(
        &self,
        unfinished: bool,
        doomed: impl Fn(GroupId, u64) -> bool,
    ) -> io::Result<()> {
        let mut removed = false;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let (stem, finished) = match name.strip_suffix(".snap") {
                Some(stem) => (stem, true),
                None => match name.strip_suffix(".tmp") {
                    Some(stem) => (stem, false),
                    None => continue,
                },
            };
            let parsed = stem
                .split_once('-')
                .and_then(|(g, id)| Some((g.parse().ok()?, u64::from_str_radix(id, 16).ok()?)));
            let Some((group, id)) = parsed else { continue };
            if (finished && doomed(group, id)) || (!finished && unfinished) {
                fs::remove_file(entry.path())?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}
