//! The recovery report and timeline, built from the journal: every step with its duration,
//! the RTO (from the decision, the first `check`, to `CREATE_COMPLETE`) and the RPO (from the
//! daemons' own records of the moment the replication link was lost).

use serde::Serialize;
use serde_json::Value;

use super::journal::{Phase, Record};

#[derive(Clone, Debug, Serialize)]
pub struct VolumeReport {
    pub resource: String,
    /// The volume's number in a consistency group (absent for a one-volume resource).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<u16>,
    pub node: String,
    pub cinder_id: Option<String>,
    pub status: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub name: String,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub plan: String,
    pub stack_name: String,
    pub stack_id: Option<String>,
    pub stack_status: Option<String>,
    pub volumes: Vec<VolumeReport>,
    pub steps: Vec<StepReport>,
    pub rto_seconds: Option<f64>,
    /// Upper bound of the data lost: per resource, from the last write the backup received to
    /// the moment its link was lost (the largest over the plan's resources).
    pub rpo_seconds: Option<f64>,
    pub rpo: Value,
    pub journal: String,
    /// Stack parameters and by-value replacements of the template rewrite.
    pub rewrite: Value,
    pub dry_run: bool,
}

/// Steps of `op` in order, each timed from its last `begin` to its `done`.
pub fn steps(records: &[Record], op: &str) -> Vec<StepReport> {
    let mut out: Vec<StepReport> = Vec::new();
    let mut begun: Vec<(String, u64)> = Vec::new();
    for r in records.iter().filter(|r| r.op == op) {
        match r.phase {
            Phase::Begin => {
                begun.retain(|(s, _)| s != &r.step);
                begun.push((r.step.clone(), r.ts_ms));
            }
            Phase::Done => {
                if let Some(i) = begun.iter().position(|(s, _)| s == &r.step) {
                    let (_, t0) = begun.remove(i);
                    out.retain(|s| s.name != r.step);
                    out.push(StepReport {
                        name: r.step.clone(),
                        seconds: secs(r.ts_ms.saturating_sub(t0)),
                    });
                }
            }
            Phase::Failed => {
                begun.retain(|(s, _)| s != &r.step);
            }
        }
    }
    out
}

pub fn secs(ms: u64) -> f64 {
    (ms as f64 / 10.0).round() / 100.0
}

/// The report as text: the timeline, then RTO and RPO.
pub fn render(r: &Report) -> String {
    let mut rows = vec![vec!["step".to_string(), "seconds".to_string()]];
    for s in &r.steps {
        rows.push(vec![s.name.clone(), format!("{:.2}", s.seconds)]);
    }
    let mut out = String::new();
    if r.dry_run {
        out += "dry run: nothing was changed\n";
    }
    out += &format!("plan {}: stack {}", r.plan, r.stack_name);
    if let (Some(id), Some(st)) = (&r.stack_id, &r.stack_status) {
        out += &format!(" {id} {st}");
    }
    out += "\n";
    for v in &r.volumes {
        let name = match v.volume {
            None => v.resource.clone(),
            Some(n) => format!("{}/{n}", v.resource),
        };
        out += &format!(
            "  {name} on {}: cinder volume {} {}\n",
            v.node,
            v.cinder_id.as_deref().unwrap_or("-"),
            v.status
        );
    }
    out += &crate::table::align_columns(&rows);
    let f = |x: Option<f64>| x.map_or("unknown".into(), |v| format!("{v:.2} s"));
    out += &format!("RTO {}   RPO <= {}\n", f(r.rto_seconds), f(r.rpo_seconds));
    out += &format!("journal: {}\n", r.journal);
    out
}
