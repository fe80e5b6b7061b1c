//! The node agent: sources → cluster state → desired state → kernel maps + engine; kernel
//! events and engine connections → flows.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    admin::{self, AdminState, EngineHandles, Readiness},
    audit::{AuditLog, AuditOptions, AuditSink, NodeKey},
    desired::StrictExemption,
    desired::{self, Classes},
    enrolment::Enrolment,
    flows::{FlowLimits, FlowObserver, FlowSink, FlowTable, KernelFlows},
    identity::{Identities, IdentityOptions},
    inventory::Inventory,
    kernel::{
        CaptureMap, Datapath, DatapathOptions, EnrolledMap, ExemptMap, PodSourcesMap, StrictMap, SyncOutcome,
        SyncedMap,
    },
    metrics::Metrics,
    model::{ClusterState, ObjectKey},
    podnet,
    policy::MeshParams,
    proxy::{
        Engine,
        limits::{EngineLimits, Limiter},
    },
    source::{Source, SourceOptions, Update},
};

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node: String,
    /// Where workloads, services and policies come from.
    pub source: SourceOptions,
    pub admin: SocketAddr,
    pub trust_domain: String,
    pub datapath: DatapathOptions,
    pub flow_limits: FlowLimits,
    pub identity: IdentityOptions,
    /// How long open tunneled connections may finish after SIGTERM.
    pub drain: Duration,
    /// HTTP/2 streams per HBONE connection.
    pub hbone_max_streams: u32,
    /// Pooled outbound HBONE connections at most.
    pub hbone_max_connections: usize,
    /// Bounds on inbound handshakes, idle HBONE connections and streams per peer.
    pub engine_limits: EngineLimits,
    /// Istio's root namespace and the cluster domain.
    pub mesh: MeshParams,
    /// Sources allowed to reach STRICT ports in plaintext (health probes).
    pub strict_exemptions: Vec<StrictExemption>,
    /// The audit log, if any (its key lives in the identity state dir).
    pub audit: Option<AuditOptions>,
}

/// How often workloads whose namespace is missing are retried, and kernel counters read.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The node's derived state and the kernel/engine handles it drives.
struct Node {
    options: AgentOptions,
    inventory: Arc<ArcSwap<Inventory>>,
    enrolment: Enrolment,
    classes: Classes,
    datapath: Datapath,
    enrolled_map: EnrolledMap,
    capture_map: CaptureMap,
    strict_map: StrictMap,
    exempt_map: ExemptMap,
    pod_sources_map: PodSourcesMap,
    /// Each enrolled pod's host-side interface carrying the STRICT guard, by pod and netns.
    guards: HashMap<ObjectKey, (u64, String)>,
    engine: Engine,
    identities: Arc<Identities>,
    readiness: Arc<Readiness>,
}

impl Node {
    /// Brings kernel maps and engine in line with `state`.
    async fn apply(&mut self, state: &Arc<ClusterState>) -> anyhow::Result<()> {
        let changes = self.enrolment.reconcile(&self.options.node, state);
        for key in &changes.enrolled {
            tracing::info!(workload = %key, "enrolled");
        }
        for key in &changes.unenrolled {
            tracing::info!(workload = %key, "unenrolled");
        }
        for key in &changes.updated {
            tracing::info!(workload = %key, "workload updated");
        }
        // Publish the inventory first so that events and connections of new pods are named.
        self.inventory.store(Arc::new(Inventory::new(
            &self.options.node,
            &self.options.trust_domain,
            &self.options.mesh,
            state.clone(),
            self.enrolment.pods().map(|p| (p.netns.cookie(), p.workload.clone())),
        )));
        // The engine listens before the kernel steers anything to it, and stops only after the
        // kernel stopped.
        self.engine.serve(self.enrolment.pods(), &self.options.trust_domain).await;
        let kernel = desired::kernel_state(
            state,
            &self.options.mesh,
            &self.enrolment,
            &mut self.classes,
            &self.options.strict_exemptions,
        );
        // A map that is full keeps what fits; the rest is logged (naming the map, what is left
        // out and the flag that raises it), counted, shown in /readyz and retried every second.
        let pods: HashMap<u64, String> =
            self.enrolment.pods().map(|p| (p.netns.cookie(), p.workload.key.to_string())).collect();
        let by_ip: HashMap<u32, String> = self
            .enrolment
            .pods()
            .flat_map(|p| {
                p.workload.addresses.iter().map(|a| (u32::from(*a).to_be(), p.workload.key.to_string()))
            })
            .collect();
        let named = |ip4: u32| match by_ip.get(&ip4) {
            Some(pod) => format!("{pod} {}", ip(ip4)),
            None => ip(ip4),
        };
        let classes = &self.classes;
        let enrolled = self.enrolled_map.sync(&kernel.enrolled);
        let mut problems = vec![report_failures(
            &mut self.enrolled_map,
            &enrolled,
            "these pods' connections are neither steered into the engine nor observed",
            |cookie| pods.get(cookie).cloned().unwrap_or_else(|| format!("netns {cookie}")),
        )];
        let capture = self.capture_map.sync(&kernel.capture);
        problems.push(report_failures(
            &mut self.capture_map,
            &capture,
            "connections to these destinations are not steered into the tunnel",
            |k| format!("{} → {}:{}", classes.name_of(k.class).unwrap_or("?"), ip(k.ip4), any_port(k.port)),
        ));
        let strict = self.strict_map.sync(&kernel.strict);
        problems.push(report_failures(
            &mut self.strict_map,
            &strict,
            "STRICT is not enforced in the kernel on these ports: plaintext reaches the app",
            |k| format!("{}:{}", named(k.ip4), any_port(k.port)),
        ));
        let exempt = self.exempt_map.sync(&kernel.exempt);
        problems.push(report_failures(
            &mut self.exempt_map,
            &exempt,
            "these probe exemptions do not apply: the probes are reset under STRICT",
            |k| {
                let pod = if k.dst_ip4 == 0 { "*".to_string() } else { named(k.dst_ip4) };
                format!("{} → {pod}:{}", ip(k.src_ip4), any_port(k.port))
            },
        ));
        self.set_map_problems(problems);
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
        self.guard_pods().await;
        self.guard_sources();
        self.engine.retire(self.enrolment.pods()).await;
        self.identities
            .retain(self.enrolment.pods().map(|p| p.workload.identity(&self.options.trust_domain)));
        Ok(())
    }

    /// Keeps the STRICT guard on the host side of every enrolled pod's interface.
    async fn guard_pods(&mut self) {
        let current: HashMap<ObjectKey, u64> =
            self.enrolment.pods().map(|p| (p.workload.key.clone(), p.netns.cookie())).collect();
        let stale: Vec<ObjectKey> = self
            .guards
            .iter()
            .filter(|(key, (cookie, _))| current.get(*key) != Some(cookie))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some((_, interface)) = self.guards.remove(&key) {
                self.datapath.unguard(&interface);
            }
        }
        for pod in self.enrolment.pods() {
            if self.guards.contains_key(&pod.workload.key) {
                continue;
            }
            let Some(ip) = pod.workload.primary_address() else { continue };
            let guarded = match podnet::host_interface(&pod.netns, ip).await {
                Ok(interface) => self.datapath.guard(&interface).map(|()| interface),
                Err(e) => Err(e),
            };
            match guarded {
                Ok(interface) => {
                    tracing::info!(pod = %pod.workload.key, %interface, "STRICT guard on the pod's interface");
                    self.guards.insert(pod.workload.key.clone(), (pod.netns.cookie(), interface));
                }
                // Retried on the next tick; STRICT cannot be enforced for this pod until then.
                Err(e) => {
                    tracing::error!(pod = %pod.workload.key, error = %format!("{e:#}"), "cannot guard the pod")
                }
            }
        }
    }
}

impl Node {
    /// Keeps the anti-spoofing guard on the interface of every pod the STRICT guard found:
    /// first the allowed sources, then the program (which drops whatever is not listed). A pod
    /// whose sources did not fit in `POD_SOURCES` gets no new guard: it would drop all of the
    /// pod's traffic (logged, counted, retried).
    fn guard_sources(&mut self) {
        let mut interfaces = Vec::new();
        for pod in self.enrolment.pods() {
            let Some((_, interface)) = self.guards.get(&pod.workload.key) else { continue };
            match nix::net::if_::if_nametoindex(interface.as_str()) {
                Ok(ifindex) => interfaces.push((
                    ifindex,
                    interface.clone(),
                    pod.workload.key.to_string(),
                    &pod.workload.addresses[..],
                )),
                // The pod is going away; its guards go with the next reconcile.
                Err(e) => tracing::debug!(%interface, error = %e, "pod interface gone"),
            }
        }
        let sources =
            desired::pod_sources(interfaces.iter().map(|(ifindex, _, _, addrs)| (*ifindex, *addrs)));
        let outcome = self.pod_sources_map.sync(&sources);
        let pods: HashMap<u32, String> = interfaces.iter().map(|(i, _, pod, _)| (*i, pod.clone())).collect();
        let problem = report_failures(
            &mut self.pod_sources_map,
            &outcome,
            "anti-spoofing is not enforced for these pods",
            |k| format!("{} {}", pods.get(&k.ifindex).map_or("?", String::as_str), ip(k.ip4)),
        );
        self.set_map_problems(vec![problem]);
        let incomplete: std::collections::HashSet<u32> =
            outcome.failed.iter().map(|(k, _)| k.ifindex).collect();
        for (ifindex, interface, _, _) in interfaces {
            if incomplete.contains(&ifindex) {
                continue;
            }
            if let Err(e) = self.datapath.guard_sources(&interface) {
                // Retried on the next tick; the pod can spoof until then.
                tracing::error!(%interface, error = %format!("{e:#}"), "cannot attach the anti-spoofing guard");
            }
        }
    }

    /// Shows the maps' current problems in /readyz (a map without failures clears its entry).
    fn set_map_problems(&self, problems: Vec<(&'static str, Option<String>)>) {
        if let Ok(mut shown) = self.readiness.kernel_map_errors.lock() {
            for (map, problem) in problems {
                match problem {
                    Some(problem) => shown.insert(map.to_string(), problem),
                    None => shown.remove(map),
                };
            }
        }
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
) -> (&'static str, Option<String>) {
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
            crate::kernel::capacity_flag(name),
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

pub async fn run(options: AgentOptions) -> anyhow::Result<()> {
    crate::resources::raise_fd_limit();
    let readiness = Arc::new(Readiness::default());
    let identities = Arc::new(Identities::new(&options.identity).context("setting up workload identities")?);
    let mut renewal = tokio::spawn(identities.clone().renew_forever());
    let table = Arc::new(Mutex::new(FlowTable::new(options.flow_limits)));
    let inventory = Arc::new(ArcSwap::from_pointee(Inventory::default()));

    let metrics = Arc::new(Metrics::new());
    let mut admin = tokio::spawn(admin::serve(
        options.admin,
        AdminState {
            readiness: readiness.clone(),
            flows: table.clone(),
            metrics: metrics.clone(),
            inventory: inventory.clone(),
        },
    ));

    // Before the kernel is touched: a bad kubeconfig or config dir fails fast.
    let mut source = Source::start(&options.source, &options.mesh.root_namespace).await?;

    let mut datapath = Datapath::load(&options.datapath)?;
    let enrolled_map = datapath.enrolled_map()?;
    let capture_map = datapath.capture_map()?;
    let strict_map = datapath.strict_map()?;
    let exempt_map = datapath.exempt_map()?;
    let pod_sources_map = datapath.pod_sources_map()?;
    let orig_dst = datapath.orig_dst_map()?;
    let counters = datapath.counters()?;
    let mut events = datapath.event_reader()?;
    let _ = readiness.maps.set(datapath.map_stats());
    if let Err(e) = datapath.count_kernel_maps() {
        // Only the entry gauges of the kernel-written maps are missing.
        tracing::warn!(error = %format!("{e:#}"), "cannot count the kernel-written maps' entries");
    }
    if let Ok(mut programs) = readiness.programs.lock() {
        *programs = datapath.programs().to_vec();
    }
    readiness.programs_attached.store(true, Ordering::Release);

    let audit = match &options.audit {
        Some(audit) => {
            let key =
                NodeKey::load_or_create(&options.identity.state_dir).context("the audit signing key")?;
            Some(Arc::new(AuditSink::start(AuditLog::open(audit.clone(), key)?)?))
        }
        None => None,
    };
    let limit_counters = metrics.limit_counters();
    let mut observers: Vec<Arc<dyn FlowObserver>> = vec![metrics];
    observers.extend(audit.clone().map(|a| a as Arc<dyn FlowObserver>));
    let sink = FlowSink::new(table.clone(), inventory.clone()).with_observers(observers);
    let kernel_flows = KernelFlows::new(sink.clone());

    let mut node = Node {
        engine: Engine::new(
            identities.clone(),
            sink,
            orig_dst,
            options.hbone_max_streams,
            options.hbone_max_connections,
            Limiter::new(options.engine_limits, limit_counters),
        ),
        options: options.clone(),
        inventory,
        enrolment: Enrolment::default(),
        classes: Classes::default(),
        datapath,
        enrolled_map,
        capture_map,
        strict_map,
        exempt_map,
        pod_sources_map,
        guards: HashMap::new(),
        identities: identities.clone(),
        readiness: readiness.clone(),
    };

    let _ = readiness.engine.set(EngineHandles {
        pool: node.engine.pool(),
        identities,
        limiter: node.engine.limiter(),
        orig_dst_misses: node.engine.orig_dst_misses(),
    });
    let mut state = Arc::new(ClusterState::default());
    let reload = |update: Update, state: &mut Arc<ClusterState>| {
        let Some(new_state) = update.state else {
            for problem in &update.problems {
                tracing::error!(error = %problem.message, "keeping the last good config");
            }
            return;
        };
        for problem in &update.problems {
            if problem.warning {
                tracing::warn!(error = %problem.message, "config warning; the object is used as described");
            } else {
                let error = &problem.message;
                tracing::error!(%error, "config error; keeping the last good version of what it describes");
            }
        }
        if let Ok(mut errors) = readiness.config_errors.lock() {
            *errors = update.problems.into_iter().map(|p| p.message).collect();
        }
        *state = Arc::new(new_state);
        readiness.config_loaded.store(true, Ordering::Release);
    };

    let Some(first) = source.next_state().await else { anyhow::bail!("{} ended", options.source) };
    reload(first, &mut state);
    node.apply(&state).await?;
    readiness.configs_applied.fetch_add(1, Ordering::AcqRel);
    node.datapath.release_inherited_guards();
    // Kernel events only now, with the inventory that names them: after a restart the ring holds
    // what the kernel reported while no agent ran, and each of those must become a record.
    let events_seen = readiness.clone();
    let mut event_task = tokio::spawn(async move {
        loop {
            events
                .next_batch(|event| {
                    events_seen.kernel_events_received.fetch_add(1, Ordering::Relaxed);
                    kernel_flows.handle(event)
                })
                .await?;
        }
    });
    // Ready only now: a connection made after /readyz says so is steered and observed.
    readiness.datapath_synced.store(true, Ordering::Release);
    tracing::info!(node = %options.node, source = %options.source, "agent ready");

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut tick = tokio::time::interval(RETRY_EVERY);
    let mut trimmer = crate::resources::Trimmer::default();
    loop {
        tokio::select! {
            update = source.next_state() => {
                let Some(update) = update else { anyhow::bail!("{} ended", options.source) };
                reload(update, &mut state);
                node.apply(&state).await?;
                readiness.configs_applied.fetch_add(1, Ordering::AcqRel);
            }
            _ = tick.tick() => {
                if node.enrolment.has_pending() || node.enrolment.pods().count() > 0 {
                    // Retries missing namespaces and notices pods whose namespace was replaced.
                    node.apply(&state).await?;
                }
                match counters.read() {
                    Ok(values) => if let Ok(mut c) = readiness.kernel_counters.lock() { *c = values },
                    Err(e) => tracing::warn!(error = %e, "reading kernel counters"),
                }
                if let Some(open) = table.lock().ok().map(|t| t.stats().open) {
                    trimmer.observe(open);
                }
            }
            result = &mut event_task => {
                return Err(task_failure(result).context("kernel event reader stopped"));
            }
            result = &mut renewal => {
                return Err(anyhow::anyhow!("certificate renewal stopped: {result:?}"));
            }
            result = &mut admin => {
                return Err(task_failure(result).context("admin endpoint stopped"));
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: draining, then detaching"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: draining, then detaching"); break; }
        }
    }

    node.engine.drain(options.drain).await;
    event_task.abort();
    if let Some(audit) = audit {
        // Flows finished while draining are in; then a final checkpoint and fsync.
        tokio::task::block_in_place(|| audit.shutdown());
    }
    renewal.abort();
    admin.abort();
    let Node { datapath, .. } = node;
    drop(counters);
    datapath.leave_in_place();
    tracing::info!("bye");
    Ok(())
}

/// Why a task that should run forever ended.
fn task_failure(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match result {
        Ok(Ok(())) => anyhow::anyhow!("ended unexpectedly"),
        Ok(Err(e)) => e,
        Err(e) => e.into(),
    }
}
