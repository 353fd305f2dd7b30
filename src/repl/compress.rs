//! zstd for frame payloads, cheap enough for every 4 KiB write.
//!
//! Three things made compression the largest cost of a replicated write (measured: 45 % of the
//! Primary's CPU under 4 KiB random writes at QD 32, `perf record`): a new zstd context per
//! frame (`zstd::bulk::compress` allocates and initialises one each call: ~19 % alone), a full
//! compression attempt on every payload whether the data compresses or not, and on the
//! receiver a new decompression context per frame. So:
//! - contexts are per thread and reused ([`compress_if_it_pays`], [`decompress`]);
//! - the output buffer is capped at what would pay (7/8 of the input): a payload that does not
//!   shrink enough fails fast instead of being compressed in full and thrown away;
//! - payloads over [`SAMPLE_BYTES`] are first judged by compressing a sample (their head);
//! - a [`Gate`] backs off after misses: after `n` payloads in a row that did not pay, the next
//!   `2^n - 1` (at most [`SKIP_MAX`]) go out raw without a try, and one that pays resets it. A
//!   stream of incompressible writes therefore costs one attempt per 64 frames, and a stream
//!   that turns compressible is noticed within 64 frames.
//!
//! And a link decides whether to try at all: only while frames wait for its socket
//! ([`crate::repl::link::Link`], `REPL_COMPRESS_BACKLOG_BYTES`). Over a fast link compression
//! saves no time and costs CPU (1 MiB writes of compressible data over loopback: 40 % of the
//! Primary's CPU, and the Secondary's decompression on top).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::limits::REPL_ZSTD_LEVEL;

/// Below this, compression never pays for its header and CPU.
const MIN_BYTES: usize = 64;
/// Payloads larger than this are judged by a sample of this many bytes first.
pub const SAMPLE_BYTES: usize = 16 * 1024;
/// Most payloads sent raw without a try after a run of misses.
pub const SKIP_MAX: u32 = 63;

thread_local! {
    static CCTX: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// The back-off state of one sender (shared by the clones of an encoder).
#[derive(Debug, Default)]
pub struct Gate {
    misses: AtomicU32,
    skip: AtomicU32,
}

impl Gate {
    /// Whether to try compressing the next payload (false: a back-off slot is used up).
    fn try_next(&self) -> bool {
        self.skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_sub(1))
            .is_err()
    }

    fn record(&self, paid: bool) {
        if paid {
            self.misses.store(0, Ordering::Relaxed);
            return;
        }
        let n = (self.misses.fetch_add(1, Ordering::Relaxed) + 1).min(6);
        self.misses.store(n, Ordering::Relaxed);
        self.skip
            .store(((1u32 << n) - 1).min(SKIP_MAX), Ordering::Relaxed);
    }
}

/// zstd with the thread's context into a buffer of at most `cap` bytes; None when the output
/// would not fit (it does not pay) or zstd fails.
fn compress_capped(data: &[u8], cap: usize) -> Option<Vec<u8>> {
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(REPL_ZSTD_LEVEL).ok();
        }
        let mut out = Vec::with_capacity(cap);
        c.as_mut()?.compress_to_buffer(data, &mut out).ok()?;
        Some(out)
    })
}

/// The cap for `len` input bytes: compression must save at least 1/8.
fn pay_cap(len: usize) -> usize {
    len / 8 * 7
}

/// The zstd frame of `data` when it saves at least 1/8 of it, else None (send it raw).
/// Without a gate every payload is tried.
pub fn compress_if_it_pays(data: &[u8], gate: Option<&Gate>) -> Option<Vec<u8>> {
    if data.len() < MIN_BYTES {
        return None;
    }
    if let Some(g) = gate {
        if !g.try_next() {
            return None;
        }
    }
    let sample_pays = data.len() <= SAMPLE_BYTES
        || compress_capped(&data[..SAMPLE_BYTES], pay_cap(SAMPLE_BYTES)).is_some();
    let out = if sample_pays {
        compress_capped(data, pay_cap(data.len()))
    } else {
        None
    };
    if let Some(g) = gate {
        g.record(out.is_some());
    }
    out
}

/// Decompress `payload` into at most `cap` bytes with the thread's context.
pub fn decompress(payload: &[u8], cap: usize) -> Result<Vec<u8>, String> {
    DCTX.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        let dctx = d.as_mut().ok_or("no zstd context")?;
        dctx.decompress(payload, cap).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `len` bytes of xorshift noise (incompressible), the same for the same seed.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn compressible_data_round_trips_and_noise_goes_raw() {
        let zeros = vec![0u8; 4096];
        let c = compress_if_it_pays(&zeros, None).expect("zeros compress");
        assert!(c.len() < 100);
        assert_eq!(decompress(&c, 4096).unwrap(), zeros);
        assert!(compress_if_it_pays(&noise(4096, 1), None).is_none());
        assert!(compress_if_it_pays(&[0u8; 32], None).is_none());
    }

    #[test]
    fn the_cap_bounds_decompression() {
        let c = compress_if_it_pays(&vec![7u8; 65536], None).unwrap();
        assert!(decompress(&c, 4096).is_err());
    }

    #[test]
    fn a_large_payload_is_judged_by_its_sample() {
        // Noise head, zeros after: the sample says no, so it goes raw although the whole
        // would compress; zeros head: compressed.
        let mut v = noise(SAMPLE_BYTES, 2);
        v.resize(1 << 20, 0);
        assert!(compress_if_it_pays(&v, None).is_none());
        let mut w = vec![0u8; SAMPLE_BYTES];
        w.extend(noise(4096, 3));
        w.resize(1 << 20, 0);
        let c = compress_if_it_pays(&w, None).unwrap();
        assert_eq!(decompress(&c, 1 << 20).unwrap(), w);
    }

    #[test]
    fn the_gate_backs_off_after_misses_and_resets_when_it_pays() {
        let g = Gate::default();
        let n = noise(4096, 4);
        let mut tried = 0;
        for _ in 0..1000 {
            let before = g.skip.load(Ordering::Relaxed);
            assert!(compress_if_it_pays(&n, Some(&g)).is_none());
            if before == 0 {
                tried += 1;
            }
        }
        // 1 + 2 + 4 + ... then one try per 64 payloads.
        assert!(
            tried < 30,
            "{tried} attempts for 1000 incompressible payloads"
        );
        // Compressible data is noticed within SKIP_MAX + 1 payloads, and resets the gate.
        let zeros = vec![0u8; 4096];
        let first = (0..=SKIP_MAX)
            .position(|_| compress_if_it_pays(&zeros, Some(&g)).is_some())
            .expect("compressible data noticed");
        assert!(first <= SKIP_MAX as usize);
        assert!(compress_if_it_pays(&zeros, Some(&g)).is_some());
    }
}
