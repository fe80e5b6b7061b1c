use super::*;

#[test]
fn trims_once_a_burst_has_ended_and_not_before() {
    let mut trimmer = Trimmer::default();
    assert!(!trimmer.observe(10));
    assert!(!trimmer.observe(5000), "growing");
    assert!(!trimmer.observe(4000), "fewer than the threshold ended");
    assert!(trimmer.observe(3000), "2000 ended since the peak");
    assert!(!trimmer.observe(2500), "the peak restarted at the trim");
    assert!(trimmer.observe(0));
    assert!(!trimmer.observe(0));
}
