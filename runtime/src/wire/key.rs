//! Session keys and what the wire does with them: the key-proof handshake
//! extension, the dialer's proof message, and the tags of beacon datagrams.
//!
//! Pure functions over bytes. A key never crosses the wire: peers show they
//! hold the same one by HMAC-SHA256 tags over fresh nonces from both sides
//! (so a recorded handshake cannot be replayed), and name it by a short key
//! id derived from it (so a peer holding another key is told so at once).
//! The exchange is specified in `docs/PROTOCOL.md` §3.6.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::handshake::{Extension, MAGIC, VERSION};
use super::WireError;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The handshake extension that carries a key proof (§3.5, §3.6).
pub const KEY_EXTENSION: u16 = 1;
/// Bytes of a key id.
pub const KEY_ID_LEN: usize = 8;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a proof tag.
pub const PROOF_LEN: usize = 32;
/// The dialer's proof message: prefix, kind byte, tag.
pub const PROOF_MESSAGE_LEN: usize = 4 + 2 + 1 + PROOF_LEN;
/// The kind byte of the dialer's proof message (after the six-byte prefix,
/// where an answer has its status).
const PROOF_KIND: u8 = 2;

/// A secret shared by the nodes of one group. With it, connections prove
/// knowledge of it in the handshake, and beacon announcements carry tags
/// under it.
///
/// ```
/// let key = plexus::wire::key::SessionKey::new(b"lab-3 secret");
/// assert_eq!(key.len(), 12);
/// assert_ne!(key.id(), plexus::wire::key::SessionKey::new(b"another").id());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(Bytes);

impl SessionKey {
    /// A key from raw bytes (any length; 32 random bytes is a good choice:
    /// anyone who records a handshake or an announcement can try guesses
    /// against it offline, so a key must not be guessable).
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        SessionKey(Bytes::copy_from_slice(key.as_ref()))
    }

    /// A new key of 32 random bytes, from a cryptographically secure
    /// generator seeded by the operating system. Share it with the group's
    /// members out of band ([`SessionKey::to_hex`]).
    pub fn generate() -> Self {
        SessionKey(Bytes::copy_from_slice(&rand::random::<[u8; 32]>()))
    }

    /// A key written in hex (an environment variable, a secrets file):
    /// an even number of hex digits, at least 16 bytes' worth, surrounding
    /// whitespace ignored.
    ///
    /// ```
    /// use plexus::wire::key::SessionKey;
    /// let key = SessionKey::generate();
    /// assert_eq!(SessionKey::from_hex(&key.to_hex()), Ok(key));
    /// assert!(SessionKey::from_hex("c0ffee").is_err()); // too short to be secret
    /// ```
    pub fn from_hex(text: &str) -> Result<Self, KeyFormatError> {
        let text = text.trim();
        if text.len() % 2 != 0 {
            return Err(KeyFormatError::OddLength(text.len()));
        }
        let digit = |at: usize| {
            let c = text.as_bytes()[at];
            (c as char)
                .to_digit(16)
                .map(|d| d as u8)
                .ok_or(KeyFormatError::NotHex { at })
        };
        let bytes = (0..text.len() / 2)
            .map(|i| Ok(digit(2 * i)? << 4 | digit(2 * i + 1)?))
            .collect::<Result<Vec<u8>, KeyFormatError>>()?;
        if bytes.len() < MIN_HEX_KEY_LEN {
            return Err(KeyFormatError::TooShort(bytes.len()));
        }
        Ok(SessionKey(bytes.into()))
    }

    /// The key in lowercase hex, for [`SessionKey::from_hex`]. This is the
    /// secret itself: store it as one.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for a zero-length key (which is refused where a key is set).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn mac(&self) -> HmacSha256 {
        <HmacSha256 as Mac>::new_from_slice(&self.0)
            .expect("HMAC-SHA256 accepts keys of any length")
    }

    /// The key's public name: the first 8 bytes of HMAC(key, "plexus key
    /// id"). Tells peers whether they hold the same key without showing it.
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        let mut mac = self.mac();
        mac.update(b"plexus key id");
        let tag = mac.finalize().into_bytes();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&tag[..KEY_ID_LEN]);
        id
    }

    /// The tag one side computes to prove the key: `role` is `b"listener"`
    /// or `b"dialer"`, over both node ids and both nonces, so a tag is good
    /// for one handshake only.
    fn proof(
        &self,
        role: &[u8],
        dialer: u128,
        listener: u128,
        dialer_nonce: &[u8; NONCE_LEN],
        listener_nonce: &[u8; NONCE_LEN],
    ) -> [u8; PROOF_LEN] {
        let mut mac = self.mac();
        mac.update(b"plexus v2 key proof ");
        mac.update(role);
        mac.update(&dialer.to_be_bytes());
        mac.update(&listener.to_be_bytes());
        mac.update(dialer_nonce);
        mac.update(listener_nonce);
        mac.finalize().into_bytes().into()
    }

    fn verify(
        &self,
        role: &[u8],
        dialer: u128,
        listener: u128,
        dialer_nonce: &[u8; NONCE_LEN],
        listener_nonce: &[u8; NONCE_LEN],
        tag: &[u8],
    ) -> bool {
        let mut mac = self.mac();
        mac.update(b"plexus v2 key proof ");
        mac.update(role);
        mac.update(&dialer.to_be_bytes());
        mac.update(&listener.to_be_bytes());
        mac.update(dialer_nonce);
        mac.update(listener_nonce);
        // Constant time.
        mac.verify_slice(tag).is_ok()
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "SessionKey({} bytes)", self.0.len())
    }
}

/// The fewest bytes [`SessionKey::from_hex`] takes (16 bytes, 128 bits:
/// below that, offline guessing from a recorded handshake gets practical).
pub const MIN_HEX_KEY_LEN: usize = 16;

/// Why [`SessionKey::from_hex`] refused a text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFormatError {
    /// Hex digits come in pairs.
    #[error("a hex session key has an even number of digits, not {0}")]
    OddLength(usize),
    /// A character that is not a hex digit.
    #[error("character {at} of the session key is not a hex digit")]
    NotHex {
        /// Its position (0-based, after trimming).
        at: usize,
    },
    /// Fewer than [`MIN_HEX_KEY_LEN`] bytes.
    #[error("a session key of {0} bytes is too short to be secret (at least 16; SessionKey::generate makes 32)")]
    TooShort(usize),
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    rand::random()
}

/// What a Hello's key extension says: the dialer holds the key named `key_id`,
/// and this is its nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloKey {
    /// The dialer's key id.
    pub key_id: [u8; KEY_ID_LEN],
    /// The dialer's nonce.
    pub nonce: [u8; NONCE_LEN],
}

/// What a Welcome's key extension says: the listener's key id, its nonce,
/// and its proof over both nonces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WelcomeKey {
    /// The listener's key id.
    pub key_id: [u8; KEY_ID_LEN],
    /// The listener's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// HMAC over the handshake, proving the listener holds the key.
    pub proof: [u8; PROOF_LEN],
}

impl HelloKey {
    /// The dialer's extension for `key`, with a fresh nonce.
    pub fn new(key: &SessionKey) -> HelloKey {
        HelloKey {
            key_id: key.id(),
            nonce: nonce(),
        }
    }

    /// As a handshake extension.
    pub fn extension(&self) -> Extension {
        let mut v = BytesMut::with_capacity(KEY_ID_LEN + NONCE_LEN);
        v.put_slice(&self.key_id);
        v.put_slice(&self.nonce);
        Extension {
            kind: KEY_EXTENSION,
            value: v.freeze(),
        }
    }

    /// Finds and reads the key extension among `extensions`; `Ok(None)` when
    /// there is none.
    pub fn find(extensions: &[Extension]) -> Result<Option<HelloKey>, WireError> {
        let Some(e) = extensions.iter().find(|e| e.kind == KEY_EXTENSION) else {
            return Ok(None);
        };
        let mut v = e.value.clone();
        if v.len() != KEY_ID_LEN + NONCE_LEN {
            return Err(WireError::WrongLength {
                field: "hello key extension",
                len: v.len(),
                expected: KEY_ID_LEN + NONCE_LEN,
            });
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        v.copy_to_slice(&mut key_id);
        let mut nonce = [0u8; NONCE_LEN];
        v.copy_to_slice(&mut nonce);
        Ok(Some(HelloKey { key_id, nonce }))
    }
}

impl WelcomeKey {
    /// The listener's extension answering `hello`, proving `key`.
    pub fn answer(key: &SessionKey, hello: &HelloKey, dialer: u128, listener: u128) -> WelcomeKey {
        let nonce = nonce();
        WelcomeKey {
            key_id: key.id(),
            nonce,
            proof: key.proof(b"listener", dialer, listener, &hello.nonce, &nonce),
        }
    }

    /// As a handshake extension.
    pub fn extension(&self) -> Extension {
        let mut v = BytesMut::with_capacity(KEY_ID_LEN + NONCE_LEN + PROOF_LEN);
        v.put_slice(&self.key_id);
        v.put_slice(&self.nonce);
        v.put_slice(&self.proof);
        Extension {
            kind: KEY_EXTENSION,
            value: v.freeze(),
        }
    }

    /// Finds and reads the key extension among `extensions`.
    pub fn find(extensions: &[Extension]) -> Result<Option<WelcomeKey>, WireError> {
        let Some(e) = extensions.iter().find(|e| e.kind == KEY_EXTENSION) else {
            return Ok(None);
        };
        let mut v = e.value.clone();
        if v.len() != KEY_ID_LEN + NONCE_LEN + PROOF_LEN {
            return Err(WireError::WrongLength {
                field: "welcome key extension",
                len: v.len(),
                expected: KEY_ID_LEN + NONCE_LEN + PROOF_LEN,
            });
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        v.copy_to_slice(&mut key_id);
        let mut nonce = [0u8; NONCE_LEN];
        v.copy_to_slice(&mut nonce);
        let mut proof = [0u8; PROOF_LEN];
        v.copy_to_slice(&mut proof);
        Ok(Some(WelcomeKey {
            key_id,
            nonce,
            proof,
        }))
    }

    /// Whether the listener's proof is good for `key` in this handshake.
    pub fn verify(&self, key: &SessionKey, hello: &HelloKey, dialer: u128, listener: u128) -> bool {
        key.verify(
            b"listener",
            dialer,
            listener,
            &hello.nonce,
            &self.nonce,
            &self.proof,
        )
    }

    /// The dialer's proof message for this handshake (sent right after the
    /// Welcome, before any frame).
    pub fn dialer_proof(
        &self,
        key: &SessionKey,
        hello: &HelloKey,
        dialer: u128,
        listener: u128,
    ) -> Bytes {
        let tag = key.proof(b"dialer", dialer, listener, &hello.nonce, &self.nonce);
        let mut out = BytesMut::with_capacity(PROOF_MESSAGE_LEN);
        out.put_slice(&MAGIC);
        out.put_u16(VERSION);
        out.put_u8(PROOF_KIND);
        out.put_slice(&tag);
        out.freeze()
    }

    /// Checks the dialer's proof message at the front of `src` (taking it
    /// off). `Ok(None)`: more bytes are needed; `Ok(Some(false))`: a proof
    /// that is not good for this handshake.
    pub fn check_dialer_proof(
        &self,
        src: &mut BytesMut,
        key: &SessionKey,
        hello: &HelloKey,
        dialer: u128,
        listener: u128,
    ) -> Result<Option<bool>, WireError> {
        if src.len() < PROOF_MESSAGE_LEN {
            return Ok(None);
        }
        if src[..4] != MAGIC {
            return Err(WireError::BadMagic([src[0], src[1], src[2], src[3]]));
        }
        if src[6] != PROOF_KIND {
            return Err(WireError::BadAnswerStatus(src[6]));
        }
        let message = src.split_to(PROOF_MESSAGE_LEN);
        Ok(Some(key.verify(
            b"dialer",
            dialer,
            listener,
            &hello.nonce,
            &self.nonce,
            &message[7..],
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_prove_the_same_key_and_nothing_else_passes() {
        let key = SessionKey::new(b"k");
        let hello = HelloKey::new(&key);
        let welcome = WelcomeKey::answer(&key, &hello, 1, 2);
        assert!(welcome.verify(&key, &hello, 1, 2));
        assert!(!welcome.verify(&SessionKey::new(b"other"), &hello, 1, 2));
        assert!(!welcome.verify(&key, &hello, 1, 3), "bound to the node ids");
        let mut proof = BytesMut::from(&welcome.dialer_proof(&key, &hello, 1, 2)[..]);
        assert_eq!(
            welcome.check_dialer_proof(&mut proof, &key, &hello, 1, 2),
            Ok(Some(true))
        );
        // A proof from an earlier handshake (another listener nonce) fails.
        let earlier = WelcomeKey::answer(&key, &hello, 1, 2);
        let mut replayed = BytesMut::from(&earlier.dialer_proof(&key, &hello, 1, 2)[..]);
        assert_eq!(
            welcome.check_dialer_proof(&mut replayed, &key, &hello, 1, 2),
            Ok(Some(false))
        );
    }

    #[test]
    fn extensions_round_trip() {
        let key = SessionKey::new(b"k");
        let hello = HelloKey::new(&key);
        assert_eq!(HelloKey::find(&[hello.extension()]), Ok(Some(hello)));
        let welcome = WelcomeKey::answer(&key, &hello, 1, 2);
        assert_eq!(WelcomeKey::find(&[welcome.extension()]), Ok(Some(welcome)));
        assert_eq!(HelloKey::find(&[]), Ok(None));
        let short = Extension {
            kind: KEY_EXTENSION,
            value: Bytes::from_static(b"x"),
        };
        assert!(HelloKey::find(&[short]).is_err());
    }

    #[test]
    fn hex_keys_round_trip_and_bad_text_is_named() {
        let key = SessionKey::generate();
        assert_eq!(key.len(), 32);
        assert_ne!(key, SessionKey::generate());
        assert_eq!(
            SessionKey::from_hex(&format!("  {}\n", key.to_hex())),
            Ok(key)
        );
        let upper = "00112233445566778899AABBCCDDEEFF";
        assert_eq!(
            SessionKey::from_hex(upper).map(|k| k.to_hex()),
            Ok(upper.to_lowercase())
        );
        assert_eq!(
            SessionKey::from_hex("abc"),
            Err(KeyFormatError::OddLength(3))
        );
        assert_eq!(
            SessionKey::from_hex("00112233445566778899aabbccddeexz"),
            Err(KeyFormatError::NotHex { at: 30 })
        );
        assert_eq!(
            SessionKey::from_hex("c0ffee"),
            Err(KeyFormatError::TooShort(3))
        );
    }
}
