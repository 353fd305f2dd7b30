//! `drl status` and `drl events`: render what the daemon reports.

use serde_json::{json, Value};

use super::{call_and_print, connect, exit, EventsArgs, Global, StatusArgs};
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
            s(&r["replication"]),
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
    fn event_line_is_events2_style() {
        let ev = json!({"kind": "change", "object": "resource", "name": "r0", "fields": {"role": "Primary"}});
        assert_eq!(render_event(&ev), "change resource name:r0 role:Primary");
    }
}
