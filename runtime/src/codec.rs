//! Codecs: how typed messages become payload bytes and back.
//!
//! A codec is a zero-sized type naming a wire [`Format`] and implementing
//! [`Codec<T>`] for the message types it can carry. Each service picks one;
//! generated clients and handlers go through it and nothing else. It sits
//! just above connections: the calling side's helpers take the call's
//! [`Connection`](crate::Connection) only to name its peer in an error.
//!
//! | codec | for | why |
//! |---|---|---|
//! | [`MsgPack`] (default for `#[plexus::service]`) | serde types | compact, fast, self-describing and readable from every language; converts losslessly to and from JSON for command-line use |
//! | [`Json`] | serde types | human-readable payloads, for debugging and for services driven by scripts |
//! | [`Prost`] | `.proto` messages | Protocol Buffers, the format `.proto` services are written for |
//!
//! The measurements behind the default are in `docs/CODEC.md`.
//!
//! Bytes inside a message travel best as a [`Blob`]: one binary value on
//! the wire, and under [`MsgPack`] a slice of the received frame rather
//! than a copy of it.
//!
//! ```
//! use plexus::codec::{Codec, MsgPack};
//!
//! let bytes = <MsgPack as Codec<(u32, String)>>::encode(&(7, "seven".to_owned())).unwrap();
//! let back: (u32, String) = <MsgPack as Codec<_>>::decode(bytes).unwrap();
//! assert_eq!(back, (7, "seven".to_owned()));
//! ```

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{CallError, Reject};

mod blob;
pub use blob::{decode_sharing, Blob};

/// Where [`Codec::encode_spliced`] puts the blobs it leaves out of a
/// message: `(offset, bytes)`, in order.
#[doc(hidden)]
pub type Holes = Vec<(usize, Bytes)>;

/// A wire format, named so descriptors can say which one a service speaks.
pub trait Format: Send + Sync + 'static {
    /// Stable lowercase name (`msgpack`, `json`, `protobuf`).
    const NAME: &'static str;
}

/// Encodes values of `T` to bytes and decodes them back under one [`Format`].
#[diagnostic::on_unimplemented(
    message = "`{T}` is not a message type the codec `{Self}` can carry",
    label = "a message of this service, carried by `{Self}`",
    note = "`MsgPack` and `Json` carry serde types: derive them with `#[derive(serde::Serialize, serde::Deserialize)]` (serde with its `derive` feature); `Prost` carries messages generated from .proto files"
)]
pub trait Codec<T>: Format {
    /// Encodes `value`.
    fn encode(value: &T) -> Result<Bytes, CodecError>;
    /// Appends the encoding of `value` to `buf`; on failure `buf` may hold
    /// part of it (callers truncate). The default goes through
    /// [`encode`](Self::encode); codecs that can write into a buffer
    /// override it, which saves the allocation of a message of its own.
    fn encode_into(value: &T, buf: &mut BytesMut) -> Result<(), CodecError> {
        buf.extend_from_slice(&Self::encode(value)?);
        Ok(())
    }
    /// Decodes a value; never panics, whatever the bytes.
    fn decode(bytes: Bytes) -> Result<T, CodecError>;

    /// Like [`encode_into`](Self::encode_into), but a codec may leave a
    /// large [`Blob`] out of `buf` and push `(offset, bytes)` to `holes`
    /// instead: the payload is `buf` from where it was on entry, with each
    /// hole's bytes at its offset (counted from there). The runtime then
    /// writes the blob to the socket without copying it. The default
    /// splices nothing.
    #[doc(hidden)]
    fn encode_spliced(value: &T, buf: &mut BytesMut, holes: &mut Holes) -> Result<(), CodecError> {
        let _ = holes;
        Self::encode_into(value, buf)
    }
}

/// A value could not be encoded, or bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value cannot be represented in the format (e.g. a map with
    /// non-string keys in JSON).
    #[error("{format} could not encode the value: {message}")]
    Encode {
        /// The format's name.
        format: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("{format} could not decode the payload: {message}")]
    Decode {
        /// The format's name.
        format: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl CodecError {
    fn encode(format: &'static str, error: impl std::fmt::Display) -> Self {
        CodecError::Encode {
            format,
            message: error.to_string(),
        }
    }

    fn decode(format: &'static str, error: impl std::fmt::Display) -> Self {
        CodecError::Decode {
            format,
            message: error.to_string(),
        }
    }
}

/// MessagePack through `rmp-serde`, structs encoded as maps keyed by field name.
///
/// Field names make payloads self-describing: a peer in another language, or
/// a command-line tool converting from JSON, needs no schema to read or write
/// them, and adding an optional field does not break older peers.
#[derive(Debug, Clone, Copy, Default)]
pub struct MsgPack;

impl Format for MsgPack {
    const NAME: &'static str = "msgpack";
}

// Not recommended in errors: a failed bound then reads "not a message type
// the codec can carry" at the type, instead of one error per serde trait.
#[diagnostic::do_not_recommend]
impl<T> Codec<T> for MsgPack
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(value: &T) -> Result<Bytes, CodecError> {
        // Most messages are small; start with room for one so the common
        // case allocates once.
        let mut out = Vec::with_capacity(128);
        rmp_serde::encode::write_named(&mut out, value)
            .map(|()| Bytes::from(out))
            .map_err(|e| CodecError::encode(Self::NAME, e))
    }

    fn encode_into(value: &T, buf: &mut BytesMut) -> Result<(), CodecError> {
        rmp_serde::encode::write_named(&mut buf.writer(), value)
            .map_err(|e| CodecError::encode(Self::NAME, e))
    }

    fn encode_spliced(value: &T, buf: &mut BytesMut, holes: &mut Holes) -> Result<(), CodecError> {
        // rmp-serde writes a `bin`'s bytes with one `write` of the very
        // slice the `Blob` holds, which the writer recognises and splices.
        blob::splicing(|| {
            let mut writer = blob::SpliceWriter::new(buf, holes);
            rmp_serde::encode::write_named(&mut writer, value)
        })
        .map_err(|e| CodecError::encode(Self::NAME, e))
    }

    fn decode(bytes: Bytes) -> Result<T, CodecError> {
        // rmp-serde reads `bin` as borrowed bytes: a `Blob` becomes a slice
        // of the payload instead of a copy.
        decode_sharing(&bytes, |payload| rmp_serde::from_slice(payload))
            .map_err(|e| CodecError::decode(Self::NAME, e))
    }
}

/// JSON through `serde_json`: readable payloads at a cost in size and speed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Format for Json {
    const NAME: &'static str = "json";
}

// Not recommended in errors: a failed bound then reads "not a message type
// the codec can carry" at the type, instead of one error per serde trait.
#[diagnostic::do_not_recommend]
impl<T> Codec<T> for Json
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(value: &T) -> Result<Bytes, CodecError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| CodecError::encode(Self::NAME, e))
    }

    fn encode_into(value: &T, buf: &mut BytesMut) -> Result<(), CodecError> {
        serde_json::to_writer(buf.writer(), value).map_err(|e| CodecError::encode(Self::NAME, e))
    }

    fn decode(bytes: Bytes) -> Result<T, CodecError> {
        serde_json::from_slice(&bytes).map_err(|e| CodecError::decode(Self::NAME, e))
    }
}

/// Protocol Buffers through `prost`, for messages generated from `.proto` files.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prost;

impl Format for Prost {
    const NAME: &'static str = "protobuf";
}

#[diagnostic::do_not_recommend]
impl<T> Codec<T> for Prost
where
    T: prost::Message + Default,
{
    fn encode(value: &T) -> Result<Bytes, CodecError> {
        Ok(Bytes::from(value.encode_to_vec()))
    }

    fn encode_into(value: &T, buf: &mut BytesMut) -> Result<(), CodecError> {
        // A `BytesMut` grows as needed, so prost's capacity check never fails.
        value
            .encode(buf)
            .map_err(|e| CodecError::encode(Self::NAME, e))
    }

    fn decode(bytes: Bytes) -> Result<T, CodecError> {
        T::decode(bytes).map_err(|e| CodecError::decode(Self::NAME, e))
    }
}

/// A codec's two functions for one message type, taken in a constant.
///
/// Generated contracts reach their codec through one `Carrier` per message
/// type, so whether the codec can carry the type is checked once, where the
/// constant is defined, rather than at every generated use.
#[doc(hidden)]
pub struct Carrier<T> {
    /// `C::encode`.
    pub encode: fn(&T) -> Result<Bytes, CodecError>,
    /// `C::encode_into`.
    pub encode_into: fn(&T, &mut BytesMut) -> Result<(), CodecError>,
    /// `C::encode_spliced`.
    pub encode_spliced: fn(&T, &mut BytesMut, &mut Holes) -> Result<(), CodecError>,
    /// `C::decode`.
    pub decode: fn(Bytes) -> Result<T, CodecError>,
}

impl<T> Carrier<T> {
    /// The functions of `C` for `T`.
    pub const fn of<C: Codec<T>>() -> Self {
        Carrier {
            encode: C::encode,
            encode_into: C::encode_into,
            encode_spliced: C::encode_spliced,
            decode: C::decode,
        }
    }
}

/// Encodes a request on the calling side; a failure becomes
/// [`CallError::Encode`] naming the operation and `conn`'s peer (the value
/// never left).
pub fn encode_request<C: Codec<T>, T>(
    op: &str,
    conn: &crate::Connection,
    value: &T,
) -> Result<Bytes, CallError> {
    // The peer is named only on failure: looking it up costs an allocation.
    encode_message::<C, T>(value).map_err(|e| CallError::encode(op, conn.peer().label().clone(), e))
}

/// Decodes a reply on the calling side; a failure becomes [`CallError::Decode`].
pub fn decode_reply<C: Codec<T>, T>(
    op: &str,
    conn: &crate::Connection,
    bytes: Bytes,
) -> Result<T, CallError> {
    C::decode(bytes).map_err(|e| CallError::decode(op, conn.peer().label().clone(), e))
}

/// Decodes a request on the serving side; a failure becomes
/// [`Reject::invalid_payload`], which the caller sees as [`CallError::Decode`].
pub fn decode_request<C: Codec<T>, T>(bytes: Bytes) -> Result<T, Reject> {
    C::decode(bytes).map_err(|e| Reject::invalid_payload(e.to_string()))
}

/// Encodes a reply on the serving side; a failure (a bug in the handler's
/// types, not the caller's fault) becomes a rejection with the system code
/// for a failed handler.
pub fn encode_reply<C: Codec<T>, T>(value: &T) -> Result<Bytes, Reject> {
    encode_message::<C, T>(value).map_err(|e| Reject::handler_failed(e.to_string()))
}

/// Room a thread's message buffer is given when it runs out: many small
/// messages are encoded into one allocation.
const MESSAGE_CHUNK: usize = 4 * 1024;
/// A thread's message buffer that grew beyond this (a large message) is not
/// kept: the message alone owns that memory and frees it when dropped.
const MESSAGE_KEEP: usize = 16 * 1024;

thread_local! {
    /// Where this thread encodes the messages of calls: each message is
    /// split off as a `Bytes` sharing the buffer. A call's messages live
    /// only until they are copied into a connection's write queue or the
    /// call ends, so the chunk is soon wholly free again and `reserve`
    /// reuses it in place: a call's request and reply cost no allocation.
    static MESSAGES: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Encodes one message of a call into this thread's message buffer (see
/// `MESSAGES`). Not for messages kept long: each keeps its chunk alive.
fn encode_message<C: Codec<T>, T>(value: &T) -> Result<Bytes, CodecError> {
    in_message_buffer(|buf| C::encode_into(value, buf))
}

/// Encodes one message of a stream for the runtime to send: like
/// `encode_message`, with large blobs spliced in by reference (see
/// [`Codec::encode_spliced`]) rather than copied.
pub(crate) fn encode_spliced<C: Codec<T>, T>(
    value: &T,
) -> Result<crate::connection::SplicedMessage, CodecError> {
    let mut holes = Vec::new();
    let bytes = in_message_buffer(|buf| C::encode_spliced(value, buf, &mut holes))?;
    Ok(crate::connection::SplicedMessage::new(bytes, holes))
}

/// Runs `encode` on this thread's message buffer (emptied first) and splits
/// off what it wrote; on a buffer of its own when that one is in use.
fn in_message_buffer(
    encode: impl FnOnce(&mut BytesMut) -> Result<(), CodecError>,
) -> Result<Bytes, CodecError> {
    MESSAGES.with(|cell| {
        // Re-entered from inside an encoder: encode on its own.
        let Ok(mut buf) = cell.try_borrow_mut() else {
            let mut own = BytesMut::new();
            return encode(&mut own).map(|()| own.freeze());
        };
        // A panic in an encoder leaves part of a message behind.
        buf.clear();
        if buf.capacity() < MESSAGE_CHUNK / 4 {
            buf.reserve(MESSAGE_CHUNK);
        }
        if let Err(e) = encode(&mut buf) {
            buf.clear();
            return Err(e);
        }
        let message = buf.split().freeze();
        if message.len() + buf.capacity() > MESSAGE_KEEP {
            *buf = BytesMut::new();
        }
        Ok(message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_sharing_the_thread_buffer_stay_whole() {
        let first = encode_message::<MsgPack, (u32, String)>(&(1, "one".into())).unwrap();
        let large = "x".repeat(MESSAGE_KEEP * 2);
        let second = encode_message::<MsgPack, (u32, String)>(&(2, large.clone())).unwrap();
        let third = encode_message::<Json, Vec<u8>>(&vec![3, 4]).unwrap();
        assert_eq!(
            <MsgPack as Codec<(u32, String)>>::decode(first).unwrap(),
            (1, "one".to_owned())
        );
        assert_eq!(
            <MsgPack as Codec<(u32, String)>>::decode(second).unwrap(),
            (2, large)
        );
        assert_eq!(&third[..], b"[3,4]");
        // A large message is not kept in the thread's buffer.
        MESSAGES.with(|cell| assert!(cell.borrow().capacity() <= MESSAGE_KEEP));
    }

    #[test]
    fn a_failed_encoding_leaves_nothing_behind() {
        let mut map = std::collections::HashMap::new();
        map.insert(vec![1u8], 1u8);
        assert!(encode_message::<Json, _>(&map).is_err());
        let next = encode_message::<Json, u8>(&7).unwrap();
        assert_eq!(&next[..], b"7");
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Chunk {
        index: u32,
        data: Blob,
        tail: Blob,
        note: String,
    }

    #[test]
    fn a_large_blob_is_spliced_by_reference_and_the_payload_is_unchanged() {
        let data = Blob::from(vec![0x5a; 64 * 1024]);
        let tail = Blob::from(vec![7; 20 * 1024]);
        let chunk = Chunk {
            index: 3,
            data: data.clone(),
            tail: tail.clone(),
            note: "n".into(),
        };
        let spliced = encode_spliced::<MsgPack, Chunk>(&chunk).unwrap();
        let plain = <MsgPack as Codec<Chunk>>::encode(&chunk).unwrap();
        // Exactly the bytes a plain encoding writes, with both blobs left
        // out of the encoder's buffer: what is copied is a few dozen bytes.
        assert_eq!(spliced.to_bytes(), plain);
        assert_eq!(spliced.len(), plain.len());
        assert!(spliced.encoded_len() < 64, "{}", spliced.encoded_len());
        assert_eq!(
            <MsgPack as Codec<Chunk>>::decode(spliced.to_bytes()).unwrap(),
            chunk
        );
        // Offered once: nothing is left behind for a later writer.
        assert!(blob::offer_is_empty());
    }

    #[test]
    fn small_blobs_and_other_codecs_are_copied_as_before() {
        let small = Blob::from(vec![1; 100]);
        let spliced = encode_spliced::<MsgPack, Blob>(&small).unwrap();
        assert_eq!(spliced.encoded_len(), spliced.len());
        let large = Blob::from(vec![2; 32 * 1024]);
        let json = encode_spliced::<Json, Blob>(&large).unwrap();
        assert_eq!(json.encoded_len(), json.len());
        assert_eq!(
            json.to_bytes(),
            <Json as Codec<Blob>>::encode(&large).unwrap()
        );
        // A blob serialized by a plain MessagePack writer is copied whole.
        let plain = <MsgPack as Codec<Blob>>::encode(&large).unwrap();
        assert_eq!(plain.len(), large.len() + 3); // bin 16
        assert!(blob::offer_is_empty());
    }
}
