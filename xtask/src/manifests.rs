//! `cargo xtask manifests`: renders deploy/'s kustomizations with a real kubectl (kustomize) and
//! validates the output offline: strict Kubernetes schemas (kubernetes-validate) for built-in
//! kinds, JSON schemas for the SCC and the CRDs (deploy/schemas/check_custom.py). The tools live in
//! a venv that `cargo xtask setup` creates from deploy/schemas/requirements.txt (pinned).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{sh, step, workspace_root};

/// The kustomizations users apply.
const KUSTOMIZATIONS: &[&str] = &["deploy/base", "deploy/openshift", "deploy/crds"];
/// The Kubernetes version the schemas are those of (kubernetes-validate's).
const KUBERNETES_VERSION: &str = "1.37.0";

pub fn venv() -> PathBuf {
    workspace_root().join(".tools/manifests-venv")
}

pub fn requirements() -> PathBuf {
    workspace_root().join("deploy/schemas/requirements.txt")
}

fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = venv().join("bin").join(name);
    if !path.exists() {
        bail!("{} is missing: run `cargo xtask setup` first", path.display());
    }
    Ok(path)
}

pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let out = root.join(".tools/rendered");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let kubectl = tool("kubectl")?;
    let mut rendered = Vec::new();
    for dir in KUSTOMIZATIONS {
        let file = out.join(format!("{}.yaml", dir.replace('/', "-")));
        step::run(&format!("kubectl kustomize {dir}"), || render(&kubectl, &root.join(dir), &file))?;
        rendered.push(file);
    }
    step::run(&format!("kubernetes-validate --strict (Kubernetes {KUBERNETES_VERSION})"), || {
        sh(Command::new(tool("kubernetes-validate")?)
            .args(["--strict", "--quiet", "--kubernetes-version", KUBERNETES_VERSION])
            .args(&rendered))
    })?;
    step::run("JSON schemas: SCC, CRDs, Istio samples against the CRDs", || {
        let schemas = root.join("deploy/schemas");
        sh(Command::new(tool("python")?)
            .arg(schemas.join("check_custom.py"))
            .arg(schemas.join("istio-samples.yaml"))
            .args(&rendered))
    })
}

fn render(kubectl: &Path, dir: &Path, file: &Path) -> anyhow::Result<()> {
    let output = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .with_context(|| format!("running {}", kubectl.display()))?;
    if !output.status.success() {
        bail!("kubectl kustomize {}: {}", dir.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    std::fs::write(file, &output.stdout).with_context(|| format!("writing {}", file.display()))
}
