//! The metadata file of one volume: a versioned, checksummed superblock written atomically,
//! followed by the activity log and the dirty bitmap that replication uses.
//!
//! Layout (every region a multiple of [`META_BLOCK_BYTES`], all integers little-endian):
//!
//! ```text
//! [superblock slot A, 4 KiB][superblock slot B, 4 KiB][activity log ring][dirty bitmap]
//! ```
//!
//! Atomicity: the superblock is never overwritten in place. Each update writes the slot that
//! is *not* current (`slot = seq % 2`) with `seq + 1` and a CRC32 over the slot, then
//! `fdatasync`s. On open both slots are read; the valid slot with the higher sequence number
//! wins. A write torn by a crash leaves a bad checksum in one slot and the previous superblock
//! intact in the other, so the file is never silently reinitialised: if *both* slots are bad
//! the file is reported as corrupt ([`MetaError::Corrupt`]) and the admin decides.
//!
//! The activity log area holds `al_slots` transaction slots, each large enough for the full
//! hot set (see [`super::activity_log`]). The bitmap area holds one bit per
//! `bitmap_block_bytes` of the volume (see [`super::bitmap`]). Both sizes follow from the
//! superblock, and a file shorter than what its superblock declares is refused.
//!
//! Plain std file I/O (`pwrite` + `fdatasync`) is used: metadata is small and written rarely.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::limits::{
    AL_EXTENTS_DEFAULT, AL_EXTENTS_MAX, AL_EXTENT_BYTES_DEFAULT, AL_EXTENT_BYTES_MIN,
    AL_TRANSACTION_SLOTS_DEFAULT, AL_TRANSACTION_SLOTS_MAX, AL_TRANSACTION_SLOTS_MIN,
    BITMAP_BLOCK_BYTES, META_BLOCK_BYTES, META_NODE_NAME_BYTES_MAX, META_RESOURCE_NAME_BYTES_MAX,
    NBD_PAYLOAD_BYTES_MAX, SECTOR_SIZE_BYTES,
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
    /// Flags this version understands; others make open fail rather than be dropped.
    pub const KNOWN: u32 = CLEAN_SHUTDOWN | WAS_PRIMARY | CRASHED_PRIMARY | FULL_SYNC;
}

/// What can go wrong with a metadata file. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("metadata {path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("metadata {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("metadata {path}: bad magic {found:02x?} (expected {expected:02x?}): not a drl metadata file")]
    BadMagic { path: PathBuf, found: [u8; 8], expected: [u8; 8] },
    #[error("metadata {path}: format version {found} is not supported (this drl reads version {supported})")]
    UnsupportedVersion { path: PathBuf, found: u32, supported: u32 },
    #[error("metadata {path} is {actual} bytes but its superblock needs {needed} bytes (truncated?)")]
    TooShort { path: PathBuf, actual: u64, needed: u64 },
    #[error("metadata {path}: invalid {field}: {value}")]
    Invalid { path: PathBuf, field: &'static str, value: String },
    #[error("metadata {path} belongs to resource {found:?}, not {expected:?}")]
    WrongResource { path: PathBuf, found: String, expected: String },
    #[error("metadata {path} was created for a volume of {meta_bytes} bytes but the volume is now {config_bytes} bytes; resize is not supported yet")]
    SizeChanged { path: PathBuf, meta_bytes: u64, config_bytes: u64 },
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

/// Parameters of a new metadata file. [`NewMeta::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct NewMeta {
    pub name: String,
    pub node: String,
    /// `None`: a random 128-bit identity is generated.
    pub uuid: Option<[u8; 16]>,
    pub size_bytes: u64,
    pub bitmap_block_bytes: u64,
    pub al_extent_bytes: u64,
    pub al_extents: u32,
    pub al_slots: u32,
    pub role: Role,
    pub disk_state: DiskState,
    /// `None`: a random current generation id, the others zero.
    pub gen: Option<GenerationIds>,
}

impl NewMeta {
    pub fn new(name: &str, node: &str, size_bytes: u64) -> NewMeta {
        NewMeta {
            name: name.to_string(),
            node: node.to_string(),
            uuid: None,
            size_bytes,
            bitmap_block_bytes: BITMAP_BLOCK_BYTES,
            al_extent_bytes: AL_EXTENT_BYTES_DEFAULT,
            al_extents: AL_EXTENTS_DEFAULT,
            al_slots: AL_TRANSACTION_SLOTS_DEFAULT,
            role: Role::Secondary,
            disk_state: DiskState::Inconsistent,
            gen: None,
        }
    }
}

/// Where each region lives in the file, derived from the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub al_offset: u64,
    pub al_slot_bytes: u64,
    pub al_slots: u32,
    pub bitmap_offset: u64,
    pub bitmap_bytes: u64,
    pub bitmap_blocks: u64,
    pub total_bytes: u64,
}

/// Bytes of an activity-log transaction header; the extent numbers (u32 each) follow.
pub const AL_TXN_HEADER_BYTES: u64 = 64;

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

impl Layout {
    fn of(sb: &Superblock) -> Layout {
        let al_slot_bytes =
            round_up(AL_TXN_HEADER_BYTES + 4 * sb.al_extents as u64, META_BLOCK_BYTES);
        let al_offset = 2 * META_BLOCK_BYTES;
        let bitmap_offset = al_offset + al_slot_bytes * sb.al_slots as u64;
        let bitmap_blocks = sb.size_bytes.div_ceil(sb.bitmap_block_bytes);
        let bitmap_bytes = round_up(bitmap_blocks.div_ceil(8), META_BLOCK_BYTES);
        Layout {
            al_offset,
            al_slot_bytes,
            al_slots: sb.al_slots,
            bitmap_offset,
            bitmap_bytes,
            bitmap_blocks,
            total_bytes: bitmap_offset + bitmap_bytes,
        }
    }
}

// Superblock field offsets inside a slot.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_FLAGS: usize = 12;
const OFF_SEQ: usize = 16;
const OFF_UUID: usize = 24;
const OFF_SIZE: usize = 40;
const OFF_BM_BLOCK: usize = 48;
const OFF_GEN: usize = 56; // current, bitmap, history[0], history[1]
const OFF_ROLE: usize = 88;
const OFF_DISK: usize = 89;
const OFF_NAME_LEN: usize = 90;
const OFF_NODE_LEN: usize = 92;
const OFF_AL_EXTENT: usize = 96;
const OFF_AL_EXTENTS: usize = 104;
const OFF_AL_SLOTS: usize = 108;
const OFF_NAME: usize = 128;
const OFF_NODE: usize = OFF_NAME + META_RESOURCE_NAME_BYTES_MAX;
const OFF_CRC: usize = META_BLOCK_BYTES as usize - 4;
const _: () = assert!(OFF_NODE + META_NODE_NAME_BYTES_MAX <= OFF_CRC);
const _: () = assert!(META_RESOURCE_NAME_BYTES_MAX <= u16::MAX as usize);

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
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
fn encode(sb: &Superblock) -> Vec<u8> {
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
enum SlotError {
    /// Never written (all zeroes).
    Empty,
    /// Checksum mismatch: torn or corrupt.
    Checksum { stored: u32, computed: u32 },
    /// A hard error that must be reported even if the other slot is fine.
    Fatal(MetaError),
}

fn decode(path: &Path, b: &[u8]) -> Result<Superblock, SlotError> {
    if b.iter().all(|&x| x == 0) {
        return Err(SlotError::Empty);
    }
    let stored = get_u32(b, OFF_CRC);
    let computed = crc32fast::hash(&b[..OFF_CRC]);
    if stored != computed {
        return Err(SlotError::Checksum { stored, computed });
    }
    // The checksum is good: from here on a bad value is a real error, not a torn write.
    let fatal = |field: &'static str, value: String| {
        SlotError::Fatal(MetaError::Invalid { path: path.to_path_buf(), field, value })
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
    let name = text(OFF_NAME, OFF_NAME_LEN, META_RESOURCE_NAME_BYTES_MAX, "resource name")?;
    let node = text(OFF_NODE, OFF_NODE_LEN, META_NODE_NAME_BYTES_MAX, "node name")?;
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
fn validate(path: &Path, sb: &Superblock) -> Result<(), MetaError> {
    let bad = |field: &'static str, value: String| {
        Err(MetaError::Invalid { path: path.to_path_buf(), field, value })
    };
    if sb.name.is_empty() || sb.name.len() > META_RESOURCE_NAME_BYTES_MAX {
        return bad("resource name", format!("{:?} (1..={} bytes)", sb.name, META_RESOURCE_NAME_BYTES_MAX));
    }
    if sb.node.len() > META_NODE_NAME_BYTES_MAX {
        return bad("node name", format!("{:?} (at most {} bytes)", sb.node, META_NODE_NAME_BYTES_MAX));
    }
    if sb.flags & !flags::KNOWN != 0 {
        return bad("flags", format!("{:#x} (unknown bits {:#x})", sb.flags, sb.flags & !flags::KNOWN));
    }
    let bm = sb.bitmap_block_bytes;
    if bm < SECTOR_SIZE_BYTES || !bm.is_power_of_two() {
        return bad("bitmap block bytes", format!("{bm} (a power of two >= {SECTOR_SIZE_BYTES})"));
    }
    if sb.size_bytes == 0 || sb.size_bytes % SECTOR_SIZE_BYTES != 0 {
        return bad("volume size bytes", format!("{} (a non-zero multiple of {SECTOR_SIZE_BYTES})", sb.size_bytes));
    }
    let ext = sb.al_extent_bytes;
    if ext < AL_EXTENT_BYTES_MIN || !ext.is_power_of_two() || ext % bm != 0 {
        return bad("activity-log extent bytes", format!("{ext} (a power of two >= {AL_EXTENT_BYTES_MIN}, multiple of the bitmap block)"));
    }
    if sb.size_bytes.div_ceil(ext) > u32::MAX as u64 {
        return bad("volume size bytes", format!("{} (more than 2^32 activity-log extents)", sb.size_bytes));
    }
    let min_extents = (NBD_PAYLOAD_BYTES_MAX as u64 / ext + 2) as u32;
    if sb.al_extents < min_extents || sb.al_extents > AL_EXTENTS_MAX {
        return bad("al-extents", format!("{} ({min_extents}..={AL_EXTENTS_MAX} for {ext}-byte extents)", sb.al_extents));
    }
    if !(AL_TRANSACTION_SLOTS_MIN..=AL_TRANSACTION_SLOTS_MAX).contains(&sb.al_slots) {
        return bad("activity-log slots", format!("{} ({AL_TRANSACTION_SLOTS_MIN}..={AL_TRANSACTION_SLOTS_MAX})", sb.al_slots));
    }
    Ok(())
}

/// An open metadata file. Cheap to share (`Arc<MetaFile>`); `update` serialises writers.
#[derive(Debug)]
pub struct MetaFile {
    path: PathBuf,
    file: File,
    layout: Layout,
    current: Mutex<Superblock>,
}

impl MetaFile {
    fn io(&self, what: &'static str) -> impl FnOnce(io::Error) -> MetaError + '_ {
        move |source| MetaError::Io { path: self.path.clone(), what, source }
    }

    /// Create a new metadata file. Refuses to overwrite an existing file. The file is built
    /// under a temporary name and linked into place, so a crash never leaves a half-made file
    /// under `path`.
    pub fn create(path: &Path, new: &NewMeta) -> Result<MetaFile, MetaError> {
        let io_err = |what: &'static str| {
            move |source| MetaError::Io { path: path.to_path_buf(), what, source }
        };
        if path.exists() {
            return Err(MetaError::Exists { path: path.to_path_buf() });
        }
        let uuid = new.uuid.unwrap_or_else(rand::random);
        let gen = new.gen.unwrap_or_else(|| GenerationIds { current: rand::random::<u64>() | 1, ..Default::default() });
        let mut sb = Superblock {
            seq: 0,
            flags: flags::CLEAN_SHUTDOWN,
            uuid,
            name: new.name.clone(),
            node: new.node.clone(),
            size_bytes: new.size_bytes,
            bitmap_block_bytes: new.bitmap_block_bytes,
            gen,
            role: new.role,
            disk_state: new.disk_state,
            al_extent_bytes: new.al_extent_bytes,
            al_extents: new.al_extents,
            al_slots: new.al_slots,
        };
        validate(path, &sb)?;
        let layout = Layout::of(&sb);
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let result = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io_err("create temporary file"))?;
            file.set_len(layout.total_bytes).map_err(io_err("set length"))?;
            // Both slots valid from the start (seq 0 and 1), so the first torn update still
            // leaves a good superblock.
            file.write_all_at(&encode(&sb), 0).map_err(io_err("write superblock"))?;
            sb.seq = 1;
            file.write_all_at(&encode(&sb), META_BLOCK_BYTES).map_err(io_err("write superblock"))?;
            file.sync_all().map_err(io_err("fsync"))?;
            std::fs::hard_link(&tmp, path).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    MetaError::Exists { path: path.to_path_buf() }
                } else {
                    io_err("link into place")(e)
                }
            })?;
            Ok(file)
        })();
        let _ = std::fs::remove_file(&tmp);
        let file = result?;
        sync_parent(path).map_err(io_err("fsync parent directory"))?;
        tracing::info!(path = %path.display(), resource = %sb.name, uuid = %sb.uuid_hex(),
            size_bytes = sb.size_bytes, "created metadata");
        Ok(MetaFile { path: path.to_path_buf(), file, layout, current: Mutex::new(sb) })
    }

    /// Open an existing metadata file, choosing the newest valid superblock slot.
    pub fn open(path: &Path) -> Result<MetaFile, MetaError> {
        let io_err = |what: &'static str| {
            move |source| MetaError::Io { path: path.to_path_buf(), what, source }
        };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err("open"))?;
        let actual = file.metadata().map_err(io_err("stat"))?.len();
        if actual < 2 * META_BLOCK_BYTES {
            return Err(MetaError::TooShort { path: path.to_path_buf(), actual, needed: 2 * META_BLOCK_BYTES });
        }
        let mut buf = vec![0u8; 2 * META_BLOCK_BYTES as usize];
        file.read_exact_at(&mut buf, 0).map_err(io_err("read superblocks"))?;
        let (a, b) = buf.split_at(META_BLOCK_BYTES as usize);
        let slots = [decode(path, a), decode(path, b)];
        let describe = |r: &Result<Superblock, SlotError>| match r {
            Ok(sb) => format!("valid (seq {})", sb.seq),
            Err(SlotError::Empty) => "never written (all zero)".to_string(),
            Err(SlotError::Checksum { stored, computed }) => {
                format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            Err(SlotError::Fatal(e)) => e.to_string(),
        };
        let sb = match slots {
            [Err(SlotError::Fatal(e)), _] | [_, Err(SlotError::Fatal(e))] => return Err(e),
            [Ok(x), Ok(y)] => if x.seq >= y.seq { x } else { y },
            [Ok(x), ref other] | [ref other, Ok(x)] => {
                tracing::warn!(path = %path.display(), seq = x.seq, other = %describe(other),
                    "one superblock slot is unusable (torn write?); using the other");
                x
            }
            [ref x, ref y] => {
                return Err(MetaError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!("both superblock slots are unusable: slot A {}, slot B {}", describe(x), describe(y)),
                });
            }
        };
        let layout = Layout::of(&sb);
        if actual < layout.total_bytes {
            return Err(MetaError::TooShort { path: path.to_path_buf(), actual, needed: layout.total_bytes });
        }
        Ok(MetaFile { path: path.to_path_buf(), file, layout, current: Mutex::new(sb) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// A copy of the current superblock.
    pub fn superblock(&self) -> Superblock {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Superblock> {
        // A panic while holding the lock cannot leave the superblock half-changed: `update`
        // only replaces it after the write succeeded.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change the superblock atomically: `f` edits a copy, which is written to the other slot
    /// with `seq + 1` and made durable; only then does it become current. Geometry and
    /// identity (uuid, name, size, bitmap block, AL layout) cannot be changed this way.
    pub fn update(&self, f: impl FnOnce(&mut Superblock)) -> Result<(), MetaError> {
        let mut cur = self.lock();
        let mut next = cur.clone();
        f(&mut next);
        let fixed = |sb: &Superblock| {
            (sb.uuid, sb.name.clone(), sb.size_bytes, sb.bitmap_block_bytes, sb.al_extent_bytes, sb.al_extents, sb.al_slots)
        };
        if fixed(&next) != fixed(&cur) {
            return Err(MetaError::Invalid {
                path: self.path.clone(),
                field: "superblock update",
                value: "identity or geometry may not change after creation".to_string(),
            });
        }
        validate(&self.path, &next)?;
        next.seq = cur.seq + 1;
        let slot = next.seq % 2;
        self.file
            .write_all_at(&encode(&next), slot * META_BLOCK_BYTES)
            .map_err(self.io("write superblock"))?;
        self.file.sync_data().map_err(self.io("fdatasync superblock"))?;
        *cur = next;
        Ok(())
    }

    /// Check that this file belongs to resource `name` of `size_bytes` (the configuration).
    pub fn check_matches(&self, name: &str, size_bytes: u64) -> Result<(), MetaError> {
        let sb = self.lock();
        if sb.name != name {
            return Err(MetaError::WrongResource { path: self.path.clone(), found: sb.name.clone(), expected: name.to_string() });
        }
        if sb.size_bytes != size_bytes {
            return Err(MetaError::SizeChanged { path: self.path.clone(), meta_bytes: sb.size_bytes, config_bytes: size_bytes });
        }
        Ok(())
    }

    /// Read `buf.len()` bytes at an absolute file offset (used by the bitmap and the AL).
    pub fn read_at(&self, buf: &mut [u8], offset: u64, what: &'static str) -> Result<(), MetaError> {
        self.file.read_exact_at(buf, offset).map_err(self.io(what))
    }

    /// Write at an absolute file offset. Not durable until [`MetaFile::sync`].
    pub fn write_at(&self, buf: &[u8], offset: u64, what: &'static str) -> Result<(), MetaError> {
        debug_assert!(offset >= self.layout.al_offset, "superblock slots are written by update only");
        debug_assert!(offset + buf.len() as u64 <= self.layout.total_bytes);
        self.file.write_all_at(buf, offset).map_err(self.io(what))
    }

    /// `fdatasync` the file.
    pub fn sync(&self, what: &'static str) -> Result<(), MetaError> {
        self.file.sync_data().map_err(self.io(what))
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

