//! The disk half of the session shell: the core's disk operations run as futures the session
//! loop polls (never awaited inside a step), and after the end the received writes are
//! applied to the disk in epoch order ([`Session::drain`]).

use futures::stream::{FuturesUnordered, StreamExt};

use super::*;
use crate::volume::disk::Disk;

impl Session<'_> {
    /// The connection is gone: apply everything already received, in the receiver's order
    /// (held writes and later epochs go out as earlier ones complete and flush), so the disk
    /// ends with a prefix of the Primary's write stream, never a write without its
    /// predecessors. Bounded by `REPL_PEER_TIMEOUT_MS` per completion.
    pub(super) async fn drain(&mut self, applying: &mut FuturesUnordered<Applying>) {
        let rep = self.rep;
        self.core.end();
        while self.core.applying() {
            applying.extend(self.started.drain(..));
            let next = next_applied(applying, &rep.disk);
            match tokio::time::timeout(Duration::from_millis(REPL_PEER_TIMEOUT_MS), next).await {
                Ok(Some((id, r))) => {
                    if let Err(e) = self.step_drain(|c, ctx| c.on_disk_done(ctx, id, r)) {
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
) -> Option<(OpId, Result<(), String>)> {
    std::future::poll_fn(|cx| {
        let _plug = disk.engine().plug();
        applying.poll_next_unpin(cx)
    })
    .await
}
