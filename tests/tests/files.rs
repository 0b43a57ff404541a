//! File sharing between nodes: a swarm download from every seeder, a seeder
//! dying mid-download, a peer sending wrong bytes, progress, cancellation,
//! saving to disk and sharing on, and the service's rejections. Nodes find
//! each other through static URL lists on loopback.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plexus::codec::Blob;
use plexus::discovery::Static;
use plexus::files::{
    Download, DownloadError, Downloaded, FileId, FileInfo, FileShare, FileShareClient,
    FileShareHandler, FileStore, Manifest, OfferError, Saved, NOT_FOUND, OUT_OF_RANGE, UNAVAILABLE,
};
use plexus::{node::NodeBuilder, Node};
use plexus::{server::IntoRouter, Bytes, CallError, NodeId, Reject};
use plexus_tests::{bounded, until};

/// Deterministic content that differs in every chunk.
fn content(len: usize) -> Bytes {
    let mut x: u32 = 0x9e37_79b9;
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

async fn start(b: NodeBuilder) -> Node {
    bounded("node start", b.start()).await.expect("node starts")
}

/// Seeders serving `serve(i)`, and a downloader node (serving its own store)
/// that lists them all.
async fn seeders_and_downloader<R: IntoRouter>(
    n: usize,
    serve: impl Fn(usize) -> R,
) -> (Vec<Node>, Node, FileStore) {
    let mut seeders = Vec::new();
    for i in 0..n {
        seeders.push(start(builder(&format!("seeder-{i}"), Vec::new()).serve(serve(i))).await);
    }
    let urls = seeders
        .iter()
        .map(|s| s.local_urls()[0].to_string())
        .collect();
    let mine = FileStore::with_chunk_size(CHUNK);
    let downloader = start(builder("downloader", urls).serve(mine.clone())).await;
    let peers = downloader.peers::<FileShareClient>();
    bounded("seeders link", peers.wait_until(|ids| ids.len() == n)).await;
    (seeders, downloader, mine)
}

const CHUNK: u32 = 16 * 1024;

/// `len` bytes of content offered in a fresh store cutting `CHUNK`s.
fn offered(len: usize) -> (Bytes, FileStore, FileInfo) {
    let data = content(len);
    let store = FileStore::with_chunk_size(CHUNK);
    let info = store
        .offer_bytes("file.bin", data.clone())
        .expect("offered");
    (data, store, info)
}

/// Downloads `id` from the downloader's peers, `per_peer` chunks at a time.
async fn fetch(downloader: &Node, id: FileId, per_peer: usize) -> Downloaded {
    bounded(
        "download",
        Download::builder(downloader.peers::<FileShareClient>(), id)
            .per_peer(per_peer)
            .start()
            .finish(),
    )
    .await
    .expect("downloaded")
}

/// `n` seeders of `store` that each take `ms` per chunk, and a downloader.
async fn slow_seeders(n: usize, store: &FileStore, ms: u64) -> (Vec<Node>, Node, FileStore) {
    seeders_and_downloader(n, |_| {
        FileShareHandler::new(Wrapped {
            delay: Duration::from_millis(ms),
            ..Wrapped::new(store)
        })
    })
    .await
}

/// Stops the downloader, then every seeder.
async fn stop_all(downloader: Node, seeders: Vec<Node>) {
    for n in std::iter::once(downloader).chain(seeders) {
        bounded("stop", n.stop()).await.expect("stops");
    }
}

/// A directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("plexus-files-{}", NodeId::random()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A store behind a wrapper that can slow, hang or corrupt its chunks.
#[derive(Clone)]
struct Wrapped {
    store: FileStore,
    delay: Duration,
    hang: bool,
    corrupt: bool,
    served: Arc<AtomicU32>,
}

impl Wrapped {
    fn new(store: &FileStore) -> Wrapped {
        Wrapped {
            store: store.clone(),
            delay: Duration::ZERO,
            hang: false,
            corrupt: false,
            served: Arc::default(),
        }
    }
}

impl FileShare for Wrapped {
    async fn catalog(&self) -> Result<Vec<FileInfo>, Reject> {
        Ok(self.store.files())
    }

    async fn manifest(&self, id: FileId) -> Result<Manifest, Reject> {
        self.store
            .manifest(id)
            .ok_or_else(|| Reject::new(NOT_FOUND, "not here"))
    }

    async fn have(&self, id: FileId) -> Result<Bytes, Reject> {
        self.store
            .have(id)
            .ok_or_else(|| Reject::new(NOT_FOUND, "not here"))
    }

    async fn chunk(&self, id: FileId, index: u32) -> Result<Blob, Reject> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        let data = self.store.read_chunk(id, index).await?;
        self.served.fetch_add(1, Ordering::SeqCst);
        if self.corrupt {
            let mut bad = data.to_vec();
            bad[0] ^= 0xff;
            return Ok(bad.into());
        }
        Ok(data.into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_downloaded_from_every_seeder_at_once_and_checked() {
    // 65 chunks, the last one short.
    let (data, store, info) = offered(64 * CHUNK as usize + 1000);
    // Each seeder takes a moment per chunk, so all of them are kept busy.
    let (seeders, downloader, mine) = slow_seeders(4, &store, 2).await;

    // The catalog says who has what.
    let (_, client) = downloader.peers::<FileShareClient>().list().remove(0);
    let catalog = bounded("catalog", client.catalog()).await.expect("catalog");
    assert_eq!(catalog, vec![info.clone()]);

    let download = Download::builder(downloader.peers::<FileShareClient>(), info.id)
        .per_peer(2)
        .share_into(&mine)
        .start();
    let mut progress = download.progress();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while progress.changed().await.is_ok() {
            let p = progress.borrow_and_update().clone();
            seen.push(p.received_bytes);
            if p.finished {
                break;
            }
        }
        seen
    });
    let done = bounded("download", download.finish())
        .await
        .expect("downloaded");
    assert_eq!(done.saved, Saved::Memory(data.clone()));
    assert_eq!(done.manifest.chunks(), 65);
    assert_eq!(done.retries, 0);
    // A swarm: every seeder sent some of it.
    assert_eq!(done.by_peer.len(), 4, "chunks by peer: {:?}", done.by_peer);
    assert_eq!(done.by_peer.values().sum::<u32>(), 65);
    for s in &seeders {
        assert!(done.by_peer[&s.id()] >= 4, "{:?}", done.by_peer);
    }
    // Progress only grew, and ended at the file's size.
    let seen = bounded("progress", watcher).await.expect("watcher");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&(data.len() as u64)));
    // The downloader offers it now.
    assert!(mine.contains(info.id));

    stop_all(downloader, seeders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_dying_mid_download_has_its_chunks_fetched_from_the_others() {
    let (data, store, info) = offered(48 * CHUNK as usize);
    let (mut seeders, downloader, _) = slow_seeders(3, &store, 10).await;
    let download = Download::builder(downloader.peers::<FileShareClient>(), info.id)
        .per_peer(2)
        .start();
    let progress = download.progress();
    until("a quarter is in", || {
        progress.borrow().received_chunks >= 12
    })
    .await;
    let victim = seeders.pop().expect("three seeders");
    let victim_id = victim.id();
    drop(victim); // a crash: its connections are aborted mid-chunk

    let done = bounded("download", download.finish())
        .await
        .expect("downloaded despite the crash");
    assert_eq!(done.saved, Saved::Memory(data));
    assert_eq!(done.by_peer.values().sum::<u32>(), 48);
    assert!(done.by_peer.get(&victim_id).copied().unwrap_or(0) < 48);
    for s in &seeders {
        assert!(done.by_peer[&s.id()] > 0);
    }
    stop_all(downloader, seeders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_whose_link_drops_and_returns_is_a_source_again() {
    let (data, store, info) = offered(80 * CHUNK as usize);
    let (seeders, downloader, _) = slow_seeders(2, &store, 20).await;
    let download = Download::builder(downloader.peers::<FileShareClient>(), info.id)
        .per_peer(2)
        .start();
    let progress = download.progress();
    until("some chunks are in", || {
        progress.borrow().received_chunks >= 8
    })
    .await;
    // Cut the link to seeder 0 with chunks in flight; static discovery
    // dials it again and it rejoins the peer set.
    let flaky = seeders[0].id();
    let before = progress.borrow().by_peer.get(&flaky).copied().unwrap_or(0);
    for conn in downloader.endpoint().connections() {
        if conn.peer().node_id() == flaky {
            conn.abort();
        }
    }
    until("it is a source again and serves more", || {
        progress.borrow().by_peer.get(&flaky).copied().unwrap_or(0) > before
            || progress.borrow().finished
    })
    .await;
    let done = bounded("download", download.finish())
        .await
        .expect("downloaded across the drop");
    assert_eq!(done.saved, Saved::Memory(data));
    assert!(
        done.by_peer[&flaky] > before,
        "seeder 0 served nothing after it came back: {:?} (before: {before})",
        done.by_peer
    );
    stop_all(downloader, seeders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_in_progress_serves_the_chunks_it_has_to_others() {
    // One slow seeder. A first downloader shares what it gets as it goes;
    // a second one, started once the first has 20 of 90 chunks, takes
    // chunks from both — from the first downloader while that one is still
    // downloading.
    let (data, store, info) = offered(90 * CHUNK as usize);
    let seeder = start(
        builder("seeder", Vec::new()).serve(FileShareHandler::new(Wrapped {
            delay: Duration::from_millis(15),
            ..Wrapped::new(&store)
        })),
    )
    .await;
    let seeder_url = seeder.local_urls()[0].to_string();
    let first_store = FileStore::with_chunk_size(CHUNK);
    let first = start(builder("first", vec![seeder_url.clone()]).serve(first_store.clone())).await;
    bounded(
        "first links",
        first
            .peers::<FileShareClient>()
            .wait_until(|ids| ids == [seeder.id()]),
    )
    .await;
    let first_download = Download::builder(first.peers::<FileShareClient>(), info.id)
        .per_peer(1)
        .share_into(&first_store)
        .start();
    let first_progress = first_download.progress();
    until("the first has 20 of 90 chunks", || {
        first_progress.borrow().received_chunks >= 20
    })
    .await;
    assert!(!first_store.contains(info.id), "not offered complete yet");
    let have = first_store.have(info.id).expect("offered in part");
    assert_eq!(have.len(), 12, "a bit per chunk");

    let second = start(
        builder(
            "second",
            vec![seeder_url, first.local_urls()[0].to_string()],
        )
        .serve(FileStore::new()),
    )
    .await;
    let peers = second.peers::<FileShareClient>();
    bounded("second links", peers.wait_until(|ids| ids.len() == 2)).await;
    let second_download = Download::builder(peers, info.id)
        .per_peer(2)
        .probe_every(Duration::from_millis(20))
        .start();
    let second_progress = second_download.progress();
    until("a chunk from the first downloader", || {
        second_progress.borrow().by_peer.contains_key(&first.id())
    })
    .await;
    assert!(
        !first_progress.borrow().finished,
        "the first downloader served chunks before it had the whole file"
    );

    let done = bounded("second download", second_download.finish())
        .await
        .expect("downloaded");
    assert_eq!(done.saved, Saved::Memory(data.clone()));
    assert!(done.by_peer[&first.id()] > 0 && done.by_peer[&seeder.id()] > 0);
    let first_done = bounded("first download", first_download.finish())
        .await
        .expect("downloaded");
    assert_eq!(first_done.saved, Saved::Memory(data));
    assert!(first_store.contains(info.id), "offered complete now");
    for n in [second, first, seeder] {
        bounded("stop", n.stop()).await.expect("stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_game_takes_the_last_chunks_from_another_peer_when_one_is_stuck() {
    // One seeder answers manifests but never sends a chunk. Without an end
    // game its chunks would wait for the 30 s chunk timeout; with it, the
    // other seeder is asked for them once nothing else is left.
    let (data, store, info) = offered(24 * CHUNK as usize);
    let (seeders, downloader, _) = seeders_and_downloader(2, |i| {
        FileShareHandler::new(Wrapped {
            hang: i == 0,
            ..Wrapped::new(&store)
        })
    })
    .await;
    let stuck = seeders[0].id();
    let done = fetch(&downloader, info.id, 2).await;
    assert_eq!(done.saved, Saved::Memory(data));
    assert!(!done.by_peer.contains_key(&stuck), "{:?}", done.by_peer);
    assert_eq!(done.by_peer[&seeders[1].id()], 24);
    stop_all(downloader, seeders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_wrong_bytes_is_dropped_and_the_file_is_still_right() {
    let (data, store, info) = offered(20 * CHUNK as usize);
    let liar = Wrapped {
        corrupt: true,
        ..Wrapped::new(&store)
    };
    let lies = liar.served.clone();
    let (seeders, downloader, _) = seeders_and_downloader(2, |i| {
        if i == 0 {
            FileShareHandler::new(liar.clone())
        } else {
            // Slow enough that the liar is surely asked before the end.
            FileShareHandler::new(Wrapped {
                delay: Duration::from_millis(5),
                ..Wrapped::new(&store)
            })
        }
    })
    .await;
    let liar_id = seeders[0].id();
    let done = fetch(&downloader, info.id, 1).await;
    assert_eq!(done.saved, Saved::Memory(data));
    assert!(!done.by_peer.contains_key(&liar_id), "{:?}", done.by_peer);
    assert_eq!(done.by_peer[&seeders[1].id()], 20);
    let lies = lies.load(Ordering::SeqCst);
    assert_eq!(lies, 1, "the liar was asked once, then dropped");
    assert_eq!(done.retries, lies);
    stop_all(downloader, seeders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_nobody_offers_is_not_found_after_the_wait() {
    let store = FileStore::with_chunk_size(CHUNK);
    let (seeders, downloader, _) = seeders_and_downloader(2, |_| store.clone()).await;
    let missing = Manifest::of("nope", b"not offered anywhere", CHUNK).id();
    let result = bounded(
        "download",
        Download::builder(downloader.peers::<FileShareClient>(), missing)
            .wait_for_sources(Duration::from_millis(300))
            .probe_every(Duration::from_millis(50))
            .start()
            .finish(),
    )
    .await;
    match result {
        Err(DownloadError::NotFound { id, .. }) => assert_eq!(id, missing),
        other => panic!("expected NotFound, got {other:?}"),
    }

    // A file offered while a download waits is found by asking again.
    let late = content(3 * CHUNK as usize);
    let id = Manifest::of("late", &late, CHUNK).id();
    let download = Download::builder(downloader.peers::<FileShareClient>(), id)
        .probe_every(Duration::from_millis(50))
        .start();
    tokio::time::sleep(Duration::from_millis(120)).await;
    store.offer_bytes("late", late.clone()).expect("offered");
    let done = bounded("late download", download.finish())
        .await
        .expect("found on a later probe");
    assert_eq!(done.saved, Saved::Memory(late));
    stop_all(downloader, seeders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_the_download_and_removes_the_partial_file() {
    let data = content(8 * CHUNK as usize);
    let store = FileStore::with_chunk_size(CHUNK);
    let info = store.offer_bytes("f.bin", data).expect("offered");
    let (seeders, downloader, _) = seeders_and_downloader(1, |_| {
        FileShareHandler::new(Wrapped {
            hang: true,
            ..Wrapped::new(&store)
        })
    })
    .await;
    let dir = TempDir::new();
    let path = dir.0.join("f.bin");
    let download = Download::builder(downloader.peers::<FileShareClient>(), info.id)
        .save_to(&path)
        .start();
    let progress = download.progress();
    until("the manifest is in", || progress.borrow().total_chunks == 8).await;
    let part = dir.0.join("f.bin.part");
    until("the partial file exists", || part.exists()).await;
    download.cancel();
    match bounded("cancelled download", download.finish()).await {
        Err(DownloadError::Cancelled { id }) => assert_eq!(id, info.id),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert!(!part.exists() && !path.exists(), "nothing left on disk");
    assert!(progress.borrow().finished);
    stop_all(downloader, seeders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_saved_to_disk_is_shared_on_from_disk() {
    let dir = TempDir::new();
    let original = dir.0.join("original.bin");
    let data = content(10 * CHUNK as usize + 7);
    std::fs::write(&original, &data).expect("write");
    let store = FileStore::with_chunk_size(CHUNK);
    let info = bounded("offer", store.offer_path(&original))
        .await
        .expect("offered");
    assert_eq!(
        (info.name.as_str(), info.size),
        ("original.bin", data.len() as u64)
    );
    assert_eq!(
        info.id,
        Manifest::of("x", &data, CHUNK).id(),
        "same id as in memory"
    );
    match store.offer_path(dir.0.join("missing.bin")).await {
        Err(OfferError::Io { path, .. }) => assert!(path.ends_with("missing.bin")),
        other => panic!("expected an I/O error naming the file, got {other:?}"),
    }

    let (seeders, downloader, mine) = seeders_and_downloader(1, |_| store.clone()).await;
    let copy = dir.0.join("copy.bin");
    let done = bounded(
        "download to disk",
        Download::builder(downloader.peers::<FileShareClient>(), info.id)
            .save_to(&copy)
            .share_into(&mine)
            .start()
            .finish(),
    )
    .await
    .expect("downloaded");
    assert_eq!(done.saved, Saved::File(copy.clone()));
    assert_eq!(std::fs::read(&copy).expect("read"), data);
    assert!(!dir.0.join("copy.bin.part").exists());

    // The seeder goes away; a newcomer gets the file from the downloader,
    // which serves it from its saved copy.
    for s in seeders {
        s.stop().await.expect("stops");
    }
    let newcomer = start(
        builder("newcomer", vec![downloader.local_urls()[0].to_string()]).serve(FileStore::new()),
    )
    .await;
    let peers = newcomer.peers::<FileShareClient>();
    bounded("linked", peers.wait_until(|ids| ids == [downloader.id()])).await;
    let again = bounded(
        "second-hand download",
        Download::builder(peers, info.id).start().finish(),
    )
    .await
    .expect("downloaded from the first downloader");
    assert_eq!(again.saved, Saved::Memory(data));
    assert_eq!(
        again.by_peer.keys().copied().collect::<Vec<_>>(),
        [downloader.id()]
    );

    // A file changed on disk is refused, not served wrong.
    std::fs::write(&copy, content(10 * CHUNK as usize + 7).slice(1..)).expect("rewrite");
    match mine.read_chunk(info.id, 0).await {
        Err(r) => assert_eq!(r.code(), UNAVAILABLE, "{r:?}"),
        Ok(_) => panic!("a changed file was served"),
    }
    newcomer.stop().await.expect("stops");
    downloader.stop().await.expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_rejects_unknown_files_and_chunks_past_the_end() {
    let store = FileStore::with_chunk_size(CHUNK);
    let info = store.offer_bytes("small", content(100)).expect("offered");
    let (seeders, downloader, _) = seeders_and_downloader(1, |_| store.clone()).await;
    let (_, client) = downloader.peers::<FileShareClient>().list().remove(0);
    let unknown = Manifest::of("x", b"other", CHUNK).id();
    fn code<T: std::fmt::Debug>(r: Result<T, CallError>) -> u32 {
        match r {
            Err(CallError::Rejected(r)) => r.code(),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    assert_eq!(code(client.manifest(unknown).await), NOT_FOUND);
    assert_eq!(code(client.chunk(unknown, 0).await), NOT_FOUND);
    assert_eq!(code(client.chunk(info.id, 1).await), OUT_OF_RANGE);
    assert_eq!(
        client.chunk(info.id, 0).await.expect("chunk 0"),
        content(100)
    );
    assert!(store.remove(info.id));
    assert_eq!(code(client.manifest(info.id).await), NOT_FOUND);
    stop_all(downloader, seeders).await;
}
