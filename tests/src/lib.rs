//! lockmesh's test infrastructure: a testbed of "nodes" and "pods" made of network namespaces
//! on one machine, helpers to run processes inside them, and a handle on real agents.
//!
//! Everything it creates carries a unique run id and is removed when its owner is dropped (also
//! while unwinding from a panic); `cargo xtask testbed down --all` sweeps what a killed process
//! left behind.
pub mod agent;
pub mod app;
pub mod apps;
pub mod browser;
pub mod capture;
pub mod hbone;
pub mod http;
pub mod netns;
pub mod process;
pub mod raw;
pub mod testbed;

pub use agent::Agent;
pub use testbed::{NodeSpec, PodSpec, Testbed, TestbedSpec};

/// Path of a binary of this workspace: `$<NAME>_BIN` if set (`LOCKMESH_BIN`,
/// `LOCKMESH_TESTAPP_BIN`), else the newest of `target/{release,debug}/<name>`.
pub fn workspace_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return Ok(path.into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let newest = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join(name))
        .filter_map(|p| std::fs::metadata(&p).and_then(|m| m.modified()).ok().map(|t| (t, p)))
        .max();
    match newest {
        Some((_, path)) => Ok(path),
        None => anyhow::bail!(
            "{name} is not built: run `cargo build -p lockmesh` (or `cargo xtask test`), or set {var}"
        ),
    }
}
