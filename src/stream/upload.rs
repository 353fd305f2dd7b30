//! Streaming a block device to an object store as a chunked snapshot.
//!
//! The chunk (`chunk_bytes`, 1 MiB by default) is the unit of change tracking, hashing and the
//! manifest; the object is not. [`stream_device`] runs two stages:
//! 1. in index order, at most `parallelism` chunks at once: skip chunks the change tracking
//!    does not mark (incremental with [`ChangedChunks`]; they are not even read); read the
//!    chunk; an all-zero chunk is recorded as `zero` and not stored; hash it (blake3); in an
//!    incremental, a chunk whose digest equals the parent chain's (computed with the digest
//!    the parent's entry has: sha256 for a parent of manifest version 1 or 2) is recorded as
//!    `unchanged-from-parent`; compress it with zstd when a sample says that saves at least
//!    1/16. The CPU work runs on tokio's blocking pool.
//! 2. pack the stored chunks, in index order, into objects of at most `object_bytes` (16 MiB
//!    by default; Swift pays an fsync and a container update per object) named
//!    `P/SNAP/chunks/<first index:08x>-<hash of the packed chunks' indexes and digests>`;
//!    md5 full objects eight (AVX-512VL) or four at a time side by side (`md5x4`) on the
//!    blocking pool
//!    (md5 is serial within one object); when an earlier, interrupted run of the same
//!    stream already stored that name with that md5 it is not sent again (its chunks count as
//!    `chunks_resumed`), otherwise PUT it with an ETag check (retried by the client). At most
//!    [`StreamOptions::objects_in_flight`] objects upload at once and
//!    [`StreamOptions::bodies_in_flight`] full objects are held (hashing, hashed and waiting
//!    for an upload slot, uploading), so the next object is ready the moment a slot frees;
//!    their bodies come from a small pool and are reused.
//!
//! The packing only depends on the data and the options, so a resumed run cuts the same
//! objects. The manifest is written last, after every object is stored; then objects of the
//! snapshot that the manifest does not reference (left by an interrupted run over data that
//! has changed since) are deleted.
//!
//! Memory: `parallelism` chunk buffers (plus their compressed copies) and at most
//! [`StreamOptions::inflight_bytes`] of object bodies (`[stream] memory`,
//! [`STREAM_INFLIGHT_BYTES_DEFAULT`] by default).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use super::manifest::{
    check_snapshot_name, resolve_chain, ChunkDigest, ChunkEntry, DigestAlg, Manifest,
    MANIFEST_FORMAT, MANIFEST_VERSION,
};
use super::md5x4;
use super::restore::load_chain;
use super::store::ObjectStore;
use super::{ChangedChunks, Compression, Progress, Report, StreamError};
use crate::limits::*;
use crate::shaping::{Class, NodeShaping, Shaper};
use crate::volume::{is_zero, AlignedBuf, BlockDevice};

/// Where snapshots live: a container and a prefix inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub container: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl Location {
    pub fn new(container: impl Into<String>, prefix: impl Into<String>) -> Location {
        Location {
            container: container.into(),
            prefix: prefix.into().trim_matches('/').to_string(),
        }
    }

    /// `rest` under this location's prefix.
    pub fn join(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// The manifest object of `snapshot`.
    pub fn manifest_object(&self, snapshot: &str) -> String {
        self.join(&format!("{snapshot}/manifest.json"))
    }

    /// The prefix under which `snapshot`'s chunk objects live.
    pub fn chunks_prefix(&self, snapshot: &str) -> String {
        self.join(&format!("{snapshot}/chunks/"))
    }

    pub fn chunk_object(&self, snapshot: &str, index: u64, hash_hex: &str) -> String {
        format!(
            "{}{index:08x}-{}",
            self.chunks_prefix(snapshot),
            &hash_hex[..16]
        )
    }
}

/// How to stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Name of the snapshot in the store (one path segment).
    pub snapshot: String,
    /// The unit of change tracking, hashing and the manifest.
    pub chunk_bytes: u64,
    /// Stored chunks are packed into objects of at most this many bytes (at least one chunk).
    pub object_bytes: u64,
    /// Chunks read and hashed at once; objects uploaded at once, within `inflight_bytes`
    /// (see [`StreamOptions::objects_in_flight`]).
    pub parallelism: usize,
    /// Object bodies held at once, at most (`[stream] memory`,
    /// [`STREAM_INFLIGHT_BYTES_DEFAULT`] by default).
    pub inflight_bytes: u64,
    pub compression: Compression,
    /// Parent snapshot (same location) for an incremental stream.
    pub parent: Option<String>,
    /// The daemon's shaper: object bodies are granted in its `snapshot` class (a new
    /// [`StreamOptions`] has one that only counts).
    pub shaper: Arc<Shaper>,
}

impl StreamOptions {
    pub fn new(snapshot: impl Into<String>) -> StreamOptions {
        StreamOptions {
            snapshot: snapshot.into(),
            chunk_bytes: STREAM_CHUNK_BYTES_DEFAULT,
            object_bytes: STREAM_OBJECT_BYTES_DEFAULT,
            parallelism: STREAM_PARALLELISM_DEFAULT,
            inflight_bytes: STREAM_INFLIGHT_BYTES_DEFAULT,
            compression: Compression::Zstd,
            parent: None,
            shaper: NodeShaping::counting().shaper,
        }
    }

    /// Full objects held at once (hashing, waiting for an upload slot, uploading): as many
    /// as fit `inflight_bytes` besides the one being packed, at least one.
    pub fn bodies_in_flight(&self) -> usize {
        ((self.inflight_bytes / self.object_bytes.max(1)).saturating_sub(1) as usize).max(1)
    }

    /// Chunks read and hashed together (in one blocking task): up to
    /// [`STREAM_HASH_LANES`], at most `parallelism`, and no more than
    /// [`STREAM_HASH_GROUP_BYTES_MAX`] unless one chunk is bigger. Two groups or more are read
    /// at once, so at most `max(parallelism, 2 x group)` chunks are in flight.
    pub fn hash_group_chunks(&self) -> usize {
        let by_bytes = (STREAM_HASH_GROUP_BYTES_MAX / self.chunk_bytes.max(1)) as usize;
        STREAM_HASH_LANES.min(self.parallelism).min(by_bytes).max(1)
    }

    /// Objects uploading at once: `parallelism`, at most [`Self::bodies_in_flight`].
    pub fn objects_in_flight(&self) -> usize {
        self.parallelism.min(self.bodies_in_flight()).max(1)
    }

    fn validate(&self, volume_bytes: u64) -> Result<u64, StreamError> {
        check_snapshot_name(&self.snapshot)?;
        if let Some(p) = &self.parent {
            check_snapshot_name(p)?;
            if *p == self.snapshot {
                return Err(StreamError::Config(format!(
                    "snapshot {p} cannot be its own parent"
                )));
            }
        }
        if !(STREAM_CHUNK_BYTES_MIN..=STREAM_CHUNK_BYTES_MAX).contains(&self.chunk_bytes)
            || !self.chunk_bytes.is_multiple_of(BITMAP_BLOCK_BYTES)
        {
            return Err(StreamError::Config(format!(
                "chunk size {} must be a multiple of {BITMAP_BLOCK_BYTES} in {STREAM_CHUNK_BYTES_MIN}..={STREAM_CHUNK_BYTES_MAX}",
                self.chunk_bytes
            )));
        }
        if !(self.chunk_bytes..=STREAM_OBJECT_BYTES_MAX).contains(&self.object_bytes) {
            return Err(StreamError::Config(format!(
                "object size {} must be in {}..={STREAM_OBJECT_BYTES_MAX} (at least the chunk size)",
                self.object_bytes, self.chunk_bytes
            )));
        }
        if !(1..=STREAM_PARALLELISM_MAX).contains(&self.parallelism) {
            return Err(StreamError::Config(format!(
                "parallelism {} out of 1..={STREAM_PARALLELISM_MAX}",
                self.parallelism
            )));
        }
        let n = Manifest::chunk_count(volume_bytes, self.chunk_bytes);
        if n > STREAM_CHUNKS_MAX {
            return Err(StreamError::Config(format!(
                "volume of {volume_bytes} bytes makes {n} chunks of {}, more than {STREAM_CHUNKS_MAX}: raise the chunk size",
                self.chunk_bytes
            )));
        }
        Ok(n)
    }
}

/// What became of one chunk after reading (stage 1).
enum Processed {
    /// Not marked by the change tracking: not read.
    Unchanged,
    /// Read; the same digest as the parent chain's.
    SameAsParent,
    Zero,
    Data {
        digest: ChunkDigest,
        payload: Bytes,
        compression: Compression,
    },
}

/// One chunk packed into an object: its entry minus the object name.
struct Packed {
    index: u64,
    len: u64,
    digest: ChunkDigest,
    offset: u64,
    stored_bytes: u64,
    compression: Compression,
}

/// The object being filled: consecutive stored chunks, in index order.
struct Pack {
    buf: PoolBuf,
    chunks: Vec<Packed>,
}

impl Pack {
    fn seal(self) -> Sealed {
        Sealed {
            body: Bytes::from_owner(self.buf),
            chunks: self.chunks,
        }
    }
}

/// What became of one object (stage 2).
struct PackDone {
    object: String,
    chunks: Vec<Packed>,
    /// Bytes sent; 0 when an interrupted run had stored the object already.
    sent: u64,
    resumed: bool,
}

/// Object bodies for reuse: a stream fills at most `keep` at once, so after the first few
/// objects no body costs fresh pages (page faults were a quarter of the stream's CPU).
struct BufPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
    cap: usize,
    keep: usize,
}

impl BufPool {
    fn new(cap: usize, keep: usize) -> Arc<BufPool> {
        Arc::new(BufPool {
            free: std::sync::Mutex::new(Vec::new()),
            cap,
            keep,
        })
    }

    fn take(self: &Arc<Self>) -> PoolBuf {
        let v = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.cap));
        PoolBuf {
            data: v,
            pool: self.clone(),
        }
    }
}

/// A body from a [`BufPool`]; goes back to the pool when the last `Bytes` of it drops.
struct PoolBuf {
    data: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for PoolBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.data);
        v.clear();
        let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.pool.keep {
            free.push(v);
        }
    }
}

pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether zstd is likely to pay on `buf`: compress four 16 KiB samples spread over it at the
/// fastest level first. Incompressible data (the common case for encrypted or already
/// compressed volumes) then costs a few percent of a full compression instead of all of it.
fn worth_compressing(buf: &[u8]) -> bool {
    const SAMPLE: usize = 16 * 1024;
    if buf.len() <= 8 * SAMPLE {
        return true;
    }
    let mut sample = Vec::with_capacity(4 * SAMPLE);
    for k in 0..4 {
        let at = buf.len() / 4 * k;
        sample.extend_from_slice(&buf[at..at + SAMPLE]);
    }
    zstd::bulk::compress(&sample, 1).map_or(true, |z| {
        (z.len() as u64) * 16 <= sample.len() as u64 * STREAM_COMPRESS_PAYS_SIXTEENTHS_MAX
    })
}

/// Zero test and blake3 of a group of read chunks `(index, buffer)`, and, given the parent
/// chain's entries for them (`parent`, in the same order), whether each equals its parent's
/// chunk: compared in the digest that entry has, so that a parent written in sha256 (manifest
/// version 1 or 2) is matched too. CPU work for the blocking pool. Per chunk, in order: None
/// for an all-zero chunk, else its blake3 and whether it is the parent's.
fn hash_group(
    group: &[(u64, AlignedBuf)],
    parent: Option<&[Option<ChunkDigest>]>,
) -> Vec<Option<(ChunkDigest, bool)>> {
    let data: Vec<bool> = group.iter().map(|(_, b)| !is_zero(b)).collect();
    let with_data = || {
        group
            .iter()
            .enumerate()
            .zip(&data)
            .filter(|(_, &d)| d)
            .map(|((j, (_, b)), _)| (j, &b[..]))
    };
    let msgs: Vec<&[u8]> = with_data().map(|(_, b)| b).collect();
    let mut sums = DigestAlg::Blake3.digest_all(&msgs).into_iter();
    // Chunks whose parent entry is a sha256 (an older chain): their sha256 too, to compare.
    let mut same = vec![false; group.len()];
    if let Some(parent) = parent {
        let (at, todo): (Vec<usize>, Vec<&[u8]>) = with_data()
            .filter(|&(j, _)| matches!(parent[j], Some(ChunkDigest::Sha256(_))))
            .unzip();
        for (j, d) in at.into_iter().zip(DigestAlg::Sha256.digest_all(&todo)) {
            same[j] = parent[j].as_ref() == Some(&d);
        }
    }
    data.into_iter()
        .enumerate()
        .map(|(j, d)| {
            d.then(|| sums.next()).flatten().map(|b3| {
                let same = same[j] || parent.is_some_and(|p| p[j].as_ref() == Some(&b3));
                (b3, same)
            })
        })
        .collect()
}

/// A stored chunk's payload: zstd when a sample says it pays and it does, else the raw buffer.
/// CPU work for the blocking pool (one task per chunk: compression uses every core).
fn payload_of(
    buf: AlignedBuf,
    index: u64,
    digest: ChunkDigest,
    policy: Compression,
) -> Result<Processed, StreamError> {
    if policy == Compression::Zstd && worth_compressing(&buf) {
        let z = zstd::bulk::compress(&buf, STREAM_ZSTD_LEVEL)
            .map_err(|e| StreamError::Task(format!("zstd compress of chunk {index}: {e}")))?;
        if (z.len() as u64) * 16 <= buf.len() as u64 * STREAM_COMPRESS_PAYS_SIXTEENTHS_MAX {
            return Ok(Processed::Data {
                digest,
                payload: Bytes::from(z),
                compression: Compression::Zstd,
            });
        }
    }
    Ok(Processed::Data {
        digest,
        payload: Bytes::from_owner(buf),
        compression: Compression::None,
    })
}

/// The name of an object: the first chunk's index and a hash of what it holds (every chunk's
/// index, digest and compression), so a resumed run finds the same name for the same content.
/// (A run interrupted under a drl older than manifest version 3 hashed sha256s: its objects get
/// other names now, are sent again, and the leftovers go once the manifest is written.)
fn pack_object(loc: &Location, snap: &str, chunks: &[Packed]) -> String {
    let mut h = Sha256::new();
    for c in chunks {
        h.update(c.index.to_le_bytes());
        h.update(c.digest.hex().as_bytes());
        h.update([c.compression as u8]);
    }
    let id = hex::encode(h.finalize());
    loc.chunk_object(snap, chunks.first().map_or(0, |c| c.index), &id)
}

/// A full object: its body and chunks, waiting for its md5 or its upload.
struct Sealed {
    body: Bytes,
    chunks: Vec<Packed>,
}

/// Stage 2 work in flight: md5 of a batch of objects, or the upload of one.
enum Step {
    Hashed(Vec<(Sealed, String)>),
    Stored(PackDone),
}

type StepFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Step, StreamError>> + Send + 'a>>;

/// md5 of up to eight objects side by side (`md5x4`) on the blocking pool.
fn hash_batch<'a>(batch: Vec<Sealed>) -> StepFuture<'a> {
    Box::pin(async move {
        let bodies: Vec<Bytes> = batch.iter().map(|s| s.body.clone()).collect();
        let t = Instant::now();
        let md5s = tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = bodies.iter().map(|b| &b[..]).collect();
            md5x4::md5_hex_x8(&refs)
        })
        .await
        .map_err(|e| StreamError::Task(e.to_string()))?;
        tracing::debug!(
            objects = md5s.len(),
            md5_ms = t.elapsed().as_millis() as u64,
            "objects hashed"
        );
        Ok(Step::Hashed(batch.into_iter().zip(md5s).collect()))
    })
}

/// Store one packed object, unless an interrupted run stored it already.
async fn upload_pack<S: ObjectStore>(
    store: &S,
    loc: &Location,
    snap: &str,
    existing: &HashMap<String, (u64, String)>,
    sealed: Sealed,
    md5: String,
    shaper: &Shaper,
) -> Result<PackDone, StreamError> {
    let Sealed { body, chunks } = sealed;
    let object = pack_object(loc, snap, &chunks);
    let len = body.len() as u64;
    if existing
        .get(&object)
        .is_some_and(|(l, h)| *l == len && *h == md5)
    {
        return Ok(PackDone {
            object,
            chunks,
            sent: 0,
            resumed: true,
        });
    }
    // The WAN shaper's snapshot class: the whole body is granted before the PUT.
    shaper.acquire(Class::Snapshot, len).await;
    let t = Instant::now();
    store.put_md5(&loc.container, &object, body, &md5).await?;
    tracing::debug!(%object, bytes = len, put_ms = t.elapsed().as_millis() as u64, "object stored");
    Ok(PackDone {
        object,
        chunks,
        sent: len,
        resumed: false,
    })
}

/// Stream `dev` as snapshot `opts.snapshot` to `store` at `loc`. See the module doc.
///
/// `changed`: for an incremental (`opts.parent` set), the chunks the volume's change tracking
/// marks since the parent; only those are read. Without it an incremental reads everything and
/// stores only chunks whose content differs from the parent chain's (by digest).
pub async fn stream_device<D: BlockDevice, S: ObjectStore>(
    dev: &D,
    changed: Option<&ChangedChunks>,
    store: &S,
    loc: &Location,
    opts: &StreamOptions,
    progress: impl Fn(Progress),
) -> Result<Report, StreamError> {
    let t0 = Instant::now();
    let size = dev.size_bytes();
    let n = opts.validate(size)?;
    let chunk = opts.chunk_bytes;
    let snap = opts.snapshot.as_str();
    if let Some(c) = changed {
        if opts.parent.is_none() {
            return Err(StreamError::Config(
                "change tracking given for a stream without --parent".into(),
            ));
        }
        if c.chunk_bytes() != chunk || c.chunk_count() != n {
            return Err(StreamError::Config(format!(
                "change tracking covers {} chunks of {} bytes, the stream has {n} of {chunk}",
                c.chunk_count(),
                c.chunk_bytes()
            )));
        }
    }
    store.ensure_container(&loc.container).await?;
    let manifest_obj = loc.manifest_object(snap);
    if store.head(&loc.container, &manifest_obj).await?.is_some() {
        return Err(StreamError::SnapshotExists(format!(
            "{}/{manifest_obj}",
            loc.container
        )));
    }
    // The parent chain's digest of every chunk (None: zero), to compare against; with change
    // tracking only the marked chunks are read and compared.
    let parent_sha: Option<Vec<Option<ChunkDigest>>> = match &opts.parent {
        None => None,
        Some(p) => {
            let chain = load_chain(store, loc, p).await?;
            let r = resolve_chain(&chain)?;
            if r.volume_size_bytes != size || r.chunk_size_bytes != chunk {
                return Err(StreamError::Chain(format!(
                    "parent {p} has size {} / chunk {}, the volume has {size} / stream chunk {chunk}",
                    r.volume_size_bytes, r.chunk_size_bytes
                )));
            }
            Some(
                r.chunks
                    .into_iter()
                    .map(|c| match c {
                        ChunkEntry::Stored { digest, .. } => Some(digest),
                        _ => None,
                    })
                    .collect(),
            )
        }
    };
    // Objects an interrupted run already stored: name -> (size, md5).
    let existing: HashMap<String, (u64, String)> = store
        .list(&loc.container, &loc.chunks_prefix(snap))
        .await?
        .into_iter()
        .map(|o| (o.name, (o.bytes, o.hash)))
        .collect();
    if !existing.is_empty() {
        tracing::info!(
            volume = dev.name(),
            snapshot = snap,
            objects = existing.len(),
            "resuming: objects of an earlier run found"
        );
    }

    let mut entries: Vec<Option<ChunkEntry>> = vec![None; n as usize];
    let mut report = Report {
        chunks_total: n,
        ..Report::default()
    };
    let mut prog = Progress {
        bytes_total: size,
        chunks_total: n,
        ..Progress::default()
    };
    let object_bytes = opts.object_bytes;
    let in_flight = opts.bodies_in_flight();
    let uploads_max = opts.objects_in_flight();
    let pool = BufPool::new(object_bytes as usize, in_flight + 1);
    let parent_sha = &parent_sha;
    // Stage 1, in index order, in groups of `STREAM_HASH_LANES` chunks (hashed in one blocking
    // task), groups read at once so that `parallelism` chunks or more are in flight: read, zero
    // test, blake3 (and the parent's digest when it is another), zstd.
    let lanes = opts.hash_group_chunks() as u64;
    let groups_at_once = (opts.parallelism / lanes as usize).max(2);
    let mut processed = futures::stream::iter(0..n.div_ceil(lanes))
        .map(|g| async move {
            let idx = g * lanes..(g * lanes + lanes).min(n);
            let len_of = |i: u64| chunk.min(size - i * chunk);
            let want: Vec<u64> = idx
                .clone()
                .filter(|&i| changed.is_none_or(|c| c.is_changed(i)))
                .collect();
            let bufs = futures::future::try_join_all(
                want.iter().map(|&i| dev.read(i * chunk, len_of(i) as u32)),
            )
            .await?;
            let policy = opts.compression;
            let group: Vec<(u64, AlignedBuf)> = want.iter().copied().zip(bufs).collect();
            let parent: Option<Vec<Option<ChunkDigest>>> = parent_sha
                .as_ref()
                .map(|ps| want.iter().map(|&i| ps[i as usize].clone()).collect());
            let (group, sums) = tokio::task::spawn_blocking(move || {
                let sums = hash_group(&group, parent.as_deref());
                (group, sums)
            })
            .await
            .map_err(|e| StreamError::Task(e.to_string()))?;
            // Zero, the same as the parent's, or a payload (compressed each on its own task).
            let mut read = futures::future::try_join_all(group.into_iter().zip(sums).map(
                |((i, buf), sum)| async move {
                    let p = match sum {
                        None => Processed::Zero,
                        Some((_, true)) => Processed::SameAsParent,
                        Some((sha, false)) if policy == Compression::Zstd => {
                            tokio::task::spawn_blocking(move || payload_of(buf, i, sha, policy))
                                .await
                                .map_err(|e| StreamError::Task(e.to_string()))??
                        }
                        Some((sha, false)) => payload_of(buf, i, sha, policy)?,
                    };
                    Ok::<_, StreamError>(p)
                },
            ))
            .await?
            .into_iter();
            let mut out = Vec::with_capacity(idx.end.saturating_sub(idx.start) as usize);
            for i in idx {
                let p = if want.binary_search(&i).is_err() {
                    Processed::Unchanged
                } else {
                    read.next()
                        .ok_or_else(|| StreamError::Task(format!("chunk {i} has no digest")))?
                };
                out.push((i, len_of(i), p));
            }
            Ok::<_, StreamError>(futures::stream::iter(
                out.into_iter().map(Ok::<_, StreamError>),
            ))
        })
        .buffered(groups_at_once)
        .try_flatten();
    // Stage 2: pack stored chunks into objects; md5 them `md5_lanes` at a time; upload. At most
    // `in_flight` full objects (ready, hashing, queued or uploading) besides the one being
    // packed, at most `uploads_max` of them uploading.
    let mut work = futures::stream::FuturesUnordered::<StepFuture<'_>>::new();
    let mut ready: Vec<Sealed> = Vec::new();
    // Hashed objects waiting for an upload slot: they are ready when a slot frees, so Swift
    // is never left idle while the next objects are read and hashed.
    let mut queued: std::collections::VecDeque<(Sealed, String)> = Default::default();
    let mut uploading = 0usize;
    let mut hashing = 0usize;
    let mut bodies = 0usize;
    let mut pack = Pack {
        buf: pool.take(),
        chunks: Vec::new(),
    };
    let mut reading = true;
    let md5_lanes = md5x4::lanes_here().min(in_flight);
    let existing = &existing;
    let shaper: &Shaper = &opts.shaper;
    loop {
        // md5 eight (or four) objects together: a lone object costs as much CPU as eight. Fewer
        // only when reading is done, the uploads are about to run dry, or no more objects can
        // come (the bodies are all taken) and none is hashed or waiting to feed the uploads
        // (with large objects the budget holds fewer than the uploads plus a full set).
        let starving = uploading + queued.len() + hashing < STREAM_UPLOADS_LOW_WATER;
        let stuck = bodies >= in_flight && hashing == 0 && queued.is_empty();
        if !ready.is_empty() && (ready.len() >= md5_lanes || !reading || starving || stuck) {
            hashing += ready.len();
            work.push(hash_batch(std::mem::take(&mut ready)));
        }
        while uploading < uploads_max {
            let Some((sealed, md5)) = queued.pop_front() else {
                break;
            };
            uploading += 1;
            work.push(Box::pin(async move {
                upload_pack(store, loc, snap, existing, sealed, md5, shaper)
                    .await
                    .map(Step::Stored)
            }));
        }
        if !reading && work.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            step = work.next(), if !work.is_empty() => {
                let Some(step) = step else { continue };
                match step? {
                    Step::Hashed(batch) => {
                        hashing -= batch.len();
                        queued.extend(batch);
                    }
                    Step::Stored(PackDone { object, chunks, sent, resumed }) => {
                        bodies -= 1;
                        uploading -= 1;
                        if resumed {
                            report.chunks_resumed += chunks.len() as u64;
                        } else {
                            report.chunks_uploaded += chunks.len() as u64;
                            report.objects_uploaded += 1;
                            report.bytes_uploaded += sent;
                        }
                        for c in chunks {
                            prog.bytes_done += c.len;
                            prog.chunks_done += 1;
                            entries[c.index as usize] = Some(ChunkEntry::Stored {
                                index: c.index,
                                digest: c.digest,
                                object: object.clone(),
                                offset: c.offset,
                                stored_bytes: c.stored_bytes,
                                compression: c.compression,
                            });
                        }
                    }
                }
            }
            next = processed.next(), if reading && bodies < in_flight => {
                let Some(next) = next else {
                    reading = false;
                    if !pack.chunks.is_empty() {
                        let full = std::mem::replace(&mut pack, Pack { buf: pool.take(), chunks: Vec::new() });
                        ready.push(full.seal());
                        bodies += 1;
                    }
                    continue;
                };
                let (i, len, p) = next?;
                let (entry, read) = match p {
                    Processed::Unchanged => {
                        report.chunks_skipped_unchanged += 1;
                        (ChunkEntry::UnchangedFromParent { index: i }, 0)
                    }
                    Processed::SameAsParent => {
                        report.chunks_skipped_unchanged += 1;
                        (ChunkEntry::UnchangedFromParent { index: i }, len)
                    }
                    Processed::Zero => {
                        report.chunks_skipped_zero += 1;
                        (ChunkEntry::Zero { index: i }, len)
                    }
                    Processed::Data { digest, payload, compression } => {
                        report.bytes_read += len;
                        if pack.buf.data.len() + payload.len() > object_bytes as usize {
                            let full = std::mem::replace(&mut pack, Pack { buf: pool.take(), chunks: Vec::new() });
                            ready.push(full.seal());
                            bodies += 1;
                        }
                        pack.chunks.push(Packed {
                            index: i,
                            len,
                            digest,
                            offset: pack.buf.data.len() as u64,
                            stored_bytes: payload.len() as u64,
                            compression,
                        });
                        pack.buf.data.extend_from_slice(&payload);
                        continue;
                    }
                };
                report.bytes_read += read;
                entries[i as usize] = Some(entry);
                prog.bytes_done += len;
                prog.chunks_done += 1;
            }
            // Unreachable while the scheduling above holds (nothing in flight means a body slot
            // is free); an error, not select!'s panic, if it ever does not.
            else => {
                return Err(StreamError::Task(format!(
                    "stream pipeline stalled: {} ready, {} hashing, {} queued, {uploading} uploading, {bodies} bodies",
                    ready.len(), hashing, queued.len()
                )));
            }
        }
        prog.bytes_transferred = report.bytes_uploaded;
        prog.elapsed_ms = t0.elapsed().as_millis() as u64;
        progress(prog);
    }
    drop(processed);
    let chunks: Vec<ChunkEntry> = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.ok_or_else(|| StreamError::Task(format!("chunk {i} has no result"))))
        .collect::<Result<_, _>>()?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        snapshot: snap.into(),
        parent: opts.parent.clone(),
        volume: dev.name().into(),
        created_unix_ms: now_unix_ms(),
        volume_size_bytes: size,
        chunk_size_bytes: chunk,
        compression: opts.compression,
        chunks,
    };
    manifest
        .validate()
        .map_err(|reason| StreamError::Manifest {
            object: manifest_obj.clone(),
            reason,
        })?;
    store
        .put(
            &loc.container,
            &manifest_obj,
            Bytes::from(manifest.to_json()),
        )
        .await?;
    // Leftovers of an interrupted run whose data changed since: not referenced, delete.
    let referenced: std::collections::HashSet<&str> = manifest
        .chunks
        .iter()
        .filter_map(|c| match c {
            ChunkEntry::Stored { object, .. } => Some(object.as_str()),
            _ => None,
        })
        .collect();
    for name in existing.keys().filter(|k| !referenced.contains(k.as_str())) {
        if let Err(e) = store.delete(&loc.container, name).await {
            tracing::warn!(object = %name, error = %e, "could not delete an unreferenced object");
        }
    }
    report.elapsed_ms = t0.elapsed().as_millis() as u64;
    tracing::info!(volume = dev.name(), snapshot = snap, store = %store.describe(), ?report, "stream finished");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::restore::{restore_to_device, RestoreOptions};
    use crate::stream::vault::DirVault;
    use crate::volume::mem::MemDevice;
    use rand::{RngCore, SeedableRng};

    const C: u64 = 64 * 1024;

    /// A volume of `chunks` 64 KiB chunks plus a short last one: random, zero and compressible
    /// chunks in a fixed pattern (every fifth, from the second, is zero).
    fn mixed_volume(chunks: usize, seed: u64) -> MemDevice {
        let c = C as usize;
        let size = chunks * c + 12 * 1024;
        let dev = MemDevice::new("pipe", size);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut buf = vec![0u8; c];
        for i in 0..=chunks {
            let len = c.min(size - i * c);
            match i % 5 {
                0 | 3 => rng.fill_bytes(&mut buf[..len]),
                1 => continue,
                _ => buf[..len]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(k, b)| *b = (k / 512) as u8),
            }
            dev.fill(i * c, &buf[..len]);
        }
        dev
    }

    async fn stream_in_time(
        dev: &MemDevice,
        changed: Option<&ChangedChunks>,
        store: &DirVault,
        loc: &Location,
        o: &StreamOptions,
    ) -> Result<Report, StreamError> {
        let what = format!(
            "parallelism {}, object {}, bodies {}",
            o.parallelism,
            o.object_bytes,
            o.bodies_in_flight()
        );
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            stream_device(dev, changed, store, loc, o, |_| {}),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: stream hung"))
    }

    async fn assert_restores_equal(store: &DirVault, loc: &Location, snap: &str, dev: &MemDevice) {
        let back = MemDevice::new("back", dev.size_bytes() as usize);
        restore_to_device(store, loc, snap, &back, &RestoreOptions::default(), |_| {})
            .await
            .unwrap_or_else(|e| panic!("restore {snap}: {e}"));
        assert!(
            back.contents() == dev.contents(),
            "{snap}: restored volume differs"
        );
    }

    /// Every combination of parallelism, object size (one chunk, a few, more than the volume)
    /// and body budget (one body, a few, the default) streams without hanging, counts every
    /// chunk once and restores equal; then an incremental reads only the marked chunks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipeline_streams_every_chunk_once_for_any_parallelism_object_size_and_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirVault::new(dir.path()).unwrap();
        let chunks = 53usize;
        let n = chunks as u64 + 1;
        let mut k = 0;
        for par in [1usize, 2, 8, 17] {
            for obj in [C, 3 * C + 4096, 64 * C] {
                for budget in [2 * obj, 6 * obj, STREAM_INFLIGHT_BYTES_DEFAULT] {
                    k += 1;
                    let dev = mixed_volume(chunks, k);
                    let loc = Location::new(format!("c{k}"), "v");
                    let mut o = StreamOptions::new("full");
                    (
                        o.chunk_bytes,
                        o.object_bytes,
                        o.parallelism,
                        o.inflight_bytes,
                    ) = (C, obj, par, budget);
                    let what = format!("parallelism {par}, object {obj}, budget {budget}");
                    let r = stream_in_time(&dev, None, &store, &loc, &o)
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let zero = (0..n).filter(|i| i % 5 == 1).count() as u64;
                    assert_eq!(r.chunks_total, n, "{what}");
                    assert_eq!(r.chunks_skipped_zero, zero, "{what}");
                    assert_eq!(r.chunks_uploaded, n - zero, "{what}");
                    assert_restores_equal(&store, &loc, "full", &dev).await;

                    // Chunks 4 and 40 change, 41 is marked but unchanged: only the three
                    // marked chunks are read, two are stored.
                    let mut fresh = vec![0u8; C as usize];
                    rand::rngs::StdRng::seed_from_u64(k).fill_bytes(&mut fresh);
                    dev.fill(4 * C as usize, &fresh);
                    dev.fill(40 * C as usize, &fresh);
                    let mut changed = ChangedChunks::new(C, n);
                    for i in [4, 40, 41] {
                        changed.mark(i);
                    }
                    o.snapshot = "incr".into();
                    o.parent = Some("full".into());
                    let r = stream_in_time(&dev, Some(&changed), &store, &loc, &o)
                        .await
                        .unwrap_or_else(|e| panic!("{what}: incremental: {e}"));
                    assert_eq!((r.chunks_uploaded, r.bytes_read), (2, 3 * C), "{what}");
                    assert_restores_equal(&store, &loc, "incr", &dev).await;
                }
            }
        }
    }

    /// A read error in the middle of a group ends the stream with that error: no hang, no
    /// manifest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_error_ends_the_stream_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirVault::new(dir.path()).unwrap();
        let dev = mixed_volume(40, 1).with_failing_range(21 * C..21 * C + 1);
        let loc = Location::new("c", "v");
        let mut o = StreamOptions::new("s");
        o.chunk_bytes = C;
        let e = stream_in_time(&dev, None, &store, &loc, &o)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("injected fault"), "{e}");
        let manifest = store.head("c", &loc.manifest_object("s")).await.unwrap();
        assert!(manifest.is_none());
    }

    #[test]
    fn names_and_zero_test() {
        let l = Location::new("c", "/site/vol/");
        assert_eq!(l.manifest_object("s1"), "site/vol/s1/manifest.json");
        let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            l.chunk_object("s1", 26, sha),
            "site/vol/s1/chunks/0000001a-0123456789abcdef"
        );
        assert_eq!(
            Location::new("c", "").manifest_object("s"),
            "s/manifest.json"
        );
        let mut b = vec![0u8; 4096 + 7];
        assert!(is_zero(&b));
        b[4100] = 1;
        assert!(!is_zero(&b));
    }

    #[test]
    fn option_bounds() {
        let mut o = StreamOptions::new("s");
        assert_eq!(o.validate(10 * STREAM_CHUNK_BYTES_DEFAULT + 1).unwrap(), 11);
        o.chunk_bytes = 5000;
        assert!(o.validate(1 << 20).is_err());
        o.chunk_bytes = STREAM_CHUNK_BYTES_DEFAULT;
        // Objects hold at least one chunk, and their bodies in flight stay bounded.
        o.object_bytes = o.chunk_bytes - 4096;
        assert!(o
            .validate(1 << 20)
            .unwrap_err()
            .to_string()
            .contains("object size"));
        o.object_bytes = STREAM_OBJECT_BYTES_MAX;
        assert_eq!((o.objects_in_flight(), o.bodies_in_flight()), (1, 1));
        o.object_bytes = STREAM_OBJECT_BYTES_DEFAULT;
        assert!(
            (o.bodies_in_flight() as u64 + 1) * o.object_bytes <= STREAM_INFLIGHT_BYTES_DEFAULT
                && o.objects_in_flight() > 1
                && o.objects_in_flight() <= o.bodies_in_flight()
        );
        o.parallelism = 0;
        assert!(o.validate(1 << 20).is_err());
        o.parallelism = 1;
        o.parent = Some("s".into());
        assert!(o
            .validate(1 << 20)
            .unwrap_err()
            .to_string()
            .contains("own parent"));
    }
}
