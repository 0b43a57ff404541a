//! The floor: a hand-written echo over tokio TCP, what any RPC system has to
//! do at least.
//!
//! A frame is `u32` length (little-endian, of what follows), `u64` request id,
//! payload. The client keeps a table of waiting calls by id and one shared
//! write buffer that a writer task drains with one `write_all` per batch; the
//! server answers every frame of a read in place and writes the answers with
//! one `write_all`. No codec, no handshake, no flow control, no task per call.
//! It is lean, not naive: the writer yields once before draining so a batch
//! carries every frame its callers had ready.
//!
//! The same echo runs over a Unix socket as the floor of `unix://`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::BoxError;

/// Bytes of header after the length: the request id.
const ID_LEN: usize = 8;
/// Largest frame either side accepts.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Appends one frame to `out`.
fn encode(out: &mut BytesMut, id: u64, payload: &[u8]) {
    out.reserve(4 + ID_LEN + payload.len());
    out.put_u32_le((ID_LEN + payload.len()) as u32);
    out.put_u64_le(id);
    out.put_slice(payload);
}

/// Takes one whole frame off the front of `buf`, if there is one.
fn decode(buf: &mut BytesMut) -> io::Result<Option<(u64, Bytes)>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(ID_LEN..=MAX_FRAME).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad frame length",
        ));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let id = buf.get_u64_le();
    Ok(Some((id, buf.split_to(len - ID_LEN).freeze())))
}

/// Starts the echo server on an ephemeral loopback port; abort the task to stop it.
pub async fn start_echo() -> Result<(SocketAddr, JoinHandle<()>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = serve_echo_tcp(stream).await;
            });
        }
    });
    Ok((addr, task))
}

/// Starts the echo server on a Unix socket at `path` (which must not
/// exist); abort the task to stop it.
pub fn start_echo_unix(path: &Path) -> Result<(PathBuf, JoinHandle<()>), BoxError> {
    let listener = UnixListener::bind(path)?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (rd, wr) = stream.into_split();
                let _ = serve_echo(rd, wr).await;
            });
        }
    });
    Ok((path.to_owned(), task))
}

async fn serve_echo_tcp(stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    serve_echo(rd, wr).await
}

async fn serve_echo(
    mut rd: impl AsyncRead + Unpin,
    mut wr: impl AsyncWrite + Unpin,
) -> io::Result<()> {
    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut output = BytesMut::with_capacity(64 * 1024);
    loop {
        if rd.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        while let Some((id, payload)) = decode(&mut input)? {
            encode(&mut output, id, &payload);
        }
        if !output.is_empty() {
            wr.write_all(&output).await?;
            output.clear();
        }
    }
}

/// Starts the streaming server: each connection sends one request frame whose
/// payload is `messages: u32, size: u32` and gets that many frames back.
pub async fn start_stream() -> Result<(SocketAddr, JoinHandle<()>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = serve_stream(stream).await;
            });
        }
    });
    Ok((addr, task))
}

async fn serve_stream(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut input = BytesMut::with_capacity(64);
    let (id, mut request) = loop {
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        if let Some(frame) = decode(&mut input)? {
            break frame;
        }
    };
    if request.len() != 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad stream request",
        ));
    }
    let messages = request.get_u32_le();
    let size = request.get_u32_le() as usize;
    let mut frame = BytesMut::new();
    encode(&mut frame, id, &vec![0x5a; size]);
    for _ in 0..messages {
        stream.write_all(&frame).await?;
    }
    Ok(())
}

/// Downloads `messages` × `size` bytes over a fresh connection; returns the
/// payload bytes received.
pub async fn download(addr: SocketAddr, messages: u32, size: u32) -> Result<usize, BoxError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut request = BytesMut::new();
    let mut spec = [0u8; 8];
    spec[..4].copy_from_slice(&messages.to_le_bytes());
    spec[4..].copy_from_slice(&size.to_le_bytes());
    encode(&mut request, 1, &spec);
    stream.write_all(&request).await?;
    let mut input = BytesMut::with_capacity(256 * 1024);
    let (mut received, mut frames) = (0, 0);
    while frames < messages {
        if input.capacity() - input.len() < 64 * 1024 {
            input.reserve(256 * 1024);
        }
        if stream.read_buf(&mut input).await? == 0 {
            return Err("raw stream ended early".into());
        }
        while let Some((_, payload)) = decode(&mut input)? {
            received += payload.len();
            frames += 1;
        }
    }
    Ok(received)
}

/// The floor of connection set-up: connect, one echo call, close — on the
/// stream itself, no tasks.
pub async fn connect_echo_close(addr: SocketAddr, payload: &[u8]) -> Result<usize, BoxError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(64);
    encode(&mut buf, 1, payload);
    stream.write_all(&buf).await?;
    buf.clear();
    loop {
        if let Some((_, reply)) = decode(&mut buf)? {
            return Ok(reply.len());
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err("raw echo server closed before answering".into());
        }
    }
}

/// A client connection: calls wait on a oneshot keyed by request id.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    next_id: AtomicU64,
    outgoing: Mutex<BytesMut>,
    wake: Notify,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
}

impl Shared {
    fn waiting(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Bytes>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outgoing(&self) -> MutexGuard<'_, BytesMut> {
        self.outgoing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Client {
    /// Connects over TCP and starts the connection's reader and writer tasks.
    pub async fn connect(addr: SocketAddr) -> Result<Client, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        Ok(Client::over(rd, wr))
    }

    /// Connects over the Unix socket at `path`.
    pub async fn connect_unix(path: &Path) -> Result<Client, BoxError> {
        let (rd, wr) = UnixStream::connect(path).await?.into_split();
        Ok(Client::over(rd, wr))
    }

    fn over(
        rd: impl AsyncRead + Unpin + Send + 'static,
        wr: impl AsyncWrite + Unpin + Send + 'static,
    ) -> Client {
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(1),
            outgoing: Mutex::new(BytesMut::with_capacity(64 * 1024)),
            wake: Notify::new(),
            waiting: Mutex::new(HashMap::new()),
        });
        tokio::spawn(read_replies(shared.clone(), rd));
        tokio::spawn(write_requests(shared.clone(), wr));
        Client { shared }
    }

    /// One echo call; returns the reply's length.
    pub async fn echo(&self, payload: &[u8]) -> Result<usize, BoxError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.waiting().insert(id, tx);
        let was_empty = {
            let mut out = self.shared.outgoing();
            let was_empty = out.is_empty();
            encode(&mut out, id, payload);
            was_empty
        };
        if was_empty {
            self.shared.wake.notify_one();
        }
        let reply = rx.await.map_err(|_| "raw connection closed")?;
        Ok(reply.len())
    }
}

async fn read_replies(shared: Arc<Shared>, mut rd: impl AsyncRead + Unpin) {
    let mut input = BytesMut::with_capacity(64 * 1024);
    loop {
        match rd.read_buf(&mut input).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match decode(&mut input) {
                Ok(Some((id, payload))) => {
                    if let Some(tx) = shared.waiting().remove(&id) {
                        let _ = tx.send(payload);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    shared.waiting().clear();
                    return;
                }
            }
        }
        if input.capacity() - input.len() < 4 * 1024 {
            input.reserve(64 * 1024);
        }
    }
    // Dropping the senders fails every waiting call.
    shared.waiting().clear();
}

async fn write_requests(shared: Arc<Shared>, mut wr: impl AsyncWrite + Unpin) {
    let mut batch = BytesMut::with_capacity(64 * 1024);
    loop {
        {
            let mut out = shared.outgoing();
            if !out.is_empty() {
                std::mem::swap(&mut *out, &mut batch);
            }
        }
        if batch.is_empty() {
            shared.wake.notified().await;
            // Woken by the first frame: let every other ready caller encode
            // its frame before draining, so one write carries them all.
            // Without this the writer, woken into tokio's LIFO slot, runs
            // after each caller and writes one frame per syscall.
            tokio::task::yield_now().await;
            continue;
        }
        if wr.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
}
