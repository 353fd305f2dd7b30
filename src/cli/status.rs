//! `drl status` and `drl events`: render what the daemon reports.

use serde_json::{json, Value};

use super::{call_and_print, connect, exit, EventsArgs, Global, StatusArgs, VerifyArgs};
use crate::config::units::format_bytes;
use crate::control::{EventFilter, Received};

pub fn status(g: &Global, a: &StatusArgs) -> i32 {
    let params = match &a.resource {
        Some(r) => json!({ "resource": r }),
        None => json!({}),
    };
    call_and_print(g, "status", params, a.json, render_table)
}

/// One row per resource, aligned columns; the names are DRBD's.
pub fn render_table(v: &Value) -> String {
    let empty = vec![];
    let rows = v["resources"].as_array().unwrap_or(&empty);
    if rows.is_empty() {
        return "no resources on this node\n".into();
    }
    let header = [
        "RESOURCE",
        "ROLE",
        "DISK",
        "CONNECTION",
        "REPLICATION",
        "PEER",
        "OUT-OF-SYNC",
        "LAG",
        "SIZE",
        "NBD",
    ];
    let s = |x: &Value| x.as_str().unwrap_or("-").to_owned();
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let peer = match (r["peer_role"].as_str(), r["peer_disk"].as_str()) {
            (Some(pr), Some(pd)) => format!("{pr}/{pd}"),
            _ => "-".into(),
        };
        let nbd = match r["nbd"]["endpoint"].as_str() {
            Some(ep) => format!(
                "{ep} ({} clients)",
                r["nbd"]["connections"].as_u64().unwrap_or(0)
            ),
            None => "-".into(),
        };
        let lag = r["lag_ms"]
            .as_u64()
            .map_or("-".into(), |l| format!("{l}ms"));
        table.push(vec![
            s(&r["name"]),
            s(&r["role"]),
            s(&r["disk"]),
            s(&r["connection"]),
            replication_cell(r),
            peer,
            r["out_of_sync_bytes"]
                .as_u64()
                .map_or("-".into(), format_bytes),
            lag,
            r["size_bytes"].as_u64().map_or("-".into(), format_bytes),
            nbd,
        ]);
    }
    super::align_columns(&table)
}

/// The replication state, with how far a resync or verify is.
pub fn replication_cell(r: &Value) -> String {
    let state = r["replication"].as_str().unwrap_or("-").to_owned();
    let pct = r["verify"]["percent"]
        .as_f64()
        .or_else(|| r["verify_peer"]["percent"].as_f64())
        .or_else(|| r["resync_percent"].as_f64());
    match pct {
        Some(p) => format!("{state} {p:.1}%"),
        None => state,
    }
}

/// `drl verify RES`: start an online verify here and follow it to its report.
pub fn verify(g: &Global, a: &VerifyArgs) -> i32 {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    super::runtime().block_on(async {
        let mut client = match connect(g).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let res = json!({ "resource": a.resource });
        let start = json!({ "resource": a.resource, "rate": a.rate });
        if let Err(e) = client.call("verify", start).await {
            eprintln!("drl: {}", e.admin_message());
            return exit::FAILED;
        }
        if a.no_wait {
            println!("{}: VerifyS (follow it with `drl status {}`)", a.resource, a.resource);
            return exit::OK;
        }
        let bar = ProgressBar::with_draw_target(
            Some(0),
            if a.json {
                ProgressDrawTarget::hidden()
            } else {
                ProgressDrawTarget::stderr()
            },
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        let report = loop {
            let r = match client.call("status", res.clone()).await {
                Ok(v) => v["resources"][0].clone(),
                Err(e) => {
                    bar.abandon();
                    eprintln!("drl: verify: status: {}", e.admin_message());
                    return exit::FAILED;
                }
            };
            let v = &r["verify"];
            if v.is_null() {
                // The run was registered before `verify` answered: gone means done, and
                // its report is `verify_last`.
                break r["verify_last"].clone();
            } else {
                bar.set_length(r["size_bytes"].as_u64().unwrap_or(0));
                bar.set_position(v["checked_bytes"].as_u64().unwrap_or(0));
                let n = v["differing_blocks"].as_u64().unwrap_or(0);
                bar.set_message(if n > 0 {
                    format!("{n} blocks differ so far")
                } else {
                    String::new()
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        bar.finish_and_clear();
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        } else {
            print!("{}", render_verify(&a.resource, &report));
        }
        if report["outcome"] == "completed" {
            exit::OK
        } else {
            exit::FAILED
        }
    })
}

/// The verify report as a short table and what to do next.
pub fn render_verify(res: &str, r: &Value) -> String {
    let oos = r["out_of_sync_bytes"].as_u64().unwrap_or(0);
    let rows = vec![
        vec![
            "outcome".into(),
            r["outcome"].as_str().unwrap_or("-").to_owned(),
        ],
        vec![
            "checked".into(),
            format_bytes(r["checked_bytes"].as_u64().unwrap_or(0)),
        ],
        vec!["out of sync".into(), format_bytes(oos)],
        vec![
            "marked on".into(),
            r["marked"].as_str().unwrap_or("-").to_owned(),
        ],
        vec![
            "seconds".into(),
            format!("{:.1}", r["seconds"].as_f64().unwrap_or(0.0)),
        ],
    ];
    let mut out = format!("{res}: online verify\n{}", super::align_columns(&rows));
    if oos > 0 {
        out += &match r["marked"].as_str() {
            Some("none") => "no node is Primary, so nothing was marked: promote the node whose data is right and verify again\n".to_string(),
            _ => format!("resync the marked blocks from the Primary: drl disconnect {res}; drl connect {res}\n"),
        };
    }
    out
}

pub fn events(g: &Global, a: &EventsArgs) -> i32 {
    super::runtime().block_on(async {
        let client = match connect(g).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let filter = EventFilter {
            resource: a.resource.clone(),
        };
        let mut stream = match client.subscribe(filter).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("drl events: {e}");
                return exit::FAILED;
            }
        };
        loop {
            match stream.next().await {
                Ok(Some(Received::Event(ev))) => {
                    let v = serde_json::to_value(&ev).unwrap_or_default();
                    if a.json {
                        println!("{v}");
                    } else {
                        println!("{}", render_event(&v));
                    }
                }
                Ok(Some(Received::Lost(n))) => {
                    eprintln!("drl events: {n} events lost (this reader fell behind)")
                }
                Ok(None) => return exit::OK,
                Err(e) => {
                    eprintln!("drl events: {e}");
                    return exit::UNREACHABLE;
                }
            }
        }
    })
}

/// drbdsetup-events2 style: `change resource name:r0 role:Primary`.
pub fn render_event(ev: &Value) -> String {
    let mut line = format!(
        "{} {} name:{}",
        ev["kind"].as_str().unwrap_or("change"),
        ev["object"].as_str().unwrap_or("resource"),
        ev["name"].as_str().unwrap_or("-")
    );
    if let Some(fields) = ev["fields"].as_object() {
        for (k, v) in fields {
            let v = v
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            line.push_str(&format!(" {k}:{v}"));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_uses_drbd_names() {
        let v = json!({"resources": [
            {"name": "r0", "role": "Primary", "disk": "UpToDate", "connection": "StandAlone",
             "replication": "Off", "out_of_sync_bytes": 0, "size_bytes": 268435456u64,
             "nbd": {"endpoint": "/tmp/r0.nbd", "connections": 2}},
            {"name": "longer-name", "role": "Secondary", "disk": "Inconsistent", "connection": "Connecting",
             "replication": "Off", "peer_role": "Primary", "peer_disk": "UpToDate", "lag_ms": 12}
        ]});
        let t = render_table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("r0           Primary"), "{t}");
        assert!(
            lines[1].contains("256MiB") && lines[1].contains("/tmp/r0.nbd (2 clients)"),
            "{t}"
        );
        assert!(
            lines[2].contains("Primary/UpToDate") && lines[2].contains("12ms"),
            "{t}"
        );
        let col = lines[0].find("DISK").unwrap();
        assert_eq!(&lines[1][col..col + 8], "UpToDate");
    }

    #[test]
    fn the_replication_cell_shows_how_far_a_resync_or_verify_is() {
        let cell = |r: Value| replication_cell(&r);
        assert_eq!(cell(json!({"replication": "Established"})), "Established");
        assert_eq!(
            cell(json!({"replication": "SyncSource", "resync_percent": 42.0})),
            "SyncSource 42.0%"
        );
        assert_eq!(
            cell(json!({"replication": "VerifyS", "verify": {"percent": 7.5}})),
            "VerifyS 7.5%"
        );
    }

    #[test]
    fn the_verify_report_says_what_to_do_next() {
        let r = json!({"outcome": "completed", "checked_bytes": 33554432u64,
            "out_of_sync_bytes": 12288, "marked": "local", "seconds": 1.2});
        let t = render_verify("r0", &r);
        assert!(t.contains("out of sync  12KiB"), "{t}");
        assert!(t.contains("drl disconnect r0; drl connect r0"), "{t}");
        let none = json!({"outcome": "completed", "checked_bytes": 1, "out_of_sync_bytes": 4096,
            "marked": "none", "seconds": 0.1});
        assert!(render_verify("r0", &none).contains("no node is Primary"));
        let clean = json!({"outcome": "completed", "checked_bytes": 1, "out_of_sync_bytes": 0,
            "marked": "none", "seconds": 0.1});
        assert!(!render_verify("r0", &clean).contains("drl disconnect"));
    }

    #[test]
    fn event_line_is_events2_style() {
        let ev = json!({"kind": "change", "object": "resource", "name": "r0", "fields": {"role": "Primary"}});
        assert_eq!(render_event(&ev), "change resource name:r0 role:Primary");
    }
}
