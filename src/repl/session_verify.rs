//! The online-verify half of a session (see [`crate::repl::verify`] for the design): the
//! frames of this node's run and of the peer's, the comparer's hold, the VerifyT timeout.
//!
//! Every verify frame names its run twice: whose it is ([`VerifyRun`], relative to the
//! sender) and its number (chosen by its VerifyS). An answer whose run is not the one running
//! is late (its run ended): it is ignored, except that a difference it reports is still marked.

use super::*;
use crate::limits::REPL_VERIFY_WINDOW_REQUESTS;
use crate::repl::verify::{self as v, VerifyProgress};
use crate::repl::wire::features;

/// The running progress of run `id`: this node's own (`mine`) or the peer's.
fn progress(
    st: &mut crate::repl::replicator::State,
    mine: bool,
    id: u64,
) -> Option<&mut VerifyProgress> {
    let p = if mine {
        st.verify.as_mut()
    } else {
        st.verify_peer.as_mut()
    };
    p.filter(|p| p.id == id)
}

/// Count a checked range (`differing` blocks) in run `id`; false if that run is not running.
fn count(rep: &Replicator, mine: bool, id: u64, len: u32, differing: u64) -> bool {
    rep.update_with(|st| match progress(st, mine, id) {
        Some(p) => {
            p.count(len, differing);
            true
        }
        None => false,
    })
}

impl Session<'_> {
    pub(super) fn on_verify_frame(&mut self, f: Frame) -> Result<(), String> {
        let rep = self.rep;
        if rep.state().peer_features & features::VERIFY == 0 {
            return Err(format!(
                "{} frame, but online verify was not negotiated",
                f.frame_type().name()
            ));
        }
        match f {
            Frame::VerifyRequest {
                run,
                id,
                offset,
                len,
            } => {
                // Only the node driving a run asks, for its own run: we provide for it.
                if run != VerifyRun::Sender {
                    return Err(
                        "VerifyRequest for this node's own run: only the node driving a run asks"
                            .into(),
                    );
                }
                v::check_group_range(rep, offset, len)?;
                self.peer_run_frame(id);
                // One answering task for the session: answers leave in request order, across
                // runs too.
                let tx = self.verify_serve_tx.get_or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(2 * REPL_VERIFY_WINDOW_REQUESTS);
                    tokio::spawn(v::answer_requests(rep.clone(), self.link.clone(), rx));
                    tx
                });
                tx.try_send((id, offset, len)).map_err(|_| {
                    format!(
                        "more than {} verify requests outstanding: the peer ignores the window",
                        2 * REPL_VERIFY_WINDOW_REQUESTS
                    )
                })
            }
            Frame::VerifyDigests {
                run,
                id,
                offset,
                len,
                ..
            } => {
                v::check_group_range(rep, offset, len)?;
                match run {
                    VerifyRun::Sender => self.peer_run_frame(id),
                    VerifyRun::Receiver => {
                        if progress(&mut rep.state(), true, id).is_none() {
                            crate::warn_rl!(rep.rl, resource = %rep.name, offset, "VerifyDigests of an ended verify run of this node; ignored");
                            return Ok(());
                        }
                    }
                }
                // Compared once every write received before it is on the disk.
                self.verify_hold = Some(f);
                Ok(())
            }
            Frame::VerifyResult {
                run,
                id,
                offset,
                len,
                differ,
            } => {
                v::check_group_range(rep, offset, len)?;
                // A difference is marked even if its run has ended: it is real.
                let n = v::mark(rep, &self.link, offset, len, &differ);
                let mine = run == VerifyRun::Receiver;
                if !mine {
                    self.peer_run_frame(id);
                }
                let running = count(rep, mine, id, len, n);
                if mine && running {
                    self.verify_to_source(offset, len, differ)?;
                }
                Ok(())
            }
            Frame::VerifyDone { id } => {
                let ended = rep.update_with(|st| {
                    let p = st.verify_peer.take_if(|p| p.id == id);
                    v::settle(st);
                    p
                });
                if let Some(p) = ended {
                    crate::info_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(),
                        checked_bytes = p.checked_bytes, differing_blocks = p.differing_blocks,
                        "the peer's online verify ended");
                }
                Ok(())
            }
            other => Err(format!(
                "{} is not a verify frame",
                other.frame_type().name()
            )),
        }
    }

    /// A frame of the peer's run `id`: this node is (or becomes) its VerifyT.
    fn peer_run_frame(&mut self, id: u64) {
        let rep = self.rep;
        let started = rep.update_with(|st| {
            let started = st.verify_peer.as_ref().is_none_or(|p| p.id != id);
            if started {
                st.verify_peer = Some(VerifyProgress::new("VerifyT", id, rep.total_bytes()));
            }
            if let Some(p) = st.verify_peer.as_mut() {
                p.last_frame = Instant::now();
            }
            v::settle(st);
            started
        });
        if started {
            crate::info_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(), "online verify started by the peer (VerifyT)");
        }
    }

    /// The peer's run went silent (no VerifyDone): end it here.
    pub(super) fn verify_peer_idle(&mut self) {
        let rep = self.rep;
        let ended = rep.update_with(|st| {
            if !st.verify_peer.as_ref().is_some_and(VerifyProgress::is_idle) {
                return false;
            }
            st.verify_peer = None;
            v::settle(st);
            true
        });
        if ended {
            crate::warn_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(),
                "the peer's online verify sent nothing for {} s: ended here", crate::limits::REPL_VERIFY_PEER_IDLE_MS / 1000);
        }
    }

    /// The held VerifyDigests, once every write received before it is on the disk: read and
    /// compare here, tell the peer which blocks differ (it marks them if it is Primary), and
    /// pass the result to this node's run if it is one. Err: why the session ends (a local
    /// read error, or the peer overrunning the window).
    pub(super) async fn verify_compare_when_idle(&mut self) -> Result<(), String> {
        if self.verify_hold.is_none() || !self.core.idle() {
            return Ok(());
        }
        let Some(Frame::VerifyDigests {
            run,
            id,
            offset,
            len,
            digests: theirs,
        }) = self.verify_hold.take()
        else {
            return Ok(());
        };
        let rep = self.rep;
        let bits = v::compare(rep, offset, len, &theirs).await?;
        let differ = Bytes::from(bits);
        let n = v::set_bits(&differ).count() as u64;
        let mine = run == VerifyRun::Receiver;
        let running = count(rep, mine, id, len, n);
        self.link.push(&Frame::VerifyResult {
            run: run.seen_from_peer(),
            id,
            offset,
            len,
            differ: differ.clone(),
        });
        if mine && running {
            if let Err(e) = self.verify_to_source(offset, len, differ) {
                return Err(self.protocol_error(e));
            }
        }
        Ok(())
    }

    /// Pass a range's result to this node's running verify.
    fn verify_to_source(&mut self, offset: u64, len: u32, differ: Bytes) -> Result<(), String> {
        let Some(tx) = self.rep.state().verify_tx.clone() else {
            return Ok(());
        };
        match tx.try_send((offset, len, differ)) {
            // The run already ended (it stopped on an error of its own).
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(format!(
                "more than {} verify results outstanding: the peer answers what was not asked",
                2 * REPL_VERIFY_WINDOW_REQUESTS
            )),
        }
    }
}
