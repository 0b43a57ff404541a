//! [`Blob`]: a bytes payload that a decode shares with the frame it
//! arrived in instead of copying, and the scope ([`decode_sharing`]) in
//! which a codec lends that frame to it. Nothing here knows a wire format
//! beyond serde's "bytes": the codecs decide whether to lend their frame.

use std::borrow::Borrow;
use std::cell::Cell;
use std::fmt;
use std::io;
use std::ops::{Deref, RangeBounds};

use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

scoped_tls::scoped_thread_local! {
    /// The payload being decoded on this thread, while a codec lends it
    /// (see [`decode_sharing`]). Scoped: it is set only for the duration of
    /// one decode, so a `Blob` deserialized anywhere else never sees it.
    static FRAME: Bytes
}

/// Blobs at least this long are spliced into an outgoing stream message by
/// reference instead of being copied into it.
const SPLICE_FROM: usize = 16 * 1024;

thread_local! {
    /// Whether an encoder that splices is running on this thread (see
    /// [`splicing`]): only then does a large blob offer its bytes.
    static ACCEPTING: Cell<bool> = const { Cell::new(false) };
    /// The bytes of the large blob being serialized right now, offered to a
    /// [`SpliceWriter`] that is about to be handed the same slice.
    static OFFER: Cell<Option<Bytes>> = const { Cell::new(None) };
}

/// Runs `encode` with large blobs offering their bytes to a
/// [`SpliceWriter`]; restores what was before, also on unwinding.
pub(super) fn splicing<R>(encode: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACCEPTING.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ACCEPTING.with(|a| a.replace(true)));
    encode()
}

/// Whether no blob's bytes are on offer (nothing is being serialized).
#[cfg(test)]
pub(super) fn offer_is_empty() -> bool {
    OFFER.with(|o| {
        let offered = o.take();
        let empty = offered.is_none();
        o.set(offered);
        empty
    })
}

/// A writer into a message buffer that leaves out the bytes of a large blob
/// handed to it whole, recording them as a hole at their offset instead.
/// Anything it does not recognise as an offered blob is copied, so the
/// payload it describes is always exactly what a plain writer would write.
pub(super) struct SpliceWriter<'a> {
    buf: &'a mut BytesMut,
    base: usize,
    holes: &'a mut Vec<(usize, Bytes)>,
}

impl<'a> SpliceWriter<'a> {
    /// Appends to `buf`; hole offsets count from its length now.
    pub(super) fn new(buf: &'a mut BytesMut, holes: &'a mut Vec<(usize, Bytes)>) -> Self {
        let base = buf.len();
        SpliceWriter { buf, base, holes }
    }
}

impl io::Write for SpliceWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.len() >= SPLICE_FROM {
            // The very slice the blob holds, not merely equal bytes: the
            // blob's `Bytes` is immutable, so sharing it is sending them.
            let offered = OFFER.with(Cell::take);
            match offered {
                Some(b) if b.as_ptr() == data.as_ptr() && b.len() == data.len() => {
                    self.holes.push((self.buf.len() - self.base, b));
                    return Ok(data.len());
                }
                other => OFFER.with(|o| o.set(other)),
            }
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes carried as one binary value — MessagePack `bin`, serde's "bytes" —
/// that share the received frame's memory instead of copying out of it.
///
/// Use it in a contract where `Vec<u8>` or `serde_bytes::ByteBuf` would go:
/// a field, a parameter, a reply, a stream's item. On the wire it is exactly
/// what `serde_bytes::ByteBuf` is (MessagePack `bin 8/16/32`; in JSON a list
/// of numbers), so peers in other languages and the protocol documents see
/// no difference. What differs is the cost:
///
/// - **Decoding** with [`MsgPack`](super::MsgPack) (or any codec that
///   decodes through [`decode_sharing`]) makes the blob a reference-counted
///   slice of the received payload: no allocation, no copy, whatever its
///   size. Other codecs ([`Json`](super::Json)), and bytes that do not lie in
///   the lent payload, are copied — always correct, only slower.
/// - **Encoding** a stream's message with [`MsgPack`](super::MsgPack)
///   leaves a blob of 16 KiB or more out of the message: its bytes go to the
///   socket's vectored write by reference, never copied in this process.
///   A call's request or reply, and other codecs, copy the bytes once, into
///   the message. Cloning a `Blob` (to send the same body to many callers,
///   or on every message of a stream) only bumps a reference count.
///
/// ```
/// use plexus::codec::{Blob, Codec, MsgPack};
/// use plexus::Bytes;
///
/// let chunk = Blob::from(vec![7u8; 64 * 1024]);
/// let payload: Bytes = <MsgPack as Codec<Blob>>::encode(&chunk).unwrap();
/// let back: Blob = <MsgPack as Codec<Blob>>::decode(payload.clone()).unwrap();
/// assert_eq!(back, chunk);
/// // `back` is a view into `payload`, not a copy of it.
/// let inside = payload.as_ptr_range();
/// assert!(inside.contains(&back.as_ptr()));
/// ```
///
/// # Memory: what a decoded blob keeps alive
///
/// A shared blob keeps the whole buffer it was read into alive, not only its
/// own bytes, until it (and every clone and slice of it) is dropped. For a
/// Plexus connection that buffer is the read chunk the frame arrived in:
/// at most about 1 MiB, or the frame itself when the frame is larger, and
/// usually shared with the frames around it. That is the usual trade-off of
/// shared buffers (`bytes::Bytes` slices, hyper bodies, prost `Bytes`
/// fields), and it is what makes a 64 KiB stream message free to receive:
///
/// - Handling a blob and dropping it, or passing it on, costs nothing extra.
/// - Keeping blobs *long* — in a cache, a map, a queue that outlives the
///   call — can keep far more memory than their length says: a 16-byte blob
///   kept from every read keeps every read buffer. Keep
///   [`detach`](Blob::detach)ed copies there instead; a detached blob owns an
///   allocation of exactly its length.
/// - An empty blob shares nothing.
/// - Memory a kept blob holds is outside the connection's memory budget,
///   which counts a message only until its handler (or stream reader) is
///   done with it.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blob(Bytes);

impl Blob {
    /// An empty blob.
    pub const fn new() -> Self {
        Blob(Bytes::new())
    }

    /// A blob of static bytes: no allocation, ever.
    pub const fn from_static(bytes: &'static [u8]) -> Self {
        Blob(Bytes::from_static(bytes))
    }

    /// A blob holding a copy of `data`.
    pub fn copy_from_slice(data: &[u8]) -> Self {
        Blob(Bytes::copy_from_slice(data))
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes as a shared buffer, for APIs that take `Bytes`.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The bytes as a shared buffer, without a copy.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// A part of this blob, sharing its memory.
    ///
    /// # Panics
    ///
    /// If the range is out of bounds, as slicing `[u8]` does.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Blob {
        Blob(self.0.slice(range))
    }

    /// A copy of these bytes in an allocation of its own, for a blob to be
    /// kept long: the copy keeps nothing else alive (see "Memory" above).
    pub fn detach(&self) -> Blob {
        Blob::copy_from_slice(&self.0)
    }
}

/// Runs `decode` over `payload`, lending `payload` to every [`Blob`]
/// deserialized meanwhile on this thread, so that a blob whose bytes lie in
/// `payload` becomes a shared slice of it instead of a copy.
///
/// [`MsgPack`](super::MsgPack) decodes through it. A codec of your own whose
/// deserializer borrows from its input (serde's `visit_borrowed_bytes`) gets
/// the same for its blobs by doing so:
///
/// ```
/// use plexus::codec::{decode_sharing, Blob};
/// use plexus::Bytes;
///
/// let payload = Bytes::from(rmp_serde::to_vec(&Blob::from(vec![1u8; 100])).unwrap());
/// let blob: Blob = decode_sharing(&payload, |bytes| rmp_serde::from_slice(bytes)).unwrap();
/// assert!(payload.as_ptr_range().contains(&blob.as_ptr()));
/// ```
///
/// Nested calls lend the innermost payload; the previous one is lent again
/// when the inner call returns (or unwinds).
pub fn decode_sharing<R>(payload: &Bytes, decode: impl FnOnce(&[u8]) -> R) -> R {
    FRAME.set(payload, || decode(payload))
}

/// `part` as a slice of the lent payload, if it lies inside it.
fn shared(part: &[u8]) -> Option<Bytes> {
    // Empty bytes point anywhere; they need nothing kept alive.
    if part.is_empty() || !FRAME.is_set() {
        return None;
    }
    FRAME.with(|frame| {
        // The lent payload is alive and immutable for the whole decode, so
        // bytes inside its range are its bytes.
        let inside = frame.as_ptr_range();
        let end = part.as_ptr().wrapping_add(part.len());
        (inside.start <= part.as_ptr() && end <= inside.end).then(|| frame.slice_ref(part))
    })
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.len() < SPLICE_FROM || !ACCEPTING.with(Cell::get) {
            return serializer.serialize_bytes(&self.0);
        }
        // Offered to a `SpliceWriter` below, if that is where the bytes go;
        // withdrawn after, whoever the serializer wrote to.
        let previous = OFFER.with(|o| o.replace(Some(self.0.clone())));
        let written = serializer.serialize_bytes(&self.0);
        OFFER.with(|o| o.set(previous));
        written
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(BlobVisitor)
    }
}

struct BlobVisitor;

/// Preallocation for a blob sent as a list of numbers (JSON): what the
/// input claims, up to this much, so a false length cannot reserve memory.
const SEQ_PREALLOCATION_MAX: usize = 64 * 1024;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Blob, E> {
        Ok(shared(v).map_or_else(|| Blob::copy_from_slice(v), Blob))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Blob, E> {
        Ok(Blob::copy_from_slice(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob::from(v))
    }

    // Strings are taken as their UTF-8 bytes, as `serde_bytes::ByteBuf`
    // takes them: some MessagePack writers send bytes as `str`.
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Blob, E> {
        self.visit_borrowed_bytes(v.as_bytes())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Blob, E> {
        self.visit_bytes(v.as_bytes())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Blob, E> {
        self.visit_byte_buf(v.into_bytes())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
        let claimed = seq.size_hint().unwrap_or(0);
        let mut bytes = Vec::with_capacity(claimed.min(SEQ_PREALLOCATION_MAX));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        Ok(Blob::from(bytes))
    }
}

impl Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<[u8]> for Blob {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// At most this many bytes are shown; a 64 KiB body in a log line helps no one.
const DEBUG_SHOWN: usize = 32;

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(DEBUG_SHOWN)];
        write!(f, "Blob({} bytes: b\"", self.0.len())?;
        for &byte in shown {
            write!(f, "{}", std::ascii::escape_default(byte))?;
        }
        let more = if self.0.len() > DEBUG_SHOWN {
            "…"
        } else {
            ""
        };
        write!(f, "\"{more})")
    }
}

impl From<Bytes> for Blob {
    fn from(bytes: Bytes) -> Self {
        Blob(bytes)
    }
}

impl From<Vec<u8>> for Blob {
    /// Takes the vector's allocation; no copy.
    fn from(bytes: Vec<u8>) -> Self {
        Blob(Bytes::from(bytes))
    }
}

impl From<&'static [u8]> for Blob {
    fn from(bytes: &'static [u8]) -> Self {
        Blob::from_static(bytes)
    }
}

impl From<&'static str> for Blob {
    fn from(text: &'static str) -> Self {
        Blob::from_static(text.as_bytes())
    }
}

impl From<String> for Blob {
    fn from(text: String) -> Self {
        Blob::from(text.into_bytes())
    }
}

impl From<Blob> for Bytes {
    fn from(blob: Blob) -> Self {
        blob.0
    }
}

impl From<Blob> for Vec<u8> {
    /// Takes the allocation when the blob is its only owner and spans all of
    /// it; copies otherwise (a shared slice of a frame, say).
    fn from(blob: Blob) -> Self {
        Vec::from(blob.0)
    }
}

impl PartialEq<[u8]> for Blob {
    fn eq(&self, other: &[u8]) -> bool {
        self.0 == other
    }
}

impl PartialEq<&[u8]> for Blob {
    fn eq(&self, other: &&[u8]) -> bool {
        self.0 == *other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Blob {
    fn eq(&self, other: &[u8; N]) -> bool {
        self.0 == other[..]
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Blob {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.0 == other[..]
    }
}

impl PartialEq<Vec<u8>> for Blob {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.0 == other[..]
    }
}

impl PartialEq<Bytes> for Blob {
    fn eq(&self, other: &Bytes) -> bool {
        self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgpack(blob: &Blob) -> Bytes {
        Bytes::from(rmp_serde::to_vec(blob).unwrap())
    }

    #[test]
    fn a_blob_outside_a_lent_payload_is_copied() {
        let payload = msgpack(&Blob::from(vec![3u8; 300]));
        let blob: Blob = rmp_serde::from_slice(&payload).unwrap();
        assert_eq!(blob, vec![3u8; 300]);
        assert!(!payload.as_ptr_range().contains(&blob.as_ptr()));
    }

    #[test]
    fn only_bytes_inside_the_lent_payload_are_shared() {
        let lent = msgpack(&Blob::from(vec![1u8; 300]));
        let other = msgpack(&Blob::from(vec![2u8; 300]));
        let blob: Blob = decode_sharing(&lent, |_| rmp_serde::from_slice(&other)).unwrap();
        assert_eq!(blob, vec![2u8; 300]);
        assert!(!other.as_ptr_range().contains(&blob.as_ptr()));
        assert!(!lent.as_ptr_range().contains(&blob.as_ptr()));
    }

    #[test]
    fn nested_lending_restores_the_outer_payload() {
        let outer = msgpack(&Blob::from(vec![1u8; 300]));
        let inner = msgpack(&Blob::from(vec![2u8; 300]));
        let (first, second): (Blob, Blob) = decode_sharing(&outer, |bytes| {
            let first: Blob = decode_sharing(&inner, |b| rmp_serde::from_slice(b)).unwrap();
            (first, rmp_serde::from_slice(bytes).unwrap())
        });
        assert!(inner.as_ptr_range().contains(&first.as_ptr()));
        assert!(outer.as_ptr_range().contains(&second.as_ptr()));
        assert!(!FRAME.is_set());
    }

    #[test]
    fn strings_and_lists_of_numbers_are_read_as_bytes() {
        let from_str: Blob = rmp_serde::from_slice(&rmp_serde::to_vec("héllo").unwrap()).unwrap();
        assert_eq!(from_str, "héllo".as_bytes());
        let from_list: Blob = serde_json::from_str("[1,2,255]").unwrap();
        assert_eq!(from_list, [1u8, 2, 255]);
        assert!(serde_json::from_str::<Blob>("[1,2,256]").is_err());
    }

    #[test]
    fn debug_shows_the_length_and_at_most_a_prefix() {
        assert_eq!(
            format!("{:?}", Blob::from_static(b"a\n")),
            "Blob(2 bytes: b\"a\\n\")"
        );
        let long = format!("{:?}", Blob::from(vec![b'z'; 1000]));
        assert_eq!(long, format!("Blob(1000 bytes: b\"{}\"…)", "z".repeat(32)));
    }
}
