//! Leader election on a coordination.k8s.io Lease, so two operator replicas can run and
//! only one reconciles. The holder renews the Lease; a standby takes it over once it has
//! not been renewed for its whole duration. Writes carry the resourceVersion they read,
//! so two standbys racing for an expired Lease cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

use crate::Result;

/// What to do with the Lease as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Someone else held it but stopped renewing: take it over.
    TakeOver,
    /// Someone else holds it and renews it.
    Standby { holder: String },
}

pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_some() {
            LeaseDecision::TakeOver
        } else {
            LeaseDecision::Create
        };
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return LeaseDecision::Renew;
    }
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
    let expired = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .is_none_or(|renewed| renewed.0 + duration < now);
    if holder.is_empty() || expired {
        LeaseDecision::TakeOver
    } else {
        LeaseDecision::Standby { holder }
    }
}

pub struct LeaderElection {
    leases: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaderElection {
    pub fn new(leases: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            leases,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    /// One round: true if this replica holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let current = self.leases.get_opt(&self.name).await?;
        let now = Timestamp::now();
        let decision = decide(current.as_ref(), &self.identity, now);
        let transitions = current
            .as_ref()
            .and_then(|l| l.spec.as_ref()?.lease_transitions)
            .unwrap_or(0);
        let held_since = current
            .as_ref()
            .and_then(|l| l.spec.as_ref()?.acquire_time.clone());
        let lease = |acquire_time, transitions| Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version: current
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration.as_secs() as i32),
                acquire_time: Some(acquire_time),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        };
        let written = match decision {
            LeaseDecision::Standby { .. } => return Ok(false),
            LeaseDecision::Create => {
                self.leases
                    .create(&PostParams::default(), &lease(MicroTime(now), 0))
                    .await
            }
            LeaseDecision::Renew => {
                let since = held_since.unwrap_or(MicroTime(now));
                self.leases
                    .replace(
                        &self.name,
                        &PostParams::default(),
                        &lease(since, transitions),
                    )
                    .await
            }
            LeaseDecision::TakeOver => {
                self.leases
                    .replace(
                        &self.name,
                        &PostParams::default(),
                        &lease(MicroTime(now), transitions + 1),
                    )
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            // Another replica wrote first: it won this round.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_secs_ago: i64, now: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_live_holder_keeps_the_lease_and_an_expired_one_loses_it() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "me", now), LeaseDecision::Create);
        assert_eq!(
            decide(Some(&lease("me", 3, now)), "me", now),
            LeaseDecision::Renew
        );
        assert_eq!(
            decide(Some(&lease("other", 3, now)), "me", now),
            LeaseDecision::Standby {
                holder: "other".to_owned()
            }
        );
        assert_eq!(
            decide(Some(&lease("other", 20, now)), "me", now),
            LeaseDecision::TakeOver
        );
        assert_eq!(
            decide(Some(&lease("", 1, now)), "me", now),
            LeaseDecision::TakeOver
        );
    }
}
