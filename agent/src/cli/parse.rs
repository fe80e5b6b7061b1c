//! Parsers of flag values the commands share: durations, STRICT exemptions, map sizes.
use std::time::Duration;

use crate::{desired::maps::StrictExemption, kernel::RESIZABLE_MAPS};

/// `10.0.0.1` or `10.0.0.1:8080`.
pub(super) fn parse_exemption(text: &str) -> Result<StrictExemption, String> {
    if let Ok(addr) = text.parse::<std::net::SocketAddrV4>() {
        return Ok(StrictExemption { source: *addr.ip(), port: addr.port() });
    }
    text.parse()
        .map(|source| StrictExemption { source, port: 0 })
        .map_err(|_| format!("{text:?}: expected IP or IP:PORT"))
}

/// `250ms`, `6s`, `30m`, `24h` or a number of seconds.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 30s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h, d)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses `NAME=N` of `--bpf-map-entries`.
pub(super) fn parse_map_entries(text: &str) -> Result<(String, u32), String> {
    let (name, entries) = text.split_once('=').ok_or_else(|| format!("{text:?}: expected NAME=ENTRIES"))?;
    let name = name.trim().to_uppercase();
    if !RESIZABLE_MAPS.contains(&name.as_str()) {
        let hint = match name.as_str() {
            "ENROLLED" => " (use --max-enrolled)",
            "FLOW_EVENTS" => " (use --ring-buffer-bytes)",
            _ => "",
        };
        return Err(format!("{name}: not a resizable map{hint}; one of {}", RESIZABLE_MAPS.join(", ")));
    }
    let entries: u32 = entries.trim().parse().map_err(|e| format!("{text:?}: {e}"))?;
    if entries == 0 {
        return Err(format!("{name}: needs at least 1 entry"));
    }
    Ok((name, entries))
}

#[cfg(test)]
mod tests;

/// `--probe-snat`: an IPv4 address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSnatAddress(pub Option<std::net::Ipv4Addr>);

pub(super) fn parse_probe_snat(text: &str) -> Result<ProbeSnatAddress, String> {
    if text == "off" {
        return Ok(ProbeSnatAddress(None));
    }
    text.parse().map(|ip| ProbeSnatAddress(Some(ip))).map_err(|_| {
        format!("{text:?}: expected an IPv4 address (Istio ambient uses 169.254.7.127) or `off`")
    })
}
