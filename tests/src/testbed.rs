//! N nodes × M pods on one machine, made of network namespaces.
//!
//! ```text
//!   pod netns (eth0 10.77.K.I/32) ──veth── node K netns (pK-I) ──wire0 10.76.0.K/24──┐
//!                                                                                    br0 (fabric netns)
//!   pod netns ...                 ──veth── node J netns        ──wire0 10.76.0.J/24──┘
//! ```
//! Pods route everything to a link-local gateway (169.254.1.1, on each node's loopback), nodes
//! route pod /32s to their veths and other nodes' pod /24s over the wire. A capture on a node's
//! `wire0` sees exactly the node-to-node traffic.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::netns::{self, path_of};

/// Where persisted testbeds (`cargo xtask testbed up`) are described.
pub const STATE_DIR: &str = "/run/lockmesh-testbed";
/// Every testbed namespace starts with this, then the run id.
pub const NAME_PREFIX: &str = "lm";
/// The node-to-node interface in each node namespace.
pub const WIRE_IF: &str = "wire0";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TestbedSpec {
    pub nodes: Vec<NodeSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub pods: Vec<PodSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// In the mesh: written to the Workload YAML. Out-of-mesh pods exist only on the network.
    pub in_mesh: bool,
}

impl PodSpec {
    /// An in-mesh pod with service account = name and label `app: <name>`.
    pub fn new(name: &str, namespace: &str) -> Self {
        Self {
            name: name.to_string(),
            namespace: namespace.to_string(),
            service_account: name.to_string(),
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            in_mesh: true,
        }
    }

    pub fn out_of_mesh(mut self) -> Self {
        self.in_mesh = false;
        self
    }

    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = sa.to_string();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }
}

impl NodeSpec {
    pub fn new(name: &str, pods: Vec<PodSpec>) -> Self {
        Self { name: name.to_string(), pods }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// Name of the node's network namespace (`ip netns` name).
    pub netns: String,
    pub wire_ip: Ipv4Addr,
    pub pods: Vec<Pod>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub in_mesh: bool,
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The pod's veth on the node side.
    pub host_if: String,
}

impl Node {
    pub fn netns_path(&self) -> PathBuf {
        path_of(&self.netns)
    }
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        path_of(&self.netns)
    }
}

/// A running testbed. Dropping it removes every namespace (and so every interface) it made and
/// kills processes still inside them, unless it was [`Testbed::persist`]ed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Testbed {
    pub id: String,
    pub nodes: Vec<Node>,
    fabric: String,
    /// Scratch dir for configs and logs of this run.
    pub work_dir: PathBuf,
    #[serde(skip)]
    persisted: bool,
    /// The test app binary to run in pods (default: found in target/).
    #[serde(skip)]
    pub app_binary: Option<PathBuf>,
}

impl Testbed {
    /// Builds the testbed; on failure removes whatever part of it exists.
    pub fn up(spec: &TestbedSpec) -> anyhow::Result<Self> {
        check_prerequisites()?;
        validate(spec)?;
        let id = run_id()?;
        let work_dir = std::env::temp_dir().join(format!("lockmesh-testbed-{id}"));
        std::fs::create_dir_all(&work_dir)?;
        let mut testbed = Self {
            fabric: format!("{NAME_PREFIX}{id}-fabric"),
            id: id.clone(),
            nodes: Vec::new(),
            work_dir,
            persisted: false,
            app_binary: None,
        };
        // Fill in the plan first so that Drop knows every name even if building fails midway.
        for (k, node) in spec.nodes.iter().enumerate() {
            let k = k + 1;
            let pods = node
                .pods
                .iter()
                .enumerate()
                .map(|(i, p)| Pod {
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    service_account: p.service_account.clone(),
                    labels: p.labels.clone(),
                    in_mesh: p.in_mesh,
                    node: node.name.clone(),
                    netns: format!("{NAME_PREFIX}{id}-{}", p.name),
                    ip: Ipv4Addr::new(10, 77, k as u8, (i + 2) as u8),
                    host_if: format!("p{}", i + 1),
                })
                .collect();
            testbed.nodes.push(Node {
                name: node.name.clone(),
                netns: format!("{NAME_PREFIX}{id}-{}", node.name),
                wire_ip: Ipv4Addr::new(10, 76, 0, k as u8),
                pods,
            });
        }
        testbed.build()?;
        Ok(testbed)
    }

    fn build(&self) -> anyhow::Result<()> {
        let fabric = &self.fabric;
        ip(&["netns", "add", fabric])?;
        ip(&["-n", fabric, "link", "set", "lo", "up"])?;
        ip(&["-n", fabric, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", fabric, "link", "set", "br0", "up"])?;
        for (k, node) in self.nodes.iter().enumerate() {
            let ns = node.netns.as_str();
            let fabric_port = format!("n{}", k + 1);
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // The pods' default gateway: answered by the node for ARP on every veth.
            ip(&["-n", ns, "addr", "add", "169.254.1.1/32", "dev", "lo"])?;
            netns::sysctl(&node.netns_path(), "net/ipv4/ip_forward", "1")?;
            ip(&[
                "-n",
                fabric,
                "link",
                "add",
                &fabric_port,
                "type",
                "veth",
                "peer",
                "name",
                WIRE_IF,
                "netns",
                ns,
            ])?;
            ip(&["-n", fabric, "link", "set", &fabric_port, "master", "br0", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{}/24", node.wire_ip), "dev", WIRE_IF])?;
            ip(&["-n", ns, "link", "set", WIRE_IF, "up"])?;
            for pod in &node.pods {
                let pns = pod.netns.as_str();
                ip(&["netns", "add", pns])?;
                ip(&[
                    "-n",
                    ns,
                    "link",
                    "add",
                    &pod.host_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    pns,
                ])?;
                ip(&["-n", ns, "link", "set", &pod.host_if, "up"])?;
                ip(&["-n", ns, "route", "add", &format!("{}/32", pod.ip), "dev", &pod.host_if])?;
                ip(&["-n", pns, "link", "set", "lo", "up"])?;
                ip(&["-n", pns, "addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"])?;
                ip(&["-n", pns, "link", "set", "eth0", "up"])?;
                ip(&["-n", pns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])?;
                ip(&["-n", pns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])?;
            }
        }
        for (k, node) in self.nodes.iter().enumerate() {
            for (j, other) in self.nodes.iter().enumerate() {
                if j != k {
                    let subnet = format!("10.77.{}.0/24", j + 1);
                    ip(&["-n", &node.netns, "route", "add", &subnet, "via", &other.wire_ip.to_string()])?;
                }
            }
        }
        Ok(())
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name} in the testbed"))
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name} in the testbed"))
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// `Workload` documents for the in-mesh pods (lockmesh's local inventory format).
    pub fn workload_yaml(&self) -> String {
        let mut out = String::new();
        for pod in self.pods().filter(|p| p.in_mesh) {
            out.push_str(&workload_document(pod));
        }
        out
    }

    /// A fresh config dir under the work dir holding `workloads.yaml`.
    pub fn config_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work_dir.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("workloads.yaml"), self.workload_yaml())?;
        Ok(dir)
    }

    /// Keeps the testbed after this process exits, described in `STATE_DIR/<id>.json` for
    /// `cargo xtask testbed status|down`.
    pub fn persist(&mut self) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(STATE_DIR)?;
        let path = Path::new(STATE_DIR).join(format!("{}.json", self.id));
        std::fs::write(&path, serde_json::to_vec_pretty(&*self)?)?;
        self.persisted = true;
        Ok(path)
    }

    /// Loads a persisted testbed; dropping it tears it down.
    pub fn load(id: &str) -> anyhow::Result<Self> {
        let path = Path::new(STATE_DIR).join(format!("{id}.json"));
        let text = std::fs::read(&path).with_context(|| format!("no testbed {id} ({})", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Ids of persisted testbeds.
    pub fn persisted_ids() -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(STATE_DIR) else { return Vec::new() };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.path().file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        ids.sort();
        ids
    }

    /// Namespace names of this testbed, pods first (teardown order).
    fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self.pods().map(|p| p.netns.clone()).collect();
        names.extend(self.nodes.iter().map(|n| n.netns.clone()));
        names.push(self.fabric.clone());
        names
    }

    /// Kills what runs inside, deletes the namespaces (their interfaces go with them) and the
    /// state file.
    pub fn down(mut self) -> anyhow::Result<()> {
        self.persisted = false;
        let errors = teardown(&self.namespaces());
        let _ = std::fs::remove_file(Path::new(STATE_DIR).join(format!("{}.json", self.id)));
        let _ = std::fs::remove_dir_all(&self.work_dir);
        self.persisted = true; // already torn down; Drop has nothing left to do
        if errors.is_empty() { Ok(()) } else { bail!("teardown: {}", errors.join("; ")) }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.persisted {
            return;
        }
        for error in teardown(&self.namespaces()) {
            eprintln!("testbed {}: {error}", self.id);
        }
        if std::thread::panicking() {
            eprintln!("testbed {}: logs kept in {}", self.id, self.work_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.work_dir);
        }
    }
}

fn workload_document(pod: &Pod) -> String {
    let mut labels = String::new();
    for (i, (k, v)) in pod.labels.iter().enumerate() {
        let _ = write!(labels, "{}{k}: {v}", if i == 0 { "" } else { ", " });
    }
    format!(
        "apiVersion: lockmesh.io/v1alpha1\nkind: Workload\nmetadata: {{name: {}, namespace: {}, labels: {{{labels}}}}}\n\
         spec: {{node: {}, serviceAccount: {}, addresses: [{}], netns: {}}}\n---\n",
        pod.name,
        pod.namespace,
        pod.node,
        pod.service_account,
        pod.ip,
        pod.netns_path().display()
    )
}

/// Removes namespaces by name, stopping their processes first (SIGTERM, then SIGKILL), and the
/// bpffs pins of agents of this testbed; returns what went wrong.
pub fn teardown(names: &[String]) -> Vec<String> {
    let pids: Vec<nix::unistd::Pid> = names
        .iter()
        .filter(|name| path_of(name).exists())
        .filter_map(|name| std::process::Command::new("ip").args(["netns", "pids", name]).output().ok())
        .flat_map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .map(nix::unistd::Pid::from_raw)
                .collect::<Vec<_>>()
        })
        .collect();
    use nix::sys::signal::{Signal, kill};
    for pid in &pids {
        let _ = kill(*pid, Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while pids.iter().any(|p| kill(*p, None).is_ok()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for pid in &pids {
        let _ = kill(*pid, Signal::SIGKILL);
    }
    let mut errors = Vec::new();
    for name in names {
        if path_of(name).exists()
            && let Err(e) = ip(&["netns", "del", name])
        {
            errors.push(format!("{e:#}"));
        }
    }
    // Pins of agents that were killed instead of stopped (`<bpffs>/lockmesh/<id>-<node>`).
    let ids: std::collections::BTreeSet<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix(NAME_PREFIX))
        .filter_map(|r| r.split_once('-'))
        .map(|(id, _)| id)
        .collect();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf/lockmesh") {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if ids.iter().any(|id| name.starts_with(&format!("{id}-"))) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    errors
}

/// Every testbed namespace on the machine (`lm<6 hex>-…`), for sweeping after crashes.
pub fn all_testbed_namespaces() -> Vec<String> {
    let Ok(out) = std::process::Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| is_testbed_name(n))
        .map(str::to_string)
        .collect();
    // Pods before nodes before fabrics is not needed for deletion, but kill order is nicer.
    names.sort_by_key(|n| n.ends_with("-fabric"));
    names
}

fn is_testbed_name(name: &str) -> bool {
    name.strip_prefix(NAME_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(id, _)| id.len() == 6 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = std::process::Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

fn run_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 3];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn validate(spec: &TestbedSpec) -> anyhow::Result<()> {
    if spec.nodes.is_empty() || spec.nodes.len() > 250 {
        bail!("a testbed needs 1 to 250 nodes");
    }
    let mut seen = std::collections::BTreeSet::new();
    for node in &spec.nodes {
        if node.pods.len() > 250 {
            bail!("node {} has more than 250 pods", node.name);
        }
        for name in std::iter::once(&node.name).chain(node.pods.iter().map(|p| &p.name)) {
            if name == "fabric" || !seen.insert(name.clone()) {
                bail!("testbed names must be unique and not 'fabric': {name}");
            }
        }
    }
    Ok(())
}

/// The testbed needs root and iproute2; say so plainly instead of failing obscurely.
pub fn check_prerequisites() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the testbed needs root (network namespaces, veths, eBPF); run the tests as root");
    }
    let ok = std::process::Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        bail!("`ip` (iproute2) is missing: run `cargo xtask setup`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn testbed_names_are_recognised() {
        assert!(is_testbed_name("lma1b2c3-node1"));
        assert!(!is_testbed_name("lmzz-node1"));
        assert!(!is_testbed_name("other"));
    }
}
