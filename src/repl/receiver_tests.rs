//! Receiver-side epoch tests: order checks, overlap serialization, flush-then-ack, and a
//! proptest over random completion orders.

use proptest::prelude::*;

use super::*;

fn w(seq: u64, epoch: u64, offset: u64, len: u64) -> RxEvent<u64> {
    RxEvent::Write {
        seq,
        epoch,
        offset,
        len,
        write: seq,
    }
}

#[test]
fn epoch_is_flushed_and_acked_only_after_its_writes_complete() {
    let mut r = EpochReceiver::new();
    assert_eq!(
        r.handle(w(1, 1, 0, 4096)).unwrap(),
        vec![RxAction::Write { seq: 1, write: 1 }]
    );
    assert_eq!(
        r.handle(w(2, 1, 8192, 4096)).unwrap(),
        vec![RxAction::Write { seq: 2, write: 2 }]
    );
    assert_eq!(r.handle(RxEvent::Barrier { epoch: 1 }).unwrap(), vec![]);
    assert_eq!(r.handle(RxEvent::WriteDone { seq: 2 }).unwrap(), vec![]);
    assert_eq!(
        r.handle(RxEvent::WriteDone { seq: 1 }).unwrap(),
        vec![RxAction::FlushThenAck(1)]
    );
}

#[test]
fn next_epoch_waits_for_the_flush_of_the_previous_one() {
    let mut r = EpochReceiver::new();
    r.handle(w(1, 1, 0, 4096)).unwrap();
    r.handle(RxEvent::Barrier { epoch: 1 }).unwrap();
    assert_eq!(
        r.handle(w(2, 2, 4096, 4096)).unwrap(),
        vec![],
        "held until epoch 1 is durable"
    );
    assert_eq!(r.handle(RxEvent::Barrier { epoch: 2 }).unwrap(), vec![]);
    assert_eq!(
        r.handle(RxEvent::WriteDone { seq: 1 }).unwrap(),
        vec![RxAction::FlushThenAck(1)]
    );
    assert_eq!(
        r.handle(RxEvent::FlushDone { epoch: 1 }).unwrap(),
        vec![RxAction::Write { seq: 2, write: 2 }]
    );
    assert_eq!(
        r.handle(RxEvent::WriteDone { seq: 2 }).unwrap(),
        vec![RxAction::FlushThenAck(2)]
    );
}

#[test]
fn overlapping_writes_in_one_epoch_are_applied_in_order() {
    let mut r = EpochReceiver::new();
    r.handle(w(1, 1, 0, 8192)).unwrap();
    assert_eq!(
        r.handle(w(2, 1, 4096, 4096)).unwrap(),
        vec![],
        "overlaps write 1"
    );
    assert_eq!(
        r.handle(w(3, 1, 65536, 512)).unwrap(),
        vec![RxAction::Write { seq: 3, write: 3 }]
    );
    assert_eq!(
        r.handle(RxEvent::WriteDone { seq: 1 }).unwrap(),
        vec![RxAction::Write { seq: 2, write: 2 }]
    );
}

#[test]
fn out_of_order_frames_are_protocol_errors() {
    let mut r = EpochReceiver::<u64>::new();
    assert_eq!(
        r.handle(w(1, 2, 0, 1)),
        Err(RxError::EpochOutOfOrder {
            expected: 1,
            got: 2
        })
    );
    assert_eq!(
        r.handle(w(5, 1, 0, 1)),
        Err(RxError::SeqOutOfOrder {
            expected: 1,
            got: 5
        })
    );
    assert_eq!(
        r.handle(RxEvent::Barrier { epoch: 3 }),
        Err(RxError::EpochOutOfOrder {
            expected: 1,
            got: 3
        })
    );
    assert_eq!(
        r.handle(RxEvent::WriteDone { seq: 9 }),
        Err(RxError::UnknownWriteDone(9))
    );
    assert_eq!(
        r.handle(RxEvent::FlushDone { epoch: 1 }),
        Err(RxError::UnexpectedFlushDone(1))
    );
}

#[test]
fn queue_is_bounded() {
    let mut r = EpochReceiver::with_queue_max(2);
    r.handle(w(1, 1, 0, 1)).unwrap();
    r.handle(RxEvent::Barrier { epoch: 1 }).unwrap();
    r.handle(w(2, 2, 0, 1)).unwrap();
    r.handle(w(3, 2, 10, 1)).unwrap();
    assert!(!r.wants_input());
    assert_eq!(r.handle(w(4, 2, 20, 1)), Err(RxError::QueueFull { max: 2 }));
}

proptest! {
    /// Whatever order the disk completes writes in: every write is issued exactly once, no
    /// two overlapping writes are in flight together, acks come in epoch order and only after
    /// every write of that epoch completed, and no write of epoch N+1 is issued before the
    /// flush of epoch N completed.
    #[test]
    fn random_completion_order_keeps_the_rules(
        epochs in proptest::collection::vec(proptest::collection::vec((0u64..16, 1u64..4), 1..6), 1..6),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 200),
    ) {
        let mut r = EpochReceiver::new();
        let mut seq = 0u64;
        let mut epoch_of = std::collections::HashMap::new();
        let mut span_of = std::collections::HashMap::new();
        let mut inflight: Vec<u64> = Vec::new();
        let mut done: std::collections::HashSet<u64> = Default::default();
        let mut issued: std::collections::HashSet<u64> = Default::default();
        let mut flush_pending: Option<u64> = None;
        let mut acked = 0u64;
        let mut actions: Vec<RxAction<u64>> = Vec::new();
        for (i, ws) in epochs.iter().enumerate() {
            let e = i as u64 + 1;
            for (blk, n) in ws {
                seq += 1;
                epoch_of.insert(seq, e);
                span_of.insert(seq, (*blk, *n));
                actions.extend(r.handle(RxEvent::Write { seq, epoch: e, offset: blk * 4096, len: n * 4096, write: seq }).unwrap());
            }
            actions.extend(r.handle(RxEvent::Barrier { epoch: e }).unwrap());
        }
        let mut picks = picks.into_iter();
        loop {
            for a in actions.drain(..) {
                match a {
                    RxAction::Write { seq, .. } => {
                        prop_assert!(issued.insert(seq), "write {} issued twice", seq);
                        prop_assert_eq!(epoch_of[&seq], acked + 1, "write of a later epoch issued early");
                        let (b, n) = span_of[&seq];
                        for o in &inflight {
                            let (ob, on) = span_of[o];
                            prop_assert!(b + n <= ob || ob + on <= b, "overlapping writes {} and {} in flight", seq, o);
                        }
                        inflight.push(seq);
                    }
                    RxAction::FlushThenAck(e) => {
                        prop_assert_eq!(e, acked + 1);
                        for (s, se) in &epoch_of {
                            if *se == e { prop_assert!(done.contains(s), "ack of {} before write {} done", e, s); }
                        }
                        flush_pending = Some(e);
                    }
                }
            }
            if !inflight.is_empty() {
                let i = picks.next().map_or(0, |p| p.index(inflight.len()));
                let s = inflight.swap_remove(i);
                done.insert(s);
                actions.extend(r.handle(RxEvent::WriteDone { seq: s }).unwrap());
            } else if let Some(e) = flush_pending.take() {
                acked = e;
                actions.extend(r.handle(RxEvent::FlushDone { epoch: e }).unwrap());
            } else {
                break;
            }
        }
        prop_assert_eq!(acked, epochs.len() as u64, "every epoch acked");
        prop_assert_eq!(issued.len() as u64, seq);
    }
}

#[test]
fn idle_only_once_every_received_write_is_on_disk_and_flushed() {
    let mut r = EpochReceiver::new();
    assert!(r.idle());
    r.handle(w(1, 1, 0, 4096)).unwrap();
    r.handle(w(2, 1, 0, 4096)).unwrap(); // overlaps 1: held
    r.handle(RxEvent::Barrier { epoch: 1 }).unwrap();
    r.handle(w(3, 2, 8192, 4096)).unwrap(); // a later epoch: queued
    assert!(!r.idle());
    r.handle(RxEvent::WriteDone { seq: 1 }).unwrap();
    assert!(!r.idle(), "2 released, still in flight");
    assert_eq!(
        r.handle(RxEvent::WriteDone { seq: 2 }).unwrap(),
        vec![RxAction::FlushThenAck(1)]
    );
    assert!(!r.idle(), "flushing, and 3 waits for the flush");
    r.handle(RxEvent::FlushDone { epoch: 1 }).unwrap();
    assert!(!r.idle(), "3 in flight");
    r.handle(RxEvent::WriteDone { seq: 3 }).unwrap();
    assert!(r.idle());
}

/// A resync write never waits, but an application write released while it is in flight and
/// overlapping it waits for it (a later write must land after the resync answer); writes that
/// do not overlap go at once, and the epoch's flush does not wait for resync writes.
#[test]
fn application_writes_overlapping_a_resync_write_wait_for_it() {
    let mut r = EpochReceiver::new();
    r.resync_writing(7, 0, 1 << 20);
    assert!(!r.idle(), "a resync write in flight is not idle");
    assert_eq!(r.inflight(), 1);
    assert_eq!(r.handle(w(1, 1, 4096, 4096)).unwrap(), vec![], "held");
    assert_eq!(
        r.handle(w(2, 1, 2 << 20, 4096)).unwrap(),
        vec![RxAction::Write { seq: 2, write: 2 }],
        "no overlap: at once"
    );
    assert_eq!(r.handle(RxEvent::Barrier { epoch: 1 }).unwrap(), vec![]);
    assert_eq!(r.handle(RxEvent::WriteDone { seq: 2 }).unwrap(), vec![]);
    assert_eq!(
        r.resync_written(7).unwrap(),
        vec![RxAction::Write { seq: 1, write: 1 }]
    );
    assert_eq!(
        r.handle(RxEvent::WriteDone { seq: 1 }).unwrap(),
        vec![RxAction::FlushThenAck(1)]
    );
    assert!(r.resync_written(7).is_err(), "twice is a driver bug");
}

/// Writes of a later epoch, released by the previous epoch's flush, also wait for an
/// overlapping resync write still in flight.
#[test]
fn a_released_epoch_waits_for_an_overlapping_resync_write() {
    let mut r = EpochReceiver::new();
    r.handle(w(1, 1, 0, 4096)).unwrap();
    r.handle(RxEvent::Barrier { epoch: 1 }).unwrap();
    r.handle(w(2, 2, 8192, 4096)).unwrap();
    r.resync_writing(1, 8192, 4096);
    assert_eq!(
        r.handle(RxEvent::WriteDone { seq: 1 }).unwrap(),
        vec![RxAction::FlushThenAck(1)]
    );
    assert_eq!(r.handle(RxEvent::FlushDone { epoch: 1 }).unwrap(), vec![]);
    assert_eq!(
        r.resync_written(1).unwrap(),
        vec![RxAction::Write { seq: 2, write: 2 }]
    );
}

/// The receiver as first written: every overlap question a scan of every write in flight,
/// held or resyncing, and every completion a re-check of every held write. Slow (quadratic
/// in an epoch's writes) but plainly right; the indexed receiver must act exactly like it.
#[derive(Default)]
struct Reference {
    inflight: Vec<Span>,
    held: VecDeque<Span>,
    resync: Vec<Span>,
}

impl Reference {
    fn blocked(&self, s: &Span, earlier: &VecDeque<Span>) -> bool {
        self.inflight
            .iter()
            .chain(&self.resync)
            .chain(earlier)
            .any(|o| overlap(o, s))
    }

    /// A write of the epoch being applied arrives: the sequence numbers it issues.
    fn submit(&mut self, s: Span) -> Vec<u64> {
        if self.blocked(&s, &self.held) {
            self.held.push_back(s);
            vec![]
        } else {
            self.inflight.push(s);
            vec![s.seq]
        }
    }

    fn release(&mut self) -> Vec<u64> {
        let mut still = VecDeque::new();
        let mut out = vec![];
        while let Some(s) = self.held.pop_front() {
            if self.blocked(&s, &still) {
                still.push_back(s);
            } else {
                self.inflight.push(s);
                out.push(s.seq);
            }
        }
        self.held = still;
        out
    }
}

proptest! {
    /// One epoch of writes (some overlapping, some of zero length) and resync writes, the disk
    /// completing them in a random order: the indexed receiver issues the same writes at the
    /// same moments as the reference. Guards the index against both a missed overlap (two
    /// overlapping writes on the disk together) and a held write released late or never.
    #[test]
    fn issues_writes_exactly_when_the_plain_scan_does(
        ops in proptest::collection::vec((0u8..4, 0u64..64, 0u64..5, any::<prop::sample::Index>()), 1..300),
    ) {
        let mut r = EpochReceiver::new();
        let mut m = Reference::default();
        let mut seq = 0u64;
        let mut rid = 0u64;
        let issued = |actions: Vec<RxAction<u64>>| -> Vec<u64> {
            actions.into_iter().filter_map(|a| match a {
                RxAction::Write { seq, .. } => Some(seq),
                RxAction::FlushThenAck(_) => None,
            }).collect()
        };
        for (kind, blk, n, pick) in ops {
            // Mostly 4 KiB blocks, sometimes a long write spanning many.
            let len = if n == 4 { 40 * 4096 } else { n * 4096 };
            match kind {
                0 | 1 => {
                    seq += 1;
                    let got = issued(r.handle(RxEvent::Write { seq, epoch: 1, offset: blk * 4096, len, write: seq }).unwrap());
                    prop_assert_eq!(got, m.submit(Span { seq, offset: blk * 4096, len }));
                }
                2 => {
                    rid += 1;
                    r.resync_writing(rid, blk * 4096, len);
                    m.resync.push(Span { seq: rid, offset: blk * 4096, len });
                }
                _ => {
                    let total = m.inflight.len() + m.resync.len();
                    if total == 0 { continue; }
                    let i = pick.index(total);
                    let (got, want) = if i < m.inflight.len() {
                        let s = m.inflight.swap_remove(i);
                        (issued(r.handle(RxEvent::WriteDone { seq: s.seq }).unwrap()), m.release())
                    } else {
                        let s = m.resync.swap_remove(i - m.inflight.len());
                        (issued(r.resync_written(s.seq).unwrap()), m.release())
                    };
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(r.inflight(), m.inflight.len() + m.resync.len());
        }
    }
}
