//! Protocol-A epochs, receiver side: apply epochs strictly in order, ack only durable epochs.
//!
//! Modelled as events in, actions out (no I/O). The driver turns [`RxAction::Write`] into a
//! disk write and reports [`RxEvent::WriteDone`]; turns [`RxAction::FlushThenAck`] into a
//! flush of the disk followed by `BarrierAck{epoch}` to the peer, and reports
//! [`RxEvent::FlushDone`]. The rules (DRBD's receiver with write ordering "flush"):
//!
//! - frames arrive in order: a write must carry the open epoch and the next sequence number,
//!   a barrier must close the open epoch; anything else is a protocol error;
//! - writes of one epoch may be in flight together, except that a write overlapping an
//!   earlier in-flight or held write waits for it (so the peer ends with the same bytes as
//!   the primary, whatever order the disk completes them in);
//! - an epoch is flushed and acked only when all its writes completed; writes of the next
//!   epoch are not issued before that flush completed (crash consistency: the secondary's
//!   disk never holds epoch N+1 without epoch N);
//! - writes that must wait are queued, at most [`REPL_RECEIVER_QUEUED_WRITES_MAX`]; beyond
//!   that the driver should have stopped reading the socket ([`EpochReceiver::wants_input`]);
//! - a resync write (SyncTarget: `ResyncData` / `ResyncZeroes`, outside the epochs) is issued
//!   at once and never waits, but an application write released while it is in flight and
//!   overlapping it waits for it ([`EpochReceiver::resync_writing`]): the resync answer was
//!   read on the source after every write queued before it, so it may land before or after
//!   those (the last of them carries the same bytes), but never after a later one.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap;

use crate::limits::REPL_RECEIVER_QUEUED_WRITES_MAX;

/// Something that happened on the receiving side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxEvent<T> {
    /// A Data/Trim/Zeroes frame arrived.
    Write {
        seq: u64,
        epoch: u64,
        offset: u64,
        len: u64,
        write: T,
    },
    /// A Barrier frame arrived.
    Barrier { epoch: u64 },
    /// The disk completed the write with this sequence number.
    WriteDone { seq: u64 },
    /// The flush requested by `FlushThenAck{epoch}` completed and the ack was sent.
    FlushDone { epoch: u64 },
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxAction<T> {
    Write {
        seq: u64,
        write: T,
    },
    /// Flush the disk, then send `BarrierAck{epoch}`, then report `FlushDone{epoch}`.
    FlushThenAck(u64),
}

/// The peer broke the ordering rules, or the driver reported something impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    #[error("frame for epoch {got}, expected epoch {expected}")]
    EpochOutOfOrder { expected: u64, got: u64 },
    #[error("write with sequence number {got}, expected {expected}")]
    SeqOutOfOrder { expected: u64, got: u64 },
    #[error("completion for write {0}, which is not in flight")]
    UnknownWriteDone(u64),
    #[error("completion for resync write {0}, which is not in flight")]
    UnknownResyncDone(u64),
    #[error("flush completion for epoch {0}, which is not being flushed")]
    UnexpectedFlushDone(u64),
    #[error("receiver queue full ({max} writes waiting): the peer ignored backpressure")]
    QueueFull { max: usize },
}

/// A frame of a later epoch than the one being applied, in arrival order.
#[derive(Debug)]
enum Queued<T> {
    Write(Span, T),
    Barrier { epoch: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Span {
    seq: u64,
    offset: u64,
    len: u64,
}

fn overlap(a: &Span, b: &Span) -> bool {
    a.offset < b.end() && b.offset < a.end()
}

impl Span {
    /// One past the last byte; a zero-length write (a flush-like trim) counts as one byte.
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.len.max(1))
    }
}

/// Spans by start, for "does anything here overlap this span" in O(log n) instead of a scan
/// of every write in flight (an epoch may have thousands). Spans may overlap each other: a
/// span overlapping `[a, b)` starts in `[a - longest, b)`, `longest` being the longest span
/// inserted since the index was last empty, so a query looks at that window only.
#[derive(Debug, Default)]
struct SpanIndex {
    /// (offset, seq) -> end.
    by_start: BTreeMap<(u64, u64), u64>,
    /// seq -> offset.
    by_seq: FxHashMap<u64, u64>,
    longest: u64,
}

impl SpanIndex {
    fn len(&self) -> usize {
        self.by_seq.len()
    }

    fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    /// Add a span; its `seq` must not be in the index already (sequence numbers and resync
    /// ids are unique while in flight).
    fn insert(&mut self, s: Span) {
        debug_assert!(!self.by_seq.contains_key(&s.seq), "span {} twice", s.seq);
        let end = s.end();
        self.longest = self.longest.max(end - s.offset);
        self.by_start.insert((s.offset, s.seq), end);
        self.by_seq.insert(s.seq, s.offset);
    }

    /// Remove the span with this sequence number (id); `None` if there is none.
    fn remove(&mut self, seq: u64) -> Option<Span> {
        let offset = self.by_seq.remove(&seq)?;
        let end = self
            .by_start
            .remove(&(offset, seq))
            .expect("both maps hold every span");
        if self.by_seq.is_empty() {
            self.longest = 0;
        }
        Some(Span {
            seq,
            offset,
            len: end - offset,
        })
    }

    /// The window of entries that may overlap `s`, from `from` on.
    fn window(&self, from: u64, s: &Span) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.by_start
            .range((from, 0)..(s.end(), 0))
            .map(|(&(offset, seq), &end)| (offset, seq, end))
    }

    fn window_start(&self, s: &Span) -> u64 {
        s.offset.saturating_sub(self.longest)
    }

    fn overlaps(&self, s: &Span) -> bool {
        self.window(self.window_start(s), s)
            .any(|(_, _, end)| end > s.offset)
    }

    /// Does a span with a lower sequence number than `s` overlap it? Looked at one start at
    /// a time, and of each start only the lower sequence numbers: for writes to one hot block
    /// that is O(log n), not a walk over all of them.
    fn overlaps_earlier(&self, s: &Span) -> bool {
        let mut from = self.window_start(s);
        while let Some((offset, _, _)) = self.window(from, s).next() {
            if self
                .by_start
                .range((offset, 0)..(offset, s.seq))
                .any(|(_, &end)| end > s.offset)
            {
                return true;
            }
            from = offset + 1;
        }
        false
    }

    /// Of each start in `s`'s window, the span with the lowest sequence number, if it overlaps
    /// `s`. (The others of that start overlap that one.)
    fn first_per_start_overlapping(&self, s: &Span) -> Vec<Span> {
        let mut found = Vec::new();
        let mut from = self.window_start(s);
        while let Some((offset, seq, end)) = self.window(from, s).next() {
            if end > s.offset {
                found.push(Span {
                    seq,
                    offset,
                    len: end - offset,
                });
            }
            from = offset + 1;
        }
        found
    }
}

/// Receiver-side epoch state of one connection.
#[derive(Debug)]
pub struct EpochReceiver<T> {
    /// Epoch the next incoming frame must carry.
    rx_epoch: u64,
    next_seq: u64,
    /// Epoch whose writes are being applied.
    apply_epoch: u64,
    /// The barrier of `apply_epoch` arrived.
    closed: bool,
    flushing: bool,
    inflight: SpanIndex,
    /// Writes of `apply_epoch` waiting for an overlapping earlier write, by sequence number
    /// (`held_spans` indexes the same spans by offset).
    held: BTreeMap<u64, (Span, T)>,
    held_spans: SpanIndex,
    /// Frames of later epochs, in arrival order.
    later: VecDeque<Queued<T>>,
    /// Resync writes in flight (`seq` is the driver's id for them).
    resync: SpanIndex,
    queue_max: usize,
}

impl<T> Default for EpochReceiver<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> EpochReceiver<T> {
    /// A receiver for a new session: epochs and sequence numbers start at 1.
    pub fn new() -> Self {
        Self::with_queue_max(REPL_RECEIVER_QUEUED_WRITES_MAX)
    }

    pub fn with_queue_max(queue_max: usize) -> Self {
        EpochReceiver {
            rx_epoch: 1,
            next_seq: 1,
            apply_epoch: 1,
            closed: false,
            flushing: false,
            inflight: SpanIndex::default(),
            held: BTreeMap::new(),
            held_spans: SpanIndex::default(),
            later: VecDeque::new(),
            resync: SpanIndex::default(),
            queue_max,
        }
    }

    /// False when the driver should stop reading frames until writes complete.
    pub fn wants_input(&self) -> bool {
        self.held.len() + self.later.len() < self.queue_max
    }

    /// Every write received so far is on the disk: none in flight, held or queued, no flush
    /// running (online verify reads here at exactly this point of the stream).
    pub fn idle(&self) -> bool {
        self.inflight.is_empty()
            && self.held.is_empty()
            && self.later.is_empty()
            && self.resync.is_empty()
            && !self.flushing
    }

    /// Writes (application and resync) issued to the disk and not completed.
    pub fn inflight(&self) -> usize {
        self.inflight.len() + self.resync.len()
    }

    /// The driver issues a resync write `id` (unique among the resync writes in flight) of
    /// `offset..offset+len` now; application writes released while it is in flight and
    /// overlapping it wait for [`Self::resync_written`].
    pub fn resync_writing(&mut self, id: u64, offset: u64, len: u64) {
        self.resync.insert(Span {
            seq: id,
            offset,
            len,
        });
    }

    /// The resync write `id` completed: the application writes it held are released.
    pub fn resync_written(&mut self, id: u64) -> Result<Vec<RxAction<T>>, RxError> {
        let Some(done) = self.resync.remove(id) else {
            return Err(RxError::UnknownResyncDone(id));
        };
        let mut out = Vec::new();
        self.release_held(&done, &mut out);
        self.maybe_flush(&mut out);
        Ok(out)
    }

    /// Feed one event; returns the actions to carry out, in order.
    pub fn handle(&mut self, ev: RxEvent<T>) -> Result<Vec<RxAction<T>>, RxError> {
        let mut out = Vec::new();
        match ev {
            RxEvent::Write {
                seq,
                epoch,
                offset,
                len,
                write,
            } => {
                if epoch != self.rx_epoch {
                    return Err(RxError::EpochOutOfOrder {
                        expected: self.rx_epoch,
                        got: epoch,
                    });
                }
                if seq != self.next_seq {
                    return Err(RxError::SeqOutOfOrder {
                        expected: self.next_seq,
                        got: seq,
                    });
                }
                if !self.wants_input() {
                    return Err(RxError::QueueFull {
                        max: self.queue_max,
                    });
                }
                self.next_seq += 1;
                if epoch == self.apply_epoch {
                    self.submit(Span { seq, offset, len }, write, &mut out);
                } else {
                    self.later
                        .push_back(Queued::Write(Span { seq, offset, len }, write));
                }
            }
            RxEvent::Barrier { epoch } => {
                if epoch != self.rx_epoch {
                    return Err(RxError::EpochOutOfOrder {
                        expected: self.rx_epoch,
                        got: epoch,
                    });
                }
                if epoch == self.apply_epoch {
                    self.closed = true;
                } else if !self.wants_input() {
                    return Err(RxError::QueueFull {
                        max: self.queue_max,
                    });
                } else {
                    self.later.push_back(Queued::Barrier { epoch });
                }
                self.rx_epoch += 1;
            }
            RxEvent::WriteDone { seq } => {
                let Some(done) = self.inflight.remove(seq) else {
                    return Err(RxError::UnknownWriteDone(seq));
                };
                self.release_held(&done, &mut out);
            }
            RxEvent::FlushDone { epoch } => {
                if !self.flushing || epoch != self.apply_epoch {
                    return Err(RxError::UnexpectedFlushDone(epoch));
                }
                self.flushing = false;
                self.closed = false;
                self.apply_epoch += 1;
                while let Some(q) = self.later.pop_front() {
                    match q {
                        Queued::Write(span, write) => self.submit(span, write, &mut out),
                        Queued::Barrier { epoch } => {
                            debug_assert_eq!(epoch, self.apply_epoch);
                            self.closed = true;
                            break;
                        }
                    }
                }
            }
        }
        self.maybe_flush(&mut out);
        Ok(out)
    }

    fn submit(&mut self, span: Span, write: T, out: &mut Vec<RxAction<T>>) {
        if self.inflight.overlaps(&span)
            || self.resync.overlaps(&span)
            || self.held_spans.overlaps(&span)
        {
            self.held_spans.insert(span);
            self.held.insert(span.seq, (span, write));
        } else {
            self.inflight.insert(span);
            out.push(RxAction::Write {
                seq: span.seq,
                write,
            });
        }
    }

    /// `done` left the disk: issue the held writes that no longer overlap an in-flight or an
    /// earlier held write. Only a held write overlapping `done` can be one: every held write
    /// was blocked before, and `done` is the only blocker that went away; and of the held
    /// writes of one start only the earliest, as the others overlap it. Whether a candidate
    /// goes does not depend on the order they are looked at (one overlapping an earlier
    /// candidate is blocked by it, held or just issued), so they are taken in the index's
    /// order and the issued ones sorted by sequence number.
    fn release_held(&mut self, done: &Span, out: &mut Vec<RxAction<T>>) {
        let candidates = self.held_spans.first_per_start_overlapping(done);
        let mut released: Vec<Span> = Vec::new();
        for span in candidates {
            // Issued earlier in this pass: not in `inflight` until the loop below.
            let blocked = released.iter().any(|r| overlap(r, &span))
                || self.inflight.overlaps(&span)
                || self.resync.overlaps(&span)
                || self.held_spans.overlaps_earlier(&span);
            if !blocked {
                self.held_spans.remove(span.seq);
                released.push(span);
            }
        }
        released.sort_unstable_by_key(|s| s.seq);
        for span in released {
            let (span, write) = self.held.remove(&span.seq).expect("held in both maps");
            self.inflight.insert(span);
            out.push(RxAction::Write {
                seq: span.seq,
                write,
            });
        }
    }

    fn maybe_flush(&mut self, out: &mut Vec<RxAction<T>>) {
        if self.closed && !self.flushing && self.inflight.is_empty() && self.held.is_empty() {
            self.flushing = true;
            out.push(RxAction::FlushThenAck(self.apply_epoch));
        }
    }
}

#[cfg(test)]
#[path = "receiver_tests.rs"]
mod tests;
