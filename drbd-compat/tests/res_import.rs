//! `.res` import on real examples from DRBD's documentation (drbd.conf(5) of DRBD 8.4 and 9)
//! and from DRBD users: every DRBD setting ends up either in the TOML under drl's name or in
//! the list of what was not carried over; nothing is dropped silently.

use drbd_compat::import::{import, ImportOptions};
use drbd_compat::res::{parse, Item};

fn opts() -> ImportOptions {
    ImportOptions {
        size: Some("64M".into()),
        meta_dir: "/var/lib/drl".into(),
        nbd_dir: "/run/drl".into(),
    }
}

fn load(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Every parameter (leaf) of the file, with the section it sits in.
fn leaves(items: &[Item], section: &str, out: &mut Vec<(String, String)>) {
    for i in items {
        match &i.body {
            Some(b) => leaves(b, &i.words[0], out),
            None => out.push((section.to_owned(), i.words[0].clone())),
        }
    }
}

/// drl's key for a DRBD parameter that maps.
fn drl_key(k: &str) -> Option<&'static str> {
    Some(match k {
        "protocol" => "protocol = \"A\"",
        "shared-secret" => "secret = ",
        "on-congestion" => "on-congestion = ",
        "max-buffers" => "max-buffer = ",
        "after-sb-0pri" => "after-sb-0pri = ",
        "after-sb-1pri" => "after-sb-1pri = ",
        "c-plan-ahead" => "plan-ahead = ",
        "c-fill-target" => "fill-target = ",
        "c-min-rate" => "min-rate = ",
        "c-max-rate" => "max-rate = ",
        "address" => "address = ",
        "disk" => "disk = ",
        "meta-disk" => "meta = ",
        "size" => "size = ",
        "resync-rate" => "resync-rate = ",
        "auto-promote" => "auto-promote = ",
        _ => return None,
    })
}

fn nothing_dropped(file: &str) {
    let text = load(file);
    let got = import(&text, &opts()).unwrap();
    let mut all = Vec::new();
    leaves(&parse(&text).unwrap(), "", &mut all);
    for (section, key) in all {
        let in_toml = drl_key(&key).is_some_and(|k| got.toml.contains(k));
        let listed = got.unmapped.iter().any(|u| u.contains(&key));
        assert!(
            in_toml || listed,
            "{file}: {section} {key} neither mapped nor listed\n{}\n{:#?}",
            got.toml,
            got.unmapped
        );
    }
}

#[test]
fn every_setting_is_mapped_or_listed() {
    for f in [
        "drbd-conf-man-r0.res",
        "drbd9-conf-man-r0.res",
        "long-distance-pull-ahead.res",
        "production-iscsi.res",
    ] {
        nothing_dropped(f);
    }
}

#[test]
fn the_long_distance_example_maps_to_drl_keys() {
    let got = import(&load("long-distance-pull-ahead.res"), &opts()).unwrap();
    let t = &got.toml;
    for want in [
        "[[node]]\nname = \"site-a\"",
        "[[node]]\nname = \"site-b\"",
        "name = \"r0\"",
        "protocol = \"A\"",
        "secret = \"drl-import-test\"",
        "on-congestion = \"pull-ahead\"",
        "max-buffer = \"32000KiB\"",
        "after-sb-0pri = \"discard-zero-changes\"",
        "after-sb-1pri = \"discard-secondary\"",
        "size = \"64MiB\"",
        "[resource.on.\"site-a\"]\naddress = \"198.18.0.1:7789\"\nnbd = \"/run/drl/r0.nbd\"\ndisk = \"/dev/vg0/r0\"",
        "meta = \"/dev/vg0/r0-meta\"",
        "[shaping.resync]\nplan-ahead = \"2000ms\"\nfill-target = \"2MiB\"\nmin-rate = \"250KiB/s\"\nmax-rate = \"102400KiB/s\"",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    for listed in [
        "congestion-fill",
        "congestion-extents",
        "after-sb-2pri",
        "csums-alg sha1",
        "verify-alg sha1",
        "device /dev/drbd0",
    ] {
        assert!(
            got.unmapped.iter().any(|u| u.contains(listed)),
            "{listed} not listed: {:#?}",
            got.unmapped
        );
    }
    // The list is also in the TOML, as comments.
    assert!(t.contains("#   r0: csums-alg sha1"), "{t}");
}

#[test]
fn protocol_c_internal_metadata_and_common_are_reported() {
    let got = import(&load("production-iscsi.res"), &opts()).unwrap();
    assert!(!got.toml.contains("protocol = "), "{}", got.toml);
    assert!(got.unmapped.iter().any(|u| u.contains("protocol C")));
    assert!(got
        .unmapped
        .iter()
        .any(|u| u.contains("meta-disk internal")));
    assert!(got.toml.contains("meta = \"/var/lib/drl/r0.meta\""));
    assert!(got.unmapped.iter().any(|u| u.contains("fence-peer")));
    assert!(
        got.toml.contains("secret = \"secret\""),
        "common's net applies: {}",
        got.toml
    );
    assert!(got.toml.contains("[resource.on.\"iscsi1.example.org\"]"));
    let man = import(&load("drbd-conf-man-r0.res"), &opts()).unwrap();
    assert!(
        man.toml.contains("resync-rate = \"10240KiB/s\""),
        "{}",
        man.toml
    );
}

#[test]
fn a_file_without_a_resource_is_an_error() {
    assert!(import("global { usage-count yes; }", &opts()).is_err());
    assert!(import("resource r0 { on a { disk /dev/x } }", &opts()).is_err());
}

/// DRBD 9's `options { auto-promote no; }` becomes drl's `auto-promote = false` (drl's default,
/// like DRBD 9's, is on).
#[test]
fn auto_promote_maps() {
    let text = r#"resource r0 {
  options { auto-promote no; }
  net { protocol A; shared-secret "s3cret"; }
  on alpha { address 10.0.0.1:7789; disk /dev/vg/r0; meta-disk /dev/vg/r0-md; }
  on bravo { address 10.0.0.2:7789; disk /dev/vg/r0; meta-disk /dev/vg/r0-md; }
}
"#;
    let got = import(text, &opts()).unwrap();
    assert!(got.toml.contains("auto-promote = false"), "{}", got.toml);
    assert!(
        !got.unmapped.iter().any(|u| u.contains("auto-promote")),
        "{:#?}",
        got.unmapped
    );
    let yes = import(
        &text.replace("auto-promote no", "auto-promote yes"),
        &opts(),
    )
    .unwrap();
    assert!(yes.toml.contains("auto-promote = true"), "{}", yes.toml);
}

/// Found by fuzzing (fuzz/regressions/drbd_res/duplicate-secret-and-resource): a setting in
/// `common` and again in the resource became two `secret =` lines, TOML that drl refused
/// ("duplicate key"). The resource's value wins, as in DRBD, and the import says so.
#[test]
fn a_setting_in_common_and_in_the_resource_becomes_one_key() {
    let text = "common { net { shared-secret common; max-buffers 100; } }\n\
                resource r0 { net { shared-secret mine; } net { max-buffers 200; }\n\
                  on a { device /dev/drbd0; disk /dev/sdb; meta-disk internal; address 10.0.0.1:7788; }\n\
                  on b { device /dev/drbd0; disk /dev/sdb; meta-disk internal; address 10.0.0.2:7788; } }\n";
    let out = import(text, &opts()).unwrap();
    let secrets: Vec<&str> = out
        .toml
        .lines()
        .filter(|l| l.starts_with("secret = "))
        .collect();
    assert_eq!(secrets, ["secret = \"mine\""], "{}", out.toml);
    let buffers: Vec<&str> = out
        .toml
        .lines()
        .filter(|l| l.starts_with("max-buffer = "))
        .collect();
    assert_eq!(buffers.len(), 1, "{}", out.toml);
    assert!(
        buffers[0].contains("800KiB"),
        "the resource's 200 x 4 KiB: {}",
        out.toml
    );
    assert!(
        out.unmapped
            .iter()
            .any(|u| u.contains("secret is set more than once")),
        "{:?}",
        out.unmapped
    );
}

/// Found by the same fuzz input: two `resource r0` sections became two resources of one name.
#[test]
fn a_resource_defined_twice_is_refused() {
    let one = "resource r0 { on a { disk /dev/sdb; address 10.0.0.1:7788; } }\n";
    let e = import(&format!("{one}{one}"), &opts()).unwrap_err();
    assert!(
        e.to_string().contains("resource r0 is defined twice"),
        "{e}"
    );
    assert_eq!(e.line, 2);
}
