use std::fs;

use super::*;

const DETAILS: &str = "apiVersion: lockmesh.io/v1alpha1
kind: Workload
metadata: {name: details-v1, namespace: bookinfo, labels: {app: details}}
spec: {node: node2, serviceAccount: bookinfo-details, addresses: [10.77.2.2], netns: /var/run/netns/details}
";

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn reads_the_issue_example() {
    let dir = dir_with(&[("a.yaml", DETAILS)]);
    let reload = ConfigDir::new(dir.path()).reload().unwrap();
    assert!(reload.errors.is_empty(), "{:?}", reload.errors);
    let [w] = reload.state.workloads.as_slice() else { panic!("one workload expected") };
    assert_eq!(w.key.to_string(), "bookinfo/details-v1");
    assert_eq!(w.node, "node2");
    assert_eq!(w.service_account, "bookinfo-details");
    assert_eq!(w.addresses, vec!["10.77.2.2".parse::<std::net::Ipv4Addr>().unwrap()]);
    assert_eq!(w.labels.get("app").map(String::as_str), Some("details"));
    assert_eq!(w.identity("cluster.local"), "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-details");
}

#[test]
fn multi_document_files_and_other_kinds() {
    let text = format!(
        "{DETAILS}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n{}\n---\n",
        DETAILS.replace("details-v1", "ratings-v1").replace("10.77.2.2", "10.77.2.3")
    );
    let dir = dir_with(&[("all.yml", &text), ("ignored.txt", "not: yaml: at: all:")]);
    let reload = ConfigDir::new(dir.path()).reload().unwrap();
    assert!(reload.errors.is_empty(), "{:?}", reload.errors);
    assert_eq!(reload.state.workloads.len(), 2);
}

#[test]
fn bad_field_is_named_and_last_good_version_kept() {
    let dir = dir_with(&[("a.yaml", DETAILS)]);
    let mut config = ConfigDir::new(dir.path());
    assert_eq!(config.reload().unwrap().state.workloads.len(), 1);

    fs::write(dir.path().join("a.yaml"), DETAILS.replace("[10.77.2.2]", "[10.77.2.300]")).unwrap();
    let reload = config.reload().unwrap();
    let [err] = reload.errors.as_slice() else { panic!("one error expected: {:?}", reload.errors) };
    assert_eq!(err.field.as_deref(), Some("spec.addresses[0]"));
    assert_eq!(err.document, Some(1));
    let text = err.to_string();
    assert!(text.contains("a.yaml") && text.contains("Workload bookinfo/details-v1"), "{text}");
    // The previous good version stays.
    assert_eq!(reload.state.workloads[0].addresses[0].to_string(), "10.77.2.2");
}

#[test]
fn unknown_spec_field_is_rejected_by_name() {
    let dir = dir_with(&[("a.yaml", &DETAILS.replace("serviceAccount", "serviceAcount"))]);
    let reload = ConfigDir::new(dir.path()).reload().unwrap();
    assert!(reload.state.workloads.is_empty());
    assert!(reload.errors[0].message.contains("serviceAcount"), "{}", reload.errors[0]);
}

#[test]
fn syntax_error_keeps_the_whole_file() {
    let two =
        format!("{DETAILS}---\n{}", DETAILS.replace("details-v1", "b").replace("10.77.2.2", "10.77.2.9"));
    let dir = dir_with(&[("a.yaml", &two)]);
    let mut config = ConfigDir::new(dir.path());
    assert_eq!(config.reload().unwrap().state.workloads.len(), 2);
    fs::write(dir.path().join("a.yaml"), "kind: [unclosed\n").unwrap();
    let reload = config.reload().unwrap();
    assert!(reload.errors[0].is_syntax());
    assert_eq!(reload.state.workloads.len(), 2);
}

#[test]
fn removed_file_removes_its_objects() {
    let dir = dir_with(&[("a.yaml", DETAILS)]);
    let mut config = ConfigDir::new(dir.path());
    assert_eq!(config.reload().unwrap().state.workloads.len(), 1);
    fs::remove_file(dir.path().join("a.yaml")).unwrap();
    assert!(config.reload().unwrap().state.workloads.is_empty());
}

#[test]
fn duplicate_names_and_addresses_are_reported() {
    let dup_name = DETAILS.replace("10.77.2.2", "10.77.2.5");
    let dup_addr = DETAILS.replace("details-v1", "other");
    let dir = dir_with(&[("a.yaml", DETAILS), ("b.yaml", &dup_name), ("c.yaml", &dup_addr)]);
    let reload = ConfigDir::new(dir.path()).reload().unwrap();
    assert_eq!(reload.state.workloads.len(), 1);
    assert_eq!(reload.errors.len(), 2, "{:?}", reload.errors);
    assert!(reload.errors.iter().any(|e| e.message.contains("duplicate Workload")));
    assert!(reload.errors.iter().any(|e| e.field.as_deref() == Some("spec.addresses")));
}

#[test]
fn semantic_checks_name_fields() {
    for (from, to, field) in [
        ("addresses: [10.77.2.2]", "addresses: []", "spec.addresses"),
        ("addresses: [10.77.2.2]", "addresses: [127.0.0.1]", "spec.addresses[0]"),
        ("namespace: bookinfo", "namespace: Book_Info", "metadata.namespace"),
        ("netns: /var/run/netns/details", "netns: relative/path", "spec.netns"),
        ("apiVersion: lockmesh.io/v1alpha1", "apiVersion: lockmesh.io/v9", "apiVersion"),
        ("node: node2, ", "", "spec.node"),
    ] {
        let dir = dir_with(&[("a.yaml", &DETAILS.replace(from, to))]);
        let reload = ConfigDir::new(dir.path()).reload().unwrap();
        assert!(reload.state.workloads.is_empty(), "{to}");
        let err = &reload.errors[0];
        assert!(
            err.field.as_deref() == Some(field) || (field == "spec.node" && err.message.contains("node")),
            "{to}: {err}"
        );
    }
}

/// Found by the config_yaml fuzz target: a broken duplicate of a valid object took the valid
/// one's version as its own last good version, so reloading unchanged files reported a
/// "duplicate" the first read did not.
#[test]
fn broken_duplicate_of_a_valid_object_is_stable_across_reloads() {
    let broken = DETAILS.replace("[10.77.2.2]", "[10.77.2.300]");
    for text in [format!("{DETAILS}---\n{broken}"), format!("{broken}---\n{DETAILS}")] {
        let dir = dir_with(&[("a.yaml", &text)]);
        let mut config = ConfigDir::new(dir.path());
        let first = config.reload().unwrap();
        assert_eq!(first.errors.len(), 1, "{:?}", first.errors);
        assert_eq!(first.state.workloads.len(), 1);
        let again = config.reload().unwrap();
        assert_eq!(again.errors, first.errors);
        assert_eq!(again.state, first.state);
    }
}

#[test]
fn broken_first_definition_keeps_its_last_good_version_over_a_duplicate() {
    let duplicate = DETAILS.replace("node2", "node3");
    let dir = dir_with(&[("a.yaml", &format!("{DETAILS}---\n{duplicate}"))]);
    let mut config = ConfigDir::new(dir.path());
    assert_eq!(config.reload().unwrap().state.workloads[0].node, "node2");
    let broken = DETAILS.replace("[10.77.2.2]", "[10.77.2.300]");
    fs::write(dir.path().join("a.yaml"), format!("{broken}---\n{duplicate}")).unwrap();
    let reload = config.reload().unwrap();
    assert_eq!(reload.state.workloads[0].node, "node2", "{:?}", reload.errors);
}
