//! Frames: the unit of everything sent after the handshake.
//!
//! Every frame is a fixed ten-byte header followed by `len` payload bytes:
//!
//! ```text
//! +----------------+--------+--------+----------------+
//! | len: u32 (BE)  | kind:u8| flags:u8| id: u32 (BE)  |  payload (len bytes)
//! +----------------+--------+--------+----------------+
//! ```
//!
//! Decoding is "check, then parse": [`decode`] first checks that a whole
//! frame is buffered and within the size limit, then splits it off without
//! copying and parses the payload for its kind.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{varint, WireError};

/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 10;

/// Frame kinds. The numeric values are part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Opens a call: operation, deadline, metadata and the first request bytes.
    CallOpen = 1,
    /// One message of a stream, in either direction.
    Data = 2,
    /// The sender's side of a stream is finished (half close).
    End = 3,
    /// The call succeeded; the payload is the reply (possibly empty).
    Ack = 4,
    /// The call was refused: code, message, details.
    Reject = 5,
    /// The call is abandoned by the side that sends this.
    Cancel = 6,
    /// Grants the peer more bytes of stream data on this id.
    Credit = 7,
    /// Liveness probe; the peer answers with [`Kind::Pong`].
    Ping = 8,
    /// Answer to [`Kind::Ping`] carrying the same opaque value.
    Pong = 9,
    /// The sender accepts no new calls; calls above `last_id` were not processed.
    GoAway = 10,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::CallOpen,
            2 => Kind::Data,
            3 => Kind::End,
            4 => Kind::Ack,
            5 => Kind::Reject,
            6 => Kind::Cancel,
            7 => Kind::Credit,
            8 => Kind::Ping,
            9 => Kind::Pong,
            10 => Kind::GoAway,
            _ => return None,
        })
    }
}

/// Flag bits. Their meaning depends on the frame kind; unknown bits are ignored.
pub mod flags {
    /// CallOpen: the request side is complete with this frame (unary, one-way, server stream).
    pub const END: u8 = 0x01;
    /// CallOpen: fire-and-forget; the receiver sends nothing back.
    pub const ONEWAY: u8 = 0x02;
    /// CallOpen: the frame defines a new interned operation id (index + name).
    pub const OP_NEW: u8 = 0x04;
    /// CallOpen: a relative deadline in microseconds follows the operation.
    pub const DEADLINE: u8 = 0x08;
    /// CallOpen: metadata pairs follow the deadline.
    pub const METADATA: u8 = 0x10;
    /// CallOpen: the call runs inside a session; its id follows the metadata.
    pub const SESSION: u8 = 0x20;
    /// Reject: the code is a Plexus system code, not an application code.
    pub const SYSTEM: u8 = 0x01;
}

/// Which operation a call opens: an interned index, plus its name the first time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRef {
    /// Per-connection, per-direction index; definitions are numbered 0, 1, 2, ...
    pub index: u32,
    /// The operation id (`package.Service/method`) when this frame defines `index`.
    pub name: Option<String>,
}

/// The payload of a [`Kind::CallOpen`] frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallOpen {
    /// The call id chosen by the opener (0 for one-way calls).
    pub id: u32,
    /// The operation.
    pub op: OpRef,
    /// Relative deadline; the receiver stops the handler when it passes.
    pub deadline: Option<Duration>,
    /// Application metadata (key, value) pairs.
    pub metadata: Vec<(String, Bytes)>,
    /// The session the call runs inside, if any.
    pub session: Option<u32>,
    /// The request side is complete with this frame.
    pub end: bool,
    /// No reply is expected.
    pub oneway: bool,
    /// The first (for unary: the only) request message.
    pub body: Bytes,
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// See [`Kind::CallOpen`].
    CallOpen(CallOpen),
    /// See [`Kind::Data`].
    Data {
        /// Call id.
        id: u32,
        /// One message.
        body: Bytes,
    },
    /// See [`Kind::End`].
    End {
        /// Call id.
        id: u32,
    },
    /// See [`Kind::Ack`].
    Ack {
        /// Call id.
        id: u32,
        /// Reply bytes (possibly empty).
        body: Bytes,
    },
    /// See [`Kind::Reject`].
    Reject {
        /// Call id.
        id: u32,
        /// `true` when `code` is a system code (see `SystemCode`).
        system: bool,
        /// Application or system code.
        code: u32,
        /// Human-readable reason.
        message: String,
        /// Opaque application details.
        details: Bytes,
    },
    /// See [`Kind::Cancel`].
    Cancel {
        /// Call id.
        id: u32,
    },
    /// See [`Kind::Credit`].
    Credit {
        /// Call id.
        id: u32,
        /// Additional bytes the receiver of this frame may send.
        bytes: u32,
    },
    /// See [`Kind::Ping`].
    Ping {
        /// Opaque value echoed in the pong.
        payload: u64,
    },
    /// See [`Kind::Pong`].
    Pong {
        /// The value from the ping.
        payload: u64,
    },
    /// See [`Kind::GoAway`].
    GoAway {
        /// Highest call id opened by the receiver of this frame that the sender processed.
        last_id: u32,
        /// Why (0 = normal shutdown, otherwise a system code).
        code: u32,
        /// Human-readable reason.
        reason: String,
    },
}

impl Frame {
    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Frame::CallOpen(_) => Kind::CallOpen,
            Frame::Data { .. } => Kind::Data,
            Frame::End { .. } => Kind::End,
            Frame::Ack { .. } => Kind::Ack,
            Frame::Reject { .. } => Kind::Reject,
            Frame::Cancel { .. } => Kind::Cancel,
            Frame::Credit { .. } => Kind::Credit,
            Frame::Ping { .. } => Kind::Ping,
            Frame::Pong { .. } => Kind::Pong,
            Frame::GoAway { .. } => Kind::GoAway,
        }
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Frame::CallOpen(c) => encode_call_open(
                dst,
                &CallOpenHead {
                    id: c.id,
                    op_index: c.op.index,
                    op_name: c.op.name.as_deref(),
                    deadline: c.deadline,
                    metadata: &c.metadata,
                    session: c.session,
                    end: c.end,
                    oneway: c.oneway,
                },
                &c.body,
            ),
            Frame::Data { id, body } => encode_body(dst, Kind::Data, *id, body),
            Frame::End { id } => encode_empty(dst, Kind::End, *id),
            Frame::Ack { id, body } => encode_body(dst, Kind::Ack, *id, body),
            Frame::Reject {
                id,
                system,
                code,
                message,
                details,
            } => encode_reject(dst, *id, *system, *code, message, details),
            Frame::Cancel { id } => encode_empty(dst, Kind::Cancel, *id),
            Frame::Credit { id, bytes } => encode_credit(dst, *id, *bytes),
            Frame::Ping { payload } => encode_ping(dst, Kind::Ping, *payload),
            Frame::Pong { payload } => encode_ping(dst, Kind::Pong, *payload),
            Frame::GoAway {
                last_id,
                code,
                reason,
            } => encode_goaway(dst, *last_id, *code, reason),
        }
    }
}

/// Appends a frame header announcing `len` payload bytes; the caller sends
/// the payload itself (the writer does, for large bodies, without copying).
pub fn encode_header(dst: &mut BytesMut, len: usize, kind: Kind, flags: u8, id: u32) {
    put_header(dst, len, kind, flags, id);
}

fn put_header(dst: &mut BytesMut, len: usize, kind: Kind, flags: u8, id: u32) {
    // Lengths are bounded by the sender's checks against the peer's max frame
    // size, which is itself a u32.
    dst.put_u32(len as u32);
    dst.put_u8(kind as u8);
    dst.put_u8(flags);
    dst.put_u32(id);
}

/// The parts of a call-open frame other than its body, borrowed so the hot path
/// encodes without building a [`CallOpen`].
#[derive(Clone, Copy, Debug)]
pub struct CallOpenHead<'a> {
    /// Call id.
    pub id: u32,
    /// Interned operation index.
    pub op_index: u32,
    /// The operation name, when this frame defines `op_index`.
    pub op_name: Option<&'a str>,
    /// Relative deadline.
    pub deadline: Option<Duration>,
    /// Metadata pairs.
    pub metadata: &'a [(String, Bytes)],
    /// The session the call runs inside.
    pub session: Option<u32>,
    /// Request side complete.
    pub end: bool,
    /// No reply expected.
    pub oneway: bool,
}

impl CallOpenHead<'_> {
    /// Payload bytes before the body.
    pub fn encoded_len(&self) -> usize {
        let mut n = varint::len(u64::from(self.op_index));
        if let Some(name) = self.op_name {
            n += varint::len(name.len() as u64) + name.len();
        }
        if let Some(d) = self.deadline {
            n += varint::len(deadline_micros(d));
        }
        if !self.metadata.is_empty() {
            n += varint::len(self.metadata.len() as u64);
            for (k, v) in self.metadata {
                n += varint::len(k.len() as u64) + k.len() + varint::len(v.len() as u64) + v.len();
            }
        }
        if let Some(id) = self.session {
            n += varint::len(u64::from(id));
        }
        n
    }
}

fn deadline_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Appends a call-open frame.
pub fn encode_call_open(dst: &mut BytesMut, head: &CallOpenHead<'_>, body: &[u8]) {
    encode_call_open_head(dst, head, body.len());
    dst.put_slice(body);
}

/// Appends a call-open frame's header and fields, announcing a body of
/// `body_len` bytes that the caller sends itself (the writer does, for large
/// bodies, without copying).
pub fn encode_call_open_head(dst: &mut BytesMut, head: &CallOpenHead<'_>, body_len: usize) {
    let mut fl = 0;
    if head.end {
        fl |= flags::END;
    }
    if head.oneway {
        fl |= flags::ONEWAY;
    }
    if head.op_name.is_some() {
        fl |= flags::OP_NEW;
    }
    if head.deadline.is_some() {
        fl |= flags::DEADLINE;
    }
    if !head.metadata.is_empty() {
        fl |= flags::METADATA;
    }
    if head.session.is_some() {
        fl |= flags::SESSION;
    }
    let len = head.encoded_len() + body_len;
    dst.reserve(HEADER_LEN + head.encoded_len());
    put_header(dst, len, Kind::CallOpen, fl, head.id);
    varint::put(dst, u64::from(head.op_index));
    if let Some(name) = head.op_name {
        varint::put(dst, name.len() as u64);
        dst.put_slice(name.as_bytes());
    }
    if let Some(d) = head.deadline {
        varint::put(dst, deadline_micros(d));
    }
    if !head.metadata.is_empty() {
        varint::put(dst, head.metadata.len() as u64);
        for (k, v) in head.metadata {
            varint::put(dst, k.len() as u64);
            dst.put_slice(k.as_bytes());
            varint::put(dst, v.len() as u64);
            dst.put_slice(v);
        }
    }
    if let Some(id) = head.session {
        varint::put(dst, u64::from(id));
    }
}

/// Appends a frame whose payload is `body` as is (data, ack).
pub fn encode_body(dst: &mut BytesMut, kind: Kind, id: u32, body: &[u8]) {
    dst.reserve(HEADER_LEN + body.len());
    put_header(dst, body.len(), kind, 0, id);
    dst.put_slice(body);
}

/// Appends a frame with no payload (end, cancel).
pub fn encode_empty(dst: &mut BytesMut, kind: Kind, id: u32) {
    dst.reserve(HEADER_LEN);
    put_header(dst, 0, kind, 0, id);
}

/// Appends a reject frame.
pub fn encode_reject(
    dst: &mut BytesMut,
    id: u32,
    system: bool,
    code: u32,
    message: &str,
    details: &[u8],
) {
    let len = varint::len(u64::from(code))
        + varint::len(message.len() as u64)
        + message.len()
        + details.len();
    dst.reserve(HEADER_LEN + len);
    put_header(
        dst,
        len,
        Kind::Reject,
        if system { flags::SYSTEM } else { 0 },
        id,
    );
    varint::put(dst, u64::from(code));
    varint::put(dst, message.len() as u64);
    dst.put_slice(message.as_bytes());
    dst.put_slice(details);
}

/// Appends a credit frame.
pub fn encode_credit(dst: &mut BytesMut, id: u32, bytes: u32) {
    let len = varint::len(u64::from(bytes));
    dst.reserve(HEADER_LEN + len);
    put_header(dst, len, Kind::Credit, 0, id);
    varint::put(dst, u64::from(bytes));
}

/// Appends a ping or pong frame.
pub fn encode_ping(dst: &mut BytesMut, kind: Kind, payload: u64) {
    dst.reserve(HEADER_LEN + 8);
    put_header(dst, 8, kind, 0, 0);
    dst.put_u64(payload);
}

/// Appends a goaway frame.
pub fn encode_goaway(dst: &mut BytesMut, last_id: u32, code: u32, reason: &str) {
    let len = 4 + varint::len(u64::from(code)) + reason.len();
    dst.reserve(HEADER_LEN + len);
    put_header(dst, len, Kind::GoAway, 0, 0);
    dst.put_u32(last_id);
    varint::put(dst, u64::from(code));
    dst.put_slice(reason.as_bytes());
}

/// Decodes one frame from the front of `src`.
///
/// Returns `Ok(None)` when `src` does not yet hold a whole frame (it reserves
/// room for the rest). A frame whose payload exceeds `max_frame` is refused
/// before any of it is buffered.
pub fn decode(src: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, WireError> {
    let decoded = decode_complete(src, max_frame)?;
    if decoded.is_none() {
        if let Some(total) = frame_len(src) {
            reserve_frame(src, total);
        }
    }
    Ok(decoded)
}

/// Like [`decode`], for a reader that manages its own buffers: a frame not
/// wholly in `src` is `Ok(None)` and `src` is left exactly as it was, its
/// capacity included ([`frame_len`] says how much room the frame needs).
pub fn decode_complete(src: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, WireError> {
    if src.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
    if len > max_frame {
        return Err(WireError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    let total = HEADER_LEN + len as usize;
    if src.len() < total {
        return Ok(None);
    }
    let kind_byte = src[4];
    let fl = src[5];
    let id = u32::from_be_bytes([src[6], src[7], src[8], src[9]]);
    let kind = Kind::from_u8(kind_byte).ok_or(WireError::UnknownKind(kind_byte))?;
    let mut frame = src.split_to(total);
    frame.advance(HEADER_LEN);
    parse_payload(kind, fl, id, frame.freeze()).map(Some)
}

/// The whole length (header included) of the frame `src` starts with: what a reader that manages its own buffers needs room
/// for before [`decode`] would make that room itself.
/// `None` until the whole header is in. It does not check the length against
/// a limit: call it only on what [`decode_complete`] has already seen.
pub fn frame_len(src: &[u8]) -> Option<usize> {
    if src.len() < HEADER_LEN {
        return None;
    }
    Some(HEADER_LEN + u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize)
}

/// Frames at least this large get a buffer of exactly their size.
pub const EXACT_FROM: usize = 1024 * 1024;

/// Makes room for a frame of `total` bytes of which `src` holds the start.
/// A large frame gets a buffer of exactly its size (the few bytes already in
/// are copied), so a big message costs one allocation of its own size, not
/// a doubled buffer.
fn reserve_frame(src: &mut BytesMut, total: usize) {
    if src.capacity() >= total {
        return;
    }
    if total >= EXACT_FROM {
        let mut exact = BytesMut::with_capacity(total);
        exact.extend_from_slice(src);
        *src = exact;
    } else {
        src.reserve(total - src.len());
    }
}

fn take_str(p: &mut Bytes, field: &'static str, max: usize) -> Result<String, WireError> {
    let n = varint::get(p, field)?;
    if n > max as u64 {
        return Err(WireError::TooLong { field, len: n, max });
    }
    if n > p.len() as u64 {
        return Err(WireError::Truncated { field });
    }
    let raw = p.split_to(n as usize);
    String::from_utf8(raw.to_vec()).map_err(|_| WireError::InvalidUtf8 { field })
}

fn take_bytes(p: &mut Bytes, field: &'static str) -> Result<Bytes, WireError> {
    let n = varint::get(p, field)?;
    if n > p.len() as u64 {
        return Err(WireError::Truncated { field });
    }
    Ok(p.split_to(n as usize))
}

/// Longest operation id accepted, in bytes.
pub const MAX_OP_NAME: usize = 1024;
/// Most metadata pairs accepted on one call.
pub const MAX_METADATA_PAIRS: u64 = 64;

fn expect_empty(kind: Kind, p: &Bytes) -> Result<(), WireError> {
    if p.is_empty() {
        Ok(())
    } else {
        Err(WireError::TrailingBytes { kind })
    }
}

fn parse_payload(kind: Kind, fl: u8, id: u32, mut p: Bytes) -> Result<Frame, WireError> {
    Ok(match kind {
        Kind::CallOpen => {
            let index = varint::get_u32(&mut p, "operation index")?;
            let name = if fl & flags::OP_NEW != 0 {
                Some(take_str(&mut p, "operation name", MAX_OP_NAME)?)
            } else {
                None
            };
            let deadline = if fl & flags::DEADLINE != 0 {
                Some(Duration::from_micros(varint::get(&mut p, "deadline")?))
            } else {
                None
            };
            let mut metadata = Vec::new();
            if fl & flags::METADATA != 0 {
                let count = varint::get(&mut p, "metadata count")?;
                if count > MAX_METADATA_PAIRS {
                    return Err(WireError::TooManyMetadata { count });
                }
                for _ in 0..count {
                    let k = take_str(&mut p, "metadata key", MAX_OP_NAME)?;
                    let v = take_bytes(&mut p, "metadata value")?;
                    metadata.push((k, v));
                }
            }
            let session = if fl & flags::SESSION != 0 {
                Some(varint::get_u32(&mut p, "session id")?)
            } else {
                None
            };
            Frame::CallOpen(CallOpen {
                id,
                op: OpRef { index, name },
                deadline,
                metadata,
                session,
                end: fl & flags::END != 0,
                oneway: fl & flags::ONEWAY != 0,
                body: p,
            })
        }
        Kind::Data => Frame::Data { id, body: p },
        Kind::End => {
            expect_empty(kind, &p)?;
            Frame::End { id }
        }
        Kind::Ack => Frame::Ack { id, body: p },
        Kind::Reject => {
            let code = varint::get_u32(&mut p, "reject code")?;
            let message = take_str(&mut p, "reject message", usize::MAX)?;
            Frame::Reject {
                id,
                system: fl & flags::SYSTEM != 0,
                code,
                message,
                details: p,
            }
        }
        Kind::Cancel => {
            expect_empty(kind, &p)?;
            Frame::Cancel { id }
        }
        Kind::Credit => {
            let bytes = varint::get_u32(&mut p, "credit")?;
            expect_empty(kind, &p)?;
            Frame::Credit { id, bytes }
        }
        Kind::Ping | Kind::Pong => {
            if p.len() != 8 {
                return Err(WireError::WrongLength {
                    field: if kind == Kind::Ping {
                        "ping payload"
                    } else {
                        "pong payload"
                    },
                    len: p.len(),
                    expected: 8,
                });
            }
            let payload = p.get_u64();
            if kind == Kind::Ping {
                Frame::Ping { payload }
            } else {
                Frame::Pong { payload }
            }
        }
        Kind::GoAway => {
            if p.len() < 4 {
                return Err(WireError::Truncated {
                    field: "goaway last id",
                });
            }
            let last_id = p.get_u32();
            let code = varint::get_u32(&mut p, "goaway code")?;
            let reason = String::from_utf8(p.to_vec()).map_err(|_| WireError::InvalidUtf8 {
                field: "goaway reason",
            })?;
            Frame::GoAway {
                last_id,
                code,
                reason,
            }
        }
    })
}

#[cfg(test)]
mod reader_buffer_tests {
    use super::*;

    #[test]
    fn a_partial_frame_leaves_a_self_managed_buffer_as_it_was() {
        let mut whole = BytesMut::new();
        encode_body(&mut whole, Kind::Data, 7, &Bytes::from(vec![1u8; 1000]));
        let mut src = BytesMut::with_capacity(64);
        src.extend_from_slice(&whole[..40]);
        assert_eq!(frame_len(&src[..9]), None, "header not yet in");
        assert_eq!(frame_len(&src), Some(whole.len()));
        assert!(decode_complete(&mut src, 1 << 20).unwrap().is_none());
        assert_eq!((src.len(), src.capacity()), (40, 64), "untouched");
        // `decode` makes the room itself.
        assert!(decode(&mut src, 1 << 20).unwrap().is_none());
        assert!(src.capacity() >= whole.len());
        src.extend_from_slice(&whole[40..]);
        let frame = decode_complete(&mut src, 1 << 20).unwrap().expect("whole");
        assert!(matches!(frame, Frame::Data { id: 7, ref body } if body.len() == 1000));
    }

    #[test]
    fn an_oversized_length_is_refused_before_room_is_made() {
        let mut src = BytesMut::new();
        src.extend_from_slice(&u32::MAX.to_be_bytes());
        src.extend_from_slice(&[0; 6]);
        assert!(matches!(
            decode_complete(&mut src, 1 << 20),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert!(decode(&mut src, 1 << 20).is_err());
        assert!(src.capacity() < 1 << 20, "nothing reserved for it");
    }
}
