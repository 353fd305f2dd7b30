//! `drl dr recover --dry-run` and the recovery's report: what a recovery would call now, and
//! the timeline, RTO and RPO of one from its journal.

use serde_json::Value;

use super::daemons;
use super::journal;
use super::recover::{Recovery, OP};
use super::report::{self, Report, VolumeReport};
use super::OrchError;

impl Recovery<'_> {
    /// Print every call a recovery would make now; change nothing.
    pub(super) async fn dry_run(&self, records: &[journal::Record]) -> Result<Report, OrchError> {
        let say = self.say;
        let done = |s: &str| journal::done_data(records, OP, s).is_some();
        for m in &self.members {
            let st = daemons::status(m).await?;
            say(&format!(
                "{} on {} ({}): role {}, disk {}, connection {}{}",
                m.resource,
                m.node,
                m.socket.display(),
                st["role"].as_str().unwrap_or("?"),
                st["disk"].as_str().unwrap_or("?"),
                st["connection"].as_str().unwrap_or("?"),
                daemons::connected_to_primary(&st)
                    .map(|w| format!(" -- REFUSED: {w}"))
                    .unwrap_or_default()
            ));
        }
        let (cinder, heat) = match self.cloud.endpoints().await {
            Ok((c, h, p)) => {
                say(&format!(
                    "logged in to {} (project {p})",
                    self.cloud.auth_url()
                ));
                (c, h)
            }
            Err(e) => {
                say(&format!("cannot log in to the cloud: {e}"));
                ("<cinder>".into(), "<heat>".into())
            }
        };
        for m in &self.members {
            if !done("promote") {
                say(&format!(
                    "would call {}: primary {{resource: {}, force: true}}",
                    m.socket.display(),
                    m.resource
                ));
            }
        }
        let todo: Vec<_> = self
            .plan
            .volumes
            .iter()
            .filter(|v| !done(&format!("import:{}", v.key())))
            .collect();
        for m in &self.members {
            if todo.iter().any(|v| v.resource == m.resource) {
                say(&format!(
                    "would call {}: dr.handover {{resource: {}, export_dir: {:?}}}",
                    m.socket.display(),
                    m.resource,
                    self.plan.cinder_export_dir
                ));
            }
        }
        for v in todo {
            let body = super::openstack::manage_body(
                &self.plan.cinder_host,
                &self.source_name(v, &format!("<disk of {}>", v.key())),
                &format!("{}-{}", self.plan.name, v.flat_key()),
                v.bootable,
                &self.metadata(v),
            );
            say(&format!("would POST {cinder}/manageable_volumes {body}"));
            say(&format!(
                "would poll GET {cinder}/volumes/<id> until available"
            ));
        }
        say(&format!(
            "would rewrite {} and POST {heat}/stacks {{stack_name: {}}}, then poll until CREATE_COMPLETE",
            self.plan.template.display(),
            self.plan.stack_name
        ));
        self.report(records, true).await
    }

    /// The report from the journal (and the stack's and volumes' current status).
    pub async fn report(
        &self,
        records: &[journal::Record],
        dry_run: bool,
    ) -> Result<Report, OrchError> {
        let d = |s: &str| journal::done_data(records, OP, s);
        let stack = d("stack");
        // The decision: the start of the check that let the recovery through (refused
        // attempts before it were no decision to recover).
        let first_ok = records
            .iter()
            .position(|r| r.op == OP && r.step == "check" && r.phase == journal::Phase::Done);
        let t_first = first_ok.and_then(|i| {
            records[..i]
                .iter()
                .rev()
                .find(|r| r.op == OP && r.step == "check" && r.phase == journal::Phase::Begin)
                .map(|r| r.ts_ms)
        });
        let t_stack = records
            .iter()
            .rev()
            .find(|r| r.op == OP && r.step == "stack" && r.phase == journal::Phase::Done)
            .map(|r| r.ts_ms);
        let rpo = d("check")
            .and_then(|c| c.get("link_lost"))
            .cloned()
            .unwrap_or(Value::Null);
        let rpo_seconds = rpo.as_object().and_then(|o| {
            o.values()
                .map(|l| {
                    let at = l.get("at_unix_ms")?.as_u64()?;
                    let last = l.get("last_received_unix_ms")?.as_u64()?;
                    Some(report::secs(at.saturating_sub(last)))
                })
                .collect::<Option<Vec<f64>>>()
                .map(|v| v.into_iter().fold(0.0, f64::max))
        });
        let volumes = self
            .plan
            .volumes
            .iter()
            .map(|v| {
                let i = d(&format!("import:{}", v.key()));
                VolumeReport {
                    resource: v.resource.clone(),
                    volume: v.volume,
                    node: daemons::member_of(&self.members, &v.resource)
                        .map(|m| m.node.clone())
                        .unwrap_or_default(),
                    cinder_id: i.and_then(|i| i["cinder_id"].as_str()).map(str::to_owned),
                    status: i
                        .and_then(|i| i["status"].as_str())
                        .unwrap_or("not imported")
                        .to_owned(),
                }
            })
            .collect();
        Ok(Report {
            plan: self.plan.name.clone(),
            stack_name: self.plan.stack_name.clone(),
            stack_id: stack
                .and_then(|s| s["stack_id"].as_str())
                .map(str::to_owned),
            stack_status: stack
                .and_then(|s| s["stack_status"].as_str())
                .map(str::to_owned),
            volumes,
            steps: report::steps(records, OP),
            rto_seconds: match (t_first, t_stack) {
                (Some(a), Some(b)) => Some(report::secs(b.saturating_sub(a))),
                _ => None,
            },
            rpo_seconds,
            rpo,
            journal: self.journal_path().display().to_string(),
            rewrite: d("rewrite").cloned().unwrap_or(Value::Null),
            dry_run,
        })
    }
}
