//! The shell's side of a step: hand the core an event with the node's facts ([`Ctx`]), then
//! carry out its actions in order on the real node (link, write pipeline, metadata, live
//! state, counters, logs). Nothing here awaits: disk operations become futures the session
//! loop polls, and their completions are the core's next events.

use super::*;
use crate::repl::core::{
    Counter, DiskOp, MetaChange, SessionEnd, StateChange, VolumeId, Write as CoreWrite,
};
use crate::repl::state::with_peer_ahead;

impl Session<'_> {
    /// One step of the core while the session runs; Err is why the session ends.
    pub(super) fn step(
        &mut self,
        f: impl FnOnce(&mut Core<AlignedBuf>, &Ctx) -> Vec<Action<AlignedBuf>>,
    ) -> Result<(), String> {
        let actions = self.ask(f);
        self.exec(actions, true)
    }

    /// One step after the session ended (draining received writes): a failure is logged by
    /// the caller, the peer is not told.
    pub(super) fn step_drain(
        &mut self,
        f: impl FnOnce(&mut Core<AlignedBuf>, &Ctx) -> Vec<Action<AlignedBuf>>,
    ) -> Result<(), String> {
        let actions = self.ask(f);
        self.exec(actions, false)
    }

    fn ask(
        &mut self,
        f: impl FnOnce(&mut Core<AlignedBuf>, &Ctx) -> Vec<Action<AlignedBuf>>,
    ) -> Vec<Action<AlignedBuf>> {
        let rep = self.rep;
        let link = self.link.clone();
        let group = rep.group_bitmaps();
        let group: Vec<&crate::volume::bitmap::DirtyBitmap> = group.iter().map(|b| &**b).collect();
        let ctx = Ctx {
            now_ms: self.now_ms(),
            role: rep.role(),
            bitmap: &rep.bitmap,
            group_bitmaps: &group,
            tracker: &link.tracker,
            resync_paused: rep.resync_is_paused(),
        };
        f(&mut self.core, &ctx)
    }

    fn exec(&mut self, actions: Vec<Action<AlignedBuf>>, live: bool) -> Result<(), String> {
        let rep = self.rep;
        for a in actions {
            match a {
                Action::Send(f) => {
                    self.link.push(&f);
                }
                Action::CloseEpoch => self.link.close_epoch(),
                Action::AnnounceVolume { vol, size_bytes } => {
                    self.link.announce_volume(vol.0, size_bytes);
                    crate::info_rl!(rep.state_rl, resource = %rep.name, volume = vol.0, size_bytes,
                        "volume added: announced to the peer at a barrier; full sync of the new volume");
                }
                Action::Disk { id, vol, op } => self.started.push(disk_op(rep, id, vol, op)),
                Action::PersistBitmapDetached => {
                    let r = rep.clone();
                    tokio::spawn(async move {
                        if let Err(e) = persist_bitmap(&r).await {
                            tracing::error!(resource = %r.name, "persisting the bitmap after the resync: {e}");
                        }
                    });
                }
                Action::Meta(m) => apply_meta(rep, m)?,
                Action::State(s) => apply_state(rep, s),
                Action::Count(c) => self.count(c),
                Action::RoomFreed => self.link.room.notify_waiters(),
                Action::PingAck(seq) => {
                    self.link.on_ping_ack(seq);
                }
                Action::Serve { offset, len } => {
                    if let Err(e) = self.serve(offset, len) {
                        return Err(self.protocol_error(e));
                    }
                }
                Action::StopServing => self.serve_tx = None,
                Action::VerifyProvide {
                    run,
                    id,
                    offset,
                    len,
                } => {
                    if let Err(e) = self.verify_provide(run, id, offset, len) {
                        return Err(self.protocol_error(e));
                    }
                }
                Action::VerifyRead { id, offset, len } => self.verify_read(id, offset, len),
                Action::Verify(e) => self.on_verify_event(e),
                Action::Info(what) => {
                    crate::info_rl!(rep.state_rl, resource = %rep.name, "{what}");
                }
                Action::Close(end) => return Err(self.ended(end, live)),
            }
        }
        Ok(())
    }

    fn count(&self, c: Counter) {
        let s = &self.rep.stats;
        match c {
            Counter::ReceivedBytes(n) => {
                // Not idle from the moment a write is received (online verify reads only
                // when idle).
                self.link.rx_idle.store(false, Ordering::Release);
                s.received_bytes.fetch_add(n, Ordering::Relaxed);
                s.last_received_unix_ms
                    .store(crate::repl::replicator::unix_ms(), Ordering::Relaxed);
            }
            Counter::ResyncReceivedBytes(n) => {
                s.resync_bytes_received.fetch_add(n, Ordering::Relaxed);
            }
            Counter::ResyncZeroBytes(n) => {
                s.resync_zero_bytes.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The reason text of an end, after its side effects (protocol errors are counted and
    /// told to the peer, refusals logged).
    fn ended(&self, end: SessionEnd, live: bool) -> String {
        let rep = self.rep;
        match end {
            SessionEnd::Protocol(e) if live => self.protocol_error(e),
            SessionEnd::PeerDisconnected(ref reason) => {
                crate::info_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(), "the peer disconnects: {reason}");
                end.to_string()
            }
            SessionEnd::Refused(r) => {
                tracing::error!(resource = %rep.name, "{r}");
                r.to_owned()
            }
            SessionEnd::NeedsAdjust(r) => {
                crate::warn_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(), "{r}");
                rep.update(|st| st.last_error = Some(r.clone()));
                r
            }
            other => other.to_string(),
        }
    }
}

/// Carry out a disk operation of the core on volume `vol`; it completes with its id.
fn disk_op(rep: &Arc<Replicator>, id: OpId, vol: VolumeId, op: DiskOp<AlignedBuf>) -> Applying {
    let rep = rep.clone();
    Box::pin(async move {
        // The core checked the volume of every frame against the resource's volumes.
        let v = match rep.vol(vol) {
            Ok(v) => v,
            Err(e) => return (id, Err(e.to_string())),
        };
        let r = match op {
            // Through the volume's write pipeline: a snapshot taken on this node keeps its
            // point in time while replicated and resync writes arrive.
            DiskOp::Write { offset, write } => {
                let w = match write {
                    CoreWrite::Data { data, fua } => crate::pipeline::Write::Data { data, fua },
                    CoreWrite::Trim { len, fua } => crate::pipeline::Write::Trim { len, fua },
                    CoreWrite::Zeroes { len, fua } => crate::pipeline::Write::Zeroes {
                        len,
                        may_trim: true,
                        fua,
                    },
                };
                v.pipe.apply(offset, w).await.map_err(|e| e.to_string())
            }
            DiskOp::Flush => v.disk.flush().await.map_err(|e| e.to_string()),
            DiskOp::PersistBitmap => v.persist_bitmap().await,
        };
        (id, r)
    })
}

fn apply_meta(rep: &Replicator, m: MetaChange) -> Result<(), String> {
    let r = match m {
        MetaChange::Inconsistent => {
            rep.update_meta(|sb| sb.disk_state = meta::DiskState::Inconsistent)
        }
        MetaChange::ConnectedInSync { peer_current } => rep.update_meta(|sb| {
            if sb.gen.current == peer_current && sb.gen.current != 0 {
                let mut g = gen_of(sb.gen);
                g.on_connected_in_sync();
                sb.gen = gen_to_meta(g);
            }
        }),
        MetaChange::ResyncFinishedSource => rep.update_meta(|sb| {
            let mut g = gen_of(sb.gen);
            g.on_resync_finished_as_source();
            sb.gen = gen_to_meta(g);
        }),
        MetaChange::ResyncFinishedTarget { source_current } => rep.update_meta(|sb| {
            let mut g = gen_of(sb.gen);
            if source_current != 0 {
                g.on_resync_finished_as_target(source_current);
            }
            sb.gen = gen_to_meta(g);
            sb.disk_state = meta::DiskState::UpToDate;
            sb.flags &= !meta::flags::CRASHED_PRIMARY;
        }),
    };
    r.map_err(|e| e.to_string())
}

fn apply_state(rep: &Replicator, s: StateChange) {
    match s {
        StateChange::Repl(r) => rep.update(|st| st.repl = r),
        StateChange::ResyncStarted { repl, total_bytes } => rep.update(|st| {
            st.repl = repl;
            st.resync_total_bytes = total_bytes;
            st.resync_volume_total_bytes =
                rep.vols().iter().map(|v| v.bitmap.dirty_bytes()).collect();
            st.resync_started = Some(Instant::now());
        }),
        StateChange::ResyncEnded { peer_up_to_date } => rep.update(|st| {
            st.repl = ReplState::Established;
            crate::repl::verify::settle(st);
            if peer_up_to_date {
                st.peer_disk = Some(drbd_compat::DiskState::UpToDate);
            }
            st.resync_started = None;
            st.resync_volume = None;
        }),
        StateChange::Peer { role, disk, ahead } => rep.update(|st| {
            st.peer_role = Some(role);
            st.peer_disk = Some(disk);
            st.repl = with_peer_ahead(st.repl, ahead);
            crate::repl::verify::settle(st);
        }),
        StateChange::SplitBrain { text } => {
            tracing::error!(resource = %rep.name, "{text}");
            rep.update(|st| {
                st.standalone = true;
                st.split_brain = Some(text.to_owned());
            });
        }
        StateChange::StandAlone => rep.update(|st| st.standalone = true),
        StateChange::VolumeSync(v) => rep.update(|st| st.resync_volume = Some(v.0)),
    }
}
