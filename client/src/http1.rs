//! A lean HTTP/1.1 client for the cache requests (`GET`/`PUT`/`DELETE /cache/{key}`).
//!
//! Why not reqwest: profiling `dcache bench` showed the client spending ~21 µs of CPU
//! per GET through reqwest, more than the three nodes serving it together, mostly in
//! context switches, futex waits on hyper-util's pool mutex and cross-task wakeups:
//! hyper drives each connection from a task of its own, so every request is handed from
//! the caller's task to the connection's task and the response handed back. Here the
//! caller's task does the whole exchange itself, as the bench's Redis backend does: it
//! checks a keep-alive connection out of its node's pool of idle ones (or connects a
//! new one), writes the request with one write, reads and parses (with `httparse`) the
//! response into the connection's buffer, and puts the connection back only if the
//! response was read to its end and the node keeps it open. Nothing is spawned and the
//! pool's lock is only held to push or pop a connection.
//!
//! reqwest still serves everything else (the partition map, admin calls).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write as _};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::debug;

/// Headers a response may have; more is an error.
const MAX_HEADERS: usize = 32;
/// The most a status line and headers may take.
const MAX_HEAD: usize = 64 * 1024;
/// What a connection's buffers start with, and the most they keep between requests.
const BUFFER_SIZE: usize = 8 * 1024;
const KEPT_BUFFER: usize = 64 * 1024;
/// Reserved at once for a body whose length is announced; larger ones grow as read.
const MAX_RESERVE: usize = 1024 * 1024;

/// Options of a [`Pool`].
#[derive(Debug, Clone)]
pub(crate) struct PoolOptions {
    /// Idle connections kept per `host:port`.
    pub max_idle_per_host: usize,
    /// An idle connection older than this is closed rather than used.
    pub idle_timeout: Duration,
    /// How long connecting (and the TLS handshake) may take.
    pub connect_timeout: Duration,
    /// Header lines sent with every request (each `name: value\r\n`).
    pub default_headers: Vec<u8>,
    /// https: the TLS configuration to connect with.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Idle keep-alive connections, by `host:port`.
pub(crate) struct Pool {
    hosts: RwLock<HashMap<String, Arc<IdleList>>>,
    options: PoolOptions,
    tls: Option<TlsConnector>,
    created: Instant,
    /// When (ms after `created`) the idle connections of every node were last
    /// checked for expiry, so that those of a node no longer asked get closed too.
    swept_at_ms: AtomicU64,
}

/// The idle connections to one node, oldest first.
#[derive(Default)]
struct IdleList(Mutex<Vec<(Connection, Instant)>>);

/// One request.
pub(crate) struct Request<'a> {
    pub method: &'a Method,
    /// Path and query.
    pub target: &'a str,
    /// Header lines besides `host`, `content-length` and the pool's default headers.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// A response read to its end.
#[derive(Debug)]
pub(crate) struct Response {
    status: StatusCode,
    /// Status line and headers as received.
    head: Bytes,
    /// Where the name and value of each header are in `head`.
    headers: Vec<(Range<usize>, Range<usize>)>,
    body: Bytes,
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The value of the first header called `name` (any case), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| self.head[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| std::str::from_utf8(&self.head[v.clone()]).ok())
    }

    pub fn into_body(self) -> Bytes {
        self.body
    }
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum Error {
    Connect(io::Error),
    ConnectTimedOut(Duration),
    /// The node's name is not one a TLS certificate can be checked against.
    ServerName(String),
    Tls(io::Error),
    Write(io::Error),
    Read(io::Error),
    /// The connection ended before the response did.
    Closed,
    Malformed(String),
    TimedOut(Duration),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::ConnectTimedOut(after) => write!(f, "connecting timed out after {after:?}"),
            Self::ServerName(host) => write!(f, "{host:?} is not a valid TLS server name"),
            Self::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            Self::Write(e) => write!(f, "sending the request failed: {e}"),
            Self::Read(e) => write!(f, "reading the response failed: {e}"),
            Self::Closed => f.write_str("the connection closed before the response was complete"),
            Self::Malformed(what) => write!(f, "malformed HTTP response: {what}"),
            Self::TimedOut(after) => write!(f, "timed out after {after:?}"),
        }
    }
}

impl std::error::Error for Error {}

/// A failed exchange on one connection.
struct Failure {
    error: Error,
    /// Nothing of the response had arrived: on a reused connection, the node may have
    /// closed it while it was idle.
    before_response: bool,
}

impl Failure {
    fn after_response(error: Error) -> Self {
        Self {
            error,
            before_response: false,
        }
    }
}

impl Pool {
    pub fn new(options: PoolOptions) -> Self {
        Self {
            hosts: RwLock::new(HashMap::new()),
            tls: options.tls.clone().map(TlsConnector::from),
            options,
            created: Instant::now(),
            swept_at_ms: AtomicU64::new(0),
        }
    }

    /// Sends `request` to the node at `addr` (`host:port`) and reads the response,
    /// all within `timeout`. A GET that fails on a reused connection before any of
    /// the response arrived is sent again, once, on a new connection; other methods
    /// are not: whether a write reached the node is for the caller to judge.
    pub async fn send(
        &self,
        addr: &str,
        request: &Request<'_>,
        timeout: Duration,
    ) -> Result<Response, Error> {
        // A connection being used when the time runs out is dropped with the future,
        // never pooled: its response may still arrive.
        tokio::time::timeout(timeout, self.send_untimed(addr, request))
            .await
            .unwrap_or(Err(Error::TimedOut(timeout)))
    }

    async fn send_untimed(&self, addr: &str, request: &Request<'_>) -> Result<Response, Error> {
        self.sweep_if_due();
        let idle = self.idle_list(addr);
        let may_resend = matches!(*request.method, Method::GET | Method::HEAD);
        if let Some(mut connection) = idle.checkout(self.options.idle_timeout) {
            match connection
                .exchange(request, addr, &self.options.default_headers)
                .await
            {
                Ok((response, reusable)) => {
                    if reusable {
                        idle.checkin(connection, self.options.max_idle_per_host);
                    }
                    return Ok(response);
                }
                Err(failure) if failure.before_response && may_resend => {
                    debug!(%addr, error = %failure.error, "pooled connection failed; resending on a new one");
                }
                Err(failure) => return Err(failure.error),
            }
        }
        let mut connection = self.connect(addr).await?;
        let (response, reusable) = connection
            .exchange(request, addr, &self.options.default_headers)
            .await
            .map_err(|failure| failure.error)?;
        if reusable {
            idle.checkin(connection, self.options.max_idle_per_host);
        }
        Ok(response)
    }

    /// Closes the expired idle connections of every node, at most once per idle
    /// timeout.
    fn sweep_if_due(&self) {
        let now_ms = self.created.elapsed().as_millis() as u64;
        let last = self.swept_at_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < self.options.idle_timeout.as_millis() as u64
            || self
                .swept_at_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let lists: Vec<_> = self
            .hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for list in lists {
            let expired = list.take_expired(self.options.idle_timeout);
            drop(expired);
        }
    }

    fn idle_list(&self, addr: &str) -> Arc<IdleList> {
        if let Some(list) = self
            .hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr)
        {
            return list.clone();
        }
        self.hosts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr.to_owned())
            .or_default()
            .clone()
    }

    async fn connect(&self, addr: &str) -> Result<Connection, Error> {
        let connect_timeout = self.options.connect_timeout;
        let connecting = async {
            let tcp = TcpStream::connect(addr).await.map_err(Error::Connect)?;
            tcp.set_nodelay(true).map_err(Error::Connect)?;
            let stream = match &self.tls {
                None => Stream::Plain(tcp),
                Some(connector) => {
                    let name = server_name(addr)?;
                    let tls = connector.connect(name, tcp).await.map_err(Error::Tls)?;
                    Stream::Tls(Box::new(tls))
                }
            };
            Ok(Connection::new(stream))
        };
        tokio::time::timeout(connect_timeout, connecting)
            .await
            .unwrap_or(Err(Error::ConnectTimedOut(connect_timeout)))
    }

    /// Idle connections to `addr` (for tests).
    #[cfg(test)]
    fn idle_count(&self, addr: &str) -> usize {
        self.idle_list(addr)
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// The TLS configuration of the cache requests: rustls on the ring provider, trusting
/// exactly the CA certificates in `ca_pem` (none: every server certificate is refused,
/// as by the reqwest client, which has no built-in roots either), HTTP/1.1 by ALPN.
pub(crate) fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in ca_pem
        .map(CertificateDer::pem_slice_iter)
        .into_iter()
        .flatten()
    {
        let certificate = certificate.map_err(|e| format!("invalid CA certificate: {e}"))?;
        roots
            .add(certificate)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    if ca_pem.is_some() && roots.is_empty() {
        return Err("no CA certificate in the PEM given".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The name to check the certificate of `addr` (`host:port`) against.
fn server_name(addr: &str) -> Result<ServerName<'static>, Error> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|_| Error::ServerName(host.to_owned()))
}

impl IdleList {
    /// The most recently used idle connection that is still open, closing those that
    /// idled longer than `idle_timeout` or that the node closed.
    fn checkout(&self, idle_timeout: Duration) -> Option<Connection> {
        loop {
            let (connection, expired) = {
                let mut list = self.0.lock().unwrap_or_else(|p| p.into_inner());
                let expired = Self::drain_expired(&mut list, idle_timeout);
                (list.pop(), expired)
            };
            // Closed outside the lock.
            drop(expired);
            let (mut connection, _) = connection?;
            if connection.is_idle_and_open() {
                return Some(connection);
            }
        }
    }

    /// The connections idle for longer than `idle_timeout`, taken out.
    fn take_expired(&self, idle_timeout: Duration) -> Vec<(Connection, Instant)> {
        Self::drain_expired(
            &mut self.0.lock().unwrap_or_else(|p| p.into_inner()),
            idle_timeout,
        )
    }

    fn drain_expired(
        list: &mut Vec<(Connection, Instant)>,
        idle_timeout: Duration,
    ) -> Vec<(Connection, Instant)> {
        let now = Instant::now();
        // Oldest first: the expired ones are a prefix.
        let fresh =
            list.partition_point(|(_, since)| now.saturating_duration_since(*since) > idle_timeout);
        list.drain(..fresh).collect()
    }

    fn checkin(&self, mut connection: Connection, max_idle: usize) {
        connection.trim_buffers();
        let mut list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < max_idle {
            list.push((connection, Instant::now()));
        } else {
            drop(list);
            drop(connection);
        }
    }
}

/// Plain TCP or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How writing a request ended.
enum Sent {
    All,
    /// The node started answering before the request was all written.
    Answered,
    Failed(io::Error),
}

/// How a response body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    /// Until the connection closes.
    Close,
}

/// A connection with its buffers, reused from request to request.
struct Connection {
    stream: Stream,
    /// Bytes received and not yet consumed; empty between requests.
    read: BytesMut,
    /// The request being written.
    write: Vec<u8>,
}

impl Connection {
    fn new(stream: Stream) -> Self {
        Self {
            stream,
            read: BytesMut::with_capacity(BUFFER_SIZE),
            write: Vec::with_capacity(BUFFER_SIZE),
        }
    }

    /// True unless the node closed the connection, sent something unasked or it
    /// failed, as far as can be told without waiting.
    fn is_idle_and_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(&mut self.stream)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }

    /// Buffers grown by a large request or response are not kept in the pool.
    fn trim_buffers(&mut self) {
        if self.write.capacity() > KEPT_BUFFER {
            self.write = Vec::with_capacity(BUFFER_SIZE);
        }
        if self.read.capacity() > KEPT_BUFFER {
            self.read = BytesMut::with_capacity(BUFFER_SIZE);
        }
    }

    /// Writes `request` and reads its response; true with it if the connection can
    /// serve another request.
    async fn exchange(
        &mut self,
        request: &Request<'_>,
        host: &str,
        default_headers: &[u8],
    ) -> Result<(Response, bool), Failure> {
        encode(&mut self.write, request, host, default_headers);
        match self.write_request().await {
            Sent::All => self.read_response(request.method).await,
            // The node answered before it read the whole request (a value over its
            // limit): it closes the connection after the answer.
            Sent::Answered => {
                let (response, _) = self.read_response(request.method).await?;
                Ok((response, false))
            }
            // The node may have answered and closed: its answer, if it can be read,
            // says more than the failed write.
            Sent::Failed(e) => match self.read_response(request.method).await {
                Ok((response, _)) => Ok((response, false)),
                Err(failure) if failure.before_response => Err(Failure {
                    error: Error::Write(e),
                    before_response: true,
                }),
                Err(failure) => Err(failure),
            },
        }
    }

    /// Writes the encoded request. A request too large to go out at once is written
    /// while watching for an early answer, as the node answers a value over its limit
    /// without reading it and then closes the connection.
    async fn write_request(&mut self) -> Sent {
        let Self {
            stream,
            read,
            write,
        } = self;
        let mut written = 0;
        std::future::poll_fn(|cx| {
            loop {
                let progress = if written < write.len() {
                    match Pin::new(&mut *stream).poll_write(cx, &write[written..]) {
                        Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Poll::Ready(Ok(n)) => {
                            written += n;
                            continue;
                        }
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    }
                } else {
                    Pin::new(&mut *stream).poll_flush(cx)
                };
                match progress {
                    Poll::Ready(Ok(())) => return Poll::Ready(Sent::All),
                    Poll::Ready(Err(e)) => return Poll::Ready(Sent::Failed(e)),
                    Poll::Pending => break,
                }
            }
            let mut scratch = [0u8; 2048];
            let mut early = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *stream).poll_read(cx, &mut early) {
                Poll::Ready(Ok(())) if early.filled().is_empty() => Poll::Ready(Sent::Failed(
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the connection was closed"),
                )),
                Poll::Ready(Ok(())) => {
                    read.extend_from_slice(early.filled());
                    Poll::Ready(Sent::Answered)
                }
                Poll::Ready(Err(e)) => Poll::Ready(Sent::Failed(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Reads more of the response into `read`; the connection ending is an error.
    async fn fill(&mut self, at_least: usize) -> Result<(), Failure> {
        let before_response = self.read.is_empty();
        self.read.reserve(at_least.clamp(BUFFER_SIZE, MAX_RESERVE));
        match self.stream.read_buf(&mut self.read).await {
            Ok(0) => Err(Failure {
                error: Error::Closed,
                before_response,
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(Failure {
                error: Error::Read(e),
                before_response,
            }),
        }
    }

    async fn read_response(&mut self, method: &Method) -> Result<(Response, bool), Failure> {
        let (status, head, headers, framing, keep_alive) = loop {
            match parse_head(&self.read)? {
                Some(head) if head.status.is_informational() => self.read.advance(head.len),
                Some(head) => {
                    let framing = if *method == Method::HEAD
                        || head.status == StatusCode::NO_CONTENT
                        || head.status == StatusCode::NOT_MODIFIED
                    {
                        Framing::Length(0)
                    } else {
                        head.framing
                    };
                    let bytes = self.read.split_to(head.len).freeze();
                    break (head.status, bytes, head.headers, framing, head.keep_alive);
                }
                None if self.read.len() >= MAX_HEAD => {
                    return Err(Failure::after_response(Error::Malformed(format!(
                        "no end of the headers in the first {MAX_HEAD} bytes"
                    ))));
                }
                None => self.fill(BUFFER_SIZE).await?,
            }
        };
        let (body, reusable) = match framing {
            Framing::Length(length) => {
                while self.read.len() < length {
                    self.fill(length - self.read.len()).await?;
                }
                (self.read.split_to(length).freeze(), true)
            }
            Framing::Chunked => (self.read_chunked().await?, true),
            Framing::Close => {
                loop {
                    match self.fill(BUFFER_SIZE).await {
                        Ok(()) => {}
                        Err(Failure {
                            error: Error::Closed,
                            ..
                        }) => break,
                        Err(failure) => return Err(failure),
                    }
                }
                (self.read.split().freeze(), false)
            }
        };
        // Bytes past the response were not asked for: the connection is out of step.
        let reusable = reusable && keep_alive && self.read.is_empty();
        let response = Response {
            status,
            head,
            headers,
            body,
        };
        Ok((response, reusable))
    }

    /// A `Transfer-Encoding: chunked` body, chunks joined, trailers skipped.
    async fn read_chunked(&mut self) -> Result<Bytes, Failure> {
        let malformed = |what: String| Failure::after_response(Error::Malformed(what));
        let mut body = BytesMut::new();
        loop {
            let (line, size) = match httparse::parse_chunk_size(&self.read) {
                Ok(httparse::Status::Complete(parsed)) => parsed,
                Ok(httparse::Status::Partial) if self.read.len() > 1024 => {
                    return Err(malformed("a chunk size line over 1 KiB".into()));
                }
                Ok(httparse::Status::Partial) => {
                    self.fill(BUFFER_SIZE).await?;
                    continue;
                }
                Err(httparse::InvalidChunkSize) => {
                    return Err(malformed("invalid chunk size".into()));
                }
            };
            if size == 0 {
                self.read.advance(line);
                break;
            }
            let size = usize::try_from(size)
                .ok()
                .filter(|size| *size <= isize::MAX as usize / 2)
                .ok_or_else(|| malformed(format!("a chunk of {size} bytes")))?;
            let end = line + size + 2;
            while self.read.len() < end {
                self.fill(end - self.read.len()).await?;
            }
            if &self.read[line + size..end] != b"\r\n" {
                return Err(malformed("no CRLF after a chunk".into()));
            }
            body.extend_from_slice(&self.read[line..line + size]);
            self.read.advance(end);
        }
        // Trailer fields, up to the empty line.
        loop {
            let mut trailers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(&self.read, &mut trailers) {
                Ok(httparse::Status::Complete((length, _))) => {
                    self.read.advance(length);
                    return Ok(body.freeze());
                }
                Ok(httparse::Status::Partial) if self.read.len() >= MAX_HEAD => {
                    return Err(malformed("trailers too long".into()));
                }
                Ok(httparse::Status::Partial) => self.fill(BUFFER_SIZE).await?,
                Err(e) => return Err(malformed(format!("trailers: {e}"))),
            }
        }
    }
}

/// A status line and headers parsed.
struct Head {
    len: usize,
    status: StatusCode,
    headers: Vec<(Range<usize>, Range<usize>)>,
    framing: Framing,
    keep_alive: bool,
}

/// The head at the start of `buf`, `None` if it is not all there yet.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Failure> {
    let malformed = |what: String| Failure::after_response(Error::Malformed(what));
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(&line[..line.len().min(80)]);
            return Err(malformed(format!("{e} in {:?}", line.trim_end())));
        }
    };
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code)
        .map_err(|_| malformed(format!("status code {code} is out of range")))?;
    let http11 = parsed.version == Some(1);
    let offset = |part: &[u8]| part.as_ptr() as usize - buf.as_ptr() as usize;
    let mut headers = Vec::with_capacity(parsed.headers.len());
    let mut length: Option<usize> = None;
    let mut chunked = None;
    let mut close = !http11;
    for header in parsed.headers.iter() {
        let name = header.name.as_bytes();
        let value = header.value;
        let start = offset(name);
        let value_start = offset(value);
        headers.push((
            start..start + name.len(),
            value_start..value_start + value.len(),
        ));
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed_length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    malformed(format!(
                        "content-length {:?}",
                        String::from_utf8_lossy(value)
                    ))
                })?;
            if length.is_some_and(|l| l != parsed_length) {
                return Err(malformed("conflicting content-length headers".into()));
            }
            length = Some(parsed_length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked only if it is the last coding applied.
            let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    close = false;
                }
            }
        }
    }
    let framing = match (chunked, length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) | (None, None) => Framing::Close,
        (None, Some(length)) => Framing::Length(length),
    };
    Ok(Some(Head {
        len,
        status,
        headers,
        framing,
        keep_alive: !close,
    }))
}

/// The whole request into `out`.
fn encode(out: &mut Vec<u8>, request: &Request<'_>, host: &str, default_headers: &[u8]) {
    out.clear();
    for part in [
        request.method.as_str().as_bytes(),
        b" ",
        request.target.as_bytes(),
        b" HTTP/1.1\r\nhost: ",
        host.as_bytes(),
        b"\r\n",
        default_headers,
    ] {
        out.extend_from_slice(part);
    }
    for (name, value) in request.headers {
        for part in [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            out.extend_from_slice(part);
        }
    }
    if !request.body.is_empty()
        || matches!(*request.method, Method::PUT | Method::POST | Method::PATCH)
    {
        let _ = write!(out, "content-length: {}\r\n", request.body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(request.body);
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    fn pool() -> Pool {
        Pool::new(PoolOptions {
            max_idle_per_host: 4,
            idle_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            default_headers: b"authorization: Bearer t\r\n".to_vec(),
            tls: None,
        })
    }

    fn get(target: &str) -> Request<'_> {
        Request {
            method: &Method::GET,
            target,
            headers: &[],
            body: b"",
        }
    }

    /// A request as a test server read it.
    #[derive(Debug)]
    struct Received {
        head: String,
        body: Vec<u8>,
    }

    /// Reads one request (head and a content-length body); `None` at the end of the
    /// connection.
    async fn read_request<S: AsyncRead + Unpin>(reader: &mut BufReader<S>) -> Option<Received> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |l| l.trim().parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.ok()?;
        Some(Received { head, body })
    }

    /// A server that answers the requests on its `index`-th connection with
    /// `answers(index)`, one each. Once they run out it closes the connection: at
    /// once if `close_when_done`, else when the next request arrived (as if it had
    /// closed the connection just as that request was sent). Returns its address, the
    /// number of connections accepted and the requests received.
    async fn serve<F>(
        close_when_done: bool,
        answers: F,
    ) -> (
        String,
        Arc<AtomicUsize>,
        tokio::sync::mpsc::UnboundedReceiver<Received>,
    )
    where
        F: Fn(usize) -> Vec<Vec<u8>> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (sent, received) = tokio::sync::mpsc::unbounded_channel();
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let index = counter.fetch_add(1, Ordering::SeqCst);
                let mut answers = answers(index).into_iter().peekable();
                let sent = sent.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    while !close_when_done || answers.peek().is_some() {
                        let Some(request) = read_request(&mut reader).await else {
                            return;
                        };
                        let _ = sent.send(request);
                        let Some(answer) = answers.next() else {
                            return;
                        };
                        if reader.get_mut().write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted, received)
    }

    #[tokio::test]
    async fn a_round_trip_sends_the_request_and_reuses_the_connection() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nX-Dcache-Ttl: 7\r\ncontent-length: 5\r\n\r\nhello".to_vec();
        let (addr, accepted, mut received) = serve(true, move |_| vec![ok.clone(); 3]).await;
        let pool = pool();
        let request = Request {
            method: &Method::PUT,
            target: "/cache/k?ttl=1",
            headers: &[("content-type", "application/octet-stream")],
            body: b"value",
        };
        let response = pool
            .send(&addr, &request, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.header("x-dcache-ttl"), Some("7"));
        assert_eq!(
            response.header("Content-Type"),
            Some("application/octet-stream")
        );
        assert_eq!(response.header("absent"), None);
        assert_eq!(response.into_body(), Bytes::from_static(b"hello"));
        let sent = received.recv().await.unwrap();
        assert_eq!(
            sent.head,
            format!(
                "PUT /cache/k?ttl=1 HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer t\r\n\
                 content-type: application/octet-stream\r\ncontent-length: 5\r\n\r\n"
            )
        );
        assert_eq!(sent.body, b"value");

        for _ in 0..2 {
            let response = pool
                .send(&addr, &get("/cache/k"), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(response.into_body(), Bytes::from_static(b"hello"));
            let sent = received.recv().await.unwrap();
            assert!(sent.head.starts_with("GET /cache/k HTTP/1.1\r\n"));
            assert!(!sent.head.contains("content-length"), "{}", sent.head);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(&addr), 1);
    }

    #[tokio::test]
    async fn a_chunked_response_is_joined() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                        5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: 1\r\n\r\n"
            .to_vec();
        let (addr, accepted, _received) = serve(true, move |_| vec![chunked.clone(); 2]).await;
        let pool = pool();
        for _ in 0..2 {
            let response = pool
                .send(&addr, &get("/"), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(response.into_body(), Bytes::from_static(b"hello world"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(&addr), 1);
    }

    #[tokio::test]
    async fn connection_close_is_honoured() {
        let closing =
            b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        let (addr, accepted, _received) = serve(false, move |_| vec![closing.clone()]).await;
        let pool = pool();
        for _ in 0..2 {
            let response = pool
                .send(&addr, &get("/"), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
            assert_eq!(response.into_body(), Bytes::from_static(b"{}"));
            assert_eq!(pool.idle_count(&addr), 0);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // Without a length, the body runs to the end of the connection.
        let unframed = b"HTTP/1.1 200 OK\r\n\r\nall of it".to_vec();
        let (addr, _, _received) = serve(true, move |_| vec![unframed.clone()]).await;
        let response = pool
            .send(&addr, &get("/"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(response.into_body(), Bytes::from_static(b"all of it"));
        assert_eq!(pool.idle_count(&addr), 0);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_replaced_for_a_get() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        // Closed by the server while idle, noticed before the next request is sent or
        // not: the GET gets its answer on a new connection.
        let (addr, accepted, mut received) = serve(true, {
            let ok = ok.clone();
            move |_| vec![ok.clone()]
        })
        .await;
        let pool = pool();
        for round in 1..=3 {
            let response = pool
                .send(&addr, &get("/"), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(response.into_body(), Bytes::from_static(b"ok"));
            assert_eq!(accepted.load(Ordering::SeqCst), round);
            assert_eq!(pool.idle_count(&addr), 1);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Here the close was seen at checkout: no request went to a closed connection.
        assert_eq!(std::iter::from_fn(|| received.try_recv().ok()).count(), 3);

        // Closed by the server just as the request was sent: nothing could tell before.
        let (addr, accepted, mut received) = serve(false, move |_| vec![ok.clone()]).await;
        for round in 1..=3 {
            let response = pool
                .send(&addr, &get("/"), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(response.into_body(), Bytes::from_static(b"ok"));
            assert_eq!(accepted.load(Ordering::SeqCst), round);
        }
        // The first connection answered once; each later one got the request the
        // previous one dropped, then its own.
        assert_eq!(std::iter::from_fn(|| received.try_recv().ok()).count(), 5);
    }

    #[tokio::test]
    async fn a_write_is_not_resent_when_the_connection_fails() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        let (addr, accepted, mut received) = serve(false, move |_| vec![ok.clone()]).await;
        let pool = pool();
        let delete = Request {
            method: &Method::DELETE,
            target: "/cache/k",
            headers: &[],
            body: b"",
        };
        let response = pool
            .send(&addr, &delete, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // The node got the second delete on the pooled connection and closed it
        // unanswered: whether it applied it cannot be told, so it is not sent again.
        let error = pool
            .send(&addr, &delete, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Closed), "{error}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(std::iter::from_fn(|| received.try_recv().ok()).count(), 2);
        assert_eq!(pool.idle_count(&addr), 0);
    }

    #[tokio::test]
    async fn a_timeout_drops_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (late_sender, late) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut reader = BufReader::new(stream);
            read_request(&mut reader).await.unwrap();
            // Answers only after the client gave up.
            let _ = late.await;
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let pool = pool();
        let error = pool
            .send(&addr, &get("/"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::TimedOut(_)), "{error}");
        assert!(error.to_string().contains("timed out"), "{error}");
        let _ = late_sender.send(());
        assert_eq!(pool.idle_count(&addr), 0);
    }

    #[tokio::test]
    async fn a_malformed_status_line_is_an_error() {
        for answer in [
            &b"HTTP/1.1 abc OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let answer = answer.to_vec();
            let (addr, _, _received) = serve(true, move |_| vec![answer.clone()]).await;
            let pool = pool();
            let error = pool
                .send(&addr, &get("/"), Duration::from_secs(5))
                .await
                .unwrap_err();
            assert!(matches!(error, Error::Malformed(_)), "{error}");
            assert!(
                error.to_string().starts_with("malformed HTTP response"),
                "{error}"
            );
            assert_eq!(pool.idle_count(&addr), 0);
        }
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_max_idle_connections() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec();
        let (addr, accepted, _received) = serve(true, move |_| vec![ok.clone(); 100]).await;
        let pool = pool();
        let request = get("/");
        let requests = (0..8).map(|_| pool.send(&addr, &request, Duration::from_secs(5)));
        for response in futures_util::future::join_all(requests).await {
            assert_eq!(response.unwrap().status(), StatusCode::OK);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 8);
        assert_eq!(pool.idle_count(&addr), 4);
    }

    #[tokio::test]
    async fn a_connection_idle_too_long_is_not_used() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec();
        let (addr, accepted, _received) = serve(true, move |_| vec![ok.clone(); 2]).await;
        let pool = Pool::new(PoolOptions {
            idle_timeout: Duration::from_millis(1),
            ..pool().options
        });
        for round in 1..=2 {
            pool.send(&addr, &get("/"), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(pool.idle_count(&addr), 1);
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(accepted.load(Ordering::SeqCst), round);
        }
        // Requests to another node close them too.
        let other = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec();
        let (other_addr, _, _received) = serve(true, move |_| vec![other.clone(); 2]).await;
        pool.send(&other_addr, &get("/"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(pool.idle_count(&addr), 0);
    }

    #[tokio::test]
    async fn an_answer_before_the_whole_request_was_written_is_read() {
        // The node refuses a body over its limit unread, then closes the connection
        // (resetting it, with the body unread) or keeps it open a while.
        for close in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            tokio::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while line != "\r\n" {
                    line.clear();
                    reader.read_line(&mut line).await.unwrap();
                }
                let refusal = b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\n\
                                content-length: 9\r\n\r\ntoo large";
                reader.get_mut().write_all(refusal).await.unwrap();
                if !close {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
            let pool = pool();
            let body = vec![0u8; 64 << 20];
            let request = Request {
                method: &Method::PUT,
                target: "/cache/big",
                headers: &[("content-type", "application/octet-stream")],
                body: &body,
            };
            let response = pool
                .send(&addr, &request, Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(response.into_body(), Bytes::from_static(b"too large"));
            assert_eq!(pool.idle_count(&addr), 0);
        }
    }

    #[tokio::test]
    async fn https_connections_are_pooled_too() {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut reader = BufReader::new(tls);
                    while let Some(request) = read_request(&mut reader).await {
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                            request.body.len()
                        );
                        let stream = reader.get_mut();
                        stream.write_all(answer.as_bytes()).await.unwrap();
                        stream.write_all(&request.body).await.unwrap();
                        stream.flush().await.unwrap();
                    }
                });
            }
        });

        let pem = certified.cert.pem();
        let trusting = Pool::new(PoolOptions {
            tls: Some(Arc::new(tls_config(Some(pem.as_bytes())).unwrap())),
            ..pool().options
        });
        for round in 0..3 {
            let body = format!("value {round}");
            let request = Request {
                method: &Method::PUT,
                target: "/cache/k",
                headers: &[],
                body: body.as_bytes(),
            };
            let response = trusting
                .send(&addr, &request, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(response.into_body(), body.as_bytes());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(trusting.idle_count(&addr), 1);

        // Without the CA the certificate is refused.
        let untrusting = Pool::new(PoolOptions {
            tls: Some(Arc::new(tls_config(None).unwrap())),
            ..pool().options
        });
        let error = untrusting
            .send(&addr, &get("/"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Tls(_)), "{error}");
        assert!(tls_config(Some(b"not a certificate")).is_err());
    }

    #[test]
    fn server_names_come_from_the_host() {
        assert!(matches!(
            server_name("127.0.0.1:7000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("cache-0.cache:7000").unwrap(),
            ServerName::DnsName(_)
        ));
    }
}
