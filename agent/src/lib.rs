//! lockmesh: a sidecar-less mTLS data plane. The node agent is a pipeline, one folder per stage,
//! each importing only from the stages before it:
//!
//! `cluster` (workloads, Services and Istio objects from a config dir or the Kubernetes API) →
//! `policy` (what those objects mean for a connection) → `desired` (what this node's kernel maps
//! and engine must hold) → `kernel` + `engine` (the eBPF programs and maps; the mTLS tunnel
//! engine) → `report` (flows, audit log, metrics, graph, check).
//!
//! `identity` (certificates and their checks) and `sys` (the host: namespaces, routing, process
//! resources) serve every stage. `app` is the agent's composition root, `cli` the commands,
//! `admin` serves the reports over HTTP, and `ca_service` is the cluster's CA.
#![warn(unreachable_pub)]

// The stages. `pub` only where the binary (`cli::main`), the fuzz targets (`agent/fuzz`: parsers,
// policy decisions, HBONE request checks, certificate checks) and the manifest checks
// (`agent/tests`) reach in; everything else is `pub(crate)`, so that rustc reports dead code.
pub mod cli;
pub mod cluster;
pub mod desired;
pub mod engine;
pub mod identity;
pub mod policy;
pub mod report;

mod admin;
mod app;
mod ca_service;
mod kernel;
mod sys;
