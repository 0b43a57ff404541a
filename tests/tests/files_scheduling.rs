//! How a download picks its chunks, through the public API: the rarest
//! chunk first; at most `max_in_flight` chunks of one file, and at most the
//! shared `DownloadLimits` over several downloads, in flight at once; a
//! freed place to the download nearest to done; and a failed chunk asked
//! again only after its backoff. Seeders are `FileShare` implementations
//! that record what they are asked.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus::codec::Blob;
use plexus::discovery::Static;
use plexus::files::{
    Download, DownloadLimits, FileId, FileInfo, FileShare, FileShareClient, FileShareHandler,
    FileStore, Manifest, NOT_FOUND,
};
use plexus::{node::NodeBuilder, Node};
use plexus::{retry::Backoff, Bytes, Reject};
use plexus_tests::bounded;
use tokio::sync::Notify;
use tokio::time::Instant;

const CHUNK: u32 = 1024;

fn content(len: usize, seed: u32) -> Bytes {
    let mut x: u32 = 0x9e37_79b9 ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn builder(name: &str, peers: Vec<String>) -> NodeBuilder {
    Node::builder(name)
        .listen("tcp://127.0.0.1:0")
        .group("files")
        .discovery(Static::new(peers))
        .reconcile_interval(Duration::from_millis(50))
}

/// What every seeder of one test saw.
#[derive(Default)]
struct Log {
    /// (seeder, chunk, when) for every chunk asked for.
    asked: Mutex<Vec<(usize, u32, Instant)>>,
    /// Chunk calls being served now, over every seeder, and the most seen.
    serving: AtomicUsize,
    most: AtomicUsize,
}

struct Seeder {
    index: usize,
    store: FileStore,
    /// Offers only chunks below this (a partial copy).
    only_below: Option<u32>,
    /// Answers `have` only once this is notified.
    gate: Option<Arc<Notify>>,
    /// Notified at the first chunk asked of it.
    opens: Option<Arc<Notify>>,
    /// Refuses this chunk this many times first.
    flaky: Option<(u32, Arc<AtomicU32>)>,
    delay: Duration,
    log: Arc<Log>,
}

impl Seeder {
    fn new(index: usize, store: &FileStore, log: &Arc<Log>) -> Seeder {
        Seeder {
            index,
            store: store.clone(),
            only_below: None,
            gate: None,
            opens: None,
            flaky: None,
            delay: Duration::from_millis(2),
            log: log.clone(),
        }
    }
}

impl FileShare for Seeder {
    async fn catalog(&self) -> Result<Vec<FileInfo>, Reject> {
        Ok(self.store.files())
    }

    async fn manifest(&self, id: FileId) -> Result<Manifest, Reject> {
        self.store
            .manifest(id)
            .ok_or_else(|| Reject::new(NOT_FOUND, "not here"))
    }

    async fn have(&self, id: FileId) -> Result<Bytes, Reject> {
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        let have = self
            .store
            .have(id)
            .ok_or_else(|| Reject::new(NOT_FOUND, "not here"))?;
        Ok(match self.only_below {
            None => have,
            Some(below) => {
                let mut map = vec![0u8; have.len()];
                for i in 0..below {
                    map[i as usize / 8] |= 1 << (i % 8);
                }
                map.into()
            }
        })
    }

    async fn chunk(&self, id: FileId, index: u32) -> Result<Blob, Reject> {
        self.log
            .asked
            .lock()
            .expect("log")
            .push((self.index, index, Instant::now()));
        if let Some(opens) = &self.opens {
            opens.notify_one();
        }
        let now = self.log.serving.fetch_add(1, Ordering::SeqCst) + 1;
        self.log.most.fetch_max(now, Ordering::SeqCst);
        // Counted until this call ends, however it ends (a cancelled one is
        // dropped mid-sleep).
        let _serving = Serving(&self.log);
        tokio::time::sleep(self.delay).await;
        if let Some((flaky, left)) = &self.flaky {
            if *flaky == index && left.load(Ordering::SeqCst) > 0 {
                left.fetch_sub(1, Ordering::SeqCst);
                return Err(Reject::new(500, "try again"));
            }
        }
        self.store.read_chunk(id, index).await.map(Blob::from)
    }
}

struct Serving<'a>(&'a Log);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts `seeders`, and a downloader listing them all.
async fn swarm(seeders: Vec<Seeder>) -> (Vec<Node>, Node) {
    let mut nodes = Vec::new();
    for s in seeders {
        let name = format!("seeder-{}", s.index);
        let node = builder(&name, Vec::new())
            .serve(FileShareHandler::new(s))
            .start()
            .await
            .expect("seeder starts");
        nodes.push(node);
    }
    let urls = nodes
        .iter()
        .map(|n| n.local_urls()[0].to_string())
        .collect();
    let downloader = builder("downloader", urls)
        .uses::<FileShareClient>()
        .start()
        .await
        .expect("downloader starts");
    let n = nodes.len();
    bounded(
        "seeders link",
        downloader
            .peers::<FileShareClient>()
            .wait_until(|ids| ids.len() == n),
    )
    .await;
    (nodes, downloader)
}

async fn stop(nodes: Vec<Node>, downloader: Node) {
    downloader.stop().await.expect("stop");
    for n in nodes {
        n.stop().await.expect("stop");
    }
}

fn offer(store: &FileStore, name: &str, chunks: usize, seed: u32) -> (Bytes, FileId) {
    let data = content(chunks * CHUNK as usize, seed);
    let info = store.offer_bytes(name, data.clone()).expect("offered");
    (data, info.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rarest_chunks_are_asked_first() {
    let store = FileStore::with_chunk_size(CHUNK);
    let (data, id) = offer(&store, "f", 16, 1);
    let log = Arc::new(Log::default());
    // The partial seeder has chunks 0–7; the full one answers `have` only
    // once the download has started on the partial one.
    let opens = Arc::new(Notify::new());
    let full = Seeder {
        gate: Some(opens.clone()),
        ..Seeder::new(0, &store, &log)
    };
    let partial = Seeder {
        only_below: Some(8),
        opens: Some(opens),
        ..Seeder::new(1, &store, &log)
    };
    let (nodes, downloader) = swarm(vec![full, partial]).await;
    let done = bounded(
        "download",
        Download::builder(downloader.peers::<FileShareClient>(), id)
            .per_peer(1)
            .start()
            .finish(),
    )
    .await
    .expect("downloaded");
    assert_eq!(done.saved, plexus::files::Saved::Memory(data));
    let asked = log.asked.lock().expect("log").clone();
    let of_full: Vec<u32> = asked
        .iter()
        .filter(|(s, _, _)| *s == 0)
        .map(|(_, c, _)| *c)
        .take(8)
        .collect();
    // Only the full seeder has 8–15: those first, the common ones left to
    // the partial seeder meanwhile. In chunk order it would take 0, 1, …
    assert_eq!(of_full, (8..16).collect::<Vec<_>>(), "asked: {asked:?}");
    stop(nodes, downloader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_in_flight_stay_within_the_file_cap_and_the_shared_cap() {
    let store = FileStore::with_chunk_size(CHUNK);
    let (_, one) = offer(&store, "one", 40, 2);
    let (_, two) = offer(&store, "two", 40, 3);
    let log = Arc::new(Log::default());
    // One seeder, so no chunk is ever asked twice (the end game needs a
    // second source): every call the seeder serves is one in flight.
    let (nodes, downloader) = swarm(vec![Seeder::new(0, &store, &log)]).await;
    let peers = downloader.peers::<FileShareClient>();

    // Eight at a time from the seeder, but two at most of one file.
    bounded(
        "capped download",
        Download::builder(peers.clone(), one)
            .per_peer(8)
            .max_in_flight(2)
            .start()
            .finish(),
    )
    .await
    .expect("downloaded");
    assert_eq!(
        log.most.load(Ordering::SeqCst),
        2,
        "at most two of one file"
    );

    log.most.store(0, Ordering::SeqCst);
    let limits = DownloadLimits::new(3);
    // Sixteen at once without the shared cap.
    let a = Download::builder(peers.clone(), one)
        .per_peer(8)
        .limits(&limits)
        .start();
    let b = Download::builder(peers, two)
        .per_peer(8)
        .limits(&limits)
        .start();
    let (a, b) = bounded("both", async { tokio::join!(a.finish(), b.finish()) }).await;
    a.expect("one");
    b.expect("two");
    let most = log.most.load(Ordering::SeqCst);
    assert!((1..=3).contains(&most), "at most three over both: {most}");
    assert_eq!(limits.in_flight(), 0, "every place given back");
    stop(nodes, downloader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_shared_cap_the_download_nearest_to_done_goes_first() {
    let store = FileStore::with_chunk_size(CHUNK);
    let (_, ahead) = offer(&store, "ahead", 20, 4);
    let (_, behind) = offer(&store, "behind", 20, 5);
    let log = Arc::new(Log::default());
    let seeder = Seeder {
        delay: Duration::from_millis(5),
        ..Seeder::new(0, &store, &log)
    };
    let (nodes, downloader) = swarm(vec![seeder]).await;
    let peers = downloader.peers::<FileShareClient>();
    let limits = DownloadLimits::new(1);
    let first = Download::builder(peers.clone(), ahead)
        .limits(&limits)
        .start();
    let mut first_progress = first.progress();
    bounded(
        "a head start",
        first_progress.wait_for(|p| p.received_chunks >= 2),
    )
    .await
    .expect("progress");
    let second = Download::builder(peers, behind).limits(&limits).start();
    let second_progress = second.progress();
    bounded("the first", first.finish()).await.expect("first");
    let when_first_done = second_progress.borrow().received_chunks;
    // Taking turns, the second would have about as many chunks by now.
    assert!(
        when_first_done <= 1,
        "the second got {when_first_done} chunks before the first was done"
    );
    bounded("the second", second.finish())
        .await
        .expect("second");
    stop(nodes, downloader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_chunk_is_asked_again_only_after_its_backoff() {
    let store = FileStore::with_chunk_size(CHUNK);
    let (data, id) = offer(&store, "f", 6, 6);
    let log = Arc::new(Log::default());
    let seeder = Seeder {
        flaky: Some((2, Arc::new(AtomicU32::new(2)))),
        ..Seeder::new(0, &store, &log)
    };
    let (nodes, downloader) = swarm(vec![seeder]).await;
    let backoff = Backoff::new()
        .initial(Duration::from_millis(200))
        .multiplier(1);
    let done = bounded(
        "download",
        Download::builder(downloader.peers::<FileShareClient>(), id)
            .retry_backoff(backoff)
            .start()
            .finish(),
    )
    .await
    .expect("downloaded after two retries");
    assert_eq!(done.saved, plexus::files::Saved::Memory(data));
    assert_eq!(done.retries, 2);
    let asked = log.asked.lock().expect("log").clone();
    let tries: Vec<Instant> = asked
        .iter()
        .filter(|(_, c, _)| *c == 2)
        .map(|(_, _, at)| *at)
        .collect();
    assert_eq!(tries.len(), 3);
    for pair in tries.windows(2) {
        let gap = pair[1] - pair[0];
        // The jitter's floor is half the 200 ms backoff.
        assert!(
            gap >= Duration::from_millis(100),
            "asked again after {gap:?}"
        );
    }
    stop(nodes, downloader).await;
}
