//! A hostile HBONE client for the malicious-calls tests: HTTP/2 CONNECT over TLS 1.3 with a
//! client certificate the test chooses (a valid mesh certificate stolen by a pod outside the
//! mesh, say), from inside any namespace, naming any authority. It does not check who the server
//! is: it is the attacker, not the engine.
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, aws_lc_rs},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
};

/// What the engine answered to one CONNECT.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The CONNECT's status; with 200, what the app answered to a `GET /` sent through.
    Status(u16, Option<String>),
    /// The TLS handshake or HTTP/2 failed.
    Failed(String),
}

#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends `method` with `authority` to the HBONE port at `server` from inside `ns`, presenting
/// the chain in `cert_pem` (leaf first) with `key_pem`.
pub fn call(
    ns: &Path,
    server: SocketAddr,
    cert_pem: &Path,
    key_pem: &Path,
    method: &str,
    authority: &str,
) -> anyhow::Result<Answer> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .with_context(|| format!("reading {}", cert_pem.display()))?
        .collect::<Result<_, _>>()?;
    let key =
        PrivateKeyDer::from_pem_file(key_pem).with_context(|| format!("reading {}", key_pem.display()))?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let (method, authority) = (method.to_string(), authority.to_string());
    crate::netns::run_in(ns, move || -> anyhow::Result<Answer> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let call = exchange(config, server, method, authority);
            tokio::time::timeout(Duration::from_secs(5), call).await.context("no answer in 5 s")?
        })
    })?
}

async fn exchange(
    config: rustls::ClientConfig,
    server: SocketAddr,
    method: String,
    authority: String,
) -> anyhow::Result<Answer> {
    let tcp = tokio::net::TcpStream::connect(server).await.with_context(|| format!("connecting {server}"))?;
    let name = ServerName::IpAddress(server.ip().into());
    let tls = match tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return Ok(Answer::Failed(format!("TLS: {e}"))),
    };
    let (mut client, connection) = match h2::client::handshake(tls).await {
        Ok(pair) => pair,
        Err(e) => return Ok(Answer::Failed(format!("HTTP/2: {e}"))),
    };
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method.as_str())
        .uri(if method == "CONNECT" { authority.clone() } else { format!("https://{authority}/") })
        .body(())?;
    let (response, mut send) = match client.send_request(request, false) {
        Ok(pair) => pair,
        Err(e) => return Ok(Answer::Failed(format!("HTTP/2: {e}"))),
    };
    let response = match response.await {
        Ok(r) => r,
        Err(e) => return Ok(Answer::Failed(format!("HTTP/2: {e}"))),
    };
    let status = response.status().as_u16();
    if status != 200 {
        return Ok(Answer::Status(status, None));
    }
    // Through the tunnel: one request to the app, its answer back.
    send.send_data(
        bytes::Bytes::from_static(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        true,
    )?;
    let mut body = response.into_body();
    let mut answer = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        answer.extend_from_slice(&chunk);
    }
    if answer.is_empty() {
        bail!("the tunnel closed without an answer");
    }
    Ok(Answer::Status(status, Some(String::from_utf8_lossy(&answer).into_owned())))
}
