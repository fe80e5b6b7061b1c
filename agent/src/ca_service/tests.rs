//! The CA service on loopback with real TLS, asked by the agent's real client
//! (`identity::remote`), against a mock API server answering TokenReview and pod requests with
//! real JSON: who is signed, who is refused and why, and that what is signed works in the data
//! path.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use serde_json::{Value, json};
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio::{net::TcpListener, task::JoinHandle};
use x509_parser::prelude::FromDer as _;

use super::{CaServiceOptions, serve};
use crate::identity::{
    Identities, IdentityOptions, ca,
    remote::{Refused, RemoteCa, RemoteCaOptions},
    tests::handshake,
};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const AUDIENCE: &str = "lockmesh-ca";
const API_AUDIENCE: &str = "https://kubernetes.default.svc";
const AGENT: &str = "system:serviceaccount:lockmesh-system:lockmesh-agent";
const PP: &str = "spiffe://cluster.local/ns/bookinfo/sa/productpage";
const DETAILS: &str = "spiffe://cluster.local/ns/bookinfo/sa/details";
/// Runs on node2 only.
const REVIEWS: &str = "spiffe://cluster.local/ns/bookinfo/sa/reviews";
/// Its only pod on node1 has finished.
const BATCH: &str = "spiffe://cluster.local/ns/bookinfo/sa/batch";

/// The agent of node1, token bound to its pod and node (Kubernetes ≥ 1.30).
const NODE1_TOKEN: &str = "agent-node1";
/// The agent of node1, token bound to its pod only (older Kubernetes).
const POD_BOUND_TOKEN: &str = "agent-pod-bound";
/// Bound to an agent pod that was since replaced (same name, another uid).
const OLD_POD_TOKEN: &str = "agent-old-pod";
/// The agent's default token, for the API server's audience.
const API_TOKEN: &str = "agent-api-audience";
/// Another service account, for our audience.
const OTHER_SA_TOKEN: &str = "default-sa";

/// User info and audiences of the tokens the mock API server knows.
fn token(token: &str) -> Option<(Value, Vec<&'static str>)> {
    let agent = |extra: Value| json!({"username": AGENT, "uid": "sa-uid", "groups": ["system:serviceaccounts"], "extra": extra});
    let pod = |uid: &str| {
        json!({"authentication.kubernetes.io/pod-name": ["lockmesh-agent-abcde"],
               "authentication.kubernetes.io/pod-uid": [uid]})
    };
    let mut with_node = pod("uid-agent");
    with_node["authentication.kubernetes.io/node-name"] = json!(["node1"]);
    Some(match token {
        NODE1_TOKEN => (agent(with_node), vec![AUDIENCE]),
        POD_BOUND_TOKEN => (agent(pod("uid-agent")), vec![AUDIENCE]),
        OLD_POD_TOKEN => (agent(pod("uid-agent-before")), vec![AUDIENCE]),
        API_TOKEN => (agent(with_node), vec![API_AUDIENCE]),
        OTHER_SA_TOKEN => (json!({"username": "system:serviceaccount:bookinfo:default"}), vec![AUDIENCE]),
        _ => return None,
    })
}

fn pod(namespace: &str, name: &str, node: &str, account: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "uid": format!("uid-{name}")},
        "spec": {"nodeName": node, "serviceAccountName": account, "containers": [{"name": "app"}]},
        "status": {"phase": phase},
    })
}

fn pods() -> Vec<Value> {
    let mut agent = pod("lockmesh-system", "lockmesh-agent-abcde", "node1", "lockmesh-agent", "Running");
    agent["metadata"]["uid"] = json!("uid-agent");
    vec![
        agent,
        pod("bookinfo", "productpage-1", "node1", "productpage", "Running"),
        pod("bookinfo", "details-1", "node1", "details", "Running"),
        pod("bookinfo", "reviews-1", "node2", "reviews", "Running"),
        pod("bookinfo", "batch-1", "node1", "batch", "Succeeded"),
    ]
}

fn not_found() -> (StatusCode, Value) {
    let status =
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
    (StatusCode::NOT_FOUND, status)
}

/// TokenReview as the API server does it: the audiences confirmed are those both asked for
/// (the API server's own when none) and in the token.
fn token_review(review: Value) -> Value {
    let asked: Vec<String> = match review["spec"]["audiences"].as_array() {
        Some(list) => list.iter().map(|a| a.as_str().unwrap().to_string()).collect(),
        None => vec![API_AUDIENCE.to_string()],
    };
    let status = match token(review["spec"]["token"].as_str().unwrap()) {
        None => {
            json!({"authenticated": false, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"})
        }
        Some((user, audiences)) => {
            let common: Vec<&String> = asked.iter().filter(|a| audiences.contains(&a.as_str())).collect();
            if common.is_empty() {
                json!({"authenticated": false,
                       "error": format!("[invalid bearer token, token audiences {audiences:?} is invalid for the target audiences {asked:?}]")})
            } else {
                json!({"authenticated": true, "user": user, "audiences": common})
            }
        }
    };
    json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {},
           "spec": review["spec"], "status": status})
}

/// A pod list filtered by namespace and the field selectors pods support that the CA uses.
fn pod_list(namespace: &str, query: &str) -> Value {
    let selector = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("fieldSelector="))
        .unwrap_or_default()
        .replace("%3D", "=")
        .replace("%2C", ",");
    let mut items = pods();
    items.retain(|pod| pod["metadata"]["namespace"] == namespace);
    for term in selector.split(',').filter(|t| !t.is_empty()) {
        let (field, value) = term.split_once('=').unwrap();
        let pointer = match field {
            "spec.nodeName" => "/spec/nodeName",
            "spec.serviceAccountName" => "/spec/serviceAccountName",
            other => panic!("field selector {other} is not used by the CA"),
        };
        items.retain(|pod| pod.pointer(pointer) == Some(&json!(value)));
    }
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items})
}

async fn api_server(mut handle: Handle, reviews: Arc<AtomicUsize>) {
    while let Some((request, send)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let body = body.collect_bytes().await.unwrap();
        let segments: Vec<&str> = parts.uri.path().trim_start_matches('/').split('/').collect();
        let query = parts.uri.query().unwrap_or_default();
        let (status, answer) = match (parts.method.as_str(), segments.as_slice()) {
            ("POST", ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
                reviews.fetch_add(1, Ordering::SeqCst);
                (StatusCode::CREATED, token_review(serde_json::from_slice(&body).unwrap()))
            }
            ("GET", ["api", "v1", "namespaces", namespace, "pods"]) => {
                (StatusCode::OK, pod_list(namespace, query))
            }
            ("GET", ["api", "v1", "namespaces", namespace, "pods", name]) => pods()
                .into_iter()
                .find(|p| p["metadata"]["namespace"] == *namespace && p["metadata"]["name"] == *name)
                .map_or_else(not_found, |pod| (StatusCode::OK, pod)),
            other => panic!("the CA made an unexpected API request {other:?}"),
        };
        let mut response = Response::new(Body::from(serde_json::to_vec(&answer).unwrap()));
        *response.status_mut() = status;
        send.send_response(response);
    }
}

/// A running CA service on 127.0.0.1 with a plug-in CA, and its mock API server.
struct Fixture {
    dir: TempDir,
    url: String,
    reviews: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Fixture {
    async fn start(max_cert_ttl: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        ca::init(&dir.path().join("ca"), "cluster.local").unwrap();
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let reviews = Arc::new(AtomicUsize::new(0));
        let api = tokio::spawn(api_server(handle, reviews.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let options = CaServiceOptions {
            trust_domain: "cluster.local".into(),
            ca_dir: Some(dir.path().join("ca")),
            state_dir: dir.path().into(),
            max_cert_ttl,
            serving_names: vec!["lockmesh-ca.lockmesh-system.svc".into(), "127.0.0.1".into()],
            audience: AUDIENCE.into(),
            agent_user: AGENT.into(),
        };
        let client = Client::new(service, "default");
        let server = tokio::spawn(async move { serve(listener, &options, client).await.unwrap() });
        Self { dir, url, reviews, tasks: vec![api, server] }
    }

    fn options(&self, token: &str) -> RemoteCaOptions {
        let path = self.dir.path().join(format!("token-{token}"));
        std::fs::write(&path, format!("{token}\n")).unwrap();
        RemoteCaOptions {
            url: self.url.clone(),
            root: self.dir.path().join("ca").join(ca::ROOT_CERT),
            token: path,
        }
    }

    fn client(&self, token: &str) -> RemoteCa {
        let provider = Arc::new(crate::identity::provider(false));
        RemoteCa::new(&self.options(token), "cluster.local", provider).unwrap()
    }

    /// The identities of an agent asking this CA service.
    fn agent(&self, token: &str, cert_ttl: Duration) -> Arc<Identities> {
        identities(Some(self.options(token)), None, self.dir.path().into(), cert_ttl)
    }
}

fn identities(
    remote_ca: Option<RemoteCaOptions>,
    ca_dir: Option<PathBuf>,
    state_dir: PathBuf,
    cert_ttl: Duration,
) -> Arc<Identities> {
    let options = IdentityOptions {
        trust_domain: "cluster.local".into(),
        ca_dir,
        remote_ca,
        state_dir,
        cert_ttl,
        post_quantum: false,
    };
    Arc::new(Identities::new(&options).unwrap())
}

fn csr(sans: &[&str], params: CertificateParams) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = params;
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans
        .iter()
        .map(|san| match san.strip_prefix("dns:") {
            Some(dns) => SanType::DnsName((*dns).try_into().unwrap()),
            None => SanType::URI((*san).try_into().unwrap()),
        })
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

async fn refusal(client: &RemoteCa, csr: &str) -> (StatusCode, String) {
    let error = client.sign_csr(csr, Duration::from_secs(600)).await.expect_err("must be refused");
    let refused = error.downcast_ref::<Refused>().unwrap_or_else(|| panic!("not a refusal: {error:#}"));
    (refused.status, refused.message.clone())
}

#[tokio::test]
async fn a_pod_on_the_callers_node_gets_a_capped_certificate_that_works_in_the_data_path() {
    let ca = Fixture::start(Duration::from_secs(3600)).await;
    // Asks for 48 h; the CA caps it at 1 h.
    let agent = ca.agent(NODE1_TOKEN, Duration::from_secs(48 * 3600));
    let (client, server) = handshake(&agent, PP, DETAILS, &agent, DETAILS).await;
    let (client, server) = (client.unwrap(), server.unwrap());
    assert_eq!((client.identity.as_deref(), server.identity.as_deref()), (Some(DETAILS), Some(PP)));
    assert_eq!(client.version, "TLSv1.3");
    let now = OffsetDateTime::now_utc();
    for cert in agent.certificates() {
        let lifetime = cert.not_after - now;
        assert!(lifetime <= time::Duration::hours(1) && lifetime > time::Duration::minutes(59), "{cert:?}");
        let renew_in = cert.renew_at - now;
        assert!(renew_in > time::Duration::minutes(23) && renew_in < time::Duration::minutes(37), "{cert:?}");
    }
    // Secure naming still holds with these certificates.
    let (client, _) = handshake(&agent, PP, DETAILS, &agent, PP).await;
    let reason = client.err().unwrap();
    assert!(reason.contains("secure naming"), "{reason}");
    // A node that reads the CA key directly (--ca) trusts them and is trusted.
    let local =
        identities(None, Some(ca.dir.path().join("ca")), ca.dir.path().into(), Duration::from_secs(600));
    let (client, server) = handshake(&local, PP, DETAILS, &agent, DETAILS).await;
    assert!(client.is_ok() && server.is_ok(), "{:?} {:?}", client.err(), server.err());
}

#[tokio::test]
async fn before_kubernetes_1_30_the_node_comes_from_the_tokens_pod() {
    let ca = Fixture::start(Duration::from_secs(3600)).await;
    let agent = ca.agent(POD_BOUND_TOKEN, Duration::from_secs(600));
    agent.prepare(PP).await.unwrap();
    assert_eq!(agent.certificates()[0].identity, PP);
    let (status, message) =
        refusal(&ca.client(OLD_POD_TOKEN), &csr(&[PP], CertificateParams::default())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert!(
        message.contains("lockmesh-system/lockmesh-agent-abcde") && message.contains("replaced"),
        "{message}"
    );
}

#[tokio::test]
async fn a_service_account_without_a_running_pod_on_the_callers_node_is_refused() {
    let ca = Fixture::start(Duration::from_secs(3600)).await;
    let client = ca.client(NODE1_TOKEN);
    let (status, message) = refusal(&client, &csr(&[REVIEWS], CertificateParams::default())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert!(message.contains("node node1") && message.contains("bookinfo/reviews"), "{message}");
    let (status, message) = refusal(&client, &csr(&[BATCH], CertificateParams::default())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "finished pods do not count: {message}");

    // The agent's pod waits for its certificate: the refusal is reported, and the next attempt
    // waits for the backoff instead of asking again at once.
    let agent = ca.agent(NODE1_TOKEN, Duration::from_secs(600));
    let error = format!("{:#}", agent.prepare(REVIEWS).await.unwrap_err());
    assert!(error.contains("403") && error.contains("bookinfo/reviews"), "{error}");
    let asked = ca.reviews.load(Ordering::SeqCst);
    let error = format!("{:#}", agent.prepare(REVIEWS).await.unwrap_err());
    assert!(error.contains("next attempt in") && error.contains("bookinfo/reviews"), "{error}");
    assert_eq!(ca.reviews.load(Ordering::SeqCst), asked, "asked the CA again during the backoff");
    assert!(agent.certificates().is_empty());
}

#[tokio::test]
async fn tokens_of_other_audiences_users_or_none_are_refused() {
    let ca = Fixture::start(Duration::from_secs(3600)).await;
    let request = csr(&[PP], CertificateParams::default());
    let (status, message) = refusal(&ca.client(API_TOKEN), &request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{message}");
    assert!(
        message.contains("audience lockmesh-ca") && message.contains("invalid for the target"),
        "{message}"
    );
    let (status, message) = refusal(&ca.client("forged"), &request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{message}");
    let (status, message) = refusal(&ca.client(""), &request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{message}");
    assert!(message.contains("Authorization: Bearer"), "{message}");
    let (status, message) = refusal(&ca.client(OTHER_SA_TOKEN), &request).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert!(
        message.contains("system:serviceaccount:bookinfo:default") && message.contains(AGENT),
        "{message}"
    );
}

#[tokio::test]
async fn csrs_with_another_or_an_extra_san_are_refused() {
    let ca = Fixture::start(Duration::from_secs(3600)).await;
    let client = ca.client(NODE1_TOKEN);
    for (sans, expect) in [
        (vec![PP, "dns:productpage.bookinfo.svc"], "exactly one SAN"),
        (vec![PP, DETAILS], "exactly one SAN"),
        (vec![], "exactly one SAN"),
        (vec!["spiffe://other.local/ns/bookinfo/sa/productpage"], "outside trust domain cluster.local"),
        (vec!["https://productpage.bookinfo/"], "not a SPIFFE ID"),
    ] {
        let (status, message) = refusal(&client, &csr(&sans, CertificateParams::default())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sans:?}: {message}");
        assert!(message.contains(expect), "{sans:?}: {message}");
    }
    let (status, message) =
        refusal(&client, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert!(message.starts_with("CSR:"), "{message}");
}

#[tokio::test]
async fn the_ca_sets_usages_and_lifetime_whatever_the_csr_asks() {
    let ca = Fixture::start(Duration::from_secs(3600)).await;
    let mut greedy = CertificateParams::default();
    greedy.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    greedy.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    greedy.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
    let chain =
        ca.client(NODE1_TOKEN).sign_csr(&csr(&[PP], greedy), Duration::from_secs(30 * 86_400)).await.unwrap();
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&chain[0]).unwrap();
    assert!(!leaf.is_ca(), "a CSR must not get a CA certificate");
    let usage = leaf.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature() && !usage.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
    let lifetime = leaf.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp();
    assert!(lifetime <= 3600, "lifetime {lifetime}s above the 1 h cap");
    assert_eq!(chain.len(), 3, "leaf, intermediate, root (Istio's cert-chain.pem)");
}

#[tokio::test]
async fn an_unreachable_or_untrusted_ca_is_a_clear_error() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let ca = Fixture::start(Duration::from_secs(3600)).await;
    let mut options = ca.options(NODE1_TOKEN);
    options.url = format!("https://127.0.0.1:{port}");
    let agent = identities(Some(options), None, ca.dir.path().into(), Duration::from_secs(600));
    let error = format!("{:#}", agent.prepare(PP).await.unwrap_err());
    assert!(error.contains(&format!("connecting to the CA at https://127.0.0.1:{port}")), "{error}");

    // A CA service whose certificate does not lead to our root.
    let other = Fixture::start(Duration::from_secs(3600)).await;
    let mut options = ca.options(NODE1_TOKEN);
    options.url = other.url.clone();
    let agent = identities(Some(options), None, ca.dir.path().into(), Duration::from_secs(600));
    let error = format!("{:#}", agent.prepare(PP).await.unwrap_err());
    assert!(error.contains("TLS handshake with the CA"), "{error}");
    assert_eq!(other.reviews.load(Ordering::SeqCst), 0, "the token went to an untrusted server");
}
