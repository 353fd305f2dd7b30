//! `drl snapshot create|list|delete`.

use clap::Subcommand;
use serde_json::{json, Value};

use super::{call_and_print, Global};
use crate::units::format_bytes;

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Take a crash-consistent snapshot now (in-flight writes finish first; I/O goes on after).
    Create {
        /// The resource (its name in the config).
        resource: String,
        /// The snapshot's name (letters, digits, '-', '_', '.'), unique within the resource.
        name: String,
        /// Print the new snapshot's details as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the snapshots of a resource, oldest first, and the tombstones of deleted ones.
    List {
        /// The resource (its name in the config).
        resource: String,
        /// Machine-readable JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot. Its change set is kept (a tombstone) so that it can still be the
    /// parent of an incremental stream.
    Delete {
        /// The resource (its name in the config).
        resource: String,
        /// The snapshot to delete.
        name: String,
    },
}

pub fn run(g: &Global, c: &SnapshotCmd) -> i32 {
    match c {
        SnapshotCmd::Create {
            resource,
            name,
            json,
        } => call_and_print(
            g,
            "snapshot.create",
            json!({ "resource": resource, "name": name }),
            *json,
            |v| {
                format!(
                    "snapshot {} of {resource} created (id {})\n",
                    v["name"].as_str().unwrap_or("?"),
                    v["id"]
                )
            },
        ),
        SnapshotCmd::List { resource, json } => call_and_print(
            g,
            "snapshot.list",
            json!({ "resource": resource }),
            *json,
            render_list,
        ),
        SnapshotCmd::Delete { resource, name } => call_and_print(
            g,
            "snapshot.delete",
            json!({ "resource": resource, "name": name }),
            false,
            |_| format!("snapshot {name} of {resource} deleted\n"),
        ),
    }
}

fn render_list(v: &Value) -> String {
    let mut out = format!(
        "{:<24} {:>4}  {:<24} {:<10} {:>12} {:>12}\n",
        "NAME", "ID", "CREATED (UTC)", "STATE", "COW-USED", "CHANGED"
    );
    for s in v["snapshots"].as_array().into_iter().flatten() {
        let created = s["created_unix_ms"].as_u64().map_or("-".into(), |ms| {
            let secs = (ms / 1000) as i64;
            let (d, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
            let (y, m, day) = civil_from_days(d);
            format!(
                "{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            )
        });
        let state = s["state"].as_str().unwrap_or("?");
        out.push_str(&format!(
            "{:<24} {:>4}  {:<24} {:<10} {:>12} {:>12}\n",
            s["name"].as_str().unwrap_or("?"),
            s["id"],
            created,
            state,
            s["preserved_bytes"]
                .as_u64()
                .map_or("-".into(), format_bytes),
            s["changed_bytes"].as_u64().map_or("-".into(), format_bytes),
        ));
        if let Some(reason) = s["reason"].as_str() {
            out.push_str(&format!("  invalid: {reason}\n"));
        }
    }
    let tombs: Vec<&str> = v["tombstones"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !tombs.is_empty() {
        out.push_str(&format!(
            "deleted (usable as incremental parents): {}\n",
            tombs.join(", ")
        ));
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
