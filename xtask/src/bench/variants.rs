//! The data paths the bench compares, laid out side by side on one two-node testbed: every
//! variant has its own client pod on node1 and server pod on node2, so switching variants
//! round-robin costs nothing.
//!
//! ```text
//! plaintext  c-plain  ───────────────── wire ─────────────────────────▶ s-plain   (out of mesh)
//! lockmesh   c-mesh   ─▶ agent node1 ══ HBONE/mTLS :15008 ══ agent node2 ─▶ s-mesh
//! strict     c-strict ─▶ agent node1 ══ HBONE/mTLS :15008 ══ agent node2 ─▶ s-strict (STRICT)
//! stunnel    c-stun   ─▶ stunnel4 node1 ═══ TLS 1.3 mutual ═══ stunnel4 node2 ─▶ s-stun
//! haproxy    c-hap    ─▶ haproxy node1  ═══ TLS 1.3 mutual ═══ haproxy node2  ─▶ s-hap
//! ```
//! The userspace tunnels listen on the pods' gateway address (169.254.1.1, the node itself) on
//! node1, one port per service, and on node2's wire address for TLS.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use lockmesh_tests::{NodeSpec, PodSpec, Testbed, TestbedSpec, netns, process::ChildGuard};

/// The node-local address pods reach their node at (their default gateway).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The server pod's services. Tunnels forward one port per service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Iperf,
    /// Echoes as data arrives (round trips).
    Stream,
    /// Reads to EOF, echoes, closes (new connections).
    Echo,
    Http,
}

impl Service {
    pub const ALL: [Service; 4] = [Service::Iperf, Service::Stream, Service::Echo, Service::Http];

    pub fn port(self) -> u16 {
        match self {
            Service::Iperf => 5201,
            Service::Stream => 7001,
            Service::Echo => 7000,
            Service::Http => 8080,
        }
    }

    fn index(self) -> u16 {
        self as u16
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    Plaintext,
    Lockmesh,
    Strict,
    Stunnel,
    Haproxy,
}

impl Variant {
    pub const ALL: [Variant; 5] =
        [Variant::Plaintext, Variant::Lockmesh, Variant::Strict, Variant::Stunnel, Variant::Haproxy];

    /// Stable key (JSON, file names).
    pub fn key(self) -> &'static str {
        match self {
            Variant::Plaintext => "plaintext",
            Variant::Lockmesh => "lockmesh",
            Variant::Strict => "lockmesh-strict",
            Variant::Stunnel => "stunnel",
            Variant::Haproxy => "haproxy",
        }
    }

    /// Column heading.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Plaintext => "plaintext",
            Variant::Lockmesh => "lockmesh",
            Variant::Strict => "lockmesh STRICT",
            Variant::Stunnel => "stunnel4",
            Variant::Haproxy => "HAProxy",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Variant::Plaintext => "plain",
            Variant::Lockmesh => "mesh",
            Variant::Strict => "strict",
            Variant::Stunnel => "stun",
            Variant::Haproxy => "hap",
        }
    }

    pub fn client_pod(self) -> String {
        format!("c-{}", self.short())
    }

    pub fn server_pod(self) -> String {
        format!("s-{}", self.short())
    }

    pub fn is_mesh(self) -> bool {
        matches!(self, Variant::Lockmesh | Variant::Strict)
    }

    fn tunnel_base_port(self) -> Option<u16> {
        match self {
            Variant::Stunnel => Some(20000),
            Variant::Haproxy => Some(30000),
            _ => None,
        }
    }

    /// Where the client pod connects to reach `service` of its server pod: the server pod
    /// itself (plaintext and lockmesh, which captures transparently) or the node1 tunnel.
    pub fn target(self, tb: &Testbed, service: Service) -> SocketAddr {
        match self.tunnel_base_port() {
            Some(base) => SocketAddr::new(GATEWAY.into(), base + service.index()),
            None => SocketAddr::new(tb.pod(&self.server_pod()).ip.into(), service.port()),
        }
    }
}

/// The namespace of the STRICT variant's server (its PeerAuthentication's namespace).
pub const STRICT_NAMESPACE: &str = "strict";

pub fn testbed_spec() -> TestbedSpec {
    let pod = |variant: Variant, name: String, namespace: &str| {
        let pod = PodSpec::new(&name, namespace);
        if variant.is_mesh() { pod } else { pod.out_of_mesh() }
    };
    TestbedSpec {
        nodes: vec![
            NodeSpec::new("node1", Variant::ALL.iter().map(|v| pod(*v, v.client_pod(), "bench")).collect()),
            NodeSpec::new(
                "node2",
                Variant::ALL
                    .iter()
                    .map(|v| {
                        let ns = if *v == Variant::Strict { STRICT_NAMESPACE } else { "bench" };
                        pod(*v, v.server_pod(), ns)
                    })
                    .collect(),
            ),
        ],
    }
}

/// Loaded-machine settings so that connection-rate runs do not exhaust ephemeral ports.
pub fn tune_namespaces(tb: &Testbed) -> anyhow::Result<()> {
    let namespaces = tb.pods().map(|p| p.netns_path()).chain(tb.nodes.iter().map(|n| n.netns_path()));
    for ns in namespaces {
        netns::sysctl(&ns, "net/ipv4/tcp_tw_reuse", "1")?;
        netns::sysctl(&ns, "net/ipv4/ip_local_port_range", "10000 64999")?;
        netns::sysctl(&ns, "net/core/somaxconn", "4096")?;
    }
    Ok(())
}

/// The STRICT variant's policy, next to the testbed's workloads.yaml.
pub fn strict_policy_yaml() -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: default, namespace: {STRICT_NAMESPACE}}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
    )
}

/// A CA and one client+server certificate per node (ECDSA P-256, like lockmesh's), for the
/// userspace tunnels.
pub struct TunnelCerts {
    pub dir: PathBuf,
}

impl TunnelCerts {
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("openssl")
                .current_dir(dir)
                .args(args)
                .output()
                .context("running openssl (install it with `cargo xtask setup`)")?;
            if !out.status.success() {
                bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=bench-ca"],
                &["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
            ]
            .concat(),
        )?;
        for node in ["node1", "node2"] {
            let (key, csr, crt, ext) =
                (format!("{node}.key"), format!("{node}.csr"), format!("{node}.crt"), format!("{node}.ext"));
            std::fs::write(
                dir.join(&ext),
                format!("subjectAltName=DNS:{node}\nextendedKeyUsage=serverAuth,clientAuth\n"),
            )?;
            openssl(
                &[&["req"][..], &ec[..], &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={node}")]]
                    .concat(),
            )?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ])?;
            // HAProxy wants certificate and key in one file.
            let pem = [std::fs::read(dir.join(&crt))?, std::fs::read(dir.join(&key))?].concat();
            std::fs::write(dir.join(format!("{node}.pem")), pem)?;
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

/// The two processes of one userspace tunnel variant.
pub struct Tunnel {
    pub variant: Variant,
    pub client_side: ChildGuard,
    pub server_side: ChildGuard,
}

impl Tunnel {
    pub fn pids(&self) -> Vec<u32> {
        [self.client_side.pid(), self.server_side.pid()].into_iter().flatten().collect()
    }

    /// Starts the variant's tunnel on node1 and node2; `max_conns` sizes HAProxy.
    pub fn start(
        tb: &Testbed,
        variant: Variant,
        certs: &TunnelCerts,
        max_conns: u64,
    ) -> anyhow::Result<Self> {
        let base = variant.tunnel_base_port().context("not a tunnel variant")?;
        let server = tb.pod(&variant.server_pod()).ip;
        let node2 = tb.node("node2").wire_ip;
        let dir = tb.work_dir.join(variant.key());
        std::fs::create_dir_all(&dir)?;
        let (client_conf, server_conf) = match variant {
            Variant::Stunnel => stunnel_configs(base, server, node2, certs),
            _ => haproxy_configs(base, server, node2, certs, max_conns),
        };
        let mut sides = Vec::new();
        for (node, conf) in [("node1", client_conf), ("node2", server_conf)] {
            let path = dir.join(format!("{node}.conf"));
            std::fs::write(&path, conf)?;
            let ns = tb.node(node).netns_path();
            let command = match variant {
                Variant::Stunnel => {
                    let mut c = netns::command_in(&ns, "stunnel4")?;
                    c.arg(&path);
                    c
                }
                _ => {
                    let mut c = netns::command_in(&ns, "haproxy")?;
                    c.args(["-db", "-f"]).arg(&path);
                    c
                }
            };
            let name = format!("{} {node}", variant.label());
            sides.push(ChildGuard::spawn(&name, command, dir.join(format!("{node}.log")))?);
        }
        let server_side = sides.pop().context("two sides")?;
        let client_side = sides.pop().context("two sides")?;
        let mut tunnel = Self { variant, client_side, server_side };
        // Listening on both nodes?
        let n1 = tb.node("node1").netns_path();
        let n2 = tb.node("node2").netns_path();
        for service in Service::ALL {
            let i = service.index();
            for (ns, port) in [(&n1, base + i), (&n2, base + 1000 + i)] {
                if let Err(e) = crate::bench::measures::wait_listening(ns, port) {
                    let alive = tunnel.client_side.is_running() && tunnel.server_side.is_running();
                    bail!(
                        "{} not listening on :{port} ({e:#}; running: {alive})\nnode1 log:\n{}\nnode2 log:\n{}",
                        variant.label(),
                        tunnel.client_side.log(),
                        tunnel.server_side.log()
                    );
                }
            }
        }
        Ok(tunnel)
    }
}

fn stunnel_configs(base: u16, server: Ipv4Addr, node2: Ipv4Addr, certs: &TunnelCerts) -> (String, String) {
    let global = "foreground = yes\npid =\ndebug = 4\n";
    let (mut client, mut server_side) = (global.to_string(), global.to_string());
    for service in Service::ALL {
        let (i, port) = (service.index(), service.port());
        let name = format!("{service:?}").to_lowercase();
        client.push_str(&format!(
            "[{name}]\nclient = yes\naccept = {GATEWAY}:{front}\nconnect = {node2}:{tls}\n\
             cert = {cert}\nkey = {key}\nCAfile = {ca}\nverifyChain = yes\ncheckHost = node2\n\
             sslVersionMin = TLSv1.3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
            front = base + i,
            tls = base + 1000 + i,
            cert = certs.path("node1.crt"),
            key = certs.path("node1.key"),
            ca = certs.path("ca.crt"),
        ));
        server_side.push_str(&format!(
            "[{name}]\naccept = {node2}:{tls}\nconnect = {server}:{port}\n\
             cert = {cert}\nkey = {key}\nCAfile = {ca}\nverifyChain = yes\nrequireCert = yes\n\
             sslVersionMin = TLSv1.3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n",
            tls = base + 1000 + i,
            cert = certs.path("node2.crt"),
            key = certs.path("node2.key"),
            ca = certs.path("ca.crt"),
        ));
    }
    (client, server_side)
}

fn haproxy_configs(
    base: u16,
    server: Ipv4Addr,
    node2: Ipv4Addr,
    certs: &TunnelCerts,
    max_conns: u64,
) -> (String, String) {
    let global = format!(
        "global\n  maxconn {max_conns}\n\ndefaults\n  mode tcp\n  maxconn {max_conns}\n  \
         timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\n"
    );
    let (mut client, mut server_side) = (global.clone(), global);
    for service in Service::ALL {
        let (i, port) = (service.index(), service.port());
        let name = format!("{service:?}").to_lowercase();
        client.push_str(&format!(
            "listen {name}\n  bind {GATEWAY}:{front}\n  server s {node2}:{tls} ssl crt {pem} ca-file {ca} \
             verify required verifyhost node2 ssl-min-ver TLSv1.3\n\n",
            front = base + i,
            tls = base + 1000 + i,
            pem = certs.path("node1.pem"),
            ca = certs.path("ca.crt"),
        ));
        server_side.push_str(&format!(
            "listen {name}\n  bind {node2}:{tls} ssl crt {pem} ca-file {ca} verify required \
             ssl-min-ver TLSv1.3\n  server s {server}:{port}\n\n",
            tls = base + 1000 + i,
            pem = certs.path("node2.pem"),
            ca = certs.path("ca.crt"),
        ));
    }
    (client, server_side)
}
