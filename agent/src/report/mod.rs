//! What happened, for operators and auditors: flow records of every connection (from kernel
//! events and the engine), the audit log, Istio's metrics, the mesh picture, `lockmesh check`
//! and the config dump.
pub mod audit;
pub mod check;
pub mod config_dump;
pub mod flows;
pub mod graph;
pub mod metrics;
