//! One node's reconcile: a new cluster state becomes the enrolment, the inventory, the engine's
//! listeners, the kernel maps and the per-pod guards, in that order, so that the kernel never
//! steers a connection to a pod the engine does not serve yet (and stops steering before the
//! engine stops serving).
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::AgentOptions;
use crate::{
    admin::Readiness,
    cluster::model::ClusterState,
    desired::{
        enrolment::Enrolment,
        inventory::Inventory,
        maps::{self, Classes},
    },
    engine::Engine,
    identity::Identities,
    kernel::{Datapath, Guards, KernelMaps, MapProblem, ProbeSnat},
};

/// The node's derived state and the kernel and engine handles it drives.
pub(super) struct Node {
    pub options: AgentOptions,
    pub inventory: Arc<ArcSwap<Inventory>>,
    pub enrolment: Enrolment,
    pub classes: Classes,
    pub datapath: Datapath,
    pub maps: KernelMaps,
    pub guards: Guards,
    pub probe_snat: Option<ProbeSnat>,
    pub engine: Engine,
    pub identities: Arc<Identities>,
    pub readiness: Arc<Readiness>,
}

impl Node {
    /// Brings the engine and the kernel in line with `state`.
    pub(super) async fn apply(&mut self, state: &Arc<ClusterState>) {
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
        let options = &self.options;
        // Publish the inventory first so that events and connections of new pods are named.
        self.inventory.store(Arc::new(Inventory::new(
            &options.node,
            &options.trust_domain,
            &options.mesh,
            state.clone(),
            self.enrolment.pods().map(|p| (p.netns.cookie(), p.workload.clone())),
        )));
        // The engine listens before the kernel steers anything to it, and stops only after the
        // kernel stopped.
        self.engine.serve(self.enrolment.pods(), &options.trust_domain).await;
        let kernel = maps::kernel_state(
            state,
            &options.mesh,
            &self.enrolment,
            &mut self.classes,
            &options.strict_exemptions,
            options.probe_snat,
        );
        // The SNAT first: the exemptions it makes work are written next.
        if let Some(snat) = &mut self.probe_snat
            && let Err(e) = snat.sync(&kernel.probed)
        {
            tracing::error!(error = %format!("{e:#}"), "cannot update the kubelet probe SNAT; probes of new pods are reset under STRICT (retried)");
        }
        let problems = self.maps.sync_all(&kernel, &self.enrolment, &self.classes);
        self.show_map_problems(problems);
        self.guards.guard_pods(&mut self.datapath, &self.enrolment).await;
        let problems =
            self.guards.guard_sources(&mut self.datapath, &mut self.maps, &self.enrolment, &self.classes);
        self.show_map_problems(problems);
        self.engine.retire(self.enrolment.pods()).await;
        self.identities.retain(self.enrolment.pods().map(|p| p.workload.identity(&options.trust_domain)));
    }

    /// Shows the maps' current problems in /readyz (a map without failures clears its entry).
    fn show_map_problems(&self, problems: Vec<MapProblem>) {
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
