//! The in-memory store of one node: a moka cache bounded by a memory budget in bytes.
//!
//! Values are kept with an absolute expiry time (Unix milliseconds) chosen by whoever
//! proposed the write, so that every replica applying the same log agrees on when a key
//! dies. Expired keys are removed in the background by moka's timer wheel
//! ([`Store::run_maintenance`]) and, to the millisecond, on read.

mod snapshot;
pub mod update;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dcache_protocol::{PartitionId, partition_of};
use moka::notification::RemovalCause;
use prometheus::IntCounter;

use crate::clock::{Clock, UnixMillis};

pub use snapshot::{SnapshotError, read_snapshot, write_snapshot};

/// Fixed bytes an entry costs beyond its key and value: moka's hash-table slot, its
/// access/write-order deque nodes and entry metadata, our [`Entry`], and allocator
/// rounding. Measured with `make bench-memory` (RSS growth per entry minus payload);
/// weighing entries by it is what keeps the process inside its budget.
pub const ENTRY_OVERHEAD_BYTES: u64 = 480;

/// How a value was written, which decides how it is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum ValueKind {
    /// A JSON document, stored as its text.
    Json = 1,
    /// Opaque bytes (`application/octet-stream`).
    Bytes = 2,
}

impl ValueKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Json),
            2 => Some(Self::Bytes),
            _ => None,
        }
    }
}

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: ValueKind,
    pub data: Bytes,
    /// Absolute expiry, or `None` for a key that lives until evicted or deleted.
    pub expires_at: Option<UnixMillis>,
}

impl Entry {
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Time left before expiry, or `None` for a key that never expires.
    pub fn remaining(&self, now: UnixMillis) -> Option<Duration> {
        self.expires_at
            .map(|at| Duration::from_millis(at.saturating_sub(now)))
    }
}

/// Which entry the store gives up when it is over budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EvictionPolicy {
    /// Admission by frequency (TinyLFU), eviction by recency: resists scans and keeps
    /// popular keys; the better default for skewed (Zipf) workloads.
    #[default]
    Tinylfu,
    /// Least recently used: admits every write.
    Lru,
}

impl EvictionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tinylfu => "tinylfu",
            Self::Lru => "lru",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Budget for keys, values and per-entry overhead, in bytes.
    pub max_memory: u64,
    pub eviction_policy: EvictionPolicy,
}

/// Counters of what the store did, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub keys: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub sets: u64,
    pub deletes: u64,
    pub evictions: u64,
    pub expirations: u64,
}

/// What the store counts. They are Prometheus counters, unregistered here and
/// registered by [`crate::metrics::Metrics`], so `/stats` and `/metrics` read the same
/// numbers.
#[derive(Debug, Clone)]
pub struct Counters {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub sets: IntCounter,
    pub deletes: IntCounter,
    pub evictions: IntCounter,
    pub expirations: IntCounter,
}

impl Counters {
    fn new() -> Self {
        let counter = |name: &str, help: &str| {
            IntCounter::new(format!("dcache_cache_{name}_total"), help).expect("valid metric name")
        };
        Self {
            hits: counter("hits", "Reads that found a live value."),
            misses: counter("misses", "Reads that found no live value."),
            sets: counter("sets", "Values written (sets and replacements)."),
            deletes: counter("deletes", "Deletes that removed a live value."),
            evictions: counter(
                "evictions",
                "Entries evicted or refused to stay within the memory budget.",
            ),
            expirations: counter("expirations", "Entries removed because their TTL ran out."),
        }
    }

    pub fn all(&self) -> [&IntCounter; 6] {
        [
            &self.hits,
            &self.misses,
            &self.sets,
            &self.deletes,
            &self.evictions,
            &self.expirations,
        ]
    }

    fn bump(counter: &IntCounter) {
        counter.inc();
    }
}

/// A cheap-to-clone handle to the node's store.
#[derive(Clone)]
pub struct Store {
    // aHash, randomly keyed per process, instead of SipHash: every get, insert and
    // snapshot lookup hashes its key, and SipHash showed in the profile of sets.
    cache: moka::sync::Cache<Bytes, Entry, ahash::RandomState>,
    counters: Arc<Counters>,
    clock: Clock,
    config: Arc<StoreConfig>,
}

/// Tells moka when each entry expires, from its absolute expiry time.
struct AbsoluteExpiry {
    clock: Clock,
}

impl AbsoluteExpiry {
    fn until(&self, entry: &Entry) -> Option<Duration> {
        entry.remaining(self.clock.now_ms())
    }
}

impl moka::Expiry<Bytes, Entry> for AbsoluteExpiry {
    fn expire_after_create(&self, _key: &Bytes, entry: &Entry, _at: Instant) -> Option<Duration> {
        self.until(entry)
    }

    fn expire_after_update(
        &self,
        _key: &Bytes,
        entry: &Entry,
        _at: Instant,
        _previous: Option<Duration>,
    ) -> Option<Duration> {
        // A replaced value brings its own expiry (or none): never inherit the old one.
        self.until(entry)
    }
}

/// What an entry weighs against the memory budget.
pub fn entry_weight(key: &[u8], entry: &Entry) -> u64 {
    key.len() as u64 + entry.data.len() as u64 + ENTRY_OVERHEAD_BYTES
}

impl Store {
    pub fn new(config: StoreConfig, clock: Clock) -> Self {
        let counters = Arc::new(Counters::new());
        let listener_counters = counters.clone();
        let policy = match config.eviction_policy {
            EvictionPolicy::Tinylfu => moka::policy::EvictionPolicy::tiny_lfu(),
            EvictionPolicy::Lru => moka::policy::EvictionPolicy::lru(),
        };
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.max_memory)
            .weigher(|key: &Bytes, entry: &Entry| {
                u32::try_from(entry_weight(key, entry)).unwrap_or(u32::MAX)
            })
            .eviction_policy(policy)
            .expire_after(AbsoluteExpiry { clock })
            .eviction_listener(move |_key, _entry, cause| match cause {
                RemovalCause::Expired => Counters::bump(&listener_counters.expirations),
                RemovalCause::Size => Counters::bump(&listener_counters.evictions),
                // Deletes are counted where they are asked for; replacements are sets.
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build_with_hasher(ahash::RandomState::new());
        Self {
            cache,
            counters,
            clock,
            config: Arc::new(config),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The live value of `key`, counted as a hit or a miss.
    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        let found = self.get_live(key);
        Counters::bump(if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        });
        found
    }

    /// The live value of `key` without counting a read.
    fn get_live(&self, key: &[u8]) -> Option<Entry> {
        let entry = self.cache.get(key)?;
        if entry.is_expired(self.clock.now_ms()) {
            self.expire(key);
            return None;
        }
        Some(entry)
    }

    /// Removes `key` because its time is up; counted once even if moka's own timer
    /// removes it at the same moment.
    fn expire(&self, key: &[u8]) {
        let now = self.clock.now_ms();
        if self
            .cache
            .remove(key)
            .is_some_and(|entry| entry.is_expired(now))
        {
            Counters::bump(&self.counters.expirations);
        }
    }

    /// Stores `entry` under `key`, replacing any previous value. An entry that is
    /// already expired (a late log replay, an old snapshot) removes the key instead, so
    /// that the write still supersedes whatever was there.
    pub fn set(&self, key: Bytes, entry: Entry) {
        Counters::bump(&self.counters.sets);
        if entry.is_expired(self.clock.now_ms()) {
            self.cache.invalidate(&key);
            return;
        }
        self.cache.insert(key, entry);
    }

    /// Whether the store holds `key` (live or not yet swept), without counting a read
    /// or touching its place in the eviction order.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.cache.contains_key(key)
    }

    /// Removes `key`; true if it held a live value.
    pub fn delete(&self, key: &[u8]) -> bool {
        let now = self.clock.now_ms();
        let existed = self
            .cache
            .remove(key)
            .is_some_and(|entry| !entry.is_expired(now));
        if existed {
            Counters::bump(&self.counters.deletes);
        }
        existed
    }

    /// Applies pending evictions and removes expired entries. Runs in the background
    /// every sweep interval; reads stay exact without it.
    pub fn run_maintenance(&self) {
        self.cache.run_pending_tasks();
    }

    pub fn stats(&self) -> StoreStats {
        let load = |counter: &IntCounter| counter.get();
        StoreStats {
            keys: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
            hits: load(&self.counters.hits),
            misses: load(&self.counters.misses),
            sets: load(&self.counters.sets),
            deletes: load(&self.counters.deletes),
            evictions: load(&self.counters.evictions),
            expirations: load(&self.counters.expirations),
        }
    }

    /// The live entries of one partition, in no particular order.
    pub fn partition_entries(
        &self,
        partition: PartitionId,
        partitions: u32,
    ) -> impl Iterator<Item = (Bytes, Entry)> + '_ {
        let now = self.clock.now_ms();
        self.cache
            .iter()
            .filter(move |(key, entry)| {
                !entry.is_expired(now) && partition_of(key, partitions) == partition
            })
            .map(|(key, entry)| ((*key).clone(), entry))
    }

    /// Removes every entry of one partition, e.g. before installing its snapshot.
    pub fn clear_partition(&self, partition: PartitionId, partitions: u32) {
        let keys: Vec<Bytes> = self
            .cache
            .iter()
            .filter(|(key, _)| partition_of(key, partitions) == partition)
            .map(|(key, _)| (*key).clone())
            .collect();
        for key in keys {
            self.cache.invalidate(&key);
        }
    }

    /// Writes one partition's live entries, with their absolute expiry, to `out`.
    pub fn snapshot_partition(
        &self,
        partition: PartitionId,
        partitions: u32,
        out: impl std::io::Write,
    ) -> std::io::Result<u64> {
        write_snapshot(out, self.partition_entries(partition, partitions))
    }

    /// Replaces one partition's contents by the snapshot read from `input`. The whole
    /// snapshot is decoded before anything changes, so a corrupt one changes nothing.
    pub fn restore_partition(
        &self,
        partition: PartitionId,
        partitions: u32,
        input: impl std::io::Read,
    ) -> Result<u64, SnapshotError> {
        let entries = read_snapshot(input)?;
        if let Some((key, _)) = entries
            .iter()
            .find(|(key, _)| partition_of(key, partitions) != partition)
        {
            return Err(SnapshotError::WrongPartition {
                key: String::from_utf8_lossy(key).into_owned(),
                partition,
            });
        }
        self.clear_partition(partition, partitions);
        let restored = entries.len() as u64;
        let now = self.clock.now_ms();
        for (key, entry) in entries {
            if !entry.is_expired(now) {
                self.cache.insert(key, entry);
            }
        }
        Ok(restored)
    }
}

#[cfg(test)]
mod tests;
