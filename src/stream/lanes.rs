//! What the side-by-side hashers (`md5x4`, `sha256x8`) share: which blocks run in lockstep,
//! and the Merkle–Damgård padding that each message's own tail then finishes with.

/// The whole 64-byte blocks every message holds (they run in lockstep, one message per lane),
/// and the lanes: message `i` in lane `i`, lanes past the last message repeat message 0 (their
/// result is dropped). No lockstep (0 blocks) for fewer than two messages.
pub(super) fn lockstep_lanes<'a, const N: usize>(msgs: &[&'a [u8]]) -> (usize, [&'a [u8]; N]) {
    let common = if msgs.len() >= 2 {
        msgs.iter().map(|m| m.len() / 64).min().unwrap_or(0)
    } else {
        0
    };
    let lanes = std::array::from_fn(|i| msgs.get(i).or(msgs.first()).copied().unwrap_or(&[]));
    (common, lanes)
}

/// A message's whole blocks after the lockstep ones, and its final one or two blocks: the tail
/// (under 64 bytes), 0x80, zeros, and the length in bits as 8 bytes (`len_bits`: little-endian
/// for md5, big-endian for sha256).
pub(super) fn rest_and_final(
    rest: &[u8],
    len_bits: [u8; 8],
) -> (&[[u8; 64]], [[u8; 64]; 2], usize) {
    let (whole, tail) = rest.as_chunks::<64>();
    let mut pad = [[0u8; 64]; 2];
    let flat = pad.as_flattened_mut();
    flat[..tail.len()].copy_from_slice(tail);
    flat[tail.len()] = 0x80;
    let n = if tail.len() < 56 { 1 } else { 2 };
    flat[64 * n - 8..64 * n].copy_from_slice(&len_bits);
    (whole, pad, n)
}

/// Eight 32-byte rows, one per lane, read at `at` of each lane's message, as eight columns:
/// column `j` holds 32-bit word `j` of every lane (an 8x8 transpose of words, in the bytes'
/// own order). The eight-lane loops call it twice per 64-byte block.
///
/// # Safety
/// The CPU must have AVX2, and every lane must hold 32 bytes at `at`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn words_of_eight(
    lanes: &[&[u8]; 8],
    at: usize,
) -> [std::arch::x86_64::__m256i; 8] {
    use std::arch::x86_64::*;
    let r: [__m256i; 8] = std::array::from_fn(|l| {
        let bytes = &lanes[l][at..at + 32];
        // SAFETY: `bytes` is 32 readable bytes; loadu has no alignment requirement.
        unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
    });
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// Test inputs for the hashers: a random buffer of `size` bytes and, for every length in
/// `lens` and every lane count up to `lanes`, a set of messages cut from it (message `j` starts
/// at `j * stride`; lengths mix so that lanes end at different blocks and padding cases).
#[cfg(test)]
pub(super) fn message_sets(
    seed: u64,
    size: usize,
    stride: usize,
    lens: &[usize],
    lanes: usize,
) -> (Vec<u8>, Vec<Vec<std::ops::Range<usize>>>) {
    use rand::{RngCore, SeedableRng};
    let mut big = vec![0u8; size];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut big);
    let mut sets = Vec::new();
    for (k, &l0) in lens.iter().enumerate() {
        for n in 1..=lanes {
            sets.push(
                (0..n)
                    .map(|j| {
                        let l = lens[(k + 3 * j) % lens.len()].max(l0 * (j % 2));
                        j * stride..j * stride + l.min(size - j * stride)
                    })
                    .collect(),
            );
        }
    }
    (big, sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_fits_one_or_two_blocks() {
        let msg = [7u8; 200];
        let (whole, pad, n) = rest_and_final(&msg[..55], [1; 8]);
        assert_eq!((whole.len(), n, pad[0][55], pad[0][56]), (0, 1, 0x80, 1));
        let (whole, pad, n) = rest_and_final(&msg[..56 + 64], [2; 8]);
        assert_eq!(
            (whole.len(), n, pad[0][56], pad[1][63], pad[1][55]),
            (1, 2, 0x80, 2, 0)
        );
        let (c, l) = lockstep_lanes::<4>(&[&msg[..130], &msg[..64]]);
        assert_eq!((c, l[2].len(), l[3].len()), (1, 130, 130));
        assert_eq!(lockstep_lanes::<4>(&[&msg[..]]).0, 0);
    }
}
