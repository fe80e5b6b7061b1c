//! The config dir's YAML: bytes → `ConfigDir::load`, what `ConfigDir::reload` does with the files
//! it read (multi-document parsing of Workloads, Services and Istio objects, the last good
//! version of broken documents, duplicates, address conflicts, shadowed policies).
//!
//! Input: up to four files separated by NUL bytes (a seed without NUL is one file). Invalid
//! UTF-8 is the read error `fs::read_to_string` gives. The files are loaded twice; the second
//! load must give the same state and the same errors (nothing changed), and the state keeps its
//! guarantees: one object per key and kind, no address claimed by two workloads.
#![no_main]

use std::{collections::BTreeSet, io, path::PathBuf};

use libfuzzer_sys::fuzz_target;
use lockmesh::cluster::dir::ConfigDir;

fuzz_target!(|data: &[u8]| {
    let files = || {
        data.split(|b| *b == 0).take(4).enumerate().map(|(i, bytes)| {
            let text =
                String::from_utf8(bytes.to_vec()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
            (PathBuf::from(format!("/config/{i}.yaml")), text)
        })
    };
    let mut config = ConfigDir::new("/config");
    let first = config.load(files());
    for error in &first.errors {
        let _ = error.to_string();
    }
    let state = &first.state;

    let mut addresses = BTreeSet::new();
    for workload in &state.workloads {
        for ip in &workload.addresses {
            assert!(addresses.insert(*ip), "{ip} claimed by two workloads");
        }
    }
    let unique =
        |keys: Vec<&lockmesh::cluster::model::ObjectKey>| keys.iter().collect::<BTreeSet<_>>().len() == keys.len();
    assert!(unique(state.workloads.iter().map(|o| &o.key).collect()));
    assert!(unique(state.services.iter().map(|o| &o.key).collect()));
    assert!(unique(state.peer_authentications.iter().map(|o| &o.key).collect()));
    assert!(unique(state.destination_rules.iter().map(|o| &o.key).collect()));

    let again = config.load(files());
    assert_eq!(first.state, again.state, "reloading unchanged files changed the state");
    assert_eq!(first.errors, again.errors, "reloading unchanged files changed the errors");
});
