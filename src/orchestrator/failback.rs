//! `drl dr failback PLAN`: bring a recovered plan home to the old primary site.
//!
//! ```text
//! resync     every resource Connected to the old primary (back as Secondary) and
//!            Established: the bitmap resync of what drl itself tracked is done
//! stop       delete the recovery stack (needs --stop-workload: the admin's word) and
//!            unmanage the imported volumes (the data stays): nothing writes around drl now
//! verify:R   for a resource handed to Cinder (tracking void): online verify, the Primary
//!            (here) provides digests, the old primary compares; differing blocks are marked;
//!            disconnect + connect resyncs exactly those; then the mark is cleared
//! switchover this site Secondary once nothing is out of sync, then the old primary Primary:
//!            planned, so no acknowledged write is lost
//! workload   with `primary-stack-name`: the stack from the plan's template (primary IDs as
//!            written) in `[primary-openstack]`'s cloud, looked up by name first, until
//!            CREATE_COMPLETE; without it the admin starts the workload (fail back says so)
//! ```
//!
//! The import trap: Cinder's own target writes an imported volume around drl, so the bitmap
//! misses those writes. The handover recorded that (`tracking_void` in the metadata); here
//! the digests decide instead of the bitmap, through drl's existing online verify.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::daemons::{self, Member};
use super::journal::Journal;
use super::openstack::Cloud;
use super::OrchError;
use crate::config::plan::PlanConfig;
use crate::config::NodeConfig;
use crate::limits::*;

const OP: &str = "failback";

/// The old primary's side of a member: same resource, the peer node's socket.
fn peer_member(cfg: &NodeConfig, m: &Member) -> Result<Member, OrchError> {
    let e = cfg
        .nodes
        .iter()
        .find(|n| n.name == m.peer)
        .ok_or_else(|| OrchError::Config(format!("node {} is not listed", m.peer)))?;
    Ok(Member {
        resource: m.resource.clone(),
        node: m.peer.clone(),
        socket: e.control_socket.clone(),
        tcp: e.control_tcp.clone(),
        peer: m.node.clone(),
    })
}

async fn wait_status(
    m: &Member,
    what: &str,
    mut ok: impl FnMut(&Value) -> Result<bool, OrchError>,
) -> Result<Value, OrchError> {
    let t0 = Instant::now();
    loop {
        let st = daemons::status(m).await?;
        if ok(&st)? {
            return Ok(st);
        }
        if t0.elapsed() > Duration::from_millis(DR_FAILBACK_SYNC_TIMEOUT_MS) {
            return Err(OrchError::Timeout(format!(
                "{} on {}: {what}",
                m.resource, m.node
            )));
        }
        tokio::time::sleep(Duration::from_millis(DR_POLL_INTERVAL_MS)).await;
    }
}

fn in_sync(st: &Value) -> bool {
    st["connection"] == "Connected"
        && st["replication"] == "Established"
        && st["out_of_sync_bytes"].as_u64() == Some(0)
        && st["peer_disk"] == "UpToDate"
}

pub async fn failback(
    cfg: &NodeConfig,
    plan: &PlanConfig,
    stop_workload: bool,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Value, OrchError> {
    let members = daemons::members(cfg, plan)?;
    let jpath = Journal::path_for(&cfg.dr.state_dir, &plan.name);
    let mut j = Journal::open(&jpath)?;
    if super::journal::done_data(&j.records, "recover", "stack").is_none() {
        return Err(OrchError::Refused(format!(
            "plan {} is not failed over (journal {}): nothing to fail back",
            plan.name,
            jpath.display()
        )));
    }
    let mut step = String::new();
    let r = steps(cfg, plan, &members, &mut j, &mut step, stop_workload, say).await;
    match r {
        Ok(report) => {
            let archived = j.archive()?;
            say(&format!(
                "fail back done; journal archived as {}",
                archived.display()
            ));
            Ok(report)
        }
        Err(e) => {
            let _ = j.failed(OP, &step, &e.to_string());
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn steps(
    cfg: &NodeConfig,
    plan: &PlanConfig,
    members: &[Member],
    j: &mut Journal,
    step: &mut String,
    stop_workload: bool,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Value, OrchError> {
    let mut verified = serde_json::Map::new();
    *step = "resync".into();
    if j.done_data(OP, step).is_none() {
        j.begin(OP, step, Value::Null)?;
        for m in members {
            let st = daemons::status(m).await?;
            if st["connection"] == "StandAlone" && !st["split_brain"].is_string() {
                // A recovery that dropped the old primary's session (--force) left it
                // StandAlone: listen for the old primary again.
                say(&format!("{}: StandAlone: connecting", m.resource));
                daemons::call(m, "connect", json!({ "resource": m.resource })).await?;
            }
            say(&format!(
                "{}: waiting for {} (Secondary) to connect and resync",
                m.resource, m.peer
            ));
            wait_status(m, "resync with the old primary", |st| {
                if st["role"] != "Primary" {
                    return Err(OrchError::Refused(format!(
                        "{} on {} is {}: fail back starts from a recovered (Primary) site",
                        m.resource, m.node, st["role"]
                    )));
                }
                if st["split_brain"].is_string() {
                    return Err(OrchError::Refused(format!(
                        "{} on {}: split brain with {}: {}; resolve it (drl connect {} --discard-my-data on {})",
                        m.resource, m.node, m.peer, st["split_brain"], m.resource, m.peer
                    )));
                }
                Ok(in_sync(st))
            })
            .await?;
        }
        j.done(OP, step, Value::Null)?;
    }
    *step = "stop".into();
    if j.done_data(OP, step).is_none() {
        if !stop_workload {
            return Err(OrchError::Refused(format!(
                "resynced; the workload still runs here as stack {}: stop it and run `drl dr failback {} --stop-workload` (the stack is deleted, the volumes unmanaged, then the roles switch)",
                plan.stack_name, plan.name
            )));
        }
        j.begin(OP, step, Value::Null)?;
        let cloud = Cloud::from_config(cfg.openstack.clone())?;
        if let Some(s) = cloud.find_stack(&plan.stack_name).await? {
            say(&format!("delete stack {} ({})", plan.stack_name, s.id));
            super::stacks::delete(&cloud, &plan.stack_name, &s.id).await?;
        }
        for m in members {
            let vols = cloud.list_volumes().await?;
            for v in vols.iter().filter(|v| {
                v.metadata.get("drl-plan") == Some(&plan.name)
                    && v.metadata.get("drl-resource") == Some(&m.resource)
            }) {
                say(&format!("unmanage {} ({})", m.resource, v.id));
                cloud.unmanage_volume(&m.resource, &v.id).await?;
            }
        }
        j.done(OP, step, Value::Null)?;
    }
    for m in members {
        *step = format!("verify:{}", m.resource);
        if let Some(d) = j.done_data(OP, step) {
            verified.insert(m.resource.clone(), d.clone());
            continue;
        }
        let st = daemons::status(m).await?;
        if st["tracking_void"] != true {
            continue;
        }
        j.begin(OP, step, Value::Null)?;
        let before = st["verify_last"].clone();
        let sent0 = st["resync_bytes_sent"].as_u64().unwrap_or(0);
        say(&format!(
            "{}: handed to Cinder: comparing digests with {} (online verify)",
            m.resource, m.peer
        ));
        daemons::call(
            m,
            "verify",
            json!({ "resource": m.resource, "rate": "1GiB/s" }),
        )
        .await?;
        let st = wait_status(m, "online verify", |st| {
            Ok(st["verify"].is_null()
                && st["verify_last"] != before
                && !st["verify_last"].is_null())
        })
        .await?;
        let report = st["verify_last"].clone();
        if report["outcome"] != "completed" {
            return Err(OrchError::Daemon {
                call: format!("verify {} on {}", m.resource, m.node),
                reason: format!("the run did not complete: {}", report["outcome"]),
            });
        }
        let differing = report["out_of_sync_bytes"].as_u64().unwrap_or(0);
        if differing > 0 {
            say(&format!(
                "{}: {differing} bytes differ: resyncing them",
                m.resource
            ));
            daemons::call(m, "disconnect", json!({ "resource": m.resource })).await?;
            daemons::call(m, "connect", json!({ "resource": m.resource })).await?;
        }
        let st = wait_status(m, "resync of the differing blocks", |st| Ok(in_sync(st))).await?;
        daemons::call(m, "dr.tracking_restored", json!({ "resource": m.resource })).await?;
        let d = json!({
            "differing_bytes": differing,
            "resync_bytes_sent": st["resync_bytes_sent"].as_u64().unwrap_or(0).saturating_sub(sent0),
            "verify": report,
        });
        verified.insert(m.resource.clone(), d.clone());
        j.done(OP, step, d)?;
    }
    *step = "switchover".into();
    if j.done_data(OP, step).is_none() {
        j.begin(OP, step, Value::Null)?;
        for m in members {
            wait_status(m, "in sync before the switchover", |st| Ok(in_sync(st))).await?;
            say(&format!("demote {} on {}", m.resource, m.node));
            daemons::call(m, "secondary", json!({ "resource": m.resource })).await?;
        }
        for m in members {
            let p = peer_member(cfg, m)?;
            say(&format!("promote {} on {}", p.resource, p.node));
            daemons::call(&p, "primary", json!({ "resource": p.resource })).await?;
        }
        j.done(OP, step, Value::Null)?;
    }
    let workload = match &plan.primary_stack_name {
        Some(name) => {
            *step = "workload".into();
            match j.done_data(OP, step) {
                Some(d) => d.clone(),
                None => {
                    j.begin(OP, step, Value::Null)?;
                    let d = workload_up(cfg, plan, name, j, say).await?;
                    j.done(OP, step, d.clone())?;
                    d
                }
            }
        }
        None => {
            say(&format!(
                "the volumes are Primary at {} again: start the workload there (its template: {}); set [[plan]] primary-stack-name and [primary-openstack] to have fail back create it",
                members.iter().map(|m| m.peer.as_str()).collect::<Vec<_>>().join(", "),
                plan.template.display()
            ));
            Value::Null
        }
    };
    Ok(
        json!({ "plan": plan.name, "state": "enabled", "verified": verified, "workload": workload,
        "primary": members.iter().map(|m| json!({"resource": m.resource, "node": m.peer})).collect::<Vec<_>>() }),
    )
}

/// Bring the workload up at the primary site: the stack `name` from the plan's template as
/// written (its volume IDs are the primary site's, whose volumes are Primary there again) in
/// `[primary-openstack]`'s cloud; looked up by name first, so a resume never makes two.
async fn workload_up(
    cfg: &NodeConfig,
    plan: &PlanConfig,
    name: &str,
    j: &mut Journal,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Value, OrchError> {
    let auth = cfg.primary_openstack.clone().ok_or_else(|| {
        OrchError::Config(format!(
            "plan {}: primary-stack-name needs [primary-openstack]",
            plan.name
        ))
    })?;
    let cloud = Cloud::new(auth)?;
    let text = super::recover::template_text(cfg, plan).await?;
    let tpl = super::template::Template::parse(&text, &plan.template.display().to_string())?;
    say(&format!(
        "bring the workload up at the primary site: stack {name} at {}",
        cloud.auth_url()
    ));
    let id = super::stacks::ensure(&cloud, name, &tpl.doc, &Default::default(), say).await?;
    j.done(OP, "workload-create", json!({ "stack_id": id }))?;
    let st = super::stacks::wait_complete(&cloud, name, &id).await?;
    Ok(json!({ "stack_name": name, "stack_id": st.id, "stack_status": st.stack_status }))
}
