//! Resync progress on the event bus: while a replicated resource is SyncSource or SyncTarget,
//! one `progress peer-device` event with `done` (percent) every
//! [`RESYNC_PROGRESS_EVENT_MS`](crate::limits::RESYNC_PROGRESS_EVENT_MS), so `drl wait-sync`
//! and `drl events2` show a resync moving without polling `status`. The replicator publishes
//! the state changes themselves; only the percentage is sampled here.

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
        events.publish(ev);
    }
}
