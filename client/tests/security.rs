//! The client against a node with API tokens and TLS: the token and the cluster's CA
//! are all it needs; without them the node refuses it.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dcache_client::{Client, Error};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

const TOKEN: &str = "client-test-token-0123456789";

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a CA and a loopback certificate it signs; returns the CA's PEM.
fn write_certificates(dir: &Path) -> String {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    ca.pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_and_the_ca_reach_a_node_with_auth_and_tls() {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("client-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = write_certificates(&dir);
    std::fs::write(dir.join("tokens"), format!("{TOKEN} read,write\n")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let _node = Node(
        Command::new(support::node_binary())
            .args(["--listen", &addr, "--tokens-file", &path("tokens")])
            .args([
                "--tls-cert-file",
                &path("tls.crt"),
                "--tls-key-file",
                &path("tls.key"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let client = Client::builder([format!("https://{addr}")])
        .token(TOKEN)
        .ca_certificate_pem(ca.as_bytes())
        .deadline(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    client.set("k", &1, None).await.unwrap();
    assert_eq!(client.get::<u32>("k").await.unwrap(), Some(1));

    let anonymous = Client::builder([addr.clone()])
        .ca_certificate_pem(ca.as_bytes())
        .routing(dcache_client::Routing::FirstNode)
        .build()
        .unwrap();
    match anonymous.get::<u32>("k").await {
        Err(Error::Refused {
            status: 401,
            message,
        }) => {
            assert!(message.contains("bearer token"), "{message}")
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    let untrusting = Client::builder([format!("https://{addr}")])
        .token(TOKEN)
        .routing(dcache_client::Routing::FirstNode)
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(matches!(
        untrusting.get::<u32>("k").await,
        Err(Error::Unavailable { .. })
    ));
    assert!(matches!(
        Client::builder([addr])
            .ca_certificate_pem("not a certificate")
            .build(),
        Err(Error::Security(_))
    ));
}
