//! lockmesh's test app: a small HTTP/1.1 server and client that run inside testbed pods.
//!
//! ```text
//! lockmesh-testapp serve --listen 0.0.0.0:8080 --name details     # logs every peer as JSON
//! lockmesh-testapp echo --listen 0.0.0.0:9000                      # reads to EOF, echoes, closes
//! lockmesh-testapp echo --listen 0.0.0.0:9001 --stream             # echoes as data arrives
//! lockmesh-testapp get --connect 10.77.2.2:8080 --path /bytes/1000 [--count N --interval-ms M]
//! lockmesh-testapp send --connect 10.77.2.2:9000 --bytes 1000      # half-close round trip
//! lockmesh-testapp hold --connect 10.77.2.2:8080 --count 200 [--parallel 16]  # many open connections
//! lockmesh-testapp connrate --connect 10.77.2.2:9000 --concurrency 64 --millis 2000 --bytes 1024 [--count N]
//! lockmesh-testapp pingpong --connect 10.77.2.2:9001 --bytes 1 --millis 2000   # RTT percentiles
//! lockmesh-testapp hold-server --listen 0.0.0.0:8080              # async: answers, then holds
//! lockmesh-testapp load --connect 10.77.2.2:8080 --stop-file F [--interval-ms 2]  # one line per request
//! ```
//! `load` (against `serve`): until the stop file exists, one `GET /` with `Connection: close` per
//! connection, then `--interval-ms`; logs each as `{"t": start (ms since the epoch), "ms": took,
//! "port": local port, "ok": 200 received, "error": kind}` (the chaos tests judge leaks and
//! outage windows from these).
//! `pingpong` (against `echo --stream`): one connection, TCP_NODELAY, send N bytes, wait for the N
//! echoed bytes, again; prints round-trip percentiles in µs after a short warm-up.
//! `connrate` (against `echo`): each of N threads loops connect, send, half-close, read the echo
//! to EOF, close (until `--millis` pass or `--count` connections were started); prints one JSON
//! result (rates, refusals, per-connection latency percentiles).
//! Server routes: `GET /` (hello + marker), `GET /bytes/N` (N pattern bytes), `GET /peer` (the
//! peer address the server sees), `POST /echo`. Keep-alive unless `Connection: close`.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lockmesh_tests::app::{MARKER, fill_pattern, hex};
use sha2::{Digest as _, Sha256};

fn main() {
    raise_fd_limit();
    if let Err(e) = run() {
        eprintln!("lockmesh-testapp: {e:#}");
        std::process::exit(1);
    }
}

struct Args(Vec<String>);

impl Args {
    fn value(&self, flag: &str) -> Option<&str> {
        self.0.iter().position(|a| a == flag).and_then(|i| self.0.get(i + 1)).map(String::as_str)
    }
    fn required(&self, flag: &str) -> anyhow::Result<&str> {
        self.value(flag).with_context(|| format!("missing {flag}"))
    }
    fn number(&self, flag: &str, default: u64) -> anyhow::Result<u64> {
        self.value(flag).map(|v| v.parse().with_context(|| format!("{flag} {v}"))).unwrap_or(Ok(default))
    }
}

fn run() -> anyhow::Result<()> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        bail!(
            "usage: lockmesh-testapp serve|echo|get|send|hold|connrate|pingpong|load [flags] (see the source header)"
        );
    }
    let command = argv.remove(0);
    let args = Args(argv);
    match command.as_str() {
        "serve" => {
            serve(args.required("--listen")?.parse()?, args.value("--name").unwrap_or("app").to_string())
        }
        "echo" if args.0.iter().any(|a| a == "--stream") => stream_echo(args.required("--listen")?.parse()?),
        "echo" => echo(args.required("--listen")?.parse()?),
        "pingpong" => pingpong(
            args.required("--connect")?.parse()?,
            args.number("--bytes", 1)?.max(1) as usize,
            Duration::from_millis(args.number("--millis", 1000)?),
        ),
        "get" => get(
            args.required("--connect")?.parse()?,
            args.value("--path").unwrap_or("/"),
            args.number("--count", 1)?,
            Duration::from_millis(args.number("--interval-ms", 0)?),
        ),
        "send" => send(args.required("--connect")?.parse()?, args.number("--bytes", 1000)?),
        "hold" => hold(
            args.required("--connect")?.parse()?,
            args.number("--count", 10)?,
            args.number("--seconds", 3600)?,
            args.number("--parallel", 1)?.max(1),
        ),
        "connrate" => connrate(
            args.required("--connect")?.parse()?,
            args.number("--concurrency", 1)?.max(1),
            Duration::from_millis(args.number("--millis", 1000)?),
            args.number("--bytes", 1024)? as usize,
            args.number("--count", u64::MAX)?,
        ),
        "hold-server" => hold_server(args.required("--listen")?.parse()?),
        "load" => load(
            args.required("--connect")?.parse()?,
            std::path::PathBuf::from(args.required("--stop-file")?),
            Duration::from_millis(args.number("--interval-ms", 2)?),
        ),
        other => bail!("unknown command {other}"),
    }
}

/// Tens of thousands of held connections need as many descriptors (root may raise the cap).
fn raise_fd_limit() {
    let wanted = libc::rlimit { rlim_cur: 1 << 20, rlim_max: 1 << 20 };
    // SAFETY: plain syscall with a valid struct; failure leaves the limit as it was.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) };
}

/// For tens of thousands of connections (a thread each would exceed `pid_max`): answers the
/// first request of each connection with a 200, then holds it until the client closes.
fn hold_server(listen: SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        log_line(serde_json::json!({"event": "listening", "addr": listen.to_string()}));
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").await.is_err() {
                    return;
                }
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    })
}

/// One JSON line per event on stdout (the test reads the app's log).
fn log_line(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn serve(listen: SocketAddr, name: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    log_line(serde_json::json!({"event": "listening", "addr": listen.to_string(), "name": name}));
    let name = Arc::new(name);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let name = name.clone();
        std::thread::spawn(move || {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let local = stream.local_addr().map(|a| a.to_string()).unwrap_or_default();
            log_line(serde_json::json!({"event": "accept", "peer": peer, "local": local}));
            if let Err(e) = handle(stream, &name, &peer) {
                log_line(serde_json::json!({"event": "error", "peer": peer, "error": format!("{e:#}")}));
            }
        });
    }
    Ok(())
}

fn handle(stream: TcpStream, name: &str, peer: &str) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut content_length = 0usize;
        let mut close = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        log_line(serde_json::json!({"event": "request", "peer": peer, "method": method, "path": path}));
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body)?;
        let connection = if close { "close" } else { "keep-alive" };
        match (method, path) {
            ("GET", "/") => {
                respond(&mut writer, 200, connection, format!("hello from {name} {MARKER}\n").as_bytes())?
            }
            ("GET", "/peer") => respond(&mut writer, 200, connection, peer.as_bytes())?,
            ("POST", "/echo") => respond(&mut writer, 200, connection, &body)?,
            ("GET", p) if p.starts_with("/bytes/") => {
                let n: u64 = p["/bytes/".len()..].parse().unwrap_or(0);
                write!(writer, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: {connection}\r\n\r\n")?;
                let mut buf = vec![0u8; 1 << 16];
                let mut offset = 0u64;
                while offset < n {
                    let len = (n - offset).min(buf.len() as u64) as usize;
                    fill_pattern(&mut buf[..len], offset);
                    writer.write_all(&buf[..len])?;
                    offset += len as u64;
                }
            }
            _ => respond(&mut writer, 404, connection, b"not found\n")?,
        }
        if close {
            return Ok(());
        }
    }
}

fn respond(w: &mut TcpStream, status: u16, connection: &str, body: &[u8]) -> anyhow::Result<()> {
    let reason = if status == 200 { "OK" } else { "Not Found" };
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    )?;
    w.write_all(body)?;
    Ok(())
}

/// Reads until the client half-closes, then echoes everything and closes.
fn echo(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    log_line(serde_json::json!({"event": "listening", "addr": listen.to_string()}));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            log_line(serde_json::json!({"event": "accept", "peer": peer}));
            let mut data = Vec::new();
            if stream.read_to_end(&mut data).is_ok() {
                let _ = stream.write_all(&data);
                let _ = stream.shutdown(Shutdown::Write);
                log_line(serde_json::json!({"event": "echoed", "peer": peer, "bytes": data.len()}));
            }
        });
    }
    Ok(())
}

/// `count` sequential requests on one keep-alive connection, `interval` apart; prints one JSON
/// result.
fn get(addr: SocketAddr, path: &str, count: u64, interval: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let peer = stream.peer_addr()?.to_string();
    let local = stream.local_addr()?.to_string();
    let mut reader = BufReader::with_capacity(1 << 16, stream.try_clone()?);
    let mut writer = stream;
    let mut hasher = Sha256::new();
    let (mut status, mut total) = (0u16, 0u64);
    let mut body_text = Vec::new();
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(interval);
        }
        let connection = if i + 1 == count { "close" } else { "keep-alive" };
        write!(writer, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: {connection}\r\n\r\n")?;
        let mut status_line = String::new();
        reader.read_line(&mut status_line)?;
        status =
            status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("bad status line")?;
        let mut length = 0u64;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end().to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
        }
        let mut remaining = length;
        let mut buf = vec![0u8; 1 << 16];
        while remaining > 0 {
            let want = remaining.min(buf.len() as u64) as usize;
            let n = reader.read(&mut buf[..want])?;
            if n == 0 {
                bail!("connection closed with {remaining} body bytes missing");
            }
            hasher.update(&buf[..n]);
            if body_text.len() < 4096 {
                body_text.extend_from_slice(&buf[..n.min(4096)]);
            }
            remaining -= n as u64;
            total += n as u64;
        }
    }
    log_line(serde_json::json!({
        "status": status,
        "bytes": total,
        "sha256": hex(&hasher.finalize()),
        "peer": peer,
        "local": local,
        "connect_ms": connect_ms,
        "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
        "body": String::from_utf8_lossy(&body_text),
    }));
    Ok(())
}

/// Sends `n` pattern bytes, half-closes, reads the echo to EOF; prints one JSON result.
fn send(addr: SocketAddr, n: u64) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut sent_hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    while offset < n {
        let len = (n - offset).min(buf.len() as u64) as usize;
        fill_pattern(&mut buf[..len], offset);
        stream.write_all(&buf[..len])?;
        sent_hash.update(&buf[..len]);
        offset += len as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed)?;
    log_line(serde_json::json!({
        "sent": n,
        "received": echoed.len(),
        "sent_sha256": hex(&sent_hash.finalize()),
        "received_sha256": hex(&Sha256::digest(&echoed)),
    }));
    Ok(())
}

/// Opens `count` keep-alive connections (`parallel` threads opening them), makes one request on
/// each, keeps them open for `seconds` (or until killed), then closes them; prints how many
/// worked.
fn hold(addr: SocketAddr, count: u64, seconds: u64, parallel: u64) -> anyhow::Result<()> {
    let results = Arc::new(Mutex::new((0u64, 0u64)));
    let openers: Vec<_> = (0..parallel)
        .map(|i| {
            let results = results.clone();
            // An even share per thread.
            let share = count / parallel + u64::from(i < count % parallel);
            std::thread::spawn(move || {
                let mut streams = Vec::new();
                for _ in 0..share {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                        Ok(mut s) => {
                            let ok = write!(s, "GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").is_ok()
                                && read_response_head(&mut s);
                            if let Ok(mut r) = results.lock() {
                                if ok { r.0 += 1 } else { r.1 += 1 }
                            }
                            streams.push(s);
                        }
                        Err(_) => {
                            if let Ok(mut r) = results.lock() {
                                r.1 += 1;
                            }
                        }
                    }
                }
                streams
            })
        })
        .collect();
    let mut streams = Vec::new();
    for opener in openers {
        streams.extend(opener.join().map_err(|_| anyhow::anyhow!("opener panicked"))?);
    }
    let (ok, failed) = results.lock().map(|r| *r).unwrap_or_default();
    log_line(serde_json::json!({"event": "holding", "ok": ok, "failed": failed}));
    std::thread::sleep(Duration::from_secs(seconds));
    drop(streams);
    Ok(())
}

fn read_response_head(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            return false;
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.ends_with(b"\n") {
            return seen.starts_with(b"HTTP/1.1 200");
        }
    }
    false
}

#[derive(Default)]
struct RateTally {
    ok: u64,
    /// Connection refused or reset (what a STRICT destination does to plaintext).
    refused: u64,
    /// Timeouts, short echoes and other errors.
    errors: u64,
    latencies_us: Vec<u64>,
}

/// One connection: connect, send `request`, half-close, read the echo to EOF.
fn one_transaction(addr: SocketAddr, request: &[u8]) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request)?;
    stream.shutdown(Shutdown::Write)?;
    let mut buf = [0u8; 4096];
    let mut got = 0;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(got == request.len());
        }
        got += n;
    }
}

/// One logged `GET /` per connection until `stop_file` appears (or an hour passes).
fn load(addr: SocketAddr, stop_file: std::path::PathBuf, interval: Duration) -> anyhow::Result<()> {
    log_line(serde_json::json!({"event": "listening", "load": addr.to_string()}));
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !stop_file.exists() && Instant::now() < deadline {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
        let started = Instant::now();
        let mut port = 0;
        let result = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut stream| {
            port = stream.local_addr()?.port();
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(b"GET / HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n")?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response)?;
            Ok(response.starts_with(b"HTTP/1.1 200"))
        });
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let (ok, error) = match result {
            Ok(true) => (true, None),
            Ok(false) => (false, Some("bad response".to_string())),
            Err(e) => (false, Some(format!("{:?}", e.kind()))),
        };
        log_line(serde_json::json!({"t": t, "ms": ms, "port": port, "ok": ok, "error": error}));
        std::thread::sleep(interval);
    }
    Ok(())
}

/// `concurrency` threads each run transactions back to back for `duration`.
fn connrate(
    addr: SocketAddr,
    concurrency: u64,
    duration: Duration,
    bytes: usize,
    count: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + duration;
    let request = Arc::new(vec![b'x'; bytes]);
    // Connections started so far, to stop at `count`.
    let started_connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let request = request.clone();
            let started_connections = started_connections.clone();
            std::thread::spawn(move || {
                let mut tally = RateTally::default();
                while Instant::now() < deadline
                    && started_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count
                {
                    let t = Instant::now();
                    match one_transaction(addr, &request) {
                        Ok(true) => {
                            tally.ok += 1;
                            tally.latencies_us.push(t.elapsed().as_micros() as u64);
                        }
                        Ok(false) => tally.errors += 1,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                            ) =>
                        {
                            tally.refused += 1
                        }
                        Err(_) => tally.errors += 1,
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = RateTally::default();
    for worker in workers {
        let tally = worker.join().map_err(|_| anyhow::anyhow!("worker panicked"))?;
        total.ok += tally.ok;
        total.refused += tally.refused;
        total.errors += tally.errors;
        total.latencies_us.extend(tally.latencies_us);
    }
    let seconds = started.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        let n = total.latencies_us.len();
        (n > 0).then(|| total.latencies_us[((n as f64 * p) as usize).min(n - 1)] as f64 / 1000.0)
    };
    log_line(serde_json::json!({
        "ok": total.ok,
        "refused": total.refused,
        "errors": total.errors,
        "seconds": seconds,
        "per_sec": total.ok as f64 / seconds,
        "refused_per_sec": total.refused as f64 / seconds,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
    }));
    Ok(())
}

/// Echoes whatever arrives, as it arrives, until the peer closes.
fn stream_echo(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    log_line(serde_json::json!({"event": "listening", "addr": listen.to_string()}));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// Round trips of `bytes` on one connection for `duration` (after a warm-up of a tenth of it).
fn pingpong(addr: SocketAddr, bytes: usize, duration: Duration) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let message = vec![b'p'; bytes];
    let mut reply = vec![0u8; bytes];
    let warmup_end = Instant::now() + duration / 10;
    let mut rtts_ns: Vec<u64> = Vec::with_capacity(1 << 16);
    let mut measuring_since = None;
    loop {
        let t = Instant::now();
        if t >= warmup_end {
            let since = *measuring_since.get_or_insert(t);
            if t.duration_since(since) >= duration {
                break;
            }
        }
        stream.write_all(&message)?;
        stream.read_exact(&mut reply).context("reading the echo")?;
        if measuring_since.is_some() {
            rtts_ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    if rtts_ns.is_empty() {
        bail!("no round trip completed");
    }
    rtts_ns.sort_unstable();
    let n = rtts_ns.len();
    let pct = |p: f64| rtts_ns[((n as f64 * p) as usize).min(n - 1)] as f64 / 1000.0;
    log_line(serde_json::json!({
        "count": n,
        "mean_us": rtts_ns.iter().sum::<u64>() as f64 / n as f64 / 1000.0,
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": rtts_ns[n - 1] as f64 / 1000.0,
    }));
    Ok(())
}
