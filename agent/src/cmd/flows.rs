//! `lockmesh flows`: the flows a running agent reports, as a table or JSON lines.
use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;
use http_body_util::BodyExt as _;

use super::admin_client;
use crate::{
    cli::{FlowsArgs, FlowsOutput},
    flows::{Encryption, Endpoint, FlowRecord},
};

pub async fn run(args: FlowsArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let style = Style { color: std::io::stdout().is_terminal() };
    if args.output == FlowsOutput::Table {
        writeln!(out, "{}", header())?;
    }
    if !args.follow {
        let body = admin_client::get_bytes(args.admin, "/flows").await?;
        let records: Vec<FlowRecord> = serde_json::from_slice(&body).context("parsing /flows")?;
        for record in &records {
            print_record(&mut out, record, args.output, style)?;
        }
        return Ok(());
    }
    let response = admin_client::get(args.admin, "/flows?follow=true").await?;
    let mut body = response.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the /flows stream")?;
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let record: FlowRecord = serde_json::from_slice(&line).context("parsing a /flows line")?;
            print_record(&mut out, &record, args.output, style)?;
            out.flush()?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Style {
    color: bool,
}

fn print_record(
    out: &mut impl std::io::Write,
    record: &FlowRecord,
    output: FlowsOutput,
    style: Style,
) -> anyhow::Result<()> {
    match output {
        FlowsOutput::Json => writeln!(out, "{}", serde_json::to_string(record)?)?,
        FlowsOutput::Table => writeln!(out, "{}", row(record, style))?,
    }
    Ok(())
}

const COLUMNS: [(&str, usize); 8] = [
    ("START", 12),
    ("NODE", 8),
    ("SOURCE", 40),
    ("DESTINATION", 40),
    ("ENCRYPTION", 11),
    ("VERDICT", 9),
    ("SENT/RECV", 17),
    ("STATE", 10),
];

fn header() -> String {
    COLUMNS
        .iter()
        .map(|(name, width)| format!("{name:<width$}"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end()
        .to_string()
}

fn endpoint(e: &Endpoint) -> String {
    match (&e.namespace, &e.workload) {
        (Some(ns), Some(w)) => format!("{ns}/{w} {}:{}", e.ip, e.port),
        _ => format!("{}:{}", e.ip, e.port),
    }
}

fn row(r: &FlowRecord, style: Style) -> String {
    let start = r
        .start
        .format(time::macros::format_description!("[hour]:[minute]:[second].[subsecond digits:3]"))
        .unwrap_or_default();
    let encryption = match r.encryption {
        Encryption::Mtls => "🔒 mtls".to_string(),
        Encryption::Plaintext => "plaintext".to_string(),
    };
    let state = match r.duration_ms {
        Some(ms) => format!("closed {}", human_ms(ms)),
        None => "open".to_string(),
    };
    let cells = [
        start,
        r.node.clone(),
        endpoint(&r.src),
        endpoint(&r.dst),
        encryption,
        r.verdict.to_string(),
        format!("{}/{}", human_bytes(r.bytes_sent), human_bytes(r.bytes_received)),
        state,
    ];
    let mut line = String::new();
    for (i, (cell, (_, width))) in cells.iter().zip(COLUMNS).enumerate() {
        let width = if cell.contains('🔒') { width - 1 } else { width }; // the lock is two columns wide
        let padded = format!("{cell:<width$}");
        let painted = match (style.color, i) {
            (true, 4) if r.encryption == Encryption::Mtls => format!("\x1b[32m{padded}\x1b[0m"),
            (true, 4) => format!("\x1b[33m{padded}\x1b[0m"),
            (true, 5) if r.verdict != crate::flows::Verdict::Forwarded => format!("\x1b[31m{padded}\x1b[0m"),
            _ => padded,
        };
        if i > 0 {
            line.push(' ');
        }
        line.push_str(&painted);
    }
    line.trim_end().to_string()
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n}B") } else { format!("{value:.1}{}", UNITS[unit]) }
}

fn human_ms(ms: u64) -> String {
    if ms < 1000 { format!("{ms}ms") } else { format!("{:.1}s", ms as f64 / 1000.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_short() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(3 << 30), "3.0GiB");
        assert_eq!(human_ms(20), "20ms");
        assert_eq!(human_ms(1500), "1.5s");
    }
}
