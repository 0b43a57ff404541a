//! Reconnecting connections: a client outlives its server's restart; calls
//! made while disconnected wait up to their deadline; only idempotent calls
//! are retried.
//!
//! Redialing, backoff and deadlines are protocol logic: the tests run over
//! `inproc://` on tokio's paused clock, so every wait is exact and free.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plexus::{retry::Backoff, Bytes, CallError, CallOptions, Endpoint, Reject, Router, Server};
use plexus_tests::{bounded, until};

fn counting(hits: Arc<AtomicUsize>, hang: bool) -> Router {
    let h2 = hits.clone();
    Router::new()
        .unary("test.Kv/get", move |_ctx, body: Bytes| {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Reject>(body)
            }
        })
        .unary("test.Kv/put", move |_ctx, body: Bytes| {
            let hits = h2.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Reject>(body)
            }
        })
}

/// A fresh `inproc://` name for one test's server.
fn name(test: &str) -> String {
    format!("inproc://reconnect-{test}-{}", std::process::id())
}

async fn start_on(url: &str, hits: Arc<AtomicUsize>, hang: bool) -> Server {
    Server::bind(url)
        .serve(counting(hits, hang))
        .start()
        .await
        .expect("the name is free once the old server is shut down")
}

fn backoff() -> Backoff {
    Backoff::new()
        .initial(Duration::from_millis(10))
        .max(Duration::from_millis(100))
}

#[tokio::test(start_paused = true)]
async fn client_survives_its_server_restarting_on_the_same_address() {
    let hits = Arc::new(AtomicUsize::new(0));
    let first = start_on(&name("restart"), hits.clone(), false).await;
    let url = first.local_url().to_string();
    let client = Endpoint::builder().build();
    let conn = client.reconnecting(url.as_str(), backoff()).expect("url");
    let opts = CallOptions::new().timeout(Duration::from_secs(10));
    let r = bounded(
        "first call",
        conn.call("test.Kv/get", Bytes::from("a"), opts.clone()),
    )
    .await;
    assert_eq!(r.expect("first"), Bytes::from("a"));
    first.shutdown().await;
    drop(first);
    // A call made while the server is down waits for the new one.
    let c2 = conn.clone();
    let o2 = opts.clone();
    let waiting = tokio::spawn(async move { c2.call("test.Kv/put", Bytes::from("b"), o2).await });
    // Several redials fail meanwhile (paused time: exactly the backoff's).
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the call waits for a link");
    let second = start_on(&url, hits.clone(), false).await;
    let r = bounded("call across the restart", waiting)
        .await
        .expect("join");
    assert_eq!(r.expect("the waiting call succeeds"), Bytes::from("b"));
    let r = bounded(
        "next call",
        conn.call("test.Kv/get", Bytes::from("c"), opts),
    )
    .await;
    assert_eq!(r.expect("next"), Bytes::from("c"));
    second.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn calls_while_disconnected_wait_only_up_to_their_deadline() {
    let client = Endpoint::builder().build();
    // Nothing listens here.
    let nowhere = name("nowhere");
    let conn = client
        .reconnecting(nowhere.as_str(), backoff())
        .expect("url");
    let started = tokio::time::Instant::now();
    let err = bounded(
        "call",
        conn.call(
            "test.Kv/get",
            Bytes::new(),
            CallOptions::new().timeout(Duration::from_millis(200)),
        ),
    )
    .await;
    assert!(matches!(err, Err(CallError::Timeout { .. })), "{err:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited <= Duration::from_millis(201),
        "at its deadline, not {waited:?}"
    );
    // A bounded number of attempts ends in ConnectionLost, not a hang.
    let giving_up = client
        .reconnecting(nowhere.as_str(), backoff().max_attempts(3))
        .expect("url");
    let err = bounded(
        "call",
        giving_up.call("test.Kv/get", Bytes::new(), CallOptions::new()),
    )
    .await;
    assert!(
        matches!(err, Err(CallError::ConnectionLost { .. })),
        "{err:?}"
    );
    assert!(err
        .expect_err("lost")
        .to_string()
        .contains("gave up after 3 attempts"));
}

#[tokio::test(start_paused = true)]
async fn a_non_idempotent_call_is_never_retried_but_an_idempotent_one_is() {
    let hits = Arc::new(AtomicUsize::new(0));
    let hanging = start_on(&name("idempotent"), hits.clone(), true).await;
    let url = hanging.local_url().to_string();
    let client = Endpoint::builder().build();
    let conn = client.reconnecting(url.as_str(), backoff()).expect("url");
    let opts = CallOptions::new().timeout(Duration::from_secs(10));
    // put (not idempotent) and get (idempotent) both reach a server that hangs.
    let c1 = conn.clone();
    let o1 = opts.clone();
    let put = tokio::spawn(async move { c1.call("test.Kv/put", Bytes::from("p"), o1).await });
    let c2 = conn.clone();
    let o2 = opts.clone().idempotent(true);
    let get = tokio::spawn(async move { c2.call("test.Kv/get", Bytes::from("g"), o2).await });
    until("both calls reach the server", || {
        hits.load(Ordering::SeqCst) >= 2
    })
    .await;
    // The server dies with both calls in flight and comes back healthy.
    for c in hanging.connections() {
        c.abort();
    }
    hanging.shutdown().await;
    drop(hanging);
    let healthy_hits = Arc::new(AtomicUsize::new(0));
    let healthy = start_on(&url, healthy_hits.clone(), false).await;
    let put = bounded("put", put).await.expect("join");
    assert!(
        matches!(put, Err(CallError::ConnectionLost { .. })),
        "not retried: {put:?}"
    );
    let get = bounded("get", get).await.expect("join");
    assert_eq!(get.expect("retried on the new link"), Bytes::from("g"));
    assert_eq!(
        healthy_hits.load(Ordering::SeqCst),
        1,
        "only the idempotent call ran again"
    );
    healthy.shutdown().await;
}
