//! The heap an idle connection holds, per end. This binary counts every
//! byte allocated and freed while a window is open (its own process: no other
//! test shares the allocator), opens connections from one endpoint to one
//! server in the same runtime, waits until every task of both ends is parked,
//! and divides what is still held by the connections and by two ends.
//!
//! The figures are counts, not timings: load on the machine does not move
//! them (BENCHMARKS.md "Memory" has the same figure from the benchmark and
//! what each part of it is).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use plexus::{Bytes, Connection, ConnectionConfig, Endpoint, Reject, Router, Server};
use plexus_tests::{bounded, until};

/// The system allocator, counting live bytes while a window is open.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters only observe the layouts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static HEAP: Counting = Counting;

/// Net bytes allocated since [`open_window`].
fn open_window() {
    LIVE.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
}

fn close_window() -> isize {
    COUNTING.store(false, Ordering::Relaxed);
    LIVE.load(Ordering::Relaxed)
}

/// The counters are process-wide: the tests take turns.
static TURN: Mutex<()> = Mutex::new(());

/// Connections opened per measurement: enough that growth of the tables
/// holding them averages out, few enough for a quick test.
const CONNECTIONS: usize = 100;

/// The goal of issue #12: an idle connection end holds at most 4 KiB.
const PER_END_BOUND: f64 = 4096.0;

/// What the first frames written through a connection's queue leave behind:
/// its buffers, kept for the next frames (a ping is a few dozen bytes).
const WRITE_PATH_BUFFERS: f64 = 128.0;

/// What a minute of keepalives may still move an idle connection end's
/// share of the heap by, once the first have run.
const STEADY_SLACK: f64 = 16.0;

fn echo() -> Router {
    Router::new().unary(
        "echo",
        |_ctx, body: Bytes| async move { Ok::<_, Reject>(body) },
    )
}

/// Lets every task run until it waits on its socket or timer again: the
/// runtime has one thread, so a short sleep runs all that is ready.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Opens [`CONNECTIONS`] connections from `client` to `server` and returns
/// them with the heap they hold, per connection end.
async fn open_idle(client: &Endpoint, server: &Server) -> (Vec<Connection>, f64) {
    let url = server.local_url().clone();
    let already = server.connections().len();
    open_window();
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        connections.push(
            bounded("connect", client.connect(url.clone()))
                .await
                .expect("connect"),
        );
    }
    until("the server sees every connection", || {
        server.connections().len() == already + CONNECTIONS
    })
    .await;
    settle().await;
    let net = close_window();
    (connections, net as f64 / CONNECTIONS as f64 / 2.0)
}

fn current_thread(paused: bool) -> tokio::runtime::Runtime {
    let mut rt = tokio::runtime::Builder::new_current_thread();
    rt.enable_all();
    if paused {
        rt.start_paused(true);
    }
    rt.build().expect("runtime")
}

#[test]
fn an_idle_tcp_connection_holds_at_most_4_kib_of_heap_per_end() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    current_thread(false).block_on(async {
        let server = Server::bind("tcp://127.0.0.1:0")
            .serve(echo())
            .start()
            .await
            .expect("server");
        let client = Endpoint::builder().build();
        // One connection first, so state built once (codec tables, the
        // endpoint's maps) is not charged to the idle ones.
        let warm = client
            .connect(server.local_url())
            .await
            .expect("warm-up connection");
        settle().await;
        let (connections, per_end) = open_idle(&client, &server).await;
        println!("idle tcp connection: {per_end:.0} B of heap per end");
        assert!(
            per_end <= PER_END_BOUND,
            "an idle tcp connection holds {per_end:.0} B of heap per end, over {PER_END_BOUND} B"
        );
        for c in connections.iter().chain([&warm]) {
            c.close().await;
        }
        server.shutdown().await;
    });
}

#[test]
fn keepalive_traffic_does_not_grow_an_idle_connection() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    // `inproc://` on the paused clock: a minute of keepalives in no time.
    current_thread(true).block_on(async {
        let interval = Duration::from_secs(5);
        let config = ConnectionConfig::default().keepalive(interval, interval * 3);
        let name = format!("inproc://idle-memory-{}", std::process::id());
        let server = Server::bind(name.as_str())
            .config(config.clone())
            .serve(echo())
            .start()
            .await
            .expect("server");
        let client = Endpoint::builder().config(config).build();
        let warm = client.connect(server.local_url()).await.expect("warm-up connection");
        settle().await;
        let (connections, per_end) = open_idle(&client, &server).await;
        println!("idle inproc connection: {per_end:.0} B of heap per end");
        // Pings both ways, twelve times over. The first ones make the write
        // path's own small buffers (an idle connection had written nothing
        // through its queue yet); after that nothing read or written is kept.
        let minute = |label: &'static str| async move {
            open_window();
            tokio::time::sleep(interval * 12).await;
            settle().await;
            let grown = close_window() as f64 / CONNECTIONS as f64 / 2.0;
            println!("{label}: {grown:+.0} B per end");
            grown
        };
        let first = minute("the first minute of keepalives").await;
        let second = minute("the second minute of keepalives").await;
        assert!(connections.iter().all(|c| !c.is_closed()), "keepalive closed an idle connection");
        assert!(
            first <= WRITE_PATH_BUFFERS,
            "the first minute of keepalives grew an idle connection by {first:.0} B per end"
        );
        // A few bytes are the runtime's own queues settling (tokio grows
        // its run queue as more tasks wake at once); a read buffer kept
        // after a ping would be 2 KiB.
        assert!(
            second < STEADY_SLACK,
            "keepalives keep growing an idle connection: {second:+.0} B per end in the second minute"
        );
        assert!(
            per_end + first <= PER_END_BOUND,
            "an idle inproc connection holds {:.0} B of heap per end after keepalives, over {PER_END_BOUND} B",
            per_end + first
        );
        for c in connections.iter().chain([&warm]) {
            c.close().await;
        }
        server.shutdown().await;
    });
}
