//! Replication frames: a fixed 64-byte header, a checked payload, an incremental decoder.
//!
//! Every frame is `header (64 bytes) || payload (payload_len bytes)`. The header is a
//! `#[repr(C)]` struct whose size is asserted at compile time and which is encoded field by
//! field in little-endian (never transmuted), TigerBeetle style:
//!
//! | bytes | field | meaning |
//! |---|---|---|
//! | 0..4 | magic | [`MAGIC`] (`"DRL1"`) |
//! | 4..6 | version | wire version of the sender ([`WIRE_VERSION`]) |
//! | 6 | frame_type | [`FrameType`] |
//! | 7 | flags | [`flags`]: `ZSTD`, `FUA`, `LAST` |
//! | 8..16 | resource_id | [`resource_id`] of the resource name: a node never applies another resource's frames |
//! | 16..20 | payload_len | bytes that follow the header |
//! | 20..24 | data_len | uncompressed data length, or the range length of Trim/Zeroes/ResyncRequest |
//! | 24..32 | seq | write sequence number (Data/Trim/Zeroes) or ping id |
//! | 32..40 | epoch | epoch of a write, or the epoch a Barrier closes / a BarrierAck acknowledges |
//! | 40..48 | offset | byte offset of a write or resync range; first bit of a BitmapChunk |
//! | 48..52 | payload_crc | crc32 of the payload as sent |
//! | 52..54 | volume | the volume of a Data/Trim/Zeroes frame (consistency groups, issue 15); zero in every other frame |
//! | 54..60 | reserved | must be zero |
//! | 60..64 | header_crc | crc32 of the header with this field zeroed |
//!
//! Decoding order ([`Decoder::decode`]): wait for 64 bytes; check the magic and the header crc
//! before trusting any field; check version, type, flags, reserved bytes, resource id and the
//! payload length against [`REPL_FRAME_PAYLOAD_BYTES_MAX`]; only then wait for the payload;
//! check the payload crc before anything is decoded or applied; decompress zstd into a buffer
//! capped at the announced `data_len` (itself capped by [`REPL_FRAME_DATA_BYTES_MAX`]). Header
//! fields a frame type does not use must be zero, so every valid frame has exactly one encoding.
//! Any error means: drop the connection (and resync what it covered).
//!
//! The layout of the header and of the Hello payload is frozen across versions: a Hello of
//! any version decodes, so that the handshake can say "incompatible version" instead of
//! "garbage". Every other frame must carry exactly [`WIRE_VERSION`].

use bytes::{BufMut, BytesMut};
use sha2::{Digest, Sha256};

use crate::limits::{
    REPL_FRAME_DATA_BYTES_MAX, REPL_FRAME_PAYLOAD_BYTES_MAX, REPL_FRAME_RANGE_BYTES_MAX,
    REPL_REASON_BYTES_MAX,
};
use crate::repl::compress::{compress_if_it_pays, Gate};
use crate::repl::frame::{disk_to_wire, role_to_wire, Frame, FrameType};

/// StateChange flags byte: the sender is Ahead.
pub const STATE_AHEAD: u8 = 1;

/// `"DRL1"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"DRL1");
/// The wire version this code speaks.
pub const WIRE_VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER_BYTES: usize = 64;

/// Header flag bits.
pub mod flags {
    /// The payload is a zstd frame of `data_len` uncompressed bytes.
    pub const ZSTD: u8 = 1 << 0;
    /// Data/Trim/Zeroes: the write was FUA on the primary.
    pub const FUA: u8 = 1 << 1;
    /// BitmapChunk: the last chunk of the bitmap.
    pub const LAST: u8 = 1 << 2;
}

/// Feature bits negotiated in Hello.
pub mod features {
    /// zstd-compressed Data / ResyncData / BitmapChunk payloads.
    pub const ZSTD: u64 = 1 << 0;
    /// Online verify: VerifyRequest / VerifyDigests / VerifyResult / VerifyDone.
    pub const VERIFY: u64 = 1 << 1;
    /// Every feature this code supports.
    pub const ALL: u64 = ZSTD | VERIFY;
}

/// What can be wrong with bytes from a peer (or with a frame we were asked to encode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic 0x{got:08x} (expected 0x{MAGIC:08x}): not a drl replication peer")]
    BadMagic { got: u32 },
    #[error("header checksum mismatch: header says 0x{stored:08x}, computed 0x{computed:08x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error(
        "unsupported wire version {got} in a {frame_type} frame (this node speaks {WIRE_VERSION})"
    )]
    UnsupportedVersion { got: u16, frame_type: &'static str },
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    #[error("flags 0x{flags:02x} not allowed on a {frame_type} frame")]
    BadFlags { flags: u8, frame_type: &'static str },
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("payload too large: {len} > {max} bytes")]
    PayloadTooLarge { len: u64, max: u32 },
    #[error("data length too large: {len} > {max} bytes")]
    DataTooLarge { len: u64, max: u32 },
    #[error("frame for resource id 0x{got:016x}, expected 0x{expected:016x}")]
    WrongResource { expected: u64, got: u64 },
    #[error("payload checksum mismatch in a {frame_type} frame: header says 0x{stored:08x}, computed 0x{computed:08x}")]
    PayloadChecksum {
        frame_type: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("compressed {frame_type} frame but compression was not negotiated")]
    CompressionNotNegotiated { frame_type: &'static str },
    #[error(
        "zstd payload of a {frame_type} frame does not decompress to {data_len} bytes: {what}"
    )]
    Decompress {
        frame_type: &'static str,
        data_len: u32,
        what: String,
    },
    #[error("malformed {frame_type} frame: {what}")]
    Malformed {
        frame_type: &'static str,
        what: String,
    },
}

/// The resource id carried in every header: the first 8 bytes (little-endian) of
/// SHA-256("drl resource v1\0" || name).
pub fn resource_id(name: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"drl resource v1\0");
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// The fixed frame header. `#[repr(C)]` documents the layout; bytes are still written
/// field by field in little-endian by [`FrameHeader::to_bytes`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameHeader {
    pub magic: u32,
    pub version: u16,
    pub frame_type: u8,
    pub flags: u8,
    pub resource_id: u64,
    pub payload_len: u32,
    pub data_len: u32,
    pub seq: u64,
    pub epoch: u64,
    pub offset: u64,
    pub payload_crc: u32,
    pub reserved: [u8; 8],
    pub header_crc: u32,
}

const _: () = assert!(std::mem::size_of::<FrameHeader>() == HEADER_BYTES);

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl FrameHeader {
    /// The volume field (bytes 52..54, the first two of the old reserved bytes).
    pub fn volume(&self) -> u16 {
        u16::from_le_bytes([self.reserved[0], self.reserved[1]])
    }

    pub fn set_volume(&mut self, vol: u16) {
        self.reserved[0..2].copy_from_slice(&vol.to_le_bytes());
    }

    /// Encode with `header_crc` computed over the header with the crc field zeroed.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6] = self.frame_type;
        b[7] = self.flags;
        b[8..16].copy_from_slice(&self.resource_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.payload_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.data_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.seq.to_le_bytes());
        b[32..40].copy_from_slice(&self.epoch.to_le_bytes());
        b[40..48].copy_from_slice(&self.offset.to_le_bytes());
        b[48..52].copy_from_slice(&self.payload_crc.to_le_bytes());
        b[52..60].copy_from_slice(&self.reserved);
        let crc = crc32fast::hash(&b);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse and check magic and header crc. Nothing else is trusted yet.
    pub fn from_bytes(b: &[u8; HEADER_BYTES]) -> Result<Self, WireError> {
        let magic = le_u32(b, 0);
        if magic != MAGIC {
            return Err(WireError::BadMagic { got: magic });
        }
        let stored = le_u32(b, 60);
        let mut zeroed = *b;
        zeroed[60..64].fill(0);
        let computed = crc32fast::hash(&zeroed);
        if stored != computed {
            return Err(WireError::HeaderChecksum { stored, computed });
        }
        let mut reserved = [0u8; 8];
        reserved.copy_from_slice(&b[52..60]);
        Ok(FrameHeader {
            magic,
            version: le_u16(b, 4),
            frame_type: b[6],
            flags: b[7],
            resource_id: le_u64(b, 8),
            payload_len: le_u32(b, 16),
            data_len: le_u32(b, 20),
            seq: le_u64(b, 24),
            epoch: le_u64(b, 32),
            offset: le_u64(b, 40),
            payload_crc: le_u32(b, 48),
            reserved,
            header_crc: stored,
        })
    }
}

/// Turns frames into bytes. `zstd` is set once the handshake negotiated compression; the
/// clones of an encoder share one compression back-off ([`Gate`]).
#[derive(Debug, Clone)]
pub struct Encoder {
    resource_id: u64,
    zstd: bool,
    gate: std::sync::Arc<Gate>,
}

impl Encoder {
    pub fn new(resource_id: u64) -> Self {
        Encoder {
            resource_id,
            zstd: false,
            gate: Default::default(),
        }
    }

    /// Allow compressed payloads (only after both sides negotiated [`features::ZSTD`]).
    pub fn set_zstd(&mut self, on: bool) {
        self.zstd = on;
    }

    /// Append one encoded frame to `out`. Fails only for frames that break the limits.
    pub fn encode(&self, frame: &Frame, out: &mut BytesMut) -> Result<(), WireError> {
        self.encode_with(frame, true, out)
    }

    /// [`Encoder::encode`]; `zstd: false` sends Data and ResyncData payloads raw without a
    /// try (the link is not the bottleneck: see [`crate::repl::link::Link::push`]). Bitmap
    /// chunks are always tried.
    pub fn encode_with(
        &self,
        frame: &Frame,
        zstd: bool,
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        let ft = frame.frame_type();
        let mut h = FrameHeader {
            magic: MAGIC,
            version: WIRE_VERSION,
            frame_type: ft as u8,
            resource_id: self.resource_id,
            ..FrameHeader::default()
        };
        let mut body: Option<Vec<u8>> = None;
        let mut data: Option<&[u8]> = None;
        match frame {
            Frame::Hello(hello) => {
                body = Some(hello.encode_payload().map_err(|what| malformed(ft, what))?);
                h.resource_id = resource_id(&hello.resource);
            }
            Frame::AuthResponse { mac } => body = Some(mac.to_vec()),
            Frame::AuthOk | Frame::ResyncDone => {}
            Frame::VerifyDone { id } => h.epoch = *id,
            Frame::Refuse { reason } | Frame::Disconnect { reason } => {
                if reason.len() > REPL_REASON_BYTES_MAX {
                    return Err(malformed(ft, format!("reason of {} bytes", reason.len())));
                }
                body = Some(reason.as_bytes().to_vec());
            }
            Frame::Data {
                vol,
                seq,
                epoch,
                offset,
                fua,
                data: d,
            } => {
                (h.seq, h.epoch, h.offset) = (*seq, *epoch, *offset);
                h.set_volume(*vol);
                if *fua {
                    h.flags |= flags::FUA;
                }
                data = Some(&d[..]);
            }
            Frame::Trim(w) | Frame::Zeroes(w) => {
                check_range_len(w.len)?;
                (h.seq, h.epoch, h.offset, h.data_len) = (w.seq, w.epoch, w.offset, w.len);
                h.set_volume(w.vol);
                if w.fua {
                    h.flags |= flags::FUA;
                }
            }
            Frame::Barrier { epoch } | Frame::BarrierAck { epoch } => h.epoch = *epoch,
            Frame::VolumeAdd { vol, size_bytes } => {
                check_volume_add(*vol, *size_bytes).map_err(|what| malformed(ft, what))?;
                h.set_volume(*vol);
                h.offset = *size_bytes;
            }
            Frame::BitmapChunk {
                first_bit,
                bit_count,
                last,
                bits,
            } => {
                if bits.len() as u64 != (*bit_count as u64).div_ceil(8) {
                    return Err(malformed(
                        ft,
                        format!("{} bytes for {bit_count} bits", bits.len()),
                    ));
                }
                h.offset = *first_bit;
                if *last {
                    h.flags |= flags::LAST;
                }
                data = Some(&bits[..]);
            }
            Frame::ResyncRequest { offset, len } | Frame::ResyncZeroes { offset, len } => {
                check_range_len(*len)?;
                (h.offset, h.data_len) = (*offset, *len);
            }
            Frame::VerifyRequest {
                run,
                id,
                offset,
                len,
            } => {
                check_range_len(*len)?;
                (h.seq, h.epoch, h.offset, h.data_len) = (*run as u64, *id, *offset, *len);
            }
            Frame::VerifyDigests {
                run,
                id,
                offset,
                len,
                digests: b,
            }
            | Frame::VerifyResult {
                run,
                id,
                offset,
                len,
                differ: b,
            } => {
                check_range_len(*len)?;
                let want = if ft == FrameType::VerifyDigests {
                    verify_digests_len(*len)
                } else {
                    verify_result_len(*len)
                };
                if b.len() as u64 != want {
                    return Err(malformed(
                        ft,
                        format!("{} payload bytes for a {len}-byte range", b.len()),
                    ));
                }
                let blocks = u64::from(*len).div_ceil(crate::limits::BITMAP_BLOCK_BYTES);
                if ft == FrameType::VerifyResult
                    && crate::repl::verify::set_bits(b).any(|i| i >= blocks)
                {
                    return Err(malformed(
                        ft,
                        format!("a bit set past the {blocks} blocks of the range"),
                    ));
                }
                (h.seq, h.epoch, h.offset, h.data_len) = (*run as u64, *id, *offset, *len);
                body = Some(b.to_vec());
            }
            Frame::ResyncData { offset, data: d } => {
                h.offset = *offset;
                data = Some(&d[..]);
            }
            Frame::StateChange { role, disk, ahead } => {
                let mut b = vec![role_to_wire(*role), disk_to_wire(*disk)];
                if *ahead {
                    b.push(STATE_AHEAD);
                }
                body = Some(b);
            }
            Frame::Ping { seq } | Frame::PingAck { seq } => h.seq = *seq,
        }
        match (body.as_deref(), data) {
            (Some(b), _) => self.put(h, b, out),
            (None, Some(d)) => {
                // For BitmapChunk data_len counts bits; for Data/ResyncData bytes. Bitmap
                // chunks (mostly zeros, rare) are always tried; writes and resync data back
                // off while they do not compress.
                let (bits, gate) = match frame {
                    Frame::BitmapChunk { bit_count, .. } => (Some(*bit_count), None),
                    _ if !zstd => return self.put_data(h, d, None, Err(()), out),
                    _ => (None, Some(&*self.gate)),
                };
                self.put_data(h, d, bits, Ok(gate), out)
            }
            (None, None) => self.put(h, &[], out),
        }
    }

    /// A Data frame straight from the writer's buffer: the same bytes as
    /// `encode(&Frame::Data { .. })`, without first copying the payload into a `Bytes`.
    pub fn encode_data(
        &self,
        vol: u16,
        (seq, epoch, offset): (u64, u64, u64),
        fua: bool,
        data: &[u8],
        zstd: bool,
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        let mut h = FrameHeader {
            magic: MAGIC,
            version: WIRE_VERSION,
            frame_type: FrameType::Data as u8,
            resource_id: self.resource_id,
            seq,
            epoch,
            offset,
            ..FrameHeader::default()
        };
        h.set_volume(vol);
        if fua {
            h.flags |= flags::FUA;
        }
        let try_zstd = if zstd { Ok(Some(&*self.gate)) } else { Err(()) };
        self.put_data(h, data, None, try_zstd, out)
    }

    /// Header and data payload (zstd when negotiated, `try_zstd` is `Ok` (with the back-off
    /// gate, if any) and it pays); `bits` is a BitmapChunk's bit count (its data_len),
    /// otherwise data_len is the byte count.
    fn put_data(
        &self,
        mut h: FrameHeader,
        d: &[u8],
        bits: Option<u32>,
        try_zstd: Result<Option<&Gate>, ()>,
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        if d.len() > REPL_FRAME_DATA_BYTES_MAX as usize {
            return Err(WireError::DataTooLarge {
                len: d.len() as u64,
                max: REPL_FRAME_DATA_BYTES_MAX,
            });
        }
        h.data_len = bits.unwrap_or(d.len() as u32);
        let compressed = match try_zstd {
            Ok(gate) if self.zstd => compress_if_it_pays(d, gate),
            _ => None,
        };
        match &compressed {
            Some(c) => {
                h.flags |= flags::ZSTD;
                self.put(h, c, out)
            }
            None => self.put(h, d, out),
        }
    }

    /// Header (payload length and crc filled in) and payload into `out`.
    fn put(&self, mut h: FrameHeader, payload: &[u8], out: &mut BytesMut) -> Result<(), WireError> {
        if payload.len() > REPL_FRAME_PAYLOAD_BYTES_MAX as usize {
            return Err(WireError::PayloadTooLarge {
                len: payload.len() as u64,
                max: REPL_FRAME_PAYLOAD_BYTES_MAX,
            });
        }
        h.payload_len = payload.len() as u32;
        h.payload_crc = crc32fast::hash(payload);
        out.reserve(HEADER_BYTES + payload.len());
        out.put_slice(&h.to_bytes());
        out.put_slice(payload);
        Ok(())
    }
}

fn check_range_len(len: u32) -> Result<(), WireError> {
    if len > REPL_FRAME_RANGE_BYTES_MAX {
        return Err(WireError::DataTooLarge {
            len: len as u64,
            max: REPL_FRAME_RANGE_BYTES_MAX,
        });
    }
    Ok(())
}

/// A VolumeAdd's fields (both sides check them): volume 1.. below the group's maximum (volume
/// 0 exists from the start), a size a config could declare ([`crate::config::volumes`]).
pub(crate) fn check_volume_add(vol: u16, size_bytes: u64) -> Result<(), String> {
    if vol == 0 || usize::from(vol) >= crate::limits::GROUP_VOLUMES_COUNT_MAX {
        return Err(format!(
            "volume {vol} (1..{})",
            crate::limits::GROUP_VOLUMES_COUNT_MAX
        ));
    }
    if size_bytes == 0
        || !size_bytes.is_multiple_of(crate::limits::BITMAP_BLOCK_BYTES)
        || size_bytes > crate::limits::VOLUME_SIZE_BYTES_MAX
    {
        return Err(format!(
            "volume {vol} of {size_bytes} bytes (a non-zero multiple of {} up to {})",
            crate::limits::BITMAP_BLOCK_BYTES,
            crate::limits::VOLUME_SIZE_BYTES_MAX
        ));
    }
    Ok(())
}

pub(crate) fn malformed(ft: FrameType, what: impl Into<String>) -> WireError {
    WireError::Malformed {
        frame_type: ft.name(),
        what: what.into(),
    }
}

/// Split a write of `len` bytes at `offset` into frame-sized pieces `(offset, len)` of at most
/// `max` bytes each (use [`REPL_FRAME_DATA_BYTES_MAX`] for Data, [`REPL_FRAME_RANGE_BYTES_MAX`]
/// for Trim/Zeroes). Each piece is its own write with its own sequence number, in the same
/// epoch unless the epoch fills up.
pub fn split_range(offset: u64, len: u64, max: u32) -> impl Iterator<Item = (u64, u32)> {
    let max = max.max(1) as u64;
    (0..len.div_ceil(max)).map(move |i| {
        let at = i * max;
        (offset + at, (len - at).min(max) as u32)
    })
}

pub use crate::repl::decode::Decoder;

/// The VerifyDigests payload length for a range of `len` bytes: one digest per bitmap block
/// (a partial last block counts as one).
pub fn verify_digests_len(len: u32) -> u64 {
    u64::from(len).div_ceil(crate::limits::BITMAP_BLOCK_BYTES)
        * crate::limits::REPL_VERIFY_DIGEST_BYTES as u64
}

/// The VerifyResult payload length for a range of `len` bytes: one bit per bitmap block.
pub fn verify_result_len(len: u32) -> u64 {
    u64::from(len)
        .div_ceil(crate::limits::BITMAP_BLOCK_BYTES)
        .div_ceil(8)
}
