//! MD5 of up to four messages at once (SSE2, one message per 32-bit lane), or eight on
//! 256-bit registers with AVX-512VL ([`md5_hex_x8`]).
//!
//! Swift's ETag is the md5 of an object, and md5 is serial within a message: one object costs
//! ~5 CPU cycles per byte however it is computed. Four objects hashed side by side in the four
//! lanes of an SSE2 register cost about a quarter of that per byte, and the stream has several
//! objects in flight. The blocks all messages have run in lockstep; each message's remaining
//! blocks (messages of unequal length) and its padding then finish one by one with the
//! assembly single-message compressor.

#[cfg(target_arch = "x86_64")]
use super::lanes::{lockstep_lanes, rest_and_final, words_of_eight};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// md5 hex of each message (elsewhere than x86_64: one after the other).
#[cfg(not(target_arch = "x86_64"))]
pub fn md5_hex_x4(msgs: &[&[u8]]) -> Vec<String> {
    msgs.iter().map(|m| super::store::md5_hex(m)).collect()
}

#[cfg(not(target_arch = "x86_64"))]
pub fn md5_hex_x4_isa(msgs: &[&[u8]], _isa: Isa) -> Vec<String> {
    md5_hex_x4(msgs)
}

#[cfg(target_arch = "x86_64")]
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];
#[cfg(target_arch = "x86_64")]
const S: [[i32; 4]; 4] = [
    [7, 12, 17, 22],
    [5, 9, 14, 20],
    [4, 11, 16, 23],
    [6, 10, 15, 21],
];
#[cfg(target_arch = "x86_64")]
const INIT: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

/// md5 hex of each message (at most 4; fewer is fine), with the best instruction set here.
#[cfg(target_arch = "x86_64")]
pub fn md5_hex_x4(msgs: &[&[u8]]) -> Vec<String> {
    md5_hex_x4_isa(msgs, Isa::best())
}

/// [`md5_hex_x4`] with a given instruction set (benchmarks and tests compare them).
///
/// # Panics
/// With more than four messages, or an instruction set this CPU lacks.
#[cfg(target_arch = "x86_64")]
pub fn md5_hex_x4_isa(msgs: &[&[u8]], isa: Isa) -> Vec<String> {
    assert!(msgs.len() <= 4, "md5_hex_x4 takes at most 4 messages");
    assert!(isa.available(), "this CPU lacks {isa:?}");
    if msgs.len() < 2 {
        return msgs.iter().map(|m| super::store::md5_hex(m)).collect();
    }
    let (common, lanes) = lockstep_lanes::<4>(msgs);
    let mut states = [INIT; 4];
    if common > 0 {
        states = lockstep(isa, lanes, common);
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| finish(&mut states[i], &m[common * 64..], m.len() as u64))
        .collect()
}

#[cfg(target_arch = "x86_64")]
/// The rest of one message after the lockstep blocks: whole blocks, then the padding.
fn finish(state: &mut [u32; 4], rest: &[u8], total_len: u64) -> String {
    let (whole, last, n) = rest_and_final(rest, total_len.wrapping_mul(8).to_le_bytes());
    md5_asm::compress(state, whole);
    md5_asm::compress(state, &last[..n]);
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(state.iter()) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    hex::encode(out)
}

/// The lockstep loop over `blocks` 64-byte blocks of four messages side by side, written once
/// for every instruction set: `$rotl(x, s)` rotates each lane left by `s`; `$f`, `$g`, `$h`,
/// `$i` are md5's four boolean functions of (b, c, d).
#[cfg(target_arch = "x86_64")]
macro_rules! lockstep_body {
    ($lanes:expr, $blocks:expr, $rotl:expr, $f:expr, $g:expr, $h:expr, $i:expr) => {{
        let lanes: [&[u8]; 4] = $lanes;
        let init = |w: u32| _mm_set1_epi32(w as i32);
        let (mut a0, mut b0, mut c0, mut d0) =
            (init(INIT[0]), init(INIT[1]), init(INIT[2]), init(INIT[3]));
        for blk in 0..$blocks {
            let base = blk * 64;
            // Rows: 16 bytes (4 words) of each lane; a 4x4 transpose makes each word a column.
            let mut m = [_mm_setzero_si128(); 16];
            for q in 0..4 {
                let at = base + 16 * q;
                let r: [__m128i; 4] = std::array::from_fn(|l| {
                    let bytes = &lanes[l][at..at + 16];
                    // SAFETY: `bytes` is 16 readable bytes; loadu has no alignment requirement.
                    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
                });
                let t0 = _mm_unpacklo_epi32(r[0], r[1]);
                let t1 = _mm_unpacklo_epi32(r[2], r[3]);
                let t2 = _mm_unpackhi_epi32(r[0], r[1]);
                let t3 = _mm_unpackhi_epi32(r[2], r[3]);
                m[4 * q] = _mm_unpacklo_epi64(t0, t1);
                m[4 * q + 1] = _mm_unpackhi_epi64(t0, t1);
                m[4 * q + 2] = _mm_unpacklo_epi64(t2, t3);
                m[4 * q + 3] = _mm_unpackhi_epi64(t2, t3);
            }
            let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
            macro_rules! round {
                ($r:expr, $fun:expr, $word:expr) => {
                    for k in 0..16 {
                        let i = 16 * $r + k;
                        let t = _mm_add_epi32(
                            _mm_add_epi32(a, $fun(b, c, d)),
                            _mm_add_epi32(_mm_set1_epi32(K[i] as i32), m[$word(k)]),
                        );
                        a = d;
                        d = c;
                        c = b;
                        b = _mm_add_epi32(b, $rotl(t, S[$r][k % 4]));
                    }
                };
            }
            round!(0, $f, |k: usize| k);
            round!(1, $g, |k: usize| (5 * k + 1) % 16);
            round!(2, $h, |k: usize| (3 * k + 5) % 16);
            round!(3, $i, |k: usize| (7 * k) % 16);
            a0 = _mm_add_epi32(a0, a);
            b0 = _mm_add_epi32(b0, b);
            c0 = _mm_add_epi32(c0, c);
            d0 = _mm_add_epi32(d0, d);
        }
        let lanes_of = |v: __m128i| -> [u32; 4] {
            let mut out = [0u32; 4];
            // SAFETY: `out` is 16 bytes; storeu has no alignment requirement.
            unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), v) };
            out
        };
        let (a, b, c, d) = (lanes_of(a0), lanes_of(b0), lanes_of(c0), lanes_of(d0));
        std::array::from_fn(|i| [a[i], b[i], c[i], d[i]])
    }};
}

/// `blocks` 64-byte blocks of four messages side by side; the four states. SSE2 has no
/// rotate and no three-input logic: a rotate costs three instructions, F, G and I three each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
unsafe fn lockstep_sse2(lanes: [&[u8]; 4], blocks: usize) -> [[u32; 4]; 4] {
    let ones = _mm_set1_epi32(-1);
    lockstep_body!(
        lanes,
        blocks,
        |x, s| _mm_or_si128(
            _mm_sll_epi32(x, _mm_cvtsi32_si128(s)),
            _mm_srl_epi32(x, _mm_cvtsi32_si128(32 - s))
        ),
        |b, c, d| _mm_or_si128(_mm_and_si128(b, c), _mm_andnot_si128(b, d)),
        |b, c, d| _mm_or_si128(_mm_and_si128(b, d), _mm_andnot_si128(d, c)),
        |b, c, d| _mm_xor_si128(_mm_xor_si128(b, c), d),
        |b, c, d| _mm_xor_si128(c, _mm_or_si128(b, _mm_xor_si128(d, ones)))
    )
}

/// The same with AVX-512VL on 128-bit registers: one `vprolvd` per rotate and one
/// `vpternlogd` per boolean function (truth tables over b = 0xF0, c = 0xCC, d = 0xAA).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn lockstep_avx512(lanes: [&[u8]; 4], blocks: usize) -> [[u32; 4]; 4] {
    lockstep_body!(
        lanes,
        blocks,
        |x, s| _mm_rolv_epi32(x, _mm_set1_epi32(s)),
        |b, c, d| _mm_ternarylogic_epi32::<0xCA>(b, c, d), // b ? c : d
        |b, c, d| _mm_ternarylogic_epi32::<0xE4>(b, c, d), // d ? b : c
        |b, c, d| _mm_ternarylogic_epi32::<0x96>(b, c, d), // b ^ c ^ d
        |b, c, d| _mm_ternarylogic_epi32::<0x39>(b, c, d)  // c ^ (b | !d)
    )
}

/// `blocks` 64-byte blocks of eight messages side by side on 256-bit registers (AVX-512VL for
/// the rotate and the three-input functions); the eight states. md5's steps are serial (each
/// one's F needs the b the step before made), so one register of lanes is bound by the chain's
/// latency, not by the ports: twice the lanes cost about the same time per block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl")]
unsafe fn lockstep8_avx512(lanes: [&[u8]; 8], blocks: usize) -> [[u32; 4]; 8] {
    let init = |w: u32| _mm256_set1_epi32(w as i32);
    let (mut a0, mut b0, mut c0, mut d0) =
        (init(INIT[0]), init(INIT[1]), init(INIT[2]), init(INIT[3]));
    for blk in 0..blocks {
        let base = blk * 64;
        // m[j] holds word j of every lane: two 8x8 transposes of 32-bit words (as sha256x8,
        // without its byte swap: md5's words are little-endian).
        let mut m = [_mm256_setzero_si256(); 16];
        for half in 0..2 {
            // SAFETY: AVX2 is enabled here; every lane holds `blocks` whole blocks.
            let cols = unsafe { words_of_eight(&lanes, base + 32 * half) };
            m[8 * half..8 * half + 8].copy_from_slice(&cols);
        }
        let (mut a, mut b, mut c, mut d) = (a0, b0, c0, d0);
        macro_rules! round {
            ($r:expr, $tt:literal, $word:expr) => {
                for k in 0..16 {
                    let i = 16 * $r + k;
                    let t = _mm256_add_epi32(
                        _mm256_add_epi32(a, _mm256_ternarylogic_epi32::<$tt>(b, c, d)),
                        _mm256_add_epi32(_mm256_set1_epi32(K[i] as i32), m[$word(k)]),
                    );
                    a = d;
                    d = c;
                    c = b;
                    b = _mm256_add_epi32(b, _mm256_rolv_epi32(t, _mm256_set1_epi32(S[$r][k % 4])));
                }
            };
        }
        // The truth tables as in `lockstep_avx512` (b = 0xF0, c = 0xCC, d = 0xAA).
        round!(0, 0xCA, |k: usize| k);
        round!(1, 0xE4, |k: usize| (5 * k + 1) % 16);
        round!(2, 0x96, |k: usize| (3 * k + 5) % 16);
        round!(3, 0x39, |k: usize| (7 * k) % 16);
        a0 = _mm256_add_epi32(a0, a);
        b0 = _mm256_add_epi32(b0, b);
        c0 = _mm256_add_epi32(c0, c);
        d0 = _mm256_add_epi32(d0, d);
    }
    let lanes_of = |v: __m256i| -> [u32; 8] {
        let mut out = [0u32; 8];
        // SAFETY: `out` is 32 bytes; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
        out
    };
    let (a, b, c, d) = (lanes_of(a0), lanes_of(b0), lanes_of(c0), lanes_of(d0));
    std::array::from_fn(|i| [a[i], b[i], c[i], d[i]])
}

/// md5 hex of each message (at most [`MD5_LANES_MAX`]): eight side by side on 256-bit
/// registers where the CPU has AVX-512VL and there are more than four, else four at a time.
///
/// # Panics
/// With more than eight messages.
#[cfg(target_arch = "x86_64")]
pub fn md5_hex_x8(msgs: &[&[u8]]) -> Vec<String> {
    assert!(
        msgs.len() <= MD5_LANES_MAX,
        "md5_hex_x8 takes at most 8 messages"
    );
    if msgs.len() <= 4 || Isa::best() != Isa::Avx512 {
        return msgs.chunks(4).flat_map(md5_hex_x4).collect();
    }
    let (common, lanes) = lockstep_lanes::<8>(msgs);
    let mut states = [INIT; 8];
    if common > 0 {
        // SAFETY: `Isa::best` found AVX-512F and VL (AVX2 comes with them); every lane holds
        // `common` whole blocks.
        states = unsafe { lockstep8_avx512(lanes, common) };
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| finish(&mut states[i], &m[common * 64..], m.len() as u64))
        .collect()
}

/// md5 hex of each message (at most eight; elsewhere than x86_64: one after the other).
#[cfg(not(target_arch = "x86_64"))]
pub fn md5_hex_x8(msgs: &[&[u8]]) -> Vec<String> {
    assert!(
        msgs.len() <= MD5_LANES_MAX,
        "md5_hex_x8 takes at most 8 messages"
    );
    md5_hex_x4(msgs)
}

/// The most messages [`md5_hex_x8`] hashes side by side.
pub const MD5_LANES_MAX: usize = 8;

/// How many messages this CPU hashes side by side for the cost of one: eight with AVX-512VL,
/// else four. A stream gathers this many objects before it hashes them.
pub fn lanes_here() -> usize {
    #[cfg(target_arch = "x86_64")]
    if Isa::best() == Isa::Avx512 {
        return MD5_LANES_MAX;
    }
    4
}

/// An instruction set for the lockstep loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Sse2,
    /// AVX-512F with VL.
    Avx512,
}

impl Isa {
    /// The best this CPU runs; decided once.
    pub fn best() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            // AVX2 too: the eight-lane loop's loads and shuffles are AVX2's, and a VM's CPUID
            // may offer AVX-512 without it.
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
            {
                return Isa::Avx512;
            }
            Isa::Sse2
        })
    }

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        self == Isa::Sse2 || Isa::best() == Isa::Avx512
    }
}

#[cfg(target_arch = "x86_64")]
fn lockstep(isa: Isa, lanes: [&[u8]; 4], blocks: usize) -> [[u32; 4]; 4] {
    match isa {
        // SAFETY: `available` checked the CPU; every lane holds `blocks` blocks.
        Isa::Avx512 => unsafe { lockstep_avx512(lanes, blocks) },
        // SAFETY: SSE2 is part of the x86_64 baseline; every lane holds `blocks` blocks.
        Isa::Sse2 => unsafe { lockstep_sse2(lanes, blocks) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::store::md5_hex;

    #[test]
    fn equals_single_md5_for_all_lengths_and_lane_counts() {
        let lens = [
            0usize, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 4096, 300_000,
        ];
        let (big, sets) = super::super::lanes::message_sets(11, 300_000, 7, &lens, 4);
        for set in sets {
            let msgs: Vec<&[u8]> = set.into_iter().map(|r| &big[r]).collect();
            let want: Vec<String> = msgs.iter().map(|m| md5_hex(m)).collect();
            for isa in [Isa::Sse2, Isa::Avx512]
                .into_iter()
                .filter(|i| i.available())
            {
                assert_eq!(
                    md5_hex_x4_isa(&msgs, isa),
                    want,
                    "{isa:?}, lengths {:?}",
                    msgs.iter().map(|m| m.len()).collect::<Vec<_>>()
                );
            }
        }
        assert_eq!(
            md5_hex_x4(&[b"", b"abc"])[1],
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn eight_lanes_equal_single_md5_for_all_lengths_and_lane_counts() {
        let lens = [
            0usize, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 4096, 300_000,
        ];
        let (big, sets) = super::super::lanes::message_sets(13, 300_000, 7, &lens, 8);
        for set in sets {
            let msgs: Vec<&[u8]> = set.into_iter().map(|r| &big[r]).collect();
            let want: Vec<String> = msgs.iter().map(|m| md5_hex(m)).collect();
            assert_eq!(
                md5_hex_x8(&msgs),
                want,
                "lengths {:?}",
                msgs.iter().map(|m| m.len()).collect::<Vec<_>>()
            );
        }
    }
}
