//! `lockmesh doctor`: what the agent needs on this node (or in its pod) and whether it is there,
//! one finding per line with a hint to fix what is missing. Reads only: it loads nothing into
//! the kernel and contacts no API server.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use crate::{
    identity::ca::{self, Ca},
    kernel,
    sys::host,
};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The agent's config dir, checked for readability.
    #[arg(long, value_name = "DIR", conflicts_with = "kube")]
    pub config: Option<PathBuf>,

    /// Check for Kubernetes mode: credentials (in-cluster or kubeconfig) and the host's /proc.
    #[arg(long)]
    pub kube: bool,

    #[arg(long, value_name = "PATH", requires = "kube")]
    pub kubeconfig: Option<PathBuf>,

    /// The host's /proc (--kube finds pods' network namespaces there).
    #[arg(long, value_name = "PATH", default_value = "/proc")]
    pub proc_root: PathBuf,

    /// Where named network namespaces are pinned (Workload `spec.netns` paths).
    #[arg(long, value_name = "PATH", default_value = "/var/run/netns")]
    pub netns_dir: PathBuf,

    /// cgroup v2 directory the agent attaches to [default: found as the agent finds it].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// bpffs directory for pinned maps (the agent's --bpffs-dir, without the node).
    #[arg(long, value_name = "PATH", default_value = "/sys/fs/bpf/lockmesh")]
    pub bpffs_dir: PathBuf,

    /// Plug-in CA directory (Istio cacerts layout), loaded as the agent loads it.
    #[arg(long, value_name = "DIR")]
    pub ca: Option<PathBuf>,

    /// The agent's state dir (holds the self-signed root when there is no --ca).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/lockmesh")]
    pub state_dir: PathBuf,

    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the checks the flags ask for and prints them; fails when something required is missing.
pub(super) fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let source = match (args.config, args.kube) {
        (Some(dir), _) => DoctorSource::Dir(dir),
        (None, true) => DoctorSource::Kube(args.kubeconfig),
        (None, false) => DoctorSource::Unspecified,
    };
    let report = check(&DoctorOptions {
        cgroup: args.cgroup,
        bpffs_dir: args.bpffs_dir,
        source,
        proc_root: args.proc_root,
        netns_dir: args.netns_dir,
        ca: args.ca,
        state_dir: args.state_dir,
        osrelease: "/proc/sys/kernel/osrelease".into(),
        proc_status: "/proc/self/status".into(),
        btf: "/sys/kernel/btf/vmlinux".into(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    if !report.ok {
        let missing: Vec<&str> =
            report.findings.iter().filter(|f| f.required && !f.ok).map(|f| f.name).collect();
        bail!("missing: {}", missing.join(", "));
    }
    Ok(())
}

/// What to look at; the defaults are the agent's.
#[derive(Clone, Debug)]
pub(super) struct DoctorOptions {
    pub cgroup: Option<PathBuf>,
    pub bpffs_dir: PathBuf,
    pub source: DoctorSource,
    pub proc_root: PathBuf,
    pub netns_dir: PathBuf,
    pub ca: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub osrelease: PathBuf,
    pub proc_status: PathBuf,
    pub btf: PathBuf,
}

#[derive(Clone, Debug)]
pub(super) enum DoctorSource {
    /// `--config DIR`.
    Dir(PathBuf),
    /// `--kube`, with `--kubeconfig` when given.
    Kube(Option<PathBuf>),
    /// Neither given: the source is not checked.
    Unspecified,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct Finding {
    pub name: &'static str,
    pub ok: bool,
    /// The agent cannot run without it.
    pub required: bool,
    pub detail: String,
    /// How to fix it (empty when ok).
    pub hint: String,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    /// Every required finding is ok.
    pub ok: bool,
    pub findings: Vec<Finding>,
}

pub(super) const MIN_KERNEL: (u32, u32) = (6, 6);
/// Where the kubelet mounts a pod's service account token (in-cluster config).
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

fn finding(name: &'static str, ok: bool, detail: String, hint: &str) -> Finding {
    Finding { name, ok, required: true, detail, hint: if ok { String::new() } else { hint.to_string() } }
}

/// Every finding, for the options given.
pub(super) fn check(options: &DoctorOptions) -> Report {
    let findings = vec![
        kernel_version(&options.osrelease),
        btf(&options.btf),
        bpffs(&options.bpffs_dir),
        cgroup(options.cgroup.as_deref()),
        capabilities(&options.proc_status),
        netns(options),
        source(&options.source),
        certificate_authority(options.ca.as_deref(), &options.state_dir),
    ];
    Report { ok: findings.iter().all(|f| f.ok || !f.required), findings }
}

fn kernel_version(osrelease: &Path) -> Finding {
    let hint = "lockmesh needs Linux ≥ 6.6 (TCX links, sock_addr hooks, BPF ring buffer)";
    let release = match fs::read_to_string(osrelease) {
        Ok(text) => text.trim().to_string(),
        Err(e) => return finding("kernel", false, format!("{}: {e}", osrelease.display()), hint),
    };
    match host::kernel_version(&release) {
        Some(version) => {
            let (major, minor) = MIN_KERNEL;
            finding("kernel", version >= MIN_KERNEL, format!("{release} (needs ≥ {major}.{minor})"), hint)
        }
        None => finding("kernel", false, format!("{release}: not a kernel version"), hint),
    }
}

fn btf(path: &Path) -> Finding {
    let ok = fs::File::open(path).is_ok();
    let detail = format!("{} {}", path.display(), if ok { "readable" } else { "missing or unreadable" });
    finding("BTF", ok, detail, "a kernel built with CONFIG_DEBUG_INFO_BTF=y; in a pod, do not mask /sys")
}

/// The pin directory, or the closest existing parent of it, must be on bpffs (the agent creates
/// the rest; it mounts /sys/fs/bpf only on a host, where the mount is not a pod's own).
fn bpffs(pin_dir: &Path) -> Finding {
    let existing = pin_dir.ancestors().find(|p| p.exists());
    let ok = existing.is_some_and(kernel::is_bpffs);
    let detail = match existing {
        Some(dir) if ok => format!("{} on bpffs", dir.display()),
        Some(dir) => format!("{} is not on bpffs (pins for {})", dir.display(), pin_dir.display()),
        None => format!("nothing of {} exists", pin_dir.display()),
    };
    let hint =
        "mount -t bpf bpf /sys/fs/bpf on the host; in a pod, mount the host's /sys/fs/bpf (Bidirectional)";
    finding("bpffs", ok, detail, hint)
}

fn cgroup(explicit: Option<&Path>) -> Finding {
    let hint = "cgroup v2 mounted at /sys/fs/cgroup (or /sys/fs/cgroup/unified), or --cgroup PATH";
    match explicit {
        Some(path) => {
            let ok = host::is_cgroup2(path);
            let detail = format!(
                "{} {}",
                path.display(),
                if ok { "is cgroup v2" } else { "is not a cgroup v2 directory" }
            );
            finding("cgroup v2", ok, detail, hint)
        }
        None => match host::cgroup2_root() {
            Ok(path) => finding("cgroup v2", true, format!("{} (found)", path.display()), hint),
            Err(_) => finding(
                "cgroup v2",
                false,
                format!("none at {}", host::CGROUP2_CANDIDATES.join(" or ")),
                hint,
            ),
        },
    }
}

fn capabilities(proc_status: &Path) -> Finding {
    let hint =
        "run as root, or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_NET_RAW (see deploy/)";
    let status = match fs::read_to_string(proc_status) {
        Ok(status) => status,
        Err(e) => return finding("capabilities", false, format!("{}: {e}", proc_status.display()), hint),
    };
    let Some(mask) = host::effective_capabilities(&status) else {
        return finding("capabilities", false, format!("{}: no CapEff line", proc_status.display()), hint);
    };
    let missing = host::missing_capabilities(mask);
    let names: Vec<&str> = host::AGENT_CAPABILITIES.iter().map(|(name, _)| *name).collect();
    let detail = if missing.is_empty() { names.join(" ") } else { format!("missing {}", missing.join(" ")) };
    finding("capabilities", missing.is_empty(), detail, hint)
}

/// Where pods' network namespaces are found: the host's /proc with --kube (the agent needs the
/// host's PID namespace), else the named namespaces of /var/run/netns that Workloads point at.
fn netns(options: &DoctorOptions) -> Finding {
    if let DoctorSource::Kube(_) = options.source {
        // The host's /proc shows this process under its own PID only when the agent shares the
        // host's PID namespace (hostPID), and then other pods' processes are there too.
        let root = &options.proc_root;
        let pid = std::process::id().to_string();
        let same_pids = fs::read_link(root.join("self")).is_ok_and(|self_pid| self_pid == Path::new(&pid));
        let own_netns = root.join(&pid).join("ns").join("net");
        let opens = fs::File::open(&own_netns).is_ok();
        let detail = match (same_pids, opens) {
            (true, true) => {
                format!("{} shares this PID namespace; {} opens", root.display(), own_netns.display())
            }
            (false, _) => format!("{} is not the /proc of this PID namespace", root.display()),
            (true, false) => format!("{} does not open", own_netns.display()),
        };
        let hint = "hostPID: true and the host's /proc as --proc-root (CAP_SYS_ADMIN to open namespaces)";
        return finding("pod network namespaces", same_pids && opens, detail, hint);
    }
    let dir = &options.netns_dir;
    let ok = fs::read_dir(dir).is_ok();
    let detail = format!("{} {}", dir.display(), if ok { "readable" } else { "missing or unreadable" });
    let hint = "mount the host's /var/run/netns (CRI-O and `ip netns` pin namespaces there)";
    Finding { required: false, ..finding("pod network namespaces", ok, detail, hint) }
}

fn source(source: &DoctorSource) -> Finding {
    match source {
        DoctorSource::Dir(dir) => {
            let ok = fs::read_dir(dir).is_ok();
            let detail = format!(
                "--config {} {}",
                dir.display(),
                if ok { "readable" } else { "missing or unreadable" }
            );
            finding("config source", ok, detail, "a directory of Workload and Istio YAML the agent can read")
        }
        DoctorSource::Kube(Some(kubeconfig)) => {
            let ok = fs::File::open(kubeconfig).is_ok();
            let detail = format!(
                "--kubeconfig {} {}",
                kubeconfig.display(),
                if ok { "readable" } else { "missing or unreadable" }
            );
            finding("config source", ok, detail, "a readable kubeconfig file")
        }
        DoctorSource::Kube(None) => kube_credentials(),
        DoctorSource::Unspecified => Finding {
            required: false,
            ..finding(
                "config source",
                false,
                "not checked".into(),
                "pass --config DIR or --kube as you would to the agent",
            )
        },
    }
}

/// What `kube::Config::infer` looks at: $KUBECONFIG, ~/.kube/config, then the in-cluster
/// service account.
fn kube_credentials() -> Finding {
    let hint = "in a pod: a service account token (automountServiceAccountToken); elsewhere --kubeconfig";
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".kube/config")))
        .filter(|path| path.is_file());
    if let Some(path) = kubeconfig {
        let ok = fs::File::open(&path).is_ok();
        let detail = format!("kubeconfig {} {}", path.display(), if ok { "readable" } else { "unreadable" });
        return finding("config source", ok, detail, hint);
    }
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let token = fs::File::open(SERVICE_ACCOUNT_TOKEN).is_ok();
    let detail = match (in_cluster, token) {
        (true, true) => format!("in-cluster: KUBERNETES_SERVICE_HOST set, {SERVICE_ACCOUNT_TOKEN} readable"),
        (false, _) => "no kubeconfig and KUBERNETES_SERVICE_HOST unset (not in a pod)".into(),
        (true, false) => format!("in-cluster, but {SERVICE_ACCOUNT_TOKEN} is not readable"),
    };
    finding("config source", in_cluster && token, detail, hint)
}

/// A plug-in CA must load as the agent loads it; without one, the self-signed root in the
/// state dir must load, or the state dir must be creatable to hold a new one.
fn certificate_authority(plugin: Option<&Path>, state_dir: &Path) -> Finding {
    let (dir, origin) = match plugin {
        Some(dir) => (dir, "--ca"),
        None if state_dir.join(ca::CA_KEY).exists() => (state_dir, "self-signed root in --state-dir"),
        None => {
            let writable = state_dir
                .ancestors()
                .find(|p| p.exists())
                .is_some_and(|p| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok());
            let detail = if writable {
                format!("no --ca: a self-signed root will be created in {}", state_dir.display())
            } else {
                format!("no --ca, and {} cannot be created", state_dir.display())
            };
            return finding(
                "CA",
                writable,
                detail,
                "a writable --state-dir, or --ca DIR (Istio cacerts layout)",
            );
        }
    };
    match Ca::load_plugin(dir) {
        Ok(_) => finding("CA", true, format!("{origin} {} loads", dir.display()), ""),
        Err(e) => finding(
            "CA",
            false,
            format!("{origin} {}: {e:#}", dir.display()),
            "ca-cert.pem, ca-key.pem, root-cert.pem (cert-chain.pem) as `lockmesh ca init` writes them",
        ),
    }
}

/// One line per finding: ✓ or ✗, the name, what was found, and a hint for what is missing.
pub(super) fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in &report.findings {
        let mark = if f.ok { "✓" } else { "✗" };
        let optional = if !f.ok && !f.required { " (optional)" } else { "" };
        let _ = write!(out, "{mark} {:<23} {}{optional}", f.name, f.detail);
        if !f.ok {
            let _ = write!(out, "  — hint: {}", f.hint);
        }
        out.push('\n');
    }
    let verdict = if report.ok { "ready to run the agent" } else { "something the agent needs is missing" };
    let _ = writeln!(out, "{verdict}");
    out
}

#[cfg(test)]
mod tests;
