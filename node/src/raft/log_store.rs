//! The Raft log and vote of one group: in memory, and with persistence also in the
//! node's write-ahead log.
//!
//! Memory-only is the default for a cache: a node that restarts comes back as a new
//! incarnation and catches up from a snapshot, so nothing needs to survive it. With
//! `--persistence disk` every change is also queued to the [`Wal`] in the order it is
//! made in memory; reads are always served from memory.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::{LogState, OptionalSend, RaftLogReader};

use super::{GroupId, TypeConfig};
use crate::persist::wal::Wal;

/// One group's log and vote as they are in memory (and, with persistence, as the
/// write-ahead log replays them).
#[derive(Debug, Default, Clone)]
pub struct Log {
    pub vote: Option<VoteOf<TypeConfig>>,
    pub committed: Option<LogIdOf<TypeConfig>>,
    pub purged: Option<LogIdOf<TypeConfig>>,
    pub entries: BTreeMap<u64, EntryOf<TypeConfig>>,
}

impl Log {
    pub fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) {
        let first_removed = last_log_id.map_or(0, |id| id.index + 1);
        let _ = self.entries.split_off(&first_removed);
    }

    pub fn purge(&mut self, log_id: LogIdOf<TypeConfig>) {
        self.entries = self.entries.split_off(&(log_id.index + 1));
        if self.purged.is_none_or(|purged| purged < log_id) {
            self.purged = Some(log_id);
        }
    }
}

/// A cheap-to-clone handle; clones share the log (the reader openraft asks for is one).
#[derive(Clone, Default)]
pub struct LogStore {
    // A std mutex: every critical section is a map operation (and, with persistence, a
    // queued record) with no await inside.
    log: Arc<Mutex<Log>>,
    wal: Option<(Wal, GroupId)>,
}

impl LogStore {
    /// A log kept in memory only.
    pub fn memory() -> Self {
        Self::default()
    }

    /// `group`'s log as the write-ahead log recovered it, kept there from now on.
    pub fn durable(group: GroupId, log: Log, wal: Wal) -> Self {
        let log = Arc::new(Mutex::new(log));
        wal.register(group, &log);
        Self {
            log,
            wal: Some((wal, group)),
        }
    }

    /// The entries after index `after` (from the first when `None`) up to `up_to`,
    /// if the log still holds every one of them.
    pub fn entries_between(
        &self,
        after: Option<u64>,
        up_to: u64,
    ) -> Option<Vec<EntryOf<TypeConfig>>> {
        let first = after.map_or(0, |index| index + 1);
        if first > up_to {
            return Some(Vec::new());
        }
        let log = self.log();
        if log.purged.is_some_and(|purged| purged.index >= first) {
            return None;
        }
        let entries: Vec<_> = log
            .entries
            .range(first..=up_to)
            .map(|(_, entry)| entry.clone())
            .collect();
        (entries.len() as u64 == up_to - first + 1).then_some(entries)
    }

    /// Appends `entry` as a flushed append would (tests drive the state machine
    /// without a Raft core).
    #[cfg(test)]
    pub fn push(&self, entry: EntryOf<TypeConfig>) {
        self.log().entries.insert(entry.log_id.index, entry);
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        Ok(self
            .log()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self.log().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let log = self.log();
        let last = log
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(log.purged);
        Ok(LogState {
            last_purged_log_id: log.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.log().vote = Some(*vote);
        match &self.wal {
            Some((wal, group)) => wal.save_vote(*group, *vote).await,
            None => Ok(()),
        }
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let mut log = self.log();
        log.committed = committed;
        match &self.wal {
            Some((wal, group)) => wal.save_committed(*group, committed),
            None => Ok(()),
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self.log().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut log = self.log();
        match &self.wal {
            None => {
                for entry in entries {
                    log.entries.insert(entry.log_id.index, entry);
                }
                drop(log);
                callback.io_completed(Ok(()));
            }
            Some((wal, group)) => {
                let entries: Vec<EntryOf<TypeConfig>> = entries.into_iter().collect();
                // Queued under the log's lock: the order on disk is the order here.
                wal.append_entries(*group, &entries, callback);
                for entry in entries {
                    log.entries.insert(entry.log_id.index, entry);
                }
            }
        }
        Ok(())
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let mut log = self.log();
        log.truncate_after(last_log_id);
        match &self.wal {
            Some((wal, group)) => wal.truncate(*group, last_log_id),
            None => Ok(()),
        }
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let mut log = self.log();
        log.purge(log_id);
        match &self.wal {
            Some((wal, group)) => wal.purge(*group, log_id),
            None => Ok(()),
        }
    }
}
