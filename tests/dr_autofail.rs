//! The link between site-failure detection (issue 11) and recovery (issue 10), driven through
//! the real lease: the three-site detection testbed (namespaces `drl-det-af-*`, one Debian etcd
//! member per site), `r0` replicated site-a -> site-b, and a plan `web` with
//! `failover = "automatic"`.
//!
//! The plan's cloud is not reachable from the testbed's namespaces (OpenStack's all-in-one
//! listens on the host's 127.0.0.1), so the `[openstack]` of the plan points at a port nothing
//! answers in the witness site: a recovery that passes the lease gate stops at its Keystone
//! login, with Keystone's error in the journal and a `failover-error` event, while one refused
//! by the gate stops with "refused". That distinguishes exactly what these tests guard: that
//! the lease is what lets the recovery start, that the daemon starts it by itself after a site
//! kill with no admin command, and that a daemon restart resumes it from the journal.

mod common;

use serde_json::Value;

use common::detect::{events, first_event, is_lease, scope, wait_for, Bed, ADDR_W};
use common::pair::{in_sync, res, EventsTap};
use common::Node;

const TTL_S: u64 = 3;
/// Nothing listens here: Keystone "cannot be reached".
const KEYSTONE_PORT: u16 = 5959;

fn config(bed: &Bed) -> String {
    let d = bed.d().display();
    std::fs::write(
        bed.d().join("plan.yaml"),
        "heat_template_version: 2021-04-16\nresources:\n  data:\n    type: OS::Cinder::VolumeAttachment\n    properties:\n      instance_uuid: 11111111-2222-4333-8444-555555555555\n      volume_id: 0e5b7c8e-0d7e-4c39-9d6f-5a1f2b7c1a10\n",
    )
    .unwrap();
    bed.config(TTL_S, "")
        + &format!(
            "\n[openstack]\nauth-url = \"http://{ADDR_W}:{KEYSTONE_PORT}/v3\"\nusername = \"admin\"\npassword = \"secret\"\nproject = \"admin\"\n\n[dr]\nstate-dir = \"{d}/dr\"\n\n[[plan]]\nname = \"web\"\nresources = [\"r0\"]\ntemplate = \"{d}/plan.yaml\"\ncinder-host = \"aio@nfs#nfs\"\nfailover = \"automatic\"\n\n[plan.volume.r0]\nprimary-id = \"0e5b7c8e-0d7e-4c39-9d6f-5a1f2b7c1a10\"\n"
        )
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_plan(e: &Value, state: &str) -> bool {
    e["object"] == "plan" && e["name"] == "web" && e["fields"]["state"] == state
}

/// `drl dr status --json` of `node`: the state of plan `web`.
fn dr_state(node: &Node) -> Option<(String, String)> {
    let out = node.cli(&["dr", "status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let plans = v.get("plans").cloned().unwrap_or(v);
    let p = plans
        .as_array()?
        .iter()
        .find(|p| p["plan"] == "web")?
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
/// of B's daemon resumes the unfinished recovery from its journal.
#[test]
fn the_backup_recovers_an_automatic_plan_once_it_holds_the_lease() {
    let bed = Bed::up("af");
    let cfg = config(&bed);
    let (a, b) = bed.start_pair_primary_a_with(&cfg);

    // 1. The lease is A's: refused, naming it, even with the admin's word (--force gets past
    //    the "still Connected" check by disconnecting, to reach the lease gate).
    for extra in [&[][..], &["--confirm-primary-down"][..]] {
        let mut args = vec!["dr", "recover", "web", "--force"];
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
        first_event(&evs, |e| is_plan(e, "failing-over")).expect("failing-over event");
    let (_, err) =
        first_event(&evs, |e| is_plan(e, "failover-error")).expect("failover-error event");
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
    let journal = std::fs::read_to_string(bed.d().join("dr/web.journal")).unwrap();
    assert!(
        journal.contains("\"check\"") && journal.to_lowercase().contains("keystone"),
        "the journal records where it stopped: {journal}"
    );
    let (state, why) = dr_state(&b).expect("drl dr status --json at B");
    assert_eq!(state, "failover-error", "{why}");
    assert!(why.to_lowercase().contains("keystone"), "{why}");
    assert_eq!(scope(&b, "r0").unwrap()["held_by_me"], true);

    // 3. The admin's command at B needs no --confirm-primary-down now: past the gate too.
    //    (The daemon resumes every few seconds; while its run holds the journal's lock, the
    //    command is refused as "locked": ask again.)
    let mut out = b.cli(&["dr", "recover", "web"]);
    wait_for(
        "a run of drl dr recover not refused by the journal lock",
        &[&b],
        || {
            if !stderr(&out).contains("is locked") {
                return true;
            }
            out = b.cli(&["dr", "recover", "web"]);
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
    let before = failed(&std::fs::read_to_string(bed.d().join("dr/web.journal")).unwrap());
    let b = bed.start("b", &cfg);
    wait_for("B's restarted daemon resumed the failover", &[&b], || {
        std::fs::read_to_string(bed.d().join("dr/web.journal")).is_ok_and(|j| failed(&j) > before)
    });
    let (state, why) = dr_state(&b).expect("drl dr status --json at B");
    assert_eq!(state, "failover-error", "{why}");
    assert!(b.log_text().contains("resuming it"), "{}", b.log_text());
    drop(a);
}
