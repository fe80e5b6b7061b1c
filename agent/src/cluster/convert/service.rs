//! Kubernetes `Service` (`v1`) documents. Fields lockmesh does not use (`type`, `sessionAffinity`,
//! `status`…) are ignored, so manifests can be copied as they are.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Deserializer};

use super::{FieldError, Metadata, from_document};
use crate::cluster::model::{ClusterIp, Protocol, Service, ServicePort, TargetPort};

/// A `Service` document → the model, for both sources (the config dir's YAML, the Kubernetes
/// API's JSON).
pub fn service<'de, D: Deserializer<'de>>(document: D) -> Result<Service, FieldError> {
    from_document::<ServiceDoc, D>(document)?.into_model()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceDoc {
    metadata: Metadata,
    #[serde(default)]
    spec: ServiceSpec,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(default)]
    selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    ports: Option<Vec<PortDoc>>,
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortDoc {
    #[serde(default)]
    name: Option<String>,
    port: u16,
    #[serde(default)]
    target_port: Option<IntOrString>,
    #[serde(default)]
    protocol: Option<Protocol>,
}

/// Kubernetes' `IntOrString`.
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    String(String),
}

impl ServiceDoc {
    fn into_model(self) -> Result<Service, FieldError> {
        let key = self.metadata.key()?;
        let mut ports: Vec<ServicePort> = Vec::new();
        for (i, doc) in self.spec.ports.unwrap_or_default().into_iter().enumerate() {
            let field = format!("spec.ports[{i}]");
            if doc.port == 0 {
                return Err(FieldError::new(format!("{field}.port"), "must be between 1 and 65535"));
            }
            let target_port = match doc.target_port {
                None => TargetPort::Number(doc.port),
                Some(IntOrString::Int(n)) => match u16::try_from(n) {
                    Ok(n) if n > 0 => TargetPort::Number(n),
                    _ => {
                        return Err(FieldError::new(
                            format!("{field}.targetPort"),
                            format!("{n} is not a port (1-65535)"),
                        ));
                    }
                },
                Some(IntOrString::String(name)) => {
                    check_port_name(&format!("{field}.targetPort"), &name)?;
                    TargetPort::Name(name)
                }
            };
            if let Some(name) = &doc.name {
                check_port_name(&format!("{field}.name"), name)?;
                if ports.iter().any(|p| p.name.as_ref() == Some(name)) {
                    return Err(FieldError::new(
                        format!("{field}.name"),
                        format!("duplicate port name {name:?}"),
                    ));
                }
            }
            let protocol = doc.protocol.unwrap_or_default();
            if ports.iter().any(|p| p.port == doc.port && p.protocol == protocol) {
                return Err(FieldError::new(
                    format!("{field}.port"),
                    format!("duplicate port {} ({protocol:?})", doc.port),
                ));
            }
            ports.push(ServicePort { name: doc.name, port: doc.port, target_port, protocol });
        }
        let cluster_ip = match self.spec.cluster_ip.as_deref() {
            None | Some("") => None,
            Some("None") => Some(ClusterIp::Headless),
            Some(text) => match text.parse::<Ipv4Addr>() {
                Ok(ip) => Some(ClusterIp::Address(ip)),
                Err(_) => {
                    return Err(FieldError::new(
                        "spec.clusterIP",
                        format!("{text:?} is not an IPv4 address or \"None\""),
                    ));
                }
            },
        };
        Ok(Service {
            key,
            labels: self.metadata.labels,
            selector: self.spec.selector.unwrap_or_default(),
            ports,
            cluster_ip,
        })
    }
}

/// An IANA service name, what Kubernetes requires of port names: at most 15 lowercase
/// alphanumerics and '-', at least one letter, no leading, trailing or double '-'.
fn check_port_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{name:?} is not a valid port name (IANA service name, at most 15 chars)"),
        ))
    }
}
