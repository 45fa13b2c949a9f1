//! One RESP connection's state (protocol version, token, READONLY, name) and the
//! commands it runs against the node.
//!
//! A key command is routed as Redis Cluster routes it: its keys' slot names a
//! partition; a read is served here if this node leads the partition (or, after
//! READONLY, holds a replica), a write is proposed here if this node leads it, and
//! anything else answers `-MOVED <slot> <host>:<port>` with the leader's RESP address.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use dcache_protocol::{Slot, key_slot, slot_partition};

use super::codec::{ProtocolVersion, Reply};
use super::commands::{COMMANDS, Kind, Spec, lookup};
use super::topology;
use crate::auth::Scope;
use crate::cluster::Route;
use crate::config::ReadonlyReads;
use crate::http::Node;
use crate::metrics::RespResult;
use crate::raft::state_machine::apply_to_store;
use crate::raft::{Command, CommandResult, MemberNode};
use crate::store::update::{
    self, ExpireCondition, Expiry, Presence, Update, UpdateOutcome, parse_float, parse_integer,
};
use crate::store::{Entry, ValueKind};

/// The version Redis clients are told they talk to (`HELLO`, `INFO`): the Redis release
/// whose commands and replies this listener follows. Clients gate features on it.
pub const REDIS_VERSION: &str = "7.2.0";

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

const SYNTAX: &str = "ERR syntax error";
const NOT_INTEGER: &str = update::NOT_AN_INTEGER;
const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

fn error(text: impl Into<Cow<'static, str>>) -> Reply {
    Reply::Error(text.into())
}

fn bulk(bytes: &[u8]) -> Reply {
    Reply::Bulk(Bytes::copy_from_slice(bytes))
}

fn text(s: &str) -> Reply {
    bulk(s.as_bytes())
}

fn optional(value: Option<Bytes>) -> Reply {
    value.map_or(Reply::Nil, Reply::Bulk)
}

/// The state of one client connection.
pub struct Session {
    node: Arc<Node>,
    id: u64,
    pub version: ProtocolVersion,
    /// After READONLY: reads served by any replica (`consistency=local`), unless the
    /// node keeps them linearizable (`--resp-readonly linearizable`).
    readonly: bool,
    /// The token given with AUTH or HELLO, checked again on every command so that a
    /// token removed from the token files stops working.
    token: Option<Bytes>,
    name: Option<Bytes>,
    /// Set by QUIT: the connection closes once the reply is written.
    pub closing: bool,
}

/// A command's reply and how it counts in the metrics.
type Answer = Result<Reply, Reply>;

impl Session {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            version: ProtocolVersion::Resp2,
            readonly: false,
            token: None,
            name: None,
            closing: false,
        }
    }

    /// Runs one command (`args[0]` its name) and answers it.
    pub async fn execute(&mut self, args: Vec<Bytes>) -> Reply {
        let started = Instant::now();
        let Some((index, spec)) = lookup(&args[0]) else {
            let reply = unknown_command(&args);
            self.node.metrics.resp.observe(
                COMMANDS.len(),
                "unknown",
                RespResult::Error,
                started.elapsed(),
            );
            return reply;
        };
        let answer = match self.node.protection.request_timeout {
            Some(limit) => tokio::time::timeout(limit, self.run(spec, &args))
                .await
                .unwrap_or_else(|_| {
                    Err(error(format!(
                        "ERR timeout: no answer within {limit:?} (--request-timeout); a write \
                         may still be applied"
                    )))
                }),
            None => self.run(spec, &args).await,
        };
        let reply = answer.unwrap_or_else(|refusal| refusal);
        self.node
            .metrics
            .resp
            .observe(index, spec.name, classify(&reply), started.elapsed());
        reply
    }

    async fn run(&mut self, spec: &'static Spec, args: &[Bytes]) -> Answer {
        if !spec.arity_fits(args.len()) {
            return Err(error(format!(
                "ERR wrong number of arguments for '{}' command",
                spec.name
            )));
        }
        self.check_access(spec)?;
        match spec.kind {
            Kind::Connection => self.connection_command(spec, args),
            Kind::Server => self.server_command(spec, args),
            Kind::Read | Kind::Write => {
                let limit = self.node.limits.max_key_bytes;
                if let Some(key) = spec
                    .key_positions(args.len())
                    .map(|at| &args[at])
                    .find(|key| key.len() > limit)
                {
                    return Err(error(format!(
                        "ERR key is {} bytes, over the limit of {limit} (--max-key-bytes)",
                        key.len()
                    )));
                }
                let slot = self.slot_of(spec, args)?;
                if spec.kind == Kind::Read || (spec.name == "getex" && args.len() == 2) {
                    self.read_command(spec, args, slot).await
                } else {
                    self.write_command(spec, args, slot).await
                }
            }
        }
    }

    fn check_access(&self, spec: &Spec) -> Result<(), Reply> {
        let Some(auth) = &self.node.protection.auth else {
            return Ok(());
        };
        let needed = match spec.kind {
            Kind::Connection => return Ok(()),
            Kind::Read | Kind::Server => Scope::Read,
            Kind::Write => Scope::Write,
        };
        let Some(token) = &self.token else {
            return Err(error(NOAUTH));
        };
        let scopes = auth.scopes(token);
        if scopes.is_empty() {
            Err(error(NOAUTH))
        } else if scopes.contains(needed) {
            Ok(())
        } else {
            Err(error(format!(
                "NOPERM this token has no permissions to run the '{}' command (it needs \
                 the {} scope)",
                spec.name,
                needed.as_str()
            )))
        }
    }

    /// The one slot every key of the command hashes to.
    fn slot_of(&self, spec: &Spec, args: &[Bytes]) -> Result<Slot, Reply> {
        let mut keys = spec.key_positions(args.len()).map(|at| &args[at]);
        let first = keys.next().ok_or_else(|| error(SYNTAX))?;
        let slot = key_slot(first);
        if keys.any(|key| key_slot(key) != slot) {
            return Err(error(
                "CROSSSLOT Keys in request don't hash to the same slot",
            ));
        }
        Ok(slot)
    }

    /// Where a command for `slot` must go instead: `-MOVED` to `member`, or, when that
    /// is this very node (it is taking the partition over and does not host it yet),
    /// `-TRYAGAIN`, which clients retry after a pause instead of redirecting in a loop.
    fn moved(&self, slot: Slot, member: &MemberNode) -> Reply {
        let me = self
            .node
            .cluster
            .as_ref()
            .map(|cluster| &cluster.groups.me.name);
        if me == Some(&member.name) {
            return error(format!(
                "TRYAGAIN slot {slot} is moving to this node; retry in a moment"
            ));
        }
        match &member.resp_addr {
            Some(addr) => error(format!("MOVED {slot} {addr}")),
            None => error(format!(
                "CLUSTERDOWN the node serving slot {slot} ({}) has no RESP listener",
                member.name
            )),
        }
    }

    /// Makes sure a read of `slot` may be served from this node's store.
    async fn route_read(&self, slot: Slot, linearizable: bool) -> Result<(), Reply> {
        let Some(cluster) = &self.node.cluster else {
            return Ok(());
        };
        let partition = slot_partition(slot, self.node.partitions);
        match cluster.read(partition, linearizable).await {
            Route::Here(()) => Ok(()),
            Route::Forward(member) => Err(self.moved(slot, &member)),
            Route::Unavailable(why) | Route::OutcomeUnknown(why) => {
                Err(error(format!("CLUSTERDOWN {why}")))
            }
        }
    }

    /// Applies `command` to the partition of `slot` (through its leader's Raft log).
    async fn write(&self, slot: Slot, command: Command) -> Result<CommandResult, Reply> {
        let Some(cluster) = &self.node.cluster else {
            return Ok(apply_to_store(&self.node.store, &command));
        };
        let partition = slot_partition(slot, self.node.partitions);
        match cluster.write(partition, command).await {
            Route::Here(result) => Ok(result),
            Route::Forward(member) => Err(self.moved(slot, &member)),
            Route::Unavailable(why) => Err(error(format!("CLUSTERDOWN {why}"))),
            Route::OutcomeUnknown(why) => Err(error(format!(
                "ERR outcome unknown, the write may still be applied: {why}"
            ))),
        }
    }

    async fn update(&self, slot: Slot, update: Update) -> Result<UpdateOutcome, Reply> {
        let now = self.node.store.clock().now_ms();
        match self.write(slot, Command::Update { now, update }).await? {
            CommandResult::Updated(UpdateOutcome::Refused(why)) => Err(error(why)),
            CommandResult::Updated(outcome) => Ok(outcome),
            other => Err(error(format!("ERR unexpected result {other:?}"))),
        }
    }

    fn default_expiry(&self) -> Expiry {
        match self.node.default_ttl {
            Some(ttl) => Expiry::At(self.node.store.clock().after(ttl)),
            None => Expiry::Never,
        }
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Reply> {
        let limit = self.node.limits.max_value_bytes;
        if value.len() > limit {
            return Err(error(format!(
                "ERR value is {} bytes, over the limit of {limit} (--max-value-bytes)",
                value.len()
            )));
        }
        Ok(())
    }

    async fn read_command(&self, spec: &Spec, args: &[Bytes], slot: Slot) -> Answer {
        // GETEX without options is a read, but as a write command it ignores READONLY.
        let linearizable = !self.readonly
            || spec.kind == Kind::Write
            || self.node.resp_readonly == ReadonlyReads::Linearizable;
        self.route_read(slot, linearizable).await?;
        let store = &self.node.store;
        let now = store.clock().now_ms();
        let entry = |key: &Bytes| store.get(key);
        Ok(match spec.name {
            "get" | "getex" => optional(entry(&args[1]).map(|e| e.data)),
            "mget" => Reply::Array(
                args[1..]
                    .iter()
                    .map(|key| optional(entry(key).map(|e| e.data)))
                    .collect(),
            ),
            "exists" => {
                Reply::Integer(args[1..].iter().filter(|k| entry(k).is_some()).count() as i64)
            }
            "ttl" | "pttl" | "expiretime" | "pexpiretime" => {
                Reply::Integer(match entry(&args[1]) {
                    None => -2,
                    Some(Entry {
                        expires_at: None, ..
                    }) => -1,
                    Some(Entry {
                        expires_at: Some(at),
                        ..
                    }) => {
                        let left = at.saturating_sub(now) as i64;
                        match spec.name {
                            "ttl" => (left + 500) / 1000,
                            "pttl" => left,
                            "expiretime" => (at / 1000) as i64,
                            _ => at as i64,
                        }
                    }
                })
            }
            "type" => Reply::Simple(if entry(&args[1]).is_some() {
                "string".into()
            } else {
                "none".into()
            }),
            "strlen" => Reply::Integer(entry(&args[1]).map_or(0, |e| e.data.len() as i64)),
            other => return Err(error(format!("ERR '{other}' is not a read"))),
        })
    }

    async fn write_command(&self, spec: &Spec, args: &[Bytes], slot: Slot) -> Answer {
        let key = || own(&args[1]);
        match spec.name {
            "set" => self.set(args, slot).await,
            "setnx" => {
                self.check_value(&args[2])?;
                let update = Update::Set {
                    key: key(),
                    data: own(&args[2]),
                    expiry: self.default_expiry(),
                    presence: Presence::Absent,
                    get: false,
                };
                let applied = matches!(
                    self.update(slot, update).await?,
                    UpdateOutcome::Applied { applied: true, .. }
                );
                Ok(Reply::Integer(applied.into()))
            }
            "setex" | "psetex" => {
                self.check_value(&args[3])?;
                let unit = if spec.name == "setex" { 1000 } else { 1 };
                let expires_at = self.relative_expiry(&args[2], unit, spec.name, false)?;
                self.blind_set(slot, &args[1], &args[3], Some(expires_at))
                    .await
            }
            "getdel" => match self.update(slot, Update::GetDelete { key: key() }).await? {
                UpdateOutcome::Applied { previous, .. } => Ok(optional(previous)),
                other => Err(unexpected(other)),
            },
            "getex" => {
                let expiry = self.getex_expiry(&args[2..])?;
                let update = Update::Expire {
                    key: key(),
                    expiry,
                    condition: ExpireCondition::Always,
                    get: true,
                };
                match self.update(slot, update).await? {
                    UpdateOutcome::Applied { previous, .. } => Ok(optional(previous)),
                    other => Err(unexpected(other)),
                }
            }
            "del" | "unlink" if args.len() == 2 => {
                let result = self.write(slot, Command::Delete { key: key() }).await?;
                Ok(Reply::Integer(
                    matches!(result, CommandResult::Deleted { existed: true }).into(),
                ))
            }
            "del" | "unlink" => {
                let keys = args[1..].iter().map(own).collect();
                match self.update(slot, Update::Delete { keys }).await? {
                    UpdateOutcome::Count(n) => Ok(Reply::Integer(n as i64)),
                    other => Err(unexpected(other)),
                }
            }
            "mset" | "msetnx" => {
                if args.len() % 2 == 0 {
                    return Err(error(format!(
                        "ERR wrong number of arguments for '{}' command",
                        spec.name
                    )));
                }
                let pairs: Vec<(Bytes, Bytes)> = args[1..]
                    .chunks_exact(2)
                    .map(|pair| (own(&pair[0]), own(&pair[1])))
                    .collect();
                for (_, value) in &pairs {
                    self.check_value(value)?;
                }
                let only_if_none_exist = spec.name == "msetnx";
                let update = Update::SetMany {
                    pairs,
                    expiry: self.default_expiry(),
                    only_if_none_exist,
                };
                let applied = matches!(
                    self.update(slot, update).await?,
                    UpdateOutcome::Applied { applied: true, .. }
                );
                Ok(if only_if_none_exist {
                    Reply::Integer(applied.into())
                } else {
                    Reply::Ok
                })
            }
            "expire" | "pexpire" | "expireat" | "pexpireat" => {
                let expires_at = match spec.name {
                    "expire" => self.relative_expiry(&args[2], 1000, spec.name, true)?,
                    "pexpire" => self.relative_expiry(&args[2], 1, spec.name, true)?,
                    "expireat" => absolute_expiry(&args[2], 1000, spec.name)?,
                    _ => absolute_expiry(&args[2], 1, spec.name)?,
                };
                let condition = expire_condition(&args[3..])?;
                let update = Update::Expire {
                    key: key(),
                    expiry: Expiry::At(expires_at),
                    condition,
                    get: false,
                };
                Ok(Reply::Integer(applied(self.update(slot, update).await?)))
            }
            "persist" => {
                let update = Update::Expire {
                    key: key(),
                    expiry: Expiry::Never,
                    condition: ExpireCondition::Always,
                    get: false,
                };
                Ok(Reply::Integer(applied(self.update(slot, update).await?)))
            }
            "append" => {
                let update = Update::Append {
                    key: key(),
                    data: own(&args[2]),
                    max_len: self.node.limits.max_value_bytes as u64,
                };
                match self.update(slot, update).await? {
                    UpdateOutcome::Count(len) => Ok(Reply::Integer(len as i64)),
                    other => Err(unexpected(other)),
                }
            }
            "incr" | "decr" | "incrby" | "decrby" => {
                let by = match spec.name {
                    "incr" => 1,
                    "decr" => -1,
                    _ => {
                        let by = parse_integer(&args[2]).ok_or_else(|| error(NOT_INTEGER))?;
                        if spec.name == "decrby" {
                            by.checked_neg()
                                .ok_or_else(|| error("ERR decrement would overflow"))?
                        } else {
                            by
                        }
                    }
                };
                match self.update(slot, Update::IncrBy { key: key(), by }).await? {
                    UpdateOutcome::Integer(value) => Ok(Reply::Integer(value)),
                    other => Err(unexpected(other)),
                }
            }
            "incrbyfloat" => {
                let by = parse_float(&args[2]).ok_or_else(|| error(update::NOT_A_FLOAT))?;
                match self
                    .update(slot, Update::IncrByFloat { key: key(), by })
                    .await?
                {
                    UpdateOutcome::Text(value) => Ok(Reply::Bulk(value)),
                    other => Err(unexpected(other)),
                }
            }
            other => Err(error(format!("ERR '{other}' is not a write"))),
        }
    }

    /// SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL].
    async fn set(&self, args: &[Bytes], slot: Slot) -> Answer {
        self.check_value(&args[2])?;
        let mut presence = Presence::Any;
        let mut get = false;
        let mut expiry: Option<Expiry> = None;
        let mut options = args[3..].iter();
        while let Some(option) = options.next() {
            let option = option.to_ascii_uppercase();
            let mut number = |unit: u64, absolute: bool| -> Result<Expiry, Reply> {
                let value = options.next().ok_or_else(|| error(SYNTAX))?;
                Ok(Expiry::At(if absolute {
                    absolute_expiry(value, unit, "set")?
                } else {
                    self.relative_expiry(value, unit, "set", false)?
                }))
            };
            let chosen = match option.as_slice() {
                b"NX" if presence == Presence::Any => {
                    presence = Presence::Absent;
                    None
                }
                b"XX" if presence == Presence::Any => {
                    presence = Presence::Present;
                    None
                }
                b"GET" => {
                    get = true;
                    None
                }
                b"EX" => Some(number(1000, false)?),
                b"PX" => Some(number(1, false)?),
                b"EXAT" => Some(number(1000, true)?),
                b"PXAT" => Some(number(1, true)?),
                b"KEEPTTL" => Some(Expiry::Keep),
                _ => return Err(error(SYNTAX)),
            };
            if let Some(chosen) = chosen {
                if expiry.is_some() {
                    return Err(error(SYNTAX));
                }
                expiry = Some(chosen);
            }
        }
        if presence == Presence::Any && !get && expiry != Some(Expiry::Keep) {
            // A plain SET is a blind write: the cheapest command there is.
            let expires_at = match expiry.unwrap_or_else(|| self.default_expiry()) {
                Expiry::At(at) => Some(at),
                _ => None,
            };
            return self.blind_set(slot, &args[1], &args[2], expires_at).await;
        }
        let update = Update::Set {
            key: own(&args[1]),
            data: own(&args[2]),
            expiry: expiry.unwrap_or_else(|| self.default_expiry()),
            presence,
            get,
        };
        match self.update(slot, update).await? {
            UpdateOutcome::Applied { previous, .. } if get => Ok(optional(previous)),
            UpdateOutcome::Applied { applied: true, .. } => Ok(Reply::Ok),
            UpdateOutcome::Applied { applied: false, .. } => Ok(Reply::Nil),
            other => Err(unexpected(other)),
        }
    }

    async fn blind_set(
        &self,
        slot: Slot,
        key: &Bytes,
        data: &Bytes,
        expires_at: Option<u64>,
    ) -> Answer {
        let command = Command::Set {
            key: own(key),
            kind: ValueKind::Bytes,
            data: own(data),
            expires_at,
        };
        self.write(slot, command).await?;
        Ok(Reply::Ok)
    }

    /// `now + value × unit` ms; `value` must be positive unless `allow_past` (EXPIRE
    /// with 0 or less deletes the key, as in Redis).
    fn relative_expiry(
        &self,
        value: &[u8],
        unit: u64,
        command: &str,
        allow_past: bool,
    ) -> Result<u64, Reply> {
        let value = parse_integer(value).ok_or_else(|| error(NOT_INTEGER))?;
        let invalid = || error(format!("ERR invalid expire time in '{command}' command"));
        if value <= 0 {
            return if allow_past { Ok(0) } else { Err(invalid()) };
        }
        (value as u64)
            .checked_mul(unit)
            .and_then(|ms| ms.checked_add(self.node.store.clock().now_ms()))
            .filter(|&at| at < i64::MAX as u64)
            .ok_or_else(invalid)
    }

    /// GETEX's options: EX, PX, EXAT, PXAT or PERSIST.
    fn getex_expiry(&self, options: &[Bytes]) -> Result<Expiry, Reply> {
        let [option, rest @ ..] = options else {
            return Err(error(SYNTAX));
        };
        let option = option.to_ascii_uppercase();
        match (option.as_slice(), rest) {
            (b"PERSIST", []) => Ok(Expiry::Never),
            (b"EX", [value]) => Ok(Expiry::At(
                self.relative_expiry(value, 1000, "getex", false)?,
            )),
            (b"PX", [value]) => Ok(Expiry::At(self.relative_expiry(value, 1, "getex", false)?)),
            (b"EXAT", [value]) => Ok(Expiry::At(absolute_expiry(value, 1000, "getex")?)),
            (b"PXAT", [value]) => Ok(Expiry::At(absolute_expiry(value, 1, "getex")?)),
            _ => Err(error(SYNTAX)),
        }
    }

    fn connection_command(&mut self, spec: &Spec, args: &[Bytes]) -> Answer {
        match spec.name {
            "ping" => Ok(match args.get(1) {
                None => Reply::Simple("PONG".into()),
                Some(message) if args.len() == 2 => Reply::Bulk(message.clone()),
                Some(_) => {
                    return Err(error("ERR wrong number of arguments for 'ping' command"));
                }
            }),
            "echo" => Ok(Reply::Bulk(args[1].clone())),
            "quit" => {
                self.closing = true;
                Ok(Reply::Ok)
            }
            "reset" => {
                let node = self.node.clone();
                *self = Session::new(node);
                Ok(Reply::Simple("RESET".into()))
            }
            "select" => match &args[1][..] {
                b"0" => Ok(Reply::Ok),
                _ if self.node.cluster.is_some() => {
                    Err(error("ERR SELECT is not allowed in cluster mode"))
                }
                _ => Err(error("ERR DB index is out of range")),
            },
            "readonly" => {
                self.readonly = true;
                Ok(Reply::Ok)
            }
            "readwrite" => {
                self.readonly = false;
                Ok(Reply::Ok)
            }
            "auth" => match args {
                [_, token] | [_, _, token] => self.authenticate(token).map(|()| Reply::Ok),
                _ => Err(error(SYNTAX)),
            },
            "hello" => self.hello(args),
            "client" => self.client(args),
            other => Err(error(format!("ERR unhandled command '{other}'"))),
        }
    }

    fn authenticate(&mut self, token: &Bytes) -> Result<(), Reply> {
        let Some(auth) = &self.node.protection.auth else {
            return Err(error(
                "ERR AUTH <password> called without any password configured for the default \
                 user. Are you sure your configuration is correct?",
            ));
        };
        if auth.scopes(token).is_empty() {
            return Err(error(WRONGPASS));
        }
        self.token = Some(own(token));
        Ok(())
    }

    /// HELLO [protover [AUTH username password] [SETNAME clientname]].
    fn hello(&mut self, args: &[Bytes]) -> Answer {
        let mut version = self.version;
        if let Some(requested) = args.get(1) {
            version = match parse_integer(requested) {
                Some(2) => ProtocolVersion::Resp2,
                Some(3) => ProtocolVersion::Resp3,
                Some(_) => return Err(error("NOPROTO unsupported protocol version")),
                None => {
                    return Err(error(
                        "ERR Protocol version is not an integer or out of range",
                    ));
                }
            };
        }
        let mut name = None;
        let mut options = args.iter().skip(2);
        while let Some(option) = options.next() {
            match option.to_ascii_uppercase().as_slice() {
                b"AUTH" => {
                    let (Some(_user), Some(token)) = (options.next(), options.next()) else {
                        return Err(error(SYNTAX));
                    };
                    self.authenticate(token)?;
                }
                b"SETNAME" => {
                    name = Some(options.next().ok_or_else(|| error(SYNTAX))?.clone());
                }
                _ => return Err(error(SYNTAX)),
            }
        }
        if self.node.protection.auth.is_some() && self.token.is_none() {
            return Err(error(
                "NOAUTH HELLO must be called with the client already authenticated, \
                 otherwise the HELLO <proto> AUTH <user> <pass> option can be used to \
                 authenticate the client and select the RESP protocol version at the same time",
            ));
        }
        if let Some(name) = name {
            self.name = Some(valid_client_name(&name)?);
        }
        self.version = version;
        let proto = match version {
            ProtocolVersion::Resp2 => 2,
            ProtocolVersion::Resp3 => 3,
        };
        Ok(Reply::Map(vec![
            (text("server"), text("redis")),
            (text("version"), text(REDIS_VERSION)),
            (text("proto"), Reply::Integer(proto)),
            (text("id"), Reply::Integer(self.id as i64)),
            (
                text("mode"),
                text(if self.node.cluster.is_some() {
                    "cluster"
                } else {
                    "standalone"
                }),
            ),
            (text("role"), text("master")),
            (text("modules"), Reply::Array(Vec::new())),
        ]))
    }

    fn client(&mut self, args: &[Bytes]) -> Answer {
        let sub = args[1].to_ascii_uppercase();
        match (sub.as_slice(), &args[2..]) {
            (b"SETNAME", [name]) => {
                self.name = Some(valid_client_name(name)?);
                Ok(Reply::Ok)
            }
            (b"GETNAME", []) => Ok(optional(self.name.clone())),
            (b"ID", []) => Ok(Reply::Integer(self.id as i64)),
            // Library name and version: accepted and not kept.
            (b"SETINFO", [attribute, _value])
                if attribute.eq_ignore_ascii_case(b"lib-name")
                    || attribute.eq_ignore_ascii_case(b"lib-ver") =>
            {
                Ok(Reply::Ok)
            }
            (b"SETINFO", _) => Err(error(SYNTAX)),
            _ => Err(error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&args[1])
            ))),
        }
    }

    fn server_command(&self, spec: &Spec, args: &[Bytes]) -> Answer {
        match spec.name {
            "dbsize" => Ok(Reply::Integer(self.node.store.stats().keys as i64)),
            "info" => Ok(self.verbatim(super::info::render(&self.node, &args[1..]))),
            "command" => super::info::command(&args[1..]),
            "cluster" => self.cluster(args),
            other => Err(error(format!("ERR unhandled command '{other}'"))),
        }
    }

    fn verbatim(&self, text: String) -> Reply {
        Reply::Verbatim("txt".into(), text)
    }

    fn cluster(&self, args: &[Bytes]) -> Answer {
        let sub = args[1].to_ascii_uppercase();
        if self.node.cluster.is_none() && sub != b"KEYSLOT" {
            return Err(error("ERR This instance has cluster support disabled"));
        }
        match (sub.as_slice(), &args[2..]) {
            (b"SLOTS", []) => Ok(topology::slots(&self.node)),
            (b"SHARDS", []) => Ok(topology::shards(&self.node)),
            (b"NODES", []) => Ok(self.verbatim(topology::nodes(&self.node))),
            (b"INFO", []) => Ok(self.verbatim(topology::info(&self.node))),
            (b"KEYSLOT", [key]) => Ok(Reply::Integer(key_slot(key).into())),
            (b"MYID", []) | (b"MYSHARDID", []) => {
                let me = &self.node.cluster.as_ref().expect("checked above").groups.me;
                Ok(text(&topology::node_id(me)))
            }
            _ => Err(error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLUSTER HELP.",
                String::from_utf8_lossy(&args[1])
            ))),
        }
    }
}

/// A copy of an argument, for anything kept past the command (the Raft log, the store):
/// arguments are slices of the connection's read buffer, which they would pin.
fn own(argument: &Bytes) -> Bytes {
    Bytes::copy_from_slice(argument)
}

fn unexpected(outcome: UpdateOutcome) -> Reply {
    error(format!("ERR unexpected outcome {outcome:?}"))
}

fn applied(outcome: UpdateOutcome) -> i64 {
    matches!(outcome, UpdateOutcome::Applied { applied: true, .. }).into()
}

/// `value × unit` ms since the epoch; negative times are in the past.
fn absolute_expiry(value: &[u8], unit: u64, command: &str) -> Result<u64, Reply> {
    let value = parse_integer(value).ok_or_else(|| error(NOT_INTEGER))?;
    if value < 0 {
        return Ok(0);
    }
    (value as u64)
        .checked_mul(unit)
        .filter(|&at| at < i64::MAX as u64)
        .ok_or_else(|| error(format!("ERR invalid expire time in '{command}' command")))
}

/// EXPIRE's optional NX, XX, GT or LT (Redis refuses NX with any other).
fn expire_condition(options: &[Bytes]) -> Result<ExpireCondition, Reply> {
    let mut condition = ExpireCondition::Always;
    for option in options {
        let next = match option.to_ascii_uppercase().as_slice() {
            b"NX" => ExpireCondition::NoExpiry,
            b"XX" => ExpireCondition::HasExpiry,
            b"GT" => ExpireCondition::Later,
            b"LT" => ExpireCondition::Earlier,
            _ => {
                return Err(error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(option)
                )));
            }
        };
        condition = match (condition, next) {
            (ExpireCondition::Always, next) => next,
            (same, next) if same == next => same,
            // GT already needs an expiry; LT with XX must have one too.
            (ExpireCondition::HasExpiry, ExpireCondition::Later)
            | (ExpireCondition::Later, ExpireCondition::HasExpiry) => ExpireCondition::Later,
            (ExpireCondition::HasExpiry, ExpireCondition::Earlier)
            | (ExpireCondition::Earlier, ExpireCondition::HasExpiry) => {
                ExpireCondition::EarlierWithExpiry
            }
            (ExpireCondition::NoExpiry, _) | (_, ExpireCondition::NoExpiry) => {
                return Err(error(
                    "ERR NX and XX, GT or LT options at the same time are not compatible",
                ));
            }
            _ => {
                return Err(error(
                    "ERR GT and LT options at the same time are not compatible",
                ));
            }
        };
    }
    Ok(condition)
}

fn valid_client_name(name: &Bytes) -> Result<Bytes, Reply> {
    if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(own(name))
}

/// Redis's text for a command it does not know.
fn unknown_command(args: &[Bytes]) -> Reply {
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&args[0])
    );
    for arg in args[1..].iter().take(8) {
        text.push_str(&format!("'{}' ", String::from_utf8_lossy(arg)));
    }
    error(text)
}

/// How a reply counts in `dcache_resp_commands_total{result}`.
fn classify(reply: &Reply) -> RespResult {
    let Reply::Error(text) = reply else {
        return RespResult::Ok;
    };
    let code = text.split(' ').next().unwrap_or_default();
    match code {
        "MOVED" => RespResult::Moved,
        "CLUSTERDOWN" | "TRYAGAIN" => RespResult::Unavailable,
        "NOAUTH" | "NOPERM" | "WRONGPASS" => RespResult::Denied,
        _ => RespResult::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expire_conditions_combine_as_in_redis() {
        let options = |list: &[&str]| -> Vec<Bytes> {
            list.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect()
        };
        assert_eq!(
            expire_condition(&options(&[])).unwrap(),
            ExpireCondition::Always
        );
        assert_eq!(
            expire_condition(&options(&["gt"])).unwrap(),
            ExpireCondition::Later
        );
        assert_eq!(
            expire_condition(&options(&["XX", "LT"])).unwrap(),
            ExpireCondition::EarlierWithExpiry
        );
        assert_eq!(
            expire_condition(&options(&["GT", "XX"])).unwrap(),
            ExpireCondition::Later
        );
        assert!(expire_condition(&options(&["NX", "GT"])).is_err());
        assert!(expire_condition(&options(&["GT", "LT"])).is_err());
        assert!(expire_condition(&options(&["SOON"])).is_err());
    }

    #[test]
    fn replies_are_classified_by_their_error_code() {
        assert_eq!(classify(&Reply::Ok), RespResult::Ok);
        assert_eq!(classify(&error("MOVED 1 a:1")), RespResult::Moved);
        assert_eq!(
            classify(&error("CLUSTERDOWN no leader")),
            RespResult::Unavailable
        );
        assert_eq!(classify(&error(NOAUTH)), RespResult::Denied);
        assert_eq!(classify(&error(SYNTAX)), RespResult::Error);
    }
}
