//! SPIFFE IDs as Istio uses them: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
pub struct NotSpiffe(pub String);

impl SpiffeId {
    pub fn parse(uri: &str) -> Result<Self, NotSpiffe> {
        let fail = || NotSpiffe(uri.to_string());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(fail)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(fail());
        };
        if [td, ns, sa].iter().any(|p| p.is_empty()) {
            return Err(fail());
        }
        Ok(Self { trust_domain: td.into(), namespace: ns.into(), service_account: sa.into() })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

#[cfg(test)]
mod tests;
