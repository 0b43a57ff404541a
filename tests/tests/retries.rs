//! Retries and hedging, through the public API: a balanced call that failed
//! in a retryable way goes again (after a backoff, to another peer when
//! there is one) within its attempts, its budget and its deadline; a hedged
//! call still unanswered after the hedge delay also goes to a second peer,
//! the first answer wins and the other call is cancelled; a reconnecting
//! connection retries by its policy.
//!
//! Backoff, attempts, deadlines and hedge delays are protocol logic, not
//! socket behaviour: the peers listen on `inproc://` and the tests run on
//! tokio's paused clock, so each test asserts the schedule the calls
//! actually kept (every wait is exact and free), not just a lower bound.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus::discovery::Static;
use plexus::patterns::Strategy;
use plexus::Node;
use plexus::{
    retry::{Backoff, RetryBudget, RetryPolicy},
    Bytes, CallContext, CallError, CallOptions, Endpoint, NodeId, Reject, Router, Server,
};
use plexus_tests::{bounded, until};
use tokio::time::Instant;

/// Work a peer does; `fetch` is safe to repeat, `apply` is not.
#[plexus::service(package = "retry")]
pub trait Work {
    /// Reads something.
    #[idempotent]
    async fn fetch(&self) -> Result<String, Reject>;
    /// Changes something.
    async fn apply(&self) -> Result<String, Reject>;
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Answers with its name.
    Answer,
    /// Rejects every call with 503 ("unavailable, try again").
    Unavailable,
    /// Drops its connection under every call.
    Crash,
    /// Takes 30 s to answer.
    Slow,
}

/// When each call reached a peer, on the test's (paused) clock.
type Arrivals = Arc<Mutex<Vec<Instant>>>;

struct Worker {
    name: &'static str,
    mode: Mode,
    calls: Arc<AtomicU32>,
    arrivals: Arrivals,
    cancelled: Arc<AtomicBool>,
}

impl Worker {
    async fn serve(&self, ctx: CallContext) -> Result<String, Reject> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.arrivals.lock().expect("arrivals").push(Instant::now());
        match self.mode {
            Mode::Answer => Ok(self.name.to_owned()),
            Mode::Unavailable => Err(Reject::new(503, "busy, try again")),
            Mode::Crash => {
                ctx.connection().abort();
                std::future::pending().await
            }
            Mode::Slow => {
                let token = ctx.cancellation_token();
                let cancelled = self.cancelled.clone();
                tokio::spawn(async move {
                    token.cancelled().await;
                    cancelled.store(true, Ordering::SeqCst);
                });
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(self.name.to_owned())
            }
        }
    }
}

/// The `Work` contract served at the byte level, so that a handler can
/// reach its call's context (to crash its connection, or watch for
/// cancellation); the descriptor makes nodes announce and link it.
fn router(worker: Arc<Worker>) -> Router {
    let fetch = worker.clone();
    let apply = worker;
    Router::new()
        .unary("retry.Work/fetch", move |ctx, _b: Bytes| {
            let w = fetch.clone();
            async move { encode(w.serve(ctx).await) }
        })
        .unary("retry.Work/apply", move |ctx, _b: Bytes| {
            let w = apply.clone();
            async move { encode(w.serve(ctx).await) }
        })
        .with_descriptor(WorkClient::DESCRIPTOR)
}

fn encode(reply: Result<String, Reject>) -> Result<Bytes, Reject> {
    let text = reply?;
    plexus::codec::encode_reply::<plexus::codec::MsgPack, String>(&text)
}

struct Peer {
    node: Node,
    calls: Arc<AtomicU32>,
    arrivals: Arrivals,
    cancelled: Arc<AtomicBool>,
}

/// A fresh `inproc://` name for node `name`.
fn inproc(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("inproc://retries-{name}-{}-{n}", std::process::id())
}

async fn peer(name: &'static str, id: u128, mode: Mode, list: Vec<String>) -> Peer {
    let calls = Arc::new(AtomicU32::new(0));
    let arrivals = Arrivals::default();
    let cancelled = Arc::new(AtomicBool::new(false));
    let worker = Arc::new(Worker {
        name,
        mode,
        calls: calls.clone(),
        arrivals: arrivals.clone(),
        cancelled: cancelled.clone(),
    });
    let node = Node::builder(name)
        .node_id(NodeId(id))
        .listen(inproc(name))
        .group("retries")
        .discovery(Static::new(list))
        .serve(router(worker))
        .reconcile_interval(Duration::from_millis(50))
        .start()
        .await
        .expect("node starts");
    Peer {
        node,
        calls,
        arrivals,
        cancelled,
    }
}

/// When the calls reached any of `peers`, in order, as offsets from `start`.
fn schedule(start: Instant, peers: &[&Peer]) -> Vec<Duration> {
    let mut at: Vec<Duration> = peers
        .iter()
        .flat_map(|p| p.arrivals.lock().expect("arrivals").clone())
        .map(|t| t - start)
        .collect();
    at.sort();
    at
}

/// A caller linked with every one of `peers`.
async fn caller(peers: &[&Peer]) -> Node {
    let urls: Vec<String> = peers
        .iter()
        .map(|p| p.node.local_urls()[0].to_string())
        .collect();
    let node = Node::builder("caller")
        .node_id(NodeId(u128::MAX))
        .listen(inproc("caller"))
        .group("retries")
        .discovery(Static::new(urls))
        .uses::<WorkClient>()
        .reconcile_interval(Duration::from_millis(50))
        .start()
        .await
        .expect("caller starts");
    let want: Vec<NodeId> = peers.iter().map(|p| p.node.id()).collect();
    bounded(
        "the caller links every peer",
        node.peers::<WorkClient>()
            .wait_until(|ids| want.iter().all(|w| ids.contains(w))),
    )
    .await;
    node
}

fn quick() -> Backoff {
    Backoff::new()
        .initial(Duration::from_millis(1))
        .max(Duration::from_millis(2))
}

#[tokio::test(start_paused = true)]
async fn an_idempotent_call_cut_off_by_a_crash_is_retried_on_another_peer() {
    let crashing = peer("crashing", 1, Mode::Crash, Vec::new()).await;
    let healthy = peer("healthy", 2, Mode::Answer, Vec::new()).await;
    let node = caller(&[&crashing, &healthy]).await;
    let policy = RetryPolicy::new()
        .attempts(3)
        .backoff(quick())
        .budget(RetryBudget::unlimited());
    let work = node
        .peers::<WorkClient>()
        .balanced(Strategy::RoundRobin)
        .retry(policy);
    // Round robin starts at the lowest id: the crashing peer.
    let (served_by, reply) = bounded(
        "fetch",
        work.call_peer(|w: WorkClient| async move { w.fetch().await }),
    )
    .await
    .expect("retried elsewhere");
    assert_eq!((served_by, reply.as_str()), (healthy.node.id(), "healthy"));
    assert_eq!(crashing.calls.load(Ordering::SeqCst), 1);
    assert_eq!(work.retry_stats().map(|s| s.retries), Some(1));

    // `apply` is not idempotent: the crash may have applied it, so no retry.
    bounded(
        "the crashing peer is back",
        node.peers::<WorkClient>()
            .wait_until(|ids| ids.contains(&crashing.node.id())),
    )
    .await;
    let before = healthy.calls.load(Ordering::SeqCst);
    let mut lost = None;
    for _ in 0..2 {
        // One of two calls starts at the crashing peer.
        let applied = bounded(
            "apply",
            work.call(|w: WorkClient| async move { w.apply().await }),
        )
        .await;
        if let Err(e) = applied {
            lost = Some(e);
            break;
        }
    }
    let lost = lost.expect("the call that met the crash failed");
    assert!(matches!(lost, CallError::ConnectionLost { .. }), "{lost}");
    assert!(healthy.calls.load(Ordering::SeqCst) <= before + 1);
}

#[tokio::test(start_paused = true)]
async fn retries_wait_their_backoff_and_stop_at_the_attempts() {
    let a = peer("a", 1, Mode::Unavailable, Vec::new()).await;
    let b = peer("b", 2, Mode::Unavailable, Vec::new()).await;
    let node = caller(&[&a, &b]).await;
    let backoff = Backoff::new()
        .initial(Duration::from_millis(200))
        .multiplier(1);
    let policy = RetryPolicy::new()
        .attempts(3)
        .backoff(backoff)
        .retry_rejects(&[503])
        .budget(RetryBudget::unlimited());
    let work = node
        .peers::<WorkClient>()
        .balanced(Strategy::RoundRobin)
        .retry(policy)
        .idempotent(true);
    let started = Instant::now();
    let err = bounded(
        "fetch",
        work.call(|w: WorkClient| async move { w.fetch().await }),
    )
    .await
    .expect_err("everyone is busy");
    let took = started.elapsed();
    assert!(
        matches!(&err, CallError::Rejected(r) if r.code() == 503),
        "{err}"
    );
    let attempts = a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst);
    assert_eq!(attempts, 3, "three attempts in all");
    assert!(
        a.calls.load(Ordering::SeqCst) >= 1 && b.calls.load(Ordering::SeqCst) >= 1,
        "retries go to the other peer"
    );
    // The first attempt at once, then two waits of the 200 ms backoff
    // jittered into [100 ms, 200 ms] (tokio's timer rounds a sleep up to the
    // next whole millisecond, so 199.6 ms sleeps 200), and the last failure
    // returned as soon as the third attempt's came back.
    let at = schedule(started, &[&a, &b]);
    assert_eq!(at[0], Duration::ZERO, "the first attempt waits for nothing");
    for (n, pair) in at.windows(2).enumerate() {
        let wait = pair[1] - pair[0];
        assert!(
            wait >= Duration::from_millis(100) && wait <= Duration::from_millis(200),
            "retry {n} waited {wait:?}; schedule {at:?}"
        );
    }
    assert_eq!(
        took, at[2],
        "the call ends at its last attempt; schedule {at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_that_would_end_past_the_deadline() {
    let a = peer("a", 1, Mode::Unavailable, Vec::new()).await;
    let b = peer("b", 2, Mode::Unavailable, Vec::new()).await;
    let node = caller(&[&a, &b]).await;
    let policy = RetryPolicy::new()
        .attempts(5)
        .backoff(Backoff::new().initial(Duration::from_secs(10)))
        .retry_rejects(&[503])
        .budget(RetryBudget::unlimited());
    let work = node
        .peers::<WorkClient>()
        .balanced(Strategy::RoundRobin)
        .retry(policy)
        .idempotent(true)
        .deadline(Duration::from_secs(2));
    let started = Instant::now();
    let err = bounded(
        "fetch",
        work.call(|w: WorkClient| async move { w.fetch().await }),
    )
    .await
    .expect_err("busy");
    assert!(
        matches!(&err, CallError::Rejected(r) if r.code() == 503),
        "{err}"
    );
    let attempts = a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst);
    assert_eq!(attempts, 1, "a 5 s wait would pass the 2 s deadline");
    // Refused at once: the call does not sit out its deadline either.
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_retry_budget_keeps_a_failing_service_from_seeing_more_than_its_share() {
    let a = peer("a", 1, Mode::Unavailable, Vec::new()).await;
    let b = peer("b", 2, Mode::Unavailable, Vec::new()).await;
    let node = caller(&[&a, &b]).await;
    let budget = RetryBudget::new(0.1, 0);
    let policy = RetryPolicy::new()
        .attempts(5)
        .backoff(quick())
        .retry_rejects(&[503])
        .budget(budget.clone());
    let work = node
        .peers::<WorkClient>()
        .balanced(Strategy::RoundRobin)
        .retry(policy)
        .idempotent(true);
    for _ in 0..100 {
        let err = bounded(
            "fetch",
            work.call(|w: WorkClient| async move { w.fetch().await }),
        )
        .await
        .expect_err("busy");
        assert!(
            matches!(&err, CallError::Rejected(r) if r.code() == 503),
            "{err}"
        );
    }
    let attempts = a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst);
    // Without a budget: 500 attempts. With 10 %: at most 110.
    assert!((100..=110).contains(&attempts), "{attempts} attempts");
    let stats = budget.stats();
    assert_eq!(stats.calls, 100);
    assert_eq!(u64::from(attempts), 100 + stats.retries);
    assert!(stats.refused > 0);
}

#[tokio::test(start_paused = true)]
async fn a_hedged_call_is_answered_by_the_second_peer_and_the_first_cancelled() {
    let slow = peer("slow", 1, Mode::Slow, Vec::new()).await;
    let fast = peer("fast", 2, Mode::Answer, Vec::new()).await;
    let node = caller(&[&slow, &fast]).await;
    let work = node
        .peers::<WorkClient>()
        .balanced(Strategy::RoundRobin)
        .hedge(Duration::from_millis(100));
    let started = Instant::now();
    let (who, reply) = bounded(
        "fetch",
        work.call_peer(|w: WorkClient| async move { w.fetch().await }),
    )
    .await
    .expect("the hedge answers");
    assert_eq!((who, reply.as_str()), (fast.node.id(), "fast"));
    assert_eq!(
        schedule(started, &[&slow]),
        [Duration::ZERO],
        "the first attempt went to the slow peer, at once"
    );
    assert_eq!(
        schedule(started, &[&fast]),
        [Duration::from_millis(100)],
        "the hedge went to the fast peer at the hedge delay"
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(100),
        "answered by the hedge, no wait for the slow peer"
    );
    until("the slow peer's call is cancelled", || {
        slow.cancelled.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(work.retry_stats().map(|s| s.retries), Some(1), "one hedge");

    // Without budget for it, no hedge goes: the call waits for its peer.
    let work = node
        .peers::<WorkClient>()
        .balanced(Strategy::RoundRobin)
        .retry(RetryPolicy::new().budget(RetryBudget::new(0.0, 0)))
        .hedge(Duration::from_millis(50))
        .deadline(Duration::from_millis(800));
    let before = fast.calls.load(Ordering::SeqCst);
    let mut to_slow = None;
    for _ in 0..2 {
        let started = Instant::now();
        let result = bounded(
            "fetch",
            work.call_peer(|w: WorkClient| async move { w.fetch().await }),
        )
        .await;
        if let Err(e) = result {
            to_slow = Some((e, started.elapsed()));
        }
    }
    let (e, waited) = to_slow.expect("the call that went to the slow peer timed out, unhedged");
    assert!(matches!(e, CallError::Timeout { .. }), "{e}");
    assert_eq!(
        waited,
        Duration::from_millis(800),
        "it waited out its deadline"
    );
    assert_eq!(
        fast.calls.load(Ordering::SeqCst),
        before + 1,
        "one call each, no hedge"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reconnecting_connection_retries_by_its_policy() {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    // The first two calls lose their connection; the third is answered.
    let server = Server::bind(inproc("reconnecting"))
        .serve(
            Router::new().unary("retry.Raw/get", move |ctx: CallContext, _b: Bytes| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        ctx.connection().abort();
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, Reject>(Bytes::from_static(b"ok"))
                }
            }),
        )
        .start()
        .await
        .expect("listens");
    let url = server.local_url().clone();
    let idempotent = || {
        CallOptions::new()
            .idempotent(true)
            .timeout(Duration::from_secs(10))
    };
    let endpoint = Endpoint::builder().build();

    let two = endpoint
        .reconnecting_with(
            &url,
            quick(),
            RetryPolicy::new()
                .attempts(2)
                .backoff(quick())
                .budget(RetryBudget::unlimited()),
        )
        .expect("url");
    let err = bounded(
        "two attempts",
        two.call("retry.Raw/get", Bytes::new(), idempotent()),
    )
    .await
    .expect_err("both cut off");
    assert!(matches!(err, CallError::ConnectionLost { .. }), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    two.close().await;

    calls.store(0, Ordering::SeqCst);
    let none = endpoint
        .reconnecting_with(
            &url,
            quick(),
            RetryPolicy::new()
                .attempts(5)
                .budget(RetryBudget::new(0.0, 0)),
        )
        .expect("url");
    let err = bounded(
        "no budget",
        none.call("retry.Raw/get", Bytes::new(), idempotent()),
    )
    .await
    .expect_err("no retry allowed");
    assert!(matches!(err, CallError::ConnectionLost { .. }), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    none.close().await;

    calls.store(0, Ordering::SeqCst);
    let three = endpoint
        .reconnecting_with(
            &url,
            quick(),
            RetryPolicy::new()
                .attempts(3)
                .backoff(quick())
                .budget(RetryBudget::unlimited()),
        )
        .expect("url");
    let reply = bounded(
        "three attempts",
        three.call("retry.Raw/get", Bytes::new(), idempotent()),
    )
    .await
    .expect("the third is answered");
    assert_eq!(&reply[..], b"ok");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    three.close().await;
}
