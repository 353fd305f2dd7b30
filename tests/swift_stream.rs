//! Snapshot streams, restores and image transfers against a REAL Swift (the one-node
//! all-in-one of `scripts/swift-aio.sh start`, tempauth test:tester/testing on 127.0.0.1:8080)
//! and against the local directory vault, with the same assertions for both.
//!
//! When Swift does not answer, the Swift tests fail and say how to start it, unless
//! `DRL_SKIP_SWIFT=1` is set (then they print a skip note and pass).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use drl::stream::auth::{Secret, SwiftAuth};
use drl::stream::image::{self, ImageOptions};
use drl::stream::manifest::{ChunkEntry, DigestAlg};
use drl::stream::restore::{load_manifest, restore_to_device, restore_to_file, RestoreOptions};
use drl::stream::store::ObjectStore;
use drl::stream::swift::SwiftClient;
use drl::stream::upload::{stream_device, Location, StreamOptions};
use drl::stream::vault::DirVault;
use drl::stream::{ChangedChunks, StreamError};
use drl::volume::{check_range, AlignedBuf, BlockDevice, VolumeError};
use rand::{Rng, RngCore, SeedableRng};

const AUTH_URL: &str = "http://127.0.0.1:8080/auth/v1.0";
const CHUNK: u64 = 64 * 1024;
const CHUNKS: u64 = 256;
const VOL: u64 = CHUNK * CHUNKS;

/// A volume in memory: the source (and a restore target) of the tests.
struct MemDevice {
    name: String,
    data: RwLock<Vec<u8>>,
}

impl MemDevice {
    fn new(data: Vec<u8>) -> MemDevice {
        MemDevice {
            name: "mem0".into(),
            data: RwLock::new(data),
        }
    }
    fn snapshot(&self) -> Vec<u8> {
        self.data.read().unwrap().clone()
    }
}

impl BlockDevice for MemDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn size_bytes(&self) -> u64 {
        self.data.read().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        false
    }
    async fn read(&self, offset: u64, len: u32) -> Result<AlignedBuf, VolumeError> {
        let d = self.data.read().unwrap();
        check_range(offset, len as u64, d.len() as u64)?;
        Ok(AlignedBuf::from_slice(
            &d[offset as usize..offset as usize + len as usize],
        ))
    }
    async fn write(&self, offset: u64, data: AlignedBuf, _fua: bool) -> Result<(), VolumeError> {
        let mut d = self.data.write().unwrap();
        check_range(offset, data.len() as u64, d.len() as u64)?;
        d[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        Ok(())
    }
    async fn flush(&self) -> Result<(), VolumeError> {
        Ok(())
    }
    async fn trim(&self, offset: u64, len: u32) -> Result<(), VolumeError> {
        self.write_zeroes(offset, len, true, false).await
    }
    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        _t: bool,
        _f: bool,
    ) -> Result<(), VolumeError> {
        let mut d = self.data.write().unwrap();
        check_range(offset, len as u64, d.len() as u64)?;
        d[offset as usize..offset as usize + len as usize].fill(0);
        Ok(())
    }
}

/// A volume image: every 5th chunk zero, every 3rd compressible text, the rest random.
fn volume_data(seed: u64) -> (Vec<u8>, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; VOL as usize];
    let mut zeros = 0;
    for i in 0..CHUNKS {
        let c = &mut v[(i * CHUNK) as usize..((i + 1) * CHUNK) as usize];
        if i % 5 == 0 {
            zeros += 1;
        } else if i % 3 == 0 {
            let line = format!("chunk {i} holds a log line that repeats and compresses well\n");
            for (j, b) in c.iter_mut().enumerate() {
                *b = line.as_bytes()[j % line.len()];
            }
        } else {
            rng.fill_bytes(c);
        }
    }
    (v, zeros)
}

fn unique(name: &str) -> String {
    format!("drl-test-{name}-{:08x}", rand::rng().random::<u32>())
}

fn opts(snapshot: &str) -> StreamOptions {
    let mut o = StreamOptions::new(snapshot);
    o.chunk_bytes = CHUNK;
    // 8 chunks per object at most: the 16 MiB test volume makes a few dozen objects.
    o.object_bytes = 8 * CHUNK;
    o.parallelism = 4;
    o
}

/// The Swift of scripts/swift-aio.sh, or None (skip) when DRL_SKIP_SWIFT=1 and it is down.
async fn swift() -> Option<SwiftClient> {
    let up = reqwest::Client::new()
        .get(AUTH_URL)
        .header("X-Auth-User", "test:tester")
        .header("X-Auth-Key", "testing")
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if !up {
        if std::env::var("DRL_SKIP_SWIFT").as_deref() == Ok("1") {
            eprintln!("SKIP: Swift does not answer on {AUTH_URL} and DRL_SKIP_SWIFT=1");
            return None;
        }
        panic!("Swift does not answer on {AUTH_URL}: run `scripts/swift-aio.sh start` first (or set DRL_SKIP_SWIFT=1 to skip)");
    }
    let auth = SwiftAuth::TempAuth {
        url: AUTH_URL.into(),
        user: "test:tester".into(),
        key: Secret::new("testing"),
    };
    Some(SwiftClient::with_retry(auth, 4, 50).unwrap())
}

fn vault() -> (tempfile::TempDir, DirVault) {
    let dir = tempfile::tempdir().unwrap();
    let v = DirVault::new(dir.path().join("vault")).unwrap();
    (dir, v)
}

async fn restored_file<S: ObjectStore>(store: &S, loc: &Location, snap: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("restored.img");
    restore_to_file(store, loc, snap, &p, &RestoreOptions::default(), |_| {})
        .await
        .unwrap();
    std::fs::read(&p).unwrap()
}

/// Restore `snap` into a scratch file: it must fail; the error.
async fn restore_fails<S: ObjectStore>(store: &S, loc: &Location, snap: &str) -> StreamError {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("restored.img");
    restore_to_file(store, loc, snap, &p, &RestoreOptions::default(), |_| {})
        .await
        .unwrap_err()
}

// ---- scenarios, run against both stores ----

async fn full_stream_and_restore<S: ObjectStore>(store: &S) {
    let loc = Location::new(unique("full"), "site-a/vol0");
    let (data, zeros) = volume_data(1);
    let dev = MemDevice::new(data.clone());
    let last = std::sync::Mutex::new(drl::stream::Progress::default());
    let r = stream_device(&dev, None, store, &loc, &opts("s0"), |p| {
        assert!(p.bytes_done <= p.bytes_total);
        let mut l = last.lock().unwrap();
        assert!(p.bytes_done >= l.bytes_done, "progress went back");
        *l = p;
    })
    .await
    .unwrap();
    assert_eq!(r.chunks_total, CHUNKS);
    assert_eq!(r.chunks_skipped_zero, zeros);
    assert_eq!(r.chunks_uploaded, CHUNKS - zeros);
    assert_eq!(r.bytes_read, VOL);
    assert!(
        r.bytes_uploaded < VOL - zeros * CHUNK,
        "text chunks compress: {r:?}"
    );
    let last = *last.lock().unwrap();
    assert_eq!((last.chunks_done, last.bytes_done), (CHUNKS, VOL));
    // Chunks are packed into objects of at most 8 chunks' size (more when they compress):
    // far fewer objects than chunks.
    assert!(
        r.objects_uploaded > r.bytes_uploaded / (8 * CHUNK)
            && r.objects_uploaded < r.chunks_uploaded / 4,
        "{r:?}"
    );
    let listed = store
        .list(&loc.container, &loc.chunks_prefix("s0"))
        .await
        .unwrap();
    assert_eq!(listed.len() as u64, r.objects_uploaded);
    assert!(listed.iter().all(|o| o.bytes <= 8 * CHUNK));
    let json = serde_json::to_value(&r).unwrap();
    assert!(json.get("chunks_skipped_zero").is_some());

    // A second stream with the same name is refused: finished snapshots are immutable.
    let e = stream_device(&dev, None, store, &loc, &opts("s0"), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, StreamError::SnapshotExists(_)), "{e}");

    // Manifest: zero chunks not stored, compressed text chunks say zstd, random say none;
    // consecutive stored chunks share an object, one after the other.
    let m = load_manifest(store, &loc, "s0").await.unwrap();
    assert_eq!(m.version, drl::stream::manifest::MANIFEST_VERSION);
    // A new chain addresses its chunks by blake3.
    assert!(m.chunks.iter().any(
        |c| matches!(c, ChunkEntry::Stored { digest, .. } if digest.alg() == DigestAlg::Blake3)
    ));
    assert!(m.chunks.iter().all(
        |c| !matches!(c, ChunkEntry::Stored { digest, .. } if digest.alg() != DigestAlg::Blake3)
    ));
    match (&m.chunks[1], &m.chunks[2]) {
        (
            ChunkEntry::Stored {
                object: o1,
                offset: a,
                stored_bytes: len,
                ..
            },
            ChunkEntry::Stored {
                object: o2,
                offset: b,
                ..
            },
        ) => {
            assert_eq!(o1, o2);
            assert_eq!(a + len, *b);
        }
        other => panic!("chunks 1 and 2 should be stored: {other:?}"),
    }
    assert!(matches!(m.chunks[0], ChunkEntry::Zero { .. }));
    assert!(
        matches!(&m.chunks[3], ChunkEntry::Stored { compression, .. } if *compression == drl::stream::Compression::Zstd)
    );
    assert!(
        matches!(&m.chunks[1], ChunkEntry::Stored { compression, .. } if *compression == drl::stream::Compression::None)
    );

    // Restore into a file: equal byte for byte, and sparse where chunks are zero.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("restored.img");
    let rr = restore_to_file(
        store,
        &loc,
        "s0",
        &p,
        &RestoreOptions { parallelism: 3 },
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(rr.chunks_skipped_zero, zeros);
    assert_eq!(rr.bytes_written, VOL - zeros * CHUNK);
    assert!(
        std::fs::read(&p).unwrap() == data,
        "restored file differs from the volume"
    );
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&p).unwrap().blocks() * 512;
    assert!(
        allocated <= VOL - zeros * CHUNK + 64 * 1024,
        "restore is not sparse: {allocated} bytes allocated"
    );

    // Restore into a block device holding garbage: zero chunks are zeroed too.
    let target = MemDevice::new(vec![0xAB; VOL as usize]);
    restore_to_device(
        store,
        &loc,
        "s0",
        &target,
        &RestoreOptions::default(),
        |_| {},
    )
    .await
    .unwrap();
    assert!(
        target.snapshot() == data,
        "restored device differs from the volume"
    );
}

async fn incremental_chain<S: ObjectStore>(store: &S) {
    let loc = Location::new(unique("incr"), "vol1");
    let (data, _) = volume_data(2);
    let dev = MemDevice::new(data.clone());
    let full = stream_device(&dev, None, store, &loc, &opts("s0"), |_| {})
        .await
        .unwrap();

    // Change 1% of the chunks (3 of 256): one was zero, two held data.
    let mut changed = ChangedChunks::new(CHUNK, CHUNKS);
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for i in [10u64, 101, 202] {
        let mut b = vec![0u8; CHUNK as usize];
        rng.fill_bytes(&mut b);
        dev.write(i * CHUNK, AlignedBuf::from_slice(&b), false)
            .await
            .unwrap();
        changed.mark(i);
    }
    let v1 = dev.snapshot();
    let mut o = opts("s1");
    o.parent = Some("s0".into());
    let r = stream_device(&dev, Some(&changed), store, &loc, &o, |_| {})
        .await
        .unwrap();
    eprintln!("incremental: {r:?}");
    assert_eq!(r.chunks_uploaded, 3, "{r:?}");
    assert_eq!(r.chunks_skipped_unchanged, CHUNKS - 3);
    assert_eq!(
        r.bytes_read,
        3 * CHUNK,
        "an incremental reads only the changed chunks"
    );
    assert!(
        r.bytes_uploaded * 20 < full.bytes_uploaded,
        "{r:?} vs full {full:?}"
    );

    // Without change tracking: reads everything, sends only what differs from the chain.
    dev.write_zeroes(101 * CHUNK, CHUNK as u32, true, false)
        .await
        .unwrap(); // now zero
    let mut b = vec![7u8; CHUNK as usize];
    b[0] = 1;
    dev.write(50 * CHUNK, AlignedBuf::from_slice(&b), false)
        .await
        .unwrap();
    let v2 = dev.snapshot();
    let mut o = opts("s2");
    o.parent = Some("s1".into());
    let r2 = stream_device(&dev, None, store, &loc, &o, |_| {})
        .await
        .unwrap();
    assert_eq!(r2.chunks_uploaded, 1, "{r2:?}");
    assert_eq!(r2.bytes_read, VOL);

    assert!(
        restored_file(store, &loc, "s2").await == v2,
        "chain s2->s1->s0 restores wrong"
    );
    assert!(
        restored_file(store, &loc, "s1").await == v1,
        "chain s1->s0 restores wrong"
    );
    assert!(
        restored_file(store, &loc, "s0").await == data,
        "full s0 restores wrong"
    );

    // A missing parent is a clear error.
    store
        .delete(&loc.container, &loc.manifest_object("s0"))
        .await
        .unwrap();
    let e = restore_fails(store, &loc, "s2").await.to_string();
    assert!(e.contains("parent s0 of snapshot s1 is missing"), "{e}");
}

async fn interrupted_stream_resumes<S: ObjectStore>(store: &S) {
    let loc = Location::new(unique("resume"), "vol2");
    let (data, zeros) = volume_data(3);
    let dev = MemDevice::new(data.clone());
    let mut o = opts("s0");
    o.parallelism = 2;
    let done = Arc::new(AtomicU64::new(0));
    let d2 = done.clone();
    let interrupted = tokio::select! {
        r = stream_device(&dev, None, store, &loc, &o, move |p| d2.store(p.chunks_done, Ordering::Relaxed)) => {
            panic!("the stream finished before it could be interrupted: {r:?}")
        }
        _ = async {
            while done.load(Ordering::Relaxed) < CHUNKS / 3 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        } => true,
    };
    assert!(interrupted);
    // Dropped mid-way: no manifest.
    assert!(store
        .head(&loc.container, &loc.manifest_object("s0"))
        .await
        .unwrap()
        .is_none());
    let r = stream_device(&dev, None, store, &loc, &o, |_| {})
        .await
        .unwrap();
    eprintln!("resumed stream: {r:?}");
    assert!(r.chunks_resumed > 0, "{r:?}");
    assert_eq!(
        r.chunks_resumed + r.chunks_uploaded,
        CHUNKS - zeros,
        "{r:?}"
    );
    assert!(
        r.chunks_uploaded < CHUNKS - zeros,
        "finished chunks were sent again: {r:?}"
    );
    assert!(
        restored_file(store, &loc, "s0").await == data,
        "resumed snapshot restores wrong"
    );
}

async fn corrupted_chunk_detected<S: ObjectStore>(store: &S) {
    let loc = Location::new(unique("corrupt"), "");
    let (data, _) = volume_data(4);
    let dev = MemDevice::new(data);
    stream_device(&dev, None, store, &loc, &opts("s0"), |_| {})
        .await
        .unwrap();
    let m = load_manifest(store, &loc, "s0").await.unwrap();
    let (index, object, offset, len) = m
        .chunks
        .iter()
        .find_map(|c| match c {
            ChunkEntry::Stored {
                index,
                object,
                offset,
                stored_bytes,
                ..
            } if *index > 10 && *offset > 0 => {
                Some((*index, object.clone(), *offset, *stored_bytes))
            }
            _ => None,
        })
        .unwrap();
    // Overwrite that chunk's bytes inside its object (same length, other chunks intact).
    let mut body = store
        .get(&loc.container, &object, 64 << 20)
        .await
        .unwrap()
        .to_vec();
    body[offset as usize..(offset + len) as usize].fill(0x5A);
    store
        .put(&loc.container, &object, Bytes::from(body))
        .await
        .unwrap();
    let e = restore_fails(store, &loc, "s0").await;
    match &e {
        StreamError::CorruptChunk {
            index: i,
            object: o,
            ..
        } => {
            assert_eq!(*i, index);
            assert_eq!(*o, object);
        }
        other => panic!("expected a corrupt-chunk error, got {other}"),
    }
    assert!(e.to_string().contains(&format!("chunk {index}")), "{e}");
    // A missing chunk object is named the same way.
    store.delete(&loc.container, &object).await.unwrap();
    let e = restore_fails(store, &loc, "s0").await.to_string();
    assert!(e.contains(&object) && e.contains("missing"), "{e}");
}

/// A snapshot in the layout drl wrote before packed objects (manifest version 1: one object
/// per chunk, no offsets), written here object by object: it still restores.
async fn version_1_snapshot_restores<S: ObjectStore>(store: &S) {
    use sha2::Digest;
    let loc = Location::new(unique("v1"), "old");
    store.ensure_container(&loc.container).await.unwrap();
    let (data, _) = volume_data(7);
    let data = &data[..(8 * CHUNK) as usize];
    let mut chunks = Vec::new();
    for i in 0..8u64 {
        let raw = &data[(i * CHUNK) as usize..((i + 1) * CHUNK) as usize];
        if raw.iter().all(|&b| b == 0) {
            chunks.push(serde_json::json!({"index": i, "state": "zero"}));
            continue;
        }
        let sha = hex::encode(sha2::Sha256::digest(raw));
        let (body, comp) = if i % 3 == 0 {
            (zstd::bulk::compress(raw, 3).unwrap(), "zstd")
        } else {
            (raw.to_vec(), "none")
        };
        let object = format!("old/s0/chunks/{i:08x}-{}", &sha[..16]);
        chunks.push(
            serde_json::json!({"index": i, "state": "stored", "sha256": sha,
            "object": object, "stored_bytes": body.len(), "compression": comp}),
        );
        store
            .put(&loc.container, &object, Bytes::from(body))
            .await
            .unwrap();
    }
    let manifest = serde_json::json!({"format": "drl-snapshot", "version": 1, "snapshot": "s0",
        "parent": null, "volume": "old", "created_unix_ms": 1, "volume_size_bytes": 8 * CHUNK,
        "chunk_size_bytes": CHUNK, "compression": "zstd", "chunks": chunks});
    store
        .put(
            &loc.container,
            &loc.manifest_object("s0"),
            Bytes::from(manifest.to_string()),
        )
        .await
        .unwrap();
    assert!(
        restored_file(store, &loc, "s0").await == data,
        "a version 1 snapshot restores wrong"
    );

    // The chain continues in version 3 (blake3): an incremental without change tracking
    // compares every chunk with the parent's entry in that entry's digest (sha256 here) and
    // stores only the two that changed. (Compared in blake3 it would find no chunk equal and
    // store all six that hold data.)
    let mut now = data.to_vec();
    let mut rng = rand::rngs::StdRng::seed_from_u64(70);
    for i in [1usize, 6] {
        rng.fill_bytes(&mut now[i * CHUNK as usize..(i + 1) * CHUNK as usize]);
    }
    let dev = MemDevice::new(now.clone());
    let mut o = opts("s1");
    o.parent = Some("s0".into());
    let r = stream_device(&dev, None, store, &loc, &o, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (
            r.chunks_uploaded,
            r.chunks_skipped_unchanged,
            r.chunks_skipped_zero
        ),
        (2, 4, 2),
        "{r:?}"
    );
    let m = load_manifest(store, &loc, "s1").await.unwrap();
    assert_eq!(m.version, drl::stream::manifest::MANIFEST_VERSION);
    assert!(m.chunks.iter().all(|c| match c {
        ChunkEntry::Stored { digest, .. } => digest.alg() == DigestAlg::Blake3,
        _ => true,
    }));
    assert!(
        restored_file(store, &loc, "s1").await == now,
        "a version 3 incremental on a version 1 snapshot restores wrong"
    );
}

async fn image_push_pull<S: ObjectStore>(store: &S) {
    let container = unique("images");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("cirros.img");
    let mut img = vec![0u8; 5 * 1024 * 1024 + 12345];
    rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut img);
    std::fs::write(&src, &img).unwrap();
    let o = ImageOptions {
        segment_bytes: 1024 * 1024,
        parallelism: 3,
        ..Default::default()
    };
    let r = image::push(store, &src, &container, "images/cirros.img", &o, |_| {})
        .await
        .unwrap();
    assert_eq!(r.chunks_uploaded, 6);
    assert_eq!(r.bytes_uploaded, img.len() as u64);
    let segs = store
        .get_slo(&container, "images/cirros.img")
        .await
        .unwrap()
        .expect("an SLO");
    assert_eq!(segs.len(), 6);
    // One GET of the manifest object returns the whole image.
    let whole = store
        .get(&container, "images/cirros.img", 64 << 20)
        .await
        .unwrap();
    assert!(
        whole[..] == img[..],
        "GET of the SLO differs from the image"
    );
    let back = dir.path().join("back.img");
    let pr = image::pull(store, &container, "images/cirros.img", &back, |_| {})
        .await
        .unwrap();
    assert_eq!(pr.bytes_downloaded, img.len() as u64);
    assert!(std::fs::read(&back).unwrap() == img);
    // Pushing again resumes every segment.
    let r = image::push(store, &src, &container, "images/cirros.img", &o, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (r.chunks_resumed, r.chunks_uploaded, r.bytes_uploaded),
        (6, 0, 0)
    );
    // A segment overwritten behind the manifest's back: the pull fails, nothing lands at DEST.
    let seg_name = segs[2].path.splitn(3, '/').nth(2).unwrap().to_string();
    store
        .put(
            &format!("{container}_segments"),
            &seg_name,
            Bytes::from(vec![1u8; 1024 * 1024]),
        )
        .await
        .unwrap();
    let bad = dir.path().join("bad.img");
    assert!(
        image::pull(store, &container, "images/cirros.img", &bad, |_| {})
            .await
            .is_err()
    );
    assert!(!bad.exists());
    assert!(!Path::new(&format!("{}.drl-partial", bad.display())).exists());
}

// ---- Swift and the directory vault: the same scenarios ----

/// One test per store for `scenario`: `$swift` against the real Swift, `$vault` against a
/// fresh directory vault.
macro_rules! both_stores {
    ($($scenario:ident => $swift:ident, $vault:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $swift() {
            let Some(s) = swift().await else { return };
            $scenario(&s).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $vault() {
            let (_d, v) = vault();
            $scenario(&v).await;
        }
    )*};
}

both_stores! {
    full_stream_and_restore => swift_full_stream_and_restore, vault_full_stream_and_restore;
    incremental_chain => swift_incremental_chain, vault_incremental_chain;
    interrupted_stream_resumes => swift_interrupted_stream_resumes, vault_interrupted_stream_resumes;
    corrupted_chunk_detected => swift_corrupted_chunk_detected, vault_corrupted_chunk_detected;
    image_push_pull => swift_image_push_pull_slo, vault_image_push_pull_slo;
    version_1_snapshot_restores => swift_version_1_snapshot_restores, vault_version_1_snapshot_restores;
}

#[tokio::test]
async fn swift_bad_credentials_do_not_leak() {
    if swift().await.is_none() {
        return;
    }
    let auth = SwiftAuth::TempAuth {
        url: AUTH_URL.into(),
        user: "test:tester".into(),
        key: Secret::new("wrong-key-Zq9"),
    };
    let c = SwiftClient::with_retry(auth, 2, 10).unwrap();
    let e = c.ensure_container("drl-never").await.unwrap_err();
    assert!(matches!(e, StreamError::Auth { .. }), "{e}");
    let shown = format!("{e} {e:?} {c:?}");
    assert!(!shown.contains("wrong-key-Zq9"), "{shown}");
}

#[tokio::test]
async fn swift_listing_pages_and_prefixes() {
    let Some(s) = swift().await else { return };
    let c = unique("list");
    s.ensure_container(&c).await.unwrap();
    for i in 0..5 {
        s.put(&c, &format!("a/{i}"), Bytes::from(vec![i as u8; i + 1]))
            .await
            .unwrap();
    }
    s.put(&c, "b/x y ü", Bytes::from_static(b"odd name"))
        .await
        .unwrap();
    let l = s.list(&c, "a/").await.unwrap();
    assert_eq!(l.len(), 5);
    assert_eq!(l[4].bytes, 5);
    assert_eq!(l[4].hash, drl::stream::store::md5_hex(&[4u8; 5]));
    assert_eq!(&s.get(&c, "b/x y ü", 100).await.unwrap()[..], b"odd name");
    assert!(matches!(
        s.get(&c, "nope", 100).await,
        Err(StreamError::NotFound { .. })
    ));
    assert!(matches!(
        s.get(&c, "a/4", 2).await,
        Err(StreamError::TooLarge { .. })
    ));
    assert!(s.list(&unique("absent"), "").await.unwrap().is_empty());
}

// ---- Keystone v3 (only when `scripts/swift-aio.sh start --keystone` ran) ----

const KS_URL: &str = "http://127.0.0.1:5000/v3";

/// Keystone credentials read the way the CLI reads them (OS_* variables), or None (skip).
async fn keystone_auth(password: &'static str) -> Option<SwiftAuth> {
    let up = reqwest::Client::new()
        .get(KS_URL)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if !up {
        eprintln!("SKIP: Keystone does not answer on {KS_URL} (start it with `scripts/swift-aio.sh start --keystone`)");
        return None;
    }
    let env = move |k: &str| {
        match k {
            "OS_AUTH_URL" => Some(KS_URL),
            "OS_USERNAME" => Some("admin"),
            "OS_PASSWORD" => Some(password),
            "OS_PROJECT_NAME" => Some("admin"),
            "OS_USER_DOMAIN_NAME" | "OS_PROJECT_DOMAIN_NAME" => Some("Default"),
            "OS_REGION_NAME" => Some("RegionOne"),
            _ => None,
        }
        .map(str::to_string)
    };
    SwiftAuth::from_env_with(&env, &[]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_stream_restore_and_image() {
    let Some(auth) = keystone_auth("drl-admin-pw").await else {
        return;
    };
    assert!(matches!(auth, SwiftAuth::KeystoneV3 { .. }));
    let s = SwiftClient::with_retry(auth, 4, 50).unwrap();
    let url = s.storage_url().await.unwrap();
    assert!(url.starts_with("http://127.0.0.1:8081/v1/AUTH_"), "{url}");
    full_stream_and_restore(&s).await;
    image_push_pull(&s).await;
}

#[tokio::test]
async fn keystone_wrong_password_refused_without_leak() {
    let Some(auth) = keystone_auth("not-the-pw-Xy7").await else {
        return;
    };
    let s = SwiftClient::with_retry(auth, 2, 10).unwrap();
    let e = s.ensure_container("drl-never").await.unwrap_err();
    assert!(matches!(e, StreamError::Auth { .. }), "{e}");
    let shown = format!("{e} {e:?} {s:?}");
    assert!(!shown.contains("not-the-pw-Xy7"), "{shown}");
}

/// A store that records how many PUTs are in flight at once.
struct Gauge<S> {
    inner: S,
    now: AtomicU64,
    max: AtomicU64,
}

impl<S: ObjectStore> ObjectStore for Gauge<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn ensure_container(&self, c: &str) -> Result<(), StreamError> {
        self.inner.ensure_container(c).await
    }
    async fn put_md5(&self, c: &str, n: &str, d: Bytes, m: &str) -> Result<String, StreamError> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        // The first PUTs are held until the bound has been reached once: the stream makes
        // objects at its own pace (slowly in a debug build on a loaded host, where a 1 s hold
        // once let a starved uploader show only 2), so only the bound may limit the overlap,
        // never the timing. The 120 s cap turns a stream that never reaches the bound into
        // a failure of the assertion below instead of a hang.
        let t = std::time::Instant::now();
        while self.max.load(Ordering::SeqCst) < BOUND && t.elapsed().as_secs() < 120 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Every PUT then lasts a little longer, so that one beyond the bound would be seen.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let r = self.inner.put_md5(c, n, d, m).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        r
    }
    async fn get(&self, c: &str, n: &str, m: u64) -> Result<Bytes, StreamError> {
        self.inner.get(c, n, m).await
    }
    async fn get_stream(
        &self,
        c: &str,
        n: &str,
    ) -> Result<(u64, drl::stream::store::ByteStream), StreamError> {
        self.inner.get_stream(c, n).await
    }
    async fn head(
        &self,
        c: &str,
        n: &str,
    ) -> Result<Option<drl::stream::store::ObjectMeta>, StreamError> {
        self.inner.head(c, n).await
    }
    async fn delete(&self, c: &str, n: &str) -> Result<(), StreamError> {
        self.inner.delete(c, n).await
    }
    async fn list(
        &self,
        c: &str,
        p: &str,
    ) -> Result<Vec<drl::stream::store::ObjectMeta>, StreamError> {
        self.inner.list(c, p).await
    }
    async fn put_slo(
        &self,
        c: &str,
        n: &str,
        s: &[drl::stream::store::SloSegment],
    ) -> Result<String, StreamError> {
        self.inner.put_slo(c, n, s).await
    }
    async fn get_slo(
        &self,
        c: &str,
        n: &str,
    ) -> Result<Option<Vec<drl::stream::store::SloSegment>>, StreamError> {
        self.inner.get_slo(c, n).await
    }
}

/// Uploads at once in `uploads_run_in_parallel_within_the_bound`.
const BOUND: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_run_in_parallel_within_the_bound() {
    let (_d, v) = vault();
    let g = Gauge {
        inner: v,
        now: AtomicU64::new(0),
        max: AtomicU64::new(0),
    };
    let (data, _) = volume_data(6);
    let dev = MemDevice::new(data);
    let mut o = opts("s0");
    o.parallelism = BOUND as usize;
    stream_device(&dev, None, &g, &Location::new("c", "p"), &o, |_| {})
        .await
        .unwrap();
    let max = g.max.load(Ordering::SeqCst);
    // The manifest PUT comes alone at the end; chunk PUTs overlap up to the bound.
    assert_eq!(max, BOUND, "max PUTs in flight");
}
