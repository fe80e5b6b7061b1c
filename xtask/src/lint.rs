//! `cargo xtask lint`: clippy with every warning an error, on the user-space crates (the agent,
//! the tests, xtask) and on the eBPF programs (for their own target, with the nightly toolchain).
//! The workspace's lints (`Cargo.toml`): no `unwrap`/`expect` outside tests, functions of at most
//! 100 lines, and in the agent `unreachable_pub` (internal items are `pub(crate)`, so rustc
//! reports dead code).
use std::process::Command;

use crate::{setup, sh, step, workspace_root};

pub fn run() -> anyhow::Result<()> {
    // The eBPF crate builds `core` from the nightly rust-src.
    setup::check_build_prerequisites()?;
    let root = workspace_root();
    step::run("clippy: agent, tests, xtask (-D warnings)", || {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // The lints read the code, not the eBPF object the agent embeds: skip building it.
        cargo
            .current_dir(&root)
            .args(["clippy", "--all-targets", "--", "-D", "warnings"])
            .env("AYA_BUILD_SKIP", "1");
        sh(&mut cargo)
    })?;
    step::run("clippy: eBPF programs, bpfel-unknown-none (-D warnings)", || {
        let mut cargo = Command::new("cargo");
        cargo
            .current_dir(root.join("ebpf/lockmesh-ebpf"))
            .args(["+nightly", "clippy", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--target-dir", &root.join("target/ebpf-lint").to_string_lossy()])
            .args(["--", "-D", "warnings"])
            // `cargo xtask` runs under the stable toolchain; its cargo must not leak into nightly's.
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC");
        sh(&mut cargo)
    })
}
