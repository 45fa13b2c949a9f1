//! JSON bodies of the HTTP cache API.
//!
//! The set body is compatible with the reference documents:
//! `{"value": <any JSON>, "ttl": <seconds>}`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Body of `PUT`/`POST /cache/{key}` with a JSON value.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SetRequest<'a> {
    /// Any JSON value, kept exactly as sent.
    #[serde(borrow)]
    pub value: &'a RawValue,
    /// Time to live in seconds; absent or null means the cluster's default TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<f64>,
}

/// Body of a successful `GET /cache/{key}` for a JSON value.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
pub struct GetResponse {
    pub key: String,
    pub value: serde_json::Value,
    /// Whole seconds left before the key expires (rounded up), or null if it never does.
    pub ttl: Option<u64>,
}

/// Body of a successful set.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
pub struct SetResponse {
    pub key: String,
    pub stored: bool,
    pub ttl: Option<u64>,
}

/// Body of `DELETE /cache/{key}`.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
pub struct DeleteResponse {
    pub key: String,
    /// Whether the key existed (and was not expired) before the delete.
    pub deleted: bool,
}

/// Every error the API returns.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
}

/// Body of `GET /stats`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Stats {
    pub node_id: String,
    pub keys: u64,
    /// Bytes held by entries, as weighed against the memory budget.
    pub bytes: u64,
    pub max_memory: u64,
    pub eviction_policy: String,
    pub hits: u64,
    pub misses: u64,
    /// `hits / (hits + misses)`, 0 when there were no reads.
    pub hit_ratio: f64,
    pub sets: u64,
    pub deletes: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub partitions: u32,
    pub partitions_led: u32,
    pub partitions_held: u32,
    pub uptime_seconds: u64,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (the default).
    #[default]
    Linearizable,
    /// Served by whichever replica answers, possibly missing the latest writes.
    Local,
}

/// Query parameters of `/cache/{key}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheQuery {
    /// TTL in seconds for a raw-bytes set.
    pub ttl: Option<f64>,
    #[serde(default)]
    pub consistency: Consistency,
}

/// The longest TTL accepted: ten years. Longer is "never expire", which is the default.
/// When the caller stops waiting for a write, in Unix milliseconds: a node that gets
/// the write (forwarded, or straight from a client) after that moment refuses it
/// unapplied (503) instead of proposing it, so a write its caller gave up on can never
/// take effect later, after a newer one.
pub const DEADLINE_HEADER: &str = "x-dcache-deadline-ms";

pub const MAX_TTL_SECONDS: f64 = 10.0 * 365.25 * 24.0 * 3600.0;

/// Checks a TTL in seconds as sent by a client.
pub fn validate_ttl(seconds: f64) -> Result<std::time::Duration, String> {
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!(
            "ttl must be a positive number of seconds, got {seconds}"
        ));
    }
    if seconds > MAX_TTL_SECONDS {
        return Err(format!(
            "ttl {seconds} is over the maximum of {MAX_TTL_SECONDS} seconds (ten years); omit it for no expiry"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}
