//! Page-aligned byte buffers for O_DIRECT and io_uring.
//!
//! O_DIRECT requires the memory address, the file offset and the length of every transfer to be
//! aligned to the device's DIO alignment (512 or 4096 bytes). [`AlignedBuf`] always allocates on
//! a 4096-byte boundary and rounds its capacity up to a multiple of 4096, so any prefix whose
//! length is a multiple of the DIO alignment can be handed to the kernel as-is.
//!
//! The buffer owns its allocation and is `Send`: it is moved into the io_uring engine for the
//! duration of an operation and moved back on completion, so the kernel never writes into memory
//! that Rust code can observe concurrently.
//!
//! Large buffers (from [`POOL_BUF_BYTES_MIN`] to [`POOL_BUF_BYTES_MAX`]) are recycled: their
//! capacity is rounded up to a power of two, and a dropped one goes back to a process-wide pool
//! (at most [`POOL_BYTES_MAX`] kept) instead of to the allocator. The allocator serves such
//! sizes with fresh `mmap`s, so without the pool every 1 MiB read or write payload costs 256
//! page faults and a `munmap`; with it, a `memset` (or nothing, for [`AlignedBuf::for_overwrite`]).

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Mutex;

/// Alignment of every [`AlignedBuf`] allocation, in bytes.
pub const BUF_ALIGN_BYTES: usize = 4096;
/// Buffers of at least this capacity are recycled through the pool.
pub const POOL_BUF_BYTES_MIN: usize = 64 * 1024;
/// Buffers of at most this capacity are recycled (NBD's largest request).
pub const POOL_BUF_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Bytes of free buffers the pool keeps at most; beyond it, dropped buffers are freed.
pub const POOL_BYTES_MAX: usize = 64 * 1024 * 1024;

const POOL_CLASSES: usize =
    (POOL_BUF_BYTES_MAX.trailing_zeros() - POOL_BUF_BYTES_MIN.trailing_zeros() + 1) as usize;
const _: () = assert!(POOL_BUF_BYTES_MIN.is_power_of_two() && POOL_BUF_BYTES_MAX.is_power_of_two());
const _: () =
    assert!(POOL_BUF_BYTES_MIN >= BUF_ALIGN_BYTES && POOL_BUF_BYTES_MAX <= POOL_BYTES_MAX);

/// A free allocation in the pool (owned by the pool alone).
struct Free(NonNull<u8>);
// SAFETY: a pooled allocation is owned by the pool alone; no other pointer to it exists.
unsafe impl Send for Free {}

struct Pool {
    /// Free buffers per power-of-two class, smallest first.
    classes: [Vec<Free>; POOL_CLASSES],
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    classes: [const { Vec::new() }; POOL_CLASSES],
    bytes: 0,
});

/// The pool class of a capacity, if buffers of that capacity are pooled.
fn class_of(cap: usize) -> Option<usize> {
    (cap.is_power_of_two() && (POOL_BUF_BYTES_MIN..=POOL_BUF_BYTES_MAX).contains(&cap))
        .then(|| (cap.trailing_zeros() - POOL_BUF_BYTES_MIN.trailing_zeros()) as usize)
}

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    // The pool holds no invariant a panic could break half-way (push/pop plus a counter).
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The capacity a buffer of `len` bytes gets.
fn capacity_for(len: usize) -> usize {
    let cap = round_up(len.max(1), BUF_ALIGN_BYTES);
    if cap > POOL_BUF_BYTES_MIN / 2 && cap <= POOL_BUF_BYTES_MAX {
        cap.next_power_of_two().max(POOL_BUF_BYTES_MIN)
    } else {
        cap
    }
}

/// Bytes of free buffers the pool holds now (for tests and statistics).
pub fn pooled_bytes() -> usize {
    pool().bytes
}

/// A heap buffer whose start is aligned to [`BUF_ALIGN_BYTES`] and whose capacity is a multiple
/// of it. `len` bytes are initialised and visible through `Deref`; the whole capacity is always
/// initialised (zeroed at allocation), so growing `len` up to the capacity never exposes
/// uninitialised memory.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like Vec<u8>); no aliasing pointers exist.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads of initialised bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zero-filled buffer of `len` bytes (capacity rounded up to the alignment, and to a
    /// power of two for pooled sizes). Bytes past `len` up to the next alignment boundary are
    /// zero too; further ones (only in recycled buffers) hold old, initialised data.
    pub fn zeroed(len: usize) -> Self {
        let b = Self::for_overwrite(len);
        let zero = round_up(len, BUF_ALIGN_BYTES).min(b.cap);
        // SAFETY: ptr is valid for cap >= zero bytes, owned by b.
        unsafe { std::ptr::write_bytes(b.ptr.as_ptr(), 0, zero) };
        b
    }

    /// A buffer of `len` bytes whose contents are unspecified (initialised, but possibly data
    /// of an earlier use): for reads that overwrite all of it. Never hand its bytes to anyone
    /// before they are overwritten.
    pub fn for_overwrite(len: usize) -> Self {
        let cap = capacity_for(len);
        if let Some(class) = class_of(cap) {
            let mut p = pool();
            if let Some(Free(ptr)) = p.classes[class].pop() {
                p.bytes -= cap;
                return AlignedBuf { ptr, len, cap };
            }
        }
        let layout = Layout::from_size_align(cap, BUF_ALIGN_BYTES).expect("buffer layout");
        // SAFETY: layout has non-zero size; alloc_zeroed returns either null or a valid
        // allocation of `cap` zeroed bytes aligned to BUF_ALIGN_BYTES. (Zeroed so that every
        // byte of every buffer is initialised, whatever `len` later becomes.)
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, cap }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = Self::for_overwrite(data.len());
        b.copy_from_slice(data);
        // As in `zeroed`: zero up to the alignment boundary (O_DIRECT may write it).
        let tail = round_up(data.len(), BUF_ALIGN_BYTES).min(b.cap) - data.len();
        // SAFETY: ptr is valid for cap >= len + tail bytes, owned by b.
        unsafe { std::ptr::write_bytes(b.ptr.as_ptr().add(data.len()), 0, tail) };
        b
    }

    /// Bytes visible through `Deref`.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated bytes (a multiple of [`BUF_ALIGN_BYTES`]).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Change the visible length. Panics if `len` exceeds the capacity (a programmer error).
    /// Bytes that become visible hold whatever was last written there (see [`Self::zeroed`]).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap,
            "AlignedBuf::set_len({len}) beyond capacity {}",
            self.cap
        );
        self.len = len;
    }

    /// Raw pointer for the kernel. Valid for `capacity()` bytes while `self` is alive.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Raw mutable pointer for the kernel. Valid for `capacity()` bytes while `self` is alive.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in Deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Some(class) = class_of(self.cap) {
            let mut p = pool();
            if p.bytes + self.cap <= POOL_BYTES_MAX {
                p.bytes += self.cap;
                p.classes[class].push(Free(self.ptr));
                return;
            }
        }
        let layout = Layout::from_size_align(self.cap, BUF_ALIGN_BYTES).expect("buffer layout");
        // SAFETY: ptr was allocated in `for_overwrite` with exactly this layout (pooled buffers
        // keep their capacity) and is freed once: it is either pooled or freed here.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

/// Round `v` up to a multiple of `align` (a power of two).
pub fn round_up(v: usize, align: usize) -> usize {
    debug_assert!(align.is_power_of_two());
    (v + align - 1) & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let b = AlignedBuf::zeroed(5000);
        assert_eq!(b.as_ptr() as usize % BUF_ALIGN_BYTES, 0);
        assert_eq!(b.capacity(), 8192);
        assert_eq!(b.len(), 5000);
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn set_len_within_capacity() {
        let mut b = AlignedBuf::from_slice(b"hello");
        b.set_len(4096);
        assert_eq!(&b[..5], b"hello");
        assert!(b[5..].iter().all(|&x| x == 0));
    }

    #[test]
    fn large_buffers_are_recycled_and_zeroed_again() {
        // Sizes no other test of this binary uses, so the pool's class is ours alone.
        let len = 6 * 1024 * 1024 + 5; // class 8 MiB
        let mut a = AlignedBuf::zeroed(len);
        assert_eq!(a.capacity(), 8 * 1024 * 1024);
        assert_eq!(a.as_ptr() as usize % BUF_ALIGN_BYTES, 0);
        a.fill(0xa5);
        let addr = a.as_ptr() as usize;
        let before = pooled_bytes();
        drop(a);
        assert_eq!(pooled_bytes(), before + 8 * 1024 * 1024);
        // The same allocation comes back, zeroed over its length and the alignment tail.
        let b = AlignedBuf::zeroed(8 * 1024 * 1024 - 100);
        assert_eq!(b.as_ptr() as usize, addr);
        assert!(b.iter().all(|&x| x == 0));
        drop(b);
        // for_overwrite takes it as it is (old bytes allowed), and sizes outside the pooled
        // range are not rounded.
        let c = AlignedBuf::for_overwrite(8 * 1024 * 1024);
        assert_eq!((c.as_ptr() as usize, c.len()), (addr, 8 * 1024 * 1024));
        assert_eq!(AlignedBuf::zeroed(8192).capacity(), 8192);
        assert_eq!(
            AlignedBuf::zeroed(64 * 1024 * 1024).capacity(),
            64 * 1024 * 1024
        );
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound() {
        let bufs: Vec<_> = (0..(POOL_BYTES_MAX / POOL_BUF_BYTES_MAX) + 3)
            .map(|_| AlignedBuf::zeroed(POOL_BUF_BYTES_MAX))
            .collect();
        drop(bufs);
        assert!(pooled_bytes() <= POOL_BYTES_MAX);
    }

    #[test]
    #[should_panic]
    fn set_len_beyond_capacity_panics() {
        AlignedBuf::zeroed(10).set_len(4097);
    }
}
