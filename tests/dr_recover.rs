//! The DR orchestrator against the real backup-site cloud (scripts/openstack-aio.sh: Keystone,
//! Cinder with the NFS driver, Heat, Nova with the fake driver): issue 10's full recovery, the
//! refusals that prevent a split brain, kill -9 after every step, and fail back with the
//! import trap (writes that went around drl). Two daemons at the backup site.

mod common;

use common::dr::*;
use common::pair::{assert_files_identical, res, WAIT};
use common::{qemu_io, wait_until};
use std::io::{Seek, SeekFrom, Write};

fn fill(s: &DrSites) {
    for i in 0..2 {
        let p = format!("write -P 0x{:x} 0 4M", 0xa0 + i);
        qemu_io(&s.nbd_uri("a1", i), &[&p, "write -P 0x5c 8M 1M"]);
    }
    s.wait_synced();
}

#[test]
fn full_recovery_with_a_server_then_fail_back_after_writes_around_drl() {
    need_openstack();
    // Fail back brings the workload up at the primary site: a second stack in the same cloud
    // from the plan's template, on the primary site's own volumes (a1's disks in Cinder).
    let home = format!(
        "[primary-openstack]\nauth-url = \"{KS_URL}\"\nusername = \"admin\"\npassword = \"{KS_PASSWORD}\"\nproject = \"admin\"\n"
    );
    let mut s = DrSites::start_with(
        SERVER_TEMPLATE,
        "primary-stack-name = \"{TAG}-home\"\n",
        KS_PASSWORD,
        &home,
    );
    s.register_primary_volumes();
    fill(&s);
    let out = s.drl(&["dr", "protect", &s.tag, "--json"], &[]);
    let cp = stdout_json(&out);
    assert_eq!(cp["volumes"].as_array().unwrap().len(), 2, "{cp}");
    let show = stdout_json(&s.drl(&["dr", "plan", "show", &s.tag, "--json"], &[]));
    assert_eq!(show["state"], "enabled", "{show}");
    assert_eq!(show["checkpoint_count"], 1, "{show}");
    // b2 is reached over its TCP control endpoint: a wrong token is refused there.
    let token = s.dir.path().join("control.token");
    let good = std::fs::read(&token).unwrap();
    std::fs::write(&token, "a-wrong-token-of-enough-bytes\n").unwrap();
    let show = stdout_json(&s.drl(&["dr", "plan", "show", &s.tag, "--json"], &[]));
    assert!(
        show["volumes"][1]["error"]
            .as_str()
            .unwrap_or("")
            .contains("refused the token"),
        "{show}"
    );
    assert_eq!(
        show["volumes"][0]["disk"], "UpToDate",
        "b1 (local socket) still answers: {show}"
    );
    std::fs::write(&token, good).unwrap();

    // Refused while the primary is alive and connected: no split brain.
    let out = s.drl(&["dr", "recover", &s.tag, "--confirm-primary-down"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("split brain") && err.contains("Connected"),
        "{err}"
    );
    for (i, r) in s.res.iter().enumerate() {
        assert_eq!(
            res(s.backup(i), r).unwrap()["role"],
            "Secondary",
            "nothing was promoted"
        );
    }

    s.kill_primary_site();
    // Refused while nobody says the primary site is down.
    let out = s.drl(&["dr", "recover", &s.tag], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--confirm-primary-down"),
        "{err}"
    );

    let dry = s.drl(
        &[
            "dr",
            "recover",
            &s.tag,
            "--confirm-primary-down",
            "--dry-run",
        ],
        &[],
    );
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        String::from_utf8_lossy(&dry.stderr).contains("would POST"),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(s.volumes().is_empty(), "the dry run imported nothing");
    assert_eq!(
        res(&s.b1, &s.res[0]).unwrap()["role"],
        "Secondary",
        "the dry run promoted nothing"
    );

    // The CLI's run shows on b1's event stream as the daemon's automatic ones do.
    let tap = common::pair::EventsTap::start(&s.b1);
    let rep = stdout_json(&s.drl(
        &["dr", "recover", &s.tag, "--confirm-primary-down", "--json"],
        &[],
    ));
    assert_eq!(rep["stack_status"], "CREATE_COMPLETE", "{rep}");
    eprintln!("recovery report: {rep}");
    wait_until("plan events failing-over, failed-over", WAIT, || {
        tap.contains("\"failing-over\"") && tap.contains("\"failed-over\"")
    });
    assert!(
        tap.text().contains(rep["stack_id"].as_str().unwrap()),
        "{}",
        tap.text()
    );
    drop(tap);
    assert!(rep["rto_seconds"].as_f64().unwrap() > 0.0, "{rep}");
    // RPO from the backup daemons' own record of the moment the link was lost.
    assert!(rep["rpo_seconds"].as_f64().is_some(), "{rep}");
    assert!(
        rep["rpo"][&s.res[0]]["last_received_unix_ms"].is_u64(),
        "{rep}"
    );
    let names: Vec<&str> = rep["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"promote") && names.contains(&"stack") && names.contains(&"rewrite"),
        "{rep}"
    );
    let vols = s.volumes();
    assert_eq!(vols.len(), 2, "one volume per resource: {vols:?}");
    let ids: Vec<String> = rep["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["cinder_id"].as_str().unwrap().to_owned())
        .collect();
    // The stack refers to the imported IDs: the parameter, and the attachment by value.
    let stack = rt()
        .block_on(s.cloud().find_stack(&s.tag))
        .unwrap()
        .unwrap();
    assert_eq!(
        stack.parameters.as_ref().unwrap()["boot_volume"],
        ids[0].as_str(),
        "{stack:?}"
    );
    assert!(rep["rewrite"].to_string().contains(&ids[1]), "{rep}");
    for (i, id) in ids.iter().enumerate() {
        let v = rt().block_on(s.cloud().show_volume("t", id)).unwrap();
        assert_eq!(v.status, "in-use", "attached by the stack: {v:?}");
        assert_eq!(v.is_bootable(), i == 0);
        // The imported volume is the Secondary's disk: same bytes.
        let link = std::path::Path::new(EXPORT).join(format!("volume-{id}"));
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            s.disk(if i == 0 { "b1" } else { "b2" }, i)
        );
        assert_files_identical(
            &link,
            &s.disk("a1", i),
            SIZE,
            "imported volume = the primary's data at the cut",
        );
        assert_eq!(res(s.backup(i), &s.res[i]).unwrap()["tracking_void"], true);
    }
    let st = stdout_json(&s.drl(&["dr", "status", "--json"], &[]));
    assert_eq!(st["plans"][0]["state"], "failed-over", "{st}");

    // Writes that go around drl, as Cinder's own target would make them: two 4 KiB blocks.
    let link = std::path::Path::new(EXPORT).join(format!("volume-{}", ids[0]));
    let mut f = std::fs::OpenOptions::new().write(true).open(&link).unwrap();
    f.seek(SeekFrom::Start(13 << 20)).unwrap();
    f.write_all(&[0x77; 4096]).unwrap();
    f.seek(SeekFrom::Start(20 << 20)).unwrap();
    f.write_all(&[0x78; 4096]).unwrap();
    f.sync_all().unwrap();
    drop(f);

    // The old primary comes back (Secondary) and fails back.
    s.a1.spawn(&s.dir.path().join("a1.sock"));
    let out = s.drl(&["dr", "failback", &s.tag, "--json"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--stop-workload"),
        "waits for the admin's word: {err}"
    );
    let fb = stdout_json(&s.drl(
        &["dr", "failback", &s.tag, "--stop-workload", "--json"],
        &[],
    ));
    let v0 = &fb["verified"][&s.res[0]];
    assert_eq!(
        v0["differing_bytes"], 8192,
        "exactly the two blocks written around drl: {fb}"
    );
    assert_eq!(
        v0["resync_bytes_sent"], 8192,
        "only the differing blocks crossed: {fb}"
    );
    for (i, r) in s.res.iter().enumerate() {
        wait_until("a1 Primary again", WAIT, || {
            res(&s.a1, r).is_some_and(|v| v["role"] == "Primary")
        });
        assert_eq!(res(s.backup(i), r).unwrap()["role"], "Secondary");
        assert_eq!(res(s.backup(i), r).unwrap()["tracking_void"], false);
        assert_files_identical(
            &s.disk("a1", i),
            &s.disk(if i == 0 { "b1" } else { "b2" }, i),
            SIZE,
            "after fail back",
        );
    }
    assert!(s.volumes().is_empty(), "unmanaged: {:?}", s.volumes());
    assert!(s.disk("b1", 0).exists(), "the data stays");
    // The workload is up at the primary site: the plan's template as written (primary IDs).
    let home = format!("{}-home", s.tag);
    assert_eq!(fb["workload"]["stack_name"], home.as_str(), "{fb}");
    assert_eq!(fb["workload"]["stack_status"], "CREATE_COMPLETE", "{fb}");
    let hs = rt()
        .block_on(s.cloud().find_stack(&home))
        .unwrap()
        .expect("the primary site's stack");
    assert_eq!(hs.id, fb["workload"]["stack_id"].as_str().unwrap());
    assert_eq!(
        hs.parameters.as_ref().unwrap()["boot_volume"],
        s.ids[0].as_str(),
        "booted from the primary site's volume: {hs:?}"
    );
    for id in &s.ids {
        let v = rt().block_on(s.cloud().show_volume("primary", id)).unwrap();
        assert_eq!(v.status, "in-use", "the primary's workload uses it: {v:?}");
    }
    let st = stdout_json(&s.drl(&["dr", "status", "--json"], &[]));
    assert_eq!(st["plans"][0]["state"], "enabled", "{st}");
}

#[test]
fn kill9_after_each_step_resumes_to_one_volume_per_resource_and_one_stack() {
    need_openstack();
    let mut s = DrSites::start(VOLUMES_TEMPLATE, "", KS_PASSWORD);
    fill(&s);
    s.kill_primary_site();
    let steps = [
        "check:begin".to_string(),
        "check".into(),
        "promote:begin".into(),
        "promote".into(),
        format!("import:{}:begin", s.res[0]),
        format!("manage:{}", s.res[0]),
        format!("import:{}", s.res[0]),
        format!("manage:{}", s.res[1]),
        format!("import:{}", s.res[1]),
        "rewrite".into(),
        "stack:begin".into(),
        "stack-create".into(),
    ];
    for step in &steps {
        let out = s.drl(
            &["dr", "recover", &s.tag, "--confirm-primary-down"],
            &[("DRL_DR_CRASH_AFTER", step)],
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "killed after {step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            s.journal()
                .contains(&format!("\"step\":\"{}\"", step.trim_end_matches(":begin"))),
            "{}",
            s.journal()
        );
    }
    let rep = stdout_json(&s.drl(
        &["dr", "recover", &s.tag, "--confirm-primary-down", "--json"],
        &[],
    ));
    assert_eq!(rep["stack_status"], "CREATE_COMPLETE", "{rep}");
    let vols = s.volumes();
    assert_eq!(vols.len(), 2, "exactly one volume per resource: {vols:?}");
    assert!(vols.iter().all(|v| v.status == "available"), "{vols:?}");
    let ids: Vec<&str> = vols.iter().map(|v| v.id.as_str()).collect();
    assert!(
        rep["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| ids.contains(&v["cinder_id"].as_str().unwrap())),
        "{rep}"
    );
    // Exactly one stack of this name (a second create would have failed: Heat refuses a
    // duplicate name; find_stack lists one).
    let stack = rt()
        .block_on(s.cloud().find_stack(&s.tag))
        .unwrap()
        .unwrap();
    assert_eq!(stack.id, rep["stack_id"].as_str().unwrap());
    // The same command once more only reports.
    let again = stdout_json(&s.drl(
        &["dr", "recover", &s.tag, "--confirm-primary-down", "--json"],
        &[],
    ));
    assert_eq!(again["stack_id"], rep["stack_id"]);
    assert_eq!(s.volumes().len(), 2);
}

#[test]
fn the_daemon_takes_the_plans_scheduled_snapshots_streams_them_and_keeps_the_newest() {
    need_swift();
    // The plan's image is copied to the real Swift on the same ticks. Until the file exists
    // the copy fails (logged) and the schedule goes on.
    let s = DrSites::start_with(
        VOLUMES_TEMPLATE,
        "snapshot-every = \"1s\"\nkeep = 2\nsnapshot-to = \"{DIR}/vault::snaps/s\"\nimages = [{ file = \"{DIR}/base.img\", to = \"swift://{TAG}-img/base/disk\" }]\n",
        KS_PASSWORD,
        SWIFT_TOML,
    );
    let image = s.dir.path().join("base.img");
    let mut data = vec![0u8; (3 << 20) + 4321];
    rand::Rng::fill(&mut rand::rng(), &mut data[..]);
    std::fs::write(s.dir.path().join("base.img.tmp"), &data).unwrap();
    std::fs::rename(s.dir.path().join("base.img.tmp"), &image).unwrap();
    let prefix = format!("{}-", s.tag);
    let scheduled = |n: &common::Node, r: &str| -> (Vec<String>, usize) {
        let v: serde_json::Value =
            serde_json::from_str(&s.ok(n, &["snapshot", "list", r, "--json"])).unwrap();
        let live = v["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x["name"].as_str())
            .filter(|x| x.starts_with(&prefix))
            .map(str::to_owned)
            .collect();
        (live, v["tombstones"].as_array().map_or(0, Vec::len))
    };
    // Data written now is in every scheduled snapshot taken from here on.
    for i in 0..2 {
        let p = format!("write -P 0x{:x} 1M 3M", 0xc0 + i);
        qemu_io(&s.nbd_uri("a1", i), &[&p]);
    }
    let written_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // At least four ticks: two kept, two or more deleted (as tombstones), on both resources.
    wait_until("four scheduled snapshots taken, two kept", WAIT, || {
        s.res.iter().all(|r| {
            let (live, dead) = scheduled(&s.a1, r);
            live.len() == 2 && dead >= 2
        })
    });
    for (i, r) in s.res.iter().enumerate() {
        // The schedule keeps ticking: a tick takes and streams the new snapshot before it
        // deletes the oldest, so keep + 1 = 3 is a legal moment (a slow stream under load
        // widens it); more would be a prune that does not happen.
        let (live, _) = scheduled(&s.a1, r);
        assert!(
            live.len() <= 3,
            "at most keep + 1 = 3 scheduled snapshots: {live:?}"
        );
        assert!(
            scheduled(s.backup(i), r).0.is_empty(),
            "no snapshots on the Secondary"
        );
    }
    // Each was streamed, and the action recorded: the checkpoint lists them (the newest
    // `keep` per resource), and the newest one taken after the writes restores them.
    let taken_after = |a: &serde_json::Value| {
        a["snapshot"]
            .as_str()
            .and_then(|n| n.rsplit('-').next())
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|t| t > written_ms)
    };
    let mut cp = serde_json::Value::Null;
    wait_until(
        "a streamed snapshot of each resource after the writes",
        WAIT,
        || {
            cp = stdout_json(&s.drl(&["dr", "protect", &s.tag, "--json"], &[]));
            s.res.iter().all(|r| {
                cp["actions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["resource"] == r.as_str() && taken_after(a))
            })
        },
    );
    for (i, r) in s.res.iter().enumerate() {
        let mine: Vec<&serde_json::Value> = cp["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["resource"] == r.as_str())
            .collect();
        // A record is written before the oldest is pruned (`checkpoint::record_action`):
        // keep + 1 for a moment while the schedule goes on.
        assert!(
            !mine.is_empty() && mine.len() <= 3,
            "at most keep + 1 = 3 records: {mine:?}"
        );
        let a = mine.iter().find(|a| taken_after(a)).unwrap();
        assert_eq!(a["kind"], "snapshot", "{a}");
        assert_eq!(a["node"], "a1", "{a}");
        let url = format!(
            "{}/{}",
            a["stored_at"].as_str().unwrap(),
            a["snapshot"].as_str().unwrap()
        );
        let out = s.dir.path().join(format!("restored-{i}.img"));
        let o = s.a1.cli(&["restore", &url, "--to", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        common::pair::assert_files_identical(
            &out,
            &s.disk("a1", i),
            SIZE,
            "the streamed snapshot holds the data written before it",
        );
    }
    // The image: copied once per tick (by a1, where the plan is Primary), the newest `keep`
    // copies recorded, and what Swift holds pulls back byte-identical to the file.
    let images = |cp: &serde_json::Value| -> Vec<serde_json::Value> {
        cp["actions"]
            .as_array()
            .unwrap_or_else(|| panic!("no action list: {cp}"))
            .iter()
            .filter(|a| a["kind"] == "image")
            .cloned()
            .collect()
    };
    let mut shown = serde_json::Value::Null;
    wait_until("two image copies recorded", WAIT, || {
        shown = stdout_json(&s.drl(&["dr", "plan", "show", &s.tag, "--json"], &[]));
        images(&shown).len() == 2
    });
    // A third copy replaces the oldest: back to keep = 2 records. The schedule writes the
    // new record before it deletes the oldest (never fewer than `keep`), so a listing in
    // between sees keep + 1, never more.
    let first: Vec<u64> = images(&shown)
        .iter()
        .map(|a| a["done_unix_ms"].as_u64().unwrap())
        .collect();
    wait_until(
        "a newer image copy recorded and the oldest pruned",
        WAIT,
        || {
            shown = stdout_json(&s.drl(&["dr", "plan", "show", &s.tag, "--json"], &[]));
            let now = images(&shown);
            assert!(
                now.len() <= 3,
                "at most keep + 1 = 3 image records: {now:?}"
            );
            now.len() == 2
                && now
                    .iter()
                    .any(|a| a["done_unix_ms"].as_u64().unwrap() > *first.iter().max().unwrap())
        },
    );
    let url = format!("swift://{}-img/base/disk", s.tag);
    for a in images(&shown) {
        assert_eq!(a["plan"], s.tag.as_str(), "{a}");
        assert_eq!(a["node"], "a1", "{a}");
        assert_eq!(a["file"], image.to_str().unwrap(), "{a}");
        assert_eq!(a["stored_at"], url.as_str(), "{a}");
        assert_eq!(a["size_bytes"], data.len() as u64, "{a}");
        assert!(a["seconds"].as_f64().is_some(), "{a}");
        // The file did not change after the first copy: later copies send nothing.
        assert_eq!(a["bytes_uploaded"], 0, "incremental: {a}");
    }
    let cp = stdout_json(&s.drl(&["dr", "protect", &s.tag, "--json"], &[]));
    assert!(!images(&cp).is_empty(), "dr protect lists the image copies");
    let back = s.dir.path().join("pulled.img");
    let o = s.drl(
        &["image", "pull", &url, "--to", back.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&back).unwrap() == data,
        "the copy in Swift differs from the image file"
    );
}

/// Plan events of one field value, from `drl events --json` lines.
fn plan_events(text: &str, key: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["object"] == "plan" && !e["fields"][key].is_null())
        .collect()
}

#[test]
fn the_rpo_alarm_is_raised_when_the_link_is_lost_and_cleared_when_it_is_back() {
    let s = DrSites::start(VOLUMES_TEMPLATE, "", KS_PASSWORD);
    let tap = common::pair::EventsTap::start(&s.a1);
    s.ok(&s.a1, &["disconnect", &s.res[1]]);
    wait_until("the RPO alarm raised on a1", WAIT, || {
        plan_events(&tap.text(), "rpo_alarm")
            .iter()
            .any(|e| e["fields"]["rpo_alarm"] == true)
    });
    let raised = plan_events(&tap.text(), "rpo_alarm");
    assert_eq!(raised[0]["name"], s.tag.as_str(), "{raised:?}");
    assert_eq!(
        raised[0]["fields"]["resource"],
        s.res[1].as_str(),
        "{raised:?}"
    );
    assert_ne!(raised[0]["fields"]["connection"], "Connected", "{raised:?}");
    let st = stdout_json(&s.drl(&["dr", "status", "--json"], &[]));
    assert_eq!(st["plans"][0]["rpo_alarm"], true, "{st}");
    s.ok(&s.a1, &["connect", &s.res[1]]);
    s.wait_synced();
    wait_until("the RPO alarm cleared", WAIT, || {
        plan_events(&tap.text(), "rpo_alarm")
            .iter()
            .any(|e| e["fields"]["rpo_alarm"] == false)
    });
    let all = plan_events(&tap.text(), "rpo_alarm");
    assert_eq!(all.len(), 2, "one event per change: {all:?}");
}
