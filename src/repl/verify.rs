//! Online verify (DRBD's `drbdadm verify`): compare the two nodes' data block by block while
//! the volume stays in use; only digests cross the link.
//!
//! The node where the admin runs `drl verify` is VerifyS, its peer VerifyT. VerifyS walks the
//! volume (every volume of a consistency group, one after the other, in the group's address
//! space) in [`REPL_VERIFY_REQUEST_BYTES`] ranges, [`REPL_VERIFY_WINDOW_REQUESTS`] at a time.
//! For each range one node *provides* digests (one truncated sha256 per bitmap block,
//! [`REPL_VERIFY_DIGEST_BYTES`]) and the other *compares* them with its own data and answers
//! with a VerifyResult (one bit per block).
//!
//! Writes go on meanwhile, so both reads must see the same point of the write stream. The
//! Primary provides (with no Primary nothing new is written, and VerifyS provides once the
//! writes it received before a demotion are on its disk):
//! - it reads under the exclusive resync lock, which waits for every application write in
//!   flight to finish locally (writes hold the lock shared until their local write is done)
//!   and lets no new one start; the VerifyDigests is queued behind the Data frames of exactly
//!   the writes its read saw, before any later one;
//! - the comparer (the Secondary) takes frames in stream order: at a VerifyDigests it stops
//!   decoding until every write received before it is on its disk
//!   ([`crate::repl::receiver::EpochReceiver::idle`]), then reads and compares before it
//!   applies anything later.
//!
//! So a block differs only if the data differs at that point of the stream: there are no false
//! alarms from writes in flight, and no second look is needed. (A trimmed range can differ:
//! a discard is advisory, each side's disk decides what it reads back; DRBD reports those too.)
//!
//! Every verify frame says whose run it belongs to ([`VerifyRun`]), so each node can drive a
//! run and serve its peer's at the same time. A run stops (and still reports) when the link
//! drops, a node changes its role, or replication leaves VerifyS (pull-ahead, a resync); it
//! waits for the answers to what it already asked before its VerifyDone, so no late frame
//! follows. A VerifyT that hears nothing for [`crate::limits::REPL_VERIFY_PEER_IDLE_MS`] ends
//! by itself. A run
//! reads at most `rate` bytes per second on each node
//! ([`crate::limits::REPL_VERIFY_RATE_DEFAULT`]): each
//! range briefly holds the Primary's writes.
//!
//! As in DRBD, verify changes no data. Differing blocks are marked out of sync in the
//! Primary's bitmap (whichever node runs verify), and the next `disconnect` / `connect`
//! resyncs them from the Primary. With no Primary no side is known good: the result is
//! reported and nothing is marked.
//!
//! The protocol of all this (both runs, the window, the hold, marking) is the session core's
//! (`repl::core::verify`), so the simulator runs verify too; this file keeps the pure
//! helpers and the shell's I/O: the provider's read under the lock, the report.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use drbd_compat::ReplState;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::limits::{
    BITMAP_BLOCK_BYTES, REPL_PEER_TIMEOUT_MS, REPL_VERIFY_DIGEST_BYTES, REPL_VERIFY_REQUEST_BYTES,
};
use crate::repl::core::VerifyEnd;
use crate::repl::frame::{Frame, VerifyRun};
use crate::repl::link::Link;
use crate::repl::replicator::Replicator;
use crate::volume::{meta, BlockDevice};

/// A verify run in progress (status `verify`).
#[derive(Debug, Clone)]
pub struct VerifyProgress {
    /// "VerifyS" or "VerifyT".
    pub side: &'static str,
    /// The run's number (its VerifyS chose it; every frame of the run carries it).
    pub id: u64,
    pub total_bytes: u64,
    pub checked_bytes: u64,
    pub differing_blocks: u64,
    pub started: Instant,
}

impl VerifyProgress {
    pub fn new(side: &'static str, id: u64, total_bytes: u64) -> Self {
        VerifyProgress {
            side,
            id,
            total_bytes,
            checked_bytes: 0,
            differing_blocks: 0,
            started: Instant::now(),
        }
    }

    /// How far the run is, in percent of the volume (one decimal).
    pub fn percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return 100.0;
        }
        let p = self.checked_bytes as f64 * 100.0 / self.total_bytes as f64;
        (p * 10.0).round() / 10.0
    }

    pub(crate) fn count(&mut self, len: u32, differing: u64) {
        self.checked_bytes = (self.checked_bytes + u64::from(len)).min(self.total_bytes);
        self.differing_blocks += differing;
    }
}

/// The result of the last verify run this node drove (status `verify_last`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VerifyReport {
    /// "completed", or why the run stopped.
    pub outcome: String,
    pub checked_bytes: u64,
    pub out_of_sync_bytes: u64,
    /// Where the out-of-sync blocks were marked: "local", "peer", or "none" (no Primary).
    pub marked: &'static str,
    pub seconds: f64,
}

/// One digest per bitmap block of `data` (a partial last block is digested as it is).
pub fn block_digests(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        data.len().div_ceil(BITMAP_BLOCK_BYTES as usize) * REPL_VERIFY_DIGEST_BYTES,
    );
    for block in data.chunks(BITMAP_BLOCK_BYTES as usize) {
        out.extend_from_slice(&Sha256::digest(block)[..REPL_VERIFY_DIGEST_BYTES]);
    }
    out
}

/// The VerifyResult bits (one per block, LSB first) of two digest lists.
pub fn differing_bits(ours: &[u8], theirs: &[u8]) -> Vec<u8> {
    let blocks = ours.len() / REPL_VERIFY_DIGEST_BYTES;
    let mut bits = vec![0u8; blocks.div_ceil(8)];
    for (i, (a, b)) in ours
        .chunks(REPL_VERIFY_DIGEST_BYTES)
        .zip(theirs.chunks(REPL_VERIFY_DIGEST_BYTES))
        .enumerate()
    {
        if a != b {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    bits
}

/// The blocks (indices within the range) set in VerifyResult bits.
pub fn set_bits(bits: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bits.iter().enumerate().flat_map(|(byte, &b)| {
        (0..8)
            .filter(move |i| b & (1 << i) != 0)
            .map(move |i| (byte * 8 + i) as u64)
    })
}

/// Whether VerifyS provides the digests: it is the Primary, or no node is.
pub fn source_provides(local_primary: bool, peer_primary: bool) -> bool {
    local_primary || !peer_primary
}

/// Provide: read the range at this point of the write stream (see the module doc) and queue
/// its VerifyDigests.
pub(crate) async fn provide(
    rep: &Replicator,
    link: &Link,
    run: VerifyRun,
    id: u64,
    offset: u64,
    len: u32,
) -> Result<(), String> {
    let _excl = rep.resync_lock.write().await;
    // A Secondary provides only when no node is Primary: nothing new is written, but writes
    // it received before the demotion may still be landing. Read once they are on the disk.
    let deadline = Instant::now() + std::time::Duration::from_millis(REPL_PEER_TIMEOUT_MS);
    while rep.meta.superblock().role != meta::Role::Primary
        && !link.rx_idle.load(std::sync::atomic::Ordering::Acquire)
        && !link.is_closed()
    {
        if Instant::now() >= deadline {
            return Err(format!(
                "the writes received before the demotion did not land within {REPL_PEER_TIMEOUT_MS} ms"
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let digests = Bytes::from(read_digests(rep, offset, len).await?);
    link.push(&Frame::VerifyDigests {
        run,
        id,
        offset,
        len,
        digests,
    });
    Ok(())
}

/// Read a verify range named in the group's address space ([`VolumeId::group_offset`];
/// volume 0's offsets are plain) from the volume it names, and digest it: the provider's
/// read and the comparer's.
///
/// [`VolumeId::group_offset`]: crate::repl::core::VolumeId::group_offset
pub(crate) async fn read_digests(
    rep: &Replicator,
    offset: u64,
    len: u32,
) -> Result<Vec<u8>, String> {
    // The core checked the range against the volume it names; a missing volume here is a
    // resource that changed under the session.
    let (v, local, _) = rep
        .group_range(offset)
        .ok_or_else(|| format!("verify range {offset}+{len}: no such volume"))?;
    let buf = v
        .disk
        .read(local, len)
        .await
        .map_err(|e| format!("reading for verify: {e}"))?;
    Ok(block_digests(&buf))
}

/// A range a peer names in a verify frame: block-aligned, inside the volume, at most one
/// request long, whole blocks except at the end of the volume.
pub fn check_range(offset: u64, len: u32, size: u64) -> Result<(), String> {
    let end = offset.checked_add(u64::from(len));
    let ok = len > 0
        && len <= REPL_VERIFY_REQUEST_BYTES
        && offset.is_multiple_of(BITMAP_BLOCK_BYTES)
        && end.is_some_and(|e| e <= size)
        && (u64::from(len).is_multiple_of(BITMAP_BLOCK_BYTES) || end == Some(size));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "verify range {offset}+{len} is not whole {BITMAP_BLOCK_BYTES}-byte blocks of at most {REPL_VERIFY_REQUEST_BYTES} bytes inside the {size}-byte volume"
        ))
    }
}

/// [`check_range`] for a range named in the group's address space
/// ([`crate::repl::core::VolumeId::group_offset`]): inside the volume it names, `sizes` being
/// every volume's size by number (a one-volume resource's ranges are plain offsets).
pub fn check_group_range(offset: u64, len: u32, sizes: &[u64]) -> Result<(), String> {
    let (vol, local) = crate::repl::core::VolumeId::of_group_offset(offset);
    match sizes.get(usize::from(vol.0)) {
        Some(&size) => check_range(local, len, size),
        None => Err(format!(
            "verify range {offset}+{len} names volume {}, of a {}-volume resource",
            vol.0,
            sizes.len()
        )),
    }
}

/// The replication state while runs come and go: VerifyS while this node drives a run,
/// VerifyT while it serves the peer's, else Established. Other states (Ahead, Behind, a
/// resync) are left alone.
pub(crate) fn settle(st: &mut crate::repl::replicator::State) {
    if matches!(
        st.repl,
        ReplState::Established | ReplState::VerifyS | ReplState::VerifyT
    ) {
        st.repl = if st.verify.is_some() {
            ReplState::VerifyS
        } else if st.verify_peer.is_some() {
            ReplState::VerifyT
        } else {
            ReplState::Established
        };
    }
}

/// The provider for both runs of a session: answer the core's [`Action::VerifyProvide`]s
/// in order (one task per session, so answers of an ended run never overtake those of the
/// next, and this node's digests keep their place too). A read error of the peer's run
/// skips the answer (the peer's run stops when its wait for it times out); one of this
/// node's run goes back to the session (`failed`), which stops the run.
///
/// [`Action::VerifyProvide`]: crate::repl::core::Action::VerifyProvide
pub(crate) async fn answer(
    rep: Arc<Replicator>,
    link: Arc<Link>,
    mut rx: mpsc::Receiver<(VerifyRun, u64, u64, u32)>,
    failed: mpsc::Sender<(u64, u32, String)>,
) {
    while let Some((run, id, offset, len)) = rx.recv().await {
        if link.is_closed() {
            return;
        }
        match provide(&rep, &link, run, id, offset, len).await {
            Ok(()) => {}
            Err(_) if link.is_closed() => return,
            Err(e) if run == VerifyRun::Sender => {
                // Bounded: at most a window of this node's ranges is in flight.
                let _ = failed.try_send((offset, len, e));
            }
            Err(e) => {
                crate::warn_rl!(rep.rl, resource = %rep.name, "verify: not answering {offset}+{len}: {e}");
            }
        }
    }
}

/// This node's run ended ([`VerifyEnd`], from the core or the end of the session): log it,
/// publish it, and keep it as `verify_last`.
pub(crate) fn report(rep: &Replicator, end: VerifyEnd) {
    let outcome = match &end.stopped {
        None => "completed".to_string(),
        Some(why) => format!("interrupted: {why}"),
    };
    let oos_bytes = end.out_of_sync_blocks * BITMAP_BLOCK_BYTES;
    let started = rep.state().verify.as_ref().map(|p| p.started);
    let report = VerifyReport {
        outcome,
        checked_bytes: end.checked_bytes,
        out_of_sync_bytes: oos_bytes,
        marked: end.marked,
        seconds: started.map_or(0.0, |s| (s.elapsed().as_secs_f64() * 100.0).round() / 100.0),
    };
    if oos_bytes > 0 {
        crate::warn_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(), out_of_sync_bytes = oos_bytes,
            marked = end.marked, outcome = %report.outcome, "online verify found out-of-sync blocks: `drl disconnect` then `drl connect` resyncs them from the Primary");
    } else {
        crate::info_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(), checked_bytes = end.checked_bytes,
            outcome = %report.outcome, "online verify: no out-of-sync block");
    }
    rep.events.publish(
        crate::control::Event::new(
            crate::control::EventKind::Change,
            crate::control::ObjectKind::PeerDevice,
            &rep.name,
        )
        .field("verify", report.outcome.clone())
        .field("out_of_sync_bytes", oos_bytes),
    );
    rep.update(|st| {
        if st.verify.as_ref().is_some_and(|p| p.id == end.id) {
            st.verify = None;
        }
        st.verify_last = Some(report);
        settle(st);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_find_exactly_the_changed_blocks() {
        let a = vec![7u8; 16 * BITMAP_BLOCK_BYTES as usize + 100];
        let mut b = a.clone();
        b[3 * BITMAP_BLOCK_BYTES as usize + 5] ^= 1;
        b[16 * BITMAP_BLOCK_BYTES as usize + 99] ^= 1; // the partial last block
        let (da, db) = (block_digests(&a), block_digests(&b));
        assert_eq!(da.len(), 17 * REPL_VERIFY_DIGEST_BYTES);
        let bits = differing_bits(&da, &db);
        assert_eq!(bits.len(), 3);
        assert_eq!(set_bits(&bits).collect::<Vec<_>>(), vec![3, 16]);
        assert_eq!(set_bits(&differing_bits(&da, &da)).count(), 0);
    }

    #[test]
    fn the_primary_provides_and_with_no_primary_the_source_does() {
        assert!(source_provides(true, false));
        assert!(!source_provides(false, true));
        assert!(source_provides(false, false));
    }

    #[test]
    fn group_ranges_are_checked_against_the_volume_they_name() {
        use crate::repl::core::VolumeId;
        let sizes = [8 * BITMAP_BLOCK_BYTES, 2 * BITMAP_BLOCK_BYTES + 512];
        assert!(check_group_range(4 * BITMAP_BLOCK_BYTES, 4096, &sizes).is_ok());
        let v1 = |o| VolumeId(1).group_offset(o);
        assert!(check_group_range(v1(0), 2 * 4096 + 512, &sizes).is_ok());
        assert!(
            check_group_range(v1(4 * BITMAP_BLOCK_BYTES), 4096, &sizes).is_err(),
            "inside volume 0's size, past volume 1's"
        );
        assert!(
            check_group_range(VolumeId(2).group_offset(0), 4096, &sizes).is_err(),
            "no volume 2"
        );
        assert!(
            check_group_range(0, 4096, &sizes[..0]).is_err(),
            "no volume at all"
        );
    }

    #[test]
    fn peer_ranges_must_be_whole_blocks_inside_the_volume() {
        let size = 10 * BITMAP_BLOCK_BYTES + 512;
        assert!(check_range(0, 4096, size).is_ok());
        assert!(
            check_range(10 * BITMAP_BLOCK_BYTES, 512, size).is_ok(),
            "the tail"
        );
        assert!(check_range(0, 0, size).is_err());
        assert!(check_range(512, 4096, size).is_err(), "unaligned offset");
        assert!(check_range(0, 4000, size).is_err(), "partial block inside");
        assert!(
            check_range(8 * BITMAP_BLOCK_BYTES, 4 * 4096, size).is_err(),
            "past the end"
        );
        assert!(
            check_range(u64::MAX - 4095, 4096, size).is_err(),
            "overflow"
        );
        assert!(
            check_range(0, REPL_VERIFY_REQUEST_BYTES + 4096, 1 << 30).is_err(),
            "too long"
        );
    }
}
