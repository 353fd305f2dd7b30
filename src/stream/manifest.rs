//! The snapshot manifest (versioned JSON) and restore-chain resolution.
//!
//! A manifest describes one snapshot of one volume: its size, the chunk size, its parent (for
//! an incremental) and one entry per chunk, in index order:
//! - `stored`: the chunk's digest (of the raw bytes; `blake3` from version 3, `sha256` before),
//!   the object holding it, where in that object it starts (`offset`), the stored size and the
//!   compression (`none` | `zstd`);
//! - `zero`: the chunk is all zeroes, nothing stored;
//! - `unchanged-from-parent`: only in incrementals: read the chunk from the parent chain.
//!
//! Version 2 packs consecutive stored chunks into one object (several entries name the same
//! object at different offsets), so the object size no longer follows the chunk size: chunks
//! stay as fine as the change tracking wants while Swift gets few, large objects. Version 1
//! (one object per chunk, no `offset`) still reads: a missing `offset` is 0.
//!
//! Version 3 addresses chunks by BLAKE3 instead of SHA-256: as strong, and about 2.6 times
//! less CPU per byte here (`cargo bench --bench stream_hashing`), which a stream to a Swift
//! that shares the node's cores turns into time. drl writes version 3 only, also on top of an
//! older chain: an incremental compares a chunk with its parent's in the digest the parent's
//! entry has. A chain may so hold versions 1, 2 and 3; restore checks each chunk with its own
//! entry's digest. A drl older than version 3 refuses a version 3 manifest (by its version,
//! with a clear error): upgrade the drl that restores (the backup site's) first.
//!
//! ```json
//! {"format":"drl-snapshot","version":3,"snapshot":"s2","parent":"s1","volume":"vol0",
//!  "created_unix_ms":1700000000000,"volume_size_bytes":8388608,"chunk_size_bytes":4194304,
//!  "compression":"zstd","chunks":[
//!   {"index":0,"state":"unchanged-from-parent"},
//!   {"index":1,"state":"stored","blake3":"9f..","object":"p/s2/chunks/00000001-9f..",
//!    "offset":0,"stored_bytes":12345,"compression":"zstd"}]}
//! ```
//!
//! A restore resolves the chain newest to oldest ([`resolve_chain`]): every chunk comes from
//! the newest snapshot that holds it (`stored` or `zero`); the oldest must be a full snapshot.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{sha256x8, Compression, StreamError};
use crate::limits::{STREAM_CHAIN_DEPTH_MAX, STREAM_CHUNKS_MAX};

pub const MANIFEST_FORMAT: &str = "drl-snapshot";
/// The version this drl writes (a chain started by an older drl continues in version 2).
pub const MANIFEST_VERSION: u32 = 3;
/// The oldest version this drl reads (one object per chunk).
pub const MANIFEST_VERSION_MIN: u32 = 1;

/// A stored chunk's content address: the digest of its raw bytes, and which digest. In JSON
/// one key of the chunk's entry, `"sha256":"<64 hex>"` or `"blake3":"<64 hex>"`; an entry
/// with both, or neither, is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkDigest {
    /// Versions 1 and 2.
    Sha256(String),
    /// Version 3.
    Blake3(String),
}

/// Which digest addresses chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlg {
    Sha256,
    Blake3,
}

impl DigestAlg {
    /// The digest of a manifest of `version`.
    pub fn of_version(version: u32) -> DigestAlg {
        if version >= 3 {
            DigestAlg::Blake3
        } else {
            DigestAlg::Sha256
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DigestAlg::Sha256 => "sha256",
            DigestAlg::Blake3 => "blake3",
        }
    }

    /// The digests of `msgs`, in order. CPU work for the blocking pool: sha256 eight messages
    /// side by side ([`sha256x8`]); blake3 one by one (its SIMD works within a message).
    pub fn digest_all(self, msgs: &[&[u8]]) -> Vec<ChunkDigest> {
        match self {
            DigestAlg::Sha256 => msgs
                .chunks(8)
                .flat_map(sha256x8::sha256_x8)
                .map(|d| ChunkDigest::Sha256(hex::encode(d)))
                .collect(),
            DigestAlg::Blake3 => msgs
                .iter()
                .map(|m| ChunkDigest::Blake3(blake3::hash(m).to_hex().to_string()))
                .collect(),
        }
    }
}

impl<'de> Deserialize<'de> for ChunkDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // The entry's other keys are its other fields' (flattened): only these two are read.
        #[derive(Deserialize)]
        struct Keys {
            sha256: Option<String>,
            blake3: Option<String>,
        }
        let k = Keys::deserialize(d)?;
        match (k.sha256, k.blake3) {
            (Some(h), None) => Ok(ChunkDigest::Sha256(h)),
            (None, Some(h)) => Ok(ChunkDigest::Blake3(h)),
            (Some(_), Some(_)) => Err(D::Error::custom(
                "a stored chunk with both a sha256 and a blake3 digest",
            )),
            (None, None) => Err(D::Error::custom(
                "a stored chunk without a digest (sha256 or blake3)",
            )),
        }
    }
}

impl ChunkDigest {
    pub fn alg(&self) -> DigestAlg {
        match self {
            ChunkDigest::Sha256(_) => DigestAlg::Sha256,
            ChunkDigest::Blake3(_) => DigestAlg::Blake3,
        }
    }

    /// The digest in lowercase hex.
    pub fn hex(&self) -> &str {
        match self {
            ChunkDigest::Sha256(h) | ChunkDigest::Blake3(h) => h,
        }
    }
}

impl std::fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.alg().name(), self.hex())
    }
}

/// One chunk of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ChunkEntry {
    Stored {
        index: u64,
        #[serde(flatten)]
        digest: ChunkDigest,
        object: String,
        /// Where the chunk starts in `object` (version 1: always 0, absent).
        #[serde(default)]
        offset: u64,
        stored_bytes: u64,
        compression: Compression,
    },
    Zero {
        index: u64,
    },
    UnchangedFromParent {
        index: u64,
    },
}

impl ChunkEntry {
    pub fn index(&self) -> u64 {
        match self {
            ChunkEntry::Stored { index, .. }
            | ChunkEntry::Zero { index }
            | ChunkEntry::UnchangedFromParent { index } => *index,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub snapshot: String,
    pub parent: Option<String>,
    /// Resource (volume) name the snapshot was taken of, for people.
    pub volume: String,
    pub created_unix_ms: u64,
    pub volume_size_bytes: u64,
    pub chunk_size_bytes: u64,
    /// The policy the stream ran with; each stored chunk says what it actually used.
    pub compression: Compression,
    pub chunks: Vec<ChunkEntry>,
}

impl Manifest {
    pub fn chunk_count(volume_size_bytes: u64, chunk_size_bytes: u64) -> u64 {
        volume_size_bytes.div_ceil(chunk_size_bytes)
    }

    /// Length of chunk `index` (the last one may be short).
    pub fn chunk_len(&self, index: u64) -> u64 {
        let off = index * self.chunk_size_bytes;
        self.chunk_size_bytes
            .min(self.volume_size_bytes.saturating_sub(off))
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse and check a manifest read from `object`.
    pub fn from_json(object: &str, data: &[u8]) -> Result<Manifest, StreamError> {
        let bad = |reason: String| StreamError::Manifest {
            object: object.to_string(),
            reason,
        };
        let m: Manifest =
            serde_json::from_slice(data).map_err(|e| bad(format!("not a manifest: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "format {:?}, expected {MANIFEST_FORMAT:?}",
                m.format
            )));
        }
        if !(MANIFEST_VERSION_MIN..=MANIFEST_VERSION).contains(&m.version) {
            return Err(bad(format!(
                "version {} is not supported (this drl reads {MANIFEST_VERSION_MIN}..={MANIFEST_VERSION})",
                m.version
            )));
        }
        m.validate().map_err(bad)?;
        Ok(m)
    }

    /// Structural checks: chunk size, count, index order, entry fields.
    pub fn validate(&self) -> Result<(), String> {
        if self.chunk_size_bytes == 0 || self.chunk_size_bytes > u32::MAX as u64 {
            return Err(format!(
                "chunk size {} is out of range",
                self.chunk_size_bytes
            ));
        }
        let n = Self::chunk_count(self.volume_size_bytes, self.chunk_size_bytes);
        if n > STREAM_CHUNKS_MAX {
            return Err(format!("{n} chunks, more than {STREAM_CHUNKS_MAX}"));
        }
        if self.chunks.len() as u64 != n {
            return Err(format!(
                "{} chunk entries for a volume of {n} chunks",
                self.chunks.len()
            ));
        }
        for (i, c) in self.chunks.iter().enumerate() {
            if c.index() != i as u64 {
                return Err(format!("entry {i} has index {}", c.index()));
            }
            match c {
                ChunkEntry::Stored {
                    digest,
                    object,
                    offset,
                    stored_bytes,
                    ..
                } => {
                    if *offset != 0 && self.version < 2 {
                        return Err(format!(
                            "chunk {i}: offset {offset} in a version {} manifest",
                            self.version
                        ));
                    }
                    if offset.checked_add(*stored_bytes).is_none()
                        || *stored_bytes > self.chunk_size_bytes
                    {
                        return Err(format!(
                            "chunk {i}: {stored_bytes} bytes at {offset} do not fit a chunk of {}",
                            self.chunk_size_bytes
                        ));
                    }
                    let (alg, hex) = (digest.alg(), digest.hex());
                    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(format!(
                            "chunk {i}: {} {hex:?} is not 64 hex digits",
                            alg.name()
                        ));
                    }
                    if alg != DigestAlg::of_version(self.version) {
                        return Err(format!(
                            "chunk {i}: a {} digest in a version {} manifest (which uses {})",
                            alg.name(),
                            self.version,
                            DigestAlg::of_version(self.version).name()
                        ));
                    }
                    if object.is_empty() {
                        return Err(format!("chunk {i}: empty object name"));
                    }
                }
                ChunkEntry::UnchangedFromParent { .. } if self.parent.is_none() => {
                    return Err(format!(
                        "chunk {i} is unchanged-from-parent in a snapshot without parent"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Where each chunk of a restored volume comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedChain {
    pub volume_size_bytes: u64,
    pub chunk_size_bytes: u64,
    /// Newest first.
    pub snapshots: Vec<String>,
    /// One entry per chunk: `Stored` or `Zero`.
    pub chunks: Vec<ChunkEntry>,
}

/// Resolve `chain` (newest first, each the parent of the one before) into one chunk list.
/// Checks that the links match, that sizes agree, that there is no cycle and that the oldest is
/// a full snapshot.
pub fn resolve_chain(chain: &[Manifest]) -> Result<ResolvedChain, StreamError> {
    let first = chain
        .first()
        .ok_or_else(|| StreamError::Chain("empty chain".into()))?;
    if chain.len() > STREAM_CHAIN_DEPTH_MAX {
        return Err(StreamError::Chain(format!(
            "{} snapshots, more than {STREAM_CHAIN_DEPTH_MAX}",
            chain.len()
        )));
    }
    let mut seen = HashSet::new();
    for (i, m) in chain.iter().enumerate() {
        if !seen.insert(m.snapshot.as_str()) {
            return Err(StreamError::Chain(format!(
                "cycle: snapshot {} appears twice",
                m.snapshot
            )));
        }
        if m.volume_size_bytes != first.volume_size_bytes
            || m.chunk_size_bytes != first.chunk_size_bytes
        {
            return Err(StreamError::Chain(format!(
                "snapshot {} has size {} / chunk {} but {} has {} / {}",
                m.snapshot,
                m.volume_size_bytes,
                m.chunk_size_bytes,
                first.snapshot,
                first.volume_size_bytes,
                first.chunk_size_bytes
            )));
        }
        match (&m.parent, chain.get(i + 1)) {
            (Some(p), Some(next)) if *p == next.snapshot => {}
            (Some(p), Some(next)) => {
                return Err(StreamError::Chain(format!(
                    "snapshot {} names parent {p}, but the chain holds {}",
                    m.snapshot, next.snapshot
                )))
            }
            (Some(p), None) => {
                return Err(StreamError::Chain(format!(
                    "parent {p} of snapshot {} is missing",
                    m.snapshot
                )))
            }
            (None, Some(next)) => {
                return Err(StreamError::Chain(format!(
                    "snapshot {} is full but the chain continues with {}",
                    m.snapshot, next.snapshot
                )))
            }
            (None, None) => {}
        }
    }
    let mut chunks = Vec::with_capacity(first.chunks.len());
    for i in 0..first.chunks.len() {
        let entry = chain
            .iter()
            .map(|m| &m.chunks[i])
            .find(|c| !matches!(c, ChunkEntry::UnchangedFromParent { .. }));
        match entry {
            Some(e) => chunks.push(e.clone()),
            None => {
                return Err(StreamError::Chain(format!(
                    "chunk {i} is stored in no snapshot of the chain"
                )))
            }
        }
    }
    Ok(ResolvedChain {
        volume_size_bytes: first.volume_size_bytes,
        chunk_size_bytes: first.chunk_size_bytes,
        snapshots: chain.iter().map(|m| m.snapshot.clone()).collect(),
        chunks,
    })
}

/// Check a snapshot name: it becomes one path segment of object names.
pub fn check_snapshot_name(name: &str) -> Result<(), StreamError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StreamError::Config(format!(
            "snapshot name {name:?}: use 1..=128 of A-Z a-z 0-9 - _ . : @ +"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    /// The digest a current manifest holds.
    fn dig(c: char) -> ChunkDigest {
        ChunkDigest::Blake3(sha(c))
    }

    fn full(name: &str) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            snapshot: name.into(),
            parent: None,
            volume: "v".into(),
            created_unix_ms: 1,
            volume_size_bytes: 250,
            chunk_size_bytes: 100,
            compression: Compression::Zstd,
            chunks: vec![
                ChunkEntry::Stored {
                    index: 0,
                    digest: dig('a'),
                    object: "p/s0/chunks/0".into(),
                    offset: 0,
                    stored_bytes: 10,
                    compression: Compression::Zstd,
                },
                ChunkEntry::Zero { index: 1 },
                ChunkEntry::Stored {
                    index: 2,
                    digest: dig('b'),
                    object: "p/s0/chunks/0".into(),
                    offset: 10,
                    stored_bytes: 50,
                    compression: Compression::None,
                },
            ],
        }
    }

    fn incr(name: &str, parent: &str) -> Manifest {
        let mut m = full(name);
        m.parent = Some(parent.into());
        m.chunks = vec![
            ChunkEntry::UnchangedFromParent { index: 0 },
            ChunkEntry::Stored {
                index: 1,
                digest: dig('c'),
                object: format!("p/{name}/chunks/1"),
                offset: 0,
                stored_bytes: 7,
                compression: Compression::Zstd,
            },
            ChunkEntry::Zero { index: 2 },
        ];
        m
    }

    #[test]
    fn json_round_trip_and_checks() {
        let m = full("s0");
        let j = m.to_json();
        let text = String::from_utf8(j.clone()).unwrap();
        assert!(text.contains(r#""state":"zero""#), "{text}");
        assert_eq!(Manifest::from_json("o", &j).unwrap(), m);
        assert_eq!(m.chunk_len(2), 50);
        let mut bad = m.clone();
        bad.version = 9;
        assert!(Manifest::from_json("o", &bad.to_json())
            .unwrap_err()
            .to_string()
            .contains("version 9"));
        let mut bad = m.clone();
        bad.chunks.pop();
        assert!(Manifest::from_json("o", &bad.to_json())
            .unwrap_err()
            .to_string()
            .contains("2 chunk entries"));
        let mut bad = m.clone();
        bad.chunks[1] = ChunkEntry::UnchangedFromParent { index: 1 };
        assert!(Manifest::from_json("o", &bad.to_json())
            .unwrap_err()
            .to_string()
            .contains("without parent"));
        assert!(Manifest::from_json("o", b"{").is_err());
        let i = incr("s1", "s0");
        assert!(i
            .to_json()
            .windows(b"unchanged-from-parent".len())
            .any(|w| w == b"unchanged-from-parent"));
    }

    #[test]
    fn chunks_are_addressed_by_the_versions_digest() {
        let m = full("s0");
        let text = String::from_utf8(m.to_json()).unwrap();
        assert!(
            text.contains(&format!(r#""blake3":"{}""#, sha('a'))),
            "{text}"
        );
        assert!(!text.contains("sha256"), "{text}");
        // Version 2 (sha256) still reads; a digest that is not its version's is refused.
        let v2 = text
            .replace(r#""version":3"#, r#""version":2"#)
            .replace("blake3", "sha256");
        let r = Manifest::from_json("o", v2.as_bytes()).unwrap();
        assert!(
            matches!(&r.chunks[0], ChunkEntry::Stored { digest: ChunkDigest::Sha256(h), .. } if *h == sha('a'))
        );
        let e = Manifest::from_json("o", text.replace("blake3", "sha256").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("a sha256 digest in a version 3 manifest"), "{e}");
        let e = Manifest::from_json(
            "o",
            text.replace(r#""version":3"#, r#""version":2"#).as_bytes(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a blake3 digest in a version 2 manifest"), "{e}");
        // An entry without a digest, or with two, is refused whatever the keys' order.
        let e = Manifest::from_json("o", text.replace("blake3", "md5").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("without a digest"), "{e}");
        let both = |first: &str, second: &str| {
            text.replacen(
                &format!(r#""blake3":"{}""#, sha('a')),
                &format!(r#""{first}":"{}","{second}":"{}""#, sha('a'), sha('a')),
                1,
            )
        };
        for j in [both("blake3", "sha256"), both("sha256", "blake3")] {
            let e = Manifest::from_json("o", j.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains("both a sha256 and a blake3"), "{e}");
        }
        // Known answers ("abc"), in order, sha256 through the eight-lane path.
        let abc: Vec<&[u8]> = vec![b"abc"; 9];
        let s = DigestAlg::Sha256.digest_all(&abc);
        assert_eq!(s.len(), 9);
        assert!(
            s.iter()
                .all(|d| d.hex()
                    == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            DigestAlg::Blake3.digest_all(&abc[..2]),
            vec![
                ChunkDigest::Blake3(
                    "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85".into()
                );
                2
            ]
        );
    }

    #[test]
    fn version_1_manifests_still_read() {
        // The layout drl wrote before packed objects: one object per chunk, no offset.
        let v1 = format!(
            r#"{{"format":"drl-snapshot","version":1,"snapshot":"old","parent":null,"volume":"v",
            "created_unix_ms":1,"volume_size_bytes":200,"chunk_size_bytes":100,"compression":"zstd",
            "chunks":[{{"index":0,"state":"stored","sha256":"{}","object":"p/old/chunks/00000000-aa",
            "stored_bytes":100,"compression":"none"}},{{"index":1,"state":"zero"}}]}}"#,
            sha('a')
        );
        let m = Manifest::from_json("o", v1.as_bytes()).unwrap();
        assert_eq!(m.version, 1);
        assert!(matches!(
            &m.chunks[0],
            ChunkEntry::Stored {
                offset: 0,
                stored_bytes: 100,
                ..
            }
        ));
        // An offset makes no sense in version 1.
        let mut bad = m.clone();
        if let ChunkEntry::Stored { offset, .. } = &mut bad.chunks[0] {
            *offset = 5;
        }
        let e = Manifest::from_json("o", &bad.to_json())
            .unwrap_err()
            .to_string();
        assert!(e.contains("offset 5 in a version 1"), "{e}");
        // Nor does a chunk stored bigger than the chunk size.
        let mut bad = full("s0");
        if let ChunkEntry::Stored { stored_bytes, .. } = &mut bad.chunks[0] {
            *stored_bytes = 101;
        }
        assert!(Manifest::from_json("o", &bad.to_json()).is_err());
    }

    #[test]
    fn chain_resolution() {
        let r = resolve_chain(&[incr("s1", "s0"), full("s0")]).unwrap();
        assert_eq!(r.snapshots, ["s1", "s0"]);
        assert!(
            matches!(&r.chunks[0], ChunkEntry::Stored { object, .. } if object == "p/s0/chunks/0")
        );
        assert!(
            matches!(&r.chunks[1], ChunkEntry::Stored { object, .. } if object == "p/s1/chunks/1")
        );
        assert!(matches!(&r.chunks[2], ChunkEntry::Zero { .. }));
    }

    #[test]
    fn chain_errors() {
        let e = resolve_chain(&[incr("s1", "s0")]).unwrap_err().to_string();
        assert!(e.contains("parent s0 of snapshot s1 is missing"), "{e}");
        let e = resolve_chain(&[incr("s1", "s0"), incr("s0", "s1"), incr("s1", "s0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cycle"), "{e}");
        let e = resolve_chain(&[incr("s2", "s0"), full("s1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("names parent s0"), "{e}");
        let mut other = full("s0");
        other.volume_size_bytes = 300;
        other.chunks.push(ChunkEntry::Zero { index: 3 });
        let e = resolve_chain(&[incr("s1", "s0"), other])
            .unwrap_err()
            .to_string();
        assert!(e.contains("size"), "{e}");
    }

    #[test]
    fn snapshot_names() {
        assert!(check_snapshot_name("daily-2024-01-01T00:00").is_ok());
        for n in ["", "..", "a/b", "a b"] {
            assert!(check_snapshot_name(n).is_err(), "{n}");
        }
    }
}
