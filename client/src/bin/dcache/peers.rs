//! What `dcache bench` can load: dcache itself, or a peer users compare it with — a
//! Redis server (RESP over TCP, one request in flight per connection, like
//! redis-benchmark without pipelining) or an etcd cluster (its v3 JSON gateway, one
//! HTTP/1.1 keep-alive connection per worker, linearizable reads as etcd serves them
//! by default). One load generator for all three, so that the shapes are the same.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use clap::ValueEnum;
use dcache_client::Client;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A dcache cluster, through the smart client (or plain HTTP with --mode http).
    Dcache,
    /// A Redis server at the first --nodes address.
    Redis,
    /// An etcd cluster: workers spread over the --nodes client URLs (host:port).
    Etcd,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Self::Dcache => "dcache",
            Self::Redis => "redis",
            Self::Etcd => "etcd",
        }
    }
}

/// Where a run's workers connect.
#[derive(Clone)]
pub enum Backend {
    Dcache(Client),
    Redis(String),
    Etcd(Vec<String>),
}

impl Backend {
    /// The connection of worker number `worker`.
    pub async fn connect(&self, worker: u32) -> Result<Connection, String> {
        Ok(match self {
            Self::Dcache(client) => Connection::Dcache(client.clone()),
            Self::Redis(addr) => Connection::Redis(BufStream::new(
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("cannot reach redis at {addr}: {e}"))?,
            )),
            Self::Etcd(endpoints) => Connection::Etcd {
                http: reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| e.to_string())?,
                url: format!("http://{}", endpoints[worker as usize % endpoints.len()]),
            },
        })
    }
}

pub enum Connection {
    Dcache(Client),
    Redis(BufStream<TcpStream>),
    Etcd { http: reqwest::Client, url: String },
}

impl Connection {
    /// Reads `key`; true if it was found.
    pub async fn get(&mut self, key: &str) -> Result<bool, String> {
        match self {
            Self::Dcache(client) => client
                .get_value(key)
                .await
                .map(|found| found.is_some())
                .map_err(|e| e.to_string()),
            Self::Redis(stream) => {
                send_resp(stream, &[b"GET", key.as_bytes()]).await?;
                match read_resp(stream).await? {
                    Resp::Bulk(found) => Ok(found.is_some()),
                    other => Err(format!("unexpected redis answer to GET: {other:?}")),
                }
            }
            Self::Etcd { http, url } => {
                let answer: serde_json::Value =
                    etcd_call(http, url, "range", json!({"key": BASE64.encode(key)})).await?;
                Ok(answer
                    .get("kvs")
                    .is_some_and(|kvs| kvs.as_array().is_some_and(|kvs| !kvs.is_empty())))
            }
        }
    }

    pub async fn set(&mut self, key: &str, value: &Bytes) -> Result<(), String> {
        match self {
            Self::Dcache(client) => client
                .set_bytes(key, value.clone(), None)
                .await
                .map_err(|e| e.to_string()),
            Self::Redis(stream) => {
                send_resp(stream, &[b"SET", key.as_bytes(), value]).await?;
                match read_resp(stream).await? {
                    Resp::Simple(ok) if ok == "OK" => Ok(()),
                    other => Err(format!("unexpected redis answer to SET: {other:?}")),
                }
            }
            Self::Etcd { http, url } => etcd_call(
                http,
                url,
                "put",
                json!({"key": BASE64.encode(key), "value": BASE64.encode(value)}),
            )
            .await
            .map(drop),
        }
    }
}

async fn etcd_call(
    http: &reqwest::Client,
    url: &str,
    operation: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let response = http
        .post(format!("{url}/v3/kv/{operation}"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("etcd {operation}: {e}"))?;
    let status = response.status();
    let answer: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("etcd {operation}: {e}"))?;
    if !status.is_success() {
        return Err(format!("etcd {operation}: {status}: {answer}"));
    }
    Ok(answer)
}

/// A Redis reply, as far as GET and SET need.
#[derive(Debug, PartialEq)]
enum Resp {
    Simple(String),
    Bulk(Option<Vec<u8>>),
}

async fn send_resp(stream: &mut BufStream<TcpStream>, parts: &[&[u8]]) -> Result<(), String> {
    let mut frame = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        frame.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        frame.extend_from_slice(part);
        frame.extend_from_slice(b"\r\n");
    }
    stream
        .write_all(&frame)
        .await
        .map_err(|e| format!("redis: {e}"))?;
    stream.flush().await.map_err(|e| format!("redis: {e}"))
}

async fn read_resp(stream: &mut BufStream<TcpStream>) -> Result<Resp, String> {
    let mut line = String::new();
    let read = stream
        .read_line(&mut line)
        .await
        .map_err(|e| format!("redis: {e}"))?;
    if read == 0 {
        return Err("redis closed the connection".into());
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" => Ok(Resp::Simple(rest.to_owned())),
        "-" => Err(format!("redis error: {rest}")),
        "$" => {
            let len: i64 = rest
                .parse()
                .map_err(|_| format!("bad redis bulk length {rest:?}"))?;
            if len < 0 {
                return Ok(Resp::Bulk(None));
            }
            let mut data = vec![0; len as usize + 2];
            stream
                .read_exact(&mut data)
                .await
                .map_err(|e| format!("redis: {e}"))?;
            data.truncate(len as usize);
            Ok(Resp::Bulk(Some(data)))
        }
        _ => Err(format!("unexpected redis reply {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-connection fake Redis that answers each command with the next canned reply.
    async fn fake_redis(
        replies: &'static [&'static [u8]],
    ) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            for reply in replies {
                let mut buffer = [0u8; 1024];
                let n = socket.read(&mut buffer).await.unwrap();
                received.extend_from_slice(&buffer[..n]);
                socket.write_all(reply).await.unwrap();
            }
            received
        });
        (addr, server)
    }

    #[tokio::test]
    async fn redis_commands_are_framed_and_replies_read() {
        let (addr, server) =
            fake_redis(&[b"+OK\r\n", b"$3\r\nabc\r\n", b"$-1\r\n", b"-ERR no\r\n"]).await;
        let mut connection = Backend::Redis(addr).connect(0).await.unwrap();
        connection
            .set("k", &Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert!(connection.get("k").await.unwrap());
        assert!(!connection.get("gone").await.unwrap());
        let refused = connection.get("k").await.unwrap_err();
        assert!(refused.contains("ERR no"), "{refused}");
        let received = server.await.unwrap();
        assert_eq!(
            String::from_utf8(received).unwrap(),
            "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nabc\r\n\
             *2\r\n$3\r\nGET\r\n$1\r\nk\r\n\
             *2\r\n$3\r\nGET\r\n$4\r\ngone\r\n\
             *2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
    }
}
