//! Seeds for the corpora that the product's own encoders write (`fuzz/corpus/*/gen-*`):
//! a replication session as the real [`Encoder`] and [`Handshake`] put it on the wire,
//! manifests as a stream writes them, control requests as the CLI sends them. Regenerate with
//! `cargo test --test fuzz_corpus -- --ignored write_generated_seeds`.
//! NBD seeds are recordings of real clients (`scripts/fuzz.sh --capture`), text seeds are the
//! project's example files.

use bytes::{Bytes, BytesMut};

use crate::repl::frame::{disk_from_wire, role_from_wire, Frame, RangeWrite, VerifyRun};
use crate::repl::gen::GenIds;
use crate::repl::handshake::{Handshake, LocalInfo};
use crate::repl::wire::{features, resource_id, Encoder};
use crate::stream::manifest::{
    ChunkDigest, ChunkEntry, Manifest, MANIFEST_FORMAT, MANIFEST_VERSION,
};
use crate::stream::Compression;

/// (target, file name, content) of every generated seed.
pub fn generated() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut v = Vec::new();
    let (handshake, session) = repl_session();
    v.push(("repl_frames", "gen-handshake".into(), handshake));
    v.push(("repl_frames", "gen-session".into(), session));
    for (i, m) in manifests().into_iter().enumerate() {
        v.push(("swift_manifest", format!("gen-manifest-{i}"), m));
    }
    v.push(("swift_manifest", "gen-chain".into(), {
        let ms = manifests();
        let mut c = ms[1].clone();
        c.push(0);
        c.extend_from_slice(&ms[0]);
        c
    }));
    v.push(("control_rpc", "gen-cli-calls".into(), rpc_lines()));
    v
}

fn local(node: &str, role: u8) -> LocalInfo {
    LocalInfo {
        resource: "r0".into(),
        node_name: node.into(),
        size_bytes: 64 * 1024 * 1024,
        usable_bytes: 64 * 1024 * 1024,
        gen: GenIds {
            current: 0x1234_5678_9abc_def1,
            bitmap: 0,
            history: [0x0fed_cba9_8765_4321, 0],
        },
        dirty_bits: 0,
        role: role_from_wire(role).expect("1 or 2"),
        disk: disk_from_wire(7).expect("UpToDate"),
        features: features::ALL,
        group_sizes: Vec::new(),
    }
}

/// What site-b receives from site-a: the handshake, then a session (state, bitmap, writes in
/// two epochs, a resync exchange, a verify run, pings).
fn repl_session() -> (Vec<u8>, Vec<u8>) {
    let enc = Encoder::new(resource_id("r0"));
    let mut a = Handshake::with_nonce(local("site-a", 1), b"secret", [7; 32]).expect("secret");
    let mut b = Handshake::with_nonce(local("site-b", 2), b"secret", [9; 32]).expect("secret");
    let mut from_a: Vec<Frame> = a.start();
    let mut to_a: Vec<Frame> = b.start();
    let mut wire_a = Vec::new();
    for _ in 0..4 {
        let mut next_to_a = Vec::new();
        for f in std::mem::take(&mut from_a) {
            wire_a.push(f.clone());
            next_to_a.extend(b.on_frame(f).send);
        }
        for f in std::mem::take(&mut to_a).into_iter().chain(next_to_a) {
            from_a.extend(a.on_frame(f).send);
        }
    }
    let mut handshake = BytesMut::new();
    for f in &wire_a {
        enc.encode(f, &mut handshake)
            .expect("handshake frames encode");
    }
    let data = |seq, epoch, offset, fill: u8| Frame::Data {
        vol: 0,
        seq,
        epoch,
        offset,
        fua: false,
        data: Bytes::from(vec![fill; 4096]),
    };
    let session = vec![
        Frame::StateChange {
            role: role_from_wire(1).expect("Primary"),
            disk: disk_from_wire(7).expect("UpToDate"),
            ahead: false,
        },
        Frame::BitmapChunk {
            first_bit: 0,
            bit_count: 16384,
            last: true,
            bits: Bytes::from(vec![0u8; 2048]),
        },
        data(1, 1, 0, 0xab),
        data(2, 1, 8192, 0xcd),
        Frame::Barrier { epoch: 1 },
        Frame::Trim(RangeWrite {
            vol: 0,
            seq: 3,
            epoch: 2,
            offset: 65536,
            len: 65536,
            fua: false,
        }),
        Frame::Zeroes(RangeWrite {
            vol: 0,
            seq: 4,
            epoch: 2,
            offset: 131072,
            len: 4096,
            fua: true,
        }),
        Frame::Barrier { epoch: 2 },
        Frame::ResyncRequest {
            offset: 1 << 20,
            len: 1 << 20,
        },
        Frame::ResyncData {
            offset: 0,
            data: Bytes::from(vec![0x5a; 8192]),
        },
        Frame::ResyncZeroes {
            offset: 8192,
            len: 1 << 20,
        },
        Frame::ResyncDone,
        Frame::VerifyRequest {
            run: VerifyRun::Sender,
            id: 1,
            offset: 0,
            len: 65536,
        },
        Frame::VerifyDigests {
            run: VerifyRun::Receiver,
            id: 1,
            offset: 0,
            len: 65536,
            digests: Bytes::from(crate::repl::verify::block_digests(&[0u8; 65536])),
        },
        Frame::VerifyResult {
            run: VerifyRun::Sender,
            id: 1,
            offset: 0,
            len: 65536,
            differ: Bytes::from(vec![0b101, 0]),
        },
        Frame::VerifyDone { id: 1 },
        Frame::Ping { seq: 1 },
        Frame::PingAck { seq: 1 },
        Frame::BarrierAck { epoch: 2 },
        Frame::VolumeAdd {
            vol: 1,
            size_bytes: 1 << 20,
        },
        Frame::Disconnect {
            reason: "administrative disconnect".into(),
        },
    ];
    let mut out = BytesMut::new();
    let mut enc = enc;
    enc.set_zstd(true);
    for f in &session {
        enc.encode(f, &mut out).expect("session frames encode");
    }
    (handshake.to_vec(), out.to_vec())
}

/// A full snapshot and an incremental on top of it, as a stream writes them.
fn manifests() -> Vec<Vec<u8>> {
    let sha = ChunkDigest::Blake3(
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_string(),
    );
    let full = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        snapshot: "s1".into(),
        parent: None,
        volume: "r0".into(),
        created_unix_ms: 1_700_000_000_000,
        volume_size_bytes: 3 * 1024 * 1024 + 4096,
        chunk_size_bytes: 1024 * 1024,
        compression: Compression::Zstd,
        chunks: vec![
            ChunkEntry::Stored {
                index: 0,
                digest: sha.clone(),
                object: "p/s1/objects/00000000-ab12".into(),
                offset: 0,
                stored_bytes: 1200,
                compression: Compression::Zstd,
            },
            ChunkEntry::Zero { index: 1 },
            ChunkEntry::Stored {
                index: 2,
                digest: sha.clone(),
                object: "p/s1/objects/00000000-ab12".into(),
                offset: 1200,
                stored_bytes: 1024 * 1024,
                compression: Compression::None,
            },
            ChunkEntry::Zero { index: 3 },
        ],
    };
    let mut inc = full.clone();
    inc.snapshot = "s2".into();
    inc.parent = Some("s1".into());
    inc.chunks = vec![
        ChunkEntry::UnchangedFromParent { index: 0 },
        ChunkEntry::Stored {
            index: 1,
            digest: sha,
            object: "p/s2/objects/00000001-cd34".into(),
            offset: 0,
            stored_bytes: 77,
            compression: Compression::Zstd,
        },
        ChunkEntry::UnchangedFromParent { index: 2 },
        ChunkEntry::UnchangedFromParent { index: 3 },
    ];
    vec![full.to_json(), inc.to_json()]
}

/// Requests as `drl` sends them, one per line.
fn rpc_lines() -> Vec<u8> {
    use crate::control::rpc::Request;
    use serde_json::json;
    let calls = [
        Request::new(1, "status", json!({})),
        Request::new(2, "methods", serde_json::Value::Null),
        Request::new(3, "events.subscribe", json!({"resource": "r0"})),
        Request::new("a", "primary", json!({"resource": "r0", "force": true})),
        Request::new(
            5,
            "snapshot.create",
            json!({"resource": "r0", "name": "s1"}),
        ),
        Request::new(
            6,
            "stream",
            json!({"resource": "r0", "snapshot": "s1", "to": "swift://backups/p"}),
        ),
    ];
    let mut out = Vec::new();
    for c in calls {
        out.extend(serde_json::to_vec(&c).expect("a request serializes"));
        out.push(b'\n');
    }
    out
}
