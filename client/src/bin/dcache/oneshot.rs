//! One-shot commands: get, set, del, stats, cluster.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use dcache_client::cluster_status::ClusterStatus;
use dcache_client::{Client, Consistency, Entry, PartitionMap, Value};
use dcache_protocol::wire::Stats;

use crate::Connection;

fn client(connection: &Connection, consistency: Consistency) -> anyhow::Result<Client> {
    Ok(connection
        .builder()
        .read_consistency(consistency)
        // Long enough to ride out a leader election, short enough that a command
        // aimed at a cluster that is not running says so promptly.
        .deadline(Duration::from_secs(5))
        .build()?)
}

pub async fn get(
    connection: &Connection,
    key: &str,
    consistency: Consistency,
) -> anyhow::Result<ExitCode> {
    let client = client(connection, consistency)?;
    match client.get_value(key).await? {
        None => {
            eprintln!("(not found) {key}");
            Ok(ExitCode::from(1))
        }
        Some(Entry { value, ttl }) => {
            match value {
                Value::Json(json) => println!("{}", serde_json::to_string_pretty(&json)?),
                Value::Bytes(bytes) => std::io::stdout().write_all(&bytes)?,
            }
            if let Some(ttl) = ttl {
                eprintln!("(ttl {}s)", ttl.as_secs());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn set(
    connection: &Connection,
    key: &str,
    value: &str,
    ttl: Option<Duration>,
    raw: bool,
) -> anyhow::Result<ExitCode> {
    let client = client(connection, Consistency::Linearizable)?;
    if raw {
        client
            .set_bytes(key, value.as_bytes().to_vec(), ttl)
            .await?;
    } else {
        // What looks like JSON is stored as JSON; anything else as a string, so that
        // `dcache set greeting hello` needs no quoting.
        let json = serde_json::from_str::<serde_json::Value>(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        client.set(key, &json, ttl).await?;
    }
    println!("OK");
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(connection: &Connection, key: &str) -> anyhow::Result<ExitCode> {
    let client = client(connection, Consistency::Linearizable)?;
    if client.delete(key).await? {
        println!("deleted {key}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("(not found) {key}");
        Ok(ExitCode::from(1))
    }
}

/// Every member's address: from the cluster map, or the given nodes for standalone
/// nodes.
async fn member_addrs(client: &Client) -> anyhow::Result<Vec<(String, String)>> {
    let map = client.partition_map().await?;
    if map.is_standalone() {
        return Ok(client
            .seeds()
            .iter()
            .map(|addr| (addr.clone(), addr.clone()))
            .collect());
    }
    Ok(map
        .members()
        .values()
        .map(|m| (m.name.clone(), m.api_addr.clone()))
        .collect())
}

pub async fn stats(connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = client(connection, Consistency::Linearizable)?;
    let members = member_addrs(&client).await?;
    let answers = futures_util::future::join_all(
        members
            .iter()
            .map(|(_, addr)| client.get_json_from::<Stats>(addr, "/stats")),
    )
    .await;
    println!(
        "{:<12} {:<22} {:>9} {:>11} {:>10} {:>10} {:>7} {:>9} {:>9} {:>5} {:>5}",
        "node",
        "address",
        "keys",
        "bytes",
        "hits",
        "misses",
        "hit%",
        "sets",
        "evictions",
        "led",
        "held"
    );
    let mut total = Stats::default();
    let mut failed = false;
    for ((name, addr), answer) in members.iter().zip(answers) {
        match answer {
            Ok(s) => {
                println!(
                    "{:<12} {:<22} {:>9} {:>11} {:>10} {:>10} {:>6.1}% {:>9} {:>9} {:>5} {:>5}",
                    name,
                    addr,
                    s.keys,
                    s.bytes,
                    s.hits,
                    s.misses,
                    s.hit_ratio * 100.0,
                    s.sets,
                    s.evictions,
                    s.partitions_led,
                    s.partitions_held
                );
                total.keys += s.keys;
                total.bytes += s.bytes;
                total.hits += s.hits;
                total.misses += s.misses;
                total.sets += s.sets;
                total.evictions += s.evictions;
            }
            Err(e) => {
                failed = true;
                println!("{name:<12} {addr:<22} unreachable: {e}");
            }
        }
    }
    let reads = total.hits + total.misses;
    println!(
        "{:<12} {:<22} {:>9} {:>11} {:>10} {:>10} {:>6.1}% {:>9} {:>9}",
        "total",
        "(replicas counted on each node)",
        total.keys,
        total.bytes,
        total.hits,
        total.misses,
        if reads == 0 {
            0.0
        } else {
            total.hits as f64 * 100.0 / reads as f64
        },
        total.sets,
        total.evictions
    );
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn cluster(connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = client(connection, Consistency::Linearizable)?;
    let map = client
        .partition_map()
        .await
        .context("could not read the cluster map")?;
    if map.is_standalone() {
        println!(
            "{} runs standalone (no --raft-listen): it serves every key itself.",
            client.seeds()[0]
        );
        return Ok(ExitCode::SUCCESS);
    }
    let views = client.answered_cluster_views().await;
    print!("{}", render_cluster(&map, &views));
    Ok(ExitCode::SUCCESS)
}

/// The `dcache cluster` report.
pub fn render_cluster(map: &PartitionMap, views: &[ClusterStatus]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let newest = views.iter().max_by_key(|v| v.epoch);
    let cluster_id = newest
        .and_then(|v| v.cluster_id.clone())
        .unwrap_or_default();
    let cluster_leader = newest
        .and_then(|v| v.cluster_leader.clone())
        .unwrap_or_else(|| "(none)".into());
    let _ = writeln!(
        out,
        "cluster {cluster_id}  epoch {}  partitions {}  cluster leader {cluster_leader}",
        map.epoch(),
        map.partitions()
    );

    let leaders = map.leader_counts();
    let mut replicas_held: BTreeMap<&str, usize> = BTreeMap::new();
    for partition in 0..map.partitions() {
        for name in map.replicas(partition) {
            *replicas_held.entry(name.as_str()).or_default() += 1;
        }
    }
    let answering: Vec<&str> = views.iter().map(|v| v.node.as_str()).collect();
    let _ = writeln!(out, "\nMEMBERS");
    let _ = writeln!(
        out,
        "{:<12} {:<22} {:<22} {:>8} {:>9}  leader share",
        "name", "api", "raft", "leader of", "replicas"
    );
    for (name, member) in map.members() {
        let led = leaders.get(name).copied().unwrap_or(0);
        let bar = "█".repeat(led * 40 / map.partitions().max(1) as usize);
        let state = if answering.contains(&name.as_str()) {
            ""
        } else {
            "  (not answering)"
        };
        let _ = writeln!(
            out,
            "{:<12} {:<22} {:<22} {:>8} {:>9}  {bar}{state}",
            name,
            member.api_addr,
            member.raft_addr,
            led,
            replicas_held.get(name.as_str()).copied().unwrap_or(0)
        );
    }

    let _ = writeln!(out, "\nPARTITIONS");
    let _ = writeln!(
        out,
        "{:>4}  {:<12} {:>5}  replicas (placement)",
        "id", "leader", "term"
    );
    for partition in 0..map.partitions() {
        let leader = map.leader(partition).unwrap_or("(none)");
        let term = views
            .iter()
            .filter_map(|v| v.partitions.get(partition as usize))
            .filter(|p| p.hosted)
            .filter_map(|p| p.term)
            .max()
            .map_or_else(|| "-".to_owned(), |t| t.to_string());
        let _ = writeln!(
            out,
            "{partition:>4}  {leader:<12} {term:>5}  {}",
            map.replicas(partition).join(", ")
        );
    }

    let _ = writeln!(out, "\nREBALANCE");
    match views.iter().find(|v| v.rebalance.active) {
        Some(balancer) => {
            let progress = &balancer.rebalance;
            let state = if balancer.is_rebalanced() {
                "balanced"
            } else {
                "in progress"
            };
            let _ = writeln!(
                out,
                "{state}: {} replicas to move, {} moving, {} moved, {} bytes sent (balancer on {})",
                progress.replicas_to_move,
                progress.moving,
                progress.moved,
                progress.bytes_moved,
                balancer.node
            );
            for leaving in &progress.leaving {
                let _ = writeln!(
                    out,
                    "leaving: {} still holds {} replicas",
                    leaving.name, leaving.replicas
                );
            }
        }
        None => {
            let _ = writeln!(out, "unknown: the cluster leader did not answer");
        }
    }
    out
}
