//! The dirty bitmap: one bit per block (`bitmap_block_bytes`, 4 KiB by default) of the volume,
//! set when the block may differ from the peer's copy (DRBD's "quick-sync bitmap").
//!
//! Concurrency: the bits live in a `Box<[AtomicU64]>`. Writes on many tasks mark blocks on the
//! hot path; `fetch_or`/`fetch_and` on the words are lock-free and never make one writer wait
//! for another, which a `Mutex<Vec<u64>>` would (and it would be held by the flusher while it
//! copies pages out). The previous value returned by each atomic tells exactly how many bits
//! changed, which keeps `count_dirty` O(1) and exact once concurrent calls have returned (a
//! reader racing a set and a clear of the same bit may see a transient value; it is clamped to
//! the valid range). The words sit behind an `RwLock` that every access takes shared (no
//! writer waits for another: readers of an `RwLock` do not exclude each other); only an
//! online grow ([`DirtyBitmap::grow`], `drl resize`) takes it exclusively, to put a longer
//! slice in place.
//!
//! Block rule (the same as DRBD's `set_out_of_sync` / `set_in_sync`):
//! - [`DirtyBitmap::set_range`] rounds *outwards*: a write touching any byte of a block marks
//!   the whole block dirty.
//! - [`DirtyBitmap::clear_range`] rounds *inwards*: only blocks the range covers completely
//!   are cleared (the partial block at the end of the volume counts as covered when the range
//!   reaches the end). A partially covered block may hold bytes of another unacknowledged
//!   write, so it stays dirty; callers that know better use [`DirtyBitmap::clear_blocks`].
//!
//! Persistence: the on-disk bitmap is the words as little-endian `u64`s, one 4 KiB page per
//! 512 words. A second bitset records which pages changed since the last flush;
//! [`DirtyBitmap::flush_to`] writes only those pages (consecutive pages in one write) and then
//! `fdatasync`s. A bit is set in its word *before* its page is marked changed, and the flusher
//! clears the page mark *before* copying the words, so a concurrent set is either in this
//! flush or still marked for the next one.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use super::meta::{MetaError, MetaFile};
use crate::limits::META_BLOCK_BYTES;

const WORDS_PER_PAGE: u64 = META_BLOCK_BYTES / 8;
/// Pages written by one `pwrite` at most while flushing.
const FLUSH_PAGES_PER_WRITE_MAX: u64 = 64;

/// In-memory dirty bitmap of a whole volume.
#[derive(Debug)]
pub struct DirtyBitmap {
    block_bytes: u64,
    bits: RwLock<Bits>,
    dirty: AtomicI64,
    flush_lock: Mutex<()>,
}

/// What the volume's size decides: replaced as a whole by [`DirtyBitmap::grow`].
#[derive(Debug)]
struct Bits {
    size_bytes: u64,
    blocks: u64,
    words: Box<[AtomicU64]>,
    /// One bit per 4 KiB page of the on-disk bitmap: changed since the last flush.
    pages_changed: Box<[AtomicU64]>,
    pages: u64,
}

fn mask(from_bit: u64, to_bit: u64) -> u64 {
    // Bits [from_bit, to_bit) of a word, 0 <= from_bit < to_bit <= 64.
    let high = if to_bit == 64 {
        u64::MAX
    } else {
        (1u64 << to_bit) - 1
    };
    high & !((1u64 << from_bit) - 1)
}

fn zeroed(n: u64) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Bits {
    fn new(size_bytes: u64, block_bytes: u64) -> Bits {
        let blocks = size_bytes.div_ceil(block_bytes);
        let nwords = blocks.div_ceil(64);
        let pages = nwords.div_ceil(WORDS_PER_PAGE).max(1);
        Bits {
            size_bytes,
            blocks,
            words: zeroed(nwords),
            pages_changed: zeroed(pages.div_ceil(64)),
            pages,
        }
    }

    fn mark_page(&self, word: u64) {
        let page = word / WORDS_PER_PAGE;
        self.pages_changed[(page / 64) as usize].fetch_or(1 << (page % 64), Ordering::AcqRel);
    }

    /// First block `>= from` whose bit equals `want`, or `blocks` if none.
    fn find(&self, from: u64, want: bool) -> u64 {
        let mut b = from;
        while b < self.blocks {
            let w = b / 64;
            let mut v = self.words[w as usize].load(Ordering::Acquire);
            if !want {
                v = !v;
            }
            v &= !((1u64 << (b % 64)) - 1);
            if v != 0 {
                return (w * 64 + v.trailing_zeros() as u64).min(self.blocks);
            }
            b = (w + 1) * 64;
        }
        self.blocks
    }

    fn is_dirty(&self, block: u64) -> bool {
        block < self.blocks
            && self.words[(block / 64) as usize].load(Ordering::Acquire) & (1 << (block % 64)) != 0
    }
}

impl DirtyBitmap {
    /// A clean bitmap for a volume of `size_bytes`, one bit per `block_bytes`.
    pub fn new(size_bytes: u64, block_bytes: u64) -> DirtyBitmap {
        assert!(block_bytes > 0, "bitmap block size must be positive");
        DirtyBitmap {
            block_bytes,
            bits: RwLock::new(Bits::new(size_bytes, block_bytes)),
            dirty: AtomicI64::new(0),
            flush_lock: Mutex::new(()),
        }
    }

    fn bits(&self) -> RwLockReadGuard<'_, Bits> {
        // Bits are only replaced whole (grow); a panic elsewhere cannot leave them half done.
        self.bits.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn size_bytes(&self) -> u64 {
        self.bits().size_bytes
    }
    pub fn block_bytes(&self) -> u64 {
        self.block_bytes
    }
    /// Number of blocks (bits) covering the volume.
    pub fn blocks(&self) -> u64 {
        self.bits().blocks
    }

    /// Grow the volume to `size_bytes` (`drl resize`): `meta`'s bitmap area and size first
    /// ([`MetaFile::set_size`]: the new bits read zero, the superblock names the size last),
    /// then the bits in memory (kept, the new blocks clean, every page marked for the next
    /// flush), both under the flush lock so no flush sees the file and the memory disagree.
    /// The caller keeps writes out meanwhile, so no bit set during the copy is lost. A size
    /// not larger than the current one changes nothing (a replicated volume never shrinks).
    pub fn grow(&self, size_bytes: u64, meta: &MetaFile) -> Result<(), MetaError> {
        let _serial = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut bits = self.bits.write().unwrap_or_else(|p| p.into_inner());
        if size_bytes <= bits.size_bytes {
            return Ok(());
        }
        meta.set_size(size_bytes)?;
        let next = Bits::new(size_bytes, self.block_bytes);
        for (to, from) in next.words.iter().zip(bits.words.iter()) {
            to.store(from.load(Ordering::Acquire), Ordering::Release);
        }
        for w in (0..next.words.len() as u64).step_by(WORDS_PER_PAGE as usize) {
            next.mark_page(w);
        }
        *bits = next;
        Ok(())
    }

    /// Set or clear blocks `[first, end)`; `end` is clamped to the volume.
    fn apply(&self, first: u64, end: u64, set: bool) {
        let bits = self.bits();
        let end = end.min(bits.blocks);
        let mut b = first;
        while b < end {
            let w = b / 64;
            let to = (end - w * 64).min(64);
            let m = mask(b % 64, to);
            let word = &bits.words[w as usize];
            let changed = if set {
                m & !word.fetch_or(m, Ordering::AcqRel)
            } else {
                m & word.fetch_and(!m, Ordering::AcqRel)
            };
            if changed != 0 {
                let n = changed.count_ones() as i64;
                self.dirty
                    .fetch_add(if set { n } else { -n }, Ordering::AcqRel);
                bits.mark_page(w);
            }
            b = (w + 1) * 64;
        }
    }

    /// Mark dirty every block that `[offset, offset + len)` touches (rounding outwards).
    /// Bytes past the end of the volume are ignored.
    pub fn set_range(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / self.block_bytes;
        let last = offset.saturating_add(len - 1) / self.block_bytes;
        self.apply(first, last.saturating_add(1), true);
    }

    /// Clear every block that `[offset, offset + len)` covers completely (rounding inwards;
    /// the last, partial block of the volume is covered when the range reaches the end).
    pub fn clear_range(&self, offset: u64, len: u64) {
        let end_byte = offset.saturating_add(len);
        let first = offset.div_ceil(self.block_bytes);
        let end = {
            let bits = self.bits();
            if end_byte >= bits.size_bytes {
                bits.blocks
            } else {
                end_byte / self.block_bytes
            }
        };
        if first < end {
            self.apply(first, end, false);
        }
    }

    /// Mark blocks `[first, first + count)` dirty.
    pub fn set_blocks(&self, first: u64, count: u64) {
        self.apply(first, first.saturating_add(count), true);
    }

    /// Clear blocks `[first, first + count)`.
    pub fn clear_blocks(&self, first: u64, count: u64) {
        self.apply(first, first.saturating_add(count), false);
    }

    pub fn set_all(&self) {
        self.apply(0, u64::MAX, true);
    }

    pub fn clear_all(&self) {
        self.apply(0, u64::MAX, false);
    }

    pub fn is_dirty(&self, block: u64) -> bool {
        self.bits().is_dirty(block)
    }

    /// Whether any block that `[offset, offset + len)` touches is dirty.
    pub fn any_dirty_in(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let bits = self.bits();
        let first = offset / self.block_bytes;
        let end = offset
            .saturating_add(len)
            .div_ceil(self.block_bytes)
            .min(bits.blocks);
        first < end && bits.find(first, true) < end
    }

    /// Number of dirty blocks, O(1).
    pub fn count_dirty(&self) -> u64 {
        let blocks = self.blocks();
        self.dirty.load(Ordering::Acquire).clamp(0, blocks as i64) as u64
    }

    /// Bytes of the volume covered by dirty blocks (the partial last block counts its real size).
    pub fn dirty_bytes(&self) -> u64 {
        let n = self.count_dirty();
        let full = n * self.block_bytes;
        let bits = self.bits();
        if n > 0 && bits.is_dirty(bits.blocks - 1) {
            let tail = bits.blocks * self.block_bytes - bits.size_bytes;
            full - tail
        } else {
            full
        }
    }

    /// Dirty regions as merged `(offset, len)` byte runs, in order, clipped to the volume.
    /// Taken word by word: bits changed during the walk may or may not be seen.
    pub fn dirty_runs(&self) -> DirtyRuns<'_> {
        DirtyRuns {
            bitmap: self,
            next: 0,
        }
    }

    /// Read the bitmap stored in `meta`.
    pub fn load(meta: &MetaFile) -> Result<DirtyBitmap, MetaError> {
        let sb = meta.superblock();
        let layout = meta.layout();
        let bm = DirtyBitmap::new(sb.size_bytes, sb.bitmap_block_bytes);
        {
            let bits = bm.bits();
            debug_assert_eq!(bits.blocks, layout.bitmap_blocks);
            let nwords = bits.words.len() as u64;
            let chunk_words = WORDS_PER_PAGE * FLUSH_PAGES_PER_WRITE_MAX;
            let mut buf = vec![0u8; (chunk_words * 8) as usize];
            let mut stray = 0u64;
            let mut w = 0;
            while w < nwords {
                let n = chunk_words.min(nwords - w);
                let bytes = &mut buf[..(n * 8) as usize];
                meta.read_at(bytes, layout.bitmap_offset + w * 8, "read bitmap")?;
                for (i, c) in bytes.chunks_exact(8).enumerate() {
                    let idx = w + i as u64;
                    let mut v = super::meta::get_u64(c, 0);
                    let valid = if (idx + 1) * 64 > bits.blocks {
                        mask(0, bits.blocks - idx * 64)
                    } else {
                        u64::MAX
                    };
                    if v & !valid != 0 {
                        stray += (v & !valid).count_ones() as u64;
                        v &= valid;
                        bits.mark_page(idx);
                    }
                    bits.words[idx as usize].store(v, Ordering::Relaxed);
                    bm.dirty.fetch_add(v.count_ones() as i64, Ordering::Relaxed);
                }
                w += n;
            }
            if stray > 0 {
                tracing::warn!(path = %meta.path().display(), stray_bits = stray,
                    "bitmap had bits set past the end of the volume; cleared");
            }
        }
        Ok(bm)
    }

    /// Write the pages changed since the last flush to `meta` and `fdatasync`. Returns the
    /// number of 4 KiB pages written. On error the pages stay marked for the next flush.
    pub fn flush_to(&self, meta: &MetaFile) -> Result<u64, MetaError> {
        let _serial = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        let layout = meta.layout();
        let bits = self.bits();
        if layout.bitmap_blocks != bits.blocks {
            return Err(MetaError::Invalid {
                path: meta.path().to_path_buf(),
                field: "bitmap blocks",
                value: format!(
                    "file has {}, bitmap in memory has {}",
                    layout.bitmap_blocks, bits.blocks
                ),
            });
        }
        let mut changed = Vec::new();
        for (i, pw) in bits.pages_changed.iter().enumerate() {
            let mut b = pw.swap(0, Ordering::AcqRel);
            while b != 0 {
                changed.push(i as u64 * 64 + b.trailing_zeros() as u64);
                b &= b - 1;
            }
        }
        let mut i = 0;
        let mut result = Ok(());
        while i < changed.len() && result.is_ok() {
            // A run of consecutive pages, bounded.
            let start = changed[i];
            let mut n = 1;
            while i + n < changed.len()
                && changed[i + n] == start + n as u64
                && (n as u64) < FLUSH_PAGES_PER_WRITE_MAX
            {
                n += 1;
            }
            let mut buf = vec![0u8; n * META_BLOCK_BYTES as usize];
            for (k, c) in buf.chunks_exact_mut(8).enumerate() {
                let w = start * WORDS_PER_PAGE + k as u64;
                if let Some(word) = bits.words.get(w as usize) {
                    c.copy_from_slice(&word.load(Ordering::Acquire).to_le_bytes());
                }
            }
            result = meta.write_at(
                &buf,
                layout.bitmap_offset + start * META_BLOCK_BYTES,
                "write bitmap",
            );
            if result.is_ok() {
                i += n;
            }
        }
        if result.is_ok() && !changed.is_empty() {
            result = meta.sync("fdatasync bitmap");
        }
        if let Err(e) = result {
            // Not durable: remark everything from this flush so the next one retries.
            for &p in &changed {
                bits.pages_changed[(p / 64) as usize].fetch_or(1 << (p % 64), Ordering::AcqRel);
            }
            return Err(e);
        }
        debug_assert!(changed.iter().all(|&p| p < bits.pages));
        Ok(changed.len() as u64)
    }
}

/// Iterator over merged dirty byte runs, see [`DirtyBitmap::dirty_runs`].
pub struct DirtyRuns<'a> {
    bitmap: &'a DirtyBitmap,
    next: u64,
}

impl Iterator for DirtyRuns<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let bb = self.bitmap.block_bytes;
        let bits = self.bitmap.bits();
        let start = bits.find(self.next, true);
        if start >= bits.blocks {
            self.next = bits.blocks;
            return None;
        }
        let end = bits.find(start, false);
        self.next = end;
        let off = start * bb;
        let end_byte = (end * bb).min(bits.size_bytes);
        Some((off, end_byte - off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::meta::NewMeta;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const B: u64 = 4096;

    fn blocks_of(bm: &DirtyBitmap) -> BTreeSet<u64> {
        (0..bm.blocks()).filter(|&b| bm.is_dirty(b)).collect()
    }

    #[test]
    fn set_rounds_outwards_clear_rounds_inwards() {
        let bm = DirtyBitmap::new(100 * B, B);
        bm.set_range(B + 1, 1);
        assert_eq!(blocks_of(&bm), [1].into());
        bm.set_range(3 * B - 1, 2); // touches blocks 2 and 3
        assert_eq!(blocks_of(&bm), [1, 2, 3].into());
        bm.clear_range(B + 1, 2 * B); // covers only block 2 completely
        assert_eq!(blocks_of(&bm), [1, 3].into());
        bm.clear_range(B, B);
        assert_eq!(blocks_of(&bm), [3].into());
        bm.set_range(0, 0);
        bm.clear_range(3 * B, 0);
        assert_eq!(bm.count_dirty(), 1);
    }

    #[test]
    fn partial_last_block() {
        // 10.5 blocks: the last block is half a block.
        let size = 10 * B + B / 2;
        let bm = DirtyBitmap::new(size, B);
        assert_eq!(bm.blocks(), 11);
        bm.set_range(size - 1, 1);
        assert!(bm.is_dirty(10));
        assert_eq!(bm.dirty_bytes(), B / 2);
        assert_eq!(bm.dirty_runs().collect::<Vec<_>>(), vec![(10 * B, B / 2)]);
        bm.clear_range(10 * B, B / 2); // reaches the end: clears the partial block
        assert_eq!(bm.count_dirty(), 0);
        bm.set_all();
        assert_eq!(bm.count_dirty(), 11);
        assert_eq!(bm.dirty_bytes(), size);
        assert_eq!(bm.dirty_runs().collect::<Vec<_>>(), vec![(0, size)]);
        bm.clear_all();
        assert_eq!(bm.count_dirty(), 0);
        assert_eq!(bm.dirty_runs().next(), None);
    }

    #[test]
    fn runs_merge_across_words() {
        let bm = DirtyBitmap::new(1000 * B, B);
        bm.set_blocks(60, 10); // crosses the first word boundary
        bm.set_blocks(128, 1);
        bm.set_blocks(999, 1);
        assert_eq!(
            bm.dirty_runs().collect::<Vec<_>>(),
            vec![(60 * B, 10 * B), (128 * B, B), (999 * B, B)]
        );
        assert_eq!(bm.count_dirty(), 12);
    }

    #[test]
    fn concurrent_sets_keep_an_exact_count() {
        let bm = std::sync::Arc::new(DirtyBitmap::new(1 << 30, B));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let bm = bm.clone();
                std::thread::spawn(move || {
                    // Overlapping ranges from every thread.
                    for i in 0..2000u64 {
                        bm.set_range((i * 7 + t) * B, 3 * B);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(bm.count_dirty(), blocks_of(&bm).len() as u64);
    }

    #[test]
    fn flush_writes_only_changed_pages_and_load_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        // 1 GiB / 4 KiB = 262144 bits = 32 KiB = 8 pages.
        let meta = MetaFile::create(&path, &NewMeta::new("r0", "n", 1 << 30)).unwrap();
        let bm = DirtyBitmap::load(&meta).unwrap();
        assert_eq!(bm.count_dirty(), 0);
        assert_eq!(bm.flush_to(&meta).unwrap(), 0, "nothing changed");
        bm.set_range(0, 1); // page 0
        bm.set_range(5 * 32768 * B + 3 * B, 10 * B); // page 5
        assert_eq!(bm.flush_to(&meta).unwrap(), 2);
        assert_eq!(bm.flush_to(&meta).unwrap(), 0);
        bm.clear_range(0, B); // page 0 again
        assert_eq!(bm.flush_to(&meta).unwrap(), 1);
        bm.set_all();
        assert_eq!(bm.flush_to(&meta).unwrap(), 8);
        bm.clear_blocks(100, 50);
        bm.flush_to(&meta).unwrap();
        drop(meta);
        let meta = MetaFile::open(&path).unwrap();
        let loaded = DirtyBitmap::load(&meta).unwrap();
        assert_eq!(loaded.count_dirty(), bm.count_dirty());
        assert_eq!(blocks_of(&loaded), blocks_of(&bm));
    }

    /// `drl resize` of a replicated volume: the bits kept (a partial last word too), the new
    /// blocks clean, the file and the memory grown together, and the grown bitmap reloads.
    #[test]
    fn grow_keeps_the_bits_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let meta = MetaFile::create(&path, &NewMeta::new("r0", "n", 100 * B)).unwrap();
        let bm = DirtyBitmap::load(&meta).unwrap();
        bm.set_blocks(3, 2);
        bm.set_blocks(99, 1); // the old last block, in a partial word
        bm.grow(40_000 * B, &meta).unwrap(); // 2 pages of bitmap
        assert_eq!(bm.blocks(), 40_000);
        assert_eq!(meta.superblock().size_bytes, 40_000 * B);
        assert_eq!(blocks_of(&bm), [3, 4, 99].into());
        assert_eq!(bm.dirty_bytes(), 3 * B);
        bm.set_range(39_999 * B, B);
        assert_eq!(
            bm.flush_to(&meta).unwrap(),
            2,
            "every page written once after a grow"
        );
        bm.grow(50 * B, &meta).unwrap(); // smaller: nothing changes
        assert_eq!(bm.blocks(), 40_000);
        drop(meta);
        let loaded = DirtyBitmap::load(&MetaFile::open(&path).unwrap()).unwrap();
        assert_eq!(blocks_of(&loaded), [3, 4, 99, 39_999].into());
    }

    #[test]
    fn load_clears_stray_bits_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let meta =
            MetaFile::create(&dir.path().join("m"), &NewMeta::new("r0", "n", 100 * B)).unwrap();
        let off = meta.layout().bitmap_offset;
        meta.write_at(&u64::MAX.to_le_bytes(), off + 8, "test")
            .unwrap(); // blocks 64..128
        let bm = DirtyBitmap::load(&meta).unwrap();
        assert_eq!(bm.count_dirty(), 36, "only blocks 64..100 exist");
        assert_eq!(
            bm.flush_to(&meta).unwrap(),
            1,
            "the repaired page is rewritten"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u64, u64),
        Clear(u64, u64),
        SetAll,
        ClearAll,
    }

    fn op(size: u64) -> impl Strategy<Value = Op> {
        let range = (0..size, 0..40 * B);
        prop_oneof![
            8 => range.clone().prop_map(|(o, l)| Op::Set(o, l)),
            8 => range.prop_map(|(o, l)| Op::Clear(o, l)),
            1 => Just(Op::SetAll),
            1 => Just(Op::ClearAll),
        ]
    }

    proptest! {
        #[test]
        fn matches_reference_model(
            extra in 0..B,
            ops in proptest::collection::vec(op(300 * B), 1..60),
        ) {
            // Sector-aligned sizes, often with a partial last block.
            let size = 200 * B + (extra / 512) * 512;
            let bm = DirtyBitmap::new(size, B);
            let blocks = size.div_ceil(B);
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Set(o, l) => {
                        bm.set_range(o, l);
                        if l > 0 {
                            for b in o / B..=((o + l - 1) / B).min(blocks.saturating_sub(1)) {
                                if b < blocks { model.insert(b); }
                            }
                        }
                    }
                    Op::Clear(o, l) => {
                        bm.clear_range(o, l);
                        for b in 0..blocks {
                            let (s, e) = (b * B, ((b + 1) * B).min(size));
                            if o <= s && e <= o + l { model.remove(&b); }
                        }
                    }
                    Op::SetAll => { bm.set_all(); model = (0..blocks).collect(); }
                    Op::ClearAll => { bm.clear_all(); model.clear(); }
                }
                prop_assert_eq!(bm.count_dirty(), model.len() as u64);
                prop_assert_eq!(&blocks_of(&bm), &model);
            }
            // Runs: merged, ordered, and covering exactly the model's blocks.
            let runs: Vec<_> = bm.dirty_runs().collect();
            let mut from_runs = BTreeSet::new();
            let mut total = 0;
            for w in runs.windows(2) {
                prop_assert!(w[0].0 + w[0].1 < w[1].0, "runs not merged or not ordered: {:?}", w);
            }
            for &(o, l) in &runs {
                prop_assert!(l > 0 && o + l <= size);
                total += l;
                for b in o / B..(o + l).div_ceil(B) { from_runs.insert(b); }
            }
            prop_assert_eq!(&from_runs, &model);
            prop_assert_eq!(total, bm.dirty_bytes());
        }
    }
}
