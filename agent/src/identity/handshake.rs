//! What a handshake proved about the peer (for flow records), or why it failed: the flow's
//! `reason`, and the bounded label `lockmesh_handshake_failures_total` counts it under.
use rustls::CertificateError;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer as _;

use super::{ca, verify, verify::spiffe_id_of};

/// What the TLS handshake established.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: String,
    /// e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: String,
    /// Serial number (hex) of the peer's certificate.
    pub peer_serial: Option<String>,
    /// Expiry of the peer's certificate.
    #[serde(with = "time::serde::rfc3339::option")]
    pub peer_not_after: Option<OffsetDateTime>,
}

/// What a finished handshake proved about the peer.
pub struct PeerInfo {
    pub identity: Option<String>,
    pub version: String,
    pub cipher: String,
    pub serial: Option<String>,
    pub not_after: Option<OffsetDateTime>,
}

impl PeerInfo {
    pub fn tls_info(&self) -> TlsInfo {
        TlsInfo {
            version: self.version.clone(),
            cipher: self.cipher.clone(),
            peer_serial: self.serial.clone(),
            peer_not_after: self.not_after,
        }
    }
}

pub fn peer_info(state: &rustls::CommonState) -> PeerInfo {
    let version = match state.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    };
    let cipher =
        state.negotiated_cipher_suite().map_or_else(|| "unknown".into(), |s| format!("{:?}", s.suite()));
    let leaf = state.peer_certificates().and_then(|c| c.first());
    PeerInfo::new(version, cipher, leaf)
}

impl PeerInfo {
    /// What the peer's leaf certificate (DER) tells: its SPIFFE ID, serial and expiry.
    pub fn new(
        version: String,
        cipher: String,
        leaf: Option<&rustls::pki_types::CertificateDer<'_>>,
    ) -> Self {
        let identity = leaf.and_then(|der| spiffe_id_of(der).ok()).map(|id| id.to_string());
        let parsed = leaf.and_then(|der| x509_parser::certificate::X509Certificate::from_der(der).ok());
        let serial = parsed.as_ref().map(|(_, cert)| ca::hex(cert.raw_serial()));
        let not_after = parsed.as_ref().and_then(|(_, cert)| {
            OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()
        });
        PeerInfo { identity, version, cipher, serial, not_after }
    }
}

/// A flow `reason` for a failed handshake, from the error tokio-rustls returned.
pub fn handshake_reason(error: &std::io::Error) -> String {
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return error.to_string();
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::Other(other) => other.0.to_string(),
            CertificateError::UnknownIssuer => {
                "peer certificate issuer is not trusted (UnknownIssuer)".into()
            }
            // Also what a chain from another CA with the same name as ours looks like.
            CertificateError::BadSignature => {
                "peer certificate is not signed by a trusted CA (BadSignature)".into()
            }
            CertificateError::Expired => "peer certificate expired".into(),
            CertificateError::ExpiredContext { time, not_after } => format!(
                "peer certificate expired at {} ({} s ago)",
                verify::rfc3339(seconds(*not_after)),
                seconds(*time).saturating_sub(seconds(*not_after))
            ),
            CertificateError::NotValidYet => "peer certificate not valid yet".into(),
            CertificateError::NotValidYetContext { time, not_before } => format!(
                "peer certificate not valid yet: valid from {} (in {} s; clocks skewed?)",
                verify::rfc3339(seconds(*not_before)),
                seconds(*not_before).saturating_sub(seconds(*time))
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "peer certificate is not allowed for TLS authentication on this side (extended key usage)"
                    .into()
            }
            other => format!("peer certificate refused: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => format!("peer refused the handshake (TLS alert {alert:?})"),
        rustls::Error::NoApplicationProtocol => "peer does not speak HBONE (no ALPN h2)".into(),
        rustls::Error::NoCertificatesPresented => "peer presented no certificate".into(),
        other => other.to_string(),
    }
}

fn seconds(time: rustls::pki_types::UnixTime) -> i64 {
    i64::try_from(time.as_secs()).unwrap_or(i64::MAX)
}

/// A bounded `reason` label for a failed mTLS handshake, or `None` if `reason` is not one.
/// The labels name what an operator fixes: the peer's identity, trust domain, CA, clock,
/// certificate profile (usage, chain) or the network.
pub fn handshake_failure(reason: &str) -> Option<&'static str> {
    if !reason.contains("handshake") {
        return None;
    }
    let has = |words: &[&str]| words.iter().any(|w| reason.contains(w));
    Some(if has(&["secure naming", "is not the expected"]) {
        "wrong_identity"
    } else if has(&["outside trust domain"]) {
        "wrong_trust_domain"
    } else if has(&["UnknownIssuer", "BadSignature", "not trusted", "trusted CA"]) {
        "untrusted_ca"
    } else if has(&["expired"]) {
        "expired"
    } else if has(&["not valid yet"]) {
        "not_yet_valid"
    } else if has(&["is not allowed for TLS", "key usage lacks"]) {
        "wrong_usage"
    } else if has(&["chain too long", "is not a CA certificate", "is a CA certificate"]) {
        "bad_chain"
    } else if has(&["no SPIFFE ID"]) {
        "no_spiffe_id"
    } else if has(&["timed out", "not done within"]) {
        "timeout"
    } else if has(&["alert"]) {
        "peer_refused"
    } else if has(&["no certificate", "presented no certificate"]) {
        "no_certificate"
    } else {
        "other"
    })
}

#[cfg(test)]
mod tests;
