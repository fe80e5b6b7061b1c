//! The node agent's composition root (wiring only, as ztunnel's `app.rs`): builds each stage,
//! connects them, runs the reconcile loop and shuts down. A source's cluster states flow through
//! `node::Node::apply` into the engine and the kernel; kernel events and the engine's connections
//! flow into the reports.
mod node;
mod options;

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinHandle,
};

use self::node::Node;
pub(crate) use self::options::AgentOptions;
use crate::{
    admin::{self, AdminState, EngineHandles, Readiness},
    cluster::{Source, model::ClusterState, source::Update},
    desired::{enrolment::Enrolment, inventory::Inventory, maps::Classes},
    engine::{
        Engine,
        limits::{LimitCounters, Limiter},
    },
    identity::Identities,
    kernel::{Counters, Datapath, EventReader, Guards, KernelMaps, OrigDstMap, ProbeSnat},
    report::{
        audit::{AuditLog, AuditSink, NodeKey},
        flows::{FlowObserver, FlowSink, FlowTable, KernelFlows},
        metrics::Metrics,
    },
    sys::resources,
};

/// How often workloads whose namespace is missing are retried, and kernel counters read.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Runs the agent until SIGTERM or SIGINT, then drains the engine and leaves the datapath in
/// the kernel for the next agent (fail closed).
pub(crate) async fn run(options: AgentOptions) -> anyhow::Result<()> {
    resources::raise_fd_limit();
    let readiness = Arc::new(Readiness::default());
    let identities = Arc::new(Identities::new(&options.identity).context("setting up workload identities")?);
    let renewal = tokio::spawn(identities.clone().renew_forever());
    let table = Arc::new(Mutex::new(FlowTable::new(options.flow_limits)));
    let inventory = Arc::new(ArcSwap::from_pointee(Inventory::default()));
    let metrics = Arc::new(Metrics::new());
    let admin_state = AdminState {
        readiness: readiness.clone(),
        flows: table.clone(),
        metrics: metrics.clone(),
        inventory: inventory.clone(),
    };
    let admin = tokio::spawn(admin::serve(options.admin, admin_state.clone()));
    let metrics_endpoint = tokio::spawn(admin::serve_metrics(options.metrics_addr, admin_state.clone()));
    let readiness_endpoint = tokio::spawn(admin::serve_readiness(options.readiness_addr, admin_state));
    // Before the kernel is touched: a bad kubeconfig or config dir fails fast.
    let source = Source::start(&options.source, &options.mesh.root_namespace).await?;
    let (mut datapath, kernel) = load_datapath(&options, &readiness)?;
    let audit = open_audit_log(&options)?;
    let mut observers: Vec<Arc<dyn FlowObserver>> = vec![metrics];
    observers.extend(audit.clone().map(|a| a as Arc<dyn FlowObserver>));
    let sink = FlowSink::new(table.clone(), inventory.clone()).with_observers(observers);
    let engine = Engine::new(
        identities.clone(),
        inventory.clone(),
        Arc::new(sink.clone()),
        kernel.orig_dst,
        options.hbone_max_streams,
        options.hbone_max_connections,
        Limiter::new(options.engine_limits, LimitCounters::default()),
    );
    let _ = readiness.engine.set(EngineHandles {
        pool: engine.pool(),
        identities: identities.clone(),
        limiter: engine.limiter(),
        orig_dst_misses: engine.orig_dst_misses(),
    });
    let probe_snat = options.probe_snat.map(ProbeSnat::new);
    let node = Node {
        maps: KernelMaps::take(&mut datapath)?,
        options,
        inventory,
        enrolment: Enrolment::default(),
        classes: Classes::default(),
        datapath,
        guards: Guards::default(),
        probe_snat,
        engine,
        identities,
        readiness: readiness.clone(),
    };
    let tasks = Tasks { renewal, admin, metrics: metrics_endpoint, readiness: readiness_endpoint };
    let agent = Agent { node, source, readiness, table, counters: kernel.counters, tasks };
    agent.run(kernel.events, KernelFlows::new(sink), audit).await
}

/// What the kernel side hands the rest of the agent, besides the datapath itself.
struct KernelHandles {
    orig_dst: OrigDstMap,
    counters: Counters,
    events: EventReader,
}

/// Loads and attaches the eBPF programs and takes the handles the agent reads; `/readyz`
/// shows the programs and the maps from here on.
fn load_datapath(options: &AgentOptions, readiness: &Readiness) -> anyhow::Result<(Datapath, KernelHandles)> {
    let mut datapath = Datapath::load(&options.datapath)?;
    let handles = KernelHandles {
        orig_dst: datapath.orig_dst_map()?,
        counters: datapath.counters()?,
        events: datapath.event_reader()?,
    };
    let _ = readiness.maps.set(datapath.map_stats());
    if let Err(e) = datapath.count_kernel_maps() {
        // Only the entry gauges of the kernel-written maps are missing.
        tracing::warn!(error = %format!("{e:#}"), "cannot count the kernel-written maps' entries");
    }
    if let Ok(mut programs) = readiness.programs.lock() {
        *programs = datapath.programs().to_vec();
    }
    readiness.programs_attached.store(true, Ordering::Release);
    Ok((datapath, handles))
}

fn open_audit_log(options: &AgentOptions) -> anyhow::Result<Option<Arc<AuditSink>>> {
    let Some(audit) = &options.audit else { return Ok(None) };
    let key = NodeKey::load_or_create(&options.identity.state_dir).context("the audit signing key")?;
    Ok(Some(Arc::new(AuditSink::start(AuditLog::open(audit.clone(), key)?)?)))
}

/// The tasks that must run for as long as the agent does (the kernel event reader joins them
/// once the first state is applied).
struct Tasks {
    renewal: JoinHandle<()>,
    admin: JoinHandle<anyhow::Result<()>>,
    metrics: JoinHandle<anyhow::Result<()>>,
    readiness: JoinHandle<anyhow::Result<()>>,
}

/// The running agent: the node it reconciles and what feeds and watches it.
struct Agent {
    node: Node,
    source: Source,
    readiness: Arc<Readiness>,
    table: Arc<Mutex<FlowTable>>,
    counters: Counters,
    tasks: Tasks,
}

impl Agent {
    async fn run(
        mut self,
        events: EventReader,
        kernel_flows: KernelFlows,
        audit: Option<Arc<AuditSink>>,
    ) -> anyhow::Result<()> {
        let mut state = Arc::new(ClusterState::default());
        let source_name = self.node.options.source.to_string();
        let Some(first) = self.source.next_state().await else { anyhow::bail!("{source_name} ended") };
        self.reload(first, &mut state);
        self.node.apply(&state).await;
        self.readiness.configs_applied.fetch_add(1, Ordering::AcqRel);
        self.node.datapath.release_inherited();
        // Kernel events only now, with the inventory that names them: after a restart the ring
        // holds what the kernel reported while no agent ran, and each of those must become a
        // record.
        let mut events = tokio::spawn(read_events(events, kernel_flows, self.readiness.clone()));
        // Ready only now: a connection made after /readyz says so is steered and observed.
        self.readiness.datapath_synced.store(true, Ordering::Release);
        tracing::info!(node = %self.node.options.node, source = %source_name, "agent ready");

        self.reconcile_until_signal(&mut state, &mut events).await?;
        self.shutdown(events, audit).await;
        Ok(())
    }

    /// Applies every new state, and retries what could not be done yet every second, until a
    /// signal (then `Ok`) or a task that must not end ends (then its error).
    async fn reconcile_until_signal(
        &mut self,
        state: &mut Arc<ClusterState>,
        events: &mut JoinHandle<anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut tick = tokio::time::interval(RETRY_EVERY);
        let mut trimmer = resources::Trimmer::default();
        loop {
            tokio::select! {
                update = self.source.next_state() => {
                    let Some(update) = update else { anyhow::bail!("{} ended", self.node.options.source) };
                    self.reload(update, state);
                    self.node.apply(state).await;
                    self.readiness.configs_applied.fetch_add(1, Ordering::AcqRel);
                }
                _ = tick.tick() => {
                    if self.node.enrolment.has_pending() || self.node.enrolment.pods().count() > 0 {
                        // Retries missing namespaces and notices pods whose namespace was replaced.
                        self.node.apply(state).await;
                    }
                    self.read_counters(&mut trimmer);
                }
                result = &mut *events => return Err(task_failure(result).context("kernel event reader stopped")),
                result = &mut self.tasks.renewal => {
                    anyhow::bail!("certificate renewal stopped: {result:?}");
                }
                result = &mut self.tasks.admin => return Err(task_failure(result).context("admin endpoint stopped")),
                result = &mut self.tasks.metrics => return Err(task_failure(result).context("metrics endpoint stopped")),
                result = &mut self.tasks.readiness => return Err(task_failure(result).context("readiness endpoint stopped")),
                _ = sigterm.recv() => { tracing::info!("SIGTERM: draining, then detaching"); return Ok(()); }
                _ = sigint.recv() => { tracing::info!("SIGINT: draining, then detaching"); return Ok(()); }
            }
        }
    }

    /// Takes a new view of the cluster, or keeps the last good one when the source could not
    /// be read; logs and shows (`/readyz`) what was wrong with it.
    fn reload(&self, update: Update, state: &mut Arc<ClusterState>) {
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
        if let Ok(mut errors) = self.readiness.config_errors.lock() {
            *errors = update.problems.into_iter().map(|p| p.message).collect();
        }
        *state = Arc::new(new_state);
        self.readiness.config_loaded.store(true, Ordering::Release);
    }

    /// The kernel's counters for `/readyz`; and the heap given back after a burst ended.
    fn read_counters(&self, trimmer: &mut resources::Trimmer) {
        match self.counters.read() {
            Ok(values) => {
                if let Ok(mut c) = self.readiness.kernel_counters.lock() {
                    *c = values
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading kernel counters"),
        }
        if let Some(open) = self.table.lock().ok().map(|t| t.stats().open) {
            trimmer.observe(open);
        }
    }

    /// Drains the engine, seals the audit log, and leaves the datapath pinned in the kernel.
    async fn shutdown(mut self, events: JoinHandle<anyhow::Result<()>>, audit: Option<Arc<AuditSink>>) {
        self.node.engine.drain(self.node.options.drain).await;
        events.abort();
        if let Some(audit) = audit {
            // Flows finished while draining are in; then a final checkpoint and fsync.
            tokio::task::block_in_place(|| audit.shutdown());
        }
        self.tasks.renewal.abort();
        self.tasks.admin.abort();
        self.tasks.metrics.abort();
        self.tasks.readiness.abort();
        let Agent { node: Node { datapath, .. }, counters, .. } = self;
        drop(counters);
        datapath.leave_in_place();
        tracing::info!("bye");
    }
}

/// Takes the kernel's flow events out of the ring buffer and makes flows of them, forever.
async fn read_events(
    mut events: EventReader,
    kernel_flows: KernelFlows,
    readiness: Arc<Readiness>,
) -> anyhow::Result<()> {
    loop {
        events
            .next_batch(|event| {
                readiness.kernel_events_received.fetch_add(1, Ordering::Relaxed);
                kernel_flows.handle(event)
            })
            .await?;
    }
}

/// Why a task that should run forever ended.
fn task_failure(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match result {
        Ok(Ok(())) => anyhow::anyhow!("ended unexpectedly"),
        Ok(Err(e)) => e,
        Err(e) => e.into(),
    }
}
