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

mod superblock;

use superblock::{decode, encode, validate, SlotError};
pub use superblock::{
    flags, DiskState, GenerationIds, Role, Superblock, META_FORMAT_VERSION, META_MAGIC,
};
pub(crate) use superblock::{get_u32, get_u64};

use crate::limits::{
    AL_EXTENTS_DEFAULT, AL_EXTENT_BYTES_DEFAULT, AL_TRANSACTION_SLOTS_DEFAULT, BITMAP_BLOCK_BYTES,
    META_BLOCK_BYTES,
};

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
    BadMagic {
        path: PathBuf,
        found: [u8; 8],
        expected: [u8; 8],
    },
    #[error("metadata {path}: format version {found} is not supported (this drl reads version {supported})")]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "metadata {path} is {actual} bytes but its superblock needs {needed} bytes (truncated?)"
    )]
    TooShort {
        path: PathBuf,
        actual: u64,
        needed: u64,
    },
    #[error("metadata {path}: invalid {field}: {value}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        value: String,
    },
    #[error("metadata {path} belongs to resource {found:?}, not {expected:?}")]
    WrongResource {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("metadata {path} was created for a volume of {meta_bytes} bytes but the config now says {config_bytes} bytes: a start never resizes; start it with the size its metadata has, then change size and run `drl resize` (online)")]
    SizeChanged {
        path: PathBuf,
        meta_bytes: u64,
        config_bytes: u64,
    },
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
        let al_slot_bytes = round_up(
            AL_TXN_HEADER_BYTES + 4 * sb.al_extents as u64,
            META_BLOCK_BYTES,
        );
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

/// An open metadata file. Cheap to share (`Arc<MetaFile>`); `update` serialises writers.
#[derive(Debug)]
pub struct MetaFile {
    path: PathBuf,
    file: File,
    /// Follows the superblock's size: [`MetaFile::set_size`] changes both under `current`.
    layout: Mutex<Layout>,
    current: Mutex<Superblock>,
}

impl MetaFile {
    fn io(&self, what: &'static str) -> impl FnOnce(io::Error) -> MetaError + '_ {
        move |source| MetaError::Io {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// Create a new metadata file. Refuses to overwrite an existing file. The file is built
    /// under a temporary name and linked into place, so a crash never leaves a half-made file
    /// under `path`.
    pub fn create(path: &Path, new: &NewMeta) -> Result<MetaFile, MetaError> {
        let io_err = |what: &'static str| {
            move |source| MetaError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        if path.exists() {
            return Err(MetaError::Exists {
                path: path.to_path_buf(),
            });
        }
        let uuid = new.uuid.unwrap_or_else(rand::random);
        let gen = new.gen.unwrap_or_else(|| GenerationIds {
            current: rand::random::<u64>() | 1,
            ..Default::default()
        });
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
            file.set_len(layout.total_bytes)
                .map_err(io_err("set length"))?;
            // Both slots valid from the start (seq 0 and 1), so the first torn update still
            // leaves a good superblock.
            file.write_all_at(&encode(&sb), 0)
                .map_err(io_err("write superblock"))?;
            sb.seq = 1;
            file.write_all_at(&encode(&sb), META_BLOCK_BYTES)
                .map_err(io_err("write superblock"))?;
            file.sync_all().map_err(io_err("fsync"))?;
            std::fs::hard_link(&tmp, path).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    MetaError::Exists {
                        path: path.to_path_buf(),
                    }
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
        Ok(MetaFile {
            path: path.to_path_buf(),
            file,
            layout: Mutex::new(layout),
            current: Mutex::new(sb),
        })
    }

    /// Open an existing metadata file, choosing the newest valid superblock slot.
    pub fn open(path: &Path) -> Result<MetaFile, MetaError> {
        let io_err = |what: &'static str| {
            move |source| MetaError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("open"))?;
        let actual = file.metadata().map_err(io_err("stat"))?.len();
        if actual < 2 * META_BLOCK_BYTES {
            return Err(MetaError::TooShort {
                path: path.to_path_buf(),
                actual,
                needed: 2 * META_BLOCK_BYTES,
            });
        }
        let mut buf = vec![0u8; 2 * META_BLOCK_BYTES as usize];
        file.read_exact_at(&mut buf, 0)
            .map_err(io_err("read superblocks"))?;
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
            [Ok(x), Ok(y)] => {
                if x.seq >= y.seq {
                    x
                } else {
                    y
                }
            }
            [Ok(x), ref other] | [ref other, Ok(x)] => {
                tracing::warn!(path = %path.display(), seq = x.seq, other = %describe(other),
                    "one superblock slot is unusable (torn write?); using the other");
                x
            }
            [ref x, ref y] => {
                return Err(MetaError::Corrupt {
                    path: path.to_path_buf(),
                    reason: format!(
                        "both superblock slots are unusable: slot A {}, slot B {}",
                        describe(x),
                        describe(y)
                    ),
                });
            }
        };
        let layout = Layout::of(&sb);
        if actual < layout.total_bytes {
            return Err(MetaError::TooShort {
                path: path.to_path_buf(),
                actual,
                needed: layout.total_bytes,
            });
        }
        Ok(MetaFile {
            path: path.to_path_buf(),
            file,
            layout: Mutex::new(layout),
            current: Mutex::new(sb),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> Layout {
        *self.layout.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the current superblock.
    pub fn superblock(&self) -> Superblock {
        self.lock().clone()
    }

    /// The role alone: the write path asks per write, and a whole superblock is two String
    /// clones.
    pub fn role(&self) -> Role {
        self.lock().role
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
            (
                sb.uuid,
                sb.name.clone(),
                sb.size_bytes,
                sb.bitmap_block_bytes,
                sb.al_extent_bytes,
                sb.al_extents,
                sb.al_slots,
            )
        };
        if fixed(&next) != fixed(&cur) {
            return Err(MetaError::Invalid {
                path: self.path.clone(),
                field: "superblock update",
                value: "identity or geometry may not change after creation".to_string(),
            });
        }
        validate(&self.path, &next)?;
        self.write_next(&mut cur, next)
    }

    /// Write `next` to the slot that is not current with `seq + 1`, make it durable, then
    /// make it current.
    fn write_next(&self, cur: &mut Superblock, mut next: Superblock) -> Result<(), MetaError> {
        next.seq = cur.seq + 1;
        let slot = next.seq % 2;
        self.file
            .write_all_at(&encode(&next), slot * META_BLOCK_BYTES)
            .map_err(self.io("write superblock"))?;
        self.file
            .sync_data()
            .map_err(self.io("fdatasync superblock"))?;
        *cur = next;
        Ok(())
    }

    /// Change the volume size the superblock records (online grow, guarded shrink; the
    /// caller has checked that a shrunk tail holds nothing). The format does not change, so
    /// metadata of any earlier drl stays readable: the bitmap is the last region of the file,
    /// so every block keeps its bit at the same offset and only the file's end moves.
    ///
    /// Grow: the file is first cut to the current layout and then extended, so every new bit
    /// reads zero (clean: the new area is zero on this node and on the peer, nothing to
    /// resync), and made durable *before* the superblock names the new size. A crash in
    /// between leaves a longer file under the old superblock, which opens as before.
    /// Shrink: the superblock first, then the file is cut; a crash in between again leaves a
    /// longer file. Bits past the new end in the last page are cleared by the next load.
    pub fn set_size(&self, size_bytes: u64) -> Result<Layout, MetaError> {
        let mut cur = self.lock();
        let mut next = cur.clone();
        next.size_bytes = size_bytes;
        validate(&self.path, &next)?;
        let old = Layout::of(&cur);
        let new = Layout::of(&next);
        if size_bytes > cur.size_bytes {
            self.file
                .set_len(old.total_bytes)
                .map_err(self.io("cut to the current layout before growing"))?;
            self.file
                .set_len(new.total_bytes)
                .map_err(self.io("grow the bitmap area"))?;
            self.file.sync_all().map_err(self.io("fsync grown file"))?;
            self.write_next(&mut cur, next)?;
        } else if size_bytes < cur.size_bytes {
            self.write_next(&mut cur, next)?;
            self.file
                .set_len(new.total_bytes)
                .map_err(self.io("cut the bitmap area"))?;
            self.file.sync_all().map_err(self.io("fsync shrunk file"))?;
        }
        *self.layout.lock().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(new)
    }

    /// Check that this file belongs to resource `name` of `size_bytes` (the configuration).
    pub fn check_matches(&self, name: &str, size_bytes: u64) -> Result<(), MetaError> {
        self.check_fits(name, size_bytes, false)
    }

    /// [`MetaFile::check_matches`], or with `capacity` (a replicated resource: the configured
    /// `size` is this node's capacity, the volume's size is agreed with the peer and may be
    /// smaller until both nodes have grown) a volume no larger than `size_bytes`.
    pub fn check_fits(&self, name: &str, size_bytes: u64, capacity: bool) -> Result<(), MetaError> {
        let sb = self.lock();
        if sb.name != name {
            return Err(MetaError::WrongResource {
                path: self.path.clone(),
                found: sb.name.clone(),
                expected: name.to_string(),
            });
        }
        if sb.size_bytes != size_bytes && !(capacity && sb.size_bytes < size_bytes) {
            return Err(MetaError::SizeChanged {
                path: self.path.clone(),
                meta_bytes: sb.size_bytes,
                config_bytes: size_bytes,
            });
        }
        Ok(())
    }

    /// Read `buf.len()` bytes at an absolute file offset (used by the bitmap and the AL).
    pub fn read_at(
        &self,
        buf: &mut [u8],
        offset: u64,
        what: &'static str,
    ) -> Result<(), MetaError> {
        self.file.read_exact_at(buf, offset).map_err(self.io(what))
    }

    /// Write at an absolute file offset inside the activity-log or bitmap area. Not durable
    /// until [`MetaFile::sync`].
    pub fn write_at(&self, buf: &[u8], offset: u64, what: &'static str) -> Result<(), MetaError> {
        // Superblock slots are written by `update` only; nothing is written past the layout.
        let end = offset.checked_add(buf.len() as u64);
        let layout = self.layout();
        if offset < layout.al_offset || end.is_none_or(|e| e > layout.total_bytes) {
            return Err(MetaError::Invalid {
                path: self.path.clone(),
                field: what,
                value: format!(
                    "write of {} bytes at offset {offset} outside the AL and bitmap areas",
                    buf.len()
                ),
            });
        }
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

#[cfg(test)]
mod tests {
    use super::superblock::{put_u32, OFF_CRC, OFF_VERSION};
    use super::*;
    use crate::limits::META_RESOURCE_NAME_BYTES_MAX;
    use std::io::Write;

    const MIB: u64 = 1024 * 1024;

    fn new_meta() -> NewMeta {
        let mut n = NewMeta::new("r0", "node-a", 64 * MIB);
        n.uuid = Some([7; 16]);
        n.gen = Some(GenerationIds {
            current: 11,
            bitmap: 22,
            history: [33, 44],
        });
        n.role = Role::Primary;
        n.disk_state = DiskState::UpToDate;
        n
    }

    fn flip_byte(path: &Path, offset: u64) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset).unwrap();
        b[0] ^= 0x5a;
        f.write_all_at(&b, offset).unwrap();
    }

    #[test]
    fn fresh_file_roundtrips_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0.meta");
        let m = MetaFile::create(&path, &new_meta()).unwrap();
        let created = m.superblock();
        drop(m);
        let sb = MetaFile::open(&path).unwrap().superblock();
        assert_eq!(sb, created);
        assert_eq!(sb.seq, 1);
        assert_eq!(sb.uuid, [7; 16]);
        assert_eq!(sb.name, "r0");
        assert_eq!(sb.node, "node-a");
        assert_eq!(sb.size_bytes, 64 * MIB);
        assert_eq!(sb.bitmap_block_bytes, BITMAP_BLOCK_BYTES);
        assert_eq!(
            sb.gen,
            GenerationIds {
                current: 11,
                bitmap: 22,
                history: [33, 44]
            }
        );
        assert_eq!(sb.role, Role::Primary);
        assert_eq!(sb.disk_state, DiskState::UpToDate);
        assert_eq!(sb.flags, flags::CLEAN_SHUTDOWN);
        assert_eq!(sb.al_extent_bytes, AL_EXTENT_BYTES_DEFAULT);
        assert_eq!(sb.al_extents, AL_EXTENTS_DEFAULT);
        assert_eq!(sb.al_slots, AL_TRANSACTION_SLOTS_DEFAULT);
        // 64 MiB / 4 KiB = 16384 bits = 2 KiB, rounded to one 4 KiB page.
        let l = MetaFile::open(&path).unwrap().layout();
        assert_eq!(l.bitmap_blocks, 16384);
        assert_eq!(l.bitmap_bytes, 4096);
        assert_eq!(l.al_slot_bytes, 8192, "1237 extents need two 4 KiB blocks");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), l.total_bytes);
    }

    #[test]
    fn random_identity_when_not_given() {
        let dir = tempfile::tempdir().unwrap();
        let a = MetaFile::create(&dir.path().join("a"), &NewMeta::new("r0", "n", MIB)).unwrap();
        let b = MetaFile::create(&dir.path().join("b"), &NewMeta::new("r0", "n", MIB)).unwrap();
        assert_ne!(a.superblock().uuid, b.superblock().uuid);
        assert_ne!(a.superblock().gen.current, 0);
    }

    #[test]
    fn create_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0.meta");
        std::fs::write(&path, b"precious").unwrap();
        let err = MetaFile::create(&path, &new_meta()).unwrap_err();
        assert!(matches!(err, MetaError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn create_validates_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = new_meta();
        n.name = "x".repeat(META_RESOURCE_NAME_BYTES_MAX + 1);
        let err = MetaFile::create(&dir.path().join("a"), &n).unwrap_err();
        assert!(err.to_string().contains("resource name"), "{err}");
        let mut n = new_meta();
        n.size_bytes = 1000;
        let err = MetaFile::create(&dir.path().join("b"), &n).unwrap_err();
        assert!(err.to_string().contains("1000"), "{err}");
        let mut n = new_meta();
        n.al_extents = 3;
        let err = MetaFile::create(&dir.path().join("c"), &n).unwrap_err();
        assert!(err.to_string().contains("al-extents"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn update_alternates_slots_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0.meta");
        let m = MetaFile::create(&path, &new_meta()).unwrap();
        m.update(|sb| sb.disk_state = DiskState::Outdated).unwrap();
        assert_eq!(m.superblock().seq, 2);
        m.update(|sb| {
            sb.gen.current = 99;
            sb.role = Role::Secondary;
        })
        .unwrap();
        drop(m);
        let sb = MetaFile::open(&path).unwrap().superblock();
        assert_eq!(sb.seq, 3);
        assert_eq!(sb.gen.current, 99);
        assert_eq!(sb.role, Role::Secondary);
        assert_eq!(sb.disk_state, DiskState::Outdated);
    }

    #[test]
    fn update_refuses_geometry_change() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaFile::create(&dir.path().join("m"), &new_meta()).unwrap();
        let err = m.update(|sb| sb.size_bytes *= 2).unwrap_err();
        assert!(matches!(err, MetaError::Invalid { .. }), "{err}");
        assert_eq!(m.superblock().seq, 1);
        let err = m.update(|sb| sb.flags |= 1 << 30).unwrap_err();
        assert!(err.to_string().contains("flags"), "{err}");
    }

    #[test]
    fn corrupt_slot_a_falls_back_to_slot_b() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0.meta");
        let m = MetaFile::create(&path, &new_meta()).unwrap();
        m.update(|sb| sb.gen.current = 100).unwrap(); // seq 2 -> slot A
        m.update(|sb| sb.gen.current = 200).unwrap(); // seq 3 -> slot B
        drop(m);
        flip_byte(&path, 200); // inside slot A's name area
        let sb = MetaFile::open(&path).unwrap().superblock();
        assert_eq!((sb.seq, sb.gen.current), (3, 200));
    }

    #[test]
    fn torn_newest_slot_uses_previous_superblock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0.meta");
        let m = MetaFile::create(&path, &new_meta()).unwrap();
        m.update(|sb| sb.gen.current = 100).unwrap(); // seq 2 -> slot A
        m.update(|sb| sb.gen.current = 200).unwrap(); // seq 3 -> slot B
        drop(m);
        // Simulate a torn write of slot B: only its first 512 bytes are new garbage.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xee; 512], META_BLOCK_BYTES).unwrap();
        let m = MetaFile::open(&path).unwrap();
        assert_eq!((m.superblock().seq, m.superblock().gen.current), (2, 100));
        // The next update goes to slot B again (seq 3) and repairs it.
        m.update(|sb| sb.gen.current = 300).unwrap();
        drop(m);
        let sb = MetaFile::open(&path).unwrap().superblock();
        assert_eq!((sb.seq, sb.gen.current), (3, 300));
    }

    #[test]
    fn both_slots_bad_is_corrupt_not_reinitialised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0.meta");
        drop(MetaFile::create(&path, &new_meta()).unwrap());
        flip_byte(&path, 100);
        flip_byte(&path, META_BLOCK_BYTES + 100);
        let before = std::fs::read(&path).unwrap();
        let err = MetaFile::open(&path).unwrap_err();
        match &err {
            MetaError::Corrupt { path: p, reason } => {
                assert_eq!(p, &path);
                assert!(
                    reason.contains("slot A") && reason.contains("checksum"),
                    "{reason}"
                );
            }
            other => panic!("expected Corrupt, got {other}"),
        }
        assert!(err.to_string().contains(&*path.to_string_lossy()));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "open must not rewrite a corrupt file"
        );
    }

    #[test]
    fn truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0.meta");
        let l = MetaFile::create(&path, &new_meta()).unwrap().layout();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(l.total_bytes - 1).unwrap();
        let err = MetaFile::open(&path).unwrap_err();
        assert!(
            matches!(err, MetaError::TooShort { actual, needed, .. } if actual == l.total_bytes - 1 && needed == l.total_bytes),
            "{err}"
        );
        f.set_len(100).unwrap();
        let err = MetaFile::open(&path).unwrap_err();
        assert!(
            matches!(err, MetaError::TooShort { actual: 100, .. }),
            "{err}"
        );
    }

    #[test]
    fn garbage_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.meta");
        let mut f = File::create(&path).unwrap();
        let junk: Vec<u8> = (0..3 * META_BLOCK_BYTES)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        f.write_all(&junk).unwrap();
        let err = MetaFile::open(&path).unwrap_err();
        assert!(matches!(err, MetaError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("garbage.meta"), "{err}");
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0.meta");
        drop(MetaFile::create(&path, &new_meta()).unwrap());
        // Rewrite slot A with a valid checksum but another version.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut slot = vec![0u8; META_BLOCK_BYTES as usize];
        f.read_exact_at(&mut slot, 0).unwrap();
        put_u32(&mut slot, OFF_VERSION, 7);
        let crc = crc32fast::hash(&slot[..OFF_CRC]);
        put_u32(&mut slot, OFF_CRC, crc);
        f.write_all_at(&slot, 0).unwrap();
        let err = MetaFile::open(&path).unwrap_err();
        assert!(
            matches!(err, MetaError::UnsupportedVersion { found: 7, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("version 7"), "{err}");
        slot[0..8].copy_from_slice(b"NOTDRL!!");
        put_u32(&mut slot, OFF_VERSION, META_FORMAT_VERSION);
        let crc = crc32fast::hash(&slot[..OFF_CRC]);
        put_u32(&mut slot, OFF_CRC, crc);
        f.write_all_at(&slot, 0).unwrap();
        let err = MetaFile::open(&path).unwrap_err();
        assert!(matches!(err, MetaError::BadMagic { .. }), "{err}");
        assert!(err.to_string().contains("r0.meta"), "{err}");
    }

    #[test]
    fn check_matches_reports_config_changes() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaFile::create(&dir.path().join("m"), &new_meta()).unwrap();
        m.check_matches("r0", 64 * MIB).unwrap();
        let err = m.check_matches("r0", 128 * MIB).unwrap_err();
        assert!(
            matches!(err, MetaError::SizeChanged { meta_bytes, config_bytes, .. } if meta_bytes == 64 * MIB && config_bytes == 128 * MIB)
        );
        assert!(err.to_string().contains("drl resize"), "{err}");
        let err = m.check_matches("r0", 32 * MIB).unwrap_err();
        assert!(matches!(err, MetaError::SizeChanged { .. }), "{err}");
        let err = m.check_matches("r1", 64 * MIB).unwrap_err();
        assert!(matches!(err, MetaError::WrongResource { .. }), "{err}");
        // A replicated node's larger `size` is its capacity: accepted; a smaller one is not.
        m.check_fits("r0", 128 * MIB, true).unwrap();
        let err = m.check_fits("r0", 32 * MIB, true).unwrap_err();
        assert!(matches!(err, MetaError::SizeChanged { .. }), "{err}");
    }

    #[test]
    fn raw_writes_cannot_touch_the_superblock_or_run_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let m = MetaFile::create(&dir.path().join("m"), &new_meta()).unwrap();
        let l = m.layout();
        assert!(m.write_at(&[1], 0, "test").is_err());
        assert!(m.write_at(&[1], META_BLOCK_BYTES, "test").is_err());
        assert!(m.write_at(&[1, 2], l.total_bytes - 1, "test").is_err());
        m.write_at(&[1], l.total_bytes - 1, "test").unwrap();
        m.write_at(&[0], l.al_offset, "test").unwrap();
    }

    /// Growing keeps every bit where it was, the new bits read zero even over stale bytes
    /// past the old end, and the file reopens with the new size; shrinking cuts the file.
    #[test]
    fn set_size_grows_and_shrinks_the_bitmap_area_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let m = MetaFile::create(&path, &new_meta()).unwrap();
        let old = m.layout();
        m.write_at(&[0xff; 8], old.bitmap_offset, "test").unwrap();
        // Stale bytes past the layout (an interrupted earlier shrink) must not become bits.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xee; 4096], old.total_bytes).unwrap();
        drop(f);
        let grown = m.set_size(1024 * MIB).unwrap();
        assert_eq!(
            grown.bitmap_offset, old.bitmap_offset,
            "bits keep their offsets"
        );
        assert_eq!(grown.bitmap_blocks, 1024 * MIB / BITMAP_BLOCK_BYTES);
        assert_eq!(m.superblock().size_bytes, 1024 * MIB);
        drop(m);
        let m = MetaFile::open(&path).unwrap();
        assert_eq!(m.superblock().size_bytes, 1024 * MIB);
        assert_eq!(m.layout(), grown);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), grown.total_bytes);
        let mut bits = vec![0u8; grown.bitmap_bytes as usize];
        m.read_at(&mut bits, grown.bitmap_offset, "test").unwrap();
        assert_eq!(&bits[..8], &[0xff; 8]);
        assert!(
            bits[8..].iter().all(|&b| b == 0),
            "new bits must read clean"
        );
        m.check_matches("r0", 1024 * MIB).unwrap();

        let shrunk = m.set_size(32 * MIB).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), shrunk.total_bytes);
        drop(m);
        assert_eq!(
            MetaFile::open(&path).unwrap().superblock().size_bytes,
            32 * MIB
        );
    }

    /// A crash after the file grew but before the superblock named the new size: the old
    /// superblock and a longer file open as the old size.
    #[test]
    fn a_grow_interrupted_before_the_superblock_keeps_the_old_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let m = MetaFile::create(&path, &new_meta()).unwrap();
        let l = m.layout();
        drop(m);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(l.total_bytes + 64 * META_BLOCK_BYTES).unwrap();
        drop(f);
        let m = MetaFile::open(&path).unwrap();
        assert_eq!(m.superblock().size_bytes, 64 * MIB);
        assert_eq!(m.layout(), l);
        assert!(m.set_size(0).is_err(), "a zero size is refused");
        assert_eq!(m.superblock().size_bytes, 64 * MIB);
    }
}
