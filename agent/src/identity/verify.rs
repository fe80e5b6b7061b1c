//! Peer certificate checks for both ends of a tunnel: the chain leads to our trust bundle, the
//! leaf is valid now and allowed for its side, and it names exactly one SPIFFE ID in our trust
//! domain. A client also checks that the server is the identity it meant to reach (secure naming).
use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::{extensions::GeneralName, prelude::FromDer as _};

use super::spiffe::SpiffeId;

/// Why a peer certificate was refused; becomes a flow's `reason`.
#[derive(Debug, thiserror::Error)]
pub enum PeerCertError {
    #[error("peer identity {got} is not the expected {expected} (secure naming)")]
    WrongIdentity { expected: String, got: String },
    #[error("peer identity {got} is outside trust domain {trust_domain}")]
    WrongTrustDomain { trust_domain: String, got: String },
    #[error("peer certificate has no SPIFFE ID ({0})")]
    NoSpiffeId(String),
    #[error("peer certificate is unreadable: {0}")]
    Malformed(String),
}

/// What both verifiers share: the trust bundle and the accepted signature algorithms.
#[derive(Debug)]
pub struct Trust {
    anchors: Vec<TrustAnchor<'static>>,
    trust_domain: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Trust {
    pub fn new(
        roots: &[CertificateDer<'static>],
        trust_domain: &str,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> anyhow::Result<Self> {
        let anchors = roots
            .iter()
            .map(|der| webpki::anchor_from_trusted_cert(der).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("trust bundle: {e}"))?;
        Ok(Self { anchors, trust_domain: trust_domain.to_string(), algorithms })
    }

    /// Checks the chain for `usage` at `now`; returns the leaf's SPIFFE ID.
    pub(super) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<SpiffeId, Error> {
        let cert = EndEntityCert::try_from(end_entity).map_err(webpki_error)?;
        cert.verify_for_usage(self.algorithms.all, &self.anchors, intermediates, now, usage, None, None)
            .map_err(webpki_error)?;
        let id = spiffe_id_of(end_entity).map_err(other)?;
        if id.trust_domain != self.trust_domain {
            return Err(other(PeerCertError::WrongTrustDomain {
                trust_domain: self.trust_domain.clone(),
                got: id.to_string(),
            }));
        }
        Ok(id)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The single SPIFFE URI SAN of a certificate.
pub fn spiffe_id_of(der: &CertificateDer<'_>) -> Result<SpiffeId, PeerCertError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| PeerCertError::Malformed(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PeerCertError::Malformed(e.to_string()))?
        .ok_or_else(|| PeerCertError::NoSpiffeId("no subjectAltName".into()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => SpiffeId::parse(uri).map_err(|e| PeerCertError::NoSpiffeId(e.to_string())),
        [] => Err(PeerCertError::NoSpiffeId("no URI SAN".into())),
        _ => Err(PeerCertError::NoSpiffeId(format!("{} URI SANs, SPIFFE allows one", uris.len()))),
    }
}

fn other(e: PeerCertError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn webpki_error(e: webpki::Error) -> Error {
    use webpki::Error as W;
    let kind = match e {
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::CertRevoked => CertificateError::Revoked,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::BadDer | W::BadDerTime => CertificateError::BadEncoding,
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    Error::InvalidCertificate(kind)
}

/// Client side: the server must chain to our roots and be exactly `expected`.
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    pub trust: Arc<Trust>,
    pub expected: String,
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let id = self.trust.verify(end_entity, intermediates, now, KeyUsage::server_auth())?;
        if id.to_string() != self.expected {
            return Err(other(PeerCertError::WrongIdentity {
                expected: self.expected.clone(),
                got: id.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.schemes()
    }
}

/// Server side: a client certificate is mandatory and must chain to our roots; which identities
/// may talk to a workload is policy, decided after the handshake.
#[derive(Debug)]
pub struct ClientIdentityVerifier {
    pub trust: Arc<Trust>,
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.trust.verify(end_entity, intermediates, now, KeyUsage::client_auth())?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.schemes()
    }
}
