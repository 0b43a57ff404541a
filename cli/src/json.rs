//! JSON ⇄ MessagePack without a schema.
//!
//! MessagePack payloads of `#[plexus::service]` contracts are maps keyed by
//! field name, so JSON converts to them and back value by value. Two
//! MessagePack types have no JSON counterpart and are spelled as one-key
//! objects, both ways: binary as `{"$bin": "<base64>"}` and extension values
//! as `{"$ext": {"type": <i8>, "data": "<base64>"}}`. Map keys that are not
//! strings are written as their JSON text (`{"1": …}`) on the way out.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use rmpv::Value as Pack;
use serde_json::{Map, Number, Value as Json};

/// Why a payload did not convert.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// A `$bin` or `$ext` object is malformed.
    #[error("{0}")]
    Escape(String),
    /// The bytes are not one MessagePack value.
    #[error("not a MessagePack value: {0}")]
    NotMsgPack(String),
}

/// Encodes `json` as MessagePack.
pub fn to_msgpack(json: &Json) -> Result<Bytes, TranscodeError> {
    let value = pack(json)?;
    let mut out = Vec::with_capacity(64);
    rmpv::encode::write_value(&mut out, &value)
        .map_err(|e| TranscodeError::NotMsgPack(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// Decodes one MessagePack value (the whole payload) into JSON.
pub fn from_msgpack(bytes: &[u8]) -> Result<Json, TranscodeError> {
    let mut rest = bytes;
    let value = rmpv::decode::read_value(&mut rest)
        .map_err(|e| TranscodeError::NotMsgPack(e.to_string()))?;
    if !rest.is_empty() {
        return Err(TranscodeError::NotMsgPack(format!(
            "{} bytes left over after the value",
            rest.len()
        )));
    }
    Ok(unpack(&value))
}

fn pack(json: &Json) -> Result<Pack, TranscodeError> {
    Ok(match json {
        Json::Null => Pack::Nil,
        Json::Bool(b) => Pack::Boolean(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Pack::from(u)
            } else if let Some(i) = n.as_i64() {
                Pack::from(i)
            } else {
                Pack::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Pack::String(s.clone().into()),
        Json::Array(items) => Pack::Array(items.iter().map(pack).collect::<Result<_, _>>()?),
        Json::Object(map) => {
            if let Some(escaped) = unescape(map)? {
                return Ok(escaped);
            }
            Pack::Map(
                map.iter()
                    .map(|(k, v)| Ok((Pack::String(k.clone().into()), pack(v)?)))
                    .collect::<Result<_, TranscodeError>>()?,
            )
        }
    })
}

/// `{"$bin": …}` and `{"$ext": …}` back to the values they stand for.
fn unescape(map: &Map<String, Json>) -> Result<Option<Pack>, TranscodeError> {
    if map.len() != 1 {
        return Ok(None);
    }
    let bad = |what: &str| TranscodeError::Escape(what.to_owned());
    if let Some(b64) = map.get("$bin") {
        let text = b64
            .as_str()
            .ok_or_else(|| bad("`$bin` takes a base64 string: {\"$bin\": \"aGk=\"}"))?;
        let data = BASE64
            .decode(text)
            .map_err(|e| TranscodeError::Escape(format!("`$bin` is not base64: {e}")))?;
        return Ok(Some(Pack::Binary(data)));
    }
    if let Some(ext) = map.get("$ext") {
        let shape = "`$ext` takes {\"type\": <-128..127>, \"data\": \"<base64>\"}";
        let ty = ext
            .get("type")
            .and_then(Json::as_i64)
            .and_then(|t| i8::try_from(t).ok())
            .ok_or_else(|| bad(shape))?;
        let data = ext
            .get("data")
            .and_then(Json::as_str)
            .ok_or_else(|| bad(shape))?;
        let data = BASE64
            .decode(data)
            .map_err(|e| TranscodeError::Escape(format!("`$ext` data is not base64: {e}")))?;
        return Ok(Some(Pack::Ext(ty, data)));
    }
    Ok(None)
}

fn unpack(value: &Pack) -> Json {
    match value {
        Pack::Nil => Json::Null,
        Pack::Boolean(b) => Json::Bool(*b),
        Pack::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Json::from(u),
            (None, Some(i)) => Json::from(i),
            (None, None) => Json::Null,
        },
        Pack::F32(f) => float(f64::from(*f)),
        Pack::F64(f) => float(*f),
        Pack::String(s) => match s.as_str() {
            Some(text) => Json::String(text.to_owned()),
            None => bin(s.as_bytes()),
        },
        Pack::Binary(b) => bin(b),
        Pack::Array(items) => Json::Array(items.iter().map(unpack).collect()),
        Pack::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Pack::String(s) if s.as_str().is_some() => {
                            s.as_str().unwrap_or_default().to_owned()
                        }
                        other => unpack(other).to_string(),
                    };
                    (key, unpack(v))
                })
                .collect(),
        ),
        Pack::Ext(ty, data) => {
            let mut inner = Map::new();
            inner.insert("type".into(), Json::from(*ty));
            inner.insert("data".into(), Json::String(BASE64.encode(data)));
            let mut outer = Map::new();
            outer.insert("$ext".into(), Json::Object(inner));
            Json::Object(outer)
        }
    }
}

fn bin(bytes: &[u8]) -> Json {
    let mut map = Map::new();
    map.insert("$bin".into(), Json::String(BASE64.encode(bytes)));
    Json::Object(map)
}

/// JSON has no NaN or infinity; they are written as strings.
fn float(f: f64) -> Json {
    Number::from_f64(f)
        .map(Json::Number)
        .unwrap_or_else(|| Json::String(f.to_string()))
}

/// The reply of an operation without a contract: UTF-8 text as a JSON
/// string, anything else as `{"$bin": …}`.
pub fn raw_to_json(bytes: &[u8]) -> Json {
    match std::str::from_utf8(bytes) {
        Ok(text) => Json::String(text.to_owned()),
        Err(_) => bin(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Message {
        user: String,
        text: String,
        score: f32,
        tags: Vec<String>,
        reply_to: Option<u64>,
        #[serde(with = "serde_bytes_like")]
        blob: Vec<u8>,
    }

    /// Bytes serialized as MessagePack binary, as `serde_bytes` or `Bytes` do.
    mod serde_bytes_like {
        use serde::{Deserialize, Deserializer, Serializer};
        pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            let b = bytes::Bytes::deserialize(d)?;
            Ok(b.to_vec())
        }
    }

    fn sample() -> Message {
        Message {
            user: "ada".into(),
            text: "hi".into(),
            score: 1.5,
            tags: vec!["a".into()],
            reply_to: None,
            blob: vec![0, 159, 255],
        }
    }

    #[test]
    fn json_reaches_a_serde_type_through_the_plexus_codec() {
        let json: Json = serde_json::json!({
            "user": "ada", "text": "hi", "score": 1.5, "tags": ["a"],
            "reply_to": null, "blob": {"$bin": "AJ//"}
        });
        let bytes = to_msgpack(&json).expect("encodes");
        let decoded: Message = rmp_decode(&bytes);
        assert_eq!(decoded, sample());
    }

    #[test]
    fn a_serde_type_reads_back_as_the_same_json() {
        let mut bytes = Vec::new();
        rmp_encode(&sample(), &mut bytes);
        let json = from_msgpack(&bytes).expect("decodes");
        assert_eq!(
            json,
            serde_json::json!({
                "user": "ada", "text": "hi", "score": 1.5, "tags": ["a"],
                "reply_to": null, "blob": {"$bin": "AJ//"}
            })
        );
        let again: Message = rmp_decode(&to_msgpack(&json).expect("encodes"));
        assert_eq!(again, sample());
    }

    #[test]
    fn ext_values_and_odd_keys_round_trip_as_escapes() {
        let json = serde_json::json!({"$ext": {"type": 5, "data": "AQI="}});
        let bytes = to_msgpack(&json).expect("encodes");
        assert_eq!(from_msgpack(&bytes).expect("decodes"), json);
        let map = Pack::Map(vec![(Pack::from(1), Pack::from("one"))]);
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &map).expect("writes");
        assert_eq!(
            from_msgpack(&out).expect("decodes"),
            serde_json::json!({"1": "one"})
        );
    }

    #[test]
    fn malformed_escapes_and_trailing_bytes_are_errors() {
        let err = to_msgpack(&serde_json::json!({"$bin": 7})).unwrap_err();
        assert!(err.to_string().contains("base64 string"), "{err}");
        let err = to_msgpack(&serde_json::json!({"$bin": "***"})).unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
        let err = from_msgpack(&[0xc0, 0xc0]).unwrap_err();
        assert!(err.to_string().contains("left over"), "{err}");
        assert!(from_msgpack(&[0xd9]).is_err());
    }

    fn rmp_encode<T: Serialize + for<'de> Deserialize<'de>>(value: &T, out: &mut Vec<u8>) {
        let bytes = <plexus::codec::MsgPack as plexus::codec::Codec<T>>::encode(value)
            .expect("plexus encodes");
        out.extend_from_slice(&bytes);
    }

    fn rmp_decode<T: Serialize + for<'de> Deserialize<'de>>(bytes: &Bytes) -> T {
        <plexus::codec::MsgPack as plexus::codec::Codec<T>>::decode(bytes.clone())
            .expect("plexus decodes")
    }
}
