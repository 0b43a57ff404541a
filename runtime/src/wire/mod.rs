//! The wire protocol: frame encoding and decoding and the handshake.
//!
//! Pure functions over byte buffers — this module never touches a socket, a
//! task or a clock, which is what makes it fuzzable and property-testable.
//! The byte layout is specified in `docs/PROTOCOL.md`; this module is the
//! reference implementation of that document.
//!
//! Each item has one path, in the submodule that owns it: [`frame`] (the
//! frames, their encoders and [`decode`](frame::decode)), [`handshake`] (the
//! hello, welcome and refusal messages), [`key`] (session keys and their
//! proofs), [`driver`] (the handshake's state machines) and [`varint`]; what
//! all of them share (the errors, the system codes, the default frame limit)
//! is here.

pub mod driver;
pub mod frame;
pub mod handshake;
pub mod key;
pub(crate) mod node_id;
pub mod varint;

use self::frame::Kind;

/// Default largest frame payload a side accepts (announced in the handshake).
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// Codes for runtime-generated rejects (frames with the `SYSTEM` flag) and goaways.
/// The numeric values are part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SystemCode {
    /// No handler is registered for the operation.
    NoSuchOperation = 1,
    /// The handler panicked or failed without rejecting.
    HandlerFailed = 2,
    /// The deadline passed before the handler finished.
    DeadlineExceeded = 3,
    /// The call was cancelled.
    Cancelled = 4,
    /// The request could not be decoded by the handler's codec.
    InvalidPayload = 5,
    /// The receiver is shutting down and takes no new calls.
    GoingAway = 6,
    /// The peer broke the protocol.
    Protocol = 7,
    /// A message exceeded a size limit.
    TooLarge = 8,
    /// The call names a session that is not open (closed, never opened, or rejected).
    SessionClosed = 9,
    /// The receiver is at a limit (calls served at once, sessions, memory)
    /// and did not run the call; safe to retry later. In a goaway: the
    /// sender cut this side off for exceeding a limit.
    ResourceExhausted = 10,
    /// The receiver's policy does not let the caller call the operation; it
    /// did not run. In a goaway: the sender revoked this side's access.
    PermissionDenied = 11,
    /// A code this implementation does not know.
    Unknown = 0xffff,
}

impl SystemCode {
    /// Maps a wire value to a code; unknown values become [`SystemCode::Unknown`].
    pub fn from_u32(v: u32) -> SystemCode {
        match v {
            1 => SystemCode::NoSuchOperation,
            2 => SystemCode::HandlerFailed,
            3 => SystemCode::DeadlineExceeded,
            4 => SystemCode::Cancelled,
            5 => SystemCode::InvalidPayload,
            6 => SystemCode::GoingAway,
            7 => SystemCode::Protocol,
            8 => SystemCode::TooLarge,
            9 => SystemCode::SessionClosed,
            10 => SystemCode::ResourceExhausted,
            11 => SystemCode::PermissionDenied,
            _ => SystemCode::Unknown,
        }
    }
}

/// What a wrong magic looks like it is, to say what to do instead.
fn magic_hint(magic: &[u8; 4]) -> &'static str {
    match magic {
        // A TLS record: an alert (0x15) or a handshake (0x16), version 3.x.
        [0x15 | 0x16, 0x03, ..] => {
            " — the peer speaks TLS: dial tls:// (or wss://) with a TlsConfig"
        }
        [b'H', b'T', b'T', b'P'] => {
            " — the peer is an HTTP server: dial ws:// if it serves Plexus over WebSocket"
        }
        _ => "",
    }
}

/// A violation of the wire protocol found while decoding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The stream does not start with `PLXS`.
    #[error("not a Plexus peer: expected magic \"PLXS\", got {0:02x?}{hint}", hint = magic_hint(.0))]
    BadMagic([u8; 4]),
    /// A frame's announced payload is larger than this side accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced payload length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// An unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A field ends before its announced length.
    #[error("truncated {field}")]
    Truncated {
        /// Which field.
        field: &'static str,
    },
    /// A varint longer than its type allows.
    #[error("{field} does not fit its integer type")]
    VarintOverflow {
        /// Which field.
        field: &'static str,
    },
    /// A text field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// A frame kind that carries no payload carried one.
    #[error("{kind:?} frame carries unexpected payload bytes")]
    TrailingBytes {
        /// The frame kind.
        kind: Kind,
    },
    /// Too many metadata pairs on one call.
    #[error(
        "{count} metadata pairs exceed the limit of {}",
        frame::MAX_METADATA_PAIRS
    )]
    TooManyMetadata {
        /// Announced count.
        count: u64,
    },
    /// Handshake application data above [`handshake::MAX_HANDSHAKE_DATA`].
    #[error("handshake data of {len} bytes exceeds the limit of {max} bytes")]
    HandshakeDataTooLarge {
        /// Announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A peer announced a max-frame size below [`handshake::MIN_FRAME`].
    #[error("announced max frame size {max_frame} is below the minimum {min}")]
    MaxFrameTooSmall {
        /// Announced size.
        max_frame: u32,
        /// The minimum.
        min: u32,
    },
    /// The answer's status byte is neither welcome nor refusal.
    #[error("handshake answer has unknown status {0}")]
    BadAnswerStatus(u8),
    /// A hello or welcome of a protocol version this implementation does not
    /// speak (only its prefix can be read).
    #[error("handshake of protocol version {0}; this side speaks version {v}", v = handshake::VERSION)]
    UnsupportedVersion(u16),
    /// A handshake's extension area is larger than accepted.
    #[error("handshake extensions of {len} bytes exceed the limit of {max} bytes")]
    HandshakeExtensionsTooLarge {
        /// Announced length.
        len: u16,
        /// The limit.
        max: u16,
    },
    /// The same extension type twice in one handshake message.
    #[error("handshake extension type {0} appears twice")]
    DuplicateExtension(u16),
    /// A peer announced that it serves no calls at all.
    #[error("announced max calls is 0; a peer must serve at least one call at a time")]
    NoCallsAllowed,
    /// A fixed-size field of the wrong size.
    #[error("{field} is {len} bytes; it must be exactly {expected}")]
    WrongLength {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The only length allowed.
        expected: usize,
    },
    /// A name or key longer than its limit.
    #[error("{field} of {len} bytes is longer than the limit of {max} bytes")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
}
