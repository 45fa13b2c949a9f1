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

    /// The Lease calls against a mocked API server: create when absent, stand by
    /// while another holder renews, lose a take-over race on 409.
    #[tokio::test]
    async fn acquires_stands_by_and_loses_a_race() {
        use http::{Method, Request, Response, StatusCode};
        use http_body_util::BodyExt;
        use kube::client::Body;

        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let leases = Api::<Lease>::namespaced(kube::Client::new(service, "ops"), "ops");
        let election =
            LeaderElection::new(leases, "dcache-operator", "me", Duration::from_secs(15));
        let path = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";
        let reply = |send: tower_test::mock::SendResponse<Response<Body>>,
                     code: u16,
                     body: serde_json::Value| {
            let response = Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            send.send_response(response);
        };
        let not_found = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": "NotFound", "code": 404});
        let conflict = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": "Conflict", "code": 409});
        let held_by_other = |renewed_secs_ago: i64| {
            let renewed = Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago);
            serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "dcache-operator", "resourceVersion": "41"},
                "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15,
                         "renewTime": MicroTime(renewed), "leaseTransitions": 2}})
        };

        // No Lease: this replica creates it, holding it.
        let round = tokio::spawn(async move {
            let won = election.try_acquire_or_renew().await.unwrap();
            (election, won)
        });
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(
            (request.method(), request.uri().path()),
            (&Method::GET, &*format!("{path}/dcache-operator"))
        );
        reply(send, 404, not_found);
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(
            (request.method(), request.uri().path()),
            (&Method::POST, path)
        );
        let body: serde_json::Value =
            serde_json::from_slice(&request.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        reply(send, 201, body);
        let (election, won) = round.await.unwrap();
        assert!(won);

        // Another replica holds and renews it: no write at all.
        let round = tokio::spawn(async move {
            let won = election.try_acquire_or_renew().await.unwrap();
            (election, won)
        });
        let (_, send) = handle.next_request().await.unwrap();
        reply(send, 200, held_by_other(2));
        let (election, won) = round.await.unwrap();
        assert!(!won);

        // Expired: a take-over carrying the read resourceVersion, which loses to a
        // replica that wrote first.
        let round = tokio::spawn(async move { election.try_acquire_or_renew().await.unwrap() });
        let (_, send) = handle.next_request().await.unwrap();
        reply(send, 200, held_by_other(60));
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(
            (request.method(), request.uri().path()),
            (&Method::PUT, &*format!("{path}/dcache-operator"))
        );
        let body: serde_json::Value =
            serde_json::from_slice(&request.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseTransitions"], 3);
        reply(send, 409, conflict);
        assert!(!round.await.unwrap());
    }
}
