use super::*;

#[test]
fn parses_istio_ids_and_rejects_others() {
    let id = SpiffeId::parse("spiffe://cluster.local/ns/bookinfo/sa/details").unwrap();
    assert_eq!((id.trust_domain.as_str(), id.namespace.as_str()), ("cluster.local", "bookinfo"));
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/bookinfo/sa/details");
    for bad in [
        "https://cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a",
        "spiffe://cluster.local/ns/a/sa/b/c",
        "spiffe:///ns/a/sa/b",
        "spiffe://td/ns//sa/b",
    ] {
        assert!(SpiffeId::parse(bad).is_err(), "{bad}");
    }
}
