//! The RPO alarm of the protection plans (`[[plan]] rpo-target`), watched by the daemon that
//! holds a plan's resources as Primary: once a second, a resource of the plan that is Primary
//! here alarms when its replication lag exceeds the target or its link is not Connected (the
//! same rule as `drl dr status`). Each change of a plan's alarm is a `plan` event with
//! `rpo_alarm` true or false, the resource that raised it, its lag and connection.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::Node;
use crate::control::{Event, EventKind, ObjectKind};
use crate::limits::DR_RPO_CHECK_INTERVAL_MS;

/// Spawn one watcher per plan with an `rpo-target` and a resource on this node.
pub(super) fn spawn(
    node: &Arc<Node>,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: watch::Receiver<bool>,
) {
    for plan in &node.config.plans {
        let Some(target_ms) = plan.rpo_target_ms else {
            continue;
        };
        let mine = super::schedule::resources_here(node, plan);
        if mine.is_empty() {
            continue;
        }
        let (node, name, mut shutdown) = (node.clone(), plan.name.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut alarm = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(DR_RPO_CHECK_INTERVAL_MS)) => {}
                    _ = shutdown.changed() => return,
                }
                let worst = mine.iter().find_map(|r| {
                    let st = node.resource(r)?.status_json();
                    alarming(&st, target_ms).then(|| (r.clone(), st))
                });
                if worst.is_some() == alarm {
                    continue;
                }
                alarm = worst.is_some();
                let mut ev = Event::new(EventKind::Change, ObjectKind::Plan, &name)
                    .field("rpo_alarm", alarm)
                    .field("rpo_target_ms", target_ms)
                    .field("node", node.config.node.clone());
                if let Some((r, st)) = &worst {
                    ev = ev
                        .field("resource", r.as_str())
                        .field("lag_ms", st["lag_ms"].clone())
                        .field("connection", st["connection"].clone());
                    tracing::warn!(plan = %name, resource = %r, lag_ms = %st["lag_ms"], connection = %st["connection"], "RPO alarm: the plan's recovery point is older than its target");
                } else {
                    tracing::info!(plan = %name, "RPO alarm cleared");
                }
                node.events.publish(ev);
            }
        });
    }
}

/// A Primary whose lag exceeds the target, or whose link is down, alarms.
fn alarming(st: &Value, target_ms: u64) -> bool {
    st["role"] == "Primary"
        && (st["lag_ms"].as_u64().unwrap_or(0) > target_ms || st["connection"] != "Connected")
}

#[cfg(test)]
mod tests {
    use super::alarming;
    use serde_json::json;

    #[test]
    fn only_a_primary_behind_or_cut_off_alarms() {
        let st = |role, lag, conn| json!({"role": role, "lag_ms": lag, "connection": conn});
        assert!(!alarming(&st("Primary", 10, "Connected"), 30_000));
        assert!(alarming(&st("Primary", 30_001, "Connected"), 30_000));
        assert!(alarming(&st("Primary", 0, "Connecting"), 30_000));
        assert!(!alarming(&st("Secondary", 99_999, "StandAlone"), 30_000));
    }
}
