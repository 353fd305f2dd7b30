//! VM images to and from Swift as Static Large Objects.
//!
//! `push` cuts a file into segments of `segment_bytes` (raised automatically so that an image
//! needs at most [`SLO_SEGMENTS_MAX`] segments), uploads them with bounded parallelism to
//! `CONTAINER_segments/OBJECT/slo/<size>/<segment_bytes>/<index:08>` (md5-checked), then PUTs
//! the SLO manifest at `CONTAINER/OBJECT`, so that a plain GET of the object returns the whole
//! image. Segments already stored by an interrupted push of the same file (same name, size and
//! md5) are not sent again. An empty file becomes an empty plain object.
//!
//! `pull` GETs the object as one stream into `DEST.drl-partial`, checks the md5 of every
//! segment as it passes (from the SLO manifest) or, for a plain object, the md5 of the whole,
//! checks the length, and renames the file into place.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;

use super::store::{md5_hex, ObjectStore, SloSegment};
use super::{Progress, Report, StreamError};
use crate::limits::*;
use crate::shaping::{Class, NodeShaping, Shaper};

/// How to push an image.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    pub segment_bytes: u64,
    pub parallelism: usize,
    /// The daemon's shaper: segments are granted in its `image` class (the default one only
    /// counts).
    pub shaper: Arc<Shaper>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            segment_bytes: SLO_SEGMENT_BYTES_DEFAULT,
            parallelism: STREAM_PARALLELISM_DEFAULT,
            shaper: NodeShaping::counting().shaper,
        }
    }
}

/// The segment size for an image of `size` bytes: the configured one, raised to keep the
/// segment count within [`SLO_SEGMENTS_MAX`] (rounded up to 1 MiB).
pub fn segment_size_for(size: u64, configured: u64) -> Result<u64, StreamError> {
    if !(SLO_SEGMENT_BYTES_MIN..=SLO_SEGMENT_BYTES_MAX).contains(&configured) {
        return Err(StreamError::Config(format!(
            "segment size {configured} out of {SLO_SEGMENT_BYTES_MIN}..={SLO_SEGMENT_BYTES_MAX}"
        )));
    }
    let needed = size.div_ceil(SLO_SEGMENTS_MAX).div_ceil(1 << 20) << 20;
    let seg = configured.max(needed);
    if seg > SLO_SEGMENT_BYTES_MAX {
        return Err(StreamError::Config(format!(
            "an image of {size} bytes needs segments of {seg} bytes, more than {SLO_SEGMENT_BYTES_MAX}"
        )));
    }
    Ok(seg)
}

/// `swift://CONTAINER/PATH/OBJECT` -> (CONTAINER, PATH/OBJECT): the object an image URL names.
pub fn object_of(url: &super::store::StoreUrl) -> Result<(String, String), StreamError> {
    let (loc, object) = url.split_last()?;
    let object = if loc.prefix.is_empty() {
        object
    } else {
        format!("{}/{object}", loc.prefix)
    };
    Ok((loc.container, object))
}

/// Push the file at `path` to `container/object` as an SLO.
pub async fn push<S: ObjectStore>(
    store: &S,
    path: &Path,
    container: &str,
    object: &str,
    opts: &ImageOptions,
    progress: impl Fn(Progress),
) -> Result<Report, StreamError> {
    let t0 = Instant::now();
    if !(1..=STREAM_PARALLELISM_MAX).contains(&opts.parallelism) {
        return Err(StreamError::Config(format!(
            "parallelism {} out of 1..={STREAM_PARALLELISM_MAX}",
            opts.parallelism
        )));
    }
    let shown = path.display().to_string();
    let file =
        Arc::new(std::fs::File::open(path).map_err(|e| StreamError::io(&shown, "open image", e))?);
    let size = file
        .metadata()
        .map_err(|e| StreamError::io(&shown, "stat image", e))?
        .len();
    store.ensure_container(container).await?;
    let mut report = Report::default();
    if size == 0 {
        store.put(container, object, Bytes::new()).await?;
        report.elapsed_ms = t0.elapsed().as_millis() as u64;
        return Ok(report);
    }
    let seg = segment_size_for(size, opts.segment_bytes)?;
    let seg_container = format!("{container}_segments");
    store.ensure_container(&seg_container).await?;
    let seg_prefix = format!("{object}/slo/{size}/{seg}/");
    let existing: HashMap<String, (u64, String)> = store
        .list(&seg_container, &seg_prefix)
        .await?
        .into_iter()
        .map(|o| (o.name, (o.bytes, o.hash)))
        .collect();
    let n = size.div_ceil(seg);
    report.chunks_total = n;
    let mut segments: Vec<Option<SloSegment>> = vec![None; n as usize];
    let mut prog = Progress {
        bytes_total: size,
        chunks_total: n,
        ..Progress::default()
    };
    let (seg_container, seg_prefix, existing, shown) =
        (&seg_container, &seg_prefix, &existing, &shown);
    let mut results = futures::stream::iter(0..n)
        .map(|i| {
            let file = file.clone();
            async move {
                let off = i * seg;
                let len = seg.min(size - off);
                let path = shown.clone();
                let (data, md5) = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, off)
                        .map_err(|e| StreamError::io(path, "read image", e))?;
                    let md5 = md5_hex(&buf);
                    Ok::<_, StreamError>((Bytes::from(buf), md5))
                })
                .await
                .map_err(|e| StreamError::Task(e.to_string()))??;
                let name = format!("{seg_prefix}{i:08}");
                let resumed = existing
                    .get(&name)
                    .is_some_and(|(b, h)| *b == len && *h == md5);
                if !resumed {
                    // The WAN shaper's image class: the segment is granted before the PUT.
                    opts.shaper.acquire(Class::Image, len).await;
                    store.put_md5(seg_container, &name, data, &md5).await?;
                }
                let s = SloSegment {
                    path: format!("/{seg_container}/{name}"),
                    etag: md5,
                    size_bytes: len,
                };
                Ok::<_, StreamError>((i, s, resumed))
            }
        })
        .buffer_unordered(opts.parallelism);
    while let Some((i, s, resumed)) = results.try_next().await? {
        report.bytes_read += s.size_bytes;
        if resumed {
            report.chunks_resumed += 1;
        } else {
            report.bytes_uploaded += s.size_bytes;
            report.chunks_uploaded += 1;
            report.objects_uploaded += 1;
        }
        prog.bytes_done += s.size_bytes;
        prog.bytes_transferred = report.bytes_uploaded;
        prog.chunks_done += 1;
        prog.elapsed_ms = t0.elapsed().as_millis() as u64;
        segments[i as usize] = Some(s);
        progress(prog);
    }
    drop(results);
    let segments: Vec<SloSegment> = segments.into_iter().flatten().collect();
    if segments.len() as u64 != n {
        return Err(StreamError::Task(format!(
            "{} of {n} segments finished",
            segments.len()
        )));
    }
    store.put_slo(container, object, &segments).await?;
    report.elapsed_ms = t0.elapsed().as_millis() as u64;
    tracing::info!(image = %shown, %container, %object, ?report, "image pushed");
    Ok(report)
}

/// Pull `container/object` (an SLO or a plain object) into the file `dest`.
pub async fn pull<S: ObjectStore>(
    store: &S,
    container: &str,
    object: &str,
    dest: &Path,
    progress: impl Fn(Progress),
) -> Result<Report, StreamError> {
    let t0 = Instant::now();
    let name = format!("{container}/{object}");
    let bad = |reason: String| StreamError::CorruptImage {
        object: name.clone(),
        reason,
    };
    let head = store
        .head(container, object)
        .await?
        .ok_or_else(|| StreamError::NotFound {
            object: name.clone(),
        })?;
    let segments = store.get_slo(container, object).await?;
    // What each piece of the stream must hash to: the segments, or the whole plain object.
    let expect: Vec<(u64, String)> = match &segments {
        Some(s) => s.iter().map(|s| (s.size_bytes, s.etag.clone())).collect(),
        None => vec![(head.bytes, head.hash.clone())],
    };
    let total: u64 = expect.iter().map(|e| e.0).sum();
    let (len, mut body) = store.get_stream(container, object).await?;
    if len != total {
        return Err(bad(format!(
            "the store announces {len} bytes, the manifest adds up to {total}"
        )));
    }
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".drl-partial");
    let partial = PathBuf::from(partial);
    let shown = partial.display().to_string();
    let mut f = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| StreamError::io(&shown, "create", e))?;
    let mut report = Report {
        chunks_total: expect.len() as u64,
        ..Report::default()
    };
    let mut prog = Progress {
        bytes_total: total,
        chunks_total: expect.len() as u64,
        ..Progress::default()
    };
    let (mut seg, mut in_seg, mut h) = (0usize, 0u64, Md5::new());
    let result: Result<(), StreamError> = async {
        while let Some(piece) = body.next().await {
            let piece = piece?;
            let mut rest = &piece[..];
            while !rest.is_empty() {
                let Some((seg_len, seg_md5)) = expect.get(seg) else {
                    return Err(bad(format!("more than the {total} bytes announced")));
                };
                let take = ((seg_len - in_seg) as usize).min(rest.len());
                h.update(&rest[..take]);
                in_seg += take as u64;
                rest = &rest[take..];
                if in_seg == *seg_len {
                    let got = hex::encode(std::mem::take(&mut h).finalize());
                    if got != *seg_md5 {
                        return Err(bad(format!(
                            "segment {seg} has md5 {got}, expected {seg_md5}"
                        )));
                    }
                    seg += 1;
                    in_seg = 0;
                    prog.chunks_done += 1;
                }
            }
            f.write_all(&piece)
                .await
                .map_err(|e| StreamError::io(&shown, "write", e))?;
            report.bytes_downloaded += piece.len() as u64;
            prog.bytes_done = report.bytes_downloaded;
            prog.bytes_transferred = report.bytes_downloaded;
            prog.elapsed_ms = t0.elapsed().as_millis() as u64;
            progress(prog);
        }
        // Zero-length segments complete without bytes.
        while expect.get(seg).is_some_and(|e| e.0 == 0) {
            seg += 1;
        }
        if report.bytes_downloaded != total || seg != expect.len() {
            return Err(StreamError::Truncated {
                object: name.clone(),
                expected: total,
                got: report.bytes_downloaded,
            });
        }
        f.sync_all()
            .await
            .map_err(|e| StreamError::io(&shown, "fsync", e))?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    drop(f);
    tokio::fs::rename(&partial, dest)
        .await
        .map_err(|e| StreamError::io(dest.display(), "rename into place", e))?;
    report.bytes_written = report.bytes_downloaded;
    report.elapsed_ms = t0.elapsed().as_millis() as u64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sizes() {
        assert_eq!(
            segment_size_for(10 << 20, SLO_SEGMENT_BYTES_DEFAULT).unwrap(),
            SLO_SEGMENT_BYTES_DEFAULT
        );
        // 200 GiB with 64 MiB segments would be 3200 segments: raised to 205 MiB.
        let s = segment_size_for(200 << 30, SLO_SEGMENT_BYTES_DEFAULT).unwrap();
        assert!((200u64 << 30).div_ceil(s) <= SLO_SEGMENTS_MAX);
        assert_eq!(s % (1 << 20), 0);
        assert!(segment_size_for(2 << 40, SLO_SEGMENT_BYTES_DEFAULT).is_err());
        assert!(segment_size_for(1, 1).is_err());
    }
}
