//! Issue 15, STRICT without holes: each attack a hostile pod (or node) in the cluster could make
//! on a STRICT workload, reproduced on the testbed, first without lockmesh (so the test shows
//! the attack works here and the check can see it) and then with it (refused, recorded).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
#[path = "../common/mod.rs"]
mod common;

mod admin;
mod cookies;
mod evidence;
mod fragments;
mod ipv6;
mod live;
mod mark;
mod probes;
mod upgrade;

use common::until;
use lockmesh_tests::{Agent, Testbed};
use serde_json::Value;

/// Waits until plaintext connects from the out-of-mesh pod to `pod:port` are refused (STRICT
/// applied: curl exit 7; any other failure may be the app's).
fn until_strict(tb: &Testbed, pod: &str, port: u16) {
    let url = format!("http://{}:{port}/", tb.pod(pod).ip);
    until("STRICT enforced", || tb.curl("outsider", &["--connect-timeout", "1", &url]).unwrap().0 == 7);
}

/// A kernel counter of `/readyz`.
fn kernel_counter(agent: &Agent, name: &str) -> u64 {
    let ready: Value = agent.get("/readyz").unwrap().json().unwrap();
    ready["kernel"][name].as_u64().unwrap_or_else(|| panic!("{name} in /readyz: {ready}"))
}

/// Waits for a flow the destination agent recorded for a refusal whose reason contains `reason`.
fn refusal_record(agent: &Agent, reason: &str) -> Value {
    let flows = agent
        .wait_for_flows(common::WAIT, |flows| {
            flows.iter().any(|f| f["reason"].as_str().is_some_and(|r| r.contains(reason)))
        })
        .unwrap_or_else(|e| panic!("no record with reason {reason:?}: {e:#}\n{}", agent.log()));
    flows.into_iter().find(|f| f["reason"].as_str().is_some_and(|r| r.contains(reason))).unwrap()
}
