//! Fuzzes the handshake decoders on arbitrary bytes: the listener's
//! `peek_version` and `Hello::decode`, and the dialer's `Answer::decode`.
//!
//! Whatever decodes must re-encode to bytes that decode to the same value.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use plexus::wire::handshake::{peek_version, Answer, Hello};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(version)) = peek_version(data) {
        assert_eq!(version, u16::from_be_bytes([data[4], data[5]]));
    }

    let mut buf = BytesMut::from(data);
    if let Ok(Some(hello)) = Hello::decode(&mut buf) {
        assert!(
            buf.len() < data.len(),
            "hello decoded without consuming input"
        );
        let mut again = BytesMut::new();
        hello.encode(&mut again);
        assert_eq!(Hello::decode(&mut again), Ok(Some(hello)));
        assert!(again.is_empty());
    }

    let mut buf = BytesMut::from(data);
    if let Ok(Some(answer)) = Answer::decode(&mut buf) {
        assert!(
            buf.len() < data.len(),
            "answer decoded without consuming input"
        );
        // A refusal reason is read leniently (invalid UTF-8 becomes U+FFFD),
        // which can lengthen it past what the u16 length field re-encodes.
        let reencodable = match &answer {
            Answer::Refusal(r) => r.reason.len() <= usize::from(u16::MAX),
            Answer::Welcome(_) => true,
        };
        if reencodable {
            let mut again = BytesMut::new();
            answer.encode(&mut again);
            assert_eq!(Answer::decode(&mut again), Ok(Some(answer)));
            assert!(again.is_empty());
        }
    }
});
