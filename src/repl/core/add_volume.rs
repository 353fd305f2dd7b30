//! A volume added to a running consistency group (issue 15, `drl adjust`), in the core.
//!
//! The Primary's shell hands the new volume in ([`Core::add_volume`]) once its parts exist
//! locally. The core asks the shell to close the open epoch and queue a `VolumeAdd` frame
//! under the tracker's lock ([`Action::AnnounceVolume`]: the barrier; a write of the new
//! volume is shipped only after it, one of the old volumes only in its own epoch order), and
//! starts a resync of the new volume inside the session: every block of it is out of sync,
//! this node is SyncSource. Volume 0 and the others keep replicating; their bitmaps are not
//! sent, so nothing of them resyncs.
//!
//! The Secondary applies the frame in stream order ([`Core::volume_added`]): a volume it has
//! added itself (`drl adjust` ran here first) joins the core and becomes SyncTarget (the
//! resource is Inconsistent until the volume is synced, so a crash mid-way resyncs it, and
//! a promotion refuses it); a volume it lacks ends the session with the fix in the reason
//! (`drl adjust` on this node), told to the peer, and the next handshake compares the volume
//! sets: it refuses until both nodes hold the volume, then the Primary's bitmap (every block
//! of the new volume, and what was written meanwhile) is resynced.

use super::*;

/// The reason a Secondary without the new volume gives the Primary.
fn lacks_volume(vol: u16) -> String {
    format!(
        "the peer lacks volume {vol}, which this node added at run time: run `drl adjust` \
         for this resource on the peer; it then connects and syncs the volume"
    )
}

impl<B: Payload> Core<B> {
    /// The number of volumes this session replicates (those of the handshake, and those
    /// added since).
    pub fn volume_count(&self) -> usize {
        self.volumes.len()
    }

    /// Whether a volume can be added now: no resync and no online verify runs in this session
    /// (the shell tries again at the next tick), and it has not ended.
    pub fn can_add_volume(&self) -> bool {
        !self.ended
            && self.sync.is_none()
            && self.verify_running().is_none()
            && self.verify_peer_running().is_none()
    }

    /// This node (Primary) added volume `vol` of `size_bytes` (its bitmap is in
    /// [`Ctx::group_bitmaps`]): announce it at a barrier and resync all of it to the peer.
    /// Nothing happens unless [`Self::can_add_volume`].
    pub fn add_volume(&mut self, ctx: &Ctx, vol: VolumeId, size_bytes: u64) -> Vec<Action<B>> {
        let mut out = Vec::new();
        if !self.can_add_volume() || ctx.role != Role::Primary {
            return out;
        }
        if usize::from(vol.0) != self.volumes.len() {
            out.push(Action::Close(SessionEnd::Local(format!(
                "adding volume {}, but the session has {} volume(s): volumes are added in order",
                vol.0,
                self.volumes.len()
            ))));
            return out;
        }
        let bitmap = match self.new_volume_bitmap(ctx, vol, size_bytes) {
            Ok(b) => b,
            Err(e) => {
                out.push(Action::Close(SessionEnd::Local(e)));
                return out;
            }
        };
        bitmap.set_all();
        out.push(Action::AnnounceVolume { vol, size_bytes });
        out.push(Action::State(StateChange::VolumeSync(vol)));
        self.volumes.push(size_bytes);
        self.adding = Some(vol);
        self.sync = Some(SyncRole::Source);
        out.push(Action::State(StateChange::ResyncStarted {
            repl: ReplState::SyncSource,
            total_bytes: bitmap.dirty_bytes(),
        }));
        out.push(Action::Info(
            "volume added at a barrier: full sync of the new volume (SyncSource)",
        ));
        out
    }

    /// The peer (Primary) announced volume `vol` (the `VolumeAdd` frame, in stream order).
    pub(super) fn volume_added(
        &mut self,
        ctx: &Ctx,
        vol: u16,
        size_bytes: u64,
        out: &mut Vec<Action<B>>,
    ) -> Result<(), SessionEnd> {
        let proto = SessionEnd::Protocol;
        if ctx.role == Role::Primary {
            return Err(proto("the peer announced a new volume to a Primary".into()));
        }
        if usize::from(vol) != self.volumes.len() {
            return Err(proto(format!(
                "the peer added volume {vol}, but the session has {} volume(s): volumes are \
                 added in order",
                self.volumes.len()
            )));
        }
        if self.sync.is_some() {
            return Err(proto("the peer added a volume while a resync runs".into()));
        }
        let v = VolumeId(vol);
        let bitmap = match self.new_volume_bitmap(ctx, v, size_bytes) {
            Ok(b) => b,
            Err(why) => {
                out.push(Action::Send(Frame::Disconnect {
                    reason: lacks_volume(vol),
                }));
                return Err(SessionEnd::NeedsAdjust(format!(
                    "the Primary added volume {vol} ({size_bytes} bytes) at run time: {why}; \
                     run `drl adjust` for this resource on this node, then it connects and \
                     syncs the volume"
                )));
            }
        };
        bitmap.set_all();
        self.volumes.push(size_bytes);
        self.adding = Some(v);
        self.sync = Some(SyncRole::Target);
        out.push(Action::Meta(MetaChange::Inconsistent));
        out.push(Action::State(StateChange::VolumeSync(v)));
        out.push(Action::Info(
            "the peer added a volume at a barrier: full sync of the new volume (SyncTarget)",
        ));
        // As after a bitmap exchange: every volume's bitmap on disk before the first request.
        self.disk_all(Pending::TargetStart, || DiskOp::PersistBitmap, out);
        Ok(())
    }

    /// The peer disconnected: while a volume was being added, its reason is the admin's
    /// business (it names the fix), not a passing disconnect.
    pub(super) fn peer_disconnected(&self, reason: String) -> SessionEnd {
        match self.adding {
            Some(v) => SessionEnd::NeedsAdjust(format!(
                "the peer disconnected while volume {} was being added: {reason}",
                v.0
            )),
            None => SessionEnd::PeerDisconnected(reason),
        }
    }

    /// The new volume's bitmap on this node, checked against the announced size.
    fn new_volume_bitmap<'x>(
        &self,
        ctx: &'x Ctx,
        vol: VolumeId,
        size_bytes: u64,
    ) -> Result<&'x DirtyBitmap, String> {
        let Some(b) = ctx.bitmap_of(vol) else {
            return Err(format!("this node has no volume {}", vol.0));
        };
        if b.size_bytes() != size_bytes {
            return Err(format!(
                "volume {} is {} bytes on this node, {size_bytes} on the Primary (the configs \
                 differ)",
                vol.0,
                b.size_bytes()
            ));
        }
        Ok(b)
    }
}
