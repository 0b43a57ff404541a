//! Byte-level calls over every transport: multiplexing, both directions,
//! ack / reject, deadlines, cancellation, handler failure, graceful close.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use plexus::{Bytes, CallError, CallOptions, ConnectionConfig, Reject, Router};
use plexus_tests::{bounded, eventually, until, Pair, Transport};
use tokio::sync::mpsc;

const ECHO: &str = "test.Echo/echo";

fn echo() -> Router {
    Router::new()
        .unary(
            ECHO,
            |_ctx, body: Bytes| async move { Ok::<_, Reject>(body) },
        )
        .unary("test.Echo/delayed", |_ctx, body: Bytes| async move {
            // Replies out of order: later requests overtake earlier ones.
            let n = body.first().copied().unwrap_or(0) as u64 % 7;
            tokio::time::sleep(Duration::from_millis(n)).await;
            Ok::<_, Reject>(body)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_interleaved_calls_each_get_their_own_reply() {
    for t in Transport::ALL {
        let Some(pair) = Pair::start(t, ConnectionConfig::new(), echo(), Router::new()).await
        else {
            continue;
        };
        let conn = bounded("connect", pair.client.connect(&pair.url))
            .await
            .expect("connect");
        let calls = (0..1000u32).map(|i| {
            let conn = conn.clone();
            async move {
                let body = Bytes::from(format!("{}-call-{i}", (i % 251) as u8 as char));
                let op = if i % 2 == 0 {
                    ECHO
                } else {
                    "test.Echo/delayed"
                };
                let reply = conn.call(op, body.clone(), CallOptions::new()).await;
                (body, reply)
            }
        });
        let results = bounded("1000 calls", join_all(calls)).await;
        for (sent, got) in results {
            assert_eq!(got.expect("reply"), sent, "over {t:?}");
        }
        pair.server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_flow_in_both_directions_at_once() {
    for t in Transport::ALL {
        // The server's handler calls the client back on the same connection
        // before answering; meanwhile the server also calls the client directly.
        let server_side = Router::new().unary("test.Server/relay", |ctx, body: Bytes| async move {
            let back = ctx
                .connection()
                .call("test.Client/shout", body, CallOptions::new())
                .await
                .map_err(|e| Reject::new(500, e.to_string()))?;
            Ok(back)
        });
        let client_side =
            Router::new().unary("test.Client/shout", |_ctx, body: Bytes| async move {
                Ok::<_, Reject>(Bytes::from(String::from_utf8_lossy(&body).to_uppercase()))
            });
        let Some(pair) = Pair::start(t, ConnectionConfig::new(), server_side, client_side).await
        else {
            continue;
        };
        let conn = bounded("connect", pair.client.connect(&pair.url))
            .await
            .expect("connect");
        let server_conn = eventually("server sees the connection", || {
            pair.server.connections().into_iter().next()
        })
        .await;
        let from_client = (0..100).map(|i| {
            let conn = conn.clone();
            async move {
                conn.call(
                    "test.Server/relay",
                    Bytes::from(format!("c{i}")),
                    CallOptions::new(),
                )
                .await
            }
        });
        let from_server = (0..100).map(|i| {
            let conn = server_conn.clone();
            async move {
                conn.call(
                    "test.Client/shout",
                    Bytes::from(format!("s{i}")),
                    CallOptions::new(),
                )
                .await
            }
        });
        let (a, b) = bounded("both directions", async {
            tokio::join!(join_all(from_client), join_all(from_server))
        })
        .await;
        for (i, r) in a.into_iter().enumerate() {
            assert_eq!(
                r.expect("relay"),
                Bytes::from(format!("C{i}")),
                "over {t:?}"
            );
        }
        for (i, r) in b.into_iter().enumerate() {
            assert_eq!(r.expect("push"), Bytes::from(format!("S{i}")), "over {t:?}");
        }
        pair.server.shutdown().await;
    }
}

#[tokio::test]
async fn rejected_call_carries_code_reason_and_details() {
    let service = Router::new().unary("test.Bank/withdraw", |_ctx, _b| async move {
        Err::<Bytes, _>(Reject::new(402, "insufficient funds").with_details("balance=3"))
    });
    for t in Transport::ALL {
        let Some(pair) =
            Pair::start(t, ConnectionConfig::new(), service.clone(), Router::new()).await
        else {
            continue;
        };
        let conn = bounded("connect", pair.client.connect(&pair.url))
            .await
            .expect("connect");
        let err = bounded(
            "call",
            conn.call("test.Bank/withdraw", Bytes::new(), CallOptions::new()),
        )
        .await
        .expect_err("must be rejected");
        let r = err.as_reject().expect("a rejection");
        assert_eq!(r.code(), 402);
        assert_eq!(r.message(), "insufficient funds");
        assert_eq!(&r.details()[..], b"balance=3");
        pair.server.shutdown().await;
    }
}

/// Sends on drop: how a test sees that a handler's future was stopped.
struct DropSignal(Option<mpsc::UnboundedSender<&'static str>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send("dropped");
        }
    }
}

#[tokio::test]
async fn deadline_gives_timeout_and_stops_the_handler() {
    for t in Transport::ALL {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let service = Router::new().unary("test.Slow/sleep", move |ctx, _b| {
            let tx = tx.clone();
            async move {
                let _signal = DropSignal(Some(tx.clone()));
                let remaining = ctx
                    .remaining()
                    .expect("the deadline travelled with the call");
                assert!(remaining <= Duration::from_millis(200));
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, Reject>(Bytes::new())
            }
        });
        let Some(pair) = Pair::start(t, ConnectionConfig::new(), service, Router::new()).await
        else {
            continue;
        };
        let conn = bounded("connect", pair.client.connect(&pair.url))
            .await
            .expect("connect");
        let opts = CallOptions::new().timeout(Duration::from_millis(200));
        let err = bounded("call", conn.call("test.Slow/sleep", Bytes::new(), opts)).await;
        assert!(
            matches!(err, Err(CallError::Timeout { .. })),
            "over {t:?}: {err:?}"
        );
        let stopped = bounded("handler stopped", rx.recv()).await;
        assert_eq!(stopped, Some("dropped"));
        // The connection is still good.
        let ok = bounded(
            "next call",
            conn.call("test.Slow/missing", Bytes::new(), CallOptions::new()),
        )
        .await;
        assert!(matches!(ok, Err(CallError::NoSuchOperation { .. })));
        pair.server.shutdown().await;
    }
}

#[tokio::test]
async fn dropping_the_call_cancels_the_handler() {
    for t in Transport::ALL {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let started = Arc::new(tokio::sync::Notify::new());
        let started2 = started.clone();
        let service = Router::new().unary("test.Slow/wait", move |ctx, _b| {
            let tx = tx.clone();
            let started = started2.clone();
            async move {
                // Work the handler spawned sees the cancellation too.
                let token = ctx.cancellation_token();
                let tx2 = tx.clone();
                tokio::spawn(async move {
                    token.cancelled().await;
                    let _ = tx2.send("token fired");
                });
                let _signal = DropSignal(Some(tx));
                started.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, Reject>(Bytes::new())
            }
        });
        let Some(pair) = Pair::start(t, ConnectionConfig::new(), service, Router::new()).await
        else {
            continue;
        };
        let conn = bounded("connect", pair.client.connect(&pair.url))
            .await
            .expect("connect");
        let c2 = conn.clone();
        let call = tokio::spawn(async move {
            c2.call(
                "test.Slow/wait",
                Bytes::new(),
                CallOptions::new().timeout(Duration::from_secs(60)),
            )
            .await
        });
        bounded("handler started", started.notified()).await;
        call.abort();
        let mut seen = vec![
            bounded("first signal", rx.recv()).await.expect("signal"),
            bounded("second signal", rx.recv()).await.expect("signal"),
        ];
        seen.sort();
        assert_eq!(seen, vec!["dropped", "token fired"], "over {t:?}");
        assert_eq!(conn.stats().calls_in_flight, 0);
        pair.server.shutdown().await;
    }
}

#[tokio::test]
async fn panicking_handler_fails_only_its_call() {
    let service = echo().unary("test.Bad/panic", |_ctx, _b| async move {
        if true {
            panic!("boom");
        }
        Ok::<_, Reject>(Bytes::new())
    });
    let pair = Pair::start(
        Transport::Tcp,
        ConnectionConfig::new(),
        service,
        Router::new(),
    )
    .await
    .expect("tcp");
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let err = bounded(
        "call",
        conn.call("test.Bad/panic", Bytes::new(), CallOptions::new()),
    )
    .await;
    match err {
        Err(CallError::HandlerFailed { message, .. }) => {
            assert!(message.contains("boom"), "{message}")
        }
        other => panic!("expected HandlerFailed, got {other:?}"),
    }
    let ok = bounded(
        "call",
        conn.call(ECHO, Bytes::from("still here"), CallOptions::new()),
    )
    .await;
    assert_eq!(ok.expect("echo"), Bytes::from("still here"));
}

#[tokio::test]
async fn unknown_operation_is_a_typed_error_naming_op_and_peer() {
    let pair = Pair::start(
        Transport::Tcp,
        ConnectionConfig::new(),
        echo(),
        Router::new(),
    )
    .await
    .expect("tcp");
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let err = bounded(
        "call",
        conn.call("test.Nope/nothing", Bytes::new(), CallOptions::new()),
    )
    .await
    .expect_err("no such op");
    assert!(matches!(err, CallError::NoSuchOperation { .. }));
    let text = err.to_string();
    assert!(
        text.contains("test.Nope/nothing") && text.contains(&pair.url.to_string()),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn graceful_close_finishes_in_flight_calls_and_refuses_new_ones() {
    let release = Arc::new(tokio::sync::Notify::new());
    let r2 = release.clone();
    let started = Arc::new(AtomicUsize::new(0));
    let s2 = started.clone();
    let service = Router::new().unary("test.Slow/held", move |_ctx, body: Bytes| {
        let release = r2.clone();
        let started = s2.clone();
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            release.notified().await;
            Ok::<_, Reject>(body)
        }
    });
    let pair = Pair::start(
        Transport::Inproc,
        ConnectionConfig::new(),
        service,
        Router::new(),
    )
    .await
    .expect("inproc");
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let c2 = conn.clone();
    let in_flight = tokio::spawn(async move {
        c2.call("test.Slow/held", Bytes::from("kept"), CallOptions::new())
            .await
    });
    until("handler started", || started.load(Ordering::SeqCst) != 0).await;
    let c3 = conn.clone();
    let closing = tokio::spawn(async move { c3.close().await });
    // Once closing, new calls are refused with a clear error.
    bounded("refusal", async {
        loop {
            match conn.call(ECHO, Bytes::new(), CallOptions::new()).await {
                Err(CallError::Closing { .. }) => break,
                // Sent before the close began (it has not run yet).
                Err(CallError::NoSuchOperation { .. }) => tokio::task::yield_now().await,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    release.notify_one();
    let released = tokio::time::Instant::now();
    let kept = bounded("in-flight call", in_flight).await.expect("join");
    assert_eq!(
        kept.expect("the in-flight call finishes"),
        Bytes::from("kept")
    );
    bounded("close", closing).await.expect("join");
    assert_eq!(conn.close_reason(), Some(plexus::CloseReason::Local));
    // The close is woken by the last call ending: no clock time passes
    // between the answer and the close returning.
    assert_eq!(released.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn graceful_close_gives_up_on_calls_at_the_drain_timeout() {
    let service = Router::new().unary("test.Slow/never", |_ctx, _body: Bytes| async move {
        std::future::pending::<()>().await;
        Ok::<_, Reject>(Bytes::new())
    });
    let drain = Duration::from_secs(3);
    let config = ConnectionConfig::new()
        .drain_timeout(drain)
        .default_timeout(None);
    let pair = Pair::start(Transport::Inproc, config, service, Router::new())
        .await
        .expect("inproc");
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let c2 = conn.clone();
    let stuck = tokio::spawn(async move {
        c2.call("test.Slow/never", Bytes::new(), CallOptions::new())
            .await
    });
    until("the call is in flight", || {
        conn.stats().calls_in_flight == 1
    })
    .await;
    let started = tokio::time::Instant::now();
    bounded("close", conn.close()).await;
    let took = started.elapsed();
    assert!(
        took >= drain && took <= drain + Duration::from_millis(1),
        "closed after {took:?}, not at the drain timeout of {drain:?}"
    );
    let err = bounded("stuck call", stuck).await.expect("join");
    assert!(
        matches!(err, Err(CallError::ConnectionLost { .. })),
        "{err:?}"
    );
    assert_eq!(conn.close_reason(), Some(plexus::CloseReason::Local));
}

#[tokio::test(start_paused = true)]
async fn each_call_times_out_at_its_own_deadline_while_others_finish() {
    // One connection, many calls with different deadlines to a handler that
    // never answers, plus calls that do get answers: every silent call fails
    // at its own deadline (in any order of arming), no answered call fails.
    let router = echo().unary("test.Echo/never", |_ctx, _body: Bytes| async move {
        std::future::pending::<()>().await;
        Ok::<_, Reject>(Bytes::new())
    });
    // On tokio's paused clock over inproc: a deadline is checked to the
    // millisecond, and no answered call can miss its own for lack of CPU.
    let pair = Pair::start(
        Transport::Inproc,
        ConnectionConfig::new(),
        router,
        Router::new(),
    )
    .await
    .expect("inproc is always available");
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let deadlines_ms = [400u64, 100, 250, 50, 600];
    let silent = deadlines_ms.iter().map(|&ms| {
        let conn = conn.clone();
        async move {
            let began = tokio::time::Instant::now();
            let opts = CallOptions::new().timeout(Duration::from_millis(ms));
            let result = conn.call("test.Echo/never", Bytes::new(), opts).await;
            (ms, began.elapsed(), result)
        }
    });
    let answered = (0..200u32).map(|i| {
        let conn = conn.clone();
        async move {
            let opts = CallOptions::new().timeout(Duration::from_millis(250 + u64::from(i % 5)));
            conn.call(ECHO, Bytes::from(i.to_string()), opts).await
        }
    });
    let (silent, answered) = bounded("calls", async {
        tokio::join!(join_all(silent), join_all(answered))
    })
    .await;
    for reply in answered {
        reply.expect("an answered call never times out");
    }
    for (ms, took, result) in silent {
        match result {
            Err(CallError::Timeout { after, .. }) => {
                assert_eq!(after, Duration::from_millis(ms));
                assert!(
                    took >= Duration::from_millis(ms),
                    "{ms} ms call failed early: {took:?}"
                );
                assert!(
                    took <= Duration::from_millis(ms + 1),
                    "{ms} ms call failed late: {took:?}"
                );
            }
            other => panic!("{ms} ms call: expected a timeout, got {other:?}"),
        }
    }
    // The connection is still fine, and the cancelled handlers are gone.
    let reply = bounded(
        "after",
        conn.call(ECHO, Bytes::from("ok"), CallOptions::new()),
    )
    .await
    .expect("reply");
    assert_eq!(&reply[..], b"ok");
    pair.server.shutdown().await;
}

/// A handler answered on the spot that hands its context, or its token, to
/// work it spawns: the work sees the call end when it is answered, and the
/// calls after it (which may reuse an unheld token) are not cancelled.
#[tokio::test]
async fn work_a_handler_spawns_sees_its_call_end_and_later_calls_are_not_cancelled() {
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<&'static str>();
    let seen = ended_tx.clone();
    let service = Router::new()
        .unary("test.Spawn/context", move |ctx, body: Bytes| {
            let ended = ended_tx.clone();
            tokio::spawn(async move {
                ctx.cancelled().await;
                let _ = ended.send("context");
            });
            async move { Ok::<_, Reject>(body) }
        })
        .unary("test.Spawn/token", move |ctx, body: Bytes| {
            let ended = seen.clone();
            let token = ctx.cancellation_token();
            tokio::spawn(async move {
                token.cancelled().await;
                let _ = ended.send("token");
            });
            async move { Ok::<_, Reject>(body) }
        })
        .unary("test.Spawn/plain", |ctx, body: Bytes| async move {
            if ctx.is_cancelled() {
                return Err(Reject::new(1, "cancelled before it ran"));
            }
            Ok::<_, Reject>(body)
        });
    let pair = Pair::start(
        Transport::Inproc,
        ConnectionConfig::new(),
        service,
        Router::new(),
    )
    .await
    .expect("inproc is always there");
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    for round in 0..20 {
        for (op, what) in [
            ("test.Spawn/context", "context"),
            ("test.Spawn/token", "token"),
        ] {
            let reply = bounded(op, conn.call(op, Bytes::from("x"), CallOptions::new())).await;
            assert_eq!(&reply.expect("answered")[..], b"x");
            assert_eq!(
                bounded("the spawned work sees the end", ended.recv()).await,
                Some(what)
            );
            for _ in 0..3 {
                let reply = bounded(
                    "plain",
                    conn.call("test.Spawn/plain", Bytes::new(), CallOptions::new()),
                )
                .await;
                assert!(reply.is_ok(), "round {round}: {reply:?}");
            }
        }
    }
    pair.server.shutdown().await;
}
