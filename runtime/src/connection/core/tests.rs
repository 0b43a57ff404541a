//! The core's rules, frame by frame, on explicit instants: no socket, no
//! task, no runtime. Each test names the rule of PROTOCOL.md it pins down.
//! Here the core is the listener's (the peer dials: its calls have odd ids),
//! operations resolve to their bare [`CallKind`] by name, and sessions are
//! their ids.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::*;
use crate::wire::frame::OpRef;

const WINDOW: u32 = 1000;
const MAX_FRAME: u32 = 100;

type TestCore = Core<CallKind, u32>;

struct Fixture {
    core: TestCore,
    budget: Arc<Budget>,
    served: Arc<ServedCalls>,
}

fn listener(max_calls: u32) -> Fixture {
    let budget = Arc::new(Budget::new(1 << 20));
    let served = Arc::new(ServedCalls::new(max_calls, budget.clone()));
    let core = Core::new(Side::new(false), budget.clone(), served.clone());
    Fixture {
        core,
        budget,
        served,
    }
}

/// Operations named after their kind; `missing` has no handler.
fn resolve(name: &str) -> (Arc<str>, Option<CallKind>) {
    let kind = match name.rsplit('/').next() {
        Some("unary") => Some(CallKind::Unary),
        Some("oneway") => Some(CallKind::OneWay),
        Some("server") => Some(CallKind::ServerStream),
        Some("client") => Some(CallKind::ClientStream),
        Some("bidi") => Some(CallKind::Bidi),
        _ => None,
    };
    (Arc::from(name), kind)
}

fn call_open(id: u32, index: u32, name: Option<&str>, end: bool, oneway: bool) -> CallOpen {
    CallOpen {
        id,
        op: OpRef {
            index,
            name: name.map(str::to_owned),
        },
        deadline: None,
        metadata: Vec::new(),
        session: None,
        end,
        oneway,
        body: Bytes::from_static(b"request"),
    }
}

fn open(id: u32, index: u32, name: Option<&str>) -> Frame {
    Frame::CallOpen(call_open(id, index, name, true, false))
}

impl Fixture {
    fn feed(&mut self, frame: Frame) -> Action<CallKind, u32> {
        self.core.on_frame(frame, resolve)
    }

    /// Defines operation `name` as `index` with a call that breaks the id
    /// rule (this side's parity), so nothing is admitted.
    fn define(&mut self, index: u32, name: &str) {
        let frame = call_open(2, index, Some(name), true, false);
        assert!(matches!(
            self.feed(Frame::CallOpen(frame)),
            Action::Violation(_)
        ));
    }
}

fn refusal(action: Action<CallKind, u32>) -> (u32, SystemCode, String) {
    match action {
        Action::Refuse(r) => (r.id, r.code, r.message.into_owned()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn violation(action: Action<CallKind, u32>) -> String {
    match action {
        Action::Violation(m) => m,
        other => panic!("expected a violation, got {other:?}"),
    }
}

fn admitted(action: Action<CallKind, u32>) -> Admitted<CallKind, u32> {
    match action {
        Action::Serve(call) => call,
        other => panic!("expected the call served, got {other:?}"),
    }
}

/// An entry for a stream the peer sends on, and where its messages go.
fn stream_entry(budget: &Arc<Budget>) -> (Entry, mpsc::UnboundedReceiver<InItem>, Arc<RecvWindow>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let window = Arc::new(RecvWindow::new(WINDOW, MAX_FRAME, budget.clone()));
    let entry = Entry {
        inbound: Some(InboundTx::new(tx, window.clone())),
        ..Entry::default()
    };
    (entry, rx, window)
}

// §6: call ids.

#[test]
fn a_call_with_id_zero_or_this_sides_parity_is_a_violation() {
    let mut f = listener(8);
    f.define(0, "t.S/unary");
    for id in [0, 2, 4] {
        let m = violation(f.feed(open(id, 0, None)));
        assert!(m.contains("belongs to this side"), "{m}");
    }
    assert_eq!(f.served.count(), 0);
}

#[test]
fn a_one_way_message_with_an_id_is_a_violation() {
    let mut f = listener(8);
    let frame = Frame::CallOpen(call_open(3, 0, Some("t.S/oneway"), true, true));
    assert!(violation(f.feed(frame)).contains("carries call id 3, not 0"));
}

#[test]
fn an_id_still_open_is_a_violation_even_for_a_call_that_would_be_refused() {
    let mut f = listener(8);
    let call = admitted(f.feed(open(1, 0, Some("t.S/unary"))));
    f.core.attach(call.open.id, Entry::default()).expect("open");
    assert!(violation(f.feed(open(1, 0, None))).contains("call id 1 opened twice"));
    // Even once draining, where a fresh id is refused, not a violation.
    f.core.drain();
    assert!(violation(f.feed(open(1, 0, None))).contains("opened twice"));
    let (id, code, _) = refusal(f.feed(open(3, 0, None)));
    assert_eq!((id, code), (3, SystemCode::GoingAway));
}

#[test]
fn an_id_may_be_opened_again_once_its_call_ended() {
    let mut f = listener(8);
    admitted(f.feed(open(1, 0, Some("t.S/unary"))));
    // Answered on the spot: no entry, the id is free again.
    f.served.end();
    admitted(f.feed(open(1, 0, None)));
}

// §5: interning.

#[test]
fn operation_definitions_are_charged_to_the_budget_for_life() {
    let mut f = listener(8);
    admitted(f.feed(open(1, 0, Some("t.S/unary"))));
    assert_eq!(f.budget.held(), "t.S/unary".len() + rules::OP_OVERHEAD);
    f.served.end();
    admitted(f.feed(open(3, 0, None)));
    assert_eq!(
        f.budget.held(),
        "t.S/unary".len() + rules::OP_OVERHEAD,
        "a use charges nothing more"
    );
}

#[test]
fn an_undefined_or_out_of_order_operation_index_is_a_violation() {
    let mut f = listener(8);
    assert!(violation(f.feed(open(1, 0, None))).contains("undefined operation index 0"));
    assert!(violation(f.feed(open(1, 1, Some("t.S/unary")))).contains("expected 0"));
}

#[test]
fn a_definition_stands_even_when_its_call_is_refused() {
    let mut f = listener(8);
    f.define(0, "t.S/unary");
    admitted(f.feed(open(1, 0, None)));
}

// §7.7: the checks before serving, in order.

#[test]
fn a_draining_side_refuses_new_calls_with_going_away() {
    let mut f = listener(8);
    assert_eq!(f.core.drain(), Some(0));
    let (_, code, message) = refusal(f.feed(open(1, 0, Some("t.S/unary"))));
    assert_eq!(code, SystemCode::GoingAway);
    assert_eq!(message, "connection is closing; no new calls");
    assert_eq!(f.served.count(), 0);
}

#[test]
fn going_away_comes_before_no_such_operation() {
    let mut f = listener(8);
    f.core.drain();
    let (_, code, _) = refusal(f.feed(open(1, 0, Some("t.S/missing"))));
    assert_eq!(code, SystemCode::GoingAway);
}

#[test]
fn an_unknown_operation_is_refused_with_no_such_operation() {
    let mut f = listener(8);
    let (id, code, message) = refusal(f.feed(open(1, 0, Some("t.S/missing"))));
    assert_eq!((id, code), (1, SystemCode::NoSuchOperation));
    assert_eq!(message, "no handler for `t.S/missing`");
}

#[test]
fn a_call_of_the_wrong_shape_is_refused_with_protocol_and_only_that_call_fails() {
    let mut f = listener(8);
    // A client-stream operation called with a single request...
    let (_, code, message) = refusal(f.feed(open(1, 0, Some("t.S/client"))));
    assert_eq!(code, SystemCode::Protocol);
    assert_eq!(
        message,
        "`t.S/client` is a client_stream operation but was called as a single request"
    );
    // ...and a unary one as a request stream.
    let stream = Frame::CallOpen(call_open(3, 1, Some("t.S/unary"), false, false));
    let (_, code, message) = refusal(f.feed(stream));
    assert_eq!(code, SystemCode::Protocol);
    assert!(message.ends_with("called as a request stream"), "{message}");
    // The connection goes on.
    admitted(f.feed(open(5, 1, None)));
}

#[test]
fn a_call_in_a_session_that_is_not_open_is_refused_with_session_closed() {
    let mut f = listener(8);
    let mut call = call_open(1, 0, Some("t.S/unary"), true, false);
    call.session = Some(9);
    let (_, code, message) = refusal(f.feed(Frame::CallOpen(call.clone())));
    assert_eq!(
        (code, message.as_str()),
        (SystemCode::SessionClosed, "session 9")
    );
    f.core.add_session(9, 9).expect("open");
    call.op = OpRef {
        index: 0,
        name: None,
    };
    call.id = 3;
    let served = admitted(f.feed(Frame::CallOpen(call)));
    assert_eq!(served.session, Some(9), "the call runs in its session");
}

#[test]
fn calls_beyond_max_calls_are_refused_until_one_ends() {
    let mut f = listener(2);
    admitted(f.feed(open(1, 0, Some("t.S/unary"))));
    admitted(f.feed(open(3, 0, None)));
    let (id, code, message) = refusal(f.feed(open(5, 0, None)));
    assert_eq!((id, code), (5, SystemCode::ResourceExhausted));
    assert!(
        message.starts_with("2 calls already served at once"),
        "{message}"
    );
    assert_eq!(f.served.count(), 2, "a refused call is not counted");
    f.served.end();
    admitted(f.feed(open(7, 0, None)));
}

#[test]
fn the_limit_comes_after_every_other_check() {
    let mut f = listener(1);
    admitted(f.feed(open(1, 0, Some("t.S/unary"))));
    let (_, code, _) = refusal(f.feed(open(3, 1, Some("t.S/missing"))));
    assert_eq!(code, SystemCode::NoSuchOperation);
}

#[test]
fn admitted_calls_raise_the_goaway_last_id_and_refused_ones_do_not() {
    let mut f = listener(8);
    admitted(f.feed(open(5, 0, Some("t.S/unary"))));
    admitted(f.feed(open(3, 0, None)));
    refusal(f.feed(open(9, 1, Some("t.S/missing"))));
    assert_eq!(f.core.last_admitted(), 5);
    assert_eq!(
        f.core.drain(),
        Some(5),
        "the goaway names the highest admitted"
    );
    refusal(f.feed(open(11, 0, None)));
    assert_eq!(
        f.core.last_admitted(),
        5,
        "nothing admitted after the switch"
    );
}

// §7.2 and §7.8: one-way messages.

#[test]
fn one_way_messages_are_served_or_dropped_never_answered() {
    let mut f = listener(8);
    let oneway = |index, name: Option<&str>| Frame::CallOpen(call_open(0, index, name, true, true));
    admitted(f.feed(oneway(0, Some("t.S/oneway"))));
    assert_eq!(
        f.served.count(),
        1,
        "a one-way handler counts while it runs"
    );
    let dropped = |a| match a {
        Action::Drop { why, .. } => why,
        other => panic!("expected a drop, got {other:?}"),
    };
    assert_eq!(
        dropped(f.feed(oneway(1, Some("t.S/missing")))),
        Dropped::NoSuchOperation
    );
    assert_eq!(
        dropped(f.feed(oneway(2, Some("t.S/unary")))),
        Dropped::NotOneWay("unary")
    );
    let mut in_session = call_open(0, 0, None, true, true);
    in_session.session = Some(4);
    assert_eq!(
        dropped(f.feed(Frame::CallOpen(in_session))),
        Dropped::SessionClosed(4)
    );
    f.core.drain();
    assert_eq!(dropped(f.feed(oneway(0, None))), Dropped::Closing);
    assert_eq!(f.served.count(), 1, "drops count nothing");
}

#[test]
fn a_one_way_message_at_the_call_limit_is_held_then_defined_once() {
    let mut f = listener(1);
    admitted(f.feed(open(1, 0, Some("t.S/unary"))));
    let held = match f.feed(Frame::CallOpen(call_open(
        0,
        1,
        Some("t.S/oneway"),
        true,
        true,
    ))) {
        Action::Hold(frame) => frame,
        other => panic!("expected the reader held back, got {other:?}"),
    };
    let charged = f.budget.held();
    // Fed again once a served call ended: defined now, and only now.
    f.served.end();
    admitted(f.feed(held));
    assert_eq!(
        f.budget.held(),
        charged + "t.S/oneway".len() + rules::OP_OVERHEAD
    );
    // A call (not one-way) at the limit is refused rather than held.
    let (_, code, _) = refusal(f.feed(open(3, 0, None)));
    assert_eq!(code, SystemCode::ResourceExhausted);
}

// §4.4, §4.5, §9: stream data and flow control.

#[test]
fn stream_data_is_delivered_and_held_against_the_budget_until_credited() {
    let mut f = listener(8);
    let stream = Frame::CallOpen(call_open(1, 0, Some("t.S/client"), false, false));
    admitted(f.feed(stream));
    let (entry, mut rx, window) = stream_entry(&f.budget);
    f.core.attach(1, entry).expect("open");
    let before = f.budget.held();
    assert!(matches!(
        f.feed(Frame::Data {
            id: 1,
            body: Bytes::from(vec![7; 60])
        }),
        Action::Nothing
    ));
    assert!(matches!(rx.try_recv(), Ok(InItem::Data(b)) if b.len() == 60));
    assert_eq!(f.budget.held(), before + 60);
    window.release(60);
    assert_eq!(f.budget.held(), before);
    f.feed(Frame::End { id: 1 });
    assert!(matches!(rx.try_recv(), Ok(InItem::End)));
}

#[test]
fn data_after_the_end_of_a_stream_is_a_violation_and_a_second_end_is_ignored() {
    let mut f = listener(8);
    let (entry, mut rx, _window) = stream_entry(&f.budget);
    f.core.attach(1, entry).expect("open");
    f.feed(Frame::End { id: 1 });
    f.feed(Frame::End { id: 1 });
    assert!(matches!(rx.try_recv(), Ok(InItem::End)));
    assert!(rx.try_recv().is_err(), "the end is delivered once");
    let data = Frame::Data {
        id: 1,
        body: Bytes::from_static(b"late"),
    };
    assert_eq!(violation(f.feed(data)), "data on stream 1 after its end");
}

#[test]
fn data_beyond_the_window_and_one_frame_is_a_violation() {
    let mut f = listener(8);
    let (entry, _rx, _window) = stream_entry(&f.budget);
    f.core.attach(1, entry).expect("open");
    let data = |n: usize| Frame::Data {
        id: 1,
        body: Bytes::from(vec![0; n]),
    };
    for _ in 0..11 {
        assert!(matches!(f.feed(data(100)), Action::Nothing));
    }
    assert_eq!(
        violation(f.feed(data(1))),
        "stream 1 sent beyond its flow-control window"
    );
}

#[test]
fn data_on_a_call_without_a_stream_is_a_violation_and_on_an_ended_one_is_ignored() {
    let mut f = listener(8);
    f.core.attach(1, Entry::default()).expect("open");
    let data = |id| Frame::Data {
        id,
        body: Bytes::from_static(b"x"),
    };
    assert_eq!(
        violation(f.feed(data(1))),
        "data on call 1, which takes no stream"
    );
    assert!(matches!(f.feed(data(77)), Action::Nothing));
    assert!(matches!(f.feed(Frame::End { id: 77 }), Action::Nothing));
}

#[test]
fn data_nobody_reads_any_more_is_dropped_not_held() {
    let mut f = listener(8);
    let (entry, rx, window) = stream_entry(&f.budget);
    f.core.attach(1, entry).expect("open");
    drop(rx);
    f.feed(Frame::Data {
        id: 1,
        body: Bytes::from(vec![0; 50]),
    });
    assert_eq!(window.outstanding(), 0);
    assert_eq!(f.budget.held(), 0);
}

#[test]
fn credit_reaches_the_sender_and_credit_for_an_ended_call_is_ignored() {
    let mut f = listener(8);
    let credit = Arc::new(SendCredit::new(100));
    assert_eq!(credit.try_take(100), Ok(true));
    let entry = Entry {
        credit: Some(credit.clone()),
        ..Entry::default()
    };
    f.core.attach(1, entry).expect("open");
    f.feed(Frame::Credit { id: 1, bytes: 50 });
    assert_eq!(credit.available(), 50);
    assert!(matches!(
        f.feed(Frame::Credit { id: 99, bytes: 50 }),
        Action::Nothing
    ));
    // On a call that sends no stream, credit pays for nothing.
    f.core.attach(3, Entry::default()).expect("open");
    assert!(matches!(
        f.feed(Frame::Credit { id: 3, bytes: 50 }),
        Action::Nothing
    ));
}

// §4.6–§4.8: the end of a call.

fn local_call(f: &mut Fixture, id: u32) -> super::reply::ReplyRx {
    let (tx, rx) = super::reply::channel();
    let entry = Entry {
        reply: Some(tx),
        ..Entry::default()
    };
    f.core.open_local(id, entry).expect("opens");
    rx
}

#[test]
fn an_ack_ends_this_sides_call_with_its_reply_and_a_late_one_is_ignored() {
    let mut f = listener(8);
    let mut rx = local_call(&mut f, 2);
    match f.feed(Frame::Ack {
        id: 2,
        body: Bytes::from_static(b"reply"),
    }) {
        Action::Finish(entry, outcome) => entry.finish(outcome),
        other => panic!("expected the call finished, got {other:?}"),
    }
    assert!(matches!(rx.try_recv(), Ok(Ok(b)) if b == "reply"));
    assert!(matches!(
        f.feed(Frame::Ack {
            id: 2,
            body: Bytes::new()
        }),
        Action::Nothing
    ));
    assert_eq!(f.core.calls_in_flight(), 0);
}

#[test]
fn an_ack_or_reject_for_a_call_of_the_peers_is_a_violation() {
    let mut f = listener(8);
    let ack = Frame::Ack {
        id: 1,
        body: Bytes::new(),
    };
    assert!(violation(f.feed(ack)).contains("ack for call 1, which this side did not open"));
    let reject = Frame::Reject {
        id: 3,
        system: true,
        code: 1,
        message: String::new(),
        details: Bytes::new(),
    };
    assert!(violation(f.feed(reject)).contains("reject for call 3"));
}

#[test]
fn a_reject_carries_its_code_message_and_details() {
    let mut f = listener(8);
    let mut rx = local_call(&mut f, 2);
    let frame = Frame::Reject {
        id: 2,
        system: false,
        code: 42,
        message: "no".into(),
        details: Bytes::from_static(b"why"),
    };
    match f.feed(frame) {
        Action::Finish(entry, outcome) => entry.finish(outcome),
        other => panic!("expected the call finished, got {other:?}"),
    }
    match rx.try_recv() {
        Ok(Err(Failure::Rejected(r))) => {
            assert_eq!((r.code(), r.message()), (42, "no"));
            assert_eq!(&r.details()[..], b"why");
        }
        other => panic!("expected the rejection, got {other:?}"),
    }
    let mut rx = local_call(&mut f, 4);
    let system = Frame::Reject {
        id: 4,
        system: true,
        code: SystemCode::ResourceExhausted as u32,
        message: "full".into(),
        details: Bytes::new(),
    };
    if let Action::Finish(entry, outcome) = f.feed(system) {
        entry.finish(outcome);
    }
    assert!(matches!(
        rx.try_recv(),
        Ok(Err(Failure::System {
            code: SystemCode::ResourceExhausted,
            ..
        }))
    ));
}

#[test]
fn a_cancel_stops_the_served_call_and_sends_nothing_back() {
    let mut f = listener(8);
    admitted(f.feed(open(1, 0, Some("t.S/unary"))));
    let token = tokio_util::sync::CancellationToken::new();
    let entry = Entry {
        cancel: Some(token.clone()),
        ..Entry::default()
    };
    f.core.attach(1, entry).expect("open");
    match f.feed(Frame::Cancel { id: 1 }) {
        Action::Finish(entry, outcome) => {
            assert!(matches!(
                &outcome,
                Err(Failure::System {
                    code: SystemCode::Cancelled,
                    ..
                })
            ));
            entry.finish(outcome);
        }
        other => panic!("expected the call finished, got {other:?}"),
    }
    assert!(token.is_cancelled());
    assert!(
        f.core.take(1).is_none(),
        "the handler's end finds nothing to answer"
    );
    assert!(matches!(f.feed(Frame::Cancel { id: 1 }), Action::Nothing));
}

#[test]
fn a_cancelled_handler_that_ends_late_leaves_a_new_call_on_its_id_alone() {
    // Found by the random sequences: the peer cancels call 1 and opens id 1
    // again while the first handler is still stopping. The first handler's
    // end must not take (and silence) the second call's entry.
    let mut f = listener(8);
    admitted(f.feed(Frame::CallOpen(call_open(
        1,
        0,
        Some("t.S/client"),
        false,
        false,
    ))));
    let first = f.core.attach(1, Entry::default()).expect("open");
    assert!(matches!(
        f.feed(Frame::Cancel { id: 1 }),
        Action::Finish(..)
    ));
    admitted(f.feed(Frame::CallOpen(call_open(1, 0, None, false, false))));
    let second = f.core.attach(1, Entry::default()).expect("open");
    assert!(
        f.core.finish_served(first).is_none(),
        "the first call ended with its cancel"
    );
    assert!(
        f.core.finish_served(second).is_some(),
        "the second is answered"
    );
}

// §4.10: ping.

#[test]
fn a_ping_is_answered_with_its_value_and_a_pong_needs_nothing() {
    let mut f = listener(8);
    assert!(matches!(
        f.feed(Frame::Ping { payload: 77 }),
        Action::Pong(77)
    ));
    assert!(matches!(
        f.feed(Frame::Pong { payload: 1 }),
        Action::Nothing
    ));
}

// §11: goaway and closing.

#[test]
fn after_the_peers_goaway_this_side_opens_no_call_but_serves_the_peers() {
    let mut f = listener(8);
    let goaway = Frame::GoAway {
        last_id: 0,
        code: 0,
        reason: "closing".into(),
    };
    assert!(matches!(f.feed(goaway), Action::Nothing));
    assert!(!f.core.opens_calls());
    assert!(f.core.open_local(2, Entry::default()).is_err());
    admitted(f.feed(open(1, 0, Some("t.S/unary"))));
    assert_eq!(f.core.end_of_stream(), CloseReason::Remote);
}

#[test]
fn an_error_goaway_is_reported_and_decides_the_close_reason() {
    let mut f = listener(8);
    let goaway = Frame::GoAway {
        last_id: 0,
        code: SystemCode::ResourceExhausted as u32,
        reason: "cut off: too slow".into(),
    };
    match f.feed(goaway) {
        Action::PeerGoingAway { code, reason } => {
            assert_eq!(code, 10);
            assert_eq!(reason, "cut off: too slow");
        }
        other => panic!("expected the goaway reported, got {other:?}"),
    }
    assert_eq!(
        f.core.end_of_stream(),
        CloseReason::CutOff("cut off: too slow".into())
    );
}

#[test]
fn the_end_fails_calls_above_the_peers_last_id_as_never_taken() {
    let mut f = listener(8);
    let _a = local_call(&mut f, 2);
    let _b = local_call(&mut f, 6);
    f.core.attach(1, Entry::default()).expect("a served call");
    f.core.add_session(4, 4).expect("open");
    f.feed(Frame::GoAway {
        last_id: 4,
        code: 0,
        reason: String::new(),
    });
    let down = f.core.shut();
    let mut never_taken: Vec<bool> = down.calls.iter().map(|(_, n)| *n).collect();
    never_taken.sort();
    assert_eq!(
        never_taken,
        [false, false, true],
        "only call 6 was never taken"
    );
    assert_eq!(down.sessions, [4]);
    assert_eq!(f.core.calls_in_flight(), 0);
}

#[test]
fn nothing_is_opened_attached_or_admitted_after_the_end() {
    let mut f = listener(8);
    f.core.shut();
    assert!(f.core.open_local(2, Entry::default()).is_err());
    assert!(f.core.attach(1, Entry::default()).is_err());
    assert!(f.core.add_session(3, 3).is_err());
    let (_, code, _) = refusal(f.feed(open(1, 0, Some("t.S/unary"))));
    assert_eq!(code, SystemCode::GoingAway);
    assert_eq!(f.core.drain(), None, "no goaway after the end");
}

#[test]
fn a_graceful_close_waits_for_calls_in_flight_and_served() {
    let mut f = listener(8);
    assert!(f.core.idle());
    admitted(f.feed(open(1, 0, Some("t.S/unary"))));
    assert!(
        !f.core.idle(),
        "a call answered on the spot counts until its answer"
    );
    f.served.end();
    let _rx = local_call(&mut f, 2);
    assert!(!f.core.idle());
    f.core.take(2);
    assert!(f.core.idle());
}

// §7.6: this side's deadlines.

#[test]
fn deadlines_expire_on_explicit_time_and_the_next_one_is_returned() {
    let mut f = listener(8);
    let t0 = Instant::now();
    for (id, after) in [(2, 10), (4, 30), (6, 20)] {
        let entry = Entry {
            deadline: Some(t0 + Duration::from_millis(after)),
            ..Entry::default()
        };
        f.core.open_local(id, entry).expect("opens");
    }
    f.core.open_local(8, Entry::default()).expect("no deadline");
    let mut expired = Vec::new();
    assert_eq!(
        f.core.expire(t0, &mut expired),
        Some(t0 + Duration::from_millis(10))
    );
    assert!(expired.is_empty());
    let next = f.core.expire(t0 + Duration::from_millis(20), &mut expired);
    let mut ids: Vec<u32> = expired.iter().map(|(id, _)| *id).collect();
    ids.sort();
    assert_eq!(ids, [2, 6]);
    assert_eq!(next, Some(t0 + Duration::from_millis(30)));
    expired.clear();
    assert_eq!(
        f.core.expire(t0 + Duration::from_secs(1), &mut expired),
        None
    );
    assert_eq!(
        f.core.calls_in_flight(),
        1,
        "the call without a deadline stays"
    );
}

// §12: sessions.

#[test]
fn the_peer_opens_sessions_of_its_own_parity_that_are_not_open() {
    let mut f = listener(8);
    assert_eq!(f.core.may_open_session(1), Ok(()));
    assert_eq!(
        f.core.may_open_session(2),
        Err(SessionRefusal::Unavailable(2))
    );
    f.core.add_session(1, 1).expect("open");
    assert_eq!(
        f.core.may_open_session(1),
        Err(SessionRefusal::Unavailable(1))
    );
    assert_eq!(f.core.remove_session(1), Some(1));
    assert_eq!(f.core.may_open_session(1), Ok(()));
}

#[test]
fn the_peer_may_have_at_most_max_sessions_and_this_sides_do_not_count() {
    let mut f = listener(8);
    for i in 0..MAX_SESSIONS as u32 {
        f.core.add_session(2 * i + 1, i).expect("open");
    }
    f.core.add_session(2, 0).expect("this side's own");
    assert_eq!(
        f.core.may_open_session(2 * MAX_SESSIONS as u32 + 1),
        Err(SessionRefusal::TooMany)
    );
    assert_eq!(f.core.sessions().len(), MAX_SESSIONS + 1);
    f.core.remove_session(1);
    assert_eq!(f.core.may_open_session(2 * MAX_SESSIONS as u32 + 1), Ok(()));
    let reject = SessionRefusal::TooMany.reject();
    assert_eq!(reject.system_code(), Some(SystemCode::ResourceExhausted));
}
