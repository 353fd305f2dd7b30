//! One owner per disk, and a start that changes nothing until everything is checked.
//!
//! A daemon that opens a resource first *claims* its files: an exclusive `flock` on the
//! backing disk and on the metadata file (held on its own descriptor for the resource's life,
//! so no other open or close of the same file in this process drops it), and for a block
//! device an `O_EXCL` open, which the kernel refuses while someone else (a mount, another
//! exclusive opener) holds the device. A second daemon, or `drl create-md` while the daemon
//! runs, is refused with the other owner's pid (found in `/proc/locks`, as `lslocks` does).
//!
//! [`plan`] looks before anything is touched: a disk or metadata file whose directory does
//! not exist is an error (a typo must not become a new RAM-backed file), an existing metadata
//! file must be readable and match the resource's name and size, an existing block device must
//! be large enough. Only then does the caller create or grow a file, so a refused start leaves
//! every file as it was. The plan also says which files a start would create (`check-config`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::volume::meta::MetaFile;

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("{what} {path} is in use by another process{}: two owners would overwrite each other's data (stop the other daemon first)",
        pid.map_or(String::new(), |p| format!(" (pid {p}{})", comm(p))))]
    Held {
        what: &'static str,
        path: PathBuf,
        pid: Option<u32>,
    },
    #[error("{what} {path}: its directory {dir} does not exist (a typo? drl creates files, never directories)")]
    NoDirectory {
        what: &'static str,
        path: PathBuf,
        dir: PathBuf,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

/// What a start of one resource would do with its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The backing disk does not exist: a sparse file of `size` is created.
    pub create_disk: bool,
    /// The backing disk is a regular file shorter than `size`: it grows sparse.
    pub grow_disk_from: Option<u64>,
    /// The metadata file does not exist: new metadata is created (a new resource).
    pub create_meta: bool,
}

/// The files of one volume a start needs: the volume layer's own view of a resource's config
/// (the daemon fills it in from the resource's section).
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub name: &'a str,
    pub size_bytes: u64,
    pub disk: &'a Path,
    pub meta: &'a Path,
    /// The resource has a peer: a larger `size` than the metadata's is this node's capacity.
    pub replicated: bool,
}

impl Plan {
    /// One line per file a start would create or change, for `check-config` and the log.
    pub fn describe(&self, cfg: &Target<'_>) -> Vec<String> {
        let mut out = Vec::new();
        if self.create_disk {
            out.push(format!(
                "would create {} (sparse, {} bytes)",
                cfg.disk.display(),
                cfg.size_bytes
            ));
        }
        if let Some(from) = self.grow_disk_from {
            out.push(format!(
                "would grow {} from {from} to {} bytes",
                cfg.disk.display(),
                cfg.size_bytes
            ));
        }
        if self.create_meta {
            out.push(format!(
                "would create new metadata {} (a new resource; `drl create-md {}` does it explicitly)",
                cfg.meta.display(),
                cfg.name
            ));
        }
        out
    }
}

/// Check everything a start of `cfg` needs, touching nothing.
pub fn plan(cfg: &Target<'_>) -> Result<Plan, ClaimError> {
    let disk = cfg.disk;
    let meta = cfg.meta;
    need_dir("disk", disk)?;
    need_dir("metadata", meta)?;
    let mut p = Plan {
        create_disk: false,
        grow_disk_from: None,
        create_meta: false,
    };
    match std::fs::metadata(disk) {
        Ok(m) if m.file_type().is_block_device() => {
            let f = File::open(disk).map_err(io_err("disk", disk))?;
            let size = kernel_glue::blkdev::size_bytes(std::os::fd::AsFd::as_fd(&f))
                .map_err(io_err("disk", disk))?;
            if size < cfg.size_bytes {
                return Err(ClaimError::Refused(format!(
                    "disk {}: block device has {size} bytes, the resource needs {}",
                    disk.display(),
                    cfg.size_bytes
                )));
            }
        }
        Ok(m) if m.is_file() => {
            if m.len() < cfg.size_bytes {
                p.grow_disk_from = Some(m.len());
            }
        }
        Ok(_) => {
            return Err(ClaimError::Refused(format!(
                "disk {} is neither a regular file nor a block device",
                disk.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => p.create_disk = true,
        Err(e) => return Err(io_err("disk", disk)(e)),
    }
    match std::fs::metadata(meta) {
        Ok(_) => {
            let m = MetaFile::open(meta).map_err(|e| ClaimError::Refused(e.to_string()))?;
            m.check_fits(cfg.name, cfg.size_bytes, cfg.replicated)
                .map_err(|e| ClaimError::Refused(e.to_string()))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => p.create_meta = true,
        Err(e) => return Err(io_err("metadata", meta)(e)),
    }
    if p.create_meta && !p.create_disk && p.grow_disk_from.is_none() {
        tracing::debug!(disk = %disk.display(), "new metadata over an existing disk");
    }
    Ok(p)
}

fn need_dir(what: &'static str, path: &Path) -> Result<(), ClaimError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return Ok(()),
    };
    if dir.is_dir() {
        return Ok(());
    }
    Err(ClaimError::NoDirectory {
        what,
        path: path.to_owned(),
        dir: dir.to_owned(),
    })
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ClaimError + 'a {
    move |source| ClaimError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Exclusive ownership of a resource's files while this value lives.
#[derive(Debug)]
pub struct Claim {
    _locks: Vec<File>,
}

impl Claim {
    /// An empty claim, extended with [`Claim::lock`] as files come to exist.
    pub fn new() -> Claim {
        Claim { _locks: Vec::new() }
    }

    /// Take `path` (which must exist) for this process: an exclusive flock, and for a block
    /// device an O_EXCL open. Refused with the holder's pid when someone else has it.
    pub fn lock(&mut self, what: &'static str, path: &Path) -> Result<(), ClaimError> {
        let is_block = std::fs::metadata(path)
            .map_err(io_err(what, path))?
            .file_type()
            .is_block_device();
        let mut opts = OpenOptions::new();
        opts.read(true);
        if is_block {
            // O_EXCL on a block device: EBUSY while it is mounted or exclusively open elsewhere.
            opts.custom_flags(libc::O_EXCL | libc::O_CLOEXEC);
        } else {
            opts.custom_flags(libc::O_CLOEXEC);
        }
        let f = match opts.open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(ClaimError::Held {
                    what,
                    path: path.to_owned(),
                    pid: holder_pid(path),
                })
            }
            Err(e) => return Err(io_err(what, path)(e)),
        };
        // SAFETY: flock on a descriptor we own and keep open; no memory is passed.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(ClaimError::Held {
                    what,
                    path: path.to_owned(),
                    pid: holder_pid(path),
                });
            }
            return Err(io_err(what, path)(e));
        }
        self._locks.push(f);
        Ok(())
    }
}

impl Default for Claim {
    fn default() -> Self {
        Claim::new()
    }
}

/// The pid holding a flock on `path`, from `/proc/locks` (device major:minor:inode).
pub fn holder_pid(path: &Path) -> Option<u32> {
    let m = std::fs::metadata(path).ok()?;
    let dev = m.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let key = format!("{major:02x}:{minor:02x}:{}", m.ino());
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    parse_proc_locks(&text, &key)
}

/// The pid of the first granted lock on `key` ("MAJ:MIN:INODE") in a `/proc/locks` text.
fn parse_proc_locks(text: &str, key: &str) -> Option<u32> {
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; waiters have "->" after the id.
        if words.get(1) == Some(&"->") || words.len() < 6 {
            continue;
        }
        if words[5] == key {
            return words[4]
                .parse::<i64>()
                .ok()
                .filter(|p| *p > 0)
                .map(|p| p as u32);
        }
    }
    None
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| format!(", {}", c.trim()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_line_gives_the_holder() {
        let text = "1: POSIX  ADVISORY  WRITE 99 00:2d:7 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 4242 08:01:123456 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 5000 08:01:123456 0 EOF\n";
        assert_eq!(parse_proc_locks(text, "08:01:123456"), Some(4242));
        assert_eq!(parse_proc_locks(text, "08:01:1"), None);
    }

    #[test]
    fn a_second_claim_is_refused_with_our_pid() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk");
        std::fs::write(&p, b"x").unwrap();
        let mut a = Claim::new();
        a.lock("disk", &p).unwrap();
        let mut b = Claim::new();
        match b.lock("disk", &p).unwrap_err() {
            ClaimError::Held { pid, .. } => assert_eq!(pid, Some(std::process::id())),
            e => panic!("expected Held, got {e}"),
        }
        drop(a);
        b.lock("disk", &p).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let e = need_dir("disk", Path::new("/nonexistent-drl-dir/r0.img")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
