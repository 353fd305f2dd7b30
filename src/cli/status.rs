//! `drl status` and `drl events`: render what the daemon reports.

use serde_json::{json, Value};

use super::{call_and_print, connect, exit, EventsArgs, Global, StatusArgs, VerifyArgs};
use crate::control::{EventFilter, Received};
use crate::units::format_bytes;

pub fn status(g: &Global, a: &StatusArgs) -> i32 {
    let params = match &a.resource {
        Some(r) => json!({ "resource": r }),
        None => json!({}),
    };
    let verbose = a.verbose;
    call_and_print(g, "status", params, a.json, move |v| {
        render_table_with(v, verbose)
    })
}

/// One row per resource, aligned columns; the names are DRBD's.
#[cfg(test)]
fn render_table(v: &Value) -> String {
    render_table_with(v, false)
}

/// The table (within 100 columns for names up to 12 characters), then one line per resource
/// that is not connected or not in sync saying why (split brain, authentication, peer
/// mismatch, disk I/O errors); `verbose` adds the size, the NBD endpoint and its clients, the
/// peer's send queue and the generation ids.
pub fn render_table_with(v: &Value, verbose: bool) -> String {
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
    ];
    let s = |x: &Value| x.as_str().unwrap_or("-").to_owned();
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let mut notes = String::new();
    for r in rows {
        let peer = match (r["peer_role"].as_str(), r["peer_disk"].as_str()) {
            (Some(pr), Some(pd)) => format!("{pr}/{pd}"),
            _ => "-".into(),
        };
        // Lag only means something while a peer is there to lag behind.
        let lag = match (r["connection"].as_str(), r["lag_ms"].as_u64()) {
            (Some("Connected"), Some(l)) => format!("{l}ms"),
            _ => "-".into(),
        };
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
        ]);
        // A consistency group: one row per volume under the resource (DRBD's `volume:N`
        // lines), its disk state and its own out-of-sync.
        for vol in r["volumes"].as_array().unwrap_or(&empty) {
            let mut row = vec![String::new(); header.len()];
            row[0] = format!("  volume:{}", vol["volume"]);
            row[2] = s(&vol["disk"]);
            if vol["replication"].is_string() {
                row[4] = s(&vol["replication"]);
            }
            row[6] = vol["out_of_sync_bytes"]
                .as_u64()
                .map_or("-".into(), format_bytes);
            table.push(row);
        }
        let name = s(&r["name"]);
        for why in reasons(r) {
            notes += &wrap(&format!("  {name}: {why}"), 100);
        }
        if verbose {
            notes += &details(&name, r);
        }
    }
    let mut out = super::align_columns(&table);
    if !notes.is_empty() {
        out.push('\n');
        out += &notes;
    }
    out
}

/// Why a resource is not connected or not in sync, in words (empty when all is well).
pub fn reasons(r: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let replicated = !r["peer_node"].is_null();
    if let Some(sb) = r["split_brain"].as_str() {
        out.push(format!("split brain: {sb}"));
        out.push(format!(
            "  resolve: drl connect {} --discard-my-data on the node whose changes go",
            r["name"].as_str().unwrap_or("RES")
        ));
    } else if replicated && r["connection"] != "Connected" {
        match r["last_error"].as_str() {
            Some(e) => out.push(format!("not connected: {e}")),
            None if r["connection"] == "StandAlone" => out.push(
                "not connected: disconnected by the admin (`drl connect` to reconnect)".into(),
            ),
            None => {}
        }
    }
    if let Some(n) = r["io"]["errors"].as_u64().filter(|n| *n > 0) {
        out.push(format!("disk I/O errors: {n} (see the daemon's log)"));
    }
    if let Some(n) = r["protocol_errors"].as_u64().filter(|n| *n > 0) {
        out.push(format!("protocol errors from the peer: {n}"));
    }
    if let Some(why) = size_pending(r) {
        out.push(why);
    }
    if r["connection"] == "Connected" {
        if let Some(eta) = r["resync_eta_s"].as_u64() {
            out.push(format!("resyncing, about {eta} s left"));
        }
    }
    out
}

/// A replicated volume whose size waits for one node to grow (`drl resize` on one node only):
/// the volume keeps the smaller size, connected; which node must grow, in words.
fn size_pending(r: &Value) -> Option<String> {
    let size = r["size_bytes"].as_u64()?;
    let ours = r["capacity_bytes"].as_u64()?;
    let peer = r["peer_capacity_bytes"].as_u64()?;
    let (b, res) = (format_bytes, r["name"].as_str().unwrap_or("RES"));
    let grow = if ours > size && peer <= size {
        format!("raise `size` on the peer, then drl resize {res} there")
    } else if peer > size && ours <= size {
        format!("raise `size` here, then drl resize {res}")
    } else {
        return None;
    };
    Some(format!(
        "size change pending: this node holds {}, the peer {}; the volume stays {} until both have grown ({grow})",
        b(ours),
        b(peer),
        b(size)
    ))
}

/// `line` broken at spaces into lines of at most `width` columns (continuations indented by
/// six), each ending in a newline; a word longer than the width stays whole.
fn wrap(line: &str, width: usize) -> String {
    let rest = line.trim_start();
    let mut cur = line[..line.len() - rest.len()].to_owned();
    let mut fresh = true;
    let mut out = String::new();
    for word in rest.split(' ') {
        if !fresh && cur.len() + 1 + word.len() > width {
            out += &cur;
            out.push('\n');
            cur = "      ".into();
            fresh = true;
        }
        if !fresh {
            cur.push(' ');
        }
        cur += word;
        fresh = false;
    }
    out += &cur;
    out.push('\n');
    out
}

fn details(name: &str, r: &Value) -> String {
    let mut out = format!(
        "  {name}: size {}\n",
        r["size_bytes"].as_u64().map_or("-".into(), format_bytes)
    );
    if let Some(ep) = r["nbd"]["endpoint"].as_str() {
        out += &format!(
            "  {name}: nbd {ep} ({} clients)\n",
            r["nbd"]["connections"].as_u64().unwrap_or(0)
        );
    }
    for vol in r["volumes"].as_array().into_iter().flatten().skip(1) {
        if let Some(ep) = vol["nbd"]["endpoint"].as_str() {
            out += &format!(
                "  {name}: volume {} nbd {ep} ({} clients)\n",
                vol["volume"],
                vol["nbd"]["connections"].as_u64().unwrap_or(0)
            );
        }
    }
    if let Some(p) = r["peer_node"].as_str() {
        out += &format!(
            "  {name}: peer {p}, send queue {}, on-congestion {}\n",
            r["send_queue_bytes"]
                .as_u64()
                .map_or("-".into(), format_bytes),
            r["on_congestion"].as_str().unwrap_or("-")
        );
    }
    if let Some(g) = r["generation"]["current"].as_str() {
        out += &format!(
            "  {name}: generation {g} (bitmap {})\n",
            r["generation"]["bitmap"].as_str().unwrap_or("-")
        );
    }
    out
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
        // The daemon answered `events.subscribe`: every change from here on reaches us.
        eprintln!("drl events: subscribed");
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

/// drbdsetup-events2 style: `change resource name:r0 role:Primary`; a group's volume follows
/// the name as in DRBD: `change device name:db volume:1 disk:UpToDate`.
pub fn render_event(ev: &Value) -> String {
    let mut line = format!(
        "{} {} name:{}",
        ev["kind"].as_str().unwrap_or("change"),
        ev["object"].as_str().unwrap_or("resource"),
        ev["name"].as_str().unwrap_or("-")
    );
    if let Some(v) = ev["volume"].as_u64() {
        line.push_str(&format!(" volume:{v}"));
    }
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
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[1].starts_with("r0           Primary"), "{t}");
        let v = render_table_with(&v, true);
        assert!(
            v.contains("r0: size 256MiB") && v.contains("r0: nbd /tmp/r0.nbd (2 clients)"),
            "{v}"
        );
        // Not connected: no lag to show.
        assert!(
            lines[2].contains("Primary/UpToDate") && !lines[2].contains("12ms"),
            "{t}"
        );
        let col = lines[0].find("DISK").unwrap();
        assert_eq!(&lines[1][col..col + 8], "UpToDate");
    }

    #[test]
    fn notes_wrap_at_100_columns() {
        let long = format!("  r0: not connected: {}", "word ".repeat(40));
        let w = wrap(&long, 100);
        assert!(w.lines().count() > 1, "{w}");
        assert!(w.lines().all(|l| l.len() <= 100), "{w}");
        assert!(
            w.lines().skip(1).all(|l| l.starts_with("      word")),
            "{w}"
        );
        assert_eq!(wrap("  r0: short", 100), "  r0: short\n");
    }

    /// Only one node grown (`drl resize` there): connected, at the old size, and the table
    /// says which node still has to grow; nothing once both capacities are equal.
    #[test]
    fn a_size_change_waiting_for_one_node_is_a_line_of_its_own() {
        let row = |ours: u64, peer: u64| {
            json!({"resources": [{"name": "r0", "role": "Primary", "disk": "UpToDate",
                "connection": "Connected", "replication": "Established", "peer_node": "b",
                "size_bytes": 64u64 << 20, "capacity_bytes": ours << 20,
                "peer_capacity_bytes": peer << 20}]})
        };
        let t = render_table(&row(96, 64));
        assert!(
            t.contains("r0: size change pending: this node holds 96MiB, the peer 64MiB; the volume stays 64MiB")
                && t.contains("raise `size` on the peer, then drl resize r0 there"),
            "{t}"
        );
        let t = render_table(&row(64, 96));
        assert!(t.contains("(raise `size` here, then drl resize r0)"), "{t}");
        assert!(!render_table(&row(64, 64)).contains("pending"));
    }

    #[test]
    fn a_group_shows_a_volume_line_per_volume() {
        let v = json!({"resources": [
            {"name": "db", "role": "Primary", "disk": "UpToDate", "connection": "Connected",
             "replication": "SyncSource", "out_of_sync_bytes": 4096u64, "lag_ms": 0,
             "volumes": [
                {"volume": 0, "disk": "UpToDate", "replication": "Established",
                 "out_of_sync_bytes": 0u64},
                {"volume": 1, "disk": "UpToDate", "replication": "SyncSource",
                 "out_of_sync_bytes": 4096u64,
                 "nbd": {"endpoint": "/run/drl/db-1.nbd", "connections": 1}}]}]});
        let t = render_table_with(&v, true);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[2].starts_with("  volume:0") && lines[2].contains("UpToDate"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("  volume:1") && lines[3].contains("4KiB"),
            "{t}"
        );
        // While a volume added at run time syncs alone, its line says so, volume 0's not.
        assert!(
            lines[2].contains("Established") && lines[3].contains("SyncSource"),
            "{t}"
        );
        assert!(
            t.contains("db: volume 1 nbd /run/drl/db-1.nbd (1 clients)"),
            "{t}"
        );
        // A one-volume resource has no volume lines.
        let one = json!({"resources": [{"name": "r0", "role": "Primary", "disk": "UpToDate"}]});
        assert!(!render_table(&one).contains("volume:"));
    }

    #[test]
    fn the_table_says_why_and_fits_100_columns() {
        let v = json!({"resources": [
            {"name": "volume-0001", "role": "Secondary", "disk": "UpToDate", "connection": "StandAlone",
             "replication": "Off", "peer_node": "site-b", "peer_role": "Secondary", "peer_disk": "Inconsistent",
             "out_of_sync_bytes": 1073741824u64, "size_bytes": 1099511627776u64, "lag_ms": 0,
             "split_brain": "both nodes wrote since they parted",
             "nbd": {"endpoint": "/var/lib/drl/volume-0001/a-rather-long-path/r0.nbd", "connections": 12}},
            {"name": "r1", "role": "Primary", "disk": "UpToDate", "connection": "Connecting",
             "replication": "Off", "peer_node": "site-b", "last_error": "authentication failed: the peer's secret differs",
             "io": {"errors": 3}, "size_bytes": 4096},
            {"name": "solo", "role": "Primary", "disk": "UpToDate", "connection": "StandAlone",
             "replication": "Off", "size_bytes": 4096}
        ]});
        let t = render_table(&v);
        for l in t.lines() {
            assert!(l.len() <= 100, "{} columns: {l}\n{t}", l.len());
        }
        assert!(
            t.contains("volume-0001: split brain: both nodes wrote"),
            "{t}"
        );
        assert!(
            t.contains("r1: not connected: authentication failed"),
            "{t}"
        );
        assert!(t.contains("r1: disk I/O errors: 3"), "{t}");
        assert!(
            !t.contains("solo:"),
            "an unreplicated resource is fine: {t}"
        );
        let v = render_table_with(&v, true);
        assert!(
            v.contains(
                "volume-0001: nbd /var/lib/drl/volume-0001/a-rather-long-path/r0.nbd (12 clients)"
            ),
            "{v}"
        );
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
        let ev = json!({"kind": "change", "object": "peer-device", "name": "db", "volume": 1,
            "fields": {"out_of_sync_bytes": 4096, "replication": "SyncSource"}});
        assert_eq!(
            render_event(&ev),
            "change peer-device name:db volume:1 out_of_sync_bytes:4096 replication:SyncSource"
        );
    }
}
