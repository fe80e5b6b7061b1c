//! Who may get which identity. The caller's ServiceAccount token is reviewed by the API server
//! (TokenReview, for our audience only); the caller must be the agent's service account; the
//! identity must be the service account of a pod scheduled on the caller's node. A node thus
//! cannot mint identities for pods it does not run.
use http::StatusCode;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    core::v1::Pod,
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};

use crate::identity::spiffe::SpiffeId;

/// `user.extra` keys of bound ServiceAccount tokens (node name since Kubernetes 1.30).
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// Why a signing request is refused; the message goes back to the caller as is.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    Internal(String),
}

impl Refusal {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::Upstream(_) => StatusCode::BAD_GATEWAY,
            Refusal::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn upstream(what: &str) -> impl Fn(kube::Error) -> Refusal + '_ {
    move |e| Refusal::Upstream(format!("{what}: {e}"))
}

/// An authenticated agent and the node it runs on.
#[derive(Clone, Debug)]
pub(super) struct Caller {
    pub user: String,
    pub node: String,
}

pub(super) struct Authorizer {
    client: Client,
    audience: String,
    agent_user: String,
}

impl Authorizer {
    /// `agent_user` is the only user allowed to ask, e.g.
    /// `system:serviceaccount:lockmesh-system:lockmesh-agent`.
    pub(super) fn new(client: Client, audience: &str, agent_user: &str) -> Self {
        Self { client, audience: audience.into(), agent_user: agent_user.into() }
    }

    /// Reviews `token` and finds the caller's node.
    pub(super) async fn authenticate(&self, token: &str) -> Result<Caller, Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.into(), audiences: Some(vec![self.audience.clone()]) },
            ..TokenReview::default()
        };
        let review = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(upstream("TokenReview"))?;
        let status = review.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_else(|| "no reason given".into());
            return Err(Refusal::Unauthenticated(format!(
                "token not authenticated for audience {}: {why}",
                self.audience
            )));
        }
        // An API server that ignores audiences would accept any token of the caller's.
        if !status.audiences.unwrap_or_default().contains(&self.audience) {
            return Err(Refusal::Unauthenticated(format!(
                "the TokenReview did not confirm audience {}",
                self.audience
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if username != self.agent_user {
            return Err(Refusal::Forbidden(format!(
                "{username} is not the agent's service account {}",
                self.agent_user
            )));
        }
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|values| values.first()).cloned();
        let node = match first(NODE_NAME) {
            Some(node) => node,
            None => self.node_of_pod(&username, first(POD_NAME), first(POD_UID)).await?,
        };
        Ok(Caller { user: username, node })
    }

    /// Before Kubernetes 1.30 bound tokens name the pod, not the node: ask where it runs.
    async fn node_of_pod(
        &self,
        username: &str,
        pod: Option<String>,
        uid: Option<String>,
    ) -> Result<String, Refusal> {
        let name = pod.ok_or_else(|| {
            Refusal::Forbidden(format!(
                "the token of {username} is not bound to a pod (no {NODE_NAME} nor {POD_NAME}); \
                 mount a projected serviceAccountToken"
            ))
        })?;
        let namespace = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split(':').next())
            .ok_or_else(|| Refusal::Forbidden(format!("{username} is not a service account")))?;
        let pod = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get_opt(&name)
            .await
            .map_err(upstream("reading the caller's pod"))?
            .ok_or_else(|| {
                Refusal::Forbidden(format!("the token's pod {namespace}/{name} does not exist"))
            })?;
        if let Some(uid) = uid
            && pod.metadata.uid.as_deref() != Some(uid.as_str())
        {
            return Err(Refusal::Forbidden(format!(
                "the token's pod {namespace}/{name} (uid {uid}) was replaced"
            )));
        }
        pod.spec
            .and_then(|spec| spec.node_name)
            .filter(|node| !node.is_empty())
            .ok_or_else(|| Refusal::Forbidden(format!("the token's pod {namespace}/{name} is not on a node")))
    }

    /// The name of a pod on `node` that runs as `identity`'s service account in its namespace.
    pub(super) async fn pod_running_as(&self, node: &str, identity: &SpiffeId) -> Result<String, Refusal> {
        let (namespace, account) = (&identity.namespace, &identity.service_account);
        let params =
            ListParams::default().fields(&format!("spec.nodeName={node},spec.serviceAccountName={account}"));
        let pods = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .list(&params)
            .await
            .map_err(upstream("listing the node's pods"))?;
        pods.items
            .iter()
            .find(|pod| runs_as(pod, node, account))
            .and_then(|pod| pod.metadata.name.clone())
            .ok_or_else(|| {
                Refusal::Forbidden(format!(
                    "no running pod on node {node} has service account {namespace}/{account}"
                ))
            })
    }
}

/// The field selector did the filtering; this keeps finished pods out and does not rely on it.
fn runs_as(pod: &Pod, node: &str, account: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let finished = pod
        .status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    spec.node_name.as_deref() == Some(node)
        && spec.service_account_name.as_deref().unwrap_or("default") == account
        && !finished
}
