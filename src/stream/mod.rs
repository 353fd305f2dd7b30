//! Streaming snapshots and VM images to an object store (OpenStack Swift or a local directory
//! vault), and restoring them.
//!
//! # Layout
//! - [`auth`]: Swift credentials (tempauth v1.0, Keystone v3 password), from config or from the
//!   OpenStack environment (`OS_*`, `OS_CLOUD` + clouds.yaml); [`auth::Secret`] redacts itself.
//! - [`swift`]: the async Swift client on reqwest: auth, re-auth on 401, retries with backoff
//!   and jitter, ETag-checked PUT, GET, HEAD, DELETE, listings, SLO manifests.
//! - `http` (private): status classes, bounded body reads, path encoding, log-line limits.
//! - [`login`]: tempauth and Keystone v3 token requests, catalog lookup.
//! - [`vault`]: [`vault::DirVault`], a local directory with the same container/object layout.
//! - [`store`]: the [`store::ObjectStore`] contract both implement, and `swift://` / `file://`
//!   URL parsing.
//! - [`manifest`]: the versioned JSON snapshot manifest and restore-chain resolution.
//! - [`md5x4`]: md5 of four objects side by side (SSE2 or AVX-512VL), or eight (AVX-512VL on
//!   256-bit registers), for the ETags.
//! - [`upload`]: `stream_device`: chunking, zero skipping, zstd when it pays, bounded parallel
//!   upload, resume of an interrupted stream, incremental streams from change tracking.
//! - [`restore`]: rebuild a volume from a manifest chain, parallel, sparse, every chunk checked
//!   against its digest (blake3; sha256 in chains begun before manifest version 3).
//! - [`image`]: VM image push/pull as a Static Large Object.
//!
//! # Store layout
//! A snapshot `SNAP` streamed to `swift://C/P` lives in container `C` as
//! `P/SNAP/chunks/<first index:08x>-<hash prefix>` objects (each packs consecutive chunks; the
//! hash is of their indexes and digests) plus `P/SNAP/manifest.json`, written last: a snapshot
//! without its manifest is unfinished (and resumable). Object names hold the content's hash, so a resumed stream recognises finished chunks from one container listing
//! (name and md5) and never sends them again.
//!
//! # Memory and parallelism
//! At most `parallelism` chunks are in flight; each holds its raw buffer and, while it is
//! being compressed, the compressed copy. Full object bodies are bounded by `[stream] memory`
//! ([`crate::limits::STREAM_INFLIGHT_BYTES_DEFAULT`], 288 MiB: 17 full objects of 16 MiB and
//! the one being packed). Nothing else grows with the volume except the manifest's chunk
//! list, bounded by [`crate::limits::STREAM_CHUNKS_MAX`].
//!
//! Progress leaves through a callback ([`Progress`]); the library draws nothing.

pub mod auth;
pub mod group;
pub(crate) mod http;
pub mod image;
mod lanes;
pub mod login;
pub mod manifest;
pub mod md5x4;
pub mod restore;
pub mod sha256x8;
pub mod store;
pub mod swift;
pub mod upload;
pub mod vault;

use serde::Serialize;

use crate::volume::VolumeError;

/// Everything that can go wrong in the stream layer. Messages name the object, the chunk or the
/// setting and the value; they never hold a credential or a token.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("invalid stream configuration: {0}")]
    Config(String),
    #[error("authentication at {url} failed: {reason}")]
    Auth { url: String, reason: String },
    #[error("{method} {target}: Swift answered {status}: {body}")]
    Http {
        method: &'static str,
        target: String,
        status: u16,
        body: String,
    },
    #[error("{method} {target}: {source}")]
    Connection {
        method: &'static str,
        target: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {target}: gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        method: &'static str,
        target: String,
        attempts: u32,
        last: String,
    },
    #[error("{target}: bad answer from the object store: {reason}")]
    BadResponse { target: String, reason: String },
    #[error("object {object} not found")]
    NotFound { object: String },
    #[error("object {object}: ETag mismatch: sent md5 {expected}, store answered {got}")]
    EtagMismatch {
        object: String,
        expected: String,
        got: String,
    },
    #[error("object {object}: truncated: expected {expected} bytes, got {got}")]
    Truncated {
        object: String,
        expected: u64,
        got: u64,
    },
    #[error("object {object} is {size} bytes, more than the {max} bytes allowed here")]
    TooLarge { object: String, size: u64, max: u64 },
    #[error("chunk {index} ({object}) is corrupt: {reason}")]
    CorruptChunk {
        index: u64,
        object: String,
        reason: String,
    },
    #[error("image {object}: {reason}")]
    CorruptImage { object: String, reason: String },
    #[error("manifest {object}: {reason}")]
    Manifest { object: String, reason: String },
    #[error("snapshot chain: {0}")]
    Chain(String),
    #[error("snapshot {0} already has a manifest (finished); pick another name")]
    SnapshotExists(String),
    #[error("{path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("volume: {0}")]
    Volume(#[from] VolumeError),
    #[error("background task failed: {0}")]
    Task(String),
}

impl StreamError {
    pub(crate) fn io(
        path: impl std::fmt::Display,
        what: &'static str,
        source: std::io::Error,
    ) -> Self {
        StreamError::Io {
            path: path.to_string(),
            what,
            source,
        }
    }
}

/// Which chunks changed since the parent snapshot, as the volume's change tracking says.
/// A bit set over chunk indexes at the stream's chunk size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedChunks {
    chunk_bytes: u64,
    words: Vec<u64>,
    count: u64,
}

impl ChangedChunks {
    /// No chunk changed, for a volume of `chunk_count` chunks of `chunk_bytes`.
    pub fn new(chunk_bytes: u64, chunk_count: u64) -> Self {
        let words = vec![0u64; chunk_count.div_ceil(64) as usize];
        ChangedChunks {
            chunk_bytes,
            words,
            count: chunk_count,
        }
    }

    /// Mark chunk `index` changed (ignored past the end).
    pub fn mark(&mut self, index: u64) {
        if index < self.count {
            self.words[(index / 64) as usize] |= 1 << (index % 64);
        }
    }

    /// Mark every chunk that overlaps the byte range `offset..offset+len`.
    pub fn mark_bytes(&mut self, offset: u64, len: u64) {
        if len == 0 || self.chunk_bytes == 0 {
            return;
        }
        let first = offset / self.chunk_bytes;
        let last = offset.saturating_add(len - 1) / self.chunk_bytes;
        for i in first..=last.min(self.count.saturating_sub(1)) {
            self.mark(i);
        }
    }

    /// From a dirty bitmap with one bit per `block_bytes` (bit i of word i/64 = block i).
    pub fn from_block_bitmap(
        bits: &[u64],
        block_bytes: u64,
        chunk_bytes: u64,
        volume_bytes: u64,
    ) -> Self {
        let mut c = ChangedChunks::new(chunk_bytes, volume_bytes.div_ceil(chunk_bytes));
        for (w, word) in bits.iter().enumerate() {
            let mut v = *word;
            while v != 0 {
                let b = v.trailing_zeros() as u64;
                v &= v - 1;
                let block = w as u64 * 64 + b;
                c.mark_bytes(block * block_bytes, block_bytes);
            }
        }
        c
    }

    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    pub fn chunk_count(&self) -> u64 {
        self.count
    }

    pub fn is_changed(&self, index: u64) -> bool {
        index < self.count && self.words[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Number of changed chunks.
    pub fn changed_count(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }
}

/// Progress of a long operation, sent to the caller's callback after every chunk/segment.
/// The CLI turns it into a bar with rate and ETA.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct Progress {
    /// Volume/image bytes handled so far (read, skipped or restored).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes sent to (or fetched from) the store so far.
    pub bytes_transferred: u64,
    pub chunks_done: u64,
    pub chunks_total: u64,
    pub elapsed_ms: u64,
}

impl Progress {
    /// Average rate so far, bytes per second of `bytes_done`.
    pub fn rate_bytes_per_s(&self) -> u64 {
        if self.elapsed_ms == 0 {
            return 0;
        }
        (self.bytes_done as u128 * 1000 / self.elapsed_ms as u128) as u64
    }

    /// Time left at the average rate so far; `None` before anything is done.
    pub fn eta_ms(&self) -> Option<u64> {
        let rate = self.rate_bytes_per_s();
        (rate > 0).then(|| {
            (self.bytes_total.saturating_sub(self.bytes_done) as u128 * 1000 / rate as u128) as u64
        })
    }
}

/// Final report of a stream, restore or image transfer (`--json` prints it).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Report {
    /// Bytes read from the source (device, file or store).
    pub bytes_read: u64,
    /// Bytes sent to the store (after compression).
    pub bytes_uploaded: u64,
    /// Bytes fetched from the store (restore, pull).
    pub bytes_downloaded: u64,
    /// Bytes written to the destination (restore, pull); sparse zero chunks are not written.
    pub bytes_written: u64,
    pub chunks_total: u64,
    pub chunks_uploaded: u64,
    /// Objects sent (a stream packs many chunks into one object).
    #[serde(default)]
    pub objects_uploaded: u64,
    pub chunks_skipped_zero: u64,
    pub chunks_skipped_unchanged: u64,
    /// Chunks already in the store from an interrupted run of the same stream: not re-sent.
    pub chunks_resumed: u64,
    pub elapsed_ms: u64,
}

impl Report {
    /// Add `other`'s counts to this one (a consistency group's volumes, one after another).
    pub fn absorb(&mut self, other: &Report) {
        self.bytes_read += other.bytes_read;
        self.bytes_uploaded += other.bytes_uploaded;
        self.bytes_downloaded += other.bytes_downloaded;
        self.bytes_written += other.bytes_written;
        self.chunks_total += other.chunks_total;
        self.chunks_uploaded += other.chunks_uploaded;
        self.objects_uploaded += other.objects_uploaded;
        self.chunks_skipped_zero += other.chunks_skipped_zero;
        self.chunks_skipped_unchanged += other.chunks_skipped_unchanged;
        self.chunks_resumed += other.chunks_resumed;
        self.elapsed_ms += other.elapsed_ms;
    }
}

/// Compression policy for chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    #[default]
    Zstd,
}

/// The daemon runs streams as spawned tasks: their futures must be `Send`. Checked at compile
/// time for any device and store.
#[allow(dead_code)]
fn futures_are_send<D: crate::volume::BlockDevice, S: store::ObjectStore>(
    d: &D,
    s: &S,
    l: &upload::Location,
    o: &upload::StreamOptions,
    c: Option<&ChangedChunks>,
) {
    fn is_send<T: Send>(_: T) {}
    let p = std::path::Path::new("x");
    is_send(upload::stream_device(d, c, s, l, o, |_| {}));
    is_send(restore::restore_to_file(
        s,
        l,
        "s",
        p,
        &restore::RestoreOptions::default(),
        |_| {},
    ));
    is_send(restore::restore_to_device(
        s,
        l,
        "s",
        d,
        &restore::RestoreOptions::default(),
        |_| {},
    ));
    is_send(image::push(
        s,
        p,
        "c",
        "o",
        &image::ImageOptions::default(),
        |_| {},
    ));
    is_send(image::pull(s, "c", "o", p, |_| {}));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_chunks_from_bitmap() {
        // 4 KiB blocks, 64 KiB chunks, 1 MiB volume: block 17 is in chunk 1, block 255 in 15.
        let mut bits = vec![0u64; 4];
        bits[0] |= 1 << 17;
        bits[3] |= 1 << 63;
        let c = ChangedChunks::from_block_bitmap(&bits, 4096, 65536, 1 << 20);
        assert_eq!(c.chunk_count(), 16);
        assert!(c.is_changed(1));
        assert!(c.is_changed(15));
        assert!(!c.is_changed(0));
        assert_eq!(c.changed_count(), 2);
        assert!(!c.is_changed(99));
    }

    #[test]
    fn progress_rate_and_eta() {
        let p = Progress {
            bytes_done: 50 << 20,
            bytes_total: 150 << 20,
            elapsed_ms: 10_000,
            ..Default::default()
        };
        assert_eq!(p.rate_bytes_per_s(), 5 << 20);
        assert_eq!(p.eta_ms(), Some(20_000));
        assert_eq!(Progress::default().eta_ms(), None);
    }

    #[test]
    fn mark_bytes_spanning_chunks() {
        let mut c = ChangedChunks::new(100, 10);
        c.mark_bytes(150, 100); // bytes 150..250 -> chunks 1, 2
        assert_eq!(c.changed_count(), 2);
        assert!(c.is_changed(1) && c.is_changed(2));
        c.mark_bytes(950, 1000); // clipped at the end
        assert!(c.is_changed(9));
        assert_eq!(c.changed_count(), 3);
    }
}
