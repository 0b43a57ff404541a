//! `quic://`: the Plexus byte stream over QUIC (quinn), with TLS 1.3 built in.
//!
//! Owns the QUIC endpoints (a UDP socket each), their TLS and transport
//! settings, and the adapter from a QUIC stream to the byte stream every
//! transport yields. The rustls configurations come from [`TlsConfig`], so
//! `quic://` trusts and presents exactly what `tls://` would.
//!
//! **One QUIC connection per Plexus connection, one bidirectional stream per
//! QUIC connection.** The dialer opens the stream and sends its Hello on it;
//! every Plexus frame of the connection, both ways, travels on that stream.
//! Nothing else is sent: QUIC makes a stream known to the listener only with
//! its first bytes, so a listener's accepted stream is ready once the QUIC
//! handshake is done and its halves wait (bounded by
//! [`TransportConfig::handshake_timeout`]) for the dialer's first bytes.
//! Calls do not map onto QUIC streams, because the protocol is defined over
//! one ordered byte stream: operation names are interned by position (a
//! definition must arrive before its uses), a GoAway's `last_id` speaks about
//! every call before it, and Plexus already multiplexes calls and returns
//! credit per call. Spreading frames over QUIC streams would reorder them and
//! need a different protocol; keeping one stream keeps the protocol, the
//! codec and every test identical on all transports. What QUIC still brings:
//! a handshake with TLS 1.3 in one round trip, UDP (through NATs and to
//! browsers' future WebTransport), connection migration, and loss recovery
//! per connection. The cost is TCP's: a lost packet delays every call behind
//! it on that connection (head-of-line blocking).
//!
//! Both sides set ALPN `plexus`, so a QUIC peer of another protocol is refused
//! in the handshake. A listener allows its dialer one stream and the dialer
//! allows none, so a peer cannot open streams nobody reads. QUIC keep-alives
//! every 10 s stop a live connection from idling out (quinn's 30 s idle
//! timeout); liveness proper is Plexus's keepalive. Dialing an address where
//! nothing listens fails only at the handshake timeout: UDP gives no refusal.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, ReadError, RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::explain::{explain, Attempt};
use super::pending::PendingHandshakes;
use super::{
    tcp, tls, Connected, ReadHalf, Stream, TransportConfig, TransportError, Url, WriteHalf,
};

/// The ALPN protocol both sides require.
const ALPN: &[u8] = b"plexus";

/// QUIC keep-alive interval: well inside quinn's default 30 s idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How long a closed write half keeps the connection open for the peer to
/// acknowledge the last bytes (closing a QUIC connection discards data in
/// flight, where closing a TCP socket still delivers it).
const LINGER: Duration = Duration::from_secs(10);

/// A bound `quic://` listener. Handshakes run in tasks the listener owns, so a
/// slow or silent peer delays only itself; dropping the listener aborts them
/// and refuses new connections, while connections already accepted go on.
pub(crate) struct QuicListener {
    endpoint: quinn::Endpoint,
    local: Url,
    tls_timeout: Duration,
    stream_timeout: Duration,
    handshakes: PendingHandshakes,
}

impl QuicListener {
    /// Binds a UDP socket for `url`; needs a server side in `config.tls`.
    pub(crate) async fn bind(url: &Url, config: &TransportConfig) -> Result<Self, TransportError> {
        let (server, tls_timeout) = tls::server_side(url, config)?;
        let mut crypto = (**server).clone();
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(crypto).map_err(|e| TransportError::Tls {
            url: url.to_string(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the server's TLS configuration cannot secure QUIC ({e}); QUIC needs TLS 1.3"
                ),
            ),
        })?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(Arc::new(transport_config(1)));
        let mut last_error = None;
        for addr in tcp::resolve(url).await? {
            match quinn::Endpoint::server(server_config.clone(), addr) {
                Ok(endpoint) => {
                    let local = endpoint.local_addr().map_err(|source| TransportError::Io {
                        url: url.to_string(),
                        source,
                    })?;
                    return Ok(QuicListener {
                        endpoint,
                        local: Url::quic(local),
                        tls_timeout,
                        stream_timeout: config.handshake_timeout,
                        handshakes: PendingHandshakes::new(),
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(TransportError::Io {
            url: url.to_string(),
            source: explain(
                Attempt::Bind,
                last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable)),
            ),
        })
    }

    /// The bound address, with the port the OS chose for port 0.
    pub(crate) fn local_url(&self) -> Url {
        self.local.clone()
    }

    /// Returns the next peer whose QUIC handshake finished, in completion
    /// order; its stream's halves wait for the dialer's stream. A peer that fails yields
    /// [`TransportError::Tls`] or [`TransportError::Quic`] naming it; the
    /// listener stays usable and the caller simply accepts again.
    ///
    /// Cancel-safe: pending handshakes live in the listener, not in this future.
    pub(crate) async fn accept(&mut self) -> Result<Connected, TransportError> {
        let QuicListener {
            endpoint,
            local,
            tls_timeout,
            stream_timeout,
            handshakes,
        } = self;
        let endpoint = &*endpoint;
        let local_name = local.to_string();
        let (tls_timeout, stream_timeout) = (*tls_timeout, *stream_timeout);
        handshakes
            .next(
                local,
                || {
                    let local_name = local_name.clone();
                    async move {
                        endpoint.accept().await.ok_or_else(|| TransportError::Io {
                            url: local_name,
                            source: io::Error::new(
                                io::ErrorKind::NotConnected,
                                "the QUIC endpoint has closed",
                            ),
                        })
                    }
                },
                move |incoming: quinn::Incoming| async move {
                    let remote = Url::quic(incoming.remote_address()).to_string();
                    let connecting = incoming
                        .accept()
                        .map_err(|error| connection_error(&remote, error))?;
                    let connection = tokio::time::timeout(tls_timeout, connecting)
                        .await
                        .map_err(|_| TransportError::Tls {
                            url: remote.clone(),
                            source: tls::timed_out(tls_timeout),
                        })?
                        .map_err(|error| connection_error(&remote, error))?;
                    let identity = quic_identity(&connection);
                    let stream = QuicStream::accepted(connection, remote.clone(), stream_timeout);
                    Ok(Connected {
                        stream: Box::new(stream),
                        remote,
                        identity,
                    })
                },
            )
            .await
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        // Refuse new connections; the endpoint's driver lives on for the
        // connections already accepted and ends with the last of them.
        self.endpoint.set_server_config(None);
    }
}

/// Dials a `quic://` URL: the QUIC handshake (bounded by
/// [`TlsConfig::handshake_timeout`](super::TlsConfig::handshake_timeout)),
/// then the connection's one stream. A host name is dialed on all its
/// addresses at once and the first to answer wins, since a UDP address where
/// nothing listens would otherwise cost a whole handshake timeout.
pub(crate) async fn dial(url: &Url, config: &TransportConfig) -> Result<Connected, TransportError> {
    let side = tls::client_side(url, config)?;
    let limit = side.handshake_timeout;
    let server_name = side.server_name.to_str().into_owned();
    let mut crypto = (**side.config).clone();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(crypto).map_err(|e| TransportError::Tls {
        url: url.to_string(),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the client's TLS configuration cannot secure QUIC ({e}); QUIC needs TLS 1.3"),
        ),
    })?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    client_config.transport_config(Arc::new(transport_config(0)));
    let attempts = tcp::resolve(url).await?.into_iter().map(|addr| {
        let client_config = client_config.clone();
        let server_name = server_name.clone();
        Box::pin(async move {
            let remote = Url::quic(addr).to_string();
            let unspecified = match addr {
                SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            };
            let endpoint =
                quinn::Endpoint::client(unspecified).map_err(|source| TransportError::Io {
                    url: remote.clone(),
                    source: explain(Attempt::Bind, source),
                })?;
            let connecting = endpoint
                .connect_with(client_config, addr, &server_name)
                .map_err(|error| TransportError::Quic {
                    url: remote.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, error.to_string()),
                })?;
            tokio::time::timeout(limit, async {
                let connection = connecting
                    .await
                    .map_err(|error| connection_error(&remote, error))?;
                let (send, recv) = connection
                    .open_bi()
                    .await
                    .map_err(|error| connection_error(&remote, error))?;
                Ok(Connected {
                    stream: Box::new(QuicStream {
                        send: Half::Open(send),
                        recv: Half::Open(recv),
                    }),
                    remote: remote.clone(),
                    identity: quic_identity(&connection),
                })
            })
            .await
            .map_err(|_| TransportError::Tls {
                url: remote.clone(),
                source: tls::timed_out(limit),
            })?
        })
    });
    match futures_util::future::select_ok(attempts).await {
        Ok((connected, _losers)) => Ok(connected),
        Err(error) => Err(error),
    }
}

/// Stream limits and keep-alive for one side: `peer_streams` is how many
/// bidirectional streams the peer may open (the listener grants its dialer
/// one, the dialer grants none).
fn transport_config(peer_streams: u8) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from(peer_streams))
        .max_concurrent_uni_streams(VarInt::from(0u8))
        .datagram_receive_buffer_size(None)
        .keep_alive_interval(Some(KEEP_ALIVE));
    transport
}

/// A failed QUIC connection as a transport error: TLS failures (QUIC's
/// CRYPTO_ERROR codes, 0x100–0x1ff) as [`TransportError::Tls`], the rest as
/// [`TransportError::Quic`].
fn connection_error(remote: &str, error: ConnectionError) -> TransportError {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    let is_tls = match &error {
        ConnectionError::TransportError(error) => crypto(error.code),
        ConnectionError::ConnectionClosed(close) => crypto(close.error_code),
        _ => false,
    };
    let kind = match &error {
        ConnectionError::TimedOut => io::ErrorKind::TimedOut,
        ConnectionError::Reset => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::ConnectionAborted,
    };
    let source = io::Error::new(kind, error);
    if is_tls {
        TransportError::Tls {
            url: remote.to_owned(),
            source,
        }
    } else {
        TransportError::Quic {
            url: remote.to_owned(),
            source,
        }
    }
}

/// The one bidirectional stream of a QUIC connection, before it is split.
struct QuicStream {
    send: Half<SendStream>,
    recv: Half<RecvStream>,
}

impl QuicStream {
    /// The listener's end of `connection`'s stream, which exists for the
    /// listener once the dialer's first bytes arrive. A task waits for it, at
    /// most `limit`, and hands each half its end; it gives up early when both
    /// halves are dropped.
    fn accepted(connection: quinn::Connection, remote: String, limit: Duration) -> QuicStream {
        let (send_tx, send_rx) = oneshot::channel();
        let (recv_tx, recv_rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut send_tx, mut recv_tx) = (send_tx, recv_tx);
            let outcome = tokio::select! {
                outcome = tokio::time::timeout(limit, connection.accept_bi()) => outcome,
                _ = async { tokio::join!(send_tx.closed(), recv_tx.closed()) } => return,
            };
            let failure = |kind, text: String| io::Error::new(kind, format!("{remote}: {text}"));
            match outcome {
                Ok(Ok((send, recv))) => {
                    let _ = send_tx.send(Ok(send));
                    let _ = recv_tx.send(Ok(recv));
                }
                Ok(Err(error)) => {
                    let text = error.to_string();
                    let _ =
                        send_tx.send(Err(failure(io::ErrorKind::ConnectionAborted, text.clone())));
                    let _ = recv_tx.send(Err(failure(io::ErrorKind::ConnectionAborted, text)));
                }
                Err(_) => {
                    let text = format!("the dialer opened no stream within {limit:?}");
                    let _ = send_tx.send(Err(failure(io::ErrorKind::TimedOut, text.clone())));
                    let _ = recv_tx.send(Err(failure(io::ErrorKind::TimedOut, text)));
                }
            }
        });
        QuicStream {
            send: Half::Waiting(send_rx),
            recv: Half::Waiting(recv_rx),
        }
    }
}

impl Stream for QuicStream {
    fn split(self: Box<Self>) -> (ReadHalf, WriteHalf) {
        (
            Box::new(QuicReader { recv: self.recv }),
            Box::new(QuicWriter { send: self.send }),
        )
    }
}

/// One end of the stream: open, still on its way (listener side), or gone.
enum Half<T> {
    Waiting(oneshot::Receiver<io::Result<T>>),
    Open(T),
    Gone,
}

impl<T> Half<T> {
    /// The open end, once it is there.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut T>> {
        if let Half::Waiting(arriving) = self {
            match ready!(Pin::new(arriving).poll(cx)) {
                Ok(Ok(end)) => *self = Half::Open(end),
                Ok(Err(error)) => {
                    *self = Half::Gone;
                    return Poll::Ready(Err(error));
                }
                Err(_) => *self = Half::Gone,
            }
        }
        match self {
            Half::Open(end) => Poll::Ready(Ok(end)),
            Half::Waiting(_) | Half::Gone => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
}

/// The read half. The peer closing its whole connection normally (code 0)
/// after its stream data counts as end-of-file, as it does for TCP.
struct QuicReader {
    recv: Half<RecvStream>,
}

impl AsyncRead for QuicReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let recv = ready!(self.recv.poll_open(cx))?;
        match ready!(recv.poll_read_buf(cx, buf)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(ReadError::ConnectionLost(ConnectionError::ApplicationClosed(close)))
                if close.error_code == VarInt::from(0u8) =>
            {
                Poll::Ready(Ok(()))
            }
            Err(error) => Poll::Ready(Err(io::Error::from(error))),
        }
    }
}

/// The write half. Shutting it down finishes the stream; dropping it also
/// keeps the connection for up to [`LINGER`] until the peer has acknowledged
/// every byte, so a Refusal or a GoAway written just before the end arrives.
struct QuicWriter {
    send: Half<SendStream>,
}

impl AsyncWrite for QuicWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let send = ready!(self.send.poll_open(cx))?;
        AsyncWrite::poll_write(Pin::new(send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let send = ready!(self.send.poll_open(cx))?;
        Pin::new(send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let send = ready!(self.send.poll_open(cx))?;
        match ready!(Pin::new(send).poll_shutdown(cx)) {
            // Finished twice, or the peer stopped reading: shut all the same.
            Err(error) if error.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

impl Drop for QuicWriter {
    fn drop(&mut self) {
        let Half::Open(send) = std::mem::replace(&mut self.send, Half::Gone) else {
            return;
        };
        // `stopped` holds the connection open until the peer acknowledged
        // everything (or stopped the stream); dropping `send` finishes it.
        let acknowledged = send.stopped();
        drop(send);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(LINGER, acknowledged).await;
            });
        }
    }
}

#[cfg(test)]
mod tests;

/// The verified certificate of a QUIC connection's peer, if it showed one.
fn quic_identity(connection: &quinn::Connection) -> Option<super::PeerIdentity> {
    let chain = connection.peer_identity()?;
    let chain = chain
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::identity_of(Some(&chain))
}
