//! The Redis-protocol front door (`--resp-listen`): RESP2, and RESP3 after `HELLO 3`,
//! with Redis Cluster's semantics, so that Redis Cluster clients work against a dcache
//! cluster as they are.
//!
//! Keys map to Redis Cluster's 16,384 hash slots and slots to partitions
//! ([`dcache_protocol::partition_of`]), the same function the HTTP API and the smart
//! client use, so a key lives in one partition whichever protocol wrote it. A
//! connection's requests are run in order; the replies of everything a read brought
//! in are written together.
//!
//! [`codec`] takes requests off a connection's read buffer, held to limits that refuse
//! a hostile length as soon as its header arrives, and writes replies straight into
//! the write buffer in the protocol version the connection chose.

pub mod codec;
mod commands;
mod info;
mod session;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use codec::{RequestLimits, parse_request};
pub use session::Session;

use crate::http::Node;

/// Replies held back past this many bytes are written before the next request runs.
const OUTPUT_HIGH_WATER: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// The request limits of a node's connections: no argument may be larger than the
/// largest key or value it stores, so a client cannot make it buffer more.
pub fn request_limits(node: &Node) -> RequestLimits {
    RequestLimits {
        max_bulk_bytes: node.limits.max_value_bytes.max(node.limits.max_key_bytes),
        ..RequestLimits::default()
    }
}

/// Serves one client connection (after any TLS handshake) until the client leaves,
/// sends QUIT, breaks the protocol, or `stop` fires between requests. A request that
/// stays incomplete for `partial_timeout` closes the connection; an idle one (nothing
/// half-sent) may stay open, as Redis's pooled clients expect.
pub async fn serve<S>(
    mut stream: S,
    node: Arc<Node>,
    stop: CancellationToken,
    partial_timeout: Duration,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connections = node.metrics.resp.connections.clone();
    connections.inc();
    let _open = scopeguard(move || connections.dec());
    let limits = request_limits(&node);
    let mut session = Session::new(node);
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::with_capacity(READ_CHUNK);
    loop {
        loop {
            match parse_request(&mut input, &limits) {
                Ok(Some(args)) => {
                    let reply = session.execute(args).await;
                    reply.write(session.version, &mut output);
                    if session.closing {
                        stream.write_all(&output).await?;
                        return stream.shutdown().await;
                    }
                    if output.len() >= OUTPUT_HIGH_WATER {
                        stream.write_all(&output).await?;
                        output.clear();
                    }
                }
                Ok(None) => break,
                Err(refused) => {
                    // Redis answers a protocol error and closes: what follows in the
                    // stream cannot be framed any more.
                    refused.reply().write(session.version, &mut output);
                    stream.write_all(&output).await?;
                    return stream.shutdown().await;
                }
            }
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
        if input.capacity() - input.len() < READ_CHUNK / 4 {
            input.reserve(READ_CHUNK);
        }
        let partial = !input.is_empty();
        let read = async {
            if partial {
                tokio::time::timeout(partial_timeout, stream.read_buf(&mut input))
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            } else {
                stream.read_buf(&mut input).await
            }
        };
        tokio::select! {
            read = read => match read {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            },
            () = stop.cancelled() => return Ok(()),
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::small_test_node as standalone;

    /// Sends `input` on a fresh connection, closes the sending side and returns all
    /// the node wrote back before it closed.
    async fn converse(node: &Arc<Node>, input: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(serve(
            server,
            node.clone(),
            CancellationToken::new(),
            Duration::from_secs(5),
        ));
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let mut output = Vec::new();
        client.read_to_end(&mut output).await.unwrap();
        let _ = serving.await.unwrap();
        String::from_utf8_lossy(&output).into_owned()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let node = standalone();
        let output = converse(
            &node,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\nINCR k\r\nGET k\r\nPING\r\n",
        )
        .await;
        assert_eq!(output, "+OK\r\n:2\r\n$1\r\n2\r\n+PONG\r\n");
    }

    #[tokio::test]
    async fn a_protocol_error_is_answered_writes_nothing_and_closes() {
        let node = standalone();
        let output = converse(
            &node,
            b"SET before 1\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$-5\r\nv\r\nSET after 1\r\n",
        )
        .await;
        assert_eq!(
            output, "+OK\r\n-ERR Protocol error: invalid bulk length\r\n",
            "the request before is served, the broken one refused, nothing after read"
        );
        assert!(node.store.get(b"before").is_some());
        assert!(node.store.get(b"k").is_none());
        assert!(node.store.get(b"after").is_none());
    }

    #[tokio::test]
    async fn an_argument_over_the_value_limit_is_refused_at_its_header() {
        let node = standalone();
        let output = converse(&node, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n").await;
        assert!(output.starts_with("-ERR Protocol error"), "{output}");
        assert!(node.store.get(b"k").is_none());
    }

    #[tokio::test]
    async fn bad_commands_get_redis_errors_and_change_nothing() {
        let node = standalone();
        let output = converse(
            &node,
            b"FLUSHALL\r\nGET\r\nSET k v EX 0\r\nSET k v NX XX\r\nINCRBY k x\r\nEXISTS k\r\n",
        )
        .await;
        let lines: Vec<&str> = output.split("\r\n").collect();
        assert_eq!(
            lines[..6],
            [
                "-ERR unknown command 'FLUSHALL', with args beginning with: ",
                "-ERR wrong number of arguments for 'get' command",
                "-ERR invalid expire time in 'set' command",
                "-ERR syntax error",
                "-ERR value is not an integer or out of range",
                ":0",
            ]
        );
    }
}
