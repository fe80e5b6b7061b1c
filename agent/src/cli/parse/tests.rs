use super::*;
use crate::kernel::capacity_flag;

#[test]
fn map_sizes_from_flags() {
    assert_eq!(parse_map_entries("capture=1000"), Ok(("CAPTURE".to_string(), 1000)));
    assert_eq!(parse_map_entries("ORIG_DST_BY_PORT = 8"), Ok(("ORIG_DST_BY_PORT".to_string(), 8)));
    let enrolled = parse_map_entries("ENROLLED=5").unwrap_err();
    assert!(enrolled.contains("--max-enrolled"), "{enrolled}");
    assert!(parse_map_entries("COUNTERS=5").is_err());
    assert!(parse_map_entries("CAPTURE=0").is_err());
    assert!(parse_map_entries("CAPTURE").is_err());
    assert_eq!(capacity_flag("STRICT"), "--bpf-map-entries STRICT=N");
    assert_eq!(capacity_flag("ENROLLED"), "--max-enrolled");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("6s"), Ok(Duration::from_secs(6)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
    assert!(parse_duration("5 parsecs").is_err());
    assert!(parse_duration("s").is_err());
}
