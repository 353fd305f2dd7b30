//! The sync decision acted on, the bitmap exchange and the resync, in the core (see
//! [`crate::repl::resync`] for the rules: the target drives, bits are cleared on the source
//! when read and on the target when written).
//!
//! A consistency group resyncs all of its volumes in the one session: the bitmap exchange
//! carries every volume's bitmap in one transfer (volume after volume, each from a byte
//! boundary: [`group_bitmap_bits`]), and requests and answers name offsets in the group's
//! address space, so each volume's dirty bits are resynced into that volume. A one-volume
//! resource's transfer and offsets are exactly as before.

use super::*;

/// Bits of a group's bitmap transfer: each volume's bitmap starts on a byte boundary, the
/// last one ends at its last block (one volume: its blocks, as before groups).
pub(super) fn group_bitmap_bits(bitmaps: &[&DirtyBitmap]) -> u64 {
    let (last, rest) = match bitmaps.split_last() {
        Some(x) => x,
        None => return 0,
    };
    rest.iter().map(|b| b.blocks().div_ceil(8) * 8).sum::<u64>() + last.blocks()
}

/// The group's bitmaps as one transfer ([`group_bitmap_bits`] bits).
fn group_bitmap_bytes(bitmaps: &[&DirtyBitmap]) -> Vec<u8> {
    bitmaps.iter().flat_map(|b| bitmap_bytes(b)).collect()
}

/// OR the peer's group transfer into each volume's bitmap.
fn group_or_into(bitmaps: &[&DirtyBitmap], bits: &[u8]) {
    let mut at = 0usize;
    for b in bitmaps {
        let n = b.blocks().div_ceil(8) as usize;
        or_into(b, bits.get(at..).unwrap_or(&[]));
        at += n;
    }
}

fn dirty_bytes(bitmaps: &[&DirtyBitmap]) -> u64 {
    bitmaps.iter().map(|b| b.dirty_bytes()).sum()
}

/// Why the admin must decide (shown in `status` as `split_brain`).
const SPLIT_BRAIN_TEXT: &str =
    "split brain: both nodes changed the data since they parted; nothing was overwritten. \
     Decide which node's changes to discard and run `drl connect RES --discard-my-data` on it \
     (as Secondary), then `drl connect RES` on the other";
const UNRELATED_TEXT: &str =
    "unrelated data: the two volumes share no generation; nothing was overwritten. \
     Run `drl connect RES --discard-my-data` on the node whose data should be replaced";
const PRIMARY_AS_TARGET: &str =
    "this Primary would have to become SyncTarget: demote it (drl secondary) first";

impl<B: Payload> Core<B> {
    /// Act on the handshake's sync decision (taken on the Hellos both sides sent).
    pub fn start(&mut self, ctx: &Ctx, d: SyncDecision) -> Vec<Action<B>> {
        let mut out = Vec::new();
        match d {
            SyncDecision::SplitBrain | SyncDecision::Unrelated => {
                let (text, end) = if d == SyncDecision::SplitBrain {
                    (SPLIT_BRAIN_TEXT, SessionEnd::SplitBrain)
                } else {
                    (UNRELATED_TEXT, SessionEnd::Unrelated)
                };
                out.push(Action::Send(Frame::Disconnect {
                    reason: "split brain detected".into(),
                }));
                out.push(Action::State(StateChange::SplitBrain { text }));
                out.push(Action::Close(end));
                return out;
            }
            SyncDecision::NoSync => {
                out.push(Action::Meta(MetaChange::ConnectedInSync {
                    peer_current: self.peer_current,
                }));
                out.push(Action::State(StateChange::Repl(ReplState::Established)));
                return out;
            }
            _ => {}
        }
        let is_source = matches!(
            d,
            SyncDecision::BitmapSyncSource | SyncDecision::FullSyncSource
        );
        if !is_source && ctx.role == Role::Primary {
            out.push(Action::Send(Frame::Disconnect {
                reason: PRIMARY_AS_TARGET.into(),
            }));
            out.push(Action::State(StateChange::StandAlone));
            out.push(Action::Close(SessionEnd::Refused(PRIMARY_AS_TARGET)));
            return out;
        }
        if matches!(
            d,
            SyncDecision::FullSyncSource | SyncDecision::FullSyncTarget
        ) {
            match ctx.bitmaps(self.volumes.len()) {
                Ok(bms) => bms.iter().for_each(|b| b.set_all()),
                Err(e) => {
                    out.push(Action::Close(e));
                    return out;
                }
            }
        }
        self.sync = Some(if is_source {
            SyncRole::Source
        } else {
            SyncRole::Target
        });
        out.push(Action::State(StateChange::Repl(if is_source {
            ReplState::WFBitMapS
        } else {
            ReplState::WFBitMapT
        })));
        if !is_source {
            out.push(Action::Meta(MetaChange::Inconsistent));
        }
        if let Err(e) = self.send_bitmap(ctx, &mut out) {
            out.push(Action::Close(e));
        }
        out
    }

    /// Pull-ahead: the send buffer drained, so resync what was only marked (this node becomes
    /// SyncSource; the shell holds the resync lock and forgets the unsent writes after this).
    pub fn leave_ahead(&mut self, ctx: &Ctx) -> Vec<Action<B>> {
        let mut out = Vec::new();
        self.sync = Some(SyncRole::Source);
        let total_bytes = match ctx.bitmaps(self.volumes.len()) {
            Ok(bms) => dirty_bytes(&bms),
            Err(e) => {
                out.push(Action::Close(e));
                return out;
            }
        };
        out.push(Action::State(StateChange::ResyncStarted {
            repl: ReplState::SyncSource,
            total_bytes,
        }));
        out.push(Action::Info(
            "send buffer drained: leaving Ahead, resyncing the marked blocks",
        ));
        if let Err(e) = self.send_bitmap(ctx, &mut out) {
            out.push(Action::Close(e));
        }
        out
    }

    fn send_bitmap(&mut self, ctx: &Ctx, out: &mut Vec<Action<B>>) -> Result<(), SessionEnd> {
        let bms = ctx.bitmaps(self.volumes.len())?;
        let frames = bitmap_chunks(&group_bitmap_bytes(&bms), group_bitmap_bits(&bms))
            .map_err(|e| SessionEnd::Local(e.to_string()))?;
        out.extend(frames.into_iter().map(Action::Send));
        Ok(())
    }

    /// The peer's whole bitmap arrived (ORed into ours: the union is resynced).
    pub(super) fn bitmap_received(
        &mut self,
        ctx: &Ctx,
        bits: &[u8],
        out: &mut Vec<Action<B>>,
    ) -> Result<(), SessionEnd> {
        let bms = ctx.bitmaps(self.volumes.len())?;
        group_or_into(&bms, bits);
        if self.sync == Some(SyncRole::Source) {
            out.push(Action::State(StateChange::ResyncStarted {
                repl: ReplState::SyncSource,
                total_bytes: dirty_bytes(&bms),
            }));
            return Ok(());
        }
        if self.sync.is_none() {
            // The peer left Ahead and resyncs what it only marked.
            self.sync = Some(SyncRole::Target);
            out.push(Action::Meta(MetaChange::Inconsistent));
        }
        // The union is on disk (every volume's) before the first request: a crash now
        // resyncs it again.
        self.disk_all(Pending::TargetStart, || DiskOp::PersistBitmap, out);
        Ok(())
    }

    pub(super) fn target_start(
        &mut self,
        ctx: &Ctx,
        out: &mut Vec<Action<B>>,
    ) -> Result<(), SessionEnd> {
        let bms = ctx.bitmaps(self.volumes.len())?;
        // Each volume's dirty runs, in the group's address space (a run never spans two).
        let runs = bms.iter().enumerate().flat_map(|(v, b)| {
            b.dirty_runs()
                .map(move |(o, l)| (VolumeId(v as u16).group_offset(o), l))
        });
        let t = Target::from_runs(runs.collect(), self.peer_current);
        out.push(Action::State(StateChange::ResyncStarted {
            repl: ReplState::SyncTarget,
            total_bytes: dirty_bytes(&bms),
        }));
        self.target = Some(t);
        let mut frames = Vec::new();
        if let Some(t) = self.target.as_mut() {
            t.fill(&mut frames);
        }
        out.extend(frames.into_iter().map(Action::Send));
        self.target_progress(ctx, out);
        Ok(())
    }

    pub(super) fn target_answer(&mut self, offset: u64, len: u64) -> Result<(), SessionEnd> {
        let t = self.target.as_mut().ok_or_else(|| {
            SessionEnd::Protocol("resync data, but this node is not SyncTarget".into())
        })?;
        t.on_answer(offset, len)
            .map_err(|e| SessionEnd::Protocol(e.to_string()))
    }

    /// Write a resync answer (`offset` in the group's address space) to its volume; the
    /// receiver holds back application writes that overlap it until it is on the disk.
    pub(super) fn resync_write(
        &mut self,
        offset: u64,
        len: u64,
        zeroes: bool,
        write: Write<B>,
        out: &mut Vec<Action<B>>,
    ) {
        self.resync_id += 1;
        let rid = self.resync_id;
        self.rx.resync_writing(rid, offset, len);
        let (vol, local) = VolumeId::of_group_offset(offset);
        self.disk_on(
            vol,
            Pending::Resync {
                rid,
                offset,
                len,
                zeroes,
            },
            DiskOp::Write {
                offset: local,
                write,
            },
            out,
        );
    }

    /// A resync answer is on the disk: its bits are in sync now.
    pub(super) fn resynced(
        &mut self,
        ctx: &Ctx,
        rid: u64,
        offset: u64,
        len: u64,
        zeroes: bool,
        out: &mut Vec<Action<B>>,
    ) -> Result<(), SessionEnd> {
        let actions = self
            .rx
            .resync_written(rid)
            .map_err(|e| SessionEnd::Protocol(e.to_string()))?;
        self.rx_actions(actions, out);
        let (vol, local) = VolumeId::of_group_offset(offset);
        // The answer was checked against the outstanding request, which named an existing
        // volume.
        if let Some(b) = ctx.bitmap_of(vol) {
            b.clear_range(local, len);
        }
        out.push(Action::Count(Counter::ResyncReceivedBytes(len)));
        if zeroes {
            out.push(Action::Count(Counter::ResyncZeroBytes(len)));
        }
        if let Some(t) = self.target.as_mut() {
            t.on_written();
        }
        Ok(())
    }

    /// Request more; once everything is written: flush, persist the bitmap, then
    /// [`Self::resync_finished`].
    pub(super) fn target_progress(&mut self, ctx: &Ctx, out: &mut Vec<Action<B>>) {
        let Some(t) = self.target.as_mut() else {
            return;
        };
        // `drl pause-sync` on this SyncTarget: ask for nothing more until `resume-sync`.
        if !ctx.resync_paused {
            let mut frames = Vec::new();
            t.fill(&mut frames);
            out.extend(frames.into_iter().map(Action::Send));
        }
        if !t.is_finished() {
            return;
        }
        let source_current = t.source_current;
        self.target = None;
        self.disk_all(
            Pending::ResyncFlush { source_current },
            || DiskOp::Flush,
            out,
        );
    }

    /// Every answer is durable: adopt the source's generation, become UpToDate, tell it.
    pub(super) fn resync_finished(&mut self, source_current: u64, out: &mut Vec<Action<B>>) {
        self.sync = None;
        self.adding = None;
        out.push(Action::Meta(MetaChange::ResyncFinishedTarget {
            source_current,
        }));
        out.push(Action::Send(Frame::ResyncDone));
        out.push(Action::State(StateChange::ResyncEnded {
            peer_up_to_date: false,
        }));
        out.push(Action::Info("resync finished (SyncTarget): UpToDate"));
    }

    /// The target says the resync is done (this node is SyncSource).
    pub(super) fn source_done(&mut self, out: &mut Vec<Action<B>>) -> Result<(), SessionEnd> {
        if self.sync != Some(SyncRole::Source) {
            return Err(SessionEnd::Protocol(
                "ResyncDone, but this node is not SyncSource".into(),
            ));
        }
        self.sync = None;
        self.adding = None;
        out.push(Action::StopServing);
        // The resync cleared the bits in memory; put the clean bitmap on disk now (as the
        // SyncTarget does), not at the next periodic persist: a crash before it would resync
        // everything again on restart.
        out.push(Action::PersistBitmapDetached);
        out.push(Action::Meta(MetaChange::ResyncFinishedSource));
        out.push(Action::State(StateChange::ResyncEnded {
            peer_up_to_date: true,
        }));
        out.push(Action::Info("resync finished (SyncSource)"));
        Ok(())
    }
}
