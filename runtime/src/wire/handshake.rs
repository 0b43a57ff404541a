//! The handshake: the first bytes each side sends before any frame.
//!
//! The dialer sends a [`Hello`]; the listener answers with a [`Welcome`]
//! (accepted, with its own identity and application data) or a [`Refusal`]
//! (code and reason), then closes if it refused.
//!
//! Both messages start with the same fixed prefix, so any future version can
//! still read enough of an old peer's message to refuse it clearly:
//!
//! ```text
//! magic "PLXS" (4) | version u16 BE | ...
//! ```
//!
//! ```text
//! Hello:   prefix | flags u16 | node id (16) | max frame u32 | window u32 | data len u32 | data
//! Answer:  prefix | status u8 (0 = welcome, 1 = refusal) | ...
//! Welcome: ... | node id (16) | max frame u32 | window u32 | data len u32 | data
//! Refusal: ... | code u16 | reason len u16 | reason (UTF-8)
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::WireError;

/// The four bytes every Plexus connection starts with.
pub const MAGIC: [u8; 4] = *b"PLXS";
/// The protocol version this implementation speaks.
pub const VERSION: u16 = 1;
/// Largest application data accepted in a hello or welcome.
pub const MAX_HANDSHAKE_DATA: u32 = 64 * 1024;
/// Smallest max-frame size a peer may announce.
pub const MIN_FRAME: u32 = 1024;

const PREFIX_LEN: usize = 6;
const HELLO_FIXED: usize = PREFIX_LEN + 2 + 16 + 4 + 4 + 4;
const WELCOME_FIXED: usize = PREFIX_LEN + 1 + 16 + 4 + 4 + 4;

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

impl Hello {
    /// Appends the encoded hello.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(HELLO_FIXED + self.data.len());
        dst.put_slice(&MAGIC);
        dst.put_u16(self.version);
        dst.put_u16(0);
        dst.put_u128(self.node_id);
        dst.put_u32(self.max_frame);
        dst.put_u32(self.window);
        dst.put_u32(self.data.len() as u32);
        dst.put_slice(&self.data);
    }

    /// Decodes a hello from the front of `src`; `Ok(None)` means more bytes are needed.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Hello>, WireError> {
        if src.len() < HELLO_FIXED {
            if src.len() >= PREFIX_LEN {
                check_prefix(src)?;
            }
            return Ok(None);
        }
        let version = check_prefix(src)?;
        let data_len = u32::from_be_bytes([src[32], src[33], src[34], src[35]]);
        if data_len > MAX_HANDSHAKE_DATA {
            return Err(WireError::HandshakeDataTooLarge {
                len: data_len,
                max: MAX_HANDSHAKE_DATA,
            });
        }
        if src.len() < HELLO_FIXED + data_len as usize {
            return Ok(None);
        }
        let mut msg = src.split_to(HELLO_FIXED + data_len as usize);
        msg.advance(PREFIX_LEN + 2);
        let node_id = msg.get_u128();
        let max_frame = msg.get_u32();
        let window = msg.get_u32();
        msg.advance(4);
        check_limits(max_frame)?;
        Ok(Some(Hello {
            version,
            node_id,
            max_frame,
            window,
            data: msg.freeze(),
        }))
    }
}

fn check_limits(max_frame: u32) -> Result<(), WireError> {
    if max_frame < MIN_FRAME {
        return Err(WireError::MaxFrameTooSmall {
            max_frame,
            min: MIN_FRAME,
        });
    }
    Ok(())
}

impl Answer {
    /// Appends the encoded answer.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_slice(&MAGIC);
        match self {
            Answer::Welcome(w) => {
                dst.reserve(WELCOME_FIXED + w.data.len());
                dst.put_u16(w.version);
                dst.put_u8(0);
                dst.put_u128(w.node_id);
                dst.put_u32(w.max_frame);
                dst.put_u32(w.window);
                dst.put_u32(w.data.len() as u32);
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

    /// Decodes an answer from the front of `src`; `Ok(None)` means more bytes are needed.
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
                if src.len() < WELCOME_FIXED {
                    return Ok(None);
                }
                let data_len = u32::from_be_bytes([src[31], src[32], src[33], src[34]]);
                if data_len > MAX_HANDSHAKE_DATA {
                    return Err(WireError::HandshakeDataTooLarge {
                        len: data_len,
                        max: MAX_HANDSHAKE_DATA,
                    });
                }
                if src.len() < WELCOME_FIXED + data_len as usize {
                    return Ok(None);
                }
                let mut msg = src.split_to(WELCOME_FIXED + data_len as usize);
                msg.advance(PREFIX_LEN + 1);
                let node_id = msg.get_u128();
                let max_frame = msg.get_u32();
                let window = msg.get_u32();
                msg.advance(4);
                check_limits(max_frame)?;
                Ok(Some(Answer::Welcome(Welcome {
                    version,
                    node_id,
                    max_frame,
                    window,
                    data: msg.freeze(),
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
