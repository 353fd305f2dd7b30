//! Tests of the frame codec: round trips, every rejection path, and proptests over random
//! bytes and single-bit flips of valid frames.

use bytes::{Bytes, BytesMut};
use drbd_compat::{DiskState, Role};
use proptest::prelude::*;

use crate::limits::{REPL_FRAME_DATA_BYTES_MAX, REPL_FRAME_PAYLOAD_BYTES_MAX};
use crate::repl::frame::{Frame, FrameType, Hello, RangeWrite, VerifyRun};
use crate::repl::gen::GenIds;
use crate::repl::wire::*;

const RES: &str = "r0";

fn hello() -> Hello {
    Hello {
        version_min: 1,
        version_max: 1,
        features: features::ALL,
        resource: RES.into(),
        size_bytes: 1 << 30,
        node_name: "site-a".into(),
        gen: GenIds {
            current: 0xAAAA,
            bitmap: 0,
            history: [0x1, 0],
        },
        dirty_bits: 7,
        role: Role::Primary,
        disk: DiskState::UpToDate,
        nonce: [9; 32],
        group_sizes: Vec::new(),
    }
}

fn sample_frames() -> Vec<Frame> {
    vec![
        Frame::Hello(Box::new(hello())),
        Frame::AuthResponse { mac: [3; 32] },
        Frame::AuthOk,
        Frame::Refuse {
            reason: "wrong secret".into(),
        },
        Frame::Data {
            vol: 3,
            seq: 5,
            epoch: 2,
            offset: 4096,
            fua: true,
            data: Bytes::from(vec![0xab; 4096]),
        },
        Frame::Data {
            vol: 0,
            seq: 6,
            epoch: 2,
            offset: 0,
            fua: false,
            data: Bytes::from_static(b"hello"),
        },
        Frame::Trim(RangeWrite {
            vol: 1,
            seq: 7,
            epoch: 2,
            offset: 8192,
            len: 1 << 20,
            fua: false,
        }),
        Frame::Zeroes(RangeWrite {
            vol: 0,
            seq: 8,
            epoch: 3,
            offset: 0,
            len: 4096,
            fua: true,
        }),
        Frame::Barrier { epoch: 3 },
        Frame::BarrierAck { epoch: 3 },
        Frame::BitmapChunk {
            first_bit: 64,
            bit_count: 13,
            last: true,
            bits: Bytes::from_static(&[0xff, 0x1f]),
        },
        Frame::ResyncRequest {
            offset: 1 << 20,
            len: 65536,
        },
        Frame::ResyncData {
            offset: 1 << 20,
            data: Bytes::from(vec![1u8; 8192]),
        },
        Frame::ResyncDone,
        Frame::VerifyRequest {
            run: VerifyRun::Sender,
            id: 0x5eed,
            offset: 2 << 20,
            len: 1 << 20,
        },
        Frame::VerifyDigests {
            run: VerifyRun::Receiver,
            id: 0x5eed,
            offset: 2 << 20,
            len: 3 * 4096 + 512,
            digests: Bytes::from(vec![9u8; 4 * crate::limits::REPL_VERIFY_DIGEST_BYTES]),
        },
        Frame::VerifyResult {
            run: VerifyRun::Sender,
            id: 0x5eed,
            offset: 2 << 20,
            len: 1 << 20,
            differ: Bytes::from(vec![0x81u8; 32]),
        },
        Frame::VerifyDone { id: 0x5eed },
        Frame::StateChange {
            role: Role::Secondary,
            disk: DiskState::Outdated,
            ahead: false,
        },
        Frame::StateChange {
            role: Role::Primary,
            disk: DiskState::UpToDate,
            ahead: true,
        },
        Frame::Ping { seq: 42 },
        Frame::PingAck { seq: 42 },
        Frame::Disconnect {
            reason: "bye".into(),
        },
        Frame::VolumeAdd {
            vol: 1,
            size_bytes: 256 << 20,
        },
    ]
}

fn codec(zstd: bool) -> (Encoder, Decoder) {
    let mut e = Encoder::new(resource_id(RES));
    let mut d = Decoder::new(resource_id(RES));
    e.set_zstd(zstd);
    d.set_zstd(zstd);
    (e, d)
}

/// Data frame 1 of epoch 1 at offset 0: `len` zero bytes (compresses well).
fn zero_data(len: usize) -> Frame {
    Frame::Data {
        vol: 0,
        seq: 1,
        epoch: 1,
        offset: 0,
        fua: false,
        data: Bytes::from(vec![0u8; len]),
    }
}

fn encode(e: &Encoder, f: &Frame) -> BytesMut {
    let mut b = BytesMut::new();
    e.encode(f, &mut b).unwrap();
    b
}

/// Re-sign a header after editing it, so the test reaches the check after the crc.
fn resign(buf: &mut BytesMut, edit: impl FnOnce(&mut FrameHeader)) {
    let mut hb = [0u8; HEADER_BYTES];
    hb.copy_from_slice(&buf[..HEADER_BYTES]);
    let mut h = FrameHeader::from_bytes(&hb).unwrap();
    edit(&mut h);
    buf[..HEADER_BYTES].copy_from_slice(&h.to_bytes());
}

#[test]
fn every_frame_type_round_trips_with_and_without_zstd() {
    for zstd in [false, true] {
        let (e, mut d) = codec(zstd);
        for f in sample_frames() {
            let mut b = encode(&e, &f);
            assert_eq!(d.decode(&mut b).unwrap().as_ref(), Some(&f), "zstd={zstd}");
            assert!(b.is_empty());
        }
    }
}

#[test]
fn stream_fed_byte_by_byte_yields_the_same_frames() {
    let (e, mut d) = codec(true);
    let mut all = BytesMut::new();
    for f in sample_frames() {
        e.encode(&f, &mut all).unwrap();
    }
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for byte in all.iter() {
        buf.extend_from_slice(&[*byte]);
        while let Some(f) = d.decode(&mut buf).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, sample_frames());
}

#[test]
fn header_is_64_bytes_and_compressible_data_is_compressed() {
    let (e, _) = codec(true);
    let f = zero_data(65536);
    let b = encode(&e, &f);
    assert!(
        b.len() < HEADER_BYTES + 65536 / 8,
        "zeroes must compress, got {}",
        b.len()
    );
    assert_eq!(b[7] & flags::ZSTD, flags::ZSTD);
    // Random data does not pay: sent raw, flag clear.
    let noise = crate::repl::compress::tests::noise(65536, 0x9E37_79B9_7F4A_7C15);
    let f = Frame::Data {
        vol: 0,
        seq: 2,
        epoch: 1,
        offset: 0,
        fua: false,
        data: Bytes::from(noise),
    };
    let b = encode(&e, &f);
    assert_eq!(b.len(), HEADER_BYTES + 65536);
    assert_eq!(b[7] & flags::ZSTD, 0);
}

#[test]
fn compressed_frame_refused_when_not_negotiated() {
    let (e, _) = codec(true);
    let (_, mut plain) = codec(false);
    let f = zero_data(4096);
    let mut b = encode(&e, &f);
    assert!(matches!(
        plain.decode(&mut b),
        Err(WireError::CompressionNotNegotiated { .. })
    ));
}

#[test]
fn bad_magic_is_named_in_hex() {
    let (e, mut d) = codec(false);
    let mut b = encode(&e, &Frame::AuthOk);
    b[0] = b'X';
    let err = d.decode(&mut b).unwrap_err();
    assert!(matches!(err, WireError::BadMagic { .. }));
    assert!(err.to_string().starts_with("bad magic 0x"), "{err}");
}

#[test]
fn huge_length_is_refused_before_waiting_for_the_payload() {
    let (e, mut d) = codec(false);
    let mut b = encode(&e, &Frame::AuthOk);
    resign(&mut b, |h| h.payload_len = u32::MAX);
    let err = d.decode(&mut b).unwrap_err();
    assert_eq!(
        err,
        WireError::PayloadTooLarge {
            len: u32::MAX as u64,
            max: REPL_FRAME_PAYLOAD_BYTES_MAX
        }
    );
    assert!(
        b.capacity() < 1 << 20,
        "nothing reserved for a refused length"
    );
}

#[test]
fn length_is_not_trusted_before_the_header_crc() {
    let (e, mut d) = codec(false);
    let mut b = encode(&e, &Frame::AuthOk);
    b[16..20].copy_from_slice(&u32::MAX.to_le_bytes()); // no re-sign
    assert!(matches!(
        d.decode(&mut b),
        Err(WireError::HeaderChecksum { .. })
    ));
}

#[test]
fn header_checks_name_the_problem() {
    let (e, mut d) = codec(false);
    type Edit = Box<dyn Fn(&mut FrameHeader)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|h| h.frame_type = 99), "unknown frame type 99"),
        (
            Box::new(|h| h.reserved[3] = 1),
            "reserved header bytes are not zero",
        ),
        // Only Data, Trim and Zeroes name a volume (consistency groups).
        (
            Box::new(|h| h.set_volume(1)),
            "reserved header bytes are not zero",
        ),
        (Box::new(|h| h.version = 2), "unsupported wire version 2"),
        (
            Box::new(|h| h.flags = flags::FUA),
            "flags 0x02 not allowed on a Ping frame",
        ),
        (
            Box::new(|h| h.epoch = 5),
            "header field epoch is 5, must be 0",
        ),
        (Box::new(|h| h.resource_id ^= 1), "frame for resource id"),
    ];
    for (edit, msg) in cases {
        let mut b = encode(&e, &Frame::Ping { seq: 1 });
        resign(&mut b, edit);
        let err = d.decode(&mut b).unwrap_err().to_string();
        assert!(err.contains(msg), "{err:?} should contain {msg:?}");
    }
}

#[test]
fn payload_crc_is_checked_before_decoding() {
    let (e, mut d) = codec(false);
    let mut b = encode(
        &e,
        &Frame::Data {
            vol: 0,
            seq: 1,
            epoch: 1,
            offset: 0,
            fua: false,
            data: Bytes::from_static(b"abcd"),
        },
    );
    let last = b.len() - 1;
    b[last] ^= 0x80;
    assert!(matches!(
        d.decode(&mut b),
        Err(WireError::PayloadChecksum {
            frame_type: "Data",
            ..
        })
    ));
}

#[test]
fn zip_bomb_is_capped_at_the_announced_length() {
    let (e, mut d) = codec(true);
    // A valid compressed frame of 64 KiB zeroes, then claim it expands to only 4 KiB.
    let f = zero_data(65536);
    let mut b = encode(&e, &f);
    resign(&mut b, |h| h.data_len = 4096);
    assert!(matches!(
        d.decode(&mut b),
        Err(WireError::Decompress { .. })
    ));
    // And a claim above the data limit is refused from the header alone.
    let mut b = encode(&e, &f);
    resign(&mut b, |h| h.data_len = REPL_FRAME_DATA_BYTES_MAX + 1);
    assert!(matches!(
        d.decode(&mut b),
        Err(WireError::DataTooLarge { .. })
    ));
}

#[test]
fn encoder_refuses_oversized_data() {
    let (e, _) = codec(false);
    let f = Frame::Data {
        vol: 0,
        seq: 1,
        epoch: 1,
        offset: 0,
        fua: false,
        data: Bytes::from(vec![1u8; REPL_FRAME_DATA_BYTES_MAX as usize + 1]),
    };
    assert!(matches!(
        e.encode(&f, &mut BytesMut::new()),
        Err(WireError::DataTooLarge { .. })
    ));
}

#[test]
fn hello_of_another_resource_decodes_so_the_handshake_can_name_it() {
    let mut h = hello();
    h.resource = "other".into();
    let e = Encoder::new(resource_id("other"));
    let (_, mut d) = codec(false);
    let mut b = encode(&e, &Frame::Hello(Box::new(h.clone())));
    assert_eq!(d.decode(&mut b).unwrap(), Some(Frame::Hello(Box::new(h))));
    // But a data frame of another resource is refused.
    let mut b = encode(&e, &Frame::Ping { seq: 1 });
    assert!(matches!(
        d.decode(&mut b),
        Err(WireError::WrongResource { .. })
    ));
}

#[test]
fn split_range_covers_the_write_exactly() {
    let parts: Vec<_> = split_range(4096, 2_500_000, REPL_FRAME_DATA_BYTES_MAX).collect();
    assert_eq!(
        parts,
        vec![
            (4096, 1 << 20),
            (4096 + (1 << 20), 1 << 20),
            (4096 + (2 << 20), 2_500_000 - (2 << 20))
        ]
    );
    assert_eq!(split_range(0, 0, 4096).count(), 0);
}

/// A volume added at run time (issue 15): the volume in the header's volume bytes, the size in
/// its offset; a number or size no config could declare is refused by both ends.
#[test]
fn a_volume_add_names_a_valid_volume_and_size() {
    let (e, mut d) = codec(false);
    let mut out = BytesMut::new();
    for (vol, size_bytes) in [(0, 1 << 20), (16, 1 << 20), (1, 0), (1, 4097)] {
        let f = Frame::VolumeAdd { vol, size_bytes };
        assert!(e.encode(&f, &mut out).is_err(), "{f:?} encoded");
    }
    type Edit = Box<dyn Fn(&mut FrameHeader)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|h| h.set_volume(0)), "volume 0 (1..16)"),
        (
            Box::new(|h| h.offset = 3 << 12 | 1),
            "volume 1 of 12289 bytes",
        ),
        (
            Box::new(|h| h.offset = crate::limits::VOLUME_SIZE_BYTES_MAX + 4096),
            "a non-zero multiple of 4096",
        ),
        (Box::new(|h| h.seq = 1), "header field seq is 1, must be 0"),
    ];
    for (edit, msg) in cases {
        let mut b = encode(
            &e,
            &Frame::VolumeAdd {
                vol: 1,
                size_bytes: 1 << 20,
            },
        );
        resign(&mut b, edit);
        let err = d.decode(&mut b).unwrap_err().to_string();
        assert!(err.contains(msg), "{err:?} should contain {msg:?}");
    }
}

#[test]
fn frame_type_codes_round_trip() {
    for f in sample_frames() {
        let t = f.frame_type();
        assert_eq!(FrameType::from_u8(t as u8), Some(t));
    }
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Bytes::from);
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            bytes.clone()
        )
            .prop_map(|(seq, epoch, offset, fua, data)| Frame::Data {
                vol: (seq >> 48) as u16,
                seq,
                epoch,
                offset,
                fua,
                data
            }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            0u32..(1 << 26),
            any::<bool>()
        )
            .prop_map(|(seq, epoch, offset, len, fua)| Frame::Zeroes(RangeWrite {
                vol: (seq >> 48) as u16,
                seq,
                epoch,
                offset,
                len,
                fua
            })),
        any::<u64>().prop_map(|epoch| Frame::BarrierAck { epoch }),
        (any::<u64>(), bytes.clone()).prop_map(|(offset, data)| Frame::ResyncData { offset, data }),
        (any::<u64>(), 1u32..2000, any::<bool>()).prop_map(|(first_bit, bit_count, last)| {
            Frame::BitmapChunk {
                first_bit,
                bit_count,
                last,
                bits: Bytes::from(vec![0x5a; bit_count.div_ceil(8) as usize]),
            }
        }),
        "[a-z ]{0,40}".prop_map(|reason| Frame::Disconnect { reason }),
        (any::<u64>(), 1u32..(1 << 22), any::<u8>()).prop_map(|(offset, len, b)| {
            Frame::VerifyDigests {
                run: VerifyRun::Receiver,
                id: 0x5eed,
                offset,
                len,
                digests: Bytes::from(vec![b; crate::repl::wire::verify_digests_len(len) as usize]),
            }
        }),
        (any::<u64>(), 1u32..(1 << 22), any::<u8>()).prop_map(|(offset, len, b)| {
            let mut differ = vec![b; crate::repl::wire::verify_result_len(len) as usize];
            // Bits past the last block are zero.
            let blocks = u64::from(len).div_ceil(4096);
            if blocks % 8 != 0 {
                *differ.last_mut().unwrap() &= (1u8 << (blocks % 8)) - 1;
            }
            Frame::VerifyResult {
                run: VerifyRun::Sender,
                id: 0x5eed,
                offset,
                len,
                differ: Bytes::from(differ),
            }
        }),
        (any::<[u8; 32]>(), any::<u64>()).prop_map(|(nonce, cur)| {
            let mut h = hello();
            h.nonce = nonce;
            h.gen.current = cur;
            Frame::Hello(Box::new(h))
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Random bytes never panic the decoder, and never make it reserve beyond one frame.
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), zstd in any::<bool>()) {
        let (_, mut d) = codec(zstd);
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = d.decode(&mut buf) {}
        prop_assert!(buf.capacity() <= HEADER_BYTES + REPL_FRAME_PAYLOAD_BYTES_MAX as usize + data.len());
    }

    /// Random bytes after a valid header prefix (magic present) never panic either.
    #[test]
    fn random_payload_after_valid_magic_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (_, mut d) = codec(true);
        let mut v = MAGIC.to_le_bytes().to_vec();
        v.extend_from_slice(&tail);
        let mut buf = BytesMut::from(&v[..]);
        let _ = d.decode(&mut buf);
    }

    /// Every single-bit flip of a valid frame is rejected or decodes to the identical frame.
    #[test]
    fn every_single_bit_flip_is_rejected(frame in arb_frame(), zstd in any::<bool>()) {
        let (e, mut d) = codec(zstd);
        let good = encode(&e, &frame);
        for bit in 0..good.len() * 8 {
            let mut b = good.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            match d.decode(&mut b) {
                Err(_) => {}
                Ok(Some(f)) => prop_assert_eq!(&f, &frame, "bit {} flipped into another frame", bit),
                Ok(None) => prop_assert!(false, "bit {} made a complete frame look incomplete", bit),
            }
        }
    }
}

#[test]
fn state_change_without_the_flags_byte_is_not_ahead_and_bad_flags_are_refused() {
    let (e, mut d) = codec(false);
    let f = |ahead| Frame::StateChange {
        role: Role::Primary,
        disk: DiskState::UpToDate,
        ahead,
    };
    // The flags byte is only sent when set: the frame stays the old two-byte form otherwise.
    let plain = encode(&e, &f(false));
    let ahead = encode(&e, &f(true));
    assert_eq!(ahead.len(), plain.len() + 1);
    assert_eq!(d.decode(&mut plain.clone()).unwrap(), Some(f(false)));
    assert_eq!(d.decode(&mut ahead.clone()).unwrap(), Some(f(true)));
    // A flags byte with unknown bits is malformed (re-encode by hand with a valid crc).
    let mut bad = ahead.clone();
    let last = bad.len() - 1;
    bad[last] = 0x02;
    let crc = crc32fast::hash(&bad[HEADER_BYTES..]);
    resign(&mut bad, |h| h.payload_crc = crc);
    let err = d.decode(&mut bad).unwrap_err().to_string();
    assert!(err.contains("state flags 0x02"), "{err}");
}

#[test]
fn encode_data_from_a_slice_gives_the_bytes_of_a_data_frame() {
    for zstd in [false, true] {
        for data in [
            vec![0u8; 4096],
            (0..4096u32).map(|i| ((i * 7919) >> 3) as u8).collect(),
        ] {
            let f = Frame::Data {
                vol: 0,
                seq: 9,
                epoch: 4,
                offset: 8192,
                fua: true,
                data: Bytes::from(data.clone()),
            };
            let (e1, mut d) = codec(zstd);
            let (e2, _) = codec(zstd);
            let mut b = BytesMut::new();
            e2.encode_data(0, (9, 4, 8192), true, &data, true, &mut b)
                .unwrap();
            assert_eq!(b, encode(&e1, &f), "zstd {zstd}");
            assert_eq!(d.decode(&mut b).unwrap(), Some(f));
        }
    }
}

#[test]
fn verify_payloads_must_match_their_range() {
    let (e, mut d) = codec(false);
    // The encoder refuses a payload that does not fit the range.
    let mut out = BytesMut::new();
    let bad = Frame::VerifyDigests {
        run: VerifyRun::Sender,
        id: 0x5eed,
        offset: 0,
        len: 8192,
        digests: Bytes::from(vec![0u8; 3 * crate::limits::REPL_VERIFY_DIGEST_BYTES]),
    };
    let err = e.encode(&bad, &mut out).unwrap_err().to_string();
    assert!(err.contains("payload bytes for a 8192-byte range"), "{err}");
    // A peer's frame whose range says otherwise than its payload is refused by name.
    let good = Frame::VerifyResult {
        run: VerifyRun::Receiver,
        id: 0x5eed,
        offset: 0,
        len: 8 * 4096,
        differ: Bytes::from_static(&[0xff]),
    };
    let mut buf = encode(&e, &good);
    resign(&mut buf, |h| h.data_len = 16 * 4096);
    let err = d.decode(&mut buf).unwrap_err().to_string();
    assert!(err.contains("VerifyResult"), "{err}");
    assert!(err.contains("expected 2"), "{err}");
}

#[test]
fn verify_frames_name_their_run_and_results_stay_inside_their_range() {
    let (e, mut d) = codec(false);
    let f = Frame::VerifyRequest {
        run: VerifyRun::Sender,
        id: 0x5eed,
        offset: 0,
        len: 4096,
    };
    let mut buf = encode(&e, &f);
    resign(&mut buf, |h| h.seq = 3);
    let err = d.decode(&mut buf).unwrap_err().to_string();
    assert!(err.contains("verify run 3"), "{err}");
    // 3 blocks: bit 3 and up of the one result byte lie outside the range.
    let r = Frame::VerifyResult {
        run: VerifyRun::Sender,
        id: 0x5eed,
        offset: 0,
        len: 3 * 4096,
        differ: Bytes::from_static(&[0b1000]),
    };
    let mut out = BytesMut::new();
    let err = e.encode(&r, &mut out).unwrap_err().to_string();
    assert!(err.contains("past the 3 blocks"), "{err}");
    let ok = Frame::VerifyResult {
        run: VerifyRun::Sender,
        id: 0x5eed,
        offset: 0,
        len: 3 * 4096,
        differ: Bytes::from_static(&[0b101]),
    };
    let mut buf = encode(&e, &ok);
    assert_eq!(d.decode(&mut buf).unwrap(), Some(ok));
}
