//! What a node says about itself, and its compact binary encoding.
//!
//! Owns the [`Announcement`] model and its versioned byte layout (specified in
//! `docs/DISCOVERY.md`). Pure functions over bytes: this file never touches a
//! socket or a clock, so a hostile datagram can only ever produce a
//! [`DecodeError`].

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use crate::NodeId;

/// The encoding version this build writes and the only one it reads.
pub const ANNOUNCEMENT_VERSION: u8 = 1;

/// The longest encoded announcement, in bytes. Keeps a beacon datagram well
/// under the UDP limit and bounds what a receiver allocates per datagram.
pub const MAX_ANNOUNCEMENT_LEN: usize = 4096;

/// Longest name, group, endpoint URL or service name, in bytes.
pub const MAX_TEXT_LEN: usize = 255;

/// Most endpoints one announcement may list.
pub const MAX_ENDPOINTS: usize = 16;

/// Most service names one announcement may list.
pub const MAX_SERVICES: usize = 64;

/// Fixed part: version, node id, incarnation, sequence, flags.
const FIXED_LEN: usize = 1 + 16 + 8 + 8 + 1;

const FLAG_LEAVING: u8 = 0b0000_0001;
const FLAG_GROUP: u8 = 0b0000_0010;
const KNOWN_FLAGS: u8 = FLAG_LEAVING | FLAG_GROUP;

/// A node's announcement: who it is, where to reach it, and which group it
/// is in.
///
/// The node fills in identity, endpoints and group; a discovery backend
/// owns `sequence` (it overwrites it with its own increasing counter on every
/// send) and sets `leaving` when it announces a graceful leave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The node's id, the same one its connections present in the handshake.
    pub node_id: NodeId,
    /// A human-readable node name (not unique).
    pub name: String,
    /// The group the node is in, if any.
    pub group: Option<String>,
    /// URLs the node listens on, e.g. `tcp://127.0.0.1:4000`.
    pub endpoints: Vec<String>,
    /// Grows each time the node process restarts; a higher incarnation means
    /// the previous process (and its connections) is gone.
    pub incarnation: u64,
    /// Grows with every announcement of one incarnation; receivers drop
    /// anything not newer than what they have seen.
    pub sequence: u64,
    /// Names of the services the node hosts — a hint; the full descriptors
    /// are exchanged over a connection.
    pub services: Vec<String>,
    /// Set on the announcement that says the node leaves on purpose.
    pub leaving: bool,
}

impl Announcement {
    /// An announcement for `node_id` named `name`, with no group, endpoints
    /// or services, and an incarnation taken from the wall clock (milliseconds
    /// since the Unix epoch) so that a restarted process announces a higher one.
    pub fn new(node_id: NodeId, name: impl Into<String>) -> Self {
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Announcement {
            node_id,
            name: name.into(),
            group: None,
            endpoints: Vec::new(),
            incarnation,
            sequence: 0,
            services: Vec::new(),
            leaving: false,
        }
    }

    /// Sets the group (builder style).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Adds an endpoint URL (builder style).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoints.push(url.into());
        self
    }

    /// Adds a service name (builder style).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.services.push(name.into());
        self
    }

    /// Sets the incarnation (builder style).
    pub fn incarnation(mut self, incarnation: u64) -> Self {
        self.incarnation = incarnation;
        self
    }

    /// Checks every limit without encoding; the same checks
    /// [`Announcement::encode`] makes.
    pub fn validate(&self) -> Result<(), EncodeError> {
        check_text("name", &self.name)?;
        if let Some(group) = &self.group {
            check_text("group", group)?;
        }
        check_count("endpoints", self.endpoints.len(), MAX_ENDPOINTS)?;
        for url in &self.endpoints {
            check_text("endpoint", url)?;
        }
        check_count("services", self.services.len(), MAX_SERVICES)?;
        for service in &self.services {
            check_text("service", service)?;
        }
        let len = self.encoded_len();
        if len > MAX_ANNOUNCEMENT_LEN {
            return Err(EncodeError::TooLarge {
                len,
                max: MAX_ANNOUNCEMENT_LEN,
            });
        }
        Ok(())
    }

    /// The length of the encoding, in bytes.
    pub fn encoded_len(&self) -> usize {
        let text = |s: &String| 1 + s.len();
        FIXED_LEN
            + text(&self.name)
            + self.group.as_ref().map_or(0, text)
            + 1
            + self.endpoints.iter().map(text).sum::<usize>()
            + 1
            + self.services.iter().map(text).sum::<usize>()
    }

    /// Encodes into a fresh buffer (layout in `docs/DISCOVERY.md`).
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut buf)?;
        Ok(buf.freeze())
    }

    /// Appends the encoding to `buf`; on error nothing is appended.
    pub fn encode_into(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        self.validate()?;
        let mut flags = 0;
        if self.leaving {
            flags |= FLAG_LEAVING;
        }
        if self.group.is_some() {
            flags |= FLAG_GROUP;
        }
        buf.reserve(self.encoded_len());
        buf.put_u8(ANNOUNCEMENT_VERSION);
        buf.put_u128(self.node_id.0);
        buf.put_u64(self.incarnation);
        buf.put_u64(self.sequence);
        buf.put_u8(flags);
        put_text(buf, &self.name);
        if let Some(group) = &self.group {
            put_text(buf, group);
        }
        // Counts were checked against MAX_ENDPOINTS/MAX_SERVICES (< 256) above.
        buf.put_u8(self.endpoints.len() as u8);
        for url in &self.endpoints {
            put_text(buf, url);
        }
        buf.put_u8(self.services.len() as u8);
        for service in &self.services {
            put_text(buf, service);
        }
        Ok(())
    }

    /// Decodes one announcement that fills `input` exactly.
    ///
    /// Every malformed input — truncated, oversized, unknown version or
    /// flags, bad UTF-8, limits exceeded, trailing bytes — is a
    /// [`DecodeError`]; nothing here panics.
    pub fn decode(input: &[u8]) -> Result<Announcement, DecodeError> {
        if input.len() > MAX_ANNOUNCEMENT_LEN {
            return Err(DecodeError::TooLarge {
                len: input.len(),
                max: MAX_ANNOUNCEMENT_LEN,
            });
        }
        let mut r = Reader { buf: input };
        let version = r.u8("version")?;
        if version != ANNOUNCEMENT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let node_id = NodeId(u128::from_be_bytes(r.array("node id")?));
        let incarnation = u64::from_be_bytes(r.array("incarnation")?);
        let sequence = u64::from_be_bytes(r.array("sequence")?);
        let flags = r.u8("flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        let name = r.text("name")?;
        let group = if flags & FLAG_GROUP != 0 {
            Some(r.text("group")?)
        } else {
            None
        };
        let endpoints = r.list("endpoints", MAX_ENDPOINTS)?;
        let services = r.list("services", MAX_SERVICES)?;
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingBytes(r.buf.len()));
        }
        Ok(Announcement {
            node_id,
            name,
            group,
            endpoints,
            incarnation,
            sequence,
            services,
            leaving: flags & FLAG_LEAVING != 0,
        })
    }
}

/// An announcement that cannot be encoded because it breaks a limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A text field is longer than [`MAX_TEXT_LEN`] bytes.
    #[error("announcement {field} is {len} bytes; the limit is {max} — shorten it")]
    TextTooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list has more items than allowed.
    #[error("announcement lists {count} {field}; the limit is {max}")]
    TooMany {
        /// Which list.
        field: &'static str,
        /// How many items it has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The whole encoding is longer than [`MAX_ANNOUNCEMENT_LEN`].
    #[error("announcement encodes to {len} bytes; the limit is {max} — list fewer endpoints or services")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why bytes are not a valid announcement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("announcement truncated in {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The input is longer than any valid announcement.
    #[error("announcement of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A version this build does not speak.
    #[error("announcement version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u8),
    /// Flag bits this version does not define.
    #[error("announcement has unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    /// A list announces more items than the limit.
    #[error("announcement lists {count} {field}; the limit is {max}")]
    TooMany {
        /// Which list.
        field: &'static str,
        /// Announced count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A text field is not UTF-8.
    #[error("announcement {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// Bytes remain after the last field.
    #[error("{0} unexpected bytes after the announcement")]
    TrailingBytes(usize),
}

fn check_text(field: &'static str, text: &str) -> Result<(), EncodeError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(EncodeError::TextTooLong {
            field,
            len: text.len(),
            max: MAX_TEXT_LEN,
        });
    }
    Ok(())
}

fn check_count(field: &'static str, count: usize, max: usize) -> Result<(), EncodeError> {
    if count > max {
        return Err(EncodeError::TooMany { field, count, max });
    }
    Ok(())
}

fn put_text(buf: &mut BytesMut, text: &str) {
    // Length was checked against MAX_TEXT_LEN (255) by `validate`.
    buf.put_u8(text.len() as u8);
    buf.put_slice(text.as_bytes());
}

/// A cursor that checks before it takes: every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn text(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u8(field)?);
        let raw = self.take(len, field)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    fn list(&mut self, field: &'static str, max: usize) -> Result<Vec<String>, DecodeError> {
        let count = usize::from(self.u8(field)?);
        if count > max {
            return Err(DecodeError::TooMany { field, count, max });
        }
        (0..count).map(|_| self.text(field)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Announcement {
        Announcement::new(NodeId(0x0123_4567_89ab_cdef_0011_2233_4455_6677), "alice")
            .group("lab-3")
            .endpoint("tcp://127.0.0.1:4000")
            .endpoint("unix:///tmp/alice.sock")
            .service("chat.Chat")
            .incarnation(7)
    }

    #[test]
    fn round_trips_every_field() {
        let mut ann = sample();
        ann.sequence = 42;
        ann.leaving = true;
        let bytes = ann.encode().expect("encodes");
        assert_eq!(bytes.len(), ann.encoded_len());
        assert_eq!(Announcement::decode(&bytes), Ok(ann));
    }

    #[test]
    fn absent_group_differs_from_empty_group() {
        let none = Announcement::new(NodeId(1), "n").incarnation(1);
        let empty = none.clone().group("");
        assert_ne!(none.encode().ok(), empty.encode().ok());
        assert_eq!(
            Announcement::decode(&empty.encode().expect("encodes")),
            Ok(empty)
        );
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let bytes = sample().encode().expect("encodes");
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    Announcement::decode(&bytes[..cut]),
                    Err(DecodeError::Truncated { .. })
                ),
                "prefix of {cut} bytes"
            );
        }
    }

    #[test]
    fn unknown_version_and_flags_are_rejected() {
        let mut bytes = sample().encode().expect("encodes").to_vec();
        bytes[0] = 2;
        assert_eq!(
            Announcement::decode(&bytes),
            Err(DecodeError::UnsupportedVersion(2))
        );
        bytes[0] = ANNOUNCEMENT_VERSION;
        bytes[FIXED_LEN - 1] |= 0x80;
        assert!(matches!(
            Announcement::decode(&bytes),
            Err(DecodeError::UnknownFlags(_))
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = sample().encode().expect("encodes").to_vec();
        bytes.push(0);
        assert_eq!(
            Announcement::decode(&bytes),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn limits_are_enforced_on_encode() {
        let long = Announcement::new(NodeId(1), "x".repeat(MAX_TEXT_LEN + 1));
        assert!(matches!(
            long.encode(),
            Err(EncodeError::TextTooLong { field: "name", .. })
        ));
        let mut many = Announcement::new(NodeId(1), "n");
        many.endpoints = vec!["tcp://127.0.0.1:1".into(); MAX_ENDPOINTS + 1];
        assert!(matches!(
            many.encode(),
            Err(EncodeError::TooMany {
                field: "endpoints",
                ..
            })
        ));
        let mut big = Announcement::new(NodeId(1), "n");
        big.services = vec!["s".repeat(MAX_TEXT_LEN); MAX_SERVICES];
        assert!(matches!(big.encode(), Err(EncodeError::TooLarge { .. })));
    }

    #[test]
    fn over_limit_counts_and_bad_utf8_are_rejected_on_decode() {
        let ann = Announcement::new(NodeId(1), "n").incarnation(1);
        let mut bytes = ann.encode().expect("encodes").to_vec();
        // name length 1, byte 'n' → replace with an invalid UTF-8 byte.
        bytes[FIXED_LEN + 1] = 0xff;
        assert_eq!(
            Announcement::decode(&bytes),
            Err(DecodeError::InvalidUtf8 { field: "name" })
        );
        let mut bytes = ann.encode().expect("encodes").to_vec();
        let endpoints_count = FIXED_LEN + 2;
        bytes[endpoints_count] = (MAX_ENDPOINTS + 1) as u8;
        assert!(matches!(
            Announcement::decode(&bytes),
            Err(DecodeError::TooMany {
                field: "endpoints",
                ..
            })
        ));
    }

    fn text() -> impl Strategy<Value = String> {
        proptest::string::string_regex(".{0,40}").expect("valid regex")
    }

    fn announcement() -> impl Strategy<Value = Announcement> {
        (
            any::<u128>(),
            text(),
            proptest::option::of(text()),
            proptest::collection::vec(text(), 0..4),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(text(), 0..4),
            any::<bool>(),
        )
            .prop_map(
                |(id, name, group, endpoints, incarnation, sequence, services, leaving)| {
                    Announcement {
                        node_id: NodeId(id),
                        name,
                        group,
                        endpoints,
                        incarnation,
                        sequence,
                        services,
                        leaving,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(ann in announcement()) {
            let bytes = ann.encode().expect("within limits");
            prop_assert_eq!(Announcement::decode(&bytes), Ok(ann));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Announcement::decode(&bytes);
        }
    }
}
