//! YAML documents → typed objects of the model, one document at a time.
use std::{
    collections::BTreeMap,
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_yaml_ng::Value;

use super::ConfigError;
use crate::model::{DestinationRule, ObjectKey, PeerAuthentication, ProbeExemption, Service, Workload};

pub const LOCKMESH_API: &str = "lockmesh.io/v1alpha1";

/// Which object a document describes, known even when the rest of it is broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectId {
    pub kind: String,
    pub key: ObjectKey,
}

impl ObjectId {
    pub fn new(kind: &str, key: &ObjectKey) -> Self {
        Self { kind: kind.to_string(), key: key.clone() }
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.key)
    }
}

#[derive(Clone, Debug)]
pub enum Object {
    Workload(Workload),
    Service(Service),
    PeerAuthentication(PeerAuthentication),
    DestinationRule(DestinationRule),
}

/// An object and where it came from.
#[derive(Clone, Debug)]
pub struct ParsedObject {
    pub id: ObjectId,
    pub document: Option<usize>,
    pub kind: Object,
}

/// Parses every document of a file. Each entry is an object, or the id of the object a broken
/// document meant (when that much could be read). Warnings come with the errors.
pub fn parse_file(
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
                errors.extend(warnings.into_iter().map(|(field, message)| {
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

/// A warning about an object that is kept: the field (when one is to blame) and the message.
pub type Warning = (Option<String>, String);

/// Where a document is, and what its parsing needs to know.
pub struct Document<'a> {
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
        let (kind, warnings) = convert(value).map_err(|(field, msg)| self.invalid(Some(&id), &field, msg))?;
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
            doc.convert(id, value, |v| Ok((Object::Service(super::service::service(v)?), vec![])))
        }
        "PeerAuthentication" if PEER_AUTHENTICATION_APIS.contains(&api_version.as_str()) => {
            doc.convert(id, value, |v| {
                let (pa, warnings) = super::istio::peer_authentication(v, root)?;
                Ok((Object::PeerAuthentication(pa), warnings))
            })
        }
        "PeerAuthentication" if api_version.starts_with("security.istio.io/") => {
            Err(wrong_version(PEER_AUTHENTICATION_APIS))
        }
        "DestinationRule" if DESTINATION_RULE_APIS.contains(&api_version.as_str()) => {
            doc.convert(id, value, |v| {
                let (dr, warnings) = super::istio::destination_rule(v)?;
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

/// Deserializes a whole document (a YAML or a JSON value) into `T`, naming the offending field
/// on error (`.` for the document itself).
pub fn from_document<'de, T: Deserialize<'de>, D: Deserializer<'de>>(document: D) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(document).map_err(|e| (e.path().to_string(), e.into_inner().to_string()))
}

pub const DEFAULT_NAMESPACE: &str = "default";

/// `metadata` of any Kubernetes-shaped object; fields lockmesh does not use are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

impl Metadata {
    /// The validated `namespace/name` (namespace `default` when absent, as `kubectl apply` does).
    pub fn key(&self) -> Result<ObjectKey, FieldError> {
        let namespace = self.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        check_dns_label("metadata.namespace", &namespace)?;
        check_dns_subdomain("metadata.name", &self.name)?;
        Ok(ObjectKey::new(namespace, self.name.clone()))
    }

    /// `creationTimestamp`, RFC 3339 as Kubernetes writes it.
    pub fn creation_timestamp(&self) -> Result<Option<time::OffsetDateTime>, FieldError> {
        let Some(text) = &self.creation_timestamp else { return Ok(None) };
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map(Some).map_err(
            |e| ("metadata.creationTimestamp".into(), format!("{text:?} is not an RFC 3339 time: {e}")),
        )
    }
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

pub type FieldError = (String, String);

impl WorkloadDoc {
    fn into_model(self) -> Result<Workload, FieldError> {
        let key = self.metadata.key()?;
        let service_account = self.spec.service_account.unwrap_or_else(|| "default".to_string());
        check_dns_subdomain("spec.serviceAccount", &service_account)?;
        if self.spec.node.is_empty() {
            return Err(("spec.node".into(), "must not be empty".into()));
        }
        if self.spec.addresses.is_empty() {
            return Err(("spec.addresses".into(), "needs at least one IPv4 address".into()));
        }
        if let Some((i, ip)) =
            self.spec.addresses.iter().enumerate().find(|(_, ip)| {
                ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast()
            })
        {
            return Err((format!("spec.addresses[{i}]"), format!("{ip} cannot be a workload address")));
        }
        if let Some(netns) = &self.spec.netns
            && !netns.is_absolute()
        {
            return Err(("spec.netns".into(), format!("{} is not an absolute path", netns.display())));
        }
        let mut probes = Vec::new();
        for (i, probe) in self.spec.probes.iter().enumerate() {
            if probe.port == 0 {
                return Err((format!("spec.probes[{i}].port"), "must be a port number (1-65535)".into()));
            }
            if probe.from.is_unspecified() || probe.from.is_multicast() || probe.from.is_broadcast() {
                return Err((
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

/// RFC 1123 label: what Kubernetes requires of namespace names.
pub fn check_dns_label(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err((
            field.into(),
            format!("{value:?} is not a valid name (lowercase letters, digits and '-', at most 63)"),
        ))
    }
}

/// RFC 1123 subdomain: what Kubernetes requires of most object names.
pub fn check_dns_subdomain(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| check_dns_label(field, label).is_ok());
    if ok {
        Ok(())
    } else {
        Err((field.into(), format!("{value:?} is not a valid name (lowercase letters, digits, '-' and '.')")))
    }
}
