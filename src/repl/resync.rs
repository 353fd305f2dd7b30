//! Resync: bring the SyncTarget's out-of-sync blocks up to date from the SyncSource.
//!
//! The target drives (DRBD's P_RS_DATA_REQUEST model): after the bitmap exchange both sides
//! hold the union of their dirty bits; the target walks its own bitmap and keeps at most
//! [`REPL_RESYNC_WINDOW_REQUESTS`] `ResyncRequest`s of at most [`REPL_RESYNC_REQUEST_BYTES`]
//! outstanding. The source answers each request, in order, with `ResyncData`, or with
//! `ResyncZeroes` when the range reads as zeroes (nothing crosses the wire for them: a fresh
//! volume's initial sync sends only what was written).
//!
//! Bits: the target clears a range's bits when its answer is written; so after any
//! interruption its bitmap still names every range it did not receive, and the next bitmap
//! exchange resyncs them. The source clears the bits of a range when it reads it for an
//! answer, under the exclusive resync lock: an application write to that range is either
//! entirely before the read (the answer carries its data, and is queued after the write's
//! own frame) or entirely after (it sets the bit again and is shipped after the answer).
//! So resync data never overwrites a newer application write on the target.
//!
//! The resync is complete when the target's bitmap is empty and no request is outstanding:
//! it flushes its disk, persists its bitmap, adopts the source's generation, becomes UpToDate
//! and sends `ResyncDone`.

use std::collections::VecDeque;

use crate::limits::{REPL_RESYNC_REQUEST_BYTES, REPL_RESYNC_WINDOW_REQUESTS};
use crate::repl::frame::Frame;
use crate::volume::bitmap::DirtyBitmap;

/// The dirty bitmap as bytes (bit `i` of block `i`, LSB first) for `bitmap_chunks`.
pub fn bitmap_bytes(bm: &DirtyBitmap) -> Vec<u8> {
    let mut out = vec![0u8; bm.blocks().div_ceil(8) as usize];
    let bs = bm.block_bytes();
    for (off, len) in bm.dirty_runs() {
        let (first, end) = (off / bs, (off + len).div_ceil(bs));
        for b in first..end {
            out[(b / 8) as usize] |= 1 << (b % 8);
        }
    }
    out
}

/// OR bits (as produced by [`bitmap_bytes`]) into `bm`; returns how many blocks were set.
pub fn or_into(bm: &DirtyBitmap, bits: &[u8]) -> u64 {
    let blocks = bm.blocks();
    let mut set = 0;
    let mut b = 0u64;
    while b < blocks {
        let byte = bits.get((b / 8) as usize).copied().unwrap_or(0);
        if byte == 0 && b.is_multiple_of(8) {
            b += 8;
            continue;
        }
        if byte & (1 << (b % 8)) != 0 {
            let start = b;
            while b < blocks
                && bits
                    .get((b / 8) as usize)
                    .is_some_and(|x| x & (1 << (b % 8)) != 0)
            {
                b += 1;
            }
            bm.set_blocks(start, b - start);
            set += b - start;
        } else {
            b += 1;
        }
    }
    set
}

/// A protocol error in the resync exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResyncError {
    #[error("resync answer for {offset}+{len}, but {expected} was requested next")]
    Unexpected {
        offset: u64,
        len: u64,
        expected: String,
    },
    #[error(
        "resync request {offset}+{len} outside the volume ({size} bytes) or larger than {max}"
    )]
    BadRequest {
        offset: u64,
        len: u64,
        size: u64,
        max: u32,
    },
}

/// The SyncTarget's request pump.
#[derive(Debug)]
pub struct Target {
    runs: VecDeque<(u64, u64)>,
    outstanding: VecDeque<(u64, u32)>,
    /// Answers received and being written (they count against the window: a disk slower
    /// than the link must not let answers pile up in memory).
    writing: usize,
    /// The source's current generation: this node adopts it when the resync ends.
    pub source_current: u64,
}

impl Target {
    /// Start from the dirty runs of `bm` (a snapshot: bits set later are not this pass's).
    pub fn new(bm: &DirtyBitmap, source_current: u64) -> Target {
        Self::from_runs(bm.dirty_runs().collect(), source_current)
    }

    /// Start from these (offset, length) runs (a group's: in its address space).
    pub fn from_runs(runs: VecDeque<(u64, u64)>, source_current: u64) -> Target {
        Target {
            runs,
            outstanding: VecDeque::new(),
            writing: 0,
            source_current,
        }
    }

    /// Request (push `ResyncRequest` frames to `out`) until the window (requests outstanding
    /// and answers being written) is full or nothing is left to request.
    pub fn fill(&mut self, out: &mut Vec<Frame>) {
        while self.outstanding.len() + self.writing < REPL_RESYNC_WINDOW_REQUESTS {
            let Some((off, len)) = self.runs.pop_front() else {
                return;
            };
            let take = len.min(u64::from(REPL_RESYNC_REQUEST_BYTES));
            if take < len {
                self.runs.push_front((off + take, len - take));
            }
            self.outstanding.push_back((off, take as u32));
            out.push(Frame::ResyncRequest {
                offset: off,
                len: take as u32,
            });
        }
    }

    /// An answer arrived: it must be for the oldest outstanding request. It is being written
    /// until [`Self::on_written`].
    pub fn on_answer(&mut self, offset: u64, len: u64) -> Result<(), ResyncError> {
        match self.outstanding.front() {
            Some(&(o, l)) if o == offset && u64::from(l) == len => {
                self.outstanding.pop_front();
                self.writing += 1;
                Ok(())
            }
            other => Err(ResyncError::Unexpected {
                offset,
                len,
                expected: other.map_or("nothing".into(), |(o, l)| format!("{o}+{l}")),
            }),
        }
    }

    /// An answer's write completed.
    pub fn on_written(&mut self) {
        self.writing = self.writing.saturating_sub(1);
    }

    /// Everything requested, answered and written.
    pub fn is_finished(&self) -> bool {
        self.runs.is_empty() && self.outstanding.is_empty() && self.writing == 0
    }
}

/// Check a request from the peer before serving it.
pub fn check_request(offset: u64, len: u32, size: u64) -> Result<(), ResyncError> {
    let bad = ResyncError::BadRequest {
        offset,
        len: u64::from(len),
        size,
        max: REPL_RESYNC_REQUEST_BYTES,
    };
    if len == 0 || len > REPL_RESYNC_REQUEST_BYTES {
        return Err(bad);
    }
    match offset.checked_add(u64::from(len)) {
        Some(end) if end <= size => Ok(()),
        _ => Err(bad),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 4096;

    #[test]
    fn bitmap_bytes_round_trip() {
        let bm = DirtyBitmap::new(100 * B + 512, B);
        bm.set_range(3 * B, 2 * B);
        bm.set_range(17 * B, 1);
        bm.set_range(100 * B, 512);
        let bytes = bitmap_bytes(&bm);
        let other = DirtyBitmap::new(100 * B + 512, B);
        assert_eq!(or_into(&other, &bytes), 4);
        for b in 0..other.blocks() {
            assert_eq!(bm.is_dirty(b), other.is_dirty(b), "block {b}");
        }
    }

    #[test]
    fn target_requests_in_order_within_the_window_and_finishes() {
        let size = 40 * u64::from(REPL_RESYNC_REQUEST_BYTES);
        let bm = DirtyBitmap::new(size, B);
        bm.set_range(0, size);
        let mut t = Target::new(&bm, 7);
        let mut out = Vec::new();
        t.fill(&mut out);
        let mut asked = Vec::new();
        let drain = |out: &mut Vec<Frame>, asked: &mut Vec<(u64, u32)>| {
            for f in out.drain(..) {
                match f {
                    Frame::ResyncRequest { offset, len } => asked.push((offset, len)),
                    f => panic!("unexpected {f:?}"),
                }
            }
        };
        drain(&mut out, &mut asked);
        assert_eq!(asked.len(), REPL_RESYNC_WINDOW_REQUESTS);
        // An answer out of order is a protocol error.
        assert!(t.on_answer(asked[1].0, u64::from(asked[1].1)).is_err());
        let mut answered = 0;
        while !t.is_finished() {
            let (o, l) = asked[answered];
            t.on_answer(o, u64::from(l)).unwrap();
            t.fill(&mut out);
            drain(&mut out, &mut asked);
            assert!(
                asked.len() <= answered + REPL_RESYNC_WINDOW_REQUESTS,
                "an answer being written still counts against the window"
            );
            t.on_written();
            answered += 1;
            t.fill(&mut out);
            drain(&mut out, &mut asked);
        }
        assert_eq!(answered, 40);
        let total: u64 = asked.iter().map(|&(_, l)| u64::from(l)).sum();
        assert_eq!(total, size);
    }

    #[test]
    fn requests_from_the_peer_are_checked() {
        assert!(check_request(0, 4096, 8192).is_ok());
        assert!(check_request(4096, 8192, 8192).is_err());
        assert!(check_request(u64::MAX - 10, 4096, 8192).is_err());
        assert!(check_request(0, 0, 8192).is_err());
        assert!(check_request(0, REPL_RESYNC_REQUEST_BYTES + 1, u64::MAX).is_err());
    }
}
