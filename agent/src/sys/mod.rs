//! What every stage stands on: the host (cgroup v2, kernel facts, capabilities), network
//! namespaces, the per-pod routing of the engine's transparent legs, the process's resources
//! and the bookkeeping of bounded tables.
pub(crate) mod bounds;
pub(crate) mod host;
pub(crate) mod netns;
pub(crate) mod podnet;
pub(crate) mod resources;
