//! Sender-side epoch tests, including a model-based proptest that no dirty bit of an unacked
//! write is ever reported clearable.

use proptest::prelude::*;

use super::*;

const B: u64 = BITMAP_BLOCK_BYTES;

fn small() -> EpochLimits {
    EpochLimits {
        buffer_bytes_max: 64 * 1024,
        inflight_writes_max: 16,
        epoch_writes_max: 4,
        epoch_bytes_max: 1 << 20,
    }
}

#[test]
fn writes_get_sequence_numbers_and_epochs_close_on_flush_and_fua() {
    let mut t = EpochTracker::new(small());
    let a = t.try_enqueue(0, B, B, false, 0).unwrap();
    assert_eq!(
        a,
        Enqueued {
            seq: 1,
            epoch: 1,
            close_epoch: None
        }
    );
    assert_eq!(t.close_epoch(), Some(1), "flush closes the epoch");
    assert_eq!(t.close_epoch(), None, "an empty epoch needs no barrier");
    let b = t.try_enqueue(B, B, B, true, 0).unwrap();
    assert_eq!(
        b,
        Enqueued {
            seq: 2,
            epoch: 2,
            close_epoch: Some(2)
        },
        "FUA closes the epoch"
    );
    assert_eq!(t.open_epoch(), 3);
}

#[test]
fn epoch_closes_at_its_size_bound() {
    let mut t = EpochTracker::new(small());
    let closes: Vec<_> = (0..8)
        .map(|i| t.try_enqueue(i * B, B, B, false, 0).unwrap().close_epoch)
        .collect();
    assert_eq!(
        closes,
        vec![None, None, None, Some(1), None, None, None, Some(2)]
    );
}

#[test]
fn ack_releases_epochs_up_to_n_and_reports_clearable_blocks() {
    let mut t = EpochTracker::new(small());
    t.try_enqueue(0, 2 * B, 2 * B, false, 0).unwrap();
    t.close_epoch();
    t.try_enqueue(8 * B, B, B, false, 0).unwrap();
    t.close_epoch();
    t.try_enqueue(16 * B, B, B, false, 0).unwrap();
    t.close_epoch();
    let r = t.on_barrier_ack(2).unwrap();
    assert_eq!((r.epochs, r.writes), (2, 2));
    assert_eq!(
        r.clearable,
        vec![
            BlockRange { start: 0, end: 2 },
            BlockRange { start: 8, end: 9 }
        ]
    );
    assert_eq!(t.inflight_writes(), 1);
    assert_eq!(
        t.on_barrier_ack(2),
        Err(AckError::UnknownEpoch {
            epoch: 2,
            oldest: 3,
            newest: 3
        })
    );
    assert_eq!(
        t.on_barrier_ack(4),
        Err(AckError::UnknownEpoch {
            epoch: 4,
            oldest: 3,
            newest: 3
        })
    );
    t.on_barrier_ack(3).unwrap();
    assert_eq!(
        t.on_barrier_ack(3),
        Err(AckError::NothingToAck { epoch: 3 })
    );
    assert_eq!(t.buffered_bytes(), 0);
}

#[test]
fn a_later_unacked_write_to_the_same_block_keeps_its_bit() {
    let mut t = EpochTracker::new(small());
    t.try_enqueue(0, 4 * B, 4 * B, true, 0).unwrap(); // epoch 1: blocks 0..4
    t.try_enqueue(2 * B + 512, 512, 512, true, 0).unwrap(); // epoch 2: touches block 2
    let r = t.on_barrier_ack(1).unwrap();
    assert_eq!(
        r.clearable,
        vec![
            BlockRange { start: 0, end: 2 },
            BlockRange { start: 3, end: 4 }
        ]
    );
}

#[test]
fn partly_written_blocks_are_never_clearable() {
    // DRBD's drbd_set_in_sync rounds inward: the rest of the block may be out of sync.
    let mut t = EpochTracker::new(small());
    t.try_enqueue(512, 2 * B, 2 * B, true, 0).unwrap(); // covers block 1 fully, 0 and 2 partly
    let r = t.on_barrier_ack(1).unwrap();
    assert_eq!(r.clearable, vec![BlockRange { start: 1, end: 2 }]);
}

#[test]
fn full_buffer_is_reported_and_drains_on_ack() {
    let mut t = EpochTracker::new(small());
    for i in 0..15 {
        t.try_enqueue(i * B, B, B, false, 0).unwrap();
    }
    let err = t.try_enqueue(100 * B, B, B, false, 0).unwrap_err();
    assert_eq!(err.max_bytes, 64 * 1024);
    assert!(err.to_string().starts_with("replication send buffer full"));
    t.close_epoch();
    t.on_barrier_ack(4).unwrap();
    assert!(t.try_enqueue(100 * B, B, B, false, 0).is_ok());
}

#[test]
fn lag_is_the_age_of_the_oldest_unacked_write() {
    let mut t = EpochTracker::new(small());
    assert_eq!(t.lag_ms(500), 0);
    t.try_enqueue(0, B, B, true, 100).unwrap();
    t.try_enqueue(B, B, B, true, 300).unwrap();
    assert_eq!(t.lag_ms(1000), 900);
    t.on_barrier_ack(1).unwrap();
    assert_eq!(t.lag_ms(1000), 700);
    t.on_barrier_ack(2).unwrap();
    assert_eq!(t.lag_ms(1000), 0);
}

#[test]
fn disconnect_forgets_unacked_writes_and_restarts_numbering() {
    let mut t = EpochTracker::new(small());
    t.try_enqueue(0, B, B, true, 0).unwrap();
    t.try_enqueue(B, B, B, false, 0).unwrap();
    let lost = t.on_disconnect();
    assert_eq!(lost.writes, 2);
    assert_eq!(t.inflight_writes(), 0);
    assert_eq!(t.try_enqueue(0, B, B, false, 0).unwrap().seq, 1);
    assert_eq!(
        t.on_barrier_ack(1),
        Err(AckError::NothingToAck { epoch: 1 })
    );
}

#[test]
fn a_refused_write_keeps_its_blocks_dirty_until_the_session_ends() {
    let mut t = EpochTracker::new(EpochLimits {
        inflight_writes_max: 1,
        ..small()
    });
    t.try_enqueue(0, 4 * B, 4 * B, true, 0).unwrap(); // epoch 1: blocks 0..4
    assert!(!t.has_room(B));
    assert!(t.try_enqueue(B, B, B, false, 0).is_err()); // block 1, not sent
    let r = t.on_barrier_ack(1).unwrap();
    assert_eq!(
        r.clearable,
        vec![
            BlockRange { start: 0, end: 1 },
            BlockRange { start: 2, end: 4 }
        ]
    );
    // A resync brought block 1 in sync: later acks may clear it again.
    t.clear_unsent(BlockRange { start: 0, end: 2 });
    t.try_enqueue(0, 4 * B, 4 * B, true, 0).unwrap();
    assert_eq!(
        t.on_barrier_ack(2).unwrap().clearable,
        vec![BlockRange { start: 0, end: 4 }]
    );
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        sector: u64,
        sectors: u64,
        fua: bool,
    },
    Flush,
    AckOldest,
    AckAll,
    Disconnect,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..128, 1u64..40, any::<bool>()).prop_map(|(sector, sectors, fua)| Op::Write { sector, sectors, fua: fua && sector % 3 == 0 }),
        2 => Just(Op::Flush),
        2 => Just(Op::AckOldest),
        1 => Just(Op::AckAll),
        1 => Just(Op::Disconnect),
    ]
}

/// One write as the model sees it: its global order, span, and fate.
#[derive(Debug, Clone)]
struct MWrite {
    offset: u64,
    len: u64,
    epoch: u64,
    session: u32,
    acked: bool,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// A random interleaving of writes, flushes, acks and disconnects never clears a dirty bit
    /// while the newest write touching that block is unacked (or was lost), unless a later
    /// acked write fully covered the block.
    #[test]
    fn never_clears_a_bit_of_an_unacked_write(ops in proptest::collection::vec(arb_op(), 1..80)) {
        let mut t = EpochTracker::new(small());
        let blocks = 32usize;
        let mut dirty = vec![false; blocks];
        let mut writes: Vec<MWrite> = Vec::new();
        let mut session = 0u32;
        let mut closed: Vec<u64> = Vec::new();
        for op in ops {
            match op {
                Op::Write { sector, sectors, fua } => {
                    let (offset, len) = (sector * 512, sectors * 512);
                    let r = touched(offset, len);
                    for b in r.start..r.end {
                        dirty[b as usize] = true;
                    }
                    match t.try_enqueue(offset, len, len, fua, 0) {
                        Ok(e) => {
                            writes.push(MWrite { offset, len, epoch: e.epoch, session, acked: false });
                            closed.extend(e.close_epoch);
                        }
                        // Refused: never sent, never acked.
                        Err(_) => writes.push(MWrite { offset, len, epoch: u64::MAX, session, acked: false }),
                    }
                }
                Op::Flush => closed.extend(t.close_epoch()),
                Op::AckOldest | Op::AckAll => {
                    if closed.is_empty() { continue; }
                    let upto = if matches!(op, Op::AckAll) { *closed.last().unwrap() } else { closed[0] };
                    let rel = t.on_barrier_ack(upto).unwrap();
                    closed.retain(|e| *e > upto);
                    for w in writes.iter_mut().filter(|w| w.session == session && w.epoch <= upto) {
                        w.acked = true;
                    }
                    for r in rel.clearable {
                        for b in r.start..r.end {
                            dirty[b as usize] = false;
                        }
                    }
                }
                Op::Disconnect => {
                    t.on_disconnect();
                    closed.clear();
                    session += 1;
                }
            }
            // Invariant: a block touched by an unacked (or lost) write stays dirty unless a
            // later acked write covers it fully.
            for (i, w) in writes.iter().enumerate() {
                if w.acked { continue; }
                let r = touched(w.offset, w.len);
                for b in r.start..r.end {
                    let superseded = writes[i + 1..].iter().any(|l| {
                        let f = fully_covered(l.offset, l.len);
                        l.acked && f.start <= b && b < f.end
                    });
                    prop_assert!(superseded || dirty[b as usize],
                        "block {} cleared while write {:?} is unacked", b, w);
                }
            }
        }
    }
}

#[test]
fn partial_edge_blocks_are_cleared_only_when_asked_and_never_under_a_pending_write() {
    // Default: an unaligned write's edge blocks stay dirty.
    let mut t = EpochTracker::new(small());
    t.try_enqueue(B + 1, 3000, 3000, true, 0).unwrap();
    assert_eq!(t.on_barrier_ack(1).unwrap().clearable, vec![]);
    // With partial clearing: the touched block is cleared, and survives a disconnect.
    let mut t = EpochTracker::new(small());
    t.set_clear_partial_blocks(true);
    t.on_disconnect();
    t.try_enqueue(B + 1, 3000, 3000, true, 0).unwrap();
    assert_eq!(
        t.on_barrier_ack(1).unwrap().clearable,
        vec![BlockRange { start: 1, end: 2 }]
    );
    // ... but not while a later unacked write touches the same block.
    t.try_enqueue(2 * B + 10, 10, 10, true, 0).unwrap();
    t.try_enqueue(2 * B + 100, 10, 10, false, 0).unwrap();
    assert_eq!(t.on_barrier_ack(2).unwrap().clearable, vec![]);
}

#[test]
fn writes_not_offered_while_ahead_block_clearing_until_forgotten() {
    let mut t = EpochTracker::new(small());
    t.try_enqueue(0, 4 * B, 4 * B, false, 0).unwrap();
    // Ahead: a later write to block 1 was only marked in the bitmap.
    t.mark_unsent_write(B, B);
    assert_eq!(t.close_epoch(), Some(1));
    assert_eq!(
        t.on_barrier_ack(1).unwrap().clearable,
        vec![
            BlockRange { start: 0, end: 1 },
            BlockRange { start: 2, end: 4 }
        ]
    );
    // After the bitmap went to the peer for a resync, acks clear block 1 again.
    t.forget_unsent();
    t.try_enqueue(B, B, B, true, 0).unwrap();
    assert_eq!(
        t.on_barrier_ack(2).unwrap().clearable,
        vec![BlockRange { start: 1, end: 2 }]
    );
}
