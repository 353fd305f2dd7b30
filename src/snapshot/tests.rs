//! Snapshot store tests against a reference model: every snapshot must read back exactly as the
//! volume was when it was taken, whatever was written, deleted or restarted since.

use std::sync::Arc;

use rand::{Rng, SeedableRng};

use super::*;
use crate::volume::mem::MemDevice as Mem;
use crate::volume::{AlignedBuf, BlockDevice, VolumeError};

const VOL: u64 = 1 << 20;
const CHUNK: u64 = 4096;

fn cfg(dir: &std::path::Path, space: u64) -> SnapshotStoreConfig {
    SnapshotStoreConfig {
        dir: dir.to_owned(),
        resource: "r0".into(),
        volume_bytes: VOL,
        chunk_bytes: CHUNK,
        space_bytes: space,
    }
}

async fn write(store: &SnapshotStore<Mem>, off: u64, data: &[u8]) {
    let _g = store.begin_write(off, data.len() as u64).await.unwrap();
    store
        .device()
        .write(off, AlignedBuf::from_slice(data), false)
        .await
        .unwrap();
}

async fn read_all(store: &SnapshotStore<Mem>, snap: &str) -> Vec<u8> {
    store.read(snap, 0, VOL as u32).await.unwrap().to_vec()
}

fn mem() -> Arc<Mem> {
    Arc::new(Mem::new("mem", VOL as usize))
}

#[tokio::test]
async fn snapshots_read_as_taken_under_random_writes_deletes_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let dev = mem();
    let mut store = Arc::new(SnapshotStore::open(cfg(dir.path(), VOL * 4), dev.clone()).unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut model: Vec<(String, Vec<u8>)> = vec![];
    for round in 0..40 {
        for _ in 0..rng.random_range(1..20) {
            let off = rng.random_range(0..VOL - 9000);
            let len = rng.random_range(1..9000usize);
            let byte = rng.random::<u8>();
            write(&store, off, &vec![byte; len]).await;
        }
        match rng.random_range(0..10) {
            0..=5 => {
                let name = format!("s{round}");
                store.create(&name).await.unwrap();
                model.push((name, dev.contents()));
            }
            6..=7 if !model.is_empty() => {
                let i = rng.random_range(0..model.len());
                let (name, _) = model.remove(i);
                store.delete(&name).await.unwrap();
            }
            _ => {
                // Reopen, cleanly or not: snapshots must survive both.
                if rng.random_bool(0.5) {
                    store.close().await.unwrap();
                }
                drop(store);
                store =
                    Arc::new(SnapshotStore::open(cfg(dir.path(), VOL * 4), dev.clone()).unwrap());
            }
        }
        for (name, want) in &model {
            assert!(
                read_all(&store, name).await == *want,
                "round {round}: snapshot {name} differs from the volume when taken"
            );
        }
    }
    let listed: Vec<String> = store.list().await.into_iter().map(|i| i.name).collect();
    assert_eq!(
        listed,
        model.iter().map(|m| m.0.clone()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn change_sets_cover_exactly_the_written_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(cfg(dir.path(), VOL), mem()).unwrap();
    write(&store, 100 * CHUNK, &[7; 10]).await; // before any snapshot: in no change set
    store.create("a").await.unwrap();
    write(&store, 0, &[1; 10]).await; // chunk 0
    write(&store, 5 * CHUNK + 100, &[2; 5000]).await; // chunks 5, 6
    store.create("b").await.unwrap();
    write(&store, 9 * CHUNK, &[3; 1]).await; // chunk 9
    store.create("c").await.unwrap();
    let ab = store.changed_between("a", "b").await.unwrap();
    assert_eq!(
        (0..256).filter(|&c| ab.is_set(c)).collect::<Vec<_>>(),
        [0, 5, 6]
    );
    let ac = store.changed_between("a", "c").await.unwrap();
    assert_eq!(
        (0..256).filter(|&c| ac.is_set(c)).collect::<Vec<_>>(),
        [0, 5, 6, 9]
    );
    assert!(ac.changed(9 * CHUNK, 1) && !ac.changed(10 * CHUNK, CHUNK));
    assert!(matches!(
        store.changed_between("c", "a").await,
        Err(SnapshotError::NotAncestor { .. })
    ));

    // Deleting "a" and "b" keeps their change sets as tombstones: "a" can still be a parent.
    store.delete("a").await.unwrap();
    store.delete("b").await.unwrap();
    let ac2 = store.changed_between("a", "c").await.unwrap();
    assert_eq!(ac2, ac);
    assert!(matches!(
        store.read("a", 0, 10).await,
        Err(VolumeError::Invalid(_))
    ));
}

#[tokio::test]
async fn changes_after_a_clean_reopen_are_kept_and_after_a_crash_of_a_tombstone_are_total() {
    let dir = tempfile::tempdir().unwrap();
    let dev = mem();
    let store = SnapshotStore::open(cfg(dir.path(), VOL), dev.clone()).unwrap();
    store.create("a").await.unwrap();
    store.delete("a").await.unwrap(); // newest entry is now a tombstone: nothing preserves
    write(&store, 3 * CHUNK, &[9; 10]).await;
    store.close().await.unwrap();
    drop(store);
    let store = SnapshotStore::open(cfg(dir.path(), VOL), dev.clone()).unwrap();
    store.create("b").await.unwrap();
    let ab = store.changed_between("a", "b").await.unwrap();
    assert_eq!((0..256).filter(|&c| ab.is_set(c)).collect::<Vec<_>>(), [3]);

    store.delete("b").await.unwrap();
    write(&store, 0, &[1]).await;
    drop(store); // crash: no close
    let store = SnapshotStore::open(cfg(dir.path(), VOL), dev.clone()).unwrap();
    store.create("c").await.unwrap();
    let bc = store.changed_between("b", "c").await.unwrap();
    assert_eq!(
        bc.changed_bytes(),
        VOL,
        "untracked changes after a crash must count as all changed"
    );
}

#[tokio::test]
async fn exhausted_space_invalidates_snapshots_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let dev = mem();
    let store = SnapshotStore::open(cfg(dir.path(), 4 * CHUNK), dev.clone()).unwrap();
    store.create("a").await.unwrap();
    for c in 0..4 {
        write(&store, c * CHUNK, &[1; 10]).await;
    }
    assert_eq!(store.list().await[0].state, SnapshotState::Valid);
    write(&store, 8 * CHUNK, &[2; 10]).await; // fifth chunk: no space left
    assert_eq!(dev.contents()[8 * CHUNK as usize], 2, "the write happened");
    let info = &store.list().await[0];
    assert!(
        matches!(&info.state, SnapshotState::Invalid(r) if r.contains("exhausted")),
        "{info:?}"
    );
    let err = store.read("a", 0, 10).await.unwrap_err().to_string();
    assert!(err.contains("exhausted"), "{err}");
    // Space is free again for new snapshots.
    store.create("b").await.unwrap();
    write(&store, 0, &[3; 10]).await;
    assert_eq!(store.read("b", 0, 1).await.unwrap()[0], 1);
}

#[tokio::test]
async fn concurrent_writers_during_create_give_a_consistent_cut() {
    // Dependent writes: writer k writes block k only after block k-1's write completed. A
    // snapshot may hold a prefix of them, never a later one without an earlier one.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SnapshotStore::open(cfg(dir.path(), VOL * 2), mem()).unwrap());
    let writer = {
        let s = store.clone();
        tokio::spawn(async move {
            for k in 0..200u64 {
                write(&s, (k % 256) * CHUNK, &[(k % 250 + 1) as u8; 512]).await;
                tokio::task::yield_now().await;
            }
        })
    };
    let mut names = vec![];
    for i in 0..10 {
        let n = format!("cut{i}");
        store.create(&n).await.unwrap();
        names.push(n);
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    for n in names {
        let img = read_all(&store, &n).await;
        let written: Vec<bool> = (0..200).map(|k| img[(k * CHUNK) as usize] != 0).collect();
        let prefix = written.iter().take_while(|w| **w).count();
        assert!(
            written[prefix..].iter().all(|w| !w),
            "snapshot {n} holds a write without its predecessor"
        );
    }
}

#[tokio::test]
async fn bad_names_and_duplicates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(cfg(dir.path(), VOL), mem()).unwrap();
    for bad in ["", ".hidden", "a/b", "x y"] {
        assert!(
            matches!(store.create(bad).await, Err(SnapshotError::BadName(_))),
            "{bad:?}"
        );
    }
    store.create("ok").await.unwrap();
    assert!(matches!(
        store.create("ok").await,
        Err(SnapshotError::Exists { .. })
    ));
    assert!(matches!(
        store.delete("nope").await,
        Err(SnapshotError::NotFound { .. })
    ));
}

#[tokio::test]
async fn store_of_another_resource_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SnapshotStore::open(cfg(dir.path(), VOL), mem()).unwrap());
    let mut other = cfg(dir.path(), VOL);
    other.resource = "r1".into();
    let e = SnapshotStore::open(other, mem()).err().unwrap().to_string();
    assert!(e.contains("belongs to resource r0"), "{e}");
}

#[tokio::test]
async fn a_parked_snapshot_reader_does_not_hold_up_writes_and_still_reads_the_snapshot() {
    // A stream reads a snapshot, then stops polling its read for a while (its uploads wait for
    // the shaper). The application's write to the same chunk must not wait for that reader,
    // and the reader, polled again, must still return the data as it was at the snapshot.
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(Mem::new("mem", VOL as usize).with_slow_range(
        3 * CHUNK..3 * CHUNK + 1,
        std::time::Duration::from_millis(300),
    ));
    let store = SnapshotStore::open(cfg(dir.path(), VOL), dev.clone()).unwrap();
    write(&store, 3 * CHUNK, &[1; CHUNK as usize]).await;
    store.create("a").await.unwrap();
    let mut reader = Box::pin(store.read("a", 3 * CHUNK, CHUNK as u32));
    // Poll it into its (slow) disk read, then leave it parked.
    let early = tokio::time::timeout(std::time::Duration::from_millis(50), &mut reader).await;
    assert!(early.is_err(), "the slow read cannot be done yet");
    let w = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        write(&store, 3 * CHUNK, &[2; 10]),
    )
    .await;
    assert!(
        w.is_ok(),
        "a write waited for a snapshot reader that was not being polled"
    );
    assert_eq!(dev.contents()[3 * CHUNK as usize], 2, "the write happened");
    let got = reader.await.unwrap();
    assert!(
        got.iter().all(|&b| b == 1),
        "the snapshot read returned data written after the snapshot"
    );
}
