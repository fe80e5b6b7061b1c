use super::*;

/// A map of fixed capacity, as the kernel's hash maps behave.
struct Fake {
    entries: BTreeMap<u32, u32>,
    capacity: usize,
}

impl MapBackend<u32, u32> for Fake {
    fn keys(&self) -> Vec<u32> {
        self.entries.keys().copied().collect()
    }

    fn get(&self, key: &u32) -> Option<u32> {
        self.entries.get(key).copied()
    }

    fn insert(&mut self, key: &u32, value: &u32) -> Result<(), WriteError> {
        if !self.entries.contains_key(key) && self.entries.len() >= self.capacity {
            return Err(WriteError { full: true, message: "E2BIG".into() });
        }
        self.entries.insert(*key, *value);
        Ok(())
    }

    fn remove(&mut self, key: &u32) -> Result<(), WriteError> {
        self.entries.remove(key).map(drop).ok_or_else(|| WriteError { full: false, message: "ENOENT".into() })
    }
}

fn desired(keys: impl IntoIterator<Item = u32>) -> BTreeMap<u32, u32> {
    keys.into_iter().map(|k| (k, k * 10)).collect()
}

#[test]
fn sync_counts_entries_and_refused_writes_and_makes_room_first() {
    let mut map = Fake { entries: BTreeMap::from([(1, 10), (9, 90)]), capacity: 3 };
    // 9 is stale and goes first, so 1, 2, 3 fit; 4 and 5 do not.
    let outcome = sync_entries(&mut map, &desired(1..=5));
    assert_eq!((outcome.added, outcome.removed, outcome.entries), (2, 1, 3));
    assert_eq!(outcome.failed.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [4, 5]);
    assert!(outcome.full());
    assert_eq!(map.keys(), [1, 2, 3]);
    // Unchanged entries are not rewritten; once there is room, the rest go in.
    map.capacity = 5;
    let outcome = sync_entries(&mut map, &desired(1..=5));
    assert_eq!((outcome.added, outcome.removed, outcome.entries, outcome.failed.len()), (2, 0, 5, 0));
    // A changed value is rewritten in place (no room needed).
    let mut changed = desired(1..=5);
    changed.insert(3, 7);
    let outcome = sync_entries(&mut map, &changed);
    assert_eq!((outcome.added, outcome.entries, outcome.failed.len()), (1, 5, 0));
    let outcome = sync_entries(&mut map, &BTreeMap::new());
    assert_eq!((outcome.removed, outcome.entries), (5, 0));
}
