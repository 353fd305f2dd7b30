//! The online-verify half of a session (see [`crate::repl::verify`] for the design): the
//! frames of this node's run and of the peer's, the comparer's hold, the VerifyT timeout.

use super::*;
use crate::limits::REPL_VERIFY_WINDOW_REQUESTS;
use crate::repl::verify::{self as v, VerifyProgress};
use crate::repl::wire::features;

/// Which run's progress a checked range counts in.
fn count_in(st: &mut crate::repl::replicator::State, mine: bool, len: u32, differing: u64) {
    let p = if mine {
        st.verify.as_mut()
    } else {
        st.verify_peer.as_mut()
    };
    if let Some(p) = p {
        p.count(len, differing);
    }
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
        let size = rep.cfg.size_bytes;
        match f {
            Frame::VerifyRequest { run, offset, len } => {
                // Only the node driving a run asks, for its own run: we provide for it.
                if run != VerifyRun::Sender {
                    return Err(
                        "VerifyRequest for this node's own run: only the node driving a run asks"
                            .into(),
                    );
                }
                v::check_range(offset, len, size)?;
                self.peer_run_frame();
                let tx = self.verify_serve_tx.get_or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(2 * REPL_VERIFY_WINDOW_REQUESTS);
                    tokio::spawn(v::answer_requests(rep.clone(), self.link.clone(), rx));
                    tx
                });
                tx.try_send((offset, len)).map_err(|_| {
                    format!(
                        "more than {} verify requests outstanding: the peer ignores the window",
                        2 * REPL_VERIFY_WINDOW_REQUESTS
                    )
                })
            }
            Frame::VerifyDigests {
                run,
                offset,
                len,
                digests,
            } => {
                v::check_range(offset, len, size)?;
                match run {
                    VerifyRun::Sender => self.peer_run_frame(),
                    VerifyRun::Receiver if rep.state().verify.is_none() => {
                        // An answer for a run of ours that already ended.
                        crate::warn_rl!(rep.rl, resource = %rep.name, offset, "VerifyDigests for no running verify of this node; ignored");
                        return Ok(());
                    }
                    VerifyRun::Receiver => {}
                }
                // Compared once every write received before it is on the disk.
                self.verify_hold = Some((run, offset, len, digests));
                Ok(())
            }
            Frame::VerifyResult {
                run,
                offset,
                len,
                differ,
            } => {
                v::check_range(offset, len, size)?;
                let mine = run == VerifyRun::Receiver;
                if mine && rep.state().verify.is_none() {
                    crate::warn_rl!(rep.rl, resource = %rep.name, offset, "VerifyResult for no running verify of this node; ignored");
                    return Ok(());
                }
                if !mine {
                    self.peer_run_frame();
                }
                let n = v::mark(rep, &self.link, offset, len, &differ);
                rep.update(|st| count_in(st, mine, len, n));
                if mine {
                    self.verify_to_source(offset, len, differ)?;
                }
                Ok(())
            }
            Frame::VerifyDone => {
                self.verify_serve_tx = None;
                let ended = rep.update_with(|st| {
                    let p = st.verify_peer.take();
                    v::settle(st);
                    p
                });
                if let Some(p) = ended {
                    tracing::info!(resource = %rep.name, peer = %rep.peer_node(),
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

    /// A frame of the peer's run: this node is (or becomes) its VerifyT.
    fn peer_run_frame(&mut self) {
        let rep = self.rep;
        let started = rep.update_with(|st| {
            let started = st.verify_peer.is_none();
            let p = st
                .verify_peer
                .get_or_insert_with(|| VerifyProgress::new("VerifyT", rep.cfg.size_bytes));
            p.last_frame = Instant::now();
            v::settle(st);
            started
        });
        if started {
            tracing::info!(resource = %rep.name, peer = %rep.peer_node(), "online verify started by the peer (VerifyT)");
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
            self.verify_serve_tx = None;
            tracing::warn!(resource = %rep.name, peer = %rep.peer_node(),
                "the peer's online verify sent nothing for {} s: ended here", crate::limits::REPL_VERIFY_PEER_IDLE_MS / 1000);
        }
    }

    /// The held VerifyDigests, once every write received before it is on the disk: read and
    /// compare here, tell the peer which blocks differ (it marks them if it is Primary), and
    /// pass the result to this node's run if it is one. Err: why the session ends (a local
    /// read error, or the peer overrunning the window).
    pub(super) async fn verify_compare_when_idle(&mut self) -> Result<(), String> {
        if self.verify_hold.is_none() || !self.rx.idle() || self.flushing > 0 {
            return Ok(());
        }
        let Some((run, offset, len, theirs)) = self.verify_hold.take() else {
            return Ok(());
        };
        let rep = self.rep;
        let bits = v::compare(rep, offset, len, &theirs).await?;
        let differ = Bytes::from(bits);
        let n = v::set_bits(&differ).count() as u64;
        let mine = run == VerifyRun::Receiver;
        rep.update(|st| count_in(st, mine, len, n));
        self.link.push(&Frame::VerifyResult {
            run: run.seen_from_peer(),
            offset,
            len,
            differ: differ.clone(),
        });
        if mine {
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
