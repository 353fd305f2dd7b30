//! The dependent writer of the consistency-group tests (issue 15; `tests/group_order.rs`,
//! `tests/add_volume.rs`): write k goes to volume k % 2, block k / 2, and is sent only after
//! write k-1's reply; each block names its own sequence number and its predecessor's volume
//! and sequence, so [`prefix_of`] finds a write held without its predecessor.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};

use super::nbd_client::NbdClient;

pub const BLOCK: usize = 4096;
pub const MAGIC: &[u8; 8] = b"DRLGRP01";

/// Where write k goes: (volume, block).
pub fn place(k: u64) -> (usize, u64) {
    ((k % 2) as usize, k / 2)
}

/// Write k of run `run`: magic, run id, k, the predecessor's volume and sequence (u64::MAX for
/// none), a crc32 of the rest, filler.
pub fn block(run: u64, k: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&run.to_le_bytes());
    b[16..24].copy_from_slice(&k.to_le_bytes());
    let (pvol, pseq) = match k.checked_sub(1) {
        Some(p) => (place(p).0 as u64, p),
        None => (u64::MAX, u64::MAX),
    };
    b[24..32].copy_from_slice(&pvol.to_le_bytes());
    b[32..40].copy_from_slice(&pseq.to_le_bytes());
    let mut rng = rand::rngs::StdRng::seed_from_u64(run.wrapping_mul(1_000_003) ^ k);
    rng.fill(&mut b[44..]);
    let crc = crc32fast::hash(&b[44..]) ^ crc32fast::hash(&b[..40]);
    b[40..44].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Whether block `b` holds write k of `run` (Ok(false): never written), or what is wrong.
pub fn holds(run: u64, k: u64, b: &[u8]) -> Result<bool, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(false);
    }
    if b != block(run, k).as_slice() {
        let seq = u64::from_le_bytes(b[16..24].try_into().unwrap());
        return Err(format!(
            "not write {k} of this run (magic {:?}, seq {seq}): torn, stale or misplaced",
            String::from_utf8_lossy(&b[..8])
        ));
    }
    Ok(true)
}

/// How many of writes 0..`writes` of `run` the two volumes `disks` hold, all of them from the
/// first: Err names a write held without its predecessor, or a block that is no write.
pub fn prefix_of(run: u64, writes: u64, disks: &[Vec<u8>; 2]) -> Result<u64, String> {
    let mut prefix = 0u64;
    let mut hole: Option<u64> = None;
    for k in 0..writes {
        let (v, b) = place(k);
        let at = b as usize * BLOCK;
        match holds(run, k, &disks[v][at..at + BLOCK]) {
            Ok(false) => {
                hole.get_or_insert(k);
            }
            Ok(true) => {
                if let Some(h) = hole {
                    return Err(format!(
                        "volume {v} holds write {k} but volume {} lacks write {h}: the group is not a prefix",
                        place(h).0
                    ));
                }
                prefix = k + 1;
            }
            Err(why) => return Err(format!("volume {v} block {b}: {why}")),
        }
    }
    Ok(prefix)
}

/// The dependent writer through the exports `nbd` of volumes 0 and 1: write k waits for
/// write k-1's reply. Returns the count of acknowledged writes, the stop flag and the thread.
pub fn start_writer_on(
    nbd: [std::path::PathBuf; 2],
    run: u64,
    writes: u64,
) -> (Arc<AtomicU64>, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (ack2, stop2) = (acked.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        let mut c = nbd.map(|s| NbdClient::connect(&s).expect("NBD connect to the Primary"));
        for k in 0..writes {
            let (v, b) = place(k);
            if stop2.load(Ordering::SeqCst) || c[v].write(b * BLOCK as u64, &block(run, k)).is_err()
            {
                break;
            }
            ack2.store(k + 1, Ordering::SeqCst);
        }
    });
    (acked, stop, writer)
}
