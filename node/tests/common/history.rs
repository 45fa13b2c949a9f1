//! What clients under faults were told, and the checker that holds every read to it:
//! no acknowledged write is lost, no read is stale. Each key has one writer, whose
//! values count up, so "older" is "smaller".

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the clients know about one key.
#[derive(Debug, Default, Clone)]
pub struct KeyHistory {
    /// The highest value a write acknowledged.
    pub acknowledged: Option<u64>,
    /// The highest value ever sent (acknowledged or not: an unanswered write may still
    /// have been applied).
    pub attempted: Option<u64>,
    /// Values whose write got no answer (a timeout, a killed node): such a write may
    /// take effect at any later moment, even after a newer acknowledged one, so reading
    /// it back is no violation.
    pub unanswered: Vec<u64>,
}

#[derive(Default)]
pub struct History {
    keys: Mutex<HashMap<String, KeyHistory>>,
    pub acknowledged: AtomicU64,
    pub unacknowledged: AtomicU64,
    pub reads: AtomicU64,
    pub violations: Mutex<Vec<String>>,
}

impl History {
    pub fn get(&self, key: &str) -> KeyHistory {
        self.keys
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Every key written so far, with what is known of it.
    pub fn keys(&self) -> Vec<(String, KeyHistory)> {
        self.keys
            .lock()
            .unwrap()
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect()
    }

    fn update(&self, key: &str, change: impl FnOnce(&mut KeyHistory)) {
        change(self.keys.lock().unwrap().entry(key.to_owned()).or_default());
    }

    /// `value` is about to be sent for `key`: from now on it may be read back.
    pub fn attempt(&self, key: &str, value: u64) {
        self.update(key, |h| h.attempted = Some(value));
    }

    /// The write of `value` to `key` was acknowledged: no later read may be older.
    pub fn acknowledge(&self, key: &str, value: u64) {
        self.update(key, |h| h.acknowledged = h.acknowledged.max(Some(value)));
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
    }

    /// The write of `value` to `key` got no answer that settles it: it may still be
    /// applied, at any later moment.
    pub fn unanswered(&self, key: &str, value: u64) {
        self.update(key, |h| h.unanswered.push(value));
        self.unacknowledged.fetch_add(1, Ordering::Relaxed);
    }

    pub fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.lock().unwrap().push(what);
    }

    /// Checks a value read for `key` against what was acknowledged before the read
    /// began (`floor`) and what had been attempted by the time it answered.
    pub fn check_read(&self, key: &str, floor: Option<u64>, read: Option<u64>, via: &str) {
        let known = self.get(key);
        let attempted = known.attempted;
        match (floor, read) {
            (_, Some(value)) if known.unanswered.contains(&value) => {}
            (Some(floor), None) => self.violation(format!(
                "{key}: read via {via} found nothing, but {floor} was acknowledged before the read"
            )),
            (Some(floor), Some(value)) if value < floor => self.violation(format!(
                "{key}: stale read via {via}: {value}, but {floor} was acknowledged before the read"
            )),
            (_, Some(value)) if attempted.is_none_or(|a| value > a) => self.violation(format!(
                "{key}: read via {via} answered {value}, never written (highest sent {attempted:?})"
            )),
            _ => {}
        }
    }
}
