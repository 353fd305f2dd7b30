//! Replication harnesses: the frame decoder with what consumes its frames, and the
//! handshake state machine.
//!
//! `frames`: a sequence of operations, each either a frame (built from arbitrary fields and
//! encoded by the real [`Encoder`], zstd or not), a frame with one byte corrupted, or raw
//! bytes, concatenated and delivered to one [`Decoder`] in arbitrary pieces, as a socket
//! would. Checked: every intact frame decodes to exactly the frame that was encoded; nothing
//! decodes after a corrupted byte (crc32 catches every one-byte change); nothing panics. Each
//! decoded frame then goes where the session sends it: writes and barriers to an
//! [`EpochReceiver`] (completions answered at once), bitmap chunks to a [`BitmapMerge`],
//! resync and verify ranges to their checks.
//!
//! `handshake`: our [`Handshake`] against a peer running the same state machine with an
//! arbitrary configuration and secret; frames between them are delivered, dropped, replaced
//! or corrupted by the input, in both directions. Checked: our side never reports
//! `Established` unless the peer holds the same secret.

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};

use crate::repl::bitmap::BitmapMerge;
use crate::repl::frame::{disk_from_wire, role_from_wire, Frame, Hello, RangeWrite, VerifyRun};
use crate::repl::gen::GenIds;
use crate::repl::handshake::{Handshake, LocalInfo};
use crate::repl::receiver::{EpochReceiver, RxAction, RxEvent};
use crate::repl::wire::{features, resource_id, Decoder, Encoder, WIRE_VERSION};

const RESOURCE: &str = "r0";
/// The volume the consumers check ranges against (a few verify requests long).
const VOLUME_BYTES: u64 = 64 * 1024 * 1024;
/// At most about this many pieces per fed stream (see `frames`).
const FEED_PIECES_MAX: usize = 512;

/// Fields of one frame; small integers pick among values that reach deep (in range, at the
/// edges) as often as random ones.
#[derive(Debug, Arbitrary)]
enum FrameSpec {
    Hello {
        version_min: u16,
        version_max: u16,
        features: u64,
        resource: String,
        node: String,
        size: u64,
        gen: [u64; 4],
        dirty_bits: u64,
        role: u8,
        disk: u8,
        nonce: [u8; 32],
    },
    AuthResponse([u8; 32]),
    AuthOk,
    Refuse(String),
    Disconnect(String),
    Data {
        seq: u8,
        epoch: u8,
        offset: u32,
        fua: bool,
        len: u16,
        fill: u8,
    },
    Trim(u8, u8, u32, u32, bool),
    Zeroes(u8, u8, u32, u32, bool),
    Barrier(u8),
    BarrierAck(u64),
    Bitmap {
        first_bit: u16,
        bit_count: u16,
        last: bool,
        fill: u8,
    },
    ResyncRequest(u64, u32),
    ResyncData(u64, u16, u8),
    ResyncDone,
    ResyncZeroes(u64, u32),
    VerifyRequest(bool, u64, u64, u32),
    VerifyDigests(bool, u64, u32, u16, u8),
    VerifyResult(bool, u64, u32, u16, u8),
    VerifyDone(u64),
    StateChange(u8, u8, bool),
    Ping(u64),
    PingAck(u64),
    /// A volume added at run time (issue 15): any number and size (the encoder refuses the
    /// invalid ones, the decoder must refuse them too).
    VolumeAdd(u16, u64),
}

fn bytes_of(len: usize, fill: u8) -> Bytes {
    // A repeating pattern compresses (zstd is tried), a counter mixed in keeps it honest.
    // Filled run by run (512 bytes each), not byte by byte: the same bytes, a fraction of the
    // instrumented work.
    let mut v = vec![0u8; len];
    for (run, bytes) in v.chunks_mut(512).enumerate() {
        bytes.fill(fill.wrapping_add(run as u8));
    }
    Bytes::from(v)
}

fn run(b: bool) -> VerifyRun {
    if b {
        VerifyRun::Sender
    } else {
        VerifyRun::Receiver
    }
}

impl FrameSpec {
    fn frame(self) -> Frame {
        use FrameSpec as S;
        let w = |seq: u8, epoch: u8, offset: u32, len: u32, fua| RangeWrite {
            vol: 0,
            seq: u64::from(seq),
            epoch: u64::from(epoch),
            offset: u64::from(offset) * 512,
            len,
            fua,
        };
        match self {
            S::Hello {
                version_min,
                version_max,
                features,
                resource,
                node,
                size,
                gen,
                dirty_bits,
                role,
                disk,
                nonce,
            } => Frame::Hello(Box::new(Hello {
                version_min,
                version_max,
                features,
                resource,
                size_bytes: size,
                node_name: node,
                gen: GenIds {
                    current: gen[0],
                    bitmap: gen[1],
                    history: [gen[2], gen[3]],
                },
                dirty_bits,
                role: role_from_wire(role % 3).expect("codes 0..3"),
                disk: disk_from_wire(disk % 8).expect("codes 0..8"),
                nonce,
                group_sizes: Vec::new(),
            })),
            S::AuthResponse(mac) => Frame::AuthResponse { mac },
            S::AuthOk => Frame::AuthOk,
            S::Refuse(reason) => Frame::Refuse { reason },
            S::Disconnect(reason) => Frame::Disconnect { reason },
            S::Data {
                seq,
                epoch,
                offset,
                fua,
                len,
                fill,
            } => Frame::Data {
                vol: 0,
                seq: u64::from(seq),
                epoch: u64::from(epoch),
                offset: u64::from(offset) * 512,
                fua,
                data: bytes_of(usize::from(len), fill),
            },
            S::Trim(s, e, o, l, f) => Frame::Trim(w(s, e, o, l, f)),
            S::Zeroes(s, e, o, l, f) => Frame::Zeroes(w(s, e, o, l, f)),
            S::Barrier(epoch) => Frame::Barrier {
                epoch: u64::from(epoch),
            },
            S::BarrierAck(epoch) => Frame::BarrierAck { epoch },
            S::Bitmap {
                first_bit,
                bit_count,
                last,
                fill,
            } => Frame::BitmapChunk {
                first_bit: u64::from(first_bit),
                bit_count: u32::from(bit_count),
                last,
                bits: bytes_of(usize::from(bit_count).div_ceil(8), fill),
            },
            S::ResyncRequest(offset, len) => Frame::ResyncRequest { offset, len },
            S::ResyncData(offset, len, fill) => Frame::ResyncData {
                offset,
                data: bytes_of(usize::from(len), fill),
            },
            S::ResyncDone => Frame::ResyncDone,
            S::ResyncZeroes(offset, len) => Frame::ResyncZeroes { offset, len },
            S::VerifyRequest(r, id, offset, len) => Frame::VerifyRequest {
                run: run(r),
                id,
                offset,
                len,
            },
            // Payload lengths follow the range (the encoder refuses others): the range is
            // whole blocks, at most 16 bits' worth.
            S::VerifyDigests(r, id, offset, blocks, fill) => {
                let len = u32::from(blocks % 17) * 4096;
                Frame::VerifyDigests {
                    run: run(r),
                    id,
                    offset: u64::from(offset) * 4096,
                    len,
                    digests: bytes_of(crate::repl::wire::verify_digests_len(len) as usize, fill),
                }
            }
            S::VerifyResult(r, id, offset, blocks, fill) => {
                let len = u32::from(blocks % 17) * 4096;
                let n = crate::repl::wire::verify_result_len(len) as usize;
                let mut differ = vec![0u8; n];
                for (i, b) in differ.iter_mut().enumerate() {
                    // Only bits of blocks inside the range.
                    let valid = (blocks % 17) as usize;
                    let bits_here = valid.saturating_sub(i * 8).min(8);
                    *b = fill & ((1u16 << bits_here) - 1) as u8;
                }
                Frame::VerifyResult {
                    run: run(r),
                    id,
                    offset: u64::from(offset) * 4096,
                    len,
                    differ: Bytes::from(differ),
                }
            }
            S::VerifyDone(id) => Frame::VerifyDone { id },
            S::StateChange(role, disk, ahead) => Frame::StateChange {
                role: role_from_wire(role % 3).expect("codes 0..3"),
                disk: disk_from_wire(disk % 8).expect("codes 0..8"),
                ahead,
            },
            S::Ping(seq) => Frame::Ping { seq },
            S::PingAck(seq) => Frame::PingAck { seq },
            S::VolumeAdd(vol, size_bytes) => Frame::VolumeAdd { vol, size_bytes },
        }
    }
}

#[derive(Debug, Arbitrary)]
enum StreamOp {
    Frame(FrameSpec),
    /// The frame with byte `at` (modulo its length) xor-ed with `xor | 1`.
    Corrupt(FrameSpec, u16, u8),
    Raw(Vec<u8>),
}

/// The frame decoder fed frame sequences (see the module doc).
pub fn frames(data: &[u8]) {
    // A recorded stream (it starts with the wire magic) is fed as it is, zstd allowed, in
    // one piece; anything else describes one.
    let (zstd, pieces, ops) = if data.starts_with(&crate::repl::wire::MAGIC.to_le_bytes()) {
        (true, Vec::new(), vec![StreamOp::Raw(data.to_vec())])
    } else {
        let mut u = Unstructured::new(data);
        let Ok((zstd, pieces)) = <(bool, Vec<u16>)>::arbitrary(&mut u) else {
            return;
        };
        let Ok(ops) = Vec::<StreamOp>::arbitrary_take_rest(u) else {
            return;
        };
        (zstd, pieces, ops)
    };
    let id = resource_id(RESOURCE);
    let mut enc = Encoder::new(id);
    enc.set_zstd(zstd);
    let mut dec = Decoder::new(id);
    dec.set_zstd(zstd);

    // The stream's bytes, and the frames the decoder must return: those encoded before the
    // first damage. Past a corrupted byte nothing may decode; past raw bytes anything may.
    let mut stream = Vec::new();
    let mut expected: Vec<Frame> = Vec::new();
    let mut damage: Option<Damage> = None;
    for op in ops {
        let mut out = BytesMut::new();
        match op {
            StreamOp::Frame(spec) => {
                let f = spec.frame();
                if enc.encode(&f, &mut out).is_err() {
                    out.clear();
                } else if damage.is_none() {
                    expected.push(f);
                }
            }
            StreamOp::Corrupt(spec, at, xor) => {
                if enc.encode(&spec.frame(), &mut out).is_err() {
                    out.clear();
                } else {
                    let i = usize::from(at) % out.len();
                    out[i] ^= xor | 1;
                    damage.get_or_insert(Damage::Corrupt);
                }
            }
            StreamOp::Raw(b) => {
                out.extend_from_slice(&b);
                if !b.is_empty() {
                    damage.get_or_insert(Damage::Raw);
                }
            }
        }
        stream.extend_from_slice(&out);
    }

    let mut consumers = Consumers::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut decoded = 0usize;
    let mut piece = pieces.iter().cycle();
    'feed: while fed < stream.len() {
        // Pieces of at least 1/FEED_PIECES_MAX of the stream: any split point is still
        // reached in short streams, and a long one is not fed byte by byte (a 64 KiB frame
        // in 1-byte pieces is 65536 decode calls, 80 ms under coverage instrumentation, which
        // a loaded machine stretched past libFuzzer's timeout).
        let n = piece
            .next()
            .map_or(stream.len(), |&p| {
                usize::from(p).max(1).max(stream.len() / FEED_PIECES_MAX)
            })
            .min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    if let Some(want) = expected.get(decoded) {
                        assert_eq!(&f, want, "frame {decoded} decoded differently");
                    } else {
                        assert!(
                            damage != Some(Damage::Corrupt),
                            "a frame decoded after a corrupted byte: {f:?}"
                        );
                    }
                    decoded += 1;
                    consumers.take(f);
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    if damage.is_none() {
        assert_eq!(decoded, expected.len(), "intact frames left undecoded");
    }
}

/// The first thing in a stream that is not an intact frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    /// One byte of an encoded frame changed: its crc must stop the decoder.
    Corrupt,
    /// Arbitrary bytes: they may even hold valid frames.
    Raw,
}

/// Where the session sends decoded frames, with completions answered at once.
struct Consumers {
    rx: EpochReceiver<()>,
    rx_failed: bool,
    bitmap: BitmapMerge,
    bits: Vec<u8>,
}

impl Consumers {
    fn new() -> Self {
        let total_bits = VOLUME_BYTES / crate::limits::BITMAP_BLOCK_BYTES;
        Consumers {
            rx: EpochReceiver::new(),
            rx_failed: false,
            bitmap: BitmapMerge::new(total_bits),
            bits: vec![0; total_bits.div_ceil(8) as usize],
        }
    }

    fn take(&mut self, f: Frame) {
        let ev = match f {
            Frame::Data {
                seq,
                epoch,
                offset,
                data,
                ..
            } => Some(RxEvent::Write {
                seq,
                epoch,
                offset,
                len: data.len() as u64,
                write: (),
            }),
            Frame::Trim(w) | Frame::Zeroes(w) => Some(RxEvent::Write {
                seq: w.seq,
                epoch: w.epoch,
                offset: w.offset,
                len: u64::from(w.len),
                write: (),
            }),
            Frame::Barrier { epoch } => Some(RxEvent::Barrier { epoch }),
            Frame::BitmapChunk {
                first_bit,
                bit_count,
                last,
                bits,
            } => {
                let _ = self
                    .bitmap
                    .merge(&mut self.bits, first_bit, bit_count, last, &bits);
                None
            }
            Frame::ResyncRequest { offset, len } => {
                let _ = crate::repl::resync::check_request(offset, len, VOLUME_BYTES);
                None
            }
            Frame::VerifyRequest { offset, len, .. } => {
                let _ = crate::repl::verify::check_range(offset, len, VOLUME_BYTES);
                None
            }
            Frame::VerifyDigests {
                offset,
                len,
                digests,
                ..
            } => {
                if crate::repl::verify::check_range(offset, len, VOLUME_BYTES).is_ok() {
                    let ours = vec![0u8; digests.len()];
                    let differ = crate::repl::verify::differing_bits(&ours, &digests);
                    assert_eq!(
                        differ.len() as u64,
                        crate::repl::wire::verify_result_len(len),
                        "a VerifyResult for this range would not encode"
                    );
                }
                None
            }
            Frame::VerifyResult { differ, .. } => {
                let _ = crate::repl::verify::set_bits(&differ).count();
                None
            }
            _ => None,
        };
        if let Some(ev) = ev {
            self.receive(ev);
        }
    }

    /// Feed the receiver; complete every write and flush it asks for at once.
    fn receive(&mut self, ev: RxEvent<()>) {
        if self.rx_failed {
            return;
        }
        let mut pending = vec![ev];
        while let Some(ev) = pending.pop() {
            match self.rx.handle(ev) {
                Ok(actions) => {
                    for a in actions {
                        pending.push(match a {
                            RxAction::Write { seq, .. } => RxEvent::WriteDone { seq },
                            RxAction::FlushThenAck(epoch) => RxEvent::FlushDone { epoch },
                        });
                    }
                }
                Err(_) => {
                    // The session drops the connection: this receiver is done.
                    self.rx_failed = true;
                    return;
                }
            }
        }
    }
}

/// How a frame between the two handshakes is tampered with.
#[derive(Debug, Arbitrary)]
enum Tamper {
    Deliver,
    Drop,
    Replace(FrameSpec),
    /// Insert an extra frame before this one.
    Inject(FrameSpec),
}

#[derive(Debug, Arbitrary)]
struct Side {
    resource_is_ours: bool,
    node: u8,
    size_is_ours: bool,
    gen: [u64; 4],
    dirty_bits: u32,
    primary: bool,
    disk: u8,
    features: u8,
}

fn local(side: &Side, ours: bool) -> LocalInfo {
    LocalInfo {
        resource: if side.resource_is_ours || ours {
            RESOURCE.into()
        } else {
            "r1".into()
        },
        node_name: if ours {
            "site-a".into()
        } else {
            ["site-b", "site-a", "b"][usize::from(side.node % 3)].into()
        },
        size_bytes: if side.size_is_ours || ours {
            VOLUME_BYTES
        } else {
            VOLUME_BYTES / 2
        },
        usable_bytes: VOLUME_BYTES,
        gen: GenIds {
            current: side.gen[0],
            bitmap: side.gen[1],
            history: [side.gen[2], side.gen[3]],
        },
        dirty_bits: u64::from(side.dirty_bits),
        role: role_from_wire(if side.primary { 1 } else { 2 }).expect("codes 1 and 2"),
        disk: disk_from_wire(side.disk % 8).expect("codes 0..8"),
        features: u64::from(side.features) & features::ALL,
        group_sizes: Vec::new(),
    }
}

/// Two handshakes with tampering in between (see the module doc).
pub fn handshake(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok((ours, theirs, same_secret, nonces)) =
        <(Side, Side, bool, [[u8; 32]; 2])>::arbitrary(&mut u)
    else {
        return;
    };
    let secret_a = b"the shared secret".as_slice();
    let secret_b = if same_secret {
        secret_a
    } else {
        b"another secret".as_slice()
    };
    let (Ok(mut a), Ok(mut b)) = (
        Handshake::with_nonce(local(&ours, true), secret_a, nonces[0]),
        Handshake::with_nonce(local(&theirs, false), secret_b, nonces[1]),
    ) else {
        return;
    };
    // Frames in flight each way; the wire codec sits in between as on a real link.
    let id = resource_id(RESOURCE);
    let (enc, mut dec) = (Encoder::new(id), Decoder::new(id));
    let mut to_a: Vec<Frame> = b.start();
    let mut to_b: Vec<Frame> = a.start();
    let (mut a_done, mut b_done) = (false, false);
    for _ in 0..64 {
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        // To a, through the codec (a frame that does not survive it is not delivered).
        for f in std::mem::take(&mut to_a) {
            let mut deliver = Vec::new();
            match Tamper::arbitrary(&mut u).unwrap_or(Tamper::Deliver) {
                Tamper::Deliver => deliver.push(f),
                Tamper::Drop => {}
                Tamper::Replace(s) => deliver.push(s.frame()),
                Tamper::Inject(s) => deliver.extend([s.frame(), f]),
            }
            for f in deliver {
                let mut buf = BytesMut::new();
                if enc.encode(&f, &mut buf).is_err() {
                    continue;
                }
                let Ok(Some(f)) = dec.decode(&mut buf) else {
                    continue;
                };
                if a_done {
                    continue;
                }
                let out = a.on_frame(f);
                to_b.extend(out.send);
                if let Some(result) = out.result {
                    a_done = true;
                    if let Ok(est) = result {
                        assert!(
                            same_secret,
                            "established with a peer that does not hold the secret: {est:?}"
                        );
                        assert!(est.version == WIRE_VERSION);
                    }
                }
            }
        }
        // To b, untampered: the peer is honest, the link is not.
        for f in std::mem::take(&mut to_b) {
            if b_done {
                break;
            }
            let out = b.on_frame(f);
            to_a.extend(out.send);
            b_done = out.result.is_some();
        }
    }
}
