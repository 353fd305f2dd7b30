//! Online verify (DRBD's `drbdadm verify`): compare the two nodes' data block by block while
//! the volume stays in use; only digests cross the link.
//!
//! The node where the admin runs `drl verify` is VerifyS, its peer VerifyT. VerifyS walks the
//! volume in [`REPL_VERIFY_REQUEST_BYTES`] ranges, [`REPL_VERIFY_WINDOW_REQUESTS`] at a time.
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
//! follows. A VerifyT that hears nothing for [`REPL_VERIFY_PEER_IDLE_MS`] ends by itself. A run
//! reads at most `rate` bytes per second on each node
//! ([`crate::limits::REPL_VERIFY_RATE_DEFAULT`]): each
//! range briefly holds the Primary's writes.
//!
//! As in DRBD, verify changes no data. Differing blocks are marked out of sync in the
//! Primary's bitmap (whichever node runs verify), and the next `disconnect` / `connect`
//! resyncs them from the Primary. With no Primary no side is known good: the result is
//! reported and nothing is marked.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use drbd_compat::{ReplState, Role};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::limits::{
    BITMAP_BLOCK_BYTES, REPL_PEER_TIMEOUT_MS, REPL_VERIFY_DIGEST_BYTES, REPL_VERIFY_PEER_IDLE_MS,
    REPL_VERIFY_REQUEST_BYTES, REPL_VERIFY_WINDOW_REQUESTS,
};
use crate::repl::frame::{Frame, VerifyRun};
use crate::repl::link::Link;
use crate::repl::replicator::Replicator;
use crate::repl::wire::split_range;
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
    /// The last frame of this run (a VerifyT ends after [`REPL_VERIFY_PEER_IDLE_MS`] without).
    pub last_frame: Instant,
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
            last_frame: Instant::now(),
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
        self.last_frame = Instant::now();
    }

    /// Without a frame for [`REPL_VERIFY_PEER_IDLE_MS`].
    pub fn is_idle(&self) -> bool {
        self.last_frame.elapsed() > std::time::Duration::from_millis(REPL_VERIFY_PEER_IDLE_MS)
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
    let buf = read(rep, offset, len).await?;
    let digests = Bytes::from(block_digests(&buf));
    link.push(&Frame::VerifyDigests {
        run,
        id,
        offset,
        len,
        digests,
    });
    Ok(())
}

/// Compare: read the range here and return the VerifyResult bits against `theirs`. The
/// session calls it once every write received before the VerifyDigests is on the disk.
pub(crate) async fn compare(
    rep: &Replicator,
    offset: u64,
    len: u32,
    theirs: &[u8],
) -> Result<Vec<u8>, String> {
    let buf = read(rep, offset, len).await?;
    Ok(differing_bits(&block_digests(&buf), theirs))
}

/// Read a verify range named in the group's address space (volume 0's offsets are plain).
async fn read(
    rep: &Replicator,
    offset: u64,
    len: u32,
) -> Result<crate::volume::AlignedBuf, String> {
    let (v, local, _) = rep
        .group_range(offset)
        .ok_or_else(|| format!("verify range {offset}+{len}: no such volume"))?;
    v.disk
        .read(local, len)
        .await
        .map_err(|e| format!("reading for verify: {e}"))
}

/// [`check_range`] for a range in the group's address space: inside the volume it names.
pub(crate) fn check_group_range(rep: &Replicator, offset: u64, len: u32) -> Result<(), String> {
    match rep.group_range(offset) {
        Some((_, local, size)) => check_range(local, len, size),
        None => Err(format!("verify range {offset}+{len}: no such volume")),
    }
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

/// Mark the blocks set in `differ` (of the range at `offset`) out of sync, if this node is
/// Primary; no ack of this session may clear them (a later write that covers a block only
/// partly would otherwise clear its bit), only a resync. Returns how many blocks differ.
pub(crate) fn mark(rep: &Replicator, link: &Link, offset: u64, len: u32, differ: &[u8]) -> u64 {
    let blocks: Vec<u64> = set_bits(differ).collect();
    if blocks.is_empty() || rep.meta.superblock().role != meta::Role::Primary {
        return blocks.len() as u64;
    }
    // The tracker keeps the group's address space, the bitmap is the volume's own.
    let first = offset / BITMAP_BLOCK_BYTES;
    {
        let mut t = link.tracker();
        for &b in &blocks {
            t.mark_unsent_write((first + b) * BITMAP_BLOCK_BYTES, BITMAP_BLOCK_BYTES);
        }
    }
    if let Some((v, local, _)) = rep.group_range(offset) {
        for &b in &blocks {
            v.bitmap.set_blocks(local / BITMAP_BLOCK_BYTES + b, 1);
        }
    }
    crate::warn_rl!(rep.rl, resource = %rep.name, peer = %rep.peer_node(), offset, len,
        blocks = blocks.len(), "online verify: blocks differ from the peer; marked out of sync");
    blocks.len() as u64
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

/// VerifyT as provider: answer VerifyRequests in order. One task per session, for every
/// run of the peer: answers of an ended run can never overtake those of the next. A read
/// error ends the session; a provider that cannot read yet (see [`provide`]) skips the
/// answer, and the peer's run stops when its wait for it times out.
pub(crate) async fn answer_requests(
    rep: Arc<Replicator>,
    link: Arc<Link>,
    mut rx: mpsc::Receiver<(u64, u64, u32)>,
) {
    while let Some((id, offset, len)) = rx.recv().await {
        if link.is_closed() {
            return;
        }
        match provide(&rep, &link, VerifyRun::Receiver, id, offset, len).await {
            Ok(()) => rep.update(|st| {
                // Answering counts as activity of the peer's run (its idle clock).
                if let Some(p) = st.verify_peer.as_mut().filter(|p| p.id == id) {
                    p.last_frame = Instant::now();
                }
            }),
            Err(_) if link.is_closed() => return,
            Err(e) => {
                crate::warn_rl!(rep.rl, resource = %rep.name, "verify: not answering {offset}+{len}: {e}");
            }
        }
    }
}

/// VerifyS: drive one run over `link` to its end and report. `results` brings each range's
/// VerifyResult bits, in order: the peer's (this node provides) or this node's own (it
/// compares; the session forwards them).
pub(crate) async fn run_source(
    rep: Arc<Replicator>,
    link: Arc<Link>,
    id: u64,
    mut results: mpsc::Receiver<(u64, u32, Bytes)>,
    rate: u64,
) {
    let started = Instant::now();
    let roles = roles(&rep);
    let provides = source_provides(roles.0, roles.1);
    let walked = walk(&rep, &link, id, &mut results, provides, roles, rate).await;
    let (outcome, checked, oos_blocks) = match walked {
        Ok((checked, n)) => ("completed".to_string(), checked, n),
        Err((why, checked, n)) => (format!("interrupted: {why}"), checked, n),
    };
    let marked = match roles {
        _ if oos_blocks == 0 => "none",
        (true, _) => "local",
        (_, true) => "peer",
        _ => "none",
    };
    let oos_bytes = oos_blocks * BITMAP_BLOCK_BYTES;
    let report = VerifyReport {
        outcome,
        checked_bytes: checked,
        out_of_sync_bytes: oos_bytes,
        marked,
        seconds: (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    };
    link.push(&Frame::VerifyDone { id });
    if oos_bytes > 0 {
        crate::warn_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(), out_of_sync_bytes = oos_bytes,
            marked, outcome = %report.outcome, "online verify found out-of-sync blocks: `drl disconnect` then `drl connect` resyncs them from the Primary");
    } else {
        crate::info_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(), checked_bytes = checked,
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
        st.verify = None;
        st.verify_tx = None;
        st.verify_last = Some(report);
        settle(st);
    });
}

/// (this node is Primary, the peer is Primary).
fn roles(rep: &Replicator) -> (bool, bool) {
    (
        rep.meta.superblock().role == meta::Role::Primary,
        rep.state().peer_role == Some(Role::Primary),
    )
}

type Walked = Result<(u64, u64), (String, u64, u64)>;

/// Ok: bytes checked and blocks out of sync; Err: why it stopped, and the counts so far.
async fn walk(
    rep: &Arc<Replicator>,
    link: &Arc<Link>,
    id: u64,
    results: &mut mpsc::Receiver<(u64, u32, Bytes)>,
    provides: bool,
    roles_at_start: (bool, bool),
    rate: u64,
) -> Walked {
    let started = Instant::now();
    // Volume after volume, in the group's address space (a range never spans two volumes).
    let mut ranges = rep
        .volume_sizes()
        .into_iter()
        .enumerate()
        .flat_map(|(v, size)| {
            let vol = crate::repl::core::VolumeId(v as u16);
            split_range(0, size, REPL_VERIFY_REQUEST_BYTES)
                .map(move |(o, l)| (vol.group_offset(o), l))
        });
    let (mut issued, mut checked, mut oos) = (0u64, 0u64, 0u64);
    let mut outstanding: VecDeque<(u64, u32)> = VecDeque::new();
    let mut stop: Option<String> = None;
    loop {
        while stop.is_none() && outstanding.len() < REPL_VERIFY_WINDOW_REQUESTS {
            let Some((offset, len)) = ranges.next() else {
                break;
            };
            // Who provides was decided on the roles: a promotion or demotion during the run
            // would make the reads of the two sides race with the writes. Pull-ahead or a
            // resync ends the run too (writes are then not shipped in order).
            if roles(rep) != roles_at_start {
                stop = Some("a node changed its role".into());
                break;
            }
            let repl = rep.state().repl;
            if repl != ReplState::VerifyS {
                stop = Some(format!("replication went {repl}"));
                break;
            }
            // At most `rate` bytes per second.
            let due = started + std::time::Duration::from_secs_f64(issued as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
            let sent = if provides {
                provide(rep, link, VerifyRun::Sender, id, offset, len)
                    .await
                    .map(|_| !link.is_closed())
            } else {
                Ok(link.push(&Frame::VerifyRequest {
                    run: VerifyRun::Sender,
                    id,
                    offset,
                    len,
                }))
            };
            match sent {
                Ok(true) => outstanding.push_back((offset, len)),
                Ok(false) => return Err((gone(link), checked, oos)),
                Err(e) => {
                    // This node could not read: the run stops (and reports why); the link
                    // and replication go on.
                    stop = Some(e);
                    break;
                }
            }
            issued += u64::from(len);
        }
        let Some((offset, len)) = outstanding.pop_front() else {
            return match stop {
                None => Ok((checked, oos)),
                Some(why) => Err((why, checked, oos)),
            };
        };
        // Registered before the check: a close between the two is not missed. A run that
        // stops still takes the answers to what it asked (bounded), so its VerifyDone is the
        // last frame of the run the peer sees.
        let closed = link.closed_notify.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        if link.is_closed() {
            return Err((gone(link), checked, oos));
        }
        // Answers can queue behind writes on a thin link: a running run waits as long as a
        // VerifyT waits for it; a stopping one only a peer timeout.
        let patience = if stop.is_some() {
            REPL_PEER_TIMEOUT_MS
        } else {
            REPL_VERIFY_PEER_IDLE_MS
        };
        let wait = tokio::time::sleep(std::time::Duration::from_millis(patience));
        let (r_off, r_len, bits) = tokio::select! {
            r = results.recv() => match r {
                Some(r) => r,
                None => return Err((gone(link), checked, oos)),
            },
            _ = closed => return Err((gone(link), checked, oos)),
            _ = wait => {
                let why = stop.unwrap_or_else(|| format!("no answer for {offset}+{len} within {patience} ms"));
                return Err((why, checked, oos));
            }
        };
        if (r_off, r_len) != (offset, len) {
            let why = format!("verify result for {r_off}+{r_len}, expected {offset}+{len}");
            link.close(format!("protocol error: {why}"));
            return Err((why, checked, oos));
        }
        checked += u64::from(len);
        oos += set_bits(&bits).count() as u64;
    }
}

fn gone(link: &Link) -> String {
    link.reason()
        .unwrap_or_else(|| "the connection closed".into())
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
