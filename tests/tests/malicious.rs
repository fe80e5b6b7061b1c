//! Issue 8, the malicious-calls matrix: the engine's ports (15001, 15008) and the admin endpoint
//! of node2, hit from an in-mesh pod, an out-of-mesh pod, the node and the target pod's own
//! loopback, with plaintext, TLS without a client certificate and TLS with a certificate of a
//! foreign CA; in-mesh callers' connections are tunneled as HBONE naming the engine's own ports.
//! Each outcome is asserted; afterwards both agents are alive and in-mesh traffic works (no loop,
//! no bypass, no crash).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::*;
use lockmesh_tests::{Agent, Testbed, netns};
use serde_json::Value;

/// Where a call comes from.
#[derive(Clone, Copy, Debug)]
enum From {
    Pod(&'static str),
    Node(&'static str),
}

/// What the caller saw.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// HTTP status of an answer.
    Answered(u16),
    /// Nothing listens there (curl exit 7).
    Refused,
    /// Connected, then closed or reset without an HTTP answer (curl 16/52/55/56), the TLS handshake
    /// failed (curl 35), or plaintext got a TLS alert back and then the close (curl 1, "HTTP/0.9").
    Closed,
}

/// A client certificate of a foreign CA claiming productpage's SPIFFE identity.
fn forged_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("forged-cert.pem"), dir.join("forged-key.pem"));
    let output = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-days", "1", "-subj", "/O=forger"])
        .args(["-addext", "subjectAltName=URI:spiffe://cluster.local/ns/bookinfo/sa/productpage"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (install it with `cargo xtask setup`)");
    assert!(output.status.success(), "openssl: {}", String::from_utf8_lossy(&output.stderr));
    (cert, key)
}

fn call(tb: &Testbed, from: From, args: &[&str]) -> (Outcome, Duration) {
    let ns = match from {
        From::Pod(pod) => tb.pod(pod).netns_path(),
        From::Node(node) => tb.node(node).netns_path(),
    };
    let started = Instant::now();
    let output = netns::command_in(&ns, "curl")
        .unwrap()
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3"])
        .args(args)
        .output()
        .unwrap();
    let took = started.elapsed();
    let outcome = match output.status.code() {
        Some(0) => Outcome::Answered(String::from_utf8_lossy(&output.stdout).trim().parse().unwrap()),
        Some(7) => Outcome::Refused,
        Some(16 | 35 | 52 | 55 | 56) => Outcome::Closed,
        Some(1) if String::from_utf8_lossy(&output.stderr).contains("HTTP/0.9") => Outcome::Closed,
        other => panic!(
            "curl {args:?} from {from:?}: unexpected exit {other:?} after {took:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    };
    (outcome, took)
}

/// Denied flows agent2 recorded from `src` whose reason contains `reason`.
fn denied_from(flows: &[Value], src: &str, reason: &str) -> usize {
    flows
        .iter()
        .filter(|f| {
            f["verdict"] == "denied"
                && f["src"]["ip"] == src
                && f["reason"].as_str().is_some_and(|r| r.contains(reason))
        })
        .count()
}

#[test]
fn engine_ports_refuse_plaintext_foreign_certificates_and_hbone_to_the_engine_itself() {
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    let mut agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let mut agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let _details = tb.serve("details", 8080).unwrap();
    let details = tb.pod("details").ip;
    let node2 = tb.node("node2").wire_ip;
    let (cert, key) = forged_certificate(&tb.work_dir);
    let (cert, key) = (cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned());
    let hbone_plain = format!("http://{details}:15008/");
    let hbone_tls = format!("https://{details}:15008/");
    let outbound = format!("http://{details}:15001/");
    let admin_remote = format!("http://{node2}:15000/readyz");

    use Outcome::*;
    let cases: Vec<(From, Vec<&str>, &[Outcome])> = vec![
        // An out-of-mesh pod.
        (From::Pod("outsider"), vec![&hbone_plain], &[Closed]),
        (From::Pod("outsider"), vec!["-k", &hbone_tls], &[Closed]),
        (From::Pod("outsider"), vec!["-k", "--cert", &cert, "--key", &key, &hbone_tls], &[Closed]),
        (From::Pod("outsider"), vec![&outbound], &[Refused]),
        (From::Pod("outsider"), vec![&admin_remote], &[Refused]),
        // The node: the admin endpoint is its own (loopback only); the engine's ports are not.
        (From::Node("node2"), vec![&hbone_plain], &[Closed]),
        (From::Node("node2"), vec!["-k", "--cert", &cert, "--key", &key, &hbone_tls], &[Closed]),
        (From::Node("node2"), vec!["http://127.0.0.1:15001/"], &[Refused]),
        (From::Node("node2"), vec!["http://127.0.0.1:15000/healthz"], &[Answered(200)]),
        // Captured connections are reset by the local engine once the peer refuses, sometimes
        // before curl's connect() returns (curl 7): the denied flows below show who refused.
        // An in-mesh pod: tunneled as HBONE naming the engine's own ports (refused), or direct
        // to 15008 where TLS refuses plaintext.
        (From::Pod("productpage"), vec![&hbone_plain], &[Closed, Refused]),
        (From::Pod("productpage"), vec![&outbound], &[Closed, Refused]),
        (From::Pod("productpage"), vec![&admin_remote], &[Refused]),
        // The target pod itself, on its loopback and on its own address.
        // No original destination: the engine resets at once, often before connect() returns.
        (From::Pod("details"), vec!["http://127.0.0.1:15001/"], &[Closed, Refused]),
        (From::Pod("details"), vec!["http://127.0.0.1:15008/"], &[Closed]),
        (From::Pod("details"), vec!["-k", "https://127.0.0.1:15008/"], &[Closed]),
        (From::Pod("details"), vec![&hbone_plain], &[Closed, Refused]),
        (From::Pod("details"), vec!["http://127.0.0.1:15000/readyz"], &[Refused]),
    ];
    for (from, args, expected) in &cases {
        let (outcome, took) = call(&tb, *from, args);
        assert!(
            expected.contains(&outcome),
            "curl {args:?} from {from:?}: {outcome:?}, expected {expected:?}"
        );
        // A loop or a hang would show as the curl timeout (3 s).
        assert!(took < Duration::from_secs(2), "curl {args:?} from {from:?} took {took:?}");
    }

    // Every refusal by the engine is a denied flow with its reason.
    let flows = agent2.wait_for_flows(WAIT, |flows| {
        denied_from(flows, &tb.pod("outsider").ip.to_string(), "mTLS handshake") >= 3
    });
    let flows = flows.unwrap();
    let outsider = tb.pod("outsider").ip.to_string();
    assert!(denied_from(&flows, &outsider, "no certificate") >= 1, "{flows:#?}");
    let foreign = flows
        .iter()
        .filter(|f| f["verdict"] == "denied" && f["src"]["ip"] == outsider.as_str())
        .filter_map(|f| f["reason"].as_str())
        .filter(|r| {
            r.starts_with("mTLS handshake") && !r.contains("no certificate") && !r.contains("corrupt")
        })
        .count();
    assert!(foreign >= 1, "the foreign certificate is refused with its own reason: {flows:#?}");
    let productpage = tb.pod("productpage").ip.to_string();
    assert!(denied_from(&flows, &productpage, "is not an app port") >= 1, "{flows:#?}");
    let to_engine_ports = flows
        .iter()
        .filter(|f| f["reason"].as_str().is_some_and(|r| r.contains("is not an app port")))
        .count();
    assert!(to_engine_ports >= 2, "HBONE naming 15001 and 15008 is refused: {flows:#?}");

    // No crash, no wedged engine: both agents are ready and the mesh still works.
    assert!(agent1.process().is_running() && agent2.process().is_running());
    agent1.wait_ready(WAIT).unwrap();
    agent2.wait_ready(WAIT).unwrap();
    assert_eq!(tb.get("productpage", addr(&tb, "details", 8080), "/").unwrap()["status"], 200);
}

/// A valid mesh certificate (productpage's identity, signed by the testbed's CA), as a pod
/// outside the mesh would hold after stealing it; the chain file has the leaf first.
fn stolen_certificate(tb: &Testbed) -> (PathBuf, PathBuf) {
    let ca = tb.work_dir.join("shared-ca");
    let dir = tb.work_dir.join("stolen");
    std::fs::create_dir_all(&dir).unwrap();
    let (key, csr, leaf, ext) =
        (dir.join("key.pem"), dir.join("csr.pem"), dir.join("leaf.pem"), dir.join("ext.cnf"));
    std::fs::write(
        &ext,
        "subjectAltName=URI:spiffe://cluster.local/ns/bookinfo/sa/productpage\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth,serverAuth\n",
    )
    .unwrap();
    let openssl = |args: &[&std::ffi::OsStr]| {
        let output = std::process::Command::new("openssl").args(args).output().unwrap();
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    openssl(&[
        os("req"),
        os("-new"),
        os("-newkey"),
        os("ec"),
        os("-pkeyopt"),
        os("ec_paramgen_curve:prime256v1"),
        os("-nodes"),
        os("-subj"),
        os("/O=stolen"),
        os("-keyout"),
        key.as_os_str(),
        os("-out"),
        csr.as_os_str(),
    ]);
    let (ca_cert, ca_key) = (ca.join("ca-cert.pem"), ca.join("ca-key.pem"));
    openssl(&[
        os("x509"),
        os("-req"),
        os("-in"),
        csr.as_os_str(),
        os("-CA"),
        ca_cert.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-set_serial"),
        os("4242"),
        os("-days"),
        os("1"),
        os("-extfile"),
        ext.as_os_str(),
        os("-out"),
        leaf.as_os_str(),
    ]);
    let chain = dir.join("chain.pem");
    let mut pem = std::fs::read_to_string(&leaf).unwrap();
    pem.push_str(&std::fs::read_to_string(ca.join("cert-chain.pem")).unwrap());
    std::fs::write(&chain, pem).unwrap();
    (chain, key)
}

#[test]
fn hbone_with_a_stolen_mesh_certificate_reaches_only_the_app_ports_of_the_pod_it_dialled() {
    use lockmesh_tests::hbone::{Answer, call};
    let tb = bookinfo();
    let config = tb.config_dir("config").unwrap();
    let mut agent1 = Agent::start(&tb, "node1", &config, &[]).unwrap();
    let mut agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    let (_details, _ratings) = (tb.serve("details", 8080).unwrap(), tb.serve("ratings", 8080).unwrap());
    let (cert, key) = stolen_certificate(&tb);
    let details = tb.pod("details").ip;
    let hbone = std::net::SocketAddr::new(details.into(), 15008);
    let outsider = tb.pod("outsider").netns_path();
    let hbone_call =
        |method: &str, authority: &str| call(&outsider, hbone, &cert, &key, method, authority).unwrap();

    // The control: the certificate is valid, so the engine serves its own pod's app port (the
    // identity is authenticated; what it may reach is policy). The refusals below are real.
    match hbone_call("CONNECT", &format!("{details}:8080")) {
        Answer::Status(200, Some(answer)) => assert!(answer.starts_with("HTTP/1.1 200"), "{answer}"),
        other => panic!("CONNECT to details' app port: {other:?}"),
    }
    let node2 = tb.node("node2").wire_ip;
    let refused = [
        // Another pod on the same node, a pod on another node, an address nobody has.
        format!("{}:8080", tb.pod("ratings").ip),
        format!("{}:8080", tb.pod("productpage").ip),
        "10.255.255.1:80".to_string(),
        // The pod's loopback, the node (its admin endpoint), the engine's own ports.
        "127.0.0.1:8080".to_string(),
        format!("{node2}:15000"),
        format!("{details}:15001"),
        format!("{details}:15008"),
        format!("{details}:0"),
        // Names, not addresses: the engine never resolves what a peer asks for.
        "details.bookinfo.svc.cluster.local:8080".to_string(),
    ];
    for authority in &refused {
        assert_eq!(hbone_call("CONNECT", authority), Answer::Status(400, None), "CONNECT {authority}");
    }
    assert_eq!(hbone_call("GET", &format!("{details}:8080")), Answer::Status(405, None));

    // Each refusal is a denied flow with its reason; nothing crashed or wedged.
    let outsider_ip = tb.pod("outsider").ip.to_string();
    let flows = agent2
        .wait_for_flows(WAIT, |flows| denied_from(flows, &outsider_ip, "HBONE") > refused.len())
        .unwrap();
    assert!(denied_from(&flows, &outsider_ip, "is not a workload of this pod") >= 5, "{flows:#?}");
    assert!(denied_from(&flows, &outsider_ip, "is not an app port") >= 3, "{flows:#?}");
    assert!(denied_from(&flows, &outsider_ip, "is not CONNECT") == 1, "{flows:#?}");
    assert!(agent1.process().is_running() && agent2.process().is_running());
    agent2.wait_ready(WAIT).unwrap();
    assert_eq!(tb.get("productpage", addr(&tb, "details", 8080), "/").unwrap()["status"], 200);
}
