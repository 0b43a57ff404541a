//! Property tests of the wire codec, through its public API only.
//!
//! They pin down what `docs/PROTOCOL.md` promises a peer: every frame and
//! handshake message decodes to exactly what was encoded, however the bytes
//! are split across reads; a frame above the receiver's limit is refused from
//! its header alone; and no input, however hostile, makes a decoder panic.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use plexus::wire::frame::{
    decode, CallOpen, Frame, OpRef, HEADER_LEN, MAX_METADATA_PAIRS, MAX_OP_NAME,
};
use plexus::wire::handshake::{
    self, Answer, Extension, Hello, Refusal, RefusalCode, Welcome, MAX_HANDSHAKE_DATA, MIN_FRAME,
};
use plexus::wire::{varint, WireError};
use proptest::collection::vec;
use proptest::prelude::*;

/// Large enough that size never matters in round trips.
const NO_LIMIT: u32 = u32::MAX;

// ---------------------------------------------------------------- strategies

/// A UTF-8 string of at most `max_chars` characters (any plane, so multi-byte
/// sequences are exercised).
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max_chars).prop_map(String::from_iter)
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// Sizes of the variable parts of generated frames.
#[derive(Clone, Copy)]
struct Sizes {
    body: usize,
    text: usize,
    pairs: usize,
}

/// Small frames, for tests that re-decode every split of a buffer.
const SMALL: Sizes = Sizes {
    body: 24,
    text: 8,
    pairs: 3,
};

/// Frames up to the receive limits on names and metadata.
const LARGE: Sizes = Sizes {
    body: 512,
    // 256 characters of at most 4 bytes each stay within MAX_OP_NAME.
    text: MAX_OP_NAME / 4,
    pairs: MAX_METADATA_PAIRS as usize,
};

fn op_ref(s: Sizes) -> impl Strategy<Value = OpRef> {
    (any::<u32>(), proptest::option::of(text(s.text)))
        .prop_map(|(index, name)| OpRef { index, name })
}

fn call_open(s: Sizes) -> impl Strategy<Value = CallOpen> {
    (
        any::<u32>(),
        op_ref(s),
        // Deadlines travel in whole microseconds.
        proptest::option::of(any::<u64>().prop_map(Duration::from_micros)),
        vec((text(s.text), bytes(s.body)), 0..=s.pairs),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        any::<bool>(),
        bytes(s.body),
    )
        .prop_map(
            |(id, op, deadline, metadata, session, end, oneway, body)| CallOpen {
                id,
                op,
                deadline,
                metadata,
                session,
                end,
                oneway,
                body,
            },
        )
}

fn frame(s: Sizes) -> impl Strategy<Value = Frame> {
    prop_oneof![
        call_open(s).prop_map(Frame::CallOpen),
        (any::<u32>(), bytes(s.body)).prop_map(|(id, body)| Frame::Data { id, body }),
        any::<u32>().prop_map(|id| Frame::End { id }),
        (any::<u32>(), bytes(s.body)).prop_map(|(id, body)| Frame::Ack { id, body }),
        (
            any::<u32>(),
            any::<bool>(),
            any::<u32>(),
            text(s.text),
            bytes(s.body)
        )
            .prop_map(|(id, system, code, message, details)| Frame::Reject {
                id,
                system,
                code,
                message,
                details,
            }),
        any::<u32>().prop_map(|id| Frame::Cancel { id }),
        (any::<u32>(), any::<u32>()).prop_map(|(id, bytes)| Frame::Credit { id, bytes }),
        any::<u64>().prop_map(|payload| Frame::Ping { payload }),
        any::<u64>().prop_map(|payload| Frame::Pong { payload }),
        (any::<u32>(), any::<u32>(), text(s.text)).prop_map(|(last_id, code, reason)| {
            Frame::GoAway {
                last_id,
                code,
                reason,
            }
        }),
    ]
}

fn announced_max_frame() -> impl Strategy<Value = u32> {
    MIN_FRAME..=u32::MAX
}

fn extensions() -> impl Strategy<Value = Vec<Extension>> {
    // Distinct types, each value within its u16 length and the whole area
    // within the handshake's limit.
    proptest::collection::btree_map(any::<u16>(), bytes(64), 0..8).prop_map(|m| {
        m.into_iter()
            .map(|(kind, value)| Extension { kind, value })
            .collect()
    })
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u128>(),
        announced_max_frame(),
        any::<u32>(),
        1..=u32::MAX,
        extensions(),
        bytes(256),
    )
        .prop_map(
            |(node_id, max_frame, window, max_calls, extensions, data)| Hello {
                version: handshake::VERSION,
                node_id,
                max_frame,
                window,
                max_calls,
                extensions,
                data,
            },
        )
}

fn refusal_code() -> impl Strategy<Value = RefusalCode> {
    prop_oneof![
        Just(RefusalCode::VersionMismatch),
        Just(RefusalCode::SelfConnect),
        Just(RefusalCode::Rejected),
        Just(RefusalCode::TooManyConnections),
        Just(RefusalCode::Malformed),
        Just(RefusalCode::ShuttingDown),
        Just(RefusalCode::Other),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        (
            any::<u128>(),
            announced_max_frame(),
            any::<u32>(),
            1..=u32::MAX,
            extensions(),
            bytes(256)
        )
            .prop_map(
                |(node_id, max_frame, window, max_calls, extensions, data)| {
                    Answer::Welcome(Welcome {
                        version: handshake::VERSION,
                        node_id,
                        max_frame,
                        window,
                        max_calls,
                        extensions,
                        data,
                    })
                }
            ),
        (any::<u16>(), refusal_code(), text(64)).prop_map(|(version, code, reason)| {
            Answer::Refusal(Refusal {
                version,
                code,
                reason,
            })
        }),
    ]
}

// ------------------------------------------------------------------- helpers

fn encode_all(frames: &[Frame]) -> (Vec<u8>, Vec<usize>) {
    let mut buf = BytesMut::new();
    let mut ends = Vec::with_capacity(frames.len());
    for f in frames {
        f.encode(&mut buf);
        ends.push(buf.len());
    }
    (buf.to_vec(), ends)
}

/// Decodes every whole frame in `buf`, leaving a partial one in place.
fn drain(buf: &mut BytesMut, max: u32, out: &mut Vec<Frame>) -> Result<(), TestCaseError> {
    loop {
        match decode(buf, max) {
            Ok(Some(f)) => out.push(f),
            Ok(None) => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("valid bytes refused: {e}"))),
        }
    }
}

/// Whether `buf` holds at least one whole frame according to its header.
fn holds_whole_frame(buf: &[u8]) -> bool {
    buf.len() >= HEADER_LEN && {
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        buf.len() >= HEADER_LEN + len
    }
}

/// Runs `decode` until it stops, checking that every step makes progress and
/// that "need more" is only ever said of an incomplete frame.
fn decode_until_stuck(buf: &mut BytesMut, max: u32) -> Result<(), TestCaseError> {
    loop {
        let before = buf.len();
        match decode(buf, max) {
            Ok(Some(f)) => {
                prop_assert!(buf.len() < before, "decoded {f:?} without consuming bytes");
                // Whatever decodes must re-encode to something that decodes the same.
                let mut again = BytesMut::new();
                f.encode(&mut again);
                prop_assert_eq!(decode(&mut again, NO_LIMIT), Ok(Some(f)));
                prop_assert!(again.is_empty());
            }
            Ok(None) => {
                prop_assert!(
                    !holds_whole_frame(buf),
                    "needs more with a whole frame buffered"
                );
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
    }
}

fn proptest_config() -> ProptestConfig {
    // Keeps the suite quick on a small CI machine; raise locally to dig deeper.
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

// -------------------------------------------------------------------- frames

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn every_frame_kind_decodes_to_what_was_encoded(f in frame(LARGE)) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        prop_assert_eq!(buf.len(), HEADER_LEN + len, "length field covers the payload only");
        prop_assert_eq!(buf[4], f.kind() as u8);
        prop_assert_eq!(decode(&mut buf, NO_LIMIT), Ok(Some(f)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_exactly_at_the_limit_is_accepted(f in frame(LARGE)) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        let len = (buf.len() - HEADER_LEN) as u32;
        prop_assert_eq!(decode(&mut buf, len), Ok(Some(f)));
    }

    #[test]
    fn concatenated_frames_survive_every_split_point(frames in vec(frame(SMALL), 1..5)) {
        let (bytes, _) = encode_all(&frames);
        for split in 0..=bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut got = Vec::new();
            drain(&mut buf, NO_LIMIT, &mut got)?;
            buf.extend_from_slice(&bytes[split..]);
            drain(&mut buf, NO_LIMIT, &mut got)?;
            prop_assert_eq!(&got, &frames, "split at byte {}", split);
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn byte_at_a_time_needs_more_until_each_frame_completes(frames in vec(frame(SMALL), 1..5)) {
        let (bytes, ends) = encode_all(&frames);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for (fed, b) in bytes.iter().enumerate().map(|(i, b)| (i + 1, b)) {
            buf.extend_from_slice(&[*b]);
            match decode(&mut buf, NO_LIMIT) {
                Ok(Some(f)) => {
                    prop_assert!(ends.contains(&fed), "frame completed early, after {} bytes", fed);
                    got.push(f);
                    prop_assert!(buf.is_empty());
                }
                Ok(None) => prop_assert!(!ends.contains(&fed), "frame ending at {} not decoded", fed),
                Err(e) => return Err(TestCaseError::fail(format!("refused after {fed} bytes: {e}"))),
            }
        }
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header_alone(
        max in 0u32..=1 << 20,
        over in 1u32..=1 << 24,
        kind in any::<u8>(),
        flags in any::<u8>(),
        id in any::<u32>(),
    ) {
        let len = max.saturating_add(over);
        prop_assume!(len > max);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&[kind, flags]);
        buf.extend_from_slice(&id.to_be_bytes());
        prop_assert_eq!(decode(&mut buf, max), Err(WireError::FrameTooLarge { len, max }));
    }

    #[test]
    fn an_encoded_frame_over_the_receivers_limit_is_refused_before_its_payload(
        f in frame(LARGE),
    ) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        let len = (buf.len() - HEADER_LEN) as u32;
        prop_assume!(len > 0);
        let mut header = BytesMut::from(&buf[..HEADER_LEN]);
        prop_assert_eq!(
            decode(&mut header, len - 1),
            Err(WireError::FrameTooLarge { len, max: len - 1 })
        );
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(
        input in vec(any::<u8>(), 0..512),
        max in prop_oneof![0u32..64, 64u32..4096, Just(NO_LIMIT)],
    ) {
        let mut buf = BytesMut::from(&input[..]);
        decode_until_stuck(&mut buf, max)?;
    }

    #[test]
    fn decode_never_panics_on_corrupted_frames(
        frames in vec(frame(SMALL), 1..4),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        // Starting from valid frames reaches the payload parsers far more
        // often than uniformly random bytes do.
        let (mut bytes, _) = encode_all(&frames);
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        let mut buf = BytesMut::from(&bytes[..]);
        decode_until_stuck(&mut buf, 4096)?;
    }
}

// ----------------------------------------------------------------- handshake

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn hello_decodes_to_what_was_encoded(h in hello(), trailing in bytes(32)) {
        let mut buf = BytesMut::new();
        h.encode(&mut buf);
        prop_assert_eq!(handshake::peek_version(&buf), Ok(Some(h.version)));
        buf.extend_from_slice(&trailing);
        prop_assert_eq!(Hello::decode(&mut buf), Ok(Some(h)));
        // Bytes after the hello are the first frames; they stay buffered.
        prop_assert_eq!(&buf[..], &trailing[..]);
    }

    #[test]
    fn hello_needs_more_until_complete(h in hello()) {
        let mut whole = BytesMut::new();
        h.encode(&mut whole);
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            prop_assert_eq!(Hello::decode(&mut buf), Ok(None), "cut at {}", cut);
            prop_assert_eq!(buf.len(), cut, "a partial hello is left in place");
            let peeked = handshake::peek_version(&whole[..cut]);
            prop_assert_eq!(peeked, Ok((cut >= 6).then_some(h.version)));
        }
    }

    #[test]
    fn answer_decodes_to_what_was_encoded(a in answer(), trailing in bytes(32)) {
        let mut whole = BytesMut::new();
        a.encode(&mut whole);
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            prop_assert_eq!(Answer::decode(&mut buf), Ok(None), "cut at {}", cut);
        }
        whole.extend_from_slice(&trailing);
        prop_assert_eq!(Answer::decode(&mut whole), Ok(Some(a)));
        prop_assert_eq!(&whole[..], &trailing[..]);
    }

    #[test]
    fn handshake_decoders_never_panic_on_arbitrary_bytes(
        prefix in prop_oneof![Just(Vec::new()), Just(handshake::MAGIC.to_vec())],
        rest in vec(any::<u8>(), 0..128),
    ) {
        let input: Vec<u8> = prefix.into_iter().chain(rest).collect();
        let _ = handshake::peek_version(&input);
        let mut buf = BytesMut::from(&input[..]);
        if let Ok(Some(_)) = Hello::decode(&mut buf) {
            prop_assert!(buf.len() < input.len());
        }
        let mut buf = BytesMut::from(&input[..]);
        if let Ok(Some(_)) = Answer::decode(&mut buf) {
            prop_assert!(buf.len() < input.len());
        }
    }

    #[test]
    fn a_foreign_magic_is_refused_as_soon_as_the_prefix_is_in(
        magic in any::<[u8; 4]>(),
        rest in vec(any::<u8>(), 2..64),
    ) {
        prop_assume!(magic != handshake::MAGIC);
        let input: Vec<u8> = magic.iter().copied().chain(rest).collect();
        prop_assert_eq!(handshake::peek_version(&input), Err(WireError::BadMagic(magic)));
        prop_assert_eq!(
            Hello::decode(&mut BytesMut::from(&input[..])),
            Err(WireError::BadMagic(magic))
        );
        prop_assert_eq!(
            Answer::decode(&mut BytesMut::from(&input[..])),
            Err(WireError::BadMagic(magic))
        );
    }
}

// -------------------------------------------------------------------- varint

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn varint_round_trips(v in any::<u64>(), trailing in vec(any::<u8>(), 0..4)) {
        let mut buf = Vec::new();
        varint::put(&mut buf, v);
        prop_assert_eq!(buf.len(), varint::len(v));
        prop_assert!(buf.len() <= varint::MAX_LEN);
        buf.extend_from_slice(&trailing);
        let mut src = &buf[..];
        prop_assert_eq!(varint::get(&mut src, "v"), Ok(v));
        prop_assert_eq!(src, &trailing[..]);
        let mut src = &buf[..];
        let narrow = varint::get_u32(&mut src, "v");
        match u32::try_from(v) {
            Ok(n) => prop_assert_eq!(narrow, Ok(n)),
            Err(_) => prop_assert_eq!(narrow, Err(WireError::VarintOverflow { field: "v" })),
        }
    }

    #[test]
    fn a_cut_varint_is_truncated(v in any::<u64>()) {
        let mut buf = Vec::new();
        varint::put(&mut buf, v);
        for cut in 0..buf.len() {
            let mut src = &buf[..cut];
            prop_assert_eq!(varint::get(&mut src, "v"), Err(WireError::Truncated { field: "v" }));
        }
    }

    #[test]
    fn varint_reader_never_panics(input in vec(any::<u8>(), 0..16)) {
        let mut src = &input[..];
        if varint::get(&mut src, "v").is_ok() {
            prop_assert!(input.len() - src.len() <= varint::MAX_LEN);
        }
    }
}

// ------------------------------------------------------------ receive limits

fn call_open_frame(op_name: String, metadata: Vec<(String, Bytes)>) -> BytesMut {
    let mut buf = BytesMut::new();
    Frame::CallOpen(CallOpen {
        id: 1,
        op: OpRef {
            index: 0,
            name: Some(op_name),
        },
        deadline: None,
        metadata,
        session: None,
        end: true,
        oneway: false,
        body: Bytes::new(),
    })
    .encode(&mut buf);
    buf
}

#[test]
fn operation_names_are_limited_to_1024_bytes() {
    let mut at_limit = call_open_frame("o".repeat(MAX_OP_NAME), Vec::new());
    assert!(matches!(
        decode(&mut at_limit, NO_LIMIT),
        Ok(Some(Frame::CallOpen(_)))
    ));
    let mut over = call_open_frame("o".repeat(MAX_OP_NAME + 1), Vec::new());
    assert!(matches!(
        decode(&mut over, NO_LIMIT),
        Err(WireError::TooLong {
            field: "operation name",
            len: 1025,
            max: MAX_OP_NAME,
        })
    ));
}

#[test]
fn metadata_is_limited_to_64_pairs() {
    let pairs = |n: u64| -> Vec<(String, Bytes)> {
        (0..n)
            .map(|i| (format!("k{i}"), Bytes::from(i.to_string())))
            .collect()
    };
    let mut at_limit = call_open_frame("a.B/c".into(), pairs(MAX_METADATA_PAIRS));
    assert!(matches!(
        decode(&mut at_limit, NO_LIMIT),
        Ok(Some(Frame::CallOpen(ref c))) if c.metadata.len() == 64
    ));
    let mut over = call_open_frame("a.B/c".into(), pairs(MAX_METADATA_PAIRS + 1));
    assert_eq!(
        decode(&mut over, NO_LIMIT),
        Err(WireError::TooManyMetadata { count: 65 })
    );
}

#[test]
fn handshake_data_is_limited_to_64_kib() {
    let hello = |len: u32| Hello {
        version: handshake::VERSION,
        node_id: 7,
        max_frame: MIN_FRAME,
        window: 1024,
        max_calls: 256,
        extensions: Vec::new(),
        data: Bytes::from(vec![0u8; len as usize]),
    };
    let mut at_limit = BytesMut::new();
    hello(MAX_HANDSHAKE_DATA).encode(&mut at_limit);
    assert!(matches!(Hello::decode(&mut at_limit), Ok(Some(_))));

    // Refused from the fixed part alone, before the data arrives.
    let mut over = BytesMut::new();
    hello(MAX_HANDSHAKE_DATA + 1).encode(&mut over);
    over.truncate(42);
    assert_eq!(
        Hello::decode(&mut over),
        Err(WireError::HandshakeDataTooLarge {
            len: MAX_HANDSHAKE_DATA + 1,
            max: MAX_HANDSHAKE_DATA
        })
    );
}

#[test]
fn a_max_frame_below_1024_is_refused() {
    let mut buf = BytesMut::new();
    Hello {
        version: handshake::VERSION,
        node_id: 7,
        max_frame: MIN_FRAME - 1,
        window: 1024,
        max_calls: 256,
        extensions: Vec::new(),
        data: Bytes::new(),
    }
    .encode(&mut buf);
    assert_eq!(
        Hello::decode(&mut buf),
        Err(WireError::MaxFrameTooSmall {
            max_frame: MIN_FRAME - 1,
            min: MIN_FRAME
        })
    );
}

// ------------------------------------------------- docs/PROTOCOL.md, section 14

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn encoded(f: Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    f.encode(&mut buf);
    buf.to_vec()
}

#[test]
fn protocol_document_examples_are_byte_exact() {
    let mut hello = BytesMut::new();
    Hello {
        version: 2,
        node_id: 0x0001_0203_0405_0607_0809_0a0b_0c0d_0e0f,
        max_frame: 16 * 1024 * 1024,
        window: 256 * 1024,
        max_calls: 256,
        extensions: Vec::new(),
        data: Bytes::new(),
    }
    .encode(&mut hello);
    assert_eq!(
        hello.to_vec(),
        hex("50 4c 58 53 00 02 00 00 \
             00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f \
             01 00 00 00 00 04 00 00 00 00 01 00 00 00 00 00 00 00")
    );

    let open = |id, name: Option<&str>, body: &'static [u8]| {
        Frame::CallOpen(CallOpen {
            id,
            op: OpRef {
                index: 0,
                name: name.map(String::from),
            },
            deadline: Some(Duration::from_secs(30)),
            metadata: Vec::new(),
            session: None,
            end: true,
            oneway: false,
            body: Bytes::from_static(body),
        })
    };
    assert_eq!(
        encoded(open(1, Some("demo.Echo/echo"), b"hi")),
        hex("00 00 00 16 01 0d 00 00 00 01 00 \
             0e 64 65 6d 6f 2e 45 63 68 6f 2f 65 63 68 6f \
             80 87 a7 0e 68 69")
    );
    assert_eq!(
        encoded(open(3, None, b"yo")),
        hex("00 00 00 07 01 09 00 00 00 03 00 80 87 a7 0e 79 6f")
    );
    assert_eq!(
        encoded(Frame::Ack {
            id: 1,
            body: Bytes::from_static(b"hi"),
        }),
        hex("00 00 00 02 04 00 00 00 00 01 68 69")
    );
    assert_eq!(
        encoded(Frame::Reject {
            id: 5,
            system: true,
            code: 1,
            message: "no handler for `demo.Echo/nope`".into(),
            details: Bytes::new(),
        }),
        hex("00 00 00 21 05 01 00 00 00 05 01 \
             1f 6e 6f 20 68 61 6e 64 6c 65 72 20 66 6f 72 20 \
             60 64 65 6d 6f 2e 45 63 68 6f 2f 6e 6f 70 65 60")
    );
}
