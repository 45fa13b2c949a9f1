//! `INFO` and `COMMAND`: what Redis tools ask a server about itself.

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::Bytes;

use super::codec::Reply;
use super::commands::{COMMANDS, Kind, Spec, lookup};
use super::session::REDIS_VERSION;
use crate::http::Node;

const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "stats",
    "replication",
    "cluster",
    "keyspace",
];

/// `INFO [section ...]`: the named sections (any case; `all`, `default` and
/// `everything` mean all of them), in Redis's `key:value` lines.
pub fn render(node: &Node, requested: &[Bytes]) -> String {
    let wanted = |section: &str| {
        requested.is_empty()
            || requested.iter().any(|asked| {
                asked.eq_ignore_ascii_case(section.as_bytes())
                    || [&b"all"[..], b"default", b"everything"]
                        .iter()
                        .any(|all| asked.eq_ignore_ascii_case(all))
            })
    };
    let stats = node.store.stats();
    let mut out = String::new();
    for section in SECTIONS.iter().copied().filter(|s| wanted(s)) {
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        let mut title = section.to_owned();
        title[..1].make_ascii_uppercase();
        let _ = write!(out, "# {title}\r\n");
        let mut line = |key: &str, value: &dyn std::fmt::Display| {
            let _ = write!(out, "{key}:{value}\r\n");
        };
        match section {
            "server" => {
                line("redis_version", &REDIS_VERSION);
                line("dcache_version", &env!("CARGO_PKG_VERSION"));
                line(
                    "redis_mode",
                    &if node.cluster.is_some() {
                        "cluster"
                    } else {
                        "standalone"
                    },
                );
                line("os", &std::env::consts::OS);
                line("arch_bits", &(usize::BITS));
                line("process_id", &std::process::id());
                line("run_id", &node.node_id);
                line("uptime_in_seconds", &node.uptime().as_secs());
                line("uptime_in_days", &(node.uptime().as_secs() / 86_400));
            }
            "clients" => {
                line("connected_clients", &node.metrics.resp.connections.get());
            }
            "memory" => {
                line("used_memory", &stats.bytes);
                line(
                    "used_memory_rss",
                    &crate::metrics::resident_memory_bytes().unwrap_or(0),
                );
                line("maxmemory", &node.store.config().max_memory);
                line(
                    "maxmemory_policy",
                    &match node.store.config().eviction_policy {
                        crate::store::EvictionPolicy::Lru => "allkeys-lru",
                        crate::store::EvictionPolicy::Tinylfu => "allkeys-lfu",
                    },
                );
            }
            "stats" => {
                line("keyspace_hits", &stats.hits);
                line("keyspace_misses", &stats.misses);
                line("evicted_keys", &stats.evictions);
                line("expired_keys", &stats.expirations);
            }
            "replication" => {
                line("role", &"master");
                line("connected_slaves", &0);
            }
            "cluster" => {
                line("cluster_enabled", &u8::from(node.cluster.is_some()));
            }
            _ => {
                if stats.keys > 0 {
                    line(
                        "db0",
                        &format_args!("keys={},expires=0,avg_ttl=0", stats.keys),
                    );
                }
            }
        }
    }
    out
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name ...`, `COMMAND DOCS [name ...]`,
/// `COMMAND LIST`.
pub fn command(args: &[Bytes]) -> Result<Reply, Reply> {
    let Some(sub) = args.first() else {
        return Ok(Reply::Array(COMMANDS.iter().map(command_info).collect()));
    };
    let names = &args[1..];
    match sub.to_ascii_uppercase().as_slice() {
        b"COUNT" if names.is_empty() => Ok(Reply::Integer(COMMANDS.len() as i64)),
        b"LIST" if names.is_empty() => Ok(Reply::Array(
            COMMANDS.iter().map(|spec| name(spec.name)).collect(),
        )),
        b"INFO" => Ok(Reply::Array(if names.is_empty() {
            COMMANDS.iter().map(command_info).collect()
        } else {
            names
                .iter()
                .map(|asked| lookup(asked).map_or(Reply::NilArray, |(_, spec)| command_info(spec)))
                .collect()
        })),
        b"DOCS" => {
            let specs: Vec<&Spec> = if names.is_empty() {
                COMMANDS.iter().collect()
            } else {
                names
                    .iter()
                    .filter_map(|asked| lookup(asked).map(|(_, spec)| spec))
                    .collect()
            };
            Ok(Reply::Map(
                specs
                    .into_iter()
                    .map(|spec| (name(spec.name), command_docs(spec)))
                    .collect(),
            ))
        }
        _ => Err(Reply::Error(Cow::Owned(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        )))),
    }
}

fn name(text: &str) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(text.as_bytes()))
}

/// One command as Redis 7's `COMMAND INFO` describes it.
fn command_info(spec: &Spec) -> Reply {
    let strings = |list: &[&'static str]| {
        Reply::Set(
            list.iter()
                .map(|flag| Reply::Simple(Cow::Borrowed(flag)))
                .collect(),
        )
    };
    let key_specs = if spec.first_key > 0 {
        let flags: &[&'static str] = match spec.kind {
            Kind::Read => &["RO", "ACCESS"],
            _ => &["RW", "UPDATE"],
        };
        vec![Reply::Map(vec![
            (name("flags"), strings(flags)),
            (name("begin_search"), {
                Reply::Map(vec![
                    (name("type"), name("index")),
                    (
                        name("spec"),
                        Reply::Map(vec![(name("index"), Reply::Integer(spec.first_key.into()))]),
                    ),
                ])
            }),
            (name("find_keys"), {
                Reply::Map(vec![
                    (name("type"), name("range")),
                    (
                        name("spec"),
                        Reply::Map(vec![
                            (
                                name("lastkey"),
                                Reply::Integer(if spec.last_key < 0 {
                                    spec.last_key.into()
                                } else {
                                    (spec.last_key - spec.first_key).into()
                                }),
                            ),
                            (name("keystep"), Reply::Integer(spec.step.into())),
                            (name("limit"), Reply::Integer(0)),
                        ]),
                    ),
                ])
            }),
        ])]
    } else {
        Vec::new()
    };
    Reply::Array(vec![
        name(spec.name),
        Reply::Integer(spec.arity.into()),
        strings(spec.flags()),
        Reply::Integer(spec.first_key.into()),
        Reply::Integer(spec.last_key.into()),
        Reply::Integer(spec.step.into()),
        strings(spec.categories()),
        Reply::Array(Vec::new()),
        Reply::Array(key_specs),
        Reply::Array(Vec::new()),
    ])
}

/// One command as `COMMAND DOCS` describes it: enough for redis-cli's hints.
fn command_docs(spec: &Spec) -> Reply {
    let group = match spec.kind {
        Kind::Read | Kind::Write => "string",
        Kind::Connection => "connection",
        Kind::Server if spec.name == "cluster" => "cluster",
        Kind::Server => "server",
    };
    Reply::Map(vec![
        (
            name("summary"),
            name(&format!("Redis's {} (dcache)", spec.name.to_uppercase())),
        ),
        (name("since"), name("1.0.0")),
        (name("group"), name(group)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_info_has_redis_sevens_ten_fields() {
        let (_, get) = lookup(b"get").unwrap();
        let Reply::Array(fields) = command_info(get) else {
            panic!("an array");
        };
        assert_eq!(fields.len(), 10);
        assert_eq!(fields[0], name("get"));
        assert_eq!(fields[1], Reply::Integer(2));
        assert_eq!(fields[3], Reply::Integer(1));
        assert!(
            matches!(command(&[Bytes::from_static(b"count")]), Ok(Reply::Integer(n)) if n == COMMANDS.len() as i64)
        );
        assert!(command(&[Bytes::from_static(b"nope")]).is_err());
    }
}
