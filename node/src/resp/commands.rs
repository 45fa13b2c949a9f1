//! The commands the RESP listener knows: names, arity and key positions, as `COMMAND`
//! reports them and as routing and access checks use them.

/// What a command does, which decides the token scope it needs and how it is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reads keys: served by the partition's leader, or any replica after READONLY.
    Read,
    /// Writes keys: one replicated command through the partition's leader.
    Write,
    /// About the connection; needs no token (AUTH, HELLO, PING, QUIT, RESET).
    Connection,
    /// About the node or the cluster; needs a `read` token.
    Server,
}

/// One command: `arity` as Redis counts it (the name included; negative means "at
/// least"), and where its keys are (1-based; `last` -1 means the last argument).
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub arity: i32,
    pub kind: Kind,
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
}

const fn spec(name: &'static str, arity: i32, kind: Kind, keys: (i32, i32, i32)) -> Spec {
    Spec {
        name,
        arity,
        kind,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
    }
}

const NO_KEYS: (i32, i32, i32) = (0, 0, 0);
const ONE_KEY: (i32, i32, i32) = (1, 1, 1);
const ALL_KEYS: (i32, i32, i32) = (1, -1, 1);
const KEY_VALUE_PAIRS: (i32, i32, i32) = (1, -1, 2);

use Kind::{Connection, Read, Server, Write};

/// Every command, in a fixed order (the metrics index by position).
pub const COMMANDS: &[Spec] = &[
    spec("get", 2, Read, ONE_KEY),
    spec("set", -3, Write, ONE_KEY),
    spec("del", -2, Write, ALL_KEYS),
    spec("mget", -2, Read, ALL_KEYS),
    spec("mset", -3, Write, KEY_VALUE_PAIRS),
    spec("msetnx", -3, Write, KEY_VALUE_PAIRS),
    spec("exists", -2, Read, ALL_KEYS),
    spec("unlink", -2, Write, ALL_KEYS),
    spec("setex", 4, Write, ONE_KEY),
    spec("psetex", 4, Write, ONE_KEY),
    spec("setnx", 3, Write, ONE_KEY),
    spec("getdel", 2, Write, ONE_KEY),
    spec("getex", -2, Write, ONE_KEY),
    spec("expire", -3, Write, ONE_KEY),
    spec("pexpire", -3, Write, ONE_KEY),
    spec("expireat", -3, Write, ONE_KEY),
    spec("pexpireat", -3, Write, ONE_KEY),
    spec("persist", 2, Write, ONE_KEY),
    spec("ttl", 2, Read, ONE_KEY),
    spec("pttl", 2, Read, ONE_KEY),
    spec("expiretime", 2, Read, ONE_KEY),
    spec("pexpiretime", 2, Read, ONE_KEY),
    spec("type", 2, Read, ONE_KEY),
    spec("strlen", 2, Read, ONE_KEY),
    spec("append", 3, Write, ONE_KEY),
    spec("incr", 2, Write, ONE_KEY),
    spec("decr", 2, Write, ONE_KEY),
    spec("incrby", 3, Write, ONE_KEY),
    spec("decrby", 3, Write, ONE_KEY),
    spec("incrbyfloat", 3, Write, ONE_KEY),
    spec("ping", -1, Connection, NO_KEYS),
    spec("echo", 2, Connection, NO_KEYS),
    spec("hello", -1, Connection, NO_KEYS),
    spec("auth", -2, Connection, NO_KEYS),
    spec("quit", -1, Connection, NO_KEYS),
    spec("reset", 1, Connection, NO_KEYS),
    spec("select", 2, Connection, NO_KEYS),
    spec("readonly", 1, Connection, NO_KEYS),
    spec("readwrite", 1, Connection, NO_KEYS),
    spec("client", -2, Connection, NO_KEYS),
    spec("command", -1, Server, NO_KEYS),
    spec("info", -1, Server, NO_KEYS),
    spec("dbsize", 1, Server, NO_KEYS),
    spec("cluster", -2, Server, NO_KEYS),
];

/// The command named `name` (any case), with its index in [`COMMANDS`].
pub fn lookup(name: &[u8]) -> Option<(usize, &'static Spec)> {
    COMMANDS
        .iter()
        .enumerate()
        .find(|(_, spec)| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

impl Spec {
    /// Whether `args` (the name included) is a count this command takes.
    pub fn arity_fits(&self, args: usize) -> bool {
        let arity = self.arity.unsigned_abs() as usize;
        if self.arity < 0 {
            args >= arity
        } else {
            args == arity
        }
    }

    /// Positions of the keys in `args` (the name at 0).
    pub fn key_positions(&self, args: usize) -> impl Iterator<Item = usize> {
        let first = self.first_key.max(0) as usize;
        let last = if self.last_key < 0 {
            args.saturating_sub(self.last_key.unsigned_abs() as usize)
        } else {
            self.last_key as usize
        };
        let step = self.step.max(1) as usize;
        (first..=last)
            .step_by(step)
            .filter(move |&at| first > 0 && at < args)
    }

    /// COMMAND's flags for it.
    pub fn flags(&self) -> &'static [&'static str] {
        match self.kind {
            Read => &["readonly", "fast"],
            Write => &["write", "denyoom"],
            Connection => &["fast", "no-auth", "loading", "stale"],
            Server => &["loading", "stale"],
        }
    }

    /// COMMAND's ACL categories for it.
    pub fn categories(&self) -> &'static [&'static str] {
        match self.kind {
            Read => &["@read", "@string", "@fast"],
            Write => &["@write", "@string", "@slow"],
            Connection => &["@fast", "@connection"],
            Server => &["@slow"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found_in_any_case() {
        for (index, spec) in COMMANDS.iter().enumerate() {
            assert_eq!(
                lookup(spec.name.to_uppercase().as_bytes()).unwrap().0,
                index
            );
        }
        assert!(lookup(b"flushall").is_none());
    }

    #[test]
    fn key_positions_follow_redis_key_specs() {
        let (_, mset) = lookup(b"mset").unwrap();
        assert_eq!(mset.key_positions(5).collect::<Vec<_>>(), [1, 3]);
        let (_, del) = lookup(b"del").unwrap();
        assert_eq!(del.key_positions(4).collect::<Vec<_>>(), [1, 2, 3]);
        let (_, get) = lookup(b"get").unwrap();
        assert_eq!(get.key_positions(2).collect::<Vec<_>>(), [1]);
        let (_, ping) = lookup(b"ping").unwrap();
        assert_eq!(ping.key_positions(2).count(), 0);
        assert!(get.arity_fits(2) && !get.arity_fits(3));
        assert!(mset.arity_fits(3) && mset.arity_fits(5) && !mset.arity_fits(2));
    }
}
