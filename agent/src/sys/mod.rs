//! What every stage stands on: the host (cgroup v2, kernel facts, capabilities), network
//! namespaces, the per-pod routing of the engine's transparent legs, the process's resources
//! and the bookkeeping of bounded tables.
pub mod bounds;
pub mod host;
pub mod netns;
pub mod podnet;
pub mod resources;
