//! lockmesh: a sidecar-less mTLS data plane. The node agent (`agent`), its sources of truth
//! (`config`, `model`), what it derives (`inventory`, `enrolment`, `policy`), the kernel side
//! (`kernel`), and what it reports (`flows`, `admin`).
pub mod admin;
pub mod agent;
pub mod audit;
pub mod bounds;
pub mod ca_service;
pub mod check;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod config_dump;
pub mod desired;
pub mod doctor;
pub mod enrolment;
pub mod flows;
pub mod graph;
pub mod host;
pub mod identity;
pub mod inventory;
pub mod kernel;
pub mod kube;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod podnet;
pub mod policy;
pub mod proxy;
pub mod resources;
pub mod sockets;
pub mod source;
