//! Fuzzes the handshake drivers (`wire::driver`) with arbitrary byte streams
//! cut into arbitrary pieces, arriving at arbitrary times, for every mix of
//! keyed and keyless sides and endpoint verdicts.
//!
//! Besides "no panic, no hang", it checks the rules no input may break:
//! a refusal the listener sends always decodes as a refusal; whatever a side
//! accepts respects the protocol's limits; nothing is accepted past its
//! deadline; and a keyed side never accepts a peer, since proving the key
//! needs the other side's fresh nonce, which no input can know.

#![no_main]

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use plexus::wire::driver::{
    Admission, Agreed, DialerHello, DialerStep, ListenerHandshake, ListenerStep, LocalSide,
};
use plexus::wire::handshake::{Answer, MIN_FRAME};
use plexus::wire::key::SessionKey;

const HELLO_LIMIT: Duration = Duration::from_secs(4);
const LIMIT: Duration = Duration::from_secs(10);

fn side(keyed: bool) -> LocalSide {
    LocalSide {
        node_id: 0x11,
        max_frame: 1 << 20,
        window: 1 << 16,
        max_calls: 8,
        key: keyed.then(|| SessionKey::new(b"fuzz group key")),
    }
}

fn check_agreed(agreed: &Agreed) {
    assert!(agreed.peer_max_frame >= MIN_FRAME);
    assert!(agreed.peer_max_calls >= 1);
}

/// Pieces of the input: each piece is `len (1 byte) | advance ms (1 byte) | bytes`.
fn pieces(mut data: &[u8]) -> Vec<(Duration, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(data[0] % 64) + 1;
        let advance = Duration::from_millis(u64::from(data[1]) * 50);
        data = &data[2..];
        let take = len.min(data.len());
        out.push((advance, &data[..take]));
        data = &data[take..];
    }
    out
}

fn listener(flags: u8, input: &[u8]) {
    let keyed = flags & 1 != 0;
    let admission = Admission {
        at_limit: (flags & 2 != 0).then_some(4),
        shutting_down: flags & 4 != 0,
        allowed: if flags & 8 != 0 { Err("not listed".into()) } else { Ok(()) },
    };
    let t0 = Instant::now();
    let mut now = t0;
    let mut l = ListenerHandshake::new(side(keyed), HELLO_LIMIT, LIMIT, t0);
    let mut hello_in = false;
    for (advance, piece) in pieces(input) {
        now += advance;
        let mut step = l.receive(piece, now);
        if matches!(step, ListenerStep::Admit) {
            hello_in = true;
            let admission = admission.clone();
            step = l.admit(admission, |h| {
                if flags & 16 != 0 {
                    Err("hook says no".into())
                } else {
                    Ok(h.data.clone())
                }
            });
        }
        match step {
            ListenerStep::Read | ListenerStep::Admit => {}
            ListenerStep::SendAndRead(welcome) => {
                assert!(keyed, "a keyless listener waits for no proof");
                let decoded = Answer::decode(&mut BytesMut::from(&welcome[..]));
                assert!(matches!(decoded, Ok(Some(Answer::Welcome(_)))));
            }
            ListenerStep::Accepted { agreed, .. } => {
                assert!(!keyed, "a keyed listener accepted a proof no input can forge");
                assert!(hello_in);
                assert!(now < t0 + HELLO_LIMIT, "accepted a hello past its deadline");
                check_agreed(&agreed);
                return;
            }
            ListenerStep::Failed { answer, .. } => {
                if let Some(refusal) = answer {
                    let decoded = Answer::decode(&mut BytesMut::from(&refusal[..]));
                    assert!(matches!(decoded, Ok(Some(Answer::Refusal(_)))));
                }
                // Finished: whatever comes after changes nothing.
                assert!(matches!(l.receive(b"PLXS", now), ListenerStep::Read));
                return;
            }
        }
    }
    let _ = l.end_of_stream();
}

fn dialer(flags: u8, input: &[u8]) {
    let keyed = flags & 1 != 0;
    let mut local = side(keyed);
    local.node_id = 0xd1;
    let Ok(hello) = DialerHello::new(local, Bytes::from_static(b"hi")) else {
        panic!("small data is always accepted");
    };
    let t0 = Instant::now();
    let mut now = t0;
    let (mut d, _hello) = hello.start(LIMIT, t0);
    for (advance, piece) in pieces(input) {
        now += advance;
        match d.receive(piece, now) {
            DialerStep::Read => {}
            DialerStep::Accepted { agreed, proof } => {
                assert!(!keyed, "a keyed dialer accepted a listener proof no input can forge");
                assert!(proof.is_none());
                assert!(now < t0 + LIMIT, "accepted an answer past the deadline");
                check_agreed(&agreed);
                return;
            }
            DialerStep::Failed(_) => {
                assert!(matches!(d.receive(b"PLXS", now), DialerStep::Read));
                return;
            }
        }
    }
    let _ = d.end_of_stream();
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if flags & 0x80 == 0 {
        listener(flags, rest);
    } else {
        dialer(flags, rest);
    }
});
