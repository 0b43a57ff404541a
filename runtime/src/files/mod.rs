//! File sharing between nodes: offer files, and download one in chunks from
//! every peer that has it at once (a swarm), with progress, cancellation,
//! retries on other peers, and every byte checked against the file's id.
//!
//! - [`FileStore`] holds the files a node offers (in memory or on disk) and
//!   serves them as the [`FileShare`] service: `.serve(store.clone())`.
//! - [`Download`] fetches one file, by [`FileId`], from the members of a
//!   `PeerSet<FileShareClient>` — spreading chunks over all peers that have
//!   them, a few at a time each, moving a failed chunk to another peer. With
//!   `share_into`, a download serves the chunks it has while it runs.
//!
//! A file's id is a SHA-256 over its size, chunk size and the SHA-256 of each
//! chunk, so a [`Manifest`] from any peer is checked against the id asked
//! for, and each chunk against the manifest: a peer that sends wrong bytes is
//! dropped as a source and the chunk fetched elsewhere.
//!
//! ```no_run
//! # async fn demo(node: plexus::Node, store: plexus::files::FileStore) -> Result<(), Box<dyn std::error::Error>> {
//! use plexus::files::{Download, FileShareClient};
//!
//! // Seeder: offer a file (the node serves `store`).
//! let info = store.offer_bytes("notes.txt", plexus::Bytes::from_static(b"hello"))?;
//!
//! // Elsewhere: fetch it from every peer that has it.
//! let download = Download::builder(node.peers::<FileShareClient>(), info.id)
//!     .save_to("/tmp/notes.txt")
//!     .start();
//! let mut progress = download.progress();
//! while progress.changed().await.is_ok() {
//!     let p = progress.borrow().clone();
//!     println!("{} of {} bytes", p.received_bytes, p.total_bytes);
//! }
//! let done = download.finish().await?;
//! # Ok(()) }
//! ```
//!
//! The guide is `docs/FILES.md`.

mod download;
mod limits;
mod store;

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::codec::Blob;
use crate::Reject;

pub use self::download::{
    Download, DownloadBuilder, DownloadError, Downloaded, Progress, Saved, DEFAULT_ATTEMPTS,
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_PER_PEER,
};
pub use self::limits::DownloadLimits;
pub use self::store::{FileStore, OfferError};

/// The default chunk size: 256 KiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;

/// The largest chunk size a store accepts: 4 MiB (a chunk travels as one
/// message, well under the default 16 MiB frame limit).
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;

/// Most chunks one file may have: its manifest (32 bytes a chunk) then stays
/// within 8 MiB, so it travels as one reply under the default 16 MiB frame
/// limit and is never a large allocation. With [`DEFAULT_CHUNK_SIZE`] that is
/// 64 GiB a file; larger files need larger chunks.
pub const MAX_CHUNKS: u32 = 256 * 1024;

/// Rejection code: the peer does not offer this file.
pub const NOT_FOUND: u32 = 404;

/// Rejection code: the chunk index is past the end of the file.
pub const OUT_OF_RANGE: u32 = 416;

/// Rejection code: the peer offers the file but cannot serve this chunk now
/// (the file on disk was removed or changed, or a download in progress has
/// not received the chunk yet).
pub const UNAVAILABLE: u32 = 503;

/// The contract nodes share files over. Served by [`FileStore`]; called by
/// [`Download`] through the generated `FileShareClient`.
#[crate::service(package = "plexus.files")]
pub trait FileShare {
    /// The files this node offers.
    #[idempotent]
    async fn catalog(&self) -> Result<Vec<FileInfo>, Reject>;
    /// The manifest of file `id` (rejected with [`NOT_FOUND`] if not offered).
    #[idempotent]
    async fn manifest(&self, id: FileId) -> Result<Manifest, Reject>;
    /// Chunk `index` of file `id`. A [`Blob`]: the downloader checks it
    /// and writes it from the received frame, without copying it out first.
    #[idempotent]
    async fn chunk(&self, id: FileId, index: u32) -> Result<Blob, Reject>;
    /// Which chunks of file `id` this node can serve: a bitmap, bit `i` (LSB
    /// first in byte `i / 8`) set for chunk `i`. All of them for a complete
    /// file; those received so far for a download in progress.
    #[idempotent]
    async fn have(&self, id: FileId) -> Result<Bytes, Reject>;
}

/// A file's identity: SHA-256 over its size, chunk size and chunk hashes
/// (see [`Manifest::id`]). Displayed and parsed as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub [u8; 32]);

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Twelve hex digits tell files apart in logs.
        write!(f, "FileId(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// A [`FileId`] that is not 64 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a file id is 64 hex digits")]
pub struct ParseFileIdError;

impl FromStr for FileId {
    type Err = ParseFileIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return Err(ParseFileIdError);
        }
        let mut id = [0u8; 32];
        for (i, pair) in s.chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or(ParseFileIdError);
            id[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(FileId(id))
    }
}

impl Serialize for FileId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for FileId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = Bytes::deserialize(d)?;
        let id: [u8; 32] = bytes[..]
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"32 bytes"))?;
        Ok(FileId(id))
    }
}

/// One entry of a peer's [`catalog`](FileShare::catalog).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// The file's id.
    pub id: FileId,
    /// The name it was offered under (a hint, not part of the id).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Everything needed to fetch a file in chunks and check each one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The name it was offered under (not part of the id).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes per chunk; the last chunk may be shorter.
    pub chunk_size: u32,
    /// The SHA-256 of each chunk, concatenated (32 bytes per chunk).
    pub chunk_hashes: Bytes,
}

impl Manifest {
    /// Builds the manifest of `content`, cut into chunks of `chunk_size`.
    pub fn of(name: impl Into<String>, content: &[u8], chunk_size: u32) -> Manifest {
        let mut hashes = Vec::with_capacity(content.len().div_ceil(chunk_size as usize) * 32);
        for chunk in content.chunks(chunk_size as usize) {
            hashes.extend_from_slice(&Sha256::digest(chunk));
        }
        Manifest {
            name: name.into(),
            size: content.len() as u64,
            chunk_size,
            chunk_hashes: hashes.into(),
        }
    }

    /// The id this manifest describes: SHA-256 over a version tag, the size,
    /// the chunk size and every chunk hash.
    pub fn id(&self) -> FileId {
        let mut h = Sha256::new();
        h.update(b"plexus-file-v1");
        h.update(self.size.to_le_bytes());
        h.update(self.chunk_size.to_le_bytes());
        h.update(&self.chunk_hashes);
        FileId(h.finalize().into())
    }

    /// How many chunks the file has.
    pub fn chunks(&self) -> u32 {
        if self.chunk_size == 0 {
            return 0;
        }
        self.size.div_ceil(u64::from(self.chunk_size)) as u32
    }

    /// Where chunk `index` starts and how long it is.
    pub fn span(&self, index: u32) -> Option<(u64, usize)> {
        if index >= self.chunks() {
            return None;
        }
        let start = u64::from(index) * u64::from(self.chunk_size);
        let len = (self.size - start).min(u64::from(self.chunk_size)) as usize;
        Some((start, len))
    }

    /// Whether `data` is chunk `index` of this file.
    pub fn verify(&self, index: u32, data: &[u8]) -> bool {
        let Some((_, len)) = self.span(index) else {
            return false;
        };
        let at = index as usize * 32;
        data.len() == len && self.chunk_hashes[at..at + 32] == Sha256::digest(data)[..]
    }

    /// Whether the manifest is self-consistent: a chunk size in range and
    /// one hash per chunk.
    pub fn is_well_formed(&self) -> bool {
        (1..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
            && self.size.div_ceil(u64::from(self.chunk_size)) <= u64::from(MAX_CHUNKS)
            && self.chunk_hashes.len() as u64 == u64::from(self.chunks()) * 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_print_and_parse_as_hex() {
        let m = Manifest::of("a", b"hello world", 4);
        let id = m.id();
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<FileId>(), Ok(id));
        assert_eq!("xyz".parse::<FileId>(), Err(ParseFileIdError));
        assert_eq!("g".repeat(64).parse::<FileId>(), Err(ParseFileIdError));
    }

    #[test]
    fn manifests_cut_check_and_name_nothing_in_the_id() {
        let m = Manifest::of("a", b"hello world", 4);
        assert!(m.is_well_formed());
        assert_eq!(m.chunks(), 3);
        assert_eq!(m.span(2), Some((8, 3)));
        assert_eq!(m.span(3), None);
        assert!(m.verify(0, b"hell"));
        assert!(m.verify(2, b"rld"));
        assert!(!m.verify(2, b"rlD"));
        assert!(!m.verify(1, b"o wo!"));
        // The name is a hint; the id is the content.
        assert_eq!(Manifest::of("b", b"hello world", 4).id(), m.id());
        assert_ne!(Manifest::of("a", b"hello world", 5).id(), m.id());
        let empty = Manifest::of("e", b"", 4);
        assert_eq!((empty.chunks(), empty.is_well_formed()), (0, true));
        let mut broken = m.clone();
        broken.chunk_hashes = broken.chunk_hashes.slice(..64);
        assert!(!broken.is_well_formed());
    }

    #[test]
    fn a_complete_file_has_every_chunk_and_nothing_past_the_end() {
        let store = FileStore::with_chunk_size(1);
        let info = store.offer_bytes("x", &b"hello world"[..]).expect("small");
        let have = store.have(info.id).expect("offered");
        assert_eq!(&have[..], [0xff, 0x07]);
        assert!((0..11).all(|i| store::has_chunk(&have, i)));
        assert!(!store::has_chunk(&have, 11) && !store::has_chunk(&have, 99));
        let eight = store.offer_bytes("y", &b"12345678"[..]).expect("small");
        assert_eq!(&store.have(eight.id).expect("offered")[..], [0xff]);
        let empty = store.offer_bytes("z", Bytes::new()).expect("empty");
        assert!(store.have(empty.id).expect("offered").is_empty());
    }

    #[test]
    fn file_ids_round_trip_through_messagepack() {
        use crate::codec::{Codec, MsgPack};
        let id = Manifest::of("a", b"x", 4).id();
        let bytes = <MsgPack as Codec<FileId>>::encode(&id).expect("encodes");
        assert_eq!(bytes.len(), 34, "a bin8 of 32 bytes");
        assert_eq!(
            <MsgPack as Codec<FileId>>::decode(bytes).expect("decodes"),
            id
        );
        let short =
            <MsgPack as Codec<Bytes>>::encode(&Bytes::from_static(b"abc")).expect("encodes");
        assert!(<MsgPack as Codec<FileId>>::decode(short).is_err());
    }
}
