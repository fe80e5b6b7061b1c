//! `lockmesh ca serve`: the cluster's CA as a service, so that agents never hold the CA key.
//! Agents send a CSR over HTTPS with their projected ServiceAccount token (`protocol`); the
//! server signs only identities of pods scheduled on the caller's node (`authorize`), and sets
//! SAN, lifetime and usages itself. Its own serving certificate comes from the CA it holds.
mod authorize;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateSigningRequestParams, KeyPair, SanType};
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use self::authorize::{Authorizer, Refusal};
use crate::identity::{
    self,
    ca::Ca,
    protocol::{ErrorResponse, SIGN_PATH, SignRequest, SignResponse},
    spiffe::SpiffeId,
};

/// A CSR and its JSON wrapping are a few KiB.
const MAX_REQUEST_BYTES: usize = 64 << 10;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection (keep-alive included) is closed after this long.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Lifetime of the service's own certificate; renewed at half of it.
const SERVING_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Clone, Debug)]
pub(crate) struct CaServiceOptions {
    pub trust_domain: String,
    /// A plug-in CA in Istio's `cacerts` layout; without one, a self-signed root in `state_dir`.
    pub ca_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Longest workload certificate lifetime; requests for more get this.
    pub max_cert_ttl: Duration,
    /// DNS names and IP addresses in the service's own certificate (what agents dial).
    pub serving_names: Vec<String>,
    /// Audience the agents' tokens must be for.
    pub audience: String,
    /// The only user allowed to ask (the agents' service account).
    pub agent_user: String,
}

pub(crate) struct CaService {
    ca: Ca,
    authorizer: Authorizer,
    trust_domain: String,
    max_ttl: Duration,
}

/// What a request established so far, for the log line of its outcome.
#[derive(Default)]
struct Outcome {
    caller: Option<String>,
    node: Option<String>,
    identity: Option<String>,
}

/// Serves on `listener` until an error stops accepting; `client` reaches the API server.
pub(crate) async fn serve(
    listener: TcpListener,
    options: &CaServiceOptions,
    client: kube::Client,
) -> anyhow::Result<()> {
    let ca = Ca::load(options.ca_dir.as_deref(), &options.state_dir, &options.trust_domain)?;
    let provider = Arc::new(identity::provider(false));
    let serving = Arc::new(ServingCert::issue(&ca, &options.serving_names, &provider)?);
    let mut tls = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with our provider")?
        .with_no_client_auth()
        .with_cert_resolver(serving.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let service = Arc::new(CaService {
        authorizer: Authorizer::new(client, &options.audience, &options.agent_user),
        trust_domain: options.trust_domain.clone(),
        max_ttl: options.max_cert_ttl,
        ca,
    });
    tracing::info!(
        addr = %listener.local_addr().context("listener address")?,
        ca = %service.ca.source,
        names = ?options.serving_names,
        audience = %options.audience,
        agent = %options.agent_user,
        max_ttl = ?options.max_cert_ttl,
        "CA service ready"
    );
    let renewal =
        tokio::spawn(renew_serving_cert(service.clone(), serving, options.serving_names.clone(), provider));
    let result = accept_loop(listener, acceptor, service).await;
    renewal.abort();
    result
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    service: Arc<CaService>,
) -> anyhow::Result<()> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: keep serving once it passes.
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, service) = (acceptor.clone(), service.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let handler = service_fn(move |request| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(service.handle(request, peer).await) }
            });
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), handler);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended"),
                Err(_) => tracing::debug!(%peer, "connection closed after {CONNECTION_TIMEOUT:?}"),
                Ok(Ok(())) => {}
            }
        });
    }
}

impl CaService {
    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        if request.uri().path() != SIGN_PATH {
            return json(
                StatusCode::NOT_FOUND,
                &ErrorResponse { error: format!("only {SIGN_PATH} is served") },
            );
        }
        if request.method() != Method::POST {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &ErrorResponse { error: format!("{SIGN_PATH} takes POST") },
            );
        }
        let mut outcome = Outcome::default();
        match self.sign(request, &mut outcome).await {
            Ok(cert_chain_pem) => json(StatusCode::OK, &SignResponse { cert_chain_pem }),
            Err(refusal) => {
                tracing::warn!(
                    %peer,
                    caller = outcome.caller.as_deref().unwrap_or("-"),
                    node = outcome.node.as_deref().unwrap_or("-"),
                    identity = outcome.identity.as_deref().unwrap_or("-"),
                    status = refusal.status().as_u16(),
                    reason = %refusal,
                    "signing request refused"
                );
                json(refusal.status(), &ErrorResponse { error: refusal.to_string() })
            }
        }
    }

    async fn sign(&self, request: Request<Incoming>, outcome: &mut Outcome) -> Result<String, Refusal> {
        let token = bearer_token(request.headers())?.to_string();
        let body = Limited::new(request.into_body(), MAX_REQUEST_BYTES)
            .collect()
            .await
            .map_err(|e| {
                Refusal::BadRequest(format!(
                    "reading the request body (at most {MAX_REQUEST_BYTES} bytes): {e}"
                ))
            })?
            .to_bytes();
        let sign_request: SignRequest =
            serde_json::from_slice(&body).map_err(|e| Refusal::BadRequest(format!("request body: {e}")))?;
        let caller = self.authorizer.authenticate(&token).await?;
        outcome.caller = Some(caller.user.clone());
        outcome.node = Some(caller.node.clone());
        let (csr, identity) = self.requested_identity(&sign_request.csr)?;
        outcome.identity = Some(identity.to_string());
        let pod = self.authorizer.pod_running_as(&caller.node, &identity).await?;
        let ttl = match sign_request.ttl_seconds {
            Some(0) => return Err(Refusal::BadRequest("ttl_seconds must be positive".into())),
            Some(seconds) => Duration::from_secs(seconds).min(self.max_ttl),
            None => self.max_ttl,
        };
        let signed = self
            .ca
            .sign_workload(&csr.public_key, &identity.to_string(), ttl)
            .map_err(|e| Refusal::Internal(format!("{e:#}")))?;
        tracing::info!(
            caller = %caller.user,
            node = %caller.node,
            %identity,
            %pod,
            serial = %signed.serial,
            not_after = %signed.not_after,
            "certificate signed"
        );
        Ok(pem_chain(&signed.chain))
    }

    /// The CSR (signature checked by rcgen) and the one SPIFFE ID it may carry. Only its public
    /// key is used for the certificate; its other extensions are ignored.
    fn requested_identity(&self, pem: &str) -> Result<(CertificateSigningRequestParams, SpiffeId), Refusal> {
        let csr = CertificateSigningRequestParams::from_pem(pem)
            .map_err(|e| Refusal::BadRequest(format!("CSR: {e}")))?;
        let identity = match csr.params.subject_alt_names.as_slice() {
            [SanType::URI(uri)] => {
                SpiffeId::parse(uri.as_str()).map_err(|e| Refusal::BadRequest(format!("CSR: {e}")))?
            }
            sans => {
                return Err(Refusal::BadRequest(format!(
                    "CSR must carry exactly one SAN, a SPIFFE URI; it has {sans:?}"
                )));
            }
        };
        if identity.trust_domain != self.trust_domain {
            return Err(Refusal::BadRequest(format!(
                "CSR: {identity} is outside trust domain {}",
                self.trust_domain
            )));
        }
        Ok((csr, identity))
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, Refusal> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            Refusal::Unauthenticated("missing `Authorization: Bearer <ServiceAccount token>`".into())
        })
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

fn pem_chain(chain: &[CertificateDer<'_>]) -> String {
    let blocks: Vec<pem::Pem> = chain.iter().map(|der| pem::Pem::new("CERTIFICATE", der.to_vec())).collect();
    pem::encode_many(&blocks)
}

/// The service's own TLS certificate, swapped on renewal.
#[derive(Debug)]
struct ServingCert(ArcSwap<CertifiedKey>);

impl ServingCert {
    fn issue(ca: &Ca, names: &[String], provider: &CryptoProvider) -> anyhow::Result<Self> {
        Ok(Self(ArcSwap::from_pointee(serving_key(ca, names, provider)?)))
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

fn serving_key(ca: &Ca, names: &[String], provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating the serving key")?;
    let signed = ca.sign_server(&key, names, SERVING_CERT_TTL)?;
    let der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("serving key encoding: {e}"))?;
    let key = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| anyhow::anyhow!("loading the serving key: {e}"))?;
    Ok(CertifiedKey::new(signed.chain, key))
}

async fn renew_serving_cert(
    service: Arc<CaService>,
    serving: Arc<ServingCert>,
    names: Vec<String>,
    provider: Arc<CryptoProvider>,
) {
    let mut retry = Duration::from_secs(1);
    let mut wait = SERVING_CERT_TTL / 2;
    loop {
        tokio::time::sleep(wait).await;
        match serving_key(&service.ca, &names, &provider) {
            Ok(key) => {
                serving.0.store(Arc::new(key));
                tracing::info!(names = ?names, "serving certificate renewed");
                wait = SERVING_CERT_TTL / 2;
                retry = Duration::from_secs(1);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "renewing the serving certificate");
                wait = retry;
                retry = (retry * 2).min(Duration::from_secs(300));
            }
        }
    }
}

#[cfg(test)]
mod tests;
