//! Running the test app inside pods: servers whose logs say which peers they saw, and one-shot
//! clients whose JSON result the test checks.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{netns, process::ChildGuard, testbed::Testbed};

/// A server running in a pod.
pub struct App {
    process: ChildGuard,
}

impl App {
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Events the app logged (one JSON object per line).
    pub fn events(&self) -> Vec<Value> {
        self.log().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Peer addresses of the connections the app accepted.
    pub fn peers(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "accept")
            .filter_map(|e| e["peer"].as_str().map(str::to_string))
            .collect()
    }

    pub fn accepted(&self) -> usize {
        self.peers().len()
    }
}

/// One request of a `load` client (see the test app).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct LoadRecord {
    /// When the request started, in ms since the epoch.
    pub t: u64,
    /// How long it took.
    pub ms: f64,
    /// The client's local port (0 when connect failed).
    pub port: u16,
    pub ok: bool,
    pub error: Option<String>,
}

/// A `load` client running in a pod until its stop file appears.
pub struct Load {
    app: App,
    stop_file: PathBuf,
}

impl Load {
    /// Every request so far.
    pub fn records(&self) -> Vec<LoadRecord> {
        self.app.log().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Stops the client (it finishes its current request) and returns every request.
    pub fn stop(mut self) -> anyhow::Result<Vec<LoadRecord>> {
        std::fs::write(&self.stop_file, b"stop").context("writing the load client's stop file")?;
        let code = self.app.process.wait_timeout(Duration::from_secs(10))?;
        if code != Some(0) {
            bail!("the load client ended with {code:?}: {}", self.app.log());
        }
        Ok(self.records())
    }
}

impl Testbed {
    /// A client in `pod` that sends one `GET /` per connection to `to` every `interval_ms`,
    /// logging each request, until [`Load::stop`].
    pub fn load_client(&self, pod: &str, to: SocketAddr, interval_ms: u64) -> anyhow::Result<Load> {
        let label = format!("load-{}-{}", to.ip(), to.port());
        let stop_file = self.work_dir.join(format!("{pod}-{label}.stop"));
        let _ = std::fs::remove_file(&stop_file);
        let args = [
            "load".to_string(),
            "--connect".into(),
            to.to_string(),
            "--stop-file".into(),
            stop_file.to_string_lossy().into_owned(),
            "--interval-ms".into(),
            interval_ms.to_string(),
        ];
        let app = self.start_app(pod, &args, &label)?;
        Ok(Load { app, stop_file })
    }

    fn app_binary(&self) -> anyhow::Result<PathBuf> {
        match &self.app_binary {
            Some(path) => Ok(path.clone()),
            None => crate::workspace_binary("lockmesh-testapp"),
        }
    }

    fn start_app(&self, pod: &str, args: &[String], label: &str) -> anyhow::Result<App> {
        let pod = self.pod(pod);
        let mut command = netns::command_in(&pod.netns_path(), self.app_binary()?)?;
        command.args(args);
        let log = self.work_dir.join(format!("app-{}-{label}.log", pod.name));
        let mut process = ChildGuard::spawn(&format!("app {} {label}", pod.name), command, log)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !process.log().contains("\"listening\"") {
            if !process.is_running() || std::time::Instant::now() > deadline {
                bail!("app in {} did not start: {}", pod.name, process.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(App { process })
    }

    /// An async server in `pod` on `0.0.0.0:<port>` that answers each connection's first request
    /// and then holds it: for tens of thousands of connections.
    pub fn hold_server(&self, pod: &str, port: u16) -> anyhow::Result<App> {
        self.start_app(pod, &["hold-server".into(), "--listen".into(), format!("0.0.0.0:{port}")], "hold")
    }

    /// The HTTP test server in `pod` on `0.0.0.0:<port>`.
    pub fn serve(&self, pod: &str, port: u16) -> anyhow::Result<App> {
        let args =
            ["serve".into(), "--listen".into(), format!("0.0.0.0:{port}"), "--name".into(), pod.to_string()];
        self.start_app(pod, &args, &port.to_string())
    }

    /// The HTTP test server in `pod` on `[::]:<port>`: IPv6 and (IPv4-mapped) IPv4.
    pub fn serve_dual_stack(&self, pod: &str, port: u16) -> anyhow::Result<App> {
        let args =
            ["serve".into(), "--listen".into(), format!("[::]:{port}"), "--name".into(), pod.to_string()];
        self.start_app(pod, &args, &format!("{port}-dual"))
    }

    /// The half-close echo server in `pod` on `0.0.0.0:<port>`.
    pub fn echo(&self, pod: &str, port: u16) -> anyhow::Result<App> {
        self.start_app(
            pod,
            &["echo".into(), "--listen".into(), format!("0.0.0.0:{port}")],
            &format!("echo{port}"),
        )
    }

    /// The streaming echo server (echoes as data arrives) in `pod` on `0.0.0.0:<port>`.
    pub fn stream_echo(&self, pod: &str, port: u16) -> anyhow::Result<App> {
        self.start_app(
            pod,
            &["echo".into(), "--listen".into(), format!("0.0.0.0:{port}"), "--stream".into()],
            &format!("stream{port}"),
        )
    }

    /// Runs the test app as a client in `pod` and returns its JSON result.
    pub fn client(&self, pod: &str, args: &[&str]) -> anyhow::Result<Value> {
        let pod = self.pod(pod);
        let binary = self.app_binary()?;
        let out = netns::run_cmd(&pod.netns_path(), &binary.to_string_lossy(), args)
            .with_context(|| format!("test client in {}", pod.name))?;
        serde_json::from_str(out.trim()).with_context(|| format!("client output: {out}"))
    }

    /// `GET path` from `pod` to `to`, `count` times on one connection.
    pub fn get(&self, pod: &str, to: SocketAddr, path: &str) -> anyhow::Result<Value> {
        self.client(pod, &["get", "--connect", &to.to_string(), "--path", path])
    }

    /// Runs curl in `pod`; returns (exit code, stdout, stderr).
    pub fn curl(&self, pod: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let pod = self.pod(pod);
        let output = netns::command_in(&pod.netns_path(), "curl")?
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output()
            .context("running curl (install it with `cargo xtask setup`)")?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }
}
