//! Automatic failover (`[[plan]] failover = "automatic"`): the daemon of the backup-site node
//! that a plan recovers on (the node of the plan's first resource at this site) recovers the
//! plan, without an admin, once site-failure detection moved the leases here.
//!
//! The task is armed by a `lease takeover` event of a resource of the plan on this node (the
//! takeover rule: the old holder's site suspected, its lease expired in etcd, this disk
//! UpToDate), or at start by an unfinished recovery in the plan's journal (a restart
//! mid-recovery resumes). Armed, it waits on `Scope::holds()` of the plan's resources on this
//! node until all are held, then runs the orchestrator's own recovery
//! ([`crate::orchestrator::recover::Recovery`], the code path of `drl dr recover`, journaled
//! and resumable); its check step asks every member's daemon whether it holds its lease. A
//! failed run is an event and is resumed from the journal after `DR_AUTO_FAILOVER_RETRY_MS`
//! (Cinder or Heat down, a lease of another node not taken over yet). Nothing here runs
//! without `[detect]`, for manual plans, or on a node that is not the plan's recovery node.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Node;
use crate::config::plan::{Failover, PlanConfig};
use crate::control::{Event, EventKind, ObjectKind, Received};
use crate::limits::DR_AUTO_FAILOVER_RETRY_MS;
use crate::orchestrator::journal::{self, Journal};
use crate::orchestrator::recover::{RecoverOptions, Recovery};

/// Spawn one task per automatic plan that recovers on this node.
pub(super) fn spawn(
    node: &Arc<Node>,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(detect) = node.detect.clone() else {
        return;
    };
    for plan in &node.config.plans {
        if plan.failover != Failover::Automatic {
            continue;
        }
        let members = match crate::orchestrator::daemons::members(&node.config, plan) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(plan = %plan.name, "automatic failover off for this plan: {e}");
                continue;
            }
        };
        if members.first().map(|m| m.node.as_str()) != Some(node.config.node.as_str()) {
            continue; // another node of this site recovers it (or the plan is not at this site)
        }
        let holds: Vec<(String, watch::Receiver<bool>)> = members
            .iter()
            .filter(|m| m.node == node.config.node)
            .filter_map(|m| Some((m.resource.clone(), detect.scope(&m.resource)?.holds())))
            .collect();
        tracing::info!(plan = %plan.name, resources = ?holds.iter().map(|h| &h.0).collect::<Vec<_>>(), "automatic failover armed on lease takeover");
        tasks.spawn(run(node.clone(), plan.clone(), holds, shutdown.clone()));
    }
}

fn event(node: &Node, plan: &str, state: &str) -> Event {
    Event::new(EventKind::Change, ObjectKind::Plan, plan)
        .field("state", state)
        .field("node", node.config.node.clone())
        .field("automatic", true)
}

/// An unfinished recovery of `plan` in its journal (resume it).
fn unfinished(node: &Node, plan: &str) -> bool {
    let path = Journal::path_for(&node.config.dr.state_dir, plan);
    let Ok(recs) = Journal::read(&path) else {
        return false;
    };
    recs.iter().any(|r| r.op == "recover")
        && !recs.iter().any(|r| r.op == "failback")
        && journal::done_data(&recs, "recover", "stack").is_none()
}

async fn run(
    node: Arc<Node>,
    plan: PlanConfig,
    mut holds: Vec<(String, watch::Receiver<bool>)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = node.events.subscribe();
    let mut armed = unfinished(&node, &plan.name);
    if armed {
        tracing::info!(plan = %plan.name, "an unfinished recovery in the journal: resuming it once the leases are held here");
    }
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let all_held = holds.iter().all(|(_, rx)| *rx.borrow());
        let due = retry_at.is_none_or(|t| tokio::time::Instant::now() >= t);
        if armed && all_held && due {
            retry_at = None;
            match recover(&node, &plan).await {
                Ok(()) => armed = false,
                Err(()) => {
                    retry_at = Some(
                        tokio::time::Instant::now()
                            + Duration::from_millis(DR_AUTO_FAILOVER_RETRY_MS),
                    )
                }
            }
            continue;
        }
        let retry = async {
            match retry_at {
                Some(t) if armed => tokio::time::sleep_until(t).await,
                _ => std::future::pending().await,
            }
        };
        let any_hold_changed = async {
            if holds.is_empty() {
                return std::future::pending().await;
            }
            let futs = holds
                .iter_mut()
                .map(|(_, rx)| Box::pin(rx.changed()))
                .collect::<Vec<_>>();
            let _ = futures::future::select_all(futs).await;
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = retry => {}
            _ = any_hold_changed => {}
            ev = events.recv() => match ev {
                None => return,
                Some(Received::Lost(_)) => armed = armed || unfinished(&node, &plan.name),
                Some(Received::Event(e)) => {
                    let takeover = e.object == ObjectKind::Lease
                        && e.fields.get("action").and_then(|v| v.as_str()) == Some("takeover")
                        && plan.volumes.iter().any(|v| v.resource == e.name);
                    if takeover && !armed {
                        tracing::warn!(plan = %plan.name, resource = %e.name, "lease taken over from the old primary: automatic failover of the plan");
                        node.events.publish(event(&node, &plan.name, "failover-armed").field("resource", e.name.clone()));
                        armed = true;
                    }
                }
            },
        }
    }
}

/// One run (or resume) of the recovery; its progress and result as `plan` events.
async fn recover(node: &Node, plan: &PlanConfig) -> Result<(), ()> {
    node.events.publish(event(node, &plan.name, "failing-over"));
    let name = plan.name.clone();
    let say = move |line: &str| tracing::info!(plan = %name, "automatic failover: {line}");
    let opts = RecoverOptions::default();
    let r = match Recovery::new(&node.config, plan, opts, &say) {
        Ok(rec) => rec
            .run()
            .await
            .map_err(|s| (s.step, s.error.to_string(), s.journal)),
        Err(e) => Err(("check".into(), e.to_string(), String::new())),
    };
    match r {
        Ok(report) => {
            tracing::warn!(plan = %plan.name, stack = ?report.stack_id, "automatic failover complete");
            node.events.publish(
                event(node, &plan.name, "failed-over")
                    .field("stack_id", report.stack_id.clone())
                    .field("stack_status", report.stack_status.clone())
                    .field("rto_seconds", report.rto_seconds),
            );
            Ok(())
        }
        Err((step, error, journal)) => {
            tracing::error!(plan = %plan.name, step, journal, "automatic failover stopped (resumed in {DR_AUTO_FAILOVER_RETRY_MS} ms): {error}");
            node.events.publish(
                event(node, &plan.name, "failover-error")
                    .field("step", step)
                    .field("error", error)
                    .field("journal", journal),
            );
            Err(())
        }
    }
}
