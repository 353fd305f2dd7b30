//! Two sites for the DR orchestrator's tests: node `a1` at site a holds both resources as
//! Primary; at site b, `b1` holds the first and `b2` the second (two daemons at the backup
//! site). The backup site's cloud is the real one of scripts/openstack-aio.sh (Keystone on
//! 127.0.0.1:5050, Cinder with the NFS driver on /var/tmp/drl-openstack/export, Heat, Nova
//! fake); a test fails, saying so, when it is not running.
//!
//! Every name a test creates in the shared cloud (plan, stack, resources, symlinks in the
//! export) carries a random `drl-dr-XXXX` tag, so tests and reruns never collide.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use super::pair::{free_port, res as status_of, WAIT};
use super::{wait_until, Node};
use drl::orchestrator::openstack::{Cloud, Volume};
use drl::stream::auth::{Secret, SwiftAuth};

pub const KS_URL: &str = "http://127.0.0.1:5050/v3";
pub const KS_PASSWORD: &str = "drl-admin-pw";
pub const EXPORT: &str = "/var/tmp/drl-openstack/export";
/// A whole GiB: Cinder sizes volumes in GiB and its NFS driver refuses to attach a file whose
/// virtual size differs ("virtual_size does not match"). Sparse, so cheap.
pub const SIZE: u64 = 1 << 30;

pub fn auth(password: &str) -> SwiftAuth {
    SwiftAuth::KeystoneV3 {
        auth_url: KS_URL.into(),
        username: "admin".into(),
        password: Secret::new(password),
        project_name: "admin".into(),
        user_domain_name: "Default".into(),
        project_domain_name: "Default".into(),
        region: None,
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Fail clearly when the cloud is not there.
pub fn need_openstack() {
    let cloud = Cloud::new(auth(KS_PASSWORD)).unwrap();
    if let Err(e) = rt().block_on(cloud.login()) {
        panic!("the OpenStack test cloud is not running ({e}): scripts/test.sh starts it (scripts/openstack-aio.sh start --nova)");
    }
    assert!(
        Path::new(EXPORT).is_dir(),
        "{EXPORT} missing: scripts/openstack-aio.sh start"
    );
}

/// `[swift]` of the Swift the suite runs (scripts/swift-aio.sh, tempauth), for configs.
pub const SWIFT_TOML: &str = "[swift]\nauth = \"tempauth\"\nurl = \"http://127.0.0.1:8080/auth/v1.0\"\nuser = \"test:tester\"\nkey = \"testing\"\n";

/// Fail clearly when Swift is not there.
pub fn need_swift() {
    let up = std::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-H", "X-Auth-User: test:tester"])
        .args([
            "-H",
            "X-Auth-Key: testing",
            "http://127.0.0.1:8080/auth/v1.0",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        up,
        "Swift does not answer on 127.0.0.1:8080: scripts/test.sh starts it (scripts/swift-aio.sh start)"
    );
}

/// A test's directory under /var/tmp and its tag (`drl-dr-xxxx`, lower case: Cinder and Heat
/// names are built from it).
pub fn tagged_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("drl-dr-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let tag = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_lowercase()
        .replace('_', "x");
    (dir, tag)
}

pub struct DrSites {
    pub dir: tempfile::TempDir,
    pub tag: String,
    pub res: [String; 2],
    pub ids: [String; 2],
    pub a1: Node,
    pub b1: Node,
    pub b2: Node,
    pub config: PathBuf,
}

pub fn uuid(seed: u64) -> String {
    let h = format!(
        "{:032x}",
        (seed as u128) << 64 | 0x4000_8000_0000_0000u128 | seed as u128
    );
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl DrSites {
    /// Start the three daemons with `template` (text; `{ID0}`, `{ID1}` replaced by the
    /// primary-site volume IDs) and `plan_extra` lines for the `[[plan]]` table.
    pub fn start(template: &str, plan_extra: &str, password: &str) -> DrSites {
        Self::start_with(template, plan_extra, password, "")
    }

    /// As [`DrSites::start`], with `top_extra` appended to the file (top-level tables);
    /// in `plan_extra` and `top_extra`, `{TAG}` is the test's tag and `{DIR}` its directory.
    pub fn start_with(
        template: &str,
        plan_extra: &str,
        password: &str,
        top_extra: &str,
    ) -> DrSites {
        let (dir, tag) = tagged_dir();
        let res = [format!("{tag}-r0"), format!("{tag}-r1")];
        let seed: u64 = rand::random();
        let ids = [uuid(seed), uuid(seed.wrapping_add(1))];
        let tpl = template.replace("{ID0}", &ids[0]).replace("{ID1}", &ids[1]);
        std::fs::write(dir.path().join("plan.yaml"), tpl).unwrap();
        let token = dir.path().join("control.token");
        std::fs::write(&token, format!("{:032x}\n", rand::random::<u128>())).unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let config = dir.path().join("drl.toml");
        let fill = |t: &str| {
            t.replace("{TAG}", &tag)
                .replace("{DIR}", &dir.path().display().to_string())
        };
        let text = Self::config_text(dir.path(), &tag, &res, &ids, &fill(plan_extra), password);
        std::fs::write(&config, text + &fill(top_extra)).unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        let d = dir.path();
        let a1 = Node::start(d, &text, "a1", &d.join("a1.sock"));
        let b1 = Node::start(d, &text, "b1", &d.join("b1.sock"));
        let b2 = Node::start(d, &text, "b2", &d.join("b2.sock"));
        let s = DrSites {
            dir,
            tag,
            res,
            ids,
            a1,
            b1,
            b2,
            config,
        };
        for r in &s.res {
            wait_until("both Connected", WAIT, || {
                status_of(&s.a1, r).is_some_and(|v| v["connection"] == "Connected")
            });
            s.ok(&s.a1, &["primary", r, "--force"]);
        }
        s.wait_synced();
        s
    }

    fn config_text(
        d: &Path,
        tag: &str,
        res: &[String; 2],
        ids: &[String; 2],
        plan_extra: &str,
        password: &str,
    ) -> String {
        let d = d.display();
        let mut s = String::new();
        for (n, site) in [("a1", "a"), ("b1", "b"), ("b2", "b")] {
            s += &format!(
                "[[node]]\nname = \"{n}\"\nsite = \"{site}\"\ncontrol-socket = \"{d}/{n}.sock\"\n"
            );
            if n == "b2" {
                // b2 is reached over the authenticated TCP control endpoint (the
                // orchestrator runs as b1), as a node on another host of the site would be.
                s += &format!(
                    "control-tcp = \"127.0.0.1:{}\"\ncontrol-token-file = \"{d}/control.token\"\n",
                    free_port()
                );
            }
            s += "\n";
        }
        for (i, (r, b)) in res.iter().zip(["b1", "b2"]).enumerate() {
            s += &format!(
                "[[resource]]\nname = \"{r}\"\nsize = \"{SIZE}\"\nsecret = \"s3cret-{i}\"\n"
            );
            for n in ["a1", b] {
                s += &format!(
                    "[resource.on.{n}]\naddress = \"127.0.0.1:{}\"\ndisk = \"{d}/{n}-{i}.img\"\nmeta = \"{d}/{n}-{i}.meta\"\nnbd = \"{d}/{n}-{i}.nbd\"\n",
                    free_port()
                );
            }
            s += "\n";
        }
        s += &format!(
            "[openstack]\nauth-url = \"{KS_URL}\"\nusername = \"admin\"\npassword = \"{password}\"\nproject = \"admin\"\n\n[dr]\nstate-dir = \"{d}/dr\"\ncheckpoints = \"{d}/vault::plans\"\n\n"
        );
        s += &format!(
            "[[plan]]\nname = \"{tag}\"\nresources = [\"{}\", \"{}\"]\ntemplate = \"{d}/plan.yaml\"\ncinder-host = \"aio@nfs#nfs\"\nfailover = \"manual\"\nrpo-target = \"30s\"\ncinder-export-dir = \"{EXPORT}\"\n{plan_extra}\n[plan.volume.{}]\nprimary-id = \"{}\"\nbootable = true\n\n[plan.volume.{}]\nprimary-id = \"{}\"\n",
            res[0], res[1], res[0], ids[0], res[1], ids[1]
        );
        s
    }

    /// The primary site's own Cinder volumes (fail back's workload stack needs them): a1's
    /// disks managed into the same cloud, standing for the primary site's; their IDs become
    /// the plan's primary IDs (template and config rewritten). Metadata `drl-test-primary`.
    pub fn register_primary_volumes(&mut self) {
        let c = self.cloud();
        let r = rt();
        let mut new = Vec::new();
        for i in 0..2 {
            let link = format!("drl-primary-{}-{i}", self.tag);
            std::os::unix::fs::symlink(self.disk("a1", i), Path::new(EXPORT).join(&link)).unwrap();
            let md: std::collections::BTreeMap<String, String> =
                [("drl-test-primary".to_string(), self.tag.clone())].into();
            let v = r
                .block_on(c.manage_volume(
                    &self.res[i],
                    "aio@nfs#nfs",
                    &format!("127.0.0.1:{EXPORT}/{link}"),
                    &format!("{}-primary-{i}", self.tag),
                    i == 0,
                    &md,
                ))
                .unwrap();
            new.push(v.id);
        }
        for id in &new {
            wait_until("the primary site's volume available", WAIT, || {
                r.block_on(c.show_volume("primary", id))
                    .is_ok_and(|v| v.status == "available")
            });
        }
        for f in [self.config.clone(), self.dir.path().join("plan.yaml")] {
            let mut text = std::fs::read_to_string(&f).unwrap();
            for (old, id) in self.ids.iter().zip(&new) {
                text = text.replace(old.as_str(), id);
            }
            std::fs::write(&f, text).unwrap();
        }
        self.ids = [new[0].clone(), new[1].clone()];
    }

    /// Rewrite the config (e.g. a fixed password) keeping everything else.
    pub fn set_password(&self, password: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let fixed: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("password = ") {
                    format!("password = \"{password}\"")
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(&self.config, fixed.join("\n") + "\n").unwrap();
    }

    pub fn backup(&self, i: usize) -> &Node {
        if i == 0 {
            &self.b1
        } else {
            &self.b2
        }
    }

    pub fn disk(&self, node: &str, i: usize) -> PathBuf {
        self.dir.path().join(format!("{node}-{i}.img"))
    }

    pub fn nbd_uri(&self, node: &str, i: usize) -> String {
        format!(
            "nbd+unix:///?socket={}",
            self.dir.path().join(format!("{node}-{i}.nbd")).display()
        )
    }

    pub fn wait_synced(&self) {
        for (i, r) in self.res.iter().enumerate() {
            wait_until(&format!("{r} in sync"), WAIT, || {
                status_of(self.backup(i), r).is_some_and(|v| super::pair::in_sync(&v))
                    && status_of(&self.a1, r).is_some_and(|v| super::pair::in_sync(&v))
            });
        }
    }

    /// `drl --config F --node b1 ARGS` (the orchestrator runs at the backup site).
    pub fn drl(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = std::process::Command::new(super::drl_bin());
        c.arg("--config")
            .arg(&self.config)
            .args(["--node", "b1"])
            .args(args);
        c.env_remove("DRL_DR_CRASH_AFTER");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    pub fn ok(&self, node: &Node, args: &[&str]) -> String {
        node_ok(node, args)
    }

    pub fn journal(&self) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join("dr")
                .join(format!("{}.journal", self.tag)),
        )
        .unwrap_or_default()
    }

    pub fn cloud(&self) -> Cloud {
        Cloud::new(auth(KS_PASSWORD)).unwrap()
    }

    /// Every Cinder volume this test's plan imported (any status).
    pub fn volumes(&self) -> Vec<Volume> {
        let c = self.cloud();
        rt().block_on(c.list_volumes())
            .unwrap()
            .into_iter()
            .filter(|v| v.metadata.get("drl-plan") == Some(&self.tag))
            .collect()
    }

    /// Kill the primary site and wait until the backup site sees the link gone.
    pub fn kill_primary_site(&mut self) {
        self.a1.kill9();
        for (i, r) in self.res.iter().enumerate() {
            wait_until("the backup sees the link gone", WAIT, || {
                status_of(self.backup(i), r).is_some_and(|v| v["connection"] != "Connected")
            });
        }
    }
}

impl Drop for DrSites {
    /// Leave the shared cloud as it was: the stack deleted, the volumes unmanaged.
    fn drop(&mut self) {
        cleanup_plan(&self.tag, self.dir.path());
    }
}

/// Delete the stacks named `plan` and `plan-home` (a fail back's stack at the primary),
/// unmanage every volume imported for it (Cinder metadata `drl-plan`) or registered as its
/// primary-site volume (`drl-test-primary`), and remove every link in the export that points
/// into `dir` (`drl-RES`, and `volume-<id>` that Cinder renamed and left behind at unmanage).
/// Best effort: a cleanup.
pub fn cleanup_plan(plan: &str, dir: &Path) {
    let Ok(c) = Cloud::new(auth(KS_PASSWORD)) else {
        return;
    };
    let r = rt();
    for name in [plan.to_string(), format!("{plan}-home")] {
        if let Ok(Some(s)) = r.block_on(c.find_stack(&name)) {
            let _ = r.block_on(c.delete_stack(&name, &s.id));
            for _ in 0..200 {
                match r.block_on(c.find_stack(&name)) {
                    Ok(Some(s)) if s.stack_status != "DELETE_COMPLETE" => {
                        std::thread::sleep(Duration::from_millis(250))
                    }
                    _ => break,
                }
            }
        }
    }
    let vols = r.block_on(c.list_volumes()).unwrap_or_default();
    for v in vols.into_iter().filter(|v| {
        v.metadata.get("drl-plan").map(String::as_str) == Some(plan)
            || v.metadata.get("drl-test-primary").map(String::as_str) == Some(plan)
    }) {
        let _ = r.block_on(c.unmanage_volume("cleanup", &v.id));
        let _ = std::fs::remove_file(Path::new(EXPORT).join(format!("volume-{}", v.id)));
    }
    if let Ok(entries) = std::fs::read_dir(EXPORT) {
        for e in entries.flatten() {
            if std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// `drl ARGS` on `node`, which must succeed; its stdout.
pub fn node_ok(node: &Node, args: &[&str]) -> String {
    let out = node.cli(args);
    assert!(
        out.status.success(),
        "drl {args:?} on {}: {}",
        node.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stdout_json(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "drl failed ({}): {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

/// A HOT template with no server: the volumes referenced by OS::Heat::Value (parameter with
/// the primary ID as default for the first, by value for the second).
pub const VOLUMES_TEMPLATE: &str = "heat_template_version: 2018-08-31
parameters:
  boot_volume: {type: string, default: {ID0}, constraints: [{custom_constraint: cinder.volume}]}
resources:
  refs:
    type: OS::Heat::Value
    properties:
      type: json
      value: {boot: {get_param: boot_volume}, data: {ID1}}
outputs:
  refs: {value: {get_attr: [refs, value]}}
";

/// A server booted from the first volume with the second attached (Nova fake driver).
pub const SERVER_TEMPLATE: &str = "heat_template_version: 2018-08-31
parameters:
  boot_volume: {type: string, default: {ID0}, constraints: [{custom_constraint: cinder.volume}]}
resources:
  server:
    type: OS::Nova::Server
    properties:
      flavor: m1.tiny
      block_device_mapping_v2: [{volume_id: {get_param: boot_volume}, boot_index: 0, delete_on_termination: false}]
      networks: [{allocate_network: none}]
      user_data_format: RAW
      config_drive: false
  data_attachment:
    type: OS::Cinder::VolumeAttachment
    properties:
      instance_uuid: {get_resource: server}
      volume_id: {ID1}
";

/// The Cinder volumes still imported for `plan` (any status), by ID.
pub fn leftover_volumes(plan: &str) -> Vec<String> {
    let c = Cloud::new(auth(KS_PASSWORD)).unwrap();
    rt().block_on(c.list_volumes())
        .unwrap()
        .into_iter()
        .filter(|v| v.metadata.get("drl-plan").map(String::as_str) == Some(plan))
        .map(|v| v.id)
        .collect()
}
