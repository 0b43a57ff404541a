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
//! ```
//! use plexus::codec::{Codec, MsgPack};
//!
//! let bytes = <MsgPack as Codec<(u32, String)>>::encode(&(7, "seven".to_owned())).unwrap();
//! let back: (u32, String) = <MsgPack as Codec<_>>::decode(bytes).unwrap();
//! assert_eq!(back, (7, "seven".to_owned()));
//! ```

use bytes::Bytes;

use crate::error::{CallError, Reject};

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
    /// Decodes a value; never panics, whatever the bytes.
    fn decode(bytes: Bytes) -> Result<T, CodecError>;
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

    fn decode(bytes: Bytes) -> Result<T, CodecError> {
        rmp_serde::from_slice(&bytes).map_err(|e| CodecError::decode(Self::NAME, e))
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
    /// `C::decode`.
    pub decode: fn(Bytes) -> Result<T, CodecError>,
}

impl<T> Carrier<T> {
    /// The functions of `C` for `T`.
    pub const fn of<C: Codec<T>>() -> Self {
        Carrier {
            encode: C::encode,
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
    C::encode(value).map_err(|e| CallError::encode(op, conn.peer().label().clone(), e))
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
    C::encode(value).map_err(|e| Reject::handler_failed(e.to_string()))
}
