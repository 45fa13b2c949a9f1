//! The demo's Redis-protocol scenario: a value written over RESP to the first node is
//! redirected with `-MOVED` to the leader of its partition, written and read there, and
//! read again over HTTP; INCR runs on several connections that each follow `-MOVED`;
//! `redis-cli -c` follows the redirect by itself when it is installed.
//!
//! The RESP client here is deliberately tiny (a request is an array of bulk strings;
//! replies are simple strings, errors, integers or bulk strings): it shows what a Redis
//! Cluster client does, no more.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use dcache_client::cluster_status::MemberNode;
use dcache_client::{Client, PartitionMap, Value};
use futures_util::future::try_join_all;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest wait for a connection or a reply.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one command keeps following redirects and waiting out a partition without
/// a leader (`-CLUSTERDOWN`, `-TRYAGAIN`) before its reply is taken as it is.
const COMMAND_DEADLINE: Duration = Duration::from_secs(10);
/// The pause before a command is sent again after such a reply, or bounced back.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Largest bulk string the reader accepts.
const MAX_BULK: usize = 16 << 20;
const INCR_CONNECTIONS: usize = 4;
const INCRS_PER_CONNECTION: usize = 25;
const VALUE: &[u8] = b"hello over RESP";
const REDIS_CLI_TIMEOUT: Duration = Duration::from_secs(20);

/// What became of the scenario when it did not fail.
pub enum Ran {
    Played,
    Skipped(String),
}

/// A RESP2 reply of the kinds the demo's commands get.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    /// `None`: the nil bulk string (`$-1`).
    Bulk(Option<Vec<u8>>),
}

impl Reply {
    /// The slot and `host:port` of a `-MOVED <slot> <host>:<port>`.
    fn moved(&self) -> Option<(u16, &str)> {
        let Self::Error(text) = self else {
            return None;
        };
        let (slot, addr) = text.strip_prefix("MOVED ")?.split_once(' ')?;
        Some((slot.parse().ok()?, addr))
    }

    /// `-CLUSTERDOWN` or `-TRYAGAIN`: nobody could serve it right now (the partition
    /// is electing a leader) and nothing was done, so it may be sent again.
    fn is_transient(&self) -> bool {
        matches!(self, Self::Error(text)
            if text.starts_with("CLUSTERDOWN ") || text.starts_with("TRYAGAIN "))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Simple(text) => write!(f, "+{text}"),
            Self::Error(text) => write!(f, "-{text}"),
            Self::Integer(n) => write!(f, ":{n}"),
            Self::Bulk(None) => f.write_str("(nil)"),
            Self::Bulk(Some(bytes)) => write!(f, "\"{}\"", bytes.escape_ascii()),
        }
    }
}

/// A request as RESP puts it on the wire: `*N\r\n` then `$len\r\narg\r\n` per argument.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    request
}

/// Reads one reply.
pub async fn read_reply<R: AsyncBufRead + Unpin>(input: &mut R) -> anyhow::Result<Reply> {
    let mut line = Vec::new();
    input.read_until(b'\n', &mut line).await?;
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or_else(|| anyhow!("the connection closed before a whole reply line came"))?;
    let (&kind, rest) = line
        .split_first()
        .ok_or_else(|| anyhow!("an empty reply line"))?;
    let text = String::from_utf8_lossy(rest).into_owned();
    Ok(match kind {
        b'+' => Reply::Simple(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Integer(text.parse().with_context(|| format!("integer :{text}"))?),
        b'$' if text == "-1" => Reply::Bulk(None),
        b'$' => {
            let len: usize = text
                .parse()
                .with_context(|| format!("bulk length ${text}"))?;
            ensure!(len <= MAX_BULK, "a bulk string of {len} bytes");
            let mut bulk = vec![0; len + 2];
            input.read_exact(&mut bulk).await?;
            ensure!(bulk.ends_with(b"\r\n"), "a bulk string not ended by CRLF");
            bulk.truncate(len);
            Reply::Bulk(Some(bulk))
        }
        other => bail!(
            "a reply of type {:?}, which the demo does not read",
            other as char
        ),
    })
}

/// One connection to a node's RESP listener.
pub struct Connection {
    addr: String,
    stream: BufReader<TcpStream>,
}

impl Connection {
    pub async fn open(addr: &str) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr} timed out"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr: addr.to_owned(),
            stream: BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        let Self { addr, stream } = self;
        let exchange = async {
            stream.get_mut().write_all(&encode(args)).await?;
            read_reply(stream).await
        };
        tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("{addr} did not answer within {IO_TIMEOUT:?}"))?
            .with_context(|| format!("RESP exchange with {addr}"))
    }

    /// Sends one command; a transient refusal is sent again after a pause until
    /// `deadline`. With `trace`, prints the exchange (the first refusal and the reply
    /// that ended the retries). Returns the reply and the retries.
    async fn command_waiting(
        &mut self,
        args: &[&[u8]],
        deadline: Instant,
        trace: Option<&Names>,
    ) -> anyhow::Result<(Reply, usize)> {
        let mut retries = 0;
        loop {
            let reply = self.command(args).await?;
            if let Some(names) = trace
                && retries == 0
            {
                println!("  → {}  {}", names.of(&self.addr), show(args));
                println!("  ← {reply}");
            }
            if !reply.is_transient() || Instant::now() >= deadline {
                if trace.is_some() && retries > 0 {
                    println!("  ← {reply}  (sent again {retries} times, {RETRY_PAUSE:?} apart)");
                }
                return Ok((reply, retries));
            }
            retries += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Runs `args` as a Redis Cluster client does: on `-MOVED` it connects to the node
    /// named, sends the command again there and stays connected to that node; a
    /// transient refusal is sent again after a pause. With `trace`, prints each step.
    pub async fn command_following(
        &mut self,
        args: &[&[u8]],
        trace: Option<&Names>,
    ) -> anyhow::Result<Followed> {
        let deadline = Instant::now() + COMMAND_DEADLINE;
        let (mut redirects, mut retries) = (0, 0);
        loop {
            let (reply, waited) = self.command_waiting(args, deadline, trace).await?;
            retries += waited;
            let target = reply.moved().map(|(_, addr)| addr.to_owned());
            match target {
                Some(addr) if Instant::now() < deadline => {
                    if let Some(names) = trace {
                        println!(
                            "    following the redirect: connecting to {}",
                            names.of(&addr)
                        );
                    }
                    if redirects > 0 {
                        // Sent back and forth while leadership moves: let it settle.
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    *self = Self::open(&addr).await?;
                    redirects += 1;
                }
                _ => {
                    return Ok(Followed {
                        reply,
                        redirects,
                        retries,
                    });
                }
            }
        }
    }
}

/// The outcome of a command run as a cluster client runs it.
pub struct Followed {
    pub reply: Reply,
    /// `-MOVED` replies followed.
    pub redirects: usize,
    /// Transient refusals waited out.
    pub retries: usize,
}

/// A command as typed: arguments with spaces or odd bytes quoted.
fn show(args: &[&[u8]]) -> String {
    args.iter()
        .map(|arg| {
            if !arg.is_empty() && arg.iter().all(|b| b.is_ascii_graphic() && *b != b'"') {
                String::from_utf8_lossy(arg).into_owned()
            } else {
                format!("\"{}\"", arg.escape_ascii())
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Member names by RESP address, to label the nodes in the output.
pub struct Names(BTreeMap<String, String>);

impl Names {
    pub fn of(&self, addr: &str) -> String {
        match self.0.get(addr) {
            Some(name) => format!("{addr} ({name})"),
            None => format!("{addr} (no member's RESP address)"),
        }
    }
}

/// Keys `{prefix}{i}` whose partition the map says another member than `first` leads.
fn keys_led_elsewhere<'a>(
    map: &'a PartitionMap,
    prefix: &'a str,
    first: &'a str,
) -> impl Iterator<Item = (String, String)> + 'a {
    (0..10_000).filter_map(move |i| {
        let key = format!("{prefix}{i}");
        let leader = map.leader(map.partition_of(key.as_bytes()))?;
        (leader != first).then(|| (key, leader.to_owned()))
    })
}

pub async fn scenario(client: &Client, prefix: &str) -> anyhow::Result<Ran> {
    let map = client.refresh_map().await?;
    if map.is_standalone() {
        return Ok(Ran::Skipped(
            "a standalone node serves every key itself: nothing is MOVED".to_owned(),
        ));
    }
    let with_resp: Vec<&MemberNode> = map
        .members()
        .values()
        .filter(|member| member.resp_addr.is_some())
        .collect();
    if with_resp.is_empty() {
        return Ok(Ran::Skipped(
            "no member has a RESP address (nodes started without --resp-listen)".to_owned(),
        ));
    }
    let names = Names(
        with_resp
            .iter()
            .filter_map(|m| Some((m.resp_addr.clone()?, m.name.clone())))
            .collect(),
    );
    let seed = client.seeds().first().map(String::as_str).unwrap_or("");
    let first = match with_resp.iter().copied().find(|m| m.api_addr == seed) {
        Some(member) => member,
        None => {
            let member = with_resp[0];
            println!(
                "  {seed} is no member with a RESP address; starting at {} instead",
                member.name
            );
            member
        }
    };
    let first_resp = first.resp_addr.clone().unwrap_or_default();
    println!(
        "  {} serves HTTP at {} and RESP at {first_resp}",
        first.name, first.api_addr
    );

    // A value written over RESP to the first node, redirected to its partition's leader.
    let greeting = format!("{prefix}resp:greeting:");
    let mut candidates = keys_led_elsewhere(&map, &greeting, &first.name)
        .take(3)
        .peekable();
    if candidates.peek().is_none() {
        return Ok(Ran::Skipped(format!(
            "{} leads every partition: no key would be MOVED",
            first.name
        )));
    }
    let mut connection = Connection::open(&first_resp).await?;
    let mut moved = None;
    for (key, leader) in candidates {
        let slot = dcache_protocol::key_slot(key.as_bytes());
        println!(
            "  {key}: slot {slot}, partition {}, led by {leader} (the partition map)",
            map.partition_of(key.as_bytes())
        );
        let keyslot: &[&[u8]] = &[b"CLUSTER", b"KEYSLOT", key.as_bytes()];
        let reply = connection.command(keyslot).await?;
        println!("  → {}  {}", names.of(&first_resp), show(keyslot));
        println!("  ← {reply}");
        ensure!(
            reply == Reply::Integer(i64::from(slot)),
            "CLUSTER KEYSLOT answered {reply}, the client computes slot {slot}"
        );
        let set: &[&[u8]] = &[b"SET", key.as_bytes(), VALUE];
        let deadline = Instant::now() + COMMAND_DEADLINE;
        let (reply, _) = connection
            .command_waiting(set, deadline, Some(&names))
            .await?;
        match reply.moved() {
            Some((moved_slot, addr)) => {
                ensure!(
                    moved_slot == slot,
                    "MOVED names slot {moved_slot}, the key's slot is {slot}"
                );
                ensure!(
                    names.0.contains_key(addr),
                    "MOVED names {addr}, which is no member's RESP address"
                );
                moved = Some((key, addr.to_owned()));
                break;
            }
            None if reply == Reply::Simple("OK".to_owned()) => println!(
                "    {} leads that partition by now (the map was older); another key",
                first.name
            ),
            None => bail!("SET {key} on {} answered {reply}", first.name),
        }
    }
    let Some((key, target)) = moved else {
        bail!("{} accepted every key itself: no SET was MOVED", first.name);
    };
    println!(
        "    following the redirect: connecting to {}",
        names.of(&target)
    );
    let mut connection = Connection::open(&target).await?;
    let Followed { reply, .. } = connection
        .command_following(&[b"SET", key.as_bytes(), VALUE], Some(&names))
        .await?;
    ensure!(
        reply == Reply::Simple("OK".to_owned()),
        "SET {key} on the node MOVED named answered {reply}"
    );
    let Followed { reply, .. } = connection
        .command_following(&[b"GET", key.as_bytes()], Some(&names))
        .await?;
    ensure!(
        reply == Reply::Bulk(Some(VALUE.to_vec())),
        "GET {key} after SET answered {reply}"
    );

    // One value, two protocols.
    let over_http = client.get_value(&key).await?;
    match over_http.map(|entry| entry.value) {
        Some(Value::Bytes(bytes)) if bytes[..] == *VALUE => println!(
            "  HTTP GET {key} (the smart client): raw bytes \"{}\", the same value",
            bytes.escape_ascii()
        ),
        Some(Value::Bytes(bytes)) => {
            bail!("over HTTP {key} reads \"{}\"", bytes.escape_ascii())
        }
        Some(Value::Json(json)) => bail!("over HTTP {key} reads as JSON {json}"),
        None => bail!("over HTTP {key} is absent"),
    }

    incr_from_connections(client, &map, prefix, &first.name, &first_resp, &names).await?;
    redis_cli(&first_resp, &key).await
}

/// INCR of one counter from several connections at once, each opened on the first node
/// and following `-MOVED`; every reply must be a distinct count and the total exact.
async fn incr_from_connections(
    client: &Client,
    map: &PartitionMap,
    prefix: &str,
    first: &str,
    first_resp: &str,
    names: &Names,
) -> anyhow::Result<()> {
    let (counter, leader) = keys_led_elsewhere(map, &format!("{prefix}resp:counter:"), first)
        .next()
        .ok_or_else(|| anyhow!("no counter key is led by another node than {first}"))?;
    let counter = &counter;
    let connections = (0..INCR_CONNECTIONS).map(|_| async move {
        let mut connection = Connection::open(first_resp).await?;
        let (mut counts, mut redirects, mut retries) = (Vec::new(), 0, 0);
        for _ in 0..INCRS_PER_CONNECTION {
            let followed = connection
                .command_following(&[b"INCR", counter.as_bytes()], None)
                .await?;
            redirects += followed.redirects;
            retries += followed.retries;
            match followed.reply {
                Reply::Integer(n) => counts.push(n),
                other => bail!("INCR {counter} answered {other}"),
            }
        }
        anyhow::Ok((counts, redirects, retries, connection.addr))
    });
    let results = try_join_all(connections).await?;
    let total = INCR_CONNECTIONS * INCRS_PER_CONNECTION;
    let redirects: usize = results.iter().map(|(_, r, _, _)| r).sum();
    let retries: usize = results.iter().map(|(_, _, r, _)| r).sum();
    let mut counts: Vec<i64> = results.iter().flat_map(|(c, ..)| c.clone()).collect();
    counts.sort_unstable();
    let ended_on: BTreeSet<String> = results.iter().map(|(.., addr)| names.of(addr)).collect();
    let waited = if retries > 0 {
        format!(", {retries} CLUSTERDOWN/TRYAGAIN waited out")
    } else {
        String::new()
    };
    println!(
        "  INCR {counter} ({leader} leads it) ×{INCRS_PER_CONNECTION} on each of \
         {INCR_CONNECTIONS} concurrent connections opened on {first}: {redirects} MOVED \
         followed{waited}, ending on {}",
        ended_on.into_iter().collect::<Vec<_>>().join(", ")
    );
    let distinct = counts.iter().copied().eq(1..=total as i64);
    println!(
        "  the {total} replies are 1..={total}, each once: {}",
        if distinct { "yes" } else { "no" }
    );
    ensure!(
        distinct,
        "the INCR replies are not 1..={total} each once: {counts:?}"
    );
    let mut reader = Connection::open(first_resp).await?;
    let Followed { reply, .. } = reader
        .command_following(&[b"GET", counter.as_bytes()], None)
        .await?;
    let over_http = client.get_bytes(counter).await?;
    let expected = total.to_string().into_bytes();
    println!(
        "  GET {counter}: {reply} over RESP, {} over HTTP",
        over_http
            .as_ref()
            .map_or("(absent)".to_owned(), |b| format!(
                "\"{}\"",
                b.escape_ascii()
            ))
    );
    ensure!(
        reply == Reply::Bulk(Some(expected.clone())),
        "the counter reads {reply} over RESP, expected {total}"
    );
    ensure!(
        over_http.as_deref() == Some(&expected[..]),
        "the counter reads {over_http:?} over HTTP, expected {total}"
    );
    Ok(())
}

/// `redis-cli GET key` against the first node, when redis-cli is installed: without
/// `-c` it prints the `MOVED`; with `-c` it follows the redirect by itself and prints the
/// value. (It reports the redirect only when run interactively.)
async fn redis_cli(first_resp: &str, key: &str) -> anyhow::Result<Ran> {
    let Some(program) = find_on_path("redis-cli") else {
        println!(
            "  redis-cli not found on PATH; the hand-written exchange above is what a \
             Redis Cluster client (redis-cli -c among them) does"
        );
        return Ok(Ran::Played);
    };
    let (host, port) = first_resp
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("RESP address {first_resp} has no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let plain = run_redis_cli(&program, &["-h", host, "-p", port, "GET", key]).await?;
    ensure!(
        plain.first().is_some_and(|line| line.starts_with("MOVED ")),
        "redis-cli without -c printed {plain:?}, not a MOVED"
    );
    let cluster = run_redis_cli(&program, &["-c", "-h", host, "-p", port, "GET", key]).await?;
    ensure!(
        cluster.last().map(String::as_bytes) == Some(VALUE),
        "redis-cli -c printed {cluster:?}, not {:?}",
        String::from_utf8_lossy(VALUE)
    );
    println!("  redis-cli -c followed the MOVED by itself");
    Ok(Ran::Played)
}

/// Runs redis-cli with `args`, prints the command and its output; returns the lines it
/// printed (standard output).
async fn run_redis_cli(program: &Path, args: &[&str]) -> anyhow::Result<Vec<String>> {
    println!("  $ redis-cli {}", args.join(" "));
    let output = run_with_timeout(program, args).await?;
    let mut stdout: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    // An error reply is followed by an empty line.
    while stdout.last().is_some_and(String::is_empty) {
        stdout.pop();
    }
    for line in &stdout {
        println!("    {line}");
    }
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("    (stderr) {line}");
    }
    ensure!(
        output.status.success(),
        "redis-cli exited with {}",
        output.status
    );
    Ok(stdout)
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|path| {
            path.metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

async fn run_with_timeout(program: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let pid = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(REDIS_CLI_TIMEOUT, waiting).await {
        Ok(finished) => Ok(finished??),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; the child is not reaped
            // until its waiter returns, so the pid is still its own.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            bail!(
                "{} did not finish within {REDIS_CLI_TIMEOUT:?}",
                program.display()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&[b"SET", b"k", b"a b\r\n"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na b\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn replies_of_each_kind_are_read() {
        let mut input: &[u8] =
            b"+OK\r\n-MOVED 42 127.0.0.1:7201\r\n:-7\r\n$5\r\na\r\nbc\r\n$-1\r\n$0\r\n\r\n";
        let mut replies = Vec::new();
        for _ in 0..6 {
            replies.push(read_reply(&mut input).await.unwrap());
        }
        assert_eq!(
            replies,
            [
                Reply::Simple("OK".into()),
                Reply::Error("MOVED 42 127.0.0.1:7201".into()),
                Reply::Integer(-7),
                Reply::Bulk(Some(b"a\r\nbc".to_vec())),
                Reply::Bulk(None),
                Reply::Bulk(Some(Vec::new())),
            ]
        );
        assert_eq!(replies[1].moved(), Some((42, "127.0.0.1:7201")));
        assert!(read_reply(&mut input).await.is_err(), "nothing left");
        let mut array: &[u8] = b"*1\r\n";
        assert!(read_reply(&mut array).await.is_err());
    }
}
