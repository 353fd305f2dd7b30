//! open_disk tests on ext4 (tempdir), ramfs (no O_DIRECT) and a loop block device.

use super::*;
use crate::uring::{Engine, EngineConfig};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

fn engine(file: File, name: &str) -> Engine {
    Engine::new(
        file,
        EngineConfig {
            queue_depth: 4,
            name: name.to_string(),
        },
    )
    .unwrap()
}

#[test]
fn creates_a_sparse_file_and_opens_it_direct() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.img");
    let d = open_disk(&path, false, Some(64 << 20)).unwrap();
    assert!(d.direct, "ext4 supports O_DIRECT");
    assert!(
        d.dio_align_bytes == 512 || d.dio_align_bytes == 4096,
        "{}",
        d.dio_align_bytes
    );
    assert_eq!(d.size_bytes, 64 << 20);
    assert!(!d.is_block_device);
    let md = std::fs::metadata(&path).unwrap();
    assert_eq!(md.len(), 64 << 20);
    assert_eq!(md.blocks(), 0, "sparse");
    // SAFETY: fcntl(F_GETFL) on a live fd has no memory arguments.
    let fl = unsafe { libc::fcntl(d.file.as_raw_fd(), libc::F_GETFL) };
    assert_ne!(fl & libc::O_DIRECT, 0);
    // Opening again with a different create size does not touch the existing file.
    let again = open_disk(&path, true, Some(1 << 20)).unwrap();
    assert_eq!(again.size_bytes, 64 << 20);
}

#[test]
fn missing_file_without_create_is_not_found_and_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.img");
    let e = open_disk(&path, false, None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(e.to_string().contains("absent.img"), "{e}");
}

#[test]
fn read_only_disk_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.img");
    open_disk(&path, false, Some(1 << 20)).unwrap();
    let d = open_disk(&path, true, None).unwrap();
    let buf = AlignedBuf::zeroed(4096);
    assert!(d.file.write_at(&buf, 0).is_err());
}

#[tokio::test]
async fn direct_engine_io_needs_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dio.img");
    let d = open_disk(&path, false, Some(1 << 20)).unwrap();
    let align = d.dio_align_bytes as u64;
    let e = engine(d.file, "dio");
    let (r, _) = e
        .write_all_at(AlignedBuf::from_slice(&[0xabu8; 4096]), align * 2, 0)
        .await;
    r.unwrap();
    let (r, b) = e.read_exact_at(AlignedBuf::zeroed(4096), align * 2).await;
    r.unwrap();
    assert!(b.iter().all(|&x| x == 0xab));
    // O_DIRECT is really in effect: a misaligned offset is refused by the kernel.
    let (r, _) = e.write_all_at(AlignedBuf::zeroed(4096), 1, 0).await;
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EINVAL));
}

/// A ramfs mount (ramfs has no O_DIRECT), unmounted on drop.
struct RamfsMount {
    dir: tempfile::TempDir,
}

impl RamfsMount {
    fn new() -> Option<RamfsMount> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(RamfsMount { dir })
    }
}

impl Drop for RamfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Log lines captured from a tracing subscriber.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test]
async fn falls_back_to_buffered_io_where_o_direct_is_refused() {
    let Some(mnt) = RamfsMount::new() else {
        return eprintln!("skipped: cannot mount ramfs (needs root)");
    };
    let path = mnt.dir.path().join("buffered.img");
    let logs = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let d =
        tracing::subscriber::with_default(subscriber, || open_disk(&path, false, Some(1 << 20)))
            .unwrap();
    let logged = logs.text();
    assert!(logged.contains("WARN"), "{logged}");
    assert!(
        logged.contains("buffered.img") && logged.contains("EINVAL"),
        "{logged}"
    );
    assert!(!d.direct);
    assert_eq!(d.dio_align_bytes, 1);
    assert_eq!(d.size_bytes, 1 << 20);
    // SAFETY: fcntl(F_GETFL) on a live fd has no memory arguments.
    let fl = unsafe { libc::fcntl(d.file.as_raw_fd(), libc::F_GETFL) };
    assert_eq!(fl & libc::O_DIRECT, 0);
    // Buffered: any offset works.
    let e = engine(d.file, "ramfs");
    let (r, _) = e
        .write_all_at(AlignedBuf::from_slice(b"unaligned"), 3, 0)
        .await;
    r.unwrap();
    let (r, b) = e.read_exact_at(AlignedBuf::zeroed(9), 3).await;
    r.unwrap();
    assert_eq!(&b[..], b"unaligned");
}

#[test]
fn probe_by_reading_finds_512_on_ext4_and_assumes_4096_for_tiny_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe.img");
    open_disk(&path, false, Some(1 << 20)).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let align = probe_by_reading(&f, 1 << 20).unwrap();
    // ext4 on a 512-byte-sector disk takes 512, on a 4K disk 4096; statx must agree.
    match statx_dioalign(&f).unwrap() {
        Some((_, offset)) => assert_eq!(align, offset),
        None => assert!(align == 512 || align == 4096),
    }
    assert_eq!(probe_by_reading(&f, 100).unwrap(), 4096);
}

/// A loop device over a sparse file, detached on drop.
struct LoopDev {
    dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDev {
    fn new(size: u64) -> Option<LoopDev> {
        let dir = tempfile::tempdir().ok()?;
        let backing = dir.path().join("backing.img");
        File::create(&backing).ok()?.set_len(size).ok()?;
        let out = Command::new("losetup")
            .arg("--find")
            .arg("--show")
            .arg(&backing)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let dev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        Some(LoopDev {
            dev: PathBuf::from(dev),
            _dir: dir,
        })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[tokio::test]
async fn block_device_size_alignment_zeroout_and_discard() {
    let Some(lo) = LoopDev::new(32 << 20) else {
        return eprintln!("skipped: no loop device available");
    };
    let d = open_disk(&lo.dev, false, Some(1)).unwrap();
    assert!(d.is_block_device);
    assert_eq!(d.size_bytes, 32 << 20);
    assert!(d.direct);
    assert_eq!(
        d.dio_align_bytes, 512,
        "loop devices default to 512-byte sectors"
    );
    let e = engine(d.file, "loop");
    let data = AlignedBuf::from_slice(&[0x5au8; 1 << 20]);
    let (r, _) = e.write_all_at(data, 0, 0).await;
    r.unwrap();
    e.fdatasync().await.unwrap();
    // BLKZEROOUT on [64 KiB, 192 KiB).
    e.zero_range(65536, 131072, false).await.unwrap();
    let (r, b) = e.read_exact_at(AlignedBuf::zeroed(1 << 20), 0).await;
    r.unwrap();
    assert!(b[..65536].iter().all(|&x| x == 0x5a));
    assert!(b[65536..196608].iter().all(|&x| x == 0));
    assert!(b[196608..].iter().all(|&x| x == 0x5a));
    assert_eq!(
        e.stats().bytes_written,
        1 << 20,
        "zeroed by ioctl, not by writes"
    );
    // BLKDISCARD: a loop device punches holes in its backing file.
    e.discard(0, 1 << 20).await.unwrap();
    let s = e.stats();
    assert_eq!(
        (s.in_flight, s.ops_submitted, s.ops_completed),
        (0, 5, 5),
        "{s:?}"
    );
}

#[tokio::test]
async fn tmpfs_opens_and_works_in_whatever_mode_it_supports() {
    // tmpfs gained O_DIRECT in Linux 6.6; older kernels take the buffered fallback.
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(e) => return eprintln!("skipped: no /dev/shm ({e})"),
    };
    let d = open_disk(&dir.path().join("shm.img"), false, Some(1 << 20)).unwrap();
    eprintln!(
        "tmpfs: direct={} dio_align_bytes={}",
        d.direct, d.dio_align_bytes
    );
    assert_eq!(d.direct, d.dio_align_bytes > 1);
    let at = u64::from(d.dio_align_bytes).max(512);
    let e = engine(d.file, "tmpfs");
    e.write_all_at(AlignedBuf::from_slice(&[3u8; 4096]), at, 0)
        .await
        .0
        .unwrap();
    let (r, b) = e.read_exact_at(AlignedBuf::zeroed(4096), at).await;
    r.unwrap();
    assert!(b.iter().all(|&x| x == 3));
}
