//! Restoring a snapshot chain (full plus incrementals) into a file or a block device.
//!
//! [`load_chain`] follows `parent` links from the named snapshot down to its full snapshot
//! (bounded depth, cycles and missing parents are errors that name the snapshot);
//! [`resolve_chain`] picks, for every chunk, the newest snapshot that holds it. Chunks are then
//! fetched with at most `parallelism` in flight, decompressed into a buffer bounded by the chunk
//! size, and checked against their sha256 before a single byte is written: a corrupt chunk
//! fails the restore with an error naming the chunk and its object.
//!
//! Into a regular file the restore is sparse: the file is truncated and sized first, zero chunks
//! are holes. Into a block device (or a device node) zero chunks are written as zeroes.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use super::manifest::{check_snapshot_name, resolve_chain, ChunkEntry, Manifest, ResolvedChain};
use super::store::ObjectStore;
use super::upload::Location;
use super::{Compression, Progress, Report, StreamError};
use crate::limits::{
    STREAM_CHAIN_DEPTH_MAX, STREAM_MANIFEST_BYTES_MAX, STREAM_PARALLELISM_DEFAULT,
    STREAM_PARALLELISM_MAX,
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

/// Fetch one stored chunk and check it; returns the raw bytes.
async fn fetch_chunk<S: ObjectStore>(
    store: &S,
    container: &str,
    entry: &ChunkEntry,
    raw_len: u64,
) -> Result<(u64, Vec<u8>), StreamError> {
    let ChunkEntry::Stored {
        index,
        sha256,
        object,
        stored_bytes,
        compression,
    } = entry
    else {
        return Err(StreamError::Task(
            "fetch_chunk called for a chunk that is not stored".into(),
        ));
    };
    let corrupt = |reason: String| StreamError::CorruptChunk {
        index: *index,
        object: object.clone(),
        reason,
    };
    let data = match store.get(container, object, *stored_bytes).await {
        Ok(d) => d,
        Err(StreamError::NotFound { .. }) => return Err(corrupt("object is missing".into())),
        Err(StreamError::TooLarge { size, .. }) => {
            return Err(corrupt(format!(
                "object is {size} bytes, manifest says {stored_bytes}"
            )))
        }
        Err(e) => return Err(e),
    };
    if data.len() as u64 != *stored_bytes {
        return Err(corrupt(format!(
            "object is {} bytes, manifest says {stored_bytes}",
            data.len()
        )));
    }
    let (compression, sha) = (*compression, sha256.clone());
    let raw = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let raw = match compression {
            Compression::None => data.to_vec(),
            Compression::Zstd => {
                zstd::bulk::decompress(&data, raw_len as usize).map_err(|e| format!("zstd: {e}"))?
            }
        };
        if raw.len() as u64 != raw_len {
            return Err(format!("holds {} bytes, the chunk is {raw_len}", raw.len()));
        }
        let got = hex::encode(Sha256::digest(&raw));
        if got != sha {
            return Err(format!("sha256 {got}, manifest says {sha}"));
        }
        Ok(raw)
    })
    .await
    .map_err(|e| StreamError::Task(e.to_string()))?
    .map_err(corrupt)?;
    Ok((*stored_bytes, raw))
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
    let chunks = &r.chunks;
    // Indexes, not references, go through the stream: a closure over `&ChunkEntry` makes the
    // future lose `Send` (rustc's higher-ranked closure inference).
    let mut results = futures::stream::iter(0..chunks.len())
        .map(|k| async move {
            let entry = &chunks[k];
            let i = entry.index();
            let off = i * chunk;
            let len = chunk.min(size - off);
            match entry {
                ChunkEntry::Zero { .. } => {
                    let wrote = sink.zero(off, len).await?;
                    Ok::<_, StreamError>((len, 0, if wrote { len } else { 0 }, true))
                }
                _ => {
                    let (fetched, raw) = fetch_chunk(store, container, entry, len).await?;
                    sink.write_at(off, raw).await?;
                    Ok((len, fetched, len, false))
                }
            }
        })
        .buffer_unordered(opts.parallelism);
    while let Some((len, fetched, written, zero)) = results.try_next().await? {
        report.bytes_downloaded += fetched;
        report.bytes_written += written;
        if zero {
            report.chunks_skipped_zero += 1;
        }
        prog.bytes_done += len;
        prog.bytes_transferred = report.bytes_downloaded;
        prog.chunks_done += 1;
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
