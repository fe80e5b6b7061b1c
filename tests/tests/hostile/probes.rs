//! Attack 6: probe exemption by node address. A pod's probe port (usually its main port) is
//! exempt from STRICT for its kubelet. If the exemption were for the node's address, a NodePort-
//! or hostPort-style DNAT + MASQUERADE on that node would hand any outside client the port in
//! plaintext. Only the node's own connections are SNATed to the probe address, and only that
//! address is exempt.
use lockmesh_tests::{Agent, Testbed, netns};

use super::common::*;

const NODE_PORT: u16 = 30081;

/// details probed on 8081 by node2's kubelet (what --kube derives from the Pod's probes).
fn probed_config(tb: &Testbed) -> std::path::PathBuf {
    let config = tb.config_dir("config").unwrap();
    let (details, node2) = (tb.pod("details").ip, tb.node("node2").wire_ip);
    let workloads = std::fs::read_to_string(config.join("workloads.yaml")).unwrap();
    let probed = workloads.replace(
        &format!("addresses: [{details}],"),
        &format!("addresses: [{details}], probes: [{{port: 8081, from: {node2}}}],"),
    );
    assert_ne!(probed, workloads);
    apply(&config, "workloads.yaml", &probed);
    apply(&config, "peer-authentication.yaml", &namespace_policy("STRICT"));
    config
}

/// A hostPort-style forward on node2: NODE_PORT on its wire address → details:8081, masqueraded
/// to the node's address.
fn forward_node_port(tb: &Testbed) {
    let ns = tb.node("node2").netns_path();
    let details = tb.pod("details").ip;
    netns::run_cmd(&ns, "nft", &["add", "table", "ip", "hostport"]).unwrap();
    let chain = |name: &str, hook: &str, priority: &str| {
        let spec = format!("{{ type nat hook {hook} priority {priority}; }}");
        netns::run_cmd(&ns, "nft", &["add", "chain", "ip", "hostport", name, &spec]).unwrap();
    };
    chain("pre", "prerouting", "dstnat");
    chain("post", "postrouting", "srcnat");
    let dnat = format!("{details}:8081");
    netns::run_cmd(
        &ns,
        "nft",
        &[
            "add",
            "rule",
            "ip",
            "hostport",
            "pre",
            "tcp",
            "dport",
            &NODE_PORT.to_string(),
            "dnat",
            "to",
            &dnat,
        ],
    )
    .unwrap();
    // kube-proxy masquerades what it DNATed: the source becomes the node's address.
    let node = tb.node("node2").wire_ip.to_string();
    netns::run_cmd(
        &ns,
        "nft",
        &["add", "rule", "ip", "hostport", "post", "ct", "status", "dnat", "snat", "to", &node],
    )
    .unwrap();
}

/// node2's kubelet probing details:8081.
fn probe(tb: &Testbed) -> i32 {
    curl_from_node(tb, "node2", &format!("http://{}:8081/", tb.pod("details").ip))
}

#[test]
fn a_node_port_forward_to_a_probe_port_does_not_inherit_the_probe_exemption() {
    let tb = bookinfo();
    let config = probed_config(&tb);
    let _probe_app = tb.serve("details", 8081).unwrap();
    forward_node_port(&tb);
    let via_node = format!("http://{}:{NODE_PORT}/", tb.node("node2").wire_ip);

    // Control: exempting the node's own address (`--probe-snat off`) lets the forwarded
    // outsider in — the attack works here.
    let agent2 = Agent::start(&tb, "node2", &config, &["--probe-snat", "off"]).unwrap();
    assert_eq!(probe(&tb), 0, "the kubelet's probe passes");
    assert_eq!(tb.curl("outsider", &[&via_node]).unwrap().0, 0, "control: the forwarded outsider got in");
    agent2.terminate().unwrap();

    // The default: only the node's own connections are SNATed to the probe address.
    let agent2 = Agent::start(&tb, "node2", &config, &[]).unwrap();
    super::until("the kubelet's probe passes", || probe(&tb) == 0);
    let (code, _, err) = tb.curl("outsider", &["--connect-timeout", "2", &via_node]).unwrap();
    assert!(matches!(code, 7 | 56), "the forwarded outsider must be reset: curl {code} {err}");
    let record = super::refusal_record(&agent2, "plaintext connection to a STRICT port");
    assert_eq!(record["dst"]["port"], 8081, "{record}");
    let table =
        netns::run_cmd(&tb.node("node2").netns_path(), "nft", &["list", "table", "ip", "lockmesh"]).unwrap();
    assert!(table.contains("snat to 169.254.7.127"), "{table}");

    // The table outlives the agent (probes keep passing while the datapath holds STRICT);
    // `--cleanup` removes it with the rest.
    let pins = agent2.pin_dir.clone();
    agent2.terminate().unwrap();
    let node2 = tb.node("node2").netns_path();
    assert!(netns::run_cmd(&node2, "nft", &["list", "table", "ip", "lockmesh"]).is_ok());
    let binary = lockmesh_tests::workspace_binary("lockmesh").unwrap();
    let args = ["agent", "--cleanup", "--node", "node2", "--bpffs-dir", &pins.to_string_lossy()];
    netns::run_cmd(&node2, &binary.to_string_lossy(), &args).unwrap();
    assert!(netns::run_cmd(&node2, "nft", &["list", "table", "ip", "lockmesh"]).is_err(), "the table stayed");
}
