//! `cargo xtask chaos [--full]`: the chaos suite (`tests/tests/chaos.rs`) on real testbeds, then
//! one summary table of what each scenario measured, and a check that the run left no network
//! namespace or bpffs pin behind.
use std::{
    fmt::Write as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{bench::report::Machine, step, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// The sizes (100 policy flips, 3 minutes of 30 s certificates, 10 000 connections;
    /// about 6 minutes) instead of the short form CI runs (about 2 minutes).
    #[arg(long)]
    full: bool,
    /// Also write the table as `<date>-<host>-chaos.md` into DIR (default with --full:
    /// bench/results).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::require_root("the chaos suite (network namespaces, eBPF)")?;
    crate::setup::check_test_prerequisites()?;
    let binaries = crate::build(true)?;
    let root = workspace_root();
    let leftovers_before = leftovers();
    let report = std::env::temp_dir().join(format!("lockmesh-chaos-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&report);
    let form = if args.full { "full" } else { "short" };
    let started = Instant::now();
    let tests = step::run(&format!("running the chaos suite ({form} form)"), || {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .current_dir(&root)
            .args(["test", "--release", "--test", "chaos", "--"])
            // One scenario at a time: each measures windows and memory.
            .args(["--test-threads=1", "--nocapture"])
            .env("LOCKMESH_CHAOS", form)
            .env("LOCKMESH_CHAOS_REPORT", &report)
            .env("LOCKMESH_BIN", &binaries.lockmesh)
            .env("LOCKMESH_TESTAPP_BIN", &binaries.testapp);
        crate::sh(&mut cargo)
    });
    let rows: Vec<Value> = std::fs::read_to_string(&report)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let _ = std::fs::remove_file(&report);
    let machine = Machine::collect(&root);
    let table = markdown(&machine, form, &rows, started.elapsed());
    println!("\n{table}");

    let leaked: Vec<String> = leftovers().into_iter().filter(|l| !leftovers_before.contains(l)).collect();
    tests?;
    if !leaked.is_empty() {
        bail!("the chaos suite left these behind: {leaked:?}");
    }
    let out = args.out.or_else(|| args.full.then(|| root.join("bench/results")));
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}-{}-chaos.md", machine.date, machine.host));
        std::fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
        step::note(&format!("wrote {}", path.display()));
    }
    Ok(())
}

/// Testbed namespaces and lockmesh pins on the machine.
fn leftovers() -> Vec<String> {
    let mut found = lockmesh_tests::testbed::all_testbed_namespaces();
    if let Ok(dir) = std::fs::read_dir("/sys/fs/bpf/lockmesh") {
        found.extend(dir.flatten().map(|e| e.path().display().to_string()));
    }
    found
}

/// One section per scenario: each figure it reported, in the order it reported them.
fn markdown(machine: &Machine, form: &str, rows: &[Value], elapsed: Duration) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Chaos suite ({form} form), {} at `{}`: {} ({} cores), kernel {}; {:.0} s.\n",
        machine.time,
        machine.commit,
        machine.cpu_model,
        machine.cores,
        machine.kernel,
        elapsed.as_secs_f64()
    );
    if rows.is_empty() {
        md.push_str("No scenario reported (see the test output above).\n");
    }
    for row in rows {
        let Some(fields) = row.as_object() else { continue };
        let name = fields.get("test").and_then(Value::as_str).unwrap_or("?");
        let _ = writeln!(md, "| {name} | |\n| --- | --: |");
        for (key, value) in fields.iter().filter(|(k, _)| *k != "test") {
            match value.as_object() {
                Some(inner) => {
                    for (k, v) in inner {
                        let _ = writeln!(md, "| {key}: {} | {} |", k.replace('_', " "), cell(v));
                    }
                }
                None => {
                    let _ = writeln!(md, "| {} | {} |", key.replace('_', " "), cell(value));
                }
            }
        }
        md.push('\n');
    }
    md
}

fn cell(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or_default()),
        Value::String(s) => s.clone(),
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}
