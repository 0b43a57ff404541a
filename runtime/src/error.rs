//! The errors a caller sees: [`Reject`] (a handler's explicit "no"),
//! [`CallError`] (every way a call can end other than success) and
//! [`ConnectError`] (every way connecting or listening can fail).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::transport::TransportError;
use crate::wire::handshake::RefusalCode;
use crate::wire::WireError;

/// A handler's explicit refusal of a call: an application code, a
/// human-readable message and optional opaque details.
///
/// Handlers return `Err(Reject)`; callers receive it as
/// [`CallError::Rejected`] with the same code, message and details.
///
/// ```
/// let r = plexus::Reject::new(404, "no such user").with_details("alice");
/// assert_eq!(r.code(), 404);
/// assert_eq!(r.message(), "no such user");
/// assert_eq!(&r.details()[..], b"alice");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Reject {
    code: u32,
    message: String,
    details: Bytes,
    /// Set by [`Reject::invalid_payload`] and [`Reject::handler_failed`]: the
    /// runtime, not the application, refused the call, and the caller sees
    /// the matching [`CallError`] variant instead of `Rejected`.
    system: Option<crate::wire::SystemCode>,
}

impl Reject {
    /// A rejection with an application-defined `code` and a message for humans.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Reject {
            code,
            message: message.into(),
            details: Bytes::new(),
            system: None,
        }
    }

    /// Attaches opaque details (e.g. an encoded error structure).
    pub fn with_details(mut self, details: impl Into<Bytes>) -> Self {
        self.details = details.into();
        self
    }

    /// The refusal a handler adapter returns when the request bytes cannot be
    /// decoded. The caller receives [`CallError::Decode`], not `Rejected`.
    pub fn invalid_payload(message: impl Into<String>) -> Self {
        Self::system(crate::wire::SystemCode::InvalidPayload, message)
    }

    /// The refusal a handler adapter returns when the handler could not
    /// produce its reply (e.g. the reply failed to encode). The caller
    /// receives [`CallError::HandlerFailed`].
    pub fn handler_failed(message: impl Into<String>) -> Self {
        Self::system(crate::wire::SystemCode::HandlerFailed, message)
    }

    /// The refusal for a call the caller is not permitted to make (an
    /// authorization policy said no); the caller receives
    /// [`CallError::PermissionDenied`]. Name the operation, not the rule.
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::system(crate::wire::SystemCode::PermissionDenied, message)
    }

    /// The refusal for a call that would pass one of this side's limits;
    /// the caller receives [`CallError::Overloaded`].
    pub(crate) fn overloaded(message: impl Into<String>) -> Self {
        Self::system(crate::wire::SystemCode::ResourceExhausted, message)
    }

    fn system(code: crate::wire::SystemCode, message: impl Into<String>) -> Self {
        Reject {
            code: code as u32,
            message: message.into(),
            details: Bytes::new(),
            system: Some(code),
        }
    }

    /// The application code.
    pub fn code(&self) -> u32 {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The details (empty if none were attached).
    pub fn details(&self) -> &Bytes {
        &self.details
    }

    /// The system code, when the runtime (not the application) refused.
    pub(crate) fn system_code(&self) -> Option<crate::wire::SystemCode> {
        self.system
    }
}

impl fmt::Debug for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Reject");
        d.field("code", &self.code).field("message", &self.message);
        if !self.details.is_empty() {
            d.field("details", &self.details);
        }
        d.finish()
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rejected with code {}: {}", self.code, self.message)
    }
}

impl std::error::Error for Reject {}

/// Every way a call can end other than success.
///
/// Messages name the operation and the peer, and where there is one, the
/// remedy. Match on the variant to decide what to do; the fields are there
/// for logs.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The handler refused the call; code, message and details are its own.
    #[error("{0}")]
    Rejected(Reject),
    /// The deadline passed before a reply arrived; the handler was told to stop.
    #[error("{op} on {peer}: no reply within {after:?} (raise the call's timeout if the operation is slow)")]
    Timeout {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
        /// The deadline that passed.
        after: Duration,
    },
    /// The call was cancelled, by this side or the peer.
    #[error("{op} on {peer}: cancelled")]
    Cancelled {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
    },
    /// The peer has no handler for the operation.
    #[error("{op} on {peer}: no such operation (is the service registered on that peer?)")]
    NoSuchOperation {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
    },
    /// The handler panicked or failed without rejecting.
    #[error("{op} on {peer}: handler failed: {message}")]
    HandlerFailed {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
        /// What the peer reported.
        message: String,
    },
    /// The connection died before the call ended.
    #[error("{op} on {peer}: connection lost: {reason}")]
    ConnectionLost {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
        /// Why the connection ended.
        reason: Arc<str>,
    },
    /// The peer broke the protocol; the connection was closed.
    #[error("{op} on {peer}: protocol error: {message}")]
    Protocol {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
        /// What was wrong.
        message: String,
    },
    /// A request or reply could not be decoded.
    #[error("{op} on {peer}: payload could not be decoded: {message}")]
    Decode {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
        /// The codec's complaint.
        message: String,
    },
    /// This side could not encode a request or stream item.
    #[error("{op} on {peer}: request could not be encoded: {message}")]
    Encode {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
        /// The codec's complaint.
        message: String,
    },
    /// The connection is shutting down and takes no new calls; the call was not
    /// processed and is safe to retry on another connection.
    #[error("{op} on {peer}: connection is closing and takes no new calls (reconnect and retry)")]
    Closing {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
    },
    /// The peer was at one of its limits (calls served at once for this
    /// side, sessions, memory) and refused the call before running it; safe
    /// to retry after a pause. A Plexus caller keeps within the limit the
    /// peer announced, so seeing this means another caller ignored it, or a
    /// session limit was reached.
    #[error(
        "{op} on {peer}: the peer is at a limit and did not run the call: {message} (retry later)"
    )]
    Overloaded {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
        /// Which limit.
        message: String,
    },
    /// The peer's policy does not let this side call the operation; not run.
    #[error("{op} on {peer}: permission denied: {message}")]
    PermissionDenied {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
        /// What the peer said (never its policy's internals).
        message: String,
    },
    /// The peer neither accepted nor rejected a session within the settle timeout.
    #[error("session `{session}` with {peer}: neither accepted nor rejected within {after:?}")]
    SessionTimeout {
        /// The session's name.
        session: Arc<str>,
        /// The peer.
        peer: Arc<str>,
        /// The settle timeout.
        after: Duration,
    },
    /// The call was made in, or cut short by, a session that is closed.
    #[error("{op} on {peer}: session `{session}` is closed")]
    SessionClosed {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
        /// The session's name (or id, when the peer reported it).
        session: Arc<str>,
    },
    /// A message is larger than the peer accepts.
    #[error("{op} on {peer}: message of {size} bytes exceeds the peer's limit of {limit} bytes")]
    MessageTooLarge {
        /// Operation id.
        op: Arc<str>,
        /// The peer.
        peer: Arc<str>,
        /// The message's size.
        size: usize,
        /// The largest message the peer takes here: its frame limit, less
        /// what the call's own fields (operation, deadline, metadata) take
        /// of the call-open frame.
        limit: usize,
    },
    /// A call meant for one peer of a set found no peer to take it: the set
    /// was empty, or every member failed before running it.
    #[error("no peer serving {service} could take the call (is any peer serving it linked to this node, in the same group?)")]
    NoPeers {
        /// The service's full name.
        service: Arc<str>,
    },
}

impl CallError {
    /// No peer could take the call: the set of peers serving the service
    /// was empty, or every member failed before running it.
    pub fn no_peers(service: impl Into<Arc<str>>) -> Self {
        CallError::NoPeers {
            service: service.into(),
        }
    }

    /// A reply or stream item that the caller's codec could not decode.
    pub fn decode(
        op: impl Into<Arc<str>>,
        peer: impl Into<Arc<str>>,
        message: impl fmt::Display,
    ) -> Self {
        CallError::Decode {
            op: op.into(),
            peer: peer.into(),
            message: message.to_string(),
        }
    }

    /// A request or stream item that the caller's codec could not encode.
    pub fn encode(
        op: impl Into<Arc<str>>,
        peer: impl Into<Arc<str>>,
        message: impl fmt::Display,
    ) -> Self {
        CallError::Encode {
            op: op.into(),
            peer: peer.into(),
            message: message.to_string(),
        }
    }

    /// The rejection, if the handler refused the call.
    pub fn as_reject(&self) -> Option<&Reject> {
        match self {
            CallError::Rejected(r) => Some(r),
            _ => None,
        }
    }

    /// Whether retrying the same call (on this or another connection) may succeed
    /// without risk of running it twice: the peer never started it.
    pub fn is_safe_to_retry(&self) -> bool {
        matches!(
            self,
            CallError::Closing { .. }
                | CallError::NoSuchOperation { .. }
                | CallError::Overloaded { .. }
        )
    }
}

/// Every way connecting, listening or the handshake can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The transport failed (bad URL, unreachable, TLS handshake, ...).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The listener refused the connection.
    #[error("{url} refused the connection ({code:?}): {reason}")]
    Refused {
        /// Where we dialed.
        url: String,
        /// Why, as a code.
        code: RefusalCode,
        /// Why, in words.
        reason: String,
    },
    /// The peer speaks another protocol version.
    #[error(
        "{url} speaks Plexus protocol v{theirs}, this side speaks v{ours}; upgrade the older side"
    )]
    VersionMismatch {
        /// The peer.
        url: String,
        /// Our version.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// The dialed address is this endpoint's own listener.
    #[error("{url} is this endpoint itself (node {node}); a node does not connect to itself")]
    SelfConnect {
        /// Where we dialed.
        url: String,
        /// Our node id.
        node: String,
    },
    /// The far side is not a Plexus peer or sent a malformed handshake.
    #[error("{url}: handshake failed: {source}")]
    Handshake {
        /// The peer.
        url: String,
        /// What was wrong.
        #[source]
        source: WireError,
    },
    /// The dial did not reach the peer in time (no answer to the TCP
    /// connect, or for `tls://` to the TLS handshake).
    #[error("{url}: no connection within {after:?} (is the address right and the peer up? raise ConnectionConfig::connect_timeout for slow links)")]
    ConnectTimeout {
        /// Where we dialed.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// This side refused to trust the peer: it could not prove the session
    /// key this side holds (or proved none: a keyed node never accepts a
    /// keyless peer), or its certificate is not on this side's allow-list.
    #[error("{url}: refused to trust the peer: {reason}")]
    Untrusted {
        /// The peer.
        url: String,
        /// Why.
        reason: String,
    },
    /// The handshake did not complete in time.
    #[error("{url}: handshake did not complete within {after:?}")]
    HandshakeTimeout {
        /// The peer.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// The connection closed during the handshake.
    #[error("{url}: connection closed during the handshake: {reason}")]
    Closed {
        /// The peer.
        url: String,
        /// What happened.
        reason: String,
    },
}

impl ConnectError {
    /// The refusal code this error stands for, when the listener refused (or
    /// would have sent) one.
    pub fn refusal_code(&self) -> Option<RefusalCode> {
        match self {
            ConnectError::Refused { code, .. } => Some(*code),
            ConnectError::VersionMismatch { .. } => Some(RefusalCode::VersionMismatch),
            ConnectError::SelfConnect { .. } => Some(RefusalCode::SelfConnect),
            _ => None,
        }
    }
}
