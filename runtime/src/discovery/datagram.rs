//! The beacon datagram: an announcement in an envelope, optionally
//! authenticated with a session key.
//!
//! Owns the envelope layout and the HMAC check. Pure functions over bytes —
//! no sockets here — so every way a datagram can be wrong is a
//! [`DatagramError`], and the check runs before the announcement is parsed.
//!
//! ```text
//! untagged: "PLXB" | flags 0x00 | announcement
//! tagged:   "PLXB" | flags 0x01 | announcement | sent at u64 (ms since the Unix epoch) | HMAC-SHA256 tag
//! ```
//!
//! A tagged datagram carries the time it was sealed, under the tag, so a
//! receiver can refuse one recorded and replayed later ([`open_fresh`]).

use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use hmac::Mac;

use crate::wire::key::SessionKey;

use super::announcement::{Announcement, DecodeError, EncodeError, MAX_ANNOUNCEMENT_LEN};

/// First four bytes of every beacon datagram.
pub const BEACON_MAGIC: [u8; 4] = *b"PLXB";

/// Length of the HMAC-SHA256 tag that ends an authenticated datagram.
pub const TAG_LEN: usize = 32;

/// Magic plus the flags byte.
const HEADER_LEN: usize = BEACON_MAGIC.len() + 1;

/// Length of the send time in a tagged datagram.
const STAMP_LEN: usize = 8;

/// The longest valid datagram; receivers treat anything longer as malformed.
pub const MAX_DATAGRAM_LEN: usize = HEADER_LEN + MAX_ANNOUNCEMENT_LEN + STAMP_LEN + TAG_LEN;

const FLAG_TAGGED: u8 = 0b0000_0001;

/// Why a datagram was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// Too short to hold the envelope.
    #[error("datagram of {0} bytes is too short for a beacon envelope")]
    TooShort(usize),
    /// Longer than any valid beacon datagram.
    #[error("datagram of {len} bytes exceeds the beacon limit of {max}")]
    TooLarge {
        /// Datagram length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a Plexus beacon (another program on the same group and port).
    #[error("not a Plexus beacon: magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// Envelope flag bits this version does not define.
    #[error("beacon envelope has unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    /// The envelope is fine but the announcement inside is not.
    #[error("malformed announcement: {0}")]
    Announcement(#[from] DecodeError),
    /// This node has a session key and the datagram carries no tag.
    #[error("unauthenticated beacon: no tag, and this node requires its session key")]
    MissingTag,
    /// The tag does not match this node's session key.
    #[error("beacon tag does not verify under this node's session key")]
    BadTag,
    /// The datagram is tagged but this node has no key to check it with.
    #[error("beacon is tagged but this node has no session key to verify it")]
    UnexpectedTag,
    /// A tagged datagram sealed too long ago, or too far in the future, to
    /// be fresh: a recording played back.
    #[error("beacon sealed {skew:?} away from now, outside the replay window of {window:?} (replayed, or clocks far apart)")]
    Stale {
        /// How far its send time is from now.
        skew: Duration,
        /// The window allowed.
        window: Duration,
    },
}

impl DatagramError {
    /// True when the datagram was well-formed but failed authentication
    /// (counted apart from malformed ones).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            DatagramError::MissingTag
                | DatagramError::BadTag
                | DatagramError::UnexpectedTag
                | DatagramError::Stale { .. }
        )
    }
}

/// Wraps `announcement` in a beacon datagram, tagged when `key` is given.
pub fn seal(announcement: &Announcement, key: Option<&SessionKey>) -> Result<Bytes, EncodeError> {
    let tag_len = if key.is_some() { TAG_LEN } else { 0 };
    let mut buf = BytesMut::with_capacity(HEADER_LEN + announcement.encoded_len() + tag_len);
    buf.put_slice(&BEACON_MAGIC);
    buf.put_u8(if key.is_some() { FLAG_TAGGED } else { 0 });
    announcement.encode_into(&mut buf)?;
    if let Some(key) = key {
        let sent = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        buf.put_u64(u64::try_from(sent).unwrap_or(u64::MAX));
        let mut mac = key.mac();
        mac.update(&buf);
        buf.put_slice(&mac.finalize().into_bytes());
    }
    Ok(buf.freeze())
}

/// Checks and opens a beacon datagram.
///
/// With a `key`, only datagrams tagged under that key are accepted; without
/// one, only untagged datagrams are (a tagged datagram cannot be verified, so
/// it is treated as belonging to another group). The tag is verified in
/// constant time before the announcement is parsed.
pub fn open(datagram: &[u8], key: Option<&SessionKey>) -> Result<Announcement, DatagramError> {
    open_stamped(datagram, key).map(|(a, _)| a)
}

/// Like [`open`], and refuses a tagged datagram whose send time is more
/// than `window` away from `now` (a recording played back). Untagged
/// datagrams carry no time; only a keyed group resists replay.
pub fn open_fresh(
    datagram: &[u8],
    key: Option<&SessionKey>,
    now: SystemTime,
    window: Duration,
) -> Result<Announcement, DatagramError> {
    let (announcement, sent) = open_stamped(datagram, key)?;
    if let Some(sent) = sent {
        let sent = SystemTime::UNIX_EPOCH + Duration::from_millis(sent);
        let skew = now
            .duration_since(sent)
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .unwrap_or_default();
        if skew > window {
            return Err(DatagramError::Stale { skew, window });
        }
    }
    Ok(announcement)
}

fn open_stamped(
    datagram: &[u8],
    key: Option<&SessionKey>,
) -> Result<(Announcement, Option<u64>), DatagramError> {
    if datagram.len() > MAX_DATAGRAM_LEN {
        return Err(DatagramError::TooLarge {
            len: datagram.len(),
            max: MAX_DATAGRAM_LEN,
        });
    }
    if datagram.len() < HEADER_LEN {
        return Err(DatagramError::TooShort(datagram.len()));
    }
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&datagram[..BEACON_MAGIC.len()]);
    if magic != BEACON_MAGIC {
        return Err(DatagramError::BadMagic(magic));
    }
    let flags = datagram[BEACON_MAGIC.len()];
    if flags & !FLAG_TAGGED != 0 {
        return Err(DatagramError::UnknownFlags(flags));
    }
    let tagged = flags & FLAG_TAGGED != 0;
    let body = match (tagged, key) {
        (false, Some(_)) => return Err(DatagramError::MissingTag),
        (true, None) => return Err(DatagramError::UnexpectedTag),
        (false, None) => return Ok((Announcement::decode(&datagram[HEADER_LEN..])?, None)),
        (true, Some(key)) => {
            if datagram.len() < HEADER_LEN + STAMP_LEN + TAG_LEN {
                return Err(DatagramError::TooShort(datagram.len()));
            }
            let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
            let mut mac = key.mac();
            mac.update(signed);
            mac.verify_slice(tag).map_err(|_| DatagramError::BadTag)?;
            &signed[HEADER_LEN..]
        }
    };
    let (announcement, stamp) = body.split_at(body.len() - STAMP_LEN);
    let mut sent = [0u8; STAMP_LEN];
    sent.copy_from_slice(stamp);
    Ok((
        Announcement::decode(announcement)?,
        Some(u64::from_be_bytes(sent)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;
    use proptest::prelude::*;

    fn ann() -> Announcement {
        Announcement::new(NodeId(9), "bob")
            .group("s")
            .endpoint("tcp://127.0.0.1:9")
            .incarnation(1)
    }

    #[test]
    fn untagged_round_trip() {
        let d = seal(&ann(), None).expect("seals");
        assert_eq!(open(&d, None), Ok(ann()));
    }

    #[test]
    fn a_tagged_datagram_replayed_after_the_window_is_refused() {
        let key = SessionKey::new(b"secret");
        let d = seal(&ann(), Some(&key)).expect("seals");
        let window = Duration::from_secs(30);
        let now = SystemTime::now();
        assert_eq!(open_fresh(&d, Some(&key), now, window), Ok(ann()));
        let later = now + Duration::from_secs(31);
        let refused = open_fresh(&d, Some(&key), later, window);
        assert!(
            matches!(refused, Err(DatagramError::Stale { .. })),
            "{refused:?}"
        );
        assert!(refused.unwrap_err().is_unauthenticated());
        // A sender whose clock runs ahead is refused the same way.
        let earlier = now - Duration::from_secs(31);
        assert!(open_fresh(&d, Some(&key), earlier, window).is_err());
        // Tampering with the time breaks the tag.
        let mut forged = d.to_vec();
        let at = forged.len() - TAG_LEN - 1;
        forged[at] ^= 1;
        assert_eq!(open(&forged, Some(&key)), Err(DatagramError::BadTag));
    }

    #[test]
    fn tagged_round_trip_under_the_same_key() {
        let key = SessionKey::new(b"secret");
        let d = seal(&ann(), Some(&key)).expect("seals");
        assert_eq!(open(&d, Some(&key)), Ok(ann()));
    }

    #[test]
    fn keyed_receiver_refuses_untagged_wrong_key_and_flipped_bits() {
        let key = SessionKey::new(b"secret");
        let plain = seal(&ann(), None).expect("seals");
        assert_eq!(open(&plain, Some(&key)), Err(DatagramError::MissingTag));
        let other = seal(&ann(), Some(&SessionKey::new(b"other"))).expect("seals");
        assert_eq!(open(&other, Some(&key)), Err(DatagramError::BadTag));
        let mut flipped = seal(&ann(), Some(&key)).expect("seals").to_vec();
        flipped[HEADER_LEN + 3] ^= 1;
        assert_eq!(open(&flipped, Some(&key)), Err(DatagramError::BadTag));
        assert!(DatagramError::BadTag.is_unauthenticated());
    }

    #[test]
    fn unkeyed_receiver_refuses_tagged() {
        let d = seal(&ann(), Some(&SessionKey::new(b"k"))).expect("seals");
        assert_eq!(open(&d, None), Err(DatagramError::UnexpectedTag));
    }

    #[test]
    fn foreign_and_short_datagrams_are_malformed() {
        assert_eq!(open(b"", None), Err(DatagramError::TooShort(0)));
        assert!(matches!(
            open(b"HTTP/1.1 200 OK", None),
            Err(DatagramError::BadMagic(_))
        ));
        assert_eq!(
            open(b"PLXB\x80", None),
            Err(DatagramError::UnknownFlags(0x80))
        );
        let huge = vec![0u8; MAX_DATAGRAM_LEN + 1];
        assert!(matches!(
            open(&huge, None),
            Err(DatagramError::TooLarge { .. })
        ));
    }

    #[test]
    fn key_debug_does_not_leak() {
        assert_eq!(
            format!("{:?}", SessionKey::new(b"hunter2")),
            "SessionKey(7 bytes)"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..200),
            tagged in any::<bool>(),
        ) {
            let mut d = BEACON_MAGIC.to_vec();
            d.push(u8::from(tagged));
            d.extend_from_slice(&tail);
            let key = SessionKey::new(b"k");
            let _ = open(&d, None);
            let _ = open(&d, Some(&key));
        }
    }
}
