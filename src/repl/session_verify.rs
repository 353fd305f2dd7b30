//! The online-verify half of the session shell: what the core's verify actions need done
//! (see [`crate::repl::core`] `verify.rs` for the protocol, [`crate::repl::verify`] for the
//! design): providing digests on the answering task, the comparer's read as a future the
//! loop polls, and the status and log lines of the core's [`VerifyEvent`]s.

use super::*;
use crate::limits::REPL_VERIFY_WINDOW_REQUESTS;
use crate::repl::core::VerifyEvent;
use crate::repl::verify::{self as v, VerifyProgress};

/// The comparer's read of a held range: its digests, as a completion of the loop.
pub(super) type VerifyReading = std::pin::Pin<
    Box<dyn std::future::Future<Output = (OpId, Result<Vec<u8>, String>)> + Send + 'static>,
>;

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

impl Session<'_> {
    /// Hand a range to the answering task (one per session, both runs: answers leave in
    /// order). Err: the peer ignores the window.
    pub(super) fn verify_provide(
        &mut self,
        run: VerifyRun,
        id: u64,
        offset: u64,
        len: u32,
    ) -> Result<(), String> {
        let rep = self.rep;
        let tx = self.verify_serve_tx.get_or_insert_with(|| {
            // The peer's window and this node's.
            let (tx, rx) = mpsc::channel(2 * REPL_VERIFY_WINDOW_REQUESTS);
            tokio::spawn(v::answer(
                rep.clone(),
                self.link.clone(),
                rx,
                self.verify_failed_tx.clone(),
            ));
            tx
        });
        tx.try_send((run, id, offset, len)).map_err(|_| {
            format!(
                "more than {} verify requests outstanding: the peer ignores the window",
                2 * REPL_VERIFY_WINDOW_REQUESTS
            )
        })
    }

    /// The comparer's read (the core holds the digests until every earlier write is on the
    /// disk); it completes in the loop ([`Core::on_verify_read`]).
    pub(super) fn verify_read(&mut self, id: OpId, offset: u64, len: u32) {
        let rep = self.rep.clone();
        self.verify_reads.push(Box::pin(async move {
            (id, v::read_digests(&rep, offset, len).await)
        }));
    }

    pub(super) fn on_verify_event(&mut self, e: VerifyEvent) {
        let rep = self.rep;
        match e {
            VerifyEvent::Checked {
                mine,
                id,
                len,
                differing,
            } => rep.update(|st| {
                if let Some(p) = progress(st, mine, id) {
                    p.count(len, differing);
                }
            }),
            VerifyEvent::Marked {
                offset,
                len,
                blocks,
            } => {
                crate::warn_rl!(rep.rl, resource = %rep.name, peer = %rep.peer_node(), offset, len,
                    blocks, "online verify: blocks differ from the peer; marked out of sync");
            }
            VerifyEvent::PeerStarted { id } => {
                rep.update(|st| {
                    st.verify_peer = Some(VerifyProgress::new("VerifyT", id, rep.total_bytes()));
                    v::settle(st);
                });
                crate::info_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(), "online verify started by the peer (VerifyT)");
            }
            VerifyEvent::PeerEnded { id, idle } => {
                let ended = rep.update_with(|st| {
                    let p = st.verify_peer.take_if(|p| p.id == id);
                    v::settle(st);
                    p
                });
                match ended {
                    Some(_) if idle => {
                        crate::warn_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(),
                            "the peer's online verify sent nothing for {} s: ended here", crate::limits::REPL_VERIFY_PEER_IDLE_MS / 1000);
                    }
                    Some(p) => {
                        crate::info_rl!(rep.state_rl, resource = %rep.name, peer = %rep.peer_node(),
                            checked_bytes = p.checked_bytes, differing_blocks = p.differing_blocks,
                            "the peer's online verify ended");
                    }
                    None => {}
                }
            }
            VerifyEvent::Finished(end) => v::report(rep, end),
            VerifyEvent::Late { offset } => {
                crate::warn_rl!(rep.rl, resource = %rep.name, offset, "VerifyDigests of an ended verify run of this node; ignored");
            }
        }
    }

    /// This node's run stops when replication leaves VerifyS (pull-ahead): checked every
    /// tick, as the walk checked before every request.
    pub(super) fn verify_check_state(&mut self) -> Result<(), String> {
        if self.core.verify_running().is_none() {
            return Ok(());
        }
        let repl = self.rep.state().repl;
        if repl == ReplState::VerifyS {
            return Ok(());
        }
        self.step(|c, ctx| c.verify_stop(ctx, format!("replication went {repl}")))
    }
}
