//! The one error type of the client.

use std::sync::Arc;

/// What went wrong with a cache call.
///
/// It is `Clone` (sources are shared behind `Arc`) so that one failed
/// [`get_or_load`](crate::Client::get_or_load) can hand the same error to every caller
/// that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The client was given no node address, or one that is not `host:port`.
    #[error("invalid node address {0:?}: expected host:port")]
    InvalidAddress(String),
    #[error("no node addresses given")]
    NoNodes,
    /// A token or CA certificate the client cannot use.
    #[error("invalid client security option: {0}")]
    Security(String),
    /// The node refused the request (a 4xx other than 404): retrying cannot help.
    #[error("the node refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    /// No node could serve the request before the deadline (connection errors, 503s
    /// while a partition had no leader, timeouts). `last` is the last failure seen.
    #[error("gave up after {attempts} attempts within {deadline_ms} ms: {last}")]
    Unavailable {
        attempts: u32,
        deadline_ms: u128,
        last: String,
    },
    /// The value read is not what the caller asked for (wrong JSON shape, or raw
    /// bytes read as JSON and the other way round).
    #[error("could not decode the value of {key:?}: {reason}")]
    Decode { key: String, reason: String },
    /// The value could not be encoded as JSON.
    #[error("could not encode the value as JSON: {0}")]
    Encode(Arc<serde_json::Error>),
    /// The loader of [`get_or_load`](crate::Client::get_or_load) failed.
    #[error("loading the value failed: {0}")]
    Load(Arc<dyn std::error::Error + Send + Sync>),
    /// No member answered `GET /cluster`.
    #[error("could not learn the partition map: {0}")]
    ClusterMap(String),
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, stable name of the kind of error, for counting failures by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidAddress(_) => "invalid_address",
            Self::NoNodes => "no_nodes",
            Self::Security(_) => "security",
            Self::Refused { .. } => "refused",
            Self::Unavailable { .. } => "unavailable",
            Self::Decode { .. } => "decode",
            Self::Encode(_) => "encode",
            Self::Load(_) => "load",
            Self::ClusterMap(_) => "cluster_map",
        }
    }
}
