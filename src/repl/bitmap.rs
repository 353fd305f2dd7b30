//! Dirty-bitmap exchange for a bitmap-based resync (DRBD's WFBitMapS / WFBitMapT step).
//!
//! Before a bitmap resync both sides send their dirty bitmap as `BitmapChunk` frames and each
//! ORs the peer's bits into its own copy, so both resync the union: the source's writes the
//! target lacks *and* the target's own writes the source never saw (which must be
//! overwritten). Bit `i` covers bitmap block `i` and lives in byte `i / 8`, bit `i % 8`
//! (least significant bit first). Chunks start on a byte boundary, arrive in order, and the
//! last one carries the LAST flag; zstd (when negotiated) shrinks the mostly-zero chunks.

use bytes::Bytes;

use crate::limits::REPL_BITMAP_CHUNK_BYTES;
use crate::repl::frame::Frame;

/// A bitmap transfer that breaks the rules: a protocol error (drop the connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    #[error("bitmap chunk starts at bit {got}, expected bit {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error(
        "bitmap chunk of {bits} bits at bit {first_bit} runs past the {total_bits}-bit bitmap"
    )]
    PastEnd {
        first_bit: u64,
        bits: u32,
        total_bits: u64,
    },
    #[error("bitmap chunk of {bits} bits before the end is not a whole number of bytes")]
    Unaligned { bits: u32 },
    #[error("last bitmap chunk ends at bit {got}, the bitmap has {total_bits} bits")]
    ShortBitmap { got: u64, total_bits: u64 },
    #[error("bitmap chunk after the last one")]
    AfterLast,
    #[error("local bitmap buffer of {len} bytes cannot hold {total_bits} bits")]
    BufferTooSmall { len: usize, total_bits: u64 },
}

/// The `BitmapChunk` frames that carry `bitmap` (of `total_bits` bits).
pub fn bitmap_chunks(bitmap: &[u8], total_bits: u64) -> Result<Vec<Frame>, BitmapError> {
    let total_bytes = total_bits.div_ceil(8);
    if (bitmap.len() as u64) < total_bytes {
        return Err(BitmapError::BufferTooSmall {
            len: bitmap.len(),
            total_bits,
        });
    }
    let chunk_bits = REPL_BITMAP_CHUNK_BYTES as u64 * 8;
    let mut frames = Vec::new();
    let mut first_bit = 0u64;
    loop {
        let bits = (total_bits - first_bit).min(chunk_bits);
        let last = first_bit + bits == total_bits;
        let from = (first_bit / 8) as usize;
        let mut bytes = bitmap[from..from + bits.div_ceil(8) as usize].to_vec();
        if last && !bits.is_multiple_of(8) {
            if let Some(b) = bytes.last_mut() {
                *b &= (1u8 << (bits % 8)) - 1; // never send bits past the end
            }
        }
        frames.push(Frame::BitmapChunk {
            first_bit,
            bit_count: bits as u32,
            last,
            bits: Bytes::from(bytes),
        });
        if last {
            return Ok(frames);
        }
        first_bit += bits;
    }
}

/// Receives the peer's bitmap chunk by chunk and ORs it into the local bitmap.
#[derive(Debug, Clone)]
pub struct BitmapMerge {
    total_bits: u64,
    next_bit: u64,
    done: bool,
}

impl BitmapMerge {
    pub fn new(total_bits: u64) -> Self {
        BitmapMerge {
            total_bits,
            next_bit: 0,
            done: false,
        }
    }

    /// Whether the last chunk arrived.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// OR one chunk into `local`. Returns true after the last chunk.
    pub fn merge(
        &mut self,
        local: &mut [u8],
        first_bit: u64,
        bit_count: u32,
        last: bool,
        bits: &[u8],
    ) -> Result<bool, BitmapError> {
        if self.done {
            return Err(BitmapError::AfterLast);
        }
        if (local.len() as u64) < self.total_bits.div_ceil(8) {
            return Err(BitmapError::BufferTooSmall {
                len: local.len(),
                total_bits: self.total_bits,
            });
        }
        if first_bit != self.next_bit {
            return Err(BitmapError::OutOfOrder {
                expected: self.next_bit,
                got: first_bit,
            });
        }
        let end = first_bit + bit_count as u64;
        if end > self.total_bits {
            return Err(BitmapError::PastEnd {
                first_bit,
                bits: bit_count,
                total_bits: self.total_bits,
            });
        }
        if !last && !bit_count.is_multiple_of(8) {
            return Err(BitmapError::Unaligned { bits: bit_count });
        }
        if last && end != self.total_bits {
            return Err(BitmapError::ShortBitmap {
                got: end,
                total_bits: self.total_bits,
            });
        }
        // The codec guarantees bits.len() == ceil(bit_count / 8).
        let from = (first_bit / 8) as usize;
        let n = (bit_count as usize).div_ceil(8).min(bits.len());
        for (i, b) in bits[..n].iter().enumerate() {
            let mut b = *b;
            if i + 1 == n && !bit_count.is_multiple_of(8) {
                b &= (1u8 << (bit_count % 8)) - 1;
            }
            local[from + i] |= b;
        }
        self.next_bit = end;
        self.done = last;
        Ok(last)
    }
}

/// Number of set bits (the "dirty_bits" a Hello reports).
pub fn count_dirty(bitmap: &[u8], total_bits: u64) -> u64 {
    let full = (total_bits / 8) as usize;
    let mut n: u64 = bitmap[..full.min(bitmap.len())]
        .iter()
        .map(|b| b.count_ones() as u64)
        .sum();
    if !total_bits.is_multiple_of(8) {
        if let Some(b) = bitmap.get(full) {
            n += (b & ((1u8 << (total_bits % 8)) - 1)).count_ones() as u64;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge_all(frames: &[Frame], local: &mut [u8], total_bits: u64) -> Result<(), BitmapError> {
        let mut m = BitmapMerge::new(total_bits);
        for f in frames {
            let Frame::BitmapChunk {
                first_bit,
                bit_count,
                last,
                bits,
            } = f
            else {
                panic!()
            };
            m.merge(local, *first_bit, *bit_count, *last, bits)?;
        }
        assert!(m.is_done());
        Ok(())
    }

    #[test]
    fn exchange_yields_the_union_of_both_bitmaps() {
        // Fail back: the old primary's unacked writes (its bits) and the new primary's writes
        // (the peer's bits) are both resynced.
        let total_bits = REPL_BITMAP_CHUNK_BYTES as u64 * 8 * 2 + 13;
        let bytes = total_bits.div_ceil(8) as usize;
        let mut source = vec![0u8; bytes];
        let mut target = vec![0u8; bytes];
        source[0] = 0b0000_0101;
        source[bytes - 1] = 0b0001_0000;
        target[0] = 0b1000_0000;
        target[REPL_BITMAP_CHUNK_BYTES + 1] = 0xff;
        let frames = bitmap_chunks(&source, total_bits).unwrap();
        assert_eq!(frames.len(), 3);
        merge_all(&frames, &mut target, total_bits).unwrap();
        assert_eq!(target[0], 0b1000_0101);
        assert_eq!(target[REPL_BITMAP_CHUNK_BYTES + 1], 0xff);
        assert_eq!(target[bytes - 1], 0b0001_0000);
        assert_eq!(count_dirty(&target, total_bits), 3 + 8 + 1);
    }

    #[test]
    fn bits_past_the_end_are_neither_sent_nor_merged() {
        let src = vec![0xffu8; 2];
        let frames = bitmap_chunks(&src, 12).unwrap();
        let Frame::BitmapChunk { bits, .. } = &frames[0] else {
            panic!()
        };
        assert_eq!(&bits[..], &[0xff, 0x0f]);
        let mut dst = vec![0u8; 2];
        let mut m = BitmapMerge::new(12);
        m.merge(&mut dst, 0, 12, true, &[0xff, 0xff]).unwrap();
        assert_eq!(dst, vec![0xff, 0x0f]);
        assert_eq!(count_dirty(&[0xff, 0xff], 12), 12);
    }

    #[test]
    fn protocol_violations_are_refused() {
        let mut dst = vec![0u8; 4];
        let mut m = BitmapMerge::new(32);
        assert_eq!(
            m.merge(&mut dst, 8, 8, false, &[1]),
            Err(BitmapError::OutOfOrder {
                expected: 0,
                got: 8
            })
        );
        assert_eq!(
            m.merge(&mut dst, 0, 5, false, &[1]),
            Err(BitmapError::Unaligned { bits: 5 })
        );
        assert!(matches!(
            m.merge(&mut dst, 0, 40, true, &[0; 5]),
            Err(BitmapError::PastEnd { .. })
        ));
        assert!(matches!(
            m.merge(&mut dst, 0, 16, true, &[0; 2]),
            Err(BitmapError::ShortBitmap { .. })
        ));
        assert_eq!(m.merge(&mut dst, 0, 32, true, &[0; 4]), Ok(true));
        assert_eq!(
            m.merge(&mut dst, 32, 0, true, &[]),
            Err(BitmapError::AfterLast)
        );
        let mut small = vec![0u8; 1];
        assert!(matches!(
            BitmapMerge::new(32).merge(&mut small, 0, 32, true, &[0; 4]),
            Err(BitmapError::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn empty_bitmap_is_one_empty_last_chunk() {
        let frames = bitmap_chunks(&[], 0).unwrap();
        assert_eq!(
            frames,
            vec![Frame::BitmapChunk {
                first_bit: 0,
                bit_count: 0,
                last: true,
                bits: Bytes::new()
            }]
        );
        merge_all(&frames, &mut [], 0).unwrap();
    }
}
