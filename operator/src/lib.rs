//! dcache-operator: turns `DistributedCache` resources into StatefulSets of cache nodes
//! and steers their ring membership through the nodes' admin API so that scaling loses
//! nothing.
//!
//! - [`crd`]: the resource, its schema and status.
//! - [`resources`]: pure builders of the Kubernetes objects a cache owns.
//! - [`lifecycle`]: the cluster's life through the node admin API (init, members,
//!   drains), usable against real nodes without Kubernetes.
//! - [`controller`]: the reconcile loop that ties them together.
//! - [`metrics`], [`leader`]: the operator's own metrics and leader election.

pub mod controller;
pub mod crd;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod resources;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("node admin API: {0}")]
    Admin(#[source] lifecycle::AdminError),
    #[error("the resource has no {0}")]
    MissingField(&'static str),
    /// A Secret the spec names lacks what the nodes need.
    #[error("{0}")]
    Secret(String),
}

impl Error {
    /// A short, stable label for `dcache_operator_reconcile_errors_total{kind}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Admin(_) => "admin",
            Self::MissingField(_) => "missing_field",
            Self::Secret(_) => "secret",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(error: kube::Error) -> Self {
        Self::Kube(error)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
