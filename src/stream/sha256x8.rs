//! SHA-256 of up to eight messages at once (AVX-512VL on 256-bit registers, one message per
//! 32-bit lane).
//!
//! Every chunk of a stream is hashed (the manifest's checksum, checked again on restore), and
//! sha256 is serial within a message. With SHA-NI one core hashes ~1.6 GiB/s; eight chunks side
//! by side in the lanes of a ymm register, with one `vprord` per rotate and one `vpternlogd` per
//! three-input function, hash about twice that. The blocks all messages have run in lockstep;
//! each message's remaining blocks and its padding then finish one by one with the `sha2`
//! crate's compressor (SHA-NI where the CPU has it). Without AVX-512VL every message is hashed
//! by `sha2` alone.

use super::lanes::{lockstep_lanes, rest_and_final, words_of_eight};
use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];
const INIT: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Whether this CPU runs the eight-lane loop.
pub fn lanes_available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// sha256 of each message (at most 8; fewer is fine): side by side where the CPU can, else one
/// after the other.
///
/// # Panics
/// With more than eight messages.
pub fn sha256_x8(msgs: &[&[u8]]) -> Vec<[u8; 32]> {
    sha256_x8_with(msgs, lanes_available())
}

/// [`sha256_x8`], choosing the way (benchmarks and tests compare them).
///
/// # Panics
/// With more than eight messages, or `lanes` on a CPU without AVX-512VL.
pub fn sha256_x8_with(msgs: &[&[u8]], lanes: bool) -> Vec<[u8; 32]> {
    assert!(msgs.len() <= 8, "sha256_x8 takes at most 8 messages");
    assert!(!lanes || lanes_available(), "this CPU lacks AVX-512VL");
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    let (common, l) = lockstep_lanes::<8>(msgs);
    let common = if lanes { common } else { 0 };
    #[allow(unused_mut)]
    let mut states = [INIT; 8];
    #[cfg(target_arch = "x86_64")]
    if common > 0 {
        // SAFETY: `lanes_available` checked the CPU; every lane holds `common` whole blocks.
        states = unsafe { lockstep(l, common) };
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| finish(&mut states[i], &m[common * 64..], m.len() as u64))
        .collect()
}

/// The rest of one message after the lockstep blocks: whole blocks, then the padding.
fn finish(state: &mut [u32; 8], rest: &[u8], total_len: u64) -> [u8; 32] {
    let (whole, last, n) = rest_and_final(rest, total_len.wrapping_mul(8).to_be_bytes());
    sha2::compress256(state, as_generic(whole));
    sha2::compress256(state, as_generic(&last[..n]));
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state.iter()) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// Blocks as the `sha2` compressor takes them.
fn as_generic(blocks: &[[u8; 64]]) -> &[GenericArray<u8, U64>] {
    // SAFETY: GenericArray<u8, U64> is a transparent [u8; 64]: same size, alignment 1.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), blocks.len()) }
}

/// `blocks` 64-byte blocks of eight messages side by side; the eight states.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl")]
unsafe fn lockstep(lanes: [&[u8]; 8], blocks: usize) -> [[u32; 8]; 8] {
    // Big-endian words: reverse the bytes of each 32-bit lane.
    let bswap = _mm256_setr_epi8(
        3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12, 3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8,
        15, 14, 13, 12,
    );
    let big_s0 = |x| {
        _mm256_ternarylogic_epi32::<0x96>(
            _mm256_ror_epi32::<2>(x),
            _mm256_ror_epi32::<13>(x),
            _mm256_ror_epi32::<22>(x),
        )
    };
    let big_s1 = |x| {
        _mm256_ternarylogic_epi32::<0x96>(
            _mm256_ror_epi32::<6>(x),
            _mm256_ror_epi32::<11>(x),
            _mm256_ror_epi32::<25>(x),
        )
    };
    let small_s0 = |x| {
        _mm256_ternarylogic_epi32::<0x96>(
            _mm256_ror_epi32::<7>(x),
            _mm256_ror_epi32::<18>(x),
            _mm256_srli_epi32::<3>(x),
        )
    };
    let small_s1 = |x| {
        _mm256_ternarylogic_epi32::<0x96>(
            _mm256_ror_epi32::<17>(x),
            _mm256_ror_epi32::<19>(x),
            _mm256_srli_epi32::<10>(x),
        )
    };
    let add = |a, b| _mm256_add_epi32(a, b);
    let mut st: [__m256i; 8] = std::array::from_fn(|i| _mm256_set1_epi32(INIT[i] as i32));
    for blk in 0..blocks {
        let base = blk * 64;
        // w[j] holds word j of every lane: two 8x8 transposes of 32-bit words.
        let mut w = [_mm256_setzero_si256(); 16];
        for half in 0..2 {
            let at = base + 32 * half;
            // SAFETY: AVX2 is enabled here; every lane holds `blocks` whole blocks.
            let cols = unsafe { words_of_eight(&lanes, at) };
            for (j, c) in cols.into_iter().enumerate() {
                w[8 * half + j] = _mm256_shuffle_epi8(c, bswap);
            }
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = st;
        for t in 0..64 {
            let wt = if t < 16 {
                w[t]
            } else {
                let x = add(
                    add(small_s1(w[(t - 2) % 16]), w[(t - 7) % 16]),
                    add(small_s0(w[(t - 15) % 16]), w[t % 16]),
                );
                w[t % 16] = x;
                x
            };
            let ch = _mm256_ternarylogic_epi32::<0xCA>(e, f, g); // e ? f : g
            let maj = _mm256_ternarylogic_epi32::<0xE8>(a, b, c); // majority
            let t1 = add(
                add(h, big_s1(e)),
                add(ch, add(_mm256_set1_epi32(K[t] as i32), wt)),
            );
            let t2 = add(big_s0(a), maj);
            h = g;
            g = f;
            f = e;
            e = add(d, t1);
            d = c;
            c = b;
            b = a;
            a = add(t1, t2);
        }
        for (s, v) in st.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = add(*s, v);
        }
    }
    let mut words = [[0u32; 8]; 8]; // [state word][lane]
    for (row, v) in words.iter_mut().zip(st) {
        // SAFETY: `row` is 32 bytes; storeu has no alignment requirement.
        unsafe { _mm256_storeu_si256(row.as_mut_ptr().cast(), v) };
    }
    std::array::from_fn(|lane| std::array::from_fn(|i| words[i][lane]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn equals_sha2_for_all_lengths_and_lane_counts() {
        let lens = [
            0usize, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 4096, 131_072, 199_000,
        ];
        let (big, sets) = super::super::lanes::message_sets(5, 200_000, 5, &lens, 8);
        for set in sets {
            let msgs: Vec<&[u8]> = set.into_iter().map(|r| &big[r]).collect();
            let want: Vec<[u8; 32]> = msgs.iter().map(|m| Sha256::digest(m).into()).collect();
            for lanes in [false, true] {
                if lanes && !lanes_available() {
                    continue;
                }
                assert_eq!(
                    sha256_x8_with(&msgs, lanes),
                    want,
                    "lanes {lanes}, lengths {:?}",
                    msgs.iter().map(|m| m.len()).collect::<Vec<_>>()
                );
            }
        }
        assert_eq!(
            hex::encode(sha256_x8(&[b"abc", b"abc"])[1]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
