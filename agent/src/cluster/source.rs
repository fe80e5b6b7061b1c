//! What a source hands out: a whole new view of the cluster per (debounced) change, with what was
//! wrong with individual objects.
use super::model::ClusterState;

/// One new view of the cluster.
#[derive(Debug, Default)]
pub struct Update {
    /// `None` when the source could not be read at all: the last good state stays in force.
    pub state: Option<ClusterState>,
    /// What was wrong with individual objects (left out, or kept in their last good version).
    pub problems: Vec<Problem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The object is used as described; only something in it is ignored.
    pub warning: bool,
    pub message: String,
}
