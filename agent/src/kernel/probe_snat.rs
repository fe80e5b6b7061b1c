//! Kubelet probes reach STRICT pods in plaintext only from an address nothing else on the node
//! can send from. Exempting the node's own address would also exempt everything the node
//! forwards with that source: a NodePort or hostPort DNAT + MASQUERADE hands any outside client
//! the pod's probe port — usually its main port. So, as Istio ambient does, connections the node
//! itself opens (`fib saddr type local`: the source is one of its addresses before any
//! masquerade) to a pod's probe port are SNATed to a link-local address, and only that address
//! is exempt (`desired::maps` writes it into `STRICT_EXEMPT`).
//!
//! One nftables table, `ip lockmesh`, in the agent's (the node's) network namespace, holding the
//! probed (pod address, port) pairs; replaced atomically when they change, removed when there
//! are none (so a node without probes carries no NAT and no conntrack) and by `--cleanup`.
use std::{
    collections::BTreeSet,
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The table's name (family `ip`).
pub(crate) const TABLE: &str = "lockmesh";

/// The node's probe SNAT, as last written.
pub(crate) struct ProbeSnat {
    address: Ipv4Addr,
    /// What the table holds now (`None`: not known yet, e.g. left by a previous agent).
    applied: Option<BTreeSet<(Ipv4Addr, u16)>>,
}

impl ProbeSnat {
    pub(crate) fn new(address: Ipv4Addr) -> Self {
        Self { address, applied: None }
    }

    /// Makes the table SNAT exactly `probed` (pod address, port) pairs. On failure the previous
    /// rules stay (retried at the next sync) and probes to new pods are reset under STRICT.
    pub(crate) fn sync(&mut self, probed: &BTreeSet<(Ipv4Addr, u16)>) -> anyhow::Result<()> {
        if self.applied.as_ref() == Some(probed) {
            return Ok(());
        }
        nft(&ruleset(self.address, probed))?;
        tracing::info!(probes = probed.len(), snat = %self.address, "kubelet probe SNAT updated");
        self.applied = Some(probed.clone());
        Ok(())
    }
}

/// The nft script: the table dropped (if any) and written again, in one atomic transaction.
pub(crate) fn ruleset(address: Ipv4Addr, probed: &BTreeSet<(Ipv4Addr, u16)>) -> String {
    // `add` then `delete`: deleting a table that does not exist would fail the transaction.
    let mut script = format!("add table ip {TABLE}\ndelete table ip {TABLE}\n");
    if probed.is_empty() {
        return script;
    }
    let elements: Vec<String> = probed.iter().map(|(ip, port)| format!("{ip} . {port}")).collect();
    script.push_str(&format!(
        "table ip {TABLE} {{\n\
         \tset probed {{ type ipv4_addr . inet_service; elements = {{ {} }} }}\n\
         \tchain probe_snat {{\n\
         \t\ttype nat hook postrouting priority srcnat - 10; policy accept;\n\
         \t\tmeta l4proto tcp fib saddr type local ip daddr . tcp dport @probed snat to {address}\n\
         \t}}\n\
         }}\n",
        elements.join(", ")
    ));
    script
}

/// Removes the table (`--cleanup`, uninstall); nothing to do when there is none.
pub(crate) fn remove() -> anyhow::Result<()> {
    nft(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"))
}

fn nft(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (the nftables package) for the kubelet probe SNAT")?;
    child.stdin.take().context("nft's stdin")?.write_all(script.as_bytes()).context("writing to nft")?;
    let output = child.wait_with_output().context("waiting for nft")?;
    if !output.status.success() {
        bail!("nft failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
