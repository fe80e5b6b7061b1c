use std::time::Duration;

use super::DirWatch;

/// The agent polls `changed()` inside `select!` next to a timer; a change must survive the
/// timer winning while the change is still settling.
#[tokio::test]
async fn a_change_survives_a_cancelled_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut watch = DirWatch::new(dir.path()).unwrap();
    std::fs::write(dir.path().join("a.yaml"), "x: 1\n").unwrap();
    // Cancel while settling (the first event arrives well within 20 ms; settling takes 50).
    let cancelled = tokio::time::timeout(Duration::from_millis(20), watch.changed()).await;
    assert!(cancelled.is_err(), "still settling");
    let resumed = tokio::time::timeout(Duration::from_secs(2), watch.changed()).await;
    assert_eq!(resumed.ok(), Some(Some(())), "the change was kept");
}
