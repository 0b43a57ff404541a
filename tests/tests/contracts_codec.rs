//! Codecs through the public API: round trips, garbage, and reach (a
//! MessagePack payload converts to JSON and back without a schema), plus
//! the measurement behind the default codec (`--ignored`, see docs/CODEC.md).

use std::time::{Duration, Instant};

use plexus::codec::{Codec, CodecError, Json, MsgPack, Prost};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Post {
    id: u64,
    user: String,
    text: String,
    tags: Vec<String>,
    score: f64,
    attachment: Vec<u8>,
    reply_to: Option<u64>,
}

fn post() -> Post {
    Post {
        id: 1_234_567,
        user: "ann@lab-3".into(),
        text: "the centrifuge in room 4 is free from 14:00".into(),
        tags: vec!["lab".into(), "booking".into(), "urgent".into()],
        score: 0.875,
        attachment: (0..16).collect(),
        reply_to: Some(99),
    }
}

/// A 64-byte payload, the size of the echo benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Echo {
    body: Vec<u8>,
}

#[test]
fn serde_codecs_round_trip() {
    let p = post();
    let bytes = <MsgPack as Codec<Post>>::encode(&p).expect("encodes");
    assert_eq!(<MsgPack as Codec<Post>>::decode(bytes).expect("decodes"), p);
    let bytes = <Json as Codec<Post>>::encode(&p).expect("encodes");
    assert_eq!(<Json as Codec<Post>>::decode(bytes).expect("decodes"), p);
}

#[test]
fn prost_codec_round_trips() {
    let set = prost_types::FileDescriptorSet {
        file: vec![prost_types::FileDescriptorProto {
            name: Some("a.proto".into()),
            ..Default::default()
        }],
    };
    let bytes = <Prost as Codec<prost_types::FileDescriptorSet>>::encode(&set).expect("encodes");
    assert_eq!(
        <Prost as Codec<prost_types::FileDescriptorSet>>::decode(bytes).expect("decodes"),
        set
    );
}

#[test]
fn garbage_is_a_decode_error_never_a_panic() {
    let inputs: [&[u8]; 5] = [
        b"",
        b"\xc1",
        b"\xff\xff\xff",
        b"{\"id\":",
        &[0x0a, 0xff, 0x01],
    ];
    for input in inputs {
        let bytes = plexus::Bytes::copy_from_slice(input);
        let msgpack = <MsgPack as Codec<Post>>::decode(bytes.clone());
        assert!(
            matches!(
                msgpack,
                Err(CodecError::Decode {
                    format: "msgpack",
                    ..
                })
            ),
            "{msgpack:?}"
        );
        assert!(<Json as Codec<Post>>::decode(bytes.clone()).is_err());
        assert!(
            <Prost as Codec<prost_types::FileDescriptorSet>>::decode(bytes).is_err()
                || input.is_empty()
        );
    }
}

#[test]
fn msgpack_payloads_convert_to_json_and_back_without_a_schema() {
    // What a command-line tool does: bytes → generic value → JSON text, and back.
    let bytes = <MsgPack as Codec<Post>>::encode(&post()).expect("encodes");
    let value: serde_json::Value = rmp_serde::from_slice(&bytes).expect("self-describing");
    assert_eq!(value["user"], "ann@lab-3");
    assert_eq!(value["tags"][2], "urgent");
    let typed_in_json = serde_json::json!({
        "id": 7, "user": "cli", "text": "hi", "tags": [], "score": 1.5,
        "attachment": [1, 2], "reply_to": null
    });
    let from_cli = rmp_serde::to_vec_named(&typed_in_json).expect("encodes");
    let decoded = <MsgPack as Codec<Post>>::decode(from_cli.into()).expect("a Rust peer reads it");
    assert_eq!(decoded.user, "cli");
    assert_eq!(decoded.attachment, [1, 2]);
}

/// Encode + decode time per message and encoded size, for one format.
fn measure<T: Clone>(
    name: &str,
    value: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> T,
) -> (String, usize, Duration, Duration) {
    const ROUNDS: u32 = 200_000;
    let bytes = encode(value);
    let start = Instant::now();
    for _ in 0..ROUNDS {
        std::hint::black_box(encode(std::hint::black_box(value)));
    }
    let enc = start.elapsed() / ROUNDS;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        std::hint::black_box(decode(std::hint::black_box(&bytes)));
    }
    let dec = start.elapsed() / ROUNDS;
    (name.to_owned(), bytes.len(), enc, dec)
}

fn table<T>(label: &str, value: &T)
where
    T: Clone + Serialize + serde::de::DeserializeOwned,
{
    let config = bincode::config::standard();
    let rows = [
        measure(
            "msgpack (maps, default)",
            value,
            |v| rmp_serde::to_vec_named(v).expect("enc"),
            |b| rmp_serde::from_slice(b).expect("dec"),
        ),
        measure(
            "msgpack (arrays)",
            value,
            |v| rmp_serde::to_vec(v).expect("enc"),
            |b| rmp_serde::from_slice(b).expect("dec"),
        ),
        measure(
            "json",
            value,
            |v| serde_json::to_vec(v).expect("enc"),
            |b| serde_json::from_slice(b).expect("dec"),
        ),
        measure(
            "postcard",
            value,
            |v| postcard::to_stdvec(v).expect("enc"),
            |b| postcard::from_bytes(b).expect("dec"),
        ),
        measure(
            "bincode 2",
            value,
            |v| bincode::serde::encode_to_vec(v, config).expect("enc"),
            |b| bincode::serde::decode_from_slice(b, config).expect("dec").0,
        ),
    ];
    println!("\n{label}\n| format | bytes | encode | decode |\n|---|---|---|---|");
    for (name, size, enc, dec) in rows {
        println!(
            "| {name} | {size} | {} ns | {} ns |",
            enc.as_nanos(),
            dec.as_nanos()
        );
    }
}

/// Prints the figures in docs/CODEC.md:
/// `cargo test --release -p plexus-tests --test contracts_codec -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check; run in release"]
fn measure_serde_formats() {
    table("Post (7 fields, strings, list, bytes, option)", &post());
    table("Echo (64-byte body)", &Echo { body: vec![7; 64] });
}

/// The byte table in docs/CONTRACTS.md ("Arguments"), through the codec a
/// `#[plexus::service]` uses by default.
#[test]
fn msgpack_arguments_have_the_documented_bytes() {
    #[derive(Serialize, Deserialize)]
    struct Seq {
        seq: u64,
        who: String,
    }
    #[derive(Serialize, Deserialize)]
    enum E {
        A,
        B(u8),
        C { x: u8 },
    }
    fn bytes<T: Serialize + serde::de::DeserializeOwned>(v: &T) -> Vec<u8> {
        <MsgPack as Codec<T>>::encode(v).expect("encodes").to_vec()
    }
    assert_eq!(bytes(&()), [0xc0]);
    assert_eq!(bytes(&7u32), [0x07]);
    assert_eq!(bytes(&(7u32, "a".to_owned())), [0x92, 0x07, 0xa1, 0x61]);
    assert_eq!(
        bytes(&Seq {
            seq: 1,
            who: "x".into()
        }),
        [0x82, 0xa3, b's', b'e', b'q', 0x01, 0xa3, b'w', b'h', b'o', 0xa1, b'x']
    );
    assert_eq!(bytes(&Option::<u8>::None), [0xc0]);
    assert_eq!(bytes(&E::A), [0xa1, b'A']);
    assert_eq!(bytes(&E::B(1)), [0x81, 0xa1, b'B', 0x01]);
    assert_eq!(
        bytes(&E::C { x: 2 }),
        [0x81, 0xa1, b'C', 0x81, 0xa1, b'x', 0x02]
    );
    assert_eq!(bytes(&vec![1u8, 2]), [0x92, 0x01, 0x02]);
    assert_eq!(
        bytes(&plexus::Bytes::from_static(&[1, 2])),
        [0xc4, 0x02, 0x01, 0x02]
    );
    // And a `()` request is nil, not an empty body.
    assert!(<MsgPack as Codec<()>>::decode(plexus::Bytes::new()).is_err());
    assert!(<MsgPack as Codec<()>>::decode(plexus::Bytes::from_static(&[0xc0])).is_ok());
}
