//! `tcp://`: plain TCP over IPv4 or IPv6.
//!
//! Owns resolving a URL's host, binding, accepting and connecting TCP sockets;
//! the TLS transport reuses these pieces underneath its handshake. It never
//! reads or writes the bytes of a connection.
//!
//! A host name may stand for several addresses (say `localhost`: `127.0.0.1`
//! and `::1`). A `tcp://` listener binds every one of them, on one port; a
//! dialer tries them in the order resolved, starting the next one when the
//! one before has failed or has not answered within [`NEXT_ADDRESS_AFTER`]
//! (the attempts then race, the first to connect wins), so one dead address
//! cannot use up the whole connect timeout.

use std::io;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
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

/// How long a dial waits on one address before it also tries the next one.
pub(crate) const NEXT_ADDRESS_AFTER: Duration = Duration::from_millis(250);

/// A bound `tcp://` listener: one socket per address its host resolves to.
pub(crate) struct TcpListener {
    sockets: Vec<(tokio::net::TcpListener, Url)>,
    /// Where accepting starts next, so that no address starves another.
    turn: usize,
    nodelay: bool,
}

impl TcpListener {
    /// Binds `url`: every address its host resolves to, on one port.
    pub(crate) async fn bind(url: &Url, config: &TransportConfig) -> Result<Self, TransportError> {
        let sockets = bind_all(url, &resolve(url).await?)?
            .into_iter()
            .map(|(socket, addr)| (socket, Url::tcp(addr)))
            .collect();
        Ok(TcpListener {
            sockets,
            turn: 0,
            nodelay: config.nodelay,
        })
    }

    /// The first bound address, with the port the OS chose for port 0.
    pub(crate) fn local_url(&self) -> Url {
        self.sockets[0].1.clone()
    }

    /// Every bound address.
    pub(crate) fn local_urls(&self) -> Vec<Url> {
        self.sockets.iter().map(|(_, url)| url.clone()).collect()
    }

    /// Waits for the next connection on any address. An error concerns one
    /// attempt (for example the process ran out of file descriptors); the
    /// listener stays usable.
    pub(crate) async fn accept(&mut self) -> Result<Connected, TransportError> {
        let n = self.sockets.len();
        let start = self.turn;
        self.turn = self.turn.wrapping_add(1);
        let (accepted, local) = std::future::poll_fn(|cx| {
            for i in 0..n {
                let (socket, local) = &self.sockets[(start + i) % n];
                if let Poll::Ready(r) = socket.poll_accept(cx) {
                    return Poll::Ready((r, local.clone()));
                }
            }
            Poll::Pending
        })
        .await;
        let (stream, peer) = accepted.map_err(|error| TransportError::Io {
            url: local.to_string(),
            source: explain(Attempt::Accept, error),
        })?;
        stream
            .set_nodelay(self.nodelay)
            .map_err(|source| TransportError::Io {
                url: Url::tcp(peer).to_string(),
                source,
            })?;
        Ok(Connected {
            stream: Box::new(stream),
            remote: Url::tcp(peer).to_string(),
            identity: None,
        })
    }
}

/// Binds every one of `addrs` (duplicates once), on one port: the given
/// one, or for port 0 the one the OS chose for the first address. An
/// address that cannot be bound is left out while another was bound (a
/// host without IPv6 still listens on IPv4); none bound is an error.
fn bind_all(
    url: &Url,
    addrs: &[SocketAddr],
) -> Result<Vec<(tokio::net::TcpListener, SocketAddr)>, TransportError> {
    let mut unique: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if !unique.contains(a) {
            unique.push(*a);
        }
    }
    // A port the OS chose for one address may be taken on another; choose
    // again a few times before settling for fewer addresses.
    let tries = if unique.first().is_some_and(|a| a.port() == 0) {
        8
    } else {
        1
    };
    let mut best: Vec<(tokio::net::TcpListener, SocketAddr)> = Vec::new();
    let mut last_error = None;
    for _ in 0..tries {
        let mut bound: Vec<(tokio::net::TcpListener, SocketAddr)> = Vec::new();
        for addr in &unique {
            let mut addr = *addr;
            if let Some((_, first)) = bound.first() {
                if addr.port() == 0 {
                    addr.set_port(first.port());
                }
            }
            match bind_one(addr) {
                Ok(pair) => bound.push(pair),
                Err(e) => last_error = Some(e),
            }
        }
        let complete = bound.len() == unique.len();
        if bound.len() > best.len() {
            best = bound;
        }
        if complete {
            break;
        }
    }
    if best.is_empty() {
        return Err(TransportError::Io {
            url: url.to_string(),
            source: explain(
                Attempt::Bind,
                last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable)),
            ),
        });
    }
    Ok(best)
}

fn bind_one(addr: SocketAddr) -> io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let socket = std::net::TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpListener::from_std(socket)?;
    let local = socket.local_addr()?;
    Ok((socket, local))
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

/// Connects to a resolved address of `url` — in order, the next one
/// started when the one before failed or is slow (see the module's doc) —
/// and applies the socket options.
pub(crate) async fn connect(
    url: &Url,
    config: &TransportConfig,
) -> Result<(TcpStream, SocketAddr), TransportError> {
    let io_error = |source| TransportError::Io {
        url: url.to_string(),
        source,
    };
    let (stream, addr) = connect_any(&resolve(url).await?, NEXT_ADDRESS_AFTER)
        .await
        .map_err(|e| io_error(explain(Attempt::Connect, e)))?;
    stream.set_nodelay(config.nodelay).map_err(io_error)?;
    Ok((stream, addr))
}

/// Races connection attempts to `addrs`, starting them one by one: the next
/// when the previous failed, or after `stagger` without an answer. The first
/// connected wins; the others are dropped. All failed: the last error.
async fn connect_any(
    addrs: &[SocketAddr],
    stagger: Duration,
) -> io::Result<(TcpStream, SocketAddr)> {
    let attempt = |addr: SocketAddr| async move { (addr, TcpStream::connect(addr).await) };
    let mut waiting = addrs.iter().copied();
    let mut running = FuturesUnordered::new();
    let mut last_error = None;
    if let Some(first) = waiting.next() {
        running.push(attempt(first));
    }
    while !running.is_empty() {
        let more = waiting.len() > 0;
        tokio::select! {
            Some((addr, result)) = running.next() => match result {
                Ok(stream) => return Ok((stream, addr)),
                Err(e) => {
                    last_error = Some(e);
                    if let Some(next) = waiting.next() {
                        running.push(attempt(next));
                    }
                }
            },
            () = tokio::time::sleep(stagger), if more => {
                if let Some(next) = waiting.next() {
                    running.push(attempt(next));
                }
            }
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable)))
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

    /// A loopback address that takes a connection attempt and never
    /// answers it: a listener whose backlog is full.
    fn black_hole() -> (std::net::TcpListener, std::net::TcpStream, SocketAddr) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        socket.listen(0).expect("listen");
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().expect("addr");
        // The one place in the backlog, taken and never accepted.
        let filler = std::net::TcpStream::connect(addr).expect("fills the backlog");
        (listener, filler, addr)
    }

    #[tokio::test]
    async fn a_dial_moves_on_from_an_address_that_does_not_answer() {
        let (_hole, _filler, dead) = black_hole();
        let good = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let good_addr = good.local_addr().expect("addr");
        let started = std::time::Instant::now();
        let (_, reached) = timeout(
            STEP,
            connect_any(&[dead, good_addr], Duration::from_millis(50)),
        )
        .await
        .expect("not stuck on the first address")
        .expect("connects");
        assert_eq!(reached, good_addr);
        assert!(started.elapsed() < STEP);
        // A refused address is left at once, without waiting the stagger.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let (_, reached) = timeout(
            STEP,
            connect_any(&[closed, good_addr], Duration::from_secs(3600)),
        )
        .await
        .expect("bounded")
        .expect("connects");
        assert_eq!(reached, good_addr);
        let err = timeout(STEP, connect_any(&[closed], Duration::from_millis(1)))
            .await
            .expect("bounded")
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn a_listener_binds_every_address_on_one_port() {
        let second: SocketAddr = if std::net::TcpListener::bind("[::1]:0").is_ok() {
            "[::1]:0".parse().expect("addr")
        } else {
            "127.0.0.2:0".parse().expect("addr")
        };
        let first: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let url = Url::parse("tcp://localhost:0").expect("url");
        let bound = bind_all(&url, &[first, second, first]).expect("binds");
        assert_eq!(bound.len(), 2, "each address once");
        assert_eq!(bound[0].1.port(), bound[1].1.port(), "one port");
        let mut listener = TcpListener {
            sockets: bound.into_iter().map(|(s, a)| (s, Url::tcp(a))).collect(),
            turn: 0,
            nodelay: true,
        };
        let config = TransportConfig::new();
        for url in listener.local_urls() {
            let (dialed, accepted) = timeout(STEP, async {
                tokio::join!(dial(&url, &config), listener.accept())
            })
            .await
            .expect("within the step bound");
            exchange(dialed.expect("dial"), accepted.expect("accept")).await;
        }
        // An address that cannot be bound is left out; none at all fails.
        let foreign: SocketAddr = "192.0.2.1:0".parse().expect("addr");
        assert_eq!(bind_all(&url, &[first, foreign]).expect("one").len(), 1);
        let err = bind_all(&url, &[foreign]).expect_err("none bound");
        assert!(err.to_string().contains("localhost"), "{err}");
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
