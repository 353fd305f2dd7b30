use super::*;

/// The example from the issue, verbatim: it must work as written.
pub const EXAMPLE: &str = r#"
[[node]]
name = "site-a"
control-socket = "/tmp/drl/site-a.sock"

[[node]]
name = "site-b"
control-socket = "/tmp/drl/site-b.sock"

[[resource]]
name = "r0"
size = "256MiB"            # a missing disk file is created sparse with this size
secret = "change-me"       # peer authentication (used by replication)

[resource.on.site-a]
address = "127.0.0.1:7789" # replication endpoint (used by replication)
disk = "/tmp/drl/a/r0.img" # a file or a block device
meta = "/tmp/drl/a/r0.meta"
nbd = "/tmp/drl/a/r0.nbd"  # NBD export: a unix socket path, or "tcp:HOST:PORT"

[resource.on.site-b]
address = "127.0.0.1:7790"
disk = "/tmp/drl/b/r0.img"
meta = "/tmp/drl/b/r0.meta"
nbd = "/tmp/drl/b/r0.nbd"
"#;

fn check(text: &str, node: &str) -> Result<NodeConfig, ConfigError> {
    let f = Path::new("test.toml");
    validate(f, &parse(f, text)?, node)
}

fn err(text: &str, node: &str) -> String {
    check(text, node)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn issue_example_works_for_both_nodes() {
    let a = check(EXAMPLE, "site-a").unwrap();
    assert_eq!(a.control_socket, PathBuf::from("/tmp/drl/site-a.sock"));
    assert_eq!(a.control_socket_mode, 0o600);
    let r = &a.resources[0];
    assert_eq!(r.size_bytes, 256 << 20);
    assert_eq!(r.local.disk, PathBuf::from("/tmp/drl/a/r0.img"));
    assert_eq!(
        r.local.nbd,
        Some(NbdEndpoint::Unix("/tmp/drl/a/r0.nbd".into()))
    );
    let peer = r.peer.as_ref().unwrap();
    assert_eq!(peer.node, "site-b");
    assert_eq!(peer.address, Some("127.0.0.1:7790".parse().unwrap()));

    let b = check(EXAMPLE, "site-b").unwrap();
    assert_eq!(
        b.resources[0].local.meta,
        PathBuf::from("/tmp/drl/b/r0.meta")
    );
    assert_eq!(b.resources[0].peer.as_ref().unwrap().node, "site-a");
}

#[test]
fn single_section_runs_unreplicated_without_secret() {
    let t = r#"
[[node]]
name = "n1"
[[resource]]
name = "solo"
size = "1GiB"
[resource.on.n1]
disk = "/d/solo.img"
meta = "/d/solo.meta"
nbd = "tcp:127.0.0.1:10809"
"#;
    let c = check(t, "n1").unwrap();
    assert!(c.resources[0].peer.is_none());
    assert_eq!(
        c.resources[0].local.nbd,
        Some(NbdEndpoint::Tcp("127.0.0.1:10809".parse().unwrap()))
    );
    assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
}

#[test]
fn resources_of_other_nodes_are_skipped() {
    let t = EXAMPLE.replace("[resource.on.site-b]", "[resource.on.site-b]\n").replace(
        "[[resource]]\nname = \"r0\"",
        "[[resource]]\nname = \"other\"\nsize = \"1MiB\"\n[resource.on.site-b]\ndisk = \"/x/o.img\"\nmeta = \"/x/o.meta\"\n\n[[resource]]\nname = \"r0\"",
    );
    let a = check(&t, "site-a").unwrap();
    assert_eq!(
        a.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["r0"]
    );
}

#[test]
fn unknown_node_is_refused_naming_known_ones() {
    let e = err(EXAMPLE, "site-c");
    assert!(
        e.contains("test.toml") && e.contains("\"site-c\"") && e.contains("site-a"),
        "{e}"
    );
}

#[test]
fn typo_key_is_refused_with_its_name() {
    let e = err(&EXAMPLE.replace("size = ", "sise = "), "site-a");
    assert!(e.contains("sise"), "{e}");
}

#[test]
fn bad_values_name_key_and_reason() {
    let cases = [
        (EXAMPLE.replace("\"256MiB\"", "\"256MB\""), "ambiguous"),
        (
            EXAMPLE.replace("\"256MiB\"", "\"1000\""),
            "resource.r0.size",
        ),
        (
            EXAMPLE.replace("\"127.0.0.1:7789\"", "\"localhost\""),
            "resource.r0.on.site-a.address",
        ),
        (
            EXAMPLE.replace("\"/tmp/drl/a/r0.nbd\"", "\"r0.nbd\""),
            "resource.r0.on.site-a.nbd",
        ),
        (
            EXAMPLE.replace("\"/tmp/drl/a/r0.meta\"", "\"/tmp/drl/a/r0.img\""),
            "meta must be a different file",
        ),
        (
            EXAMPLE.replace("secret = \"change-me\"", "secret = \"\""),
            "resource.r0.secret",
        ),
        (
            EXAMPLE.replace("disk = \"/tmp/drl/a/r0.img\"", "disk = \"rel/r0.img\""),
            "absolute",
        ),
        (
            EXAMPLE.replace("[resource.on.site-b]", "[resource.on.site-x]"),
            "not listed in [[node]]",
        ),
        (
            EXAMPLE.replace("name = \"site-b\"", "name = \"site-a\""),
            "listed twice",
        ),
        (
            EXAMPLE.replace("name = \"r0\"", "name = \"r 0\""),
            "use only letters",
        ),
        (EXAMPLE.replace("size = \"256MiB\"", "size = true"), "size"),
        (
            "[[node]]\nname = \"n\"\ncontrol-socket-mode = \"999\"\n".to_owned(),
            "octal",
        ),
    ];
    for (text, needle) in cases {
        let e = err(
            &text,
            if text.contains("site-a") {
                "site-a"
            } else {
                "n"
            },
        );
        assert!(e.contains(needle), "expected {needle:?} in: {e}");
        assert!(e.starts_with("test.toml"), "error must name the file: {e}");
    }
}

#[test]
fn toml_syntax_error_names_position() {
    let e = err("[[node]\nname = 1", "x");
    assert!(e.contains("test.toml") && e.contains("line"), "{e}");
}

#[test]
fn nbd_endpoint_uri() {
    assert_eq!(
        NbdEndpoint::parse("/run/r0.nbd").unwrap().uri(),
        "nbd+unix:///?socket=/run/r0.nbd"
    );
    assert_eq!(
        NbdEndpoint::parse("tcp:127.0.0.1:10809").unwrap().uri(),
        "nbd://127.0.0.1:10809/"
    );
    assert!(NbdEndpoint::parse("tcp:nohost").is_err());
}

#[test]
fn snapshot_defaults_and_checks() {
    let a = check(EXAMPLE, "site-a").unwrap();
    let r = &a.resources[0];
    assert_eq!(r.snapshot_chunk_bytes, 64 << 10);
    assert_eq!(r.snapshot_space_bytes, (256 << 20) / 100 * 25);
    assert_eq!(
        r.local.snapshot_dir,
        PathBuf::from("/tmp/drl/a/r0.meta.snap")
    );
    let e = err(
        &EXAMPLE.replace("secret =", "snapshot-chunk = \"3KiB\"\nsecret ="),
        "site-a",
    );
    assert!(
        e.contains("snapshot-chunk") && e.contains("power of two"),
        "{e}"
    );
}

#[test]
fn swift_and_stream_sections() {
    let t = format!(
        "{EXAMPLE}\n[swift]\nauth = \"tempauth\"\nurl = \"http://127.0.0.1:8080/auth/v1.0\"\nuser = \"test:tester\"\nkey = \"testing\"\n\n[stream]\nvault-dir = \"/srv/vault\"\nchunk-size = \"1MiB\"\nparallelism = 8\n"
    );
    let c = check(&t, "site-a").unwrap();
    assert!(
        matches!(c.swift, Some(crate::stream::auth::SwiftAuth::TempAuth { ref user, .. }) if user == "test:tester")
    );
    assert!(
        !format!("{:?}", c.swift).contains("testing"),
        "the key must never be printed"
    );
    assert_eq!(c.stream.chunk_bytes, 1 << 20);
    assert_eq!(c.stream.parallelism, 8);
    assert_eq!(c.stream.vault_dir, PathBuf::from("/srv/vault"));
    assert_eq!(
        c.stream.inflight_bytes,
        limits::STREAM_INFLIGHT_BYTES_DEFAULT
    );
    let c = check(&format!("{t}memory = \"64MiB\"\n"), "site-a").unwrap();
    assert_eq!(c.stream.inflight_bytes, 64 << 20);
    let e = err(&format!("{t}memory = \"1MiB\"\n"), "site-a");
    assert!(
        e.contains("stream.memory") && e.contains("must be 32"),
        "{e}"
    );
    let e = err(&t.replace("\"tempauth\"", "\"kerberos\""), "site-a");
    assert!(e.contains("swift.auth"), "{e}");
    let e = err(&t.replace("url = \"http", "url = \"ftp"), "site-a");
    assert!(e.contains("swift.url"), "{e}");
    let e = err(&t.replace("parallelism = 8", "parallelism = 0"), "site-a");
    assert!(e.contains("stream.parallelism"), "{e}");
    let k = t.replace("\"tempauth\"", "\"keystone-v3\"");
    assert!(err(&k, "site-a").contains("swift.project"));
    let c = check(
        &k.replace("key = \"testing\"", "key = \"testing\"\nproject = \"demo\""),
        "site-a",
    )
    .unwrap();
    assert!(
        matches!(c.swift, Some(crate::stream::auth::SwiftAuth::KeystoneV3 { ref project_name, .. }) if project_name == "demo")
    );
}

#[test]
fn shaping_defaults_count_only_and_the_example_stays_valid() {
    let a = check(EXAMPLE, "site-a").unwrap();
    assert_eq!(a.shaping, crate::shaping::ShapingConfig::default());
    assert_eq!(a.shaping.link_bytes_per_s, None);
    assert_eq!(a.shaping.classes.map(|c| c.share), [50, 25, 15, 10]);
}

#[test]
fn shaping_section_is_read() {
    use crate::shaping::Class;
    let t = format!(
        "{EXAMPLE}\n[shaping]\nlink-rate = \"100Mbit\"\n[shaping.class.image]\nshare = 5\nceil = \"20Mbit\"\n[shaping.class.replication]\nshare = 60\n"
    );
    let c = check(&t, "site-a").unwrap().shaping;
    assert_eq!(c.link_bytes_per_s, Some(12_500_000));
    // 5 ms of 100 Mbit is 62.5 KB: the 64 KiB minimum wins.
    assert_eq!(c.burst_bytes, 64 * 1024);
    assert_eq!(c.classes[Class::Image as usize].share, 5);
    assert_eq!(
        c.classes[Class::Image as usize].ceil_bytes_per_s,
        Some(2_500_000)
    );
    assert_eq!(c.classes[Class::Replication as usize].share, 60);
    assert_eq!(c.classes[Class::Resync as usize].share, 25);
    assert_eq!(
        c.guarantee_bytes_per_s(Class::Replication),
        Some(12_500_000 * 60 / 105)
    );

    let t = format!("{EXAMPLE}\n[shaping]\nlink-rate = \"1Gbit\"\nburst = \"1MiB\"\n");
    let c = check(&t, "site-a").unwrap().shaping;
    assert_eq!(c.burst_bytes, 1 << 20);
    let t = format!("{EXAMPLE}\n[shaping]\nlink-rate = \"1Gbit\"\n");
    assert_eq!(check(&t, "site-a").unwrap().shaping.burst_bytes, 625_000);
}

#[test]
fn shaping_errors_name_the_key_and_reason() {
    let e = err(
        &format!(
            "{EXAMPLE}\n[shaping]\nlink-rate = \"100Mbit\"\n[shaping.class.bulk]\nshare = 1\n"
        ),
        "site-a",
    );
    assert!(
        e.contains("test.toml: shaping.class.bulk: unknown traffic class \"bulk\""),
        "{e}"
    );
    let e = err(
        &format!(
            "{EXAMPLE}\n[shaping]\nlink-rate = \"100Mbit\"\n[shaping.class.resync]\nshare = 0\n"
        ),
        "site-a",
    );
    assert!(
        e.contains("shaping.class.resync.share: 0: must be 1 to"),
        "{e}"
    );
    let e = err(&format!("{EXAMPLE}\n[shaping]\nlink-rate = \"100Mbit\"\n[shaping.class.image]\nceil = \"200Mbit\"\n"), "site-a");
    assert!(
        e.contains("shaping.class.image.ceil: 200.0Mbit is above the link rate 100.0Mbit"),
        "{e}"
    );
    let e = err(
        &format!("{EXAMPLE}\n[shaping]\n[shaping.class.image]\nceil = \"20Mbit\"\n"),
        "site-a",
    );
    assert!(
        e.contains("shaping.class.image.ceil: a ceiling needs shaping.link-rate"),
        "{e}"
    );
    let e = err(
        &format!("{EXAMPLE}\n[shaping]\nlink-rate = \"100Mbit\"\nburst = \"1KiB\"\n"),
        "site-a",
    );
    assert!(e.contains("shaping.burst: 1"), "{e}");
    let e = err(
        &format!("{EXAMPLE}\n[shaping]\nlink-rate = \"100Mb\"\n"),
        "site-a",
    );
    assert!(e.contains("unknown rate unit"), "{e}");
    let e = err(
        &format!("{EXAMPLE}\n[shaping]\nlinkrate = \"100Mbit\"\n"),
        "site-a",
    );
    assert!(e.contains("linkrate"), "{e}");
}

#[test]
fn shaping_resync_section() {
    let a = check(EXAMPLE, "site-a").unwrap();
    assert_eq!(a.resync, crate::shaping::resync::ResyncTuning::default());
    let t = format!("{EXAMPLE}\n[shaping]\nlink-rate = \"100Mbit\"\n[shaping.resync]\nplan-ahead = \"3s\"\nfill-target = \"4MiB\"\nmin-rate = \"10Mbit\"\nmax-rate = \"80Mbit\"\n");
    let r = check(&t, "site-a").unwrap().resync;
    assert_eq!(
        (
            r.plan_ahead_ms,
            r.fill_target_bytes,
            r.min_rate_bytes_per_s,
            r.max_rate_bytes_per_s
        ),
        (3000, 4 << 20, 1_250_000, Some(10_000_000))
    );
    let e = err(
        &format!("{EXAMPLE}\n[shaping.resync]\nfill-target = \"4KiB\"\n"),
        "site-a",
    );
    assert!(e.contains("shaping.resync.fill-target: 4096 bytes"), "{e}");
    let e = err(
        &format!("{EXAMPLE}\n[shaping.resync]\nmin-rate = \"10Mbit\"\nmax-rate = \"1Mbit\"\n"),
        "site-a",
    );
    assert!(e.contains("shaping.resync.max-rate: below min-rate"), "{e}");
}

/// Issue 10's `[openstack]` and `[[plan]]`, verbatim (with a second resource `r1`).
const PLAN_EXAMPLE: &str = r#"
[openstack]                       # the backup site's cloud; or OS_* / OS_CLOUD
auth-url = "http://127.0.0.1:5050/v3"
username = "admin"
password = "secret"
project = "admin"

[[plan]]
name = "web"
resources = ["r0", "r1"]          # drl resources holding the workload's volumes
template = "/etc/drl/plans/web.yaml"   # the workload's HOT template, primary-site IDs inside
cinder-host = "aio@nfs#nfs"       # backend pool that imports the volumes at the backup site
failover = "manual"               # "automatic" once site-failure detection exists
rpo-target = "30s"                # alarm when replication lag exceeds it

[plan.volume.r0]
primary-id = "0e5b7c8e-0d7e-4c39-9d6f-5a1f2b7c1a10"   # the volume's ID at the primary site
bootable = true
"#;

fn with_r1(extra: &str) -> String {
    format!(
        "{EXAMPLE}\n[[resource]]\nname = \"r1\"\nsize = \"256MiB\"\nsecret = \"x\"\n[resource.on.site-a]\naddress = \"127.0.0.1:7791\"\ndisk = \"/tmp/drl/a/r1.img\"\nmeta = \"/tmp/drl/a/r1.meta\"\n[resource.on.site-b]\naddress = \"127.0.0.1:7792\"\ndisk = \"/tmp/drl/b/r1.img\"\nmeta = \"/tmp/drl/b/r1.meta\"\n{extra}"
    )
}

#[test]
fn issue_plan_example_works_as_written() {
    let c = check(&with_r1(PLAN_EXAMPLE), "site-b").unwrap();
    let p = &c.plans[0];
    assert_eq!(p.name, "web");
    assert_eq!(p.volumes.len(), 2);
    assert!(p.volumes[0].bootable && !p.volumes[1].bootable);
    assert_eq!(p.rpo_target_ms, Some(30_000));
    assert_eq!(p.stack_name, "web");
    assert!(
        !format!("{:?}", c.openstack).contains("secret"),
        "password redacted"
    );
    assert_eq!(
        c.nodes[1].site, "site-b",
        "a node without site is its own site"
    );
}

#[test]
fn bad_plans_name_key_and_reason() {
    let e = err(
        &with_r1(&PLAN_EXAMPLE.replace("[\"r0\", \"r1\"]", "[\"r0\", \"r9\"]")),
        "site-b",
    );
    assert!(e.contains("plan.web.resources") && e.contains("r9"), "{e}");
    let e = err(
        &with_r1(&PLAN_EXAMPLE.replace("aio@nfs#nfs", "nfs")),
        "site-b",
    );
    assert!(e.contains("plan.web.cinder-host"), "{e}");
    let e = err(
        &with_r1(&PLAN_EXAMPLE.replace("\"manual\"", "\"sometimes\"")),
        "site-b",
    );
    assert!(e.contains("plan.web.failover"), "{e}");
    let e = err(
        &with_r1(&PLAN_EXAMPLE.replace("[plan.volume.r0]", "[plan.volume.r5]")),
        "site-b",
    );
    assert!(e.contains("plan.web.volume.r5"), "{e}");
    let e = err(
        &with_r1(&PLAN_EXAMPLE.replace("/etc/drl/plans", "plans")),
        "site-b",
    );
    assert!(e.contains("plan.web.template"), "{e}");
    let e = err(
        &with_r1(&PLAN_EXAMPLE.replace("bootable = true", "bootabel = true")),
        "site-b",
    );
    assert!(e.contains("bootabel"), "{e}");
    let e = err(
        &with_r1(&PLAN_EXAMPLE.replace("rpo-target = \"30s\"", "keep = 3")),
        "site-b",
    );
    assert!(
        e.contains("plan.web.keep") && e.contains("without snapshot-every"),
        "{e}"
    );
    let e = err(
        &with_r1(&PLAN_EXAMPLE.replace("rpo-target = \"30s\"", "snapshot-every = \"10ms\"")),
        "site-b",
    );
    assert!(e.contains("plan.web.snapshot-every"), "{e}");
    let c = check(
        &with_r1(
            &PLAN_EXAMPLE.replace("rpo-target = \"30s\"", "snapshot-every = \"60m\"\nkeep = 5"),
        ),
        "site-b",
    )
    .unwrap();
    assert_eq!(c.plans[0].snapshots, Some((3_600_000, 5)));
    // A resource that is not replicated cannot be recovered elsewhere.
    let solo = format!("{}\n[[resource]]\nname = \"r1\"\nsize = \"256MiB\"\n[resource.on.site-a]\ndisk = \"/tmp/drl/a/r1.img\"\nmeta = \"/tmp/drl/a/r1.meta\"\n{PLAN_EXAMPLE}", EXAMPLE);
    let e = err(&solo, "site-b");
    assert!(e.contains("not replicated"), "{e}");
}

#[test]
fn primary_stack_name_needs_the_primary_sites_cloud() {
    let e = err(
        &with_r1(
            &PLAN_EXAMPLE.replace("rpo-target = \"30s\"", "primary-stack-name = \"web-home\""),
        ),
        "site-b",
    );
    assert!(
        e.contains("plan.web.primary-stack-name") && e.contains("[primary-openstack]"),
        "{e}"
    );
    let home = "\n[primary-openstack]\nauth-url = \"http://keystone.home.example:5000/v3\"\nusername = \"admin\"\npassword = \"home-secret\"\nproject = \"admin\"\n";
    let c = check(
        &with_r1(&format!(
            "{}{home}",
            PLAN_EXAMPLE.replace("rpo-target = \"30s\"", "primary-stack-name = \"web-home\"")
        )),
        "site-b",
    )
    .unwrap();
    assert_eq!(c.plans[0].primary_stack_name.as_deref(), Some("web-home"));
    assert_eq!(
        c.primary_openstack.as_ref().map(|a| a.auth_url()),
        Some("http://keystone.home.example:5000/v3")
    );
    assert!(!format!("{:?}", c.primary_openstack).contains("home-secret"));
    let e = err(
        &with_r1(&format!(
            "{}{}",
            PLAN_EXAMPLE,
            home.replace("http://", "ftp://")
        )),
        "site-b",
    );
    assert!(e.contains("primary-openstack.auth-url"), "{e}");
}

/// `[[plan]] images`: the brief's form works; each bad entry names its key.
#[test]
fn plan_images_parse_and_bad_ones_name_the_key() {
    let with = |images: &str| {
        with_r1(&PLAN_EXAMPLE.replace(
            "rpo-target = \"30s\"",
            &format!("snapshot-every = \"60m\"\nkeep = 3\nimages = {images}"),
        ))
    };
    let c = check(
        &with(r#"[{ file = "/var/lib/drl/images/base.qcow2", to = "swift://images/base" }, { file = "/srv/win.raw", to = "/srv/vault::img/win/" }]"#),
        "site-b",
    )
    .unwrap();
    let im = &c.plans[0].images;
    assert_eq!(im.len(), 2);
    assert_eq!(im[0].file, PathBuf::from("/var/lib/drl/images/base.qcow2"));
    assert_eq!(im[0].to, "swift://images/base");
    assert_eq!(im[1].to, "/srv/vault::img/win", "trailing slash dropped");
    let c = check(&with_r1(PLAN_EXAMPLE), "site-b").unwrap();
    assert!(c.plans[0].images.is_empty(), "images are optional");
    for (images, want) in [
        (
            r#"[{ file = "base.qcow2", to = "swift://images/base" }]"#,
            "plan.web.images[0].file",
        ),
        (
            r#"[{ file = "/a", to = "swift://images/a" }, { file = "/b", to = "swift://images" }]"#,
            "plan.web.images[1].to",
        ),
        (
            r#"[{ file = "/a", to = "swift://" }]"#,
            "plan.web.images[0].to",
        ),
        (
            r#"[{ file = "/a", to = "swift://i/a" }, { file = "/b", to = "swift://i/a/" }]"#,
            "overwrite each other",
        ),
        (r#"[{ file = "/a", to = "swift://i/a", sha = 1 }]"#, "sha"),
        (r#"[{ file = "/a" }]"#, "to"),
    ] {
        let e = err(&with(images), "site-b");
        assert!(e.contains(want), "{images}: {e}");
    }
    let e = err(
        &with_r1(&PLAN_EXAMPLE.replace(
            "rpo-target = \"30s\"",
            "images = [{ file = \"/a\", to = \"swift://i/a\" }]",
        )),
        "site-b",
    );
    assert!(
        e.contains("plan.web.images") && e.contains("without snapshot-every"),
        "{e}"
    );
}
