//! Messaging patterns over node peer sets: a pipeline that spreads work
//! fairly and redelivers a dead worker's items, publish/subscribe with block
//! and drop overflow, late subscribers, bus, survey, and balanced sends with
//! failover. Nodes find each other through static URL lists over `inproc://`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use plexus::discovery::Static;
use plexus::patterns::{
    Failover, Overflow, Pipeline, Publisher, Strategy, Subscriber, TopicClient,
};
use plexus::{node::NodeBuilder, Node};
use plexus::{server::IntoRouter, CallError, NodeId, Reject};
use plexus_tests::{bounded, until};

/// Work items for the pipeline tests.
#[plexus::service(package = "patterns")]
pub trait Jobs {
    /// Runs job `id`; replies with the id.
    async fn run(&self, id: u64) -> Result<u64, Reject>;
}

/// Jobs completed: (worker name, job id), in completion order.
type DoneLog = Arc<Mutex<Vec<(usize, u64)>>>;

/// What a worker does with a job.
#[derive(Clone)]
struct Worker {
    name: usize,
    /// Jobs completed, by worker name.
    done: DoneLog,
    started: Arc<AtomicUsize>,
    /// A worker that hangs on every job until it is killed.
    hangs: bool,
}

impl Jobs for Worker {
    async fn run(&self, id: u64) -> Result<u64, Reject> {
        self.started.fetch_add(1, Ordering::SeqCst);
        if self.hangs {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.done.lock().unwrap().push((self.name, id));
        Ok(id)
    }
}

/// A node listening on a fresh `inproc://` name: the patterns are node
/// logic, not sockets, and their timing tests run on tokio's paused clock.
fn builder(name: &str, peers: Vec<String>) -> NodeBuilder {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    Node::builder(name)
        .listen(format!(
            "inproc://patterns-{name}-{}-{n}",
            std::process::id()
        ))
        .group("patterns")
        .discovery(Static::new(peers))
        .reconcile_interval(Duration::from_millis(50))
}

async fn start(b: NodeBuilder) -> Node {
    bounded("node start", b.start()).await.expect("node starts")
}

/// A hub node using `C`, and `n` nodes serving `serve(i)` that list the hub.
async fn hub_and_spokes<R: IntoRouter>(
    uses: impl FnOnce(NodeBuilder) -> NodeBuilder,
    n: usize,
    serve: impl Fn(usize) -> R,
) -> (Node, Vec<Node>) {
    let hub = start(uses(builder("hub", Vec::new()))).await;
    let url = hub.local_urls()[0].to_string();
    let mut spokes = Vec::new();
    for i in 0..n {
        spokes.push(start(builder(&format!("spoke-{i}"), vec![url.clone()]).serve(serve(i))).await);
    }
    (hub, spokes)
}

fn workers(n: usize, hanging: Option<usize>) -> (Vec<Worker>, DoneLog) {
    let done = Arc::new(Mutex::new(Vec::new()));
    let list = (0..n)
        .map(|name| Worker {
            name,
            done: done.clone(),
            started: Arc::new(AtomicUsize::new(0)),
            hangs: Some(name) == hanging,
        })
        .collect();
    (list, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_spreads_work_fairly_over_four_workers() {
    let (list, done) = workers(4, None);
    let (hub, spokes) = hub_and_spokes(
        |b| b.uses::<JobsClient>(),
        4,
        |i| JobsHandler::new(list[i].clone()),
    )
    .await;
    let set = hub.peers::<JobsClient>();
    bounded("4 workers link", set.wait_until(|ids| ids.len() == 4)).await;
    let names: BTreeMap<NodeId, usize> = spokes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id(), i))
        .collect();

    let pipeline = Pipeline::new(set).per_worker(2);
    const JOBS: u64 = 400;
    let pushes = (0..JOBS).map(|id| {
        let pipeline = pipeline.clone();
        async move {
            pipeline
                .push(move |w: JobsClient| async move { w.run(id).await })
                .await
        }
    });
    let results = bounded("400 jobs", futures_util::future::join_all(pushes)).await;

    let mut per_worker = [0u64; 4];
    for (id, result) in results.into_iter().enumerate() {
        let delivered = result.expect("every job is acked");
        assert_eq!(delivered.value, id as u64);
        assert_eq!(delivered.attempts, 1, "no redelivery without failures");
        per_worker[names[&delivered.worker]] += 1;
    }
    eprintln!("per worker: {per_worker:?}");
    // Stated tolerance: each of 4 equal workers gets its fair 100 ± 20%.
    for (worker, count) in per_worker.iter().enumerate() {
        assert!(
            (80..=120).contains(count),
            "worker {worker} got {count} of {JOBS} jobs: {per_worker:?}"
        );
    }
    assert_eq!(done.lock().unwrap().len(), JOBS as usize);
    hub.stop().await.expect("hub stops");
    for s in spokes {
        s.stop().await.expect("worker stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_jobs_are_redelivered_and_each_completes_exactly_once() {
    // Worker 3 hangs on whatever it gets, then dies with it.
    let (list, done) = workers(4, Some(3));
    let doomed_started = list[3].started.clone();
    let (hub, mut spokes) = hub_and_spokes(
        |b| b.uses::<JobsClient>(),
        4,
        |i| JobsHandler::new(list[i].clone()),
    )
    .await;
    let set = hub.peers::<JobsClient>();
    bounded("4 workers link", set.wait_until(|ids| ids.len() == 4)).await;
    let doomed = spokes.pop().expect("four spokes");
    let doomed_id = doomed.id();

    let pipeline = Pipeline::new(set).per_worker(3);
    const JOBS: u64 = 120;
    let pushes: Vec<_> = (0..JOBS)
        .map(|id| {
            let pipeline = pipeline.clone();
            tokio::spawn(async move {
                pipeline
                    .push(move |w: JobsClient| async move { w.run(id).await })
                    .await
            })
        })
        .collect();
    until("the doomed worker holds jobs", || {
        doomed_started.load(Ordering::SeqCst) >= 3
    })
    .await;
    drop(doomed); // a crash: its connections are aborted mid-job

    let mut redelivered = 0;
    let mut acked_by: BTreeMap<u64, NodeId> = BTreeMap::new();
    for (id, push) in pushes.into_iter().enumerate() {
        let delivered = bounded("job acked", push)
            .await
            .expect("push task")
            .expect("every job is acked despite the dead worker");
        assert_ne!(delivered.worker, doomed_id, "the dead worker acked nothing");
        if delivered.attempts > 1 {
            redelivered += 1;
        }
        acked_by.insert(id as u64, delivered.worker);
    }
    assert_eq!(
        redelivered, 3,
        "exactly the dead worker's jobs were redelivered"
    );
    // Every job ran to completion exactly once, on a healthy worker.
    let done = done.lock().unwrap().clone();
    let ids: Vec<u64> = done.iter().map(|(_, id)| *id).collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), JOBS as usize, "no job ran twice: {ids:?}");
    assert_eq!(unique, (0..JOBS).collect());
    assert!(done.iter().all(|(worker, _)| *worker != 3));
    hub.stop().await.expect("hub stops");
    for s in spokes {
        s.stop().await.expect("worker stops");
    }
}

/// A worker whose job 0 waits for a gate; every other job is quick.
#[derive(Clone)]
struct Gated(Arc<tokio::sync::Semaphore>);

impl Jobs for Gated {
    async fn run(&self, id: u64) -> Result<u64, Reject> {
        if id == 0 {
            let _open = self.0.acquire().await;
        }
        Ok(id)
    }
}

#[tokio::test(start_paused = true)]
async fn an_item_waiting_for_redelivery_does_not_hold_up_other_pushes() {
    // Two workers, one item each at a time. Worker X holds a gated job; an
    // item fails at worker Y and may only go to X now. A new push must still
    // get Y at once rather than wait behind that item.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (hub, spokes) = hub_and_spokes(
        |b| b.uses::<JobsClient>(),
        2,
        |_| JobsHandler::new(Gated(gate.clone())),
    )
    .await;
    let set = hub.peers::<JobsClient>();
    bounded("2 workers link", set.wait_until(|ids| ids.len() == 2)).await;
    let pipeline = Pipeline::new(set).per_worker(1);

    let gated = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            pipeline
                .push(|w: JobsClient| async move { w.run(0).await })
                .await
        })
    };
    let ids: Vec<NodeId> = spokes.iter().map(Node::id).collect();
    until("the gated job is in flight", || {
        ids.iter().map(|id| pipeline.in_flight(*id)).sum::<usize>() == 1
    })
    .await;
    let x = *ids
        .iter()
        .find(|id| pipeline.in_flight(**id) == 1)
        .expect("busy");
    let y = *ids.iter().find(|id| **id != x).expect("two workers");

    // Fails at Y the first time (as a worker that was closing would).
    let tries = Arc::new(AtomicUsize::new(0));
    let bounced = {
        let (pipeline, tries) = (pipeline.clone(), tries.clone());
        tokio::spawn(async move {
            pipeline
                .push(move |w: JobsClient| {
                    let first = tries.fetch_add(1, Ordering::SeqCst) == 0;
                    async move {
                        if first {
                            return Err(CallError::Closing {
                                op: "patterns.Jobs/run".into(),
                                peer: "y".into(),
                            });
                        }
                        w.run(1).await
                    }
                })
                .await
        })
    };
    until("the bounced item waits for X", || {
        tries.load(Ordering::SeqCst) == 1 && pipeline.in_flight(y) == 0
    })
    .await;
    // Let it settle into waiting (it re-enters at once, in the same poll).
    tokio::time::sleep(Duration::from_millis(20)).await;

    let quick = bounded(
        "a new push while Y is free",
        pipeline.push(|w: JobsClient| async move { w.run(2).await }),
    )
    .await
    .expect("acked");
    assert_eq!((quick.worker, quick.attempts, quick.value), (y, 1, 2));
    assert!(!bounced.is_finished(), "it may only go to X, which is busy");

    gate.add_permits(1);
    let first = bounded("gated job", gated)
        .await
        .expect("task")
        .expect("acked");
    assert_eq!((first.worker, first.value), (x, 0));
    let second = bounded("bounced job", bounced)
        .await
        .expect("task")
        .expect("acked");
    assert_eq!((second.worker, second.attempts, second.value), (x, 2, 1));
    hub.stop().await.expect("hub stops");
    for s in spokes {
        s.stop().await.expect("worker stops");
    }
}

/// A sensor reading.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    seq: u64,
    pad: String,
}

plexus::topic! {
    /// Readings for the tests.
    pub struct Telemetry in "patterns" => Reading;
}

fn reading(seq: u64) -> Reading {
    Reading {
        seq,
        pad: String::new(),
    }
}

/// A publishing node and a node that subscribes to it.
async fn publisher_and_subscriber_nodes() -> (Node, Publisher<Telemetry>, Node) {
    let publisher = Publisher::<Telemetry>::new();
    let pub_node =
        start(builder("publisher", Vec::new()).serve_as(publisher.clone(), "publisher")).await;
    let url = pub_node.local_urls()[0].to_string();
    let sub_node = start(builder("subscriber", vec![url]).uses_as::<Telemetry>("subscriber")).await;
    (pub_node, publisher, sub_node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_gets_only_later_events_matching_its_filters() {
    let (pub_node, publisher, sub_node) = publisher_and_subscriber_nodes().await;
    for seq in 0..10 {
        let reached = publisher
            .publish("site-a/hall", &reading(seq))
            .await
            .expect("publish");
        assert_eq!(reached, 0, "nobody subscribed yet");
    }
    let sub = Subscriber::<Telemetry>::builder()
        .filter("site-a/")
        .follow(sub_node.peers::<TopicClient<Telemetry>>());
    bounded("subscribed", sub.wait_publishers(1)).await;
    assert_eq!(sub.publishers(), vec![pub_node.id()]);
    for seq in 10..20 {
        assert_eq!(
            publisher
                .publish("site-a/hall", &reading(seq))
                .await
                .expect("publish"),
            1
        );
        assert_eq!(
            publisher
                .publish("site-b/hall", &reading(seq))
                .await
                .expect("publish"),
            0
        );
    }
    for seq in 10..20 {
        let got = bounded("event", sub.recv()).await.expect("open");
        assert_eq!((got.topic.as_str(), got.event.seq), ("site-a/hall", seq));
        assert_eq!(got.publisher, pub_node.id());
    }
    // A marker published last proves nothing else was on its way.
    publisher
        .publish("site-a/end", &reading(99))
        .await
        .expect("publish");
    assert_eq!(
        bounded("marker", sub.recv()).await.map(|r| r.event.seq),
        Some(99)
    );
    assert!(sub.try_recv().is_none());
    assert_eq!(sub.dropped(), 0);

    // Leaving: the publisher sees the subscription go.
    drop(sub);
    until("subscription removed", || publisher.subscribers() == 0).await;
    sub_node.stop().await.expect("stops");
    pub_node.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_filters_pick_topics_across_sites() {
    let (pub_node, publisher, sub_node) = publisher_and_subscriber_nodes().await;
    let sub = Subscriber::<Telemetry>::builder()
        .filter("*/hall")
        .filter("site-c/")
        .follow(sub_node.peers::<TopicClient<Telemetry>>());
    bounded("subscribed", sub.wait_publishers(1)).await;
    let topics = [
        ("site-a/hall", true),
        ("site-a/room", false),
        ("site-b/hall/t2", true),
        ("site-b/x/hall", false),
        ("site-c/room", true),
    ];
    for (seq, (topic, wanted)) in topics.iter().enumerate() {
        let reached = publisher
            .publish(topic, &reading(seq as u64))
            .await
            .expect("publish");
        assert_eq!(reached, usize::from(*wanted), "{topic}");
    }
    for (seq, (topic, _)) in topics.iter().enumerate().filter(|(_, (_, w))| *w) {
        let got = bounded("event", sub.recv()).await.expect("open");
        assert_eq!((got.topic.as_str(), got.event.seq), (*topic, seq as u64));
    }
    drop(sub);
    sub_node.stop().await.expect("stops");
    pub_node.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_in_drop_mode_counts_exact_drops_and_never_slows_the_publisher() {
    for overflow in [Overflow::DropNewest, Overflow::DropOldest] {
        let (pub_node, publisher, sub_node) = publisher_and_subscriber_nodes().await;
        let sub = Subscriber::<Telemetry>::builder()
            .overflow(overflow)
            .capacity(16)
            .follow(sub_node.peers::<TopicClient<Telemetry>>());
        bounded("subscribed", sub.wait_publishers(1)).await;

        // The subscriber reads nothing while 2,000 events of 4 KiB go out:
        // 8 MiB, far more than its queue, the stream window (2 MiB) and the
        // connection's write queue (1 MiB) hold together, so only dropping
        // lets this finish.
        const EVENTS: u64 = 2_000;
        bounded("publishing is never held up", async {
            for seq in 0..EVENTS {
                let event = Reading {
                    seq,
                    pad: "x".repeat(4096),
                };
                assert_eq!(publisher.publish("t", &event).await.expect("publish"), 1);
            }
        })
        .await;
        until("every event arrived", || sub.stats().arrived == EVENTS).await;
        let stats = sub.stats();
        assert_eq!(stats.queued, 16);
        assert_eq!(stats.dropped, EVENTS - 16, "{overflow:?}: {stats:?}");
        let mut kept = Vec::new();
        while let Some(r) = sub.try_recv() {
            kept.push(r.event.seq);
        }
        let expected: Vec<u64> = match overflow {
            Overflow::DropNewest => (0..16).collect(),
            _ => (EVENTS - 16..EVENTS).collect(),
        };
        assert_eq!(kept, expected, "{overflow:?} keeps the right events");
        drop(sub);
        sub_node.stop().await.expect("stops");
        pub_node.stop().await.expect("stops");
    }
}

#[tokio::test(start_paused = true)]
async fn subscriber_in_block_mode_backpressures_the_publisher() {
    let (pub_node, publisher, sub_node) = publisher_and_subscriber_nodes().await;
    let sub = Subscriber::<Telemetry>::builder()
        .overflow(Overflow::Block)
        .capacity(8)
        .follow(sub_node.peers::<TopicClient<Telemetry>>());
    bounded("subscribed", sub.wait_publishers(1)).await;

    const EVENTS: u64 = 5_000;
    let progress = Arc::new(AtomicUsize::new(0));
    let publishing = tokio::spawn({
        let (publisher, progress) = (publisher.clone(), progress.clone());
        async move {
            for seq in 0..EVENTS {
                let event = Reading {
                    seq,
                    pad: "x".repeat(4096),
                };
                publisher.publish("t", &event).await.expect("publish");
                progress.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // Nobody reads: the publisher stalls once the queue, the stream window
    // (2 MiB: 512 events) and the write queue (1 MiB: 256 events) are full —
    // well short of the 20 MiB it wants to send.
    let mut last = usize::MAX;
    bounded("the publisher stalls", async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = progress.load(Ordering::SeqCst);
            if now == last {
                break;
            }
            last = now;
        }
    })
    .await;
    let stalled = progress.load(Ordering::SeqCst);
    assert!(
        stalled < 2_000,
        "publisher ran ahead to {stalled} of {EVENTS}"
    );
    assert_eq!(sub.dropped(), 0);

    // Reading releases it; every event arrives, in order, none dropped.
    for seq in 0..EVENTS {
        let got = bounded("event", sub.recv()).await.expect("open");
        assert_eq!(got.event.seq, seq);
    }
    bounded("publisher finishes", publishing)
        .await
        .expect("no panic");
    assert_eq!(sub.stats().dropped, 0);
    drop(sub);
    sub_node.stop().await.expect("stops");
    pub_node.stop().await.expect("stops");
}

/// Says who answered, at a chosen pace.
#[plexus::service(package = "patterns")]
pub trait Poll {
    /// The answer.
    async fn ask(&self, question: String) -> Result<String, Reject>;
}

struct Pollee {
    name: String,
    delay: Duration,
}

impl Poll for Pollee {
    async fn ask(&self, question: String) -> Result<String, Reject> {
        tokio::time::sleep(self.delay).await;
        Ok(format!("{} says yes to {question}", self.name))
    }
}

#[tokio::test(start_paused = true)]
async fn survey_returns_at_its_deadline_with_the_answers_that_came() {
    let (hub, spokes) = hub_and_spokes(
        |b| b.uses::<PollClient>(),
        4,
        |i| {
            PollHandler::new(Pollee {
                name: format!("p{i}"),
                delay: if i == 3 {
                    Duration::from_secs(5)
                } else {
                    Duration::ZERO
                },
            })
        },
    )
    .await;
    let set = hub.peers::<PollClient>();
    bounded("4 link", set.wait_until(|ids| ids.len() == 4)).await;
    let slow = spokes[3].id();

    let deadline = Duration::from_millis(400);
    let began = tokio::time::Instant::now();
    let mut survey = hub.survey(deadline, |p: PollClient| async move {
        p.ask("lunch?".into()).await
    });
    let mut answers = Vec::new();
    while let Some((peer, answer)) = bounded("survey", survey.next()).await {
        answers.push((peer, answer.expect("answer")));
    }
    let took = began.elapsed();
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(answers.iter().all(|(peer, _)| *peer != slow));
    assert_eq!(survey.missing(), vec![slow]);
    assert!(took >= deadline, "ended early: {took:?}");
    assert!(
        took <= deadline + Duration::from_millis(1),
        "ended at its deadline, not the slow peer's pace: {took:?}"
    );
    // Over means over: the late answer never shows up.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(survey.next().await.is_none());
    assert!(survey.is_over());
    hub.stop().await.expect("stops");
    for s in spokes {
        s.stop().await.expect("stops");
    }
}

/// A symmetric bus: every node serves and calls it.
#[plexus::service(package = "patterns")]
pub trait Bus {
    /// A note from `from`, number `seq`.
    #[oneway]
    async fn note(&self, from: u32, seq: u32);
}

#[derive(Clone)]
struct Inbox(Arc<Mutex<Vec<(u32, u32)>>>);

impl Bus for Inbox {
    async fn note(&self, from: u32, seq: u32) {
        self.0.lock().unwrap().push((from, seq));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_message_reaches_every_peer_once() {
    const NODES: usize = 4;
    const NOTES: u32 = 10;
    let mut nodes: Vec<Node> = Vec::new();
    let mut inboxes = Vec::new();
    for i in 0..NODES {
        let inbox = Inbox(Arc::default());
        let urls = nodes
            .iter()
            .map(|n| n.local_urls()[0].to_string())
            .collect();
        nodes.push(
            start(builder(&format!("bus-{i}"), urls).serve(BusHandler::new(inbox.clone()))).await,
        );
        inboxes.push(inbox);
    }
    for n in &nodes {
        bounded(
            "mesh",
            n.peers::<BusClient>()
                .wait_until(|ids| ids.len() == NODES - 1),
        )
        .await;
    }
    for (i, n) in nodes.iter().enumerate() {
        let bus = n.peers::<BusClient>();
        for seq in 0..NOTES {
            // Two spellings of the same thing: a closure per peer, or the
            // generated fan-out (the note encoded once).
            let sent = if seq % 2 == 0 {
                bus.send_all(|b: BusClient| async move { b.note(i as u32, seq).await })
                    .await
            } else {
                n.fanout::<BusClient>(Duration::from_secs(5))
                    .note(i as u32, seq)
                    .await
            };
            assert_eq!(sent.len(), NODES - 1);
            assert!(sent.iter().all(|(_, r)| r.is_ok()), "{sent:?}");
        }
    }
    let expected = (NODES - 1) * NOTES as usize;
    for (i, inbox) in inboxes.iter().enumerate() {
        until("notes arrive", || inbox.0.lock().unwrap().len() >= expected).await;
        let got = inbox.0.lock().unwrap().clone();
        let unique: BTreeSet<(u32, u32)> = got.iter().copied().collect();
        assert_eq!(got.len(), expected, "node {i} got a note twice");
        assert_eq!(unique.len(), expected);
        assert!(
            got.iter().all(|(from, _)| *from as usize != i),
            "no note to oneself"
        );
    }
    for n in nodes {
        n.stop().await.expect("stops");
    }
}

/// Names the answering node.
#[plexus::service(package = "patterns")]
pub trait Whoami {
    /// Its name; hangs forever if it is the hanging one.
    async fn name(&self) -> Result<u32, Reject>;
}

struct Named {
    name: u32,
    hang: bool,
    calls: Arc<AtomicUsize>,
}

impl Whoami for Named {
    async fn name(&self) -> Result<u32, Reject> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang {
            std::future::pending::<()>().await;
        }
        Ok(self.name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_sends_rotate_fairly_and_fail_over_from_a_dead_peer() {
    let hang_calls = Arc::new(AtomicUsize::new(0));
    let (hub, mut spokes) = hub_and_spokes(
        |b| b.uses::<WhoamiClient>(),
        4,
        |i| {
            WhoamiHandler::new(Named {
                name: i as u32,
                hang: false,
                calls: Arc::default(),
            })
        },
    )
    .await;
    let set = hub.peers::<WhoamiClient>();
    bounded("4 link", set.wait_until(|ids| ids.len() == 4)).await;

    // Round robin: 400 calls in turn give each member exactly 100.
    let rr = set.balanced(Strategy::RoundRobin);
    let mut counts = [0usize; 4];
    for _ in 0..400 {
        let name = bounded(
            "call",
            rr.call(|w: WhoamiClient| async move { w.name().await }),
        )
        .await
        .expect("answer");
        counts[name as usize] += 1;
    }
    assert_eq!(counts, [100; 4]);

    // A chosen peer: to exactly that one.
    let third = spokes[2].id();
    let chosen = set.get(third).expect("member");
    assert_eq!(
        bounded("to chosen", chosen.name()).await.expect("answer"),
        2
    );

    // A fifth peer hangs on its call and then dies: with at-least-once
    // failover the call moves to another member and succeeds there.
    let url = hub.local_urls()[0].to_string();
    let hanging = start(
        builder("hanging", vec![url]).serve(WhoamiHandler::new(Named {
            name: 99,
            hang: true,
            calls: hang_calls.clone(),
        })),
    )
    .await;
    let hanging_id = hanging.id();
    bounded("5 link", set.wait_until(|ids| ids.len() == 5)).await;
    let lb = set
        .balanced(Strategy::LeastInFlight)
        .failover(Failover::AtLeastOnce);
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let lb = lb.clone();
            tokio::spawn(async move {
                lb.call_peer(|w: WhoamiClient| async move { w.name().await })
                    .await
            })
        })
        .collect();
    until("the hanging peer holds a call", || {
        hang_calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    drop(hanging);
    for call in calls {
        let (peer, name) = bounded("call", call).await.expect("task").expect("answer");
        assert_ne!(peer, hanging_id);
        assert!(name < 4);
    }

    // With the default (safe) failover a lost call is not retried: running
    // it twice could be wrong. An empty set says so with NoPeers.
    let empty = hub.peers::<PollClient>().balanced(Strategy::RoundRobin);
    let err = bounded(
        "no peers",
        empty.call(|p: PollClient| async move { p.ask("?".into()).await }),
    )
    .await
    .expect_err("nobody serves Poll");
    assert!(matches!(err, CallError::NoPeers { .. }), "{err}");
    hub.stop().await.expect("stops");
    while let Some(s) = spokes.pop() {
        s.stop().await.expect("stops");
    }
}

#[allow(dead_code, missing_docs, clippy::all)]
mod inventory {
    // Declares the topic `StockChanges` from `(plexus.topic)` in the schema.
    include!(concat!(env!("OUT_DIR"), "/inventory.rs"));
}

use inventory::StockChanges;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_topic_over_a_plain_connection() {
    use plexus::{contract::Contract, Connection, Server};

    assert_eq!(StockChanges::DESCRIPTOR.codec, "protobuf");
    assert_eq!(
        StockChanges::DESCRIPTOR.methods[0].op,
        "inventory.StockChanges/subscribe"
    );
    let publisher = Publisher::<StockChanges>::new();
    let server = bounded(
        "bind",
        Server::bind("tcp://127.0.0.1:0")
            .serve(publisher.clone())
            .start(),
    )
    .await
    .expect("server");
    let conn = bounded("connect", Connection::connect(server.local_url()))
        .await
        .expect("connect");
    let sub = Subscriber::<StockChanges>::builder()
        .filter("bolts/")
        .connect(conn.clone());
    bounded("subscribed", sub.wait_publishers(1)).await;
    for (sku, delta) in [("bolts/m4", 5), ("nuts/m4", 1), ("bolts/m6", -2)] {
        let change = inventory::Adjustment {
            sku: sku.into(),
            delta,
        };
        publisher.publish(sku, &change).await.expect("publish");
    }
    let first = bounded("event", sub.recv()).await.expect("open");
    let second = bounded("event", sub.recv()).await.expect("open");
    assert_eq!(
        (first.event.sku.as_str(), first.event.delta),
        ("bolts/m4", 5)
    );
    assert_eq!(
        (second.topic.as_str(), second.event.delta),
        ("bolts/m6", -2)
    );

    // Closing the publisher ends the subscription cleanly.
    publisher.close();
    bounded("subscription ends", async {
        while !sub.publishers().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(matches!(
        publisher
            .publish("bolts/x", &inventory::Adjustment::default())
            .await,
        Err(plexus::patterns::PublishError::Closed)
    ));
    conn.close().await;
    server.shutdown().await;
}

/// Without roles a node may both publish and subscribe one topic: every
/// node serves a publisher and follows the others, so each event reaches
/// every other node once, in order per publisher, and never its own
/// publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_publish_and_subscribe_one_topic_hear_every_other_node_once() {
    const NODES: usize = 3;
    const EACH: u64 = 20;
    let mut urls = Vec::new();
    let mut nodes = Vec::new();
    let mut publishers = Vec::new();
    for i in 0..NODES {
        let publisher = Publisher::<Telemetry>::new();
        let node =
            start(builder(&format!("peer-{i}"), urls.clone()).serve(publisher.clone())).await;
        urls.push(node.local_urls()[0].to_string());
        nodes.push(node);
        publishers.push(publisher);
    }
    let subs: Vec<Subscriber<Telemetry>> = nodes
        .iter()
        .map(|n| Subscriber::<Telemetry>::builder().follow(n.peers::<TopicClient<Telemetry>>()))
        .collect();
    for sub in &subs {
        bounded("subscribed to the others", sub.wait_publishers(NODES - 1)).await;
    }
    for (i, publisher) in publishers.iter().enumerate() {
        for seq in 0..EACH {
            let reached = publisher
                .publish(&format!("peer-{i}/x"), &reading(seq))
                .await
                .expect("publish");
            assert_eq!(reached, NODES - 1, "every other node subscribed");
        }
    }
    for (i, sub) in subs.iter().enumerate() {
        let mut next: BTreeMap<NodeId, u64> = BTreeMap::new();
        for _ in 0..(NODES as u64 - 1) * EACH {
            let got = bounded("event", sub.recv()).await.expect("open");
            assert_ne!(got.publisher, nodes[i].id(), "a node heard itself");
            let want = next.entry(got.publisher).or_insert(0);
            assert_eq!(
                got.event.seq, *want,
                "in order per publisher, no duplicates"
            );
            *want += 1;
        }
        assert_eq!(next.len(), NODES - 1);
        assert!(next.values().all(|n| *n == EACH));
        assert!(sub.try_recv().is_none(), "nothing more");
        assert_eq!(sub.dropped(), 0);
    }
    drop(subs);
    for n in nodes {
        n.stop().await.expect("stops");
    }
}
