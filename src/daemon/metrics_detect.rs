//! Detection and lease state as metric families (issue 14: "detection and lease state once
//! they exist"), read from the JSON `drl detect status` prints ([`crate::detect::Detect::
//! status_json`]), so the two never disagree: per site its health (state set), per indicator
//! RTT and misses, per resource the lease (held by this node, fence open, fenced writes), and
//! the probes and answers refused by reason.

use serde_json::Value as Json;

use crate::metrics::{Family, Kind, Labels};

const HEALTH: [&str; 3] = ["alive", "suspected", "down"];
const REFUSALS: [&str; 4] = ["malformed", "forged", "unknown_sender", "replayed"];

fn u(v: &Json, key: &str) -> u64 {
    v.get(key).and_then(Json::as_u64).unwrap_or(0)
}

fn s(v: &Json, key: &str) -> String {
    v.get(key).and_then(Json::as_str).unwrap_or("").to_owned()
}

fn arr<'a>(v: &'a Json, key: &str) -> &'a [Json] {
    v.get(key)
        .and_then(Json::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The detection families of one scrape, from `drl detect status`' JSON.
pub fn families(st: &Json) -> Vec<Family> {
    let mut health = Family::new(
        "drl_detect_site_health",
        Kind::Gauge,
        "Health of each site as this node's probes see it (state set; a site without indicators is not-probed).",
    );
    let mut rtt = Family::new(
        "drl_detect_indicator_rtt_seconds",
        Kind::Gauge,
        "Smoothed round-trip time of each indicator's probes (absent until one is answered).",
    );
    let mut sent = Family::new(
        "drl_detect_indicator_probes_sent",
        Kind::Counter,
        "Probes sent to each indicator.",
    );
    let mut missed = Family::new(
        "drl_detect_indicator_probes_missed",
        Kind::Counter,
        "Probes to each indicator not answered in probe-timeout.",
    );
    let mut in_row = Family::new(
        "drl_detect_indicator_misses_in_row",
        Kind::Gauge,
        "Misses in a row of each indicator right now (suspect-misses makes a site suspected).",
    );
    let mut refused = Family::new(
        "drl_detect_refused_datagrams",
        Kind::Counter,
        "Probe datagrams refused (direction probe: probes to this node; answer: answers to its probes), by reason.",
    );
    let mut held = Family::new(
        "drl_lease_held",
        Kind::Gauge,
        "1 while this node holds the resource's lease in etcd.",
    );
    let mut fence = Family::new(
        "drl_lease_fence_open",
        Kind::Gauge,
        "1 while the resource's write fence is open (the lease is held with margin to spare).",
    );
    let mut fenced = Family::new(
        "drl_lease_fenced_writes",
        Kind::Counter,
        "Writes refused by the closed fence.",
    );
    for site in arr(st, "sites") {
        let l: Labels = vec![("site", s(site, "site"))];
        health.state_set(&l, "health", &HEALTH, &s(site, "health"));
        for ind in arr(site, "indicators") {
            let mut l = l.clone();
            l.push(("indicator", s(ind, "node")));
            let stats = &ind["stats"];
            if let Some(ms) = stats.get("rtt_avg_ms").and_then(Json::as_f64) {
                rtt.push(l.clone(), ms / 1000.0);
            }
            sent.push(l.clone(), u(stats, "sent"));
            missed.push(l.clone(), u(stats, "missed"));
            in_row.push(l, u(stats, "misses_in_row"));
        }
    }
    for (dir, key) in [("probe", "probes_refused"), ("answer", "answers_refused")] {
        for why in REFUSALS {
            let l: Labels = vec![("direction", dir.into()), ("reason", why.into())];
            refused.push(l, u(&st[key], why));
        }
    }
    for sc in arr(st, "scopes") {
        let l: Labels = vec![("resource", s(sc, "scope"))];
        held.push(l.clone(), sc["held_by_me"].as_bool().unwrap_or(false));
        fence.push(l.clone(), sc["fence_open"].as_bool().unwrap_or(false));
        fenced.push(l, u(sc, "fenced_writes"));
    }
    vec![
        health, rtt, sent, missed, in_row, refused, held, fence, fenced,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `drl detect status` of a node at site-a while site-b is suspected and r0's lease is
    /// held here (the shape of `Detect::status_json`).
    fn status() -> Json {
        serde_json::json!({
            "node": "a1", "site": "site-a",
            "sites": [
                { "site": "site-a", "local": true, "health": "not-probed", "indicators": [] },
                { "site": "site-b", "local": false, "health": "suspected", "indicators": [
                    { "node": "b1", "address": "10.0.0.2:7790", "stats": {
                        "sent": 40, "answered": 35, "missed": 5, "late": 1,
                        "misses_in_row": 3, "rtt_last_ms": null, "rtt_avg_ms": 2.5, "rtt_max_ms": 9.0 } }
                ] }
            ],
            "probes_answered": 12,
            "probes_refused": { "malformed": 0, "forged": 2, "unknown_sender": 1, "replayed": 0 },
            "answers_refused": { "malformed": 1, "forged": 0, "unknown_sender": 0, "replayed": 0 },
            "answers_unmatched": 0,
            "scopes": [ { "scope": "r0", "key": "/drl/c/lease/r0", "holder": "a1",
                "held_by_me": true, "fence_open": true, "fenced_writes": 4 } ],
        })
    }

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start} in\n{text}"))
    }

    #[test]
    fn detect_status_becomes_health_rtt_misses_leases_and_refusals() {
        let text = crate::metrics::render(families(&status()));
        let h = "drl_detect_site_health{site=\"site-b\",health=";
        assert!(line(&text, &format!("{h}\"suspected\"}}")).ends_with(" 1"));
        assert!(line(&text, &format!("{h}\"alive\"}}")).ends_with(" 0"));
        assert!(line(
            &text,
            "drl_detect_site_health{site=\"site-a\",health=\"not-probed\"}"
        )
        .ends_with(" 1"));
        let ind = "{site=\"site-b\",indicator=\"b1\"}";
        assert!(
            line(&text, &format!("drl_detect_indicator_rtt_seconds{ind}")).ends_with(" 0.0025")
        );
        assert!(line(
            &text,
            &format!("drl_detect_indicator_probes_missed_total{ind}")
        )
        .ends_with(" 5"));
        assert!(line(&text, &format!("drl_detect_indicator_misses_in_row{ind}")).ends_with(" 3"));
        assert!(line(
            &text,
            "drl_detect_refused_datagrams_total{direction=\"probe\",reason=\"forged\"}"
        )
        .ends_with(" 2"));
        assert!(line(&text, "drl_lease_held{resource=\"r0\"}").ends_with(" 1"));
        assert!(line(&text, "drl_lease_fence_open{resource=\"r0\"}").ends_with(" 1"));
        assert!(line(&text, "drl_lease_fenced_writes_total{resource=\"r0\"}").ends_with(" 4"));
        // Prometheus' own linter accepts the names, units and types (test.sh installs it).
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut p = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
        p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The JSON keys read here are the ones `drl detect status` writes: a renamed field in
    /// the lease view would silently zero the metric otherwise.
    #[test]
    fn the_keys_read_are_the_lease_views_fields() {
        let v = serde_json::to_value(crate::detect::lease::LeaseView::default()).unwrap();
        for k in ["scope", "held_by_me", "fence_open", "fenced_writes"] {
            assert!(v.get(k).is_some(), "LeaseView has no {k}: {v}");
        }
        let c = serde_json::to_value(crate::detect::probe::RejectCounts::default()).unwrap();
        for k in REFUSALS {
            assert!(c.get(k).is_some(), "RejectCounts has no {k}: {c}");
        }
        let i = serde_json::to_value(crate::detect::core::IndicatorStats::default()).unwrap();
        for k in ["sent", "missed", "misses_in_row", "rtt_avg_ms"] {
            assert!(i.get(k).is_some(), "IndicatorStats has no {k}: {i}");
        }
    }
}
