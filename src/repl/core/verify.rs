//! Online verify in the core (DRBD's `verify`; the design, and why both reads see the same
//! point of the write stream, in [`crate::repl::verify`]). Everything that is protocol lives
//! here, so the tokio shell and the simulator drive the same code:
//!
//! - **This node's run** (VerifyS): the walk over every volume of the resource, one after the
//!   other, in [`REPL_VERIFY_REQUEST_BYTES`] ranges named in the group's address space
//!   ([`VolumeId::group_offset`]; a range never spans two volumes, and a one-volume
//!   resource's offsets are plain), at most [`REPL_VERIFY_WINDOW_REQUESTS`] in flight and
//!   `rate` bytes per second, who provides (the Primary, or VerifyS when no node is), the
//!   answers taken in request order, the stop (a role change, a resync, the shell's word) and
//!   the wait for what was asked before the VerifyDone, the report ([`VerifyEnd`]).
//! - **The peer's run** (VerifyT): its requests checked and handed to the shell to provide,
//!   its idle timeout.
//! - **The comparer's hold**: a VerifyDigests stops the intake ([`Core::wants_input`]) until
//!   every earlier received write is on the disk ([`Core::idle`]); then the core asks for the
//!   read ([`Action::VerifyRead`]) and compares when it completes ([`Core::on_verify_read`]),
//!   never awaiting anything inside a step.
//! - **Ranges the peer names** are checked against the volume they name; reads, compares and
//!   marks are that volume's.
//! - **Marking**: differing blocks go into the Primary's bitmap of their volume and are
//!   recorded as unsent in the tracker (in the group's address space, as it keeps writes) (no ack of a write that covers a block partly may clear them); as in DRBD,
//!   verify changes no data and the next `disconnect` / `connect` resyncs them.
//!
//! What stays in the shell: the reads (a provider reads under the exclusive resync lock and
//! queues its VerifyDigests behind exactly the writes its read saw, [`Action::VerifyProvide`]),
//! the status and the log lines ([`VerifyEvent`]).

use std::collections::VecDeque;

use bytes::Bytes;
use drbd_compat::Role;

use super::{Action, Core, Ctx, OpId, Payload, SessionEnd, VolumeId};
use crate::limits::{
    BITMAP_BLOCK_BYTES, REPL_PEER_TIMEOUT_MS, REPL_VERIFY_DIGEST_BYTES, REPL_VERIFY_PEER_IDLE_MS,
    REPL_VERIFY_REQUEST_BYTES, REPL_VERIFY_WINDOW_REQUESTS,
};
use crate::repl::frame::{Frame, VerifyRun};
use crate::repl::verify::{check_group_range, differing_bits, set_bits, source_provides};

/// How a run of this node ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyEnd {
    pub id: u64,
    /// `None`: completed; else why it stopped.
    pub stopped: Option<String>,
    pub checked_bytes: u64,
    pub out_of_sync_blocks: u64,
    /// Where the differing blocks were marked: "local", "peer", or "none" (no Primary).
    pub marked: &'static str,
}

/// What the shell shows and logs of online verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyEvent {
    /// A range of run `id` was checked: this node's run (`mine`) or the peer's.
    Checked {
        mine: bool,
        id: u64,
        len: u32,
        differing: u64,
    },
    /// Blocks of a range were marked out of sync here (this node is Primary).
    Marked { offset: u64, len: u32, blocks: u64 },
    /// The peer started run `id`: this node is its VerifyT.
    PeerStarted { id: u64 },
    /// The peer's run ended: its VerifyDone, or nothing heard for
    /// [`REPL_VERIFY_PEER_IDLE_MS`] (`idle`).
    PeerEnded { id: u64, idle: bool },
    /// This node's run ended (its VerifyDone is queued).
    Finished(VerifyEnd),
    /// The digests of an ended run of this node: ignored.
    Late { offset: u64 },
}

/// This node's run.
struct Walk {
    id: u64,
    /// Every volume's size, by number.
    sizes: Vec<u64>,
    rate: u64,
    started_ms: u64,
    provides: bool,
    /// (this node Primary, the peer Primary) when the run started.
    roles: (bool, bool),
    /// The volume walked now and the next offset in it.
    vol: usize,
    next: u64,
    /// Bytes asked for so far (the rate's measure).
    issued: u64,
    outstanding: VecDeque<(u64, u32)>,
    /// The start or the last answer: the wait for the next one counts from here.
    last_ms: u64,
    checked: u64,
    oos: u64,
    stop: Option<String>,
}

/// A VerifyDigests waiting until every earlier received write is on the disk.
struct Held {
    run: VerifyRun,
    id: u64,
    offset: u64,
    len: u32,
    theirs: Bytes,
}

/// The verify part of a connection's state.
pub(super) struct VerifyState {
    mine: Option<Walk>,
    /// The peer's run: its number and when its last frame came.
    peer: Option<(u64, u64)>,
    hold: Option<Held>,
    /// The compare read of the held digests is running.
    reading: Option<OpId>,
    peer_primary: bool,
    /// Both nodes speak online verify (the handshake's feature bit).
    negotiated: bool,
}

impl Default for VerifyState {
    fn default() -> Self {
        VerifyState {
            mine: None,
            peer: None,
            hold: None,
            reading: None,
            peer_primary: false,
            negotiated: true,
        }
    }
}

impl VerifyState {
    pub(super) fn holding(&self) -> bool {
        self.hold.is_some()
    }

    /// The peer's StateChange (whether it is Primary decides who provides).
    pub(super) fn peer_role(&mut self, role: Role) {
        self.peer_primary = role == Role::Primary;
    }
}

impl<B: Payload> Core<B> {
    /// Whether the peer negotiated online verify (its frames are a protocol error if not).
    pub fn set_verify_negotiated(&mut self, yes: bool) {
        self.verify.negotiated = yes;
    }

    /// The number of this node's running verify, if any.
    pub fn verify_running(&self) -> Option<u64> {
        self.verify.mine.as_ref().map(|w| w.id)
    }

    /// The number of the peer's run this node serves, if any.
    pub fn verify_peer_running(&self) -> Option<u64> {
        self.verify.peer.map(|(id, _)| id)
    }

    /// `drl verify`: start run `id` (a fresh number) of every volume at most `rate` bytes/s;
    /// `peer_primary` is the peer's role as this node knows it. Ignored while a run of this
    /// node goes on (the shell refuses that).
    pub fn verify_start(
        &mut self,
        ctx: &Ctx,
        id: u64,
        rate: u64,
        peer_primary: bool,
    ) -> Vec<Action<B>> {
        let mut out = Vec::new();
        if self.verify.mine.is_some() || self.ended {
            return out;
        }
        let local = ctx.role == Role::Primary;
        self.verify.peer_primary = peer_primary;
        self.verify.mine = Some(Walk {
            id,
            sizes: self.volumes.clone(),
            rate: rate.max(1),
            started_ms: ctx.now_ms,
            provides: source_provides(local, peer_primary),
            roles: (local, peer_primary),
            vol: 0,
            next: 0,
            issued: 0,
            outstanding: VecDeque::new(),
            last_ms: ctx.now_ms,
            checked: 0,
            oos: 0,
            stop: None,
        });
        self.verify_pump(ctx, &mut out);
        out
    }

    /// Stop this node's run (the shell saw replication leave VerifyS, e.g. pull-ahead): it
    /// still takes the answers to what it asked, then reports.
    pub fn verify_stop(&mut self, ctx: &Ctx, why: String) -> Vec<Action<B>> {
        let mut out = Vec::new();
        if let Some(w) = self.verify.mine.as_mut() {
            w.stop.get_or_insert(why);
        }
        self.verify_pump(ctx, &mut out);
        out
    }

    /// This node could not read a range it was to provide for its own run: the run stops
    /// (and reports why); the link and replication go on.
    pub fn verify_provide_failed(
        &mut self,
        ctx: &Ctx,
        offset: u64,
        len: u32,
        why: String,
    ) -> Vec<Action<B>> {
        let mut out = Vec::new();
        if let Some(w) = self.verify.mine.as_mut() {
            w.outstanding.retain(|&r| r != (offset, len));
            w.stop.get_or_insert(why);
        }
        self.verify_pump(ctx, &mut out);
        out
    }

    /// The compare read ([`Action::VerifyRead`]) completed with this node's digests of the
    /// held range.
    pub fn on_verify_read(
        &mut self,
        ctx: &Ctx,
        id: OpId,
        ours: Result<Vec<u8>, String>,
    ) -> Vec<Action<B>> {
        let mut out = Vec::new();
        if self.verify.reading != Some(id) {
            out.push(Action::Close(SessionEnd::Local(format!(
                "completion of verify read {id}, which was not issued"
            ))));
            return out;
        }
        self.verify.reading = None;
        let Some(h) = self.verify.hold.take() else {
            return out;
        };
        let ours = match ours {
            Ok(d) => d,
            Err(e) => {
                out.push(Action::Close(SessionEnd::Local(format!(
                    "reading for verify: {e}"
                ))));
                return out;
            }
        };
        if self.ended {
            return out;
        }
        let differ = Bytes::from(differing_bits(&ours, &h.theirs));
        let n = in_range(&differ, h.len).count() as u64;
        out.push(Action::Send(Frame::VerifyResult {
            run: h.run.seen_from_peer(),
            id: h.id,
            offset: h.offset,
            len: h.len,
            differ,
        }));
        let r = if h.run == VerifyRun::Receiver {
            self.verify_answer(ctx, h.id, h.offset, h.len, n, &mut out)
        } else {
            self.verify_peer_checked(h.id, h.len, n, &mut out);
            Ok(())
        };
        match r {
            Ok(()) => self.verify_release(&mut out),
            Err(e) => out.push(Action::Close(e)),
        }
        out
    }

    /// The session is over: this node's run ends with `why` (its report; no VerifyDone, the
    /// link is gone), the peer's silently.
    pub fn verify_abort(&mut self, why: &str) -> Option<VerifyEnd> {
        self.verify.peer = None;
        self.verify.hold = None;
        let w = self.verify.mine.take()?;
        Some(report(w, Some(why.to_string())))
    }

    /// Verify frames (see the module doc).
    pub(super) fn verify_frame(
        &mut self,
        ctx: &Ctx,
        f: Frame,
        out: &mut Vec<Action<B>>,
    ) -> Result<(), SessionEnd> {
        let proto = SessionEnd::Protocol;
        if !self.verify.negotiated {
            return Err(proto(format!(
                "{} frame, but online verify was not negotiated",
                f.frame_type().name()
            )));
        }
        let sizes = &self.volumes[..];
        match f {
            Frame::VerifyRequest {
                run,
                id,
                offset,
                len,
            } => {
                // Only the node driving a run asks, for its own run: this node provides.
                if run != VerifyRun::Sender {
                    return Err(proto(
                        "VerifyRequest for this node's own run: only the node driving a run asks"
                            .into(),
                    ));
                }
                check_group_range(offset, len, sizes).map_err(proto)?;
                self.verify_peer_frame(ctx, id, out);
                out.push(Action::VerifyProvide {
                    run: VerifyRun::Receiver,
                    id,
                    offset,
                    len,
                });
            }
            Frame::VerifyDigests {
                run,
                id,
                offset,
                len,
                digests,
            } => {
                check_group_range(offset, len, sizes).map_err(proto)?;
                let want =
                    u64::from(len).div_ceil(BITMAP_BLOCK_BYTES) as usize * REPL_VERIFY_DIGEST_BYTES;
                if digests.len() != want {
                    return Err(proto(format!(
                        "VerifyDigests of {offset}+{len} carries {} bytes, not {want}",
                        digests.len()
                    )));
                }
                match run {
                    VerifyRun::Sender => self.verify_peer_frame(ctx, id, out),
                    VerifyRun::Receiver => {
                        if self.verify_running() != Some(id) {
                            out.push(Action::Verify(VerifyEvent::Late { offset }));
                            return Ok(());
                        }
                    }
                }
                // Compared once every write received before it is on the disk; nothing later
                // is taken meanwhile.
                self.verify.hold = Some(Held {
                    run,
                    id,
                    offset,
                    len,
                    theirs: digests,
                });
            }
            Frame::VerifyResult {
                run,
                id,
                offset,
                len,
                differ,
            } => {
                check_group_range(offset, len, sizes).map_err(proto)?;
                // A difference is marked even if its run has ended: it is real.
                let n = self.verify_mark(ctx, offset, len, &differ, out)?;
                if run == VerifyRun::Receiver {
                    if self.verify_running() == Some(id) {
                        self.verify_answer(ctx, id, offset, len, n, out)?;
                    }
                } else {
                    self.verify_peer_frame(ctx, id, out);
                    self.verify_peer_checked(id, len, n, out);
                }
            }
            Frame::VerifyDone { id } => {
                if self.verify.peer.is_some_and(|(p, _)| p == id) {
                    self.verify.peer = None;
                    out.push(Action::Verify(VerifyEvent::PeerEnded { id, idle: false }));
                }
            }
            other => {
                return Err(proto(format!(
                    "{} is not a verify frame",
                    other.frame_type().name()
                )))
            }
        }
        Ok(())
    }

    /// A frame of the peer's run `id`: this node is (or becomes) its VerifyT.
    fn verify_peer_frame(&mut self, ctx: &Ctx, id: u64, out: &mut Vec<Action<B>>) {
        if self.verify.peer.is_none_or(|(p, _)| p != id) {
            out.push(Action::Verify(VerifyEvent::PeerStarted { id }));
        }
        self.verify.peer = Some((id, ctx.now_ms));
    }

    fn verify_peer_checked(&mut self, id: u64, len: u32, differing: u64, out: &mut Vec<Action<B>>) {
        if self.verify_peer_running() == Some(id) {
            out.push(Action::Verify(VerifyEvent::Checked {
                mine: false,
                id,
                len,
                differing,
            }));
        }
    }

    /// The answer to the oldest range of this node's run: in request order, or the peer
    /// breaks the protocol.
    fn verify_answer(
        &mut self,
        ctx: &Ctx,
        id: u64,
        offset: u64,
        len: u32,
        differing: u64,
        out: &mut Vec<Action<B>>,
    ) -> Result<(), SessionEnd> {
        let Some(w) = self.verify.mine.as_mut() else {
            return Ok(());
        };
        match w.outstanding.front() {
            Some(&r) if r == (offset, len) => {}
            Some(&(o, l)) => {
                return Err(SessionEnd::Protocol(format!(
                    "verify result for {offset}+{len}, expected {o}+{l}"
                )))
            }
            None => {
                return Err(SessionEnd::Protocol(format!(
                    "verify result for {offset}+{len}, but nothing was asked"
                )))
            }
        }
        w.outstanding.pop_front();
        w.checked += u64::from(len);
        w.oos += differing;
        w.last_ms = ctx.now_ms;
        out.push(Action::Verify(VerifyEvent::Checked {
            mine: true,
            id,
            len,
            differing,
        }));
        self.verify_pump(ctx, out);
        Ok(())
    }

    /// Mark the differing blocks of a range (checked: inside the volume it names) out of sync
    /// if this node is Primary; returns how many blocks of the range differ (bits past the
    /// range are not the peer's to set).
    fn verify_mark(
        &mut self,
        ctx: &Ctx,
        offset: u64,
        len: u32,
        differ: &[u8],
        out: &mut Vec<Action<B>>,
    ) -> Result<u64, SessionEnd> {
        let blocks: Vec<u64> = in_range(differ, len).collect();
        if blocks.is_empty() || ctx.role != Role::Primary {
            return Ok(blocks.len() as u64);
        }
        let (vol, local) = VolumeId::of_group_offset(offset);
        let bitmap = ctx.bitmap_in(vol, self.volumes.len())?;
        // The tracker keeps the group's address space, the bitmap is the volume's own.
        {
            let mut t = ctx.tracker();
            let first = offset / BITMAP_BLOCK_BYTES;
            for &b in &blocks {
                t.mark_unsent_write((first + b) * BITMAP_BLOCK_BYTES, BITMAP_BLOCK_BYTES);
            }
        }
        let first = local / BITMAP_BLOCK_BYTES;
        for &b in &blocks {
            bitmap.set_blocks(first + b, 1);
        }
        out.push(Action::Verify(VerifyEvent::Marked {
            offset,
            len,
            blocks: blocks.len() as u64,
        }));
        Ok(blocks.len() as u64)
    }

    /// Issue what the window and the rate allow; end the run once it is over.
    pub(super) fn verify_pump(&mut self, ctx: &Ctx, out: &mut Vec<Action<B>>) {
        let resync = self.sync.is_some();
        let now_roles = (ctx.role == Role::Primary, self.verify.peer_primary);
        let Some(w) = self.verify.mine.as_mut() else {
            return;
        };
        while w.stop.is_none() && w.outstanding.len() < REPL_VERIFY_WINDOW_REQUESTS {
            // Volume after volume (an empty one has nothing to walk).
            while w.sizes.get(w.vol).is_some_and(|&s| w.next >= s) {
                w.vol += 1;
                w.next = 0;
            }
            let Some(&size) = w.sizes.get(w.vol) else {
                break;
            };
            // Who provides was decided on the roles: a promotion or demotion during the run
            // would make the reads of the two sides race with the writes. A resync ends the
            // run too (its writes are not in the stream's order).
            if now_roles != w.roles {
                w.stop = Some("a node changed its role".into());
                break;
            }
            if resync {
                w.stop = Some("a resync started".into());
                break;
            }
            // At most `rate` bytes per second since the start.
            let elapsed_ms = ctx.now_ms.saturating_sub(w.started_ms);
            if u128::from(w.issued) * 1000 > u128::from(w.rate) * u128::from(elapsed_ms) {
                break;
            }
            let len = (size - w.next).min(u64::from(REPL_VERIFY_REQUEST_BYTES)) as u32;
            let offset = VolumeId(w.vol as u16).group_offset(w.next);
            w.next += u64::from(len);
            w.issued += u64::from(len);
            if w.outstanding.is_empty() {
                w.last_ms = ctx.now_ms;
            }
            w.outstanding.push_back((offset, len));
            let (run, id) = (VerifyRun::Sender, w.id);
            out.push(if w.provides {
                Action::VerifyProvide {
                    run,
                    id,
                    offset,
                    len,
                }
            } else {
                Action::Send(Frame::VerifyRequest {
                    run,
                    id,
                    offset,
                    len,
                })
            });
        }
        let over = w.outstanding.is_empty() && (w.stop.is_some() || w.vol >= w.sizes.len());
        if over {
            if let Some(w) = self.verify.mine.take() {
                out.push(Action::Send(Frame::VerifyDone { id: w.id }));
                out.push(Action::Verify(VerifyEvent::Finished(report(w, None))));
            }
        }
    }

    /// The tick: the peer's run ends after [`REPL_VERIFY_PEER_IDLE_MS`] of silence; this
    /// node's waits for an answer as long (a stopping run only a peer timeout), and issues
    /// what the rate allows by now.
    pub(super) fn verify_tick(&mut self, ctx: &Ctx, out: &mut Vec<Action<B>>) {
        if let Some((id, last)) = self.verify.peer {
            if ctx.now_ms.saturating_sub(last) > REPL_VERIFY_PEER_IDLE_MS {
                self.verify.peer = None;
                out.push(Action::Verify(VerifyEvent::PeerEnded { id, idle: true }));
            }
        }
        if let Some(w) = self.verify.mine.as_mut() {
            if let Some(&(offset, len)) = w.outstanding.front() {
                let patience = if w.stop.is_some() {
                    REPL_PEER_TIMEOUT_MS
                } else {
                    REPL_VERIFY_PEER_IDLE_MS
                };
                if ctx.now_ms.saturating_sub(w.last_ms) > patience {
                    let why = w.stop.clone().unwrap_or_else(|| {
                        format!("no answer for {offset}+{len} within {patience} ms")
                    });
                    w.outstanding.clear();
                    w.stop = Some(why);
                }
            }
        }
        self.verify_pump(ctx, out);
    }

    /// Once every earlier received write is on the disk, read the held range.
    pub(super) fn verify_release(&mut self, out: &mut Vec<Action<B>>) {
        if self.ended || self.verify.reading.is_some() || !self.idle() {
            return;
        }
        let Some(h) = self.verify.hold.as_ref() else {
            return;
        };
        let id = self.next_op;
        self.next_op += 1;
        self.verify.reading = Some(id);
        out.push(Action::VerifyRead {
            id,
            offset: h.offset,
            len: h.len,
        });
    }
}

/// The set bits of VerifyResult `differ` that name blocks of a range of `len` bytes.
fn in_range(differ: &[u8], len: u32) -> impl Iterator<Item = u64> + '_ {
    let blocks = u64::from(len).div_ceil(BITMAP_BLOCK_BYTES);
    set_bits(differ).filter(move |&b| b < blocks)
}

fn report(w: Walk, stopped: Option<String>) -> VerifyEnd {
    let marked = match w.roles {
        _ if w.oos == 0 => "none",
        (true, _) => "local",
        (_, true) => "peer",
        _ => "none",
    };
    VerifyEnd {
        id: w.id,
        stopped: stopped.or(w.stop),
        checked_bytes: w.checked,
        out_of_sync_blocks: w.oos,
        marked,
    }
}
