//! The handshake: the first bytes each side sends before any frame.
//!
//! The dialer sends a [`Hello`]; the listener answers with a [`Welcome`]
//! (accepted, with its own identity, limits and application data) or a
//! [`Refusal`] (code and reason), then closes if it refused.
//!
//! Both messages start with the same fixed prefix, so any future version can
//! still read enough of an old peer's message to refuse it clearly:
//!
//! ```text
//! magic "PLXS" (4) | version u16 BE | ...
//! ```
//!
//! ```text
//! Hello:   prefix | flags u16 | node id (16) | max frame u32 | window u32 | max calls u32
//!                 | extensions len u16 | data len u32 | extensions | data
//! Answer:  prefix | status u8 (0 = welcome, 1 = refusal) | ...
//! Welcome: ... | node id (16) | max frame u32 | window u32 | max calls u32
//!              | extensions len u16 | data len u32 | extensions | data
//! Refusal: ... | code u16 | reason len u16 | reason (UTF-8)
//! ```
//!
//! Extensions are `type u16 | length u16 | value` entries; a receiver skips
//! types it does not know, so later features can ride in them without a new
//! protocol version.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::WireError;

/// The four bytes every Plexus connection starts with.
pub const MAGIC: [u8; 4] = *b"PLXS";
/// The protocol version this implementation speaks.
pub const VERSION: u16 = 2;
/// Largest application data accepted in a hello or welcome.
pub const MAX_HANDSHAKE_DATA: u32 = 64 * 1024;
/// Largest extension area accepted in a hello or welcome, in bytes.
pub const MAX_EXTENSIONS: u16 = 4096;
/// Smallest max-frame size a peer may announce.
pub const MIN_FRAME: u32 = 1024;

const PREFIX_LEN: usize = 6;
const HELLO_FIXED: usize = PREFIX_LEN + 2 + 16 + 4 + 4 + 4 + 2 + 4;
const WELCOME_FIXED: usize = PREFIX_LEN + 1 + 16 + 4 + 4 + 4 + 2 + 4;

/// One handshake extension: a typed value the receiver may not know (and
/// then skips).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// What the value is; each type appears at most once per message.
    pub kind: u16,
    /// The value, at most 65 535 bytes.
    pub value: Bytes,
}

/// What the dialer announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version of the dialer.
    pub version: u16,
    /// The dialer's node id.
    pub node_id: u128,
    /// Largest frame payload the dialer accepts.
    pub max_frame: u32,
    /// Bytes of stream data the dialer buffers per stream before granting credit.
    pub window: u32,
    /// Most calls the dialer serves at once for the listener (at least 1).
    pub max_calls: u32,
    /// Extensions, in order.
    pub extensions: Vec<Extension>,
    /// Application data (Interconnect's "data on the initial connection").
    pub data: Bytes,
}

/// The listener's acceptance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version of the listener.
    pub version: u16,
    /// The listener's node id.
    pub node_id: u128,
    /// Largest frame payload the listener accepts.
    pub max_frame: u32,
    /// The listener's per-stream receive window.
    pub window: u32,
    /// Most calls the listener serves at once for the dialer (at least 1).
    pub max_calls: u32,
    /// Extensions, in order.
    pub extensions: Vec<Extension>,
    /// Application data returned by the listener's accept hook.
    pub data: Bytes,
}

/// Why a listener refused a connection. The numeric values are part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The dialer speaks a protocol version the listener does not.
    VersionMismatch = 1,
    /// The dialer has the listener's own node id.
    SelfConnect = 2,
    /// The application's accept hook said no.
    Rejected = 3,
    /// The listener is at its connection limit.
    TooManyConnections = 4,
    /// The hello could not be parsed.
    Malformed = 5,
    /// The listener is shutting down.
    ShuttingDown = 6,
    /// The listener has a session key and the hello proved none.
    KeyRequired = 7,
    /// The hello names another session key than the listener's.
    KeyMismatch = 8,
    /// The listener's allow-list does not admit the dialer's certificate
    /// (or it showed none).
    NotAllowed = 9,
    /// A code this implementation does not know.
    Other = 0xffff,
}

impl RefusalCode {
    /// Maps a wire value to a code; unknown values become [`RefusalCode::Other`].
    pub fn from_u16(v: u16) -> RefusalCode {
        match v {
            1 => RefusalCode::VersionMismatch,
            2 => RefusalCode::SelfConnect,
            3 => RefusalCode::Rejected,
            4 => RefusalCode::TooManyConnections,
            5 => RefusalCode::Malformed,
            6 => RefusalCode::ShuttingDown,
            7 => RefusalCode::KeyRequired,
            8 => RefusalCode::KeyMismatch,
            9 => RefusalCode::NotAllowed,
            _ => RefusalCode::Other,
        }
    }
}

/// The listener's refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Protocol version of the listener.
    pub version: u16,
    /// Why.
    pub code: RefusalCode,
    /// Human-readable reason.
    pub reason: String,
}

/// The listener's answer to a hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Accepted.
    Welcome(Welcome),
    /// Refused.
    Refusal(Refusal),
}

/// The first six bytes: magic and version.
fn check_prefix(src: &[u8]) -> Result<u16, WireError> {
    if src[..4] != MAGIC {
        return Err(WireError::BadMagic([src[0], src[1], src[2], src[3]]));
    }
    Ok(u16::from_be_bytes([src[4], src[5]]))
}

/// Reads only the magic and version of a hello, so a listener can refuse a
/// version it does not speak before parsing the rest. `Ok(None)`: need more bytes.
pub fn peek_version(src: &[u8]) -> Result<Option<u16>, WireError> {
    if src.len() < PREFIX_LEN {
        return Ok(None);
    }
    check_prefix(src).map(Some)
}

fn extensions_len(extensions: &[Extension]) -> usize {
    extensions.iter().map(|e| 4 + e.value.len()).sum()
}

fn put_extensions(dst: &mut BytesMut, extensions: &[Extension]) {
    for e in extensions {
        dst.put_u16(e.kind);
        dst.put_u16(e.value.len() as u16);
        dst.put_slice(&e.value);
    }
}

/// Parses an extension area: whole entries, each type once.
fn parse_extensions(mut area: Bytes) -> Result<Vec<Extension>, WireError> {
    let mut out: Vec<Extension> = Vec::new();
    while !area.is_empty() {
        if area.len() < 4 {
            return Err(WireError::Truncated {
                field: "handshake extension header",
            });
        }
        let kind = area.get_u16();
        let len = area.get_u16() as usize;
        if area.len() < len {
            return Err(WireError::Truncated {
                field: "handshake extension value",
            });
        }
        if out.iter().any(|e| e.kind == kind) {
            return Err(WireError::DuplicateExtension(kind));
        }
        out.push(Extension {
            kind,
            value: area.split_to(len),
        });
    }
    Ok(out)
}

/// Checks the two lengths of a fixed part that ends in `extensions len u16 |
/// data len u32` at `at`; returns them.
fn lengths(src: &[u8], at: usize) -> Result<(usize, usize), WireError> {
    let ext_len = u16::from_be_bytes([src[at], src[at + 1]]);
    if ext_len > MAX_EXTENSIONS {
        return Err(WireError::HandshakeExtensionsTooLarge {
            len: ext_len,
            max: MAX_EXTENSIONS,
        });
    }
    let data_len = u32::from_be_bytes([src[at + 2], src[at + 3], src[at + 4], src[at + 5]]);
    if data_len > MAX_HANDSHAKE_DATA {
        return Err(WireError::HandshakeDataTooLarge {
            len: data_len,
            max: MAX_HANDSHAKE_DATA,
        });
    }
    Ok((ext_len as usize, data_len as usize))
}

/// The limits every hello and welcome must respect.
fn check_limits(max_frame: u32, max_calls: u32) -> Result<(), WireError> {
    if max_frame < MIN_FRAME {
        return Err(WireError::MaxFrameTooSmall {
            max_frame,
            min: MIN_FRAME,
        });
    }
    if max_calls == 0 {
        return Err(WireError::NoCallsAllowed);
    }
    Ok(())
}

impl Hello {
    /// Appends the encoded hello. Extensions and data must fit their limits
    /// ([`MAX_EXTENSIONS`], [`MAX_HANDSHAKE_DATA`]); callers check the data.
    pub fn encode(&self, dst: &mut BytesMut) {
        let ext_len = extensions_len(&self.extensions);
        dst.reserve(HELLO_FIXED + ext_len + self.data.len());
        dst.put_slice(&MAGIC);
        dst.put_u16(self.version);
        dst.put_u16(0);
        dst.put_u128(self.node_id);
        dst.put_u32(self.max_frame);
        dst.put_u32(self.window);
        dst.put_u32(self.max_calls);
        dst.put_u16(ext_len as u16);
        dst.put_u32(self.data.len() as u32);
        put_extensions(dst, &self.extensions);
        dst.put_slice(&self.data);
    }

    /// Decodes a hello from the front of `src`; `Ok(None)` means more bytes
    /// are needed. Checks are made as soon as the bytes they need are in: the
    /// prefix at 6 bytes, the two lengths at the end of the fixed part.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Hello>, WireError> {
        if src.len() < HELLO_FIXED {
            if src.len() >= PREFIX_LEN {
                check_prefix(src)?;
            }
            return Ok(None);
        }
        let version = check_prefix(src)?;
        if version != VERSION {
            // The layout past the prefix is version-specific.
            return Err(WireError::UnsupportedVersion(version));
        }
        let (ext_len, data_len) = lengths(src, HELLO_FIXED - 6)?;
        if src.len() < HELLO_FIXED + ext_len + data_len {
            return Ok(None);
        }
        let mut msg = src.split_to(HELLO_FIXED + ext_len + data_len).freeze();
        msg.advance(PREFIX_LEN + 2);
        let node_id = msg.get_u128();
        let max_frame = msg.get_u32();
        let window = msg.get_u32();
        let max_calls = msg.get_u32();
        msg.advance(6);
        check_limits(max_frame, max_calls)?;
        let extensions = parse_extensions(msg.split_to(ext_len))?;
        Ok(Some(Hello {
            version,
            node_id,
            max_frame,
            window,
            max_calls,
            extensions,
            data: msg,
        }))
    }
}

impl Answer {
    /// Appends the encoded answer.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_slice(&MAGIC);
        match self {
            Answer::Welcome(w) => {
                let ext_len = extensions_len(&w.extensions);
                dst.reserve(WELCOME_FIXED + ext_len + w.data.len());
                dst.put_u16(w.version);
                dst.put_u8(0);
                dst.put_u128(w.node_id);
                dst.put_u32(w.max_frame);
                dst.put_u32(w.window);
                dst.put_u32(w.max_calls);
                dst.put_u16(ext_len as u16);
                dst.put_u32(w.data.len() as u32);
                put_extensions(dst, &w.extensions);
                dst.put_slice(&w.data);
            }
            Answer::Refusal(r) => {
                // Reasons are short by construction; cut at a char boundary to fit u16.
                let mut end = r.reason.len().min(u16::MAX as usize);
                while !r.reason.is_char_boundary(end) {
                    end -= 1;
                }
                dst.put_u16(r.version);
                dst.put_u8(1);
                dst.put_u16(r.code as u16);
                dst.put_u16(end as u16);
                dst.put_slice(&r.reason.as_bytes()[..end]);
            }
        }
    }

    /// Decodes an answer from the front of `src`; `Ok(None)` means more bytes
    /// are needed. A refusal decodes whatever version its prefix carries: its
    /// layout is the same in every version.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Answer>, WireError> {
        if src.len() < PREFIX_LEN + 1 {
            if src.len() >= PREFIX_LEN {
                check_prefix(src)?;
            }
            return Ok(None);
        }
        let version = check_prefix(src)?;
        match src[PREFIX_LEN] {
            0 => {
                if version != VERSION {
                    // A welcome's layout is version-specific: reading past the
                    // prefix of another version's would misparse it.
                    return Err(WireError::UnsupportedVersion(version));
                }
                if src.len() < WELCOME_FIXED {
                    return Ok(None);
                }
                let (ext_len, data_len) = lengths(src, WELCOME_FIXED - 6)?;
                if src.len() < WELCOME_FIXED + ext_len + data_len {
                    return Ok(None);
                }
                let mut msg = src.split_to(WELCOME_FIXED + ext_len + data_len).freeze();
                msg.advance(PREFIX_LEN + 1);
                let node_id = msg.get_u128();
                let max_frame = msg.get_u32();
                let window = msg.get_u32();
                let max_calls = msg.get_u32();
                msg.advance(6);
                check_limits(max_frame, max_calls)?;
                let extensions = parse_extensions(msg.split_to(ext_len))?;
                Ok(Some(Answer::Welcome(Welcome {
                    version,
                    node_id,
                    max_frame,
                    window,
                    max_calls,
                    extensions,
                    data: msg,
                })))
            }
            1 => {
                const FIXED: usize = PREFIX_LEN + 1 + 2 + 2;
                if src.len() < FIXED {
                    return Ok(None);
                }
                let reason_len = u16::from_be_bytes([src[9], src[10]]) as usize;
                if src.len() < FIXED + reason_len {
                    return Ok(None);
                }
                let mut msg = src.split_to(FIXED + reason_len);
                msg.advance(PREFIX_LEN + 1);
                let code = RefusalCode::from_u16(msg.get_u16());
                msg.advance(2);
                let reason = String::from_utf8_lossy(&msg).into_owned();
                Ok(Some(Answer::Refusal(Refusal {
                    version,
                    code,
                    reason,
                })))
            }
            other => Err(WireError::BadAnswerStatus(other)),
        }
    }
}
