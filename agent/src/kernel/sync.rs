//! The maps the agent owns, made to hold what `desired` computed. A full map keeps what fits;
//! what it leaves out is logged (naming the map, what is left out and the flag that raises it),
//! counted, returned for `/readyz`, and retried at the next sync.
use std::collections::{BTreeMap, HashMap, HashSet};

use lockmesh_common::{PodIface, SourceKey, maps as map_names};

use super::{
    Datapath,
    initiated::PodInitiated,
    maps::{
        CaptureMap, EnrolledMap, ExemptMap, PodIfacesMap, PodSourcesMap, StrictMap, SyncOutcome, SyncedMap,
    },
};
use crate::desired::{
    enrolment::Enrolment,
    maps::{Classes, KernelState},
};

/// A map and what it could not hold at its last sync (`None`: everything fits).
pub(crate) type MapProblem = (&'static str, Option<String>);

/// The hash maps the agent writes.
pub(crate) struct KernelMaps {
    enrolled: EnrolledMap,
    capture: CaptureMap,
    strict: StrictMap,
    exempt: ExemptMap,
    pod_sources: PodSourcesMap,
    pod_ifaces: PodIfacesMap,
    pod_initiated: PodInitiated,
}

impl KernelMaps {
    pub(crate) fn take(datapath: &mut Datapath) -> anyhow::Result<Self> {
        Ok(Self {
            enrolled: datapath.synced_map(map_names::ENROLLED)?,
            capture: datapath.synced_map(map_names::CAPTURE)?,
            strict: datapath.synced_map(map_names::STRICT)?,
            exempt: datapath.synced_map(map_names::STRICT_EXEMPT)?,
            pod_sources: datapath.synced_map(map_names::POD_SOURCES)?,
            pod_ifaces: datapath.synced_map(map_names::POD_IFACES)?,
            pod_initiated: datapath.pod_initiated()?,
        })
    }

    /// Makes `ENROLLED`, `CAPTURE`, `STRICT` and `STRICT_EXEMPT` hold `desired`, as far as they
    /// fit (and records newly enrolled pods' open connections in `POD_INITIATED` before
    /// `STRICT` changes); returns each map's problem. `enrolment` and `classes` name what is left out.
    pub(crate) fn sync_all(
        &mut self,
        desired: &KernelState,
        enrolment: &Enrolment,
        classes: &Classes,
    ) -> Vec<MapProblem> {
        let pods: HashMap<u64, String> =
            enrolment.pods().map(|p| (p.netns.cookie(), p.workload.key.to_string())).collect();
        let by_ip: HashMap<u32, String> = enrolment
            .pods()
            .flat_map(|p| {
                p.workload.addresses.iter().map(|a| (u32::from(*a).to_be(), p.workload.key.to_string()))
            })
            .collect();
        let named = |ip4: u32| match by_ip.get(&ip4) {
            Some(pod) => format!("{pod} {}", ip(ip4)),
            None => ip(ip4),
        };
        let enrolled = self.enrolled.sync(&desired.enrolled);
        let mut problems = vec![report_failures(
            &mut self.enrolled,
            &enrolled,
            "these pods' connections are neither steered into the engine nor observed",
            |cookie| pods.get(cookie).cloned().unwrap_or_else(|| format!("netns {cookie}")),
        )];
        // Before STRICT: the guard must know the connections newly enrolled pods already opened.
        let seeded = self.pod_initiated.seed(enrolment.pods().map(|p| p.netns.as_ref()));
        if seeded > 0 {
            tracing::info!(
                connections = seeded,
                "recorded the open outbound connections of newly enrolled pods"
            );
        }
        let capture = self.capture.sync(&desired.capture);
        problems.push(report_failures(
            &mut self.capture,
            &capture,
            "connections to these destinations are not steered into the tunnel",
            |k| format!("{} → {}:{}", classes.name_of(k.class).unwrap_or("?"), ip(k.ip4), any_port(k.port)),
        ));
        let strict = self.strict.sync(&desired.strict);
        problems.push(report_failures(
            &mut self.strict,
            &strict,
            "STRICT is not enforced in the kernel on these ports: plaintext reaches the app",
            |k| format!("{}:{}", named(k.ip4), any_port(k.port)),
        ));
        let exempt = self.exempt.sync(&desired.exempt);
        problems.push(report_failures(
            &mut self.exempt,
            &exempt,
            "these probe exemptions do not apply: the probes are reset under STRICT",
            |k| {
                let pod = if k.dst_ip4 == 0 { "*".to_string() } else { named(k.dst_ip4) };
                format!("{} → {pod}:{}", ip(k.src_ip4), any_port(k.port))
            },
        ));
        let changed = enrolled.added + capture.added + strict.added + exempt.added;
        let removed = enrolled.removed + capture.removed + strict.removed + exempt.removed;
        if changed + removed > 0 {
            tracing::info!(
                enrolled = enrolled.entries,
                capture = capture.entries,
                strict = strict.entries,
                changed,
                removed,
                "kernel maps updated"
            );
        }
        problems
    }

    /// Makes `POD_SOURCES` hold `desired`; `pods` names each interface's pod. Returns the map's
    /// problem and the interfaces whose addresses did not all fit (they must not be guarded: the
    /// guard would drop the traffic of the addresses left out).
    pub(crate) fn sync_pod_sources(
        &mut self,
        desired: &BTreeMap<SourceKey, u32>,
        pods: &HashMap<u32, String>,
    ) -> (MapProblem, HashSet<u32>) {
        let outcome = self.pod_sources.sync(desired);
        let problem = report_failures(
            &mut self.pod_sources,
            &outcome,
            "anti-spoofing is not enforced for these pods",
            |k| format!("{} {}", pods.get(&k.ifindex).map_or("?", String::as_str), ip(k.ip4)),
        );
        let incomplete = outcome.failed.iter().map(|(k, _)| k.ifindex).collect();
        (problem, incomplete)
    }

    /// Makes `POD_IFACES` hold `desired` (interface index → the pod's IPv4 address and class);
    /// `pods` names each interface's pod. Returns the map's problem.
    pub(crate) fn sync_pod_ifaces(
        &mut self,
        desired: &BTreeMap<u32, PodIface>,
        pods: &HashMap<u32, String>,
    ) -> MapProblem {
        let outcome = self.pod_ifaces.sync(desired);
        report_failures(
            &mut self.pod_ifaces,
            &outcome,
            "STRICT is not enforced on IPv6 for these pods",
            |ifindex| pods.get(ifindex).cloned().unwrap_or_else(|| format!("interface {ifindex}")),
        )
    }
}

/// Logs what a sync could not write (at most once a minute while unchanged): the map, its
/// capacity, what is left out and what that means, and the flag that raises the capacity.
/// Returns the map's name and the problem for /readyz (`None`: everything fits).
fn report_failures<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
    map: &mut SyncedMap<K, V>,
    outcome: &SyncOutcome<K>,
    consequence: &str,
    describe: impl Fn(&K) -> String,
) -> MapProblem {
    let name = map.name();
    for (key, error) in &outcome.not_removed {
        tracing::warn!(map = name, entry = %describe(key), %error, "cannot remove a stale kernel map entry");
    }
    if outcome.failed.is_empty() {
        map.should_log_failures(0);
        return (name, None);
    }
    const SHOWN: usize = 5;
    let mut what: Vec<String> = outcome.failed.iter().take(SHOWN).map(|(k, _)| describe(k)).collect();
    if outcome.failed.len() > SHOWN {
        what.push(format!("and {} more", outcome.failed.len() - SHOWN));
    }
    let problem = if outcome.full() {
        format!(
            "kernel map {name} is full ({} of {} entries): {} not written ({}); {consequence}; raise {}",
            outcome.entries,
            map.capacity(),
            entries(outcome.failed.len()),
            what.join(", "),
            super::capacity_flag(name),
        )
    } else {
        let error = outcome.failed.first().map(|(_, e)| e.message.as_str()).unwrap_or_default();
        format!(
            "kernel map {name}: {} not written ({}): {error}; {consequence}",
            entries(outcome.failed.len()),
            what.join(", ")
        )
    };
    if map.should_log_failures(outcome.failed.len()) {
        tracing::error!(
            map = name,
            "{problem} (retried every second; each refused write is counted in lockmesh_bpf_map_update_failures_total)"
        );
    }
    (name, Some(problem))
}

fn entries(n: usize) -> String {
    if n == 1 { "1 entry".into() } else { format!("{n} entries") }
}

/// A network-order IPv4 address of a map key, for messages.
fn ip(ip4_be: u32) -> String {
    std::net::Ipv4Addr::from(u32::from_be(ip4_be)).to_string()
}

fn any_port(port: u16) -> String {
    if port == 0 { "*".into() } else { port.to_string() }
}
