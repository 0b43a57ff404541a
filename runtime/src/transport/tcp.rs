//! `tcp://`: plain TCP over IPv4 or IPv6.
//!
//! Owns resolving a URL's host, binding, accepting and connecting TCP sockets;
//! the TLS transport reuses these pieces underneath its handshake. It never
//! reads or writes the bytes of a connection.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpStream, ToSocketAddrs};

use super::explain::{explain, Attempt};
use super::{Connected, ReadHalf, Stream, TransportConfig, TransportError, Url, WriteHalf};
use crate::transport::url::Host;

impl Stream for TcpStream {
    fn split(self: Box<Self>) -> (ReadHalf, WriteHalf) {
        let (read, write) = self.into_split();
        (Box::new(read), Box::new(write))
    }
}

/// A bound `tcp://` listener.
pub(crate) struct TcpListener {
    socket: tokio::net::TcpListener,
    local: Url,
    nodelay: bool,
}

impl TcpListener {
    /// Binds `url`; a host name binds the first of its addresses that works.
    pub(crate) async fn bind(url: &Url, config: &TransportConfig) -> Result<Self, TransportError> {
        let (socket, addr) = bind_socket(url).await?;
        Ok(TcpListener {
            socket,
            local: Url::tcp(addr),
            nodelay: config.nodelay,
        })
    }

    /// The bound address, with the port the OS chose for port 0.
    pub(crate) fn local_url(&self) -> Url {
        self.local.clone()
    }

    /// Waits for the next connection. An error concerns one attempt (for
    /// example the process ran out of file descriptors); the listener stays usable.
    pub(crate) async fn accept(&mut self) -> Result<Connected, TransportError> {
        let (stream, peer) = accept_socket(&self.socket, &self.local, self.nodelay).await?;
        Ok(Connected {
            stream: Box::new(stream),
            remote: Url::tcp(peer).to_string(),
            identity: None,
        })
    }
}

/// Dials a `tcp://` URL.
pub(crate) async fn dial(url: &Url, config: &TransportConfig) -> Result<Connected, TransportError> {
    let (stream, peer) = connect(url, config).await?;
    Ok(Connected {
        stream: Box::new(stream),
        remote: Url::tcp(peer).to_string(),
        identity: None,
    })
}

/// Resolves the host of a tcp/tls URL: a literal IP as is, a name through the
/// system resolver.
pub(crate) async fn resolve(url: &Url) -> Result<Vec<SocketAddr>, TransportError> {
    let io_error = |source| TransportError::Io {
        url: url.to_string(),
        source,
    };
    let (Some(host), Some(port)) = (url.host(), url.port()) else {
        return Err(io_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a host:port address",
        )));
    };
    let addrs: Vec<SocketAddr> = match host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Host::Name(name) => lookup((name.as_str(), port))
            .await
            .map_err(|e| io_error(explain(Attempt::Resolve, e)))?,
    };
    if addrs.is_empty() {
        return Err(io_error(io::Error::new(
            io::ErrorKind::NotFound,
            "the host name resolved to no addresses — check the name or use an IP address",
        )));
    }
    Ok(addrs)
}

async fn lookup(target: impl ToSocketAddrs) -> io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host(target).await?.collect())
}

/// Binds the first resolved address of `url` that accepts a bind, returning
/// the socket and its actual local address.
pub(crate) async fn bind_socket(
    url: &Url,
) -> Result<(tokio::net::TcpListener, SocketAddr), TransportError> {
    let mut last_error = None;
    for addr in resolve(url).await? {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(socket) => {
                let local = socket.local_addr().map_err(|source| TransportError::Io {
                    url: url.to_string(),
                    source,
                })?;
                return Ok((socket, local));
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

/// Accepts one TCP connection and applies the socket options.
pub(crate) async fn accept_socket(
    socket: &tokio::net::TcpListener,
    local: &Url,
    nodelay: bool,
) -> Result<(TcpStream, SocketAddr), TransportError> {
    let (stream, peer) = socket.accept().await.map_err(|error| TransportError::Io {
        url: local.to_string(),
        source: explain(Attempt::Accept, error),
    })?;
    stream
        .set_nodelay(nodelay)
        .map_err(|source| TransportError::Io {
            url: Url::tcp(peer).to_string(),
            source,
        })?;
    Ok((stream, peer))
}

/// Connects to the first resolved address of `url` that answers and applies
/// the socket options.
pub(crate) async fn connect(
    url: &Url,
    config: &TransportConfig,
) -> Result<(TcpStream, SocketAddr), TransportError> {
    let io_error = |source| TransportError::Io {
        url: url.to_string(),
        source,
    };
    let mut last_error = None;
    for addr in resolve(url).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(config.nodelay).map_err(io_error)?;
                return Ok((stream, addr));
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(io_error(explain(
        Attempt::Connect,
        last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable)),
    )))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;

    use super::*;
    use crate::transport::{dial, listen, Connected, Scheme};

    /// Bound for every step of a transport test; far above what loopback needs.
    pub(crate) const STEP: Duration = Duration::from_secs(10);

    /// Writes a message each way between a dialed and an accepted stream and
    /// checks both arrive intact.
    pub(crate) async fn exchange(dialed: Connected, accepted: Connected) {
        let (mut dial_read, mut dial_write) = dialed.stream.split();
        let (mut accept_read, mut accept_write) = accepted.stream.split();

        let mut buf = [0u8; 5];
        timeout(STEP, async {
            dial_write.write_all(b"hello").await.expect("dialer writes");
            dial_write.flush().await.expect("dialer flushes");
            accept_read
                .read_exact(&mut buf)
                .await
                .expect("acceptor reads");
        })
        .await
        .expect("dialer → acceptor within the step bound");
        assert_eq!(&buf, b"hello");

        timeout(STEP, async {
            accept_write
                .write_all(b"world")
                .await
                .expect("acceptor writes");
            accept_write.flush().await.expect("acceptor flushes");
            dial_read.read_exact(&mut buf).await.expect("dialer reads");
        })
        .await
        .expect("acceptor → dialer within the step bound");
        assert_eq!(&buf, b"world");
    }

    /// Listens on `url`, dials the reported local URL and exchanges bytes.
    pub(crate) async fn listen_dial_exchange(url: &str, config: &TransportConfig) -> Url {
        let url = Url::parse(url).expect("valid url");
        let mut listener = listen(&url, config).await.expect("listen");
        let local = listener.local_url().clone();
        let (dialed, accepted) = timeout(STEP, async {
            tokio::join!(dial(&local, config), listener.accept())
        })
        .await
        .expect("dial and accept within the step bound");
        let dialed = dialed.expect("dial");
        let accepted = accepted.expect("accept");
        exchange(dialed, accepted).await;
        local
    }

    #[tokio::test]
    async fn tcp_ipv4_carries_bytes_both_ways() {
        let local = listen_dial_exchange("tcp://127.0.0.1:0", &TransportConfig::new()).await;
        assert_eq!(local.scheme(), Scheme::Tcp);
        assert_ne!(local.port(), Some(0), "port 0 is replaced by the real port");
    }

    #[tokio::test]
    async fn tcp_ipv6_carries_bytes_both_ways() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("skipping: this machine has no IPv6 loopback");
            return;
        }
        let local = listen_dial_exchange("tcp://[::1]:0", &TransportConfig::new()).await;
        assert!(local.to_string().starts_with("tcp://[::1]:"), "{local}");
    }

    #[tokio::test]
    async fn tcp_remote_names_the_peer_address() {
        let mut config = TransportConfig::new();
        config.nodelay = false;
        let mut listener = listen(&Url::parse("tcp://127.0.0.1:0").expect("url"), &config)
            .await
            .expect("listen");
        let local = listener.local_url().clone();
        let (dialed, accepted) = timeout(STEP, async {
            tokio::join!(dial(&local, &config), listener.accept())
        })
        .await
        .expect("within the step bound");
        assert_eq!(dialed.expect("dial").remote, local.to_string());
        assert!(accepted
            .expect("accept")
            .remote
            .starts_with("tcp://127.0.0.1:"));
    }

    #[tokio::test]
    async fn tcp_localhost_name_is_resolved() {
        let url = Url::parse("tcp://localhost:0").expect("url");
        let Ok(listener) = listen(&url, &TransportConfig::new()).await else {
            eprintln!("skipping: localhost does not resolve here");
            return;
        };
        let local = listener.local_url();
        assert!(
            matches!(local.host(), Some(Host::Ip(ip)) if ip.is_loopback()),
            "{local}"
        );
    }

    #[tokio::test]
    async fn tcp_dial_to_closed_port_names_the_url() {
        let port = {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            socket.local_addr().expect("addr").port()
        };
        let url = Url::parse(&format!("tcp://127.0.0.1:{port}")).expect("url");
        let err = timeout(STEP, dial(&url, &TransportConfig::new()))
            .await
            .expect("within the step bound")
            .expect_err("nothing listens");
        assert!(matches!(err, TransportError::Io { .. }), "{err}");
        assert!(err.to_string().contains(&url.to_string()), "{err}");
    }
}
