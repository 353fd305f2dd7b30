//! The object-store contract shared by Swift and the local directory vault, and the URLs that
//! name a place in either.
//!
//! `swift://CONTAINER/PREFIX` names a prefix in a Swift container. A directory vault is named
//! by `file:///ROOT::CONTAINER/PREFIX` or `ROOT::CONTAINER/PREFIX` (`::` ends the vault root,
//! so a path never has to be guessed apart), or by `CONTAINER/PREFIX` alone, relative to the
//! default vault root the caller configures. See [`StoreUrl`].
//!
//! Every store answers the same calls with the same meaning: `put` returns the md5 ETag it
//! stored (and the store checked it), `get` checks length (and md5 for plain objects),
//! `list` pages through a prefix, SLO manifests read back as the concatenation of segments.

use std::future::Future;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::auth::SwiftAuth;
use super::swift::SwiftClient;
use super::upload::Location;
use super::vault::DirVault;
use super::StreamError;

/// One object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    pub bytes: u64,
    /// md5 hex of the content (for an SLO: of the manifest as Swift lists it).
    pub hash: String,
}

/// One segment of a Static Large Object manifest (the `?multipart-manifest=put` JSON form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SloSegment {
    /// `/CONTAINER/OBJECT` of the segment.
    pub path: String,
    /// md5 hex of the segment.
    pub etag: String,
    pub size_bytes: u64,
}

/// A streaming object body.
pub type ByteStream = BoxStream<'static, Result<Bytes, StreamError>>;

/// What drl needs from an object store. Container and object names are Swift's (UTF-8, no
/// leading slash); a store rejects names it cannot hold.
pub trait ObjectStore: Send + Sync {
    /// For messages: `swift://...` or `file://...`.
    fn describe(&self) -> String;
    /// Create the container if it does not exist.
    fn ensure_container(
        &self,
        container: &str,
    ) -> impl Future<Output = Result<(), StreamError>> + Send;
    /// Store `data`; returns its md5 hex ETag after checking the store agrees.
    fn put(
        &self,
        container: &str,
        name: &str,
        data: Bytes,
    ) -> impl Future<Output = Result<String, StreamError>> + Send {
        async move {
            // Off the async workers: an image segment is up to a GiB.
            let d = data.clone();
            let md5 = tokio::task::spawn_blocking(move || md5_hex(&d))
                .await
                .map_err(|e| StreamError::Task(e.to_string()))?;
            self.put_md5(container, name, data, &md5).await
        }
    }
    /// Store `data` whose md5 hex the caller already computed (`md5`, lowercase): the same as
    /// [`ObjectStore::put`] without hashing the body a second time. Returns the ETag.
    fn put_md5(
        &self,
        container: &str,
        name: &str,
        data: Bytes,
        md5: &str,
    ) -> impl Future<Output = Result<String, StreamError>> + Send;
    /// Bytes `offset..offset+len` of a plain object. Shorter when the object ends before
    /// (the caller checks the length); [`StreamError::NotFound`] when absent. Nothing checks
    /// the content: the caller verifies what it reads (chunks carry their digest).
    fn get_range(
        &self,
        container: &str,
        name: &str,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Bytes, StreamError>> + Send {
        async move {
            use futures::StreamExt;
            let (_, mut body) = self.get_stream(container, name).await?;
            let mut out = bytes::BytesMut::new();
            let (mut pos, end) = (0u64, offset.saturating_add(len));
            while let Some(piece) = body.next().await {
                let piece = piece?;
                let (a, b) = (pos, pos + piece.len() as u64);
                if b > offset && a < end {
                    let from = offset.saturating_sub(a) as usize;
                    let to = (end.min(b) - a) as usize;
                    out.extend_from_slice(&piece[from..to]);
                }
                pos = b;
                if pos >= end {
                    break;
                }
            }
            Ok(out.freeze())
        }
    }
    /// Read a whole object of at most `max_bytes` into memory, checking its length (and md5
    /// for plain objects). [`StreamError::NotFound`] when absent.
    fn get(
        &self,
        container: &str,
        name: &str,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Bytes, StreamError>> + Send;
    /// Stream an object (an SLO streams as its concatenated segments). Returns the length the
    /// store announced and the body.
    fn get_stream(
        &self,
        container: &str,
        name: &str,
    ) -> impl Future<Output = Result<(u64, ByteStream), StreamError>> + Send;
    /// `None` when absent.
    fn head(
        &self,
        container: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ObjectMeta>, StreamError>> + Send;
    /// Delete; absent objects are fine.
    fn delete(
        &self,
        container: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), StreamError>> + Send;
    /// Every object whose name starts with `prefix`, sorted by name (bounded by
    /// [`crate::limits::SWIFT_LIST_OBJECTS_MAX`]). An absent container lists empty.
    fn list(
        &self,
        container: &str,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<ObjectMeta>, StreamError>> + Send;
    /// Write an SLO manifest; returns the ETag the store reports for the whole object
    /// (md5 of the concatenated segment md5 hex strings).
    fn put_slo(
        &self,
        container: &str,
        name: &str,
        segments: &[SloSegment],
    ) -> impl Future<Output = Result<String, StreamError>> + Send;
    /// The segments of an SLO, or `None` when the object is a plain object.
    fn get_slo(
        &self,
        container: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Vec<SloSegment>>, StreamError>> + Send;
}

/// A place in a store: which store, which container, which prefix/object inside it.
///
/// Grammar:
/// - `swift://CONTAINER` or `swift://CONTAINER/PREFIX...` (Swift; credentials from config/env);
/// - `file:///ROOT::CONTAINER/PREFIX...` or `ROOT::CONTAINER/PREFIX...` (a [`DirVault`] at ROOT);
/// - `CONTAINER/PREFIX...` (or `file://CONTAINER/PREFIX...`): a vault at the caller's default
///   vault root (config, or drl's default directory); the root is never guessed from a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    pub kind: StoreKind,
    pub container: String,
    /// Without leading or trailing slash; may be empty.
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Swift,
    /// A vault; `None`: the default vault root (config or drl's default directory).
    Vault(Option<PathBuf>),
}

impl StoreUrl {
    pub fn parse(s: &str) -> Result<StoreUrl, StreamError> {
        let bad = |why: &str| StreamError::Config(format!("store URL {s:?}: {why}"));
        let (kind, rest) = if let Some(r) = s.strip_prefix("swift://") {
            (StoreKind::Swift, r.to_string())
        } else {
            let path = s.strip_prefix("file://").unwrap_or(s);
            if path.is_empty() {
                return Err(bad("empty"));
            }
            match path.split_once("::") {
                Some((root, rest)) => {
                    if root.is_empty() {
                        return Err(bad("empty vault root before ::"));
                    }
                    (
                        StoreKind::Vault(Some(PathBuf::from(root))),
                        rest.to_string(),
                    )
                }
                None => (
                    StoreKind::Vault(None),
                    path.trim_start_matches('/').to_string(),
                ),
            }
        };
        if rest.starts_with('/') {
            return Err(bad("container name must follow the scheme directly"));
        }
        let rest = rest.trim_end_matches('/');
        let (container, prefix) = match rest.split_once('/') {
            Some((c, p)) => (c, p.trim_matches('/')),
            None => (rest, ""),
        };
        check_container_name(container).map_err(|e| bad(&e))?;
        if prefix.split('/').any(|seg| seg == ".." || seg == ".") {
            return Err(bad("prefix must not hold . or .. segments"));
        }
        if prefix.contains("//") {
            return Err(bad("prefix must not hold empty segments (//)"));
        }
        Ok(StoreUrl {
            kind,
            container: container.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The container and prefix as a stream [`Location`].
    pub fn location(&self) -> Location {
        Location::new(self.container.clone(), self.prefix.clone())
    }

    /// For `swift://C/P/SNAP` (restore) or `swift://C/OBJECT` (images): the location `C/P`
    /// and the last segment `SNAP`.
    pub fn split_last(&self) -> Result<(Location, String), StreamError> {
        match self.prefix.rsplit_once('/') {
            Some((p, last)) => Ok((Location::new(self.container.clone(), p), last.to_string())),
            None if !self.prefix.is_empty() => Ok((
                Location::new(self.container.clone(), ""),
                self.prefix.clone(),
            )),
            None => Err(StreamError::Config(format!(
                "{}: name a snapshot or object after the container",
                self.container
            ))),
        }
    }

    /// `prefix/rest` (or `rest` when the prefix is empty).
    pub fn join(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{}", self.prefix, rest)
        }
    }
}

/// Where the directory vault lives when neither config nor URL names one.
pub const DEFAULT_VAULT_DIR: &str = "/var/lib/drl/vault";

/// Open the store `url` names. Swift credentials come from `auth` (drl's config) or else from
/// the OpenStack environment ([`SwiftAuth::from_env`]); a vault URL without root uses
/// `default_vault`.
pub fn open_store(
    url: &StoreUrl,
    auth: Option<SwiftAuth>,
    default_vault: &Path,
) -> Result<AnyStore, StreamError> {
    match &url.kind {
        StoreKind::Swift => {
            let auth = match auth {
                Some(a) => a,
                None => SwiftAuth::from_env()?.ok_or_else(|| {
                    StreamError::Config(
                        "swift:// needs credentials: a [swift] section in the config, or \
                         OS_AUTH_URL/OS_USERNAME/OS_PASSWORD/OS_PROJECT_NAME, or OS_CLOUD"
                            .into(),
                    )
                })?,
            };
            Ok(AnyStore::Swift(SwiftClient::new(auth)?))
        }
        StoreKind::Vault(root) => Ok(AnyStore::Vault(DirVault::new(
            root.clone().unwrap_or_else(|| default_vault.to_path_buf()),
        )?)),
    }
}

/// Swift's container name rules plus what a directory vault needs: 1..=256 bytes, no `/`,
/// not `.`/`..`, not starting with `.` (the vault keeps its own data there).
pub fn check_container_name(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("container name is empty".into());
    }
    if c.len() > 256 {
        return Err(format!(
            "container name is {} bytes, more than 256",
            c.len()
        ));
    }
    if c.contains('/') || c.starts_with('.') || c.contains('\0') {
        return Err(format!(
            "container name {c:?} must not start with '.' or hold '/' or NUL"
        ));
    }
    Ok(())
}

/// Either store, for callers that choose at run time (the CLI).
#[derive(Debug, Clone)]
pub enum AnyStore {
    Swift(SwiftClient),
    Vault(DirVault),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Swift($s) => $e,
            AnyStore::Vault($s) => $e,
        }
    };
}

impl ObjectStore for AnyStore {
    fn describe(&self) -> String {
        delegate!(self, s => s.describe())
    }
    async fn ensure_container(&self, c: &str) -> Result<(), StreamError> {
        delegate!(self, s => s.ensure_container(c).await)
    }
    async fn put_md5(&self, c: &str, n: &str, d: Bytes, m: &str) -> Result<String, StreamError> {
        delegate!(self, s => s.put_md5(c, n, d, m).await)
    }
    async fn get_range(&self, c: &str, n: &str, o: u64, l: u64) -> Result<Bytes, StreamError> {
        delegate!(self, s => s.get_range(c, n, o, l).await)
    }
    async fn get(&self, c: &str, n: &str, m: u64) -> Result<Bytes, StreamError> {
        delegate!(self, s => s.get(c, n, m).await)
    }
    async fn get_stream(&self, c: &str, n: &str) -> Result<(u64, ByteStream), StreamError> {
        delegate!(self, s => s.get_stream(c, n).await)
    }
    async fn head(&self, c: &str, n: &str) -> Result<Option<ObjectMeta>, StreamError> {
        delegate!(self, s => s.head(c, n).await)
    }
    async fn delete(&self, c: &str, n: &str) -> Result<(), StreamError> {
        delegate!(self, s => s.delete(c, n).await)
    }
    async fn list(&self, c: &str, p: &str) -> Result<Vec<ObjectMeta>, StreamError> {
        delegate!(self, s => s.list(c, p).await)
    }
    async fn put_slo(&self, c: &str, n: &str, segs: &[SloSegment]) -> Result<String, StreamError> {
        delegate!(self, s => s.put_slo(c, n, segs).await)
    }
    async fn get_slo(&self, c: &str, n: &str) -> Result<Option<Vec<SloSegment>>, StreamError> {
        delegate!(self, s => s.get_slo(c, n).await)
    }
}

/// md5 hex of `data` (Swift's ETag of a plain object).
pub fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(data))
}

/// The ETag Swift gives an SLO: md5 hex of the concatenated segment md5 hex strings.
pub fn slo_etag(segments: &[SloSegment]) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    for s in segments {
        h.update(s.etag.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_swift_urls() {
        let u = StoreUrl::parse("swift://backups/site-a/vol1/").unwrap();
        assert_eq!(u.kind, StoreKind::Swift);
        assert_eq!(u.container, "backups");
        assert_eq!(u.prefix, "site-a/vol1");
        assert_eq!(
            u.join("snap1/manifest.json"),
            "site-a/vol1/snap1/manifest.json"
        );
        let u = StoreUrl::parse("swift://backups").unwrap();
        assert_eq!(u.prefix, "");
        assert_eq!(u.join("x"), "x");
    }

    #[test]
    fn split_snapshot_and_open() {
        let u = StoreUrl::parse("swift://backups/site-a/vol1/snap7").unwrap();
        let (loc, snap) = u.split_last().unwrap();
        assert_eq!(loc, Location::new("backups", "site-a/vol1"));
        assert_eq!(snap, "snap7");
        let (loc, obj) = StoreUrl::parse("swift://images/cirros.img")
            .unwrap()
            .split_last()
            .unwrap();
        assert_eq!((loc.prefix.as_str(), obj.as_str()), ("", "cirros.img"));
        assert!(StoreUrl::parse("swift://images")
            .unwrap()
            .split_last()
            .is_err());
        let dir = tempfile::tempdir().unwrap();
        let u = StoreUrl::parse("c/p").unwrap();
        match open_store(&u, None, dir.path()).unwrap() {
            AnyStore::Vault(v) => assert_eq!(v.root(), dir.path()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parse_vault_urls() {
        let u = StoreUrl::parse("file:///srv/vault::backups/p").unwrap();
        assert_eq!(u.kind, StoreKind::Vault(Some(PathBuf::from("/srv/vault"))));
        assert_eq!((u.container.as_str(), u.prefix.as_str()), ("backups", "p"));
        let u = StoreUrl::parse("/srv/vault::c").unwrap();
        assert_eq!(u.kind, StoreKind::Vault(Some(PathBuf::from("/srv/vault"))));
        let u = StoreUrl::parse("c/p/q").unwrap();
        assert_eq!(u.kind, StoreKind::Vault(None));
        assert_eq!((u.container.as_str(), u.prefix.as_str()), ("c", "p/q"));
    }

    #[test]
    fn reject_bad_urls() {
        for s in [
            "swift://",
            "swift:///x",
            "swift://.hidden/p",
            "swift://c/../x",
            "swift://c/a//b",
            "",
            "::c",
            "file://",
        ] {
            assert!(StoreUrl::parse(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn etags() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        let segs = vec![
            SloSegment {
                path: "/c/a".into(),
                etag: md5_hex(b"a"),
                size_bytes: 1,
            },
            SloSegment {
                path: "/c/b".into(),
                etag: md5_hex(b"b"),
                size_bytes: 1,
            },
        ];
        let cat = format!("{}{}", md5_hex(b"a"), md5_hex(b"b"));
        assert_eq!(slo_etag(&segs), md5_hex(cat.as_bytes()));
    }
}
