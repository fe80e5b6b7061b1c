use super::*;

#[test]
fn kernel_versions() {
    assert_eq!(kernel_version("6.18.0-1-cloud-amd64"), Some((6, 18)));
    assert_eq!(kernel_version("5.14.0-427.13.1.el9_4.x86_64"), Some((5, 14)));
    assert_eq!(kernel_version("6.6"), Some((6, 6)));
    assert_eq!(kernel_version("6.10rc3"), Some((6, 10)));
    assert_eq!(kernel_version("garbage"), None);
    assert_eq!(kernel_version("6"), None);
}

#[test]
fn capabilities_from_proc_status() {
    let root =
        "Name:\tlockmesh\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
    assert_eq!(effective_capabilities(root), Some(0x1ff_ffff_ffff));
    assert!(missing_capabilities(0x1ff_ffff_ffff).is_empty());
    // NET_ADMIN, NET_RAW and SYS_ADMIN only: BPF and PERFMON missing.
    let mask = (1 << 12) | (1 << 13) | (1 << 21);
    assert_eq!(missing_capabilities(mask), ["CAP_PERFMON", "CAP_BPF"]);
    assert_eq!(effective_capabilities("Name:\tx\n"), None);
    assert_eq!(effective_capabilities("CapEff:\tzz\n"), None);
}
