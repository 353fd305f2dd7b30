//! Prometheus metrics (issue 14): a real Prometheus (Debian's `prometheus`) scrapes both
//! daemons of a replicating pair; `promtool check metrics` accepts the exposition; the
//! counters move with the work (written bytes appear as sent on the Primary and received on
//! the Secondary, NBD requests in the latency histogram) and the states are state sets.

mod common;

use common::pair::*;
use common::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn curl(url: &str) -> String {
    run(Command::new("curl").args(["-sS", "--max-time", "10", "--fail", url]))
}

/// The value of the first sample line that starts with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One instant-vector value from Prometheus' query API (None: no series yet).
fn prom_query(port: u16, q: &str) -> Option<f64> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-G"])
        .arg(format!("http://127.0.0.1:{port}/api/v1/query"))
        .args(["--data-urlencode", &format!("query={q}")])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn wait_prom(
    port: u16,
    q: &str,
    what: &str,
    ok: impl Fn(f64) -> bool,
    log: &std::path::Path,
) -> f64 {
    let t0 = Instant::now();
    loop {
        if let Some(v) = prom_query(port, q) {
            if ok(v) {
                return v;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "Prometheus never showed {what} ({q} = {:?}); its log:\n{}",
            prom_query(port, q),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_a_replicating_pair_and_promtool_accepts_it() {
    for c in ["prometheus", "promtool", "curl", "qemu-io"] {
        need(c);
    }
    let (ma, mb) = (free_port(), free_port());
    let mut opts = PairOpts::new(64 * MIB);
    opts.extra_node_keys = [
        format!("metrics-listen = \"127.0.0.1:{ma}\""),
        format!("metrics-listen = \"127.0.0.1:{mb}\""),
    ];
    let p = Pair::start(opts);
    p.force_primary_and_sync("a");
    qemu_io(&p.uri("a"), &["write -P 0xab 0 4M"]);
    p.wait_in_sync("a", "after 4 MiB written on a");

    // The exposition itself.
    let text_a = curl(&format!("http://127.0.0.1:{ma}/metrics"));
    let text_b = curl(&format!("http://127.0.0.1:{mb}/metrics"));
    for (n, text) in [("a", &text_a), ("b", &text_b)] {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics refused node {n}'s exposition:\n{}{}\n--- exposition:\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r0 = "{resource=\"r0\"";
    assert_eq!(
        sample(
            &text_a,
            "drl_resource_role{resource=\"r0\",role=\"Primary\"}"
        ),
        Some(1.0),
        "{text_a}"
    );
    assert_eq!(
        sample(
            &text_a,
            "drl_resource_role{resource=\"r0\",role=\"Secondary\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text_b,
            "drl_resource_role{resource=\"r0\",role=\"Secondary\"}"
        ),
        Some(1.0),
        "{text_b}"
    );
    assert_eq!(
        sample(
            &text_a,
            "drl_resource_connection_state{resource=\"r0\",state=\"Connected\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text_b,
            "drl_resource_replication_state{resource=\"r0\",state=\"Established\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text_a,
            "drl_resource_disk_state{resource=\"r0\",state=\"UpToDate\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text_a, &format!("drl_resource_out_of_sync_bytes{r0}}}")),
        Some(0.0)
    );
    let sent = sample(
        &text_a,
        &format!("drl_replication_sent_bytes_total{r0},class=\"replication\"}}"),
    )
    .unwrap();
    assert!(sent >= 4.0 * MIB as f64, "sent {sent}\n{text_a}");
    let got = sample(
        &text_b,
        &format!("drl_replication_received_bytes_total{r0},class=\"replication\"}}"),
    )
    .unwrap();
    assert!(got >= 4.0 * MIB as f64, "received {got}\n{text_b}");
    let writes = sample(
        &text_a,
        &format!("drl_nbd_request_duration_seconds_count{r0},op=\"write\"}}"),
    )
    .unwrap();
    assert!(writes >= 1.0, "{text_a}");
    assert!(
        text_a.contains("drl_shaping_class_bytes_total{class=\"replication\"}"),
        "{text_a}"
    );
    // snapshot-space defaults to a quarter of the size (size / 100 * 25).
    let space = 64 * MIB / 100 * 25;
    assert!(
        text_a.contains(&format!("drl_snapshot_space_bytes{r0}}} {space}\n")),
        "{text_a}"
    );

    // A real Prometheus scraping both, every second.
    let prom_port = free_port();
    let d = p.d().join("prometheus");
    std::fs::create_dir_all(&d).unwrap();
    let cfg = d.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: drl\n    static_configs:\n      - targets: ['127.0.0.1:{ma}', '127.0.0.1:{mb}']\n"
        ),
    )
    .unwrap();
    let log = d.join("prometheus.log");
    let _prom = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", d.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus"),
    );
    wait_prom(
        prom_port,
        "sum(up{job=\"drl\"})",
        "both targets up",
        |v| v == 2.0,
        &log,
    );
    let q_sent = "drl_replication_sent_bytes_total{resource=\"r0\",class=\"replication\",instance=\"127.0.0.1:PA\"}"
        .replace("PA", &ma.to_string());
    let before = wait_prom(prom_port, &q_sent, "a's sent bytes", |v| v >= sent, &log);
    qemu_io(&p.uri("a"), &["write -P 0xcd 8M 4M"]);
    p.wait_in_sync("a", "after 4 more MiB written on a");
    wait_prom(
        prom_port,
        &q_sent,
        "a's sent bytes growing by 4 MiB",
        |v| v >= before + 4.0 * MIB as f64,
        &log,
    );
    let q_recv = format!(
        "drl_replication_received_bytes_total{{resource=\"r0\",class=\"replication\",instance=\"127.0.0.1:{mb}\"}}"
    );
    wait_prom(
        prom_port,
        &q_recv,
        "b's received bytes",
        |v| v >= 8.0 * MIB as f64,
        &log,
    );
    let q_role = format!("drl_resource_role{{role=\"Primary\",instance=\"127.0.0.1:{ma}\"}}");
    assert_eq!(prom_query(prom_port, &q_role), Some(1.0));
    let q_lat = format!(
        "drl_nbd_request_duration_seconds_count{{op=\"write\",instance=\"127.0.0.1:{ma}\"}}"
    );
    wait_prom(
        prom_port,
        &q_lat,
        "write latencies counted",
        |v| v >= 2.0,
        &log,
    );
}
