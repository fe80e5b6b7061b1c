//! The run's results as a markdown table, an SVG bar chart and a JSON file, with the facts of
//! the machine they were measured on.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{Better, METRICS, Profile, Results, variants::Variant};

#[derive(Debug, serde::Serialize)]
pub struct Machine {
    pub host: String,
    pub date: String,
    pub time: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    pub commit: String,
    pub loadavg: String,
    pub tools: Vec<String>,
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

impl Machine {
    pub fn collect(root: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
            .unwrap_or_default();
        let root_s = root.to_string_lossy().into_owned();
        let mut commit = output("git", &["-C", &root_s, "rev-parse", "--short=12", "HEAD"]);
        let dirty = Command::new("git")
            .args(["-C", &root_s, "status", "--porcelain", "--untracked-files=no"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        if dirty {
            commit.push_str("-dirty");
        }
        Self {
            host: output("hostname", &[]),
            date: output("date", &["-u", "+%Y-%m-%d"]),
            time: output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| {
                    l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_else(|| "unknown CPU".into()),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os,
            commit,
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            tools: vec![
                output("iperf3", &["--version"]),
                output("stunnel4", &["-version"]),
                output("haproxy", &["-v"]),
                output("openssl", &["version"]),
            ],
        }
    }
}

/// Writes `<date>-<host>.{md,svg,json}` into `dir`; returns their paths (markdown first).
pub fn write(
    dir: &Path,
    machine: &Machine,
    profile: &Profile,
    results: &Results,
    elapsed: Duration,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A quick run never overwrites the full run of the day.
    let suffix = if profile.name == "full" { String::new() } else { format!("-{}", profile.name) };
    let stem = format!("{}-{}{suffix}", machine.date, machine.host);
    let paths: Vec<PathBuf> =
        ["md", "svg", "json"].iter().map(|ext| dir.join(format!("{stem}.{ext}"))).collect();
    let svg_name = format!("{stem}.svg");
    std::fs::write(&paths[0], markdown(machine, profile, results, elapsed, &svg_name))?;
    std::fs::write(&paths[1], svg(machine, profile, results))?;
    std::fs::write(&paths[2], serde_json::to_string_pretty(&to_json(machine, profile, results, elapsed))?)?;
    Ok(paths)
}

pub fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        // Thousands separated by a thin space: 12 345.
        let s = format!("{v:.0}");
        let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push('\u{2009}');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn ratio(results: &Results, key: &str, a: Variant, b: Variant) -> String {
    match (results.median(key, a), results.median(key, b)) {
        (Some(x), Some(y)) if y != 0.0 => format!("{:.2}×", x / y),
        _ => "–".into(),
    }
}

fn cell(results: &Results, key: &str, v: Variant) -> String {
    results.median(key, v).map(number).unwrap_or_else(|| "–".into())
}

fn arrow(better: Better) -> &'static str {
    match better {
        Better::Higher => "↑",
        Better::Lower => "↓",
    }
}

fn profile_line(profile: &Profile) -> String {
    format!(
        "profile `{}`: {} repetitions, medians; iperf3 {} s per run, ping-pong {} ms, connection rate {} ms, \
         {} idle connections",
        profile.name,
        profile.repetitions,
        profile.iperf_seconds,
        profile.pingpong_millis,
        profile.connrate_millis,
        profile.idle_connections
    )
}

fn markdown(machine: &Machine, profile: &Profile, results: &Results, elapsed: Duration, svg: &str) -> String {
    use Variant::*;
    let mut md = String::new();
    let _ = writeln!(md, "# lockmesh benchmark: {} on {}\n", machine.time, machine.host);
    let _ = writeln!(
        md,
        "{} ({} cores, {} GiB), kernel {}, {}; commit `{}`; load average at start {}.  ",
        machine.cpu_model,
        machine.cores,
        machine.memory_gib,
        machine.kernel,
        machine.os,
        machine.commit,
        machine.loadavg
    );
    let _ = writeln!(md, "{}; {:.0} s in all.\n", profile_line(profile), elapsed.as_secs_f64());
    let _ = writeln!(
        md,
        "| measure | unit | plaintext | lockmesh | lockmesh STRICT | stunnel4 | HAProxy | lockmesh ÷ plaintext | \
         lockmesh ÷ stunnel4 | lockmesh ÷ HAProxy |"
    );
    let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for m in METRICS {
        let _ = write!(md, "| {} {} | {} |", m.label, arrow(m.better), m.unit);
        for v in Variant::ALL {
            let _ = write!(md, " {} |", cell(results, m.key, v));
        }
        let _ = writeln!(
            md,
            " {} | {} | {} |",
            ratio(results, m.key, Lockmesh, Plaintext),
            ratio(results, m.key, Lockmesh, Stunnel),
            ratio(results, m.key, Lockmesh, Haproxy)
        );
    }
    let _ = writeln!(
        md,
        "| STRICT: plaintext connections reset ↑ | conn/s | | | {} | | | | | |\n",
        results.strict_resets_per_sec.map(number).unwrap_or_else(|| "n/a".into())
    );
    let _ = writeln!(md, "Each TLS variant against plaintext (value ÷ plaintext):\n");
    let _ = writeln!(md, "| measure | lockmesh | lockmesh STRICT | stunnel4 | HAProxy |");
    let _ = writeln!(md, "|---|--:|--:|--:|--:|");
    for m in METRICS.iter().filter(|m| !m.key.starts_with("rss")) {
        let _ = write!(md, "| {} {} |", m.label, arrow(m.better));
        for v in [Lockmesh, Strict, Stunnel, Haproxy] {
            let _ = write!(md, " {} |", ratio(results, m.key, v, Plaintext));
        }
        md.push('\n');
    }
    let held: Vec<String> =
        results.idle_connections.iter().map(|(v, n)| format!("{} {}", v.label(), n)).collect();
    let _ = writeln!(
        md,
        "\n![chart]({svg})\n\n\
         - Layout: client pod on node1, server pod on node2 (network namespaces joined by veths and a bridge); \
         each variant has its own pod pair, all variants run on one testbed with both agents up \
         (plaintext pods are out of the mesh).\n\
         - lockmesh: eBPF capture into the per-node engine, HBONE (HTTP/2 CONNECT) over mutual TLS 1.3 \
         between the nodes. STRICT: the same with a `PeerAuthentication` `STRICT` in the server's namespace.\n\
         - stunnel4 / HAProxy: one process per node, client pod → node1 tunnel → TLS 1.3 with client \
         certificates required and verified (ECDSA P-256) → node2 tunnel → server pod; their defaults otherwise \
         (HAProxy resumes TLS sessions, lockmesh multiplexes connections on pooled HBONE connections).\n\
         - Throughput: iperf3; RTT: request/response round trips on one established TCP connection (test app `pingpong` against \
         a streaming echo, TCP_NODELAY; sockperf needs at least 14-byte messages); \
         new connections: connect, 1 KiB request, 1 KiB echo, close; CPU per GB: utime+stime of the \
         data-path processes (agents or tunnels) and both iperf3 ends, per GB received; RSS: the data-path \
         processes of both nodes together; idle connections held: {}.\n\
         - STRICT flood: {}",
        held.join(", "),
        results.strict_note
    );
    if !results.program_costs.is_empty() {
        let _ = writeln!(
            md,
            "\nlockmesh's eBPF programs over the whole run (kernel accounting, `kernel.bpf_stats_enabled`; \
             the STRICT guard runs per packet into an enrolled pod, the anti-spoofing/egress guard per packet \
             out of one, the others per socket event):\n"
        );
        let _ = writeln!(md, "| program | runs | ns per run |");
        let _ = writeln!(md, "|---|--:|--:|");
        for (name, cost) in &results.program_costs {
            let per_run = cost.ns_per_run().map(|ns| format!("{ns:.0}")).unwrap_or_else(|| "n/a".into());
            let _ = writeln!(md, "| `{name}` | {} | {per_run} |", cost.runs);
        }
    }
    if !results.failures.is_empty() {
        let _ = writeln!(md, "\nFailed runs (left out of the medians):\n");
        for f in &results.failures {
            let _ = writeln!(md, "- {}", f.replace('\n', " "));
        }
    }
    md
}

fn to_json(machine: &Machine, profile: &Profile, results: &Results, elapsed: Duration) -> Value {
    let metrics: Vec<Value> = METRICS
        .iter()
        .map(|m| {
            let mut values = serde_json::Map::new();
            for v in Variant::ALL {
                let samples = results.samples.get(m.key).and_then(|s| s.get(&v)).cloned().unwrap_or_default();
                values
                    .insert(v.key().into(), json!({"median": results.median(m.key, v), "samples": samples}));
            }
            json!({"key": m.key, "label": m.label, "unit": m.unit, "better": m.better, "values": values})
        })
        .collect();
    json!({
        "schema": "lockmesh.bench/v1",
        "machine": machine,
        "profile": profile,
        "elapsed_seconds": elapsed.as_secs_f64(),
        "variants": Variant::ALL.iter().map(|v| json!({"key": v.key(), "label": v.label()})).collect::<Vec<_>>(),
        "metrics": metrics,
        "idle_connections": results.idle_connections.iter().map(|(v, n)| (v.key().to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "strict_plaintext_resets_per_sec": results.strict_resets_per_sec,
        "strict_note": results.strict_note,
        "program_costs": results.program_costs,
        "failures": results.failures,
    })
}

const COLORS: [&str; 5] = ["#9e9e9e", "#1565c0", "#6a1b9a", "#ef6c00", "#2e7d32"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// One panel per headline metric (each on its own scale), one bar per variant.
fn svg(machine: &Machine, profile: &Profile, results: &Results) -> String {
    let charted = [
        "throughput_1",
        "throughput_8",
        "cpu_per_gb_8",
        "rtt_1b_p50",
        "rtt_1k_p99",
        "conn_rate_1",
        "conn_rate_64",
        "rss_per_conn",
    ];
    let (cols, pw, ph) = (4usize, 250.0, 210.0);
    let rows = charted.len().div_ceil(cols);
    let (top, legend_h) = (58.0, 34.0);
    let width = cols as f64 * pw + 20.0;
    let height = top + rows as f64 * ph + legend_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">lockmesh vs plaintext, stunnel4, HAProxy: medians ({} profile)</text>"#,
        profile.name
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">{}</text>"##,
        escape(&format!(
            "{} · {} cores · kernel {} · commit {} · {}",
            machine.cpu_model, machine.cores, machine.kernel, machine.commit, machine.time
        ))
    );
    for (i, key) in charted.iter().enumerate() {
        let Some(m) = METRICS.iter().find(|m| m.key == *key) else { continue };
        let (x0, y0) = (10.0 + (i % cols) as f64 * pw, top + (i / cols) as f64 * ph);
        let values: Vec<(usize, f64)> = Variant::ALL
            .iter()
            .enumerate()
            .filter_map(|(j, v)| results.median(m.key, *v).map(|x| (j, x)))
            .collect();
        let max = values.iter().map(|(_, x)| *x).fold(0.0, f64::max);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#,
            x0 + 4.0,
            y0 + 12.0,
            escape(m.label)
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="#555">{}, {} is better</text>"##,
            x0 + 4.0,
            y0 + 26.0,
            escape(m.unit),
            match m.better {
                Better::Higher => "higher",
                Better::Lower => "lower",
            }
        );
        let (chart_top, chart_h, bar_w, gap) = (y0 + 40.0, ph - 66.0, 34.0, 12.0);
        let base = chart_top + chart_h;
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{base}" x2="{}" y2="{base}" stroke="#333"/>"##,
            x0 + 4.0,
            x0 + pw - 20.0
        );
        for (j, value) in &values {
            let h = if max > 0.0 { value / max * (chart_h - 14.0) } else { 0.0 };
            let x = x0 + 8.0 + *j as f64 * (bar_w + gap);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bar_w}" height="{h:.1}" fill="{}"/>"#,
                base - h,
                COLORS[*j]
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                x + bar_w / 2.0,
                base - h - 3.0,
                escape(&number(*value))
            );
        }
        if values.is_empty() {
            let _ =
                writeln!(s, r##"<text x="{}" y="{}" fill="#999">no data</text>"##, x0 + 60.0, base - 40.0);
        }
    }
    let ly = top + rows as f64 * ph + 16.0;
    for (j, v) in Variant::ALL.iter().enumerate() {
        let x = 10.0 + j as f64 * 150.0;
        let _ =
            writeln!(s, r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/>"#, ly - 10.0, COLORS[j]);
        let _ = writeln!(s, r#"<text x="{}" y="{ly}">{}</text>"#, x + 16.0, escape(v.label()));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short_and_grouped() {
        assert_eq!(number(0.8123), "0.81");
        assert_eq!(number(26.04), "26.0");
        assert_eq!(number(226.4), "226");
        assert_eq!(number(12345.6), "12\u{2009}346");
    }

    #[test]
    fn medians_and_ratios() {
        let mut r = Results::default();
        for v in [3.0, 1.0, 2.0] {
            r.push("throughput_1", Variant::Lockmesh, v);
        }
        for v in [4.0, 8.0] {
            r.push("throughput_1", Variant::Plaintext, v);
        }
        assert_eq!(r.median("throughput_1", Variant::Lockmesh), Some(2.0));
        assert_eq!(r.median("throughput_1", Variant::Plaintext), Some(6.0));
        assert_eq!(r.median("throughput_1", Variant::Haproxy), None);
        assert_eq!(ratio(&r, "throughput_1", Variant::Lockmesh, Variant::Plaintext), "0.33×");
        assert_eq!(ratio(&r, "throughput_1", Variant::Lockmesh, Variant::Haproxy), "–");
    }
}
