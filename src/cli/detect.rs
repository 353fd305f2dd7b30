//! `drl detect status`: what this node's detection sees (`[detect]`): per site alive /
//! suspected / down, per indicator RTT and misses, per scope the lease holder and its expiry,
//! the etcd members this node reaches.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{align_columns, call_and_print, Global};

#[derive(Subcommand, Debug)]
pub enum DetectCmd {
    /// Sites and indicators as this node's pingers see them, the lease of every protection
    /// scope (holder, expiry, this node's fence), and which etcd members answer.
    ///
    /// A site is "suspected" when every one of its indicators missed its last probes in a row
    /// (suspect-misses), "down" when that lasted a lease TTL; only the lease in etcd moves
    /// authority. Events with timestamps: `drl events` (objects `site` and `lease`).
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Machine-readable JSON instead of the tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &Global, c: &DetectCmd) -> i32 {
    match c {
        DetectCmd::Status(a) => call_and_print(g, "detect.status", json!({}), a.json, render),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// The human view of `detect.status`.
pub fn render(v: &Value) -> String {
    let mut out = format!(
        "node {} in site {} (cluster {}), probes on {} every {} ms, timeout {} ms, suspect after {} misses\n\n",
        s(&v["node"]), s(&v["site"]), s(&v["cluster"]), s(&v["listen"]),
        s(&v["probe_interval_ms"]), s(&v["probe_timeout_ms"]), s(&v["suspect_misses"])
    );
    let mut rows = vec![vec![
        "SITE".into(),
        "HEALTH".into(),
        "INDICATOR".into(),
        "ADDRESS".into(),
        "RTT ms".into(),
        "AVG ms".into(),
        "MISSES".into(),
        "SENT".into(),
        "LOST".into(),
    ]];
    for site in v["sites"].as_array().into_iter().flatten() {
        let inds = site["indicators"].as_array().cloned().unwrap_or_default();
        if inds.is_empty() {
            rows.push(vec![s(&site["site"]), s(&site["health"])]);
        }
        for i in inds {
            let st = &i["stats"];
            rows.push(vec![
                s(&site["site"]),
                s(&site["health"]),
                s(&i["node"]),
                s(&i["address"]),
                s(&st["rtt_last_ms"]),
                s(&st["rtt_avg_ms"]),
                s(&st["misses_in_row"]),
                s(&st["sent"]),
                s(&st["missed"]),
            ]);
        }
    }
    out += &align_columns(&rows);
    let mut rows = vec![vec![
        "SCOPE".into(),
        "HOLDER".into(),
        "MINE".into(),
        "EXPIRES ms".into(),
        "FENCE".into(),
        "FENCED WRITES".into(),
        "LAST ERROR".into(),
    ]];
    for sc in v["scopes"].as_array().into_iter().flatten() {
        rows.push(vec![
            s(&sc["scope"]),
            s(&sc["holder"]),
            s(&sc["held_by_me"]),
            s(&sc["expires_in_ms"]),
            if sc["fence_open"] == json!(true) {
                "open".into()
            } else {
                "closed".into()
            },
            s(&sc["fenced_writes"]),
            s(&sc["last_error"]),
        ]);
    }
    out += "\n";
    out += &align_columns(&rows);
    let mut rows = vec![vec![
        "ETCD ENDPOINT".into(),
        "MEMBER".into(),
        "REACHABLE".into(),
        "LAST ERROR".into(),
    ]];
    for e in v["etcd"].as_array().into_iter().flatten() {
        rows.push(vec![
            s(&e["url"]),
            s(&e["member"]),
            s(&e["reachable"]),
            s(&e["last_error"]),
        ]);
    }
    out += "\n";
    out += &align_columns(&rows);
    let pr = &v["probes_refused"];
    out += &format!(
        "\nprobes answered {}; refused: forged {}, unknown sender {}, replayed {}, malformed {}\n",
        s(&v["probes_answered"]),
        s(&pr["forged"]),
        s(&pr["unknown_sender"]),
        s(&pr["replayed"]),
        s(&pr["malformed"])
    );
    out
}
