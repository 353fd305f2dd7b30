//! `drl dr ...`: protection plans and recovery (the orchestrator in `crate::orchestrator`).
//! Runs in the CLI process at the backup site; needs `--config` (plans, nodes, `[openstack]`)
//! and `--node` (this node: its site is where plans recover).

use clap::{Args, Subcommand};

use super::{exit, node_name, runtime, Global};
use crate::config::{self, NodeConfig};
use crate::orchestrator::{checkpoint, failback, recover, report};

#[derive(Subcommand, Debug)]
pub enum DrCmd {
    /// Check a plan and store a checkpoint of it (template, ID map, volumes with sizes and
    /// generation ids) in the checkpoint store (`[dr] checkpoints`: the vault or Swift).
    ///
    /// Refused unless every resource of the plan replicates now (Connected), the template
    /// parses as HOT and every primary-id appears in it (or its parameter is declared).
    Protect(PlanArgs),
    /// List plans, or show one plan's checkpoints and each volume's protection state.
    #[command(subcommand)]
    Plan(PlanCmd),
    /// Bring a plan's workload up at this site after the primary site failed.
    ///
    /// Steps, each journaled (fsync) before and after in `[dr] state-dir`/PLAN.journal:
    /// check (refused while a resource is still Connected to its peer, or while the old primary
    /// is not known to be down), promote every resource (all or none), import each promoted
    /// volume into Cinder (manage-existing; waits for `available`), rewrite the plan's HOT
    /// template (primary-site volume IDs -> imported IDs), create the stack with Heat (waits
    /// for CREATE_COMPLETE). Prints the timeline with RTO and RPO.
    ///
    /// Stopped anywhere (kill -9, Cinder or Heat down, a wrong password), the same command
    /// resumes: a volume is looked up by its metadata before it is imported, a stack by its
    /// name before it is created, so nothing is imported twice and no second stack appears.
    Recover(RecoverArgs),
    /// Fail back: the old primary, back as Secondary, resyncs from this site; volumes handed
    /// to Cinder are compared by digest (online verify) and only differing blocks resync;
    /// then the stack is deleted, the volumes unmanaged (the data stays), this site demoted
    /// and the old primary promoted. Last, with `[[plan]] primary-stack-name`, the workload
    /// comes up at the primary site: that stack from the plan's template (its primary-site
    /// volume IDs as written) in `[primary-openstack]`'s cloud, waited for until
    /// CREATE_COMPLETE; without it the admin starts the workload there.
    ///
    /// Journaled like recover: stopped anywhere, the same command resumes.
    Failback(FailbackArgs),
    /// Each plan's state in Cinder's replication vocabulary (enabled, failing-over,
    /// failed-over, failover-error, failing-back) and its RPO alarm.
    Status(JsonArgs),
}

#[derive(Subcommand, Debug)]
pub enum PlanCmd {
    /// Every plan with its state, checkpoint count and last checkpoint's age.
    List(JsonArgs),
    /// One plan: checkpoints, and per volume: disk state at this site, connection, lag.
    Show(PlanArgs),
}

#[derive(Args, Debug)]
pub struct JsonArgs {
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The plan (its `[[plan]] name`).
    pub plan: String,
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// The plan (its `[[plan]] name`).
    pub plan: String,
    /// Print every call the recovery would make and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The admin's word that the old primary site is down (until site-failure detection
    /// says so by itself).
    #[arg(long)]
    pub confirm_primary_down: bool,
    /// Recover even while a resource is still Connected to its peer: disconnects it first.
    /// Two Primaries may then write: only for a primary site known to be isolated.
    #[arg(long)]
    pub force: bool,
    /// The report as JSON: plan, stack_id, stack_status, volumes, steps, rto_seconds,
    /// rpo_seconds.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FailbackArgs {
    /// The plan (its `[[plan]] name`).
    pub plan: String,
    /// The workload is stopped (or may be stopped): delete the recovery stack without
    /// asking. Without it, fail back stops after the resync and says what it waits for.
    #[arg(long)]
    pub stop_workload: bool,
    /// Machine-readable JSON report.
    #[arg(long)]
    pub json: bool,
}

fn load(g: &Global) -> Result<NodeConfig, i32> {
    let Some(file) = &g.config else {
        eprintln!("drl dr: --config FILE is required (plans, nodes and [openstack] live there)");
        return Err(exit::USAGE);
    };
    config::load(file, &node_name(g)).map_err(|e| {
        eprintln!("drl: {e}");
        exit::USAGE
    })
}

/// One recorded protection action, as `drl dr protect` and `drl dr plan show` print it.
fn action_line(a: &serde_json::Value) -> String {
    let s = |k: &str| a[k].as_str().unwrap_or("?").to_owned();
    match a["kind"].as_str() {
        Some("image") => format!(
            "image {} at {} ({} of {} bytes uploaded)",
            s("file"),
            s("stored_at"),
            a["bytes_uploaded"],
            a["size_bytes"]
        ),
        _ => format!(
            "{} {} of {} at {}",
            s("kind"),
            s("snapshot"),
            s("resource"),
            s("stored_at")
        ),
    }
}

fn say(line: &str) {
    eprintln!("drl dr: {line}");
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn run(g: &Global, c: &DrCmd) -> i32 {
    let cfg = match load(g) {
        Ok(c) => c,
        Err(code) => return code,
    };
    runtime().block_on(async {
        match c {
            DrCmd::Protect(a) => {
                let plan = match recover::find_plan(&cfg, &a.plan) {
                    Ok(p) => p,
                    Err(e) => return fail(e),
                };
                match checkpoint::protect(&cfg, plan).await {
                    Ok((cp, name)) => {
                        if a.json {
                            print_json(&serde_json::json!({ "plan": cp.plan, "checkpoint": name, "volumes": cp.volumes, "actions": cp.actions }));
                        } else {
                            println!("plan {}: checkpoint {name}", cp.plan);
                            for v in &cp.volumes {
                                let name = match v.volume {
                                    None => v.resource.clone(),
                                    Some(n) => format!("{}/{n}", v.resource),
                                };
                                println!("  {name} on {} ({}): {} bytes, {}", v.node, v.peer, v.size_bytes, v.disk);
                            }
                            for a in cp.actions.iter().take(8) {
                                println!("  action: {}", action_line(a));
                            }
                            if cp.actions.len() > 8 {
                                println!("  ... {} actions in all", cp.actions.len());
                            }
                        }
                        exit::OK
                    }
                    Err(e) => fail(e),
                }
            }
            DrCmd::Plan(PlanCmd::List(a)) | DrCmd::Status(a) => {
                let mut all = Vec::new();
                for p in &cfg.plans {
                    all.push(checkpoint::plan_json(&cfg, p, false).await);
                }
                if a.json {
                    print_json(&serde_json::json!({ "plans": all }));
                } else {
                    let mut rows = vec![["plan", "state", "resources", "checkpoints", "last", "rpo alarm"].map(String::from).to_vec()];
                    for p in &all {
                        rows.push(vec![
                            p["plan"].as_str().unwrap_or("").into(),
                            p["state"].as_str().unwrap_or("").into(),
                            p["resources"].as_array().map(|r| r.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default(),
                            p["checkpoint_count"].to_string(),
                            p["last_checkpoint_age_s"].as_u64().map_or("-".into(), |s| format!("{s}s ago")),
                            if p["rpo_alarm"] == true { "ALARM".into() } else { "ok".into() },
                        ]);
                    }
                    print!("{}", super::align_columns(&rows));
                }
                exit::OK
            }
            DrCmd::Plan(PlanCmd::Show(a)) => {
                let plan = match recover::find_plan(&cfg, &a.plan) {
                    Ok(p) => p,
                    Err(e) => return fail(e),
                };
                let v = checkpoint::plan_json(&cfg, plan, true).await;
                if a.json {
                    print_json(&v);
                } else {
                    println!("plan {}: {} (stack {})", a.plan, v["state"].as_str().unwrap_or(""), plan.stack_name);
                    if let Some(e) = v["error"].as_str() {
                        println!("  stopped at {e}");
                    }
                    for c in v["checkpoints"].as_array().into_iter().flatten() {
                        println!("  checkpoint {}", c.as_str().unwrap_or(""));
                    }
                    for x in v["volumes"].as_array().into_iter().flatten() {
                        println!("  {} on {}: {} {} {} lag {} ms, out of sync {} bytes", x["resource"].as_str().unwrap_or(""), x["node"].as_str().unwrap_or(""), x["role"], x["disk"], x["connection"], x["lag_ms"], x["out_of_sync_bytes"]);
                    }
                    for x in v["actions"].as_array().into_iter().flatten().take(8) {
                        println!("  action: {}", action_line(x));
                    }
                }
                exit::OK
            }
            DrCmd::Recover(a) => {
                let plan = match recover::find_plan(&cfg, &a.plan) {
                    Ok(p) => p,
                    Err(e) => return fail(e),
                };
                let opts = recover::RecoverOptions {
                    dry_run: a.dry_run,
                    confirm_primary_down: a.confirm_primary_down,
                    force: a.force,
                };
                let rec = match recover::Recovery::new(&cfg, plan, opts, &say) {
                    Ok(r) => r,
                    Err(e) => return fail(e),
                };
                if !a.dry_run {
                    event(&cfg, plan, "failing-over", serde_json::json!({})).await;
                }
                match rec.run().await {
                    Ok(r) => {
                        if !a.dry_run {
                            event(&cfg, plan, "failed-over", serde_json::json!({ "stack_id": r.stack_id, "rto_seconds": r.rto_seconds })).await;
                        }
                        if a.json {
                            print_json(&r);
                        } else {
                            print!("{}", report::render(&r));
                        }
                        exit::OK
                    }
                    Err(s) => {
                        if !a.dry_run {
                            event(&cfg, plan, "failover-error", serde_json::json!({ "step": s.step, "error": s.error.to_string(), "journal": s.journal })).await;
                        }
                        eprintln!("drl dr recover {}: stopped at step {}: {}", a.plan, s.step, s.error);
                        eprintln!("drl dr recover {}: journal {}; fix the cause and run the same command to resume", a.plan, s.journal);
                        exit::FAILED
                    }
                }
            }
            DrCmd::Failback(a) => {
                let plan = match recover::find_plan(&cfg, &a.plan) {
                    Ok(p) => p,
                    Err(e) => return fail(e),
                };
                event(&cfg, plan, "failing-back", serde_json::json!({})).await;
                match failback::failback(&cfg, plan, a.stop_workload, &say).await {
                    Ok(v) => {
                        event(&cfg, plan, "enabled", serde_json::json!({ "failed_back": true })).await;
                        if a.json {
                            print_json(&v);
                        } else {
                            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                        }
                        exit::OK
                    }
                    Err(e) => {
                        event(&cfg, plan, "failover-error", serde_json::json!({ "step": "failback", "error": e.to_string() })).await;
                        fail(e)
                    }
                }
            }
        }
    })
}

/// A `plan` event on this node's daemon (best effort: a daemon that is down is said, not
/// fatal; the journal is the record).
async fn event(
    cfg: &NodeConfig,
    plan: &crate::config::plan::PlanConfig,
    state: &str,
    fields: serde_json::Value,
) {
    if let Err(e) = crate::orchestrator::daemons::plan_event(cfg, plan, state, fields).await {
        say(&format!("plan event {state} not published: {e}"));
    }
}

fn fail(e: crate::orchestrator::OrchError) -> i32 {
    eprintln!("drl dr: {e}");
    match e {
        crate::orchestrator::OrchError::Config(_) => exit::USAGE,
        _ => exit::FAILED,
    }
}
