//! The CPU a snapshot stream spends per byte on hashing: the digest of every chunk (the
//! manifest's content address: blake3 from version 3; sha256, eight chunks side by side, in
//! older chains), and md5 of every object (Swift's ETag), four or eight objects side by side.
//!
//! Run: `cargo bench --bench stream_hashing`. Compare within one run (the machine is shared):
//! `md5/x4-avx512` against `md5/x4-sse2` and `md5/one` (the md-5 crate's assembly, one message);
//! `md5-eight/x8` (eight objects on 256-bit registers) against `md5-eight/x4-twice`;
//! `sha256/x8-avx512` against `sha256/one` (the sha2 crate, SHA-NI where the CPU has it), and
//! `blake3/one` against both.
//! Throughput is bytes of message hashed per second, summed over the lanes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use drl::stream::md5x4::{md5_hex_x4_isa, md5_hex_x8, Isa};
use drl::stream::sha256x8;
use md5::{Digest as _, Md5};
use rand::{RngCore, SeedableRng};
use sha2::Sha256;

/// One object of the default size would take long per sample; 4 MiB shows the same per-byte cost.
const MSG: usize = 4 << 20;

fn md5x4_best(msgs: &[&[u8]]) -> Vec<String> {
    md5_hex_x4_isa(msgs, Isa::best())
}

fn hashing(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let msgs: Vec<Vec<u8>> = (0..4)
        .map(|_| {
            let mut v = vec![0u8; MSG];
            rng.fill_bytes(&mut v);
            v
        })
        .collect();
    let refs: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();

    let mut g = c.benchmark_group("md5");
    g.throughput(Throughput::Bytes((4 * MSG) as u64));
    g.bench_function("one", |b| {
        b.iter(|| refs.iter().map(Md5::digest).collect::<Vec<_>>())
    });
    for isa in [Isa::Sse2, Isa::Avx512] {
        if !isa.available() {
            eprintln!("md5/x4-{isa:?}: this CPU lacks it, skipped");
            continue;
        }
        let name = format!("x4-{}", format!("{isa:?}").to_lowercase());
        g.bench_with_input(BenchmarkId::from_parameter(name), &isa, |b, &isa| {
            b.iter(|| md5_hex_x4_isa(&refs, isa))
        });
    }
    g.finish();

    // Eight messages: the first four again.
    let eight: Vec<&[u8]> = refs.iter().chain(refs.iter()).copied().collect();
    let mut g = c.benchmark_group("md5-eight");
    g.throughput(Throughput::Bytes((8 * MSG) as u64));
    g.bench_function("x4-twice", |b| {
        b.iter(|| eight.chunks(4).flat_map(md5x4_best).collect::<Vec<_>>())
    });
    g.bench_function("x8", |b| b.iter(|| md5_hex_x8(&eight)));
    g.finish();

    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes((8 * MSG) as u64));
    g.bench_function("one", |b| {
        b.iter(|| eight.iter().map(Sha256::digest).collect::<Vec<_>>())
    });
    if sha256x8::lanes_available() {
        g.bench_function("x8-avx512", |b| {
            b.iter(|| sha256x8::sha256_x8_with(&eight, true))
        });
    } else {
        eprintln!("sha256/x8-avx512: this CPU lacks AVX-512VL, skipped");
    }
    g.finish();

    // Manifest version 3's content address, one message at a time (its SIMD works within one
    // message), against the sha256 rows above.
    let mut g = c.benchmark_group("blake3");
    g.throughput(Throughput::Bytes((8 * MSG) as u64));
    g.bench_function("one", |b| {
        b.iter(|| eight.iter().map(|m| blake3::hash(m)).collect::<Vec<_>>())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = hashing
}
criterion_main!(benches);
