//! `drl dr protect PLAN` and the checkpoints it stores; `drl dr plan list|show`; `drl dr
//! status`.
//!
//! A checkpoint is one JSON object in the store of `[dr] checkpoints` (the local vault by
//! default, or `swift://...` at the backup site), named `PREFIX/PLAN/checkpoint-<unix ms>.json`:
//! the template's text, the ID map, every volume with its size, node and generation ids, and
//! the protection actions done for it: every scheduled snapshot the daemon streamed
//! (`[[plan]] snapshot-to`), as the daemon recorded it under `PREFIX/PLAN/actions/RESOURCE/`
//! (the newest `keep` per resource). Recovery reads the template from the plan's file and
//! falls back to the newest checkpoint's copy.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::daemons::{self, Member};
use super::journal::{self, Journal};
use super::template::Template;
use super::OrchError;
use crate::config::plan::PlanConfig;
use crate::config::NodeConfig;
use crate::limits::*;
use crate::stream::store::{open_store, AnyStore, ObjectStore, StoreUrl};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub plan: String,
    pub created_unix_ms: u64,
    pub stack_name: String,
    pub cinder_host: String,
    pub template_path: String,
    pub template: String,
    pub volumes: Vec<CheckpointVolume>,
    /// Protection actions done for the plan: scheduled snapshots streamed to the store, as
    /// the daemon recorded them (newest first).
    #[serde(default)]
    pub actions: Vec<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointVolume {
    pub resource: String,
    /// The volume's number in a consistency group (absent for a one-volume resource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<u16>,
    pub node: String,
    pub peer: String,
    pub primary_id: Option<String>,
    pub parameter: Option<String>,
    pub bootable: bool,
    pub size_bytes: u64,
    pub generation: Value,
    pub disk: String,
}

fn store(cfg: &NodeConfig) -> Result<(AnyStore, StoreUrl), OrchError> {
    let url = StoreUrl::parse(&cfg.dr.checkpoints)?;
    let auth = cfg.swift.clone().or_else(|| cfg.openstack.clone());
    Ok((open_store(&url, auth, &cfg.stream.vault_dir)?, url))
}

fn plan_prefix(url: &StoreUrl, plan: &str) -> String {
    url.join(&format!("{plan}/"))
}

/// Check the plan and store a checkpoint; returns it and its object name.
pub async fn protect(
    cfg: &NodeConfig,
    plan: &PlanConfig,
) -> Result<(Checkpoint, String), OrchError> {
    let members = daemons::members(cfg, plan)?;
    let mut statuses = Vec::new();
    for m in &members {
        let st = daemons::status(m).await?;
        if st.get("peer_node").is_none_or(Value::is_null) {
            return Err(OrchError::Refused(format!(
                "{} on {} is not replicated",
                m.resource, m.node
            )));
        }
        let conn = st["connection"].as_str().unwrap_or("?");
        if conn != "Connected" {
            return Err(OrchError::Refused(format!(
                "{} on {} does not replicate now (connection {conn}): protect a plan while its resources replicate",
                m.resource, m.node
            )));
        }
        statuses.push(st);
    }
    let mut vols = Vec::new();
    for v in &plan.volumes {
        let i = members
            .iter()
            .position(|m| m.resource == v.resource)
            .ok_or_else(|| OrchError::Config(format!("resource {} has no member", v.resource)))?;
        let (m, st) = (&members[i], &statuses[i]);
        let size = match v.volume {
            None => &st["size_bytes"],
            Some(n) => &st["volumes"][usize::from(n)]["size_bytes"],
        };
        vols.push(CheckpointVolume {
            resource: m.resource.clone(),
            volume: v.volume,
            node: m.node.clone(),
            peer: m.peer.clone(),
            primary_id: v.primary_id.clone(),
            parameter: v.parameter.clone(),
            bootable: v.bootable,
            size_bytes: size.as_u64().unwrap_or(0),
            generation: st["generation"].clone(),
            disk: st["disk"].as_str().unwrap_or("?").into(),
        });
    }
    let text = read_template(plan)?;
    let tpl = Template::parse(&text, &plan.template.display().to_string())?;
    let keys: Vec<String> = plan.volumes.iter().map(|v| v.key()).collect();
    let checks: Vec<(&str, Option<&str>, Option<&str>)> = plan
        .volumes
        .iter()
        .zip(&keys)
        .map(|(v, k)| (k.as_str(), v.primary_id.as_deref(), v.parameter.as_deref()))
        .collect();
    tpl.check(&checks)?;
    let cp = Checkpoint {
        version: 1,
        plan: plan.name.clone(),
        created_unix_ms: journal::now_ms(),
        stack_name: plan.stack_name.clone(),
        cinder_host: plan.cinder_host.clone(),
        template_path: plan.template.display().to_string(),
        template: text,
        volumes: vols,
        actions: actions(cfg, &plan.name).await?,
    };
    let (s, url) = store(cfg)?;
    s.ensure_container(&url.container).await?;
    let name = format!(
        "{}checkpoint-{:016}.json",
        plan_prefix(&url, &plan.name),
        cp.created_unix_ms
    );
    let body = serde_json::to_vec_pretty(&cp).map_err(|e| OrchError::Config(e.to_string()))?;
    s.put(&url.container, &name, Bytes::from(body)).await?;
    Ok((cp, format!("{}/{}", url.container, name)))
}

fn read_template(plan: &PlanConfig) -> Result<String, OrchError> {
    let p = &plan.template;
    let m =
        std::fs::metadata(p).map_err(|e| OrchError::Template(format!("{}: {e}", p.display())))?;
    if m.len() > DR_TEMPLATE_BYTES_MAX {
        return Err(OrchError::Template(format!(
            "{}: {} bytes, more than {DR_TEMPLATE_BYTES_MAX}",
            p.display(),
            m.len()
        )));
    }
    std::fs::read_to_string(p).map_err(|e| OrchError::Template(format!("{}: {e}", p.display())))
}

/// The checkpoints of a plan, oldest first (object names).
pub async fn list(cfg: &NodeConfig, plan: &str) -> Result<Vec<String>, OrchError> {
    let (s, url) = store(cfg)?;
    let mut names: Vec<String> = s
        .list(&url.container, &plan_prefix(&url, plan))
        .await?
        .into_iter()
        .map(|o| o.name)
        .filter(|n| {
            n.rsplit('/')
                .next()
                .is_some_and(|f| f.starts_with("checkpoint-") && f.ends_with(".json"))
        })
        .collect();
    names.sort();
    Ok(names)
}

fn actions_prefix(url: &StoreUrl, plan: &str, resource: &str) -> String {
    url.join(&format!("{plan}/actions/{resource}/"))
}

/// Record a protection action the daemon did for `plan` (a scheduled snapshot streamed, or
/// an image copied: `resource` is then `@image/CONTAINER/OBJECT`) in the checkpoint store,
/// and keep only the newest `keep` records of `resource`.
pub async fn record_action(
    cfg: &NodeConfig,
    plan: &str,
    resource: &str,
    keep: usize,
    action: &Value,
) -> Result<String, OrchError> {
    let (s, url) = store(cfg)?;
    s.ensure_container(&url.container).await?;
    let prefix = actions_prefix(&url, plan, resource);
    let name = format!("{prefix}{:016}.json", journal::now_ms());
    let body = serde_json::to_vec(action).map_err(|e| OrchError::Config(e.to_string()))?;
    s.put(&url.container, &name, Bytes::from(body)).await?;
    let mut names: Vec<String> = s
        .list(&url.container, &prefix)
        .await?
        .into_iter()
        .map(|o| o.name)
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep.max(1));
    for old in &names[..excess] {
        s.delete(&url.container, old).await?;
    }
    Ok(format!("{}/{name}", url.container))
}

/// The recorded protection actions of `plan`, newest first, at most
/// [`DR_CHECKPOINT_ACTIONS_COUNT_MAX`].
pub async fn actions(cfg: &NodeConfig, plan: &str) -> Result<Vec<Value>, OrchError> {
    let (s, url) = store(cfg)?;
    let mut names: Vec<String> = s
        .list(&url.container, &url.join(&format!("{plan}/actions/")))
        .await?
        .into_iter()
        .map(|o| o.name)
        .filter(|n| n.ends_with(".json"))
        .collect();
    // Newest first across resources: the file name is the time.
    names.sort_by(|a, b| b.rsplit('/').next().cmp(&a.rsplit('/').next()));
    names.truncate(DR_CHECKPOINT_ACTIONS_COUNT_MAX);
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        // The schedule prunes records beyond `keep` while this lists them: a record deleted
        // between the listing and its read is gone, not an error of the whole listing.
        let b = match s.get(&url.container, &n, DR_ACTION_BYTES_MAX).await {
            Err(crate::stream::StreamError::NotFound { .. }) => continue,
            r => r?,
        };
        match serde_json::from_slice::<Value>(&b) {
            Ok(v) => out.push(v),
            Err(e) => out.push(json!({ "object": n, "error": format!("not JSON: {e}") })),
        }
    }
    Ok(out)
}

pub async fn load(cfg: &NodeConfig, name: &str) -> Result<Checkpoint, OrchError> {
    let (s, url) = store(cfg)?;
    let b = s.get(&url.container, name, DR_CHECKPOINT_BYTES_MAX).await?;
    serde_json::from_slice(&b)
        .map_err(|e| OrchError::Config(format!("checkpoint {name}: not a checkpoint: {e}")))
}

/// The template text of the newest checkpoint of `plan`.
pub async fn latest_template(cfg: &NodeConfig, plan: &PlanConfig) -> Result<String, OrchError> {
    let names = list(cfg, &plan.name).await?;
    let last = names
        .last()
        .ok_or_else(|| OrchError::Config(format!("plan {} has no checkpoint", plan.name)))?;
    Ok(load(cfg, last).await?.template)
}

/// Cinder's replication vocabulary for a plan, from its journal: `enabled` (protected, no
/// recovery), `failing-over`, `failed-over`, `failover-error`, `failing-back`.
pub fn dr_state(cfg: &NodeConfig, plan: &str) -> (String, Option<String>) {
    let path = Journal::path_for(&cfg.dr.state_dir, plan);
    let recs = match Journal::read(&path) {
        Ok(r) => r,
        Err(e) => return ("failover-error".into(), Some(e.to_string())),
    };
    let Some(last) = recs.last() else {
        return ("enabled".into(), None);
    };
    let err = (last.phase == journal::Phase::Failed)
        .then(|| format!("{}: {}", last.step, last.error.clone().unwrap_or_default()));
    let state = match (last.op.as_str(), last.phase) {
        (_, journal::Phase::Failed) => "failover-error",
        ("failback", _) => "failing-back",
        ("recover", _) if journal::done_data(&recs, "recover", "stack").is_some() => "failed-over",
        _ => "failing-over",
    };
    (state.into(), err)
}

/// `drl dr plan show` / `list` / `status`: per plan its state, checkpoints and each volume's
/// protection (disk at the backup, connection, lag, out of sync), and the RPO alarm.
pub async fn plan_json(cfg: &NodeConfig, plan: &PlanConfig, with_checkpoints: bool) -> Value {
    let (state, error) = dr_state(cfg, &plan.name);
    let members: Vec<Member> = daemons::members(cfg, plan).unwrap_or_default();
    let mut vols = Vec::new();
    let mut alarm = false;
    for m in &members {
        match daemons::status(m).await {
            Ok(st) => {
                let lag = st["lag_ms"].as_u64().unwrap_or(0);
                if plan.rpo_target_ms.is_some_and(|t| lag > t) || st["connection"] != "Connected" {
                    alarm |= plan.rpo_target_ms.is_some();
                }
                vols.push(json!({
                    "resource": m.resource, "node": m.node, "peer": m.peer,
                    "role": st["role"], "disk": st["disk"], "connection": st["connection"],
                    "replication": st["replication"], "peer_disk": st["peer_disk"],
                    "lag_ms": st["lag_ms"], "out_of_sync_bytes": st["out_of_sync_bytes"],
                    "up_to_date": st["disk"] == "UpToDate",
                    "tracking_void": st["tracking_void"],
                }))
            }
            Err(e) => {
                vols.push(json!({ "resource": m.resource, "node": m.node, "error": e.to_string() }))
            }
        }
    }
    let mut v = json!({
        "plan": plan.name, "state": state, "error": error, "resources": plan.resources(),
        "stack_name": plan.stack_name, "failover": format!("{:?}", plan.failover).to_lowercase(),
        "rpo_target_ms": plan.rpo_target_ms, "rpo_alarm": alarm, "volumes": vols,
    });
    match list(cfg, &plan.name).await {
        Ok(names) => {
            let last_age = names.last().and_then(|n| {
                let ms: u64 = n
                    .rsplit("checkpoint-")
                    .next()?
                    .trim_end_matches(".json")
                    .parse()
                    .ok()?;
                Some(journal::now_ms().saturating_sub(ms) / 1000)
            });
            v["checkpoint_count"] = json!(names.len());
            v["last_checkpoint_age_s"] = json!(last_age);
            if with_checkpoints {
                v["checkpoints"] = json!(names);
            }
        }
        Err(e) => v["checkpoint_error"] = json!(e.to_string()),
    }
    if with_checkpoints {
        // The protection actions recorded so far (snapshots streamed, images copied).
        match actions(cfg, &plan.name).await {
            Ok(a) => v["actions"] = json!(a),
            Err(e) => v["actions_error"] = json!(e.to_string()),
        }
    }
    v
}
