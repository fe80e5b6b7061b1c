//! The Kubernetes source (`lockmesh agent --kube`): reflectors over Pods, Namespaces, Services and
//! Istio's PeerAuthentication and DestinationRule feed the same [`ClusterState`] as the config dir.
//!
//! All Pods of the cluster are watched, not EndpointSlices: a remote peer's identity (its service
//! account) and the labels policies select on are on the Pod only. This node's pods are the ones
//! whose `spec.nodeName` is the node; their network namespace is found through `/proc`
//! ([`procfs`]). Watches resync with kube-runtime's default backoff after errors; every change
//! (debounced) yields a whole new snapshot.
mod probes;
mod procfs;
pub mod state;

use std::{fmt::Debug, hash::Hash, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service as KubeService};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    api::{ApiResource, DynamicObject},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _, reflector,
        reflector::store::{Store, Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{Notify, mpsc},
    task::JoinHandle,
};

use crate::cluster::{
    model::ClusterState,
    source::{Problem, Update},
};
use procfs::NetnsFinder;
use state::Objects;

#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// A kubeconfig file; without it, the in-cluster config (service account) or `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (`spec.nodeName` of the pods to enrol).
    pub node: String,
    /// The host's `/proc`, for the pods' network namespaces.
    pub proc_root: PathBuf,
}

/// Changes that come in bursts (a rollout) make one snapshot: wait this long after the last.
const SETTLE: Duration = Duration::from_millis(100);
const MAX_SETTLE: Duration = Duration::from_secs(1);
/// How soon a local pod whose process is not found yet is looked for again.
const NETNS_RETRY: Duration = Duration::from_secs(1);

/// The running watches; dropping it stops them.
pub struct KubeSource {
    updates: mpsc::Receiver<Update>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// One Istio kind, in the versions lockmesh reads (newest first).
struct IstioKind {
    group: &'static str,
    versions: &'static [&'static str],
    kind: &'static str,
    plural: &'static str,
}

const PEER_AUTHENTICATION: IstioKind = IstioKind {
    group: "security.istio.io",
    versions: &["v1", "v1beta1"],
    kind: "PeerAuthentication",
    plural: "peerauthentications",
};
const DESTINATION_RULE: IstioKind = IstioKind {
    group: "networking.istio.io",
    versions: &["v1", "v1beta1"],
    kind: "DestinationRule",
    plural: "destinationrules",
};

/// A client of the API server: `kubeconfig`, else in-cluster, else $KUBECONFIG or ~/.kube/config.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).context("reading the kubeconfig")?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => {
            kube::Config::infer().await.context("finding the Kubernetes API (in-cluster or kubeconfig)")?
        }
    };
    Client::try_from(config).context("creating the Kubernetes client")
}

impl KubeSource {
    /// Connects to the API server and starts the watches.
    pub async fn start(options: &KubeOptions, root_namespace: &str) -> anyhow::Result<Self> {
        let client = client(options.kubeconfig.as_deref()).await?;
        Ok(Self::with_client(client, options, root_namespace).await)
    }

    /// Starts the watches on `client` (tests pass a mock service).
    pub async fn with_client(client: Client, options: &KubeOptions, root_namespace: &str) -> Self {
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let pods = watch("Pod", Api::all(client.clone()), Writer::default(), &changed, &mut tasks);
        let namespaces =
            watch("Namespace", Api::all(client.clone()), Writer::default(), &changed, &mut tasks);
        let services = watch("Service", Api::all(client.clone()), Writer::default(), &changed, &mut tasks);
        let mut istio = Vec::new();
        for kind in [PEER_AUTHENTICATION, DESTINATION_RULE] {
            istio.push(match served(&client, &kind).await {
                Some(resource) => {
                    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
                    Some(watch(kind.kind, api, Writer::new(resource), &changed, &mut tasks))
                }
                None => {
                    tracing::warn!(
                        kind = kind.kind,
                        group = kind.group,
                        "Istio CRD not installed; none are used (restart the agent after installing it)"
                    );
                    None
                }
            });
        }
        let destination_rules = istio.pop().flatten();
        let peer_authentications = istio.pop().flatten();
        let stores = Stores { pods, namespaces, services, peer_authentications, destination_rules };

        let (tx, updates) = mpsc::channel(1);
        let builder = Builder {
            node: options.node.clone(),
            root_namespace: root_namespace.to_string(),
            finder: NetnsFinder::new(&options.proc_root),
            last: None,
        };
        tasks.push(tokio::spawn(builder.run(stores, changed, tx)));
        Self { updates, tasks }
    }

    pub async fn next_state(&mut self) -> Option<Update> {
        self.updates.recv().await
    }
}

/// The first version of `kind` the API server serves, if any. Errors other than "not found"
/// are retried: taking a passing outage for "Istio is not installed" would drop STRICT policies.
async fn served(client: &Client, kind: &IstioKind) -> Option<ApiResource> {
    let mut delay = Duration::from_millis(500);
    loop {
        match discover(client, kind).await {
            Ok(found) => return found,
            Err(e) => {
                tracing::warn!(group = kind.group, error = %e, "cannot list the API group; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn discover(client: &Client, kind: &IstioKind) -> Result<Option<ApiResource>, kube::Error> {
    for version in kind.versions {
        let api_version = format!("{}/{version}", kind.group);
        match client.list_api_group_resources(&api_version).await {
            Ok(list) if list.resources.iter().any(|r| r.name == kind.plural) => {
                return Ok(Some(ApiResource {
                    group: kind.group.into(),
                    version: (*version).into(),
                    api_version,
                    kind: kind.kind.into(),
                    plural: kind.plural.into(),
                }));
            }
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {
                tracing::debug!(%api_version, "API version not served")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Watches `api` into a store, signalling `changed` on every change; resyncs with backoff.
fn watch<K>(
    kind: &str,
    api: Api<K>,
    writer: Writer<K>,
    changed: &Arc<Notify>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: Resource + Trim + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let store = writer.as_reader();
    let changed = changed.clone();
    let kind = kind.to_string();
    let stream = watcher(api, watcher::Config::default()).default_backoff().modify(|object: &mut K| {
        object.trim();
        // Not needed, and the bulk of many objects.
        object.managed_fields_mut().clear();
        object.annotations_mut().clear();
    });
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(reflector(writer, stream));
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                    changed.notify_one()
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%kind, error = %e, "Kubernetes watch failed; retrying with backoff"),
            }
        }
    }));
    store
}

/// Drops what lockmesh never reads before objects are stored: every pod of the cluster is kept.
trait Trim {
    fn trim(&mut self) {}
}

impl Trim for Namespace {}
impl Trim for KubeService {}
impl Trim for DynamicObject {}

impl Trim for Pod {
    fn trim(&mut self) {
        if let Some(spec) = &mut self.spec {
            probes::trim_containers(spec);
            spec.volumes = None;
            spec.affinity = None;
            spec.tolerations = None;
        }
        if let Some(status) = &mut self.status {
            status.conditions = None;
            status.container_statuses = None;
            status.init_container_statuses = None;
            status.ephemeral_container_statuses = None;
        }
    }
}

struct Stores {
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    services: Store<KubeService>,
    peer_authentications: Option<Store<DynamicObject>>,
    destination_rules: Option<Store<DynamicObject>>,
}

impl Stores {
    /// Waits until every watch listed once. `false` if a watch is gone.
    async fn ready(&self) -> bool {
        let istio = [&self.peer_authentications, &self.destination_rules];
        self.pods.wait_until_ready().await.is_ok()
            && self.namespaces.wait_until_ready().await.is_ok()
            && self.services.wait_until_ready().await.is_ok()
            && futures_util::future::join_all(istio.into_iter().flatten().map(Store::wait_until_ready))
                .await
                .into_iter()
                .all(|r| r.is_ok())
    }

    fn objects(&self) -> Objects {
        Objects {
            pods: self.pods.state(),
            namespaces: self.namespaces.state(),
            services: self.services.state(),
            peer_authentications: self.peer_authentications.as_ref().map(Store::state).unwrap_or_default(),
            destination_rules: self.destination_rules.as_ref().map(Store::state).unwrap_or_default(),
        }
    }
}

struct Builder {
    node: String,
    root_namespace: String,
    finder: NetnsFinder,
    last: Option<(ClusterState, Vec<Problem>)>,
}

impl Builder {
    async fn run(mut self, stores: Stores, changed: Arc<Notify>, tx: mpsc::Sender<Update>) {
        if !stores.ready().await {
            return;
        }
        tracing::info!("Kubernetes watches synced");
        loop {
            let (state, problems, missing_netns) =
                state::cluster_state(&stores.objects(), &self.node, &self.root_namespace, |uids| {
                    self.finder.find(uids)
                });
            let current = (state, problems);
            if self.last.as_ref() != Some(&current) {
                self.last = Some(current.clone());
                let (state, problems) = current;
                if tx.send(Update { state: Some(state), problems }).await.is_err() {
                    return;
                }
            }
            if missing_netns {
                let _ = tokio::time::timeout(NETNS_RETRY, changed.notified()).await;
            } else {
                changed.notified().await;
            }
            settle(&changed).await;
        }
    }
}

/// Waits until no change came for `SETTLE` (at most `MAX_SETTLE`).
async fn settle(changed: &Notify) {
    let deadline = tokio::time::Instant::now() + MAX_SETTLE;
    loop {
        let wait = SETTLE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        if wait.is_zero() || tokio::time::timeout(wait, changed.notified()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
