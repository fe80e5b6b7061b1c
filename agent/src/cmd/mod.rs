//! Commands that talk to a running agent, or read what it wrote.
pub mod admin_client;
pub mod audit;
pub mod check;
pub mod flow_filter;
pub mod flows;
pub mod graph;
