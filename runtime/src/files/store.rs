//! The files a node offers, and the [`FileShare`] service over them.

use std::collections::{BTreeMap, HashMap};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{
    FileId, FileInfo, FileShare, FileShareHandler, Manifest, DEFAULT_CHUNK_SIZE, MAX_CHUNKS,
    MAX_CHUNK_SIZE, NOT_FOUND, OUT_OF_RANGE, UNAVAILABLE,
};
use crate::codec::Blob;
use crate::router::IntoRouter;
use crate::{Reject, Router};

/// Why a file could not be offered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file has more chunks than a manifest may list ([`MAX_CHUNKS`]).
    #[error("{size} bytes make more than {max} chunks of {chunk_size} bytes; offer it from a store with larger chunks (FileStore::with_chunk_size)", max = MAX_CHUNKS)]
    TooLarge {
        /// The file's size.
        size: u64,
        /// The store's chunk size.
        chunk_size: u32,
    },
}

/// Where an offered file's bytes are.
enum Source {
    Memory(Bytes),
    /// Read on demand; each chunk read is checked against the manifest, so
    /// a file changed on disk is refused rather than served wrong.
    Disk(PathBuf),
    /// A download in progress: the chunks it has so far.
    Partial(Partial),
}

/// The chunks a running download has checked so far.
struct Partial {
    /// Bit `i` (LSB first in byte `i / 8`) set: chunk `i` is here.
    have: Mutex<Vec<u8>>,
    /// The chunks, for a download kept in memory; `None` when it is being
    /// written to this file (`….part`).
    chunks: Option<Mutex<HashMap<u32, Bytes>>>,
    part: Option<PathBuf>,
}

impl Partial {
    fn has(&self, index: u32) -> bool {
        let have = self.have.lock().unwrap_or_else(|e| e.into_inner());
        has_chunk(&have, index)
    }
}

/// Whether bit `index` of `bitmap` is set (LSB first).
pub(crate) fn has_chunk(bitmap: &[u8], index: u32) -> bool {
    bitmap
        .get(index as usize / 8)
        .is_some_and(|b| b & (1 << (index % 8)) != 0)
}

/// A bitmap with the first `chunks` bits set.
fn all_chunks(chunks: u32) -> Vec<u8> {
    let mut bitmap = vec![0xffu8; (chunks as usize).div_ceil(8)];
    if chunks % 8 != 0 {
        if let Some(last) = bitmap.last_mut() {
            *last = (1u8 << (chunks % 8)) - 1;
        }
    }
    bitmap
}

struct Entry {
    manifest: Manifest,
    source: Source,
}

/// The files a node offers. Cheap to clone (clones share the files); serve
/// it on a node or server (`.serve(store.clone())`) and peers can list,
/// inspect and download them with [`Download`](super::Download).
///
/// ```
/// use plexus::files::FileStore;
///
/// let store = FileStore::with_chunk_size(4);
/// let info = store.offer_bytes("greeting.txt", "hello world").expect("three chunks");
/// assert_eq!(info.size, 11);
/// assert_eq!(store.manifest(info.id).map(|m| m.chunks()), Some(3));
/// ```
#[derive(Clone)]
pub struct FileStore {
    chunk_size: u32,
    files: Arc<Mutex<BTreeMap<FileId, Arc<Entry>>>>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("chunk_size", &self.chunk_size)
            .field("files", &self.lock().len())
            .finish()
    }
}

impl Default for FileStore {
    fn default() -> Self {
        Self::new()
    }
}

impl FileStore {
    /// An empty store cutting files into [`DEFAULT_CHUNK_SIZE`] chunks.
    pub fn new() -> Self {
        Self::with_chunk_size(DEFAULT_CHUNK_SIZE)
    }

    /// An empty store cutting files into chunks of `bytes` (1 to
    /// [`MAX_CHUNK_SIZE`]). Files offered by stores with different chunk
    /// sizes have different ids.
    pub fn with_chunk_size(bytes: u32) -> Self {
        FileStore {
            chunk_size: bytes.clamp(1, MAX_CHUNK_SIZE),
            files: Arc::default(),
        }
    }

    /// The chunk size files offered here are cut into.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<FileId, Arc<Entry>>> {
        // Every critical section is a map lookup or insert.
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers `content` under `name`, kept in memory. Offering the same
    /// content again replaces the name. The content is hashed on the
    /// calling thread (for large files, see [`offer_path`](Self::offer_path),
    /// which hashes off the runtime's workers).
    ///
    /// Fails with [`OfferError::TooLarge`] if `content` has more than
    /// [`MAX_CHUNKS`] chunks.
    pub fn offer_bytes(
        &self,
        name: impl Into<String>,
        content: impl Into<Bytes>,
    ) -> Result<FileInfo, OfferError> {
        let content = content.into();
        check_chunks(content.len() as u64, self.chunk_size)?;
        let manifest = Manifest::of(name, &content, self.chunk_size);
        Ok(self.insert(manifest, Source::Memory(content)))
    }

    /// Offers the file at `path`, named by its file name. Its chunks are
    /// hashed now and read from disk when asked for; if the file changes
    /// afterwards, the changed chunks are refused ([`UNAVAILABLE`]) rather
    /// than served wrong.
    pub async fn offer_path(&self, path: impl AsRef<Path>) -> Result<FileInfo, OfferError> {
        let path = path.as_ref().to_path_buf();
        let chunk_size = self.chunk_size;
        // Reading and hashing a large file is long, blocking work: keep it
        // off the runtime's workers.
        let hashing = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || hash_file(&path, chunk_size))
        };
        let manifest = match hashing.await {
            Ok(result) => result?,
            Err(e) => {
                return Err(OfferError::Io {
                    path,
                    source: std::io::Error::other(e.to_string()),
                })
            }
        };
        Ok(self.insert(manifest, Source::Disk(path)))
    }

    /// Starts offering the chunks of a download as they arrive, unless the
    /// file is offered already. `part`: the file it is written to, else the
    /// chunks are kept here.
    pub(crate) fn begin_partial(&self, manifest: Manifest, part: Option<PathBuf>) {
        let id = manifest.id();
        let mut files = self.lock();
        if files.contains_key(&id) {
            return;
        }
        let partial = Partial {
            have: Mutex::new(vec![0; (manifest.chunks() as usize).div_ceil(8)]),
            chunks: part.is_none().then(|| Mutex::new(HashMap::new())),
            part,
        };
        files.insert(
            id,
            Arc::new(Entry {
                manifest,
                source: Source::Partial(partial),
            }),
        );
    }

    /// Chunk `index` of a download in progress is checked (and, for a
    /// download to disk, written and flushed): serve it from now on.
    pub(crate) fn add_chunk(&self, id: FileId, index: u32, data: &Bytes) {
        let Some(entry) = self.lock().get(&id).cloned() else {
            return;
        };
        let Source::Partial(partial) = &entry.source else {
            return;
        };
        if let Some(chunks) = &partial.chunks {
            // A received chunk shares the read buffer it arrived in (see
            // `Blob`); a download in memory keeps every chunk, so what it
            // keeps alive is mostly its own chunks.
            chunks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(index, data.clone());
        }
        let mut have = partial.have.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = have.get_mut(index as usize / 8) {
            *b |= 1 << (index % 8);
        }
    }

    /// A download that was being offered as it ran failed: stop offering it.
    pub(crate) fn abandon_partial(&self, id: FileId) {
        let mut files = self.lock();
        if files
            .get(&id)
            .is_some_and(|e| matches!(e.source, Source::Partial(_)))
        {
            files.remove(&id);
        }
    }

    /// Offers content already checked against `manifest` (a finished
    /// download), kept in memory.
    pub(crate) fn offer_verified(&self, manifest: Manifest, content: Bytes) -> FileInfo {
        self.insert(manifest, Source::Memory(content))
    }

    /// Offers a file on disk already checked against `manifest`.
    pub(crate) fn offer_verified_path(&self, manifest: Manifest, path: PathBuf) -> FileInfo {
        self.insert(manifest, Source::Disk(path))
    }

    fn insert(&self, manifest: Manifest, source: Source) -> FileInfo {
        let info = FileInfo {
            id: manifest.id(),
            name: manifest.name.clone(),
            size: manifest.size,
        };
        self.lock()
            .insert(info.id, Arc::new(Entry { manifest, source }));
        info
    }

    /// Stops offering file `id`; whether it was offered.
    pub fn remove(&self, id: FileId) -> bool {
        self.lock().remove(&id).is_some()
    }

    /// The files offered complete, by id (downloads still running are
    /// offered chunk by chunk but not listed).
    pub fn files(&self) -> Vec<FileInfo> {
        self.lock()
            .iter()
            .filter(|(_, e)| !matches!(e.source, Source::Partial(_)))
            .map(|(id, e)| FileInfo {
                id: *id,
                name: e.manifest.name.clone(),
                size: e.manifest.size,
            })
            .collect()
    }

    /// Whether file `id` is offered complete.
    pub fn contains(&self, id: FileId) -> bool {
        self.lock()
            .get(&id)
            .is_some_and(|e| !matches!(e.source, Source::Partial(_)))
    }

    /// The chunks of file `id` offered here, as a bitmap (bit `i`, LSB
    /// first in byte `i / 8`, set when chunk `i` is): every chunk of a
    /// complete file, those received so far of a download in progress.
    pub fn have(&self, id: FileId) -> Option<Bytes> {
        let entry = self.lock().get(&id).cloned()?;
        Some(
            match &entry.source {
                Source::Partial(p) => p.have.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                _ => all_chunks(entry.manifest.chunks()),
            }
            .into(),
        )
    }

    /// The manifest of file `id`, if offered (complete or in progress).
    pub fn manifest(&self, id: FileId) -> Option<Manifest> {
        self.lock().get(&id).map(|e| e.manifest.clone())
    }

    /// Chunk `index` of file `id`, as a peer would get it.
    pub async fn read_chunk(&self, id: FileId, index: u32) -> Result<Bytes, Reject> {
        let entry = self
            .lock()
            .get(&id)
            .cloned()
            .ok_or_else(|| Reject::new(NOT_FOUND, format!("file {id} is not offered here")))?;
        let Some((start, len)) = entry.manifest.span(index) else {
            return Err(Reject::new(
                OUT_OF_RANGE,
                format!(
                    "file {id} has {} chunks; there is no chunk {index}",
                    entry.manifest.chunks()
                ),
            ));
        };
        let not_yet = || {
            Reject::new(
                UNAVAILABLE,
                format!("file {id}: chunk {index} is not here yet"),
            )
        };
        let path = match &entry.source {
            Source::Memory(content) => {
                return Ok(content.slice(start as usize..start as usize + len));
            }
            Source::Disk(path) => path,
            Source::Partial(partial) => {
                if !partial.has(index) {
                    return Err(not_yet());
                }
                match (&partial.chunks, &partial.part) {
                    (Some(chunks), _) => {
                        let chunks = chunks.lock().unwrap_or_else(|e| e.into_inner());
                        return chunks.get(&index).cloned().ok_or_else(not_yet);
                    }
                    (None, Some(part)) => part,
                    (None, None) => return Err(not_yet()),
                }
            }
        };
        let data = read_at(path, start, len).await.map_err(|e| {
            Reject::new(
                UNAVAILABLE,
                format!("file {id}: cannot read {}: {e}", path.display()),
            )
        })?;
        if !entry.manifest.verify(index, &data) {
            return Err(Reject::new(
                UNAVAILABLE,
                format!("file {id}: {} changed on disk", path.display()),
            ));
        }
        Ok(data)
    }
}

/// Refuses a file of `size` bytes whose manifest would list too many chunks.
fn check_chunks(size: u64, chunk_size: u32) -> Result<(), OfferError> {
    if size.div_ceil(u64::from(chunk_size)) > u64::from(MAX_CHUNKS) {
        return Err(OfferError::TooLarge { size, chunk_size });
    }
    Ok(())
}

/// Reads the file at `path` and builds its manifest, named by its file name.
fn hash_file(path: &Path, chunk_size: u32) -> Result<Manifest, OfferError> {
    use std::io::Read;
    let io = |source| OfferError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    // Checked from the size alone, before anything is read or allocated.
    check_chunks(size, chunk_size)?;
    let mut hashes = Vec::with_capacity((size.div_ceil(u64::from(chunk_size)) * 32) as usize);
    let mut buf = vec![0u8; chunk_size as usize];
    let mut read_total = 0u64;
    while read_total < size {
        let want = (size - read_total).min(u64::from(chunk_size)) as usize;
        file.read_exact(&mut buf[..want]).map_err(io)?;
        hashes.extend_from_slice(&Sha256::digest(&buf[..want]));
        read_total += want as u64;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Manifest {
        name,
        size,
        chunk_size,
        chunk_hashes: hashes.into(),
    })
}

async fn read_at(path: &Path, start: u64, len: usize) -> std::io::Result<Bytes> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(SeekFrom::Start(start)).await?;
    let mut data = vec![0u8; len];
    file.read_exact(&mut data).await?;
    Ok(data.into())
}

impl FileShare for FileStore {
    async fn catalog(&self) -> Result<Vec<FileInfo>, Reject> {
        Ok(self.files())
    }

    async fn manifest(&self, id: FileId) -> Result<Manifest, Reject> {
        FileStore::manifest(self, id)
            .ok_or_else(|| Reject::new(NOT_FOUND, format!("file {id} is not offered here")))
    }

    async fn chunk(&self, id: FileId, index: u32) -> Result<Blob, Reject> {
        self.read_chunk(id, index).await.map(Blob::from)
    }

    async fn have(&self, id: FileId) -> Result<Bytes, Reject> {
        FileStore::have(self, id)
            .ok_or_else(|| Reject::new(NOT_FOUND, format!("file {id} is not offered here")))
    }
}

impl IntoRouter for FileStore {
    fn into_router(self) -> Router {
        FileShareHandler::new(self).into_router()
    }
}

impl IntoRouter for &FileStore {
    fn into_router(self) -> Router {
        FileShareHandler::new(self.clone()).into_router()
    }
}
