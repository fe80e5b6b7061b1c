//! YAML documents → typed objects of the model, one document at a time.
use std::{
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, de::DeserializeOwned};
use serde_yaml_ng::Value;

use super::ConfigError;
use crate::cluster::{
    convert::{self, DEFAULT_NAMESPACE, FieldError, Metadata, Warning, check_dns_subdomain, from_document},
    model::{DestinationRule, ObjectKey, PeerAuthentication, ProbeExemption, Service, Workload},
};

pub(super) const LOCKMESH_API: &str = "lockmesh.io/v1alpha1";

/// Which object a document describes, known even when the rest of it is broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ObjectId {
    pub kind: String,
    pub key: ObjectKey,
}

impl ObjectId {
    pub(super) fn new(kind: &str, key: &ObjectKey) -> Self {
        Self { kind: kind.to_string(), key: key.clone() }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.key)
    }
}

#[derive(Clone, Debug)]
pub(super) enum Object {
    Workload(Workload),
    Service(Service),
    PeerAuthentication(PeerAuthentication),
    DestinationRule(DestinationRule),
}

/// An object and where it came from.
#[derive(Clone, Debug)]
pub(super) struct ParsedObject {
    pub id: ObjectId,
    pub document: Option<usize>,
    pub kind: Object,
}

/// Parses every document of a file. Each entry is an object, or the id of the object a broken
/// document meant (when that much could be read). Warnings come with the errors.
pub(super) fn parse_file(
    path: &Path,
    text: &str,
    root_namespace: &str,
) -> (Vec<Result<ParsedObject, Option<ObjectId>>>, Vec<ConfigError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                errors.push(ConfigError::syntax(path, number, e.to_string()));
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let doc = Document { path, number, root_namespace };
        match parse_document(&doc, value) {
            Ok(Some((object, warnings))) => {
                errors.extend(warnings.into_iter().map(|Warning { field, message }| {
                    ConfigError::warning(path, Some(number), Some(&object.id), field, message)
                }));
                objects.push(Ok(object));
            }
            Ok(None) => {}
            Err(boxed) => {
                let (id, error) = *boxed;
                errors.push(error);
                objects.push(Err(id));
            }
        }
    }
    (objects, errors)
}

type DocumentError = Box<(Option<ObjectId>, ConfigError)>;

/// Where a document is, and what its parsing needs to know.
pub(super) struct Document<'a> {
    pub path: &'a Path,
    pub number: usize,
    pub root_namespace: &'a str,
}

impl Document<'_> {
    /// `field` `.` is the document itself.
    fn invalid(&self, id: Option<&ObjectId>, field: &str, message: String) -> DocumentError {
        let field = (field != ".").then(|| field.to_string());
        Box::new((id.cloned(), ConfigError::invalid(self.path, self.number, id, field, message)))
    }

    /// Deserializes the document as `D`, then builds the object with `build`.
    fn build<D: DeserializeOwned>(
        &self,
        id: Option<ObjectId>,
        value: Value,
        build: impl FnOnce(D) -> Result<(Object, Vec<Warning>), FieldError>,
    ) -> Result<Option<(ParsedObject, Vec<Warning>)>, DocumentError> {
        self.convert(id, value, |value| build(from_document(value)?))
    }

    /// Builds the object from the whole document with `convert` (deserializing included).
    fn convert(
        &self,
        id: Option<ObjectId>,
        value: Value,
        convert: impl FnOnce(Value) -> Result<(Object, Vec<Warning>), FieldError>,
    ) -> Result<Option<(ParsedObject, Vec<Warning>)>, DocumentError> {
        let Some(id) = id else {
            return Err(self.invalid(None, "metadata.name", "missing or not a string".into()));
        };
        let (kind, warnings) = convert(value).map_err(|e| self.invalid(Some(&id), &e.field, e.message))?;
        Ok(Some((ParsedObject { id, document: Some(self.number), kind }, warnings)))
    }
}

const PEER_AUTHENTICATION_APIS: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];
const DESTINATION_RULE_APIS: &[&str] =
    &["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"];

fn parse_document(
    doc: &Document<'_>,
    value: Value,
) -> Result<Option<(ParsedObject, Vec<Warning>)>, DocumentError> {
    let Some(kind) = value.get("kind").and_then(Value::as_str).map(str::to_owned) else {
        return Err(doc.invalid(None, "kind", "missing or not a string".into()));
    };
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
    let id = object_id(&kind, &value);
    let wrong_version = |supported: &[&str]| {
        doc.invalid(
            id.as_ref(),
            "apiVersion",
            format!("{kind} needs apiVersion {}, found {api_version:?}", supported.join(" or ")),
        )
    };
    let root = doc.root_namespace;

    match kind.as_str() {
        "Workload" if api_version == LOCKMESH_API => {
            doc.build(id, value, |d: WorkloadDoc| Ok((Object::Workload(d.into_model()?), Vec::new())))
        }
        "Workload" => Err(wrong_version(&[LOCKMESH_API])),
        "Service" if api_version == "v1" => {
            doc.convert(id, value, |v| Ok((Object::Service(convert::service(v)?), vec![])))
        }
        "PeerAuthentication" if PEER_AUTHENTICATION_APIS.contains(&api_version.as_str()) => {
            doc.convert(id, value, |v| {
                let (pa, warnings) = convert::peer_authentication(v, root)?;
                Ok((Object::PeerAuthentication(pa), warnings))
            })
        }
        "PeerAuthentication" if api_version.starts_with("security.istio.io/") => {
            Err(wrong_version(PEER_AUTHENTICATION_APIS))
        }
        "DestinationRule" if DESTINATION_RULE_APIS.contains(&api_version.as_str()) => {
            doc.convert(id, value, |v| {
                let (dr, warnings) = convert::destination_rule(v)?;
                Ok((Object::DestinationRule(dr), warnings))
            })
        }
        "DestinationRule" if api_version.starts_with("networking.istio.io/") => {
            Err(wrong_version(DESTINATION_RULE_APIS))
        }
        _ => {
            tracing::debug!(file = %doc.path.display(), document = doc.number, %kind, %api_version, "skipping document of a kind lockmesh does not use");
            Ok(None)
        }
    }
}

fn object_id(kind: &str, value: &Value) -> Option<ObjectId> {
    let metadata = value.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    let namespace = metadata.get("namespace").and_then(Value::as_str).unwrap_or(DEFAULT_NAMESPACE);
    Some(ObjectId { kind: kind.to_string(), key: ObjectKey::new(namespace, name) })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadDoc {
    metadata: Metadata,
    spec: WorkloadSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WorkloadSpec {
    node: String,
    #[serde(default)]
    service_account: Option<String>,
    addresses: Vec<Ipv4Addr>,
    #[serde(default)]
    netns: Option<PathBuf>,
    /// What `--kube` computes from a Pod's probes: ports its node's kubelet probes in plaintext.
    #[serde(default)]
    probes: Vec<ProbeDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeDoc {
    port: u16,
    from: Ipv4Addr,
}

impl WorkloadDoc {
    fn into_model(self) -> Result<Workload, FieldError> {
        let key = self.metadata.key()?;
        let service_account = self.spec.service_account.unwrap_or_else(|| "default".to_string());
        check_dns_subdomain("spec.serviceAccount", &service_account)?;
        if self.spec.node.is_empty() {
            return Err(FieldError::new("spec.node", "must not be empty"));
        }
        if self.spec.addresses.is_empty() {
            return Err(FieldError::new("spec.addresses", "needs at least one IPv4 address"));
        }
        if let Some((i, ip)) =
            self.spec.addresses.iter().enumerate().find(|(_, ip)| {
                ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast()
            })
        {
            return Err(FieldError::new(
                format!("spec.addresses[{i}]"),
                format!("{ip} cannot be a workload address"),
            ));
        }
        if let Some(netns) = &self.spec.netns
            && !netns.is_absolute()
        {
            return Err(FieldError::new(
                "spec.netns",
                format!("{} is not an absolute path", netns.display()),
            ));
        }
        let mut probes = Vec::new();
        for (i, probe) in self.spec.probes.iter().enumerate() {
            if probe.port == 0 {
                return Err(FieldError::new(
                    format!("spec.probes[{i}].port"),
                    "must be a port number (1-65535)",
                ));
            }
            if probe.from.is_unspecified() || probe.from.is_multicast() || probe.from.is_broadcast() {
                return Err(FieldError::new(
                    format!("spec.probes[{i}].from"),
                    format!("{} cannot be a node address", probe.from),
                ));
            }
            probes.push(ProbeExemption { port: probe.port, from: probe.from });
        }
        probes.sort();
        probes.dedup();
        Ok(Workload {
            key,
            labels: self.metadata.labels,
            node: self.spec.node,
            service_account,
            addresses: self.spec.addresses,
            netns: self.spec.netns,
            probes,
        })
    }
}

#[cfg(test)]
mod tests;
