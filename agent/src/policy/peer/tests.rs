//! PeerAuthentication resolution.
use crate::cluster::model::ClusterState;
use crate::policy::{
    MeshParams, MtlsMode, effective_mtls,
    fixtures::{find_workload, params, peer_auth, state, workload},
    workload_mtls,
};

fn reviews() -> String {
    workload("bookinfo", "reviews-v1", "app: reviews, version: v1", "10.77.1.10")
}

/// The mode and deciding policy of `bookinfo/reviews-v1` on `port`.
fn resolve(state: &ClusterState, port: Option<u16>) -> (MtlsMode, Option<String>, bool) {
    let w = find_workload(state, "bookinfo/reviews-v1");
    let r = effective_mtls(state, &params(), w, port);
    (r.mode, r.decided_by.map(|k| k.to_string()), r.port_level)
}

const MESH_STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
";

#[test]
fn no_policy_is_permissive() {
    let s = state(&reviews());
    assert_eq!(resolve(&s, None), (MtlsMode::Permissive, None, false));
    let w = find_workload(&s, "bookinfo/reviews-v1");
    assert_eq!(effective_mtls(&s, &params(), w, None).describe(), "default PERMISSIVE");
}

#[test]
fn mesh_wide_policy_applies_everywhere() {
    let s = state(&format!("{}{MESH_STRICT}", reviews()));
    assert_eq!(resolve(&s, None), (MtlsMode::Strict, Some("istio-system/default".into()), false));
    assert_eq!(resolve(&s, Some(9080)).0, MtlsMode::Strict);
    let w = find_workload(&s, "bookinfo/reviews-v1");
    assert_eq!(
        effective_mtls(&s, &params(), w, None).to_string(),
        "PeerAuthentication istio-system/default STRICT"
    );
}

#[test]
fn custom_root_namespace() {
    let s =
        state(&format!("{}{}", reviews(), peer_auth("mesh-root", "default", "", "{mtls: {mode: STRICT}}")));
    assert_eq!(resolve(&s, None).0, MtlsMode::Permissive, "not the root namespace by default");
    let params = MeshParams { root_namespace: "mesh-root".into(), ..MeshParams::default() };
    let w = find_workload(&s, "bookinfo/reviews-v1");
    assert_eq!(effective_mtls(&s, &params, w, None).mode, MtlsMode::Strict);
}

#[test]
fn namespace_overrides_mesh_and_workload_overrides_namespace() {
    let ns = peer_auth("bookinfo", "ns", "", "{mtls: {mode: PERMISSIVE}}");
    let s = state(&format!("{}{MESH_STRICT}{ns}", reviews()));
    assert_eq!(resolve(&s, None), (MtlsMode::Permissive, Some("bookinfo/ns".into()), false));

    let wl = peer_auth(
        "bookinfo",
        "reviews",
        "",
        "{selector: {matchLabels: {app: reviews}}, mtls: {mode: DISABLE}}",
    );
    let s = state(&format!("{}{MESH_STRICT}{ns}{wl}", reviews()));
    assert_eq!(resolve(&s, None), (MtlsMode::Disable, Some("bookinfo/reviews".into()), false));
}

#[test]
fn unset_inherits_from_the_parent_scope() {
    let ns_unset = peer_auth("bookinfo", "ns", "", "{}");
    let wl_unset =
        peer_auth("bookinfo", "wl", "", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: UNSET}}");
    let s = state(&format!("{}{MESH_STRICT}{ns_unset}{wl_unset}", reviews()));
    assert_eq!(resolve(&s, None), (MtlsMode::Strict, Some("istio-system/default".into()), false));

    let ns = peer_auth("bookinfo", "ns", "", "{mtls: {mode: DISABLE}}");
    let s = state(&format!("{}{MESH_STRICT}{ns}{wl_unset}", reviews()));
    assert_eq!(resolve(&s, None), (MtlsMode::Disable, Some("bookinfo/ns".into()), false));

    let mesh_unset = peer_auth("istio-system", "default", "", "{mtls: {}}");
    let s = state(&format!("{}{mesh_unset}", reviews()));
    assert_eq!(resolve(&s, None), (MtlsMode::Permissive, None, false));
}

#[test]
fn selector_must_be_a_subset_of_the_labels_in_the_same_namespace() {
    let s = state(&format!(
        "{}{}{}{}",
        reviews(),
        peer_auth(
            "bookinfo",
            "v2",
            "",
            "{selector: {matchLabels: {app: reviews, version: v2}}, mtls: {mode: DISABLE}}"
        ),
        peer_auth("other", "ns", "", "{mtls: {mode: DISABLE}}"),
        peer_auth("other", "wl", "", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: DISABLE}}"),
    ));
    assert_eq!(resolve(&s, None), (MtlsMode::Permissive, None, false));
    let s = state(&format!(
        "{}{}",
        reviews(),
        peer_auth(
            "bookinfo",
            "v1",
            "",
            "{selector: {matchLabels: {app: reviews, version: v1}}, mtls: {mode: STRICT}}"
        ),
    ));
    assert_eq!(resolve(&s, None).0, MtlsMode::Strict);
}

#[test]
fn selector_policy_in_the_root_namespace_is_ignored() {
    let root_wl = peer_auth(
        "istio-system",
        "reviews",
        "",
        "{selector: {matchLabels: {app: reviews}}, mtls: {mode: DISABLE}}",
    );
    let s = state(&format!("{}{MESH_STRICT}{root_wl}", reviews()));
    assert_eq!(resolve(&s, None), (MtlsMode::Strict, Some("istio-system/default".into()), false));

    // Also for a workload living in the root namespace, where namespace-wide is mesh-wide.
    let gw = workload("istio-system", "gateway", "app: reviews", "10.77.1.99");
    let s = state(&format!("{gw}{MESH_STRICT}{root_wl}"));
    let w = find_workload(&s, "istio-system/gateway");
    let r = effective_mtls(&s, &params(), w, None);
    assert_eq!(
        (r.mode, r.decided_by.map(|k| k.to_string())),
        (MtlsMode::Strict, Some("istio-system/default".into()))
    );
}

#[test]
fn oldest_policy_of_a_scope_wins_and_they_are_not_merged() {
    let older = peer_auth(
        "bookinfo",
        "zz-older",
        ", creationTimestamp: 2024-01-01T00:00:00Z",
        "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}}",
    );
    let newer = peer_auth(
        "bookinfo",
        "aa-newer",
        ", creationTimestamp: 2024-06-01T00:00:00Z",
        "{selector: {matchLabels: {version: v1}}, mtls: {mode: DISABLE}, portLevelMtls: {9080: {mode: DISABLE}}}",
    );
    let s = state(&format!("{}{older}{newer}", reviews()));
    assert_eq!(resolve(&s, None), (MtlsMode::Strict, Some("bookinfo/zz-older".into()), false));
    // The newer policy's port-level setting is not merged in.
    assert_eq!(resolve(&s, Some(9080)), (MtlsMode::Strict, Some("bookinfo/zz-older".into()), false));

    // Same for namespace-wide policies.
    let ns_old =
        peer_auth("bookinfo", "b", ", creationTimestamp: 2023-01-01T00:00:00Z", "{mtls: {mode: DISABLE}}");
    let ns_new =
        peer_auth("bookinfo", "a", ", creationTimestamp: 2023-02-01T00:00:00Z", "{mtls: {mode: STRICT}}");
    let s = state(&format!("{}{ns_new}{ns_old}", reviews()));
    assert_eq!(resolve(&s, None), (MtlsMode::Disable, Some("bookinfo/b".into()), false));
}

#[test]
fn timestamp_ties_go_to_the_name_and_missing_timestamps_are_oldest() {
    let spec_strict = "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}}";
    let spec_disable = "{selector: {matchLabels: {app: reviews}}, mtls: {mode: DISABLE}}";
    let ts = ", creationTimestamp: 2024-01-01T00:00:00Z";
    let s = state(&format!(
        "{}{}{}",
        reviews(),
        peer_auth("bookinfo", "b", ts, spec_strict),
        peer_auth("bookinfo", "a", ts, spec_disable)
    ));
    assert_eq!(resolve(&s, None), (MtlsMode::Disable, Some("bookinfo/a".into()), false));

    let s = state(&format!(
        "{}{}{}",
        reviews(),
        peer_auth("bookinfo", "a", ts, spec_strict),
        peer_auth("bookinfo", "z", "", spec_disable)
    ));
    assert_eq!(resolve(&s, None), (MtlsMode::Disable, Some("bookinfo/z".into()), false));
}

#[test]
fn port_level_mtls() {
    let ns = peer_auth("bookinfo", "ns", "", "{mtls: {mode: DISABLE}}");
    let wl = peer_auth(
        "bookinfo",
        "reviews",
        "",
        "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}, \"9443\": {mode: PERMISSIVE}, 15000: {mode: UNSET}}}",
    );
    let s = state(&format!("{}{MESH_STRICT}{ns}{wl}", reviews()));
    let by = Some("bookinfo/reviews".to_string());
    assert_eq!(resolve(&s, Some(8080)), (MtlsMode::Disable, by.clone(), true));
    assert_eq!(resolve(&s, Some(9443)), (MtlsMode::Permissive, by.clone(), true));
    assert_eq!(
        resolve(&s, Some(15000)),
        (MtlsMode::Strict, by.clone(), true),
        "UNSET takes the workload mode"
    );
    assert_eq!(resolve(&s, Some(9080)), (MtlsMode::Strict, by.clone(), false));
    assert_eq!(resolve(&s, None), (MtlsMode::Strict, by, false));

    let w = find_workload(&s, "bookinfo/reviews-v1");
    let all = workload_mtls(&s, &params(), w);
    assert_eq!(all.ports.keys().copied().collect::<Vec<_>>(), vec![8080, 9443, 15000]);
    assert_eq!(all.default.mode, MtlsMode::Strict);
    assert_eq!(all.ports[&8080].describe(), "PeerAuthentication bookinfo/reviews port-level DISABLE");
}

#[test]
fn port_level_unset_inherits_an_inherited_workload_mode() {
    let ns = peer_auth("bookinfo", "ns", "", "{mtls: {mode: DISABLE}}");
    let wl = peer_auth(
        "bookinfo",
        "reviews",
        "",
        "{selector: {matchLabels: {app: reviews}}, portLevelMtls: {8080: {mode: UNSET}, 8081: {mode: STRICT}}}",
    );
    let s = state(&format!("{}{MESH_STRICT}{ns}{wl}", reviews()));
    assert_eq!(resolve(&s, None), (MtlsMode::Disable, Some("bookinfo/ns".into()), false));
    assert_eq!(resolve(&s, Some(8080)).0, MtlsMode::Disable);
    assert_eq!(resolve(&s, Some(8081)).0, MtlsMode::Strict);
}

#[test]
fn port_level_without_selector_is_ignored() {
    let ns =
        peer_auth("bookinfo", "ns", "", "{mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}");
    let mesh = peer_auth(
        "istio-system",
        "default",
        "",
        "{mtls: {mode: STRICT}, portLevelMtls: {9080: {mode: DISABLE}}}",
    );
    let s = state(&format!("{}{ns}{mesh}", reviews()));
    assert_eq!(resolve(&s, Some(8080)), (MtlsMode::Strict, Some("bookinfo/ns".into()), false));
    assert_eq!(resolve(&s, Some(9080)).0, MtlsMode::Strict);
    let w = find_workload(&s, "bookinfo/reviews-v1");
    assert!(workload_mtls(&s, &params(), w).ports.is_empty());
}
