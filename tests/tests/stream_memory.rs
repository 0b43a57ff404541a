//! What a bulk stream costs the heap, both ends, counted by a counting
//! global allocator over a real TCP connection (read sizes are the point):
//! the bytes of every large allocation while 32 MiB stream in 64 KiB
//! `Blob`s.
//!
//! Before the sender spliced blobs into its writes and the reader reused its
//! read chunks, each message cost a 64 KiB buffer on the server (the encoded
//! copy) and another on the client (a read buffer the frame decoder sized to
//! the frame): twice the streamed bytes were allocated, and on a machine
//! that gives freed memory back every one of those pages was faulted in
//! again. Now the sender copies nothing and the reader cycles a few chunks.
//!
//! And what a connection keeps once the bulk is over: the reader holds on
//! to a few read chunks while a stream runs, and gives them back once its
//! reads are small again.
//!
//! The binary holds only these tests, run one at a time under a lock, so
//! nothing else allocates while they count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};

use futures_util::StreamExt;
use plexus::codec::Blob;
use plexus::{BoxStream, Reject, Server};
use plexus_tests::bounded;

/// Allocations at least this large are counted: read chunks and message
/// buffers, not the small bookkeeping around them.
const LARGE: usize = 16 * 1024;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LARGE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Bytes allocated and not yet freed, always counted.
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// One test counts at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn counted(size: usize) {
    if size >= LARGE && COUNTING.load(Ordering::Relaxed) {
        LARGE_BYTES.fetch_add(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counting beside it touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(new_size);
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The contract: a stream of blobs whose bytes say which message they are.
#[plexus::service(package = "test.bulk", version = 1)]
trait Bulk {
    /// `messages` blobs of `size` bytes, message `i` filled with `i as u8`.
    async fn download(&self, messages: u32, size: u32) -> Result<BoxStream<Blob>, Reject>;
    /// A small call, answered at once.
    async fn ping(&self, n: u32) -> Result<u32, Reject>;
}

/// Serves 256 distinct blobs, made before anything is counted and shared by
/// every message with the same low byte.
struct Serving {
    blobs: std::sync::Arc<Vec<Blob>>,
}

impl Bulk for Serving {
    async fn download(&self, messages: u32, size: u32) -> Result<BoxStream<Blob>, Reject> {
        if self.blobs.first().is_none_or(|b| b.len() != size as usize) {
            return Err(Reject::new(1, "this server holds blobs of another size"));
        }
        let blobs = self.blobs.clone();
        Ok(futures_util::stream::iter(0..messages)
            .map(move |i| blobs[(i % 256) as usize].clone())
            .boxed())
    }

    async fn ping(&self, n: u32) -> Result<u32, Reject> {
        Ok(n)
    }
}

fn serving() -> BulkHandler<Serving> {
    BulkHandler::new(Serving {
        blobs: std::sync::Arc::new(
            (0..=255u8)
                .map(|b| Blob::from(vec![b; MESSAGE as usize]))
                .collect(),
        ),
    })
}

const MESSAGE: u32 = 64 * 1024;
const MESSAGES: u32 = 512; // 32 MiB

/// A server of the bulk contract on loopback TCP, and a client of it.
async fn start() -> (Server, BulkClient) {
    let server = Server::bind("tcp://127.0.0.1:0")
        .serve(serving())
        .start()
        .await
        .expect("server starts");
    let client = BulkClient::connect(server.local_url().to_string())
        .await
        .expect("client connects");
    (server, client)
}

/// Streams `MESSAGES` blobs and checks every byte; returns the bytes of
/// large allocations made meanwhile, both ends.
async fn stream_and_count() -> usize {
    let (server, client) = start().await;
    // Warm up: the connection's first chunks and the handler's blobs.
    let mut warm = client.download(16, MESSAGE).await.expect("stream opens");
    while let Some(blob) = warm.next().await {
        blob.expect("warm-up message");
    }
    LARGE_BYTES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let mut stream = client
        .download(MESSAGES, MESSAGE)
        .await
        .expect("stream opens");
    let mut seen = 0u32;
    while let Some(blob) = stream.next().await {
        let blob = blob.expect("message arrives");
        assert_eq!(blob.len(), MESSAGE as usize, "message {seen} whole");
        let want = (seen % 256) as u8;
        assert!(
            blob.iter().all(|&b| b == want),
            "message {seen} holds its own bytes"
        );
        seen += 1;
    }
    COUNTING.store(false, Ordering::Relaxed);
    assert_eq!(seen, MESSAGES, "every message arrived");
    drop(stream);
    drop(client);
    server.shutdown().await;
    LARGE_BYTES.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_stream_allocates_a_small_part_of_what_it_carries() {
    let _one = ONE_AT_A_TIME.lock().await;
    let streamed = (MESSAGE * MESSAGES) as usize;
    let allocated = bounded("the stream", stream_and_count()).await;
    // Measured: 4.5 MiB (the reader's first chunks, and one now and then
    // when the consumer is slow to drop a chunk's messages), against 2× the
    // streamed bytes before.
    assert!(
        allocated <= streamed / 4,
        "streaming {} MiB allocated {:.1} MiB in large buffers",
        streamed >> 20,
        allocated as f64 / (1 << 20) as f64
    );
    eprintln!(
        "streaming {} MiB allocated {:.1} MiB in large buffers",
        streamed >> 20,
        allocated as f64 / (1 << 20) as f64
    );
}

/// Receives every message of a `messages`-long stream, dropping each.
async fn drain(client: &BulkClient, messages: u32) {
    let mut stream = client
        .download(messages, MESSAGE)
        .await
        .expect("stream opens");
    let mut seen = 0;
    while let Some(blob) = stream.next().await {
        blob.expect("message arrives");
        seen += 1;
    }
    assert_eq!(seen, messages);
}

/// Small calls, one at a time: small reads on the client.
async fn pings(client: &BulkClient, n: u32) {
    for i in 0..n {
        assert_eq!(client.ping(i).await.expect("ping answered"), i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gives_its_bulk_read_chunks_back_once_its_reads_are_small() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (server, client) = start().await;
    bounded("warm-up", async {
        drain(&client, 16).await;
        pings(&client, 20).await;
    })
    .await;
    let before = LIVE.load(Ordering::Relaxed);
    bounded("the stream", drain(&client, MESSAGES)).await;
    let during = LIVE.load(Ordering::Relaxed);
    bounded("small calls", pings(&client, 20)).await;
    let after = LIVE.load(Ordering::Relaxed);
    let mib = |n: isize| n as f64 / (1 << 20) as f64;
    eprintln!(
        "live heap: {:.2} MiB before the stream, {:+.2} MiB after it, {:+.2} MiB after 20 small calls",
        mib(before),
        mib(during - before),
        mib(after - before)
    );
    // The server's reader never reads in bulk; the client's keeps its read
    // chunks (at most six of 512 KiB, and its buffer) while the bulk lasts
    // and gives them back with its first small reads. The rest of the
    // difference is allocator noise and interned state, far below a chunk.
    assert!(
        after - before < 512 * 1024,
        "still {:.2} MiB more than before the stream after 20 small calls",
        mib(after - before)
    );
    drop(client);
    server.shutdown().await;
}
