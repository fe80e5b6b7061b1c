//! Loads the embedded eBPF object, attaches its programs (pinned links, so the datapath
//! outlives the agent and fails closed), pins its maps and hands out typed handles to them.
use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, MapInfo},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, SockOps, TcAttachType,
        links::{FdLink, PinnedLink},
        tc,
    },
};
use lockmesh_common::{maps as map_names, programs as prog_names};

use super::{
    DatapathOptions, RESIZABLE_MAPS,
    events::EventReader,
    maps::{Counters, OrigDstMap, SyncedMap},
    stats::{self, MapStats},
};

/// The eBPF object built from ebpf/lockmesh-ebpf by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lockmesh"));

/// The loaded and attached programs and their maps. Dropping it detaches the programs; the
/// pinned maps stay until [`Datapath::remove_pins`].
pub(crate) struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// Where this layout's maps are pinned.
    maps_dir: PathBuf,
    stats: MapStats,
    programs: Vec<ProgramRef>,
    /// Host-side pod interfaces the STRICT program guards, and the pin of its link on each.
    guarded: std::collections::HashMap<String, PathBuf>,
    /// Host-side pod interfaces the anti-spoofing program guards, and the pin of its link.
    source_guarded: std::collections::HashMap<String, PathBuf>,
    /// Links a previous agent pinned, still to be replaced by ours (then released).
    inherited_guards: Vec<PathBuf>,
    /// A previous agent's datapath of another map layout, kept until our first config is in.
    previous: PreviousDatapath,
}

/// The cgroup links and maps of a previous agent whose maps had another layout.
#[derive(Default)]
struct PreviousDatapath {
    cgroup_links: Vec<PathBuf>,
    maps_dirs: Vec<PathBuf>,
}

/// A program the agent loaded, as the kernel knows it (for `/readyz` and support).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ProgramRef {
    pub name: String,
    pub id: u32,
}

impl Datapath {
    pub(crate) fn load(options: &DatapathOptions) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            bail!("this lockmesh binary was built with AYA_BUILD_SKIP=1 and carries no eBPF programs");
        }
        if !options.ring_buffer_bytes.is_power_of_two() || options.ring_buffer_bytes < 4096 {
            bail!(
                "--ring-buffer-bytes must be a power of two of at least 4096, got {}",
                options.ring_buffer_bytes
            );
        }
        ensure_bpffs(&options.pin_dir)?;
        std::fs::create_dir_all(&options.pin_dir)
            .with_context(|| format!("creating the pin directory {}", options.pin_dir.display()))?;
        raise_memlock_limit();

        // The maps' directory names their layout: an agent whose maps differ (another version,
        // other sizes) starts fresh instead of adopting maps it would misread.
        let maps_dir = options.pin_dir.join(maps_dir_name(options));
        std::fs::create_dir_all(&maps_dir).with_context(|| format!("creating {}", maps_dir.display()))?;
        let mut ebpf = load_object(options, &maps_dir)?;

        // Links are pinned so that the datapath outlives the agent (fail closed: STRICT keeps
        // resetting, captured connections keep failing fast instead of leaking plaintext). A
        // restarting agent attaches its own links first, then releases the old ones.
        let links_dir = options.pin_dir.join(LINKS_DIR);
        std::fs::create_dir_all(&links_dir).with_context(|| format!("creating {}", links_dir.display()))?;
        let inherited = pinned_links(&links_dir);
        let (links, mut programs) = attach_cgroup_programs(&mut ebpf, &options.cgroup)?;
        for name in [prog_names::STRICT, prog_names::ANTISPOOF] {
            let classifier: &mut SchedClassifier = program(&mut ebpf, name)?.try_into()?;
            classifier.load().with_context(|| format!("verifying {name}"))?;
            programs.push(ProgramRef { name: name.to_string(), id: classifier.info()?.id() });
        }
        for (name, prog_id, link) in links {
            let path = links_dir.join(format!("{name}-{prog_id}"));
            link.pin(&path).with_context(|| format!("pinning the {name} link at {}", path.display()))?;
        }
        let (inherited_guards, inherited_cgroup): (Vec<_>, Vec<_>) =
            inherited.into_iter().partition(|p| is_guard_pin(p));
        // Maps of another layout: the previous agent's programs still use them.
        let other_layouts: Vec<PathBuf> = std::fs::read_dir(&options.pin_dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("maps-") && e.path() != maps_dir)
            .map(|e| e.path())
            .collect();
        let mut previous = PreviousDatapath::default();
        if other_layouts.is_empty() {
            // Same maps: the previous programs and ours steer alike; theirs can go at once.
            if !inherited_cgroup.is_empty() {
                tracing::info!(
                    links = inherited_cgroup.len(),
                    "replacing the datapath of the previous agent"
                );
            }
            inherited_cgroup.iter().for_each(|path| release_link(path));
        } else {
            // Our maps are empty until the first config is applied: the previous programs run
            // first on the cgroup and keep steering (into an engine that is not there yet, so
            // connections fail closed) until then, instead of letting connections out uncaptured.
            tracing::info!(
                links = inherited_cgroup.len(),
                "another map layout: the previous agent's datapath stays until this agent's first config is applied"
            );
            previous = PreviousDatapath { cgroup_links: inherited_cgroup, maps_dirs: other_layouts };
        }

        let stats = MapStats::default();
        for name in map_names::ALL {
            let capacity = MapInfo::from_pin(maps_dir.join(name))
                .map(|info| u64::from(info.max_entries()))
                .with_context(|| format!("reading the capacity of map {name}"))?;
            stats.update(name, |stat| stat.capacity = capacity);
        }
        tracing::info!(cgroup = %options.cgroup.display(), pins = %options.pin_dir.display(), "eBPF programs attached");
        Ok(Self {
            ebpf,
            pin_dir: options.pin_dir.clone(),
            maps_dir,
            stats,
            programs,
            guarded: Default::default(),
            source_guarded: Default::default(),
            inherited_guards,
            previous,
        })
    }

    /// Puts the STRICT program on the way into a pod: TC egress of its host-side interface. The
    /// link is pinned; a previous agent's link on the interface is released once ours is in.
    pub(crate) fn guard(&mut self, interface: &str) -> anyhow::Result<()> {
        if self.guarded.contains_key(interface) {
            return Ok(());
        }
        let path =
            self.attach_pinned_tc(prog_names::STRICT, interface, TcAttachType::Egress, GUARD_PREFIX)?;
        self.guarded.insert(interface.to_string(), path);
        tracing::debug!(%interface, "STRICT guard attached");
        Ok(())
    }

    /// Puts the anti-spoofing program on the way out of a pod: TC ingress of its host-side
    /// interface, checking sources against `POD_SOURCES` (fill it first: an interface without
    /// entries drops all of its pod's IPv4). Pinned like the STRICT guard.
    pub(crate) fn guard_sources(&mut self, interface: &str) -> anyhow::Result<()> {
        if self.source_guarded.contains_key(interface) {
            return Ok(());
        }
        let path =
            self.attach_pinned_tc(prog_names::ANTISPOOF, interface, TcAttachType::Ingress, ANTISPOOF_PREFIX)?;
        self.source_guarded.insert(interface.to_string(), path);
        tracing::debug!(%interface, "anti-spoofing guard attached");
        Ok(())
    }

    /// Attaches a TC program to an interface through a pinned link named
    /// `<prefix><ifindex>-<program id>`, then releases a previous agent's link of the same kind
    /// on the interface (ours is in first: no gap).
    fn attach_pinned_tc(
        &mut self,
        name: &str,
        interface: &str,
        attach_type: TcAttachType,
        prefix: &str,
    ) -> anyhow::Result<PathBuf> {
        // Needed on kernels without TCX; harmless where the qdisc exists or TCX is used.
        let _ = tc::qdisc_add_clsact(interface);
        let classifier: &mut SchedClassifier = program(&mut self.ebpf, name)?.try_into()?;
        let id = classifier
            .attach(interface, attach_type)
            .with_context(|| format!("attaching {name} to {interface}"))?;
        let link = FdLink::try_from(classifier.take_link(id)?)
            .with_context(|| format!("the {name} link is not an fd link (TCX)"))?;
        let prog_id = classifier.info()?.id();
        let ifindex =
            nix::net::if_::if_nametoindex(interface).with_context(|| format!("no interface {interface}"))?;
        let path = self.pin_dir.join(LINKS_DIR).join(format!("{prefix}{ifindex}-{prog_id}"));
        link.pin(&path).with_context(|| format!("pinning the {name} link at {}", path.display()))?;
        let same_kind = format!("{prefix}{ifindex}-");
        self.inherited_guards.retain(|old| {
            let same = old.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&same_kind));
            if same {
                release_link(old);
            }
            !same
        });
        Ok(path)
    }

    /// Removes the STRICT and anti-spoofing programs from an interface (the pod left; the
    /// interface may be gone).
    pub(crate) fn unguard(&mut self, interface: &str) {
        if let Some(path) = self.guarded.remove(interface) {
            release_link(&path);
        }
        if let Some(path) = self.source_guarded.remove(interface) {
            release_link(&path);
        }
    }

    /// Called once this agent's maps hold its first config and its guards are on: releases a
    /// previous agent's datapath of another map layout (its cgroup programs and maps), and the
    /// previous agent's guards of interfaces that are gone. Other guards stay until this agent
    /// guards the interface again; until then they enforce what the (shared) STRICT map says,
    /// which this agent keeps current.
    pub(crate) fn release_inherited(&mut self) {
        let previous = std::mem::take(&mut self.previous);
        if !previous.cgroup_links.is_empty() {
            tracing::info!(links = previous.cgroup_links.len(), "released the previous agent's datapath");
        }
        previous.cgroup_links.iter().for_each(|path| release_link(path));
        for dir in previous.maps_dirs {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the previous layout's maps");
            }
        }
        self.inherited_guards.retain(|path| {
            let ifindex = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| GUARD_PREFIXES.iter().find_map(|prefix| n.strip_prefix(prefix)))
                .and_then(|n| n.split_once('-'))
                .and_then(|(index, _)| index.parse::<u32>().ok());
            let exists = ifindex.is_some_and(|index| nix::net::if_::if_indextoname(index).is_ok());
            if !exists {
                release_link(path);
            }
            exists
        });
    }

    pub(crate) fn programs(&self) -> &[ProgramRef] {
        &self.programs
    }

    /// The agent-owned hash map `name`, typed.
    pub(crate) fn synced_map<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
        &mut self,
        name: &'static str,
    ) -> anyhow::Result<SyncedMap<K, V>> {
        SyncedMap::take(&mut self.ebpf, name, self.stats.clone())
    }

    pub(super) fn pod_initiated(&mut self) -> anyhow::Result<super::initiated::PodInitiated> {
        super::initiated::PodInitiated::take(&mut self.ebpf)
    }

    pub(crate) fn orig_dst_map(&mut self) -> anyhow::Result<OrigDstMap> {
        OrigDstMap::take(&mut self.ebpf)
    }

    /// Figures of every map (capacity, entries, refused writes), kept current.
    pub(crate) fn map_stats(&self) -> MapStats {
        self.stats.clone()
    }

    /// Starts counting the entries of the maps the kernel writes (`ORIG_DST`,
    /// `ORIG_DST_BY_PORT`, `FIN_WAIT2_RCV_NXT`, `FLOW_STARTS`, `POD_INITIATED`) every [`COUNT_EVERY`](stats::COUNT_EVERY), through handles of
    /// their own.
    pub(crate) fn count_kernel_maps(&mut self) -> anyhow::Result<()> {
        let pinned = |name: &str| -> anyhow::Result<Map> {
            let path = self.maps_dir.join(name);
            let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        let maps = vec![
            stats::Countable::new::<u64, lockmesh_common::OrigDst>(
                map_names::ORIG_DST,
                pinned(map_names::ORIG_DST)?,
            )?,
            stats::Countable::new::<lockmesh_common::PortKey, lockmesh_common::OrigDst>(
                map_names::ORIG_DST_BY_PORT,
                pinned(map_names::ORIG_DST_BY_PORT)?,
            )?,
            stats::Countable::new::<u64, u32>(
                map_names::FIN_WAIT2_RCV_NXT,
                pinned(map_names::FIN_WAIT2_RCV_NXT)?,
            )?,
            stats::Countable::new::<u64, lockmesh_common::FlowStart>(
                map_names::FLOW_STARTS,
                pinned(map_names::FLOW_STARTS)?,
            )?,
            stats::Countable::new::<lockmesh_common::ConnKey, u32>(
                map_names::POD_INITIATED,
                pinned(map_names::POD_INITIATED)?,
            )?,
        ];
        stats::count_forever(maps, self.stats.clone())
    }

    pub(crate) fn counters(&mut self) -> anyhow::Result<Counters> {
        Counters::take(&mut self.ebpf)
    }

    pub(crate) fn event_reader(&mut self) -> anyhow::Result<EventReader> {
        EventReader::take(&mut self.ebpf)
    }

    /// Detaches the programs and removes this node's pins: nothing of the agent stays in the
    /// kernel.
    /// Leaves the datapath in the kernel, pinned, for the next agent (fail closed).
    pub(crate) fn leave_in_place(self) {
        tracing::info!(
            pins = %self.pin_dir.display(),
            "datapath left in place (STRICT keeps holding); `lockmesh agent --cleanup` removes it"
        );
    }
}

/// The eBPF object loaded into the kernel with the maps sized as the options say and pinned in
/// `maps_dir`; its log records go to the agent's log.
fn load_object(options: &DatapathOptions, maps_dir: &Path) -> anyhow::Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(map_names::ENROLLED, options.max_enrolled)
        .map_max_entries(map_names::FLOW_EVENTS, options.ring_buffer_bytes);
    for (name, entries) in &options.map_entries {
        if !RESIZABLE_MAPS.contains(&name.as_str()) {
            bail!("--bpf-map-entries: {name} is not a resizable map");
        }
        loader.map_max_entries(name, *entries);
    }
    // Pinned maps outlive this process: a restarted agent adopts them (and the events the
    // kernel queued meanwhile) instead of starting blind.
    let pins: Vec<(&str, PathBuf)> = map_names::ALL.iter().map(|name| (*name, maps_dir.join(name))).collect();
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(OBJECT).context("loading the eBPF object into the kernel")?;
    match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => spawn_kernel_logger(logger),
        Err(e) => tracing::debug!(error = %e, "no eBPF log records in this object"),
    }
    Ok(ebpf)
}

/// A program attached to the cgroup, with its link (to pin).
type CgroupLink = (&'static str, u32, FdLink);

/// Verifies and attaches the cgroup programs (sock_ops, connect4/6, getpeername4/6,
/// getsockname4/6).
fn attach_cgroup_programs(
    ebpf: &mut Ebpf,
    cgroup: &Path,
) -> anyhow::Result<(Vec<CgroupLink>, Vec<ProgramRef>)> {
    let cgroup = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    let mut links = Vec::new();
    let mut programs = Vec::new();
    // `Single` still creates a bpf_link, which the kernel stacks with other links on the
    // cgroup; `AllowMultiple` is rejected by aya 0.14 (see kernel-notes).
    {
        let sock_ops: &mut SockOps = program(ebpf, prog_names::SOCK_OPS)?.try_into()?;
        sock_ops.load().context("verifying lockmesh_sockops")?;
        let id = sock_ops.attach(&cgroup, CgroupAttachMode::Single).context("attaching lockmesh_sockops")?;
        let link = FdLink::try_from(sock_ops.take_link(id)?).context("sock_ops link is not an fd link")?;
        let prog_id = sock_ops.info()?.id();
        links.push((prog_names::SOCK_OPS, prog_id, link));
        programs.push(ProgramRef { name: prog_names::SOCK_OPS.to_string(), id: prog_id });
    }
    for name in [
        prog_names::CONNECT4,
        prog_names::GETPEERNAME4,
        prog_names::GETSOCKNAME4,
        prog_names::CONNECT6,
        prog_names::GETPEERNAME6,
        prog_names::GETSOCKNAME6,
    ] {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?.try_into()?;
        prog.load().with_context(|| format!("verifying {name}"))?;
        let id =
            prog.attach(&cgroup, CgroupAttachMode::Single).with_context(|| format!("attaching {name}"))?;
        let link = FdLink::try_from(prog.take_link(id)?).context("sock_addr link is not an fd link")?;
        let prog_id = prog.info()?.id();
        links.push((name, prog_id, link));
        programs.push(ProgramRef { name: name.to_string(), id: prog_id });
    }
    Ok((links, programs))
}

/// The maps' directory: their layout version and sizes, so that an agent whose maps differ
/// starts with fresh ones. Sizes set with `--bpf-map-entries` are appended (`-CAPTURE-1000`);
/// without them the name is what earlier agents used (their maps are adopted).
fn maps_dir_name(options: &DatapathOptions) -> String {
    let mut name = format!("maps-v{MAP_LAYOUT}-e{}-r{}", options.max_enrolled, options.ring_buffer_bytes);
    for (map, entries) in &options.map_entries {
        name.push_str(&format!("-{map}-{entries}"));
    }
    name
}

/// Subdirectory of the pin dir holding pinned links: `<program>-<id>` for the cgroup programs,
/// `strict-<ifindex>-<id>` for the STRICT guards, `antispoof-<ifindex>-<id>` for the
/// anti-spoofing guards (bpffs refuses names with dots).
const LINKS_DIR: &str = "links";
/// Version of the maps' layout (their key and value types, the counters); bump it when they
/// change. 2: `POD_SOURCES`, the `SPOOF_DROPS` counter, and `ExemptKey` gained the destination
/// pod (probe exemptions are per pod). 3: `FLOW_STARTS`, and CLOSE events carry `start_ns` and
/// the role. 4: `POD_INITIATED`, `POD_IFACES`, the `STRICT_DROPS` and `IPV6_REFUSED` counters,
/// and events carry the refusal reason and an IPv6 client.
const MAP_LAYOUT: u32 = 4;
const GUARD_PREFIX: &str = "strict-";
const ANTISPOOF_PREFIX: &str = "antispoof-";
/// Links on pod interfaces: kept until this agent guards the interface again.
const GUARD_PREFIXES: [&str; 2] = [GUARD_PREFIX, ANTISPOOF_PREFIX];

fn pinned_links(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

fn is_guard_pin(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| GUARD_PREFIXES.iter().any(|prefix| n.starts_with(prefix)))
}

/// Unpins a link and drops it, which detaches it (unless something else holds it).
fn release_link(path: &Path) {
    let released = PinnedLink::from_pin(path).map_err(anyhow::Error::from).and_then(|l| Ok(l.unpin()?));
    match released {
        Ok(link) => drop(link),
        Err(e) => {
            tracing::debug!(pin = %path.display(), error = %e, "releasing a pinned link");
            let _ = std::fs::remove_file(path);
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).with_context(|| format!("program {name} missing from the eBPF object"))
}

/// Removes a node's pin directory (used by `--cleanup` and on clean shutdown).
pub(crate) fn remove_pins(pin_dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => {
            tracing::info!(pins = %pin_dir.display(), "removed pinned maps");
            // Remove the parent `lockmesh` dir too when this was its last node.
            if let Some(parent) = pin_dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", pin_dir.display())),
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Mounts bpffs at /sys/fs/bpf when the pin directory lives there and nothing is mounted yet.
fn ensure_bpffs(pin_dir: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        return Ok(());
    }
    if is_bpffs(root) {
        return Ok(());
    }
    std::fs::create_dir_all(root).ok();
    nix::mount::mount(Some("bpf"), root, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .context("mounting bpffs at /sys/fs/bpf")?;
    tracing::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

pub(crate) fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels ≥ 5.11)");
    }
}

fn spawn_kernel_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd and moves into the AsyncFd.
    let registered =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut logger = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot poll eBPF log records");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else { return };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests;
