//! How full the agent's own tables are: entries, the maximum each may hold and how often that
//! maximum made it evict or refuse something (`lockmesh_table_*` on `/metrics`, `tables` in
//! `/readyz`). Each table's policy is in the README ("Bounds").
use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableStat {
    pub entries: u64,
    pub capacity: u64,
    /// Entries evicted, or additions refused, because the table was full.
    pub overflows: u64,
}

impl TableStat {
    pub fn new(entries: usize, capacity: usize, overflows: u64) -> Self {
        Self { entries: entries as u64, capacity: capacity as u64, overflows }
    }
}

/// Tables by name.
pub(crate) type Tables = BTreeMap<&'static str, TableStat>;
