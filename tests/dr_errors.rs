//! The DR orchestrator's failures against the real cloud: a wrong password, a template that
//! references an unknown volume ID, Cinder down, Heat down. Each gives a clear error, the
//! journal shows where the recovery stopped, and the same command completes after the fix.
//! One test: it stops services of the shared cloud, which no other test may see.

mod common;

use common::dr::*;
use std::path::Path;
use std::process::Command;

fn service(name: &str, sig: &str) {
    // The pid file holds "PID STARTTIME" (scripts/lib.sh pidfile_write).
    let f = std::fs::read_to_string(format!("/var/tmp/drl-openstack/run/{name}.pid")).unwrap();
    let pid = f.split_whitespace().next().unwrap();
    let st = Command::new("kill")
        .args([sig, "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {name}");
}

fn restart_cloud() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openstack-aio.sh");
    let out = Command::new(script)
        .args(["start", "--nova"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn recover_fails(s: &DrSites, want: &str, step: &str) {
    let out = s.drl(&["dr", "recover", &s.tag, "--confirm-primary-down"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(want), "want {want:?}: {err}");
    assert!(err.contains(&format!("stopped at step {step}")), "{err}");
    let j = s.journal();
    let last = j.lines().last().unwrap();
    assert!(
        last.contains("\"failed\"") && last.contains(&format!("\"step\":\"{step}\"")),
        "{j}"
    );
}

#[test]
fn wrong_password_unknown_id_cinder_down_heat_down_then_resume() {
    need_openstack();
    // A resource that names a primary-site volume the plan does not protect.
    let bad_tpl = VOLUMES_TEMPLATE.replace(
        "outputs:",
        "  extra:\n    type: OS::Heat::Value\n    properties: {value: {volume_id: 9d0c6f5e-1b2a-4c3d-8e7f-0a1b2c3d4e5f}}\noutputs:",
    );
    let mut s = DrSites::start(&bad_tpl, "", "wrong-password");
    s.kill_primary_site();

    recover_fails(&s, "Keystone refused the credentials", "check");
    s.set_password(KS_PASSWORD);

    // Cinder down: the import stops with a clear error and nothing half-done.
    service("cinder-api", "-TERM");
    recover_fails(
        &s,
        "cannot reach the service",
        &format!("import:{}", s.res[0]),
    );
    restart_cloud();

    // The template references a volume the plan does not protect.
    recover_fails(&s, "9d0c6f5e-1b2a-4c3d-8e7f-0a1b2c3d4e5f", "rewrite");
    std::fs::write(
        s.dir.path().join("plan.yaml"),
        VOLUMES_TEMPLATE
            .replace("{ID0}", &s.ids[0])
            .replace("{ID1}", &s.ids[1]),
    )
    .unwrap();

    // Heat down.
    service("heat-api", "-TERM");
    recover_fails(&s, "heat", "stack");
    restart_cloud();

    let rep = stdout_json(&s.drl(
        &["dr", "recover", &s.tag, "--confirm-primary-down", "--json"],
        &[],
    ));
    assert_eq!(rep["stack_status"], "CREATE_COMPLETE", "{rep}");
    assert_eq!(s.volumes().len(), 2, "{:?}", s.volumes());
}
