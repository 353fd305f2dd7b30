//! The superblock: its fields, its on-disk encoding (fixed offsets, little-endian, CRC32 over
//! the slot) and the checks every decoded or updated superblock must pass.

use std::path::Path;

use super::MetaError;
use crate::limits::{
    AL_EXTENTS_MAX, AL_EXTENTS_MIN, AL_EXTENT_BYTES_MIN, AL_TRANSACTION_SLOTS_MAX,
    AL_TRANSACTION_SLOTS_MIN, META_BLOCK_BYTES, META_NODE_NAME_BYTES_MAX,
    META_RESOURCE_NAME_BYTES_MAX, NBD_PAYLOAD_BYTES_MAX, SECTOR_SIZE_BYTES,
};

/// First bytes of every superblock slot.
pub const META_MAGIC: [u8; 8] = *b"DRLMETA\0";
/// The on-disk format this code reads and writes.
pub const META_FORMAT_VERSION: u32 = 1;

/// Superblock flags (DRBD's `MDF_*` in spirit).
pub mod flags {
    /// The volume was detached cleanly: the activity log is empty and the bitmap on disk is
    /// complete. Cleared when the volume is attached.
    pub const CLEAN_SHUTDOWN: u32 = 1 << 0;
    /// The node was Primary when the flag was written (DRBD's `MDF_PRIMARY_IND`).
    pub const WAS_PRIMARY: u32 = 1 << 1;
    /// Attach found an unclean shutdown while Primary: the activity log was replayed into the
    /// bitmap and the peer must resync those regions (DRBD's `MDF_CRASHED_PRIMARY`).
    pub const CRASHED_PRIMARY: u32 = 1 << 2;
    /// Every block must be resynced (DRBD's `MDF_FULL_SYNC`).
    pub const FULL_SYNC: u32 = 1 << 3;
    /// The volume was handed to Cinder (`drl dr recover`): Cinder's own target writes the disk
    /// around drl, so the bitmap does not know every change. The next resync with the old
    /// primary compares digests (online verify) instead of trusting the bitmap; `drl dr
    /// failback` clears the flag once that is done.
    pub const TRACKING_VOID: u32 = 1 << 4;
    /// Flags this version understands; others make open fail rather than be dropped.
    pub const KNOWN: u32 =
        CLEAN_SHUTDOWN | WAS_PRIMARY | CRASHED_PRIMARY | FULL_SYNC | TRACKING_VOID;
}

/// Role of this node for the resource (DRBD names and numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    Primary = 1,
    Secondary = 2,
}

impl Role {
    pub fn from_u8(v: u8) -> Option<Role> {
        match v {
            1 => Some(Role::Primary),
            2 => Some(Role::Secondary),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "Primary",
            Role::Secondary => "Secondary",
        }
    }
}

/// Disk state of the local copy (DRBD names and `enum drbd_disk_state` numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DiskState {
    Diskless = 0,
    Attaching = 1,
    Failed = 3,
    Inconsistent = 5,
    Outdated = 6,
    Consistent = 8,
    UpToDate = 9,
}

impl DiskState {
    pub fn from_u8(v: u8) -> Option<DiskState> {
        Some(match v {
            0 => DiskState::Diskless,
            1 => DiskState::Attaching,
            3 => DiskState::Failed,
            5 => DiskState::Inconsistent,
            6 => DiskState::Outdated,
            8 => DiskState::Consistent,
            9 => DiskState::UpToDate,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            DiskState::Diskless => "Diskless",
            DiskState::Attaching => "Attaching",
            DiskState::Failed => "Failed",
            DiskState::Inconsistent => "Inconsistent",
            DiskState::Outdated => "Outdated",
            DiskState::Consistent => "Consistent",
            DiskState::UpToDate => "UpToDate",
        }
    }
}

/// DRBD-style generation identifiers: which data history this copy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GenerationIds {
    pub current: u64,
    pub bitmap: u64,
    pub history: [u64; 2],
}

/// The decoded superblock. `seq` is managed by [`MetaFile`]; geometry fields are fixed at
/// creation (changing them through `update` is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub seq: u64,
    pub flags: u32,
    pub uuid: [u8; 16],
    pub name: String,
    pub node: String,
    pub size_bytes: u64,
    pub bitmap_block_bytes: u64,
    pub gen: GenerationIds,
    pub role: Role,
    pub disk_state: DiskState,
    pub al_extent_bytes: u64,
    /// Hot-set bound (`al-extents`).
    pub al_extents: u32,
    /// Transaction slots in the on-disk ring.
    pub al_slots: u32,
}

impl Superblock {
    pub fn has_flag(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
    pub fn uuid_hex(&self) -> String {
        hex::encode(self.uuid)
    }
}

// Superblock field offsets inside a slot.
pub(super) const OFF_MAGIC: usize = 0;
pub(super) const OFF_VERSION: usize = 8;
pub(super) const OFF_FLAGS: usize = 12;
pub(super) const OFF_SEQ: usize = 16;
pub(super) const OFF_UUID: usize = 24;
pub(super) const OFF_SIZE: usize = 40;
pub(super) const OFF_BM_BLOCK: usize = 48;
pub(super) const OFF_GEN: usize = 56; // current, bitmap, history[0], history[1]
pub(super) const OFF_ROLE: usize = 88;
pub(super) const OFF_DISK: usize = 89;
pub(super) const OFF_NAME_LEN: usize = 90;
pub(super) const OFF_NODE_LEN: usize = 92;
pub(super) const OFF_AL_EXTENT: usize = 96;
pub(super) const OFF_AL_EXTENTS: usize = 104;
pub(super) const OFF_AL_SLOTS: usize = 108;
pub(super) const OFF_NAME: usize = 128;
pub(super) const OFF_NODE: usize = OFF_NAME + META_RESOURCE_NAME_BYTES_MAX;
pub(super) const OFF_CRC: usize = META_BLOCK_BYTES as usize - 4;
const _: () = assert!(OFF_NODE + META_NODE_NAME_BYTES_MAX <= OFF_CRC);
const _: () = assert!(META_RESOURCE_NAME_BYTES_MAX <= u16::MAX as usize);

pub(super) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[off..off + 2]);
    u16::from_le_bytes(a)
}
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}
pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Encode a superblock into one slot with its checksum. The caller has validated it.
pub(super) fn encode(sb: &Superblock) -> Vec<u8> {
    let mut b = vec![0u8; META_BLOCK_BYTES as usize];
    b[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&META_MAGIC);
    put_u32(&mut b, OFF_VERSION, META_FORMAT_VERSION);
    put_u32(&mut b, OFF_FLAGS, sb.flags);
    put_u64(&mut b, OFF_SEQ, sb.seq);
    b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&sb.uuid);
    put_u64(&mut b, OFF_SIZE, sb.size_bytes);
    put_u64(&mut b, OFF_BM_BLOCK, sb.bitmap_block_bytes);
    put_u64(&mut b, OFF_GEN, sb.gen.current);
    put_u64(&mut b, OFF_GEN + 8, sb.gen.bitmap);
    put_u64(&mut b, OFF_GEN + 16, sb.gen.history[0]);
    put_u64(&mut b, OFF_GEN + 24, sb.gen.history[1]);
    b[OFF_ROLE] = sb.role as u8;
    b[OFF_DISK] = sb.disk_state as u8;
    b[OFF_NAME_LEN..OFF_NAME_LEN + 2].copy_from_slice(&(sb.name.len() as u16).to_le_bytes());
    b[OFF_NODE_LEN..OFF_NODE_LEN + 2].copy_from_slice(&(sb.node.len() as u16).to_le_bytes());
    put_u64(&mut b, OFF_AL_EXTENT, sb.al_extent_bytes);
    put_u32(&mut b, OFF_AL_EXTENTS, sb.al_extents);
    put_u32(&mut b, OFF_AL_SLOTS, sb.al_slots);
    b[OFF_NAME..OFF_NAME + sb.name.len()].copy_from_slice(sb.name.as_bytes());
    b[OFF_NODE..OFF_NODE + sb.node.len()].copy_from_slice(sb.node.as_bytes());
    let crc = crc32fast::hash(&b[..OFF_CRC]);
    put_u32(&mut b, OFF_CRC, crc);
    b
}

/// Why one slot could not be used.
pub(super) enum SlotError {
    /// Never written (all zeroes).
    Empty,
    /// Checksum mismatch: torn or corrupt.
    Checksum { stored: u32, computed: u32 },
    /// A hard error that must be reported even if the other slot is fine.
    Fatal(MetaError),
}

pub(super) fn decode(path: &Path, b: &[u8]) -> Result<Superblock, SlotError> {
    if crate::volume::is_zero(b) {
        return Err(SlotError::Empty);
    }
    let stored = get_u32(b, OFF_CRC);
    let computed = crc32fast::hash(&b[..OFF_CRC]);
    if stored != computed {
        return Err(SlotError::Checksum { stored, computed });
    }
    // The checksum is good: from here on a bad value is a real error, not a torn write.
    let fatal = |field: &'static str, value: String| {
        SlotError::Fatal(MetaError::Invalid {
            path: path.to_path_buf(),
            field,
            value,
        })
    };
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&b[OFF_MAGIC..OFF_MAGIC + 8]);
    if magic != META_MAGIC {
        return Err(SlotError::Fatal(MetaError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
            expected: META_MAGIC,
        }));
    }
    let version = get_u32(b, OFF_VERSION);
    if version != META_FORMAT_VERSION {
        return Err(SlotError::Fatal(MetaError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: META_FORMAT_VERSION,
        }));
    }
    let role = Role::from_u8(b[OFF_ROLE]).ok_or_else(|| fatal("role", b[OFF_ROLE].to_string()))?;
    let disk_state = DiskState::from_u8(b[OFF_DISK])
        .ok_or_else(|| fatal("disk state", b[OFF_DISK].to_string()))?;
    let text = |off: usize, len_off: usize, max: usize, field: &'static str| {
        let len = get_u16(b, len_off) as usize;
        if len > max {
            return Err(fatal(field, format!("length {len} > {max}")));
        }
        String::from_utf8(b[off..off + len].to_vec())
            .map_err(|_| fatal(field, "not UTF-8".to_string()))
    };
    let name = text(
        OFF_NAME,
        OFF_NAME_LEN,
        META_RESOURCE_NAME_BYTES_MAX,
        "resource name",
    )?;
    let node = text(
        OFF_NODE,
        OFF_NODE_LEN,
        META_NODE_NAME_BYTES_MAX,
        "node name",
    )?;
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[OFF_UUID..OFF_UUID + 16]);
    let sb = Superblock {
        seq: get_u64(b, OFF_SEQ),
        flags: get_u32(b, OFF_FLAGS),
        uuid,
        name,
        node,
        size_bytes: get_u64(b, OFF_SIZE),
        bitmap_block_bytes: get_u64(b, OFF_BM_BLOCK),
        gen: GenerationIds {
            current: get_u64(b, OFF_GEN),
            bitmap: get_u64(b, OFF_GEN + 8),
            history: [get_u64(b, OFF_GEN + 16), get_u64(b, OFF_GEN + 24)],
        },
        role,
        disk_state,
        al_extent_bytes: get_u64(b, OFF_AL_EXTENT),
        al_extents: get_u32(b, OFF_AL_EXTENTS),
        al_slots: get_u32(b, OFF_AL_SLOTS),
    };
    validate(path, &sb).map_err(SlotError::Fatal)?;
    Ok(sb)
}

/// Check every field a superblock may hold, so the layout derived from it is sane.
pub(super) fn validate(path: &Path, sb: &Superblock) -> Result<(), MetaError> {
    let bad = |field: &'static str, value: String| {
        Err(MetaError::Invalid {
            path: path.to_path_buf(),
            field,
            value,
        })
    };
    if sb.name.is_empty() || sb.name.len() > META_RESOURCE_NAME_BYTES_MAX {
        return bad(
            "resource name",
            format!("{:?} (1..={} bytes)", sb.name, META_RESOURCE_NAME_BYTES_MAX),
        );
    }
    if sb.node.len() > META_NODE_NAME_BYTES_MAX {
        return bad(
            "node name",
            format!("{:?} (at most {} bytes)", sb.node, META_NODE_NAME_BYTES_MAX),
        );
    }
    if sb.flags & !flags::KNOWN != 0 {
        return bad(
            "flags",
            format!(
                "{:#x} (unknown bits {:#x})",
                sb.flags,
                sb.flags & !flags::KNOWN
            ),
        );
    }
    let bm = sb.bitmap_block_bytes;
    if bm < SECTOR_SIZE_BYTES || !bm.is_power_of_two() {
        return bad(
            "bitmap block bytes",
            format!("{bm} (a power of two >= {SECTOR_SIZE_BYTES})"),
        );
    }
    if sb.size_bytes == 0 || !sb.size_bytes.is_multiple_of(SECTOR_SIZE_BYTES) {
        return bad(
            "volume size bytes",
            format!(
                "{} (a non-zero multiple of {SECTOR_SIZE_BYTES})",
                sb.size_bytes
            ),
        );
    }
    let ext = sb.al_extent_bytes;
    if ext < AL_EXTENT_BYTES_MIN || !ext.is_power_of_two() || !ext.is_multiple_of(bm) {
        return bad(
            "activity-log extent bytes",
            format!(
                "{ext} (a power of two >= {AL_EXTENT_BYTES_MIN}, multiple of the bitmap block)"
            ),
        );
    }
    if sb.size_bytes.div_ceil(ext) > u32::MAX as u64 {
        return bad(
            "volume size bytes",
            format!("{} (more than 2^32 activity-log extents)", sb.size_bytes),
        );
    }
    let min_extents = ((NBD_PAYLOAD_BYTES_MAX as u64 / ext + 2) as u32).max(AL_EXTENTS_MIN);
    if sb.al_extents < min_extents || sb.al_extents > AL_EXTENTS_MAX {
        return bad(
            "al-extents",
            format!(
                "{} ({min_extents}..={AL_EXTENTS_MAX} for {ext}-byte extents)",
                sb.al_extents
            ),
        );
    }
    if !(AL_TRANSACTION_SLOTS_MIN..=AL_TRANSACTION_SLOTS_MAX).contains(&sb.al_slots) {
        return bad(
            "activity-log slots",
            format!(
                "{} ({AL_TRANSACTION_SLOTS_MIN}..={AL_TRANSACTION_SLOTS_MAX})",
                sb.al_slots
            ),
        );
    }
    Ok(())
}
