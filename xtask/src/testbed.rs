//! `cargo xtask testbed up|status|down`: a testbed that outlives the command, for trying
//! lockmesh by hand.
use clap::Subcommand;
use lockmesh_tests::{NodeSpec, PodSpec, Testbed, TestbedSpec, testbed};

use crate::step;

#[derive(Subcommand)]
pub enum Action {
    /// Create nodes and pods (network namespaces) and write their Workload YAML.
    Up {
        /// Number of nodes (the default layout is the bookinfo demo's two nodes).
        #[arg(long)]
        nodes: Option<usize>,
        /// Pods per node (with --nodes); the last pod of each node is out of the mesh.
        #[arg(long, default_value_t = 3)]
        pods: usize,
    },
    /// List the testbeds this machine has.
    Status,
    /// Remove a testbed (by id), or every testbed and stray testbed namespace (--all).
    Down {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

/// The demo's layout: productpage and an out-of-mesh client on node1; details, reviews and
/// ratings on node2.
pub fn bookinfo() -> TestbedSpec {
    TestbedSpec {
        nodes: vec![
            NodeSpec::new(
                "node1",
                vec![
                    PodSpec::new("productpage", "bookinfo"),
                    PodSpec::new("outsider", "default").out_of_mesh(),
                ],
            ),
            NodeSpec::new(
                "node2",
                vec![
                    PodSpec::new("details", "bookinfo"),
                    PodSpec::new("reviews", "bookinfo"),
                    PodSpec::new("ratings", "bookinfo"),
                ],
            ),
        ],
    }
}

fn generic(nodes: usize, pods: usize) -> TestbedSpec {
    TestbedSpec {
        nodes: (1..=nodes)
            .map(|k| {
                let pods = (1..=pods)
                    .map(|i| {
                        let pod = PodSpec::new(&format!("pod{k}-{i}"), "demo");
                        if i == pods && pods > 1 { pod.out_of_mesh() } else { pod }
                    })
                    .collect();
                NodeSpec::new(&format!("node{k}"), pods)
            })
            .collect(),
    }
}

pub fn run(action: Action) -> anyhow::Result<()> {
    crate::require_root("the testbed (network namespaces)")?;
    match action {
        Action::Up { nodes, pods } => {
            let spec = match nodes {
                Some(n) => generic(n, pods),
                None => bookinfo(),
            };
            let mut testbed = step::run("creating the testbed", || Testbed::up(&spec))?;
            let config = testbed.config_dir("config")?;
            let state = testbed.persist()?;
            print_testbed(&testbed);
            println!("\nWorkload YAML: {}/workloads.yaml   (state: {})", config.display(), state.display());
            println!("Start an agent per node, e.g.:");
            for node in &testbed.nodes {
                println!(
                    "  nsenter --net=/var/run/netns/{} target/release/lockmesh agent --node {} --config {} --bpffs-dir /sys/fs/bpf/lockmesh/{}-{} &",
                    node.netns,
                    node.name,
                    config.display(),
                    testbed.id,
                    node.name
                );
            }
            println!("Remove it with: cargo xtask testbed down {}", testbed.id);
            Ok(())
        }
        Action::Status => {
            let ids = Testbed::persisted_ids();
            if ids.is_empty() {
                println!("no persisted testbeds");
            }
            for id in ids {
                match Testbed::load(&id) {
                    Ok(tb) => {
                        print_testbed(&tb);
                        std::mem::forget(tb); // status must not tear it down
                    }
                    Err(e) => println!("{id}: {e:#}"),
                }
            }
            let stray = testbed::all_testbed_namespaces();
            if !stray.is_empty() {
                println!("testbed namespaces on this machine: {}", stray.join(" "));
            }
            Ok(())
        }
        Action::Down { id, all } => {
            let ids = match (id, all) {
                (Some(id), _) => vec![id],
                (None, true) => Testbed::persisted_ids(),
                (None, false) => {
                    anyhow::bail!("say which testbed (see `cargo xtask testbed status`) or --all")
                }
            };
            for id in ids {
                step::run(&format!("removing testbed {id}"), || Testbed::load(&id)?.down())?;
            }
            if all {
                let stray = testbed::all_testbed_namespaces();
                if !stray.is_empty() {
                    step::run(&format!("removing {} stray testbed namespaces", stray.len()), || {
                        let errors = testbed::teardown(&stray);
                        if errors.is_empty() { Ok(()) } else { anyhow::bail!(errors.join("; ")) }
                    })?;
                }
            }
            Ok(())
        }
    }
}

pub fn print_testbed(tb: &Testbed) {
    println!("testbed {}", tb.id);
    for node in &tb.nodes {
        println!("  {} (netns {}, wire {})", node.name, node.netns, node.wire_ip);
        for pod in &node.pods {
            println!(
                "    {:<12} {:<10} {:<12} netns {}{}",
                pod.name,
                pod.namespace,
                pod.ip,
                pod.netns,
                if pod.in_mesh { "" } else { "   (out of mesh)" }
            );
        }
    }
}
