//! The agent's side of `lockmesh ca serve` (protocol in `crate::identity::protocol`): a fresh
//! key and CSR per certificate (the key never leaves the node), sent over TLS to the CA service
//! with the agent's projected ServiceAccount token, re-read for every request because the
//! kubelet rotates it. What comes back is checked before use.
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData as _, SanType};
use rustls::{
    ClientConfig, RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use x509_parser::prelude::FromDer as _;

use super::{
    ca::{self, SignedLeaf},
    verify::{PeerRole, Trust},
};
use crate::identity::protocol::{ErrorResponse, SIGN_PATH, SignRequest, SignResponse};

/// Connecting, the TLS handshake, and the answer together.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Chains are a few KiB.
const MAX_RESPONSE_BYTES: usize = 256 << 10;

#[derive(Clone, Debug)]
pub struct RemoteCaOptions {
    /// `https://host:port`, e.g. `https://lockmesh-ca.lockmesh-system.svc:15012`.
    pub url: String,
    /// PEM root(s) the CA service's certificate and the workload chains lead to.
    pub root: PathBuf,
    /// The projected ServiceAccount token (audience of the CA service).
    pub token: PathBuf,
}

/// The CA service answered with an error status.
#[derive(Debug, thiserror::Error)]
#[error("the CA at {url} refused: {status}: {message}")]
pub(crate) struct Refused {
    pub url: String,
    pub status: StatusCode,
    pub message: String,
}

pub(crate) struct RemoteCa {
    url: String,
    host: String,
    port: u16,
    /// `host:port` for the Host header.
    authority: String,
    path: String,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    token: PathBuf,
    trust: Trust,
    pub roots: Vec<CertificateDer<'static>>,
    pub source: String,
}

impl RemoteCa {
    pub(crate) fn new(
        options: &RemoteCaOptions,
        trust_domain: &str,
        provider: Arc<CryptoProvider>,
    ) -> anyhow::Result<Self> {
        let url = options.url.clone();
        let uri: Uri = url.parse().with_context(|| format!("--ca-url {url:?}: not a URL"))?;
        anyhow::ensure!(uri.scheme_str() == Some("https"), "--ca-url {url:?}: must be https://HOST[:PORT]");
        let host = uri.host().with_context(|| format!("--ca-url {url:?}: no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("--ca-url {url:?}: {host:?} is not a DNS name or IP address"))?;
        let port = uri.port_u16().unwrap_or(443);
        let authority = uri.authority().map_or_else(|| host.clone(), |a| a.to_string());
        let path = format!("{}{SIGN_PATH}", uri.path().trim_end_matches('/'));

        let pem = std::fs::read(&options.root)
            .with_context(|| format!("--ca-root: reading {}", options.root.display()))?;
        let roots = ca::certificates(&pem, &options.root)?;
        anyhow::ensure!(!roots.is_empty(), "--ca-root {}: no certificate", options.root.display());
        let mut store = RootCertStore::empty();
        for root in &roots {
            store
                .add(root.clone())
                .with_context(|| format!("--ca-root {}: unusable root", options.root.display()))?;
        }
        let trust = Trust::new(&roots, trust_domain, provider.signature_verification_algorithms)?;
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with our provider")?
            .with_root_certificates(store)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Fail at start, not at the first pod, when the token volume is missing.
        std::fs::metadata(&options.token)
            .with_context(|| format!("--ca-token: {}", options.token.display()))?;
        Ok(Self {
            source: format!("CA service {url}"),
            url,
            host,
            port,
            authority,
            path,
            server_name,
            tls: Arc::new(tls),
            token: options.token.clone(),
            trust,
            roots,
        })
    }

    /// A certificate for `identity` with a key made here; the CA service caps `ttl`.
    pub(crate) async fn issue(&self, identity: &str, ttl: Duration) -> anyhow::Result<SignedLeaf> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a leaf key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(identity.try_into().with_context(|| format!("{identity:?} as a URI SAN"))?)];
        let csr = params.serialize_request(&key).and_then(|csr| csr.pem()).context("writing the CSR")?;
        let chain = self.sign_csr(&csr, ttl).await.with_context(|| format!("certificate for {identity}"))?;
        let (not_after, serial) = self.check(&chain, identity, &key.subject_public_key_info())?;
        tracing::debug!(%identity, %serial, "signed by the CA service");
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| anyhow::anyhow!("leaf key encoding: {e}"))?;
        Ok(SignedLeaf { chain, key, serial, not_after })
    }

    /// Sends `csr_pem` to the CA service; returns the chain it signed (leaf first).
    pub(crate) async fn sign_csr(
        &self,
        csr_pem: &str,
        ttl: Duration,
    ) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let token = tokio::fs::read_to_string(&self.token)
            .await
            .with_context(|| format!("reading the ServiceAccount token {}", self.token.display()))?;
        let request = SignRequest { csr: csr_pem.to_string(), ttl_seconds: Some(ttl.as_secs().max(1)) };
        let body = serde_json::to_vec(&request).context("encoding the signing request")?;
        let (status, body) =
            tokio::time::timeout(REQUEST_TIMEOUT, self.post(token.trim(), body)).await.map_err(|_| {
                anyhow::anyhow!("the CA at {} did not answer within {REQUEST_TIMEOUT:?}", self.url)
            })??;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorResponse>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(Refused { url: self.url.clone(), status, message }.into());
        }
        let answer: SignResponse =
            serde_json::from_slice(&body).with_context(|| format!("the answer of the CA at {}", self.url))?;
        let chain = CertificateDer::pem_slice_iter(answer.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("the CA at {} sent a bad PEM chain", self.url))?;
        anyhow::ensure!(!chain.is_empty(), "the CA at {} sent no certificate", self.url);
        Ok(chain)
    }

    async fn post(&self, token: &str, body: Vec<u8>) -> anyhow::Result<(StatusCode, Bytes)> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connecting to the CA at {}", self.url))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .with_context(|| format!("TLS handshake with the CA at {}", self.url))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .with_context(|| format!("HTTP with the CA at {}", self.url))?;
        // Drives the connection; ends with it.
        tokio::spawn(connection);
        let request = Request::post(self.path.as_str())
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .context("building the signing request")?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("sending the CSR to the CA at {}", self.url))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer of the CA at {}: {e}", self.url))?
            .to_bytes();
        Ok((status, body))
    }

    /// The chain leads to our roots, names exactly `identity`, and certifies our key.
    fn check(
        &self,
        chain: &[CertificateDer<'static>],
        identity: &str,
        public_key: &[u8],
    ) -> anyhow::Result<(OffsetDateTime, String)> {
        let Some((leaf, intermediates)) = chain.split_first() else { anyhow::bail!("empty chain") };
        let now = UnixTime::now();
        for role in [PeerRole::Client, PeerRole::Server] {
            let got = self
                .trust
                .verify(leaf, intermediates, now, role)
                .map_err(|e| anyhow::anyhow!("the certificate from {} does not verify: {e}", self.url))?;
            anyhow::ensure!(
                got.to_string() == identity,
                "the CA at {} signed {got}, not {identity}",
                self.url
            );
        }
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
            .map_err(|e| anyhow::anyhow!("the certificate from {} is unreadable: {e}", self.url))?;
        anyhow::ensure!(cert.public_key().raw == public_key, "the CA at {} certified another key", self.url);
        let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
            .context("certificate expiry")?;
        Ok((not_after, ca::hex(cert.raw_serial())))
    }
}
