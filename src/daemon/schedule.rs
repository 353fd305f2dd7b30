//! The protection plans' snapshot schedule (`[[plan]] snapshot-every`, `keep`), run by the
//! daemon that holds the plan's resources: every interval, each resource of the plan that is
//! Primary here gets a crash-consistent snapshot `PLAN-<unix ms>`, and the oldest scheduled
//! snapshots beyond `keep` are deleted (kept as change-set tombstones, so an incremental
//! stream of a newer one still works). Snapshots the admin named otherwise are never touched.
//! With `snapshot-to`, each new snapshot is then streamed to `URL/RESOURCE` (incremental
//! against the newest older one already there) and the action is recorded in the checkpoint
//! store (`orchestrator::checkpoint::record_action`, newest `keep` per resource), so the next
//! `drl dr protect` lists it. A failure is logged (rate-limited) and the schedule goes on.
//!
//! A consistency group is snapshotted at one point in time (`Resource::snapshot_create`) and
//! streamed as a group (`URL/RESOURCE/volume-N` per volume, then the group record), so a
//! restore gets every volume at the same instant or refuses an incomplete stream.
//!
//! With `images`, the node where the plan's first resource is Primary (exactly one node, so
//! once per tick per plan) then copies each image file to its object with `image::push`,
//! which sends only the segments the store does not already hold with the same md5 (the file
//! is still read and hashed whole), and records an `image` action kept `keep` per image.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Node;
use crate::control::{Event, EventKind, ObjectKind};
use crate::volume::meta::Role;

/// Spawn one task per plan with a schedule that names a resource of this node.
pub(super) fn spawn(
    node: &Arc<Node>,
    tasks: &mut tokio::task::JoinSet<()>,
    shutdown: watch::Receiver<bool>,
) {
    for plan in &node.config.plans {
        let Some((every_ms, keep)) = plan.snapshots else {
            continue;
        };
        let to = plan.snapshot_to.clone();
        let mine = resources_here(node, plan);
        if mine.is_empty() {
            continue;
        }
        let images = plan.images.clone();
        let first = plan.volumes[0].resource.clone();
        let (node, name, mut shutdown) = (node.clone(), plan.name.clone(), shutdown.clone());
        tracing::info!(plan = %name, every_ms, keep, resources = ?mine, "snapshot schedule");
        tasks.spawn(async move {
            let rl = crate::logrl::LogLimiter::new(1);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(every_ms)) => {}
                    _ = shutdown.changed() => return,
                }
                for r in &mine {
                    if let Err(e) = tick(&node, &name, r, keep, to.as_deref()).await {
                        crate::warn_rl!(rl, plan = %name, resource = %r, "scheduled snapshot: {e}");
                    }
                }
                if images.is_empty() || !primary_here(&node, &first) {
                    continue;
                }
                for im in &images {
                    if let Err(e) = copy_image(&node, &name, im, keep).await {
                        crate::warn_rl!(rl, plan = %name, image = %im.file.display(), "scheduled image copy: {e}");
                    }
                }
            }
        });
    }
}

/// The resources of `plan` that live on this node (a group once).
pub(super) fn resources_here(node: &Node, plan: &crate::config::plan::PlanConfig) -> Vec<String> {
    plan.resources()
        .into_iter()
        .filter(|r| node.resource(r).is_some())
        .map(str::to_owned)
        .collect()
}

async fn tick(
    node: &Node,
    plan: &str,
    resource: &str,
    keep: usize,
    to: Option<&str>,
) -> Result<(), String> {
    let res = node
        .resource(resource)
        .ok_or_else(|| "resource gone".to_string())?;
    if res.meta().superblock().role != Role::Primary {
        return Ok(()); // the Secondary's data is the Primary's; snapshots are taken there
    }
    let name = format!("{plan}-{:016}", crate::repl::replicator::unix_ms());
    // A group's volumes are cut at one point in time (every volume's writes paused).
    res.snapshot_create(&name)
        .await
        .map_err(|e| e.to_string())?;
    res.events().publish(
        Event::new(EventKind::Create, ObjectKind::Snapshot, res.name())
            .field("snapshot", name.as_str()),
    );
    if let Some(to) = to {
        stream_and_record(node, plan, &res, &name, keep, to).await?;
    }
    let prefix = format!("{plan}-");
    let mut ours: Vec<String> = res
        .snapshots()
        .list()
        .await
        .into_iter()
        .map(|s| s.name)
        .filter(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|t| t.len() == 16 && t.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    ours.sort();
    while ours.len() > keep {
        let old = ours.remove(0);
        res.snapshot_delete(&old).await.map_err(|e| e.to_string())?;
        res.events().publish(
            Event::new(EventKind::Destroy, ObjectKind::Snapshot, res.name())
                .field("snapshot", old.as_str()),
        );
    }
    Ok(())
}

/// Stream the new scheduled snapshot to `TO/RESOURCE` and record the action.
async fn stream_and_record(
    node: &Node,
    plan: &str,
    res: &super::resource::Resource,
    snapshot: &str,
    keep: usize,
    to: &str,
) -> Result<(), String> {
    let url = format!("{to}/{}", res.name());
    let t0 = std::time::Instant::now();
    let failed = |e: String| format!("stream {snapshot} to {url}: {e}");
    // A group streams every volume to `URL/volume-N`, then its record (`group.json`).
    let (parent, report) = match res.is_group() {
        false => {
            let prep = super::rpc_stream::prepare_stream(node, res, snapshot, &url, None, None)
                .await
                .map_err(|e| failed(e.message))?;
            let parent = prep.parent.clone();
            let r = prep.run(|_| {}).await.map_err(|e| failed(e.to_string()))?;
            (parent, r)
        }
        true => {
            let prep = super::rpc_stream::group::prepare_group_stream(
                node, res, snapshot, &url, None, None,
            )
            .await
            .map_err(|e| failed(e.message))?;
            let parent = prep.parent.clone();
            (parent, prep.run(|_| {}).await.map_err(failed)?)
        }
    };
    let action = serde_json::json!({
        "kind": "snapshot",
        "plan": plan,
        "resource": res.name(),
        "node": node.config.node,
        "snapshot": snapshot,
        "volumes": res.volume_devices().len(),
        "stored_at": url,
        "parent": parent,
        "bytes_uploaded": report.bytes_uploaded,
        "chunks_uploaded": report.chunks_uploaded,
        "seconds": t0.elapsed().as_secs_f64(),
        "done_unix_ms": crate::repl::replicator::unix_ms(),
    });
    crate::orchestrator::checkpoint::record_action(&node.config, plan, res.name(), keep, &action)
        .await
        .map_err(|e| format!("record the action of {snapshot}: {e}"))?;
    res.events().publish(
        Event::new(EventKind::Change, ObjectKind::Snapshot, res.name())
            .field("snapshot", snapshot)
            .field("streamed-to", url.as_str()),
    );
    Ok(())
}

/// Whether `resource` lives here and is Primary.
fn primary_here(node: &Node, resource: &str) -> bool {
    node.resource(resource)
        .is_some_and(|r| r.meta().superblock().role == Role::Primary)
}

/// Copy one image of `plan` to its object and record the action (kept `keep` per image).
async fn copy_image(
    node: &Node,
    plan: &str,
    im: &crate::config::plan::PlanImage,
    keep: usize,
) -> Result<(), String> {
    use crate::stream::{image, store};
    let t0 = std::time::Instant::now();
    let url = store::StoreUrl::parse(&im.to).map_err(|e| e.to_string())?;
    let (container, object) = image::object_of(&url).map_err(|e| e.to_string())?;
    let s = store::open_store(
        &url,
        node.config.swift.clone(),
        &node.config.stream.vault_dir,
    )
    .map_err(|e| format!("{}: {e}", im.to))?;
    let opts = image::ImageOptions {
        parallelism: node.config.stream.parallelism,
        shaper: node.shaping.shaper.clone(),
        ..Default::default()
    };
    let report = image::push(&s, &im.file, &container, &object, &opts, |_| {})
        .await
        .map_err(|e| format!("push {} to {}: {e}", im.file.display(), im.to))?;
    let action = serde_json::json!({
        "kind": "image",
        "plan": plan,
        "node": node.config.node,
        "file": im.file.display().to_string(),
        "stored_at": im.to,
        "size_bytes": report.bytes_read,
        "bytes_uploaded": report.bytes_uploaded,
        "chunks_uploaded": report.chunks_uploaded,
        "chunks_resumed": report.chunks_resumed,
        "seconds": t0.elapsed().as_secs_f64(),
        "done_unix_ms": crate::repl::replicator::unix_ms(),
    });
    // Records live beside the resources' (`@` is never in a resource name).
    let key = format!("@image/{container}/{object}");
    crate::orchestrator::checkpoint::record_action(&node.config, plan, &key, keep, &action)
        .await
        .map_err(|e| format!("record the copy of {}: {e}", im.file.display()))?;
    Ok(())
}
