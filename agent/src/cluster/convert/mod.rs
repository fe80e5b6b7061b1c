//! Kubernetes and Istio objects (a YAML document of the config dir, a JSON object of the
//! Kubernetes API) → the model: the conversions both sources share, and what they report when a
//! field cannot be used ([`FieldError`]) or is accepted but ignored ([`Warning`]).
mod istio;
mod service;

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer};

pub use istio::{destination_rule, peer_authentication};
pub use service::service;

use super::model::ObjectKey;

/// A field that cannot be used as written: which one (a dotted path such as
/// `spec.addresses[0]`; `.` for the document itself) and why. The object is rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Something an object says that Istio accepts but ignores, or lockmesh does not honour: the
/// field to blame (when one is) and what is done instead. The object is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub field: Option<String>,
    pub message: String,
}

impl Warning {
    pub fn new(field: Option<String>, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// Deserializes a whole document (a YAML or a JSON value) into `T`, naming the offending field
/// on error (`.` for the document itself).
pub fn from_document<'de, T: Deserialize<'de>, D: Deserializer<'de>>(document: D) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(document)
        .map_err(|e| FieldError::new(e.path().to_string(), e.into_inner().to_string()))
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
            |e| {
                FieldError::new(
                    "metadata.creationTimestamp",
                    format!("{text:?} is not an RFC 3339 time: {e}"),
                )
            },
        )
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
        Err(FieldError::new(
            field,
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
        Err(FieldError::new(
            field,
            format!("{value:?} is not a valid name (lowercase letters, digits, '-' and '.')"),
        ))
    }
}
