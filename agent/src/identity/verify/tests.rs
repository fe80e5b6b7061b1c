//! Bad peer certificates against our own verifiers, over real TLS 1.3 handshakes on loopback:
//! a rogue peer presents a crafted chain (signed by the mesh's trusted root unless the case is
//! about the chain), our client or our server refuses it, and the reason says what is wrong —
//! and maps to the right `lockmesh_handshake_failures_total{reason}` label.
use std::{sync::Arc, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{
    ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::identity::{
    Identities, IdentityOptions, PeerInfo, ca, handshake_failure, handshake_reason, peer_info, provider,
    verify::MAX_INTERMEDIATES,
};

const PP: &str = "spiffe://cluster.local/ns/bookinfo/sa/productpage";
const DETAILS: &str = "spiffe://cluster.local/ns/bookinfo/sa/details";
const FOREIGN: &str = "spiffe://other.domain/ns/x/sa/y";

type Ca = CertifiedIssuer<'static, KeyPair>;

/// A mesh whose plug-in CA is a root we hold the key of, and our identities trusting it.
struct Mesh {
    _dir: tempfile::TempDir,
    ids: Arc<Identities>,
    root: Ca,
}

fn key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn mesh() -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let root = CertifiedIssuer::self_signed(ca_params("test root"), key()).unwrap();
    for (name, pem) in
        [(ca::CA_CERT, root.pem()), (ca::CA_KEY, root.key().serialize_pem()), (ca::ROOT_CERT, root.pem())]
    {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let options = IdentityOptions {
        trust_domain: "cluster.local".into(),
        ca_dir: Some(dir.path().into()),
        remote_ca: None,
        state_dir: dir.path().into(),
        cert_ttl: Duration::from_secs(3600),
        post_quantum: false,
    };
    Mesh { ids: Arc::new(Identities::new(&options).unwrap()), _dir: dir, root }
}

/// An intermediate CA named `name` under `parent`.
fn intermediate(parent: &Ca, name: &str, tweak: impl FnOnce(&mut CertificateParams)) -> Ca {
    let mut params = ca_params(name);
    tweak(&mut params);
    CertifiedIssuer::signed_by(params, key(), parent).unwrap()
}

/// A workload leaf as lockmesh issues them (one SPIFFE URI SAN, digitalSignature +
/// keyEncipherment, serverAuth + clientAuth, valid now), changed by `tweak`.
fn leaf(
    issuer: &Ca,
    id: &str,
    tweak: impl FnOnce(&mut CertificateParams),
) -> (CertificateDer<'static>, KeyPair) {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::hours(1);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    tweak(&mut params);
    let key = key();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.der().clone(), key)
}

fn private(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivatePkcs8KeyDer::from(key.serialize_der()).into()
}

/// The rogue client's view of servers: anything goes (it is the one under test's peer).
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
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

/// Our client (as productpage, expecting `expected`) against a server presenting `chain`.
async fn our_client_meets(
    mesh: &Mesh,
    expected: &str,
    chain: Vec<CertificateDer<'static>>,
    key: &KeyPair,
) -> Result<PeerInfo, String> {
    mesh.ids.prepare(PP).await.unwrap();
    let mut server = ServerConfig::builder_with_provider(Arc::new(provider(false)))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, private(key))
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let rogue = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let connector = TlsConnector::from(mesh.ids.client_config(PP, expected).unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let result = match connector.connect(ServerName::IpAddress(addr.ip().into()), tcp).await {
        Ok(tls) => Ok(peer_info(tls.get_ref().1)),
        Err(e) => Err(handshake_reason(&e)),
    };
    rogue.abort();
    result
}

/// Our server (serving details) against a client presenting `chain`.
async fn our_server_meets(
    mesh: &Mesh,
    chain: Vec<CertificateDer<'static>>,
    key: &KeyPair,
) -> Result<PeerInfo, String> {
    mesh.ids.prepare(DETAILS).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(mesh.ids.server_config(DETAILS).unwrap());
    let ours = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(tls) => Ok(peer_info(tls.get_ref().1)),
            Err(e) => Err(handshake_reason(&e)),
        }
    });
    let provider = Arc::new(provider(false));
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_client_auth_cert(chain, private(key))
        .unwrap();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    // TLS 1.3: the server judges the client's certificate after the client is done; keep the
    // connection open until it has.
    let rogue =
        TlsConnector::from(Arc::new(client)).connect(ServerName::IpAddress(addr.ip().into()), tcp).await;
    let result = ours.await.unwrap();
    drop(rogue);
    result
}

/// The refusal reason, checked to name `words` and to map to the metrics `label`.
fn refused(result: Result<PeerInfo, String>, words: &[&str], label: &str) -> String {
    let reason = match result {
        Ok(peer) => panic!("accepted a peer that must be refused: {:?}", peer.identity),
        Err(reason) => reason,
    };
    for word in words {
        assert!(reason.contains(word), "reason {reason:?} does not say {word:?}");
    }
    // As the engine records it (inbound: "mTLS handshake: …", outbound: "mTLS handshake with …").
    assert_eq!(handshake_failure(&format!("mTLS handshake: {reason}")), Some(label), "{reason}");
    reason
}

#[tokio::test]
async fn a_well_formed_crafted_leaf_is_accepted_so_the_refusals_below_are_meaningful() {
    let mesh = mesh();
    let (cert, key) = leaf(&mesh.root, DETAILS, |_| {});
    let peer = our_client_meets(&mesh, DETAILS, vec![cert], &key).await.unwrap();
    assert_eq!(peer.identity.as_deref(), Some(DETAILS));
    let (cert, key) = leaf(&mesh.root, PP, |_| {});
    let peer = our_server_meets(&mesh, vec![cert], &key).await.unwrap();
    assert_eq!(peer.identity.as_deref(), Some(PP));
}

#[tokio::test]
async fn an_expired_leaf_is_refused_on_both_sides() {
    let mesh = mesh();
    let expired = |p: &mut CertificateParams| {
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(2);
        p.not_after = now - time::Duration::hours(1);
    };
    let (cert, key) = leaf(&mesh.root, DETAILS, expired);
    let reason = refused(
        our_client_meets(&mesh, DETAILS, vec![cert], &key).await,
        &["peer certificate expired at", "s ago"],
        "expired",
    );
    assert!(!reason.contains("CA certificate"), "the leaf expired, not a CA: {reason}");
    let (cert, key) = leaf(&mesh.root, PP, expired);
    refused(our_server_meets(&mesh, vec![cert], &key).await, &["peer certificate expired at"], "expired");
}

#[tokio::test]
async fn a_leaf_not_valid_yet_is_refused_on_both_sides() {
    let mesh = mesh();
    let future = |p: &mut CertificateParams| {
        let now = OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::hours(1);
        p.not_after = now + time::Duration::hours(2);
    };
    let (cert, key) = leaf(&mesh.root, DETAILS, future);
    refused(
        our_client_meets(&mesh, DETAILS, vec![cert], &key).await,
        &["not valid yet", "valid from"],
        "not_yet_valid",
    );
    let (cert, key) = leaf(&mesh.root, PP, future);
    refused(our_server_meets(&mesh, vec![cert], &key).await, &["not valid yet"], "not_yet_valid");
}

#[tokio::test]
async fn a_server_only_certificate_is_refused_as_a_client_and_a_client_only_one_as_a_server() {
    let mesh = mesh();
    let (cert, key) =
        leaf(&mesh.root, PP, |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]);
    refused(
        our_server_meets(&mesh, vec![cert], &key).await,
        &["not allowed for TLS client authentication", "lacks the clientAuth", "has: serverAuth"],
        "wrong_usage",
    );
    let (cert, key) =
        leaf(&mesh.root, DETAILS, |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]);
    refused(
        our_client_meets(&mesh, DETAILS, vec![cert], &key).await,
        &["not allowed for TLS server authentication", "lacks the serverAuth", "has: clientAuth"],
        "wrong_usage",
    );
}

#[tokio::test]
async fn a_key_not_meant_for_signatures_is_refused() {
    // webpki ignores the key usage extension: without our own check these were accepted.
    let mesh = mesh();
    let no_signing = |p: &mut CertificateParams| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    let (cert, key) = leaf(&mesh.root, PP, no_signing);
    refused(
        our_server_meets(&mesh, vec![cert], &key).await,
        &["key usage lacks digitalSignature", "Key Encipherment"],
        "wrong_usage",
    );
    let (cert, key) = leaf(&mesh.root, DETAILS, no_signing);
    refused(
        our_client_meets(&mesh, DETAILS, vec![cert], &key).await,
        &["key usage lacks digitalSignature"],
        "wrong_usage",
    );
    // No key usage extension at all is allowed (RFC 5280), as Istio's and ztunnel's peers do.
    let (cert, key) = leaf(&mesh.root, PP, |p| p.key_usages.clear());
    assert!(our_server_meets(&mesh, vec![cert], &key).await.is_ok());
}

#[tokio::test]
async fn another_trust_domain_signed_by_our_own_ca_is_refused() {
    let mesh = mesh();
    let (cert, key) = leaf(&mesh.root, FOREIGN, |_| {});
    refused(
        our_server_meets(&mesh, vec![cert.clone()], &key).await,
        &["trust domain other.domain is not trusted", FOREIGN, "outside trust domain cluster.local"],
        "wrong_trust_domain",
    );
    // Even a client that asked for exactly that identity.
    refused(
        our_client_meets(&mesh, FOREIGN, vec![cert], &key).await,
        &["trust domain other.domain is not trusted"],
        "wrong_trust_domain",
    );
}

#[tokio::test]
async fn a_leaf_needs_exactly_one_spiffe_uri() {
    let mesh = mesh();
    type Tweak = fn(&mut CertificateParams);
    let cases: [(&str, Tweak); 4] = [
        ("no subjectAltName", |p| p.subject_alt_names.clear()),
        ("no URI SAN", |p| {
            p.subject_alt_names = vec![SanType::DnsName("details.bookinfo".try_into().unwrap())]
        }),
        ("2 URI SANs, SPIFFE allows one", |p| {
            p.subject_alt_names.push(SanType::URI(PP.try_into().unwrap()));
        }),
        ("is not a SPIFFE ID", |p| {
            p.subject_alt_names = vec![SanType::URI("https://details.bookinfo/".try_into().unwrap())]
        }),
    ];
    for (what, tweak) in cases {
        let (cert, key) = leaf(&mesh.root, DETAILS, tweak);
        refused(
            our_server_meets(&mesh, vec![cert.clone()], &key).await,
            &["no SPIFFE ID", what],
            "no_spiffe_id",
        );
        refused(
            our_client_meets(&mesh, DETAILS, vec![cert], &key).await,
            &["no SPIFFE ID", what],
            "no_spiffe_id",
        );
    }
}

#[tokio::test]
async fn a_non_ca_issuer_and_a_ca_as_leaf_are_refused() {
    let mesh = mesh();
    let not_ca = intermediate(&mesh.root, "not a ca", |p| p.is_ca = IsCa::ExplicitNoCa);
    let (cert, key) = leaf(&not_ca, PP, |_| {});
    refused(
        our_server_meets(&mesh, vec![cert, not_ca.der().clone()], &key).await,
        &["issuer CN=not a ca is not a CA certificate"],
        "bad_chain",
    );
    // Without basicConstraints at all, too.
    let bare = intermediate(&mesh.root, "bare", |p| p.is_ca = IsCa::NoCa);
    let (cert, key) = leaf(&bare, DETAILS, |_| {});
    refused(
        our_client_meets(&mesh, DETAILS, vec![cert, bare.der().clone()], &key).await,
        &["issuer CN=bare is not a CA certificate"],
        "bad_chain",
    );
    let (cert, key) = leaf(&mesh.root, PP, |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
    refused(our_server_meets(&mesh, vec![cert], &key).await, &["is a CA certificate"], "bad_chain");
}

/// root → i1 → … → i`depth` → leaf; the chain as presented (leaf first, root left out).
fn deep_chain(mesh: &Mesh, depth: usize, id: &str) -> (Vec<CertificateDer<'static>>, KeyPair) {
    let mut cas: Vec<Ca> = Vec::new();
    for n in 1..=depth {
        let ca = intermediate(cas.last().unwrap_or(&mesh.root), &format!("intermediate {n}"), |_| {});
        cas.push(ca);
    }
    let (cert, key) = leaf(cas.last().unwrap_or(&mesh.root), id, |_| {});
    let mut chain = vec![cert];
    chain.extend(cas.iter().rev().map(|ca| ca.der().clone()));
    (chain, key)
}

#[tokio::test]
async fn chains_may_have_at_most_four_intermediates() {
    assert_eq!(MAX_INTERMEDIATES, 4);
    let mesh = mesh();
    // Four: accepted on both sides, also with the root itself at the end (as Istio sends it).
    let (chain, key) = deep_chain(&mesh, 4, DETAILS);
    assert!(our_client_meets(&mesh, DETAILS, chain.clone(), &key).await.is_ok());
    let mut with_root = chain;
    with_root.push(mesh.root.der().clone());
    assert!(our_client_meets(&mesh, DETAILS, with_root, &key).await.is_ok());
    let (chain, key) = deep_chain(&mesh, 4, PP);
    assert!(our_server_meets(&mesh, chain, &key).await.is_ok());
    // Five: a valid path, but longer than allowed (webpki alone would take up to six).
    let (chain, key) = deep_chain(&mesh, 5, PP);
    refused(
        our_server_meets(&mesh, chain, &key).await,
        &["chain too long", "at most 4 intermediate CAs"],
        "bad_chain",
    );
    let (chain, key) = deep_chain(&mesh, 5, DETAILS);
    refused(our_client_meets(&mesh, DETAILS, chain, &key).await, &["chain too long"], "bad_chain");
    // Six: refused before any signature is checked.
    let (chain, key) = deep_chain(&mesh, 6, PP);
    refused(
        our_server_meets(&mesh, chain, &key).await,
        &["chain too long: 6 CA certificates presented"],
        "bad_chain",
    );
}

#[tokio::test]
async fn an_expired_or_future_intermediate_is_named() {
    let mesh = mesh();
    let now = OffsetDateTime::now_utc();
    let expired = intermediate(&mesh.root, "old intermediate", |p| {
        p.not_before = now - time::Duration::days(2);
        p.not_after = now - time::Duration::days(1);
    });
    let (cert, key) = leaf(&expired, PP, |_| {});
    refused(
        our_server_meets(&mesh, vec![cert, expired.der().clone()], &key).await,
        &["CA certificate CN=old intermediate expired at"],
        "expired",
    );
    let (cert, key) = leaf(&expired, DETAILS, |_| {});
    refused(
        our_client_meets(&mesh, DETAILS, vec![cert, expired.der().clone()], &key).await,
        &["CA certificate CN=old intermediate expired at"],
        "expired",
    );
    let future = intermediate(&mesh.root, "future intermediate", |p| {
        p.not_before = now + time::Duration::days(1);
        p.not_after = now + time::Duration::days(2);
    });
    let (cert, key) = leaf(&future, PP, |_| {});
    refused(
        our_server_meets(&mesh, vec![cert, future.der().clone()], &key).await,
        &["CA certificate CN=future intermediate not valid yet"],
        "not_yet_valid",
    );
}

#[tokio::test]
async fn a_leaf_from_an_untrusted_root_is_refused() {
    let mesh = mesh();
    let stranger = CertifiedIssuer::self_signed(ca_params("stranger root"), key()).unwrap();
    let (cert, key) = leaf(&stranger, PP, |_| {});
    refused(our_server_meets(&mesh, vec![cert], &key).await, &["not trusted"], "untrusted_ca");
}
