//! The dcache smart client.
//!
//! A [`Client`] starts from one or more node addresses, learns which node leads each
//! partition from `GET /cluster`, and sends every request straight to the leader of
//! the key's partition (keys map to partitions with [`dcache_protocol::partition_of`],
//! exactly as the nodes do). When a leader changes, a node is down or a partition has
//! no leader for a moment (503), it refreshes the map and retries with backoff until
//! the call's deadline. Cache requests go over a lean HTTP/1.1 client with a pool of
//! keep-alive connections per node, each request written and its response read by the
//! calling task itself; the partition map and admin calls share one pooled reqwest
//! client.
//!
//! Values are JSON through serde ([`Client::get`], [`Client::set`]) or raw bytes
//! ([`Client::get_bytes`], [`Client::set_bytes`]); [`Client::get_or_load`] fills a
//! miss from an origin once, however many callers miss at the same time.
//!
//! ```no_run
//! # async fn example() -> dcache_client::Result<()> {
//! use std::time::Duration;
//!
//! let cache = dcache_client::Client::connect(["127.0.0.1:7000"]).await?;
//! cache.set("greeting", "hello", Some(Duration::from_secs(60))).await?;
//! let greeting: Option<String> = cache.get("greeting").await?;
//! assert_eq!(greeting.as_deref(), Some("hello"));
//!
//! cache.set_bytes("avatar:7", vec![0x89, b'P', b'N', b'G'], None).await?;
//! assert_eq!(cache.get_bytes("avatar:7").await?.as_deref(), Some(&[0x89, b'P', b'N', b'G'][..]));
//! # Ok(()) }
//! ```
//!
//! The [`local`] module runs a cluster of `dcache-node` processes on 127.0.0.1, for
//! `dcache local`, `dcache demo` and tests.

mod client;
/// The admin API's JSON bodies, shared with the node (`dcache_protocol::cluster`).
pub use dcache_protocol::cluster as cluster_status;
mod error;
mod http1;
pub mod local;
mod partition_map;
mod single_flight;

pub use client::{Client, ClientBuilder, Entry, Routing, Value, normalize_addr};
pub use dcache_protocol::wire::Consistency;
pub use error::{Error, Result};
pub use partition_map::PartitionMap;
pub use single_flight::SingleFlight;
