//! Fuzzes the connection core (`runtime/src/connection/core`) with
//! sequences, not single frames: the peer's frames (call opens good and bad,
//! stream data, ends, acks, rejects, cancels, credit, pings, goaways) mixed
//! with this side's own events (handlers ending, stream messages sent and
//! read, calls opened and given up, sessions, a graceful close, the end of
//! the stream) and time passing, on a connection with small limits.
//!
//! The core's model shell (`plexus::connection_fuzzing::Harness`, built
//! only under `--cfg fuzzing`) does with each answer what the runtime's
//! shells do and checks after every step: no panic; the memory budget never
//! underflows and stays within its limit plus one frame; the served count
//! matches the handlers running and stays within max calls; no stream holds
//! more than its window plus one frame, and no credit is returned for bytes
//! never received; nothing is admitted after this side's goaway or the
//! connection's end, and no call is opened after either side's goaway. When
//! the sequence ends, every admitted call must have been answered, cancelled
//! by the peer or ended with the connection, every call this side opened
//! must have ended exactly once, and the budget must hold nothing but the
//! interned operation names.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plexus::connection_fuzzing::{Config, Harness};

#[derive(Arbitrary, Debug)]
enum Step {
    PeerOpen {
        op: u8,
        id: u16,
        shape: u8,
        body: u16,
        session: u8,
    },
    PeerFrame {
        kind: u8,
        id: u16,
        n: u32,
    },
    HandlerDone(u16),
    Send {
        stream: u16,
        len: u16,
    },
    Read(u16),
    Open {
        kind: u8,
        timeout_ms: u16,
    },
    GiveUp(u16),
    Session {
        id: u8,
        open: bool,
    },
    Advance(u16),
    Close,
    EndOfStream,
}

#[derive(Arbitrary, Debug)]
struct Sequence {
    limits: [u8; 5],
    steps: Vec<Step>,
}

fuzz_target!(|input: Sequence| {
    let mut h = Harness::new(Config::from_bytes(input.limits));
    for step in input.steps {
        match step {
            Step::PeerOpen {
                op,
                id,
                shape,
                body,
                session,
            } => h.peer_open(op, id, shape, body, session),
            Step::PeerFrame { kind, id, n } => h.peer_frame(kind, id, n),
            Step::HandlerDone(pick) => h.handler_done(pick),
            Step::Send { stream, len } => h.send(stream, len),
            Step::Read(pick) => h.read(pick),
            Step::Open { kind, timeout_ms } => h.open(kind, timeout_ms),
            Step::GiveUp(pick) => h.give_up(pick),
            Step::Session { id, open } => h.session(id, open),
            Step::Advance(ms) => h.advance(ms),
            Step::Close => h.close(),
            Step::EndOfStream => h.end_of_stream(),
        }
        h.check();
    }
    h.finish();
});
