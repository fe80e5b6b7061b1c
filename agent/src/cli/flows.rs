//! `lockmesh flows`: the flows a running agent reports (or an audit log holds), filtered, as a
//! table, JSON lines or compact lines.
mod filter;

use std::{
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use http_body_util::BodyExt as _;

use self::filter::FlowFilter;
use super::admin_client;
use crate::report::flows::{Encryption, Endpoint, FlowRecord, Verdict};

#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// The agent's admin endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// Read audit-log files (`lockmesh agent --audit-log`) instead of asking a running agent.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "follow")]
    pub file: Vec<PathBuf>,

    /// Output: an aligned table, one JSON object per line, or one short line per flow.
    #[arg(short, long, value_enum, default_value_t = FlowsOutput::Table)]
    pub output: FlowsOutput,

    /// Keep running and print flows as they open and close.
    #[arg(short, long)]
    pub follow: bool,

    /// Only the last N matching flows (then, with --follow, new ones).
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,

    /// Either end in this namespace (repeatable: any of them).
    #[arg(long, value_name = "NS")]
    pub namespace: Vec<String>,

    /// Either end is this workload (`name` or `namespace/name`).
    #[arg(long, value_name = "WORKLOAD")]
    pub workload: Vec<String>,

    /// The client is this workload.
    #[arg(long, value_name = "WORKLOAD")]
    pub from_workload: Vec<String>,

    /// The server is this workload.
    #[arg(long, value_name = "WORKLOAD")]
    pub to_workload: Vec<String>,

    /// The client's address is in this IPv4 address or CIDR.
    #[arg(long, value_name = "CIDR", value_parser = filter::parse_cidr)]
    pub from_ip: Vec<filter::Cidr>,

    /// The server's address is in this IPv4 address or CIDR.
    #[arg(long, value_name = "CIDR", value_parser = filter::parse_cidr)]
    pub to_ip: Vec<filter::Cidr>,

    /// Either end has this SPIFFE identity (full URI, or a part such as `sa/details`).
    #[arg(long, value_name = "ID")]
    pub identity: Vec<String>,

    /// forwarded, reset, denied or error.
    #[arg(long, value_parser = filter::parse_verdict)]
    pub verdict: Vec<Verdict>,

    /// mtls or plaintext.
    #[arg(long, value_parser = filter::parse_encryption)]
    pub encryption: Option<Encryption>,

    /// Either end's port.
    #[arg(long)]
    pub port: Vec<u16>,

    /// Flows active at or after this time: RFC 3339 or a time ago (`5m`, `2h`).
    #[arg(long, value_name = "TIME", value_parser = filter::parse_time_now)]
    pub since: Option<time::OffsetDateTime>,

    /// Flows started at or before this time: RFC 3339 or a time ago.
    #[arg(long, value_name = "TIME", value_parser = filter::parse_time_now)]
    pub until: Option<time::OffsetDateTime>,
}

impl FlowsArgs {
    pub fn filter(&self) -> filter::FlowFilter {
        filter::FlowFilter {
            namespace: self.namespace.clone(),
            workload: self.workload.clone(),
            from_workload: self.from_workload.clone(),
            to_workload: self.to_workload.clone(),
            from_ip: self.from_ip.clone(),
            to_ip: self.to_ip.clone(),
            identity: self.identity.clone(),
            verdict: self.verdict.clone(),
            encryption: self.encryption,
            port: self.port.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlowsOutput {
    Table,
    Json,
    Compact,
}

pub(super) async fn run(args: FlowsArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let style = Style { color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() };
    let filter = args.filter();
    if args.output == FlowsOutput::Table {
        writeln!(out, "{}", header())?;
    }
    if args.file.is_empty() && args.follow {
        return follow(&args, &filter, &mut out, style).await;
    }
    let records = admin_client::flow_records(args.admin, &args.file).await?;
    let matching: Vec<FlowRecord> = records.into_iter().filter(|r| filter.matches(r)).collect();
    let shown = filter::last(matching, args.last);
    for record in &shown {
        print_record(&mut out, record, args.output, style)?;
    }
    if args.output == FlowsOutput::Table && args.file.is_empty() {
        let status = admin_client::get_bytes(args.admin, "/readyz")
            .await
            .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).context("parsing /readyz"));
        writeln!(out, "{}", footer(shown.len(), status))?;
    }
    Ok(())
}

/// What the table cannot show: events the kernel dropped, flows the agent forgot.
fn footer(shown: usize, status: anyhow::Result<serde_json::Value>) -> String {
    let status = match status {
        Ok(status) => status,
        Err(e) => return format!("{shown} flows shown · agent counters unavailable: {e:#}"),
    };
    let number = |path: &[&str]| path.iter().fold(&status, |v, key| &v[key]).as_u64().unwrap_or(0);
    let dropped = number(&["kernel", "ring_buffer_drops"]);
    let mut text = format!(
        "{shown} flows shown · kernel events: {} received, {dropped} dropped · flows evicted: {} open, {} closed · closes without open: {}",
        number(&["kernel_events_received"]),
        number(&["flows", "evicted_open"]),
        number(&["flows", "evicted_closed"]),
        number(&["flows", "unmatched_closes"]),
    );
    if dropped > 0 {
        text.push_str(&format!(
            "\nwarning: the kernel dropped {dropped} flow events (ring buffer full), so flows are missing; raise --ring-buffer-bytes"
        ));
    }
    text
}

/// `--follow`: the agent's table, then every change. With `--last`, the table is fetched on its
/// own (to cut it) after subscribing, and records of it that come again are skipped.
async fn follow(
    args: &FlowsArgs,
    filter: &FlowFilter,
    out: &mut impl std::io::Write,
    style: Style,
) -> anyhow::Result<()> {
    let path = if args.last.is_some() { "/flows?follow=true&snapshot=false" } else { "/flows?follow=true" };
    // Subscribed once the response starts.
    let response = admin_client::get(args.admin, path).await?;
    let mut seen = std::collections::HashSet::new();
    if args.last.is_some() {
        let body = admin_client::get_bytes(args.admin, "/flows").await?;
        let table: Vec<FlowRecord> = serde_json::from_slice(&body).context("parsing /flows")?;
        seen.extend(table.iter().map(|r| (r.id.clone(), r.is_open())));
        let matching: Vec<FlowRecord> = table.into_iter().filter(|r| filter.matches(r)).collect();
        for record in &filter::last(matching, args.last) {
            print_record(out, record, args.output, style)?;
        }
        out.flush()?;
    }
    let mut body = response.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the /flows stream")?;
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let record: FlowRecord = serde_json::from_slice(&line).context("parsing a /flows line")?;
            if seen.remove(&(record.id.clone(), record.is_open())) || !filter.matches(&record) {
                continue;
            }
            print_record(out, &record, args.output, style)?;
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
        FlowsOutput::Compact => writeln!(out, "{}", compact(record, style))?,
    }
    Ok(())
}

const COLUMNS: [(&str, usize); 8] = [
    ("START", 12),
    ("NODE", 8),
    ("SOURCE", 40),
    ("DESTINATION", 40),
    ("ENCRYPTION", 13),
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
        Encryption::Plaintext => "🔓 plaintext".to_string(),
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
        // The locks are two columns wide.
        let width = if cell.contains('🔒') || cell.contains('🔓') { width - 1 } else { width };
        let padded = format!("{cell:<width$}");
        let painted = match (style.color, i) {
            (true, 4) if r.encryption == Encryption::Mtls => format!("\x1b[32m{padded}\x1b[0m"),
            (true, 4) => format!("\x1b[33m{padded}\x1b[0m"),
            (true, 5) if r.verdict != Verdict::Forwarded => format!("\x1b[31m{padded}\x1b[0m"),
            _ => padded,
        };
        if i > 0 {
            line.push(' ');
        }
        line.push_str(&painted);
    }
    line.trim_end().to_string()
}

/// One short line: `15:04:05.123 node1 ns/src 10.0.0.1:40000 -> ns/dst 10.0.0.2:8080 🔒 forwarded 1.2KiB/20B`.
fn compact(r: &FlowRecord, style: Style) -> String {
    let time = r
        .start
        .format(time::macros::format_description!("[hour]:[minute]:[second].[subsecond digits:3]"))
        .unwrap_or_default();
    let lock = match r.encryption {
        Encryption::Mtls => "🔒",
        Encryption::Plaintext => "🔓",
    };
    let verdict = match (style.color, r.verdict) {
        (true, Verdict::Forwarded) => format!("\x1b[32m{}\x1b[0m", r.verdict),
        (true, v) => format!("\x1b[31m{v}\x1b[0m"),
        (false, v) => v.to_string(),
    };
    let state = if r.is_open() { " open" } else { "" };
    format!(
        "{time} {} {} -> {} {lock} {} {verdict} {}/{}{state}",
        r.node,
        endpoint(&r.src),
        endpoint(&r.dst),
        r.encryption,
        human_bytes(r.bytes_sent),
        human_bytes(r.bytes_received)
    )
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
mod tests;
