//! `dcache_raft_*`, `dcache_rebalance_*` and `dcache_cluster_*`: read from every hosted
//! group's Raft metrics and the balancer when Prometheus scrapes, so that serving
//! requests pays nothing for them.

use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts};

use crate::cluster::Cluster;
use crate::raft::{GroupId, TypeConfig, group_partition};

pub struct ClusterCollector {
    cluster: Arc<Cluster>,
    led: IntGauge,
    held: IntGauge,
    term: IntGaugeVec,
    leader: IntGaugeVec,
    has_leader: IntGaugeVec,
    commit_lag: IntGaugeVec,
    apply_lag: IntGaugeVec,
    rebalance_active: IntGauge,
    replicas_pending: IntGauge,
    moves_in_progress: IntGauge,
    moves_done: IntGauge,
    leaving_replicas: IntGauge,
    members: IntGauge,
    epoch: IntGauge,
    partitions_lost: IntGauge,
    partitions_missing: IntGauge,
}

/// The `group` label: a partition number, or `cluster` for the metadata group.
fn group_label(group: GroupId) -> String {
    group_partition(group).map_or_else(|| "cluster".to_owned(), |p| p.to_string())
}

impl ClusterCollector {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let per_group = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["group"]).expect("valid metric")
        };
        Self {
            cluster,
            led: gauge(
                "dcache_raft_partitions_led",
                "Partitions whose Raft leader is this node.",
            ),
            held: gauge(
                "dcache_raft_partitions_held",
                "Partition replicas this node holds (voters and learners).",
            ),
            term: per_group(
                "dcache_raft_term",
                "Current Raft term of each hosted group.",
            ),
            leader: per_group(
                "dcache_raft_is_leader",
                "1 where this node leads the group, else 0.",
            ),
            has_leader: per_group(
                "dcache_raft_has_leader",
                "1 where this node's replica knows a leader of the group, else 0.",
            ),
            commit_lag: per_group(
                "dcache_raft_commit_lag_entries",
                "Log entries not yet known committed: on a leader, appended but not \
                 committed; on a follower, committed by the cluster but not yet here.",
            ),
            apply_lag: per_group(
                "dcache_raft_apply_lag_entries",
                "Log entries committed here but not yet applied to the cache.",
            ),
            rebalance_active: gauge(
                "dcache_rebalance_active",
                "1 on the node running the balancer (the cluster group's leader).",
            ),
            replicas_pending: gauge(
                "dcache_rebalance_replicas_pending",
                "Replicas still to add to reach the placement (on the balancer).",
            ),
            moves_in_progress: gauge(
                "dcache_rebalance_moves_in_progress",
                "Groups with a replica move under way (on the balancer).",
            ),
            moves_done: gauge(
                "dcache_rebalance_moves_done",
                "Replicas added since this node became the balancer.",
            ),
            leaving_replicas: gauge(
                "dcache_rebalance_leaving_replicas",
                "Replicas still held by members being drained (on the balancer).",
            ),
            members: gauge("dcache_cluster_members", "Members of the ring."),
            epoch: gauge(
                "dcache_cluster_epoch",
                "Cluster state epoch: bumped by every member-set change.",
            ),
            partitions_lost: gauge(
                "dcache_cluster_partitions_lost",
                "Partitions re-formed empty because every replica was lost.",
            ),
            partitions_missing: gauge(
                "dcache_node_partitions_missing",
                "Partitions the placement gives this node that do not yet count its \
                 current incarnation as a voter (a restarted node is not ready before 0).",
            ),
        }
    }

    fn gauges(&self) -> [&IntGauge; 11] {
        [
            &self.led,
            &self.held,
            &self.rebalance_active,
            &self.replicas_pending,
            &self.moves_in_progress,
            &self.moves_done,
            &self.leaving_replicas,
            &self.members,
            &self.epoch,
            &self.partitions_lost,
            &self.partitions_missing,
        ]
    }

    fn per_group(&self) -> [&IntGaugeVec; 5] {
        [
            &self.term,
            &self.leader,
            &self.has_leader,
            &self.commit_lag,
            &self.apply_lag,
        ]
    }

    fn refresh(&self) {
        let groups = &self.cluster.groups;
        for vec in self.per_group() {
            // Groups dropped since the last scrape must not linger.
            vec.reset();
        }
        let (mut led, mut held) = (0, 0);
        for (group, raft) in groups.initialized() {
            let metrics = raft.metrics().borrow_watched().clone();
            let label = group_label(group);
            let labels = [label.as_str()];
            let leads = metrics.current_leader == Some(groups.id);
            if group_partition(group).is_some() {
                held += 1;
                led += i64::from(leads);
            }
            let index = |log_id: &Option<openraft::type_config::alias::LogIdOf<TypeConfig>>| {
                log_id.as_ref().map_or(0, |id| id.index as i64)
            };
            let local_committed = index(&metrics.local_committed);
            let commit_lag = if leads {
                metrics.last_log_index.unwrap_or(0) as i64 - local_committed
            } else {
                index(&metrics.cluster_committed) - local_committed
            };
            self.term
                .with_label_values(&labels)
                .set(metrics.current_term as i64);
            self.leader.with_label_values(&labels).set(i64::from(leads));
            self.has_leader
                .with_label_values(&labels)
                .set(i64::from(metrics.current_leader.is_some()));
            self.commit_lag
                .with_label_values(&labels)
                .set(commit_lag.max(0));
            self.apply_lag
                .with_label_values(&labels)
                .set((local_committed - index(&metrics.last_applied)).max(0));
        }
        self.led.set(led);
        self.held.set(held);

        let progress = self.cluster.rebalance_progress();
        self.rebalance_active.set(i64::from(progress.active));
        self.replicas_pending.set(progress.replicas_to_move as i64);
        self.moves_in_progress.set(progress.moving as i64);
        self.moves_done.set(progress.moved as i64);
        self.leaving_replicas
            .set(progress.leaving.iter().map(|m| m.replicas as i64).sum());
        let state = self.cluster.state();
        self.members
            .set(state.as_ref().map_or(0, |s| s.members.len() as i64));
        self.epoch.set(state.as_ref().map_or(0, |s| s.epoch as i64));
        self.partitions_lost
            .set(state.as_ref().map_or(0, |s| s.lost.len() as i64));
        self.partitions_missing
            .set(self.cluster.partitions_missing_here() as i64);
    }
}

impl Collector for ClusterCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs: Vec<&Desc> = self.gauges().iter().flat_map(|g| g.desc()).collect();
        descs.extend(self.per_group().iter().flat_map(|g| g.desc()));
        descs.extend(
            self.cluster
                .groups
                .transport
                .counters
                .all()
                .into_iter()
                .flat_map(|c| c.desc()),
        );
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        let mut families: Vec<MetricFamily> =
            self.gauges().iter().flat_map(|g| g.collect()).collect();
        families.extend(self.per_group().iter().flat_map(|g| g.collect()));
        families.extend(
            self.cluster
                .groups
                .transport
                .counters
                .all()
                .into_iter()
                .flat_map(|c| c.collect()),
        );
        families
    }
}
