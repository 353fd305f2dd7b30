//! `drl import-drbd`: a DRBD resource file ([`crate::res::parse`]) turned into drl's TOML.
//!
//! Mapped: the `on HOST` sections (node names, `address`, `disk`, external `meta-disk`),
//! `protocol A`, `shared-secret`, `on-congestion`, `max-buffers`, the `after-sb-0pri` /
//! `after-sb-1pri` values drl implements, `resync-rate`, the resync controller (`c-plan-ahead`,
//! `c-fill-target`, `c-min-rate`, `c-max-rate`) and `size`. Everything else is listed in
//! [`Imported::unmapped`] with the reason (and repeated as a comment at the top of the TOML):
//! nothing is dropped silently.

use std::fmt::Write as _;

use crate::res::{parse, Item, ResError};

/// What `drl import-drbd` needs besides the file.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The volume size when the file has none (DRBD takes it from the backing disk).
    pub size: Option<String>,
    /// Where drl's metadata files go for `meta-disk internal` (drl keeps metadata in a file
    /// of its own): `DIR/RESOURCE.meta`.
    pub meta_dir: String,
    /// Where each node's NBD export socket goes: `DIR/RESOURCE.nbd`.
    pub nbd_dir: String,
}

/// The TOML and what could not be carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub toml: String,
    /// One line per DRBD setting drl does not take over, with the reason.
    pub unmapped: Vec<String>,
}

struct Out {
    nodes: Vec<String>,
    resources: String,
    resync: Vec<(String, String)>,
    unmapped: Vec<String>,
}

fn q(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if c.is_ascii_control() => {
                let _ = write!(o, "\\u{:04X}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// `s` as the text of one TOML comment line: TOML forbids control characters other than tab
/// in a comment, and a newline would end it, so each is written as `\u{XXXX}`.
fn comment(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_control() && c != '\t' {
            let _ = write!(o, "\\u{{{:04X}}}", c as u32);
        } else {
            o.push(c);
        }
    }
    o
}

/// DRBD's numbers with their default unit: a bare number times `unit_bytes`; K, M, G, T
/// suffixes are binary (drbd.conf(5)).
fn drbd_bytes(v: &str, unit_bytes: u64) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, suf) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mul = match suf {
        "" => unit_bytes,
        "s" => 512,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mul)
}

fn kib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else {
        format!("{}KiB", bytes.div_ceil(1024))
    }
}

/// Turn a DRBD configuration text into drl's TOML.
pub fn import(text: &str, opts: &ImportOptions) -> Result<Imported, ResError> {
    let items = parse(text)?;
    let mut out = Out {
        nodes: Vec::new(),
        resources: String::new(),
        resync: Vec::new(),
        unmapped: Vec::new(),
    };
    let common: Vec<Item> = items
        .iter()
        .filter(|i| i.key() == "common")
        .flat_map(|i| i.body.clone().unwrap_or_default())
        .collect();
    let mut found = false;
    let mut names = std::collections::HashSet::new();
    for it in &items {
        match (it.key(), &it.body) {
            ("resource", Some(body)) => {
                found = true;
                if let Some(name) = it.arg(1) {
                    if !names.insert(name.to_owned()) {
                        return Err(ResError {
                            line: it.line,
                            what: format!("resource {name} is defined twice"),
                        });
                    }
                }
                import_resource(it, body, &common, opts, &mut out)?;
            }
            ("common", Some(_)) => {}
            ("global", Some(body)) => {
                for p in body {
                    out.unmapped.push(format!(
                        "global: {} (DRBD's global options have no drl equivalent)",
                        p.text()
                    ));
                }
            }
            _ => out.unmapped.push(format!(
                "line {}: {} (not a resource; include files are not followed: import each .res file)",
                it.line,
                it.text()
            )),
        }
    }
    if !found {
        return Err(ResError {
            line: 1,
            what: "no `resource NAME { ... }` section".into(),
        });
    }
    // The resync controller is one table for the daemon: a setting from `common` and from a
    // resource (or from two resources) becomes one key, the last one, with a note.
    let mut resync = String::new();
    if !out.resync.is_empty() {
        resync += "[shaping.resync]\n";
        for (k, v) in &out.resync {
            let _ = writeln!(resync, "{k} = {}", q(v));
        }
        resync = last_wins(&resync, "shaping.resync", &mut out.unmapped);
    }
    let mut toml = String::from(
        "# drl configuration imported from a DRBD resource file by `drl import-drbd`\n",
    );
    if !out.unmapped.is_empty() {
        toml += "# Not carried over (see each reason):\n";
        for u in &out.unmapped {
            toml += &format!("#   {}\n", comment(u));
        }
    }
    toml.push('\n');
    for n in &out.nodes {
        let _ = writeln!(toml, "[[node]]\nname = {}\n", q(n));
    }
    toml += &out.resources;
    toml += &resync;
    Ok(Imported {
        toml,
        unmapped: out.unmapped,
    })
}

/// Keep the last `key = value` line of each key in a table's lines, where the first
/// occurrence stood; note each dropped one.
fn last_wins(table: &str, name: &str, unmapped: &mut Vec<String>) -> String {
    let key = |l: &str| l.split_once(" = ").map(|(k, _)| k.to_owned());
    let lines: Vec<&str> = table.lines().collect();
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(k) = key(l) else {
            out += l;
            out.push('\n');
            continue;
        };
        if lines[..i].iter().any(|p| key(p).as_deref() == Some(&k)) {
            continue; // already written, with its last value
        }
        let last = lines
            .iter()
            .rev()
            .find(|p| key(p).as_deref() == Some(&k))
            .unwrap_or(l);
        if last != l {
            unmapped.push(format!(
                "{name}: {k} is set more than once; the last one is kept"
            ));
        }
        out += last;
        out.push('\n');
    }
    out
}

fn import_resource(
    res: &Item,
    body: &[Item],
    common: &[Item],
    opts: &ImportOptions,
    out: &mut Out,
) -> Result<(), ResError> {
    let name = res.arg(1).ok_or(ResError {
        line: res.line,
        what: "resource without a name".into(),
    })?;
    let mut r = format!("[[resource]]\nname = {}\n", q(name));
    let mut size: Option<String> = None;
    let mut hosts: Vec<(String, Vec<Item>)> = Vec::new();
    // Volume sections at resource level (DRBD 9) apply to every host.
    let mut shared_volume: Vec<Item> = Vec::new();
    let mut options: Vec<(String, Item)> = common
        .iter()
        .filter_map(|s| Some((s.key().to_owned(), s.body.clone()?)))
        .flat_map(|(k, b)| b.into_iter().map(move |p| (k.clone(), p)))
        .collect();
    for it in body {
        match (it.key(), &it.body) {
            ("on", Some(b)) => {
                let host = it.arg(1).unwrap_or("").to_owned();
                if hosts.iter().any(|(h, _)| *h == host) {
                    // DRBD refuses it too: one node cannot hold two places in a resource.
                    return Err(ResError {
                        line: it.line,
                        what: format!("resource {name}: `on {host}` is given twice"),
                    });
                }
                hosts.push((host, b.clone()));
            }
            ("volume", Some(b)) => {
                if it.arg(1) == Some("0") {
                    shared_volume = b.clone();
                } else {
                    out.unmapped.push(format!(
                        "{name}: volume {} (drl resources hold one volume; make it a resource of its own)",
                        it.arg(1).unwrap_or("?")
                    ));
                }
            }
            ("net" | "disk" | "options" | "startup" | "handlers", Some(b)) => {
                for p in b {
                    options.push((it.key().to_owned(), p.clone()));
                }
            }
            ("connection", Some(b)) => {
                for p in b {
                    match (p.key(), &p.body) {
                        ("net", Some(nb)) => {
                            for np in nb {
                                options.push(("net".into(), np.clone()));
                            }
                        }
                        _ => out.unmapped.push(format!(
                            "{name}: connection {} (drl takes each node's address from its `on` section)",
                            p.text()
                        )),
                    }
                }
            }
            ("protocol", None) => options.push(("net".into(), it.clone())),
            // DRBD 8.4: a volume's keys at resource level apply to every host.
            ("device" | "disk" | "meta-disk" | "flexible-meta-disk", None) => {
                shared_volume.push(it.clone())
            }
            _ => out
                .unmapped
                .push(format!("{name}: {} (no drl equivalent)", it.text())),
        }
    }
    let mut resync_rate_noted = false;
    for (section, p) in &options {
        let v = p.arg(1).unwrap_or("");
        match (section.as_str(), p.key()) {
            ("net", "protocol") => {
                if v == "A" {
                    r += "protocol = \"A\"\n";
                } else {
                    out.unmapped.push(format!(
                        "{name}: protocol {v} (drl replicates asynchronously, protocol A only; its writes complete once local and queued for the peer)"
                    ));
                }
            }
            ("net", "shared-secret") => r += &format!("secret = {}\n", q(v)),
            ("net", "cram-hmac-alg") => out.unmapped.push(format!(
                "{name}: cram-hmac-alg {v} (drl always authenticates peers with HMAC-SHA-256 over `secret`)"
            )),
            ("net", "on-congestion") => match v {
                "block" | "pull-ahead" | "disconnect" => r += &format!("on-congestion = {}\n", q(v)),
                _ => out
                    .unmapped
                    .push(format!("{name}: on-congestion {v} (unknown value)")),
            },
            ("net", "max-buffers") => match drbd_bytes(v, 4096) {
                // DRBD counts 4 KiB buffers; drl bounds its send buffer in bytes.
                Some(b) => r += &format!("max-buffer = {}\n", q(&kib(b))),
                None => out.unmapped.push(format!("{name}: max-buffers {v} (not a number)")),
            },
            ("net", "after-sb-0pri") => match v {
                "disconnect" | "discard-zero-changes" => {
                    r += &format!("after-sb-0pri = {}\n", q(v))
                }
                _ => out.unmapped.push(format!(
                    "{name}: after-sb-0pri {v} (drl implements disconnect and discard-zero-changes; it stays at disconnect)"
                )),
            },
            ("net", "after-sb-1pri") => match v {
                "disconnect" | "discard-secondary" => {
                    r += &format!("after-sb-1pri = {}\n", q(v))
                }
                _ => out.unmapped.push(format!(
                    "{name}: after-sb-1pri {v} (drl implements disconnect and discard-secondary; it stays at discard-secondary)"
                )),
            },
            ("net", "after-sb-2pri") => out.unmapped.push(format!(
                "{name}: after-sb-2pri {v} (drl never runs two Primaries, so never needs it)"
            )),
            ("net", "congestion-fill" | "congestion-extents") => out.unmapped.push(format!(
                "{name}: {} {v} (drl goes Ahead when its send buffer, max-buffer, is full)",
                p.key()
            )),
            ("net", "csums-alg") => out.unmapped.push(format!(
                "{name}: csums-alg {v} (drl's resync moves the blocks its bitmaps mark, and zero ranges as headers; no checksum-based resync)"
            )),
            ("net", "verify-alg") => out.unmapped.push(format!(
                "{name}: verify-alg {v} (drl verify always compares SHA-256 digests of 4 KiB blocks)"
            )),
            ("options", "auto-promote") => match v {
                "yes" => r += "auto-promote = true\n",
                "no" => r += "auto-promote = false\n",
                _ => out
                    .unmapped
                    .push(format!("{name}: auto-promote {v} (not yes or no)")),
            },
            ("disk", "size") => size = Some(v.to_owned()),
            ("disk", "c-plan-ahead") => match v.parse::<u64>() {
                // Tenths of a second.
                Ok(t) if t > 0 && t.checked_mul(100).is_some() => {
                    out.resync.push(("plan-ahead".into(), format!("{}ms", t * 100)))
                }
                _ => out.unmapped.push(format!(
                    "{name}: c-plan-ahead {v} (0 turns DRBD's controller off, and drl's is always \
                     on; or not a number of tenths of a second drl can hold)"
                )),
            },
            ("disk", "c-fill-target") => match drbd_bytes(v, 512) {
                Some(b) if b > 0 => out.resync.push(("fill-target".into(), kib(b))),
                _ => out.unmapped.push(format!("{name}: c-fill-target {v}")),
            },
            ("disk", "c-min-rate" | "c-max-rate") => match drbd_bytes(v, 1024) {
                Some(b) if b > 0 => out.resync.push((
                    p.key().trim_start_matches("c-").to_owned(),
                    format!("{}KiB/s", b / 1024),
                )),
                _ => out.unmapped.push(format!(
                    "{name}: {} {v} (0 has no drl equivalent)",
                    p.key()
                )),
            },
            ("disk", "resync-rate") if !resync_rate_noted => {
                resync_rate_noted = true;
                match drbd_bytes(v, 1024) {
                    Some(b) if b > 0 => r += &format!("resync-rate = {}\n", q(&format!("{}KiB/s", b / 1024))),
                    _ => out.unmapped.push(format!("{name}: resync-rate {v} (not a rate)")),
                }
            }
            _ => out.unmapped.push(format!(
                "{name}: {section} {} (no drl equivalent)",
                p.text()
            )),
        }
    }
    match size.or_else(|| opts.size.clone()) {
        Some(s) => match drbd_bytes(&s, 1024) {
            Some(b) => r += &format!("size = {}\n", q(&kib(b))),
            None => r += &format!("size = {}\n", q(&s)),
        },
        None => out.unmapped.push(format!(
            "{name}: size (DRBD takes it from the backing disk; drl needs it: pass --size)"
        )),
    }
    // A setting given twice (in `common` and the resource, or in two sections) must become one
    // TOML key: the later one wins, as a resource's section overrides `common` in DRBD.
    r = last_wins(&r, name, &mut out.unmapped);
    r.push('\n');
    for (host, hbody) in &hosts {
        if !out.nodes.contains(host) {
            out.nodes.push(host.clone());
        }
        let mut vol: Vec<Item> = shared_volume.clone();
        let mut address = None;
        for p in hbody {
            match (p.key(), &p.body) {
                ("volume", Some(b)) if p.arg(1) == Some("0") => vol.extend(b.iter().cloned()),
                ("volume", Some(_)) => out.unmapped.push(format!(
                    "{name} on {host}: volume {} (one volume per drl resource)",
                    p.arg(1).unwrap_or("?")
                )),
                ("address", None) => {
                    // `address [af] IP:PORT`: drl takes IPv4 and [IPv6]:PORT.
                    let a = if p.words.len() > 2 {
                        p.arg(2)
                    } else {
                        p.arg(1)
                    };
                    if let Some(af) = p.arg(1).filter(|_| p.words.len() > 2) {
                        if af != "ipv4" && af != "ipv6" {
                            out.unmapped.push(format!(
                                "{name} on {host}: address family {af} (drl speaks TCP over IPv4/IPv6)"
                            ));
                        }
                    }
                    address = a.map(str::to_owned);
                }
                ("node-id", None) => out.unmapped.push(format!(
                    "{name} on {host}: node-id {} (drl names nodes, it does not number them)",
                    p.arg(1).unwrap_or("?")
                )),
                ("device" | "disk" | "meta-disk" | "flexible-meta-disk", None) => {
                    vol.push(p.clone())
                }
                _ => out.unmapped.push(format!(
                    "{name} on {host}: {} (no drl equivalent)",
                    p.text()
                )),
            }
        }
        // One table per host; a key the section gives twice (two `disk` lines) must become one
        // TOML key too: the last wins, as for the resource's own settings.
        let mut h = String::new();
        let _ = writeln!(h, "[resource.on.{}]", q(host));
        if let Some(a) = address {
            let _ = writeln!(h, "address = {}", q(&a));
        }
        let mut meta_set = false;
        for p in &vol {
            let v = p.arg(1).unwrap_or("");
            match p.key() {
                "disk" => {
                    let _ = writeln!(h, "disk = {}", q(v));
                }
                "device" => {
                    let _ = writeln!(h, "nbd = {}", q(&format!("{}/{name}.nbd", opts.nbd_dir)));
                    out.unmapped.push(format!(
                        "{name} on {host}: device {} (drl serves the volume over NBD instead of a /dev/drbdN device: nbd = {}/{name}.nbd)",
                        p.words[1..].join(" "),
                        opts.nbd_dir
                    ));
                }
                "meta-disk" | "flexible-meta-disk" if v == "internal" => {
                    let path = format!("{}/{name}.meta", opts.meta_dir);
                    let _ = writeln!(h, "meta = {}", q(&path));
                    meta_set = true;
                    out.unmapped.push(format!(
                        "{name} on {host}: meta-disk internal (drl keeps metadata in a file of its own: meta = {path}; create it with `drl create-md {name}`)"
                    ));
                }
                "meta-disk" | "flexible-meta-disk" => {
                    // External metadata: `/dev/sdb1`, `/dev/sdb1[0]`; drl writes its own
                    // format there (new metadata: DRBD's is not read).
                    let path = v.split('[').next().unwrap_or(v);
                    let _ = writeln!(h, "meta = {}", q(path));
                    meta_set = true;
                    out.unmapped.push(format!(
                        "{name} on {host}: meta-disk {v}: drl keeps its own metadata format at {path} (run `drl create-md {name}`; DRBD's metadata there is not read)"
                    ));
                }
                _ => out.unmapped.push(format!(
                    "{name} on {host}: {} (no drl equivalent)",
                    p.text()
                )),
            }
        }
        if !meta_set {
            let path = format!("{}/{name}.meta", opts.meta_dir);
            let _ = writeln!(h, "meta = {}", q(&path));
        }
        r += &last_wins(&h, &format!("{name} on {host}"), &mut out.unmapped);
        r.push('\n');
    }
    if hosts.len() != 2 {
        out.unmapped.push(format!(
            "{name}: {} `on` sections (drl replicates between exactly two nodes, or runs one alone)",
            hosts.len()
        ));
    }
    out.resources += &r;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drbd_units() {
        assert_eq!(drbd_bytes("8000", 4096), Some(8000 * 4096));
        assert_eq!(drbd_bytes("10M", 1024), Some(10 << 20));
        assert_eq!(drbd_bytes("2G", 512), Some(2 << 30));
        assert_eq!(drbd_bytes("x", 1), None);
    }

    /// Import `res` with a size given, and read the TOML back (a TOML error fails the test).
    fn imported(res: &str) -> (Imported, toml::Value) {
        let opts = ImportOptions {
            size: Some("1GiB".into()),
            ..ImportOptions::default()
        };
        let out = import(res, &opts).expect("imports");
        let v: toml::Value =
            toml::from_str(&out.toml).unwrap_or_else(|e| panic!("{e}\n{}", out.toml));
        (out, v)
    }

    #[test]
    fn a_resync_setting_given_twice_becomes_one_toml_key() {
        let res = "common {\n  disk {\n    c-plan-ahead 10;\n  }\n}\nresource r0 {\n  disk {\n    \
                   c-plan-ahead 20;\n  }\n  on a {\n    disk /dev/x;\n    address 10.0.0.1:7789;\n  }\n  \
                   on b {\n    disk /dev/y;\n    address 10.0.0.2:7789;\n  }\n}\n";
        let (out, v) = imported(res);
        assert_eq!(
            v["shaping"]["resync"]["plan-ahead"].as_str(),
            Some("2000ms"),
            "{}",
            out.toml
        );
    }

    #[test]
    fn an_on_section_given_twice_for_one_host_is_refused() {
        let res = "resource r0 {\n  on a {\n    disk /dev/x;\n    address 10.0.0.1:7789;\n  }\n  \
                   on a {\n    disk /dev/y;\n    address 10.0.0.2:7789;\n  }\n}\n";
        let e = import(res, &ImportOptions::default()).expect_err("two `on a` sections");
        assert!(e.what.contains("`on a` is given twice"), "{}", e.what);
        assert_eq!(e.line, 6);
    }

    #[test]
    fn a_key_given_twice_in_an_on_section_becomes_one_toml_key() {
        let res = "resource r0 {\n  on a {\n    disk /dev/x;\n    address 10.0.0.1:7789;\n    \
                   disk /dev/y;\n    meta-disk /m1;\n    meta-disk /m2;\n    device /dev/drbd0;\n    \
                   device /dev/drbd1;\n  }\n  on b {\n    disk /dev/z;\n    address 10.0.0.2:7789;\n  }\n}\n";
        let (out, v) = imported(res);
        let a = &v["resource"][0]["on"]["a"];
        assert_eq!(a["disk"].as_str(), Some("/dev/y"), "{}", out.toml);
        assert_eq!(a["meta"].as_str(), Some("/m2"), "{}", out.toml);
        assert!(
            out.unmapped
                .iter()
                .any(|u| u.contains("r0 on a: disk is set more than once")),
            "{:?}",
            out.unmapped
        );
    }

    /// TOML forbids control characters other than tab in comments and strings; a .res file
    /// may hold any (found by fuzzing: a NUL in an unmapped keyword broke the written TOML).
    #[test]
    fn control_characters_are_escaped_in_comments_and_strings() {
        assert_eq!(
            comment("a\u{0}b\tc\nd\u{7f}"),
            "a\\u{0000}b\tc\\u{000A}d\\u{007F}"
        );
        assert_eq!(q("x\u{7f}\u{1}"), "\"x\\u007F\\u0001\"");
        let t = format!("# {}\nk = {}\n", comment("\u{0}\u{8}evice\r"), q("\u{7f}"));
        let v: toml::Table = toml::from_str(&t).expect("valid TOML");
        assert_eq!(v["k"].as_str(), Some("\u{7f}"));
    }
}
