//! The simulated data disk of a node and the [`BlockDevice`] the production write pipeline
//! ([`drl::pipeline::WritePipeline`]) and snapshot store write and read it through.
//!
//! The disk holds one tag per 4 KiB block (the id of the write that wrote it, 0: zeroes): a
//! block's bytes are its tag, little endian, then zeroes ([`payload`]). Completed writes are
//! what reads see; only flushed ones survive a crash, and unflushed ones may come back lost,
//! torn or in any order.
//!
//! The sim is synchronous: every future of the device is ready at once. The snapshot store
//! does its COW copies and map records on tokio's blocking pool, so the node runs the
//! pipeline's futures to completion on a current-thread runtime ([`block_on`]) inside one
//! step; nothing else runs meanwhile, so the run stays deterministic.

use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use drl::volume::{AlignedBuf, BlockDevice, VolumeError};
use rand::rngs::StdRng;
use rand::Rng;

use super::node::BS;

/// A data disk of block tags (the id of the write that wrote a block, 0: zeroes).
pub struct Disk {
    /// What survives a crash: the state at the last flush.
    pub stable: Vec<u64>,
    /// What reads see (completed writes).
    pub view: Vec<u64>,
    /// Completed writes since the last flush: (first block, tags).
    pending: Vec<(usize, Vec<u64>)>,
}

impl Disk {
    fn new(blocks: usize) -> Disk {
        Disk {
            stable: vec![0; blocks],
            view: vec![0; blocks],
            pending: Vec::new(),
        }
    }

    pub fn write(&mut self, first: usize, tags: Vec<u64>) {
        self.view[first..first + tags.len()].copy_from_slice(&tags);
        self.pending.push((first, tags));
    }

    pub fn flush(&mut self) {
        self.flush_blocks(0..self.view.len());
    }

    /// Flush one volume of a group (its blocks): the other volume's unflushed writes stay
    /// unflushed (a write lies in one volume).
    pub fn flush_blocks(&mut self, blocks: std::ops::Range<usize>) {
        self.stable[blocks.clone()].clone_from_slice(&self.view[blocks.clone()]);
        self.pending.retain(|(first, _)| !blocks.contains(first));
    }

    /// Power loss: each unflushed write is lost, kept or torn (some of its blocks), in any
    /// order.
    pub fn crash(&mut self, rng: &mut StdRng) {
        let mut img = self.stable.clone();
        let mut pend = std::mem::take(&mut self.pending);
        while !pend.is_empty() {
            let (first, tags) = pend.swap_remove(rng.random_range(0..pend.len()));
            match rng.random_range(0..3) {
                0 => {}
                1 => img[first..first + tags.len()].copy_from_slice(&tags),
                _ => {
                    for (i, t) in tags.iter().enumerate() {
                        if rng.random_bool(0.5) {
                            img[first + i] = *t;
                        }
                    }
                }
            }
        }
        self.stable = img.clone();
        self.view = img;
    }
}

/// Bytes of a write of `tags` (each block holds its tag, little endian, then zeroes).
pub fn payload(tags: &[u64]) -> Bytes {
    let mut v = vec![0u8; tags.len() * BS as usize];
    for (i, t) in tags.iter().enumerate() {
        v[i * BS as usize..i * BS as usize + 8].copy_from_slice(&t.to_le_bytes());
    }
    Bytes::from(v)
}

pub fn tags_of(data: &[u8]) -> Vec<u64> {
    data.chunks(BS as usize)
        .map(|b| u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])))
        .collect()
}

/// The node's disk as a block device (whole 4 KiB blocks only, as every sim writer and the
/// snapshot store's chunk reads are).
pub struct SimDev {
    disk: Mutex<Disk>,
    size: u64,
}

impl SimDev {
    pub fn new(blocks: usize) -> SimDev {
        SimDev {
            disk: Mutex::new(Disk::new(blocks)),
            size: blocks as u64 * BS,
        }
    }

    pub fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blocks(offset: u64, len: u64) -> Result<(usize, usize), VolumeError> {
        if !offset.is_multiple_of(BS) || !len.is_multiple_of(BS) {
            return Err(VolumeError::Invalid(format!(
                "sim disk: {offset}+{len} is not whole blocks"
            )));
        }
        Ok(((offset / BS) as usize, (len / BS) as usize))
    }

    fn zero(&self, offset: u64, len: u32) -> Result<(), VolumeError> {
        let (first, n) = Self::blocks(offset, u64::from(len))?;
        self.disk().write(first, vec![0; n]);
        Ok(())
    }
}

impl BlockDevice for SimDev {
    fn name(&self) -> &str {
        "sim"
    }

    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<AlignedBuf, VolumeError>> + Send {
        let r = Self::blocks(offset, u64::from(len)).map(|(first, n)| {
            AlignedBuf::from_slice(&payload(&self.disk().view[first..first + n]))
        });
        std::future::ready(r)
    }

    fn write(
        &self,
        offset: u64,
        data: AlignedBuf,
        _fua: bool,
    ) -> impl Future<Output = Result<(), VolumeError>> + Send {
        let r = Self::blocks(offset, data.len() as u64)
            .map(|(first, _)| self.disk().write(first, tags_of(&data)));
        std::future::ready(r)
    }

    fn flush(&self) -> impl Future<Output = Result<(), VolumeError>> + Send {
        self.disk().flush();
        std::future::ready(Ok(()))
    }

    fn trim(&self, offset: u64, len: u32) -> impl Future<Output = Result<(), VolumeError>> + Send {
        std::future::ready(self.zero(offset, len))
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        _may_trim: bool,
        _fua: bool,
    ) -> impl Future<Output = Result<(), VolumeError>> + Send {
        std::future::ready(self.zero(offset, len))
    }
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

/// Run `f` to completion (the snapshot store's blocking-pool work included).
pub fn block_on<F: Future>(f: F) -> F::Output {
    RT.with(|rt| rt.block_on(f))
}
