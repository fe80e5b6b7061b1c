//! Peer certificates → identities: what the tunnel ends do with a certificate chain a peer
//! presents, and with SPIFFE ID strings.
//!
//! Each input is tried three ways:
//!
//! - as text: `SpiffeId::parse` (the identity of a workload, of a certificate's URI SAN);
//! - as DER: consecutive DER items, the leaf then intermediates (at most three), as rustls hands
//!   them to the verifiers;
//! - as PEM: `identity::ca::certificates`, how plug-in CA files and the CA service's chains are
//!   read; the chain found gets the DER checks.
//!
//! The DER checks: `spiffe_id_of` (the single SPIFFE URI SAN), `PeerInfo::new` (what a flow
//! records of the peer), and both rustls verifiers (`ClientIdentityVerifier`,
//! `ServerIdentityVerifier`) against a fixed root, at a fixed time, with the error text a flow
//! would show. A chain they accept must name a SPIFFE ID of the trust domain (and the expected
//! one for the server side).
//!
//! fixtures/root.der is a P-256 root CA made with openssl (O=cluster.local, valid 2026-2126);
//! the corpus's chains are signed by it through an intermediate.
#![no_main]

use std::{
    path::Path,
    sync::{Arc, OnceLock},
    time::Duration,
};

use libfuzzer_sys::fuzz_target;
use lockmesh::identity::{
    PeerInfo, ca, handshake_reason,
    spiffe::SpiffeId,
    spiffe_id_of,
    verify::{ClientIdentityVerifier, ServerIdentityVerifier, Trust},
};
use rustls::{
    client::danger::ServerCertVerifier as _,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::ClientCertVerifier as _,
};

const ROOT: &[u8] = include_bytes!("../fixtures/root.der");
const TRUST_DOMAIN: &str = "cluster.local";
/// What the client side of a tunnel expects the server to be.
const EXPECTED: &str = "spiffe://cluster.local/ns/bookinfo/sa/details";
/// 2027-01-01T00:00:00Z: inside the fixtures' validity, and the same on every run.
const NOW: Duration = Duration::from_secs(1_798_761_600);

fn trust() -> &'static Arc<Trust> {
    static TRUST: OnceLock<Arc<Trust>> = OnceLock::new();
    TRUST.get_or_init(|| {
        let roots = [CertificateDer::from(ROOT.to_vec())];
        let algorithms = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        match Trust::new(&roots, TRUST_DOMAIN, algorithms) {
            Ok(trust) => Arc::new(trust),
            Err(e) => panic!("fixtures/root.der: {e:#}"),
        }
    })
}

/// The length of the DER item at the start of `data` (tag, length, contents), if it says.
fn der_length(data: &[u8]) -> Option<usize> {
    let first = *data.get(1)?;
    if first < 0x80 {
        return Some(2 + usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let length = data.get(2..2 + n)?.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    (2 + n).checked_add(length)
}

/// Consecutive DER items (the last takes what is left when a length does not fit).
fn der_items(mut data: &[u8]) -> Vec<CertificateDer<'_>> {
    let mut items = Vec::new();
    while !data.is_empty() && items.len() < 4 {
        let length = match der_length(data) {
            Some(length) if items.len() < 3 && length < data.len() => length,
            _ => data.len(),
        };
        let (item, rest) = data.split_at(length);
        items.push(CertificateDer::from(item));
        data = rest;
    }
    items
}

fn check_spiffe_text(text: &str) {
    if let Ok(id) = SpiffeId::parse(text) {
        assert_eq!(id.to_string(), text, "a SPIFFE ID prints as it was written");
        assert!(![&id.trust_domain, &id.namespace, &id.service_account].iter().any(|p| p.is_empty()));
    }
}

fn check_chain(chain: &[CertificateDer<'_>]) {
    let Some((leaf, intermediates)) = chain.split_first() else { return };
    let id = spiffe_id_of(leaf);
    match &id {
        Ok(id) => check_spiffe_text(&id.to_string()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let info = PeerInfo::new("TLSv1.3".into(), "TLS13_AES_128_GCM_SHA256".into(), Some(leaf));
    assert_eq!(info.identity, id.as_ref().ok().map(ToString::to_string));
    let _ = info.tls_info();

    let now = UnixTime::since_unix_epoch(NOW);
    let trust = trust().clone();
    let client = ClientIdentityVerifier { trust: trust.clone() };
    match client.verify_client_cert(leaf, intermediates, now) {
        Ok(_) => {
            let id = id.as_ref().map(|id| id.trust_domain.as_str());
            assert_eq!(id.ok(), Some(TRUST_DOMAIN), "a verified client is of the trust domain");
        }
        Err(e) => {
            let _ = handshake_reason(&std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
    }
    let server = ServerIdentityVerifier { trust, expected: EXPECTED.into() };
    let name = ServerName::IpAddress(std::net::Ipv4Addr::new(10, 77, 2, 2).into());
    match server.verify_server_cert(leaf, intermediates, &name, &[], now) {
        Ok(_) => {
            let id = id.as_ref().map(ToString::to_string);
            assert_eq!(id.ok().as_deref(), Some(EXPECTED), "a verified server is the expected one");
        }
        Err(e) => {
            let _ = handshake_reason(&std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_spiffe_text(text);
    }
    check_chain(&der_items(data));
    if let Ok(chain) = ca::certificates(data, Path::new("fuzz.pem")) {
        check_chain(&chain);
    }
});
