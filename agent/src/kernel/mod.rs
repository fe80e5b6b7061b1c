//! The kernel side of the agent: loads the embedded eBPF object, attaches its programs, pins its
//! maps under a per-node bpffs directory and exposes typed handles to them (`loader`, `maps`,
//! `events`); keeps the maps it owns in line with the desired state (`sync`) and the per-pod
//! programs on every enrolled pod (`guards`). A thin layer: all decisions are made in `desired`
//! and arrive here as map contents.
mod events;
mod guards;
mod initiated;
mod loader;
mod maps;
mod probe_snat;
mod stats;
mod sync;

use std::{collections::BTreeMap, path::PathBuf};

pub(crate) use events::EventReader;
pub(crate) use guards::Guards;
pub(crate) use loader::{Datapath, ProgramRef, is_bpffs, remove_pins};
use lockmesh_common::maps as map_names;
pub(crate) use maps::{CounterValues, Counters, OrigDstMap};
pub(crate) use probe_snat::{ProbeSnat, remove as remove_probe_snat};
pub(crate) use stats::{MapStat, MapStats};
pub(crate) use sync::{KernelMaps, MapProblem};

/// Where and how to load the datapath.
#[derive(Clone, Debug)]
pub(crate) struct DatapathOptions {
    /// cgroup v2 directory whose processes (and descendants) are observed and steered.
    pub cgroup: PathBuf,
    /// bpffs directory for this node's pinned maps.
    pub pin_dir: PathBuf,
    /// Size of the kernel→agent event ring buffer, in bytes (a power of two, ≥ 4096).
    pub ring_buffer_bytes: u32,
    /// Capacity of the enrolled-pods map.
    pub max_enrolled: u32,
    /// Capacities of other maps, by name (`--bpf-map-entries NAME=N`), instead of the
    /// defaults compiled into the eBPF object.
    pub map_entries: BTreeMap<String, u32>,
}

/// Maps whose capacity `--bpf-map-entries` may set (`ENROLLED` has `--max-enrolled`,
/// `FLOW_EVENTS` `--ring-buffer-bytes`; `COUNTERS` is fixed).
pub(crate) const RESIZABLE_MAPS: &[&str] = &[
    map_names::CAPTURE,
    map_names::STRICT,
    map_names::STRICT_EXEMPT,
    map_names::POD_SOURCES,
    map_names::ORIG_DST,
    map_names::ORIG_DST_BY_PORT,
    map_names::FIN_WAIT2_RCV_NXT,
    map_names::FLOW_STARTS,
    map_names::POD_INITIATED,
    map_names::POD_IFACES,
];

/// The flag that sets a map's capacity, for messages.
pub(crate) fn capacity_flag(map: &str) -> String {
    match map {
        map_names::ENROLLED => "--max-enrolled".into(),
        map_names::FLOW_EVENTS => "--ring-buffer-bytes".into(),
        other => format!("--bpf-map-entries {other}=N"),
    }
}
