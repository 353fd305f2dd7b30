//! Protocol-A epochs, sender side: sequence numbers, epochs, barrier acks, dirty bits, lag.
//!
//! DRBD protocol A: a write completes for the application once it is on the local disk and
//! queued for the peer. The peer's only durability statement is the barrier ack: "every write
//! of epoch N (and before) is on stable storage". So the sender:
//!
//! - gives every write a sequence number and puts it in the open epoch;
//! - closes the epoch (sends `Barrier{N}` after its last write) on a flush, a FUA write, or
//!   when the epoch reaches [`REPL_EPOCH_WRITES_MAX`] writes or [`REPL_EPOCH_BYTES_MAX`] bytes;
//! - keeps every write until its epoch is acked, bounded by a buffer size
//!   ([`REPL_SEND_BUFFER_BYTES_MAX`], [`REPL_INFLIGHT_WRITES_MAX`]): [`EpochTracker::try_enqueue`]
//!   answers [`Full`] and the caller applies the congestion policy (block, pull-ahead,
//!   disconnect). A refused write was not sent: its blocks are remembered as *unsent* and no
//!   ack clears them until the session ends (or a resync calls
//!   [`EpochTracker::clear_unsent`]). With the `block` policy, wait for room with
//!   [`EpochTracker::has_room`] before calling `try_enqueue`;
//! - on `BarrierAck{N}` releases epochs up to N and reports which dirty-bitmap blocks may now
//!   be cleared ([`Released::clearable`]).
//!
//! Which bits may be cleared: the blocks *fully* covered by a released write (a partly
//! written block may hold other out-of-sync data; DRBD's `drbd_set_in_sync` rounds inward the
//! same way), minus every block touched by a write that is still unacked (a later write to the
//! same block is not on the peer yet). On disconnect nothing is cleared: every unacked write's
//! bits stay set and the next connect resyncs them.
//!
//! The receiver side (apply in order, flush then ack) is in [`crate::repl::receiver`].

use std::collections::{BTreeMap, VecDeque};

use crate::limits::{
    BITMAP_BLOCK_BYTES, REPL_EPOCH_BYTES_MAX, REPL_EPOCH_WRITES_MAX, REPL_INFLIGHT_WRITES_MAX,
    REPL_SEND_BUFFER_BYTES_MAX, REPL_UNSENT_RANGES_MAX,
};
use crate::repl::wire::HEADER_BYTES;

/// Half-open range of dirty-bitmap block indexes `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockRange {
    pub start: u64,
    pub end: u64,
}

/// The send buffer is full: apply the congestion policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replication send buffer full: {buffered_bytes} of {max_bytes} bytes, {writes} writes in flight")]
pub struct Full {
    pub buffered_bytes: u64,
    pub max_bytes: u64,
    pub writes: usize,
}

/// A barrier ack the sender cannot match: a protocol error (drop the connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("barrier ack for epoch {epoch}, but no closed epoch awaits an ack")]
    NothingToAck { epoch: u64 },
    #[error(
        "barrier ack for epoch {epoch}, outside the unacked closed epochs {oldest}..={newest}"
    )]
    UnknownEpoch {
        epoch: u64,
        oldest: u64,
        newest: u64,
    },
}

/// Where a newly queued write goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub seq: u64,
    pub epoch: u64,
    /// Send `Barrier { epoch }` right after this write: the epoch is closed.
    pub close_epoch: Option<u64>,
}

/// What a barrier ack released.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Released {
    pub epochs: u64,
    pub writes: usize,
    pub bytes: u64,
    /// Dirty-bitmap blocks that are now in sync on the peer (sorted, merged).
    pub clearable: Vec<BlockRange>,
}

/// What a disconnect threw away (their dirty bits stay set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lost {
    pub writes: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
struct WriteRec {
    seq: u64,
    offset: u64,
    len: u64,
    cost: u64,
    at_ms: u64,
}

#[derive(Debug, Clone)]
struct EpochRec {
    epoch: u64,
    writes: Vec<WriteRec>,
    bytes: u64,
}

/// Bounds of one tracker (defaults from [`crate::limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochLimits {
    pub buffer_bytes_max: u64,
    pub inflight_writes_max: usize,
    pub epoch_writes_max: u32,
    pub epoch_bytes_max: u64,
}

impl Default for EpochLimits {
    fn default() -> Self {
        EpochLimits {
            buffer_bytes_max: REPL_SEND_BUFFER_BYTES_MAX,
            inflight_writes_max: REPL_INFLIGHT_WRITES_MAX,
            epoch_writes_max: REPL_EPOCH_WRITES_MAX,
            epoch_bytes_max: REPL_EPOCH_BYTES_MAX,
        }
    }
}

/// Sender-side bookkeeping of one connection.
#[derive(Debug)]
pub struct EpochTracker {
    limits: EpochLimits,
    next_seq: u64,
    open: EpochRec,
    closed: VecDeque<EpochRec>,
    buffered_bytes: u64,
    writes: usize,
    /// Blocks touched (rounded outward) by each unacked write, keyed by (first block, seq).
    pending: BTreeMap<(u64, u64), u64>,
    /// Longest span (in blocks) of any write in `pending` since it was last empty.
    span_max: u64,
    /// Blocks dirtied by writes that were refused (Full) this session: they were never sent,
    /// so no ack may clear them. Merged, non-overlapping `start -> end`.
    unsent: BTreeMap<u64, u64>,
    /// `unsent` grew past its bound: no block may be cleared until the session ends.
    unsent_overflow: bool,
    /// Clear the partly written edge blocks of a released write too (see
    /// [`EpochTracker::set_clear_partial_blocks`]).
    clear_partial: bool,
}

fn touched(offset: u64, len: u64) -> BlockRange {
    let end = offset.saturating_add(len.max(1));
    BlockRange {
        start: offset / BITMAP_BLOCK_BYTES,
        end: end.div_ceil(BITMAP_BLOCK_BYTES),
    }
}

fn fully_covered(offset: u64, len: u64) -> BlockRange {
    let end = offset.saturating_add(len);
    BlockRange {
        start: offset.div_ceil(BITMAP_BLOCK_BYTES),
        end: end / BITMAP_BLOCK_BYTES,
    }
}

impl Default for EpochTracker {
    fn default() -> Self {
        Self::new(EpochLimits::default())
    }
}

impl EpochTracker {
    /// A tracker for a new session: epochs and sequence numbers start at 1.
    pub fn new(limits: EpochLimits) -> Self {
        EpochTracker {
            limits,
            next_seq: 1,
            open: EpochRec {
                epoch: 1,
                writes: Vec::new(),
                bytes: 0,
            },
            closed: VecDeque::new(),
            buffered_bytes: 0,
            writes: 0,
            pending: BTreeMap::new(),
            span_max: 0,
            unsent: BTreeMap::new(),
            unsent_overflow: false,
            clear_partial: false,
        }
    }

    /// Let an ack clear every block a released write touched, partly written edge blocks
    /// included (default: only fully covered blocks). Correct when whatever else made such a
    /// block dirty is tracked elsewhere until it is resynced: the driver sends its bitmap to the
    /// peer before it processes any ack of the session, and the peer's bitmap drives the resync.
    /// Without it, every unaligned write would leave its edge blocks out of sync until the next
    /// resync.
    pub fn set_clear_partial_blocks(&mut self, on: bool) {
        self.clear_partial = on;
    }

    /// Bytes of writes held until their epoch is acked.
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered_bytes
    }

    /// Writes not yet acked.
    pub fn inflight_writes(&self) -> usize {
        self.writes
    }

    /// Whether a write carrying `payload_bytes` would be accepted now.
    pub fn has_room(&self, payload_bytes: u64) -> bool {
        let cost = payload_bytes + HEADER_BYTES as u64;
        self.writes == 0
            || (self.buffered_bytes + cost <= self.limits.buffer_bytes_max
                && self.writes < self.limits.inflight_writes_max)
    }

    /// The epoch new writes go to.
    pub fn open_epoch(&self) -> u64 {
        self.open.epoch
    }

    /// Queue a write of `len` bytes at `offset` carrying `payload_bytes` on the wire (0 for
    /// trim/zeroes). `now_ms` is any monotonic clock, used for [`Self::lag_ms`].
    pub fn try_enqueue(
        &mut self,
        offset: u64,
        len: u64,
        payload_bytes: u64,
        fua: bool,
        now_ms: u64,
    ) -> Result<Enqueued, Full> {
        let cost = payload_bytes + HEADER_BYTES as u64;
        if !self.has_room(payload_bytes) {
            self.mark_unsent(touched(offset, len));
            return Err(Full {
                buffered_bytes: self.buffered_bytes,
                max_bytes: self.limits.buffer_bytes_max,
                writes: self.writes,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let t = touched(offset, len);
        self.span_max = self.span_max.max(t.end - t.start);
        self.pending.insert((t.start, seq), t.end);
        self.open.writes.push(WriteRec {
            seq,
            offset,
            len,
            cost,
            at_ms: now_ms,
        });
        self.open.bytes += cost;
        self.buffered_bytes += cost;
        self.writes += 1;
        let epoch = self.open.epoch;
        let full_epoch = self.open.writes.len() as u64 >= self.limits.epoch_writes_max as u64
            || self.open.bytes >= self.limits.epoch_bytes_max;
        let close_epoch = if fua || full_epoch {
            self.close_epoch()
        } else {
            None
        };
        Ok(Enqueued {
            seq,
            epoch,
            close_epoch,
        })
    }

    /// Close the open epoch (on a flush): returns the epoch to send a Barrier for, or `None`
    /// if it holds no write (an empty epoch needs no barrier).
    pub fn close_epoch(&mut self) -> Option<u64> {
        if self.open.writes.is_empty() {
            return None;
        }
        let next = EpochRec {
            epoch: self.open.epoch + 1,
            writes: Vec::new(),
            bytes: 0,
        };
        let closed = std::mem::replace(&mut self.open, next);
        let epoch = closed.epoch;
        self.closed.push_back(closed);
        Some(epoch)
    }

    /// Age of the oldest unacked write (`lag_ms` in status), 0 when everything is acked.
    pub fn lag_ms(&self, now_ms: u64) -> u64 {
        let oldest = self
            .closed
            .iter()
            .chain(std::iter::once(&self.open))
            .find_map(|e| e.writes.first());
        oldest.map_or(0, |w| now_ms.saturating_sub(w.at_ms))
    }

    /// The peer made every write of epochs up to `epoch` durable.
    pub fn on_barrier_ack(&mut self, epoch: u64) -> Result<Released, AckError> {
        let (Some(oldest), Some(newest)) = (self.closed.front(), self.closed.back()) else {
            return Err(AckError::NothingToAck { epoch });
        };
        let (oldest, newest) = (oldest.epoch, newest.epoch);
        if epoch < oldest || epoch > newest {
            return Err(AckError::UnknownEpoch {
                epoch,
                oldest,
                newest,
            });
        }
        let mut released = Released::default();
        let mut done = Vec::new();
        while self.closed.front().is_some_and(|e| e.epoch <= epoch) {
            let Some(e) = self.closed.pop_front() else {
                break;
            };
            released.epochs += 1;
            released.bytes += e.bytes;
            for w in e.writes {
                let t = touched(w.offset, w.len);
                self.pending.remove(&(t.start, w.seq));
                self.buffered_bytes -= w.cost;
                self.writes -= 1;
                released.writes += 1;
                done.push(w);
            }
        }
        let mut ranges = Vec::new();
        for w in &done {
            let r = if self.clear_partial {
                touched(w.offset, w.len)
            } else {
                fully_covered(w.offset, w.len)
            };
            self.subtract_pending(r, &mut ranges);
        }
        released.clearable = merge(ranges);
        if self.pending.is_empty() {
            self.span_max = 0;
        }
        Ok(released)
    }

    /// Remember blocks of a write that was not sent (refused as Full): until the session
    /// ends, no ack of an earlier write may clear them.
    fn mark_unsent(&mut self, r: BlockRange) {
        if self.unsent_overflow {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        let overlapping: Vec<u64> = self
            .unsent
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, _)| *s)
            .collect();
        for s in overlapping {
            if let Some(e) = self.unsent.remove(&s) {
                start = start.min(s);
                end = end.max(e);
            }
        }
        self.unsent.insert(start, end);
        if self.unsent.len() > REPL_UNSENT_RANGES_MAX {
            self.unsent.clear();
            self.unsent_overflow = true;
        }
    }

    /// A write that was not offered to [`Self::try_enqueue`] at all (the sender is Ahead):
    /// like a refused one, no ack of this session may clear its blocks.
    pub fn mark_unsent_write(&mut self, offset: u64, len: u64) {
        self.mark_unsent(touched(offset, len));
    }

    /// Every unsent block was handed to a resync (its bits were sent to the peer, whose
    /// bitmap now drives the resync): acks may clear those blocks again.
    pub fn forget_unsent(&mut self) {
        self.unsent.clear();
        self.unsent_overflow = false;
    }

    /// Blocks a resync has brought in sync again: they no longer need to stay dirty for an
    /// unsent write.
    pub fn clear_unsent(&mut self, r: BlockRange) {
        let inside: Vec<(u64, u64)> = self
            .unsent
            .range(..r.end)
            .rev()
            .take_while(|(_, e)| **e > r.start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in inside {
            self.unsent.remove(&s);
            if s < r.start {
                self.unsent.insert(s, r.start);
            }
            if e > r.end {
                self.unsent.insert(r.end, e);
            }
        }
    }

    /// Push the parts of `r` that no unacked or unsent write touches.
    fn subtract_pending(&self, r: BlockRange, out: &mut Vec<BlockRange>) {
        if r.start >= r.end || self.unsent_overflow {
            return;
        }
        let lo = r.start.saturating_sub(self.span_max);
        let mut blockers: Vec<BlockRange> = self
            .pending
            .range((lo, 0)..(r.end, 0))
            .filter(|((start, _), end)| **end > r.start && *start < r.end)
            .map(|((start, _), end)| BlockRange {
                start: *start,
                end: *end,
            })
            .collect();
        blockers.extend(
            self.unsent
                .range(..r.end)
                .rev()
                .take_while(|(_, e)| **e > r.start)
                .map(|(s, e)| BlockRange { start: *s, end: *e }),
        );
        blockers.sort();
        let mut at = r.start;
        for b in blockers {
            if b.start > at {
                out.push(BlockRange {
                    start: at,
                    end: b.start.min(r.end),
                });
            }
            at = at.max(b.end);
            if at >= r.end {
                return;
            }
        }
        if at < r.end {
            out.push(BlockRange {
                start: at,
                end: r.end,
            });
        }
    }

    /// The connection is gone: forget every unacked write (their dirty bits stay set) and
    /// start numbering again for the next session.
    pub fn on_disconnect(&mut self) -> Lost {
        let lost = Lost {
            writes: self.writes,
            bytes: self.buffered_bytes,
        };
        let clear_partial = self.clear_partial;
        *self = EpochTracker::new(self.limits);
        self.clear_partial = clear_partial;
        lost
    }
}

fn merge(mut v: Vec<BlockRange>) -> Vec<BlockRange> {
    v.sort();
    let mut out: Vec<BlockRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
#[path = "epoch_tests.rs"]
mod tests;
