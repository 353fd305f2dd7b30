//! `drl dr recover PLAN`: bring a plan's workload up at this (the backup) site. See the module
//! doc of [`super`] for the steps; every one is journaled and idempotent, so the same command
//! resumes a recovery stopped anywhere and never imports a volume twice or creates two stacks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::daemons::{self, Member};
use super::journal::{self, Journal};
use super::openstack::{Cloud, Volume};
use super::report::Report;
use super::template::{Mapping, Template};
use super::OrchError;
use crate::config::plan::{PlanConfig, PlanVolume};
use crate::config::NodeConfig;
use crate::limits::*;

pub(super) const OP: &str = "recover";

#[derive(Clone, Debug, Default)]
pub struct RecoverOptions {
    pub dry_run: bool,
    /// The admin's word that the old primary site is down.
    pub confirm_primary_down: bool,
    /// Recover even though a resource is still Connected to its peer (disconnects it first).
    pub force: bool,
}

/// A failed recovery: the error and where the journal stopped.
#[derive(Debug)]
pub struct Stopped {
    pub error: OrchError,
    pub step: String,
    pub journal: String,
}

pub struct Recovery<'a> {
    pub cfg: &'a NodeConfig,
    pub plan: &'a PlanConfig,
    pub members: Vec<Member>,
    pub cloud: Cloud,
    pub opts: RecoverOptions,
    /// One line per action (what it does or, dry, would do), for the CLI's stderr.
    pub say: &'a (dyn Fn(&str) + Sync),
}

pub fn find_plan<'a>(cfg: &'a NodeConfig, name: &str) -> Result<&'a PlanConfig, OrchError> {
    cfg.plans.iter().find(|p| p.name == name).ok_or_else(|| {
        OrchError::Config(format!(
            "no plan {name:?} in {} (plans: {})",
            cfg.file.display(),
            cfg.plans
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

impl<'a> Recovery<'a> {
    pub fn new(
        cfg: &'a NodeConfig,
        plan: &'a PlanConfig,
        opts: RecoverOptions,
        say: &'a (dyn Fn(&str) + Sync),
    ) -> Result<Recovery<'a>, OrchError> {
        Ok(Recovery {
            members: daemons::members(cfg, plan)?,
            cloud: Cloud::from_config(cfg.openstack.clone())?,
            cfg,
            plan,
            opts,
            say,
        })
    }

    pub(super) fn journal_path(&self) -> std::path::PathBuf {
        Journal::path_for(&self.cfg.dr.state_dir, &self.plan.name)
    }

    /// Run (or resume) the recovery.
    pub async fn run(&self) -> Result<Report, Stopped> {
        let jpath = self.journal_path();
        let stopped = |step: &str, error: OrchError| Stopped {
            error,
            step: step.into(),
            journal: jpath.display().to_string(),
        };
        if self.opts.dry_run {
            let records = Journal::read(&jpath).map_err(|e| stopped("journal", e))?;
            return self
                .dry_run(&records)
                .await
                .map_err(|e| stopped("dry-run", e));
        }
        let mut j = Journal::open(&jpath).map_err(|e| stopped("journal", e))?;
        if j.records.iter().any(|r| r.op == "failback") {
            return Err(stopped(
                "journal",
                OrchError::Refused(format!(
                    "plan {} is failing back (journal {}): finish `drl dr failback {}` first",
                    self.plan.name,
                    jpath.display(),
                    self.plan.name
                )),
            ));
        }
        let mut step = String::from("check");
        let r = self.steps(&mut j, &mut step).await;
        match r {
            Ok(()) => self
                .report(&j.records, false)
                .await
                .map_err(|e| stopped("report", e)),
            Err(e) => {
                let _ = j.failed(OP, &step, &e.to_string());
                Err(stopped(&step, e))
            }
        }
    }

    async fn steps(&self, j: &mut Journal, step: &mut String) -> Result<(), OrchError> {
        if j.done_data(OP, "stack").is_some() {
            (self.say)("recovery already complete; the report follows");
            return Ok(());
        }
        // 1. check (again on every run until promote is done: a returning primary stops us)
        if j.done_data(OP, "promote").is_none() {
            *step = "check".into();
            j.begin(OP, step, Value::Null)?;
            let data = self.check().await?;
            j.done(OP, step, data)?;
        }
        // 2. promote
        if j.done_data(OP, "promote").is_none() {
            *step = "promote".into();
            j.begin(OP, step, Value::Null)?;
            self.promote_all().await?;
            j.done(OP, step, json!({ "resources": self.members.iter().map(|m| &m.resource).collect::<Vec<_>>() }))?;
        }
        // 3. import each volume. drl's part for all at once: every handover side by side
        //    (each daemon records it durably; one per resource, a group's volumes together),
        //    the journal's records of a phase in one sync; then every manage request side by
        //    side (Cinder imports them in parallel), one listing of Cinder's volumes serving
        //    every lookup; then wait for each. A volume's step (`import:RES`, `import:RES/N`
        //    in a group) ends when it is available.
        let todo: Vec<&PlanVolume> = self
            .plan
            .volumes
            .iter()
            .filter(|v| j.done_data(OP, &format!("import:{}", v.key())).is_none())
            .collect();
        let mut posted = Vec::new();
        if !todo.is_empty() {
            *step = format!("import:{}", todo[0].key());
            j.many(
                OP,
                journal::Phase::Begin,
                todo.iter()
                    .map(|v| (format!("import:{}", v.key()), Value::Null)),
            )?;
            let mut resources: Vec<&str> = todo.iter().map(|v| v.resource.as_str()).collect();
            resources.dedup();
            let handed = futures::future::try_join_all(
                resources
                    .iter()
                    .map(|r| async { self.handover(daemons::member_of(&self.members, r)?).await }),
            )
            .await?;
            let disks = todo
                .iter()
                .map(|v| {
                    let i = resources.iter().position(|r| *r == v.resource).unwrap_or(0);
                    disk_of(&handed[i], v)
                })
                .collect::<Result<Vec<String>, OrchError>>()?;
            // Sub-step records: drl's own part of the import is done (the report and the
            // bench split drl's time from Cinder's with them).
            j.many(
                OP,
                journal::Phase::Done,
                todo.iter()
                    .map(|v| (format!("handover:{}", v.key()), Value::Null)),
            )?;
            let listed = self.cloud.list_volumes().await?;
            let vols = futures::future::try_join_all(
                todo.iter()
                    .zip(&disks)
                    .map(|(v, disk)| self.import(v, disk, &listed)),
            )
            .await?;
            // Sub-step records (and crash points): the volumes exist in Cinder now.
            j.many(
                OP,
                journal::Phase::Done,
                todo.iter().zip(&vols).map(|(v, vol)| {
                    (
                        format!("manage:{}", v.key()),
                        json!({ "cinder_id": vol.id }),
                    )
                }),
            )?;
            posted = todo
                .iter()
                .zip(vols)
                .map(|(v, vol)| (v.key(), vol.id))
                .collect();
        }
        for (key, id) in posted {
            *step = format!("import:{key}");
            let vol = self.wait_available(&key, &id).await?;
            j.done(
                OP,
                step,
                json!({ "cinder_id": vol.id, "status": vol.status, "size_gib": vol.size }),
            )?;
        }
        // 4. rewrite the template (always again until the stack exists: deterministic)
        *step = "rewrite".into();
        j.begin(OP, step, Value::Null)?;
        let (tpl, params, replaced) = self.rewrite(&j.records).await?;
        j.done(
            OP,
            step,
            json!({ "parameters": params, "replaced": replaced }),
        )?;
        // 5. the stack
        *step = "stack".into();
        j.begin(OP, step, Value::Null)?;
        let name = &self.plan.stack_name;
        let id = super::stacks::ensure(&self.cloud, name, &tpl, &params, self.say).await?;
        j.done(OP, "stack-create", json!({ "stack_id": id }))?;
        let st = super::stacks::wait_complete(&self.cloud, name, &id).await?;
        j.done(
            OP,
            step,
            json!({ "stack_id": st.id, "stack_status": st.stack_status }),
        )?;
        Ok(())
    }

    async fn check(&self) -> Result<Value, OrchError> {
        // Detection first: a lease held here proves the old primary's lease expired in etcd
        // (its site suspected), so it fenced itself and a session that still looks Connected
        // is stale (a silent cut the session's timeouts have not noticed yet).
        let down = super::primary_known_down(&self.members).await?;
        let lease_here = matches!(down, super::PrimaryDown::Known(_));
        let mut statuses = Vec::new();
        for m in &self.members {
            let st = daemons::status(m).await?;
            if let Some(why) = daemons::connected_to_primary(&st) {
                if !self.opts.force && !lease_here {
                    return Err(OrchError::Refused(format!(
                        "{} on {} is {why}: the primary site looks alive; recovering now would make two Primaries (split brain). Stop the primary site, or pass --force to disconnect and recover anyway",
                        m.resource, m.node
                    )));
                }
            }
            let disk = st.get("disk").and_then(Value::as_str).unwrap_or("?");
            if matches!(disk, "Inconsistent" | "Diskless" | "Failed") {
                return Err(OrchError::Refused(format!(
                    "{} on {} is {disk}: its data is not usable (an initial sync or a resync did not finish)",
                    m.resource, m.node
                )));
            }
            statuses.push(st);
        }
        let peers = self
            .members
            .iter()
            .map(|m| m.peer.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        match down {
            super::PrimaryDown::Known(why) => (self.say)(&format!("primary site down: {why}")),
            super::PrimaryDown::NoDetection if self.opts.confirm_primary_down => {}
            super::PrimaryDown::NoDetection => {
                return Err(OrchError::Refused(format!(
                    "the old primary site ({peers}) is not known to be down: no node of the plan runs site-failure detection ([detect]); if you know it is down, pass --confirm-primary-down"
                )))
            }
            super::PrimaryDown::NotHere {
                elsewhere: false, ..
            } if self.opts.confirm_primary_down => {}
            super::PrimaryDown::NotHere { why, elsewhere } => {
                let hint = if elsewhere {
                    "a lease held elsewhere moves only once its holder's lease expired in etcd while its site is suspected; --confirm-primary-down cannot override it (the promotion would be refused)"
                } else {
                    "if you know it is down, pass --confirm-primary-down (the promotion takes the free lease)"
                };
                return Err(OrchError::Refused(format!(
                    "the old primary site ({peers}) is not known to be down: {why}; {hint}"
                )));
            }
        }
        let mut rpo = serde_json::Map::new();
        let auto_promote = self.cfg.detect.as_ref().is_some_and(|d| d.auto_promote);
        for (m, mut st) in self.members.iter().zip(statuses) {
            if lease_here && auto_promote && daemons::connected_to_primary(&st).is_some() {
                // Detection's own promotion drops this session first (drop_stale_session):
                // wait for it instead of racing it (a disconnect racing its reconnect waits
                // out the state timeout and leaves the resource StandAlone).
                let t0 = Instant::now();
                while daemons::connected_to_primary(&st).is_some()
                    && t0.elapsed() < Duration::from_millis(REPL_STATE_ACK_TIMEOUT_MS)
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    st = daemons::status(m).await?;
                }
            }
            if daemons::connected_to_primary(&st).is_some() {
                let why = if lease_here {
                    "this site holds the lease, so the old Primary fenced itself: dropping its stale session"
                } else {
                    "--force"
                };
                (self.say)(&format!(
                    "{}: {why}: disconnecting from {}",
                    m.resource, m.peer
                ));
                daemons::call(m, "disconnect", json!({ "resource": m.resource })).await?;
                if lease_here {
                    // As detection's drop: the session goes, the resource keeps listening,
                    // so the old primary can come back as Secondary and fail back; a
                    // StandAlone one would refuse it until an admin's `drl connect`.
                    if let Err(e) =
                        daemons::call(m, "connect", json!({ "resource": m.resource })).await
                    {
                        (self.say)(&format!("{}: connect after the drop: {e}", m.resource));
                    }
                }
                st = daemons::status(m).await?;
            }
            rpo.insert(
                m.resource.clone(),
                st.get("link_lost").cloned().unwrap_or(Value::Null),
            );
        }
        // Keystone's share of the check, apart (the report and the bench split drl's own time
        // from the cloud's with it).
        let t0 = Instant::now();
        self.cloud.login().await?;
        let login_ms = t0.elapsed().as_millis() as u64;
        Ok(json!({ "link_lost": rpo, "login_ms": login_ms }))
    }

    /// Promote every resource; on a failure demote those this call promoted (all or none).
    async fn promote_all(&self) -> Result<(), OrchError> {
        let mut promoted: Vec<&Member> = Vec::new();
        for m in &self.members {
            let st = daemons::status(m).await?;
            if st.get("role").and_then(Value::as_str) == Some("Primary") {
                continue;
            }
            (self.say)(&format!("promote {} on {}", m.resource, m.node));
            match daemons::call(
                m,
                "primary",
                json!({ "resource": m.resource, "force": true }),
            )
            .await
            {
                Ok(_) => promoted.push(m),
                // Detection's auto-promote may have promoted it meanwhile (same lease): fine.
                Err(_)
                    if daemons::status(m).await.is_ok_and(|st| {
                        st.get("role").and_then(Value::as_str) == Some("Primary")
                    }) => {}
                Err(e) => {
                    for p in promoted {
                        (self.say)(&format!(
                            "demote {} on {} again (all or none)",
                            p.resource, p.node
                        ));
                        if let Err(e2) =
                            daemons::call(p, "secondary", json!({ "resource": p.resource })).await
                        {
                            (self.say)(&format!("could not demote {}: {e2}", p.resource));
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The reference Cinder manages: the link `drl-RES` (`drl-RES-N` in a group) in the
    /// share, else the disk's file name (LVM: the LV name).
    pub(super) fn source_name(&self, v: &PlanVolume, disk_path: &str) -> String {
        match &self.plan.cinder_share {
            Some(share) => format!("{share}/drl-{}", v.flat_key()),
            None => std::path::Path::new(disk_path)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// The Cinder volume's metadata: the plan, the resource and, in a group, the volume's
    /// number (`drl-volume`), by which a resumed run finds what it imported.
    pub(super) fn metadata(&self, v: &PlanVolume) -> BTreeMap<String, String> {
        let mut md = BTreeMap::new();
        md.insert("drl-plan".into(), self.plan.name.clone());
        md.insert("drl-resource".into(), v.resource.clone());
        if let Some(n) = v.volume {
            md.insert("drl-volume".into(), n.to_string());
        }
        if let Some(id) = &v.primary_id {
            md.insert("drl-primary-id".into(), id.clone());
        }
        md
    }

    /// The volume an earlier run imported for `v`, if Cinder has one (not in an error state).
    fn imported<'v>(&self, v: &PlanVolume, listed: &'v [Volume]) -> Option<&'v Volume> {
        let number = v.volume.map(|n| n.to_string());
        listed.iter().find(|c| {
            c.metadata.get("drl-plan") == Some(&self.plan.name)
                && c.metadata.get("drl-resource") == Some(&v.resource)
                && c.metadata.get("drl-volume") == number.as_ref()
                && !c.status.starts_with("error")
                && c.status != "deleting"
        })
    }

    /// Hand the resource (every volume of a group) to Cinder at the daemon: tracking void,
    /// a link into the share per volume; the daemon's answer.
    async fn handover(&self, m: &Member) -> Result<Value, OrchError> {
        daemons::call(
            m,
            "dr.handover",
            json!({ "resource": m.resource, "export_dir": self.plan.cinder_export_dir }),
        )
        .await
    }

    async fn import(
        &self,
        v: &PlanVolume,
        disk: &str,
        listed: &[Volume],
    ) -> Result<Volume, OrchError> {
        let key = v.key();
        let vol = match self.imported(v, listed) {
            Some(c) => {
                (self.say)(&format!(
                    "{key}: already imported as {} ({})",
                    c.id, c.status
                ));
                c.clone()
            }
            None => {
                let src = self.source_name(v, disk);
                (self.say)(&format!(
                    "import {key} into Cinder: {src} at {}",
                    self.plan.cinder_host
                ));
                self.cloud
                    .manage_volume(
                        &key,
                        &self.plan.cinder_host,
                        &src,
                        &format!("{}-{}", self.plan.name, v.flat_key()),
                        v.bootable,
                        &self.metadata(v),
                    )
                    .await?
            }
        };
        Ok(vol)
    }

    async fn wait_available(&self, resource: &str, id: &str) -> Result<Volume, OrchError> {
        let t0 = Instant::now();
        loop {
            let v = self.cloud.show_volume(resource, id).await?;
            match v.status.as_str() {
                "available" | "in-use" => return Ok(v),
                s if s.starts_with("error") => {
                    let msgs = self.cloud.volume_messages(id).await.unwrap_or_default();
                    return Err(OrchError::Import {
                        resource: resource.into(),
                        id: id.into(),
                        status: v.status.clone(),
                        reason: msgs.last().cloned().unwrap_or_else(|| {
                            "Cinder gave no message; see cinder-volume's log".into()
                        }),
                    });
                }
                _ => {}
            }
            if t0.elapsed() > Duration::from_millis(DR_IMPORT_TIMEOUT_MS) {
                return Err(OrchError::Timeout(format!(
                    "volume {resource} ({id}) still {} after {} s",
                    v.status,
                    DR_IMPORT_TIMEOUT_MS / 1000
                )));
            }
            tokio::time::sleep(Duration::from_millis(DR_POLL_INTERVAL_MS)).await;
        }
    }

    async fn rewrite(
        &self,
        records: &[journal::Record],
    ) -> Result<(Value, BTreeMap<String, String>, Value), OrchError> {
        let text = template_text(self.cfg, self.plan).await?;
        let tpl = Template::parse(&text, &self.plan.template.display().to_string())?;
        let keys: Vec<String> = self.plan.volumes.iter().map(PlanVolume::key).collect();
        let ids: Vec<String> = keys
            .iter()
            .map(|k| {
                journal::done_data(records, OP, &format!("import:{k}"))
                    .and_then(|d| d.get("cinder_id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_default()
            })
            .collect();
        let maps: Vec<Mapping<'_>> = self
            .plan
            .volumes
            .iter()
            .zip(keys.iter().zip(&ids))
            .map(|(v, (key, id))| Mapping {
                resource: key,
                primary_id: v.primary_id.as_deref(),
                parameter: v.parameter.as_deref(),
                new_id: id,
            })
            .collect();
        let r = tpl.rewrite(&maps)?;
        let replaced = json!(r
            .replaced
            .iter()
            .map(|(o, n, w)| json!({"primary_id": o, "cinder_id": n, "where": w}))
            .collect::<Vec<_>>());
        Ok((r.template, r.parameters, replaced))
    }
}

/// The disk path of volume `v` in a `dr.handover` answer (its `volumes` list; a daemon from
/// before groups answers one volume at the top level).
fn disk_of(handed: &Value, v: &PlanVolume) -> Result<String, OrchError> {
    let number = u64::from(v.volume.unwrap_or(0));
    let entry = match handed.get("volumes").and_then(Value::as_array) {
        Some(list) => list.iter().find(|e| e["volume"].as_u64() == Some(number)),
        None if v.volume.is_none() => Some(handed),
        None => None,
    };
    entry
        .and_then(|e| e["disk_path"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| OrchError::Daemon {
            call: format!("dr.handover {}", v.resource),
            reason: format!("the answer names no disk of volume {}", v.key()),
        })
}

/// The plan's template: its file, else the newest checkpoint's copy.
pub(super) async fn template_text(
    cfg: &NodeConfig,
    plan: &PlanConfig,
) -> Result<String, OrchError> {
    let p = &plan.template;
    match std::fs::metadata(p) {
        Ok(m) if m.len() > DR_TEMPLATE_BYTES_MAX => Err(OrchError::Template(format!(
            "{}: {} bytes, more than {DR_TEMPLATE_BYTES_MAX}",
            p.display(),
            m.len()
        ))),
        Ok(_) => std::fs::read_to_string(p)
            .map_err(|e| OrchError::Template(format!("{}: {e}", p.display()))),
        Err(e) => super::checkpoint::latest_template(cfg, plan)
            .await
            .map_err(|c| {
                OrchError::Template(format!("{}: {e}; and no checkpoint copy: {c}", p.display()))
            }),
    }
}
