//! Conditional and read-modify-write commands (Redis's SET NX/XX/GET, INCR, APPEND,
//! EXPIRE ... NX/GT, GETDEL, MSETNX), decided where they are applied.
//!
//! Each is one replicated command, applied in log order on every replica, so two INCRs
//! can never both read the same value, and a condition is judged against the state the
//! command actually lands on. Liveness is judged at the proposer's clock (`now`, carried
//! in the command) rather than at each replica's, so that replicas which apply the
//! command at different moments still agree on whether a key about to expire was there.
//! What is not replicated is eviction: a replica that evicted a key under its memory
//! budget applies an INCR to an absent key, as Redis's own replicas would not (the
//! README says so, under "RESP").

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Entry, Store, ValueKind};
use crate::clock::UnixMillis;

/// Redis's texts for the refusals clients match on.
pub const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
pub const NOT_A_FLOAT: &str = "ERR value is not a valid float";
pub const OVERFLOW: &str = "ERR increment or decrement would overflow";
pub const NOT_FINITE: &str = "ERR increment would produce NaN or Infinity";
pub const TOO_LARGE: &str = "ERR string exceeds maximum allowed size";

/// What becomes of a key's expiry when it is written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Expiry {
    /// The key keeps the expiry it had (KEEPTTL; INCR and APPEND always do).
    Keep,
    /// The key lives until evicted or deleted.
    Never,
    /// The key dies at this absolute time; at or before `now`, the write deletes it.
    At(UnixMillis),
}

/// Which state of a key a write requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Presence {
    Any,
    /// NX: only if the key holds no live value.
    Absent,
    /// XX: only if it does.
    Present,
}

/// EXPIRE's conditions (Redis 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCondition {
    Always,
    /// NX: only if the key has no expiry.
    NoExpiry,
    /// XX: only if it has one.
    HasExpiry,
    /// GT: only if the new expiry is later (a key without one never qualifies).
    Later,
    /// LT: only if the new expiry is earlier (a key without one always does).
    Earlier,
    /// XX LT: only if the key has an expiry and the new one is earlier.
    EarlierWithExpiry,
}

/// One conditional or read-modify-write command on keys of one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Update {
    /// SET (and SETNX, SETEX, PSETEX): answers whether it wrote and, with `get`, the
    /// value before.
    Set {
        key: Bytes,
        data: Bytes,
        expiry: Expiry,
        presence: Presence,
        get: bool,
    },
    /// MSET, or MSETNX with `only_if_none_exist`: all keys or none.
    SetMany {
        pairs: Vec<(Bytes, Bytes)>,
        expiry: Expiry,
        only_if_none_exist: bool,
    },
    /// DEL / UNLINK: answers how many held a live value.
    Delete { keys: Vec<Bytes> },
    /// GETDEL: answers the value it removed.
    GetDelete { key: Bytes },
    /// EXPIRE family, PERSIST (`expiry: Never`) and GETEX with an option (`get`).
    Expire {
        key: Bytes,
        expiry: Expiry,
        condition: ExpireCondition,
        get: bool,
    },
    /// APPEND: answers the new length; refused past `max_len` bytes.
    Append {
        key: Bytes,
        data: Bytes,
        max_len: u64,
    },
    /// INCR, DECR, INCRBY, DECRBY: answers the new value.
    IncrBy { key: Bytes, by: i64 },
    /// INCRBYFLOAT: answers the new value as Redis prints it.
    IncrByFloat { key: Bytes, by: f64 },
}

impl Update {
    /// The keys it touches (all in one partition: the proposer checks).
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        let (one, many): (Option<&Bytes>, &[Bytes]) = match self {
            Self::Set { key, .. }
            | Self::GetDelete { key }
            | Self::Expire { key, .. }
            | Self::Append { key, .. }
            | Self::IncrBy { key, .. }
            | Self::IncrByFloat { key, .. } => (Some(key), &[]),
            Self::Delete { keys } => (None, keys),
            Self::SetMany { .. } => (None, &[]),
        };
        let pairs = match self {
            Self::SetMany { pairs, .. } => pairs.as_slice(),
            _ => &[],
        };
        one.into_iter()
            .chain(many)
            .chain(pairs.iter().map(|(key, _)| key))
    }
}

/// What applying an [`Update`] answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateOutcome {
    /// Whether it took effect, and (when asked for) the value before.
    Applied {
        applied: bool,
        previous: Option<Bytes>,
    },
    /// A count: keys deleted, or a length.
    Count(u64),
    /// INCR's new value.
    Integer(i64),
    /// INCRBYFLOAT's new value, as stored.
    Text(Bytes),
    /// Refused, nothing changed: Redis's error text.
    Refused(String),
}

impl UpdateOutcome {
    fn applied(applied: bool) -> Self {
        Self::Applied {
            applied,
            previous: None,
        }
    }
}

/// Where updates are applied: the node's store, or the map a partition's snapshot is
/// rebuilt in from its previous snapshot and the log since
/// (`raft::state_machine`), so that both follow one set of rules.
pub trait Entries {
    /// The value of `key` live at `now` (the proposer's clock), not counted as a read.
    fn live_at(&mut self, key: &[u8], now: UnixMillis) -> Option<Entry>;
    /// Writes `entry` under `key`, replacing any value.
    fn insert(&mut self, key: Bytes, entry: Entry);
    /// Removes `key`; `live` says whether it held a live value (a delete to count).
    fn remove(&mut self, key: &[u8], live: bool);
    /// Removes `key` for a plain delete; true if it held a value live at `now`.
    fn delete(&mut self, key: &[u8], now: UnixMillis) -> bool {
        let live = self.live_at(key, now).is_some();
        self.remove(key, live);
        live
    }
}

impl Entries for &Store {
    fn live_at(&mut self, key: &[u8], now: UnixMillis) -> Option<Entry> {
        self.cache.get(key).filter(|entry| !entry.is_expired(now))
    }

    fn insert(&mut self, key: Bytes, entry: Entry) {
        self.set(key, entry);
    }

    fn remove(&mut self, key: &[u8], live: bool) {
        self.cache.invalidate(key);
        if live {
            super::Counters::bump(&self.counters.deletes);
        }
    }

    /// Judged at the store's own clock, and not counted as a read.
    fn delete(&mut self, key: &[u8], _now: UnixMillis) -> bool {
        Store::delete(self, key)
    }
}

/// The tests' shorthand; replicas apply updates through the state machine's
/// `apply_command`, which serves the store and snapshot rebuilds alike.
#[cfg(test)]
impl Store {
    /// Applies `update` as of `now`.
    pub fn apply_update(&self, update: &Update, now: UnixMillis) -> UpdateOutcome {
        apply(update, now, &mut &*self)
    }
}

/// Writes `entry`, or deletes the key when its expiry is already past at `now`.
fn put_at(entries: &mut impl Entries, key: Bytes, entry: Entry, now: UnixMillis) {
    if entry.is_expired(now) {
        entries.remove(&key, true);
    } else {
        entries.insert(key, entry);
    }
}

/// Applies `update` to `entries` as of `now`.
pub fn apply(update: &Update, now: UnixMillis, entries: &mut impl Entries) -> UpdateOutcome {
    let expires = |expiry: Expiry, current: Option<&Entry>| match expiry {
        Expiry::Keep => current.and_then(|entry| entry.expires_at),
        Expiry::Never => None,
        Expiry::At(at) => Some(at),
    };
    match update {
        Update::Set {
            key,
            data,
            expiry,
            presence,
            get,
        } => {
            let current = entries.live_at(key, now);
            let applied = match presence {
                Presence::Any => true,
                Presence::Absent => current.is_none(),
                Presence::Present => current.is_some(),
            };
            if applied {
                let entry = Entry {
                    kind: ValueKind::Bytes,
                    data: data.clone(),
                    expires_at: expires(*expiry, current.as_ref()),
                };
                put_at(entries, key.clone(), entry, now);
            }
            UpdateOutcome::Applied {
                applied,
                previous: current.filter(|_| *get).map(|entry| entry.data),
            }
        }
        Update::SetMany {
            pairs,
            expiry,
            only_if_none_exist,
        } => {
            if *only_if_none_exist
                && pairs
                    .iter()
                    .any(|(key, _)| entries.live_at(key, now).is_some())
            {
                return UpdateOutcome::applied(false);
            }
            for (key, data) in pairs {
                let entry = Entry {
                    kind: ValueKind::Bytes,
                    data: data.clone(),
                    expires_at: expires(*expiry, None),
                };
                put_at(entries, key.clone(), entry, now);
            }
            UpdateOutcome::applied(true)
        }
        Update::Delete { keys } => {
            let mut deleted = 0;
            for key in keys {
                let live = entries.live_at(key, now).is_some();
                deleted += u64::from(live);
                entries.remove(key, live);
            }
            UpdateOutcome::Count(deleted)
        }
        Update::GetDelete { key } => {
            let current = entries.live_at(key, now);
            entries.remove(key, current.is_some());
            UpdateOutcome::Applied {
                applied: current.is_some(),
                previous: current.map(|entry| entry.data),
            }
        }
        Update::Expire {
            key,
            expiry,
            condition,
            get,
        } => {
            let Some(current) = entries.live_at(key, now) else {
                return UpdateOutcome::applied(false);
            };
            let new = expires(*expiry, Some(&current));
            // No expiry counts as an infinitely late one, as in Redis.
            let later = |a: Option<UnixMillis>, b: Option<UnixMillis>| match (a, b) {
                (None, None) => false,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a > b,
            };
            let applied = match condition {
                ExpireCondition::Always => true,
                ExpireCondition::NoExpiry => current.expires_at.is_none(),
                ExpireCondition::HasExpiry => current.expires_at.is_some(),
                ExpireCondition::Later => later(new, current.expires_at),
                ExpireCondition::Earlier => later(current.expires_at, new),
                ExpireCondition::EarlierWithExpiry => {
                    current.expires_at.is_some() && later(current.expires_at, new)
                }
            } && (new != current.expires_at || *expiry != Expiry::Never);
            let previous = get.then(|| current.data.clone());
            if applied {
                let entry = Entry {
                    expires_at: new,
                    ..current
                };
                put_at(entries, key.clone(), entry, now);
            }
            UpdateOutcome::Applied { applied, previous }
        }
        Update::Append { key, data, max_len } => {
            let current = entries.live_at(key, now);
            let old = current.as_ref().map(|entry| &entry.data[..]).unwrap_or(b"");
            let len = (old.len() + data.len()) as u64;
            if len > *max_len {
                return UpdateOutcome::Refused(TOO_LARGE.into());
            }
            let mut joined = Vec::with_capacity(len as usize);
            joined.extend_from_slice(old);
            joined.extend_from_slice(data);
            let entry = Entry {
                // Appended bytes may no longer be a JSON document.
                kind: ValueKind::Bytes,
                data: joined.into(),
                expires_at: expires(Expiry::Keep, current.as_ref()),
            };
            put_at(entries, key.clone(), entry, now);
            UpdateOutcome::Count(len)
        }
        Update::IncrBy { key, by } => {
            let current = entries.live_at(key, now);
            let value = match current.as_ref().map(|entry| parse_integer(&entry.data)) {
                None => 0,
                Some(Some(value)) => value,
                Some(None) => return UpdateOutcome::Refused(NOT_AN_INTEGER.into()),
            };
            let Some(value) = value.checked_add(*by) else {
                return UpdateOutcome::Refused(OVERFLOW.into());
            };
            put_number(entries, key, current, value.to_string(), now);
            UpdateOutcome::Integer(value)
        }
        Update::IncrByFloat { key, by } => {
            let current = entries.live_at(key, now);
            let value = match current.as_ref().map(|entry| parse_float(&entry.data)) {
                None => 0.0,
                Some(Some(value)) => value,
                Some(None) => return UpdateOutcome::Refused(NOT_A_FLOAT.into()),
            };
            let value = value + by;
            if !value.is_finite() {
                return UpdateOutcome::Refused(NOT_FINITE.into());
            }
            // Rust prints the shortest text that reads back as the same double,
            // never in exponent form: Redis's "human" format for the usual values.
            let text = format_float(value);
            put_number(entries, key, current, text.clone(), now);
            UpdateOutcome::Text(text.into())
        }
    }
}

/// Stores a number's text, keeping the key's expiry and kind (a number is valid JSON,
/// so a JSON value stays one).
fn put_number(
    entries: &mut impl Entries,
    key: &Bytes,
    current: Option<Entry>,
    text: String,
    now: UnixMillis,
) {
    let entry = Entry {
        kind: current
            .as_ref()
            .map_or(ValueKind::Bytes, |entry| entry.kind),
        expires_at: current.and_then(|entry| entry.expires_at),
        data: text.into(),
    };
    put_at(entries, key.clone(), entry, now);
}

/// A value INCR accepts: a base-10 i64 with no spaces, no `+` and no leading zeros,
/// exactly as Redis's `string2ll`.
pub fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    canonical.then(|| text.parse().ok()).flatten()
}

/// A value INCRBYFLOAT accepts: a finite decimal number without surrounding spaces.
pub fn parse_float(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    plain
        .then(|| text.parse::<f64>().ok())
        .flatten()
        .filter(|value| value.is_finite())
}

/// A double as INCRBYFLOAT answers it: shortest round-trip digits, no exponent.
pub fn format_float(value: f64) -> String {
    // -0 prints as "0", as in Redis.
    if value == 0.0 {
        return "0".into();
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::store::{EvictionPolicy, StoreConfig};

    fn store() -> Store {
        Store::new(
            StoreConfig {
                max_memory: 1 << 20,
                eviction_policy: EvictionPolicy::Tinylfu,
            },
            Clock::new(),
        )
    }

    fn key(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    fn set(key: &str, value: &str, expiry: Expiry, presence: Presence) -> Update {
        Update::Set {
            key: self::key(key),
            data: self::key(value),
            expiry,
            presence,
            get: true,
        }
    }

    #[test]
    fn conditional_sets_follow_the_key_state_at_the_proposers_clock() {
        let store = store();
        let now = store.clock().now_ms();
        let nx = set("k", "1", Expiry::At(now + 1000), Presence::Absent);
        assert_eq!(
            store.apply_update(&nx, now),
            UpdateOutcome::Applied {
                applied: true,
                previous: None
            }
        );
        let again = set("k", "2", Expiry::Never, Presence::Absent);
        assert_eq!(
            store.apply_update(&again, now),
            UpdateOutcome::Applied {
                applied: false,
                previous: Some(key("1"))
            }
        );
        // At the proposer's later clock the key has expired: NX writes, XX does not.
        let later = now + 1000;
        let xx = set("k", "3", Expiry::Never, Presence::Present);
        assert_eq!(
            store.apply_update(&xx, later),
            UpdateOutcome::Applied {
                applied: false,
                previous: None
            }
        );
        assert_eq!(
            store.apply_update(&again, later),
            UpdateOutcome::Applied {
                applied: true,
                previous: None
            }
        );
        assert_eq!(store.get(b"k").unwrap().data, key("2"));
    }

    #[test]
    fn keepttl_keeps_and_a_plain_set_clears_the_expiry() {
        let store = store();
        let now = store.clock().now_ms();
        store.apply_update(&set("k", "1", Expiry::At(now + 5000), Presence::Any), now);
        store.apply_update(&set("k", "2", Expiry::Keep, Presence::Any), now);
        assert_eq!(store.get(b"k").unwrap().expires_at, Some(now + 5000));
        store.apply_update(&set("k", "3", Expiry::Never, Presence::Any), now);
        assert_eq!(store.get(b"k").unwrap().expires_at, None);
        // An expiry already past deletes the key.
        store.apply_update(&set("k", "4", Expiry::At(now), Presence::Any), now);
        assert!(store.get(b"k").is_none());
    }

    #[test]
    fn increments_are_exact_and_refuse_without_changing_anything() {
        let store = store();
        let now = store.clock().now_ms();
        let incr = |by| Update::IncrBy { key: key("n"), by };
        assert_eq!(store.apply_update(&incr(1), now), UpdateOutcome::Integer(1));
        assert_eq!(
            store.apply_update(&incr(41), now),
            UpdateOutcome::Integer(42)
        );
        assert_eq!(
            store.apply_update(&incr(i64::MAX), now),
            UpdateOutcome::Refused(OVERFLOW.into())
        );
        assert_eq!(store.get(b"n").unwrap().data, key("42"));
        store.apply_update(&set("s", "abc", Expiry::Never, Presence::Any), now);
        assert_eq!(
            store.apply_update(
                &Update::IncrBy {
                    key: key("s"),
                    by: 1
                },
                now
            ),
            UpdateOutcome::Refused(NOT_AN_INTEGER.into())
        );
        let float = |by| Update::IncrByFloat { key: key("f"), by };
        assert_eq!(
            store.apply_update(&float(10.5), now),
            UpdateOutcome::Text(key("10.5"))
        );
        assert_eq!(
            store.apply_update(&float(0.1), now),
            UpdateOutcome::Text(key("10.6"))
        );
        assert_eq!(
            store.apply_update(&float(f64::INFINITY), now),
            UpdateOutcome::Refused(NOT_FINITE.into())
        );
        assert_eq!(
            store.apply_update(&float(-10.6), now),
            UpdateOutcome::Text(key("0"))
        );
    }

    #[test]
    fn an_increment_keeps_the_expiry_and_a_json_number_stays_json() {
        let store = store();
        let now = store.clock().now_ms();
        store.set(
            key("n"),
            Entry {
                kind: ValueKind::Json,
                data: key("7"),
                expires_at: Some(now + 9000),
            },
        );
        store.apply_update(
            &Update::IncrBy {
                key: key("n"),
                by: 3,
            },
            now,
        );
        let entry = store.get(b"n").unwrap();
        assert_eq!(
            (entry.kind, entry.data, entry.expires_at),
            (ValueKind::Json, key("10"), Some(now + 9000))
        );
    }

    #[test]
    fn expire_conditions_are_redis_sevens() {
        let store = store();
        let now = store.clock().now_ms();
        store.apply_update(&set("k", "v", Expiry::Never, Presence::Any), now);
        let expire = |expiry, condition| Update::Expire {
            key: key("k"),
            expiry,
            condition,
            get: false,
        };
        let applied = |update: Update| match store.apply_update(&update, now) {
            UpdateOutcome::Applied { applied, .. } => applied,
            other => panic!("{other:?}"),
        };
        assert!(!applied(expire(
            Expiry::At(now + 100),
            ExpireCondition::HasExpiry
        )));
        assert!(!applied(expire(
            Expiry::At(now + 100),
            ExpireCondition::Later
        )));
        assert!(applied(expire(
            Expiry::At(now + 100),
            ExpireCondition::Earlier
        )));
        assert!(!applied(expire(
            Expiry::At(now + 200),
            ExpireCondition::NoExpiry
        )));
        assert!(applied(expire(
            Expiry::At(now + 200),
            ExpireCondition::Later
        )));
        assert!(!applied(expire(
            Expiry::At(now + 300),
            ExpireCondition::Earlier
        )));
        assert_eq!(store.get(b"k").unwrap().expires_at, Some(now + 200));
        // PERSIST: once, then there is nothing to remove.
        assert!(applied(expire(Expiry::Never, ExpireCondition::Always)));
        assert!(!applied(expire(Expiry::Never, ExpireCondition::Always)));
        // A past expiry deletes the key.
        assert!(applied(expire(Expiry::At(now), ExpireCondition::Always)));
        assert!(store.get(b"k").is_none());
        assert!(!applied(expire(
            Expiry::At(now + 100),
            ExpireCondition::Always
        )));
    }

    #[test]
    fn append_set_many_and_delete() {
        let store = store();
        let now = store.clock().now_ms();
        let append = |data: &str, max_len| Update::Append {
            key: key("a"),
            data: key(data),
            max_len,
        };
        assert_eq!(
            store.apply_update(&append("ab", 10), now),
            UpdateOutcome::Count(2)
        );
        assert_eq!(
            store.apply_update(&append("cd", 10), now),
            UpdateOutcome::Count(4)
        );
        assert_eq!(
            store.apply_update(&append("0123456", 10), now),
            UpdateOutcome::Refused(TOO_LARGE.into())
        );
        assert_eq!(store.get(b"a").unwrap().data, key("abcd"));

        let many = |only_if_none_exist| Update::SetMany {
            pairs: vec![(key("{t}x"), key("1")), (key("{t}y"), key("2"))],
            expiry: Expiry::Never,
            only_if_none_exist,
        };
        assert_eq!(
            store.apply_update(&many(true), now),
            UpdateOutcome::applied(true)
        );
        assert_eq!(
            store.apply_update(&many(true), now),
            UpdateOutcome::applied(false)
        );
        let delete = Update::Delete {
            keys: vec![key("{t}x"), key("{t}y"), key("{t}z")],
        };
        assert_eq!(store.apply_update(&delete, now), UpdateOutcome::Count(2));
        assert_eq!(store.apply_update(&delete, now), UpdateOutcome::Count(0));
        assert_eq!(
            store.apply_update(&Update::GetDelete { key: key("a") }, now),
            UpdateOutcome::Applied {
                applied: true,
                previous: Some(key("abcd"))
            }
        );
        assert!(store.get(b"a").is_none());
    }

    #[test]
    fn integers_parse_as_redis_does() {
        for good in [
            "0",
            "-1",
            "42",
            "9223372036854775807",
            "-9223372036854775808",
        ] {
            assert!(parse_integer(good.as_bytes()).is_some(), "{good}");
        }
        for bad in [
            "",
            "-",
            "+1",
            " 1",
            "1 ",
            "01",
            "-0",
            "1.0",
            "9223372036854775808",
        ] {
            assert_eq!(parse_integer(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse_float(b"1.5e3"), Some(1500.0));
        assert_eq!(parse_float(b"inf"), None);
        assert_eq!(parse_float(b" 1"), None);
        assert_eq!(format_float(3.0), "3");
        assert_eq!(format_float(1e20), "100000000000000000000");
    }
}
