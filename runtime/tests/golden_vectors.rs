//! The golden test vectors in `docs/vectors/v2.json`: hex frames and
//! handshake messages with their meaning, and inputs a decoder must refuse,
//! for any implementation of `docs/PROTOCOL.md` to check itself against.
//!
//! This test decodes every vector and compares it with its meaning, encodes
//! every meaning and compares it with the bytes, and checks that every
//! invalid input is refused with the error the vector names. The file is
//! written by the vectors below (`PLEXUS_WRITE_VECTORS=1 cargo test -p
//! plexus --test golden_vectors`); the test then fails until the written
//! file is committed, so a change to the bytes always shows in review.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use plexus::wire::frame::{CallOpen, Frame, OpRef};
use plexus::wire::handshake::{Answer, Extension, Hello, Refusal, RefusalCode, Welcome};
use plexus::wire::key::{HelloKey, SessionKey, WelcomeKey, NONCE_LEN};
use plexus::wire::{self, handshake, SystemCode, WireError};
use serde_json::{json, Map, Value};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors/v2.json");

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unhex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

// --------------------------------------------------------- the vectors

fn open(id: u32, index: u32, name: Option<&str>) -> CallOpen {
    CallOpen {
        id,
        op: OpRef {
            index,
            name: name.map(str::to_owned),
        },
        deadline: None,
        metadata: Vec::new(),
        session: None,
        end: true,
        oneway: false,
        body: Bytes::new(),
    }
}

fn frames() -> Vec<(&'static str, &'static str, Frame)> {
    vec![
        (
            "call_open_defining_its_operation",
            "The dialer's first call: id 1, defines operation index 0 as demo.Echo/echo, 30 s deadline, body \"hi\". Flags END|OP_NEW|DEADLINE.",
            Frame::CallOpen(CallOpen {
                deadline: Some(Duration::from_secs(30)),
                body: b("hi"),
                ..open(1, 0, Some("demo.Echo/echo"))
            }),
        ),
        (
            "call_open_by_index",
            "A later call to the same operation: id 3, index 0 only, no deadline, body \"yo\". Flags END.",
            Frame::CallOpen(CallOpen {
                body: b("yo"),
                ..open(3, 0, None)
            }),
        ),
        (
            "call_open_with_metadata_in_a_session",
            "Id 5, index 1 defined as a.B/c, two metadata pairs (keys repeat and keep their order), inside session 3, empty body. Flags END|OP_NEW|METADATA|SESSION.",
            Frame::CallOpen(CallOpen {
                metadata: vec![
                    ("trace".into(), b("t1")),
                    ("trace".into(), Bytes::new()),
                ],
                session: Some(3),
                ..open(5, 1, Some("a.B/c"))
            }),
        ),
        (
            "call_open_one_way",
            "A one-way message: id 0, index 2 defined as a.B/note, body \"n\". Flags END|ONEWAY|OP_NEW.",
            Frame::CallOpen(CallOpen {
                oneway: true,
                body: b("n"),
                ..open(0, 2, Some("a.B/note"))
            }),
        ),
        (
            "call_open_request_stream",
            "A client-stream or bidi call: id 7, index 0, requests follow as Data. No flags at all (END clear).",
            Frame::CallOpen(CallOpen {
                end: false,
                ..open(7, 0, None)
            }),
        ),
        (
            "call_open_with_a_zero_deadline",
            "Id 9, index 0, a deadline of 0 µs (already passed on arrival). Flags END|DEADLINE.",
            Frame::CallOpen(CallOpen {
                deadline: Some(Duration::ZERO),
                ..open(9, 0, None)
            }),
        ),
        (
            "data",
            "One stream message on call 7: \"hello\".",
            Frame::Data {
                id: 7,
                body: b("hello"),
            },
        ),
        (
            "data_empty",
            "An empty stream message on call 2 (the listener's call).",
            Frame::Data {
                id: 2,
                body: Bytes::new(),
            },
        ),
        ("end", "Call 7's request stream is done.", Frame::End { id: 7 }),
        (
            "ack_with_reply",
            "Call 1 succeeded with the reply \"hi\".",
            Frame::Ack {
                id: 1,
                body: b("hi"),
            },
        ),
        (
            "ack_empty",
            "Call 7 succeeded (a stream call's ack, empty).",
            Frame::Ack {
                id: 7,
                body: Bytes::new(),
            },
        ),
        (
            "reject_system_no_such_operation",
            "Call 5 refused by the runtime: SYSTEM flag, code 1 (NoSuchOperation).",
            Frame::Reject {
                id: 5,
                system: true,
                code: SystemCode::NoSuchOperation as u32,
                message: "no handler for `demo.Echo/nope`".into(),
                details: Bytes::new(),
            },
        ),
        (
            "reject_system_resource_exhausted",
            "Call 11 refused because the peer already has as many calls served as allowed: SYSTEM, code 10.",
            Frame::Reject {
                id: 11,
                system: true,
                code: SystemCode::ResourceExhausted as u32,
                message: "256 calls already served".into(),
                details: Bytes::new(),
            },
        ),
        (
            "reject_application",
            "Call 3 rejected by its handler: application code 404 (no SYSTEM flag), message, and opaque details.",
            Frame::Reject {
                id: 3,
                system: false,
                code: 404,
                message: "no such user".into(),
                details: b("alice"),
            },
        ),
        ("cancel", "The caller abandons call 9.", Frame::Cancel { id: 9 }),
        (
            "credit",
            "1 MiB more of Data may be sent on call 7.",
            Frame::Credit {
                id: 7,
                bytes: 1 << 20,
            },
        ),
        ("ping", "A ping with value 1.", Frame::Ping { payload: 1 }),
        (
            "pong",
            "The answer to it.",
            Frame::Pong { payload: 1 },
        ),
        (
            "goaway_graceful",
            "The sender closes gracefully; it admitted the receiver's calls up to id 7.",
            Frame::GoAway {
                last_id: 7,
                code: 0,
                reason: "closing".into(),
            },
        ),
        (
            "goaway_protocol",
            "The sender closes for a violation (code 7, Protocol); it admitted nothing.",
            Frame::GoAway {
                last_id: 0,
                code: SystemCode::Protocol as u32,
                reason: "unknown frame kind 11".into(),
            },
        ),
        (
            "goaway_cut_off",
            "The sender cuts the receiver off for exceeding a limit (code 10, ResourceExhausted).",
            Frame::GoAway {
                last_id: 3,
                code: SystemCode::ResourceExhausted as u32,
                reason: "cut off: read nothing".into(),
            },
        ),
    ]
}

const NODE: u128 = 0x0001_0203_0405_0607_0809_0a0b_0c0d_0e0f;

enum Message {
    Hello(Hello),
    Answer(Answer),
}

fn handshakes() -> Vec<(&'static str, &'static str, Message)> {
    vec![
        (
            "hello",
            "A dialer's hello: node 000102…0f, 16 MiB frames, 256 KiB windows, serves 256 calls at once, no extensions, no data.",
            Message::Hello(Hello {
                version: handshake::VERSION,
                node_id: NODE,
                max_frame: 16 << 20,
                window: 256 << 10,
                max_calls: 256,
                extensions: Vec::new(),
                data: Bytes::new(),
            }),
        ),
        (
            "hello_with_extension_and_data",
            "A hello with one extension (type 0x7f00, value \"xy\"; a receiver that does not know a type skips it) and application data \"hi\".",
            Message::Hello(Hello {
                version: handshake::VERSION,
                node_id: 7,
                max_frame: 1024,
                window: 1024,
                max_calls: 1,
                extensions: vec![Extension {
                    kind: 0x7f00,
                    value: b("xy"),
                }],
                data: b("hi"),
            }),
        ),
        (
            "welcome",
            "A listener's welcome: node 0f0e…00, 1 MiB frames, 2 MiB windows, 128 calls, reply data \"ok\".",
            Message::Answer(Answer::Welcome(Welcome {
                version: handshake::VERSION,
                node_id: 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100,
                max_frame: 1 << 20,
                window: 2 << 20,
                max_calls: 128,
                extensions: Vec::new(),
                data: b("ok"),
            })),
        ),
        (
            "refusal_version_mismatch",
            "A listener refusing a dialer of another version (code 1), with its own version in the prefix.",
            Message::Answer(Answer::Refusal(Refusal {
                version: handshake::VERSION,
                code: RefusalCode::VersionMismatch,
                reason: "this node speaks Plexus protocol v2, the dialer v3".into(),
            })),
        ),
        (
            "refusal_from_a_version_1_listener",
            "A refusal's layout is the same in every version: a version 1 listener refusing (code 4, TooManyConnections) decodes here too.",
            Message::Answer(Answer::Refusal(Refusal {
                version: 1,
                code: RefusalCode::TooManyConnections,
                reason: "full".into(),
            })),
        ),
    ]
}

/// An input a decoder must refuse: name, meaning, bytes, the max frame the
/// receiver announced (frames only; `None` for a hello), and the error.
type Invalid = (&'static str, &'static str, Vec<u8>, Option<u32>, WireError);

fn invalid() -> Vec<Invalid> {
    let mut v = Vec::new();
    let frame = |len: u32, kind: u8, flags: u8, id: u32, payload: &[u8]| {
        let mut out = Vec::new();
        out.extend_from_slice(&len.to_be_bytes());
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(payload);
        out
    };
    v.push((
        "frame_too_large",
        "A header announcing 1025 payload bytes to a receiver whose max frame is 1024: refused from the header alone.",
        frame(1025, 2, 0, 1, &[]),
        Some(1024),
        WireError::FrameTooLarge { len: 1025, max: 1024 },
    ));
    v.push((
        "unknown_kind",
        "Kind 11.",
        frame(0, 11, 0, 0, &[]),
        Some(1 << 20),
        WireError::UnknownKind(11),
    ));
    v.push((
        "end_with_payload",
        "An End frame carrying a byte.",
        frame(1, 3, 0, 1, &[0]),
        Some(1 << 20),
        WireError::TrailingBytes {
            kind: wire::frame::Kind::End,
        },
    ));
    v.push((
        "ping_of_seven_bytes",
        "A ping payload must be exactly 8 bytes.",
        frame(7, 8, 0, 0, &[0; 7]),
        Some(1 << 20),
        WireError::WrongLength {
            field: "ping payload",
            len: 7,
            expected: 8,
        },
    ));
    let mut long = vec![0x00, 0x81, 0x08];
    long.extend(std::iter::repeat_n(b'o', 1025));
    v.push((
        "operation_name_too_long",
        "A call-open defining a name of 1025 bytes (varint 0x81 0x08): over the 1024-byte limit.",
        frame(long.len() as u32, 1, 0x05, 1, &long),
        Some(1 << 20),
        WireError::TooLong {
            field: "operation name",
            len: 1025,
            max: 1024,
        },
    ));
    v.push((
        "operation_name_truncated",
        "A name length of 50 with one byte of name left in the payload.",
        frame(3, 1, 0x04, 1, &[0, 50, b'x']),
        Some(1 << 20),
        WireError::Truncated {
            field: "operation name",
        },
    ));
    v.push((
        "credit_varint_overflow",
        "A credit of 2^32 (five-byte varint): does not fit a u32.",
        frame(5, 7, 0, 1, &[0x80, 0x80, 0x80, 0x80, 0x10]),
        Some(1 << 20),
        WireError::VarintOverflow { field: "credit" },
    ));
    v.push((
        "credit_with_trailing_bytes",
        "A credit varint followed by a stray byte.",
        frame(2, 7, 0, 1, &[0x01, 0x00]),
        Some(1 << 20),
        WireError::TrailingBytes {
            kind: wire::frame::Kind::Credit,
        },
    ));
    v.push((
        "too_many_metadata_pairs",
        "A call-open announcing 65 metadata pairs (the count is checked before any pair is read).",
        frame(2, 1, 0x11, 1, &[0x00, 65]),
        Some(1 << 20),
        WireError::TooManyMetadata { count: 65 },
    ));
    v.push((
        "goaway_reason_not_utf8",
        "A goaway whose reason is not UTF-8.",
        frame(6, 10, 0, 0, &[0, 0, 0, 0, 0, 0xff]),
        Some(1 << 20),
        WireError::InvalidUtf8 {
            field: "goaway reason",
        },
    ));
    let hello = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut out = BytesMut::new();
        Hello {
            version: handshake::VERSION,
            node_id: 7,
            max_frame: 1024,
            window: 1024,
            max_calls: 1,
            extensions: Vec::new(),
            data: Bytes::new(),
        }
        .encode(&mut out);
        let mut out = out.to_vec();
        f(&mut out);
        out
    };
    v.push((
        "hello_bad_magic",
        "A stream that does not start with PLXS.",
        hello(&|h| h[0] = b'H'),
        None,
        WireError::BadMagic(*b"HLXS"),
    ));
    v.push((
        "hello_of_version_1",
        "A version 1 hello: only its prefix is read (a listener answers Refusal VersionMismatch).",
        hello(&|h| h[5] = 1),
        None,
        WireError::UnsupportedVersion(1),
    ));
    v.push((
        "hello_data_too_long",
        "A data length of 65537, refused from the fixed part alone.",
        hello(&|h| h[38..42].copy_from_slice(&65_537u32.to_be_bytes())),
        None,
        WireError::HandshakeDataTooLarge {
            len: 65_537,
            max: 65_536,
        },
    ));
    v.push((
        "hello_extensions_too_long",
        "An extension area of 4097 bytes, refused from the fixed part alone.",
        hello(&|h| h[36..38].copy_from_slice(&4097u16.to_be_bytes())),
        None,
        WireError::HandshakeExtensionsTooLarge {
            len: 4097,
            max: 4096,
        },
    ));
    v.push((
        "hello_max_frame_too_small",
        "A max frame of 1023.",
        hello(&|h| h[24..28].copy_from_slice(&1023u32.to_be_bytes())),
        None,
        WireError::MaxFrameTooSmall {
            max_frame: 1023,
            min: 1024,
        },
    ));
    v.push((
        "hello_max_calls_zero",
        "A dialer that would serve no call at all.",
        hello(&|h| h[32..36].copy_from_slice(&0u32.to_be_bytes())),
        None,
        WireError::NoCallsAllowed,
    ));
    v.push((
        "hello_duplicate_extension",
        "Two extensions of type 1.",
        hello(&|h| {
            h[36..38].copy_from_slice(&8u16.to_be_bytes());
            h.extend_from_slice(&[0, 1, 0, 0, 0, 1, 0, 0]);
        }),
        None,
        WireError::DuplicateExtension(1),
    ));
    v.push((
        "hello_extension_truncated",
        "An extension claiming 5 value bytes with 2 left in the area.",
        hello(&|h| {
            h[36..38].copy_from_slice(&6u16.to_be_bytes());
            h.extend_from_slice(&[0, 1, 0, 5, 0xaa, 0xbb]);
        }),
        None,
        WireError::Truncated {
            field: "handshake extension value",
        },
    ));
    v
}

// ------------------------------------------------- key proofs (§3.6)

/// One key-proof exchange with every input fixed (the key, both node ids,
/// both nonces), so another implementation can check that it derives the
/// same key id, listener proof and dialer proof message from them.
struct KeyProof {
    name: &'static str,
    meaning: &'static str,
    key: Vec<u8>,
    dialer: u128,
    listener: u128,
    dialer_nonce: [u8; NONCE_LEN],
    listener_nonce: [u8; NONCE_LEN],
}

fn key_proofs() -> Vec<KeyProof> {
    let counting = |from: u8| -> [u8; NONCE_LEN] { std::array::from_fn(|i| from + i as u8) };
    vec![
        KeyProof {
            name: "key_proof",
            meaning: "A 32-byte key (00 01 … 1f, as SessionKey::from_hex reads \"000102…1f\"); dialer node 000102…0f, listener node 0f0e…00; dialer nonce 20 21 … 3f, listener nonce 40 41 … 5f.",
            key: (0..32).collect(),
            dialer: NODE,
            listener: 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100,
            dialer_nonce: counting(0x20),
            listener_nonce: counting(0x40),
        },
        KeyProof {
            name: "key_proof_short_key",
            meaning: "A key may be any length: the 12 bytes of \"lab-3 secret\" (SessionKey::new); dialer node 0xd1, listener node 0x11; nonces of all aa (dialer) and all bb (listener).",
            key: b"lab-3 secret".to_vec(),
            dialer: 0xd1,
            listener: 0x11,
            dialer_nonce: [0xaa; NONCE_LEN],
            listener_nonce: [0xbb; NONCE_LEN],
        },
    ]
}

/// HMAC-SHA256 of `parts` under `key`, computed from the spec's words
/// rather than through the runtime's key module, which this checks.
fn spec_hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl KeyProof {
    fn hello_key(&self) -> HelloKey {
        HelloKey {
            key_id: SessionKey::new(&self.key).id(),
            nonce: self.dialer_nonce,
        }
    }

    /// The listener's proof, by the spec's definition.
    fn listener_proof(&self) -> [u8; 32] {
        spec_hmac(
            &self.key,
            &[
                b"plexus v2 key proof listener",
                &self.dialer.to_be_bytes(),
                &self.listener.to_be_bytes(),
                &self.dialer_nonce,
                &self.listener_nonce,
            ],
        )
    }

    fn welcome_key(&self) -> WelcomeKey {
        WelcomeKey {
            key_id: SessionKey::new(&self.key).id(),
            nonce: self.listener_nonce,
            proof: self.listener_proof(),
        }
    }

    fn dialer_proof_message(&self) -> Bytes {
        self.welcome_key().dialer_proof(
            &SessionKey::new(&self.key),
            &self.hello_key(),
            self.dialer,
            self.listener,
        )
    }

    fn hello(&self) -> Message {
        Message::Hello(Hello {
            version: handshake::VERSION,
            node_id: self.dialer,
            max_frame: 16 << 20,
            window: 256 << 10,
            max_calls: 256,
            extensions: vec![self.hello_key().extension()],
            data: Bytes::new(),
        })
    }

    fn welcome(&self) -> Message {
        Message::Answer(Answer::Welcome(Welcome {
            version: handshake::VERSION,
            node_id: self.listener,
            max_frame: 16 << 20,
            window: 256 << 10,
            max_calls: 256,
            extensions: vec![self.welcome_key().extension()],
            data: Bytes::new(),
        }))
    }

    fn json(&self) -> Value {
        let message =
            |m: &Message| json!({"hex": hex(&encode_message(m)), "decoded": message_json(m)});
        json!({
            "name": self.name,
            "meaning": self.meaning,
            "key": hex(&self.key),
            "dialer_node_id": format!("{:032x}", self.dialer),
            "listener_node_id": format!("{:032x}", self.listener),
            "dialer_nonce": hex(&self.dialer_nonce),
            "listener_nonce": hex(&self.listener_nonce),
            "key_id": hex(&SessionKey::new(&self.key).id()),
            "listener_proof": hex(&self.listener_proof()),
            "dialer_proof_message": hex(&self.dialer_proof_message()),
            "hello": message(&self.hello()),
            "welcome": message(&self.welcome()),
        })
    }
}

// ----------------------------------------------------- meaning as JSON

fn frame_json(f: &Frame) -> Value {
    let hx = |b: &Bytes| Value::String(hex(b));
    match f {
        Frame::CallOpen(c) => json!({
            "kind": "call_open",
            "id": c.id,
            "end": c.end,
            "oneway": c.oneway,
            "op_index": c.op.index,
            "op_name": c.op.name,
            "deadline_us": c.deadline.map(|d| d.as_micros() as u64),
            "metadata": c.metadata.iter().map(|(k, v)| json!([k, hex(v)])).collect::<Vec<_>>(),
            "session": c.session,
            "body": hx(&c.body),
        }),
        Frame::Data { id, body } => json!({"kind": "data", "id": id, "body": hx(body)}),
        Frame::End { id } => json!({"kind": "end", "id": id}),
        Frame::Ack { id, body } => json!({"kind": "ack", "id": id, "body": hx(body)}),
        Frame::Reject {
            id,
            system,
            code,
            message,
            details,
        } => {
            json!({"kind": "reject", "id": id, "system": system, "code": code, "message": message, "details": hx(details)})
        }
        Frame::Cancel { id } => json!({"kind": "cancel", "id": id}),
        Frame::Credit { id, bytes } => json!({"kind": "credit", "id": id, "bytes": bytes}),
        Frame::Ping { payload } => json!({"kind": "ping", "value": payload}),
        Frame::Pong { payload } => json!({"kind": "pong", "value": payload}),
        Frame::GoAway {
            last_id,
            code,
            reason,
        } => json!({"kind": "goaway", "last_id": last_id, "code": code, "reason": reason}),
    }
}

fn extensions_json(e: &[Extension]) -> Value {
    e.iter()
        .map(|e| json!({"type": e.kind, "value": hex(&e.value)}))
        .collect()
}

fn message_json(m: &Message) -> Value {
    match m {
        Message::Hello(h) => json!({
            "message": "hello",
            "version": h.version,
            "node_id": format!("{:032x}", h.node_id),
            "max_frame": h.max_frame,
            "window": h.window,
            "max_calls": h.max_calls,
            "extensions": extensions_json(&h.extensions),
            "data": hex(&h.data),
        }),
        Message::Answer(Answer::Welcome(w)) => json!({
            "message": "welcome",
            "version": w.version,
            "node_id": format!("{:032x}", w.node_id),
            "max_frame": w.max_frame,
            "window": w.window,
            "max_calls": w.max_calls,
            "extensions": extensions_json(&w.extensions),
            "data": hex(&w.data),
        }),
        Message::Answer(Answer::Refusal(r)) => json!({
            "message": "refusal",
            "version": r.version,
            "code": r.code as u16,
            "reason": r.reason,
        }),
    }
}

/// The error's variant name: what the vectors file calls it.
fn error_name(e: &WireError) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn encode_frame(f: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    f.encode(&mut out);
    out.to_vec()
}

fn encode_message(m: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    match m {
        Message::Hello(h) => h.encode(&mut out),
        Message::Answer(a) => a.encode(&mut out),
    }
    out.to_vec()
}

fn document() -> Value {
    let frames: Vec<Value> = frames()
        .iter()
        .map(|(name, meaning, f)| {
            json!({"name": name, "meaning": meaning, "hex": hex(&encode_frame(f)), "frame": frame_json(f)})
        })
        .collect();
    let handshakes: Vec<Value> = handshakes()
        .iter()
        .map(|(name, meaning, m)| {
            json!({"name": name, "meaning": meaning, "hex": hex(&encode_message(m)), "decoded": message_json(m)})
        })
        .collect();
    let invalid: Vec<Value> = invalid()
        .iter()
        .map(|(name, meaning, bytes, max, err)| {
            let mut o = Map::new();
            o.insert("name".into(), json!(name));
            o.insert("meaning".into(), json!(meaning));
            o.insert("hex".into(), json!(hex(bytes)));
            o.insert(
                "input".into(),
                json!(if max.is_some() { "frame" } else { "hello" }),
            );
            if let Some(m) = max {
                o.insert("max_frame".into(), json!(m));
            }
            o.insert("error".into(), json!(error_name(err)));
            o.insert("message".into(), json!(err.to_string()));
            Value::Object(o)
        })
        .collect();
    let key_proofs: Vec<Value> = key_proofs().iter().map(KeyProof::json).collect();
    json!({
        "protocol": "plexus",
        "version": handshake::VERSION,
        "spec": "docs/PROTOCOL.md",
        "about": "Each frame and handshake vector gives the exact bytes (hex) and what they mean; decoding the bytes must give the meaning and encoding the meaning must give the bytes. Each invalid vector must be refused with the named error (the Rust variant name; the message is this implementation's wording). Each key proof fixes a session key, both node ids and both nonces of one handshake (PROTOCOL.md 3.6): an implementation must derive the same key id, listener proof (HMAC-SHA256 over the spec's input) and dialer proof message, and its hello and welcome carry the key extensions. Byte strings in meanings are hex too.",
        "frames": frames,
        "handshakes": handshakes,
        "invalid": invalid,
        "key_proofs": key_proofs,
    })
}

/// `v` with every object's keys in sorted order, so the file reads the same
/// whichever way `serde_json` was built (its `preserve_order` feature may be
/// on in a workspace build).
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[test]
fn the_vectors_file_is_what_the_vectors_say() {
    let expected = sorted(document());
    if std::env::var_os("PLEXUS_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors"))
            .expect("dir");
        let text = serde_json::to_string_pretty(&expected).expect("json") + "\n";
        std::fs::write(PATH, text).expect("write vectors");
    }
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("docs/vectors/v2.json exists"))
            .expect("the vectors file is JSON");
    assert!(
        on_disk == expected,
        "docs/vectors/v2.json is out of date: regenerate it with PLEXUS_WRITE_VECTORS=1 and review the change"
    );
}

#[test]
fn every_vector_decodes_to_its_meaning_and_encodes_to_its_bytes() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("vectors")).expect("json");
    let by_name =
        |section: &str| -> Vec<Value> { doc[section].as_array().expect("section").clone() };
    let frames_on_disk = by_name("frames");
    for ((name, _, frame), v) in frames().iter().zip(&frames_on_disk) {
        assert_eq!(v["name"], *name);
        let bytes = unhex(v["hex"].as_str().expect("hex"));
        assert_eq!(encode_frame(frame), bytes, "{name}: encoding");
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = wire::frame::decode(&mut buf, u32::MAX)
            .expect("valid")
            .expect("whole");
        assert!(buf.is_empty(), "{name}: nothing left over");
        assert_eq!(&decoded, frame, "{name}: decoding");
        assert_eq!(frame_json(&decoded), v["frame"], "{name}: meaning");
    }
    assert_eq!(frames().len(), frames_on_disk.len());
    let handshakes_on_disk = by_name("handshakes");
    for ((name, _, m), v) in handshakes().iter().zip(&handshakes_on_disk) {
        let bytes = unhex(v["hex"].as_str().expect("hex"));
        assert_eq!(encode_message(m), bytes, "{name}: encoding");
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = match m {
            Message::Hello(_) => {
                Message::Hello(Hello::decode(&mut buf).expect("valid").expect("whole"))
            }
            Message::Answer(_) => {
                Message::Answer(Answer::decode(&mut buf).expect("valid").expect("whole"))
            }
        };
        assert!(buf.is_empty(), "{name}: nothing left over");
        assert_eq!(message_json(&decoded), v["decoded"], "{name}: meaning");
    }
    let invalid_on_disk = by_name("invalid");
    for ((name, _, _, max, err), v) in invalid().iter().zip(&invalid_on_disk) {
        let bytes = unhex(v["hex"].as_str().expect("hex"));
        let mut buf = BytesMut::from(&bytes[..]);
        let got = match max {
            Some(max) => wire::frame::decode(&mut buf, *max).map(|_| ()),
            None => Hello::decode(&mut buf).map(|_| ()),
        };
        assert_eq!(got.as_ref().err(), Some(err), "{name}");
        assert_eq!(v["error"], error_name(err), "{name}");
    }
}

#[test]
fn key_proof_vectors_are_what_the_runtime_derives_and_accepts() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("vectors")).expect("json");
    let on_disk = doc["key_proofs"].as_array().expect("key_proofs section");
    assert_eq!(on_disk.len(), key_proofs().len());
    for (p, v) in key_proofs().iter().zip(on_disk) {
        let name = p.name;
        assert_eq!(v["name"], name);
        let key = SessionKey::new(&p.key);
        // The key id by the spec's definition is the runtime's.
        let spec_id = spec_hmac(&p.key, &[b"plexus key id"]);
        assert_eq!(key.id()[..], spec_id[..8], "{name}: key id");
        assert_eq!(
            unhex(v["key_id"].as_str().expect("hex")),
            key.id(),
            "{name}"
        );
        // The runtime's dialer accepts the spec's listener proof and answers
        // with the message on disk; its listener accepts that message.
        let (hello, welcome) = (p.hello_key(), p.welcome_key());
        assert!(
            welcome.verify(&key, &hello, p.dialer, p.listener),
            "{name}: listener proof"
        );
        assert!(
            !welcome.verify(&key, &hello, p.listener, p.dialer),
            "{name}: the proof is bound to who dialed whom"
        );
        let message = unhex(v["dialer_proof_message"].as_str().expect("hex"));
        assert_eq!(p.dialer_proof_message()[..], message[..], "{name}");
        let mut src = BytesMut::from(&message[..]);
        assert_eq!(
            welcome.check_dialer_proof(&mut src, &key, &hello, p.dialer, p.listener),
            Ok(Some(true)),
            "{name}: dialer proof"
        );
        assert!(src.is_empty());
        let spec_dialer_tag = spec_hmac(
            &p.key,
            &[
                b"plexus v2 key proof dialer",
                &p.dialer.to_be_bytes(),
                &p.listener.to_be_bytes(),
                &p.dialer_nonce,
                &p.listener_nonce,
            ],
        );
        assert_eq!(message[7..], spec_dialer_tag[..], "{name}: dialer tag");
        // The hello and welcome on disk carry the extensions the runtime finds.
        let mut raw = BytesMut::from(&unhex(v["hello"]["hex"].as_str().expect("hex"))[..]);
        let decoded = Hello::decode(&mut raw).expect("valid").expect("whole");
        assert_eq!(
            HelloKey::find(&decoded.extensions),
            Ok(Some(hello)),
            "{name}"
        );
        let mut raw = BytesMut::from(&unhex(v["welcome"]["hex"].as_str().expect("hex"))[..]);
        let Answer::Welcome(decoded) = Answer::decode(&mut raw).expect("valid").expect("whole")
        else {
            panic!("{name}: the welcome vector is not a welcome");
        };
        assert_eq!(
            WelcomeKey::find(&decoded.extensions),
            Ok(Some(welcome)),
            "{name}"
        );
    }
}
