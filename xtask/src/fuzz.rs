//! `cargo xtask fuzz [--seconds N] [TARGET…]`: the cargo-fuzz targets of `agent/fuzz/` (the
//! parsers lockmesh owns), each run for a while from its committed seed corpus.
//!
//! Builds with the nightly toolchain and `cargo fuzz` (both from `cargo xtask setup`), with
//! `AYA_BUILD_SKIP=1` (the parsers do not need the eBPF programs), into `agent/fuzz/target`:
//! cargo-fuzz's release build with AddressSanitizer by default; `--sanitizer none` and
//! `--quick-build` (what CI uses) trade depth for time.
//! Each target starts from a scratch copy of `agent/fuzz/corpus/<target>/` (what it finds is
//! thrown away, the committed corpus stays as it is) and prints one line: runs, coverage,
//! result. A crash, panic, timeout or leak fails the command with the input that caused it
//! (`agent/fuzz/artifacts/<target>/…`) and how to reproduce it.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{sh, step, workspace_root};

/// The targets, in the order they run; each is `agent/fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: &[&str] = &["config_yaml", "istio_objects", "hbone_request", "certificate"];

/// Targets that read YAML get the dictionary of the keys and values lockmesh knows.
const YAML_TARGETS: &[&str] = &["config_yaml", "istio_objects"];

#[derive(clap::Args)]
pub struct Args {
    /// How long each target runs, in seconds (libFuzzer's `-max_total_time`).
    #[arg(long, default_value_t = 30, value_name = "N")]
    seconds: u64,
    /// cargo-fuzz's sanitizer. `none` runs 5-10x more inputs per second here: the code under test
    /// is safe Rust, so panics and hangs are what the fuzzer finds either way; `address` also
    /// checks the unsafe Rust underneath (unsafe-libyaml, the C-to-Rust translation of libyaml
    /// under the YAML parser).
    #[arg(long, value_enum, default_value_t = Sanitizer::Address)]
    sanitizer: Sanitizer,
    /// Build with the `dev` profile of agent/fuzz/Cargo.toml (opt-level 0, the parsers at 1)
    /// instead of cargo-fuzz's release build: half the cold build time, a fraction of the runs
    /// per second. For short runs (CI); long runs want the release build.
    #[arg(long)]
    quick_build: bool,
    /// Targets to run (default: all): config_yaml, istio_objects, hbone_request, certificate.
    #[arg(value_name = "TARGET")]
    targets: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Sanitizer {
    Address,
    None,
}

impl Sanitizer {
    fn name(self) -> &'static str {
        match self {
            Sanitizer::Address => "address",
            Sanitizer::None => "none",
        }
    }
}

/// How the targets are built: the same options for `cargo fuzz build` and `cargo fuzz run`.
fn build_options(args: &Args) -> Vec<&'static str> {
    let mut options = vec!["--sanitizer", args.sanitizer.name()];
    if args.quick_build {
        options.push("--dev");
    }
    options
}

/// What one run of a target showed.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    runs: Option<u64>,
    per_second: Option<u64>,
    coverage: Option<u64>,
    features: Option<u64>,
    corpus: Option<u64>,
    /// The input that crashed it (or timed out, or leaked), as libFuzzer wrote it.
    artifact: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for target in &args.targets {
            if !TARGETS.contains(&target.as_str()) {
                bail!("unknown fuzz target {target:?}; the targets are {}", TARGETS.join(", "));
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    crate::setup::check_fuzz_prerequisites()?;
    let root = workspace_root();
    let fuzz_dir = root.join("agent/fuzz");
    let options = build_options(&args);
    let profile = if args.quick_build { "dev" } else { "release" };
    let what = format!("building the fuzz targets (nightly, {profile}, sanitizer {})", args.sanitizer.name());
    step::run(&what, || sh(&mut cargo_fuzz(&root, "build", &options)))?;

    let scratch = fuzz_dir.join("target/xtask-corpus");
    let logs = fuzz_dir.join("target/xtask-logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    eprintln!("==> fuzzing {} target(s), {} s each…", targets.len(), args.seconds);
    let mut failures = Vec::new();
    for target in targets {
        let corpus = scratch.join(target);
        copy_seeds(&fuzz_dir.join("corpus").join(target), &corpus)?;
        let log = logs.join(format!("{target}.log"));
        eprint!("    {target:<14} ");
        std::io::stderr().flush().ok();
        let started = Instant::now();
        let mut command = cargo_fuzz(&root, "run", &options);
        command.arg(target).arg(&corpus).arg("--").args(libfuzzer_options(&fuzz_dir, target, args.seconds));
        let (outcome, success) = run_target(&mut command, &log)?;
        eprintln!("{}", summary(&outcome, success, started.elapsed().as_secs()));
        if !success {
            failures.push((target, outcome.artifact, log));
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    for (target, artifact, log) in &failures {
        eprintln!("\n{target} failed; its output: {}", log.display());
        if let Ok(text) = fs::read_to_string(log) {
            for line in failure_excerpt(&text) {
                eprintln!("    {line}");
            }
        }
        if let Some(artifact) = artifact {
            eprintln!("\ninput: {artifact}");
            eprintln!(
                "reproduce: AYA_BUILD_SKIP=1 cargo +nightly fuzz run --fuzz-dir agent/fuzz --target-dir \
                 agent/fuzz/target {} {target} {artifact}",
                options.join(" ")
            );
        }
    }
    let names: Vec<String> = failures
        .iter()
        .map(|(target, artifact, _)| match artifact {
            Some(artifact) => format!("{target} ({artifact})"),
            None => target.to_string(),
        })
        .collect();
    bail!("fuzz target(s) failed: {}", names.join(", "))
}

/// `cargo +nightly fuzz <subcommand>` on agent/fuzz, from the workspace root.
fn cargo_fuzz(root: &Path, subcommand: &str, options: &[&str]) -> Command {
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(root)
        .args([
            "+nightly",
            "fuzz",
            subcommand,
            "--fuzz-dir",
            "agent/fuzz",
            "--target-dir",
            "agent/fuzz/target",
        ])
        .args(options)
        .env("AYA_BUILD_SKIP", "1")
        // `cargo xtask` runs under the stable toolchain; its cargo must not leak into nightly's.
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC");
    cargo
}

fn libfuzzer_options(fuzz_dir: &Path, target: &str, seconds: u64) -> Vec<String> {
    let mut options = vec![
        format!("-max_total_time={seconds}"),
        // One input taking this long is a hang (the default, 20 minutes, outlasts any CI step).
        "-timeout=25".to_string(),
        "-print_final_stats=1".to_string(),
    ];
    if YAML_TARGETS.contains(&target) {
        options.push(format!("-dict={}", fuzz_dir.join("yaml.dict").display()));
    }
    options
}

/// A fresh scratch corpus holding the committed seeds.
fn copy_seeds(seeds: &Path, scratch: &Path) -> anyhow::Result<()> {
    if scratch.exists() {
        fs::remove_dir_all(scratch).with_context(|| format!("clearing {}", scratch.display()))?;
    }
    fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    for entry in fs::read_dir(seeds).with_context(|| format!("reading {}", seeds.display()))? {
        let path = entry?.path();
        if path.is_file()
            && let Some(name) = path.file_name()
        {
            fs::copy(&path, scratch.join(name)).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

/// Runs one target, its output to `log`; returns what it showed and whether it passed.
fn run_target(command: &mut Command, log: &Path) -> anyhow::Result<(Outcome, bool)> {
    let mut file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let mut outcome = Outcome::default();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.context("reading the fuzzer's output")?;
            writeln!(file, "{line}").ok();
            outcome.read(&line);
        }
    }
    let status = child.wait().context("waiting for the fuzzer")?;
    Ok((outcome, status.success()))
}

impl Outcome {
    /// Takes what a line of libFuzzer's output says.
    fn read(&mut self, line: &str) {
        // Progress: `#52101  NEW    cov: 2312 ft: 8109 corp: 301/27Kb lim: 146 exec/s: 26050 …`
        if line.starts_with('#') {
            let mut words = line.split_whitespace();
            while let Some(word) = words.next() {
                let field = match word {
                    "cov:" => &mut self.coverage,
                    "ft:" => &mut self.features,
                    "corp:" => &mut self.corpus,
                    _ => continue,
                };
                if let Some(value) =
                    words.next().and_then(|v| v.split('/').next()).and_then(|v| v.parse().ok())
                {
                    *field = Some(value);
                }
            }
        } else if let Some(value) = line.strip_prefix("stat::number_of_executed_units:") {
            self.runs = value.trim().parse().ok();
        } else if let Some(value) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.per_second = value.trim().parse().ok();
        } else if let Some(rest) = line.split("Test unit written to ").nth(1) {
            self.artifact = Some(rest.trim().to_string());
        }
    }
}

/// What to show of a failed run: from the panic (or libFuzzer's or ASan's report) on, else the
/// end of the output; long lines (a failed `assert_eq!` of big values) cut.
fn failure_excerpt(text: &str) -> Vec<String> {
    const REPORTS: &[&str] = &["panicked at", "ERROR: libFuzzer", "ERROR: AddressSanitizer"];
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let start = lines
        .iter()
        .position(|l| REPORTS.iter().any(|r| l.contains(r)))
        .unwrap_or(lines.len().saturating_sub(25));
    let cut = |line: &&str| match line.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    };
    lines[start..].iter().take(25).map(cut).collect()
}

fn summary(outcome: &Outcome, success: bool, seconds: u64) -> String {
    let show = |value: Option<u64>| value.map_or_else(|| "?".to_string(), |v| v.to_string());
    let result = match (&outcome.artifact, success) {
        (_, true) => "ok".to_string(),
        (Some(artifact), false) => format!("FAILED: {artifact}"),
        (None, false) => "FAILED (see the log)".to_string(),
    };
    format!(
        "{seconds:>4} s  {:>10} runs ({:>6}/s)  cov {:>5}  ft {:>6}  corpus {:>5}  {result}",
        show(outcome.runs),
        show(outcome.per_second),
        show(outcome.coverage),
        show(outcome.features),
        show(outcome.corpus),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let mut outcome = Outcome::default();
        for line in [
            "INFO: Running with entropic power schedule (0xFF, 100).",
            "#2\tINITED cov: 1200 ft: 3000 corp: 6/5Kb exec/s: 0 rss: 45Mb",
            "#52101\tNEW    cov: 2312 ft: 8109 corp: 301/27Kb lim: 146 exec/s: 26050 rss: 60Mb L: 9/120 MS: 1",
            "stat::number_of_executed_units: 812345",
            "stat::average_exec_per_sec:     54156",
            "artifact_prefix='agent/fuzz/artifacts/certificate/'; Test unit written to agent/fuzz/artifacts/certificate/crash-0a1b",
        ] {
            outcome.read(line);
        }
        assert_eq!(
            outcome,
            Outcome {
                runs: Some(812345),
                per_second: Some(54156),
                coverage: Some(2312),
                features: Some(8109),
                corpus: Some(301),
                artifact: Some("agent/fuzz/artifacts/certificate/crash-0a1b".into()),
            }
        );
        assert!(summary(&outcome, false, 15).contains("FAILED: agent/fuzz/artifacts/certificate/crash-0a1b"));
    }

    #[test]
    fn failure_excerpt_starts_at_the_panic() {
        let long = "x".repeat(400);
        let text = format!(
            "INFO: Seed: 1\n#2 INITED cov: 1\nthread '<unnamed>' panicked at src/a.rs:1:1:\n{long}\nstack\n"
        );
        let excerpt = failure_excerpt(&text);
        assert!(excerpt[0].contains("panicked at"), "{excerpt:?}");
        assert_eq!(excerpt[1].chars().count(), 301);
        assert_eq!(excerpt.len(), 3);
        assert_eq!(failure_excerpt("a\nb\n"), ["a", "b"]);
    }

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let fuzz = workspace_root().join("agent/fuzz");
        let manifest = fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
        for target in TARGETS {
            assert!(fuzz.join(format!("fuzz_targets/{target}.rs")).is_file(), "{target}");
            assert!(manifest.contains(&format!("name = \"{target}\"")), "{target} not in Cargo.toml");
            assert!(
                fs::read_dir(fuzz.join("corpus").join(target)).unwrap().count() > 0,
                "{target}: no seeds"
            );
        }
    }
}
