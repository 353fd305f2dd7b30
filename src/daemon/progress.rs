//! Resync progress on the event bus: while a replicated resource is SyncSource or SyncTarget,
//! one `progress peer-device` event with `done` (percent) every
//! [`RESYNC_PROGRESS_EVENT_MS`](crate::limits::RESYNC_PROGRESS_EVENT_MS), so `drl wait-sync`
//! and `drl events2` show a resync moving without polling `status`. The replicator publishes
//! the state changes themselves; only the percentage is sampled here. A consistency group
//! publishes one per volume (`volume`, that volume's `done` and `out_of_sync_bytes`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::control::{Event, EventBus, EventKind, ObjectKind};
use crate::limits::RESYNC_PROGRESS_EVENT_MS;
use crate::repl::replicator::Replicator;

/// Publish resync progress of `rep` until `shutdown` turns true.
pub async fn run(rep: Arc<Replicator>, events: EventBus, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(RESYNC_PROGRESS_EVENT_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            _ = tick.tick() => {}
        }
        if events.subscriber_count() == 0 {
            continue;
        }
        let st = rep.status_fields();
        let Some(done) = st["resync_percent"].as_f64() else {
            continue;
        };
        let mut ev = Event::new(EventKind::Progress, ObjectKind::PeerDevice, rep.name())
            .field("peer", rep.peer_node())
            .field("done", done);
        if let Some(r) = st["replication"].as_str() {
            ev = ev.field("replication", r);
        }
        if let Value::Number(eta) = &st["resync_eta_s"] {
            ev = ev.field("eta_s", Value::Number(eta.clone()));
        }
        // A group's volumes each report their own part of the resync.
        let per_volume = rep.volume_resync_percent();
        rep.publish_per_volume(ev, |v, e| e.field("done", per_volume[v]));
    }
}
