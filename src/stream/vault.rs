//! [`DirVault`]: a local directory with Swift's container/object layout, the default store
//! when no Swift is configured (and a second implementation the tests hold Swift against).
//!
//! `ROOT/CONTAINER/OBJECT/NAME` is a file; `/` in object names become directories. Writes go
//! to a temporary file in the target directory, are fsynced and renamed over the target, so a
//! reader sees the old object or the new one, never a torn one. The md5 ETag is kept in the
//! `user.drl.md5` extended attribute (computed from the content where the attribute is
//! missing). SLO manifests live in `ROOT/.slo/CONTAINER/OBJECT.json` and read back, like in
//! Swift, as the concatenation of their segments.
//!
//! File I/O runs on tokio's blocking pool.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::store::{
    check_container_name, md5_hex, slo_etag, ByteStream, ObjectMeta, ObjectStore, SloSegment,
};
use super::StreamError;
use crate::limits::SWIFT_LIST_OBJECTS_MAX;

const TMP_PREFIX: &str = ".drl-tmp-";
const XATTR_MD5: &str = "user.drl.md5";
const STREAM_PIECE_BYTES: usize = 1024 * 1024;

/// A local object vault rooted at a directory.
#[derive(Debug, Clone)]
pub struct DirVault {
    root: Arc<PathBuf>,
}

impl DirVault {
    /// A vault at `root` (created when missing).
    pub fn new(root: impl Into<PathBuf>) -> Result<DirVault, StreamError> {
        let root = root.into();
        fs::create_dir_all(&root)
            .map_err(|e| StreamError::io(root.display(), "create vault root", e))?;
        Ok(DirVault {
            root: Arc::new(root),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding `container/name`, after checking both names.
    pub fn object_path(&self, container: &str, name: &str) -> Result<PathBuf, StreamError> {
        check_container_name(container).map_err(StreamError::Config)?;
        check_object_name(name)?;
        Ok(self.root.join(container).join(name))
    }

    /// GET of a plain object (SLO segments are plain objects).
    async fn get_plain(
        &self,
        container: &str,
        name: &str,
        max_bytes: u64,
    ) -> Result<Bytes, StreamError> {
        let path = self.object_path(container, name)?;
        let object = format!("{container}/{name}");
        blocking(move || {
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StreamError::NotFound { object })
                }
                Err(e) => return Err(StreamError::io(path.display(), "stat", e)),
            };
            if meta.len() > max_bytes {
                return Err(StreamError::TooLarge {
                    object,
                    size: meta.len(),
                    max: max_bytes,
                });
            }
            let data = fs::read(&path).map_err(|e| StreamError::io(path.display(), "read", e))?;
            if let Some(m) = get_xattr(&path, XATTR_MD5) {
                let got = md5_hex(&data);
                if got != m {
                    return Err(StreamError::EtagMismatch {
                        object,
                        expected: m,
                        got,
                    });
                }
            }
            Ok(Bytes::from(data))
        })
        .await
    }

    fn slo_path(&self, container: &str, name: &str) -> Result<PathBuf, StreamError> {
        check_container_name(container).map_err(StreamError::Config)?;
        check_object_name(name)?;
        Ok(self
            .root
            .join(".slo")
            .join(container)
            .join(format!("{name}.json")))
    }
}

fn check_object_name(name: &str) -> Result<(), StreamError> {
    let bad = name.is_empty()
        || name.len() > 1024
        || name.starts_with('/')
        || name.ends_with('/')
        || name.contains('\0')
        || name
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == ".." || s.starts_with(TMP_PREFIX));
    if bad {
        return Err(StreamError::Config(format!(
            "object name {name:?} cannot be stored in a directory vault"
        )));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StreamError> + Send + 'static,
) -> Result<T, StreamError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StreamError::Task(e.to_string()))?
}

/// Write `data` to `path` atomically (temp file, fsync, rename, fsync of the directory).
fn atomic_write(path: &Path, data: &[u8], md5: Option<&str>) -> Result<(), StreamError> {
    let dir = path
        .parent()
        .ok_or_else(|| StreamError::Config(format!("{} has no parent", path.display())))?;
    fs::create_dir_all(dir).map_err(|e| StreamError::io(dir.display(), "create directory", e))?;
    let tmp = dir.join(format!("{TMP_PREFIX}{:016x}", rand::random::<u64>()));
    let res = (|| {
        let mut f = File::create(&tmp).map_err(|e| StreamError::io(tmp.display(), "create", e))?;
        f.write_all(data)
            .map_err(|e| StreamError::io(tmp.display(), "write", e))?;
        if let Some(m) = md5 {
            set_xattr(&tmp, XATTR_MD5, m.as_bytes());
        }
        f.sync_all()
            .map_err(|e| StreamError::io(tmp.display(), "fsync", e))?;
        fs::rename(&tmp, path)
            .map_err(|e| StreamError::io(path.display(), "rename into place", e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(p), Ok(n)) = (
        std::ffi::CString::new(path.as_os_str().as_bytes()),
        std::ffi::CString::new(name),
    ) else {
        return;
    };
    // SAFETY: p and n are NUL-terminated strings alive for the call; value is a valid slice of
    // value.len() bytes. A failure (no xattr support) only loses the cached md5.
    unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        );
    }
}

fn get_xattr(path: &Path, name: &str) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: p and n are NUL-terminated and alive; buf is writable for buf.len() bytes and the
    // kernel writes at most that many.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r <= 0 {
        return None;
    }
    let s = std::str::from_utf8(&buf[..r as usize]).ok()?;
    (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_string())
}

/// md5 of a file: the cached attribute, or computed (and cached).
fn file_md5(path: &Path) -> Result<String, StreamError> {
    if let Some(m) = get_xattr(path, XATTR_MD5) {
        return Ok(m);
    }
    use md5::{Digest, Md5};
    let mut f = File::open(path).map_err(|e| StreamError::io(path.display(), "open", e))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; STREAM_PIECE_BYTES];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| StreamError::io(path.display(), "read", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let m = hex::encode(h.finalize());
    set_xattr(path, XATTR_MD5, m.as_bytes());
    Ok(m)
}

fn read_slo(path: &Path) -> Result<Option<Vec<SloSegment>>, StreamError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StreamError::BadResponse {
                target: path.display().to_string(),
                reason: format!("SLO manifest: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StreamError::io(path.display(), "read SLO manifest", e)),
    }
}

/// `/CONTAINER/OBJECT` -> (container, object).
fn split_segment_path(p: &str) -> Result<(&str, &str), StreamError> {
    p.trim_start_matches('/').split_once('/').ok_or_else(|| {
        StreamError::Config(format!("SLO segment path {p:?} is not /CONTAINER/OBJECT"))
    })
}

fn walk(dir: &Path, rel: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> Result<(), StreamError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StreamError::io(dir.display(), "list", e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| StreamError::io(dir.display(), "list", e))?;
        let Some(fname) = ent.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if fname.starts_with(TMP_PREFIX) {
            continue;
        }
        let name = if rel.is_empty() {
            fname
        } else {
            format!("{rel}/{fname}")
        };
        // Only descend where the prefix can still match.
        if !(name.starts_with(prefix) || prefix.starts_with(&format!("{name}/"))) {
            continue;
        }
        let ft = ent
            .file_type()
            .map_err(|e| StreamError::io(ent.path().display(), "stat", e))?;
        if ft.is_dir() {
            walk(&ent.path(), &name, prefix, out)?;
        } else if ft.is_file() && name.starts_with(prefix) {
            let meta = ent
                .metadata()
                .map_err(|e| StreamError::io(ent.path().display(), "stat", e))?;
            out.push(ObjectMeta {
                hash: file_md5(&ent.path())?,
                bytes: meta.len(),
                name,
            });
            if out.len() as u64 > SWIFT_LIST_OBJECTS_MAX {
                return Err(StreamError::TooLarge {
                    object: format!("listing of {}", dir.display()),
                    size: out.len() as u64,
                    max: SWIFT_LIST_OBJECTS_MAX,
                });
            }
        }
    }
    Ok(())
}

/// A stream over files, one piece at a time.
fn files_stream(files: Vec<PathBuf>) -> ByteStream {
    futures::stream::unfold(
        (files.into_iter(), None::<File>),
        |(mut files, mut cur)| async move {
            loop {
                if cur.is_none() {
                    let p = files.next()?;
                    match File::open(&p) {
                        Ok(f) => cur = Some(f),
                        Err(e) => {
                            return Some((
                                Err(StreamError::io(p.display(), "open", e)),
                                (files, None),
                            ))
                        }
                    }
                }
                let mut f = cur.take()?;
                let r = tokio::task::spawn_blocking(move || {
                    let mut buf = BytesMut::zeroed(STREAM_PIECE_BYTES);
                    let n = f.read(&mut buf)?;
                    buf.truncate(n);
                    Ok::<_, std::io::Error>((f, buf.freeze()))
                })
                .await;
                match r {
                    Ok(Ok((_, b))) if b.is_empty() => continue,
                    Ok(Ok((f, b))) => return Some((Ok(b), (files, Some(f)))),
                    Ok(Err(e)) => {
                        return Some((
                            Err(StreamError::io("vault object", "read", e)),
                            (files, None),
                        ))
                    }
                    Err(e) => return Some((Err(StreamError::Task(e.to_string())), (files, None))),
                }
            }
        },
    )
    .boxed()
}

impl ObjectStore for DirVault {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn ensure_container(&self, container: &str) -> Result<(), StreamError> {
        check_container_name(container).map_err(StreamError::Config)?;
        let p = self.root.join(container);
        blocking(move || {
            fs::create_dir_all(&p).map_err(|e| StreamError::io(p.display(), "create container", e))
        })
        .await
    }

    async fn put_md5(
        &self,
        container: &str,
        name: &str,
        data: Bytes,
        md5: &str,
    ) -> Result<String, StreamError> {
        let path = self.object_path(container, name)?;
        let slo = self.slo_path(container, name)?;
        let cdir = self.root.join(container);
        let object = format!("{container}/{name}");
        let md5 = md5.to_string();
        blocking(move || {
            if !cdir.is_dir() {
                return Err(StreamError::NotFound {
                    object: format!("container {}", cdir.display()),
                });
            }
            atomic_write(&path, &data, Some(&md5))?;
            let _ = fs::remove_file(&slo);
            // Read back the size: a short write would have failed above, this catches a
            // filesystem that lies.
            let len = fs::metadata(&path)
                .map_err(|e| StreamError::io(path.display(), "stat", e))?
                .len();
            if len != data.len() as u64 {
                return Err(StreamError::Truncated {
                    object,
                    expected: data.len() as u64,
                    got: len,
                });
            }
            Ok(md5)
        })
        .await
    }

    async fn get_range(
        &self,
        container: &str,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StreamError> {
        use std::os::unix::fs::FileExt;
        let path = self.object_path(container, name)?;
        let object = format!("{container}/{name}");
        let len = usize::try_from(len).map_err(|_| StreamError::TooLarge {
            object: object.clone(),
            size: len,
            max: usize::MAX as u64,
        })?;
        blocking(move || {
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StreamError::NotFound { object })
                }
                Err(e) => return Err(StreamError::io(path.display(), "open", e)),
            };
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                match f.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(StreamError::io(path.display(), "read", e)),
                }
            }
            buf.truncate(got);
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn get(&self, container: &str, name: &str, max_bytes: u64) -> Result<Bytes, StreamError> {
        if let Some(segs) = self.get_slo(container, name).await? {
            let total: u64 = segs.iter().map(|s| s.size_bytes).sum();
            if total > max_bytes {
                return Err(StreamError::TooLarge {
                    object: format!("{container}/{name}"),
                    size: total,
                    max: max_bytes,
                });
            }
            let mut out = BytesMut::with_capacity(total as usize);
            for s in &segs {
                let (c, n) = split_segment_path(&s.path)?;
                out.extend_from_slice(&self.get_plain(c, n, s.size_bytes).await?);
            }
            return Ok(out.freeze());
        }
        self.get_plain(container, name, max_bytes).await
    }

    async fn get_stream(
        &self,
        container: &str,
        name: &str,
    ) -> Result<(u64, ByteStream), StreamError> {
        let files: Vec<(PathBuf, u64)> = match self.get_slo(container, name).await? {
            Some(segs) => {
                let mut v = Vec::with_capacity(segs.len());
                for s in &segs {
                    let (c, n) = split_segment_path(&s.path)?;
                    v.push((self.object_path(c, n)?, s.size_bytes));
                }
                v
            }
            None => {
                let p = self.object_path(container, name)?;
                let len = match fs::metadata(&p) {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StreamError::NotFound {
                            object: format!("{container}/{name}"),
                        })
                    }
                    Err(e) => return Err(StreamError::io(p.display(), "stat", e)),
                };
                vec![(p, len)]
            }
        };
        let total = files.iter().map(|f| f.1).sum();
        Ok((
            total,
            files_stream(files.into_iter().map(|f| f.0).collect()),
        ))
    }

    async fn head(&self, container: &str, name: &str) -> Result<Option<ObjectMeta>, StreamError> {
        if let Some(segs) = self.get_slo(container, name).await? {
            let bytes = segs.iter().map(|s| s.size_bytes).sum();
            return Ok(Some(ObjectMeta {
                name: name.into(),
                bytes,
                hash: slo_etag(&segs),
            }));
        }
        let path = self.object_path(container, name)?;
        let name = name.to_string();
        blocking(move || match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                hash: file_md5(&path)?,
                bytes: m.len(),
                name,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StreamError::io(path.display(), "stat", e)),
        })
        .await
    }

    async fn delete(&self, container: &str, name: &str) -> Result<(), StreamError> {
        let path = self.object_path(container, name)?;
        let slo = self.slo_path(container, name)?;
        blocking(move || {
            for p in [&path, &slo] {
                match fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StreamError::io(p.display(), "delete", e)),
                }
            }
            Ok(())
        })
        .await
    }

    async fn list(&self, container: &str, prefix: &str) -> Result<Vec<ObjectMeta>, StreamError> {
        check_container_name(container).map_err(StreamError::Config)?;
        let dir = self.root.join(container);
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = Vec::new();
            walk(&dir, "", &prefix, &mut out)?;
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    async fn put_slo(
        &self,
        container: &str,
        name: &str,
        segments: &[SloSegment],
    ) -> Result<String, StreamError> {
        // Check every segment the way Swift does: it exists with this size and md5.
        for s in segments {
            let (c, n) = split_segment_path(&s.path)?;
            match self.head(c, n).await? {
                Some(m) if m.bytes == s.size_bytes && m.hash == s.etag => {}
                Some(m) => {
                    return Err(StreamError::Http {
                        method: "PUT",
                        target: format!("{container}/{name}"),
                        status: 400,
                        body: format!(
                            "segment {} is {} bytes md5 {}, manifest says {} bytes md5 {}",
                            s.path, m.bytes, m.hash, s.size_bytes, s.etag
                        ),
                    })
                }
                None => {
                    return Err(StreamError::NotFound {
                        object: s.path.clone(),
                    })
                }
            }
        }
        let path = self.slo_path(container, name)?;
        let obj = self.object_path(container, name)?;
        let body = serde_json::to_vec(segments)
            .map_err(|e| StreamError::Config(format!("SLO manifest: {e}")))?;
        blocking(move || {
            atomic_write(&path, &body, None)?;
            let _ = fs::remove_file(&obj);
            Ok(())
        })
        .await?;
        Ok(slo_etag(segments))
    }

    async fn get_slo(
        &self,
        container: &str,
        name: &str,
    ) -> Result<Option<Vec<SloSegment>>, StreamError> {
        let path = self.slo_path(container, name)?;
        blocking(move || read_slo(&path)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let v = DirVault::new(dir.path()).unwrap();
        assert!(matches!(
            v.put("c", "a", Bytes::from_static(b"x")).await,
            Err(StreamError::NotFound { .. })
        ));
        v.ensure_container("c").await.unwrap();
        let e = v
            .put("c", "p/s/chunks/0001", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(e, md5_hex(b"hello"));
        v.put("c", "p/s/chunks/0000", Bytes::from_static(b"hi"))
            .await
            .unwrap();
        v.put("c", "q/other", Bytes::from_static(b"zz"))
            .await
            .unwrap();
        assert_eq!(
            &v.get("c", "p/s/chunks/0001", 100).await.unwrap()[..],
            b"hello"
        );
        assert!(matches!(
            v.get("c", "p/s/chunks/0001", 3).await,
            Err(StreamError::TooLarge { .. })
        ));
        let l = v.list("c", "p/s/").await.unwrap();
        let names: Vec<_> = l.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["p/s/chunks/0000", "p/s/chunks/0001"]);
        assert_eq!(l[1].hash, md5_hex(b"hello"));
        assert_eq!(l[1].bytes, 5);
        assert_eq!(v.list("c", "").await.unwrap().len(), 3);
        assert!(v.list("nope", "").await.unwrap().is_empty());
        v.delete("c", "p/s/chunks/0000").await.unwrap();
        v.delete("c", "p/s/chunks/0000").await.unwrap();
        assert!(v.head("c", "p/s/chunks/0000").await.unwrap().is_none());
        assert!(matches!(
            v.get("c", "p/s/chunks/0000", 10).await,
            Err(StreamError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn rejects_escaping_names() {
        let dir = tempfile::tempdir().unwrap();
        let v = DirVault::new(dir.path()).unwrap();
        v.ensure_container("c").await.unwrap();
        for n in ["../x", "a/../../x", "/abs", "a//b", ""] {
            assert!(v.put("c", n, Bytes::new()).await.is_err(), "{n}");
        }
        assert!(v.ensure_container("..").await.is_err());
    }

    #[tokio::test]
    async fn detects_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let v = DirVault::new(dir.path()).unwrap();
        v.ensure_container("c").await.unwrap();
        v.put("c", "o", Bytes::from_static(b"good")).await.unwrap();
        let p = v.object_path("c", "o").unwrap();
        if get_xattr(&p, XATTR_MD5).is_some() {
            // Rewrite the content in place (keeps the attribute): a GET must notice.
            fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .write_all(b"evil")
                .unwrap();
            assert!(matches!(
                v.get("c", "o", 10).await,
                Err(StreamError::EtagMismatch { .. })
            ));
        }
    }

    #[tokio::test]
    async fn slo_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let v = DirVault::new(dir.path()).unwrap();
        v.ensure_container("c_segments").await.unwrap();
        v.ensure_container("c").await.unwrap();
        let mut segs = Vec::new();
        for (i, part) in [&b"abc"[..], b"defg"].iter().enumerate() {
            let e = v
                .put(
                    "c_segments",
                    &format!("img/{i}"),
                    Bytes::copy_from_slice(part),
                )
                .await
                .unwrap();
            segs.push(SloSegment {
                path: format!("/c_segments/img/{i}"),
                etag: e,
                size_bytes: part.len() as u64,
            });
        }
        let etag = v.put_slo("c", "img", &segs).await.unwrap();
        assert_eq!(etag, slo_etag(&segs));
        assert_eq!(&v.get("c", "img", 100).await.unwrap()[..], b"abcdefg");
        let (len, mut s) = v.get_stream("c", "img").await.unwrap();
        assert_eq!(len, 7);
        let mut all = Vec::new();
        while let Some(b) = s.next().await {
            all.extend_from_slice(&b.unwrap());
        }
        assert_eq!(all, b"abcdefg");
        assert_eq!(v.get_slo("c", "img").await.unwrap().unwrap(), segs);
        segs[0].size_bytes = 99;
        assert!(v.put_slo("c", "img2", &segs).await.is_err());
    }
}
