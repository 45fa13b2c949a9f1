//! Security of a node as a client or an attacker meets it: API tokens and scopes, the
//! cluster secret on Raft, TLS with certificates renewed in place, and the limits that
//! keep a slow or greedy client from holding the node.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{NodeProcess, TestCluster};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
    PKCS_ECDSA_P256_SHA256,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READER: &str = "reader-token-0123456789abcdef";
const WRITER: &str = "writer-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";
const CLUSTER_SECRET: &str = "cluster-secret-0123456789abcdef";
const SECRET_HEADER: &str = "x-dcache-cluster-secret";

/// A fresh directory for one test's secret files.
fn secrets_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("security")
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    // Write then rename, as a Secret mount swaps its files: never a half-written file.
    let partial = dir.join(format!(".{name}.partial"));
    std::fs::write(&partial, contents).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path.to_str().unwrap().to_owned()
}

fn tokens_file(dir: &Path) -> String {
    write(
        dir,
        "tokens",
        &format!("# the test's tokens\n{READER} read\n{WRITER} read,write\n\n{ADMIN} admin,read\n"),
    )
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

async fn error_of(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("a JSON error body");
    body["error"].as_str().expect("an error message").to_owned()
}

/// `dcache_http_rejected_total{reason}` as the node at `base` exports it.
async fn rejected(client: &reqwest::Client, base: &str, reason: &str) -> u64 {
    let text = common::metrics_text(client, &format!("{base}/metrics")).await;
    let wanted = format!("dcache_http_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&wanted))
        .unwrap_or_else(|| panic!("no {wanted} in the metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn tokens_and_scopes_guard_every_route_but_health_and_ready() {
    let dir = secrets_dir("scopes");
    let tokens = tokens_file(&dir);
    let node = NodeProcess::start(&["--tokens-file", &tokens]);
    let client = http();
    let url = |path: &str| node.url(path);

    for open in ["/health", "/ready", "/metrics"] {
        let response = client.get(url(open)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{open} is open");
    }

    let missing = client.get(url("/cache/k")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let challenge = missing.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert!(error_of(missing).await.contains("missing bearer token"));

    let wrong = client
        .get(url("/cache/k"))
        .bearer_auth("nobody-issued-this-token-ever")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(
        wrong.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert!(error_of(wrong).await.contains("invalid token"));

    let not_bearer = client
        .get(url("/cache/k"))
        .basic_auth("user", Some(READER))
        .send()
        .await
        .unwrap();
    assert_eq!(not_bearer.status(), StatusCode::UNAUTHORIZED);

    let read_only_write = client
        .put(url("/cache/k"))
        .bearer_auth(READER)
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(read_only_write.status(), StatusCode::FORBIDDEN);
    assert!(error_of(read_only_write).await.contains("\"write\""));

    let written = client
        .put(url("/cache/k"))
        .bearer_auth(WRITER)
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 200);
    let read = client
        .get(url("/cache/k"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.json::<Value>().await.unwrap()["value"], 1);

    // Admin routes need admin; admin does not imply write.
    let writer_admin = client
        .post(url("/admin/fault"))
        .bearer_auth(WRITER)
        .json(&json!({"isolated": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(writer_admin.status(), StatusCode::FORBIDDEN);
    let admin_write = client
        .delete(url("/cache/k"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin_write.status(), StatusCode::FORBIDDEN);
    let admin = client
        .post(url("/admin/fault"))
        .bearer_auth(ADMIN)
        .json(&json!({"isolated": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.status(),
        StatusCode::NOT_FOUND,
        "past auth: fault injection is off"
    );

    for path in ["/stats", "/cluster"] {
        let anonymous = client.get(url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    assert!(rejected(&client, &node.base, "unauthenticated").await >= 5);
    assert!(rejected(&client, &node.base, "forbidden").await >= 3);
}

#[tokio::test]
async fn metrics_auth_closes_metrics_to_anonymous_scrapers() {
    let dir = secrets_dir("metrics-auth");
    let tokens = tokens_file(&dir);
    let node = NodeProcess::start(&["--tokens-file", &tokens, "--metrics-auth"]);
    let client = http();
    let anonymous = client.get(node.url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let scraper = client
        .get(node.url("/metrics"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(scraper.status(), 200);
    assert_eq!(
        client
            .get(node.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn invalid_secret_files_refuse_the_start_with_the_line_at_fault() {
    let dir = secrets_dir("invalid");
    let bad_tokens = write(&dir, "tokens", &format!("{READER} read\n{WRITER} reed\n"));
    let short_secret = write(&dir, "secret", "too-short\n");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--tokens-file", &bad_tokens],
            "tokens:2: unknown scope \"reed\"",
        ),
        (
            &[
                "--raft-listen",
                "127.0.0.1:0",
                "--cluster-secret-file",
                &short_secret,
            ],
            "shorter than 16",
        ),
        (
            &[
                "--tls-cert-file",
                &bad_tokens,
                "--tls-key-file",
                &bad_tokens,
            ],
            "no certificate in it",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_dcache-node"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_changed_tokens_file_is_picked_up_and_a_broken_one_ignored() {
    let dir = secrets_dir("token-reload");
    let first = "first-token-0123456789abcdef";
    let second = "second-token-0123456789abcdef";
    let tokens = write(&dir, "tokens", &format!("{first} read\n"));
    let node = NodeProcess::start(&[
        "--tokens-file",
        &tokens,
        "--secret-reload-interval",
        "200ms",
    ]);
    let client = http();
    let status = |token: &'static str| {
        let request = client.get(node.url("/cache/absent")).bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(status(first).await, StatusCode::NOT_FOUND);
    assert_eq!(status(second).await, StatusCode::UNAUTHORIZED);

    write(&dir, "tokens", &format!("{second} read\n"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(second).await != StatusCode::NOT_FOUND {
        assert!(
            Instant::now() < deadline,
            "the new token was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status(first).await,
        StatusCode::UNAUTHORIZED,
        "the old token is gone"
    );

    // A broken edit keeps the tokens in force; several reload intervals pass.
    write(&dir, "tokens", &format!("{first} read,everything\n"));
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(status(second).await, StatusCode::NOT_FOUND);
        assert_eq!(status(first).await, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn oversized_keys_and_values_get_413() {
    let node = NodeProcess::start(&["--max-key-bytes", "64", "--max-value-bytes", "1KiB"]);
    let client = http();
    let long_key = "k".repeat(65);
    let key = client
        .get(node.url(&format!("/cache/{long_key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(key.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(key).await.contains("--max-key-bytes"));
    let json_value = client
        .put(node.url("/cache/k"))
        .json(&json!({"value": "v".repeat(2000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_value.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let raw_value = client
        .put(node.url("/cache/k"))
        .header("content-type", "application/octet-stream")
        .body(vec![0u8; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(raw_value.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let fits = client
        .put(node.url("/cache/k"))
        .header("content-type", "application/octet-stream")
        .body(vec![0u8; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 200);
}

/// Reads until the server closes the connection; what it sent on the way.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection was still open after {within:?}"
    );
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_or_body_is_disconnected() {
    let node = NodeProcess::start(&["--header-read-timeout", "500ms", "--request-timeout", "1s"]);
    // Half the headers, then nothing.
    let mut stalled_headers = TcpStream::connect(&node.api).await.unwrap();
    stalled_headers
        .write_all(b"GET /cache/k HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // The whole head, then part of the body, then nothing.
    let mut stalled_body = TcpStream::connect(&node.api).await.unwrap();
    stalled_body
        .write_all(
            b"PUT /cache/k HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"value\":",
        )
        .await
        .unwrap();
    // An idle keep-alive connection ends too.
    let mut idle = TcpStream::connect(&node.api).await.unwrap();

    read_until_closed(&mut stalled_headers, Duration::from_secs(20)).await;
    let answer = read_until_closed(&mut stalled_body, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--request-timeout"), "{answer}");
    read_until_closed(&mut idle, Duration::from_secs(20)).await;

    let client = http();
    assert!(rejected(&client, &node.base, "header_timeout").await >= 2);
    assert!(rejected(&client, &node.base, "request_timeout").await >= 1);
}

/// Sends one `GET /health` on a kept-alive connection and reads its answer.
async fn health_on(stream: &mut TcpStream) -> Result<String, std::io::Error> {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    let mut buffer = [0u8; 4096];
    let n = stream.read(&mut buffer).await?;
    Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let node = NodeProcess::start(&["--max-connections", "2", "--http-workers", "1"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&node.api).await.unwrap();
        let answer = health_on(&mut stream).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream);
    }
    let mut over = TcpStream::connect(&node.api).await.unwrap();
    let _ = over
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let answer = read_until_closed(&mut over, Duration::from_secs(20)).await;
    assert!(
        answer.is_empty(),
        "a connection over the cap was served: {answer}"
    );

    // Closing one makes room for another.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut stream = TcpStream::connect(&node.api).await.unwrap();
        if health_on(&mut stream)
            .await
            .is_ok_and(|answer| answer.starts_with("HTTP/1.1 200"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    // The node notices the closed connections a moment later; until then a new one
    // is over the cap too.
    let client = http();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(node.url("/health")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no room after every connection closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rejected(&client, &node.base, "connection_limit").await >= 1);
}

#[tokio::test]
async fn admin_calls_over_the_rate_get_429_with_retry_after() {
    let node = NodeProcess::start(&["--admin-rate-limit", "1"]);
    let client = http();
    let mut limited = None;
    for _ in 0..20 {
        let response = client
            .post(node.url("/admin/fault"))
            .json(&json!({"isolated": false}))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("20 admin calls at once at 1 per second: some refused");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert!(error_of(limited).await.contains("too many admin calls"));
    // Cache calls are not rate limited.
    for _ in 0..20 {
        let response = client.get(node.url("/cache/absent")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    assert!(rejected(&client, &node.base, "rate_limited").await >= 1);
}

#[tokio::test]
async fn raft_messages_without_the_cluster_secret_are_refused() {
    let dir = secrets_dir("cluster-secret");
    let secret = write(&dir, "cluster-secret", &format!("{CLUSTER_SECRET}\n"));
    let cluster = TestCluster::start_configured(3, 8, &["--cluster-secret-file", &secret]).await;
    cluster
        .set_until_acknowledged(&[0, 1, 2], "k", &json!("v"), Duration::from_secs(30))
        .await;
    assert_eq!(
        cluster
            .get_settled(2, "k", "linearizable", Duration::from_secs(30))
            .await,
        Some(json!("v")),
        "the cluster works with its secret"
    );

    let raft = cluster.nodes[1].raft.clone().unwrap();
    let client = http();
    let vote = |secret: Option<&str>| {
        let mut request = client
            .post(format!("http://{raft}/raft/0/vote"))
            .header("content-type", "application/octet-stream")
            .body(vec![0u8; 16]);
        if let Some(secret) = secret {
            request = request.header(SECRET_HEADER, secret);
        }
        async move { request.send().await.unwrap() }
    };
    let without = vote(None).await;
    assert_eq!(without.status(), StatusCode::UNAUTHORIZED);
    assert!(without.text().await.unwrap().contains("cluster secret"));
    assert_eq!(
        vote(Some("cluster-secret-0123456789abcdeX")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // With the secret the message reaches Raft (and is refused there as garbage).
    assert_ne!(
        vote(Some(CLUSTER_SECRET)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let identity = client
        .get(format!("http://{raft}/raft/identity"))
        .send()
        .await
        .unwrap();
    assert_eq!(identity.status(), StatusCode::UNAUTHORIZED);

    // The stream every group's messages share opens only with the secret.
    let open_stream = |secret: Option<&str>| {
        let raft = raft.clone();
        let secret = secret.map(str::to_owned);
        async move {
            let mut stream = TcpStream::connect(&raft).await.unwrap();
            let mut head = String::from(
                "GET /raft/stream HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n\
                 upgrade: dcache-raft/1\r\n",
            );
            if let Some(secret) = secret {
                head.push_str(&format!("{SECRET_HEADER}: {secret}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut answer = vec![0; 12];
            stream.read_exact(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    assert_eq!(open_stream(None).await, "HTTP/1.1 401");
    assert_eq!(open_stream(Some(CLUSTER_SECRET)).await, "HTTP/1.1 101");
    assert!(rejected(&client, &cluster.nodes[1].base, "cluster_secret").await >= 4);
}

/// A CA and certificates it signs for loopback, as cert-manager would lay them out.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "dcache test CA");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        Self {
            ca: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// Writes `tls.crt`, `tls.key` and `ca.crt` into `dir`; returns the certificate.
    fn issue(&self, dir: &Path, name: &str) -> Vec<u8> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        write(dir, "ca.crt", &self.ca.pem());
        write(dir, "tls.key", &key.serialize_pem());
        write(dir, "tls.crt", &cert.pem());
        cert.der().to_vec()
    }

    fn tls_args(dir: &Path) -> Vec<String> {
        let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        vec![
            "--tls-cert-file".into(),
            file("tls.crt"),
            "--tls-key-file".into(),
            file("tls.key"),
            "--tls-ca-file".into(),
            file("ca.crt"),
        ]
    }

    fn https_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap())
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap()
    }
}

/// The certificate a new TLS connection to `addr` is served.
async fn served_certificate(pki: &Pki, addr: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let stream = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .expect("TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = secrets_dir("cert-reload");
    let pki = Pki::new();
    let first = pki.issue(&dir, "first");
    let mut args = Pki::tls_args(&dir);
    args.extend(["--secret-reload-interval".into(), "200ms".into()]);
    let node = NodeProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(served_certificate(&pki, &node.api).await, first);
    let health = pki
        .https_client()
        .get(format!("https://{}/health", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let second = pki.issue(&dir, "second");
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(30);
    while served_certificate(&pki, &node.api).await != second {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_cluster_over_tls_with_tokens_and_a_secret_serves_clients_over_https() {
    let dir = secrets_dir("tls-cluster");
    let pki = Pki::new();
    pki.issue(&dir, "node");
    let tokens = tokens_file(&dir);
    let secret = write(&dir, "cluster-secret", CLUSTER_SECRET);
    let mut extra = Pki::tls_args(&dir);
    extra.extend([
        "--tokens-file".into(),
        tokens,
        "--cluster-secret-file".into(),
        secret,
    ]);
    let nodes: Vec<NodeProcess> = (0..3)
        .map(|i| TestCluster::start_node_at(i, 8, ["127.0.0.1:0"; 3], &extra))
        .collect();
    let client = pki.https_client();
    let url = |i: usize, path: &str| format!("https://{}{path}", nodes[i].api);
    let members: Vec<Value> = nodes
        .iter()
        .map(|n| json!({"name": n.name, "api_addr": n.api, "raft_addr": n.raft}))
        .collect();
    let body = json!({"cluster_id": "tls", "members": members});
    let anonymous = client
        .post(url(0, "/cluster/init"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let init = client
        .post(url(0, "/cluster/init"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 200, "{}", init.text().await.unwrap());

    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..3 {
        while !client
            .get(url(i, "/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "node {i} never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every node takes writes and reads, forwarding to partition leaders over TLS
    // with the caller's token.
    for i in 0..12 {
        let key = format!("key-{i}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let set = client
                .put(url(i % 3, &format!("/cache/{key}")))
                .bearer_auth(WRITER)
                .json(&json!({"value": i}))
                .send()
                .await
                .unwrap();
            if set.status() == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{key}: {}",
                set.text().await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for i in 0..12 {
        let read = client
            .get(url((i + 1) % 3, &format!("/cache/key-{i}")))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200);
        assert_eq!(read.json::<Value>().await.unwrap()["value"], i);
    }
    let forbidden = client
        .put(url(1, "/cache/key-0"))
        .bearer_auth(READER)
        .json(&json!({"value": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);

    // Plain HTTP, or HTTPS without the cluster's CA, gets nowhere.
    let plain = http()
        .get(format!("http://{}/health", nodes[0].api))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
    let untrusting = reqwest::Client::builder().build().unwrap();
    assert!(untrusting.get(url(0, "/health")).send().await.is_err());
    let raft = nodes[0].raft.clone().unwrap();
    let raft_plain = http()
        .get(format!("http://{raft}/raft/identity"))
        .send()
        .await;
    assert!(raft_plain.is_err() || raft_plain.is_ok_and(|r| r.status() != 200));
    let raft_anonymous = client
        .get(format!("https://{raft}/raft/identity"))
        .send()
        .await
        .unwrap();
    assert_eq!(raft_anonymous.status(), StatusCode::UNAUTHORIZED);
}
