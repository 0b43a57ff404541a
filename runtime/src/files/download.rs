//! Downloading one file in chunks from every peer that has it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::limits::{DownloadLimits, Permit, Seat};
use super::{FileId, FileShareClient, FileStore, Manifest, NOT_FOUND, OUT_OF_RANGE, UNAVAILABLE};
use crate::codec::Blob;
use crate::connection::Backoff;
use crate::node::{Client, PeerChange, PeerSet};
use crate::{CallError, CallOptions, NodeId};

/// How far a download has come. Sent on [`Download::progress`] after every
/// chunk, source change and retry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The file's size; 0 until a manifest arrives.
    pub total_bytes: u64,
    /// Bytes received and checked.
    pub received_bytes: u64,
    /// The file's chunks; 0 until a manifest arrives.
    pub total_chunks: u32,
    /// Chunks received and checked.
    pub received_chunks: u32,
    /// Peers serving the file to this download now.
    pub sources: usize,
    /// Chunk fetches that failed and were (or will be) tried again.
    pub retries: u32,
    /// Checked chunks by the peer that sent them.
    pub by_peer: BTreeMap<NodeId, u32>,
    /// Whether the download has ended (done, failed or cancelled).
    pub finished: bool,
}

/// Where a finished download's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Saved {
    /// In memory (no [`DownloadBuilder::save_to`]).
    Memory(Bytes),
    /// In this file.
    File(PathBuf),
}

/// A finished download.
#[derive(Clone, Debug)]
pub struct Downloaded {
    /// The file's id.
    pub id: FileId,
    /// Its manifest (name, size, chunks).
    pub manifest: Manifest,
    /// Where its bytes are.
    pub saved: Saved,
    /// Chunks by the peer that sent them.
    pub by_peer: BTreeMap<NodeId, u32>,
    /// Chunk fetches that failed and were tried again.
    pub retries: u32,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// No peer offered the file within the wait.
    #[error("no peer offers file {id} (waited {waited:?})")]
    NotFound {
        /// The file.
        id: FileId,
        /// How long the download waited for a peer that has it.
        waited: Duration,
    },
    /// Every peer serving the file went away or failed, and none came back
    /// within the wait.
    #[error("file {id}: no peer left to serve it after {received} of {total} chunks (waited {waited:?})")]
    NoSources {
        /// The file.
        id: FileId,
        /// Chunks received by then.
        received: u32,
        /// The file's chunks.
        total: u32,
        /// How long the download waited for a new source.
        waited: Duration,
    },
    /// One chunk failed on every try.
    #[error("file {id}: chunk {index} failed {attempts} times; last: {last}")]
    ChunkFailed {
        /// The file.
        id: FileId,
        /// The chunk.
        index: u32,
        /// Tries made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// Writing the file failed.
    #[error("file {id}: cannot write {path}: {source}")]
    Io {
        /// The file.
        id: FileId,
        /// Where it was being written.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file does not fit in memory here; download it with
    /// [`DownloadBuilder::save_to`].
    #[error("file {id}: {size} bytes do not fit in memory; save it to a file instead")]
    TooLargeForMemory {
        /// The file.
        id: FileId,
        /// Its size.
        size: u64,
    },
    /// [`Download::cancel`] was called (or the handle dropped).
    #[error("file {id}: download cancelled")]
    Cancelled {
        /// The file.
        id: FileId,
    },
    /// The download's task ended abnormally (it panicked).
    #[error("file {id}: download task failed: {reason}")]
    Failed {
        /// The file.
        id: FileId,
        /// What happened.
        reason: String,
    },
}

/// The default number of chunks asked of one peer at a time.
pub const DEFAULT_PER_PEER: usize = 4;
/// The default number of tries per chunk.
pub const DEFAULT_ATTEMPTS: u32 = 5;
/// The default cap on chunks of one file in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;

/// Configures a [`Download`]; see [`Download::builder`].
#[must_use]
pub struct DownloadBuilder {
    peers: PeerSet<FileShareClient>,
    id: FileId,
    per_peer: usize,
    attempts: u32,
    chunk_timeout: Duration,
    wait: Duration,
    probe_every: Duration,
    save_to: Option<PathBuf>,
    share: Option<FileStore>,
    max_in_flight: usize,
    limits: Option<DownloadLimits>,
    retry_backoff: Backoff,
}

impl std::fmt::Debug for DownloadBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadBuilder")
            .field("id", &self.id)
            .field("per_peer", &self.per_peer)
            .field("attempts", &self.attempts)
            .field("save_to", &self.save_to)
            .finish_non_exhaustive()
    }
}

impl DownloadBuilder {
    /// Chunks asked of one peer at a time (default [`DEFAULT_PER_PEER`], at
    /// least 1).
    pub fn per_peer(mut self, chunks: usize) -> Self {
        self.per_peer = chunks.max(1);
        self
    }

    /// Tries per chunk before the download fails (default
    /// [`DEFAULT_ATTEMPTS`], at least 1). A failed try moves the chunk to
    /// another peer when there is one.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Chunks of this file in flight at once, over every peer (default
    /// [`DEFAULT_MAX_IN_FLIGHT`], at least 1).
    pub fn max_in_flight(mut self, chunks: usize) -> Self {
        self.max_in_flight = chunks.max(1);
        self
    }

    /// Shares a cap on chunks in flight with every other download given the
    /// same `limits`; a freed place goes to the download nearest to done
    /// (see [`DownloadLimits`]).
    pub fn limits(mut self, limits: &DownloadLimits) -> Self {
        self.limits = Some(limits.clone());
        self
    }

    /// How long a chunk that failed waits before it is asked again: the
    /// n-th failure of a chunk waits `backoff.delay(n)` (default 100 ms
    /// doubling to 5 s, jittered). Meanwhile other chunks go on.
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// How long one chunk may take (default 30 s).
    pub fn chunk_timeout(mut self, timeout: Duration) -> Self {
        self.chunk_timeout = timeout;
        self
    }

    /// How long to wait for a peer that has the file, at the start or when
    /// every source is gone (default 10 s).
    pub fn wait_for_sources(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How often peers that did not have the file are asked again, so
    /// peers that got it since (e.g. by downloading it) become sources
    /// (default 1 s).
    pub fn probe_every(mut self, every: Duration) -> Self {
        self.probe_every = every.max(Duration::from_millis(10));
        self
    }

    /// Writes the file to `path` (through `path.part`, renamed when every
    /// chunk is in) instead of keeping it in memory.
    pub fn save_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.save_to = Some(path.into());
        self
    }

    /// Offers the file in `store` while it downloads — each chunk once it is
    /// checked — and the whole file once complete, so other downloaders get
    /// chunks from this node too. A failed or cancelled download stops
    /// being offered.
    pub fn share_into(mut self, store: &FileStore) -> Self {
        self.share = Some(store.clone());
        self
    }

    /// Starts downloading in a task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(self) -> Download {
        let (tx, rx) = watch::channel(Progress::default());
        let cancel = CancellationToken::new();
        let id = self.id;
        let task = tokio::spawn(run(self, tx, cancel.clone()));
        Download {
            id,
            progress: rx,
            cancel,
            task: Some(task),
        }
    }
}

/// One file being downloaded from a peer set. Dropping it cancels the
/// download.
///
/// - **Swarm**: chunks are spread over every peer that has them — whole
///   files, and downloads in progress that share what they have — at most
///   [`per_peer`](DownloadBuilder::per_peer) at a time each, so faster peers
///   serve more. Peers that join the set (or get more of the file later) are
///   asked again and used.
/// - **Checked**: the manifest must match the id asked for, and each chunk
///   its hash in the manifest; a peer that sends anything else is dropped.
/// - **End game**: once every chunk is handed out, chunks still on their way
///   are also asked of a second peer; the first checked answer wins and the
///   other call is cancelled, so a stuck peer holds up nothing.
/// - **Retries**: a failed chunk goes to another peer, up to
///   [`attempts`](DownloadBuilder::attempts) tries; a peer that lost the
///   file, went away or sent wrong bytes stops being a source.
/// - **Progress and cancel**: [`progress`](Self::progress) is a watch of
///   [`Progress`]; [`cancel`](Self::cancel) stops it (in-flight chunk calls
///   are cancelled, a partial file is removed).
#[derive(Debug)]
pub struct Download {
    id: FileId,
    progress: watch::Receiver<Progress>,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<Downloaded, DownloadError>>>,
}

impl Download {
    /// Starts configuring a download of file `id` from the members of
    /// `peers`.
    pub fn builder(peers: PeerSet<FileShareClient>, id: FileId) -> DownloadBuilder {
        DownloadBuilder {
            peers,
            id,
            per_peer: DEFAULT_PER_PEER,
            attempts: DEFAULT_ATTEMPTS,
            chunk_timeout: Duration::from_secs(30),
            wait: Duration::from_secs(10),
            probe_every: Duration::from_secs(1),
            save_to: None,
            share: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            limits: None,
            retry_backoff: Backoff::new()
                .initial(Duration::from_millis(100))
                .max(Duration::from_secs(5)),
        }
    }

    /// The file being downloaded.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// A watch of the download's progress; `changed()` fails once it ended
    /// and the last value was seen.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Stops the download; [`finish`](Self::finish) then returns
    /// [`DownloadError::Cancelled`] (unless it had already finished).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the download to end.
    pub async fn finish(mut self) -> Result<Downloaded, DownloadError> {
        let Some(task) = self.task.take() else {
            return Err(DownloadError::Cancelled { id: self.id });
        };
        match task.await {
            Ok(result) => result,
            Err(e) => Err(DownloadError::Failed {
                id: self.id,
                reason: e.to_string(),
            }),
        }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.cancel.cancel();
        }
    }
}

/// A peer serving the file to this download.
struct Source {
    client: FileShareClient,
    in_flight: usize,
    /// The chunks it said it has (see [`FileShare::have`](super::FileShare::have)).
    have: Bytes,
    /// Whether it has every chunk; a partial source is asked again every
    /// `probe_every`.
    complete: bool,
}

impl Source {
    fn has(&self, index: u32) -> bool {
        self.complete || super::store::has_chunk(&self.have, index)
    }
}

/// Where checked chunks go.
enum Sink {
    Memory(Vec<u8>),
    File {
        path: PathBuf,
        part: PathBuf,
        file: tokio::fs::File,
    },
}

/// A chunk call: who, which chunk, what came back, and the place under
/// the shared limits it held.
type Fetch = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (NodeId, u32, Result<Bytes, CallError>, Option<Permit>)>
            + Send,
    >,
>;
/// A peer's manifest and the chunks it has.
type Offer = Result<(Manifest, Bytes), CallError>;
type Probe =
    std::pin::Pin<Box<dyn std::future::Future<Output = (NodeId, FileShareClient, Offer)> + Send>>;

struct Run {
    cfg: DownloadBuilder,
    progress: watch::Sender<Progress>,
    manifest: Option<Manifest>,
    sink: Option<Sink>,
    sources: BTreeMap<NodeId, Source>,
    /// Peers being asked for the manifest now.
    probing: HashSet<NodeId>,
    /// Peers that sent a wrong manifest or wrong bytes: never asked again.
    bad: HashSet<NodeId>,
    /// Chunks to hand out, rarest first: (rank, index), see [`rank`].
    pending: BTreeSet<(u32, u32)>,
    /// How many sources have each chunk.
    avail: Vec<u32>,
    /// Failed chunks waiting out their backoff, until when.
    cooling: BTreeMap<u32, Instant>,
    /// Chunk calls in flight, end-game duplicates included.
    in_flight: usize,
    /// This download's place under shared limits.
    seat: Option<Seat>,
    /// Permits of calls that just ended, to reuse or give back.
    spare: Vec<Permit>,
    /// Whether it asked the limits for a permit and waits to be handed one.
    wants_permit: bool,
    /// Failed tries per chunk, and the peers each failed at.
    failures: BTreeMap<u32, (u32, BTreeSet<NodeId>)>,
    fetches: FuturesUnordered<Fetch>,
    /// Who is fetching each chunk now (more than one in the end game).
    fetching: HashMap<u32, Vec<(NodeId, AbortHandle)>>,
    /// Chunks received and checked.
    done: Vec<bool>,
    /// Chunks not yet received.
    remaining: u32,
    probes: FuturesUnordered<Probe>,
    /// Turn for ties between equally loaded sources.
    turn: usize,
}

/// The place of a chunk with `avail` sources in the pending order: rarer
/// first, and chunks nobody has last (they cannot be asked of anyone).
fn rank(avail: u32) -> u32 {
    if avail == 0 {
        u32::MAX
    } else {
        avail
    }
}

async fn run(
    cfg: DownloadBuilder,
    progress: watch::Sender<Progress>,
    cancel: CancellationToken,
) -> Result<Downloaded, DownloadError> {
    let id = cfg.id;
    let seat = cfg.limits.as_ref().map(DownloadLimits::seat);
    let mut run = Run {
        cfg,
        progress,
        manifest: None,
        sink: None,
        sources: BTreeMap::new(),
        probing: HashSet::new(),
        bad: HashSet::new(),
        pending: BTreeSet::new(),
        avail: Vec::new(),
        cooling: BTreeMap::new(),
        in_flight: 0,
        seat: None,
        spare: Vec::new(),
        wants_permit: false,
        failures: BTreeMap::new(),
        fetches: FuturesUnordered::new(),
        fetching: HashMap::new(),
        done: Vec::new(),
        remaining: 0,
        probes: FuturesUnordered::new(),
        turn: 0,
    };
    run.seat = seat;
    let result = tokio::select! {
        result = run.drive() => result,
        () = cancel.cancelled() => Err(DownloadError::Cancelled { id }),
    };
    if result.is_err() {
        if let Some(store) = &run.cfg.share {
            store.abandon_partial(id);
        }
        if let Some(Sink::File { part, .. }) = run.sink.take() {
            let _ = tokio::fs::remove_file(&part).await;
        }
    }
    run.progress.send_modify(|p| p.finished = true);
    result
}

impl Run {
    async fn drive(&mut self) -> Result<Downloaded, DownloadError> {
        let id = self.cfg.id;
        let mut changes = self.cfg.peers.changes();
        for (peer, client) in self.cfg.peers.list() {
            self.probe(peer, client);
        }
        let mut probe_tick = tokio::time::interval(self.cfg.probe_every);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe_tick.reset();
        // Armed while nothing can make progress: nothing in flight and no
        // source with a chunk still missing.
        let mut stalled_since: Option<tokio::time::Instant> = None;
        let mut peers_open = true;
        loop {
            self.schedule();
            if let Some(m) = &self.manifest {
                if self.remaining == 0 {
                    // Duplicates still running (end game) are dropped, and
                    // so cancelled, with this download.
                    let m = m.clone();
                    return self.complete(m).await;
                }
            }
            // Probes do not count: peers are asked again every tick, and a
            // download nobody serves must still end.
            let idle = self.fetches.is_empty() && !self.servable() && self.cooling.is_empty();
            if !idle {
                stalled_since = None;
            } else if stalled_since.is_none() {
                stalled_since = Some(tokio::time::Instant::now());
            }
            let wait = self.cfg.wait;
            let give_up = async move {
                match stalled_since {
                    Some(since) => tokio::time::sleep_until(since + wait).await,
                    None => std::future::pending().await,
                }
            };
            let cooled_at = self.cooling.values().min().copied();
            let cooled = async move {
                match cooled_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let seat = self.seat.as_ref().filter(|_| self.wants_permit);
            let granted = async move {
                match seat {
                    Some(seat) => seat.granted().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((peer, client, result)) = self.probes.next() => {
                    self.probing.remove(&peer);
                    self.probed(peer, client, result).await?;
                }
                Some((peer, index, result, permit)) = self.fetches.next() => {
                    self.in_flight -= 1;
                    self.spare.extend(permit);
                    self.fetched(peer, index, result).await?;
                }
                () = cooled => self.warm_up(),
                // A place under the shared limits was handed to us.
                () = granted => {}
                change = changes.next(), if peers_open => match change {
                    Some(PeerChange::Joined(peer)) => {
                        if let Some(client) = self.cfg.peers.get(peer) {
                            self.probe(peer, client);
                        }
                    }
                    Some(PeerChange::Left(peer)) => {
                        if self.set_source(peer, None) {
                            self.publish_sources();
                        }
                    }
                    None => peers_open = false,
                },
                _ = probe_tick.tick() => {
                    // Peers without the file, and partial sources, may have
                    // more of it by now.
                    for (peer, client) in self.cfg.peers.list() {
                        if !self.sources.get(&peer).is_some_and(|s| s.complete) {
                            self.probe(peer, client);
                        }
                    }
                }
                () = give_up => {
                    let waited = self.cfg.wait;
                    return Err(match &self.manifest {
                        None => DownloadError::NotFound { id, waited },
                        Some(m) => DownloadError::NoSources {
                            id,
                            received: self.progress.borrow().received_chunks,
                            total: m.chunks(),
                            waited,
                        },
                    });
                }
            }
        }
    }

    /// Asks `peer` for the manifest, unless it is being asked or is bad.
    fn probe(&mut self, peer: NodeId, client: FileShareClient) {
        if self.bad.contains(&peer) || !self.probing.insert(peer) {
            return;
        }
        let id = self.cfg.id;
        let client = client.with_call_options(CallOptions::new().timeout(self.cfg.chunk_timeout));
        self.probes.push(Box::pin(async move {
            let offer = match client.manifest(id).await {
                Ok(manifest) => client.have(id).await.map(|have| (manifest, have)),
                Err(e) => Err(e),
            };
            (peer, client, offer)
        }));
    }

    async fn probed(
        &mut self,
        peer: NodeId,
        client: FileShareClient,
        offer: Offer,
    ) -> Result<(), DownloadError> {
        let (manifest, have) = match offer {
            Ok(offer) => offer,
            Err(e) => {
                tracing::debug!(%peer, file = %self.cfg.id, "not a source: {e}");
                if self.set_source(peer, None) {
                    self.publish_sources();
                }
                return Ok(());
            }
        };
        let chunks = manifest.chunks();
        if manifest.id() != self.cfg.id
            || !manifest.is_well_formed()
            || have.len() != (chunks as usize).div_ceil(8)
        {
            tracing::warn!(%peer, file = %self.cfg.id, "peer sent a manifest for another file, or a chunk map of the wrong size; ignoring it from now on");
            self.bad.insert(peer);
            if self.set_source(peer, None) {
                self.publish_sources();
            }
            return Ok(());
        }
        let complete = (0..chunks).all(|i| super::store::has_chunk(&have, i));
        if !self.cfg.peers.ids().contains(&peer) {
            return Ok(()); // it left while we asked
        }
        if self.manifest.is_none() {
            self.start(manifest).await?;
        }
        // A peer asked again (it rejoined, or it is partial) keeps its
        // count of chunks in flight; its client and chunk map are new.
        let in_flight = self.sources.get(&peer).map_or(0, |s| s.in_flight);
        let source = Source {
            client,
            in_flight,
            have,
            complete,
        };
        self.set_source(peer, Some(source));
        self.publish_sources();
        Ok(())
    }

    /// The manifest is known: set up the sink and the chunk queue.
    async fn start(&mut self, manifest: Manifest) -> Result<(), DownloadError> {
        let id = self.cfg.id;
        self.sink = Some(match &self.cfg.save_to {
            None => {
                let mut buf = Vec::new();
                usize::try_from(manifest.size)
                    .ok()
                    .and_then(|size| buf.try_reserve_exact(size).ok())
                    .ok_or(DownloadError::TooLargeForMemory {
                        id,
                        size: manifest.size,
                    })?;
                buf.resize(manifest.size as usize, 0);
                Sink::Memory(buf)
            }
            Some(path) => {
                let mut part = path.clone().into_os_string();
                part.push(".part");
                let part = PathBuf::from(part);
                let io = |source| DownloadError::Io {
                    id,
                    path: part.clone(),
                    source,
                };
                let file = tokio::fs::File::create(&part).await.map_err(io)?;
                file.set_len(manifest.size).await.map_err(io)?;
                Sink::File {
                    path: path.clone(),
                    part,
                    file,
                }
            }
        });
        if let Some(store) = &self.cfg.share {
            let part = match &self.sink {
                Some(Sink::File { part, .. }) => Some(part.clone()),
                _ => None,
            };
            store.begin_partial(manifest.clone(), part);
        }
        // Nobody is counted as a source yet: the sources come after.
        self.pending = (0..manifest.chunks()).map(|i| (rank(0), i)).collect();
        self.avail = vec![0; manifest.chunks() as usize];
        self.done = vec![false; manifest.chunks() as usize];
        self.remaining = manifest.chunks();
        self.progress.send_modify(|p| {
            p.total_bytes = manifest.size;
            p.total_chunks = manifest.chunks();
        });
        self.manifest = Some(manifest);
        Ok(())
    }

    /// Sets `peer`'s source (`None`: it is none any more), keeping the
    /// count of sources per chunk and the rarity order of pending chunks.
    /// Returns whether it was a source before.
    fn set_source(&mut self, peer: NodeId, source: Option<Source>) -> bool {
        let old = match source {
            Some(s) => self.sources.insert(peer, s),
            None => self.sources.remove(&peer),
        };
        let new = self.sources.get(&peer);
        for index in 0..self.avail.len() as u32 {
            let had = old.as_ref().is_some_and(|s| s.has(index));
            let has = new.is_some_and(|s| s.has(index));
            if had == has {
                continue;
            }
            let count = &mut self.avail[index as usize];
            let before = *count;
            *count = if has {
                before + 1
            } else {
                before.saturating_sub(1)
            };
            if self.pending.remove(&(rank(before), index)) {
                self.pending.insert((rank(*count), index));
            }
        }
        old.is_some()
    }

    /// Share of the file received: how near to done it is.
    fn score(&self) -> f64 {
        let total = self.done.len();
        if total == 0 {
            return 0.0;
        }
        (total - self.remaining as usize) as f64 / total as f64
    }

    /// Chunks whose backoff is over go back to pending.
    fn warm_up(&mut self) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .cooling
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(index, _)| *index)
            .collect();
        for index in due {
            self.cooling.remove(&index);
            self.pending
                .insert((rank(self.avail[index as usize]), index));
        }
    }

    /// A place for one more chunk call under the shared limits: a permit
    /// kept from a call that just ended if no nearer download waits, else
    /// one from the limits. `Some(None)`: no shared limits. `None`: wait.
    fn permit(&mut self, score: f64) -> Option<Option<Permit>> {
        let Some(seat) = &self.seat else {
            return Some(None);
        };
        if let Some(kept) = self.spare.pop() {
            if seat.may_keep(score) {
                return Some(Some(kept));
            }
            // Handed to the nearer download.
            drop(kept);
        }
        match seat.take(score) {
            Some(permit) => Some(Some(permit)),
            None => {
                self.wants_permit = true;
                None
            }
        }
    }

    /// Hands pending chunks to sources with room, rarest chunk first (ties
    /// in chunk order): each to the least loaded source that has it (ties
    /// in turn), avoiding sources it already failed at while another has
    /// room — within the per-peer, per-file and shared caps.
    fn schedule(&mut self) {
        self.wants_permit = false;
        if self.manifest.is_some() {
            let score = self.score();
            let per_peer = self.cfg.per_peer;
            let mut room = self.cfg.max_in_flight.saturating_sub(self.in_flight);
            let mut load: HashMap<NodeId, usize> = self
                .sources
                .iter()
                .map(|(p, s)| (*p, s.in_flight))
                .collect();
            let n = self.sources.len().max(1);
            let mut picks = Vec::new();
            for &(_, index) in &self.pending {
                if room == 0 || load.values().all(|l| *l >= per_peer) {
                    break;
                }
                let failed_at = self.failures.get(&index).map(|(_, at)| at);
                let turn = self.turn.wrapping_add(picks.len());
                let pick = self
                    .sources
                    .iter()
                    .enumerate()
                    .filter(|(_, (peer, s))| load[*peer] < per_peer && s.has(index))
                    .min_by_key(|(i, (peer, _))| {
                        let failed_here = failed_at.is_some_and(|at| at.contains(*peer));
                        (failed_here, load[*peer], (i + n - turn % n) % n)
                    })
                    .map(|(_, (peer, _))| *peer);
                if let Some(peer) = pick {
                    picks.push((index, peer));
                    *load.entry(peer).or_default() += 1;
                    room -= 1;
                }
            }
            for (index, peer) in picks {
                let Some(permit) = self.permit(score) else {
                    break;
                };
                self.pending
                    .remove(&(rank(self.avail[index as usize]), index));
                self.turn = self.turn.wrapping_add(1);
                self.fetch(peer, index, permit);
            }
            if self.pending.is_empty() && self.cooling.is_empty() && !self.wants_permit {
                self.end_game(score);
            }
        }
        // Permits kept and not reused go back; a download that wants none
        // passes on what was reserved for it.
        self.spare.clear();
        if !self.wants_permit {
            if let Some(seat) = &self.seat {
                seat.withdraw();
            }
        }
    }

    /// End game: nothing is left to hand out but some chunks are still on
    /// their way — perhaps from a slow or stuck peer. Ask a second source
    /// with room for each; the first checked answer wins and the other call
    /// is cancelled.
    fn end_game(&mut self, score: f64) {
        let per_peer = self.cfg.per_peer;
        let mut waiting: Vec<u32> = self
            .fetching
            .iter()
            .filter(|(_, who)| who.len() == 1)
            .map(|(index, _)| *index)
            .collect();
        waiting.sort_unstable();
        for index in waiting {
            if self.in_flight >= self.cfg.max_in_flight {
                return;
            }
            let failed_at = self.failures.get(&index).map(|(_, at)| at);
            let busy = &self.fetching[&index];
            let pick = self
                .sources
                .iter()
                .filter(|(peer, s)| {
                    s.in_flight < per_peer
                        && s.has(index)
                        && !busy.iter().any(|(p, _)| p == *peer)
                        && !failed_at.is_some_and(|at| at.contains(peer))
                })
                .min_by_key(|(_, s)| s.in_flight)
                .map(|(peer, _)| *peer);
            if let Some(peer) = pick {
                let Some(permit) = self.permit(score) else {
                    return;
                };
                self.fetch(peer, index, permit);
            }
        }
    }

    /// Asks `peer` for chunk `index`.
    fn fetch(&mut self, peer: NodeId, index: u32, permit: Option<Permit>) {
        let source = self.sources.get_mut(&peer).expect("fetching from a source");
        source.in_flight += 1;
        self.in_flight += 1;
        let client = source.client.clone();
        let id = self.cfg.id;
        let (abort, registration) = AbortHandle::new_pair();
        self.fetching.entry(index).or_default().push((peer, abort));
        self.fetches.push(Box::pin(async move {
            let call = Abortable::new(client.chunk(id, index), registration);
            let result = match call.await {
                Ok(result) => result.map(Blob::into_bytes),
                // Another source sent it first.
                Err(_) => Err(CallError::Cancelled {
                    op: "plexus.files.FileShare/chunk".into(),
                    peer: peer.to_string().into(),
                }),
            };
            (peer, index, result, permit)
        }));
    }

    /// Whether some source has a chunk still to fetch.
    fn servable(&self) -> bool {
        self.pending.iter().any(|&(place, _)| place != rank(0))
    }

    async fn fetched(
        &mut self,
        peer: NodeId,
        index: u32,
        result: Result<Bytes, CallError>,
    ) -> Result<(), DownloadError> {
        if let Some(s) = self.sources.get_mut(&peer) {
            // Saturating: the peer may have left and joined again since this
            // chunk was asked of it, with a fresh count.
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        let others_fetching = match self.fetching.get_mut(&index) {
            Some(who) => {
                if let Some(at) = who.iter().position(|(p, _)| *p == peer) {
                    who.swap_remove(at);
                }
                let others = !who.is_empty();
                if !others {
                    self.fetching.remove(&index);
                }
                others
            }
            None => false,
        };
        if self.done.get(index as usize).copied().unwrap_or(true) {
            return Ok(()); // a duplicate that lost the race
        }
        let manifest = self.manifest.as_ref().expect("fetching means a manifest");
        let result = result.map(|data| (manifest.verify(index, &data), data));
        let failure = match result {
            Ok((true, data)) => {
                self.done[index as usize] = true;
                self.remaining -= 1;
                if let Some(who) = self.fetching.remove(&index) {
                    for (_, abort) in who {
                        abort.abort();
                    }
                }
                self.write(index, &data).await?;
                if let Some(store) = &self.cfg.share {
                    store.add_chunk(self.cfg.id, index, &data);
                }
                self.failures.remove(&index);
                self.progress.send_modify(|p| {
                    p.received_bytes += data.len() as u64;
                    p.received_chunks += 1;
                    *p.by_peer.entry(peer).or_default() += 1;
                });
                return Ok(());
            }
            Ok((false, data)) => {
                tracing::warn!(%peer, file = %self.cfg.id, index, "peer sent a chunk that does not match the manifest; dropping it as a source");
                self.bad.insert(peer);
                self.set_source(peer, None);
                format!(
                    "{peer} sent {} bytes that do not match the manifest",
                    data.len()
                )
            }
            Err(e) => {
                let gone = match &e {
                    CallError::Rejected(r) => {
                        [NOT_FOUND, OUT_OF_RANGE, UNAVAILABLE].contains(&r.code())
                    }
                    CallError::Timeout { .. } => false,
                    _ => true,
                };
                if gone {
                    self.set_source(peer, None);
                }
                e.to_string()
            }
        };
        let (tries, at) = self.failures.entry(index).or_default();
        *tries += 1;
        at.insert(peer);
        if others_fetching {
            // Another source is on it (end game): no retry needed yet.
            let sources = self.sources.len();
            self.progress.send_modify(|p| p.sources = sources);
            return Ok(());
        }
        if *tries >= self.cfg.attempts {
            return Err(DownloadError::ChunkFailed {
                id: self.cfg.id,
                index,
                attempts: *tries,
                last: failure,
            });
        }
        // Asked again once its backoff is over; other chunks go on meanwhile.
        let wait = self.cfg.retry_backoff.delay(*tries - 1);
        self.cooling.insert(index, Instant::now() + wait);
        let sources = self.sources.len();
        self.progress.send_modify(|p| {
            p.retries += 1;
            p.sources = sources;
        });
        Ok(())
    }

    async fn write(&mut self, index: u32, data: &[u8]) -> Result<(), DownloadError> {
        let manifest = self.manifest.as_ref().expect("writing means a manifest");
        let (start, _) = manifest.span(index).expect("verified chunk");
        match self.sink.as_mut().expect("a sink with the manifest") {
            Sink::Memory(buf) => {
                buf[start as usize..start as usize + data.len()].copy_from_slice(data);
                Ok(())
            }
            Sink::File { part, file, .. } => {
                let sharing = self.cfg.share.is_some();
                let written = async {
                    file.seek(SeekFrom::Start(start)).await?;
                    file.write_all(data).await?;
                    if sharing {
                        // Served to others from the file: make it readable.
                        file.flush().await?;
                    }
                    Ok(())
                }
                .await;
                written.map_err(|source| DownloadError::Io {
                    id: self.cfg.id,
                    path: part.clone(),
                    source,
                })
            }
        }
    }

    async fn complete(&mut self, manifest: Manifest) -> Result<Downloaded, DownloadError> {
        let id = self.cfg.id;
        let saved = match self.sink.take().expect("a sink with the manifest") {
            Sink::Memory(buf) => Saved::Memory(buf.into()),
            Sink::File {
                path,
                part,
                mut file,
            } => {
                let io = |source| DownloadError::Io {
                    id,
                    path: path.clone(),
                    source,
                };
                let finished = async {
                    file.flush().await?;
                    file.sync_data().await?;
                    drop(file);
                    tokio::fs::rename(&part, &path).await
                }
                .await;
                if let Err(e) = finished {
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(io(e));
                }
                Saved::File(path)
            }
        };
        if let Some(store) = &self.cfg.share {
            match &saved {
                Saved::Memory(bytes) => store.offer_verified(manifest.clone(), bytes.clone()),
                Saved::File(path) => store.offer_verified_path(manifest.clone(), path.clone()),
            };
        }
        let p = self.progress.borrow().clone();
        Ok(Downloaded {
            id,
            manifest,
            saved,
            by_peer: p.by_peer,
            retries: p.retries,
        })
    }

    fn publish_sources(&self) {
        let n = self.sources.len();
        self.progress.send_modify(|p| p.sources = n);
    }
}
