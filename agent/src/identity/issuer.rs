//! Who signs workload certificates: the CA key on this node, or the cluster's CA service. The
//! rest of the identity code (issuing, renewal, trust) does not care which.
use std::sync::Arc;

use rustls::{crypto::CryptoProvider, pki_types::CertificateDer};

use super::{
    IdentityOptions,
    ca::{Ca, SignedLeaf},
    remote::RemoteCa,
};

pub(super) enum Issuer {
    Local(Ca),
    Remote(RemoteCa),
}

impl Issuer {
    pub(super) fn new(options: &IdentityOptions, provider: &Arc<CryptoProvider>) -> anyhow::Result<Self> {
        Ok(match &options.remote_ca {
            Some(remote) => Self::Remote(RemoteCa::new(remote, &options.trust_domain, provider.clone())?),
            None => {
                Self::Local(Ca::load(options.ca_dir.as_deref(), &options.state_dir, &options.trust_domain)?)
            }
        })
    }

    /// The trust bundle peers' chains must lead to.
    pub(super) fn roots(&self) -> &[CertificateDer<'static>] {
        match self {
            Self::Local(ca) => &ca.roots,
            Self::Remote(remote) => &remote.roots,
        }
    }

    /// Where certificates come from, for logs.
    pub(super) fn source(&self) -> &str {
        match self {
            Self::Local(ca) => &ca.source,
            Self::Remote(remote) => &remote.source,
        }
    }

    /// A certificate and key for `identity`, valid for `ttl` or less.
    pub(super) async fn issue(&self, identity: &str, ttl: std::time::Duration) -> anyhow::Result<SignedLeaf> {
        match self {
            Self::Local(ca) => ca.issue(identity, ttl),
            Self::Remote(remote) => remote.issue(identity, ttl).await,
        }
    }
}
