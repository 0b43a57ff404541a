//! Streams at the byte level: flow control bounds memory, best-effort sends
//! count their drops, cancellation and errors cross mid-stream both ways, and
//! finished streams end cleanly on both sides.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plexus::{
    stream::TrySendError, Bytes, CallError, CallOptions, ConnectionConfig, Reject, Router,
};
use plexus_tests::{bounded, until, Pair, Transport};
use tokio::sync::mpsc;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_bounds_sender_memory_over_a_gibibyte() {
    const MSG: usize = 64 * 1024;
    const TOTAL: usize = 1024 * MIB;
    let high_water = MIB;
    let window: u32 = 256 * 1024;
    let max_queued = Arc::new(AtomicUsize::new(0));
    let mq = max_queued.clone();
    let service = Router::new().server_stream("test.Bulk/pour", move |ctx, _req, mut out| {
        let mq = mq.clone();
        async move {
            let chunk = Bytes::from(vec![0xabu8; MSG]);
            for _ in 0..TOTAL / MSG {
                out.send(chunk.clone())
                    .await
                    .map_err(|e| Reject::new(1, e.to_string()))?;
                let queued = ctx.connection().stats().queued_bytes;
                mq.fetch_max(queued, Ordering::Relaxed);
            }
            Ok(())
        }
    });
    let config = ConnectionConfig::new()
        .write_high_water(high_water)
        .stream_window(window);
    let pair = Pair::start(Transport::Tcp, config, service, Router::new())
        .await
        .expect("tcp");
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let mut inbound = bounded(
        "open",
        conn.server_stream("test.Bulk/pour", Bytes::new(), CallOptions::new()),
    )
    .await
    .expect("stream");
    let mut received = 0usize;
    let mut max_buffered = 0u64;
    let mut messages = 0usize;
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(item) = inbound.recv().await {
            received += item.expect("message").len();
            messages += 1;
            max_buffered = max_buffered.max(inbound.buffered_bytes());
            // Slow for the first 64 MiB: the producer is far faster than this.
            if messages <= 1024 {
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
    })
    .await
    .expect("1 GiB within two minutes");
    assert_eq!(received, TOTAL);
    // The sender never queued more than the high-water mark plus one message
    // (and its frame header) for the socket.
    let queued = max_queued.load(Ordering::Relaxed);
    assert!(
        queued <= high_water + MSG + 64,
        "sender queued up to {queued} bytes"
    );
    // The receiver never held more than its window plus one frame of slack.
    assert!(
        max_buffered <= u64::from(window) + MSG as u64,
        "receiver buffered {max_buffered} bytes"
    );
}

#[tokio::test]
async fn best_effort_sender_drops_and_counts_instead_of_blocking() {
    const N: u64 = 5_000;
    let dropped = Arc::new(AtomicU64::new(u64::MAX));
    let d2 = dropped.clone();
    let service =
        Router::new().server_stream("test.Telemetry/firehose", move |_ctx, _req, mut out| {
            let d2 = d2.clone();
            async move {
                for i in 0..N {
                    match out.try_send(Bytes::from(vec![(i % 251) as u8; 1024])) {
                        Ok(()) | Err(TrySendError::Full(_)) => {}
                        Err(TrySendError::Closed(e)) => return Err(Reject::new(1, e.to_string())),
                    }
                }
                d2.store(out.dropped(), Ordering::SeqCst);
                Ok(())
            }
        });
    let config = ConnectionConfig::new().stream_window(64 * 1024);
    let pair = Pair::start(Transport::Tcp, config, service, Router::new())
        .await
        .expect("tcp");
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let mut inbound = bounded(
        "open",
        conn.server_stream("test.Telemetry/firehose", Bytes::new(), CallOptions::new()),
    )
    .await
    .expect("stream");
    // Do not read until the producer is done: it must never have waited.
    until("producer finishes without a reader", || {
        dropped.load(Ordering::SeqCst) != u64::MAX
    })
    .await;
    let mut got = 0u64;
    while let Some(item) = bounded("drain", inbound.recv()).await {
        item.expect("message");
        got += 1;
    }
    let dropped = dropped.load(Ordering::SeqCst);
    assert!(dropped > 0, "a reader that never reads must cause drops");
    assert_eq!(
        got + dropped,
        N,
        "every message is either delivered or counted as dropped"
    );
}

/// Sends on drop: how a test sees that a handler was stopped.
struct DropSignal(mpsc::UnboundedSender<&'static str>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send("handler stopped");
    }
}

fn stream_service(stopped: mpsc::UnboundedSender<&'static str>) -> Router {
    let s1 = stopped.clone();
    let s2 = stopped.clone();
    Router::new()
        .server_stream("test.S/count", move |_ctx, req: Bytes, mut out| {
            let s = s1.clone();
            async move {
                let _signal = DropSignal(s);
                // An empty request streams all 256 values; a byte n fails at n.
                let fail_at = req.first().map(|&b| u16::from(b)).unwrap_or(256);
                for i in 0u16..256 {
                    if i == fail_at {
                        return Err(Reject::new(409, format!("refused at {i}")));
                    }
                    out.send(Bytes::from(vec![i as u8]))
                        .await
                        .map_err(|e| Reject::new(1, e.to_string()))?;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok(())
            }
        })
        .client_stream("test.S/sum", move |_ctx, mut inbound| {
            let s = s2.clone();
            async move {
                let _signal = DropSignal(s.clone());
                let mut sum = 0u64;
                while let Some(item) = inbound.recv().await {
                    let b = item.map_err(|e| Reject::new(2, e.to_string()))?;
                    if sum == 0 {
                        let _ = s.send("first item");
                    }
                    if b.as_ref() == b"stop" {
                        return Err(Reject::new(422, "told to stop"));
                    }
                    sum += b.iter().map(|&x| u64::from(x)).sum::<u64>();
                }
                Ok(Bytes::from(sum.to_string()))
            }
        })
        .bidi("test.S/echo", move |_ctx, mut inbound, mut out| {
            let s = stopped.clone();
            async move {
                let _signal = DropSignal(s);
                while let Some(item) = inbound.recv().await {
                    let b = item.map_err(|e| Reject::new(2, e.to_string()))?;
                    if b.as_ref() == b"stop" {
                        return Err(Reject::new(499, "echo refused"));
                    }
                    out.send(b)
                        .await
                        .map_err(|e| Reject::new(1, e.to_string()))?;
                }
                Ok(())
            }
        })
}

#[tokio::test]
async fn finished_streams_end_cleanly_on_both_sides() {
    for t in Transport::ALL {
        let (tx, _rx) = mpsc::unbounded_channel();
        let Some(pair) = Pair::start(
            t,
            ConnectionConfig::new(),
            stream_service(tx),
            Router::new(),
        )
        .await
        else {
            continue;
        };
        let conn = bounded("connect", pair.client.connect(&pair.url))
            .await
            .expect("connect");
        // Server stream: all 256 items, then a clean end.
        let mut inbound = conn
            .server_stream("test.S/count", Bytes::new(), CallOptions::new())
            .await
            .expect("open");
        let mut n = 0u32;
        while let Some(item) = bounded("item", inbound.recv()).await {
            assert_eq!(item.expect("item")[0] as u32, n);
            n += 1;
        }
        assert_eq!(n, 256, "over {t:?}");
        // Client stream: a sum after finish.
        let (mut out, reply) = conn
            .client_stream("test.S/sum", CallOptions::new())
            .await
            .expect("open");
        for i in 1..=100u8 {
            out.send(Bytes::from(vec![i])).await.expect("send");
        }
        out.finish().await.expect("finish");
        assert_eq!(
            bounded("reply", reply).await.expect("sum"),
            Bytes::from("5050")
        );
        // Bidi: echo until finish, then a clean end.
        let (mut out, mut inbound) = conn
            .bidi("test.S/echo", CallOptions::new())
            .await
            .expect("open");
        for i in 0..50u8 {
            out.send(Bytes::from(vec![i])).await.expect("send");
            assert_eq!(
                bounded("echo", inbound.recv())
                    .await
                    .expect("item")
                    .expect("ok")[0],
                i
            );
        }
        out.finish().await.expect("finish");
        assert!(bounded("end", inbound.recv()).await.is_none(), "over {t:?}");
        assert_eq!(conn.stats().calls_in_flight, 0);
        pair.server.shutdown().await;
    }
}

#[tokio::test]
async fn handler_errors_cross_to_the_caller_mid_stream() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let pair = Pair::start(
        Transport::Tcp,
        ConnectionConfig::new(),
        stream_service(tx),
        Router::new(),
    )
    .await
    .expect("tcp");
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    // Server stream: items 0..5, then the rejection.
    let mut inbound = conn
        .server_stream("test.S/count", Bytes::from(vec![5u8]), CallOptions::new())
        .await
        .expect("open");
    let mut items = Vec::new();
    let err = loop {
        match bounded("item", inbound.recv()).await {
            Some(Ok(b)) => items.push(b[0]),
            Some(Err(e)) => break e,
            None => panic!("stream ended without the rejection"),
        }
    };
    assert_eq!(items, vec![0, 1, 2, 3, 4]);
    assert_eq!(err.as_reject().map(|r| r.code()), Some(409));
    assert!(bounded("end", inbound.recv()).await.is_none());
    // Client stream: the handler rejects mid-stream; the sender learns why.
    let (mut out, reply) = conn
        .client_stream("test.S/sum", CallOptions::new())
        .await
        .expect("open");
    out.send(Bytes::from_static(b"stop")).await.expect("send");
    let r = bounded("reply", reply).await;
    assert_eq!(
        r.expect_err("rejected").as_reject().map(|r| r.code()),
        Some(422)
    );
    let later = bounded("send after reject", out.send(Bytes::from_static(b"more"))).await;
    assert_eq!(
        later
            .expect_err("call is over")
            .as_reject()
            .map(|r| r.code()),
        Some(422)
    );
    // Bidi: the rejection arrives on the inbound side.
    let (mut out, mut inbound) = conn
        .bidi("test.S/echo", CallOptions::new())
        .await
        .expect("open");
    out.send(Bytes::from_static(b"stop")).await.expect("send");
    let e = bounded("item", inbound.recv())
        .await
        .expect("an item")
        .expect_err("rejected");
    assert_eq!(e.as_reject().map(|r| r.code()), Some(499));
}

#[tokio::test]
async fn caller_cancelling_any_stream_kind_stops_the_handler() {
    let (tx, mut stopped) = mpsc::unbounded_channel();
    let pair = Pair::start(
        Transport::Tcp,
        ConnectionConfig::new(),
        stream_service(tx),
        Router::new(),
    )
    .await
    .expect("tcp");
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    // Server stream: read one item, drop the stream.
    let mut inbound = conn
        .server_stream("test.S/count", Bytes::new(), CallOptions::new())
        .await
        .expect("open");
    bounded("item", inbound.recv())
        .await
        .expect("item")
        .expect("ok");
    drop(inbound);
    assert_eq!(
        bounded("server stream stopped", stopped.recv()).await,
        Some("handler stopped")
    );
    // Client stream: send one item, drop both halves.
    let (mut out, reply) = conn
        .client_stream("test.S/sum", CallOptions::new())
        .await
        .expect("open");
    out.send(Bytes::from_static(b"\x01")).await.expect("send");
    // Cancel once the handler is surely running, not before it started.
    assert_eq!(
        bounded("handler started", stopped.recv()).await,
        Some("first item")
    );
    drop(out);
    drop(reply);
    assert_eq!(
        bounded("client stream stopped", stopped.recv()).await,
        Some("handler stopped")
    );
    // Bidi: drop both halves mid-conversation.
    let (mut out, mut inbound) = conn
        .bidi("test.S/echo", CallOptions::new())
        .await
        .expect("open");
    out.send(Bytes::from_static(b"\x02")).await.expect("send");
    bounded("echo", inbound.recv())
        .await
        .expect("item")
        .expect("ok");
    drop((out, inbound));
    assert_eq!(
        bounded("bidi stopped", stopped.recv()).await,
        Some("handler stopped")
    );
    until("calls drain", || conn.stats().calls_in_flight == 0).await;
}

#[tokio::test]
async fn handler_dropping_its_side_cancels_the_callers_stream() {
    // The handler gives up on its request stream by returning early with an
    // error while the caller is still sending: the caller's sends fail.
    let service = Router::new().client_stream("test.S/first", |_ctx, mut inbound| async move {
        let first = inbound.recv().await;
        drop(inbound);
        match first {
            Some(Ok(_)) => Err(Reject::new(413, "one is enough")),
            _ => Err(Reject::new(400, "nothing")),
        }
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
    let (mut out, reply) = conn
        .client_stream("test.S/first", CallOptions::new())
        .await
        .expect("open");
    out.send(Bytes::from_static(b"a"))
        .await
        .expect("first send");
    let err = bounded("reply", reply).await.expect_err("rejected");
    assert_eq!(err.as_reject().map(|r| r.code()), Some(413));
    let send = bounded("later send", out.send(Bytes::from_static(b"b"))).await;
    assert!(matches!(send, Err(CallError::Rejected(_))), "{send:?}");
}

#[tokio::test]
async fn large_messages_arrive_intact_over_every_transport() {
    // Bodies from 16 KiB up are queued by reference and written with
    // vectored writes; every transport must deliver them byte for byte.
    let service = Router::new()
        .unary("test.Big/echo", |_ctx, body: Bytes| async move {
            Ok::<_, Reject>(body)
        })
        .server_stream("test.Big/pour", |_ctx, req: Bytes, mut out| async move {
            for i in 0..32u32 {
                let size = 1000 + (i as usize * 7919) % (200 * 1024);
                let item: Vec<u8> = (0..size).map(|j| (j as u32 ^ i) as u8).collect();
                out.send(Bytes::from(item))
                    .await
                    .map_err(|e| Reject::new(1, e.to_string()))?;
            }
            let _ = req;
            Ok(())
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
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let calls = (0..8).map(|k| {
            let conn = conn.clone();
            let body = Bytes::from(big[k * 1000..].to_vec());
            async move {
                (
                    body.clone(),
                    conn.call("test.Big/echo", body, CallOptions::new()).await,
                )
            }
        });
        for (sent, got) in bounded("big echoes", futures_util::future::join_all(calls)).await {
            assert_eq!(got.expect("echo"), sent, "over {t:?}");
        }
        let mut inbound = conn
            .server_stream("test.Big/pour", Bytes::new(), CallOptions::new())
            .await
            .expect("open");
        let mut i = 0u32;
        while let Some(item) = bounded("item", inbound.recv()).await {
            let item = item.expect("item");
            let size = 1000 + (i as usize * 7919) % (200 * 1024);
            assert_eq!(item.len(), size, "over {t:?}");
            assert!(
                item.iter()
                    .enumerate()
                    .all(|(j, &b)| b == (j as u32 ^ i) as u8),
                "over {t:?}"
            );
            i += 1;
        }
        assert_eq!(i, 32);
        pair.server.shutdown().await;
    }
}

/// A reader that has caught up hands back what it consumed before it waits,
/// even below half the window: otherwise a bulk stream can settle into
/// stop-and-wait, the sender getting credit only for the burst being read
/// (the server-stream low mode of issue #12).
#[tokio::test]
async fn a_caught_up_reader_returns_its_credit_before_waiting() {
    const WINDOW: u32 = 256 * 1024;
    const MSG: usize = WINDOW as usize / 16;
    let seen = Arc::new(AtomicI64::new(i64::MIN));
    let s2 = seen.clone();
    let service = Router::new().server_stream("test.Bulk/quarter", move |_ctx, _req, mut out| {
        let s2 = s2.clone();
        async move {
            // A quarter of the window: above an eighth, below the half at
            // which credit is returned while messages keep coming.
            for _ in 0..4 {
                out.send(Bytes::from(vec![7u8; MSG]))
                    .await
                    .map_err(|e| Reject::new(1, e.to_string()))?;
            }
            let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
            while out.credit() < i64::from(WINDOW) && tokio::time::Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            s2.store(out.credit(), Ordering::SeqCst);
            Ok(())
        }
    });
    let config = ConnectionConfig::new().stream_window(WINDOW);
    let pair = Pair::start(Transport::Tcp, config, service, Router::new())
        .await
        .expect("tcp");
    let conn = bounded("connect", pair.client.connect(&pair.url))
        .await
        .expect("connect");
    let mut inbound = bounded(
        "open",
        conn.server_stream("test.Bulk/quarter", Bytes::new(), CallOptions::new()),
    )
    .await
    .expect("stream");
    let mut received = 0;
    while let Some(item) = bounded("drain", inbound.recv()).await {
        received += item.expect("message").len();
    }
    assert_eq!(received, 4 * MSG);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        i64::from(WINDOW),
        "the sender got back the credit for everything the reader consumed"
    );
}
