//! The receiving half of a session (this node is Secondary): received writes go through the
//! [`EpochReceiver`] to the disk in epoch order; a barrier is acked only after the flush.

use super::*;

impl Session<'_> {
    pub(super) fn spawn_actions(&mut self, actions: Vec<RxAction<Apply>>) {
        for a in actions {
            let disk = self.rep.disk.clone();
            let done = self.done_tx.clone();
            let link = self.link.clone();
            match a {
                RxAction::Write { seq, write } => {
                    tokio::spawn(async move {
                        let r = match write {
                            Apply::Data { offset, data, fua } => {
                                disk.write(offset, AlignedBuf::from_slice(&data), fua).await
                            }
                            Apply::Trim { offset, len, fua } => {
                                let r = disk.trim(offset, len).await;
                                if r.is_ok() && fua {
                                    disk.flush().await
                                } else {
                                    r
                                }
                            }
                            Apply::Zeroes { offset, len, fua } => {
                                disk.write_zeroes(offset, len, true, fua).await
                            }
                        };
                        let _ = done.send(match r {
                            Ok(()) => Done::Rx(RxEvent::WriteDone { seq }),
                            Err(e) => Done::Failed(format!("applying a replicated write: {e}")),
                        });
                    });
                }
                RxAction::FlushThenAck(epoch) => {
                    self.flushing += 1;
                    tokio::spawn(async move {
                        match disk.flush().await {
                            Ok(()) => {
                                link.push(&Frame::BarrierAck { epoch });
                                let _ = done.send(Done::Rx(RxEvent::FlushDone { epoch }));
                            }
                            Err(e) => {
                                let _ = done
                                    .send(Done::Failed(format!("flushing replicated writes: {e}")));
                            }
                        }
                    });
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
        if rep.meta.superblock().role == meta::Role::Primary {
            return Err("the peer sent application writes to a Primary".into());
        }
        crate::volume::check_range(offset, len, rep.cfg.size_bytes).map_err(|e| e.to_string())?;
        rep.stats.received_bytes.fetch_add(len, Ordering::Relaxed);
        self.feed(RxEvent::Write {
            seq,
            epoch,
            offset,
            len,
            write: w,
        })
    }

    /// The connection is gone: apply everything already received, in the receiver's order
    /// (held writes and later epochs go out as earlier ones complete and flush), so the disk
    /// ends with a prefix of the Primary's write stream, never a write without its
    /// predecessors. Bounded by `REPL_PEER_TIMEOUT_MS` per completion.
    pub(super) async fn drain(&mut self, done_rx: &mut mpsc::UnboundedReceiver<Done>) {
        while self.rx.inflight() > 0 || self.flushing > 0 {
            match tokio::time::timeout(Duration::from_millis(REPL_PEER_TIMEOUT_MS), done_rx.recv())
                .await
            {
                Ok(Some(Done::Rx(ev))) => {
                    if let Err(e) = self.feed(ev) {
                        tracing::error!(resource = %self.rep.name, "applying received writes after disconnect: {e}");
                        return;
                    }
                }
                Ok(Some(Done::Failed(e))) => {
                    tracing::error!(resource = %self.rep.name, "applying received writes after disconnect: {e}");
                    return;
                }
                Ok(None) | Err(_) => return,
            }
        }
    }
}
