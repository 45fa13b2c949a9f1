//! Entry points for the fuzz targets in `fuzz/` (run by `make fuzz` under cargo-fuzz),
//! also replayed over their seed corpora by `make test` (`tests/fuzz_corpus.rs`), so a
//! crash the fuzzer once found stays fixed.
//!
//! Each takes arbitrary bytes, feeds them where hostile input can arrive — a cache API
//! request, an internal Raft RPC body, a snapshot stream — and panics only when an
//! invariant breaks: anything the input can do must end in a clear refusal or a clean
//! success, never a crash, a 500, or a half-applied change.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode, Uri, header};
use bytes::BytesMut;
use http_body_util::BodyExt;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, VoteOf};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use crate::auth::{Authenticator, Scope};
use crate::clock::Clock;
use crate::http::{Access, Limits, Node, access, router};
use crate::raft::membership::{CopyStatus, DropRequest, ReconcileOutcome, ReconcileRequest};
use crate::raft::rpc::WriteOutcome;
use crate::raft::{ClusterState, Command, CommandResult, MemberNode, NodeId, TypeConfig, snapshot};
use crate::resp::codec::{ProtocolError, ProtocolVersion, Reply, RequestLimits, parse_request};
use crate::store::{EvictionPolicy, Store, StoreConfig, read_snapshot, write_snapshot};

/// Small limits, so that inputs a fuzzer can reach exercise the 413 paths.
const LIMITS: Limits = Limits {
    max_key_bytes: 64,
    max_value_bytes: 256,
};
const PARTITIONS: u32 = 8;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// A standalone node holding one key, so that deletes and replacements have something
/// to change.
fn standalone_node() -> Node {
    let node = Node::new("fuzz".into(), fresh_store(), LIMITS, None, PARTITIONS);
    node.store.set(
        Bytes::from_static(b"present"),
        crate::store::Entry {
            kind: crate::store::ValueKind::Json,
            data: Bytes::from_static(b"1"),
            expires_at: None,
        },
    );
    node
}

fn fresh_store() -> Store {
    Store::new(
        StoreConfig {
            max_memory: 1 << 20,
            eviction_policy: EvictionPolicy::Tinylfu,
        },
        Clock::new(),
    )
}

/// What the store did, compared before and after a refused request.
fn store_fingerprint(store: &Store) -> (u64, u64, u64) {
    store.run_maintenance();
    let stats = store.stats();
    (stats.keys, stats.sets, stats.deletes)
}

/// One cache API request, decoded from `data` as: a method byte, a content-type byte,
/// then the request target and the body separated by the first `\n`. A target that is
/// not a valid URI is what hyper refuses before the router sees it, so it is skipped.
///
/// Invariants: no 5xx from a standalone node; every error is JSON with an `error`
/// string; a refused request changes nothing in the store.
pub fn http_request(data: &[u8]) {
    http_status(data);
}

/// [`http_request`], saying what the node answered (`None`: not a request at all).
fn http_status(data: &[u8]) -> Option<StatusCode> {
    let [method, content_type, rest @ ..] = data else {
        return None;
    };
    let method = match method % 6 {
        0 => Method::GET,
        1 => Method::PUT,
        2 => Method::POST,
        3 => Method::DELETE,
        4 => Method::HEAD,
        _ => Method::PATCH,
    };
    let credentials = match content_type / 5 % 5 {
        0 => Credentials::AuthOff,
        1 => Credentials::Token(READ_TOKEN.as_bytes(), Scope::Read),
        2 => Credentials::Token(WRITE_TOKEN.as_bytes(), Scope::Write),
        3 => Credentials::Missing,
        _ => Credentials::Raw,
    };
    let content_type = match content_type % 5 {
        0 => Some("application/json"),
        1 => Some("application/octet-stream"),
        2 => Some("text/plain"),
        3 => Some("application/json; charset=utf-8"),
        _ => None,
    };
    let (target, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    // With raw credentials the body's first line is the Authorization header as sent.
    let (authorization, body) = match credentials {
        Credentials::Raw => match body.iter().position(|b| *b == b'\r') {
            Some(at) => (Some(&body[..at]), &body[at + 1..]),
            None => (Some(body), &[][..]),
        },
        Credentials::Token(token, _) => (Some(token), body),
        Credentials::AuthOff | Credentials::Missing => (None, body),
    };
    let target = if target.starts_with(b"/") {
        target.to_vec()
    } else {
        [b"/cache/".as_slice(), target].concat()
    };
    let Ok(uri) = Uri::try_from(target) else {
        return None;
    };
    let head = method == Method::HEAD;
    let needed = access(&method, uri.path(), false);
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    if let Some(authorization) = authorization {
        let Ok(value) =
            header::HeaderValue::from_bytes(&[b"Bearer ".as_slice(), authorization].concat())
        else {
            return None;
        };
        request = request.header(header::AUTHORIZATION, value);
    }
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return None;
    };

    let mut node = standalone_node();
    if !matches!(credentials, Credentials::AuthOff) {
        node.protection.auth = Some(authenticator());
    }
    let node = Arc::new(node);
    let before = store_fingerprint(&node.store);
    let (status, content_type, body) = runtime().block_on(async {
        let response = router(node.clone())
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, content_type, body)
    });

    assert!(
        !status.is_server_error(),
        "a standalone node answered {status}: {:?}",
        String::from_utf8_lossy(&body)
    );
    if status.is_client_error() {
        assert_eq!(
            store_fingerprint(&node.store),
            before,
            "a refused request ({status}) changed the store"
        );
    }
    if status.is_client_error() && !head {
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "errors are JSON ({status})"
        );
        let error: serde_json::Value =
            serde_json::from_slice(&body).expect("an error body is JSON");
        assert!(error["error"].is_string(), "no error message: {error}");
    }
    // With auth on, nothing that needs a scope succeeds without a token holding it.
    if let (Access::Needs(scope), true) = (needed, status.is_success()) {
        match credentials {
            Credentials::AuthOff => {}
            Credentials::Token(_, held) => {
                assert_eq!(held, scope, "a {held:?} token was let through to {scope:?}")
            }
            Credentials::Missing | Credentials::Raw => {
                panic!("{status} for a request needing {scope:?} without a valid token")
            }
        }
    }
    Some(status)
}

/// Which Authorization a fuzzed request carries, and whether the node checks tokens.
#[derive(Debug, Clone, Copy)]
enum Credentials {
    AuthOff,
    Token(&'static [u8], Scope),
    Missing,
    /// Whatever bytes the fuzzer chose, after `Bearer `.
    Raw,
}

const READ_TOKEN: &str = "fuzz-reader-token-0123456789";
const WRITE_TOKEN: &str = "fuzz-writer-token-0123456789";

/// A token checker over a file written once per process.
fn authenticator() -> Authenticator {
    static TOKENS_FILE: OnceLock<std::path::PathBuf> = OnceLock::new();
    let path = TOKENS_FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("dcache-fuzz-tokens-{}", std::process::id()));
        std::fs::write(&path, format!("{READ_TOKEN} read\n{WRITE_TOKEN} write\n"))
            .expect("the temporary directory is writable");
        path
    });
    Authenticator::load(vec![path.clone()], std::time::Duration::from_secs(3600))
        .expect("the fuzz tokens parse")
}

/// Decodes `body` as the postcard message `T` as the Raft endpoint would; whatever
/// decodes must encode back to bytes that decode again to the same encoding.
fn decodes_canonically<T: Serialize + DeserializeOwned>(body: &[u8]) -> bool {
    let Ok(message) = crate::raft::rpc::decode::<T>(body) else {
        return false;
    };
    let encoded = postcard::to_stdvec(&message).expect("a decoded message encodes");
    let again: T = postcard::from_bytes(&encoded).expect("an encoded message decodes");
    assert_eq!(
        postcard::to_stdvec(&again).expect("encodes"),
        encoded,
        "encoding is not stable"
    );
    true
}

/// One internal RPC body: the first byte picks the message type (every request the
/// Raft endpoint decodes and every answer the transport decodes), the rest is the body.
pub fn raft_rpc(data: &[u8]) {
    if let [kind, body @ ..] = data {
        decode_rpc(*kind, body);
    }
}

/// Whether `body` decoded as the message type `kind` picks.
fn decode_rpc(kind: u8, body: &[u8]) -> bool {
    type Answer<T> = Result<T, String>;
    match kind % 16 {
        0 => decodes_canonically::<AppendEntriesRequest<TypeConfig>>(body),
        1 => decodes_canonically::<VoteRequest<TypeConfig>>(body),
        2 => decodes_canonically::<TransferLeaderRequest<TypeConfig>>(body),
        3 => decodes_canonically::<Command>(body),
        4 => decodes_canonically::<ReconcileRequest>(body),
        5 => decodes_canonically::<DropRequest>(body),
        6 => decodes_canonically::<BTreeMap<NodeId, MemberNode>>(body),
        7 => decodes_canonically::<(VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>)>(body),
        8 => decodes_canonically::<Answer<AppendEntriesResponse<TypeConfig>>>(body),
        9 => decodes_canonically::<Answer<VoteResponse<TypeConfig>>>(body),
        10 => decodes_canonically::<Answer<SnapshotResponse<TypeConfig>>>(body),
        11 => decodes_canonically::<Answer<WriteOutcome>>(body),
        12 => decodes_canonically::<Answer<ReconcileOutcome>>(body),
        13 => decodes_canonically::<Answer<(NodeId, CopyStatus)>>(body),
        14 => decodes_canonically::<Answer<CommandResult>>(body),
        _ => decodes_canonically::<Answer<bool>>(body),
    }
}

/// Snapshot bytes as they arrive from a peer: the first byte picks the decoder (the
/// framed stream, a partition's entries, the cluster state), the second how the stream
/// is cut into pieces.
pub fn snapshot(data: &[u8]) {
    let [kind, cut, body @ ..] = data else {
        return;
    };
    match kind % 3 {
        0 => framed_stream(body, usize::from(*cut).max(1)),
        1 => partition_entries(body),
        _ => {
            // A cluster snapshot is the cluster state as JSON; anything that decodes must
            // survive a round trip.
            if let Ok(state) = serde_json::from_slice::<ClusterState>(body) {
                let text = serde_json::to_vec(&state).expect("state encodes");
                serde_json::from_slice::<ClusterState>(&text).expect("state decodes again");
            }
        }
    }
}

fn framed_stream(body: &[u8], piece: usize) {
    const MAX_BYTES: u64 = 64 * 1024;
    let pieces: Vec<Result<Bytes, std::convert::Infallible>> = body
        .chunks(piece)
        .map(|p| Ok(Bytes::copy_from_slice(p)))
        .collect();
    let read = runtime().block_on(snapshot::read_frames(
        futures_util::stream::iter(pieces),
        MAX_BYTES,
    ));
    if let Ok((_, chunks)) = read {
        assert!(chunks.len() <= MAX_BYTES, "read past the snapshot limit");
        assert!(
            chunks
                .chunks()
                .iter()
                .all(|c| c.len() <= snapshot::CHUNK_BYTES)
        );
    }
}

fn partition_entries(body: &[u8]) {
    if let Ok(entries) = read_snapshot(body) {
        let mut encoded = Vec::new();
        write_snapshot(&mut encoded, entries.clone().into_iter()).expect("entries encode");
        let again = read_snapshot(&encoded[..]).expect("written entries read back");
        assert_eq!(again, entries, "entries changed in a round trip");
    }
    // Restoring into a store either replaces the partition or changes nothing.
    let store = fresh_store();
    let keeper = (0u32..)
        .map(|i| Bytes::from(format!("keeper-{i}")))
        .find(|key| dcache_protocol::partition_of(key, PARTITIONS) == 0)
        .expect("some key lands in partition 0");
    store.set(
        keeper.clone(),
        crate::store::Entry {
            kind: crate::store::ValueKind::Bytes,
            data: Bytes::from_static(b"kept"),
            expires_at: None,
        },
    );
    if store.restore_partition(0, PARTITIONS, body).is_err() {
        assert!(
            store.get(&keeper).is_some(),
            "a refused snapshot changed the store"
        );
    }
}

/// RESP requests as a connection reads them: the first byte picks how the rest is cut
/// into reads, the second the limits (Redis's, or small ones an input can exceed).
///
/// Invariants: no panic; however the input is cut, the same requests come out and it
/// ends with the same error or the same bytes left over; an error is final (more bytes
/// give the same error, and nothing more is consumed); consumed and remaining bytes
/// always add up to what was read; every request re-encoded as a multibulk parses back
/// to the same arguments; replies built from the arguments write well-framed RESP2 and
/// RESP3, with doubles that read back to the same value.
pub fn resp_request(data: &[u8]) {
    resp_outcome(data);
}

/// What [`resp_request`] parsed: the requests and how the input ended.
type RespOutcome = (Vec<Vec<Bytes>>, Result<usize, ProtocolError>);

fn resp_outcome(data: &[u8]) -> Option<RespOutcome> {
    let [cut, limits, input @ ..] = data else {
        return None;
    };
    let limits = match limits % 2 {
        0 => RequestLimits::default(),
        _ => RequestLimits {
            max_bulk_bytes: 64,
            max_args: 8,
            max_inline_bytes: 48,
        },
    };
    // Reads of 1 to 2^(cut % 8) bytes, their lengths drawn from a generator seeded by it.
    let longest = 1usize << (cut % 8);
    let mut state = u32::from(*cut) | 0x100;
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < input.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = 1 + state as usize % longest;
        pieces.push(&input[at..input.len().min(at + len)]);
        at += len;
    }
    let outcome = read_requests(&pieces, &limits);
    assert_eq!(
        outcome,
        read_requests(&[input], &limits),
        "cutting the input into reads changed what it parses to"
    );
    for args in &outcome.0 {
        assert!(!args.is_empty(), "an empty request was returned");
        let widest = limits.max_bulk_bytes.max(limits.max_inline_bytes);
        assert!(args.len() <= limits.max_args.max(widest));
        assert!(
            args.iter().all(|arg| arg.len() <= widest),
            "an argument past the limits"
        );
        let mut encoded = BytesMut::new();
        Reply::Array(args.iter().cloned().map(Reply::Bulk).collect())
            .write(ProtocolVersion::Resp2, &mut encoded);
        let again = parse_request(&mut encoded, &RequestLimits::default());
        assert_eq!(
            again.as_ref(),
            Ok(&Some(args.clone())),
            "re-encoded request"
        );
        assert!(encoded.is_empty(), "re-encoding left bytes over");
        let reply = replies_from(args);
        for version in [ProtocolVersion::Resp2, ProtocolVersion::Resp3] {
            let mut out = BytesMut::new();
            reply.write(version, &mut out);
            assert_eq!(
                reply_end(&out, 0),
                out.len(),
                "a reply is one frame ({version:?})"
            );
        }
    }
    Some(outcome)
}

/// Bytes sent on one RESP connection to a standalone node, whole, then the client's
/// end closed: the first byte picks whether the connection first switches to RESP3
/// (`HELLO 3`), the second is unused (room for a mode), the rest is the traffic.
///
/// Invariants: no panic and no hang; what the node writes back is whole RESP frames,
/// one per request the parser takes off the input (fewer if QUIT or RESET ends the
/// connection), and, when the input breaks the protocol, one more: a
/// `-ERR Protocol error` after which the node closes the connection; a connection
/// whose first request is broken writes nothing.
pub fn resp_connection(data: &[u8]) {
    let [mode, _, input @ ..] = data else {
        return;
    };
    let hello: &[u8] = if mode % 2 == 1 { b"HELLO 3\r\n" } else { b"" };
    let traffic = [hello, input].concat();
    let node = Arc::new(standalone_node());
    let before = store_fingerprint(&node.store);

    // What the connection's parser will take off the input.
    let limits = crate::resp::request_limits(&node);
    let mut buffer = BytesMut::from(&traffic[..]);
    let mut requests = Vec::new();
    let broken = loop {
        match parse_request(&mut buffer, &limits) {
            Ok(Some(args)) => requests.push(args),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };

    let output = converse(&traffic, {
        let node = node.clone();
        move |server| {
            crate::resp::serve(
                server,
                node,
                tokio_util::sync::CancellationToken::new(),
                std::time::Duration::from_secs(5),
            )
        }
    });

    let mut frames = Vec::new();
    let mut at = 0;
    while at < output.len() {
        let end = reply_end(&output, at);
        assert!(end <= output.len(), "a reply frame is cut short");
        frames.push(&output[at..end]);
        at = end;
    }
    let ended_early = requests.iter().any(|args| {
        args[0].eq_ignore_ascii_case(b"quit") || args[0].eq_ignore_ascii_case(b"reset")
    });
    if ended_early {
        assert!(frames.len() <= requests.len() + usize::from(broken));
    } else if broken {
        assert_eq!(
            frames.len(),
            requests.len() + 1,
            "one reply per request, one for the error"
        );
        assert!(
            frames
                .last()
                .is_some_and(|frame| frame.starts_with(b"-ERR Protocol error")),
            "the last reply is the protocol error: {:?}",
            String::from_utf8_lossy(frames.last().copied().unwrap_or_default())
        );
    } else {
        assert_eq!(frames.len(), requests.len(), "one reply per request");
    }
    if broken && requests.is_empty() {
        assert_eq!(
            store_fingerprint(&node.store),
            before,
            "a connection that only broke the protocol changed the store"
        );
    }
}

/// Bytes sent on one HTTP connection, whole, then the client's end closed, served on
/// two fresh standalone nodes: as a node serves its clients (the lean path of
/// [`crate::http::door`] first, hyper from the first request it hands over) and by
/// hyper alone. The first byte picks the lean path's body limit (odd: 16 bytes, so
/// that more bodies go to hyper), the second is unused, the rest is the traffic.
///
/// Invariants: no panic and no hang; both answer the same statuses in the same order
/// (whole responses, framed by their length) and leave their stores alike.
pub fn http_connection(data: &[u8]) {
    let [mode, _, traffic @ ..] = data else {
        return;
    };
    let lean_path = crate::http::door::DoorLimits {
        max_body: if mode % 2 == 1 {
            16
        } else {
            crate::http::max_request_body(&LIMITS)
        },
    };
    let answer = |lean_path| {
        let node = Arc::new(standalone_node());
        let app = router(node.clone());
        let output = converse(traffic, move |server| async move {
            let stop = tokio_util::sync::CancellationToken::new();
            let timeout = std::time::Duration::from_secs(5);
            crate::server::serve_http(server, app, &stop, timeout, lean_path).await
        });
        (
            http_statuses(&output, &head_requests(traffic)),
            store_fingerprint(&node.store),
        )
    };
    let (lean, lean_store) = answer(Some(lean_path));
    let (hyper, hyper_store) = answer(None);
    assert_eq!(lean, hyper, "the lean path and hyper answered differently");
    assert_eq!(lean_store, hyper_store, "the stores differ");
}

/// Sends `traffic` on a fresh in-memory connection served by `serve`, closes the
/// client's sending side and answers all the server wrote before it closed.
fn converse<F, Serving>(traffic: &[u8], serve: F) -> Vec<u8>
where
    F: FnOnce(tokio::io::DuplexStream) -> Serving,
    Serving: std::future::Future + Send + 'static,
    Serving::Output: Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let serving = tokio::spawn(serve(server));
        client
            .write_all(traffic)
            .await
            .expect("the duplex takes the input");
        client.shutdown().await.expect("the client end closes");
        let mut output = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.read_to_end(&mut output),
        )
        .await
        .expect("the node answers and closes within 10 s")
        .expect("the duplex reads");
        serving.await.expect("the connection task does not panic");
        output
    })
}

/// Which of the requests in `traffic` are HEAD requests (whose answers carry no body),
/// in order, as far as the requests can be framed.
fn head_requests(mut traffic: &[u8]) -> Vec<bool> {
    let mut heads = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = request.parse(traffic) else {
            return heads;
        };
        heads.push(request.method == Some("HEAD"));
        let header = |name: &str| header_value(request.headers, name);
        traffic = &traffic[head..];
        if header("transfer-encoding").is_some() {
            match chunked_body_len(traffic) {
                Some(length) => traffic = &traffic[length..],
                None => return heads,
            }
        } else if let Some(length) = header("content-length") {
            match length.parse::<usize>() {
                Ok(length) if length <= traffic.len() => traffic = &traffic[length..],
                _ => return heads,
            }
        }
    }
}

/// The value of the first header called `name`, if any.
fn header_value(headers: &[httparse::Header<'_>], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
}

/// The length of the chunked body at the start of `input` (trailers are not expected).
fn chunked_body_len(input: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + input.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&input[at..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2 + size + 2;
        if at > input.len() {
            return None;
        }
        if size == 0 {
            return Some(at);
        }
    }
}

/// The statuses of the HTTP/1.1 responses in `output`, each framed by its
/// Content-Length or its chunks (none for the answer to a HEAD request, as `heads`
/// says); panics on a response cut short or malformed.
fn http_statuses(mut output: &[u8], heads: &[bool]) -> Vec<u16> {
    let mut statuses = Vec::new();
    while !output.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(output) {
            Ok(httparse::Status::Complete(head)) => head,
            other => panic!(
                "not a whole response ({other:?}): {:?}",
                String::from_utf8_lossy(output)
            ),
        };
        let status = response.code.expect("a parsed response has a status");
        let header = |name: &str| header_value(response.headers, name);
        let mut rest = &output[head..];
        if heads.get(statuses.len()).copied().unwrap_or(false) {
            // A HEAD answer: its length is the GET's, its body is not sent.
        } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let length = chunked_body_len(rest).expect("a whole chunked body");
            rest = &rest[length..];
        } else if let Some(length) = header("content-length") {
            let length: usize = length.parse().expect("a numeric content-length");
            assert!(rest.len() >= length, "a response body cut short");
            rest = &rest[length..];
        }
        statuses.push(status);
        output = rest;
    }
    statuses
}

/// Feeds `pieces` to the parser one read at a time, taking requests off after each.
fn read_requests(pieces: &[&[u8]], limits: &RequestLimits) -> RespOutcome {
    let mut buf = BytesMut::new();
    let (mut read, mut consumed) = (0, 0);
    let mut requests = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        buf.extend_from_slice(piece);
        read += piece.len();
        loop {
            let before = buf.len();
            let parsed = parse_request(&mut buf, limits);
            consumed += before - buf.len();
            assert_eq!(consumed + buf.len(), read, "bytes lost or made up");
            match parsed {
                Ok(Some(args)) => {
                    let bytes: usize = args.iter().map(Bytes::len).sum();
                    assert!(
                        bytes <= before - buf.len(),
                        "arguments longer than their request"
                    );
                    requests.push(args);
                }
                Ok(None) => {
                    let left = buf.len();
                    assert_eq!(parse_request(&mut buf, limits), Ok(None));
                    assert_eq!(buf.len(), left, "an incomplete request was consumed");
                    break;
                }
                Err(error) => {
                    // Final: the rest of the input changes neither the error nor the buffer.
                    let left = buf.len();
                    for rest in &pieces[i + 1..] {
                        buf.extend_from_slice(rest);
                    }
                    let more = buf.len() - left;
                    assert_eq!(parse_request(&mut buf, limits), Err(error.clone()));
                    assert_eq!(buf.len(), left + more, "consumed past an error");
                    return (requests, Err(error));
                }
            }
        }
    }
    (requests, Ok(buf.len()))
}

/// A reply of every kind from a request's arguments, each picked by its first byte.
fn replies_from(args: &[Bytes]) -> Reply {
    use std::borrow::Cow;
    let text = |arg: &Bytes| Cow::Owned(String::from_utf8_lossy(arg).into_owned());
    let number = |arg: &Bytes| {
        let mut bytes = [0; 8];
        let n = arg.len().min(8);
        bytes[..n].copy_from_slice(&arg[..n]);
        u64::from_le_bytes(bytes)
    };
    let items: Vec<Reply> = args
        .iter()
        .map(|arg| match arg.first().copied().unwrap_or(0) % 9 {
            0 => Reply::Bulk(arg.clone()),
            1 => Reply::Simple(text(arg)),
            2 => Reply::Error(text(arg)),
            3 => Reply::Integer(number(arg) as i64),
            4 => Reply::Double(f64::from_bits(number(arg))),
            5 => Reply::Bool(arg.len() % 2 == 0),
            6 => Reply::Verbatim(text(&args[0]), text(arg).into_owned()),
            7 => Reply::Set(vec![Reply::Nil, Reply::Bulk(arg.clone())]),
            _ => Reply::NilArray,
        })
        .collect();
    let pairs = items
        .chunks(2)
        .map(|pair| (pair[0].clone(), pair.get(1).cloned().unwrap_or(Reply::Ok)))
        .collect();
    Reply::Array(vec![Reply::Map(pairs), Reply::Array(items), Reply::Ok])
}

/// Where the RESP2 or RESP3 reply starting at `out[at]` ends; panics if it is not one.
fn reply_end(out: &[u8], at: usize) -> usize {
    let line_end = at
        + out[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a reply line ends with CRLF");
    let line = std::str::from_utf8(&out[at + 1..line_end]).expect("a reply line is text");
    assert!(!line.contains(['\r', '\n']), "a line break inside {line:?}");
    let next = line_end + 2;
    let count = || line.parse::<usize>().expect("a length");
    match out[at] {
        b'+' | b'-' => next,
        b':' => {
            line.parse::<i64>().expect("an integer");
            next
        }
        b',' => {
            line.parse::<f64>().expect("a double Rust reads back");
            next
        }
        b'#' => {
            assert!(line == "t" || line == "f", "a boolean");
            next
        }
        b'_' => {
            assert!(line.is_empty());
            next
        }
        b'$' | b'*' if line == "-1" => next,
        b'$' | b'=' => {
            let end = next + count();
            assert_eq!(&out[end..end + 2], b"\r\n", "a bulk ends with CRLF");
            if out[at] == b'=' {
                assert_eq!(out[next + 3], b':', "a verbatim string's format");
            }
            end + 2
        }
        b'*' | b'~' | b'%' => {
            let items = if out[at] == b'%' {
                2 * count()
            } else {
                count()
            };
            (0..items).fold(next, |at, _| reply_end(out, at))
        }
        other => panic!("no reply starts with {:?}", char::from(other)),
    }
}

/// A fuzz target: arbitrary bytes in, a panic only on a broken invariant.
pub type Target = fn(&[u8]);

/// The fuzz targets, by the name of their file in `fuzz/fuzz_targets/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("http_request", http_request),
    ("raft_rpc", raft_rpc),
    ("snapshot", snapshot),
    ("resp_request", resp_request),
    ("resp_connection", resp_connection),
    ("http_connection", http_connection),
];

/// Well-formed inputs to start each target from: what real peers and clients send.
/// `make fuzz` writes them into the working corpus; the tests replay them.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "http_request" => http_seeds(),
        "raft_rpc" => raft_seeds(),
        "snapshot" => snapshot_seeds(),
        "resp_request" => resp_seeds(),
        "resp_connection" => resp_connection_seeds(),
        "http_connection" => http_connection_seeds(),
        other => panic!("no fuzz target {other:?}"),
    }
}

fn http_seeds() -> Vec<Vec<u8>> {
    let request = |method: u8, content_type: u8, target: &str, body: &[u8]| {
        [&[method, content_type][..], target.as_bytes(), b"\n", body].concat()
    };
    vec![
        request(0, 4, "/cache/present", b""),
        request(0, 4, "/cache/present?consistency=local", b""),
        request(
            1,
            0,
            "/cache/k",
            br#"{"value": {"a": [1, 2.5, "x"]}, "ttl": 30}"#,
        ),
        request(2, 3, "/cache/k%20%FF", br#"{"value": "v", "ttl": 0.5}"#),
        request(1, 1, "/cache/raw?ttl=10", b"\x00\x01\x02bytes"),
        request(3, 4, "/cache/present", b""),
        request(0, 4, "/stats", b""),
        request(0, 4, "/health", b""),
        request(5, 0, "/cache/k", b"{}"),
        request(1, 2, "/cache/k", b"text"),
        // Auth on: a read token reads, a write token writes, no token is refused.
        request(0, 5, "/cache/present", b""),
        request(1, 10, "/cache/k", br#"{"value": 1}"#),
        request(1, 15, "/cache/k", br#"{"value": 1}"#),
        request(2, 20, "/cache/k", b"not-a-token\r{\"value\": 1}"),
    ]
}

fn raft_seeds() -> Vec<Vec<u8>> {
    use openraft::{EntryPayload, LogId, Vote};
    let encode = |kind: u8, message: &dyn erased::Encode| [vec![kind], message.encode()].concat();
    let set = Command::Set {
        key: Bytes::from_static(b"key"),
        kind: crate::store::ValueKind::Json,
        data: Bytes::from_static(b"{\"a\":1}"),
        expires_at: Some(1_900_000_000_000),
    };
    let member = MemberNode {
        name: "node-1".into(),
        api_addr: "127.0.0.1:7000".into(),
        raft_addr: "127.0.0.1:7100".into(),
        resp_addr: Some("127.0.0.1:6379".into()),
    };
    let members: BTreeMap<NodeId, MemberNode> = [(7, member)].into();
    let vote = Vote::new(3, 7);
    let leader = openraft::impls::leader_id_adv::LeaderId {
        term: 3,
        node_id: 7,
    };
    let log_id = LogId::new(leader, 41);
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id),
        entries: vec![openraft::Entry {
            log_id: LogId::new(leader, 42),
            payload: EntryPayload::Normal(set.clone()),
        }],
        leader_commit: Some(log_id),
    };
    let vote_request = VoteRequest::<TypeConfig> {
        vote,
        last_log_id: Some(log_id),
        leadership_transfer: false,
    };
    vec![
        encode(0, &append),
        encode(1, &vote_request),
        encode(3, &set),
        encode(
            3,
            &Command::Delete {
                key: Bytes::from_static(b"key"),
            },
        ),
        encode(
            4,
            &ReconcileRequest {
                voters: members.clone(),
                learners: BTreeMap::new(),
                preferred_leader: Some(7),
                may_start: true,
            },
        ),
        encode(5, &DropRequest { removed_at: 42 }),
        encode(6, &members),
        encode(
            14,
            &Ok::<_, String>(CommandResult::Deleted { existed: true }),
        ),
        encode(11, &Err::<WriteOutcome, _>("not leader".to_owned())),
    ]
}

/// Postcard encoding behind a trait object, so seeds of different types share a list.
mod erased {
    pub trait Encode {
        fn encode(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            postcard::to_stdvec(self).expect("a seed encodes")
        }
    }
}

fn snapshot_seeds() -> Vec<Vec<u8>> {
    let entries = || {
        (0..4u8).map(|i| {
            (
                Bytes::from(format!("key-{i}")),
                crate::store::Entry {
                    kind: crate::store::ValueKind::Bytes,
                    data: Bytes::from(vec![i; usize::from(i) * 3]),
                    expires_at: (i % 2 == 0).then_some(1_900_000_000_000),
                },
            )
        })
    };
    let mut partition = Vec::new();
    write_snapshot(&mut partition, entries()).expect("entries encode");
    let mut writer = snapshot::ChunkWriter::default();
    std::io::Write::write_all(&mut writer, &partition).expect("in memory");
    let framed: Vec<u8> = runtime().block_on(async {
        use futures_util::StreamExt;
        snapshot::frames(Bytes::from_static(b"header"), &writer.finish())
            .map(|frame| frame.expect("in memory").to_vec())
            .collect::<Vec<_>>()
            .await
            .concat()
    });
    let state = serde_json::json!({
        "cluster_id": "seed", "partitions": 8, "replication": 3, "vnodes": 150,
        "members": {}, "epoch": 1
    });
    vec![
        [&[0, 7][..], &framed].concat(),
        [&[1, 0][..], &partition].concat(),
        [&[2, 0][..], state.to_string().as_bytes()].concat(),
    ]
}

/// Whole conversations: pipelined cache requests, requests the lean path hands to
/// hyper (HEAD, HTTP/1.0, chunked, a body over the limit, an unknown method) before,
/// between and after those it serves, and a body cut short.
fn http_connection_seeds() -> Vec<Vec<u8>> {
    let seed = |mode: u8, traffic: &[u8]| [&[mode, 0][..], traffic].concat();
    let pipelined: &[u8] =
        b"PUT /cache/k HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
        content-length: 12\r\n\r\n{\"value\": 1}\
        GET /cache/k HTTP/1.1\r\nhost: x\r\n\r\n\
        DELETE /cache/k HTTP/1.1\r\nhost: x\r\n\r\n\
        GET /cache/k?consistency=local HTTP/1.1\r\nhost: x\r\n\r\n";
    vec![
        seed(0, pipelined),
        seed(1, pipelined),
        seed(
            0,
            b"POST /cache/raw?ttl=10 HTTP/1.1\r\ncontent-type: application/octet-stream\r\n\
              content-length: 5\r\n\r\nbytesGET /cache/raw HTTP/1.1\r\n\r\n",
        ),
        seed(0, b"GET /health HTTP/1.1\r\n\r\nHEAD /cache/present HTTP/1.1\r\n\r\nGET /cache/present HTTP/1.1\r\n\r\n"),
        seed(0, b"GET /cache/present HTTP/1.0\r\n\r\nGET /stats HTTP/1.1\r\nconnection: close\r\n\r\n"),
        seed(
            0,
            b"PUT /cache/k HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\nGET /cache/k HTTP/1.1\r\n\r\n",
        ),
        seed(0, b"PUT /cache/k HTTP/1.1\r\ncontent-length: 9999\r\n\r\n{\"value\""),
        seed(0, b"GET /cache/present HTTP/1.1\r\nhost: x\r\n\r\nGET /nowhere HTTP/1.1\r\n\r\nPATCH /cache/k HTTP/1.1\r\n\r\n"),
    ]
}

/// Whole conversations: pipelines of inline and multibulk commands, a QUIT with more
/// after it, commands Redis refuses, and traffic that breaks the protocol first or
/// midway.
fn resp_connection_seeds() -> Vec<Vec<u8>> {
    let seed = |resp3: u8, input: &[u8]| [&[resp3, 0][..], input].concat();
    vec![
        seed(
            0,
            b"SET k v\r\nGET k\r\nINCR n\r\nAPPEND k w\r\nDEL k present\r\n",
        ),
        seed(
            1,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        ),
        seed(
            0,
            b"MSET a 1 b 2\r\nMGET a b\r\nEXPIRE a 10 NX\r\nTTL a\r\nINCRBYFLOAT f 1.5\r\n",
        ),
        seed(
            1,
            b"PING\r\nECHO hi\r\nCLIENT SETNAME me\r\nINFO keyspace\r\nDBSIZE\r\nQUIT\r\nGET k\r\n",
        ),
        seed(
            0,
            b"SET before 1\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$-5\r\nv\r\nSET after 1\r\n",
        ),
        seed(0, b"*1\r\n$4000000000\r\n"),
        seed(1, b"*abc\r\n"),
        seed(0, b"NOSUCH command\r\nSET\r\nGET a b\r\nSET k v EX -1\r\n"),
        seed(0, b"*2\r\n$3\r\nGET\r\n$1\r\nk"),
    ]
}

/// Requests as clients send them, cut into reads of every size, and the malformed ones
/// Redis refuses.
fn resp_seeds() -> Vec<Vec<u8>> {
    let seed = |cut: u8, limits: u8, input: &[u8]| [&[cut, limits][..], input].concat();
    let set_get =
        b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    vec![
        // Valid pipelines, whole and in reads of 1, 2-8 and up to 128 bytes.
        seed(0, 0, set_get),
        seed(3, 0, set_get),
        seed(7, 0, set_get),
        seed(
            5,
            1,
            b"*2\r\n$4\r\nECHO\r\n$7\r\na\r\nb\x00\xffc\r\n*1\r\n$4\r\nPING\r\n",
        ),
        seed(1, 0, b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n\r\nPING\r\n"),
        // Inline commands, with Redis's quoting.
        seed(2, 0, b"PING\r\nSET a \"b c\" 'd'\r\nGET \"\\x41\\n\"\n"),
        seed(6, 0, b"MSET k 'it\\'s' k2 \"q\\\"uote\\t\" k3 \"\"\r\n"),
        seed(4, 1, b"SET a \"unbalanced\r\n"),
        seed(0, 1, &[b'a'; 60]),
        // Malformed arrays.
        seed(1, 0, b"*2\r\n$3\r\nGET\r\n:1\r\n"),
        seed(0, 0, b"*abc\r\n"),
        seed(2, 0, b"*1\r\n$3\r\nfooXY"),
        seed(3, 0, b"*01\r\n$1\r\na\r\n"),
        // Huge and negative lengths, refused at the header.
        seed(0, 0, b"*1\r\n$4000000000\r\n"),
        seed(0, 1, b"*1\r\n$65\r\n"),
        seed(1, 0, b"*1\r\n$-1\r\n"),
        seed(0, 0, b"*3000000000\r\n"),
        seed(0, 1, b"*9\r\n"),
        // Partial frames.
        seed(1, 0, b"*3\r\n$3\r\nSET\r\n$3\r\nke"),
        seed(0, 0, b"*1\r\n$5\r\nhel"),
        seed(2, 0, b"*2\r"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_seeds_are_requests_the_node_serves() {
        let statuses: Vec<Option<StatusCode>> =
            http_seeds().iter().map(|s| http_status(s)).collect();
        assert!(statuses.iter().all(Option::is_some), "{statuses:?}");
        let ok = statuses
            .iter()
            .filter(|s| **s == Some(StatusCode::OK))
            .count();
        assert!(
            ok >= 6,
            "most seeds succeed, a few are refused: {statuses:?}"
        );
    }

    #[test]
    fn raft_seeds_decode_as_the_message_they_are_meant_for() {
        for seed in raft_seeds() {
            assert!(decode_rpc(seed[0], &seed[1..]), "{seed:?}");
        }
    }

    #[test]
    fn snapshot_seeds_decode() {
        let seeds = snapshot_seeds();
        let framed = &seeds[0][2..];
        let pieces = vec![Ok::<_, std::convert::Infallible>(Bytes::copy_from_slice(
            framed,
        ))];
        let (header, chunks) = runtime()
            .block_on(snapshot::read_frames(
                futures_util::stream::iter(pieces),
                1 << 20,
            ))
            .expect("the framed seed reads");
        assert_eq!(&header[..], b"header");
        assert!(!chunks.is_empty());
        assert_eq!(read_snapshot(&seeds[1][2..]).expect("entries").len(), 4);
        serde_json::from_slice::<ClusterState>(&seeds[2][2..]).expect("a cluster state");
    }

    #[test]
    fn resp_seeds_parse_to_requests_errors_and_leftovers() {
        let outcomes: Vec<RespOutcome> = resp_seeds()
            .iter()
            .map(|seed| resp_outcome(seed).expect("a seed has its two control bytes"))
            .collect();
        let requests = outcomes.iter().filter(|o| !o.0.is_empty()).count();
        let errors = outcomes.iter().filter(|o| o.1.is_err()).count();
        let partial = outcomes
            .iter()
            .filter(|o| matches!(o.1, Ok(n) if n > 0))
            .count();
        assert!(requests >= 7 && errors >= 9 && partial >= 3, "{outcomes:?}");
    }
}
