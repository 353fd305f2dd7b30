//! Restoring a snapshot chain (full plus incrementals) into a file or a block device.
//!
//! [`load_chain`] follows `parent` links from the named snapshot down to its full snapshot
//! (bounded depth, cycles and missing parents are errors that name the snapshot);
//! [`resolve_chain`] picks, for every chunk, the newest snapshot that holds it. The stored
//! chunks are then fetched per object, in byte ranges of at most
//! [`STREAM_RESTORE_RANGE_BYTES_MAX`] (a version 2 object packs many chunks; a version 1
//! object is one chunk), with at most `parallelism` ranges in flight; every chunk is
//! decompressed into a buffer bounded by the chunk size and checked against its digest (the
//! one its manifest's version uses: blake3 or sha256) before
//! a single byte of it is written: a corrupt chunk fails the restore with an error naming the
//! chunk and its object.
//!
//! Into a regular file the restore is sparse: the file is truncated and sized first, zero chunks
//! are holes. Into a block device (or a device node) zero chunks are written as zeroes.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::manifest::{
    check_snapshot_name, resolve_chain, ChunkDigest, ChunkEntry, DigestAlg, Manifest, ResolvedChain,
};
use super::store::ObjectStore;
use super::upload::Location;
use super::{Compression, Progress, Report, StreamError};
use crate::limits::{
    STREAM_CHAIN_DEPTH_MAX, STREAM_MANIFEST_BYTES_MAX, STREAM_PARALLELISM_DEFAULT,
    STREAM_PARALLELISM_MAX, STREAM_RESTORE_RANGE_BYTES_MAX,
};
use crate::volume::{AlignedBuf, BlockDevice};

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub parallelism: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            parallelism: STREAM_PARALLELISM_DEFAULT,
        }
    }
}

/// Read the manifest of `snapshot` at `loc`.
pub async fn load_manifest<S: ObjectStore>(
    store: &S,
    loc: &Location,
    snapshot: &str,
) -> Result<Manifest, StreamError> {
    check_snapshot_name(snapshot)?;
    let obj = loc.manifest_object(snapshot);
    let data = match store.get(&loc.container, &obj, STREAM_MANIFEST_BYTES_MAX).await {
        Ok(d) => d,
        Err(StreamError::NotFound { .. }) => {
            return Err(StreamError::Chain(format!(
                "snapshot {snapshot} has no manifest at {}/{obj} (never streamed, or its stream did not finish)",
                loc.container
            )))
        }
        Err(e) => return Err(e),
    };
    let m = Manifest::from_json(&obj, &data)?;
    if m.snapshot != snapshot {
        return Err(StreamError::Manifest {
            object: obj,
            reason: format!("names snapshot {}, expected {snapshot}", m.snapshot),
        });
    }
    Ok(m)
}

/// The manifests from `snapshot` down to its full snapshot, newest first.
pub async fn load_chain<S: ObjectStore>(
    store: &S,
    loc: &Location,
    snapshot: &str,
) -> Result<Vec<Manifest>, StreamError> {
    let mut chain: Vec<Manifest> = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some(snapshot.to_string());
    while let Some(name) = next {
        if !seen.insert(name.clone()) {
            return Err(StreamError::Chain(format!(
                "cycle: snapshot {name} is its own ancestor (from {snapshot})"
            )));
        }
        if chain.len() >= STREAM_CHAIN_DEPTH_MAX {
            return Err(StreamError::Chain(format!(
                "chain from {snapshot} is longer than {STREAM_CHAIN_DEPTH_MAX}"
            )));
        }
        let m = match load_manifest(store, loc, &name).await {
            Ok(m) => m,
            Err(StreamError::Chain(why)) if !chain.is_empty() => {
                let child = &chain[chain.len() - 1].snapshot;
                return Err(StreamError::Chain(format!(
                    "parent {name} of snapshot {child} is missing: {why}"
                )));
            }
            Err(e) => return Err(e),
        };
        next = m.parent.clone();
        chain.push(m);
    }
    Ok(chain)
}

/// Where restored chunks go.
trait Sink: Sync {
    fn write_at(
        &self,
        offset: u64,
        data: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), StreamError>> + Send;
    /// Make `offset..offset+len` read as zeroes; `Ok(false)` when nothing had to be written.
    fn zero(
        &self,
        offset: u64,
        len: u64,
    ) -> impl std::future::Future<Output = Result<bool, StreamError>> + Send;
}

struct FileSink {
    file: Arc<std::fs::File>,
    path: String,
    /// Fresh, truncated regular file: zero ranges are holes already.
    sparse: bool,
}

impl Sink for FileSink {
    async fn write_at(&self, offset: u64, data: Vec<u8>) -> Result<(), StreamError> {
        let (f, path) = (self.file.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            f.write_all_at(&data, offset)
                .map_err(|e| StreamError::io(path, "write", e))
        })
        .await
        .map_err(|e| StreamError::Task(e.to_string()))?
    }
    async fn zero(&self, offset: u64, len: u64) -> Result<bool, StreamError> {
        if self.sparse {
            return Ok(false);
        }
        self.write_at(offset, vec![0u8; len as usize]).await?;
        Ok(true)
    }
}

struct DeviceSink<'a, D: BlockDevice>(&'a D);

impl<D: BlockDevice> Sink for DeviceSink<'_, D> {
    async fn write_at(&self, offset: u64, data: Vec<u8>) -> Result<(), StreamError> {
        Ok(self
            .0
            .write(offset, AlignedBuf::from_slice(&data), false)
            .await?)
    }
    async fn zero(&self, offset: u64, len: u64) -> Result<bool, StreamError> {
        self.0.write_zeroes(offset, len as u32, true, false).await?;
        Ok(true)
    }
}

/// Restore `snapshot` (and its parents) from `loc` into the file at `path` (created, or
/// truncated when it is a regular file; a device node is overwritten in place).
pub async fn restore_to_file<S: ObjectStore>(
    store: &S,
    loc: &Location,
    snapshot: &str,
    path: &Path,
    opts: &RestoreOptions,
    progress: impl Fn(Progress),
) -> Result<Report, StreamError> {
    let chain = load_chain(store, loc, snapshot).await?;
    let resolved = resolve_chain(&chain)?;
    let size = resolved.volume_size_bytes;
    let p = path.to_path_buf();
    let sink = tokio::task::spawn_blocking(move || {
        let shown = p.display().to_string();
        let regular = std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(true);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(regular)
            .truncate(false)
            .open(&p)
            .map_err(|e| StreamError::io(&shown, "open restore target", e))?;
        if regular {
            f.set_len(0)
                .map_err(|e| StreamError::io(&shown, "truncate", e))?;
            f.set_len(size)
                .map_err(|e| StreamError::io(&shown, "set length", e))?;
        }
        Ok::<_, StreamError>(FileSink {
            file: Arc::new(f),
            path: shown,
            sparse: regular,
        })
    })
    .await
    .map_err(|e| StreamError::Task(e.to_string()))??;
    let report = restore_chunks(store, &loc.container, &resolved, &sink, opts, progress).await?;
    let (f, shown) = (sink.file.clone(), sink.path.clone());
    tokio::task::spawn_blocking(move || {
        f.sync_all().map_err(|e| StreamError::io(shown, "fsync", e))
    })
    .await
    .map_err(|e| StreamError::Task(e.to_string()))??;
    Ok(report)
}

/// Restore `snapshot` (and its parents) into a block device of at least the volume's size.
pub async fn restore_to_device<S: ObjectStore, D: BlockDevice>(
    store: &S,
    loc: &Location,
    snapshot: &str,
    dev: &D,
    opts: &RestoreOptions,
    progress: impl Fn(Progress),
) -> Result<Report, StreamError> {
    let chain = load_chain(store, loc, snapshot).await?;
    let resolved = resolve_chain(&chain)?;
    if dev.size_bytes() < resolved.volume_size_bytes {
        return Err(StreamError::Config(format!(
            "volume {} is {} bytes, the snapshot {snapshot} needs {}",
            dev.name(),
            dev.size_bytes(),
            resolved.volume_size_bytes
        )));
    }
    if dev.read_only() {
        return Err(StreamError::Config(format!(
            "volume {} is read-only",
            dev.name()
        )));
    }
    let report = restore_chunks(
        store,
        &loc.container,
        &resolved,
        &DeviceSink(dev),
        opts,
        progress,
    )
    .await?;
    dev.flush().await?;
    Ok(report)
}

/// One unit of restore work: a zero chunk, or a byte range of one object holding chunks.
enum Work {
    /// Index into the resolved chunk list.
    Zero(usize),
    /// `start..end` of `object`; the chunks (indexes into the resolved list) in offset order.
    Range {
        object: String,
        start: u64,
        end: u64,
        chunks: Vec<usize>,
    },
}

/// Cut the resolved chain into work: zero chunks one by one; the stored chunks of each object,
/// in offset order, in ranges of at most [`STREAM_RESTORE_RANGE_BYTES_MAX`] stored and raw
/// bytes (at least one chunk), split where chunks of the object are not needed (a newer
/// snapshot holds them) for more than a chunk's size.
fn plan(r: &ResolvedChain) -> Vec<Work> {
    let mut work = Vec::new();
    let mut by_object: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut pos: HashMap<&str, usize> = HashMap::new();
    for (k, c) in r.chunks.iter().enumerate() {
        match c {
            ChunkEntry::Stored { object, .. } => {
                let at = *pos.entry(object.as_str()).or_insert_with(|| {
                    by_object.push((object.as_str(), Vec::new()));
                    by_object.len() - 1
                });
                by_object[at].1.push(k);
            }
            _ => work.push(Work::Zero(k)),
        }
    }
    let span = |k: usize| match &r.chunks[k] {
        ChunkEntry::Stored {
            offset,
            stored_bytes,
            ..
        } => (*offset, offset + stored_bytes),
        _ => (0, 0),
    };
    for (object, mut ks) in by_object {
        ks.sort_by_key(|&k| span(k).0);
        let range =
            |object: &str, (start, end, _, chunks): (u64, u64, u64, Vec<usize>)| Work::Range {
                object: object.to_string(),
                start,
                end,
                chunks,
            };
        // The range being built: start, end, raw bytes, chunks.
        let mut cur: Option<(u64, u64, u64, Vec<usize>)> = None;
        let raw = r.chunk_size_bytes;
        for k in ks {
            let (a, b) = span(k);
            match &mut cur {
                Some((start, end, sum, ks))
                    if b - *start <= STREAM_RESTORE_RANGE_BYTES_MAX
                        && *sum + raw <= STREAM_RESTORE_RANGE_BYTES_MAX
                        && a <= *end + raw =>
                {
                    *end = (*end).max(b);
                    *sum += raw;
                    ks.push(k);
                }
                _ => {
                    if let Some(done) = cur.replace((a, b, raw, vec![k])) {
                        work.push(range(object, done));
                    }
                }
            }
        }
        if let Some(done) = cur {
            work.push(range(object, done));
        }
    }
    work
}

/// One chunk cut from a fetched range, with what the manifest says of it.
struct Cut {
    k: usize,
    volume_offset: u64,
    stored: Bytes,
    compression: Compression,
    raw_len: u64,
    digest: ChunkDigest,
}

/// Checked chunks: (volume offset, raw bytes); or the first bad one: (its `k`, why).
type Verified = Result<Vec<(u64, Vec<u8>)>, (usize, String)>;

/// Check the chunks cut from one fetched range against their digests
/// ([`DigestAlg::digest_all`]) and return their volume offsets and raw bytes; the first bad
/// one as (its `k`, why).
fn verify_chunks(cuts: Vec<Cut>) -> Verified {
    let raws: Vec<Result<Vec<u8>, String>> = cuts
        .iter()
        .map(|c| {
            let raw = match c.compression {
                Compression::None => c.stored.to_vec(),
                Compression::Zstd => zstd::bulk::decompress(&c.stored, c.raw_len as usize)
                    .map_err(|e| format!("zstd: {e}"))?,
            };
            if raw.len() as u64 != c.raw_len {
                return Err(format!(
                    "holds {} bytes, the chunk is {}",
                    raw.len(),
                    c.raw_len
                ));
            }
            Ok(raw)
        })
        .collect();
    // Every decompressed chunk's digest, per digest (one range holds one manifest's chunks, so
    // one digest in practice), back in cut order.
    let mut sums: Vec<Option<ChunkDigest>> = vec![None; cuts.len()];
    for alg in [DigestAlg::Blake3, DigestAlg::Sha256] {
        let (at, msgs): (Vec<usize>, Vec<&[u8]>) = cuts
            .iter()
            .zip(&raws)
            .enumerate()
            .filter_map(|(j, (c, r))| match r {
                Ok(raw) if c.digest.alg() == alg => Some((j, &raw[..])),
                _ => None,
            })
            .unzip();
        for (j, d) in at.into_iter().zip(alg.digest_all(&msgs)) {
            sums[j] = Some(d);
        }
    }
    // In order, so the first bad chunk is the one reported, whatever is wrong with it.
    let mut out = Vec::with_capacity(cuts.len());
    for ((c, raw), got) in cuts.iter().zip(raws).zip(sums) {
        let raw = raw.map_err(|why| (c.k, why))?;
        match got {
            Some(got) if got == c.digest => {}
            got => {
                let got = got.as_ref().map_or("none", |g| g.hex());
                return Err((
                    c.k,
                    format!(
                        "{} {got}, manifest says {}",
                        c.digest.alg().name(),
                        c.digest.hex()
                    ),
                ));
            }
        }
        out.push((c.volume_offset, raw));
    }
    Ok(out)
}

/// Fetch one range and check every chunk in it; returns the bytes fetched and, per chunk, its
/// volume offset and raw bytes. A missing or short object, or a chunk that does not match its
/// digest, is a [`StreamError::CorruptChunk`] naming the chunk and the object.
async fn fetch_range<S: ObjectStore>(
    store: &S,
    container: &str,
    r: &ResolvedChain,
    object: &str,
    start: u64,
    end: u64,
    ks: &[usize],
) -> Result<(u64, Vec<(u64, Vec<u8>)>), StreamError> {
    let corrupt = |k: usize, reason: String| StreamError::CorruptChunk {
        index: r.chunks[k].index(),
        object: object.to_string(),
        reason,
    };
    let first = ks.first().copied().unwrap_or_default();
    let data = match store.get_range(container, object, start, end - start).await {
        Ok(d) => d,
        Err(StreamError::NotFound { .. }) => {
            return Err(corrupt(first, "object is missing".into()))
        }
        Err(e) => return Err(e),
    };
    let fetched = data.len() as u64;
    let mut todo = Vec::with_capacity(ks.len());
    for &k in ks {
        let ChunkEntry::Stored {
            index,
            digest,
            offset,
            stored_bytes,
            compression,
            ..
        } = &r.chunks[k]
        else {
            continue;
        };
        let (a, b) = (offset - start, offset - start + stored_bytes);
        if b > fetched {
            return Err(corrupt(
                k,
                format!(
                    "object ends at {} bytes, the chunk lies at {offset}..{}",
                    start + fetched,
                    offset + stored_bytes
                ),
            ));
        }
        let raw_len = r
            .chunk_size_bytes
            .min(r.volume_size_bytes - index * r.chunk_size_bytes);
        todo.push(Cut {
            k,
            volume_offset: index * r.chunk_size_bytes,
            stored: data.slice(a as usize..b as usize),
            compression: *compression,
            raw_len,
            digest: digest.clone(),
        });
    }
    let checked = tokio::task::spawn_blocking(move || verify_chunks(todo))
        .await
        .map_err(|e| StreamError::Task(e.to_string()))?
        .map_err(|(k, why)| corrupt(k, why))?;
    Ok((fetched, checked))
}

async fn restore_chunks<S: ObjectStore, K: Sink>(
    store: &S,
    container: &str,
    r: &ResolvedChain,
    sink: &K,
    opts: &RestoreOptions,
    progress: impl Fn(Progress),
) -> Result<Report, StreamError> {
    if !(1..=STREAM_PARALLELISM_MAX).contains(&opts.parallelism) {
        return Err(StreamError::Config(format!(
            "parallelism {} out of 1..={STREAM_PARALLELISM_MAX}",
            opts.parallelism
        )));
    }
    let t0 = Instant::now();
    let n = r.chunks.len() as u64;
    let chunk = r.chunk_size_bytes;
    let size = r.volume_size_bytes;
    let mut report = Report {
        chunks_total: n,
        ..Report::default()
    };
    let mut prog = Progress {
        bytes_total: size,
        chunks_total: n,
        ..Progress::default()
    };
    let work = plan(r);
    let work = &work;
    // Indexes, not references, go through the stream: a closure over `&Work` makes the
    // future lose `Send` (rustc's higher-ranked closure inference).
    let mut results = futures::stream::iter(0..work.len())
        .map(|w| async move {
            match &work[w] {
                Work::Zero(k) => {
                    let off = r.chunks[*k].index() * chunk;
                    let len = chunk.min(size - off);
                    let wrote = sink.zero(off, len).await?;
                    Ok::<_, StreamError>((1, len, 0, if wrote { len } else { 0 }, true))
                }
                Work::Range {
                    object,
                    start,
                    end,
                    chunks,
                } => {
                    let (fetched, raws) =
                        fetch_range(store, container, r, object, *start, *end, chunks).await?;
                    let mut len = 0;
                    for (off, raw) in raws {
                        len += raw.len() as u64;
                        sink.write_at(off, raw).await?;
                    }
                    Ok((chunks.len() as u64, len, fetched, len, false))
                }
            }
        })
        .buffer_unordered(opts.parallelism);
    while let Some((count, len, fetched, written, zero)) = results.try_next().await? {
        report.bytes_downloaded += fetched;
        report.bytes_written += written;
        if zero {
            report.chunks_skipped_zero += count;
        }
        prog.bytes_done += len;
        prog.bytes_transferred = report.bytes_downloaded;
        prog.chunks_done += count;
        prog.elapsed_ms = t0.elapsed().as_millis() as u64;
        progress(prog);
    }
    report.elapsed_ms = t0.elapsed().as_millis() as u64;
    tracing::info!(snapshots = ?r.snapshots, ?report, "restore finished");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::manifest::{MANIFEST_FORMAT, MANIFEST_VERSION};
    use crate::stream::vault::DirVault;

    /// The first bad chunk of a range is the one reported, whether its digest is wrong or it
    /// does not decompress; good chunks come back with their volume offsets. Both digests:
    /// blake3 (version 3) and sha256 (versions 1 and 2).
    #[test]
    fn a_range_reports_its_first_bad_chunk() {
        for alg in [DigestAlg::Blake3, DigestAlg::Sha256] {
            first_bad_chunk_with(alg);
        }
    }

    fn first_bad_chunk_with(alg: DigestAlg) {
        let cut = |k: usize, data: &[u8], compression, digest: ChunkDigest| Cut {
            k,
            volume_offset: 4096 * k as u64,
            stored: Bytes::copy_from_slice(data),
            compression,
            raw_len: 4096,
            digest,
        };
        let block = |b: u8| vec![b; 4096];
        let sha = |d: &[u8]| alg.digest_all(&[d]).remove(0);
        let good: Vec<Cut> = (0..10)
            .map(|k| cut(k, &block(k as u8), Compression::None, sha(&block(k as u8))))
            .collect();
        let back = verify_chunks(good).unwrap();
        assert_eq!(back.len(), 10);
        assert_eq!((back[9].0, back[9].1[0]), (9 * 4096, 9));
        let bad = vec![
            cut(0, &block(0), Compression::None, sha(&block(0))),
            cut(1, &block(1), Compression::None, sha(&block(2))),
            cut(2, b"not zstd", Compression::Zstd, sha(&block(2))),
        ];
        let (k, why) = verify_chunks(bad).unwrap_err();
        assert_eq!(k, 1, "{why}");
        assert!(why.contains("manifest says"), "{why}");
        assert!(why.starts_with(alg.name()), "{why}");
        let bad = vec![
            cut(0, b"not zstd", Compression::Zstd, sha(&block(0))),
            cut(1, &block(1), Compression::None, sha(&block(2))),
        ];
        let (k, why) = verify_chunks(bad).unwrap_err();
        assert_eq!(k, 0, "{why}");
        assert!(why.contains("zstd"), "{why}");
    }

    fn incr(name: &str, parent: &str) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            snapshot: name.into(),
            parent: Some(parent.into()),
            volume: "v".into(),
            created_unix_ms: 0,
            volume_size_bytes: 10,
            chunk_size_bytes: 10,
            compression: Compression::None,
            chunks: vec![ChunkEntry::UnchangedFromParent { index: 0 }],
        }
    }

    fn stored(index: u64, object: &str, offset: u64, len: u64) -> ChunkEntry {
        ChunkEntry::Stored {
            index,
            digest: ChunkDigest::Blake3("0".repeat(64)),
            object: object.into(),
            offset,
            stored_bytes: len,
            compression: Compression::None,
        }
    }

    #[test]
    fn restore_plan_groups_chunks_by_object_in_bounded_ranges() {
        let mib = 1u64 << 20;
        // Object a holds chunks 0..12 back to back except 5 (a newer snapshot's object b holds
        // it now) and 6..9 (superseded too: a hole of 4 chunks); 3 is zero.
        let mut chunks = Vec::new();
        for i in 0..12u64 {
            chunks.push(match i {
                3 => ChunkEntry::Zero { index: i },
                5..=8 => stored(i, "b", (i - 5) * mib, mib),
                _ => stored(i, "a", i * mib, mib),
            });
        }
        let r = ResolvedChain {
            volume_size_bytes: 12 * mib,
            chunk_size_bytes: mib,
            snapshots: vec!["s1".into(), "s0".into()],
            chunks,
        };
        let work = plan(&r);
        let mut ranges = Vec::new();
        let mut zeros = Vec::new();
        for w in &work {
            match w {
                Work::Zero(k) => zeros.push(*k),
                Work::Range {
                    object,
                    start,
                    end,
                    chunks,
                } => ranges.push((object.as_str(), *start, *end, chunks.clone())),
            }
        }
        assert_eq!(zeros, [3]);
        // a: 0,1,2,4 (the zero chunk's 1 MiB gap is read through), then 9..12 after the hole;
        // b: 5..9 in one range.
        assert_eq!(
            ranges,
            [
                ("a", 0, 5 * mib, vec![0, 1, 2, 4]),
                ("a", 9 * mib, 12 * mib, vec![9, 10, 11]),
                ("b", 0, 4 * mib, vec![5, 6, 7, 8]),
            ]
        );
        // A long object is cut at the range bound.
        let n = 3 * STREAM_RESTORE_RANGE_BYTES_MAX / mib;
        let r = ResolvedChain {
            volume_size_bytes: n * mib,
            chunk_size_bytes: mib,
            snapshots: vec!["s0".into()],
            chunks: (0..n).map(|i| stored(i, "a", i * mib, mib)).collect(),
        };
        let work = plan(&r);
        assert_eq!(work.len(), 3);
        assert!(work
            .iter()
            .all(|w| matches!(w, Work::Range { start, end, .. }
            if end - start == STREAM_RESTORE_RANGE_BYTES_MAX)));
    }

    #[tokio::test]
    async fn chain_loading_errors_name_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let v = DirVault::new(dir.path()).unwrap();
        let loc = Location::new("c", "p");
        v.ensure_container("c").await.unwrap();
        for (n, p) in [("a", "b"), ("b", "a"), ("x", "gone")] {
            let m = incr(n, p);
            v.put("c", &loc.manifest_object(n), m.to_json().into())
                .await
                .unwrap();
        }
        let e = load_chain(&v, &loc, "a").await.unwrap_err().to_string();
        assert!(e.contains("cycle") && e.contains("a"), "{e}");
        let e = load_chain(&v, &loc, "x").await.unwrap_err().to_string();
        assert!(e.contains("parent gone of snapshot x is missing"), "{e}");
        let e = load_chain(&v, &loc, "nope").await.unwrap_err().to_string();
        assert!(e.contains("snapshot nope has no manifest"), "{e}");
        // A manifest stored under another snapshot's name is refused.
        v.put(
            "c",
            &loc.manifest_object("y"),
            incr("z", "a").to_json().into(),
        )
        .await
        .unwrap();
        let e = load_chain(&v, &loc, "y").await.unwrap_err().to_string();
        assert!(e.contains("names snapshot z"), "{e}");
    }
}
