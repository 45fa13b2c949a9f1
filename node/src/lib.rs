//! The dcache cache node.
//!
//! `lib.rs` only assembles the pieces: the [`store`] holds values within a memory budget,
//! [`http`] serves the cache API over it, [`metrics`] exports what both do, and
//! [`server`] runs the whole with graceful shutdown.

pub mod auth;
pub mod balancer;
pub mod clock;
pub mod cluster;
pub mod cluster_metrics;
pub mod config;
pub mod fuzzing;
pub mod http;
pub mod lost;
pub mod metrics;
pub mod persist;
pub mod placement;
pub mod raft;
pub mod readiness;
pub mod reloading;
pub mod resp;
pub mod server;
pub mod store;
pub mod tls;
