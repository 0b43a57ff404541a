//! Transports: URL-addressed listeners and dialers that yield byte streams.
//!
//! This layer owns sockets and nothing above them: it knows no frames, calls or
//! handshakes. Each scheme lives in its own module and is reached through
//! [`Url`]; adding a transport means adding one module and one arm in
//! [`dial`] and [`listen`].
//!
//! | scheme | address form | module |
//! |---|---|---|
//! | `tcp` | `tcp://127.0.0.1:4000`, `tcp://[::1]:0`, `tcp://localhost:4000` | `tcp` |
//! | `tls` | `tls://127.0.0.1:4443` (TCP + rustls; see `TlsConfig`; cargo feature `tls`, on by default) | `tls` |
//! | `unix` | `unix:///run/app.sock` | `unix` |
//! | `inproc` | `inproc://name` (same process, no socket) | `inproc` |
//! | `ws` | `ws://127.0.0.1:8080`, `ws://localhost:8080/plexus` (binary WebSocket messages) | `ws` |
//! | `wss` | `wss://127.0.0.1:8443/plexus` (WebSocket over TLS; see [`TlsConfig`]) | `ws` |
//! | `quic` | `quic://127.0.0.1:4433` (QUIC over UDP, TLS 1.3; see [`TlsConfig`]) | `quic` |
//!
//! Every transport carries one ordered, reliable byte stream per connection;
//! the protocol above never knows which one it runs on. `ws`/`wss` carry it
//! in binary WebSocket messages whose boundaries mean nothing, and `quic` in
//! one bidirectional QUIC stream per QUIC connection (the module docs say why).

mod explain;
mod identity;
mod inproc;
mod pending;
#[cfg(feature = "tls")]
mod quic;
mod tcp;
#[cfg(feature = "tls")]
mod tls;
#[cfg(unix)]
mod unix;
mod url;
mod ws;

use std::fmt;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

pub use self::identity::{DistinguishedName, PeerIdentity};
#[cfg(feature = "tls")]
pub use self::tls::{TlsConfig, TlsConfigError};
pub use self::url::{Host, Scheme, Url, UrlError};

/// The read half of a transport stream.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a transport stream.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A connected byte stream from any transport, ready to be split into halves
/// that a reader task and a writer task own independently.
pub trait Stream: Send + 'static {
    /// Splits the stream into independently owned halves. Transports that can
    /// split without a lock (TCP, Unix) do so.
    fn split(self: Box<Self>) -> (ReadHalf, WriteHalf);
}

/// A byte stream accepted or dialed by a transport, with a printable
/// description of the far end (for error messages and logs).
pub struct Connected {
    /// The stream itself.
    pub stream: Box<dyn Stream>,
    /// The far end's address as the transport sees it, e.g. `tcp://127.0.0.1:51234`.
    pub remote: String,
    /// The far end's verified certificate, on a secured transport that
    /// verified one (`tls://`, `wss://`, `quic://`; on the listening side only
    /// when it asks clients for certificates).
    pub identity: Option<PeerIdentity>,
}

impl fmt::Debug for Connected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connected")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// Errors raised while binding or dialing a transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL could not be parsed or names an unknown scheme.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// `tls://`, `wss://` or `quic://` was used without the TLS
    /// configuration it needs.
    #[error(
        "{url}: this scheme is secured by TLS and needs {what} — pass a TlsConfig that has it \
         (TransportConfig::with_tls, or the endpoint builder's tls)"
    )]
    TlsNotConfigured {
        /// The URL being bound or dialed.
        url: String,
        /// What is missing, naming the [`TlsConfig`] constructor that provides it.
        what: &'static str,
    },
    /// `tls://` was used in a build of plexus without its `tls` feature.
    #[error(
        "{url}: this build of plexus has no TLS — enable the `tls` feature of the \
         plexus crate (on by default; turned off by `default-features = false`)"
    )]
    TlsNotBuilt {
        /// The URL being bound or dialed.
        url: String,
    },
    /// An inproc name is already bound in this process.
    #[error("{url}: an inproc listener with this name already exists in this process")]
    InprocNameTaken {
        /// The URL being bound.
        url: String,
    },
    /// Nothing listens on an inproc name.
    #[error("{url}: no inproc listener with this name in this process")]
    InprocNotFound {
        /// The URL being dialed.
        url: String,
    },
    /// The TLS handshake failed (untrusted certificate, missing client
    /// certificate, timeout, ...). On a listener this concerns one peer only.
    #[error(
        "{url}: TLS handshake failed: {source} — check that each side trusts the other's CA, \
         that the server certificate names the dialed host (or set TlsConfig::server_name), \
         and that a client certificate is given where one is required"
    )]
    Tls {
        /// The URL being dialed or the remote address being accepted.
        url: String,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The WebSocket upgrade of `ws://` or `wss://` failed: the far side is
    /// not a WebSocket server (or client), it serves another path or
    /// subprotocol, a message broke the WebSocket rules, or the upgrade timed
    /// out. On a listener this concerns one peer only.
    #[error(
        "{url}: WebSocket upgrade failed: {source} — check that the far side is a Plexus \
         ws:// or wss:// endpoint and that the URL's path is the one it listens on"
    )]
    WebSocket {
        /// The URL being dialed or the remote address being accepted.
        url: String,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// A `quic://` connection could not be set up or lost its stream: no QUIC
    /// listener answered, the peer closed the connection, or it opened no
    /// stream in time. Certificate failures are [`TransportError::Tls`]. On a
    /// listener this concerns one peer only.
    #[error(
        "{url}: QUIC connection failed: {source} — check that a Plexus quic:// listener runs \
         there (QUIC runs over UDP, which a firewall may drop)"
    )]
    Quic {
        /// The URL being dialed or the remote address being accepted.
        url: String,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The scheme is known but not available on this platform (e.g. `unix://`
    /// on Windows).
    #[error(
        "{url}: {scheme}:// is not available on this platform — use tcp:// or inproc:// instead"
    )]
    Unsupported {
        /// The URL being bound or dialed.
        url: String,
        /// The unavailable scheme.
        scheme: Scheme,
    },
    /// Binding, dialing or resolving failed at the operating-system level.
    #[error("{url}: {source}")]
    Io {
        /// The URL being bound or dialed.
        url: String,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
}

/// Options a transport may need beyond the URL.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// TLS settings for `tls://`, `wss://` and `quic://`; `None` makes those
    /// schemes an error.
    #[cfg(feature = "tls")]
    pub tls: Option<TlsConfig>,
    /// Sets `TCP_NODELAY` on the TCP sockets of `tcp://`, `tls://`, `ws://`
    /// and `wss://` (default true via [`TransportConfig::new`]).
    pub nodelay: bool,
    /// Bounds the part of a transport's handshake that is not TLS: the HTTP
    /// upgrade of `ws://` and `wss://`, and a `quic://` listener's wait for
    /// the dialer's stream (default 10 s). TLS itself, including QUIC's, is
    /// bounded by [`TlsConfig::handshake_timeout`].
    pub handshake_timeout: Duration,
    /// The largest WebSocket message `ws://` and `wss://` accept, in bytes
    /// (default 16 MiB + 64 KiB: one default-sized Plexus frame with its
    /// header, with room to spare). A larger message closes the connection.
    /// Raise it with the connection's max frame if peers send one frame per
    /// message, as the browser client does. Plexus itself sends messages of
    /// at most 1 MiB.
    pub ws_max_message: usize,
}

impl TransportConfig {
    /// Defaults: no TLS, `TCP_NODELAY` on, 10 s handshakes, WebSocket
    /// messages up to 16 MiB + 64 KiB.
    pub fn new() -> Self {
        Self {
            #[cfg(feature = "tls")]
            tls: None,
            nodelay: true,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            ws_max_message: ws::DEFAULT_MAX_MESSAGE,
        }
    }

    /// Uses `tls` for `tls://`, `wss://` and `quic://` URLs.
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }
}

impl Default for TransportConfig {
    /// The same as [`TransportConfig::new`].
    fn default() -> Self {
        Self::new()
    }
}

/// A bound listener of any transport.
pub struct Listener {
    inner: ListenerKind,
    local: Url,
}

enum ListenerKind {
    Tcp(tcp::TcpListener),
    #[cfg(feature = "tls")]
    Tls(tls::TlsListener),
    #[cfg(unix)]
    Unix(unix::UnixListener),
    Inproc(inproc::InprocListener),
    Ws(ws::WsListener),
    #[cfg(feature = "tls")]
    Quic(quic::QuicListener),
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// The URL this listener is reachable at; for `tcp://host:0` it carries the
    /// port the operating system chose.
    pub fn local_url(&self) -> &Url {
        &self.local
    }

    /// Every URL this listener is reachable at: for `tcp://` with a host
    /// name, one per address the name resolved to (all on one port); for
    /// everything else, [`local_url`](Self::local_url) alone.
    pub fn local_urls(&self) -> Vec<Url> {
        match &self.inner {
            ListenerKind::Tcp(l) => l.local_urls(),
            _ => vec![self.local.clone()],
        }
    }

    /// Waits for the next connection.
    ///
    /// An error concerns one connection attempt, never the listener: log it
    /// and call `accept` again. For TLS, WebSocket and QUIC, handshakes run
    /// concurrently in tasks the listener owns (each bounded by
    /// [`TlsConfig::handshake_timeout`] and
    /// [`TransportConfig::handshake_timeout`]), so a silent peer cannot hold
    /// up others; a peer that fails or times out yields
    /// [`TransportError::Tls`], [`TransportError::WebSocket`] or
    /// [`TransportError::Quic`] naming it.
    ///
    /// Cancel-safe: dropping the future loses no accepted connection.
    pub async fn accept(&mut self) -> Result<Connected, TransportError> {
        match &mut self.inner {
            ListenerKind::Tcp(l) => l.accept().await,
            #[cfg(feature = "tls")]
            ListenerKind::Tls(l) => l.accept().await,
            #[cfg(unix)]
            ListenerKind::Unix(l) => l.accept().await,
            ListenerKind::Inproc(l) => l.accept().await,
            ListenerKind::Ws(l) => l.accept().await,
            #[cfg(feature = "tls")]
            ListenerKind::Quic(l) => l.accept().await,
        }
    }
}

/// Binds a listener for `url`.
pub async fn listen(url: &Url, config: &TransportConfig) -> Result<Listener, TransportError> {
    let (inner, local) = match url.scheme() {
        Scheme::Tcp => {
            let l = tcp::TcpListener::bind(url, config).await?;
            let local = l.local_url();
            (ListenerKind::Tcp(l), local)
        }
        #[cfg(feature = "tls")]
        Scheme::Tls => {
            let l = tls::TlsListener::bind(url, config).await?;
            let local = l.local_url();
            (ListenerKind::Tls(l), local)
        }
        #[cfg(not(feature = "tls"))]
        Scheme::Tls => return Err(tls_not_built(url)),
        #[cfg(unix)]
        Scheme::Unix => {
            let l = unix::UnixListener::bind(url).await?;
            let local = l.local_url();
            (ListenerKind::Unix(l), local)
        }
        #[cfg(not(unix))]
        Scheme::Unix => return Err(unsupported(url)),
        Scheme::Inproc => {
            let l = inproc::InprocListener::bind(url)?;
            let local = l.local_url();
            (ListenerKind::Inproc(l), local)
        }
        #[cfg(not(feature = "tls"))]
        Scheme::Wss | Scheme::Quic => return Err(tls_not_built(url)),
        #[cfg(not(feature = "tls"))]
        Scheme::Ws => {
            let l = ws::WsListener::bind(url, config).await?;
            let local = l.local_url();
            (ListenerKind::Ws(l), local)
        }
        #[cfg(feature = "tls")]
        Scheme::Ws | Scheme::Wss => {
            let l = ws::WsListener::bind(url, config).await?;
            let local = l.local_url();
            (ListenerKind::Ws(l), local)
        }
        #[cfg(feature = "tls")]
        Scheme::Quic => {
            let l = quic::QuicListener::bind(url, config).await?;
            let local = l.local_url();
            (ListenerKind::Quic(l), local)
        }
    };
    Ok(Listener { inner, local })
}

/// Dials `url` and returns the connected stream.
pub async fn dial(url: &Url, config: &TransportConfig) -> Result<Connected, TransportError> {
    match url.scheme() {
        Scheme::Tcp => tcp::dial(url, config).await,
        #[cfg(feature = "tls")]
        Scheme::Tls => tls::dial(url, config).await,
        #[cfg(not(feature = "tls"))]
        Scheme::Tls => Err(tls_not_built(url)),
        #[cfg(unix)]
        Scheme::Unix => unix::dial(url).await,
        #[cfg(not(unix))]
        Scheme::Unix => Err(unsupported(url)),
        Scheme::Inproc => inproc::dial(url).await,
        Scheme::Ws => ws::dial(url, config).await,
        #[cfg(feature = "tls")]
        Scheme::Wss => ws::dial(url, config).await,
        #[cfg(feature = "tls")]
        Scheme::Quic => quic::dial(url, config).await,
        #[cfg(not(feature = "tls"))]
        Scheme::Wss | Scheme::Quic => Err(tls_not_built(url)),
    }
}

/// How long a transport's own handshake (TLS, a WebSocket upgrade, QUIC)
/// may take unless configured otherwise.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(10);

/// The error of a transport handshake that ran out of time.
pub(crate) fn timed_out(limit: std::time::Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the handshake did not finish within {limit:?}"),
    )
}

#[cfg(not(feature = "tls"))]
fn tls_not_built(url: &Url) -> TransportError {
    TransportError::TlsNotBuilt {
        url: url.to_string(),
    }
}

#[cfg(not(unix))]
fn unsupported(url: &Url) -> TransportError {
    TransportError::Unsupported {
        url: url.to_string(),
        scheme: url.scheme(),
    }
}

#[cfg(all(test, not(feature = "tls")))]
mod without_tls {
    use super::*;

    #[tokio::test]
    async fn tls_urls_are_refused_naming_the_feature() {
        let url = Url::parse("tls://127.0.0.1:0").expect("a tls url still parses");
        let config = TransportConfig::new();
        let listen_err = listen(&url, &config).await.expect_err("no tls listener");
        let dial_err = dial(&url, &config).await.expect_err("no tls dialer");
        for err in [listen_err, dial_err] {
            assert!(matches!(err, TransportError::TlsNotBuilt { .. }), "{err:?}");
            assert!(err.to_string().contains("`tls` feature"), "{err}");
        }
    }
}
