//! Copying between an app's TCP connection and an HBONE stream, both ways, with half-close:
//! the app's EOF becomes END_STREAM, the peer's END_STREAM becomes a TCP shutdown(WR), and a
//! reset on either side resets the other.
//!
//! Each read goes into a buffer allocated once the socket is readable and handed to h2 without
//! copying; it is freed when h2 has written it, so an idle connection holds no buffer.
use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tokio_util::sync::CancellationToken;

/// Most bytes read from the app per read call (also the most h2 is asked to buffer per stream).
const CHUNK: usize = 256 * 1024;
/// First read size; a read that fills it switches to `CHUNK` (bulk), a short one back.
const SMALL_CHUNK: usize = 16 * 1024;

/// How a copy ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Copied {
    /// App → peer.
    pub sent: u64,
    /// Peer → app.
    pub received: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("app connection: {0}")]
    App(#[from] std::io::Error),
    #[error("tunnel stream: {0}")]
    Tunnel(#[from] h2::Error),
    #[error("tunnel stream closed by the peer")]
    TunnelClosed,
}

/// What the app wrote while its CONNECT was unanswered, already sent behind the CONNECT.
#[derive(Debug)]
pub(super) enum Early {
    /// The answer came first.
    Nothing,
    /// This many bytes went out.
    Sent(u64),
    /// The app half-closed: END_STREAM went out.
    Eof,
    /// Reading from the app, or sending what it wrote, failed.
    Failed(CopyError),
}

/// Waits for `answer` (the peer's answer to the CONNECT) and meanwhile sends the app's first
/// read behind the CONNECT, so that a request does not wait a round trip for the answer. At
/// most one read (`SMALL_CHUNK` bytes) goes out unanswered: a refused stream discards no more.
pub(super) async fn while_answering<T>(
    tcp: &TcpStream,
    send: &mut SendStream<Bytes>,
    answer: impl Future<Output = T>,
) -> (T, Early) {
    let mut answer = std::pin::pin!(answer);
    let readable = tokio::select! {
        biased;
        answered = &mut answer => return (answered, Early::Nothing),
        readable = tcp.readable() => readable,
    };
    // The read and its send run to the end, not raced against the answer (which could cut a
    // send in half); the stream's initial window has room for them, so nothing waits.
    let early = match readable {
        Ok(()) => match forward_once(tcp, send, SMALL_CHUNK).await {
            Ok(Forwarded::Data { bytes, .. }) => Early::Sent(bytes as u64),
            Ok(Forwarded::End) => Early::Eof,
            Ok(Forwarded::Nothing) => Early::Nothing,
            Err(e) => Early::Failed(e),
        },
        Err(e) => Early::Failed(e.into()),
    };
    (answer.await, early)
}

/// Copies until both directions are done, after what `early` already sent; returns the byte
/// counts (`early`'s included) and the first error.
pub(super) async fn bidirectional(
    tcp: &mut TcpStream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    early: Early,
) -> (Copied, Option<CopyError>) {
    let (mut sent, app_done) = match early {
        Early::Nothing => (0, false),
        Early::Sent(n) => (n, false),
        Early::Eof => (0, true),
        Early::Failed(error) => {
            send.send_reset(Reason::CANCEL);
            return (Copied::default(), Some(error));
        }
    };
    let cancel = CancellationToken::new();
    let (mut read, mut write) = tcp.split();
    let mut received = 0u64;
    let up = async {
        if app_done {
            return Ok(());
        }
        let result = tcp_to_h2(&mut read, &mut send, &mut sent).await;
        if result.is_err() {
            // The app went away abruptly: tell the peer, stop the other direction.
            send.send_reset(Reason::CANCEL);
            cancel.cancel();
        }
        result
    };
    let down = async {
        let result = tokio::select! {
            r = h2_to_tcp(&mut recv, &mut write, &mut received) => r,
            _ = cancel.cancelled() => Ok(()),
        };
        if result.is_err() {
            cancel.cancel();
        }
        result
    };
    let up = async {
        tokio::select! {
            r = up => r,
            _ = cancel.cancelled() => Ok(()),
        }
    };
    let (up, down) = tokio::join!(up, down);
    (Copied { sent, received }, up.err().or(down.err()))
}

async fn tcp_to_h2(
    read: &mut tokio::net::tcp::ReadHalf<'_>,
    send: &mut SendStream<Bytes>,
    total: &mut u64,
) -> Result<(), CopyError> {
    let mut size = SMALL_CHUNK;
    loop {
        match forward_once(read.as_ref(), send, size).await? {
            Forwarded::Data { bytes, filled } => {
                *total += bytes as u64;
                size = if filled { CHUNK } else { SMALL_CHUNK };
            }
            Forwarded::End => return Ok(()),
            Forwarded::Nothing => {}
        }
    }
}

/// What one read from the app became.
enum Forwarded {
    /// Bytes read and sent; `filled`: the read filled its buffer (more is likely waiting).
    Data { bytes: usize, filled: bool },
    /// The app's EOF, sent as END_STREAM.
    End,
    /// A spurious wake-up: nothing to read.
    Nothing,
}

/// Waits until the app's socket is readable, reads once into a fresh buffer of `size` bytes
/// and sends what it read within the peer's flow-control window.
async fn forward_once(
    tcp: &TcpStream,
    send: &mut SendStream<Bytes>,
    size: usize,
) -> Result<Forwarded, CopyError> {
    // No buffer while the app is quiet: an idle connection holds none (RSS per idle
    // connection), and a busy one gets a fresh one per read anyway, because the previous one
    // is still in h2's hands until written.
    tcp.readable().await?;
    let mut buf = BytesMut::with_capacity(size);
    let bytes = match tcp.try_read_buf(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Forwarded::Nothing),
        Err(e) => return Err(e.into()),
    };
    if bytes == 0 {
        send.send_data(Bytes::new(), true)?;
        return Ok(Forwarded::End);
    }
    let filled = bytes == buf.capacity();
    let mut chunk = buf.freeze();
    while !chunk.is_empty() {
        // Respect the peer's flow-control window instead of letting h2 buffer without bound.
        send.reserve_capacity(chunk.len());
        let capacity = poll_fn(|cx| send.poll_capacity(cx)).await.ok_or(CopyError::TunnelClosed)??;
        if capacity == 0 {
            continue;
        }
        send.send_data(chunk.split_to(capacity.min(chunk.len())), false)?;
    }
    Ok(Forwarded::Data { bytes, filled })
}

async fn h2_to_tcp(
    recv: &mut RecvStream,
    write: &mut tokio::net::tcp::WriteHalf<'_>,
    total: &mut u64,
) -> Result<(), CopyError> {
    while let Some(data) = recv.data().await {
        let data = data?;
        write.write_all(&data).await?;
        *total += data.len() as u64;
        let _ = recv.flow_control().release_capacity(data.len());
    }
    write.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests;
