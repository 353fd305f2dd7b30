//! Swift harnesses: snapshot manifests with restore-chain resolution, container listings
//! and Static Large Object manifests, as the object store (or whoever answers for it) sends
//! them.
//!
//! Inputs are split at NUL bytes (JSON never holds a raw NUL), so seeds stay readable JSON.
//!
//! `manifest`: each part through [`Manifest::from_json`]; the parts that parse, newest first,
//! through [`resolve_chain`]. Checked: a parsed manifest survives its own serialization; a
//! resolved chain has one stored-or-zero entry per chunk, in order, and its chunk lengths add
//! up to the volume.
//!
//! `listing`: each part as one page of a paginated listing ([`parse_listing_page`] and
//! [`add_listing_page`], the loop of `SwiftClient::list`), the last also as an SLO manifest.
//! Checked: an accepted listing is strictly ordered (the marker advanced), within its bound.

use crate::limits::SWIFT_LIST_OBJECTS_MAX;
use crate::stream::manifest::{check_snapshot_name, resolve_chain, ChunkEntry, Manifest};
use crate::stream::swift::{add_listing_page, parse_listing_page, parse_slo};

/// Manifests and a chain of them (see the module doc).
pub fn manifest(data: &[u8]) {
    let mut chain = Vec::new();
    for part in data.split(|&b| b == 0).take(8) {
        let Ok(m) = Manifest::from_json("fuzz/manifest", part) else {
            continue;
        };
        let again = Manifest::from_json("fuzz/manifest", &m.to_json())
            .expect("a manifest that parsed parses again after serialization");
        assert_eq!(again, m, "a manifest changed through its serialization");
        if let Some(p) = &m.parent {
            let _ = check_snapshot_name(p);
        }
        for i in 0..m.chunks.len() as u64 {
            assert!(m.chunk_len(i) <= m.chunk_size_bytes);
        }
        chain.push(m);
    }
    if chain.is_empty() {
        return;
    }
    if let Ok(r) = resolve_chain(&chain) {
        assert_eq!(
            r.chunks.len() as u64,
            Manifest::chunk_count(r.volume_size_bytes, r.chunk_size_bytes)
        );
        let mut total = 0u64;
        for (i, c) in r.chunks.iter().enumerate() {
            assert_eq!(c.index(), i as u64, "resolved chunks out of order");
            assert!(!matches!(c, ChunkEntry::UnchangedFromParent { .. }));
            total += chain[0].chunk_len(i as u64);
        }
        assert_eq!(total, r.volume_size_bytes, "chunk lengths do not add up");
    }
}

/// Listing pages and an SLO manifest (see the module doc).
pub fn listing(data: &[u8]) {
    let parts: Vec<&[u8]> = data.split(|&b| b == 0).take(16).collect();
    let mut out = Vec::new();
    for part in &parts {
        let Ok(page) = parse_listing_page("fuzz", part) else {
            break;
        };
        match add_listing_page(&mut out, page, "fuzz", "p/") {
            Ok(true) => {
                assert!(out.len() as u64 <= SWIFT_LIST_OBJECTS_MAX);
            }
            Ok(false) | Err(_) => break,
        }
    }
    if let Some(last) = parts.last() {
        if let Ok(segments) = parse_slo("fuzz/slo", last) {
            let again = serde_json::to_vec(&segments).expect("segments serialize");
            assert_eq!(parse_slo("fuzz/slo", &again).ok(), Some(segments));
        }
    }
}
