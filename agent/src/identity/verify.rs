//! Peer certificate checks for both ends of a tunnel: the chain leads to our trust bundle through
//! at most [`MAX_INTERMEDIATES`] CAs, every certificate is valid now, the leaf is allowed for its
//! side (extended key usage, and a key usage that allows signing), and it names exactly one
//! SPIFFE ID in our trust domain. A client also checks that the server is the identity it meant
//! to reach (secure naming). Every refusal says which of these failed, for the flow's `reason`.
use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use webpki::{EndEntityCert, KeyUsage, VerifiedPath};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer as _};

use super::spiffe::SpiffeId;

/// Intermediate CAs accepted between a peer's certificate and a trusted root. Istio's plug-in CAs
/// use one or two (root → cluster intermediate); webpki itself stops at six. A chain may also
/// carry the root itself (Istio's `cert-chain.pem` does), so one more certificate is accepted on
/// the wire than in the path.
pub const MAX_INTERMEDIATES: usize = 4;

/// Which end of the tunnel a peer certificate is presented by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRole {
    /// The peer is the server: its certificate needs the serverAuth purpose.
    Server,
    /// The peer is the client: its certificate needs the clientAuth purpose.
    Client,
}

impl PeerRole {
    fn key_usage(self) -> KeyUsage {
        match self {
            PeerRole::Server => KeyUsage::server_auth(),
            PeerRole::Client => KeyUsage::client_auth(),
        }
    }

    fn purpose(self) -> &'static str {
        match self {
            PeerRole::Server => "serverAuth",
            PeerRole::Client => "clientAuth",
        }
    }
}

/// Why a peer certificate was refused; becomes a flow's `reason`.
#[derive(Debug, thiserror::Error)]
pub enum PeerCertError {
    #[error("peer identity {got} is not the expected {expected} (secure naming)")]
    WrongIdentity { expected: String, got: String },
    #[error(
        "trust domain {peer_domain} is not trusted: peer identity {got} is outside trust domain {trust_domain}"
    )]
    WrongTrustDomain { trust_domain: String, peer_domain: String, got: String },
    #[error("peer certificate has no SPIFFE ID ({0})")]
    NoSpiffeId(String),
    #[error("peer certificate is unreadable: {0}")]
    Malformed(String),
    #[error(
        "peer certificate is not allowed for TLS {role} authentication: it lacks the {required} extended key usage (has: {presented})"
    )]
    WrongPurpose { role: &'static str, required: &'static str, presented: String },
    #[error(
        "peer certificate's key usage lacks digitalSignature (has: {presented}): its key may not sign a TLS handshake"
    )]
    NoDigitalSignature { presented: String },
    #[error(
        "peer certificate chain: issuer {subject} is not a CA certificate (basicConstraints CA:FALSE or missing)"
    )]
    IssuerNotCa { subject: String },
    #[error("peer certificate is a CA certificate, not a workload certificate")]
    CaAsLeaf,
    #[error(
        "peer certificate chain too long: {detail}; at most {MAX_INTERMEDIATES} intermediate CAs are accepted"
    )]
    ChainTooLong { detail: String },
    #[error("peer certificate chain: CA certificate {subject} expired at {not_after}")]
    CaExpired { subject: String, not_after: String },
    #[error("peer certificate chain: CA certificate {subject} not valid yet: valid from {not_before}")]
    CaNotValidYet { subject: String, not_before: String },
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

    /// Checks the chain of a peer in `role` at `now`; returns the leaf's SPIFFE ID.
    pub(super) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        role: PeerRole,
    ) -> Result<SpiffeId, Error> {
        // Cheap refusal before any signature work: the path cannot be short enough.
        if intermediates.len() > MAX_INTERMEDIATES + 1 {
            return Err(other(PeerCertError::ChainTooLong {
                detail: format!("{} CA certificates presented", intermediates.len()),
            }));
        }
        let cert =
            EndEntityCert::try_from(end_entity).map_err(|e| explain(e, end_entity, intermediates, role))?;
        let short_enough = |path: &VerifiedPath<'_>| {
            if path.intermediate_certificates().count() > MAX_INTERMEDIATES {
                return Err(webpki::Error::MaximumPathDepthExceeded);
            }
            Ok(())
        };
        cert.verify_for_usage(
            self.algorithms.all,
            &self.anchors,
            intermediates,
            now,
            role.key_usage(),
            None,
            Some(&short_enough),
        )
        .map_err(|e| explain(e, end_entity, intermediates, role))?;
        let (_, leaf) = X509Certificate::from_der(end_entity)
            .map_err(|e| other(PeerCertError::Malformed(e.to_string())))?;
        // webpki ignores the key usage extension; a key not meant for signatures must not sign
        // the handshake (RFC 5280 4.2.1.3).
        match leaf.key_usage() {
            Ok(Some(usage)) if !usage.value.digital_signature() => {
                return Err(other(PeerCertError::NoDigitalSignature { presented: usage.value.to_string() }));
            }
            Ok(_) => {}
            Err(e) => return Err(other(PeerCertError::Malformed(format!("key usage: {e}")))),
        }
        let id = spiffe_id_in(&leaf).map_err(other)?;
        if id.trust_domain != self.trust_domain {
            return Err(other(PeerCertError::WrongTrustDomain {
                trust_domain: self.trust_domain.clone(),
                peer_domain: id.trust_domain.clone(),
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
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PeerCertError::Malformed(e.to_string()))?;
    spiffe_id_in(&cert)
}

fn spiffe_id_in(cert: &X509Certificate<'_>) -> Result<SpiffeId, PeerCertError> {
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

/// A webpki refusal as a rustls error, saying which certificate of the chain failed and why
/// where webpki alone would not (an expired CA reads like an expired leaf otherwise).
fn explain(
    e: webpki::Error,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    role: PeerRole,
) -> Error {
    use webpki::Error as W;
    let leaf = X509Certificate::from_der(end_entity).ok().map(|(_, c)| c);
    let cas = || intermediates.iter().filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c));
    let kind = match e {
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertExpired { time, not_after } => {
            let leaf_expired = leaf.as_ref().is_none_or(|l| l.validity().not_after.timestamp() < unix(time));
            let ca = cas().find(|c| c.validity().not_after.timestamp() < unix(time));
            match ca {
                Some(ca) if !leaf_expired => {
                    return other(PeerCertError::CaExpired {
                        subject: ca.subject().to_string(),
                        not_after: rfc3339(ca.validity().not_after.timestamp()),
                    });
                }
                _ => CertificateError::ExpiredContext { time, not_after },
            }
        }
        W::CertNotValidYet { time, not_before } => {
            let leaf_early = leaf.as_ref().is_none_or(|l| l.validity().not_before.timestamp() > unix(time));
            let ca = cas().find(|c| c.validity().not_before.timestamp() > unix(time));
            match ca {
                Some(ca) if !leaf_early => {
                    return other(PeerCertError::CaNotValidYet {
                        subject: ca.subject().to_string(),
                        not_before: rfc3339(ca.validity().not_before.timestamp()),
                    });
                }
                _ => CertificateError::NotValidYetContext { time, not_before },
            }
        }
        W::RequiredEkuNotFoundContext(_) | W::EmptyEkuExtension => {
            let presented = match leaf.as_ref().map(|l| l.extended_key_usage()) {
                Some(Ok(Some(eku))) => eku_names(eku.value),
                Some(Ok(None)) => "none".into(),
                _ => "unreadable".into(),
            };
            return other(PeerCertError::WrongPurpose {
                role: match role {
                    PeerRole::Server => "server",
                    PeerRole::Client => "client",
                },
                required: role.purpose(),
                presented,
            });
        }
        W::EndEntityUsedAsCa => {
            let issuer = leaf.as_ref().map(|l| l.issuer().to_string());
            let subject = cas()
                .find(|c| !c.is_ca() && issuer.as_deref().is_none_or(|i| c.subject().to_string() == i))
                .map(|c| c.subject().to_string())
                .or(issuer)
                .unwrap_or_else(|| "?".into());
            return other(PeerCertError::IssuerNotCa { subject });
        }
        W::CaUsedAsEndEntity => return other(PeerCertError::CaAsLeaf),
        W::MaximumPathDepthExceeded | W::PathLenConstraintViolated => {
            let detail = if matches!(e, W::PathLenConstraintViolated) {
                "a CA's path length constraint is exceeded".to_string()
            } else {
                format!("no path to a trusted root through at most {MAX_INTERMEDIATES} intermediate CAs")
            };
            return other(PeerCertError::ChainTooLong { detail });
        }
        W::CertRevoked => CertificateError::Revoked,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::BadDer | W::BadDerTime => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    Error::InvalidCertificate(kind)
}

fn unix(time: UnixTime) -> i64 {
    i64::try_from(time.as_secs()).unwrap_or(i64::MAX)
}

/// A Unix time as RFC 3339 (UTC), for reasons.
pub(crate) fn rfc3339(unix_seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("@{unix_seconds}"))
}

fn eku_names(eku: &x509_parser::extensions::ExtendedKeyUsage<'_>) -> String {
    let mut names: Vec<String> = [
        (eku.any, "anyExtendedKeyUsage"),
        (eku.server_auth, "serverAuth"),
        (eku.client_auth, "clientAuth"),
        (eku.code_signing, "codeSigning"),
        (eku.email_protection, "emailProtection"),
        (eku.time_stamping, "timeStamping"),
        (eku.ocsp_signing, "OCSPSigning"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, name)| name.to_string())
    .collect();
    names.extend(eku.other.iter().map(|oid| oid.to_id_string()));
    if names.is_empty() { "none".into() } else { names.join(", ") }
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
        let id = self.trust.verify(end_entity, intermediates, now, PeerRole::Server)?;
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
        self.trust.verify(end_entity, intermediates, now, PeerRole::Client)?;
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

#[cfg(test)]
mod tests;
