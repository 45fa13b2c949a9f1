//! TLS with rustls (ring provider) for the client API, Raft, and the node's own calls to
//! its peers, from cert-manager style files (`tls.crt`, `tls.key`, `ca.crt`).
//!
//! Both the served certificate and the trusted CA are re-read when their files change
//! (see [`crate::reloading`]): every new handshake uses what the files hold now, so a
//! renewed certificate is served without a restart.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::reloading::Reloading;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves the certificate and key its files hold now.
pub struct ReloadingCert {
    current: Reloading<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    pub fn load(cert: PathBuf, key: PathBuf, every: Duration) -> Result<Self, String> {
        let provider = provider();
        let current = Reloading::load("TLS certificate", vec![cert, key], every, move |files| {
            let [(cert_path, cert), (key_path, key)] = files else {
                unreachable!("two files were given");
            };
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: not a PEM certificate: {e}", cert_path.display()))?;
            if chain.is_empty() {
                return Err(format!("{}: no certificate in it", cert_path.display()));
            }
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("{}: not a PEM private key: {e}", key_path.display()))?;
            CertifiedKey::from_der(chain, key, &provider)
                .map(Arc::new)
                .map_err(|e| {
                    format!(
                        "{} and {} do not make a usable pair: {e}",
                        cert_path.display(),
                        key_path.display()
                    )
                })
        })?;
        Ok(Self { current })
    }
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReloadingCert")
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.get()))
    }
}

/// The server side: HTTP/1.1 over TLS with the certificate of `cert`.
pub fn server_config(cert: ReloadingCert) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(cert));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Verifies servers against the CA certificates its file holds now.
struct ReloadingVerifier {
    current: Reloading<Arc<WebPkiServerVerifier>>,
}

impl fmt::Debug for ReloadingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReloadingVerifier")
    }
}

impl ServerCertVerifier for ReloadingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current.get().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .get()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .get()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.get().supported_verify_schemes()
    }
}

/// The client side: trusts exactly the CA certificates in `ca`.
pub fn client_config(ca: PathBuf, every: Duration) -> Result<ClientConfig, String> {
    let provider = provider();
    let verifier_provider = provider.clone();
    let current = Reloading::load("TLS CA", vec![ca], every, move |files| {
        let (path, pem) = &files[0];
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert =
                cert.map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no CA certificate in it", path.display()));
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), verifier_provider.clone())
            .build()
            .map_err(|e| format!("{}: {e}", path.display()))
    })?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ReloadingVerifier { current }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
