//! Which io_uring engine should drl use: its own (`kernel_glue::uring`) or tokio-uring 0.5
//! (unmaintained since 2024)?
//!
//! 4 KiB random O_DIRECT writes to a preallocated 256 MiB file, at queue depth 32 and 1, for a
//! few seconds each, on both engines. Prints IOPS and the ratio ours / tokio-uring.
//!
//! `cargo bench -p kernel-glue --bench engine_vs_tokio_uring`; `BENCH_SECS` (default 3) sets the
//! duration of each of the four runs; `BENCH_DIR` the directory of the test file (default the
//! system temp dir, which must support O_DIRECT).

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kernel_glue::buf::AlignedBuf;
use kernel_glue::uring::{Engine, EngineConfig};

const FILE_BYTES: u64 = 256 << 20;
const BLOCK_BYTES: usize = 4096;

/// xorshift64*: a cheap, deterministic offset generator.
struct Rng(u64);

impl Rng {
    fn next_offset(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r % (FILE_BYTES / BLOCK_BYTES as u64)) * BLOCK_BYTES as u64
    }
}

fn open_direct(path: &std::path::Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .expect("open with O_DIRECT (set BENCH_DIR to a filesystem that supports it)")
}

fn ours(path: &std::path::Path, qd: u32, secs: Duration) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = EngineConfig {
            queue_depth: qd,
            name: "bench".into(),
        };
        let engine = Engine::new(open_direct(path), cfg).unwrap();
        let deadline = Instant::now() + secs;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..qd {
            let engine = engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::from(w) + 1));
                let mut buf = AlignedBuf::from_slice(&[w as u8; BLOCK_BYTES]);
                let mut ops = 0u64;
                while Instant::now() < deadline {
                    let (r, b) = engine.write_all_at(buf, rng.next_offset(), 0).await;
                    r.unwrap();
                    buf = b;
                    ops += 1;
                }
                ops
            }));
        }
        let mut ops = 0;
        for t in tasks {
            ops += t.await.unwrap();
        }
        let iops = ops as f64 / start.elapsed().as_secs_f64();
        let s = engine.stats();
        eprintln!(
            "    ours qd={qd}: {} ops, {} io_uring_enter batches ({:.1} ops/batch)",
            s.ops_completed,
            s.batches,
            s.ops_submitted as f64 / s.batches.max(1) as f64
        );
        iops
    })
}

/// AlignedBuf for tokio-uring (it needs its own buffer trait).
struct TuBuf(AlignedBuf);

// SAFETY: the heap allocation of an AlignedBuf never moves while the value is owned by the
// runtime; all of its bytes are initialised.
unsafe impl tokio_uring::buf::IoBuf for TuBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.0.len()
    }
    fn bytes_total(&self) -> usize {
        self.0.len()
    }
}

fn tokio_uring(path: &std::path::Path, qd: u32, secs: Duration) -> f64 {
    let file = open_direct(path);
    tokio_uring::builder()
        .entries(qd.max(8) * 2)
        .start(async move {
            let file = Rc::new(tokio_uring::fs::File::from_std(file));
            let ops = Rc::new(Cell::new(0u64));
            let deadline = Instant::now() + secs;
            let start = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..qd {
                let (file, ops) = (file.clone(), ops.clone());
                tasks.push(tokio_uring::spawn(async move {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::from(w) + 1));
                    let mut buf = TuBuf(AlignedBuf::from_slice(&[w as u8; BLOCK_BYTES]));
                    while Instant::now() < deadline {
                        let (r, b) = file.write_at(buf, rng.next_offset()).submit().await;
                        assert_eq!(r.unwrap(), BLOCK_BYTES);
                        buf = b;
                        ops.set(ops.get() + 1);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            ops.get() as f64 / start.elapsed().as_secs_f64()
        })
}

fn main() {
    let secs = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let secs = Duration::from_secs_f64(secs);
    let dir = std::env::var_os("BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(dir).unwrap();
    let path = tmp.path().join("bench.img");
    // Write the whole file once, so neither engine pays for block allocation or unwritten
    // extent conversion.
    {
        let mut f = File::create(&path).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..FILE_BYTES / chunk.len() as u64 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    println!("4 KiB random O_DIRECT writes, 256 MiB file, {secs:?} per run");
    for qd in [32u32, 1] {
        let a = ours(&path, qd, secs);
        let b = tokio_uring(&path, qd, secs);
        println!(
            "qd={qd:>2}: kernel-glue {a:>9.0} IOPS | tokio-uring {b:>9.0} IOPS | ratio {:.2}",
            a / b
        );
    }
}
