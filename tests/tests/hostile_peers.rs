//! Careless and hostile peers against the limits a connection keeps: the
//! memory budget, calls served at once, interned names, listener limits,
//! dial timeouts. Each test plays one of the attacks seen in the hardening
//! issue, asserts what the server holds while it runs and how the attacker
//! is held back or cut off, and that a well-behaved client is served
//! throughout.
//!
//! The tests measure this process's live heap (a counting allocator, below)
//! and resident memory, so they run one at a time (a shared lock) and this
//! file holds nothing else.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use plexus::wire::frame::Frame;
use plexus::wire::handshake::RefusalCode;
use plexus::wire::SystemCode;
use plexus::{
    events::Event, Bytes, CallError, CallOptions, CloseReason, ConnectError, Connection,
    ConnectionConfig, Endpoint, Reject, Router, Server,
};
use plexus_tests::raw::{self, RawPeer};
use plexus_tests::{bounded, until, RssPeak, TestPki};
use tokio::io::AsyncWriteExt;

const ECHO: &str = "test.Echo/echo";
const SLOW: &str = "test.Echo/slow";
const MIB: usize = 1024 * 1024;
/// The bound on what one peer may make the server hold, checked on
/// the live heap of the whole process (server and clients together):
/// resident memory also counts what the allocator keeps after a free, which
/// moved by ±20 MiB with scheduling and failed this bound under load with
/// the heap at half of it.
const HEAP_BOUND: usize = 64 * MIB;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Counts the bytes this process has allocated and not freed, and the most
/// it has held at once since [`HeapPeak::start`]. Unlike resident memory
/// this is not moved by what the allocator keeps after a free (glibc's
/// per-thread arenas keep freed 4 MiB bodies, and how much depends on which
/// thread freed what), so a bound on it holds under any scheduling.
struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters are plain atomics and never allocate.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let ptr = std::alloc::System.alloc(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let ptr = std::alloc::System.alloc_zeroed(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let moved = std::alloc::System.realloc(ptr, layout, new);
        if !moved.is_null() {
            // Counted as the new block arriving before the old one leaves:
            // a growing buffer briefly holds both.
            grew(new);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        moved
    }
}

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The most heap this process held at once from `start` on, above what it
/// held at `start`.
struct HeapPeak {
    before: usize,
}

impl HeapPeak {
    fn start() -> HeapPeak {
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        HeapPeak { before }
    }

    fn grown(&self) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(self.before)
    }
}

fn echo() -> Router {
    Router::new().unary(
        ECHO,
        |_ctx, body: Bytes| async move { Ok::<_, Reject>(body) },
    )
}

async fn server(config: ConnectionConfig, router: Router) -> Server {
    Server::bind("tcp://127.0.0.1:0")
        .config(config)
        .serve(router)
        .start()
        .await
        .expect("server")
}

fn addr(server: &Server) -> String {
    server
        .local_url()
        .socket_addr()
        .expect("tcp address")
        .to_string()
}

/// A well-behaved client calling the echo every 20 ms until stopped;
/// returns how many calls it made, failing the test on any error.
fn steady_client(
    url: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<usize, CallError>> {
    tokio::spawn(async move {
        let conn = Connection::connect(url.as_str()).await.expect("connect");
        let mut calls = 0;
        while !stop.load(Ordering::Relaxed) {
            let opts = CallOptions::new().timeout(Duration::from_secs(10));
            let reply = conn.call(ECHO, Bytes::from_static(b"ok"), opts).await?;
            assert_eq!(&reply[..], b"ok");
            calls += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(calls)
    })
}

/// Waits for the server to report a connection closed for `matches`.
async fn disconnect(
    events: &mut plexus::events::Events,
    matches: impl Fn(&CloseReason) -> bool,
) -> CloseReason {
    bounded("the attacker is cut off", async {
        loop {
            match events.next().await {
                Some(Event::Disconnected { reason, .. }) if matches(&reason) => return reason,
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_its_answers_is_held_back_then_cut_off() {
    let _serial = SERIAL.lock().await;
    for body_size in [64 * 1024, 4 * 1024] {
        let stall = Duration::from_secs(2);
        let server = server(ConnectionConfig::new().stall_timeout(stall), echo()).await;
        let mut events = server.endpoint().events();
        let rss = RssPeak::start();
        let before = rss.peak();
        let heap = HeapPeak::start();

        // Pipelines 400 MiB of echo calls and never reads a byte back.
        let mut peer = RawPeer::connect(&addr(&server)).await;
        let body = Bytes::from(vec![7u8; body_size]);
        let calls = 400 * MIB / body_size;
        let attack = tokio::spawn(async move {
            let mut sent = 0;
            let batch = (MIB / body_size).max(1);
            while sent < calls {
                let frames: Vec<Frame> = (sent..(sent + batch).min(calls))
                    .map(|i| {
                        let name = (i == 0).then_some(ECHO);
                        raw::call(2 * i as u32 + 1, 0, name, body.clone())
                    })
                    .collect();
                if peer.send(&frames).await.is_err() {
                    break;
                }
                sent += frames.len();
            }
            sent
        });

        let stop = Arc::new(AtomicBool::new(false));
        let good = steady_client(server.local_url().to_string(), stop.clone());
        let reason = disconnect(&mut events, |r| {
            matches!(r, CloseReason::PeerNotReading { .. })
        })
        .await;
        let sent = bounded("the attacker's writes fail", attack)
            .await
            .expect("no panic");
        stop.store(true, Ordering::Relaxed);
        let served = bounded("the good client", good)
            .await
            .expect("no panic")
            .expect("every call of the good client succeeded");
        let grown = rss.peak().saturating_sub(before);
        let heap = heap.grown();
        println!(
            "{body_size} B answers: {sent} of {calls} calls written before the cut-off ({reason}); \
             heap peaked {:.1} MiB above its start, RSS grew {:.1} MiB; the good client made \
             {served} calls meanwhile",
            heap as f64 / MIB as f64,
            grown as f64 / MIB as f64
        );
        assert!(sent < calls, "the server read everything the attacker sent");
        assert!(
            heap < HEAP_BOUND,
            "the heap grew {heap} bytes with {body_size} B answers"
        );
        assert!(served > 0);
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_calls_to_a_slow_handler_are_held_within_the_budget() {
    let _serial = SERIAL.lock().await;
    let slow = Router::new().unary(SLOW, |_ctx, body: Bytes| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, Reject>(Bytes::from(body.len().to_string()))
    });
    let server = server(ConnectionConfig::new(), echo().add(slow)).await;
    let rss = RssPeak::start();
    let before = rss.peak();
    let heap = HeapPeak::start();

    let conn = Connection::connect(server.local_url())
        .await
        .expect("connect");
    // One 4 MiB buffer shared by every call, so the client holds little.
    let body = Bytes::from(vec![1u8; 4 * MIB]);
    let stop = Arc::new(AtomicBool::new(false));
    let good = steady_client(server.local_url().to_string(), stop.clone());
    let held = Arc::new(AtomicUsize::new(0));
    let watch = tokio::spawn({
        let (server_conns, held) = (server.endpoint().clone(), held.clone());
        async move {
            loop {
                for c in server_conns.connections() {
                    held.fetch_max(c.stats().budget_used, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let calls = (0..256).map(|_| {
        let (conn, body) = (conn.clone(), body.clone());
        async move {
            let opts = CallOptions::new().timeout(Duration::from_secs(120));
            conn.call(SLOW, body, opts).await
        }
    });
    let replies = bounded("256 calls", futures_util::future::join_all(calls)).await;
    watch.abort();
    stop.store(true, Ordering::Relaxed);
    for r in replies {
        assert_eq!(r.expect("held back, never refused"), Bytes::from("4194304"));
    }
    let served = bounded("the good client", good)
        .await
        .expect("no panic")
        .expect("every call of the good client succeeded");
    let grown = rss.peak().saturating_sub(before);
    let heap = heap.grown();
    let held = held.load(Ordering::Relaxed);
    println!(
        "256 × 4 MiB to a slow handler: the server held at most {:.1} MiB for the caller, \
         heap peaked {:.1} MiB above its start, RSS grew {:.1} MiB; the good client made \
         {served} calls meanwhile",
        held as f64 / MIB as f64,
        heap as f64 / MIB as f64,
        grown as f64 / MIB as f64
    );
    // The budget (16 MiB) plus the batch read after it filled: one frame.
    assert!(held <= 16 * MIB + 5 * MIB, "held {held} bytes");
    assert!(heap < HEAP_BOUND, "the heap grew {heap} bytes");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_announced_limit_are_refused_and_a_plexus_caller_queues_instead() {
    let _serial = SERIAL.lock().await;
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let held = {
        let (open, most, release) = (open.clone(), most.clone(), release.clone());
        Router::new().unary(SLOW, move |_ctx, _body: Bytes| {
            let (open, most, release) = (open.clone(), most.clone(), release.clone());
            async move {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let _ = release.acquire().await.map(|p| p.forget());
                open.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Reject>(Bytes::new())
            }
        })
    };
    let server = server(ConnectionConfig::new().max_calls(4), echo().add(held)).await;

    // A raw peer sees the limit in the welcome, ignores it, and is refused
    // for the calls beyond it, with a code that says "retry later".
    let mut peer = RawPeer::connect(&addr(&server)).await;
    assert_eq!(peer.welcome.max_calls, 4);
    let frames: Vec<Frame> = (0..6u32)
        .map(|i| raw::call(2 * i + 1, 0, (i == 0).then_some(SLOW), Bytes::new()))
        .collect();
    peer.send(&frames).await.expect("send");
    let refused = peer.frames(2).await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    for f in &refused {
        assert!(
            matches!(f, Frame::Reject { system: true, code, id, .. }
                if *code == SystemCode::ResourceExhausted as u32 && (*id == 9 || *id == 11)),
            "{f:?}"
        );
    }
    release.add_permits(4);
    let acks = peer.frames(4).await;
    assert_eq!(
        acks.iter()
            .filter(|f| matches!(f, Frame::Ack { .. }))
            .count(),
        4
    );
    drop(peer);

    // A Plexus caller keeps within the limit on its own: twenty calls at
    // once all succeed, and the handler never sees more than four.
    most.store(0, Ordering::SeqCst);
    let conn = Connection::connect(server.local_url())
        .await
        .expect("connect");
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let conn = conn.clone();
            tokio::spawn(async move { conn.call(SLOW, Bytes::new(), CallOptions::new()).await })
        })
        .collect();
    until("four calls are running", || {
        open.load(Ordering::SeqCst) == 4
    })
    .await;
    release.add_permits(20);
    for c in calls {
        bounded("call", c)
            .await
            .expect("no panic")
            .expect("queued, not refused");
    }
    assert_eq!(most.load(Ordering::SeqCst), 4);
    // A caller's own overload error is typed and safe to retry.
    let e = CallError::Overloaded {
        op: SLOW.into(),
        peer: "p".into(),
        message: "m".into(),
    };
    assert!(e.is_safe_to_retry());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_messages_beyond_the_limit_wait_instead_of_piling_up() {
    let _serial = SERIAL.lock().await;
    const NOTE: &str = "test.Echo/note";
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let notes = {
        let (open, most, done) = (open.clone(), most.clone(), done.clone());
        Router::new().oneway(NOTE, move |_ctx, _body: Bytes| {
            let (open, most, done) = (open.clone(), most.clone(), done.clone());
            async move {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                open.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let server = server(ConnectionConfig::new().max_calls(8), echo().add(notes)).await;
    let conn = Connection::connect(server.local_url())
        .await
        .expect("connect");
    for _ in 0..500 {
        conn.oneway(NOTE, Bytes::from_static(b"n"), CallOptions::new())
            .await
            .expect("sent");
    }
    until("every note handled", || done.load(Ordering::SeqCst) == 500).await;
    assert!(
        most.load(Ordering::SeqCst) <= 8,
        "{}",
        most.load(Ordering::SeqCst)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interned_operation_names_are_capped_in_count_and_bytes() {
    let _serial = SERIAL.lock().await;
    let server = server(ConnectionConfig::new(), echo()).await;
    let cases: [(usize, usize, &str); 2] = [
        (4097, 8, "more than 4096 operations"),
        (300, 1000, "operation names on one connection exceed"),
    ];
    for (count, len, says) in cases {
        let mut peer = RawPeer::connect(&addr(&server)).await;
        let frames: Vec<Frame> = (0..count)
            .map(|i| {
                let name = format!("{i:0len$}");
                raw::call(2 * i as u32 + 1, i as u32, Some(&name), Bytes::new())
            })
            .collect();
        let _ = peer.send(&frames).await;
        let got = peer.frames(usize::MAX).await;
        let goaway = got.iter().find_map(|f| match f {
            Frame::GoAway { code, reason, .. } if *code == SystemCode::Protocol as u32 => {
                Some(reason.clone())
            }
            _ => None,
        });
        let reason = goaway.expect("a protocol goaway");
        assert!(reason.contains(says), "{reason}");
        // Every name up to the limit was answered (no such operation).
        let refused = got
            .iter()
            .filter(|f| matches!(f, Frame::Reject { .. }))
            .count();
        assert!(refused < count);
    }
    let conn = Connection::connect(server.local_url())
        .await
        .expect("connect");
    conn.call(ECHO, Bytes::from_static(b"ok"), CallOptions::new())
        .await
        .expect("still served");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cut_off_while_it_is_still_busy_writing_reads_why() {
    // The peer floods names past the cap, and more after them, then is busy
    // for a moment before it reads: the server has stopped reading, so its
    // socket holds unread input when the connection ends. Closing it then
    // would reset the connection and destroy the goaway (and the answers)
    // still queued for the peer; the server lingers, reading and discarding,
    // until the peer has read them and hung up.
    let _serial = SERIAL.lock().await;
    let server = server(ConnectionConfig::new(), echo()).await;
    for _ in 0..3 {
        let mut peer = RawPeer::connect(&addr(&server)).await;
        let frames: Vec<Frame> = (0..400)
            .map(|i| {
                let name = format!("{i:01000}");
                raw::call(2 * i as u32 + 1, i as u32, Some(&name), Bytes::new())
            })
            .collect();
        let _ = peer.send(&frames).await;
        // Busy elsewhere (well within the server's linger of a second).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = peer.frames(usize::MAX).await;
        let goaway = got.iter().find_map(|f| match f {
            Frame::GoAway { code, reason, .. } if *code == SystemCode::Protocol as u32 => {
                Some(reason.clone())
            }
            _ => None,
        });
        let reason =
            goaway.unwrap_or_else(|| panic!("no protocol goaway among {} frames", got.len()));
        assert!(
            reason.contains("operation names on one connection exceed"),
            "{reason}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_listener_refuses_connections_beyond_its_limit() {
    let _serial = SERIAL.lock().await;
    let server = server(ConnectionConfig::new(), echo()).await;
    let addr = addr(&server);
    let mut held = Vec::new();
    for _ in 0..4096 {
        held.push(RawPeer::connect(&addr).await);
    }
    until("4096 connections registered", || {
        server.connections().len() == 4096
    })
    .await;
    let refused = Connection::connect(server.local_url())
        .await
        .expect_err("the 4097th is refused");
    assert!(
        matches!(
            refused,
            ConnectError::Refused {
                code: RefusalCode::TooManyConnections,
                ..
            }
        ),
        "{refused}"
    );
    drop(held);
    until("the connections are gone", || {
        server.connections().is_empty()
    })
    .await;
    Connection::connect(server.local_url())
        .await
        .expect("room again");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_dialers_fill_only_the_handshake_places_and_time_out() {
    let _serial = SERIAL.lock().await;
    let server = Server::bind("tcp://127.0.0.1:0")
        .config(ConnectionConfig::new().handshake_timeout(Duration::from_millis(500)))
        .serve(echo())
        .start()
        .await
        .expect("server");
    // Two hundred dialers that never say hello: more than the 128 places.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(
            tokio::net::TcpStream::connect(addr(&server))
                .await
                .expect("dial"),
        );
    }
    // A real dialer gets through once the silent ones have timed out.
    let started = Instant::now();
    let conn = bounded(
        "connect behind the silent dialers",
        Connection::connect(server.local_url()),
    )
    .await
    .expect("connects");
    conn.call(ECHO, Bytes::from_static(b"ok"), CallOptions::new())
        .await
        .expect("served");
    println!("connected after {:?}", started.elapsed());
    server.shutdown().await;
}

/// With the listener's default timeouts a wave of silent dialers is let go
/// after the hello timeout (4 s), so an honest dialer queued behind them
/// gets in well inside its own handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_dialers_are_let_go_before_an_honest_dialer_gives_up() {
    let _serial = SERIAL.lock().await;
    let server = Server::bind("tcp://127.0.0.1:0")
        .serve(echo())
        .start()
        .await
        .expect("server");
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(
            tokio::net::TcpStream::connect(addr(&server))
                .await
                .expect("dial"),
        );
    }
    // An honest dialer that gives up after 8 s: less than the listener's
    // whole handshake timeout (10 s), more than its hello timeout (4 s).
    let dialer = Endpoint::builder()
        .config(ConnectionConfig::new().handshake_timeout(Duration::from_secs(8)))
        .build();
    let started = Instant::now();
    let conn = bounded(
        "connect behind the silent dialers",
        dialer.connect(server.local_url()),
    )
    .await
    .expect("connects within its handshake timeout");
    conn.call(ECHO, Bytes::from_static(b"ok"), CallOptions::new())
        .await
        .expect("served");
    // The first silent dialer was shown the door: its stream ends.
    let mut first = silent.swap_remove(0);
    let mut byte = [0u8; 1];
    let read = bounded("the listener closes a silent dialer", async {
        tokio::io::AsyncReadExt::read(&mut first, &mut byte).await
    })
    .await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    println!("connected after {:?}", started.elapsed());
    server.shutdown().await;
}

/// A TCP listener that completes no handshake: its accept queue (of one)
/// is full, so the kernel drops further SYNs and a dial hangs.
async fn unanswering_listener() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    // Fill the queue; further SYNs go unanswered.
    let mut fill = Vec::new();
    for _ in 0..4 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fill.push(s),
            _ => break,
        }
    }
    (listener, fill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_to_an_address_that_never_answers_times_out() {
    let _serial = SERIAL.lock().await;
    let (listener, _fill) = unanswering_listener().await;
    let port = listener.local_addr().expect("addr").port();
    let limit = Duration::from_millis(400);
    let pki = TestPki::new("dial ca");
    let endpoint = Endpoint::builder()
        .config(ConnectionConfig::new().connect_timeout(limit))
        .tls(pki.client_tls())
        .build();
    for url in [
        format!("tcp://127.0.0.1:{port}"),
        format!("tls://127.0.0.1:{port}"),
    ] {
        let started = Instant::now();
        let err = bounded("dial", endpoint.connect(url.as_str()))
            .await
            .expect_err("nobody answers");
        let waited = started.elapsed();
        assert!(
            matches!(err, ConnectError::ConnectTimeout { after, .. } if after == limit),
            "{url}: {err}"
        );
        assert!(
            waited >= limit && waited < limit + Duration::from_secs(5),
            "{waited:?}"
        );
    }
    // A reconnecting connection's dials are bounded the same way: it gives
    // up after its attempts instead of hanging in the first.
    let redial = endpoint
        .reconnecting(
            format!("tcp://127.0.0.1:{port}"),
            plexus::retry::Backoff::new()
                .initial(Duration::from_millis(10))
                .max(Duration::from_millis(20))
                .max_attempts(2),
        )
        .expect("url");
    let started = Instant::now();
    bounded("the redial gives up", redial.closed()).await;
    assert!(started.elapsed() < 2 * limit + Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_is_reported_by_its_own_size() {
    let _serial = SERIAL.lock().await;
    let server = server(ConnectionConfig::new().max_frame(MIB as u32), echo()).await;
    let conn = Connection::connect(server.local_url())
        .await
        .expect("connect");
    let err = conn
        .call(ECHO, Bytes::from(vec![0u8; MIB]), CallOptions::new())
        .await
        .expect_err("too large");
    assert!(
        matches!(err, CallError::MessageTooLarge { size, limit, .. } if size == MIB && limit < MIB),
        "{err}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holding_unread_stream_data_is_held_back_by_the_budget() {
    let _serial = SERIAL.lock().await;
    const SINK: &str = "test.Echo/sink";
    // Client streams whose handler reads nothing: each may hold one window.
    let gate = Arc::new(tokio::sync::Notify::new());
    let sink = {
        let gate = gate.clone();
        Router::new().client_stream(SINK, move |_ctx, mut requests: plexus::stream::Inbound| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                let mut n = 0usize;
                while let Some(m) = requests.recv().await {
                    n += m.map_err(|e| Reject::new(1, e.to_string()))?.len();
                }
                Ok::<_, Reject>(Bytes::from(n.to_string()))
            }
        })
    };
    let config = ConnectionConfig::new().memory_budget(8 * MIB);
    let server = server(config, echo().add(sink)).await;
    let conn = Connection::connect(server.local_url())
        .await
        .expect("connect");
    // Eight streams of 2 MiB windows would buffer 16 MiB; the budget is 8.
    let mut streams = Vec::new();
    for _ in 0..8 {
        let (out, reply) = conn
            .client_stream(SINK, CallOptions::new())
            .await
            .expect("open");
        streams.push((out, reply));
    }
    let senders: Vec<_> = streams
        .into_iter()
        .map(|(mut out, reply)| {
            tokio::spawn(async move {
                for _ in 0..32 {
                    out.send(Bytes::from(vec![2u8; 64 * 1024])).await?;
                }
                out.finish().await?;
                reply.await
            })
        })
        .collect();
    let held = |s: &Server| {
        s.connections()
            .iter()
            .map(|c| c.stats())
            .find(|st| st.held_back)
    };
    let stats = plexus_tests::eventually("the reader holds the peer back", || held(&server)).await;
    assert!(
        stats.budget_used >= 8 * MIB && stats.budget_used <= 8 * MIB + 2 * MIB,
        "{stats:?}"
    );
    // Reading frees the budget; every stream completes.
    gate.notify_waiters();
    for _ in 0..8 {
        gate.notify_one();
    }
    for s in senders {
        let reply = bounded("stream", s)
            .await
            .expect("no panic")
            .expect("acked");
        assert_eq!(reply, Bytes::from((32 * 64 * 1024).to_string()));
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_cut_off_frees_what_was_queued() {
    let _serial = SERIAL.lock().await;
    // After the cut-off the server holds nothing for the attacker: its
    // connection is gone and its queue dropped.
    let server = server(
        ConnectionConfig::new().stall_timeout(Duration::from_millis(500)),
        echo(),
    )
    .await;
    let mut events = server.endpoint().events();
    let mut peer = RawPeer::connect(&addr(&server)).await;
    let body = Bytes::from(vec![3u8; 64 * 1024]);
    let frames: Vec<Frame> = (0..1024u32)
        .map(|i| raw::call(2 * i + 1, 0, (i == 0).then_some(ECHO), body.clone()))
        .collect();
    let writer = tokio::spawn(async move {
        let _ = peer.send(&frames).await;
        let _ = peer.stream.shutdown().await;
        peer
    });
    disconnect(&mut events, |r| {
        matches!(r, CloseReason::PeerNotReading { .. })
    })
    .await;
    until("the connection is gone", || server.connections().is_empty()).await;
    let _ = bounded("writer", writer).await;
    server.shutdown().await;
}

/// A reading for the pub/sub tests.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    seq: u64,
    pad: String,
}

plexus::topic! {
    /// Readings for the hung-subscriber tests.
    pub struct Readings in "hostile" => Reading;
}

use plexus::patterns::{Overflow, Publisher, Subscriber};

/// A publisher on a server, two healthy block-mode subscribers connected
/// directly and one in `overflow` mode through a proxy that is then frozen.
async fn hung_subscriber_setup(
    overflow: Overflow,
    send_timeout: Duration,
) -> (
    Server,
    Publisher<Readings>,
    Vec<Subscriber<Readings>>,
    Subscriber<Readings>,
    plexus_tests::FreezableProxy,
) {
    let publisher = Publisher::<Readings>::builder()
        .send_timeout(send_timeout)
        .build();
    let server = server(ConnectionConfig::new(), echo().add(publisher.router())).await;
    let mut healthy = Vec::new();
    for _ in 0..2 {
        let conn = Connection::connect(server.local_url())
            .await
            .expect("connect");
        let sub = Subscriber::<Readings>::builder()
            .overflow(Overflow::Block)
            .capacity(4096)
            .connect(conn);
        bounded("subscribed", sub.wait_publishers(1)).await;
        healthy.push(sub);
    }
    let proxy = plexus_tests::FreezableProxy::start(addr(&server)).await;
    let conn = Connection::connect(proxy.url.as_str())
        .await
        .expect("via proxy");
    let hung = Subscriber::<Readings>::builder()
        .overflow(overflow)
        .connect(conn);
    bounded("subscribed", hung.wait_publishers(1)).await;
    until("three subscribers", || publisher.subscribers() == 3).await;
    proxy.freeze();
    (server, publisher, healthy, hung, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_drop_mode_subscriber_does_not_delay_the_others() {
    let _serial = SERIAL.lock().await;
    // The frozen subscriber is not dropped during the test (its send
    // timeout is long), so nothing but the per-subscriber queues keeps the
    // others going.
    let (server, publisher, healthy, hung, _proxy) =
        hung_subscriber_setup(Overflow::DropOldest, Duration::from_secs(60)).await;
    // 2,000 events of 4 KiB, 8 MiB: far more than the frozen subscriber's
    // stream window (2 MiB) and its queue at the publisher (256 events).
    const EVENTS: u64 = 2_000;
    let started = Instant::now();
    let mut published_at = Vec::with_capacity(EVENTS as usize);
    let readers: Vec<_> = healthy
        .into_iter()
        .map(|sub| {
            tokio::spawn(async move {
                let mut at = Vec::with_capacity(EVENTS as usize);
                for seq in 0..EVENTS {
                    let got = bounded("event", sub.recv()).await.expect("open");
                    assert_eq!(got.event.seq, seq);
                    at.push(started.elapsed());
                }
                at
            })
        })
        .collect();
    // Events go out on a fixed schedule, one every 500 µs, and each one's
    // delay is counted from when it was due: a publish held up by the
    // frozen subscriber delays every event behind it.
    let period = Duration::from_micros(500);
    for seq in 0..EVENTS {
        let event = Reading {
            seq,
            pad: "x".repeat(4096),
        };
        let due = period * seq as u32;
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + due)).await;
        published_at.push(due);
        let reached = bounded("publish", publisher.publish("t", &event))
            .await
            .expect("publish");
        assert_eq!(reached, 3, "the frozen one is still registered");
    }
    let mut worst = Duration::ZERO;
    for r in readers {
        let at = bounded("reader", r).await.expect("no panic");
        for (seq, got) in at.iter().enumerate() {
            worst = worst.max(got.saturating_sub(published_at[seq]));
        }
    }
    println!("the healthy subscribers got every event at most {worst:?} after it was due");
    assert!(worst < Duration::from_millis(100), "delayed by {worst:?}");
    assert_eq!(publisher.stats().evicted, 0);
    assert_eq!(
        hung.stats().arrived,
        hung.stats().queued as u64 + hung.dropped()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_block_mode_subscriber_stalls_publishing_at_most_its_send_timeout() {
    let _serial = SERIAL.lock().await;
    let send_timeout = Duration::from_millis(800);
    let (server, publisher, healthy, _hung, _proxy) =
        hung_subscriber_setup(Overflow::Block, send_timeout).await;
    let mut evictions = publisher.evictions();
    const EVENTS: u64 = 2_000;
    let mut longest = Duration::ZERO;
    let readers: Vec<_> = healthy
        .into_iter()
        .map(|sub| {
            tokio::spawn(async move {
                for seq in 0..EVENTS {
                    let got = bounded("event", sub.recv()).await.expect("open");
                    assert_eq!(got.event.seq, seq);
                }
            })
        })
        .collect();
    for seq in 0..EVENTS {
        let event = Reading {
            seq,
            pad: "x".repeat(4096),
        };
        let started = Instant::now();
        bounded("publish", publisher.publish("t", &event))
            .await
            .expect("publish");
        longest = longest.max(started.elapsed());
    }
    for r in readers {
        bounded("reader", r).await.expect("no panic");
    }
    let evicted = bounded("eviction", evictions.recv())
        .await
        .expect("an eviction");
    println!(
        "the longest publish waited {longest:?}; the frozen subscriber was dropped: {}",
        evicted.reason
    );
    // Held up by the frozen subscriber until it was dropped — by the
    // publish waiting for its queue or by its sender waiting for credit,
    // whichever gave up first.
    assert!(
        longest >= send_timeout / 2,
        "the block-mode subscriber held publishing"
    );
    assert!(
        longest < send_timeout + Duration::from_secs(5),
        "{longest:?}"
    );
    assert_eq!(publisher.stats().evicted, 1);
    until("the frozen one is gone", || {
        !publisher.subscriber_ids().contains(&evicted.peer)
    })
    .await;
    server.shutdown().await;
}

/// State with a counter, one operation that panics half-way through a change.
#[plexus::service(package = "hostile", version = 1)]
pub trait Counter {
    /// Adds one and returns the count.
    async fn bump(&self) -> Result<u64, Reject>;
    /// Panics.
    async fn explode(&self) -> Result<u64, Reject>;
}

#[derive(Default)]
struct Count(u64);

impl CounterActor for Count {
    async fn bump(&mut self) -> Result<u64, Reject> {
        self.0 += 1;
        Ok(self.0)
    }

    async fn explode(&mut self) -> Result<u64, Reject> {
        panic!("the counter exploded")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_whose_handler_panics_fails_that_call_and_keeps_serving() {
    let _serial = SERIAL.lock().await;
    let server = Server::bind("tcp://127.0.0.1:0")
        .serve(CounterHandler::new(plexus::node::Actor::spawn(
            Count::default(),
        )))
        .start()
        .await
        .expect("server");
    let client = CounterClient::connect(server.local_url())
        .await
        .expect("connect");
    assert_eq!(client.bump().await.expect("bump"), 1);
    let err = client.explode().await.expect_err("panics");
    assert!(
        matches!(&err, CallError::HandlerFailed { message, .. } if message.contains("the counter exploded")),
        "{err}"
    );
    assert_eq!(
        client.bump().await.expect("still serving"),
        2,
        "state as it was"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offering_a_file_with_too_many_chunks_is_refused_before_reading_it() {
    let _serial = SERIAL.lock().await;
    let dir = plexus_tests::tempdir::Dir::new("huge");
    let path = dir.0.join("huge.bin");
    // A sparse terabyte: 2^30 chunks of 1 KiB, a 32 GiB manifest.
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(1 << 40))
        .expect("sparse file");
    let store = plexus::files::FileStore::with_chunk_size(1024);
    let started = Instant::now();
    let err = bounded("offer", store.offer_path(&path))
        .await
        .expect_err("too many chunks");
    assert!(
        matches!(err, plexus::files::OfferError::TooLarge { size, chunk_size: 1024 } if size == 1 << 40),
        "{err}"
    );
    assert!(err.to_string().contains("larger chunks"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused from the size alone"
    );
    let err = store
        .offer_bytes("many", Bytes::from(vec![0u8; 300 * 1024 * 1024 / 1024]))
        .map(|_| ());
    assert!(err.is_ok(), "300 KiB in 1 KiB chunks fits");
    let tiny = plexus::files::FileStore::with_chunk_size(1);
    assert!(matches!(
        tiny.offer_bytes("many", Bytes::from(vec![0u8; 300 * 1024])),
        Err(plexus::files::OfferError::TooLarge { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_keeping_to_the_limit_is_never_refused() {
    let _serial = SERIAL.lock().await;
    // One call at a time: every answer frees the place the next call takes
    // at once, so the server must stop counting a call by the time its
    // answer can reach the caller.
    let slow = Router::new().unary(SLOW, |_ctx, body: Bytes| async move {
        tokio::task::yield_now().await;
        Ok::<_, Reject>(body)
    });
    let server = server(ConnectionConfig::new().max_calls(1), echo().add(slow)).await;
    let conn = Connection::connect(server.local_url())
        .await
        .expect("connect");
    let callers: Vec<_> = (0..16)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                for n in 0..200 {
                    let op = if (i + n) % 2 == 0 { ECHO } else { SLOW };
                    conn.call(op, Bytes::from_static(b"x"), CallOptions::new())
                        .await?;
                }
                Ok::<_, CallError>(())
            })
        })
        .collect();
    for c in callers {
        bounded("caller", c)
            .await
            .expect("no panic")
            .expect("never refused");
    }
    server.shutdown().await;
}
