//! Real TLS handshakes over loopback TCP between identities of real CAs.
use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Duration};

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{verify::PeerRole, *};

const PP: &str = "spiffe://cluster.local/ns/bookinfo/sa/productpage";
const DETAILS: &str = "spiffe://cluster.local/ns/bookinfo/sa/details";

fn identities(ca: Option<&Path>, state: &Path, trust_domain: &str, ttl: Duration) -> Arc<Identities> {
    let options = IdentityOptions {
        trust_domain: trust_domain.into(),
        ca_dir: ca.map(Path::to_path_buf),
        remote_ca: None,
        state_dir: state.to_path_buf(),
        cert_ttl: ttl,
        post_quantum: false,
    };
    Arc::new(Identities::new(&options).unwrap())
}

fn plugin_ca(dir: &Path) -> Arc<Identities> {
    ca::init(dir, "cluster.local").unwrap();
    identities(Some(dir), dir, "cluster.local", Duration::from_secs(3600))
}

/// One handshake: `client` as `src` expecting `expected`, `server` serving `dst`.
/// Returns (client result, server result) as peer infos or reasons.
pub(crate) async fn handshake(
    client: &Identities,
    src: &str,
    expected: &str,
    server: &Identities,
    dst: &str,
) -> (Result<PeerInfo, String>, Result<PeerInfo, String>) {
    client.prepare(src).await.unwrap();
    server.prepare(dst).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server.server_config(dst).unwrap());
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match acceptor.accept(tcp).await {
            Ok(tls) => Ok(peer_info(tls.get_ref().1)),
            Err(e) => Err(handshake_reason(&e)),
        }
    });
    let connector = TlsConnector::from(client.client_config(src, expected).unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = match connector.connect(ServerName::IpAddress(addr.ip().into()), tcp).await {
        Ok(tls) => {
            let info = peer_info(tls.get_ref().1);
            // TLS 1.3 servers verify the client certificate after the client's handshake ends:
            // keep the stream open until the server side is done.
            let server = accept.await.unwrap();
            drop(tls);
            return (Ok(info), server);
        }
        Err(e) => Err(handshake_reason(&e)),
    };
    (client, accept.await.unwrap())
}

#[tokio::test]
async fn mutual_tls_13_proves_both_spiffe_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ids = plugin_ca(dir.path());
    let (client, server) = handshake(&ids, PP, DETAILS, &ids, DETAILS).await;
    let (client, server) = (client.unwrap(), server.unwrap());
    assert_eq!(client.identity.as_deref(), Some(DETAILS));
    assert_eq!(server.identity.as_deref(), Some(PP));
    assert_eq!(client.version, "TLSv1.3");
    assert!(client.cipher.contains("AES") && client.cipher.contains("GCM"), "{}", client.cipher);
    let status = ids.certificates();
    let details = status.iter().find(|c| c.identity == DETAILS).unwrap();
    assert_eq!(client.serial.as_deref(), Some(details.serial.as_str()));
    assert!(client.not_after.unwrap() > OffsetDateTime::now_utc());
}

#[tokio::test]
async fn a_server_with_another_identity_fails_secure_naming() {
    let dir = tempfile::tempdir().unwrap();
    let ids = plugin_ca(dir.path());
    let impostor = "spiffe://cluster.local/ns/bookinfo/sa/impostor";
    let (client, server) = handshake(&ids, PP, DETAILS, &ids, impostor).await;
    let reason = client.err().unwrap();
    assert!(reason.contains("secure naming") && reason.contains(impostor), "{reason}");
    let reason = server.err().unwrap();
    assert!(reason.contains("alert"), "{reason}");
}

#[tokio::test]
async fn an_untrusted_ca_is_refused_on_both_sides() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ours, theirs) = (plugin_ca(a.path()), plugin_ca(b.path()));
    let (client, _) = handshake(&ours, PP, DETAILS, &theirs, DETAILS).await;
    // Both CAs carry the same names (as Istio's do), so the chain fails on its signature.
    let reason = client.err().unwrap();
    assert!(reason.contains("trusted CA"), "{reason}");
    let (client, server) = handshake(&theirs, PP, DETAILS, &ours, DETAILS).await;
    assert!(client.is_err(), "one side must refuse the other");
    let reason = server.err().unwrap();
    assert!(reason.contains("trusted CA") || reason.contains("alert"), "{reason}");
}

#[tokio::test]
async fn another_trust_domain_is_refused_even_from_the_same_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ours = plugin_ca(dir.path());
    let other = identities(Some(dir.path()), dir.path(), "other.local", Duration::from_secs(3600));
    let foreign = "spiffe://other.local/ns/bookinfo/sa/productpage";
    // The client of the other domain refuses our server first (TLS 1.3 order).
    let (client, server) = handshake(&other, foreign, DETAILS, &ours, DETAILS).await;
    let reason = client.err().unwrap();
    assert!(reason.contains("outside trust domain"), "{reason}");
    assert!(server.is_err());
    assert!(ours.prepare(foreign).await.is_err(), "a node must not issue outside its trust domain");
}

#[tokio::test]
async fn self_signed_root_is_private_and_reused() {
    let state = tempfile::tempdir().unwrap();
    let first = identities(None, state.path(), "cluster.local", Duration::from_secs(3600));
    let mode = std::fs::metadata(state.path().join("ca").join(ca::CA_KEY)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A restarted agent keeps the root: its certificates are trusted by the old one.
    let second = identities(None, state.path(), "cluster.local", Duration::from_secs(3600));
    let (client, server) = handshake(&second, PP, DETAILS, &first, DETAILS).await;
    assert!(client.is_ok() && server.is_ok());
}

#[tokio::test]
async fn rsa_plugin_ca_signs_ecdsa_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let cert = params.self_signed(&key).unwrap();
    for (name, pem) in
        [(ca::CA_CERT, cert.pem()), (ca::CA_KEY, key.serialize_pem()), (ca::ROOT_CERT, cert.pem())]
    {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let ids = identities(Some(dir.path()), dir.path(), "cluster.local", Duration::from_secs(3600));
    let (client, server) = handshake(&ids, PP, DETAILS, &ids, DETAILS).await;
    assert_eq!(client.unwrap().identity.as_deref(), Some(DETAILS));
    assert_eq!(server.unwrap().identity.as_deref(), Some(PP));
}

#[test]
fn broken_plugin_ca_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    ca::init(dir.path(), "cluster.local").unwrap();
    std::fs::write(dir.path().join(ca::CA_KEY), "not a key").unwrap();
    let options = IdentityOptions {
        trust_domain: "cluster.local".into(),
        ca_dir: Some(dir.path().into()),
        remote_ca: None,
        state_dir: dir.path().into(),
        cert_ttl: Duration::from_secs(60),
        post_quantum: false,
    };
    let error = format!("{:#}", Identities::new(&options).err().unwrap());
    assert!(error.contains("ca-key.pem"), "{error}");
    assert!(ca::init(dir.path(), "cluster.local").is_err(), "init must not overwrite a CA");
}

#[tokio::test]
async fn certificates_renew_at_half_life_and_new_handshakes_use_them() {
    let dir = tempfile::tempdir().unwrap();
    ca::init(dir.path(), "cluster.local").unwrap();
    let ids = identities(Some(dir.path()), dir.path(), "cluster.local", Duration::from_secs(2));
    ids.prepare(DETAILS).await.unwrap();
    let before = ids.certificates()[0].clone();
    let renewer = tokio::spawn(ids.clone().renew_forever());
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let after = ids.certificates()[0].clone();
    assert_ne!(before.serial, after.serial, "not renewed after 1.8 s of a 2 s lifetime");
    let (client, _) = handshake(&ids, PP, DETAILS, &ids, DETAILS).await;
    let seen = client.unwrap().serial.unwrap();
    assert_eq!(seen, ids.certificates().iter().find(|c| c.identity == DETAILS).unwrap().serial);
    renewer.abort();
}

#[test]
fn a_leaf_alone_signed_by_the_root_verifies() {
    // What a ztunnel peer sends: its leaf only, no chain. With the self-signed root, leaves are
    // signed by the root itself.
    let state = tempfile::tempdir().unwrap();
    let ids = identities(None, state.path(), "cluster.local", Duration::from_secs(3600));
    let ca = ca::Ca::load_or_create_self_signed(&state.path().join("ca"), "cluster.local").unwrap();
    let leaf = ca.issue(PP, Duration::from_secs(60)).unwrap();
    let now = rustls::pki_types::UnixTime::now();
    let id = ids.trust.verify(&leaf.chain[0], &[], now, PeerRole::Client).unwrap();
    assert_eq!(id.to_string(), PP);
    // With a plug-in intermediate, the leaf alone does not lead to the root: refused.
    let dir = tempfile::tempdir().unwrap();
    let plugin = plugin_ca(dir.path());
    let ca = ca::Ca::load_plugin(dir.path()).unwrap();
    let leaf = ca.issue(PP, Duration::from_secs(60)).unwrap();
    assert!(plugin.trust.verify(&leaf.chain[0], &[], now, PeerRole::Client).is_err());
    assert!(plugin.trust.verify(&leaf.chain[0], &leaf.chain[1..], now, PeerRole::Client).is_ok());
}

#[tokio::test]
async fn departed_identities_are_dropped_and_client_configs_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let ids = plugin_ca(dir.path());
    let (client, server) = handshake(&ids, PP, DETAILS, &ids, DETAILS).await;
    assert!(client.is_ok() && server.is_ok());
    let table = |name: &str| ids.tables().into_iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(table("certificates").entries, 2);
    assert_eq!((table("server_configs").entries, table("client_configs").entries), (1, 1));
    // details left the node: its certificate and server configuration go, productpage's
    // client configuration (towards details) stays.
    ids.retain([PP.to_string()]);
    assert_eq!(ids.certificates().iter().map(|c| c.identity.as_str()).collect::<Vec<_>>(), [PP]);
    assert_eq!((table("server_configs").entries, table("client_configs").entries), (0, 1));
    // One client configuration per destination, at most MAX_CLIENT_CONFIGS: then evicted.
    for n in 0..MAX_CLIENT_CONFIGS {
        ids.client_config(PP, &format!("spiffe://cluster.local/ns/x/sa/s{n}")).unwrap();
    }
    let clients = table("client_configs");
    assert_eq!(
        (clients.entries, clients.capacity, clients.overflows),
        (MAX_CLIENT_CONFIGS as u64, MAX_CLIENT_CONFIGS as u64, 1)
    );
    ids.retain(Vec::new());
    assert!(ids.tables().iter().all(|(_, t)| t.entries == 0), "{:?}", ids.tables());
}

#[tokio::test]
async fn identities_beyond_the_maximum_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ids = plugin_ca(dir.path());
    for n in 0..MAX_IDENTITIES {
        ids.prepare(&format!("spiffe://cluster.local/ns/x/sa/s{n}")).await.unwrap();
    }
    let error = format!("{:#}", ids.prepare(PP).await.unwrap_err());
    assert!(error.contains("at most 4096"), "{error}");
    let certificates = ids.tables()[0].1;
    assert_eq!((certificates.entries, certificates.overflows), (MAX_IDENTITIES as u64, 1));
    // Already held identities are still fine.
    ids.prepare("spiffe://cluster.local/ns/x/sa/s0").await.unwrap();
}
