use std::collections::BTreeMap;

use super::*;

#[test]
fn maps_of_other_sizes_are_pinned_apart() {
    let mut options = DatapathOptions {
        cgroup: "/sys/fs/cgroup".into(),
        pin_dir: "/sys/fs/bpf/lockmesh/n1".into(),
        ring_buffer_bytes: 1 << 20,
        max_enrolled: 4096,
        map_entries: BTreeMap::new(),
    };
    // Default sizes keep the name agents before --bpf-map-entries used.
    assert_eq!(maps_dir_name(&options), format!("maps-v{MAP_LAYOUT}-e4096-r1048576"));
    options.map_entries.insert("STRICT".into(), 16);
    options.map_entries.insert("CAPTURE".into(), 1000);
    assert_eq!(maps_dir_name(&options), format!("maps-v{MAP_LAYOUT}-e4096-r1048576-CAPTURE-1000-STRICT-16"));
}
