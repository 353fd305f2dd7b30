//! Consistency-group configuration (issue 15): the issue's example as written, the one-volume
//! form unchanged, and a clear error for every way a volume set can be wrong.

use super::super::tests::EXAMPLE;
use super::super::*;

/// The issue's group example, verbatim, with the nodes and a second site added.
pub const GROUP_EXAMPLE: &str = r#"
[[node]]
name = "site-a"
[[node]]
name = "site-b"

[[resource]]
name = "db"
secret = "change-me"

[[resource.volume]]
number = 0
size = "1GiB"
[[resource.volume]]
number = 1
size = "256MiB"

[resource.on.site-a]
address = "127.0.0.1:7789"
volume.0 = { disk = "/srv/drl/db-0.img", meta = "/srv/drl/db-0.meta", nbd = "/run/drl/db-0.nbd" }
volume.1 = { disk = "/srv/drl/db-1.img", meta = "/srv/drl/db-1.meta", nbd = "/run/drl/db-1.nbd" }

[resource.on.site-b]
address = "127.0.0.1:7790"
volume.0 = { disk = "/srv/drl/b/db-0.img", meta = "/srv/drl/b/db-0.meta", nbd = "/run/drl/b/db-0.nbd" }
volume.1 = { disk = "/srv/drl/b/db-1.img", meta = "/srv/drl/b/db-1.meta" }
"#;

fn check(text: &str, node: &str) -> Result<NodeConfig, ConfigError> {
    let f = Path::new("test.toml");
    validate(f, &parse(f, text)?, node)
}

fn err(text: &str) -> String {
    check(text, "site-a")
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn the_issues_group_example_works_as_written() {
    let a = check(GROUP_EXAMPLE, "site-a").unwrap();
    let r = &a.resources[0];
    assert_eq!(r.volumes.len(), 2);
    let (v0, v1) = (&r.volumes[0], &r.volumes[1]);
    assert_eq!((v0.number, v0.size_bytes), (0, 1 << 30));
    assert_eq!((v1.number, v1.size_bytes), (1, 256 << 20));
    assert_eq!(v1.local.disk, PathBuf::from("/srv/drl/db-1.img"));
    assert_eq!(v1.local.meta, PathBuf::from("/srv/drl/db-1.meta"));
    assert_eq!(
        v1.local.nbd,
        Some(NbdEndpoint::Unix("/run/drl/db-1.nbd".into()))
    );
    assert_eq!(v1.local.address, Some("127.0.0.1:7789".parse().unwrap()));
    assert_eq!(
        v1.snapshot_space_bytes,
        (256 << 20) / 100 * limits::SNAPSHOT_SPACE_PERCENT_DEFAULT
    );
    let p1 = v1.peer.as_ref().unwrap();
    assert_eq!(p1.node, "site-b");
    assert_eq!(p1.disk, PathBuf::from("/srv/drl/b/db-1.img"));
    assert_eq!(p1.nbd, None);
    // The resource-level fields are volume 0's, so one-volume code keeps working.
    assert_eq!(r.size_bytes, 1 << 30);
    assert_eq!(r.local.disk, v0.local.disk);
    assert_eq!(
        r.peer.as_ref().unwrap().disk,
        v0.peer.as_ref().unwrap().disk
    );

    let b = check(GROUP_EXAMPLE, "site-b").unwrap();
    let v1 = &b.resources[0].volumes[1];
    assert_eq!(v1.local.disk, PathBuf::from("/srv/drl/b/db-1.img"));
    assert_eq!(v1.peer.as_ref().unwrap().node, "site-a");
}

#[test]
fn a_resource_with_size_and_disk_is_volume_0() {
    let a = check(EXAMPLE, "site-a").unwrap();
    let r = &a.resources[0];
    assert_eq!(r.volumes.len(), 1);
    let v = &r.volumes[0];
    assert_eq!((v.number, v.size_bytes), (0, r.size_bytes));
    assert_eq!(v.local.disk, r.local.disk);
    assert_eq!(v.snapshot_space_bytes, r.snapshot_space_bytes);
    assert_eq!(v.peer.as_ref().unwrap().meta, r.peer.as_ref().unwrap().meta);
}

/// The group example with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(GROUP_EXAMPLE.contains(from), "{from:?} not in the example");
    GROUP_EXAMPLE.replacen(from, to, 1)
}

#[test]
fn volume_number_gaps_and_duplicates_are_refused() {
    let e = err(&edit("number = 1", "number = 2"));
    assert!(
        e.contains("resource.db.volume")
            && e.contains("without gaps: volume 1 is missing (declared: [0, 2])"),
        "{e}"
    );
    let e = err(&edit("number = 1", "number = 0"));
    assert!(
        e.contains("resource.db.volume.0") && e.contains("declared twice"),
        "{e}"
    );
    let e = err(&edit("number = 1", "number = -1"));
    assert!(e.contains("volume number -1: must be 0 to 15"), "{e}");
    let e = err(&edit("size = \"256MiB\"", "size = \"1000\""));
    assert!(
        e.contains("resource.db.volume.1.size") && e.contains("multiple of 4096"),
        "{e}"
    );
}

#[test]
fn mismatched_volume_sets_name_the_node_and_volume() {
    // site-a lacks volume 1.
    let t = edit(
        "volume.1 = { disk = \"/srv/drl/db-1.img\", meta = \"/srv/drl/db-1.meta\", nbd = \"/run/drl/db-1.nbd\" }\n",
        "",
    );
    let e = err(&t);
    assert!(
        e.contains("resource.db.on.site-a.volume.1: missing: the resource declares volume 1"),
        "{e}"
    );
    // The peer's section is checked too.
    let t = edit(
        "volume.1 = { disk = \"/srv/drl/b/db-1.img\", meta = \"/srv/drl/b/db-1.meta\" }",
        "volume.2 = { disk = \"/srv/drl/b/db-1.img\", meta = \"/srv/drl/b/db-1.meta\" }",
    );
    let e = err(&t);
    assert!(
        e.contains("resource.db.on.site-b.volume.2: volume 2 is not declared"),
        "{e}"
    );
    let e = err(&edit("volume.1 = { disk", "volume.x = { disk"));
    assert!(
        e.contains("on.site-a.volume.x") && e.contains("not a volume number"),
        "{e}"
    );
}

#[test]
fn the_two_forms_do_not_mix() {
    let e = err(&edit(
        "secret = \"change-me\"",
        "secret = \"x\"\nsize = \"1GiB\"",
    ));
    assert!(
        e.contains("resource.db.size") && e.contains("together"),
        "{e}"
    );
    let e = err(&edit(
        "address = \"127.0.0.1:7789\"",
        "address = \"127.0.0.1:7789\"\ndisk = \"/srv/x.img\"",
    ));
    assert!(
        e.contains("resource.db.on.site-a.disk") && e.contains("per volume"),
        "{e}"
    );
    // Per-node volumes without [[resource.volume]].
    let t = EXAMPLE.replacen(
        "nbd = \"/tmp/drl/a/r0.nbd\"",
        "nbd = \"/tmp/drl/a/r0.nbd\"\nvolume.1 = { disk = \"/x.img\", meta = \"/x.meta\" }",
        1,
    );
    let e = err(&t);
    assert!(
        e.contains("resource.r0.on.site-a.volume.1") && e.contains("[[resource.volume]]"),
        "{e}"
    );
    let e = err(&EXAMPLE.replacen("size = \"256MiB\"", "", 1));
    assert!(e.contains("resource.r0.size: missing"), "{e}");
    let e = err(&EXAMPLE.replacen("meta = \"/tmp/drl/a/r0.meta\"", "", 1));
    assert!(e.contains("resource.r0.on.site-a.meta: missing"), "{e}");
}

#[test]
fn paths_are_unique_across_volumes_and_each_is_checked() {
    let e = err(&edit("/srv/drl/db-1.meta", "/srv/drl/db-0.meta"));
    assert!(
        e.contains("resource.db.on.site-a.volume.1.meta") && e.contains("used twice"),
        "{e}"
    );
    let e = err(&edit("/run/drl/db-1.nbd", "/run/drl/db-0.nbd"));
    assert!(e.contains("on.site-a.volume.1.nbd"), "{e}");
    let e = err(&edit("\"/srv/drl/db-1.img\"", "\"db-1.img\""));
    assert!(
        e.contains("on.site-a.volume.1.disk") && e.contains("absolute"),
        "{e}"
    );
    let e = err(&edit(
        "nbd = \"/run/drl/db-1.nbd\" }",
        "nbd = \"/run/drl/db-1.nbd\", size = 1 }",
    ));
    assert!(e.contains("unknown field `size`"), "{e}");
}

#[test]
fn too_many_volumes_are_refused() {
    let mut t = String::from("[[node]]\nname = \"site-a\"\n[[resource]]\nname = \"big\"\n");
    for n in 0..=limits::GROUP_VOLUMES_COUNT_MAX {
        t.push_str(&format!(
            "[[resource.volume]]\nnumber = {n}\nsize = \"1MiB\"\n"
        ));
    }
    let e = err(&t);
    assert!(
        e.contains("resource.big.volume") && e.contains("17 volumes: a resource holds at most 16"),
        "{e}"
    );
}

#[test]
fn a_group_is_claimed_volume_by_volume() {
    let a = check(GROUP_EXAMPLE, "site-a").unwrap();
    let t = a.resources[0].claim_targets();
    assert_eq!(t.len(), 2);
    assert_eq!(t[1].disk, std::path::Path::new("/srv/drl/db-1.img"));
    assert_eq!(t[1].meta, std::path::Path::new("/srv/drl/db-1.meta"));
    assert_eq!((t[0].size_bytes, t[1].size_bytes), (1 << 30, 256 << 20));
}

/// The group example with a one-volume resource `log` beside it and a plan over both:
/// `[plan.volume."db/N"]` for the group's volumes, `[plan.volume.log]` for the other.
fn group_plan(volumes: &str) -> String {
    format!(
        r#"{GROUP_EXAMPLE}
[[resource]]
name = "log"
size = "64MiB"
secret = "x"
[resource.on.site-a]
address = "127.0.0.1:7791"
disk = "/srv/drl/log.img"
meta = "/srv/drl/log.meta"
[resource.on.site-b]
address = "127.0.0.1:7792"
disk = "/srv/drl/b/log.img"
meta = "/srv/drl/b/log.meta"

[openstack]
auth-url = "http://127.0.0.1:5050/v3"
username = "admin"
password = "secret"
project = "admin"

[[plan]]
name = "app"
resources = ["db", "log"]
template = "/etc/drl/plans/app.yaml"
cinder-host = "aio@nfs#nfs"
{volumes}"#
    )
}

const GROUP_PLAN_VOLUMES: &str = r#"
[plan.volume."db/0"]
primary-id = "0e5b7c8e-0d7e-4c39-9d6f-5a1f2b7c1a10"
bootable = true
[plan.volume."db/1"]
parameter = "db_log"
[plan.volume.log]
parameter = "app_log"
"#;

#[test]
fn a_plan_names_a_groups_volumes_as_res_slash_n() {
    let c = check(&group_plan(GROUP_PLAN_VOLUMES), "site-b").unwrap();
    let p = &c.plans[0];
    let keys: Vec<String> = p.volumes.iter().map(|v| v.key()).collect();
    assert_eq!(keys, ["db/0", "db/1", "log"]);
    assert_eq!(p.resources(), ["db", "log"], "a group is one resource");
    assert_eq!(p.volumes[1].volume, Some(1));
    assert_eq!(p.volumes[2].volume, None);
    assert!(p.volumes[0].bootable && p.volumes[0].primary_id.is_some());
    assert_eq!(p.volumes[1].parameter.as_deref(), Some("db_log"));
    assert_eq!(p.volumes[1].flat_key(), "db-1");
    // A volume the plan does not map is still a volume of the plan (imported, unmapped).
    let c = check(
        &group_plan("[plan.volume.\"db/1\"]\nparameter = \"db_log\"\n"),
        "site-b",
    )
    .unwrap();
    assert_eq!(c.plans[0].volumes.len(), 3);
}

#[test]
fn a_plans_bad_volume_keys_are_refused_with_the_reason() {
    let bad = |volumes: &str| {
        check(&group_plan(volumes), "site-b")
            .expect_err("plan should be refused")
            .to_string()
    };
    let e = bad("[plan.volume.db]\nparameter = \"p\"\n");
    assert!(
        e.contains("plan.app.volume.db")
            && e.contains("consistency group of 2 volumes")
            && e.contains("\"db/0\", \"db/1\""),
        "{e}"
    );
    let e = bad("[plan.volume.\"db/2\"]\nparameter = \"p\"\n");
    assert!(
        e.contains("plan.app.volume.db/2") && e.contains("no volume \"2\""),
        "{e}"
    );
    for n in ["01", "x", "", "-1"] {
        let e = bad(&format!("[plan.volume.\"db/{n}\"]\nparameter = \"p\"\n"));
        assert!(e.contains(&format!("no volume \"{n}\"")), "{n}: {e}");
    }
    let e = bad("[plan.volume.\"log/0\"]\nparameter = \"p\"\n");
    assert!(
        e.contains("plan.app.volume.log/0") && e.contains("has one volume"),
        "{e}"
    );
    // A single [[resource.volume]] is one volume, served and named as such.
    let single = group_plan("[plan.volume.\"solo\"]\nparameter = \"p\"\n").replace(
        "resources = [\"db\", \"log\"]",
        "resources = [\"db\", \"log\", \"solo\"]",
    ) + "[[resource]]\nname = \"solo\"\nsecret = \"x\"\n[[resource.volume]]\nnumber = 0\nsize = \"8MiB\"\n[resource.on.site-a]\naddress = \"127.0.0.1:7793\"\nvolume.0 = { disk = \"/srv/drl/solo.img\", meta = \"/srv/drl/solo.meta\" }\n[resource.on.site-b]\naddress = \"127.0.0.1:7794\"\nvolume.0 = { disk = \"/srv/drl/b/solo.img\", meta = \"/srv/drl/b/solo.meta\" }\n";
    let c = check(&single, "site-b").unwrap();
    let solo = c.plans[0].volumes.last().unwrap();
    assert_eq!((solo.key(), solo.volume), ("solo".to_string(), None));
    let e = bad("[plan.volume.\"web/0\"]\nparameter = \"p\"\n");
    assert!(
        e.contains("\"web\" is not one of the plan's resources"),
        "{e}"
    );
    let e = bad("[plan.volume.\"db/1\"]\nprimary-id = \"short\"\n");
    assert!(e.contains("plan.app.volume.db/1.primary-id"), "{e}");
    let e = bad("");
    assert!(e.contains("RES/N of a group"), "{e}");
}
