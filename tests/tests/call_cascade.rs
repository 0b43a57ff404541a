//! Cascading deadlines and cancellation, through the public API: a call made
//! while a handler serves another is that call's child. It ends by the
//! parent's deadline, and it is cancelled when the parent is — on the
//! handler's own task by itself, from other tasks through
//! `CallContext::child_options`, and not at all when made `detached()`.
//! Four endpoints in a row (A calls B calls C calls D): three hops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plexus::node::Actor;
use plexus::{Bytes, CallContext, CallError, CallOptions, Connection, Reject, Router, Server};
use plexus_tests::{bounded, until};

const HOP: &str = "cascade.Hop/next";

/// How a relaying hop calls the next one.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Style {
    /// On the handler's own task, with default options.
    InTask,
    /// From a spawned task, with `ctx.child_options()`.
    SpawnedChild,
    /// From a spawned task, with default options: not a child.
    SpawnedPlain,
    /// From a job of an actor the handler forwards to, `detached()`.
    Detached,
    /// From a job of an actor the handler forwards to.
    InActor,
}

/// What the last hop saw.
#[derive(Default)]
struct Last {
    /// Its `ctx.remaining()` in ms (`u64::MAX`: no deadline).
    remaining_ms: AtomicU64,
    started: AtomicBool,
    /// Its call was cancelled before it finished.
    cancelled: AtomicBool,
    finished: AtomicBool,
}

/// The last hop: records its deadline, then works for `hold`, noting
/// whether its call was cancelled before it finished.
async fn last_hop(hold: Duration, last: Arc<Last>) -> Server {
    let router = Router::new().unary(HOP, move |ctx: CallContext, _body: Bytes| {
        let last = last.clone();
        async move {
            let ms = ctx.remaining().map_or(u64::MAX, |r| r.as_millis() as u64);
            last.remaining_ms.store(ms, Ordering::SeqCst);
            let token = ctx.cancellation_token();
            let watcher = last.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                // The token also fires when the call ends normally.
                if !watcher.finished.load(Ordering::SeqCst) {
                    watcher.cancelled.store(true, Ordering::SeqCst);
                }
            });
            last.started.store(true, Ordering::SeqCst);
            tokio::time::sleep(hold).await;
            last.finished.store(true, Ordering::SeqCst);
            Ok::<_, Reject>(Bytes::from_static(b"done"))
        }
    });
    Server::bind("tcp://127.0.0.1:0")
        .serve(router)
        .start()
        .await
        .expect("last hop listens")
}

/// A hop that calls `next` when called, in `style`.
async fn relay_hop(next: Connection, style: Style) -> Server {
    let actor = Actor::spawn(next.clone());
    let router = Router::new().unary(HOP, move |ctx: CallContext, body: Bytes| {
        let next = next.clone();
        let actor = actor.clone();
        async move {
            let reply = match style {
                Style::InTask => next.call(HOP, body, CallOptions::new()).await,
                Style::SpawnedChild | Style::SpawnedPlain => {
                    let opts = if style == Style::SpawnedChild {
                        ctx.child_options()
                    } else {
                        CallOptions::new()
                    };
                    tokio::spawn(async move { next.call(HOP, body, opts).await })
                        .await
                        .map_err(|e| Reject::new(500, e.to_string()))?
                }
                Style::InActor | Style::Detached => {
                    let opts = if style == Style::Detached {
                        CallOptions::new().detached()
                    } else {
                        CallOptions::new()
                    };
                    actor
                        .call_async(move |next: &mut Connection| {
                            let next = next.clone();
                            Box::pin(async move { next.call(HOP, body, opts).await })
                        })
                        .await
                        .map_err(|e| Reject::new(500, e.to_string()))?
                }
            };
            reply.map_err(|e| Reject::new(502, e.to_string()))
        }
    });
    Server::bind("tcp://127.0.0.1:0")
        .serve(router)
        .start()
        .await
        .expect("hop listens")
}

/// B → C → D with `style` at B and C; returns A's connection to B and what
/// D sees. The servers live as long as the returned guard.
async fn chain(style: Style, hold: Duration) -> (Connection, Arc<Last>, Vec<Server>) {
    let last = Arc::new(Last::default());
    let d = last_hop(hold, last.clone()).await;
    let to_d = Connection::connect(d.local_url()).await.expect("c dials d");
    let c = relay_hop(to_d, style).await;
    let to_c = Connection::connect(c.local_url()).await.expect("b dials c");
    let b = relay_hop(to_c, style).await;
    let a = Connection::connect(b.local_url()).await.expect("a dials b");
    (a, last, vec![b, c, d])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_set_at_the_first_hop_bounds_the_third() {
    for style in [Style::InTask, Style::SpawnedChild, Style::InActor] {
        let (a, last, _servers) = chain(style, Duration::ZERO).await;
        let reply = bounded(
            "the call",
            a.call(
                HOP,
                Bytes::new(),
                CallOptions::new().timeout(Duration::from_secs(4)),
            ),
        )
        .await
        .expect("answered");
        assert_eq!(&reply[..], b"done");
        // Without cascading, B's and C's calls would carry the 30 s default.
        let ms = last.remaining_ms.load(Ordering::SeqCst);
        assert!(ms <= 4_000, "{style:?}: D had {ms} ms left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_call_without_child_options_keeps_its_own_deadline() {
    let (a, last, _servers) = chain(Style::SpawnedPlain, Duration::ZERO).await;
    bounded(
        "the call",
        a.call(
            HOP,
            Bytes::new(),
            CallOptions::new().timeout(Duration::from_secs(4)),
        ),
    )
    .await
    .expect("answered");
    let ms = last.remaining_ms.load(Ordering::SeqCst);
    assert!(ms > 20_000, "work on another task is not a child: {ms} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_first_call_cancels_the_third_hop() {
    for style in [Style::InTask, Style::SpawnedChild, Style::InActor] {
        let (a, last, _servers) = chain(style, Duration::from_secs(30)).await;
        let call = tokio::spawn({
            let a = a.clone();
            async move { a.call(HOP, Bytes::new(), CallOptions::new()).await }
        });
        until("D is working", || last.started.load(Ordering::SeqCst)).await;
        // A gives up: dropping its call sends the cancel.
        call.abort();
        until(&format!("{style:?}: D is cancelled"), || {
            last.cancelled.load(Ordering::SeqCst)
        })
        .await;
        assert!(!last.finished.load(Ordering::SeqCst));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_deadline_passing_stops_the_third_hop() {
    let (a, last, _servers) = chain(Style::SpawnedChild, Duration::from_secs(30)).await;
    let err = bounded(
        "the call",
        a.call(
            HOP,
            Bytes::new(),
            CallOptions::new().timeout(Duration::from_millis(400)),
        ),
    )
    .await
    .expect_err("nobody answers in time");
    // Every hop has the same deadline: A's own timeout and B's answer that
    // its child timed out race each other, and either may come first.
    let timed_out = match &err {
        CallError::Timeout { .. } => true,
        CallError::Rejected(r) => r.code() == 502 && r.message().contains("no reply within"),
        _ => false,
    };
    assert!(timed_out, "{err}");
    until("D is stopped by the cascaded deadline", || {
        last.cancelled.load(Ordering::SeqCst)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_call_in_an_actor_job_outlives_the_call_that_made_it() {
    let (a, last, _servers) = chain(Style::Detached, Duration::from_millis(300)).await;
    let call = tokio::spawn({
        let a = a.clone();
        async move {
            a.call(
                HOP,
                Bytes::new(),
                CallOptions::new().timeout(Duration::from_secs(5)),
            )
            .await
        }
    });
    until("D is working", || last.started.load(Ordering::SeqCst)).await;
    call.abort();
    until("D finishes its work", || {
        last.finished.load(Ordering::SeqCst)
    })
    .await;
    assert!(
        !last.cancelled.load(Ordering::SeqCst),
        "detached work is not cancelled"
    );
    let ms = last.remaining_ms.load(Ordering::SeqCst);
    assert!(
        ms > 20_000,
        "a detached call keeps its own (default) deadline: {ms} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_of_a_cancelled_call_fails_before_it_is_sent() {
    let seen = Arc::new(AtomicU64::new(0));
    let counted = seen.clone();
    let target = Server::bind("tcp://127.0.0.1:0")
        .serve(Router::new().unary(HOP, move |_ctx, _b: Bytes| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Reject>(Bytes::new()) }
        }))
        .start()
        .await
        .expect("listens");
    let next = Connection::connect(target.local_url())
        .await
        .expect("dials");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
    let front = Server::bind("tcp://127.0.0.1:0")
        .serve(
            Router::new().unary(HOP, move |ctx: CallContext, _b: Bytes| {
                let tx = tx.clone();
                async move {
                    if let Some(tx) = tx.lock().expect("lock").take() {
                        let _ = tx.send(ctx.child_options());
                    }
                    Ok::<_, Reject>(Bytes::new())
                }
            }),
        )
        .start()
        .await
        .expect("listens");
    let a = Connection::connect(front.local_url()).await.expect("dials");
    bounded("the call", a.call(HOP, Bytes::new(), CallOptions::new()))
        .await
        .expect("answered");
    // The parent has ended (answered): its children are done for.
    let child = rx.await.expect("options handed over");
    let err = bounded("the child", next.call(HOP, Bytes::new(), child))
        .await
        .expect_err("the parent ended");
    assert!(matches!(err, CallError::Cancelled { .. }), "{err}");
    assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing was sent");
}
