//! A tiny blocking HTTP/1.1 client for tests, able to connect from inside a namespace.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;

use crate::netns;

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).with_context(|| format!("parsing JSON: {}", self.text()))
    }
}

/// Opens a TCP connection from inside the namespace `ns`.
pub fn connect_in(ns: &Path, addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    netns::run_in(ns, move || TcpStream::connect_timeout(&addr, timeout))?
        .with_context(|| format!("connecting to {addr} from {}", ns.display()))
}

/// `GET path` with `Connection: close`, from inside `ns`.
pub fn get_in(ns: &Path, addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    request_in(ns, addr, "GET", path, None)
}

/// `method path` with an optional JSON body and `Connection: close`, from inside `ns`.
pub fn request_in(
    ns: &Path,
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&[u8]>,
) -> anyhow::Result<Response> {
    let mut stream = connect_in(ns, addr, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = json {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(json.unwrap_or_default())?;
    let raw = read_response(&mut stream)
        .with_context(|| format!("reading the response of {method} {addr}{path}"))?;
    parse(&raw).with_context(|| format!("{method} {addr}{path}"))
}

/// Reads to the end of the body: `Content-Length` bytes after the headers when given (some
/// servers, chromedriver among them, keep the connection open despite `Connection: close`),
/// else to EOF.
fn read_response(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| raw.len() >= head_end + 4 + n) {
                return Ok(raw);
            }
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

fn parse(raw: &[u8]) -> anyhow::Result<Response> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line: {head}"))?;
    let mut body = raw[head_end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").context("bad chunk")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).context("short chunk")?);
        data = data.get(size + 2..).context("short chunk")?;
    }
}
