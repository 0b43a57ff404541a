//! Fuzzes the frame decoder the way a connection's reader drives it: bytes
//! arrive in pieces of arbitrary size, `decode` runs after each piece until
//! it needs more, and a small frame limit is enforced.
//!
//! Beyond "never panics", every decoded frame must consume bytes and survive
//! a re-encode: it decodes again to an equal frame.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use plexus::wire::frame::{decode, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    // A small limit so the size check and the payload parsers both get hit;
    // the low bits of the control byte pick it, the high bits the read size.
    let max_frame = u32::from(control & 0x0f) * 16;
    let piece = usize::from(control >> 4) + 1;

    let mut buf = BytesMut::new();
    for chunk in input.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match decode(&mut buf, max_frame) {
                Ok(Some(frame)) => {
                    assert!(
                        buf.len() < before,
                        "{frame:?} decoded without consuming input"
                    );
                    let mut again = BytesMut::new();
                    frame.encode(&mut again);
                    let len = again.len() - HEADER_LEN;
                    assert_eq!(
                        decode(&mut again, u32::MAX),
                        Ok(Some(frame)),
                        "re-encoded frame of {len} payload bytes decodes differently"
                    );
                    assert!(again.is_empty(), "re-encoded frame left trailing bytes");
                }
                Ok(None) => break,
                // The reader closes the connection here; so does the fuzzer.
                Err(_) => return,
            }
        }
    }
});
