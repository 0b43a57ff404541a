//! The raw byte-stream server: transport connections handed to callbacks,
//! with no Plexus framing, handshake or flow control of any kind.
//!
//! Each accepted connection gets one task that calls `on_connect`, then
//! `on_bytes` for every chunk read, then the close callbacks — in that
//! order, never two at once for one connection — and a writer task that
//! writes queued buffers in order and completes each [`Written`] once its
//! bytes are handed to the transport. This module never interprets the
//! bytes it moves.

use std::fmt;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::transport::{
    self, Connected, TlsConfig, TransportConfig, TransportError, Url, WriteHalf,
};

/// One connection of a [`RawServer`], numbered from 1 in accept order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawId(u64);

impl RawId {
    /// The connection's number within its server.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RawId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raw connection #{}", self.0)
    }
}

/// Why a raw connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RawCloseReason {
    /// The peer closed its side (end of stream).
    PeerClosed,
    /// [`RawHandle::close`] was called.
    Closed,
    /// [`RawServer::stop`] was called (or the server was dropped).
    Stopped,
    /// Reading or writing failed.
    Io(String),
    /// A callback panicked; the connection was closed so it cannot panic again.
    CallbackPanicked(String),
}

impl fmt::Display for RawCloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawCloseReason::PeerClosed => f.write_str("the peer closed the connection"),
            RawCloseReason::Closed => f.write_str("closed by this side"),
            RawCloseReason::Stopped => f.write_str("the server stopped"),
            RawCloseReason::Io(m) => write!(f, "transport error: {m}"),
            RawCloseReason::CallbackPanicked(m) => write!(f, "a callback panicked: {m}"),
        }
    }
}

/// Every way starting a raw server or writing to one of its connections
/// can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RawError {
    /// Binding the URL failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The connection is closed (or closing); the bytes were not written.
    #[error("{id} ({remote}) is closed; the bytes were not written — stop writing once on_close has run")]
    Closed {
        /// The connection.
        id: RawId,
        /// The peer's address.
        remote: Arc<str>,
    },
    /// Too many bytes already wait to be written to this connection.
    #[error(
        "{id} ({remote}): {queued} bytes already wait to be written (limit {limit}); \
         the peer reads slowly — await RawHandle::writable() before writing more"
    )]
    Backlog {
        /// The connection.
        id: RawId,
        /// The peer's address.
        remote: Arc<str>,
        /// Bytes waiting.
        queued: usize,
        /// The limit ([`RawServerBuilder::write_backlog`]).
        limit: usize,
    },
    /// The transport refused the bytes; the connection is closed.
    #[error("{id} ({remote}): write failed: {source}")]
    Write {
        /// The connection.
        id: RawId,
        /// The peer's address.
        remote: Arc<str>,
        /// What the operating system said.
        #[source]
        source: Arc<io::Error>,
    },
}

/// Counters of a raw server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RawStats {
    /// Connections open right now.
    pub open: usize,
    /// Connections accepted so far (refused ones not counted).
    pub accepted: u64,
    /// Connections closed at once because the server was at its limit.
    pub refused: u64,
}

type ConnectFn = dyn Fn(RawHandle) -> Box<dyn FnOnce(&RawCloseReason) + Send> + Send + Sync;
type BytesFn = dyn Fn(&RawHandle, Bytes) + Send + Sync;
type CloseFn = dyn Fn(RawId, &RawCloseReason) + Send + Sync;

/// A buffer on its way to the writer task.
struct Pending {
    bytes: Bytes,
    done: oneshot::Sender<Result<(), RawError>>,
}

/// One connection's shared state: the writer's queue and how it ended.
struct Conn {
    id: RawId,
    remote: Arc<str>,
    writes: mpsc::UnboundedSender<Pending>,
    /// Bytes queued and not yet written; `write` refuses above `limit`.
    backlog: AtomicUsize,
    limit: usize,
    drained: Notify,
    close: CancellationToken,
    reason: OnceLock<RawCloseReason>,
}

impl Conn {
    /// Ends the connection for `reason` (the first reason wins).
    fn end(&self, reason: RawCloseReason) {
        let _ = self.reason.set(reason);
        self.close.cancel();
    }

    fn closed_error(&self) -> RawError {
        RawError::Closed {
            id: self.id,
            remote: self.remote.clone(),
        }
    }
}

/// A connection of a [`RawServer`]: its id, and writing to and closing it.
/// Cheap to clone; keep one to write from anywhere.
#[derive(Clone)]
pub struct RawHandle {
    conn: Arc<Conn>,
}

impl fmt::Debug for RawHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawHandle")
            .field("id", &self.conn.id)
            .field("remote", &self.conn.remote)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl RawHandle {
    /// The connection's id, as `on_bytes` and `on_close` name it.
    pub fn id(&self) -> RawId {
        self.conn.id
    }

    /// The peer's address as the transport sees it.
    pub fn remote(&self) -> &str {
        &self.conn.remote
    }

    /// Queues `bytes` for writing, now — writes go out in the order of the
    /// calls — and returns a future that resolves once the bytes were
    /// handed to the transport (the operating system's socket buffer, for
    /// `tcp`, `tls` and `unix`), or with the error that stopped them.
    /// Dropping the future does not cancel the write; [`queue`](Self::queue)
    /// is the same without the future.
    ///
    /// Fails at once with [`RawError::Backlog`] while more than
    /// [`RawServerBuilder::write_backlog`] bytes wait, and with
    /// [`RawError::Closed`] once the connection is closing.
    pub fn write(&self, bytes: impl Into<Bytes>) -> Written {
        let state = match self.enqueue(bytes.into()) {
            Ok(done) => WrittenState::Waiting(done),
            Err(e) => WrittenState::Ready(Some(Err(e))),
        };
        Written {
            conn: self.conn.clone(),
            state,
        }
    }

    /// Queues `bytes` for writing like [`write`](Self::write), without a
    /// way to learn when they were written: for fire-and-forget writes,
    /// such as an echo from `on_bytes`. A later write failure closes the
    /// connection, and `on_close` reports it.
    pub fn queue(&self, bytes: impl Into<Bytes>) -> Result<(), RawError> {
        self.enqueue(bytes.into()).map(drop)
    }

    fn enqueue(&self, bytes: Bytes) -> Result<oneshot::Receiver<Result<(), RawError>>, RawError> {
        let conn = &self.conn;
        if conn.close.is_cancelled() {
            return Err(conn.closed_error());
        }
        let queued = conn.backlog.load(Ordering::Acquire);
        if queued >= conn.limit {
            return Err(RawError::Backlog {
                id: conn.id,
                remote: conn.remote.clone(),
                queued,
                limit: conn.limit,
            });
        }
        let len = bytes.len();
        conn.backlog.fetch_add(len, Ordering::AcqRel);
        let (done, rx) = oneshot::channel();
        if conn.writes.send(Pending { bytes, done }).is_err() {
            conn.backlog.fetch_sub(len, Ordering::AcqRel);
            return Err(conn.closed_error());
        }
        Ok(rx)
    }

    /// Waits until fewer than [`RawServerBuilder::write_backlog`] bytes wait
    /// to be written, so the next [`write`](Self::write) is taken.
    pub async fn writable(&self) -> Result<(), RawError> {
        let conn = &self.conn;
        loop {
            let drained = conn.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if conn.close.is_cancelled() {
                return Err(conn.closed_error());
            }
            if conn.backlog.load(Ordering::Acquire) < conn.limit {
                return Ok(());
            }
            tokio::select! {
                _ = drained => {}
                _ = conn.close.cancelled() => {}
            }
        }
    }

    /// Bytes queued for writing and not yet handed to the transport.
    pub fn queued_bytes(&self) -> usize {
        self.conn.backlog.load(Ordering::Acquire)
    }

    /// Closes the connection: reading stops, writes already queued are
    /// still written (up to the server's drain timeout), then the stream
    /// is shut down and the close callbacks run with
    /// [`RawCloseReason::Closed`].
    pub fn close(&self) {
        self.conn.end(RawCloseReason::Closed);
    }

    /// Whether the connection is closed or closing.
    pub fn is_closed(&self) -> bool {
        self.conn.close.is_cancelled()
    }
}

/// The outcome of one [`RawHandle::write`]: resolves once the bytes were
/// handed to the transport, or with the error that stopped them.
#[must_use = "the write is queued either way; await this to learn whether it was written"]
pub struct Written {
    conn: Arc<Conn>,
    state: WrittenState,
}

enum WrittenState {
    Ready(Option<Result<(), RawError>>),
    Waiting(oneshot::Receiver<Result<(), RawError>>),
}

impl fmt::Debug for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Written")
            .field("id", &self.conn.id)
            .finish_non_exhaustive()
    }
}

impl Future for Written {
    type Output = Result<(), RawError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            WrittenState::Ready(r) => {
                Poll::Ready(r.take().unwrap_or_else(|| Err(this.conn.closed_error())))
            }
            WrittenState::Waiting(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(r)) => Poll::Ready(r),
                // The writer went away without writing: the connection closed.
                Poll::Ready(Err(_)) => Poll::Ready(Err(this.conn.closed_error())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Configures and starts a [`RawServer`].
#[must_use]
pub struct RawServerBuilder {
    url: String,
    transport: TransportConfig,
    max_connections: Option<usize>,
    read_buffer: usize,
    write_backlog: usize,
    drain_timeout: Duration,
    on_connect: Arc<ConnectFn>,
    on_bytes: Arc<BytesFn>,
    on_close: Arc<CloseFn>,
}

impl fmt::Debug for RawServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawServerBuilder")
            .field("url", &self.url)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl RawServerBuilder {
    /// Called first for each accepted connection, on the connection's own
    /// task. The closure it returns is called once when that connection
    /// ends, before [`on_close`](Self::on_close).
    pub fn on_connect<F, C>(mut self, f: F) -> Self
    where
        F: Fn(RawHandle) -> C + Send + Sync + 'static,
        C: FnOnce(&RawCloseReason) + Send + 'static,
    {
        self.on_connect = Arc::new(move |h| Box::new(f(h)));
        self
    }

    /// Called with each chunk of bytes read, in order, on the connection's
    /// own task. Chunk boundaries are whatever the transport delivered; they
    /// carry no meaning. The connection is not read again until the callback
    /// returns, so keep it short (spawn longer work).
    pub fn on_bytes<F>(mut self, f: F) -> Self
    where
        F: Fn(&RawHandle, Bytes) + Send + Sync + 'static,
    {
        self.on_bytes = Arc::new(f);
        self
    }

    /// Called once when a connection ends, last, on the connection's own
    /// task, after its stream is shut.
    pub fn on_close<F>(mut self, f: F) -> Self
    where
        F: Fn(RawId, &RawCloseReason) + Send + Sync + 'static,
    {
        self.on_close = Arc::new(f);
        self
    }

    /// At most `max` connections at once (4096 by default; `usize::MAX` for
    /// no limit). One beyond is accepted and closed
    /// at once (the peer sees the stream end) and counted in
    /// [`RawStats::refused`]; no callback sees it.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max);
        self
    }

    /// TLS settings, required for `tls://`.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.transport.tls = Some(tls);
        self
    }

    /// Bytes read at most per `on_bytes` call (default 64 KiB).
    pub fn read_buffer(mut self, bytes: usize) -> Self {
        self.read_buffer = bytes.max(1);
        self
    }

    /// Bytes that may wait to be written per connection (default 1 MiB).
    /// Above it, [`RawHandle::write`] fails with [`RawError::Backlog`] and
    /// the connection is not read, so an echoing peer that does not read
    /// its answers is slowed down rather than buffered without bound.
    pub fn write_backlog(mut self, bytes: usize) -> Self {
        self.write_backlog = bytes.max(1);
        self
    }

    /// How long a closing connection may take to write what was queued
    /// before it is cut (default 5 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Binds the URL and starts accepting.
    pub async fn start(self) -> Result<RawServer, RawError> {
        let url = Url::parse(&self.url).map_err(TransportError::from)?;
        let listener = transport::listen(&url, &self.transport).await?;
        let local = listener.local_url().clone();
        let shared = Arc::new(ServerShared {
            on_connect: self.on_connect,
            on_bytes: self.on_bytes,
            on_close: self.on_close,
            max_connections: self.max_connections,
            read_buffer: self.read_buffer,
            write_backlog: self.write_backlog,
            drain_timeout: self.drain_timeout,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_id: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        shared.tasks.spawn(accept_loop(shared.clone(), listener));
        Ok(RawServer { local, shared })
    }
}

struct ServerShared {
    on_connect: Arc<ConnectFn>,
    on_bytes: Arc<BytesFn>,
    on_close: Arc<CloseFn>,
    max_connections: Option<usize>,
    read_buffer: usize,
    write_backlog: usize,
    drain_timeout: Duration,
    stop: CancellationToken,
    tasks: TaskTracker,
    next_id: AtomicU64,
    open: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// A byte-stream server on any transport URL: callbacks see each
/// connection, its bytes and its end; [`RawHandle`]s write back.
///
/// ```no_run
/// # async fn demo() -> Result<(), plexus::socket::RawError> {
/// use plexus::socket::RawServer;
///
/// let server = RawServer::bind("tcp://127.0.0.1:0")
///     .on_connect(|conn| {
///         println!("{} connected from {}", conn.id(), conn.remote());
///         |reason: &plexus::socket::RawCloseReason| println!("gone: {reason}")
///     })
///     .on_bytes(|conn, bytes| {
///         // Echo: queued now, written in order.
///         if let Err(e) = conn.queue(bytes) {
///             eprintln!("{e}");
///         }
///     })
///     .on_close(|id, reason| println!("{id} closed: {reason}"))
///     .start()
///     .await?;
/// println!("echoing on {}", server.local_url());
/// server.stop().await;
/// # Ok(()) }
/// ```
///
/// Callbacks must be `Send + Sync`: different connections call them from
/// their own tasks at the same time. A callback that panics closes its
/// connection ([`RawCloseReason::CallbackPanicked`]); the server goes on.
pub struct RawServer {
    local: Url,
    shared: Arc<ServerShared>,
}

impl fmt::Debug for RawServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawServer")
            .field("local", &self.local)
            .field("open", &self.shared.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RawServer {
    /// Starts configuring a server that will listen on `url` (`tcp://`,
    /// `tls://`, `unix://` or `inproc://`).
    pub fn bind(url: impl Into<String>) -> RawServerBuilder {
        RawServerBuilder {
            url: url.into(),
            transport: TransportConfig::new(),
            max_connections: Some(crate::endpoint::DEFAULT_MAX_CONNECTIONS),
            read_buffer: 64 * 1024,
            write_backlog: 1024 * 1024,
            drain_timeout: Duration::from_secs(5),
            on_connect: Arc::new(|_| Box::new(|_: &RawCloseReason| {})),
            on_bytes: Arc::new(|_, _| {}),
            on_close: Arc::new(|_, _| {}),
        }
    }

    /// Where the server is reachable, with the real port for `:0`.
    pub fn local_url(&self) -> &Url {
        &self.local
    }

    /// The server's counters.
    pub fn stats(&self) -> RawStats {
        RawStats {
            open: self.shared.open.load(Ordering::Acquire),
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, closes every connection (each writes what was
    /// queued, within the drain timeout) and returns once every close
    /// callback has run.
    pub async fn stop(&self) {
        self.shared.stop.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

impl Drop for RawServer {
    /// Stops in the background: the listener goes at once, connections as
    /// they finish closing.
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.shared.tasks.close();
    }
}

async fn accept_loop(shared: Arc<ServerShared>, mut listener: transport::Listener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok(c) => {
                let open = shared.open.fetch_add(1, Ordering::AcqRel);
                if shared.max_connections.is_some_and(|max| open >= max) {
                    shared.open.fetch_sub(1, Ordering::AcqRel);
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(remote = %c.remote, "raw connection refused: at the connection limit");
                    drop(c);
                    continue;
                }
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                shared.tasks.spawn(run_connection(shared.clone(), c));
            }
            Err(e) => {
                tracing::debug!("raw accept failed: {e}");
                // Out of file descriptors and the like: back off instead of
                // spinning.
                tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
    }
}

/// Runs a callback, turning a panic into the reason to close.
fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, RawCloseReason> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic without a message".to_string());
        RawCloseReason::CallbackPanicked(msg)
    })
}

/// One connection's life: connect callback, reads, then the close.
async fn run_connection(shared: Arc<ServerShared>, c: Connected) {
    let (mut rd, wr) = c.stream.split();
    let (writes, queue) = mpsc::unbounded_channel();
    let conn = Arc::new(Conn {
        id: RawId(shared.next_id.fetch_add(1, Ordering::Relaxed)),
        remote: c.remote.into(),
        writes,
        backlog: AtomicUsize::new(0),
        limit: shared.write_backlog,
        drained: Notify::new(),
        close: shared.stop.child_token(),
        reason: OnceLock::new(),
    });
    let mut writer = tokio::spawn(write_loop(conn.clone(), wr, queue));
    let handle = RawHandle { conn: conn.clone() };
    let on_closed = match guarded(|| (shared.on_connect)(handle.clone())) {
        Ok(f) => Some(f),
        Err(reason) => {
            conn.end(reason);
            None
        }
    };
    let mut buf = BytesMut::new();
    loop {
        // Not reading while writes are behind keeps an echoing peer that
        // does not read from growing this side's memory.
        if handle.writable().await.is_err() {
            break;
        }
        buf.reserve(shared.read_buffer);
        let mut chunk = (&mut rd).take(shared.read_buffer as u64);
        let read = tokio::select! {
            biased;
            _ = conn.close.cancelled() => break,
            r = chunk.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) => {
                conn.end(RawCloseReason::PeerClosed);
                break;
            }
            Ok(_) => {
                let bytes = buf.split().freeze();
                if let Err(reason) = guarded(|| (shared.on_bytes)(&handle, bytes)) {
                    conn.end(reason);
                    break;
                }
            }
            Err(e) => {
                conn.end(RawCloseReason::Io(e.to_string()));
                break;
            }
        }
    }
    let stopped = shared.stop.is_cancelled();
    conn.end(if stopped {
        RawCloseReason::Stopped
    } else {
        RawCloseReason::Closed
    });
    drop(rd);
    if tokio::time::timeout(shared.drain_timeout, &mut writer)
        .await
        .is_err()
    {
        tracing::debug!(id = %conn.id, remote = %conn.remote, "raw connection cut: queued writes did not drain in time");
        writer.abort();
    }
    shared.open.fetch_sub(1, Ordering::AcqRel);
    let reason = conn.reason.get().cloned().unwrap_or(RawCloseReason::Closed);
    if let Some(f) = on_closed {
        if let Err(RawCloseReason::CallbackPanicked(m)) = guarded(|| f(&reason)) {
            tracing::warn!(id = %conn.id, "raw close callback panicked: {m}");
        }
    }
    if let Err(RawCloseReason::CallbackPanicked(m)) =
        guarded(|| (shared.on_close)(conn.id, &reason))
    {
        tracing::warn!(id = %conn.id, "raw on_close panicked: {m}");
    }
}

/// Writes queued buffers in order until the connection closes, then what
/// was queued before the close, then shuts the stream down.
async fn write_loop(
    conn: Arc<Conn>,
    mut wr: WriteHalf,
    mut queue: mpsc::UnboundedReceiver<Pending>,
) {
    loop {
        let next = tokio::select! {
            biased;
            p = queue.recv() => p,
            _ = conn.close.cancelled() => None,
        };
        let Some(p) = next else { break };
        if !write_one(&conn, &mut wr, p).await {
            return;
        }
    }
    queue.close();
    while let Ok(p) = queue.try_recv() {
        if !write_one(&conn, &mut wr, p).await {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Writes one buffer and completes its [`Written`]; `false` if the
/// transport failed (the connection is then ended).
async fn write_one(conn: &Conn, wr: &mut WriteHalf, p: Pending) -> bool {
    let len = p.bytes.len();
    let result = async {
        wr.write_all(&p.bytes).await?;
        wr.flush().await
    }
    .await;
    conn.backlog.fetch_sub(len, Ordering::AcqRel);
    conn.drained.notify_waiters();
    match result {
        Ok(()) => {
            let _ = p.done.send(Ok(()));
            true
        }
        Err(e) => {
            conn.end(RawCloseReason::Io(e.to_string()));
            let _ = p.done.send(Err(RawError::Write {
                id: conn.id,
                remote: conn.remote.clone(),
                source: Arc::new(e),
            }));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_callback_becomes_a_close_reason_with_its_message() {
        let reason = guarded(|| panic!("bad {}", "input")).expect_err("panicked");
        assert_eq!(reason, RawCloseReason::CallbackPanicked("bad input".into()));
        let reason = guarded(|| std::panic::panic_any(7u8)).expect_err("panicked");
        assert!(
            matches!(reason, RawCloseReason::CallbackPanicked(m) if m.contains("without a message"))
        );
        assert_eq!(guarded(|| 3), Ok(3));
    }

    #[tokio::test]
    async fn a_bad_url_fails_to_start_and_names_it() {
        let err = RawServer::bind("nope://x")
            .start()
            .await
            .expect_err("bad url");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
