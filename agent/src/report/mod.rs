//! What happened, for operators and auditors: flow records of every connection (from kernel
//! events and the engine), the audit log, Istio's metrics, the mesh picture, `lockmesh check`
//! and the config dump.
pub(crate) mod audit;
pub mod check;
pub(crate) mod config_dump;
pub(crate) mod flows;
pub(crate) mod graph;
pub(crate) mod metrics;
