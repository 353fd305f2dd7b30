//! An application writer for fault tests: one thread writing 4 KiB blocks at random places of a
//! region through an NBD export, one request in flight, and a model of what every block must
//! hold once its write was acknowledged. After the faults, [`Model::verify`] reads a disk file
//! and finds any acknowledged write that is missing (lost, or overwritten by older data).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::nbd_client::NbdClient;

const BLOCK: u64 = 4096;

/// Block index -> sequence number of the last acknowledged write to it.
#[derive(Default, Clone)]
pub struct Model {
    pub blocks: HashMap<u64, u64>,
    /// Sequence numbers handed out so far (the next write uses this one).
    pub next_seq: u64,
}

/// The 4 KiB a write with sequence `seq` puts at block `block`: distinct for every write.
pub fn block_data(block: u64, seq: u64) -> Vec<u8> {
    let mut x = (seq << 24) ^ block ^ 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(BLOCK as usize);
    while v.len() < BLOCK as usize {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v
}

impl Model {
    /// Every block the model knows holds its last acknowledged write in `disk`; panics with the
    /// first few that do not.
    pub fn verify(&self, disk: &Path, context: &str) {
        use std::os::unix::fs::FileExt;
        let f =
            std::fs::File::open(disk).unwrap_or_else(|e| panic!("open {}: {e}", disk.display()));
        let mut bad = Vec::new();
        let mut buf = vec![0u8; BLOCK as usize];
        for (&b, &seq) in &self.blocks {
            f.read_exact_at(&mut buf, b * BLOCK).unwrap();
            if buf != block_data(b, seq) {
                bad.push((b, seq));
            }
        }
        bad.sort();
        assert!(
            bad.is_empty(),
            "{} of {} acknowledged blocks are not on {} (lost acknowledged writes), first (block, seq): {:?}\n{context}",
            bad.len(),
            self.blocks.len(),
            disk.display(),
            &bad[..bad.len().min(8)]
        );
    }
}

pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<Model, String>>>,
}

impl Writer {
    /// Start writing through `socket` into blocks of `[0, region)`, continuing `model`.
    pub fn start(socket: &Path, region: u64, mut model: Model) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (stop2, acked2) = (stop.clone(), acked.clone());
        let socket: PathBuf = socket.to_owned();
        let blocks = region / BLOCK;
        let handle = std::thread::spawn(move || {
            let mut c = NbdClient::connect(&socket)
                .map_err(|e| format!("NBD connect {}: {e}", socket.display()))?;
            let mut rng = model.next_seq.wrapping_mul(0x9e37_79b9) | 1;
            while !stop2.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let b = rng % blocks;
                let seq = model.next_seq;
                model.next_seq += 1;
                c.write(b * BLOCK, &block_data(b, seq))
                    .map_err(|e| format!("write {seq} at block {b} failed: {e}"))?;
                model.blocks.insert(b, seq);
                acked2.fetch_add(1, Ordering::Relaxed);
            }
            c.disconnect();
            Ok(model)
        });
        Writer {
            stop,
            acked,
            handle: Some(handle),
        }
    }

    /// Writes acknowledged since this writer started.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stop after the write in flight; the model of every acknowledged write.
    pub fn stop(mut self) -> Model {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().unwrap().join() {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => panic!("the writer failed: {e}"),
            Err(_) => panic!("the writer thread panicked"),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
