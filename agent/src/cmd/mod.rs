//! Commands that talk to a running agent.
pub mod admin_client;
pub mod check;
pub mod flows;
