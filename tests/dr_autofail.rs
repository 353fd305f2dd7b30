//! The link between site-failure detection (issue 11) and recovery (issue 10), driven through
//! the real lease: the three-site detection testbed (namespaces `drl-det-af-*`, one Debian etcd
//! member per site), `r0` replicated site-a -> site-b, and a plan (a random `af-XXXXXXXX`
//! name, the stack's too) with `failover = "automatic"` against the real cloud of
//! scripts/openstack-aio.sh.
//!
//! The cloud listens on the host's 127.0.0.1 and site B is a network namespace: the plan's
//! Keystone URL (127.0.0.1:5050, as the catalog's URLs) answers there only once
//! `detect-testbed.sh bridge-cloud b` relays the catalog's ports into the namespace. The test
//! starts without the bridge: a recovery that passes the lease gate stops at its Keystone
//! login, with Keystone's error in the journal and a `failover-error` event, while one refused
//! by the gate stops with "refused". That distinguishes what the first part guards: that the
//! lease is what lets the recovery start, that the daemon starts it by itself after a site
//! kill with no admin command, and that a daemon restart resumes it from the journal. Then the
//! bridge comes up and the daemon's own retry completes the recovery: the volume imported into
//! Cinder and the stack `CREATE_COMPLETE` on the imported ID, with no admin command.

mod common;

use serde_json::Value;

use common::detect::{events, first_event, is_lease, scope, wait_for, Bed};
use common::dr::{cleanup_plan, leftover_volumes, need_openstack, rt, EXPORT, KS_PASSWORD, KS_URL};
use common::pair::{in_sync, res, EventsTap};
use common::Node;

const TTL_S: u64 = 3;
const PRIMARY_ID: &str = "0e5b7c8e-0d7e-4c39-9d6f-5a1f2b7c1a10";

/// Heat checks the parameter against Cinder (`cinder.volume`): the stack completes only on a
/// volume that exists at the backup site, i.e. the imported one.
const TEMPLATE: &str = "heat_template_version: 2018-08-31
parameters:
  data_volume: {type: string, default: PRIMARY_ID, constraints: [{custom_constraint: cinder.volume}]}
resources:
  data:
    type: OS::Heat::Value
    properties: {type: string, value: {get_param: data_volume}}
";

fn config(bed: &Bed, plan: &str) -> String {
    let d = bed.d().display();
    std::fs::write(
        bed.d().join("plan.yaml"),
        TEMPLATE.replace("PRIMARY_ID", PRIMARY_ID),
    )
    .unwrap();
    // A whole GiB (sparse): Cinder sizes an imported volume in GiB.
    bed.config(TTL_S, "")
        .replace("size = \"16MiB\"", "size = \"1GiB\"")
        + &format!(
            "\n[openstack]\nauth-url = \"{KS_URL}\"\nusername = \"admin\"\npassword = \"{KS_PASSWORD}\"\nproject = \"admin\"\n\n[dr]\nstate-dir = \"{d}/dr\"\n\n[[plan]]\nname = \"{plan}\"\nresources = [\"r0\"]\ntemplate = \"{d}/plan.yaml\"\ncinder-host = \"aio@nfs#nfs\"\ncinder-export-dir = \"{EXPORT}\"\nfailover = \"automatic\"\n\n[plan.volume.r0]\nprimary-id = \"{PRIMARY_ID}\"\nparameter = \"data_volume\"\n"
        )
}

/// Leaves the shared cloud as it was (stack deleted, volume unmanaged), also on a panic.
struct CloudCleanup(String, std::path::PathBuf);

impl Drop for CloudCleanup {
    fn drop(&mut self) {
        cleanup_plan(&self.0, &self.1);
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_plan(e: &Value, plan: &str, state: &str) -> bool {
    e["object"] == "plan" && e["name"] == plan && e["fields"]["state"] == state
}

/// `drl dr status --json` of `node`: the state of `plan`.
fn dr_state(node: &Node, plan: &str) -> Option<(String, String)> {
    let out = node.cli(&["dr", "status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let plans = v.get("plans").cloned().unwrap_or(v);
    let p = plans
        .as_array()?
        .iter()
        .find(|p| p["plan"] == plan)?
        .clone();
    Some((
        p["state"].as_str()?.to_owned(),
        p["error"].as_str().unwrap_or("").to_owned(),
    ))
}

/// While site A holds the lease, `drl dr recover` at B is refused and names the holder, with
/// or without `--confirm-primary-down`. After A dies, B's daemon takes the lease over and
/// recovers the plan by itself (the failover gets past the lease gate to its Keystone login);
/// `drl dr recover` at B without `--confirm-primary-down` gets past the gate too; a restart
/// of B's daemon resumes the unfinished recovery from its journal. Once the cloud is bridged
/// into B's namespace, the daemon's next retry completes: volume imported, stack
/// `CREATE_COMPLETE` on the imported ID.
#[test]
fn the_backup_recovers_an_automatic_plan_once_it_holds_the_lease() {
    need_openstack();
    let bed = Bed::up("af");
    let plan = format!("af-{:08x}", rand::random::<u32>());
    let _cleanup = CloudCleanup(plan.clone(), bed.d().to_owned());
    let plan = plan.as_str();
    let cfg = config(&bed, plan);
    let (a, b) = bed.start_pair_primary_a_with(&cfg);

    // 1. The lease is A's: refused, naming it, even with the admin's word (--force gets past
    //    the "still Connected" check by disconnecting, to reach the lease gate).
    for extra in [&[][..], &["--confirm-primary-down"][..]] {
        let mut args = vec!["dr", "recover", plan, "--force"];
        args.extend_from_slice(extra);
        let out = b.cli(&args);
        assert!(!out.status.success(), "recover {extra:?} must be refused");
        let e = stderr(&out);
        assert!(
            e.contains("refused") && e.contains("held by site-a"),
            "recover {extra:?} at B while A holds the lease: {e}"
        );
    }
    assert_eq!(
        res(&b, "r0").unwrap()["role"],
        "Secondary",
        "a refused recovery promotes nothing"
    );
    let out = b.cli(&["connect", "r0"]);
    assert!(out.status.success(), "connect at B: {}", stderr(&out));
    wait_for("r0 in sync again", &[&a, &b], || {
        res(&a, "r0").is_some_and(|r| in_sync(&r)) && res(&b, "r0").is_some_and(|r| in_sync(&r))
    });

    // 2. Site A dies; no admin command from here on.
    let tap = EventsTap::start(&b);
    bed.sh(&["kill-site", "a"]);
    wait_for(
        "B's daemon started the automatic failover and it stopped at Keystone",
        &[&a, &b],
        || tap.contains("\"failover-error\""),
    );
    let evs = events(&tap.text());
    let (took, _) = first_event(&evs, |e| is_lease(e, "takeover")).expect("takeover event");
    let (started, _) =
        first_event(&evs, |e| is_plan(e, plan, "failing-over")).expect("failing-over event");
    let (_, err) =
        first_event(&evs, |e| is_plan(e, plan, "failover-error")).expect("failover-error event");
    assert!(
        took <= started,
        "the failover starts after the takeover:\n{}",
        tap.text()
    );
    let msg = err["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        msg.to_lowercase().contains("keystone") && !msg.contains("refused"),
        "the automatic recovery passed the lease gate and stopped at its login: {err}"
    );
    assert_eq!(err["fields"]["step"], "check", "{err}");
    let journal = std::fs::read_to_string(bed.d().join(format!("dr/{plan}.journal"))).unwrap();
    assert!(
        journal.contains("\"check\"") && journal.to_lowercase().contains("keystone"),
        "the journal records where it stopped: {journal}"
    );
    let (state, why) = dr_state(&b, plan).expect("drl dr status --json at B");
    assert_eq!(state, "failover-error", "{why}");
    assert!(why.to_lowercase().contains("keystone"), "{why}");
    assert_eq!(scope(&b, "r0").unwrap()["held_by_me"], true);

    // 3. The admin's command at B (inside site B, where the cloud is not bridged yet) needs
    //    no --confirm-primary-down now: past the gate too. (The daemon resumes every few
    //    seconds; while its run holds the journal's lock, the command is refused as
    //    "locked": ask again.)
    let at_b = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &bed.ns("b")])
            .arg(common::drl_bin())
            .arg("--config")
            .arg(&b.config)
            .args(["--node", "site-b"])
            .args(args)
            .output()
            .unwrap()
    };
    let mut out = at_b(&["dr", "recover", plan]);
    wait_for(
        "a run of drl dr recover not refused by the journal lock",
        &[&b],
        || {
            if !stderr(&out).contains("is locked") {
                return true;
            }
            out = at_b(&["dr", "recover", plan]);
            false
        },
    );
    let e = stderr(&out);
    assert!(
        !out.status.success() && e.to_lowercase().contains("keystone") && !e.contains("refused"),
        "drl dr recover at B holding the lease: {e}"
    );

    // 4. A restart of B's daemon resumes the unfinished recovery from the journal (once its
    //    lease is held again), without an admin command: a new failed check is journaled.
    wait_for("B promoted by detection (auto-promote)", &[&b], || {
        res(&b, "r0").is_some_and(|r| r["role"] == "Primary")
    });
    let failed = |j: &str| j.lines().filter(|l| l.contains("\"failed\"")).count();
    drop(tap);
    drop(b);
    let before =
        failed(&std::fs::read_to_string(bed.d().join(format!("dr/{plan}.journal"))).unwrap());
    let b = bed.start("b", &cfg);
    wait_for("B's restarted daemon resumed the failover", &[&b], || {
        std::fs::read_to_string(bed.d().join(format!("dr/{plan}.journal")))
            .is_ok_and(|j| failed(&j) > before)
    });
    let (state, why) = dr_state(&b, plan).expect("drl dr status --json at B");
    assert_eq!(state, "failover-error", "{why}");
    assert!(b.log_text().contains("resuming it"), "{}", b.log_text());

    // 5. The cloud becomes reachable from site B (the bridge); no admin command: the daemon's
    //    own retry imports the volume and creates the stack.
    let tap = EventsTap::start(&b);
    bed.sh(&["bridge-cloud", "b"]);
    wait_for(
        "B's daemon completed the automatic failover through the bridge",
        &[&b],
        || tap.contains("\"failed-over\""),
    );
    let evs = events(&tap.text());
    let (_, done) = first_event(&evs, |e| is_plan(e, plan, "failed-over")).expect("failed-over");
    assert_eq!(done["fields"]["stack_status"], "CREATE_COMPLETE", "{done}");
    let (state, why) = dr_state(&b, plan).expect("drl dr status --json at B");
    assert_eq!(state, "failed-over", "{why}");
    let vols = leftover_volumes(plan);
    assert_eq!(vols.len(), 1, "one imported volume: {vols:?}");
    let cloud = drl::orchestrator::openstack::Cloud::new(common::dr::auth(KS_PASSWORD)).unwrap();
    let stack = rt()
        .block_on(cloud.find_stack(plan))
        .unwrap()
        .expect("the stack");
    assert_eq!(stack.stack_status, "CREATE_COMPLETE", "{stack:?}");
    assert_eq!(
        stack.parameters.as_ref().unwrap()["data_volume"],
        vols[0].as_str(),
        "the stack refers to the imported volume: {stack:?}"
    );
    assert_eq!(Some(stack.id.as_str()), done["fields"]["stack_id"].as_str());
    let link = std::path::Path::new(EXPORT).join(format!("volume-{}", vols[0]));
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        bed.d().join("b/r0.img"),
        "Cinder's volume is B's replica"
    );
    drop(tap);
    drop(b);
    bed.sh(&["unbridge-cloud", "b"]);
    drop(a);
}
