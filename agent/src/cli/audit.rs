//! `lockmesh audit verify FILE…`.
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::report::audit::{key, verify};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every hash link and checkpoint signature of audit-log files (the active file and
    /// its rotations, in any order, e.g. `audit.log*`); names the file, line and what broke
    /// (edited, removed, reordered record, truncated file, bad signature, history missing);
    /// exits non-zero then.
    ///
    /// The chain must start at seq 1. When the agent's rotation deleted the oldest files
    /// (`--audit-keep`), it wrote a `discarded` line into the log naming the deleted lines
    /// (`first_seq..=last_seq`) and the hash of the last one; a chain whose oldest line is
    /// `last_seq + 1` with `prev` equal to that hash is vouched for, and verify prints what was
    /// discarded and exits 0. A chain that starts later without such a line lost its oldest
    /// history silently (deleted by hand, or files not given): "history missing", non-zero,
    /// unless --partial says a slice of the chain is checked on purpose.
    Verify {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The published public key [default: FILE.pub next to the log, if present].
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
        /// The files are a slice of the chain on purpose: a start after seq 1 that no
        /// `discarded` line vouches for is a warning, not a failure.
        #[arg(long)]
        partial: bool,
    },
}

pub(super) fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { files, pubkey, partial } => verify(&files, pubkey, partial),
    }
}

fn verify(files: &[PathBuf], pubkey: Option<PathBuf>, partial: bool) -> anyhow::Result<()> {
    let pubkey = pubkey.or_else(|| files.iter().map(|f| verify::pub_file_for(f)).find(|p| p.exists()));
    let trusted = match &pubkey {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(key::parse_pub_file(&text).with_context(|| format!("{}", path.display()))?)
        }
        None => None,
    };
    let mut report = verify::verify_files(files, trusted.clone())?;
    let s = &report.summary;
    let time = |t: Option<time::OffsetDateTime>| {
        t.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_else(|| "-".into())
    };
    println!("files:       {}", s.files.len());
    for file in &s.files {
        println!("  {}", file.display());
    }
    println!("records:     {}", s.records);
    if s.reset_lines > 0 {
        println!(
            "resets:      {} in {} line(s) (per source, destination, port and second)",
            s.resets, s.reset_lines
        );
    }
    let keys = s.key_ids.iter().cloned().collect::<Vec<_>>().join(", ");
    println!("checkpoints: {} (keys: {})", s.checkpoints, if keys.is_empty() { "none".into() } else { keys });
    println!(
        "seq:         {}..{}{}",
        s.first_seq.unwrap_or(0),
        s.last_seq.unwrap_or(0),
        if s.from_genesis {
            " (from the start of the chain)"
        } else if s.vouched.is_some() {
            " (older lines deleted by rotation, see discarded)"
        } else {
            " (older lines missing: no record says rotation deleted them)"
        }
    );
    if let Some(d) = &s.vouched {
        println!(
            "discarded:   seq {}..{} ({} file(s)) deleted by rotation at {}, never verified here; last head {}",
            d.first_seq,
            d.last_seq,
            d.files,
            time(Some(d.time)),
            d.last_head
        );
    }
    println!("time:        {} .. {}", time(s.first_time), time(s.last_time));
    match (&pubkey, &trusted) {
        (Some(path), Some((id, _))) => println!("key:         {id} (from {})", path.display()),
        _ => println!("key:         no FILE.pub found; checkpoints checked against their own embedded key"),
    }
    if s.unsealed > 0 {
        println!("unsealed:    {} record(s) after the last checkpoint (not yet signed)", s.unsealed);
    }
    if partial {
        let (slice, rest): (Vec<_>, Vec<_>) =
            report.problems.into_iter().partition(|p| p.kind == verify::ProblemKind::Unvouched);
        for problem in slice {
            println!("WARN {problem} (--partial)");
        }
        report.problems = rest;
    }
    if report.problems.is_empty() {
        println!("OK: every hash link and checkpoint signature verifies");
        return Ok(());
    }
    for problem in &report.problems {
        println!("FAIL {problem}");
    }
    bail!("audit log verification failed: {} problem(s)", report.problems.len())
}
