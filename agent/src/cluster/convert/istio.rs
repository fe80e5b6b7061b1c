//! Istio's `PeerAuthentication` and `DestinationRule` documents, in the format Istio documents.
//! Fields lockmesh does not use (load balancing, connection pools, subsets…) are ignored, as a
//! lenient reader of copied manifests should; values it cannot interpret are errors, and what
//! Istio accepts but ignores (or lockmesh does not honour) is a warning.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_yaml_ng::{Mapping, Value};

use super::{FieldError, Metadata, Warning, check_dns_label, from_document};
use crate::cluster::model::{DestinationRule, PeerAuthentication, PeerMtlsMode, TlsMode, TrafficPolicy};

/// A `PeerAuthentication` document → the model: the one conversion both sources use (a YAML
/// document of the config dir, a JSON object of the Kubernetes API). `apiVersion` and `kind` are
/// the caller's to check.
pub fn peer_authentication<'de, D: Deserializer<'de>>(
    document: D,
    root_namespace: &str,
) -> Result<(PeerAuthentication, Vec<Warning>), FieldError> {
    from_document::<PeerAuthenticationDoc, D>(document)?.into_model(root_namespace)
}

/// A `DestinationRule` document → the model, for both sources (see [`peer_authentication`]).
pub fn destination_rule<'de, D: Deserializer<'de>>(
    document: D,
) -> Result<(DestinationRule, Vec<Warning>), FieldError> {
    from_document::<DestinationRuleDoc, D>(document)?.into_model()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerAuthenticationDoc {
    metadata: Metadata,
    #[serde(default)]
    spec: Option<PeerAuthenticationSpec>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerAuthenticationSpec {
    #[serde(default)]
    selector: Option<WorkloadSelector>,
    #[serde(default)]
    mtls: Option<MtlsDoc>,
    /// Keys may be written as integers or strings; converted by hand.
    #[serde(default)]
    port_level_mtls: Option<Mapping>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadSelector {
    #[serde(default)]
    match_labels: Option<BTreeMap<String, String>>,
}

#[derive(Default, Deserialize)]
struct MtlsDoc {
    #[serde(default)]
    mode: Option<PeerMtlsMode>,
}

impl PeerAuthenticationDoc {
    fn into_model(self, root_namespace: &str) -> Result<(PeerAuthentication, Vec<Warning>), FieldError> {
        let key = self.metadata.key()?;
        let creation_timestamp = self.metadata.creation_timestamp()?;
        let spec = self.spec.unwrap_or_default();
        let selector = spec.selector.and_then(|s| s.match_labels).unwrap_or_default();
        let mode = spec.mtls.and_then(|m| m.mode).unwrap_or_default();
        let mut port_level_mtls = BTreeMap::new();
        for (k, v) in spec.port_level_mtls.unwrap_or_default() {
            let port = port_key(&k)?;
            let field = format!("spec.portLevelMtls.{port}");
            let mtls: MtlsDoc = if v.is_null() { MtlsDoc::default() } else { nested(&field, v)? };
            if port_level_mtls.insert(port, mtls.mode.unwrap_or_default()).is_some() {
                return Err(FieldError::new(field, format!("port {port} is listed twice")));
            }
        }

        let mut warnings = Vec::new();
        if selector.is_empty() && !port_level_mtls.is_empty() {
            warnings.push(Warning::new(
                Some("spec.portLevelMtls".into()),
                "portLevelMtls is honoured only in a policy with a selector; ignored",
            ));
        }
        if !selector.is_empty() && key.namespace == root_namespace {
            warnings.push(Warning::new(
                Some("spec.selector".into()),
                format!(
                    "a policy with a selector in the root namespace {root_namespace} applies to no workload \
                     (Istio ignores it); put it in the workloads' namespace"
                ),
            ));
        }
        let pa = PeerAuthentication { key, creation_timestamp, selector, mode, port_level_mtls };
        Ok((pa, warnings))
    }
}

/// A `portLevelMtls` key: an integer or a string holding one, 1-65535.
fn port_key(key: &Value) -> Result<u16, FieldError> {
    let parsed = match key {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.trim().parse::<u16>().ok(),
        _ => None,
    };
    match parsed {
        Some(port) if port > 0 => Ok(port),
        _ => {
            let shown = serde_yaml_ng::to_string(key).map(|s| s.trim().to_string()).unwrap_or_default();
            Err(FieldError::new(
                format!("spec.portLevelMtls.{shown}"),
                format!("{shown} is not a port (1-65535)"),
            ))
        }
    }
}

/// Deserializes a nested value, naming the field below `prefix` on error.
fn nested<T: DeserializeOwned>(prefix: &str, value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let field = if inner == "." { prefix.to_string() } else { format!("{prefix}.{inner}") };
        FieldError::new(field, e.into_inner().to_string())
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DestinationRuleDoc {
    metadata: Metadata,
    spec: DestinationRuleSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DestinationRuleSpec {
    host: String,
    #[serde(default)]
    export_to: Option<Vec<String>>,
    #[serde(default)]
    traffic_policy: Option<TrafficPolicyDoc>,
    #[serde(default)]
    workload_selector: Option<WorkloadSelector>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TrafficPolicyDoc {
    #[serde(default)]
    tls: Option<TlsDoc>,
    #[serde(default)]
    port_level_settings: Option<Vec<PortTrafficPolicyDoc>>,
}

#[derive(Deserialize)]
struct TlsDoc {
    /// Absent means DISABLE, the proto's zero value.
    #[serde(default)]
    mode: TlsMode,
}

#[derive(Deserialize)]
struct PortTrafficPolicyDoc {
    #[serde(default)]
    port: Option<PortSelectorDoc>,
    #[serde(default)]
    tls: Option<TlsDoc>,
}

#[derive(Deserialize)]
struct PortSelectorDoc {
    #[serde(default)]
    number: Option<u32>,
}

impl DestinationRuleDoc {
    fn into_model(self) -> Result<(DestinationRule, Vec<Warning>), FieldError> {
        let key = self.metadata.key()?;
        let creation_timestamp = self.metadata.creation_timestamp()?;
        let spec = self.spec;
        check_host(&spec.host)?;
        let export_to = spec.export_to.unwrap_or_default();
        for (i, entry) in export_to.iter().enumerate() {
            if !matches!(entry.as_str(), "." | "*" | "~") {
                check_dns_label(&format!("spec.exportTo[{i}]"), entry)?;
            }
        }
        let mut warnings = Vec::new();
        let traffic_policy = match spec.traffic_policy {
            None => None,
            Some(doc) => {
                let tls = doc.tls.map(|t| t.mode);
                warnings.extend(tls.and_then(|m| not_mesh_mtls("spec.trafficPolicy.tls.mode".into(), m)));
                let mut port_level = BTreeMap::new();
                for (i, setting) in doc.port_level_settings.unwrap_or_default().into_iter().enumerate() {
                    let field = format!("spec.trafficPolicy.portLevelSettings[{i}]");
                    let number = setting.port.and_then(|p| p.number);
                    let port = match number.map(u16::try_from) {
                        Some(Ok(port)) if port > 0 => port,
                        Some(_) => {
                            let n = number.unwrap_or_default();
                            return Err(FieldError::new(
                                format!("{field}.port.number"),
                                format!("{n} is not a port (1-65535)"),
                            ));
                        }
                        None => return Err(FieldError::new(format!("{field}.port.number"), "missing")),
                    };
                    let tls = setting.tls.map(|t| t.mode);
                    warnings.extend(tls.and_then(|m| not_mesh_mtls(format!("{field}.tls.mode"), m)));
                    if port_level.contains_key(&port) {
                        warnings.push(Warning::new(
                            Some(format!("{field}.port.number")),
                            format!(
                                "port {port} already has settings; Istio uses the first, this one is ignored"
                            ),
                        ));
                        continue;
                    }
                    port_level.insert(port, tls);
                }
                Some(TrafficPolicy { tls, port_level })
            }
        };
        let workload_selector = spec.workload_selector.and_then(|s| s.match_labels).unwrap_or_default();
        if !workload_selector.is_empty() {
            warnings.push(Warning::new(
                Some("spec.workloadSelector".into()),
                "lockmesh does not support DestinationRules with a workloadSelector; the rule is ignored",
            ));
        }
        let dr = DestinationRule {
            key,
            creation_timestamp,
            host: spec.host,
            export_to,
            workload_selector,
            traffic_policy,
        };
        Ok((dr, warnings))
    }
}

/// SIMPLE and MUTUAL originate TLS with user certificates: Istio accepts them, lockmesh cannot.
fn not_mesh_mtls(field: String, mode: TlsMode) -> Option<Warning> {
    matches!(mode, TlsMode::Simple | TlsMode::Mutual).then(|| {
        let mode = if mode == TlsMode::Simple { "SIMPLE" } else { "MUTUAL" };
        Warning::new(
            Some(field),
            format!(
                "{mode} is TLS origination with user certificates, not mesh mTLS; lockmesh sends such \
                 traffic as plaintext to the mesh tunnel"
            ),
        )
    })
}

/// A host name, possibly with a leading `*` label; `*` alone matches every host.
fn check_host(host: &str) -> Result<(), FieldError> {
    let rest = host.strip_prefix("*.").unwrap_or(host);
    let ok = host == "*"
        || (!rest.is_empty()
            && rest.len() <= 253
            && rest.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            }));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "spec.host",
            format!("{host:?} is not a host name (a DNS name, optionally starting with *.)"),
        ))
    }
}
