//! `ws://` and `wss://`: the Plexus byte stream in binary WebSocket messages
//! (tokio-tungstenite), so that a browser can be a Plexus peer.
//!
//! Owns the HTTP upgrade on both sides (the request path, the `plexus`
//! subprotocol) and the adapter that turns a WebSocket into the byte stream
//! every transport yields. TCP comes from the `tcp` module, TLS for `wss://`
//! from `tls`; nothing here reads the bytes it carries.
//!
//! On the wire:
//! - The dialer sends `GET <path>` with `Sec-WebSocket-Protocol: plexus`. The
//!   listener upgrades a request for exactly its own path (query ignored) and
//!   answers 404 to any other. A request that offers subprotocols must offer
//!   `plexus`, which the listener then selects (400 otherwise); one that offers
//!   none is accepted, as a browser page may not set any.
//! - After the upgrade, each side sends its bytes in **binary** messages.
//!   Message boundaries mean nothing: the receiver concatenates payloads, so
//!   a Plexus frame may span messages and a message may hold many frames.
//!   This implementation sends what one flush of the connection writer holds
//!   as one message of at most 1 MiB.
//! - A text message is a violation: the stream fails with `InvalidData` and
//!   the connection above it ends. A message above
//!   [`TransportConfig::ws_max_message`] likewise. Pings are answered by
//!   tungstenite; a Close ends the stream like end-of-file.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

#[cfg(feature = "tls")]
use super::Scheme;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(feature = "tls")]
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::pending::PendingHandshakes;
use super::{
    tcp, timed_out, Connected, ReadHalf, Stream, TransportConfig, TransportError, Url, WriteHalf,
};

/// The WebSocket subprotocol Plexus offers and selects.
pub(crate) const SUBPROTOCOL: &str = "plexus";

/// The default for [`TransportConfig::ws_max_message`].
pub(crate) const DEFAULT_MAX_MESSAGE: usize = (16 << 20) + (64 << 10);

/// The most bytes this side puts in one outgoing message. Small enough for
/// any peer's message limit, large enough that framing costs nothing.
const MAX_OUTGOING_MESSAGE: usize = 1 << 20;

/// tungstenite's read chunk, allocated up front for every connection; small,
/// to keep idle connections cheap.
const READ_BUFFER: usize = 32 * 1024;

/// A bound `ws://` or `wss://` listener. Upgrades (and for `wss://`, TLS
/// handshakes) run in tasks the listener owns, so a slow or silent peer
/// delays only itself; dropping the listener aborts them.
pub(crate) struct WsListener {
    socket: tokio::net::TcpListener,
    /// For `wss://`: the TLS acceptor and its handshake timeout.
    #[cfg(feature = "tls")]
    tls: Option<(TlsAcceptor, Duration)>,
    local: Url,
    /// The request path upgrades must ask for, without the query.
    path: Arc<str>,
    nodelay: bool,
    upgrade_timeout: Duration,
    ws_config: WebSocketConfig,
    handshakes: PendingHandshakes,
}

impl WsListener {
    /// Binds `url`; `wss://` needs a server side in `config.tls`.
    pub(crate) async fn bind(url: &Url, config: &TransportConfig) -> Result<Self, TransportError> {
        #[cfg(feature = "tls")]
        let tls = match url.scheme() {
            Scheme::Wss => {
                let (server, limit) = super::tls::server_side(url, config)?;
                Some((TlsAcceptor::from(Arc::clone(server)), limit))
            }
            _ => None,
        };
        let (socket, addr) = tcp::bind_socket(url).await?;
        let path = url.ws_path().unwrap_or("/");
        let path = path.split_once('?').map_or(path, |(path, _query)| path);
        Ok(WsListener {
            socket,
            #[cfg(feature = "tls")]
            tls,
            local: url.with_socket_addr(addr),
            path: Arc::from(path),
            nodelay: config.nodelay,
            upgrade_timeout: config.handshake_timeout,
            ws_config: ws_config(config),
            handshakes: PendingHandshakes::new(),
        })
    }

    /// The bound address, with the port the OS chose for port 0, and the path.
    pub(crate) fn local_url(&self) -> Url {
        self.local.clone()
    }

    /// Returns the next peer whose upgrade finished, in completion order. A
    /// peer that fails or times out yields [`TransportError::WebSocket`] (or
    /// [`TransportError::Tls`] for `wss://`) naming it; the listener stays
    /// usable and the caller simply accepts again.
    ///
    /// Cancel-safe: pending upgrades live in the listener, not in this future.
    pub(crate) async fn accept(&mut self) -> Result<Connected, TransportError> {
        let WsListener {
            socket,
            #[cfg(feature = "tls")]
            tls,
            local,
            path,
            nodelay,
            upgrade_timeout,
            ws_config,
            handshakes,
        } = self;
        let scheme = local.scheme();
        handshakes
            .next(
                local,
                || tcp::accept_socket(socket, local, *nodelay),
                |(stream, peer): (TcpStream, SocketAddr)| {
                    #[cfg(feature = "tls")]
                    let tls = tls.clone();
                    let upgrade = Upgrade {
                        path: Arc::clone(path),
                        limit: *upgrade_timeout,
                        config: *ws_config,
                        remote: Url::socket(scheme, peer).to_string(),
                    };
                    async move {
                        #[cfg(feature = "tls")]
                        let (stream, identity): (Box<dyn Stream>, _) = match tls {
                            Some((acceptor, limit)) => {
                                let stream = super::tls::accept_tls(
                                    &acceptor,
                                    stream,
                                    &upgrade.remote,
                                    limit,
                                )
                                .await?;
                                let identity =
                                    super::tls::identity_of(stream.get_ref().1.peer_certificates());
                                (Box::new(upgrade.accept(stream).await?), identity)
                            }
                            None => (Box::new(upgrade.accept(stream).await?), None),
                        };
                        #[cfg(not(feature = "tls"))]
                        let (stream, identity): (Box<dyn Stream>, _) =
                            (Box::new(upgrade.accept(stream).await?), None);
                        Ok(Connected {
                            stream,
                            remote: upgrade.remote,
                            identity,
                        })
                    }
                },
            )
            .await
    }
}

/// What the listener's side of one upgrade needs to know.
struct Upgrade {
    path: Arc<str>,
    limit: Duration,
    config: WebSocketConfig,
    /// The peer, for errors and [`Connected::remote`].
    remote: String,
}

impl Upgrade {
    /// Runs the listener's side of the HTTP upgrade over `stream`.
    async fn accept<S>(&self, stream: S) -> Result<WsStream<S>, TransportError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let check = UpgradeCheck {
            path: Arc::clone(&self.path),
        };
        let upgraded = tokio::time::timeout(
            self.limit,
            tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(self.config)),
        )
        .await
        .map_err(|_| self.error(timed_out(self.limit)))?
        .map_err(|e| self.error(ws_io_error(e)))?;
        Ok(WsStream { socket: upgraded })
    }

    fn error(&self, source: io::Error) -> TransportError {
        TransportError::WebSocket {
            url: self.remote.clone(),
            source,
        }
    }
}

/// Decides an upgrade request: the path must be the listener's, and a
/// request that names subprotocols must name `plexus`.
struct UpgradeCheck {
    path: Arc<str>,
}

impl Callback for UpgradeCheck {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        check_request(&self.path, request, response).map_err(|refusal| *refusal)
    }
}

fn check_request(
    path: &str,
    request: &Request,
    mut response: Response,
) -> Result<Response, Box<ErrorResponse>> {
    if request.uri().path() != path {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            format!("no Plexus endpoint at this path; this listener serves {path}"),
        ));
    }
    let mut offered = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .peekable();
    if offered.peek().is_some() {
        if !offered.any(|name| name == SUBPROTOCOL) {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                format!("this is a Plexus endpoint; offer the `{SUBPROTOCOL}` subprotocol"),
            ));
        }
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(response)
}

fn refusal(status: StatusCode, text: String) -> Box<ErrorResponse> {
    let mut response = ErrorResponse::new(Some(text));
    *response.status_mut() = status;
    Box::new(response)
}

/// Dials a `ws://` or `wss://` URL: TCP, TLS for `wss://`, then the upgrade
/// asking for the URL's path, bounded by [`TransportConfig::handshake_timeout`].
pub(crate) async fn dial(url: &Url, config: &TransportConfig) -> Result<Connected, TransportError> {
    #[cfg(feature = "tls")]
    let tls = match url.scheme() {
        Scheme::Wss => Some(super::tls::client_side(url, config)?),
        _ => None,
    };
    let (stream, peer) = tcp::connect(url, config).await?;
    let remote = url.with_socket_addr(peer).to_string();
    #[cfg(feature = "tls")]
    let (stream, identity): (Box<dyn Stream>, _) = match tls {
        Some(side) => {
            let stream = super::tls::connect_tls(side, stream, url).await?;
            let identity = super::tls::identity_of(stream.get_ref().1.peer_certificates());
            (Box::new(upgrade(url, stream, config).await?), identity)
        }
        None => (Box::new(upgrade(url, stream, config).await?), None),
    };
    #[cfg(not(feature = "tls"))]
    let (stream, identity): (Box<dyn Stream>, _) =
        (Box::new(upgrade(url, stream, config).await?), None);
    Ok(Connected {
        stream,
        remote,
        identity,
    })
}

/// Runs the dialer's side of the HTTP upgrade over `stream`.
async fn upgrade<S>(
    url: &Url,
    stream: S,
    config: &TransportConfig,
) -> Result<WsStream<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let error = |source| TransportError::WebSocket {
        url: url.to_string(),
        source,
    };
    // The URL prints as `ws[s]://host:port/path`, which is the request URI.
    let mut request = url
        .to_string()
        .into_client_request()
        .map_err(|e| error(ws_io_error(e)))?;
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let limit = config.handshake_timeout;
    let (socket, _response) = tokio::time::timeout(
        limit,
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config(config))),
    )
    .await
    .map_err(|_| error(timed_out(limit)))?
    .map_err(|e| error(ws_io_error(e)))?;
    Ok(WsStream { socket })
}

fn ws_config(config: &TransportConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(config.ws_max_message))
        .max_frame_size(Some(config.ws_max_message))
}

/// A tungstenite error as an I/O error: I/O errors as they are, broken
/// WebSocket rules and oversized messages as `InvalidData`.
fn ws_io_error(error: tungstenite::Error) -> io::Error {
    use tungstenite::Error;
    match error {
        Error::Io(error) => error,
        Error::ConnectionClosed | Error::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        Error::Capacity(error) => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{error} (TransportConfig::ws_max_message)"),
        ),
        Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!(
                    "the server answered HTTP {}: {}",
                    response.status(),
                    body.trim()
                ),
            )
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// An upgraded WebSocket, before it is split into byte-stream halves.
struct WsStream<S> {
    socket: WebSocketStream<S>,
}

impl<S> Stream for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn split(self: Box<Self>) -> (ReadHalf, WriteHalf) {
        let (sink, messages) = self.socket.split();
        (
            Box::new(WsReader {
                messages,
                chunk: Bytes::new(),
                done: false,
            }),
            Box::new(WsWriter {
                sink,
                pending: BytesMut::new(),
            }),
        )
    }
}

/// The read half: the payloads of binary messages, one after another.
struct WsReader<S> {
    messages: SplitStream<WebSocketStream<S>>,
    /// What is left of the last message's payload.
    chunk: Bytes,
    /// The peer closed; every later read is end-of-file.
    done: bool,
}

impl<S> AsyncRead for WsReader<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.chunk.is_empty() {
                let n = self.chunk.len().min(buf.remaining());
                buf.put_slice(&self.chunk[..n]);
                self.chunk.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.messages.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(payload))) => self.chunk = payload,
                Some(Ok(Message::Text(_))) => {
                    self.done = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the peer sent a text WebSocket message; Plexus travels in binary messages only",
                    )));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => self.done = true,
                Some(Err(error)) => {
                    self.done = true;
                    use tungstenite::error::ProtocolError;
                    use tungstenite::Error;
                    match error {
                        // The peer went away without a closing handshake, as
                        // a TCP peer that simply closes: end of stream.
                        Error::ConnectionClosed
                        | Error::AlreadyClosed
                        | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {}
                        error => return Poll::Ready(Err(ws_io_error(error))),
                    }
                }
            }
        }
    }
}

/// The write half: bytes gather in `pending` and leave as one binary message
/// per flush (or per [`MAX_OUTGOING_MESSAGE`] bytes).
struct WsWriter<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
    pending: BytesMut,
}

impl<S> WsWriter<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Hands the pending bytes to tungstenite as one message.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.sink).poll_ready(cx)).map_err(ws_io_error)?;
        let message = Message::Binary(self.pending.split().freeze());
        Pin::new(&mut self.sink)
            .start_send(message)
            .map_err(ws_io_error)?;
        Poll::Ready(Ok(()))
    }

    /// Makes room in `pending`, sending it first when it is full.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.pending.len() >= MAX_OUTGOING_MESSAGE {
            ready!(self.poll_send_pending(cx))?;
        }
        Poll::Ready(Ok(MAX_OUTGOING_MESSAGE - self.pending.len()))
    }
}

impl<S> AsyncWrite for WsWriter<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let room = ready!(self.poll_room(cx))?;
        let n = buf.len().min(room);
        self.pending.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut room = ready!(self.poll_room(cx))?;
        let mut written = 0;
        for buf in bufs {
            let n = buf.len().min(room);
            self.pending.extend_from_slice(&buf[..n]);
            written += n;
            room -= n;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_pending(cx))?;
        Pin::new(&mut self.sink).poll_flush(cx).map_err(ws_io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        match ready!(Pin::new(&mut self.sink).poll_close(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            // The peer closed first; our side is shut all the same.
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(error) => Poll::Ready(Err(ws_io_error(error))),
        }
    }
}

// The tests use the TLS test helpers for `wss://`.
#[cfg(all(test, feature = "tls"))]
mod tests;
