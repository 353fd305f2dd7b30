//! Engine tests against real files (ext4 tempdir, tmpfs /dev/shm, pipes, socket pairs).

use super::*;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

fn cfg(name: &str, queue_depth: u32) -> EngineConfig {
    EngineConfig {
        queue_depth,
        name: name.to_string(),
    }
}

fn file_in(dir: &std::path::Path, size: u64) -> (std::path::PathBuf, File) {
    let path = dir.join("disk.img");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(size).unwrap();
    (path, f)
}

fn pattern(len: usize, seed: u8) -> AlignedBuf {
    let v: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    AlignedBuf::from_slice(&v)
}

#[tokio::test]
async fn write_then_read_back_and_count_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, f) = file_in(dir.path(), 1 << 20);
    let e = Engine::new(f, cfg("rw", 8)).unwrap();
    let (r, _) = e.write_all_at(pattern(8192, 7), 4096, 0).await;
    r.unwrap();
    let (r, back) = e.read_exact_at(AlignedBuf::zeroed(8192), 4096).await;
    r.unwrap();
    assert_eq!(&back[..], &pattern(8192, 7)[..]);
    // The data really is in the file, at the right place.
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(&on_disk[4096..4096 + 8192], &pattern(8192, 7)[..]);
    assert!(on_disk[..4096].iter().all(|&b| b == 0));
    let s = e.stats();
    assert_eq!((s.ops_submitted, s.ops_completed, s.in_flight), (2, 2, 0));
    assert_eq!((s.bytes_read, s.bytes_written), (8192, 8192));
    assert!(s.batches >= 1 && s.batches <= 2, "{s:?}");
}

#[tokio::test]
async fn read_past_end_of_file_is_unexpected_eof_after_short_read() {
    let dir = tempfile::tempdir().unwrap();
    let (_, f) = file_in(dir.path(), 6000);
    let e = Engine::new(f, cfg("eof", 4)).unwrap();
    let (r, buf) = e.read_exact_at(AlignedBuf::zeroed(8192), 0).await;
    let err = r.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(buf.len(), 8192, "buffer handed back");
    // One short read of 6000 bytes, then a read of 0 bytes: the loop ran twice.
    assert_eq!(e.stats().ops_completed, 2);
    assert_eq!(e.stats().bytes_read, 6000);
    // Reading the 6000 bytes that exist works.
    let (r, _) = e.read_exact_at(AlignedBuf::zeroed(6000), 0).await;
    r.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_ops_are_all_correct() {
    let dir = tempfile::tempdir().unwrap();
    let (_, f) = file_in(dir.path(), 4 << 20);
    let e = Engine::new(f, cfg("batch", 32)).unwrap();
    let n = 512usize;
    let mut tasks = Vec::new();
    for i in 0..n {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let (r, _) = e
                .write_all_at(pattern(4096, i as u8), (i * 4096) as u64, 0)
                .await;
            r
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    e.fdatasync().await.unwrap();
    for i in (0..n).step_by(37) {
        let (r, b) = e
            .read_exact_at(AlignedBuf::zeroed(4096), (i * 4096) as u64)
            .await;
        r.unwrap();
        assert_eq!(&b[..], &pattern(4096, i as u8)[..], "block {i}");
    }
    let s = e.stats();
    assert_eq!(s.bytes_written, (n * 4096) as u64);
    assert_eq!(s.ops_submitted, s.ops_completed, "{s:?}");
    // Whether two submitters overlap here (and so share an io_uring_enter) is up to the
    // scheduler: on a loaded 2-core host they sometimes never do (2 runs in 25), so batching is
    // asserted where it is deterministic, in the plug test below.
    assert!(s.batches <= s.ops_submitted, "{s:?}");
}

/// Writes started under a plug wait in the SQ and go to the kernel together, in one
/// `io_uring_enter`, when the plug is dropped.
#[tokio::test]
async fn a_plug_submits_the_writes_started_under_it_in_one_enter() {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Context;

    let dir = tempfile::tempdir().unwrap();
    let (path, f) = file_in(dir.path(), 1 << 20);
    let e = Engine::new(f, cfg("plug", 16)).unwrap();
    // Start the reaper and count from here.
    e.write_all_at(pattern(4096, 0), 0, 0).await.0.unwrap();
    let before = e.stats();
    let mut writes: Vec<Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>>> = (1..9)
        .map(|i| {
            let e = &e;
            Box::pin(async move {
                e.write_all_at(pattern(4096, i), u64::from(i) * 4096, 0)
                    .await
                    .0
            }) as Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>>
        })
        .collect();
    {
        let plug = e.plug();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for w in &mut writes {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        let held = e.stats();
        assert_eq!(held.ops_submitted - before.ops_submitted, 8, "{held:?}");
        assert_eq!(
            held.batches, before.batches,
            "entered while plugged: {held:?}"
        );
        drop(plug);
    }
    for w in writes {
        w.await.unwrap();
    }
    let after = e.stats();
    assert_eq!(after.batches, before.batches + 1, "{after:?}");
    // A plug that started nothing costs no syscall.
    drop(e.plug());
    assert_eq!(e.stats().batches, after.batches);
    let on_disk = std::fs::read(&path).unwrap();
    for i in 1..9u8 {
        let at = usize::from(i) * 4096;
        assert_eq!(&on_disk[at..at + 4096], &pattern(4096, i)[..], "block {i}");
    }
}

#[tokio::test]
async fn dsync_write_and_fdatasync_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let (path, f) = file_in(dir.path(), 1 << 20);
    let e = Engine::new(f, cfg("sync", 2)).unwrap();
    let (r, _) = e.write_all_at(pattern(4096, 1), 0, flags::DSYNC).await;
    r.unwrap();
    e.fdatasync().await.unwrap();
    assert_eq!(
        &std::fs::read(&path).unwrap()[..4096],
        &pattern(4096, 1)[..]
    );
}

#[tokio::test]
async fn discard_punches_a_hole_that_reads_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, f) = file_in(dir.path(), 4 << 20);
    let e = Engine::new(f, cfg("discard", 4)).unwrap();
    let (r, _) = e.write_all_at(pattern(1 << 20, 3), 0, 0).await;
    r.unwrap();
    e.fdatasync().await.unwrap();
    let blocks_before = std::fs::metadata(&path).unwrap().blocks();
    e.discard(65536, 512 << 10).await.unwrap();
    let md = std::fs::metadata(&path).unwrap();
    assert_eq!(md.len(), 4 << 20, "KEEP_SIZE");
    assert!(
        md.blocks() + 512 * 1024 / 512 <= blocks_before,
        "{} vs {blocks_before}",
        md.blocks()
    );
    let (r, b) = e.read_exact_at(AlignedBuf::zeroed(1 << 20), 0).await;
    r.unwrap();
    let want = pattern(1 << 20, 3);
    assert_eq!(&b[..65536], &want[..65536]);
    assert!(b[65536..65536 + (512 << 10)].iter().all(|&x| x == 0));
    assert_eq!(&b[65536 + (512 << 10)..], &want[65536 + (512 << 10)..]);
}

#[tokio::test]
async fn zero_range_on_ext4_keeps_size_and_reads_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, f) = file_in(dir.path(), 1 << 20);
    let e = Engine::new(f, cfg("zero", 4)).unwrap();
    for may_deallocate in [false, true] {
        let (r, _) = e.write_all_at(pattern(65536, 9), 0, 0).await;
        r.unwrap();
        e.zero_range(4096, 8192, may_deallocate).await.unwrap();
        let (r, b) = e.read_exact_at(AlignedBuf::zeroed(65536), 0).await;
        r.unwrap();
        assert_eq!(&b[..4096], &pattern(65536, 9)[..4096]);
        assert!(
            b[4096..12288].iter().all(|&x| x == 0),
            "may_deallocate={may_deallocate}"
        );
        assert_eq!(&b[12288..], &pattern(65536, 9)[12288..]);
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
    // fallocate did the work: no zero buffers were written.
    assert_eq!(e.stats().bytes_written, 2 * 65536);
}

#[tokio::test]
async fn zero_range_on_tmpfs_falls_back_to_writing_zeroes() {
    // tmpfs implements PUNCH_HOLE but not ZERO_RANGE (EOPNOTSUPP).
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(e) => return eprintln!("skipped: no /dev/shm ({e})"),
    };
    let (_, f) = file_in(dir.path(), 4 << 20);
    let e = Engine::new(f, cfg("shm", 4)).unwrap();
    let (r, _) = e.write_all_at(pattern(3 << 20, 5), 0, 0).await;
    r.unwrap();
    let len = (2 << 20) + 4096; // more than one fallback chunk
    e.zero_range(4096, len, false).await.unwrap();
    assert_eq!(
        e.stats().bytes_written,
        (3 << 20) + len,
        "zeroes were written"
    );
    let (r, b) = e.read_exact_at(AlignedBuf::zeroed(3 << 20), 0).await;
    r.unwrap();
    assert!(b[4096..4096 + len as usize].iter().all(|&x| x == 0));
    assert_eq!(&b[..4096], &pattern(3 << 20, 5)[..4096]);
    // With may_deallocate, tmpfs punches a hole instead: nothing more is written.
    let written = e.stats().bytes_written;
    e.write_all_at(pattern(8192, 1), 0, 0).await.0.unwrap();
    e.zero_range(0, 8192, true).await.unwrap();
    assert_eq!(e.stats().bytes_written, written + 8192);
    let (r, b) = e.read_exact_at(AlignedBuf::zeroed(8192), 0).await;
    r.unwrap();
    assert!(b.iter().all(|&x| x == 0));
}

#[tokio::test]
async fn shutdown_refuses_new_ops_and_hands_the_buffer_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_, f) = file_in(dir.path(), 1 << 20);
    let e = Engine::new(f, cfg("shut", 4)).unwrap();
    e.write_all_at(pattern(4096, 1), 0, 0).await.0.unwrap();
    e.shutdown();
    e.shutdown(); // idempotent
    let (r, b) = e.read_exact_at(AlignedBuf::zeroed(4096), 0).await;
    let err = r.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Other);
    assert_eq!(err.to_string(), "engine shut down");
    assert_eq!(b.len(), 4096);
    assert_eq!(
        e.fdatasync().await.unwrap_err().to_string(),
        "engine shut down"
    );
    assert_eq!(e.stats().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_busy_finishes_accepted_ops() {
    let dir = tempfile::tempdir().unwrap();
    let (_, f) = file_in(dir.path(), 8 << 20);
    let e = Engine::new(f, cfg("busy", 4)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            e.write_all_at(pattern(4096, 2), i * 4096, 0).await.0
        }));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    let e2 = e.clone();
    tokio::task::spawn_blocking(move || e2.shutdown())
        .await
        .unwrap();
    let (mut ok, mut refused) = (0u64, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(err) => {
                assert_eq!(err.to_string(), "engine shut down");
                refused += 1;
            }
        }
    }
    assert_eq!(ok + refused, 200);
    let s = e.stats();
    assert_eq!(s.ops_completed, ok, "every accepted op completed: {s:?}");
    assert_eq!(s.in_flight, 0);
}

/// How many descriptors of this process are open on `path`.
fn fds_open_on(path: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|d| std::fs::read_link(d.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

#[tokio::test]
async fn dropping_the_last_clone_closes_the_engine() {
    // There is no ring thread any more: what must end with the last clone is the ring and the
    // file (and the reaper task, which holds neither).
    let dir = tempfile::tempdir().unwrap();
    let (path, f) = file_in(dir.path(), 1 << 20);
    let e = Engine::new(f, cfg("dropme", 2)).unwrap();
    let e2 = e.clone();
    assert_eq!(fds_open_on(&path), 1);
    drop(e);
    e2.write_all_at(pattern(4096, 1), 0, 0).await.0.unwrap();
    assert_eq!(fds_open_on(&path), 1, "one clone left");
    drop(e2);
    assert_eq!(fds_open_on(&path), 0, "file closed with the last clone");
}

#[tokio::test]
async fn abandoned_submitters_do_not_break_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (_, f) = file_in(dir.path(), 1 << 20);
    let e = Engine::new(f, cfg("abandon", 8)).unwrap();
    for i in 0..100u64 {
        // The future is polled once (request sent), then dropped before the completion.
        let fut = e.read_exact_at(AlignedBuf::zeroed(4096), (i % 64) * 4096);
        let _ = tokio::time::timeout(Duration::from_nanos(1), fut).await;
    }
    let (r, _) = e.read_exact_at(AlignedBuf::zeroed(4096), 0).await;
    r.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.stats().in_flight != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = e.stats();
    assert_eq!(s.in_flight, 0);
    assert_eq!(s.ops_submitted, s.ops_completed);
}

/// Poll `done` every 5 ms until it holds (at most 30 s: a starved host starts tasks late).
async fn until(done: impl Fn() -> bool) {
    let t = Instant::now();
    while !done() && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_applies_backpressure() {
    // Reads of an empty pipe stay in the kernel until data arrives.
    let (rd, mut wr) = pipe();
    let e = Engine::new(rd, cfg("pipe", 1)).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            e.read_exact_at(AlignedBuf::zeroed(8), 0).await
        }));
    }
    // Until one read is in the kernel (a loaded host may start the tasks late), then a
    // moment more in which any submitter over the depth would show.
    until(|| e.stats().ops_submitted >= 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = e.stats();
    assert_eq!(
        (s.ops_submitted, s.in_flight),
        (1, 1),
        "queue depth respected: {s:?}"
    );
    assert_eq!(
        e.inner.core.permits.available_permits(),
        0,
        "queue full: the other submitters wait"
    );
    wr.write_all(&[7u8; 32]).unwrap();
    for t in tasks {
        let (r, b) = t.await.unwrap();
        r.unwrap();
        assert_eq!(&b[..], &[7u8; 8]);
    }
    assert_eq!(e.stats().ops_completed, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_waiting_on_completions_still_takes_new_requests_at_once() {
    // One end of a socket pair: a read waits in the kernel; a write on the same fd must not
    // wait for it (the eventfd read wakes the ring).
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let e = Engine::new(File::from(std::os::fd::OwnedFd::from(a)), cfg("sock", 4)).unwrap();
    let e2 = e.clone();
    let pending = tokio::spawn(async move { e2.read_exact_at(AlignedBuf::zeroed(4), 0).await });
    until(|| e.stats().in_flight >= 1).await;
    assert_eq!(e.stats().in_flight, 1);
    for _ in 0..20 {
        let t = Instant::now();
        e.write_all_at(AlignedBuf::from_slice(b"ping"), 0, 0)
            .await
            .0
            .unwrap();
        // A write stuck behind the read would wait forever; 5 s only bounds the test (a
        // starved host can delay a write by far more than the microseconds it takes).
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "write waited {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut got = [0u8; 80];
    let mut b = b;
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got[..4], b"ping");
    b.write_all(b"pong").unwrap();
    let (r, buf) = pending.await.unwrap();
    r.unwrap();
    assert_eq!(&buf[..], b"pong");
}

#[test]
fn queue_depth_is_validated() {
    let f = tempfile::tempfile().unwrap();
    let err = Engine::new(f, cfg("bad", 0)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("queue_depth 0"), "{err}");
    let f = tempfile::tempfile().unwrap();
    assert!(Engine::new(f, cfg("bad", QUEUE_DEPTH_MAX + 1)).is_err());
}

#[test]
fn engine_handles_are_send_and_sync() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Engine>();
}

/// Poll every future of `set` inside the engine's plug (as the Secondary's applier polls its
/// writes) until all are done; their outputs in order.
async fn plugged_all<T>(
    e: &Engine,
    mut set: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + '_>>>,
) -> Vec<T> {
    let mut out: Vec<Option<T>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let _plug = e.plug();
        let mut all = true;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("all done")).collect()
}

/// Plugged passes from several threads, with operations abandoned in the kernel, on a queue
/// small enough that slots are reused all the time (the pattern of the NBD plug that crashed
/// with "completion for an idle slot", issue 17). Each task owns blocks: "kept" blocks are
/// written and read back in plugged passes and must always read what the last completed write
/// wrote; "scratch" blocks get writes and reads whose futures are dropped after a random
/// moment (the kernel may still be writing into a read's buffer: the slot keeps it). No
/// completion may arrive for a slot that is not in the kernel. DRL_URING_STRESS_ITERS sets the
/// passes per task (default 500; without the fix of `Plug::drop`, 100 passes crashed or hung 1 run in 4).
#[test]
fn plugged_passes_on_many_threads_with_abandoned_operations() {
    use std::os::unix::fs::OpenOptionsExt;
    let iters: usize = std::env::var("DRL_URING_STRESS_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    const TASKS: usize = 12;
    const KEPT: usize = 6;
    const SCRATCH: usize = 4;
    const BS: usize = 4096;
    let per_task = (KEPT + SCRATCH) * BS;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    // On the disk's file system (O_DIRECT, as drl runs) and buffered.
    let dir = tempfile::tempdir().unwrap();
    for direct in [true, false] {
        let path = dir.path().join(format!("stress-{direct}.img"));
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).create(true).truncate(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let f = o.open(&path).unwrap();
        f.set_len((TASKS * per_task) as u64).unwrap();
        let e = Engine::new(f, cfg("stress", 8)).unwrap();
        let run = rt.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..TASKS {
                let e = e.clone();
                tasks.push(tokio::spawn(async move {
                    let base = (t * per_task) as u64;
                    let kept_at = |b: usize| base + (b * BS) as u64;
                    let scratch_at = |b: usize| base + ((KEPT + b) * BS) as u64;
                    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
                    let mut rnd = move || {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed
                    };
                    let mut kept: Vec<Option<u8>> = vec![None; KEPT];
                    for i in 0..iters {
                        match rnd() % 3 {
                            0 => {
                                // Write 1..=KEPT kept blocks in one plugged pass.
                                let n = 1 + (rnd() % KEPT as u64) as usize;
                                let first = (rnd() % KEPT as u64) as usize;
                                let blocks: Vec<usize> = (0..n).map(|k| (first + k) % KEPT).collect();
                                let seed_of = |b: usize| (i as u8).wrapping_mul(7).wrapping_add(b as u8);
                                let set = blocks
                                    .iter()
                                    .map(|&b| {
                                        let e = &e;
                                        Box::pin(async move {
                                            e.write_all_at(pattern(BS, seed_of(b)), kept_at(b), 0).await.0
                                        }) as std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send>>
                                    })
                                    .collect();
                                for (r, &b) in plugged_all(&e, set).await.into_iter().zip(&blocks) {
                                    r.unwrap();
                                    kept[b] = Some(seed_of(b));
                                }
                            }
                            1 => {
                                // Read every kept block back in one plugged pass.
                                let set = (0..KEPT)
                                    .map(|b| {
                                        let e = &e;
                                        Box::pin(async move {
                                            e.read_exact_at(AlignedBuf::zeroed(BS), kept_at(b)).await
                                        }) as std::pin::Pin<Box<dyn std::future::Future<Output = (io::Result<()>, AlignedBuf)> + Send>>
                                    })
                                    .collect();
                                for (b, (r, buf)) in plugged_all(&e, set).await.into_iter().enumerate() {
                                    r.unwrap();
                                    match kept[b] {
                                        Some(s) => assert!(
                                            buf[..] == pattern(BS, s)[..],
                                            "task {t} pass {i}: block {b} does not hold its last write (direct {direct}, {:?})",
                                            e.stats()
                                        ),
                                        None => assert!(buf.iter().all(|&x| x == 0)),
                                    }
                                }
                            }
                            _ => {
                                // Writes and reads of scratch blocks, dropped after a moment.
                                let set: Vec<_> = (0..SCRATCH)
                                    .map(|b| {
                                        let e = &e;
                                        let write = rnd() % 2 == 0;
                                        Box::pin(async move {
                                            if write {
                                                e.write_all_at(pattern(BS, b as u8), scratch_at(b), 0).await.0
                                            } else {
                                                e.read_exact_at(AlignedBuf::zeroed(BS), scratch_at(b)).await.0
                                            }
                                        }) as std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send>>
                                    })
                                    .collect();
                                let wait = Duration::from_micros(rnd() % 200);
                                let _ = tokio::time::timeout(wait, plugged_all(&e, set)).await;
                            }
                        }
                    }
                }));
            }
            // A broken ring spins in io_uring_enter instead of failing: bound the wait.
            tokio::time::timeout(Duration::from_secs(120), async {
                for t in tasks {
                    t.await.unwrap();
                }
            })
            .await
        });
        if run.is_err() {
            let s = e.stats();
            // Workers may be stuck in the kernel: do not wait for them.
            std::mem::forget(rt);
            panic!("direct={direct}: the passes did not finish in 120 s (a spinning submitter?): {s:?}");
        }
        let s = e.stats();
        assert_eq!(s.unexpected_completions, 0, "direct={direct}: {s:?}");
        let e2 = e.clone();
        drop(e);
        e2.shutdown();
        let s = e2.stats();
        assert_eq!(
            (s.in_flight, s.ops_submitted),
            (0, s.ops_completed),
            "direct={direct}: {s:?}"
        );
    }
}

/// A runtime of its own on a thread of its own, like a daemon's shard; `stop` ends it.
fn runtime_on_a_thread() -> (
    tokio::runtime::Handle,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t = std::thread::spawn(move || {
        rt.block_on(async move {
            let _ = stopped.await;
        })
    });
    (handle, stop, t)
}

/// `set_home`: the reaper runs on the home runtime whichever runtime submits; once home is
/// gone, the next operation starts a reaper on the submitter's runtime instead of waiting
/// for one that cannot run.
#[test]
fn the_reaper_runs_at_home_and_moves_when_home_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (_, f) = file_in(dir.path(), 1 << 20);
    let (home, stop, thread) = runtime_on_a_thread();
    let caller = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = Engine::new(f, cfg("home", 8)).unwrap();
    e.set_home(home.clone());
    caller.block_on(async {
        let (r, _) = e.write_all_at(pattern(4096, 1), 0, 0).await;
        r.unwrap();
    });
    assert_eq!(home.metrics().num_alive_tasks(), 1, "the reaper is at home");
    assert_eq!(
        caller.metrics().num_alive_tasks(),
        0,
        "and not on the caller's runtime"
    );

    stop.send(()).unwrap();
    thread.join().unwrap();
    caller.block_on(async {
        for i in 0..4u8 {
            let (r, _) = e
                .write_all_at(pattern(4096, i), u64::from(i) * 4096, 0)
                .await;
            r.unwrap();
        }
        let (r, back) = e.read_exact_at(AlignedBuf::zeroed(4096), 3 * 4096).await;
        r.unwrap();
        assert_eq!(&back[..], &pattern(4096, 3)[..]);
    });
    assert_eq!(
        caller.metrics().num_alive_tasks(),
        1,
        "a new reaper on the caller's runtime"
    );
    e.shutdown();
}

/// An operation waiting from another runtime when the engine's home runtime stops: the
/// reaper dies with home, the waiter is woken, starts a reaper where it runs and gets its
/// completion when it comes (it would otherwise wait for a reaper that no longer exists).
#[test]
fn a_waiter_outlives_its_home_runtime() {
    let (rd, mut wr) = pipe();
    let (home, stop, thread) = runtime_on_a_thread();
    let caller = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = Engine::new(rd, cfg("orphan", 2)).unwrap();
    e.set_home(home.clone());
    caller.block_on(async {
        // A read of an empty pipe stays in the kernel until data arrives.
        let e2 = e.clone();
        let read = tokio::spawn(async move { e2.read_exact_at(AlignedBuf::zeroed(8), 0).await });
        until(|| e.stats().ops_submitted >= 1).await;
        assert_eq!(home.metrics().num_alive_tasks(), 1, "the reaper is at home");
        stop.send(()).unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        wr.write_all(&[9u8; 8]).unwrap();
        let (r, b) = tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("the waiter was left without a reaper")
            .unwrap();
        r.unwrap();
        assert_eq!(&b[..], &[9u8; 8]);
    });
    e.shutdown();
}
