//! The smart client: partition-aware routing, retries within a deadline, typed values.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dcache_protocol::wire::{Consistency, DEADLINE_HEADER, DeleteResponse, ErrorBody, GetResponse};
use futures_util::future::join_all;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};
use reqwest::{Method, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::cluster_status::ClusterStatus;
use crate::error::{Error, Result};
use crate::http1;
use crate::partition_map::PartitionMap;
use crate::single_flight::SingleFlight;

/// Header with the remaining TTL (whole seconds) of a raw-bytes value.
const TTL_HEADER: &str = "x-dcache-ttl";

/// How long a pooled connection may idle before it is closed rather than used: below
/// the nodes' default header read timeout (10 s), which also closes idle connections,
/// so that the client drops a pooled connection first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one node may take to answer `GET /cluster` during a map refresh.
const MAP_FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Key bytes left as they are in the request path; everything else is
/// percent-encoded, so any byte string is a valid key.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// Where requests go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Routing {
    /// Straight to the partition's leader, from the partition map (the default).
    #[default]
    Smart,
    /// Always to the first node given; it forwards to the leader. This is what a
    /// plain HTTP client behind a load balancer gets, and what `dcache bench --mode
    /// http` measures.
    FirstNode,
}

/// Options of a [`Client`]; start with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    nodes: Vec<String>,
    request_timeout: Duration,
    deadline: Duration,
    map_max_age: Duration,
    routing: Routing,
    consistency: Consistency,
    max_idle_per_host: usize,
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    https: bool,
}

impl ClientBuilder {
    /// The API token sent with every request (`Authorization: Bearer <token>`), for
    /// nodes started with `--tokens-file`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Talks https, trusting exactly the CA certificates in `pem` (the cluster's
    /// `ca.crt`), for nodes started with `--tls-cert-file`.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self.https = true;
        self
    }
    /// How long one HTTP request may take (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long one call may keep retrying across leader changes, 503s and connection
    /// errors before it fails with [`Error::Unavailable`] (default 15 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How old the partition map may get before it is refreshed in the background
    /// even without a failure (default 10 s). A node that is asked for a partition
    /// it no longer leads forwards the request without saying so, so a stale map
    /// costs a hop rather than an error; this bounds for how long.
    pub fn map_max_age(mut self, age: Duration) -> Self {
        self.map_max_age = age;
        self
    }

    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// The consistency of reads (default linearizable).
    pub fn read_consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// Idle pooled connections kept per node (default 64), in each of the client's
    /// two pools (cache requests; partition map and admin calls).
    pub fn max_idle_connections_per_node(mut self, connections: usize) -> Self {
        self.max_idle_per_host = connections;
        self
    }

    /// Builds the client without contacting any node; the partition map is learned on
    /// the first request.
    pub fn build(self) -> Result<Client> {
        if self.nodes.is_empty() {
            return Err(Error::NoNodes);
        }
        let seeds = self
            .nodes
            .iter()
            .map(|node| normalize_addr(node))
            .collect::<Result<Vec<_>>>()?;
        let https = self.https
            || self
                .nodes
                .iter()
                .any(|node| node.trim().starts_with("https://"));
        let connect_timeout = self.request_timeout.min(Duration::from_secs(2));
        let mut http = reqwest::Client::builder()
            .pool_max_idle_per_host(self.max_idle_per_host)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        let mut default_headers = Vec::new();
        if let Some(token) = &self.token {
            let mut value =
                header::HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                    Error::Security("the API token has a character a header cannot carry".into())
                })?;
            // The same header line on the cache requests' connections.
            default_headers.extend_from_slice(b"authorization: ");
            default_headers.extend_from_slice(value.as_bytes());
            default_headers.extend_from_slice(b"\r\n");
            value.set_sensitive(true);
            http = http.default_headers(header::HeaderMap::from_iter([(
                header::AUTHORIZATION,
                value,
            )]));
        }
        let tls = if https {
            Some(Arc::new(
                http1::tls_config(self.ca_pem.as_deref()).map_err(Error::Security)?,
            ))
        } else {
            None
        };
        if let Some(pem) = &self.ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Security(format!("invalid CA certificate: {e}")))?;
            if certificates.is_empty() {
                return Err(Error::Security("no CA certificate in the PEM given".into()));
            }
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http
            .build()
            .map_err(|e| Error::ClusterMap(format!("cannot build the HTTP client: {e}")))?;
        let pool = http1::Pool::new(http1::PoolOptions {
            max_idle_per_host: self.max_idle_per_host,
            idle_timeout: POOL_IDLE_TIMEOUT,
            connect_timeout,
            default_headers,
            tls,
        });
        Ok(Client {
            inner: Arc::new(Inner {
                pool,
                http,
                scheme: if https { "https" } else { "http" },
                seeds,
                options: self,
                map: RwLock::new(None),
                map_version: AtomicU64::new(0),
                refreshing: tokio::sync::Mutex::new(()),
                background_refresh: AtomicBool::new(false),
                flights: SingleFlight::new(),
            }),
        })
    }

    /// Builds the client and learns the partition map, retrying until the deadline.
    pub async fn connect(self) -> Result<Client> {
        let client = self.build()?;
        if client.inner.options.routing == Routing::Smart {
            let deadline = Instant::now() + client.inner.options.deadline;
            loop {
                match client.refresh_map().await {
                    Ok(_) => break,
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(e) => {
                        debug!(error = %e, "cluster map not available yet");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        Ok(client)
    }
}

/// A cache value as stored: JSON text or raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Json(serde_json::Value),
    Bytes(Bytes),
}

/// A value read with the time it has left.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<T> {
    pub value: T,
    /// Whole seconds left before the key expires (rounded up); `None`: never.
    pub ttl: Option<Duration>,
}

/// A dcache client. Cheap to clone: clones share the connection pools, one partition
/// map and one set of in-flight loads.
///
/// Cache requests (get, set, delete) go over a lean HTTP/1.1 client of its own: a pool
/// of idle keep-alive connections per node, each request written and its response
/// read by the calling task itself, nothing handed to a background task. The
/// partition map (`GET /cluster`) and admin calls go through one pooled
/// `reqwest::Client`.
///
/// ```no_run
/// # async fn example() -> dcache_client::Result<()> {
/// use std::time::Duration;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct User { name: String, age: u32 }
///
/// let cache = dcache_client::Client::builder(["127.0.0.1:7000", "127.0.0.1:7001"])
///     .connect()
///     .await?;
/// cache.set("user:123", &User { name: "Alice".into(), age: 30 }, Some(Duration::from_secs(3600))).await?;
/// let user: Option<User> = cache.get("user:123").await?;
/// assert_eq!(user.map(|u| u.age), Some(30));
/// assert!(cache.delete("user:123").await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// Idle keep-alive connections by node, for the cache requests.
    pool: http1::Pool,
    /// One pooled HTTP client for the other requests (partition map, admin calls).
    http: reqwest::Client,
    /// `http` or `https`, for every node alike.
    scheme: &'static str,
    /// Normalised `host:port` of the nodes the client was given.
    seeds: Vec<String>,
    options: ClientBuilder,
    map: RwLock<Option<Arc<PartitionMap>>>,
    /// Bumped on every successful refresh, so that callers that saw the same failure
    /// refresh once between them.
    map_version: AtomicU64,
    refreshing: tokio::sync::Mutex<()>,
    background_refresh: AtomicBool,
    /// get_or_load runs, by key.
    flights: SingleFlight<Vec<u8>, Result<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("nodes", &self.inner.seeds)
            .field("routing", &self.inner.options.routing)
            .finish_non_exhaustive()
    }
}

/// The body of one cache request.
enum RequestBody {
    Empty,
    Json(Bytes),
    Raw(Bytes),
}

impl Client {
    /// Options for a client that starts from `nodes` (`host:port` of any members; one
    /// is enough, more survive that one being down).
    pub fn builder<I, S>(nodes: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            nodes: nodes.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(15),
            map_max_age: Duration::from_secs(10),
            routing: Routing::Smart,
            consistency: Consistency::Linearizable,
            max_idle_per_host: 64,
            token: None,
            ca_pem: None,
            https: false,
        }
    }

    /// A client with default options that has learned the partition map.
    pub async fn connect<I, S>(nodes: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder(nodes).connect().await
    }

    /// The value of `key` decoded from JSON, `None` if absent or expired.
    pub async fn get<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>> {
        Ok(self.get_entry(key).await?.map(|entry| entry.value))
    }

    /// The value of `key` decoded from JSON with the time it has left.
    pub async fn get_entry<T: DeserializeOwned>(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<Entry<T>>> {
        let key = key.as_ref();
        let Some(entry) = self.get_value(key).await? else {
            return Ok(None);
        };
        let Value::Json(json) = entry.value else {
            return Err(decode_error(
                key,
                "it holds raw bytes: read it with get_bytes",
            ));
        };
        let value = serde_json::from_value(json).map_err(|e| decode_error(key, e))?;
        Ok(Some(Entry {
            value,
            ttl: entry.ttl,
        }))
    }

    /// The raw bytes stored under `key`, `None` if absent or expired.
    pub async fn get_bytes(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let key = key.as_ref();
        match self.get_value(key).await? {
            None => Ok(None),
            Some(Entry {
                value: Value::Bytes(bytes),
                ..
            }) => Ok(Some(bytes)),
            Some(_) => Err(decode_error(key, "it holds JSON: read it with get")),
        }
    }

    /// The value of `key` as stored (JSON or raw bytes) with the time it has left.
    pub async fn get_value(&self, key: impl AsRef<[u8]>) -> Result<Option<Entry<Value>>> {
        let key = key.as_ref();
        let query = match self.inner.options.consistency {
            Consistency::Linearizable => None,
            Consistency::Local => Some("consistency=local".to_owned()),
        };
        let response = self
            .send(Method::GET, key, query, RequestBody::Empty)
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let is_json = response
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json"));
        let ttl_header = response
            .header(TTL_HEADER)
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.into_body();
        if is_json {
            let got: GetResponse =
                serde_json::from_slice(&body).map_err(|e| decode_error(key, e))?;
            Ok(Some(Entry {
                value: Value::Json(got.value),
                ttl: got.ttl.map(Duration::from_secs),
            }))
        } else {
            Ok(Some(Entry {
                value: Value::Bytes(body),
                ttl: ttl_header,
            }))
        }
    }

    /// Stores `value` as JSON under `key`; `ttl` `None` means the cluster's default
    /// (by default: never expire). Acknowledged once a majority of the partition's
    /// replicas committed it.
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: impl AsRef<[u8]>,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let text = serde_json::to_vec(value).map_err(|e| Error::Encode(Arc::new(e)))?;
        self.set_json_text(key.as_ref(), &text, ttl).await
    }

    /// Stores raw bytes under `key`; they are read back as they are with
    /// [`get_bytes`](Self::get_bytes).
    pub async fn set_bytes(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let query = ttl.map(|ttl| format!("ttl={}", ttl.as_secs_f64()));
        self.send(
            Method::PUT,
            key.as_ref(),
            query,
            RequestBody::Raw(value.into()),
        )
        .await
        .map(drop)
    }

    /// Deletes `key`; true if it existed.
    ///
    /// A delete retried after a lost answer may report `false` for a key that the
    /// first attempt deleted.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        let body = self
            .send(Method::DELETE, key, None, RequestBody::Empty)
            .await?
            .into_body();
        let deleted: DeleteResponse =
            serde_json::from_slice(&body).map_err(|e| decode_error(key, e))?;
        Ok(deleted.deleted)
    }

    /// The value of `key`; on a miss, `load` computes it, it is stored with `ttl` and
    /// returned.
    ///
    /// Concurrent calls for the same key through this client (and its clones) share
    /// one run of `load`: one caller runs it, the others wait for its result — or its
    /// error, which they all get. A caller that arrives just after a load finished
    /// reads the value from the cache. If storing the loaded value fails, the value is
    /// still returned (the cache is only a cache) and the failure is logged.
    ///
    /// ```no_run
    /// # async fn example(cache: dcache_client::Client) -> dcache_client::Result<()> {
    /// use std::time::Duration;
    ///
    /// let profile: String = cache
    ///     .get_or_load("profile:42", Some(Duration::from_secs(60)), || async {
    ///         // The expensive origin call, made once however many callers miss at once.
    ///         Ok::<_, std::io::Error>("Alice".to_owned())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load<T, F, Fut, E>(
        &self,
        key: impl AsRef<[u8]>,
        ttl: Option<Duration>,
        load: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let key = key.as_ref();
        if let Some(value) = self.get(key).await? {
            return Ok(value);
        }
        let text = self
            .inner
            .flights
            .run(key.to_vec(), || async {
                // Double-checked: a load that finished between our miss and joining
                // the flight has already filled the cache.
                if let Some(Entry {
                    value: Value::Json(json),
                    ..
                }) = self.get_value(key).await?
                {
                    return serde_json::to_vec(&json)
                        .map(Bytes::from)
                        .map_err(|e| Error::Encode(Arc::new(e)));
                }
                let value = load().await.map_err(|e| Error::Load(Arc::from(e.into())))?;
                let text = serde_json::to_vec(&value).map_err(|e| Error::Encode(Arc::new(e)))?;
                if let Err(e) = self.set_json_text(key, &text, ttl).await {
                    warn!(key = %String::from_utf8_lossy(key), error = %e, "could not cache a loaded value");
                }
                Ok(Bytes::from(text))
            })
            .await?;
        serde_json::from_slice(&text).map_err(|e| decode_error(key, e))
    }

    /// The partition map as last learned (fetching it if there is none yet).
    pub async fn partition_map(&self) -> Result<Arc<PartitionMap>> {
        if let Some(map) = self.current_map() {
            return Ok(map);
        }
        self.refresh_map().await
    }

    /// Fetches the partition map now from every known node.
    pub async fn refresh_map(&self) -> Result<Arc<PartitionMap>> {
        let _one_at_a_time = self.inner.refreshing.lock().await;
        let map = Arc::new(self.fetch_map().await?);
        *self.inner.map.write().unwrap_or_else(|p| p.into_inner()) = Some(map.clone());
        self.inner.map_version.fetch_add(1, Ordering::AcqRel);
        Ok(map)
    }

    /// `GET /cluster` from every known node (those given and the members last
    /// seen), each answer paired with the address it came from.
    pub async fn cluster_views(&self) -> Vec<(String, Result<ClusterStatus>)> {
        let addrs = self.known_addrs();
        let views = join_all(addrs.iter().map(|addr| self.cluster_view(addr))).await;
        addrs.into_iter().zip(views).collect()
    }

    /// The `GET /cluster` answers of the known nodes that answered.
    pub async fn answered_cluster_views(&self) -> Vec<ClusterStatus> {
        self.cluster_views()
            .await
            .into_iter()
            .filter_map(|(_, view)| view.ok())
            .collect()
    }

    /// `GET /cluster` of the node at `addr`.
    pub async fn cluster_view(&self, addr: &str) -> Result<ClusterStatus> {
        // Short: a map refresh asks every node at once and must not wait long on
        // one that is down.
        let timeout = self.inner.options.request_timeout.min(MAP_FETCH_TIMEOUT);
        self.get_json_within(addr, "/cluster", timeout).await
    }

    /// `GET path` on the node at `addr`, decoded from JSON; one attempt, no retry.
    pub async fn get_json_from<T: DeserializeOwned>(&self, addr: &str, path: &str) -> Result<T> {
        self.get_json_within(addr, path, self.inner.options.request_timeout)
            .await
    }

    async fn get_json_within<T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<T> {
        let response = self
            .inner
            .http
            .get(format!("{}://{addr}{path}", self.inner.scheme))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| unavailable_once(&self.inner.options, error_chain(&e)))?;
        let status = response.status();
        let body = self.body(response).await?;
        if !status.is_success() {
            return Err(Error::Refused {
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|e| decode_error(path.as_bytes(), e))
    }

    /// A JSON request to `path` on the node at `addr` (admin calls); one attempt.
    pub async fn send_json_to<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T> {
        let response = self
            .inner
            .http
            .request(method, format!("{}://{addr}{path}", self.inner.scheme))
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| unavailable_once(&self.inner.options, error_chain(&e)))?;
        let status = response.status();
        let bytes = self.body(response).await?;
        if !status.is_success() {
            return Err(Error::Refused {
                status: status.as_u16(),
                message: error_message(&bytes),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| decode_error(path.as_bytes(), e))
    }

    /// The `host:port` of the nodes the client was given.
    pub fn seeds(&self) -> &[String] {
        &self.inner.seeds
    }

    async fn set_json_text(&self, key: &[u8], text: &[u8], ttl: Option<Duration>) -> Result<()> {
        let mut body = Vec::with_capacity(text.len() + 32);
        body.extend_from_slice(b"{\"value\":");
        body.extend_from_slice(text);
        if let Some(ttl) = ttl {
            body.extend_from_slice(format!(",\"ttl\":{}", ttl.as_secs_f64()).as_bytes());
        }
        body.push(b'}');
        self.send(Method::PUT, key, None, RequestBody::Json(body.into()))
            .await
            .map(drop)
    }

    async fn body(&self, response: reqwest::Response) -> Result<Bytes> {
        response
            .bytes()
            .await
            .map_err(|e| unavailable_once(&self.inner.options, error_chain(&e)))
    }

    /// Sends a cache request for `key` to the node that should serve it, retrying
    /// on 502/503/504 and connection errors (refreshing the map in between) until
    /// the deadline. Returns a 2xx or 404 response, read to its end.
    ///
    /// A write that fails on a pooled connection before any of the response came
    /// back is retried here like any connection error, with a new deadline, never
    /// resent at once by the pool: it may have reached the node.
    async fn send(
        &self,
        method: Method,
        key: &[u8],
        query: Option<String>,
        body: RequestBody,
    ) -> Result<http1::Response> {
        let options = &self.inner.options;
        let started = Instant::now();
        let deadline = started + options.deadline;
        let mut target = format!("/cache/{}", encode_key(key));
        if let Some(query) = &query {
            target.push('?');
            target.push_str(query);
        }
        let (content_type, body) = match &body {
            RequestBody::Empty => (None, &b""[..]),
            RequestBody::Json(json) => (Some("application/json"), &json[..]),
            RequestBody::Raw(bytes) => (Some("application/octet-stream"), &bytes[..]),
        };
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (addr, seen_version) = self.target(key, attempts).await;
            let timeout = options
                .request_timeout
                .min(deadline.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(50));
            let mut header_lines = [("", ""); 2];
            let mut header_count = 0;
            if let Some(content_type) = content_type {
                header_lines[header_count] = (header::CONTENT_TYPE.as_str(), content_type);
                header_count += 1;
            }
            let deadline_ms;
            if method != Method::GET {
                // The node refuses, unapplied, a write that reaches it after this
                // attempt was given up on: a retry can never be overtaken by it.
                let given_up_at = std::time::SystemTime::now() + timeout;
                deadline_ms = given_up_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64)
                    .to_string();
                header_lines[header_count] = (DEADLINE_HEADER, &deadline_ms);
                header_count += 1;
            }
            let request = http1::Request {
                method: &method,
                target: &target,
                headers: &header_lines[..header_count],
                body,
            };
            let failure = match self.inner.pool.send(&addr, &request, timeout).await {
                Ok(response)
                    if response.status().is_success()
                        || response.status() == StatusCode::NOT_FOUND =>
                {
                    return Ok(response);
                }
                Ok(response) if is_retryable(response.status()) => {
                    let status = response.status();
                    let message = error_message(&response.into_body());
                    format!("{addr} answered {status}: {message}")
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let message = error_message(&response.into_body());
                    return Err(Error::Refused { status, message });
                }
                Err(e) => format!("{addr}: {e}"),
            };
            debug!(attempt = attempts, %failure, "cache request failed; retrying");
            let pause = backoff(attempts);
            if Instant::now() + pause >= deadline {
                return Err(Error::Unavailable {
                    attempts,
                    deadline_ms: options.deadline.as_millis(),
                    last: failure,
                });
            }
            if options.routing == Routing::Smart {
                self.refresh_after_failure(seen_version).await;
            }
            // The node's Retry-After (1 s) is an upper bound meant for clients that
            // cannot tell where the leader is; this one refreshes its map in between
            // and so retries sooner.
            tokio::time::sleep(pause).await;
        }
    }

    /// The node to send the `attempt`-th try for `key` to, and the map version that
    /// choice came from.
    async fn target(&self, key: &[u8], attempt: u32) -> (String, u64) {
        let options = &self.inner.options;
        let mut version = self.inner.map_version.load(Ordering::Acquire);
        if options.routing == Routing::FirstNode {
            // The first node, unless it keeps failing: then the others in turn.
            let seeds = &self.inner.seeds;
            let index = (attempt as usize - 1) / 2 % seeds.len();
            return (seeds[index].clone(), version);
        }
        let map = match self.current_map() {
            Some(map) => Some(map),
            None => {
                // Many first requests at once fetch the map once between them.
                self.refresh_after_failure(version).await;
                version = self.inner.map_version.load(Ordering::Acquire);
                self.current_map()
            }
        };
        if let Some(map) = &map {
            if map.fetched_at().elapsed() > options.map_max_age {
                self.refresh_in_background();
            }
            if let Some(addr) = map.route(key).filter(|_| attempt <= 3 || attempt % 2 == 1) {
                return (addr.to_owned(), version);
            }
        }
        // No known leader (or it kept failing): any node forwards to the leader.
        let addrs = self.known_addrs();
        (addrs[attempt as usize % addrs.len()].clone(), version)
    }

    fn current_map(&self) -> Option<Arc<PartitionMap>> {
        self.inner
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Refreshes the map unless another caller already did since `seen_version`.
    async fn refresh_after_failure(&self, seen_version: u64) {
        let _one_at_a_time = self.inner.refreshing.lock().await;
        if self.inner.map_version.load(Ordering::Acquire) != seen_version {
            return;
        }
        match self.fetch_map().await {
            Ok(map) => {
                *self.inner.map.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(map));
                self.inner.map_version.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => debug!(error = %e, "could not refresh the partition map"),
        }
    }

    fn refresh_in_background(&self) {
        if self.inner.background_refresh.swap(true, Ordering::AcqRel) {
            return;
        }
        let client = self.clone();
        tokio::spawn(async move {
            let version = client.inner.map_version.load(Ordering::Acquire);
            client.refresh_after_failure(version).await;
            client
                .inner
                .background_refresh
                .store(false, Ordering::Release);
        });
    }

    /// Seeds first, then members of the last map that are not seeds.
    fn known_addrs(&self) -> Vec<String> {
        let mut addrs = self.inner.seeds.clone();
        if let Some(map) = self.current_map() {
            for member in map.members().values() {
                if !addrs.contains(&member.api_addr) {
                    addrs.push(member.api_addr.clone());
                }
            }
        }
        addrs
    }

    async fn fetch_map(&self) -> Result<PartitionMap> {
        let answers = self.cluster_views().await;
        let mut views = Vec::new();
        let mut failures = Vec::new();
        for (addr, answer) in answers {
            match answer {
                Ok(view) => views.push(view),
                // A standalone node refuses /cluster with 400: it serves every key.
                Err(Error::Refused { status: 400, .. }) => {
                    return Ok(PartitionMap::standalone(&addr));
                }
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        PartitionMap::from_views(&views).ok_or_else(|| {
            if views.is_empty() {
                Error::ClusterMap(failures.join("; "))
            } else {
                Error::ClusterMap(
                    "the cluster is not initialised yet (POST /cluster/init)".to_owned(),
                )
            }
        })
    }
}

fn is_retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Exponential backoff with jitter: 20 ms, 40 ms, … capped at 500 ms, each scaled by a
/// random factor in [0.5, 1) so that clients that failed together do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(20) * 2u32.saturating_pow(attempt.saturating_sub(1).min(5));
    let capped = base.min(Duration::from_millis(500));
    capped.mul_f64(rand::random_range(0.5..1.0))
}

/// An error and its causes: reqwest's own message leaves out why a request failed
/// (connection refused, timed out).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_owned())
}

fn decode_error(key: &[u8], reason: impl std::fmt::Display) -> Error {
    Error::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

fn unavailable_once(options: &ClientBuilder, last: String) -> Error {
    Error::Unavailable {
        attempts: 1,
        deadline_ms: options.request_timeout.as_millis(),
        last,
    }
}

fn encode_key(key: &[u8]) -> String {
    percent_encode(key, KEY_ENCODE).to_string()
}

/// `host:port` of a node given as `host:port`, `http://host:port[/]` or
/// `https://host:port[/]`.
pub fn normalize_addr(addr: &str) -> Result<String> {
    let trimmed = addr.trim();
    let bare = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    let invalid = || Error::InvalidAddress(addr.to_owned());
    let (host, port) = bare.rsplit_once(':').ok_or_else(invalid)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && !host.contains(['/', ' ', '@', '?', '#'])
        && (host.parse::<std::net::Ipv4Addr>().is_ok()
            || (host.starts_with('[') && host.ends_with(']'))
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
    if !port_ok || !host_ok {
        return Err(invalid());
    }
    Ok(bare.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(normalize_addr("127.0.0.1:7000").unwrap(), "127.0.0.1:7000");
        assert_eq!(
            normalize_addr("http://cache-0.cache:7000/").unwrap(),
            "cache-0.cache:7000"
        );
        assert_eq!(normalize_addr("[::1]:7000").unwrap(), "[::1]:7000");
        for bad in [
            "127.0.0.1",
            "host:",
            ":7000",
            "host:0",
            "host:99999",
            "a b:1",
        ] {
            assert!(normalize_addr(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn keys_are_percent_encoded_as_bytes() {
        assert_eq!(encode_key(b"user:1/a b"), "user%3A1%2Fa%20b");
        assert_eq!(encode_key(&[0xff, b'x']), "%FFx");
        assert_eq!(encode_key(b"a-b_c~d"), "a-b_c~d");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(20));
        assert!(backoff(3) >= Duration::from_millis(40));
        for attempt in 1..50 {
            assert!(backoff(attempt) <= Duration::from_millis(500));
        }
    }

    #[test]
    fn a_client_needs_a_valid_node() {
        assert!(matches!(
            Client::builder(Vec::<String>::new()).build(),
            Err(Error::NoNodes)
        ));
        assert!(matches!(
            Client::builder(["nope"]).build(),
            Err(Error::InvalidAddress(_))
        ));
    }
}
