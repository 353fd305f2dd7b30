//! The frames of the replication protocol, as values (see [`crate::repl::wire`] for bytes).
//!
//! A [`Frame`] is what the sender, receiver and handshake exchange; the codec turns it into the
//! 64-byte header plus payload. Role and disk states travel as one-byte codes defined here
//! (fixed forever: new states get new codes, old codes never change meaning).

use bytes::Bytes;
use drbd_compat::{DiskState, Role};

use crate::limits::{GROUP_VOLUMES_COUNT_MAX, REPL_NAME_BYTES_MAX};
use crate::repl::gen::GenIds;
use crate::repl::wire::flags;

/// Frame type codes (header byte 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 1,
    AuthResponse = 2,
    AuthOk = 3,
    Refuse = 4,
    Data = 10,
    Trim = 11,
    Zeroes = 12,
    Barrier = 13,
    BarrierAck = 14,
    BitmapChunk = 20,
    ResyncRequest = 21,
    ResyncData = 22,
    ResyncDone = 23,
    ResyncZeroes = 24,
    VerifyRequest = 25,
    VerifyDigests = 26,
    VerifyResult = 27,
    VerifyDone = 28,
    StateChange = 30,
    Ping = 31,
    PingAck = 32,
    Disconnect = 33,
    VolumeAdd = 34,
}

impl FrameType {
    pub fn from_u8(v: u8) -> Option<Self> {
        use FrameType::*;
        Some(match v {
            1 => Hello,
            2 => AuthResponse,
            3 => AuthOk,
            4 => Refuse,
            10 => Data,
            11 => Trim,
            12 => Zeroes,
            13 => Barrier,
            14 => BarrierAck,
            20 => BitmapChunk,
            21 => ResyncRequest,
            22 => ResyncData,
            23 => ResyncDone,
            24 => ResyncZeroes,
            25 => VerifyRequest,
            26 => VerifyDigests,
            27 => VerifyResult,
            28 => VerifyDone,
            30 => StateChange,
            31 => Ping,
            32 => PingAck,
            33 => Disconnect,
            34 => VolumeAdd,
            _ => return None,
        })
    }

    /// Name for error messages and logs.
    pub fn name(self) -> &'static str {
        use FrameType::*;
        match self {
            Hello => "Hello",
            AuthResponse => "AuthResponse",
            AuthOk => "AuthOk",
            Refuse => "Refuse",
            Data => "Data",
            Trim => "Trim",
            Zeroes => "Zeroes",
            Barrier => "Barrier",
            BarrierAck => "BarrierAck",
            BitmapChunk => "BitmapChunk",
            ResyncRequest => "ResyncRequest",
            ResyncData => "ResyncData",
            ResyncDone => "ResyncDone",
            ResyncZeroes => "ResyncZeroes",
            VerifyRequest => "VerifyRequest",
            VerifyDigests => "VerifyDigests",
            VerifyResult => "VerifyResult",
            VerifyDone => "VerifyDone",
            StateChange => "StateChange",
            Ping => "Ping",
            PingAck => "PingAck",
            Disconnect => "Disconnect",
            VolumeAdd => "VolumeAdd",
        }
    }

    /// Header flags this frame type may carry.
    pub fn allowed_flags(self) -> u8 {
        match self {
            FrameType::Data => flags::ZSTD | flags::FUA,
            FrameType::Trim | FrameType::Zeroes => flags::FUA,
            FrameType::ResyncData => flags::ZSTD,
            FrameType::BitmapChunk => flags::ZSTD | flags::LAST,
            _ => 0,
        }
    }

    /// Which of the header fields (seq, epoch, offset, data_len) this type uses; the others
    /// must be zero.
    pub fn header_fields(self) -> (bool, bool, bool, bool) {
        use FrameType::*;
        match self {
            Data | Trim | Zeroes => (true, true, true, true),
            Barrier | BarrierAck => (false, true, false, false),
            BitmapChunk | ResyncRequest | ResyncData | ResyncZeroes => (false, false, true, true),
            VerifyRequest | VerifyDigests | VerifyResult => (true, true, true, true),
            VerifyDone => (false, true, false, false),
            Ping | PingAck => (true, false, false, false),
            VolumeAdd => (false, false, true, false),
            _ => (false, false, false, false),
        }
    }
}

/// A write without data (Trim, Zeroes): `len` bytes at `offset` of volume `vol`, sequence
/// `seq`, in epoch `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeWrite {
    /// The volume of the resource (consistency groups: 0 for a one-volume resource).
    pub vol: u16,
    pub seq: u64,
    pub epoch: u64,
    pub offset: u64,
    pub len: u32,
    pub fua: bool,
}

/// The first frame each side sends: who it is, what it has, and its challenge nonce.
///
/// The nonce is the authentication challenge: the peer's AuthResponse must be an HMAC over it
/// (see [`crate::repl::handshake`]), which saves the separate challenge round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Oldest and newest wire version the sender speaks.
    pub version_min: u16,
    pub version_max: u16,
    /// [`crate::repl::wire::features`] bits the sender supports.
    pub features: u64,
    pub resource: String,
    pub size_bytes: u64,
    pub node_name: String,
    pub gen: GenIds,
    /// Dirty bits in the sender's bitmap (blocks it knows the peer may lack).
    pub dirty_bits: u64,
    pub role: Role,
    pub disk: DiskState,
    pub nonce: [u8; 32],
    /// A consistency group's volumes 1, 2, ..: their sizes (volume 0's is `size_bytes`).
    /// Empty for one volume, whose Hello is then byte-identical to one from before groups;
    /// otherwise a count byte and the sizes follow the names.
    pub group_sizes: Vec<u64>,
}

/// Fixed part of the Hello payload: versions, features, size, 4 generation ids, dirty bits,
/// role, disk, nonce, two name lengths.
pub(crate) const HELLO_FIXED_BYTES: usize = 2 + 2 + 8 + 8 + 4 * 8 + 8 + 1 + 1 + 32 + 1 + 1;

impl Hello {
    pub(crate) fn encode_payload(&self) -> Result<Vec<u8>, String> {
        for (what, name) in [("resource", &self.resource), ("node", &self.node_name)] {
            if name.is_empty() || name.len() > REPL_NAME_BYTES_MAX {
                return Err(format!(
                    "{what} name of {} bytes (1..={REPL_NAME_BYTES_MAX})",
                    name.len()
                ));
            }
        }
        let mut b =
            Vec::with_capacity(HELLO_FIXED_BYTES + self.resource.len() + self.node_name.len());
        b.extend_from_slice(&self.version_min.to_le_bytes());
        b.extend_from_slice(&self.version_max.to_le_bytes());
        b.extend_from_slice(&self.features.to_le_bytes());
        b.extend_from_slice(&self.size_bytes.to_le_bytes());
        for g in [
            self.gen.current,
            self.gen.bitmap,
            self.gen.history[0],
            self.gen.history[1],
        ] {
            b.extend_from_slice(&g.to_le_bytes());
        }
        b.extend_from_slice(&self.dirty_bits.to_le_bytes());
        b.push(role_to_wire(self.role));
        b.push(disk_to_wire(self.disk));
        b.extend_from_slice(&self.nonce);
        b.push(self.resource.len() as u8);
        b.push(self.node_name.len() as u8);
        b.extend_from_slice(self.resource.as_bytes());
        b.extend_from_slice(self.node_name.as_bytes());
        if !self.group_sizes.is_empty() {
            if self.group_sizes.len() >= GROUP_VOLUMES_COUNT_MAX {
                return Err(format!(
                    "{} volumes (at most {GROUP_VOLUMES_COUNT_MAX})",
                    self.group_sizes.len() + 1
                ));
            }
            b.push(self.group_sizes.len() as u8);
            for s in &self.group_sizes {
                b.extend_from_slice(&s.to_le_bytes());
            }
        }
        Ok(b)
    }

    pub(crate) fn decode_payload(p: &[u8]) -> Result<Hello, String> {
        if p.len() < HELLO_FIXED_BYTES {
            return Err(format!(
                "payload of {} bytes, at least {HELLO_FIXED_BYTES} needed",
                p.len()
            ));
        }
        let mut r = Reader { b: p, at: 0 };
        let version_min = r.u16();
        let version_max = r.u16();
        let features = r.u64();
        let size_bytes = r.u64();
        let gen = GenIds {
            current: r.u64(),
            bitmap: r.u64(),
            history: [r.u64(), r.u64()],
        };
        let dirty_bits = r.u64();
        let role_code = r.u8();
        let role = role_from_wire(role_code).ok_or_else(|| format!("role code {role_code}"))?;
        let disk_code = r.u8();
        let disk = disk_from_wire(disk_code).ok_or_else(|| format!("disk code {disk_code}"))?;
        let mut nonce = [0u8; 32];
        nonce.copy_from_slice(r.take(32));
        let rlen = r.u8() as usize;
        let nlen = r.u8() as usize;
        let named = HELLO_FIXED_BYTES + rlen + nlen;
        // A group's volume sizes follow the names: a count byte, then 8 bytes each.
        let groups = p.get(named).map_or(0, |&n| usize::from(n));
        let want = if p.len() > named {
            named + 1 + 8 * groups
        } else {
            named
        };
        if p.len() != want {
            return Err(format!(
                "payload of {} bytes, names and volumes say {want}",
                p.len()
            ));
        }
        if p.len() > named && (groups == 0 || groups >= GROUP_VOLUMES_COUNT_MAX) {
            return Err(format!(
                "{} volumes (2..={GROUP_VOLUMES_COUNT_MAX} in a group)",
                groups + 1
            ));
        }
        let name = |bytes: &[u8], what: &str| -> Result<String, String> {
            if bytes.is_empty() || bytes.len() > REPL_NAME_BYTES_MAX {
                return Err(format!("{what} name of {} bytes", bytes.len()));
            }
            String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} name is not UTF-8"))
        };
        let resource = name(r.take(rlen), "resource")?;
        let node_name = name(r.take(nlen), "node")?;
        let group_sizes = if groups > 0 {
            r.u8();
            (0..groups).map(|_| r.u64()).collect()
        } else {
            Vec::new()
        };
        Ok(Hello {
            version_min,
            version_max,
            features,
            resource,
            size_bytes,
            node_name,
            gen,
            dirty_bits,
            role,
            disk,
            nonce,
            group_sizes,
        })
    }
}

/// A cursor over a slice whose length the caller has already checked.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        let s = self.take(2);
        u16::from_le_bytes([s[0], s[1]])
    }
    fn u64(&mut self) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8));
        u64::from_le_bytes(a)
    }
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Box<Hello>),
    /// HMAC-SHA256 proving knowledge of the shared secret (see the handshake module).
    AuthResponse {
        mac: [u8; 32],
    },
    AuthOk,
    Refuse {
        reason: String,
    },
    /// A write: `data` at byte `offset` of volume `vol`, sequence `seq`, in epoch `epoch`.
    /// The volumes of a group share one sequence and one epoch order.
    Data {
        vol: u16,
        seq: u64,
        epoch: u64,
        offset: u64,
        fua: bool,
        data: Bytes,
    },
    /// Discard `len` bytes at `offset` (a write without data).
    Trim(RangeWrite),
    /// Zero `len` bytes at `offset` (a write without data).
    Zeroes(RangeWrite),
    /// Closes epoch `epoch`: every write of it was sent before this frame.
    Barrier {
        epoch: u64,
    },
    /// Every write of epochs up to `epoch` is durable on the peer.
    BarrierAck {
        epoch: u64,
    },
    /// `bit_count` bits of the sender's dirty bitmap starting at bit `first_bit`, LSB first.
    BitmapChunk {
        first_bit: u64,
        bit_count: u32,
        last: bool,
        bits: Bytes,
    },
    ResyncRequest {
        offset: u64,
        len: u32,
    },
    ResyncData {
        offset: u64,
        data: Bytes,
    },
    ResyncDone,
    /// Resync answer for a range that reads as zeroes: no data crosses the wire.
    ResyncZeroes {
        offset: u64,
        len: u32,
    },
    /// Online verify, sent by a Secondary VerifyS (it compares) to its Primary peer (it
    /// provides): send the VerifyDigests of this range.
    VerifyRequest {
        run: VerifyRun,
        /// The run's number (header epoch), chosen by its VerifyS: answers echo it, so a late
        /// answer is never taken for a later run.
        id: u64,
        offset: u64,
        len: u32,
    },
    /// Online verify, from the provider (the Primary, if any): the digests of a range, read
    /// at exactly this point of its write stream. [`crate::limits::REPL_VERIFY_DIGEST_BYTES`]
    /// per bitmap block, in block order; header data_len is the range length.
    VerifyDigests {
        run: VerifyRun,
        /// The run's number (header epoch), chosen by its VerifyS: answers echo it, so a late
        /// answer is never taken for a later run.
        id: u64,
        offset: u64,
        len: u32,
        digests: Bytes,
    },
    /// Online verify, from the comparer: which blocks of the range differ, one bit per
    /// bitmap block (LSB first; bits past the last block are zero). The provider marks them
    /// out of sync if it is Primary.
    VerifyResult {
        run: VerifyRun,
        /// The run's number (header epoch), chosen by its VerifyS: answers echo it, so a late
        /// answer is never taken for a later run.
        id: u64,
        offset: u64,
        len: u32,
        differ: Bytes,
    },
    /// The verify run `id` is over (VerifyS to VerifyT).
    VerifyDone {
        id: u64,
    },
    /// The sender's role and disk state changed, or it went Ahead (`ahead`: DRBD's pull-ahead;
    /// the receiver then reports Behind). Wire: role and disk codes, then an optional flags
    /// byte (bit 0: Ahead) that is only sent when set, so a frame without it is the old
    /// two-byte form.
    StateChange {
        role: Role,
        disk: DiskState,
        ahead: bool,
    },
    Ping {
        seq: u64,
    },
    PingAck {
        seq: u64,
    },
    Disconnect {
        reason: String,
    },
    /// Consistency groups (issue 15): the sender (Primary) added volume `vol` of
    /// `size_bytes` to the resource at run time (`drl adjust`). Queued right after the Barrier
    /// that closed the last epoch without it, in the ordered stream: writes to the volume
    /// follow this frame, and its whole range resyncs from the sender. Wire: the volume in
    /// header bytes 52..54 (as Data), the size in the offset field, no payload.
    VolumeAdd {
        vol: u16,
        size_bytes: u64,
    },
}

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::AuthResponse { .. } => FrameType::AuthResponse,
            Frame::AuthOk => FrameType::AuthOk,
            Frame::Refuse { .. } => FrameType::Refuse,
            Frame::Data { .. } => FrameType::Data,
            Frame::Trim(_) => FrameType::Trim,
            Frame::Zeroes(_) => FrameType::Zeroes,
            Frame::Barrier { .. } => FrameType::Barrier,
            Frame::BarrierAck { .. } => FrameType::BarrierAck,
            Frame::BitmapChunk { .. } => FrameType::BitmapChunk,
            Frame::ResyncRequest { .. } => FrameType::ResyncRequest,
            Frame::ResyncData { .. } => FrameType::ResyncData,
            Frame::ResyncDone => FrameType::ResyncDone,
            Frame::ResyncZeroes { .. } => FrameType::ResyncZeroes,
            Frame::VerifyRequest { .. } => FrameType::VerifyRequest,
            Frame::VerifyDigests { .. } => FrameType::VerifyDigests,
            Frame::VerifyResult { .. } => FrameType::VerifyResult,
            Frame::VerifyDone { .. } => FrameType::VerifyDone,
            Frame::StateChange { .. } => FrameType::StateChange,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::PingAck { .. } => FrameType::PingAck,
            Frame::Disconnect { .. } => FrameType::Disconnect,
            Frame::VolumeAdd { .. } => FrameType::VolumeAdd,
        }
    }
}

/// Whose online verify run a frame belongs to, seen from its sender (header seq 1 or 2):
/// each node can drive a run (VerifyS) and serve the peer's (VerifyT) at the same time, and
/// a frame is never taken for the other run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyRun {
    /// The run the sender drives.
    Sender = 1,
    /// The run the receiver drives.
    Receiver = 2,
}

impl VerifyRun {
    pub fn from_wire(v: u64) -> Option<VerifyRun> {
        match v {
            1 => Some(VerifyRun::Sender),
            2 => Some(VerifyRun::Receiver),
            _ => None,
        }
    }

    /// The same run, named from the other node.
    pub fn seen_from_peer(self) -> VerifyRun {
        match self {
            VerifyRun::Sender => VerifyRun::Receiver,
            VerifyRun::Receiver => VerifyRun::Sender,
        }
    }
}

/// Wire code of a role.
pub fn role_to_wire(r: Role) -> u8 {
    match r {
        Role::Unknown => 0,
        Role::Primary => 1,
        Role::Secondary => 2,
    }
}

pub fn role_from_wire(v: u8) -> Option<Role> {
    Some(match v {
        0 => Role::Unknown,
        1 => Role::Primary,
        2 => Role::Secondary,
        _ => return None,
    })
}

/// Wire code of a disk state.
pub fn disk_to_wire(d: DiskState) -> u8 {
    match d {
        DiskState::DUnknown => 0,
        DiskState::Diskless => 1,
        DiskState::Attaching => 2,
        DiskState::Failed => 3,
        DiskState::Inconsistent => 4,
        DiskState::Outdated => 5,
        DiskState::Consistent => 6,
        DiskState::UpToDate => 7,
    }
}

pub fn disk_from_wire(v: u8) -> Option<DiskState> {
    Some(match v {
        0 => DiskState::DUnknown,
        1 => DiskState::Diskless,
        2 => DiskState::Attaching,
        3 => DiskState::Failed,
        4 => DiskState::Inconsistent,
        5 => DiskState::Outdated,
        6 => DiskState::Consistent,
        7 => DiskState::UpToDate,
        _ => return None,
    })
}
