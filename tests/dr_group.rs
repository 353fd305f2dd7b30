//! The DR orchestrator recovering a consistency group (issue 15) against the real backup-site
//! cloud (scripts/openstack-aio.sh, as tests/dr_recover.rs): one resource `TAG-db` of two
//! volumes, Primary at `a1`, Secondary at `b1`; the plan names its volumes `TAG-db/0` (the
//! server's boot volume, a stack parameter) and `TAG-db/1` (attached, by value).
//!
//! The recovery promotes the group once, hands it over once (one `tracking_void` mark, a link
//! `drl-TAG-db-N` per volume), imports each volume into Cinder, and the stack boots from
//! volume 0 with volume 1 attached. Then a write around drl into volume 1's imported file (as
//! Cinder's target would make) must be found and resynced by fail back's verify, which walks
//! every volume of the group: a fail back that covered volume 0 only would leave it.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::dr::*;
use common::pair::{assert_files_identical, free_port, in_sync, res, WAIT};
use common::{qemu_io, wait_until, Node};

struct GroupSites {
    dir: tempfile::TempDir,
    tag: String,
    res: String,
    a1: Node,
    b1: Node,
    config: PathBuf,
}

impl GroupSites {
    fn start() -> GroupSites {
        let (dir, tag) = tagged_dir();
        let name = format!("{tag}-db");
        let seed: u64 = rand::random();
        // Volume 0 boots the server (a parameter), volume 1 is attached by value.
        let tpl = SERVER_TEMPLATE
            .replace("{ID0}", &uuid(seed))
            .replace("{ID1}", &uuid(seed.wrapping_add(1)));
        let d = dir.path().display();
        std::fs::write(dir.path().join("plan.yaml"), tpl).unwrap();
        let mut t = String::new();
        for (n, site) in [("a1", "a"), ("b1", "b")] {
            t += &format!(
                "[[node]]\nname = \"{n}\"\nsite = \"{site}\"\ncontrol-socket = \"{d}/{n}.sock\"\n\n"
            );
        }
        t += &format!("[[resource]]\nname = \"{name}\"\nsecret = \"s3cret\"\n");
        for v in 0..2 {
            t += &format!("[[resource.volume]]\nnumber = {v}\nsize = \"{SIZE}\"\n");
        }
        for n in ["a1", "b1"] {
            t += &format!(
                "[resource.on.{n}]\naddress = \"127.0.0.1:{}\"\n",
                free_port()
            );
            for v in 0..2 {
                t += &format!("volume.{v} = {{ disk = \"{d}/{n}-{v}.img\", meta = \"{d}/{n}-{v}.meta\", nbd = \"{d}/{n}-{v}.nbd\" }}\n");
            }
        }
        t += &format!(
            "\n[openstack]\nauth-url = \"{KS_URL}\"\nusername = \"admin\"\npassword = \"{KS_PASSWORD}\"\nproject = \"admin\"\n\n[dr]\nstate-dir = \"{d}/dr\"\ncheckpoints = \"{d}/vault::plans\"\n\n"
        );
        t += &format!(
            "[[plan]]\nname = \"{tag}\"\nresources = [\"{name}\"]\ntemplate = \"{d}/plan.yaml\"\ncinder-host = \"aio@nfs#nfs\"\ncinder-export-dir = \"{EXPORT}\"\n\n[plan.volume.\"{name}/0\"]\nprimary-id = \"{}\"\nbootable = true\nparameter = \"boot_volume\"\n\n[plan.volume.\"{name}/1\"]\nprimary-id = \"{}\"\n",
            uuid(seed),
            uuid(seed.wrapping_add(1))
        );
        let config = dir.path().join("drl.toml");
        std::fs::write(&config, &t).unwrap();
        let p = dir.path();
        let a1 = Node::start(p, &t, "a1", &p.join("a1.sock"));
        let b1 = Node::start(p, &t, "b1", &p.join("b1.sock"));
        let s = GroupSites {
            dir,
            tag,
            res: name,
            a1,
            b1,
            config,
        };
        wait_until("both Connected", WAIT, || {
            res(&s.a1, &s.res).is_some_and(|v| v["connection"] == "Connected")
        });
        node_ok(&s.a1, &["primary", &s.res, "--force"]);
        s.wait_synced();
        s
    }

    fn disk(&self, node: &str, v: usize) -> PathBuf {
        self.dir.path().join(format!("{node}-{v}.img"))
    }

    fn wait_synced(&self) {
        wait_until("the group in sync", WAIT, || {
            res(&self.a1, &self.res).is_some_and(|v| in_sync(&v))
                && res(&self.b1, &self.res).is_some_and(|v| in_sync(&v))
        });
    }

    /// `drl --config F --node b1 ARGS` (the orchestrator runs at the backup site).
    fn drl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(common::drl_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["--node", "b1"])
            .args(args)
            .env_remove("DRL_DR_CRASH_AFTER")
            .output()
            .unwrap()
    }

    fn imported(&self) -> Vec<drl::orchestrator::openstack::Volume> {
        rt().block_on(cloud().list_volumes())
            .unwrap()
            .into_iter()
            .filter(|v| v.metadata.get("drl-plan") == Some(&self.tag))
            .collect()
    }
}

impl Drop for GroupSites {
    fn drop(&mut self) {
        cleanup_plan(&self.tag, self.dir.path());
    }
}

fn cloud() -> drl::orchestrator::openstack::Cloud {
    drl::orchestrator::openstack::Cloud::new(auth(KS_PASSWORD)).unwrap()
}

#[test]
fn a_group_is_promoted_once_imported_volume_by_volume_and_failed_back_whole() {
    need_openstack();
    let mut s = GroupSites::start();
    for v in 0..2 {
        let uri = format!(
            "nbd+unix:///?socket={}",
            s.dir.path().join(format!("a1-{v}.nbd")).display()
        );
        qemu_io(
            &uri,
            &[
                &format!("write -P 0x{:x} 0 4M", 0xb0 + v),
                "write -P 0x5c 8M 1M",
            ],
        );
    }
    s.wait_synced();
    let cp = stdout_json(&s.drl(&["dr", "protect", &s.tag, "--json"]));
    let cv = cp["volumes"].as_array().unwrap();
    assert_eq!(cv.len(), 2, "a checkpoint entry per volume: {cp}");
    assert_eq!(
        (cv[0]["volume"].as_u64(), cv[1]["volume"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(cv[1]["size_bytes"], SIZE, "{cp}");

    s.a1.kill9();
    wait_until("b1 sees the link gone", WAIT, || {
        res(&s.b1, &s.res).is_some_and(|v| v["connection"] != "Connected")
    });
    // The dry run names one handover for the group and one import per volume.
    let dry = s.drl(&[
        "dr",
        "recover",
        &s.tag,
        "--confirm-primary-down",
        "--dry-run",
    ]);
    let said = String::from_utf8_lossy(&dry.stderr);
    assert!(dry.status.success(), "{said}");
    assert_eq!(said.matches("dr.handover").count(), 1, "{said}");
    assert_eq!(said.matches("would POST").count(), 2, "{said}");
    assert!(
        said.contains(&format!("drl-{}-1", s.res)),
        "volume 1's link: {said}"
    );
    let out = s.drl(&["dr", "recover", &s.tag, "--confirm-primary-down", "--json"]);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let rep = stdout_json(&out);
    assert_eq!(rep["stack_status"], "CREATE_COMPLETE", "{rep}");
    let rv = rep["volumes"].as_array().unwrap();
    assert_eq!(rv.len(), 2, "the report lists each volume: {rep}");
    let ids: Vec<String> = rv
        .iter()
        .map(|v| v["cinder_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        (rv[0]["volume"].as_u64(), rv[1]["volume"].as_u64()),
        (Some(0), Some(1))
    );
    let journal =
        std::fs::read_to_string(s.dir.path().join("dr").join(format!("{}.journal", s.tag)))
            .unwrap();
    for v in 0..2 {
        for step in ["handover", "manage", "import"] {
            let k = format!("\"step\":\"{step}:{}/{v}\"", s.res);
            assert!(journal.contains(&k), "{k} in the journal:\n{journal}");
        }
    }
    // The group was promoted once, as one resource.
    let promoted = journal
        .lines()
        .find(|l| l.contains("\"step\":\"promote\"") && l.contains("\"done\""))
        .unwrap_or_default();
    assert!(promoted.contains(&format!("[\"{}\"]", s.res)), "{promoted}");

    let vols = s.imported();
    assert_eq!(
        vols.len(),
        2,
        "one Cinder volume per group volume: {vols:?}"
    );
    let stack = rt().block_on(cloud().find_stack(&s.tag)).unwrap().unwrap();
    assert_eq!(
        stack.parameters.as_ref().unwrap()["boot_volume"],
        ids[0].as_str(),
        "the server boots from volume 0's import: {stack:?}"
    );
    assert!(rep["rewrite"].to_string().contains(&ids[1]), "{rep}");
    for (v, id) in ids.iter().enumerate() {
        let c = rt().block_on(cloud().show_volume("t", id)).unwrap();
        assert_eq!(c.status, "in-use", "attached by the stack: {c:?}");
        assert_eq!(c.is_bootable(), v == 0);
        assert_eq!(
            c.metadata.get("drl-volume").map(String::as_str),
            Some(v.to_string().as_str())
        );
        let link = Path::new(EXPORT).join(format!("volume-{id}"));
        assert_eq!(std::fs::read_link(&link).unwrap(), s.disk("b1", v));
        assert_files_identical(
            &link,
            &s.disk("a1", v),
            SIZE,
            "imported volume = the primary's data at the cut",
        );
    }
    assert_eq!(res(&s.b1, &s.res).unwrap()["tracking_void"], true);

    // A write around drl into volume 1 only: fail back must find it there.
    let link = Path::new(EXPORT).join(format!("volume-{}", ids[1]));
    let mut f = std::fs::OpenOptions::new().write(true).open(&link).unwrap();
    f.seek(SeekFrom::Start(13 << 20)).unwrap();
    f.write_all(&[0x77; 4096]).unwrap();
    f.sync_all().unwrap();
    drop(f);

    s.a1.spawn(&s.dir.path().join("a1.sock"));
    let fb = stdout_json(&s.drl(&["dr", "failback", &s.tag, "--stop-workload", "--json"]));
    let v = &fb["verified"][&s.res];
    assert_eq!(v["differing_bytes"], 4096, "volume 1's block: {fb}");
    assert_eq!(v["resync_bytes_sent"], 4096, "{fb}");
    wait_until("a1 Primary again", WAIT, || {
        res(&s.a1, &s.res).is_some_and(|v| v["role"] == "Primary")
    });
    let b = res(&s.b1, &s.res).unwrap();
    assert_eq!(
        (b["role"].as_str(), b["tracking_void"].as_bool()),
        (Some("Secondary"), Some(false))
    );
    for v in 0..2 {
        assert_files_identical(
            &s.disk("a1", v),
            &s.disk("b1", v),
            SIZE,
            &format!("volume {v} after fail back"),
        );
    }
    assert!(s.imported().is_empty(), "unmanaged: {:?}", s.imported());
}
