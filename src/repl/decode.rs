//! The incremental frame decoder (the receiving half of [`crate::repl::wire`]).
//!
//! It checks in the order the wire module documents: header crc before any field is trusted,
//! all header limits before a byte of payload is awaited, the payload crc before anything is
//! decoded, and a hard output cap on zstd.

use bytes::{Bytes, BytesMut};

use crate::limits::{
    REPL_FRAME_DATA_BYTES_MAX, REPL_FRAME_PAYLOAD_BYTES_MAX, REPL_FRAME_RANGE_BYTES_MAX,
    REPL_REASON_BYTES_MAX,
};
use crate::repl::frame::{disk_from_wire, role_from_wire, Frame, FrameType, Hello, RangeWrite};
use crate::repl::wire::{
    flags, malformed, resource_id, FrameHeader, WireError, HEADER_BYTES, MAGIC, WIRE_VERSION,
};

/// Turns a byte stream into frames, one complete frame at a time.
///
/// It holds no buffer of its own: the caller's read buffer is consumed frame by frame, and a
/// frame is only taken out of it once it is complete and checked. It never reserves more than
/// one frame's worth (header plus at most [`REPL_FRAME_PAYLOAD_BYTES_MAX`]).
#[derive(Debug, Clone)]
pub struct Decoder {
    resource_id: u64,
    zstd: bool,
}

impl Decoder {
    /// A decoder for the resource whose [`resource_id`] is given.
    pub fn new(resource_id: u64) -> Self {
        Decoder {
            resource_id,
            zstd: false,
        }
    }

    /// Accept compressed payloads (only after both sides negotiated [`crate::repl::wire::features::ZSTD`]).
    pub fn set_zstd(&mut self, on: bool) {
        self.zstd = on;
    }

    /// Take the next complete frame out of `buf`. `Ok(None)`: more bytes are needed (the
    /// buffer has been reserved for the rest of the frame). Any `Err` is fatal for the
    /// connection (the buffer's content is then unspecified: drop it with the connection).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if buf.len() >= 4 {
            // Fail fast on a stranger (an HTTP probe, another protocol) before 64 bytes arrive.
            let magic = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if magic != MAGIC {
                return Err(WireError::BadMagic { got: magic });
            }
        }
        if buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        let mut hb = [0u8; HEADER_BYTES];
        hb.copy_from_slice(&buf[..HEADER_BYTES]);
        let h = FrameHeader::from_bytes(&hb)?;
        let ft = self.check_header(&h)?;
        let total = HEADER_BYTES + h.payload_len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let computed = crc32fast::hash(&buf[HEADER_BYTES..total]);
        if computed != h.payload_crc {
            return Err(WireError::PayloadChecksum {
                frame_type: ft.name(),
                stored: h.payload_crc,
                computed,
            });
        }
        let payload = buf.split_to(total).freeze().slice(HEADER_BYTES..);
        self.decode_body(&h, ft, &payload).map(Some)
    }

    /// Everything that can be checked before a byte of payload is trusted or buffered.
    fn check_header(&self, h: &FrameHeader) -> Result<FrameType, WireError> {
        let ft =
            FrameType::from_u8(h.frame_type).ok_or(WireError::UnknownFrameType(h.frame_type))?;
        let names_volume = matches!(
            ft,
            FrameType::Data | FrameType::Trim | FrameType::Zeroes | FrameType::VolumeAdd
        );
        if h.reserved[2..] != [0u8; 6] || (!names_volume && h.volume() != 0) {
            return Err(WireError::ReservedNotZero);
        }
        if ft != FrameType::Hello && h.version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion {
                got: h.version,
                frame_type: ft.name(),
            });
        }
        if h.flags & !ft.allowed_flags() != 0 {
            return Err(WireError::BadFlags {
                flags: h.flags,
                frame_type: ft.name(),
            });
        }
        if h.flags & flags::ZSTD != 0 && !self.zstd {
            return Err(WireError::CompressionNotNegotiated {
                frame_type: ft.name(),
            });
        }
        if h.payload_len > REPL_FRAME_PAYLOAD_BYTES_MAX {
            return Err(WireError::PayloadTooLarge {
                len: h.payload_len as u64,
                max: REPL_FRAME_PAYLOAD_BYTES_MAX,
            });
        }
        if ft != FrameType::Hello && h.resource_id != self.resource_id {
            return Err(WireError::WrongResource {
                expected: self.resource_id,
                got: h.resource_id,
            });
        }
        let (seq, epoch, offset, data_len) = ft.header_fields();
        let unused = |used: bool, v: u64, name: &str| -> Result<(), WireError> {
            if !used && v != 0 {
                return Err(malformed(
                    ft,
                    format!("header field {name} is {v}, must be 0"),
                ));
            }
            Ok(())
        };
        unused(seq, h.seq, "seq")?;
        unused(epoch, h.epoch, "epoch")?;
        unused(offset, h.offset, "offset")?;
        unused(data_len, h.data_len as u64, "data_len")?;
        match ft {
            FrameType::Data | FrameType::ResyncData => {
                if h.data_len > REPL_FRAME_DATA_BYTES_MAX {
                    return Err(WireError::DataTooLarge {
                        len: h.data_len as u64,
                        max: REPL_FRAME_DATA_BYTES_MAX,
                    });
                }
                if h.flags & flags::ZSTD == 0 && h.payload_len != h.data_len {
                    return Err(malformed(
                        ft,
                        format!(
                            "payload {} bytes but data_len {}",
                            h.payload_len, h.data_len
                        ),
                    ));
                }
            }
            FrameType::BitmapChunk => {
                let bytes = (h.data_len as u64).div_ceil(8);
                if bytes > REPL_FRAME_DATA_BYTES_MAX as u64 {
                    return Err(WireError::DataTooLarge {
                        len: bytes,
                        max: REPL_FRAME_DATA_BYTES_MAX,
                    });
                }
                if h.flags & flags::ZSTD == 0 && h.payload_len as u64 != bytes {
                    return Err(malformed(
                        ft,
                        format!("payload {} bytes for {} bits", h.payload_len, h.data_len),
                    ));
                }
            }
            FrameType::Trim
            | FrameType::Zeroes
            | FrameType::ResyncRequest
            | FrameType::ResyncZeroes
            | FrameType::VerifyRequest
            | FrameType::VerifyDigests
            | FrameType::VerifyResult
                if h.data_len > REPL_FRAME_RANGE_BYTES_MAX =>
            {
                return Err(WireError::DataTooLarge {
                    len: h.data_len as u64,
                    max: REPL_FRAME_RANGE_BYTES_MAX,
                });
            }
            _ => {}
        }
        Ok(ft)
    }

    fn decode_body(
        &self,
        h: &FrameHeader,
        ft: FrameType,
        payload: &Bytes,
    ) -> Result<Frame, WireError> {
        let exact = |n: usize| -> Result<(), WireError> {
            if payload.len() != n {
                return Err(malformed(
                    ft,
                    format!("payload of {} bytes, expected {n}", payload.len()),
                ));
            }
            Ok(())
        };
        let fua = h.flags & flags::FUA != 0;
        Ok(match ft {
            FrameType::Hello => {
                let hello = Hello::decode_payload(payload).map_err(|what| malformed(ft, what))?;
                let id = resource_id(&hello.resource);
                if h.resource_id != id {
                    return Err(malformed(
                        ft,
                        format!(
                            "header resource id 0x{:016x} is not the id of {:?}",
                            h.resource_id, hello.resource
                        ),
                    ));
                }
                Frame::Hello(Box::new(hello))
            }
            FrameType::AuthResponse => {
                exact(32)?;
                let mut mac = [0u8; 32];
                mac.copy_from_slice(payload);
                Frame::AuthResponse { mac }
            }
            FrameType::AuthOk => {
                exact(0)?;
                Frame::AuthOk
            }
            FrameType::ResyncDone => {
                exact(0)?;
                Frame::ResyncDone
            }
            FrameType::VolumeAdd => {
                exact(0)?;
                crate::repl::wire::check_volume_add(h.volume(), h.offset)
                    .map_err(|what| malformed(ft, what))?;
                Frame::VolumeAdd {
                    vol: h.volume(),
                    size_bytes: h.offset,
                }
            }
            FrameType::Refuse | FrameType::Disconnect => {
                if payload.len() > REPL_REASON_BYTES_MAX {
                    return Err(malformed(ft, format!("reason of {} bytes", payload.len())));
                }
                let reason = String::from_utf8(payload.to_vec())
                    .map_err(|_| malformed(ft, "reason is not UTF-8"))?;
                if ft == FrameType::Refuse {
                    Frame::Refuse { reason }
                } else {
                    Frame::Disconnect { reason }
                }
            }
            FrameType::Data => Frame::Data {
                vol: h.volume(),
                seq: h.seq,
                epoch: h.epoch,
                offset: h.offset,
                fua,
                data: self.data(h, ft, payload, h.data_len as usize)?,
            },
            FrameType::Trim | FrameType::Zeroes => {
                exact(0)?;
                let w = RangeWrite {
                    vol: h.volume(),
                    seq: h.seq,
                    epoch: h.epoch,
                    offset: h.offset,
                    len: h.data_len,
                    fua,
                };
                if ft == FrameType::Trim {
                    Frame::Trim(w)
                } else {
                    Frame::Zeroes(w)
                }
            }
            FrameType::Barrier => {
                exact(0)?;
                Frame::Barrier { epoch: h.epoch }
            }
            FrameType::BarrierAck => {
                exact(0)?;
                Frame::BarrierAck { epoch: h.epoch }
            }
            FrameType::BitmapChunk => {
                let bytes = (h.data_len as usize).div_ceil(8);
                Frame::BitmapChunk {
                    first_bit: h.offset,
                    bit_count: h.data_len,
                    last: h.flags & flags::LAST != 0,
                    bits: self.data(h, ft, payload, bytes)?,
                }
            }
            FrameType::ResyncRequest => {
                exact(0)?;
                Frame::ResyncRequest {
                    offset: h.offset,
                    len: h.data_len,
                }
            }
            FrameType::ResyncZeroes => {
                exact(0)?;
                Frame::ResyncZeroes {
                    offset: h.offset,
                    len: h.data_len,
                }
            }
            FrameType::VerifyRequest => {
                exact(0)?;
                Frame::VerifyRequest {
                    run: verify_run(ft, h.seq)?,
                    id: h.epoch,
                    offset: h.offset,
                    len: h.data_len,
                }
            }
            FrameType::VerifyDigests => {
                exact(crate::repl::wire::verify_digests_len(h.data_len) as usize)?;
                Frame::VerifyDigests {
                    run: verify_run(ft, h.seq)?,
                    id: h.epoch,
                    offset: h.offset,
                    len: h.data_len,
                    digests: payload.clone(),
                }
            }
            FrameType::VerifyResult => {
                exact(crate::repl::wire::verify_result_len(h.data_len) as usize)?;
                let blocks = u64::from(h.data_len).div_ceil(crate::limits::BITMAP_BLOCK_BYTES);
                if crate::repl::verify::set_bits(payload).any(|b| b >= blocks) {
                    return Err(malformed(
                        ft,
                        format!("a bit set past the {blocks} blocks of the range"),
                    ));
                }
                Frame::VerifyResult {
                    run: verify_run(ft, h.seq)?,
                    id: h.epoch,
                    offset: h.offset,
                    len: h.data_len,
                    differ: payload.clone(),
                }
            }
            FrameType::VerifyDone => {
                exact(0)?;
                Frame::VerifyDone { id: h.epoch }
            }
            FrameType::ResyncData => Frame::ResyncData {
                offset: h.offset,
                data: self.data(h, ft, payload, h.data_len as usize)?,
            },
            FrameType::StateChange => {
                if payload.len() != 3 {
                    exact(2)?;
                }
                let role = role_from_wire(payload[0])
                    .ok_or_else(|| malformed(ft, format!("role code {}", payload[0])))?;
                let disk = disk_from_wire(payload[1])
                    .ok_or_else(|| malformed(ft, format!("disk code {}", payload[1])))?;
                let ahead = match payload.get(2) {
                    None => false,
                    Some(&crate::repl::wire::STATE_AHEAD) => true,
                    Some(f) => return Err(malformed(ft, format!("state flags {f:#04x}"))),
                };
                Frame::StateChange { role, disk, ahead }
            }
            FrameType::Ping => {
                exact(0)?;
                Frame::Ping { seq: h.seq }
            }
            FrameType::PingAck => {
                exact(0)?;
                Frame::PingAck { seq: h.seq }
            }
        })
    }

    /// The data of a data-carrying frame: the payload itself, or its zstd decompression into
    /// a buffer of at most `expect` bytes (checked against the limits in `check_header`).
    fn data(
        &self,
        h: &FrameHeader,
        ft: FrameType,
        payload: &Bytes,
        expect: usize,
    ) -> Result<Bytes, WireError> {
        if h.flags & flags::ZSTD == 0 {
            return Ok(payload.clone());
        }
        let err = |what: String| WireError::Decompress {
            frame_type: ft.name(),
            data_len: h.data_len,
            what,
        };
        let out = crate::repl::compress::decompress(payload, expect).map_err(err)?;
        if out.len() != expect {
            return Err(err(format!("got {} bytes", out.len())));
        }
        Ok(Bytes::from(out))
    }
}

fn verify_run(ft: FrameType, seq: u64) -> Result<crate::repl::frame::VerifyRun, WireError> {
    crate::repl::frame::VerifyRun::from_wire(seq).ok_or_else(|| {
        malformed(
            ft,
            format!("verify run {seq} (1: the sender's, 2: the receiver's)"),
        )
    })
}
