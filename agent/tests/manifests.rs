//! The manifests under `deploy/` hold what the agent and the CA service need, and pass them flags
//! their own command line accepts. Rendered without kubectl: kustomizations are followed as far
//! as these use them (resources, `namespace`, patches merged into their target), then checked.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use clap::Parser as _;
use serde::Deserialize as _;
use serde_yaml_ng::Value;

use lockmesh::cli::{Cli, Command, ca::CaCommand};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn documents(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

const CLUSTER_SCOPED: &[&str] =
    &["Namespace", "ClusterRole", "ClusterRoleBinding", "SecurityContextConstraints", "PriorityClass"];

/// The objects of the kustomization in `dir`, and every file it used.
fn render(dir: &Path, used: &mut BTreeSet<PathBuf>) -> Vec<Value> {
    let file = dir.join("kustomization.yaml");
    used.insert(fs::canonicalize(&file).unwrap());
    let kustomization = documents(&file).remove(0);
    assert_eq!(kustomization["kind"], "Kustomization", "{}", file.display());
    let mut objects = Vec::new();
    for resource in kustomization["resources"].as_sequence().unwrap() {
        let path = dir.join(resource.as_str().unwrap());
        if path.is_dir() {
            objects.extend(render(&path, used));
        } else {
            used.insert(fs::canonicalize(&path).unwrap());
            objects.extend(documents(&path));
        }
    }
    for patch in kustomization["patches"].as_sequence().into_iter().flatten() {
        let path = dir.join(patch["path"].as_str().unwrap());
        used.insert(fs::canonicalize(&path).unwrap());
        for doc in documents(&path) {
            let (kind, name) = (&patch["target"]["kind"], &patch["target"]["name"]);
            let target = objects.iter_mut().find(|o| o["kind"] == *kind && o["metadata"]["name"] == *name);
            merge(target.unwrap_or_else(|| panic!("patch {} has no target", path.display())), doc);
        }
    }
    if let Some(namespace) = kustomization["namespace"].as_str() {
        for object in &mut objects {
            if !CLUSTER_SCOPED.contains(&object["kind"].as_str().unwrap()) {
                object["metadata"]["namespace"] = namespace.into();
            }
        }
    }
    objects
}

/// A strategic merge patch as far as maps go (the patches here replace no lists; `null`
/// deletes a key).
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Mapping(t), Value::Mapping(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(value: &Value) -> Vec<String> {
    value.as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

/// `(apiGroup, resource, verbs)` of every rule, one entry per resource.
fn rules(role: &Value) -> BTreeSet<(String, String, Vec<String>)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_sequence().unwrap() {
        let mut verbs = strings(&rule["verbs"]);
        verbs.sort();
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                out.insert((group.clone(), resource, verbs.clone()));
            }
        }
    }
    out
}

/// Every `privileged: true`, anywhere.
fn privileged(value: &Value) -> bool {
    match value {
        Value::Mapping(m) => {
            m.iter().any(|(k, v)| (k == "privileged" && v == &Value::Bool(true)) || privileged(v))
        }
        Value::Sequence(s) => s.iter().any(privileged),
        _ => false,
    }
}

const CAPABILITIES: &[&str] = &["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "NET_RAW"];

fn check_base(objects: &[Value]) {
    for object in objects {
        assert!(!privileged(object), "privileged: true in {:?}", object["metadata"]["name"]);
        if !CLUSTER_SCOPED.contains(&object["kind"].as_str().unwrap()) {
            assert_eq!(object["metadata"]["namespace"], "lockmesh-system");
        }
    }
    find(objects, "Namespace", "lockmesh-system");
    find(objects, "ServiceAccount", "lockmesh-agent");
    let get_list_watch = vec!["get".to_string(), "list".into(), "watch".into()];
    let expected: BTreeSet<_> = [
        ("", "pods"),
        ("", "namespaces"),
        ("", "services"),
        ("security.istio.io", "peerauthentications"),
        ("networking.istio.io", "destinationrules"),
    ]
    .into_iter()
    .map(|(g, r)| (g.to_string(), r.to_string(), get_list_watch.clone()))
    .collect();
    assert_eq!(rules(find(objects, "ClusterRole", "lockmesh-agent")), expected);
    let binding = find(objects, "ClusterRoleBinding", "lockmesh-agent");
    assert_eq!(binding["roleRef"]["name"], "lockmesh-agent");
    assert_eq!(binding["subjects"][0]["name"], "lockmesh-agent");
    assert_eq!(binding["subjects"][0]["namespace"], "lockmesh-system");

    let ds = find(objects, "DaemonSet", "lockmesh-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "lockmesh-agent");
    assert_eq!((&pod["hostNetwork"], &pod["hostPID"]), (&Value::Bool(true), &Value::Bool(true)));
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["tolerations"][0]["operator"], "Exists");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
    assert_eq!(ds["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], "lockmesh-agent");
    assert_eq!(ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"], "lockmesh-agent");

    let agent = &pod["containers"][0];
    assert_eq!(agent["image"], "ghcr.io/lockmesh/lockmesh:latest");
    let env = agent["env"].as_sequence().unwrap().iter().find(|e| e["name"] == "NODE_NAME").unwrap();
    assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    // The arguments are ones the agent accepts: --kube, admin on loopback only.
    let args = strings(&agent["args"]);
    let argv = std::iter::once("lockmesh".to_string())
        .chain(args.iter().map(|a| a.replace("$(NODE_NAME)", "node1")));
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("DaemonSet args: {e}"));
    let Command::Agent(parsed) = cli.command else { panic!("not `agent`") };
    assert!(parsed.kube && parsed.config.is_none());
    assert_eq!(parsed.node, "node1");
    check_ports(ds, &parsed);
    assert_eq!(parsed.ca, None, "agents hold no CA key");
    assert_eq!(parsed.bpffs_dir.as_deref(), Some(Path::new("/sys/fs/bpf/lockmesh")));
    assert_eq!(parsed.proc_root, Path::new("/host/proc"));

    let security = &agent["securityContext"];
    assert_eq!(strings(&security["capabilities"]["add"]), CAPABILITIES);
    assert_eq!(security["privileged"], Value::Bool(false));

    // Volumes: host paths, where they are mounted, and with which propagation.
    let volumes = pod["volumes"].as_sequence().unwrap();
    let mounts = agent["volumeMounts"].as_sequence().unwrap();
    let mount = |volume: &str| mounts.iter().find(|m| m["name"] == volume).unwrap();
    let host_mounts: BTreeSet<(String, String, String)> = volumes
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str().map(|p| (v["name"].as_str().unwrap(), p)))
        .map(|(name, host)| {
            let m = mount(name);
            let propagation = m["mountPropagation"].as_str().unwrap_or("None");
            (host.to_string(), m["mountPath"].as_str().unwrap().to_string(), propagation.to_string())
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> = [
        ("/sys/fs/bpf", "/sys/fs/bpf", "Bidirectional"),
        ("/sys/fs/cgroup", "/sys/fs/cgroup", "None"),
        ("/var/run/netns", "/var/run/netns", "HostToContainer"),
        ("/proc", "/host/proc", "None"),
    ]
    .into_iter()
    .map(|(a, b, c)| (a.into(), b.into(), c.into()))
    .collect();
    assert_eq!(host_mounts, expected);
    // The CA service's root (a ConfigMap) and the agent's token for it, where the args say.
    let mounted_file =
        |volume: &str, file: &str| format!("{}/{file}", mount(volume)["mountPath"].as_str().unwrap());
    let root = volumes.iter().find(|v| v["name"] == "ca-root").unwrap();
    assert_eq!(root["configMap"]["name"], "lockmesh-ca-root");
    assert_eq!(parsed.ca_root.as_deref(), Some(Path::new(&mounted_file("ca-root", "root-cert.pem"))));
    let token = volumes.iter().find(|v| v["name"] == "ca-token").unwrap();
    let token = &token["projected"]["sources"][0]["serviceAccountToken"];
    let path = token["path"].as_str().unwrap();
    assert_eq!(parsed.ca_token.as_deref(), Some(Path::new(&mounted_file("ca-token", path))));
    assert!(token["expirationSeconds"].as_u64().unwrap() <= 3600, "a short-lived token");
    check_ca(objects, parsed.ca_url.as_deref().unwrap(), token["audience"].as_str().unwrap());

    let service = find(objects, "Service", "lockmesh-agent-metrics");
    let ports = service["spec"]["ports"].as_sequence().unwrap();
    assert_eq!(ports.len(), 1, "the metrics port only");
    assert_eq!((&ports[0]["port"], &ports[0]["targetPort"]), (&Value::from(15020), &Value::from(15020)));
    assert_ne!(
        ports[0]["targetPort"],
        Value::from(parsed.admin.port()),
        "the Service must not reach the admin port"
    );
    assert_eq!(service["spec"]["selector"], ds["spec"]["selector"]["matchLabels"]);
}

/// The agent runs on the host network: whatever it binds on a non-loopback address every pod
/// can reach. The admin endpoint (flows, config dump, graph) stays on loopback; metrics and
/// readiness have ports of their own (ztunnel's 15020 and 15021), which the probes, the
/// declared ports and the Prometheus annotations use.
fn check_ports(ds: &Value, parsed: &lockmesh::cli::agent::AgentArgs) {
    assert!(parsed.admin.ip().is_loopback(), "the DaemonSet exposes the admin endpoint on {}", parsed.admin);
    assert_eq!(parsed.metrics_addr.to_string(), "0.0.0.0:15020");
    assert_eq!(parsed.readiness_addr.to_string(), "0.0.0.0:15021");
    let agent = &ds["spec"]["template"]["spec"]["containers"][0];
    let admin_port = Value::from(parsed.admin.port());
    for port in agent["ports"].as_sequence().unwrap() {
        assert_ne!(port["containerPort"], admin_port, "the admin port is declared: {port:?}");
        assert!(port["hostIP"].is_null() && port["hostPort"].is_null(), "no hostPort/hostIP: {port:?}");
    }
    for (probe, path) in [("livenessProbe", "/healthz/live"), ("readinessProbe", "/healthz/ready")] {
        assert_eq!(agent[probe]["httpGet"]["path"], path);
        assert_eq!(agent[probe]["httpGet"]["port"], Value::from(parsed.readiness_addr.port()));
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], parsed.metrics_addr.port().to_string().as_str());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

/// The CA service: the only holder of the `cacerts` Secret, reachable at the agents' --ca-url,
/// checking the audience and service account the agents' tokens have.
fn check_ca(objects: &[Value], agent_ca_url: &str, agent_audience: &str) {
    find(objects, "ServiceAccount", "lockmesh-ca");
    let get_list = vec!["get".to_string(), "list".into()];
    let expected: BTreeSet<_> = [
        ("authentication.k8s.io".to_string(), "tokenreviews".to_string(), vec!["create".to_string()]),
        ("".into(), "pods".into(), get_list),
    ]
    .into();
    assert_eq!(rules(find(objects, "ClusterRole", "lockmesh-ca")), expected);
    let binding = find(objects, "ClusterRoleBinding", "lockmesh-ca");
    assert_eq!(
        (&binding["roleRef"]["name"], &binding["subjects"][0]["name"]),
        (&"lockmesh-ca".into(), &"lockmesh-ca".into())
    );

    let deployment = find(objects, "Deployment", "lockmesh-ca");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "lockmesh-ca");
    let container = &pod["containers"][0];
    let argv = std::iter::once("lockmesh".to_string()).chain(strings(&container["args"]));
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("CA Deployment args: {e}"));
    let Command::Ca(CaCommand::Serve(serve)) = cli.command else { panic!("not `ca serve`") };
    let url: http::Uri = agent_ca_url.parse().unwrap();
    assert!(
        serve.serving_name.iter().any(|n| Some(n.as_str()) == url.host()),
        "{url} not in {:?}",
        serve.serving_name
    );
    assert_eq!(Some(serve.listen.port()), url.port_u16());
    assert_eq!(serve.audience, agent_audience);
    let namespace = find(objects, "DaemonSet", "lockmesh-agent")["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(serve.agent_user, format!("system:serviceaccount:{namespace}:lockmesh-agent"));
    let service = find(objects, "Service", "lockmesh-ca");
    assert_eq!(format!("lockmesh-ca.{namespace}.svc"), url.host().unwrap());
    assert_eq!(service["spec"]["ports"][0]["port"], 15012);
    assert_eq!(service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"]);
    assert_eq!(deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"], "lockmesh-ca");

    let mount =
        container["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["name"] == "cacerts").unwrap();
    assert_eq!(serve.ca.as_deref(), Some(Path::new(mount["mountPath"].as_str().unwrap())));
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    // Only the CA's pods mount the CA Secret.
    let holders: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            o["spec"]["template"]["spec"]["volumes"]
                .as_sequence()
                .is_some_and(|volumes| volumes.iter().any(|v| v["secret"]["secretName"] == "cacerts"))
        })
        .map(|o| &o["metadata"]["name"])
        .collect();
    assert_eq!(holders, [&Value::from("lockmesh-ca")]);
}

#[test]
fn base_renders_and_holds_what_the_agent_needs() {
    let objects = render(&deploy_dir().join("base"), &mut BTreeSet::new());
    let kinds: BTreeSet<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    let expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Deployment",
        "Namespace",
        "Service",
        "ServiceAccount",
    ];
    assert_eq!(kinds, expected.into_iter().collect());
    check_base(&objects);
}

#[test]
fn openshift_overlay_adds_an_scc_matching_the_pod() {
    let objects = render(&deploy_dir().join("openshift"), &mut BTreeSet::new());
    check_base(&objects);
    let scc = find(&objects, "SecurityContextConstraints", "lockmesh-agent");
    assert_eq!(scc["apiVersion"], "security.openshift.io/v1");
    assert_eq!(scc["allowPrivilegedContainer"], Value::Bool(false));
    for allowed in ["allowHostNetwork", "allowHostPID", "allowHostDirVolumePlugin"] {
        assert_eq!(scc[allowed], Value::Bool(true), "{allowed}");
    }
    assert_eq!(strings(&scc["allowedCapabilities"]), CAPABILITIES);
    let volumes = strings(&scc["volumes"]);
    for needed in ["hostPath", "secret", "emptyDir"] {
        assert!(volumes.iter().any(|v| v == needed), "SCC volumes lack {needed}");
    }
    let role = find(&objects, "ClusterRole", "lockmesh-agent-scc");
    assert_eq!(
        rules(role),
        [("security.openshift.io".into(), "securitycontextconstraints".into(), vec!["use".into()])].into()
    );
    assert_eq!(strings(&role["rules"][0]["resourceNames"]), ["lockmesh-agent"]);
    let binding = find(&objects, "ClusterRoleBinding", "lockmesh-agent-scc");
    assert_eq!(binding["roleRef"]["name"], "lockmesh-agent-scc");
    assert_eq!(binding["subjects"][0]["name"], "lockmesh-agent");
    // The patch reached the DaemonSet.
    let template = &find(&objects, "DaemonSet", "lockmesh-agent")["spec"]["template"];
    assert_eq!(template["metadata"]["annotations"]["openshift.io/required-scc"], "lockmesh-agent");
    assert_eq!(template["spec"]["securityContext"]["seLinuxOptions"]["type"], "spc_t");
    // restricted-v2 picks the CA pod's UID and fsGroup.
    let ca = &find(&objects, "Deployment", "lockmesh-ca")["spec"]["template"]["spec"]["securityContext"];
    assert!(ca["runAsUser"].is_null() && ca["fsGroup"].is_null(), "{ca:?}");
    assert_eq!(ca["runAsNonRoot"], Value::Bool(true));
}

#[test]
fn every_manifest_parses_and_is_used() {
    let mut used = BTreeSet::new();
    render(&deploy_dir().join("base"), &mut used);
    render(&deploy_dir().join("openshift"), &mut used);
    render(&deploy_dir().join("crds"), &mut used);
    let mut stack = vec![deploy_dir()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            // schemas/ holds what `cargo xtask manifests` validates with, not manifests.
            if path.is_dir() && !path.ends_with("schemas") {
                stack.push(path);
            } else if path.is_dir() {
                continue;
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                for doc in documents(&path) {
                    let typed = doc["kind"].is_string() && doc["apiVersion"].is_string();
                    assert!(typed, "{}: a document without kind or apiVersion", path.display());
                }
                assert!(
                    used.contains(&fs::canonicalize(&path).unwrap()),
                    "{} is not in a kustomization",
                    path.display()
                );
            }
        }
    }
}
