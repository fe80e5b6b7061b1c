//! Packet captures with tcpdump on a testbed interface, to prove from the outside what crossed
//! the wire.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};

use crate::{netns, process::ChildGuard};

pub struct Capture {
    process: ChildGuard,
    file: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i <iface> <filter>` inside `ns`, writing full packets to `file`.
    pub fn start(ns: &std::path::Path, iface: &str, filter: &str, file: PathBuf) -> anyhow::Result<Self> {
        let mut command = netns::command_in(ns, "tcpdump")?;
        command
            // Immediate mode retires a ring block per packet and blocks are snaplen-sized: with
            // `-s 0` (256 KiB) the default 2 MiB ring held 8 packets, and a loaded machine
            // dropped the rest. 64 KiB snaplen (a whole GRO packet) and a 64 MiB ring.
            .args(["-i", iface, "-s", "65535", "-B", "65536", "-U", "--immediate-mode", "-n", "-w"])
            .arg(&file)
            .args(filter.split_whitespace());
        let log = file.with_extension("log");
        let mut process = ChildGuard::spawn("tcpdump", command, log)?;
        // tcpdump says "listening on" once the capture is armed.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !process.log().contains("listening on") {
            if !process.is_running() || std::time::Instant::now() > deadline {
                bail!("tcpdump did not start: {}", process.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { process, file })
    }

    /// Stops the capture and returns the raw pcap bytes.
    pub fn finish(mut self) -> anyhow::Result<CaptureResult> {
        // Let in-flight packets land before stopping: on a loaded machine tcpdump can lag well
        // behind the wire, and a stop drops what it has not written yet. Wait until the file has
        // stopped growing for a while (bounded).
        let size = || std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
        let (started, mut last, mut stable_since) =
            (std::time::Instant::now(), size(), std::time::Instant::now());
        while stable_since.elapsed() < Duration::from_millis(300)
            && started.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
            let now = size();
            if now != last {
                (last, stable_since) = (now, std::time::Instant::now());
            }
        }
        self.process.stop();
        // A capture that missed packets proves nothing about what crossed the wire.
        let log = self.process.log();
        if let Some(line) = log.lines().find(|l| l.contains("dropped by kernel"))
            && !line.trim_start().starts_with("0 ")
        {
            bail!("tcpdump missed packets ({line}); the capture cannot be trusted");
        }
        let bytes = std::fs::read(&self.file).with_context(|| format!("reading {}", self.file.display()))?;
        let summary = std::process::Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(&self.file)
            .output()
            .context("tcpdump -r")?;
        Ok(CaptureResult { pcap: bytes, summary: String::from_utf8_lossy(&summary.stdout).into_owned() })
    }
}

pub struct CaptureResult {
    pub pcap: Vec<u8>,
    /// `tcpdump -nn -r` output, one line per packet.
    pub summary: String,
}

impl CaptureResult {
    /// Whether `needle` appears anywhere in the captured bytes (headers and payloads).
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.pcap.windows(needle.len()).any(|w| w == needle)
    }

    /// Packets whose summary line mentions `.<port>` as source or destination port.
    pub fn packets_on_port(&self, port: u16) -> usize {
        let pattern = format!(".{port}");
        self.summary
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w.trim_end_matches(':').ends_with(&pattern)))
            .count()
    }

    pub fn packet_count(&self) -> usize {
        self.summary.lines().count()
    }
}
