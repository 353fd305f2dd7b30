//! The DRBD admin commands that are not a single control call: `create-md` (offline, from
//! the config, like `drbdadm create-md`), `wait-connect` and `wait-sync` (follow the event
//! bus until the state is reached), and the `check-config` report of what a start would do.

use crate::config;

use super::{exit, node_name, Global};

/// `drl create-md RES`: create the resource's metadata explicitly (DRBD's `create-md`). Needs
/// the config, not the daemon; refused while a daemon holds the resource, and never over an
/// existing metadata file.
pub fn create_md(g: &Global, resource: &str) -> i32 {
    let Some(file) = &g.config else {
        eprintln!("drl create-md: --config FILE is required");
        return exit::USAGE;
    };
    let node = node_name(g);
    let cfg = match config::load(file, &node) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drl: {e}");
            return exit::USAGE;
        }
    };
    let Some(rc) = cfg.resources.iter().find(|r| r.name == resource) else {
        eprintln!(
            "drl create-md: no resource {resource:?} for node {node} in {}",
            file.display()
        );
        return exit::USAGE;
    };
    let claimed = match crate::daemon::Claimed::take(rc) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drl create-md: {resource}: {e}");
            return exit::FAILED;
        }
    };
    for (plan, v) in claimed.plans().iter().zip(&rc.volumes) {
        if !plan.create_meta {
            eprintln!(
                "drl create-md: {resource}: {} already holds metadata; drl never reinitialises it (remove it by hand to start this node over)",
                v.local.meta.display()
            );
            return exit::FAILED;
        }
    }
    match crate::daemon::create_meta(rc, &cfg.node) {
        Ok(()) => {
            let metas: Vec<String> = rc
                .volumes
                .iter()
                .map(|v| v.local.meta.display().to_string())
                .collect();
            println!(
                "{resource}: new metadata {} ({})",
                metas.join(", "),
                if rc.peer.is_some() {
                    "Secondary, Inconsistent: `drl primary --force` on one node starts the initial sync"
                } else {
                    "Primary, UpToDate"
                }
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("drl create-md: {resource}: {e}");
            exit::FAILED
        }
    }
}

/// `check-config`'s report of one resource's files: what a start would create or grow, or why
/// it would be refused. Returns false when the start would be refused.
pub fn report_plan(rc: &config::ResourceConfig) -> bool {
    match crate::daemon::plan_volumes(rc) {
        Ok(plans) => {
            for (p, target) in plans.iter().zip(crate::daemon::claim_targets(rc)) {
                for line in p.describe(&target) {
                    println!("  {line}");
                }
            }
            true
        }
        Err(e) => {
            eprintln!("drl: resource {}: {e}", rc.name);
            false
        }
    }
}

/// What `wait-connect` / `wait-sync` wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// The connection is Connected (DRBD's `wait-connect`).
    Connect,
    /// Connected, replication Established and both disks UpToDate: no resync is left
    /// (DRBD's `wait-sync`).
    Sync,
}

/// Whether `r` (one resource of `status`) is where `w` waits to be; `Err` when it will not get
/// there without the admin (StandAlone: disconnected by the admin or a split brain).
pub fn reached(w: WaitFor, r: &serde_json::Value) -> Result<bool, String> {
    if r["peer_node"].is_null() {
        return Err("it is not replicated (no peer in the config)".into());
    }
    if r["connection"] == "StandAlone" {
        let why = r["split_brain"]
            .as_str()
            .map(|s| format!("split brain: {s}"))
            .or_else(|| r["connection_error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "disconnected by the admin".into());
        return Err(format!(
            "it is StandAlone ({why}) and will not connect without `drl connect`"
        ));
    }
    let connected = r["connection"] == "Connected";
    Ok(match w {
        WaitFor::Connect => connected,
        WaitFor::Sync => {
            connected
                && r["replication"] == "Established"
                && r["disk"] == "UpToDate"
                && r["peer_disk"] == "UpToDate"
        }
    })
}

/// A failed call of a waiting command: the daemon refused (exit 1), or it went away (exit 3,
/// the same as when it goes away while the command waits).
pub fn gone_or_refused(cmd: &str, e: &crate::control::ControlError) -> i32 {
    if e.rpc_error().is_some() {
        eprintln!("drl {cmd}: {}", e.admin_message());
        exit::FAILED
    } else {
        eprintln!("drl {cmd}: the daemon went away: {e}");
        exit::UNREACHABLE
    }
}

/// `drl wait-connect RES` / `drl wait-sync RES`: subscribe to the resource's events, then
/// read its status once and again after every event, until it is reached. No polling: the
/// daemon's event bus says when anything moved.
pub fn wait(g: &Global, resource: &str, w: WaitFor, timeout_s: u64) -> i32 {
    use crate::control::{EventFilter, Received};
    let cmd = match w {
        WaitFor::Connect => "wait-connect",
        WaitFor::Sync => "wait-sync",
    };
    super::runtime().block_on(async {
        // Subscribe first, so no change between the status read and the subscription is missed.
        let sub = match super::connect(g).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let mut events = match sub
            .subscribe(EventFilter {
                resource: Some(resource.to_owned()),
            })
            .await
        {
            Ok(s) => s,
            Err(e) => return gone_or_refused(cmd, &e),
        };
        let mut client = match super::connect(g).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let deadline = (timeout_s > 0)
            .then(|| tokio::time::Instant::now() + std::time::Duration::from_secs(timeout_s));
        let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        loop {
            let r = match client
                .call("status", serde_json::json!({ "resource": resource }))
                .await
            {
                Ok(v) => v["resources"][0].clone(),
                Err(e) => return gone_or_refused(cmd, &e),
            };
            match reached(w, &r) {
                Ok(true) => {
                    if progress {
                        eprint!("\r\x1b[K");
                    }
                    println!(
                        "{resource}: {} {}/{} {}",
                        r["connection"].as_str().unwrap_or("-"),
                        r["disk"].as_str().unwrap_or("-"),
                        r["peer_disk"].as_str().unwrap_or("-"),
                        r["replication"].as_str().unwrap_or("-")
                    );
                    return exit::OK;
                }
                Ok(false) => {}
                Err(why) => {
                    eprintln!("drl {cmd}: {resource}: {why}");
                    return exit::FAILED;
                }
            }
            if progress {
                eprint!(
                    "\r\x1b[K{resource}: {} {}",
                    r["connection"].as_str().unwrap_or("-"),
                    super::status::replication_cell(&r)
                );
            }
            // Wait for the next event of this resource (any change may be the one).
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, events.next()).await.ok(),
                    None => Some(events.next().await),
                }
            };
            match next.await {
                None => {
                    eprintln!(
                        "\ndrl {cmd}: {resource}: timed out after {timeout_s} s ({} {})",
                        r["connection"].as_str().unwrap_or("-"),
                        super::status::replication_cell(&r)
                    );
                    return exit::FAILED;
                }
                Some(Ok(Some(Received::Event(_) | Received::Lost(_)))) => {}
                Some(Ok(None)) | Some(Err(_)) => {
                    eprintln!("\ndrl {cmd}: the daemon went away");
                    return exit::UNREACHABLE;
                }
            }
        }
    })
}

/// `drl import-drbd FILE.res`: print the equivalent drl TOML on stdout, and what could not be
/// carried over (also in the TOML as comments) on stderr.
pub fn import_drbd(a: &ImportDrbdArgs) -> i32 {
    let text = match std::fs::read_to_string(&a.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("drl import-drbd: {}: {e}", a.file.display());
            return exit::USAGE;
        }
    };
    let opts = drbd_compat::import::ImportOptions {
        size: a.size.clone(),
        meta_dir: a.meta_dir.clone(),
        nbd_dir: a.nbd_dir.clone(),
    };
    match crate::config::import_drbd(&text, &opts) {
        Ok(got) => {
            print!("{}", got.toml);
            for u in &got.unmapped {
                eprintln!("drl import-drbd: not carried over: {u}");
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("drl import-drbd: {}: {e}", a.file.display());
            exit::USAGE
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ImportDrbdArgs {
    /// The DRBD resource file (`/etc/drbd.d/r0.res`; include statements are not followed).
    pub file: std::path::PathBuf,
    /// The volume size when the file sets none (DRBD takes it from the backing disk); DRBD's
    /// units (`64M`, `10G`; a bare number is KiB).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// Directory of drl's metadata files for `meta-disk internal` (DIR/RES.meta).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/drl")]
    pub meta_dir: String,
    /// Directory of the NBD export sockets that replace /dev/drbdN (DIR/RES.nbd).
    #[arg(long, value_name = "DIR", default_value = "/run/drl")]
    pub nbd_dir: String,
}

/// `drl adjust [RES] [--json]`: one line per change (`applied:`, `pending:`, `refused:`), or
/// the report as JSON; exit 1 when anything was refused (also with `--json`).
pub fn adjust(g: &Global, resource: Option<&str>, json: bool) -> i32 {
    let params = match resource {
        Some(r) => serde_json::json!({ "resource": r }),
        None => serde_json::json!({}),
    };
    super::runtime().block_on(async {
        let mut client = match super::connect(g).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let v = match client.call("adjust", params).await {
            Ok(v) => v,
            Err(e) => return super::print_error("adjust", &e, json),
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            let mut out = String::new();
            for k in ["applied", "pending", "refused"] {
                for line in v[k].as_array().into_iter().flatten() {
                    out += &format!("{k}: {}\n", line.as_str().unwrap_or("-"));
                }
            }
            if out.is_empty() {
                out = "nothing changed\n".into();
            }
            print!("{out}");
        }
        if v["refused"].as_array().is_some_and(|l| !l.is_empty()) {
            exit::FAILED
        } else {
            exit::OK
        }
    })
}
