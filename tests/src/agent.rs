//! A real lockmesh agent for a testbed node, run inside the node's namespace.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{http, netns, process::ChildGuard, testbed::Testbed};

pub struct Agent {
    pub node: String,
    netns: PathBuf,
    /// The admin endpoint, on the node's loopback.
    pub admin: SocketAddr,
    /// The metrics endpoint (`/metrics` only), on every address of the node.
    pub metrics: SocketAddr,
    /// The readiness endpoint (`/healthz/ready`), on every address of the node.
    pub readiness: SocketAddr,
    pub pin_dir: PathBuf,
    binary: PathBuf,
    process: ChildGuard,
    /// Run `lockmesh agent --cleanup` on drop (not after a deliberate stop: the datapath stays
    /// pinned for the next agent, as in production).
    cleanup_on_drop: bool,
}

/// The testbed's CA (Istio `cacerts` layout), created by `lockmesh ca init` on first use.
pub fn shared_ca(testbed: &Testbed, binary: &Path) -> anyhow::Result<PathBuf> {
    let dir = testbed.work_dir.join("shared-ca");
    if !dir.join("ca-key.pem").exists() {
        let out = std::process::Command::new(binary)
            .args(["ca", "init", "--dir"])
            .arg(&dir)
            .output()
            .context("running lockmesh ca init")?;
        if !out.status.success() {
            bail!("lockmesh ca init: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(dir)
}

impl Agent {
    /// Starts the agent of `node` on `config_dir` and waits until `/readyz` says ready.
    pub fn start(
        testbed: &Testbed,
        node: &str,
        config_dir: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let binary = crate::workspace_binary("lockmesh")?;
        Self::start_binary(testbed, node, config_dir, extra_args, &binary)
    }

    /// Like [`Agent::start`], with a given lockmesh binary (upgrade tests).
    pub fn start_binary(
        testbed: &Testbed,
        node: &str,
        config_dir: &Path,
        extra_args: &[&str],
        binary: &Path,
    ) -> anyhow::Result<Self> {
        let netns_path = testbed.node(node).netns_path();
        // Unique per testbed: two tests' "node1" must not share kernel pins.
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/lockmesh/{}-{node}", testbed.id));
        // Each node has its own network namespace: the same ports on every node.
        let admin: SocketAddr = "127.0.0.1:15000".parse()?;
        let (metrics_port, readiness_port) = (15020, 15021);
        let mut command = netns::command_in(&netns_path, binary)?;
        command
            .args(["agent", "--node", node, "--config"])
            .arg(config_dir)
            .arg("--bpffs-dir")
            .arg(&pin_dir)
            .args(["--admin", &admin.to_string()])
            .args(["--metrics-addr", &format!("0.0.0.0:{metrics_port}")])
            .args(["--readiness-addr", &format!("0.0.0.0:{readiness_port}")])
            // Never the machine's /var/lib/lockmesh.
            .arg("--state-dir")
            .arg(testbed.work_dir.join(format!("state-{node}")));
        if !extra_args.contains(&"--ca") {
            // Agents of one testbed trust each other unless a test says otherwise.
            command.arg("--ca").arg(shared_ca(testbed, binary)?);
        }
        command
            .args(extra_args)
            .env(
                "LOCKMESH_LOG",
                std::env::var("LOCKMESH_LOG").unwrap_or_else(|_| "info,lockmesh=debug".into()),
            )
            .env("NO_COLOR", "1");
        let log = testbed.work_dir.join(format!("agent-{node}.log"));
        let process = ChildGuard::spawn(&format!("agent {node}"), command, log)?;
        let mut agent = Self {
            node: node.to_string(),
            netns: netns_path,
            admin,
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
            readiness: SocketAddr::from(([127, 0, 0, 1], readiness_port)),
            pin_dir,
            binary: binary.to_path_buf(),
            process,
            cleanup_on_drop: true,
        };
        agent.wait_ready(Duration::from_secs(20))?;
        Ok(agent)
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.process.is_running() {
                bail!("agent {} exited during startup:\n{}", self.node, self.log());
            }
            if let Ok(r) = http::get_in(&self.netns, self.admin, "/readyz")
                && r.status == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("agent {} not ready after {timeout:?}:\n{}", self.node, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.process
    }

    /// GET on the admin endpoint.
    pub fn get(&self, path: &str) -> anyhow::Result<http::Response> {
        http::get_in(&self.netns, self.admin, path)
    }

    /// GET on the metrics endpoint (`/metrics`; anything else is 404 there).
    pub fn get_metrics(&self, path: &str) -> anyhow::Result<http::Response> {
        http::get_in(&self.netns, self.metrics, path)
    }

    /// A TCP connection to the admin endpoint from the agent's namespace, for what `get` cannot
    /// do (a stream held open).
    pub fn connect_admin(&self) -> anyhow::Result<std::net::TcpStream> {
        http::connect_in(&self.netns, self.admin, Duration::from_secs(3))
    }

    /// The flow table as JSON objects.
    pub fn flows(&self) -> anyhow::Result<Vec<Value>> {
        let response = self.get("/flows")?;
        if response.status != 200 {
            bail!("/flows: {} {}", response.status, response.text());
        }
        response.json()
    }

    /// Polls `/flows` until `done` holds for the list, or fails with what was seen.
    pub fn wait_for_flows(
        &self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let flows = self.flows()?;
            if done(&flows) {
                return Ok(flows);
            }
            if Instant::now() > deadline {
                bail!(
                    "agent {}: flows did not reach the expected state within {timeout:?}; saw:\n{}\nagent log:\n{}",
                    self.node,
                    flows.iter().map(Value::to_string).collect::<Vec<_>>().join("\n"),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `lockmesh <args>` inside the node's namespace (the CLI as a user would).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let binary = self.binary.to_string_lossy().into_owned();
        netns::run_cmd(&self.netns, &binary, args).context("lockmesh CLI")
    }

    /// SIGTERM and wait for a clean exit; returns the exit code. The datapath stays pinned.
    pub fn terminate(mut self) -> anyhow::Result<Option<i32>> {
        self.cleanup_on_drop = false;
        self.process.signal(nix::sys::signal::Signal::SIGTERM)?;
        self.process.wait_timeout(Duration::from_secs(10))
    }

    /// SIGKILL (a crash); the datapath stays pinned.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.cleanup_on_drop = false;
        self.process.signal(nix::sys::signal::Signal::SIGKILL)?;
        self.process.wait_timeout(Duration::from_secs(10)).map(drop)
    }

    /// `lockmesh agent --cleanup` for this agent's node (the uninstall path).
    pub fn cleanup_command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.binary);
        command.args(["agent", "--node", &self.node, "--cleanup", "--bpffs-dir"]).arg(&self.pin_dir);
        command
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.process.stop();
        if self.cleanup_on_drop {
            // Leave nothing of this agent in the kernel (the testbed's teardown also removes
            // the pins of its agents).
            let _ = self.cleanup_command().output();
        }
    }
}
