//! The node agent: wires sources → desired state → kernel maps, and kernel events → flows.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    admin::{self, AdminState, Readiness},
    config::{ConfigDir, watch::DirWatch},
    enrolment::Enrolment,
    flows::{FlowLimits, FlowSink, FlowTable, KernelFlows},
    inventory::Inventory,
    kernel::{Datapath, DatapathOptions, EnrolledMap},
    model::ClusterState,
};

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node: String,
    pub config_dir: PathBuf,
    pub admin: SocketAddr,
    pub trust_domain: String,
    pub datapath: DatapathOptions,
    pub flow_limits: FlowLimits,
}

/// How often workloads whose namespace is missing are retried, and kernel counters read.
const RETRY_EVERY: Duration = Duration::from_secs(1);

pub async fn run(options: AgentOptions) -> anyhow::Result<()> {
    let readiness = Arc::new(Readiness::default());
    let table = Arc::new(Mutex::new(FlowTable::new(options.flow_limits)));
    let inventory = Arc::new(ArcSwap::from_pointee(Inventory::default()));

    let mut admin = tokio::spawn(admin::serve(
        options.admin,
        AdminState { readiness: readiness.clone(), flows: table.clone() },
    ));

    let mut datapath = Datapath::load(&options.datapath)?;
    let mut enrolled_map = datapath.enrolled_map()?;
    let counters = datapath.counters()?;
    let mut events = datapath.event_reader()?;
    if let Ok(mut programs) = readiness.programs.lock() {
        *programs = datapath.programs().to_vec();
    }
    readiness.programs_attached.store(true, Ordering::Release);

    let sink = FlowSink::new(table.clone(), inventory.clone());
    let kernel_flows = KernelFlows::new(sink.clone());
    let mut event_task = tokio::spawn(async move {
        loop {
            events.next_batch(|event| kernel_flows.handle(event)).await?;
        }
    });

    let mut config = ConfigDir::new(&options.config_dir);
    let mut watch = DirWatch::new(&options.config_dir)?;
    let mut state = ClusterState::default();
    let mut enrolment = Enrolment::default();
    let sync = |state: &ClusterState,
                enrolment: &mut Enrolment,
                enrolled_map: &mut EnrolledMap|
     -> anyhow::Result<()> {
        let changes = enrolment.reconcile(&options.node, state);
        for key in &changes.enrolled {
            tracing::info!(workload = %key, "enrolled");
        }
        for key in &changes.unenrolled {
            tracing::info!(workload = %key, "unenrolled");
        }
        for key in &changes.updated {
            tracing::info!(workload = %key, "workload updated");
        }
        // Publish the inventory before the kernel map so events of new pods can be named.
        inventory.store(Arc::new(Inventory::new(
            &options.node,
            &options.trust_domain,
            state,
            enrolment.pods().map(|p| (p.netns.cookie(), p.workload.clone())),
        )));
        let (added, removed) = enrolled_map.sync(&enrolment.kernel_entries())?;
        if added + removed > 0 {
            tracing::debug!(added, removed, "ENROLLED map updated");
        }
        Ok(())
    };

    let reload = |config: &mut ConfigDir, state: &mut ClusterState| match config.reload() {
        Ok(reload) => {
            for error in &reload.errors {
                if error.is_warning() {
                    tracing::warn!(%error, "config warning; the object is used as described");
                } else {
                    tracing::error!(%error, "config error; keeping the last good version of what it describes");
                }
            }
            if let Ok(mut errors) = readiness.config_errors.lock() {
                *errors = reload.errors.iter().map(ToString::to_string).collect();
            }
            *state = reload.state;
            readiness.config_loaded.store(true, Ordering::Release);
        }
        Err(error) => tracing::error!(%error, "cannot read the config dir; keeping the last good config"),
    };

    reload(&mut config, &mut state);
    sync(&state, &mut enrolment, &mut enrolled_map)?;
    tracing::info!(node = %options.node, config = %options.config_dir.display(), "agent ready");

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut tick = tokio::time::interval(RETRY_EVERY);
    loop {
        tokio::select! {
            changed = watch.changed() => {
                if changed.is_none() {
                    anyhow::bail!("config dir watch ended");
                }
                reload(&mut config, &mut state);
                sync(&state, &mut enrolment, &mut enrolled_map)?;
            }
            _ = tick.tick() => {
                if enrolment.has_pending() || enrolment.pods().count() > 0 {
                    // Retries missing namespaces and notices pods whose namespace was replaced.
                    sync(&state, &mut enrolment, &mut enrolled_map)?;
                }
                match counters.read() {
                    Ok(values) => if let Ok(mut c) = readiness.kernel_counters.lock() { *c = values },
                    Err(e) => tracing::warn!(error = %e, "reading kernel counters"),
                }
            }
            result = &mut event_task => {
                return Err(task_failure(result).context("kernel event reader stopped"));
            }
            result = &mut admin => {
                return Err(task_failure(result).context("admin endpoint stopped"));
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: detaching"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: detaching"); break; }
        }
    }

    event_task.abort();
    admin.abort();
    drop(enrolled_map);
    drop(counters);
    datapath.detach_and_unpin()?;
    tracing::info!("detached; bye");
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
