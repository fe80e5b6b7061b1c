//! `cargo xtask …`: everything a developer or CI does with lockmesh, one command each.
mod bench;
mod chaos;
mod demo;
mod fuzz;
mod lint;
mod manifests;
mod setup;
mod step;
mod testbed;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "lockmesh developer tasks",
    after_help = "Start here: `sudo cargo xtask demo`"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every prerequisite (Debian packages, nightly rust-src, bpf-linker, cargo-fuzz, the
    /// manifest tools' venv), mount bpffs.
    /// Idempotent: says what it did and skips what is already there.
    Setup,
    /// Build the agent (with its eBPF programs embedded) and the test app.
    Build {
        /// Debug build instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Build, then run `lockmesh` with the given arguments (e.g. `-- agent --node n1 --config DIR`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bring a local testbed (nodes and pods as network namespaces) up or down.
    Testbed {
        #[command(subcommand)]
        action: testbed::Action,
    },
    /// Render deploy/ with kubectl kustomize and validate it offline (strict Kubernetes schemas,
    /// JSON schemas of the SCC and the CRDs). Part of `test`.
    Manifests,
    /// Clippy with warnings as errors on the user-space crates and the eBPF programs (the
    /// workspace's lints: no unwrap/expect outside tests, functions of at most 100 lines, dead
    /// code in the agent).
    Lint,
    /// Run every test: the manifest checks, unit tests and the privileged end-to-end tests on
    /// real testbeds (root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The guided tour: set up, build, bring up two nodes of bookinfo-like pods, start both
    /// agents, make traffic, print the flows.
    Demo {
        /// Leave the testbed and agents running afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Benchmark lockmesh against plaintext, stunnel4 and HAProxy on a two-node testbed (root):
    /// throughput, latency, connection rate, CPU per GB, memory; writes bench/results/.
    Bench(bench::Args),
    /// The chaos suite on real testbeds (root): the agent killed, upgraded and reconfigured
    /// under a plaintext hammer and in-mesh load, certificates rotating under load, thousands
    /// of connections coming and going; prints a summary table. Short form by default (CI).
    Chaos(chaos::Args),
    /// Run the cargo-fuzz targets of agent/fuzz (the config dir's YAML, Istio objects → policy,
    /// HBONE CONNECT checks, peer certificates → SPIFFE IDs), each for a while from its seed
    /// corpus; fails with the crashing input. Needs `cargo xtask setup` (nightly, cargo-fuzz).
    Fuzz(fuzz::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run(),
        Task::Build { debug } => build(!debug).map(|_| ()),
        Task::Run { args } => run(&args),
        Task::Testbed { action } => testbed::run(action),
        Task::Manifests => manifests::run(),
        Task::Lint => lint::run(),
        Task::Test { args } => test(&args),
        Task::Demo { keep } => demo::run(keep),
        Task::Bench(args) => bench::run(args),
        Task::Chaos(args) => chaos::run(args),
        Task::Fuzz(args) => fuzz::run(args),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command to success, with its output going to our terminal.
pub fn sh(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

pub struct Binaries {
    pub lockmesh: PathBuf,
    pub testapp: PathBuf,
}

/// Builds the agent and the test app; returns their paths.
pub fn build(release: bool) -> anyhow::Result<Binaries> {
    setup::check_build_prerequisites()?;
    let root = workspace_root();
    let profile = if release { "release" } else { "debug" };
    step::run(&format!("building lockmesh and the test app ({profile})"), || {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.current_dir(&root).args(["build", "-p", "lockmesh", "-p", "lockmesh-tests", "--bins"]);
        if release {
            cargo.arg("--release");
        }
        sh(&mut cargo)
    })?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    Ok(Binaries {
        lockmesh: target.join(profile).join("lockmesh"),
        testapp: target.join(profile).join("lockmesh-testapp"),
    })
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let binaries = build(true)?;
    require_root("running the agent (it loads eBPF programs)")?;
    let status = Command::new(&binaries.lockmesh).args(args).status().context("starting lockmesh")?;
    std::process::exit(status.code().unwrap_or(1));
}

fn test(args: &[String]) -> anyhow::Result<()> {
    // Privileged tests never skip: without root they would fail, so say it up front.
    require_root("the end-to-end tests (network namespaces, eBPF)")?;
    setup::check_test_prerequisites()?;
    manifests::run()?;
    let binaries = build(true)?;
    let root = workspace_root();
    step::run("running unit and end-to-end tests", || {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .current_dir(&root)
            // Every test binary runs even after one fails: CI shows all failures at once.
            .args(["test", "--release", "--no-fail-fast"])
            .args(args)
            .env("LOCKMESH_BIN", &binaries.lockmesh)
            .env("LOCKMESH_TESTAPP_BIN", &binaries.testapp);
        sh(&mut cargo)
    })
}

pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("{what} needs root; run as root (e.g. `sudo -E cargo xtask …`)");
    }
    Ok(())
}
