//! Raft traffic between two nodes on one long-lived stream per peer, shared by every
//! group: messages queued while the previous batch is being written go out together in
//! the next one (natural batching, no timer), so a replicated write or a heartbeat
//! round for all groups costs a few syscalls per peer, not an HTTP request per group.
//!
//! # Wire format
//!
//! The client opens a connection to the peer's Raft listener (TLS when the cluster has
//! it) and sends `GET /raft/stream` with `Connection: upgrade`, `Upgrade: dcache-raft/1`
//! and the cluster secret, if any; the server checks the secret and answers `101
//! Switching Protocols`. Both sides then exchange frames, all integers little-endian:
//!
//! ```text
//! request:  u32 len | u8 1 | u64 id | u32 group | u64 to (0: any) | u8 op_len | op | body
//! response: u32 len | u8 2 | u64 id | u8 status | body
//! ```
//!
//! `len` counts the bytes after it. `op` and the request body are those of the HTTP
//! endpoint `POST /raft/{group}/{op}` (a postcard message); `to` is the Raft identity
//! the message is meant for, which a restarted node refuses. A response's `status` is 0
//! with a postcard `Result<Response, String>`, 1 when `to` is gone from this address,
//! or 2 with the reason the message was not served. Responses come in any order and
//! name their request by `id`. Snapshots keep their own chunked HTTP stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::rpc::{self, Reply};
use super::{GroupId, NodeId};
use crate::raft::groups::Groups;

/// The protocol named in the upgrade.
pub const PROTOCOL: &str = "dcache-raft/1";
/// The path the upgrade is asked on.
pub const PATH: &str = "/raft/stream";

const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;
const ANSWERED: u8 = 0;
const GONE: u8 = 1;
const REFUSED: u8 = 2;

/// The largest frame either side accepts (appends are bounded far below this by
/// openraft's payload limit; snapshots do not travel here).
const MAX_FRAME: usize = 64 << 20;
/// A batch is cut at this many bytes, so one huge backlog does not delay every answer.
const MAX_BATCH: usize = 1 << 20;
/// Frames are read through a buffer this large: a batch of them costs one read, not
/// two per frame.
const READ_BUFFER: usize = 64 << 10;
/// How long opening a stream (connect, TLS, upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How a message sent on a stream was answered.
#[derive(Debug)]
pub enum StreamReply {
    /// A postcard `Result<Response, String>`.
    Answer(Bytes),
    /// The identity it was meant for is gone from that address.
    Gone(String),
    /// Not served, and why.
    Refused(String),
}

/// Why a message could not be sent or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// No stream could be opened: nothing was sent.
    #[error("{0}")]
    Connect(String),
    /// The stream broke or the answer did not come in time: the peer may have acted.
    #[error("{0}")]
    Lost(String),
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<StreamReply>>>>;

/// One open stream to a peer: its writer's queue and the requests awaiting answers.
struct Connection {
    queue: mpsc::UnboundedSender<Bytes>,
    waiting: Waiting,
    /// Set when either direction ended: the next message opens a new stream.
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl Connection {
    fn is_open(&self) -> bool {
        !self.queue.is_closed() && !self.broken.load(Ordering::Relaxed)
    }
}

/// Opens a byte stream to a peer's Raft listener: plain TCP or TLS, and the upgrade
/// request with the cluster secret. Supplied by the transport.
pub trait Dialer: Send + Sync + 'static {
    fn dial(
        &self,
        addr: &str,
    ) -> impl std::future::Future<Output = Result<BoxedStream, String>> + Send;
}

/// A connection of either kind.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}
pub type BoxedStream = Box<dyn Stream>;

/// Every peer's stream, opened on first use and again after it breaks.
pub struct Streams<D> {
    dialer: D,
    peers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Connection>>>>>,
    next_id: AtomicU64,
    /// Where a stream's reader and writer run: the runtime the streams were made on (the
    /// node's Raft runtime), not that of the first caller. A stream opened by a client
    /// worker would otherwise hand every message and answer across threads, each
    /// handover an eventfd write to wake the other runtime. `None` when made outside
    /// any runtime: each stream then runs on its opener's.
    runtime: Option<tokio::runtime::Handle>,
}

impl<D: Dialer> Streams<D> {
    pub fn new(dialer: D) -> Self {
        Self {
            dialer,
            peers: Mutex::default(),
            next_id: AtomicU64::new(1),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Sends one message to the peer at `addr` and waits at most `timeout` for its
    /// answer.
    pub async fn call(
        &self,
        addr: &str,
        to: Option<NodeId>,
        group: GroupId,
        operation: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<StreamReply, StreamError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = request_frame(id, group, to, operation, body);
        let (answered, answer) = oneshot::channel();
        // The whole call, opening the stream included, is bounded by `timeout`: calls
        // queued behind the opening of a stream to an unreachable peer fail in time.
        let deadline = tokio::time::Instant::now() + timeout;
        let (waiting, broken) =
            tokio::time::timeout_at(deadline, self.enqueue(addr, id, frame, answered))
                .await
                .map_err(|_| {
                    StreamError::Connect(format!("opening a stream to {addr} timed out"))
                })??;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(StreamError::Lost(format!(
                "the stream to {addr} broke before the answer"
            ))),
            Err(_) => {
                waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                // A peer that stopped answering may be behind a connection the network
                // silently dropped: the next message opens a fresh stream, while
                // answers still in flight on this one are delivered.
                broken.store(true, Ordering::Relaxed);
                Err(StreamError::Lost(format!(
                    "no answer from {addr} within {timeout:?}"
                )))
            }
        }
    }

    /// Queues `frame` on the stream to `addr`, opening it if needed.
    async fn enqueue(
        &self,
        addr: &str,
        id: u64,
        frame: Bytes,
        answered: oneshot::Sender<StreamReply>,
    ) -> Result<(Waiting, Arc<std::sync::atomic::AtomicBool>), StreamError> {
        let slot = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr.to_owned())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if !slot.as_ref().is_some_and(Connection::is_open) {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.dialer.dial(addr))
                .await
                .map_err(|_| StreamError::Connect(format!("connecting to {addr} timed out")))?
                .map_err(StreamError::Connect)?;
            let runtime = self
                .runtime
                .clone()
                .unwrap_or_else(tokio::runtime::Handle::current);
            *slot = Some(open(stream, &runtime));
        }
        let connection = slot.as_ref().expect("opened above");
        connection
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, answered);
        if connection.queue.send(frame).is_err() {
            return Err(StreamError::Connect(format!("the stream to {addr} closed")));
        }
        Ok((connection.waiting.clone(), connection.broken.clone()))
    }
}

/// Starts the writer and reader of a client stream on `runtime`.
fn open(stream: BoxedStream, runtime: &tokio::runtime::Handle) -> Connection {
    let (reader, writer) = tokio::io::split(stream);
    let (queue, outgoing) = mpsc::unbounded_channel();
    let waiting: Waiting = Arc::default();
    let broken: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let writer_broken = broken.clone();
    runtime.spawn(async move {
        write_batches(writer, outgoing).await;
        writer_broken.store(true, Ordering::Relaxed);
    });
    let (answers, reader_broken) = (waiting.clone(), broken.clone());
    runtime.spawn(async move {
        let _ = read_responses(reader, &answers).await;
        reader_broken.store(true, Ordering::Relaxed);
        // Dropping the senders tells every waiting caller that the stream broke.
        answers.lock().unwrap_or_else(|p| p.into_inner()).clear();
    });
    Connection {
        queue,
        waiting,
        broken,
    }
}

/// Writes whatever is queued, as one batch, each time the previous batch is written.
async fn write_batches(
    mut writer: impl AsyncWrite + Unpin,
    mut outgoing: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut batch = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = outgoing.recv().await {
        batch.clear();
        batch.put(first);
        // Let the tasks already runnable (other groups' cores and replication streams,
        // often woken by the same incoming batch) queue their messages first, so that
        // they leave in this batch rather than one syscall each.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match outgoing.try_recv() {
                Ok(next) => batch.put(next),
                Err(_) => break,
            }
        }
        if writer.write_all(&batch).await.is_err() || writer.flush().await.is_err() {
            break;
        }
    }
    let _ = writer.shutdown().await;
}

async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Bytes>> {
    let len = match reader.read_u32_le().await {
        Ok(len) => len as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a frame of {len} bytes is over the limit of {MAX_FRAME}"
        )));
    }
    let mut frame = vec![0; len];
    reader.read_exact(&mut frame).await?;
    Ok(Some(frame.into()))
}

async fn read_responses(reader: impl AsyncRead + Unpin, waiting: &Waiting) -> std::io::Result<()> {
    let mut reader = tokio::io::BufReader::with_capacity(READ_BUFFER, reader);
    while let Some(mut frame) = read_frame(&mut reader).await? {
        if frame.remaining() < 10 || frame.get_u8() != RESPONSE {
            return Err(std::io::Error::other("not a response frame"));
        }
        let id = frame.get_u64_le();
        let status = frame.get_u8();
        let reply = match status {
            ANSWERED => StreamReply::Answer(frame),
            GONE => StreamReply::Gone(String::from_utf8_lossy(&frame).into_owned()),
            _ => StreamReply::Refused(String::from_utf8_lossy(&frame).into_owned()),
        };
        let caller = waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(caller) = caller {
            let _ = caller.send(reply);
        }
    }
    Ok(())
}

fn request_frame(
    id: u64,
    group: GroupId,
    to: Option<NodeId>,
    operation: &str,
    body: &[u8],
) -> Bytes {
    let len = 1 + 8 + 4 + 8 + 1 + operation.len() + body.len();
    let mut frame = BytesMut::with_capacity(4 + len);
    frame.put_u32_le(len as u32);
    frame.put_u8(REQUEST);
    frame.put_u64_le(id);
    frame.put_u32_le(group);
    frame.put_u64_le(to.unwrap_or(0));
    frame.put_u8(operation.len() as u8);
    frame.put_slice(operation.as_bytes());
    frame.put_slice(body);
    frame.freeze()
}

fn response_frame(id: u64, reply: Reply) -> Bytes {
    let (status, body) = match reply {
        Reply::Answer(bytes) => (ANSWERED, bytes),
        Reply::Gone(why) => (GONE, why.into_bytes()),
        Reply::Refused(_, why) => (REFUSED, why.into_bytes()),
    };
    let len = 1 + 8 + 1 + body.len();
    let mut frame = BytesMut::with_capacity(4 + len);
    frame.put_u32_le(len as u32);
    frame.put_u8(RESPONSE);
    frame.put_u64_le(id);
    frame.put_u8(status);
    frame.put_slice(&body);
    frame.freeze()
}

/// A request frame taken apart: (id, group, to, operation, body).
type Request = (u64, GroupId, Option<NodeId>, String, Bytes);

fn parse_request(mut frame: Bytes) -> Result<Request, String> {
    if frame.remaining() < 22 || frame.get_u8() != REQUEST {
        return Err("not a request frame".into());
    }
    let id = frame.get_u64_le();
    let group = frame.get_u32_le();
    let to = Some(frame.get_u64_le()).filter(|to| *to != 0);
    let op_len = frame.get_u8() as usize;
    if frame.remaining() < op_len {
        return Err("a request frame cut short".into());
    }
    let operation = std::str::from_utf8(&frame[..op_len])
        .map_err(|_| "an operation name that is not UTF-8".to_owned())?
        .to_owned();
    frame.advance(op_len);
    Ok((id, group, to, operation, frame))
}

/// Serves a peer's stream (already authenticated by the upgrade) until it closes:
/// each request is handled on its own task and answered when done.
pub async fn serve(stream: impl AsyncRead + AsyncWrite + Send + 'static, groups: Arc<Groups>) {
    let (reader, writer) = tokio::io::split(stream);
    let mut reader = tokio::io::BufReader::with_capacity(READ_BUFFER, reader);
    let (answers, outgoing) = mpsc::unbounded_channel();
    let writing = tokio::spawn(write_batches(writer, outgoing));
    loop {
        let frame = match read_frame(&mut reader).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "a peer's Raft stream broke");
                break;
            }
        };
        let (id, group, to, operation, body) = match parse_request(frame) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(error = %e, "closing a peer's Raft stream on a malformed frame");
                break;
            }
        };
        let (groups, answers) = (groups.clone(), answers.clone());
        tokio::spawn(async move {
            let reply = rpc::handle(&groups, group, &operation, to, &body).await;
            let _ = answers.send(response_frame(id, reply));
        });
    }
    drop(answers);
    let _ = writing.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frames_round_trip() {
        let frame = request_frame(7, 3, Some(42), "append", b"body");
        let mut bytes = frame.clone();
        let len = bytes.get_u32_le() as usize;
        assert_eq!(len, bytes.len());
        let (id, group, to, operation, body) = parse_request(bytes).unwrap();
        assert_eq!(
            (id, group, to, operation.as_str(), &body[..]),
            (7, 3, Some(42), "append", &b"body"[..])
        );
        let mut anyone = request_frame(8, 0, None, "vote", b"");
        anyone.advance(4);
        assert_eq!(parse_request(anyone).unwrap().2, None);
    }

    #[test]
    fn short_or_foreign_frames_are_refused() {
        assert!(parse_request(Bytes::from_static(b"")).is_err());
        assert!(parse_request(Bytes::from_static(&[2; 40])).is_err());
        let mut frame = request_frame(1, 1, None, "append", b"");
        frame.advance(4);
        let cut = frame.slice(..frame.len() - 3);
        assert!(parse_request(cut).is_err());
    }
}
