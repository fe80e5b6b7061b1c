use super::*;

#[test]
fn handshake_reasons_are_bounded() {
    assert_eq!(
        handshake_failure("mTLS handshake: peer certificate issuer is not trusted (UnknownIssuer)"),
        Some("untrusted_ca")
    );
    assert_eq!(handshake_failure("mTLS handshake timed out"), Some("timeout"));
    // The inbound side's own timeout reason.
    assert_eq!(handshake_failure("handshake_timeout: mTLS handshake not done within 10s"), Some("timeout"));
    assert_eq!(
        handshake_failure("mTLS handshake with 10.0.0.2:15008: peer presented no certificate"),
        Some("no_certificate")
    );
    assert_eq!(handshake_failure("connect to 10.0.0.1:8080: refused"), None);
}
