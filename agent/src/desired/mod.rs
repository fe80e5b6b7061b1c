//! What this node must do, derived from a cluster state and Istio policy: which of its workloads
//! are enrolled (with their network namespaces), the inventory that names addresses, and the
//! contents of the kernel maps. Pure but for opening the enrolled pods' namespaces.
pub(crate) mod enrolment;
pub mod inventory;
pub(crate) mod maps;
