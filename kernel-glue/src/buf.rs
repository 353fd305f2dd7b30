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

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every [`AlignedBuf`] allocation, in bytes.
pub const BUF_ALIGN_BYTES: usize = 4096;

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
    /// A zero-filled buffer of `len` bytes (capacity rounded up to the alignment).
    pub fn zeroed(len: usize) -> Self {
        let cap = round_up(len.max(1), BUF_ALIGN_BYTES);
        let layout = Layout::from_size_align(cap, BUF_ALIGN_BYTES).expect("buffer layout");
        // SAFETY: layout has non-zero size; alloc_zeroed returns either null or a valid
        // allocation of `cap` zeroed bytes aligned to BUF_ALIGN_BYTES.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, cap }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = Self::zeroed(data.len());
        b.copy_from_slice(data);
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
    /// Bytes that become visible hold whatever was last written there (zero if never written).
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
        let layout = Layout::from_size_align(self.cap, BUF_ALIGN_BYTES).expect("buffer layout");
        // SAFETY: ptr was allocated in `zeroed` with exactly this layout and is freed once.
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
    #[should_panic]
    fn set_len_beyond_capacity_panics() {
        AlignedBuf::zeroed(10).set_len(4097);
    }
}
