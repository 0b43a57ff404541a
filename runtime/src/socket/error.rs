//! What can go wrong on a message socket, as one error type whose messages
//! name the peer or URL and say what to do about it.

use crate::error::ConnectError;

use super::peers::PeerId;

/// Every way a [`Socket`](super::Socket) operation can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// No peer is connected. Only best-effort sockets report this; blocking
    /// sockets wait for a peer instead.
    #[error(
        "no peer is connected to this socket; dial or wait for a peer before sending \
         (a best-effort socket does not wait)"
    )]
    NoPeers,
    /// The peer is not connected to this socket: it left, or never joined.
    #[error(
        "{0} is not connected to this socket (it left or never joined); \
         reply to a source taken from recv() or pick one from peers()"
    )]
    UnknownPeer(PeerId),
    /// Best-effort send: the peer had no room (it is not reading fast
    /// enough), so the message was dropped and counted.
    #[error(
        "{peer} ({remote}) has no room: message dropped ({dropped} dropped by this socket so far); \
         the peer is not reading fast enough — send less, or build the socket with SendMode::Blocking"
    )]
    QueueFull {
        /// The peer the message was meant for.
        peer: PeerId,
        /// Who the peer is, for logs.
        remote: String,
        /// Messages this socket has dropped so far, this one included.
        dropped: u64,
    },
    /// The dialed socket is at its connection limit and refused us.
    #[error(
        "{url} refused the connection: it is at its connection limit ({reason}); \
         dial another socket, or raise its max_connections"
    )]
    TooManyConnections {
        /// The dialed URL.
        url: String,
        /// The listener's own words.
        reason: String,
    },
    /// This socket is at its own connection limit, so it does not dial.
    #[error(
        "not dialing {url}: this socket is at its limit of {max} connections; \
         wait for a peer to leave, or raise max_connections"
    )]
    AtLimit {
        /// The URL that was not dialed.
        url: String,
        /// The limit.
        max: usize,
    },
    /// The dialed endpoint speaks Plexus but is not a message socket.
    #[error(
        "{url} is a Plexus endpoint but not a message socket; dial a listening plexus::socket::Socket"
    )]
    NotASocket {
        /// The dialed URL.
        url: String,
    },
    /// A message is larger than the peer accepts in one frame.
    #[error(
        "{peer} ({remote}): message of {size} bytes exceeds the peer's limit of {limit} bytes; \
         split it, or raise the peer's ConnectionConfig::max_frame"
    )]
    TooLarge {
        /// The peer.
        peer: PeerId,
        /// Who the peer is, for logs.
        remote: String,
        /// The message size.
        size: usize,
        /// The peer's limit.
        limit: usize,
    },
    /// `recv` on a socket built with [`RecvMode::Discard`](super::RecvMode::Discard).
    #[error(
        "this socket discards what it receives (RecvMode::Discard); \
         build it with RecvMode::All to receive"
    )]
    ReceiveDisabled,
    /// A message was not forwarded: it had made as many hops as its TTL
    /// allows (a loop of switches, or a path longer than its sender meant).
    #[error(
        "message from {from} not forwarded: its TTL ran out after {hops} hops \
         (a loop among switches? raise SocketBuilder::ttl at the sender for longer paths)"
    )]
    TtlExpired {
        /// The peer it came from.
        from: PeerId,
        /// Hops it had made.
        hops: usize,
    },
    /// The negotiation on a new connection refused it.
    #[error("{url}: the {} refused the connection: {reason}", if *by_peer { "peer's negotiator" } else { "socket's own negotiator" })]
    Negotiation {
        /// The dialed URL.
        url: String,
        /// The negotiator's reason.
        reason: String,
        /// Whether the peer (the listening socket) refused, rather than this
        /// socket's own negotiator.
        by_peer: bool,
    },
    /// Listening or dialing failed (bad URL, unreachable, refused, TLS, ...).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The socket was closed with [`Socket::close`](super::Socket::close).
    #[error("the socket is closed; make a new one to keep talking")]
    Closed,
}
