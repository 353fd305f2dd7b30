//! The receiving half of a session (this node is Secondary): received writes go through the
//! [`EpochReceiver`] to the disk in epoch order; a barrier is acked only after the flush.

use futures::stream::{FuturesUnordered, StreamExt};

use super::*;
use crate::pipeline::Write;
use crate::volume::disk::Disk;

impl Session<'_> {
    /// Queue the receiver's actions; the session loop polls them ([`next_applied`]).
    pub(super) fn spawn_actions(&mut self, actions: Vec<RxAction<Apply>>) {
        for a in actions {
            let disk = self.rep.disk.clone();
            let pipe = self.rep.pipe.clone();
            match a {
                RxAction::Write { seq, write } => self.started.push(Box::pin(async move {
                    // Through the volume's write pipeline: a snapshot taken on this node keeps
                    // its point in time while replicated writes arrive.
                    let (offset, w) = match write {
                        Apply::Data { offset, data, fua } => (offset, Write::Data { data, fua }),
                        Apply::Trim(w) => (
                            w.offset,
                            Write::Trim {
                                len: w.len,
                                fua: w.fua,
                            },
                        ),
                        Apply::Zeroes(w) => (
                            w.offset,
                            Write::Zeroes {
                                len: w.len,
                                may_trim: true,
                                fua: w.fua,
                            },
                        ),
                    };
                    let r = pipe.apply(offset, w).await;
                    match r {
                        Ok(()) => Done::Rx(RxEvent::WriteDone { seq }),
                        Err(e) => Done::Failed(format!("applying a replicated write: {e}")),
                    }
                })),
                RxAction::FlushThenAck(epoch) => {
                    self.flushing += 1;
                    let link = self.link.clone();
                    self.started.push(Box::pin(async move {
                        match disk.flush().await {
                            Ok(()) => {
                                link.push(&Frame::BarrierAck { epoch });
                                Done::Rx(RxEvent::FlushDone { epoch })
                            }
                            Err(e) => Done::Failed(format!("flushing replicated writes: {e}")),
                        }
                    }))
                }
            }
        }
    }

    pub(super) fn feed(&mut self, ev: RxEvent<Apply>) -> Result<(), String> {
        if matches!(ev, RxEvent::FlushDone { .. }) {
            self.flushing = self.flushing.saturating_sub(1);
        }
        let actions = self.rx.handle(ev).map_err(|e| e.to_string())?;
        self.spawn_actions(actions);
        Ok(())
    }

    pub(super) fn receive_write(
        &mut self,
        seq: u64,
        epoch: u64,
        offset: u64,
        len: u64,
        w: Apply,
    ) -> Result<(), String> {
        let rep = self.rep;
        if rep.meta.role() == meta::Role::Primary {
            return Err("the peer sent application writes to a Primary".into());
        }
        crate::volume::check_range(offset, len, rep.cfg.size_bytes).map_err(|e| e.to_string())?;
        // Not idle from the moment a write is received (online verify reads only when idle).
        self.link.rx_idle.store(false, Ordering::Release);
        rep.stats.received_bytes.fetch_add(len, Ordering::Relaxed);
        rep.stats
            .last_received_unix_ms
            .store(crate::repl::replicator::unix_ms(), Ordering::Relaxed);
        self.feed(RxEvent::Write {
            seq,
            epoch,
            offset,
            len,
            write: w,
        })
    }

    /// A received Trim or Zeroes.
    pub(super) fn receive_range(&mut self, w: RangeWrite, apply: Apply) -> Result<(), String> {
        self.receive_write(w.seq, w.epoch, w.offset, u64::from(w.len), apply)
    }

    /// A write, flush or resync answer completed. `live`: the session runs (after it ended,
    /// in [`Self::drain`], completions only release what follows them; a resync that finishes
    /// then is not declared: the peer cannot be told, the next connect sees an empty bitmap).
    /// Err is why the session ends.
    pub(super) fn on_done(&mut self, d: Done, live: bool) -> Result<(), String> {
        match d {
            Done::Rx(ev) => self
                .feed(ev)
                .map_err(|e| if live { self.protocol_error(e) } else { e }),
            Done::Resynced {
                id,
                offset,
                len,
                zeroes,
            } => {
                self.resynced(id, offset, len, zeroes)?;
                if live {
                    self.target_progress()?;
                }
                Ok(())
            }
            Done::ResyncFlushed { source_current } if live => self.resync_finished(source_current),
            Done::ResyncFlushed { .. } => Ok(()),
            Done::Failed(e) => Err(e),
        }
    }

    /// The connection is gone: apply everything already received, in the receiver's order
    /// (held writes and later epochs go out as earlier ones complete and flush), so the disk
    /// ends with a prefix of the Primary's write stream, never a write without its
    /// predecessors. Bounded by `REPL_PEER_TIMEOUT_MS` per completion.
    pub(super) async fn drain(&mut self, applying: &mut FuturesUnordered<Applying>) {
        let rep = self.rep;
        while self.rx.inflight() > 0 || self.flushing > 0 {
            applying.extend(self.started.drain(..));
            let next = next_applied(applying, &rep.disk);
            match tokio::time::timeout(Duration::from_millis(REPL_PEER_TIMEOUT_MS), next).await {
                Ok(Some(d)) => {
                    if let Err(e) = self.on_done(d, false) {
                        tracing::error!(resource = %rep.name, "applying received writes after disconnect: {e}");
                        return;
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
    }
}

/// The next completion among the writes and flushes being applied. The engine is plugged
/// while they are polled, so the writes the receiver released together (an epoch's worth
/// after its predecessor's flush, or what one socket read brought) reach the kernel with one
/// `io_uring_enter` (one doorbell for the device) instead of one each; and a completion
/// wakes this task directly, not a task per write that reports through a channel.
pub(super) async fn next_applied(
    applying: &mut FuturesUnordered<Applying>,
    disk: &Disk,
) -> Option<Done> {
    std::future::poll_fn(|cx| {
        let _plug = disk.engine().plug();
        applying.poll_next_unpin(cx)
    })
    .await
}
