//! Streaming a block device to an object store as a chunked snapshot.
//!
//! [`stream_device`] cuts the device into chunks of `chunk_bytes` and, with at most
//! `parallelism` chunks in flight (so at most that many chunk buffers in memory, plus their
//! compressed copies):
//! 1. skips chunks the change tracking does not mark (incremental with [`ChangedChunks`]):
//!    they are not even read;
//! 2. reads the chunk; an all-zero chunk is recorded as `zero` and not stored;
//! 3. hashes it (sha256); in an incremental, a chunk whose hash equals the parent chain's is
//!    recorded as `unchanged-from-parent` (a block rewritten with the same data costs nothing);
//! 4. compresses it with zstd when that saves at least 1/16;
//! 5. names it `P/SNAP/chunks/<index:08x>-<sha256[..16]>`; when an earlier, interrupted run of
//!    the same stream already stored that name with the same md5 it is not sent again
//!    (`chunks_resumed`), otherwise it is PUT with an ETag check (retried by the client).
//!
//! The manifest is written last, after every chunk is stored; then chunk objects of the
//! snapshot that the manifest does not reference (left by an interrupted run over data that
//! has changed since) are deleted.
//!
//! CPU work (zero test, sha256, zstd) runs on tokio's blocking pool.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use super::manifest::{
    check_snapshot_name, resolve_chain, ChunkEntry, Manifest, MANIFEST_FORMAT, MANIFEST_VERSION,
};
use super::restore::load_chain;
use super::store::{md5_hex, ObjectStore};
use super::{ChangedChunks, Compression, Progress, Report, StreamError};
use crate::limits::*;
use crate::volume::BlockDevice;

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

    fn join(&self, rest: &str) -> String {
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

    pub fn chunk_object(&self, snapshot: &str, index: u64, sha256_hex: &str) -> String {
        format!(
            "{}{index:08x}-{}",
            self.chunks_prefix(snapshot),
            &sha256_hex[..16]
        )
    }
}

/// How to stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Name of the snapshot in the store (one path segment).
    pub snapshot: String,
    pub chunk_bytes: u64,
    pub parallelism: usize,
    pub compression: Compression,
    /// Parent snapshot (same location) for an incremental stream.
    pub parent: Option<String>,
}

impl StreamOptions {
    pub fn new(snapshot: impl Into<String>) -> StreamOptions {
        StreamOptions {
            snapshot: snapshot.into(),
            chunk_bytes: STREAM_CHUNK_BYTES_DEFAULT,
            parallelism: STREAM_PARALLELISM_DEFAULT,
            compression: Compression::Zstd,
            parent: None,
        }
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

/// What became of one chunk.
enum Outcome {
    Unchanged,
    SameAsParent { read: u64 },
    Zero { read: u64 },
    Resumed { read: u64 },
    Uploaded { read: u64, sent: u64 },
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

pub(crate) fn is_zero(b: &[u8]) -> bool {
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

/// Stream `dev` as snapshot `opts.snapshot` to `store` at `loc`. See the module doc.
///
/// `changed`: for an incremental (`opts.parent` set), the chunks the volume's change tracking
/// marks since the parent; only those are read. Without it an incremental reads everything and
/// stores only chunks whose sha256 differs from the parent chain's.
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
    // The parent chain's hash of every chunk (None: zero), to compare against when there is no
    // change tracking; with change tracking only its shape is checked.
    let parent_sha: Option<Vec<Option<String>>> = match &opts.parent {
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
                        ChunkEntry::Stored { sha256, .. } => Some(sha256),
                        _ => None,
                    })
                    .collect(),
            )
        }
    };
    // Chunks an interrupted run already stored: name -> (size, md5).
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
            "resuming: chunk objects of an earlier run found"
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
    let (existing, parent_sha) = (&existing, &parent_sha);
    let mut results = futures::stream::iter(0..n)
        .map(|i| async move {
            let off = i * chunk;
            let len = chunk.min(size - off);
            if changed.is_some_and(|c| !c.is_changed(i)) {
                return Ok((
                    i,
                    len,
                    ChunkEntry::UnchangedFromParent { index: i },
                    Outcome::Unchanged,
                ));
            }
            let buf = dev.read(off, len as u32).await?;
            let policy = opts.compression;
            let (sha, payload, comp) = tokio::task::spawn_blocking(move || {
                if is_zero(&buf) {
                    return Ok::<_, StreamError>((None, Bytes::new(), Compression::None));
                }
                let sha = hex::encode(Sha256::digest(&buf[..]));
                if policy == Compression::Zstd && worth_compressing(&buf) {
                    let z = zstd::bulk::compress(&buf, STREAM_ZSTD_LEVEL).map_err(|e| {
                        StreamError::Task(format!("zstd compress of chunk {i}: {e}"))
                    })?;
                    if (z.len() as u64) * 16
                        <= buf.len() as u64 * STREAM_COMPRESS_PAYS_SIXTEENTHS_MAX
                    {
                        return Ok((Some(sha), Bytes::from(z), Compression::Zstd));
                    }
                }
                Ok((Some(sha), Bytes::from_owner(buf), Compression::None))
            })
            .await
            .map_err(|e| StreamError::Task(e.to_string()))??;
            let Some(sha) = sha else {
                return Ok((
                    i,
                    len,
                    ChunkEntry::Zero { index: i },
                    Outcome::Zero { read: len },
                ));
            };
            if parent_sha
                .as_ref()
                .is_some_and(|p| p[i as usize].as_deref() == Some(sha.as_str()))
            {
                return Ok((
                    i,
                    len,
                    ChunkEntry::UnchangedFromParent { index: i },
                    Outcome::SameAsParent { read: len },
                ));
            }
            let object = loc.chunk_object(snap, i, &sha);
            let stored_bytes = payload.len() as u64;
            let entry = ChunkEntry::Stored {
                index: i,
                sha256: sha,
                object: object.clone(),
                stored_bytes,
                compression: comp,
            };
            if existing
                .get(&object)
                .is_some_and(|(b, h)| *b == stored_bytes && *h == md5_hex(&payload))
            {
                return Ok((i, len, entry, Outcome::Resumed { read: len }));
            }
            // The WAN shaper's snapshot class: the whole body is granted before the PUT.
            crate::shaping::node()
                .acquire(crate::shaping::Class::Snapshot, stored_bytes)
                .await;
            store.put(&loc.container, &object, payload).await?;
            Ok::<_, StreamError>((
                i,
                len,
                entry,
                Outcome::Uploaded {
                    read: len,
                    sent: stored_bytes,
                },
            ))
        })
        .buffer_unordered(opts.parallelism);
    while let Some((i, len, entry, outcome)) = results.try_next().await? {
        match outcome {
            Outcome::Unchanged => report.chunks_skipped_unchanged += 1,
            Outcome::SameAsParent { read } => {
                report.bytes_read += read;
                report.chunks_skipped_unchanged += 1;
            }
            Outcome::Zero { read } => {
                report.bytes_read += read;
                report.chunks_skipped_zero += 1;
            }
            Outcome::Resumed { read } => {
                report.bytes_read += read;
                report.chunks_resumed += 1;
            }
            Outcome::Uploaded { read, sent } => {
                report.bytes_read += read;
                report.bytes_uploaded += sent;
                report.chunks_uploaded += 1;
            }
        }
        entries[i as usize] = Some(entry);
        prog.bytes_done += len;
        prog.bytes_transferred = report.bytes_uploaded;
        prog.chunks_done += 1;
        prog.elapsed_ms = t0.elapsed().as_millis() as u64;
        progress(prog);
    }
    drop(results);
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
            tracing::warn!(object = %name, error = %e, "could not delete an unreferenced chunk object");
        }
    }
    report.elapsed_ms = t0.elapsed().as_millis() as u64;
    tracing::info!(volume = dev.name(), snapshot = snap, store = %store.describe(), ?report, "stream finished");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

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
