//! What a Prometheus scrape sees: the node's state gathered into metric families
//! ([`crate::metrics`] writes them out).
//!
//! The sources are the ones `drl status` reads (each resource's status, the shaper's counters,
//! the jobs, the snapshot stores), taken once per scrape, so the two never disagree and the
//! data path pays nothing for metrics (the NBD latency histograms excepted: two relaxed atomic
//! adds per request). Families that belong to one resource carry the `resource` label.
//! Detection and leases (with `[detect]`): [`super::metrics_detect`], from `drl detect status`.

use serde_json::Value as Json;

use super::Node;
use crate::metrics::{Family, Kind, Labels, Value};
use drbd_compat::{ConnState, DiskState, ReplState, Role};

fn u(v: &Json, key: &str) -> u64 {
    v.get(key).and_then(Json::as_u64).unwrap_or(0)
}

fn s<'a>(v: &'a Json, key: &str) -> &'a str {
    v.get(key).and_then(Json::as_str).unwrap_or("")
}

/// Every family of the node, for one scrape.
pub async fn gather(node: &Node) -> Vec<Family> {
    let mut f = Families::default();
    let node_l: Labels = vec![("node", node.config.node.clone())];
    let mut info = Family::new(
        "drl_node_info",
        Kind::Gauge,
        "The node's name and drl's version (always 1).",
    );
    let mut l = node_l.clone();
    l.push(("version", env!("CARGO_PKG_VERSION").to_owned()));
    info.push(l, 1u64);
    let mut up = Family::new(
        "drl_node_uptime_seconds",
        Kind::Gauge,
        "Seconds since the daemon started.",
    );
    up.push(node_l, node.started.elapsed().as_secs_f64());
    f.extra.push(info);
    f.extra.push(up);
    for r in node.resources() {
        let st = r.status_json();
        let l: Labels = vec![("resource", r.name().to_owned())];
        f.resource(&l, &st);
        if let Some(nbd) = r.nbd_stats() {
            for (op, h) in nbd.latency() {
                let mut ll = l.clone();
                ll.push(("op", op.to_owned()));
                f.nbd_latency.push(ll, Value::Histogram(h.snapshot()));
            }
        }
        let snaps = r.snapshots().list().await;
        f.snap_space.push(l.clone(), r.snapshots_space_bytes());
        f.snap_used.push(
            l.clone(),
            snaps.iter().map(|s| s.preserved_bytes).sum::<u64>(),
        );
        let invalid = snaps
            .iter()
            .filter(|s| !matches!(s.state, crate::snapshot::SnapshotState::Valid))
            .count();
        let mut lv = l.clone();
        lv.push(("state", "valid".into()));
        f.snap_count.push(lv, (snaps.len() - invalid) as u64);
        let mut li = l.clone();
        li.push(("state", "invalid".into()));
        f.snap_count.push(li, invalid as u64);
    }
    f.shaping(&node.shaping);
    f.jobs(&node.jobs.list());
    if let Some(d) = &node.detect {
        f.extra
            .extend(super::metrics_detect::families(&d.status_json()));
    }
    f.into_vec()
}

macro_rules! families {
    ($($field:ident: $kind:ident $name:literal $help:literal,)*) => {
        struct Families { $($field: Family,)* extra: Vec<Family> }
        impl Default for Families {
            fn default() -> Self {
                Families { $($field: Family::new($name, Kind::$kind, $help),)* extra: Vec::new() }
            }
        }
        impl Families {
            fn into_vec(self) -> Vec<Family> {
                let mut v = self.extra;
                $(v.push(self.$field);)*
                v
            }
        }
    };
}

families! {
    role: Gauge "drl_resource_role" "Role of the resource on this node (state set: 1 for the current role).",
    disk: Gauge "drl_resource_disk_state" "Disk state of the resource on this node (state set).",
    conn: Gauge "drl_resource_connection_state" "Connection state to the peer (state set).",
    repl: Gauge "drl_resource_replication_state" "Replication state (state set).",
    peer_role: Gauge "drl_resource_peer_role" "The peer's role as last reported (state set; all 0 when unknown).",
    peer_disk: Gauge "drl_resource_peer_disk_state" "The peer's disk state as last reported (state set; all 0 when unknown).",
    size: Gauge "drl_resource_size_bytes" "Size of the volume.",
    oos: Gauge "drl_resource_out_of_sync_bytes" "Bytes marked out of sync with the peer (the bitmap).",
    send_queue: Gauge "drl_replication_send_queue_bytes" "Application writes queued for the peer and not yet acknowledged.",
    send_buffer_max: Gauge "drl_replication_send_buffer_max_bytes" "Bound of the send queue (max-buffer).",
    inflight: Gauge "drl_replication_inflight_writes" "Writes sent to the peer and not yet acknowledged.",
    lag: Gauge "drl_replication_lag_seconds" "Age of the oldest write not yet acknowledged by the peer.",
    sent: Counter "drl_replication_sent_bytes" "Payload bytes sent to the peer, by traffic class.",
    received: Counter "drl_replication_received_bytes" "Payload bytes received from the peer, by traffic class.",
    resync_zero: Counter "drl_resync_zero_bytes" "Bytes resynced as zero ranges (a header on the wire, no payload).",
    resync_progress: Gauge "drl_resync_progress_ratio" "Share of the current resync done (0 to 1; 0 when no resync runs).",
    resync_eta: Gauge "drl_resync_remaining_seconds" "Estimated seconds until the current resync ends (0 when unknown or none).",
    split_brain: Gauge "drl_replication_split_brain" "1 while the resource is in a split brain that needs the admin.",
    protocol_errors: Counter "drl_replication_protocol_errors" "Connections dropped because the peer broke the protocol.",
    connects: Counter "drl_replication_connects" "Sessions established with the peer.",
    peer_refused: Counter "drl_replication_peer_refused" "Peers refused before a session, by reason.",
    verify_checked: Gauge "drl_verify_checked_bytes" "Bytes checked by the verify run now running (side: this node's or the peer's run).",
    verify_diff: Gauge "drl_verify_differing_blocks" "Differing blocks found by the verify run now running.",
    verify_last_oos: Gauge "drl_verify_last_out_of_sync_bytes" "Out-of-sync bytes found by the last finished verify run.",
    verify_last_checked: Gauge "drl_verify_last_checked_bytes" "Bytes checked by the last finished verify run.",
    verify_last_ok: Gauge "drl_verify_last_completed" "1 when the last verify run completed, 0 when it stopped early or none ran.",
    nbd_requests: Counter "drl_nbd_requests" "NBD requests received, by operation.",
    nbd_bytes: Counter "drl_nbd_bytes" "NBD payload bytes, by direction (read: to clients, write: from clients).",
    nbd_errors: Counter "drl_nbd_error_replies" "NBD requests answered with an error.",
    nbd_conns: Gauge "drl_nbd_connections" "NBD connections open.",
    nbd_inflight: Gauge "drl_nbd_inflight_requests" "NBD requests being served.",
    nbd_latency: Histogram "drl_nbd_request_duration_seconds" "NBD request latency, from the complete request to its reply written.",
    disk_bytes: Counter "drl_disk_bytes" "Bytes read from and written to the backing disk.",
    disk_errors: Counter "drl_disk_errors" "I/O errors of the backing disk.",
    snap_space: Gauge "drl_snapshot_space_bytes" "Copy-on-write space of the resource's snapshots (snapshot-space).",
    snap_used: Gauge "drl_snapshot_space_used_bytes" "Copy-on-write space the snapshots hold.",
    snap_count: Gauge "drl_snapshots" "Snapshots of the resource, by state.",
    link_limit: Gauge "drl_shaping_link_limit_bytes_per_second" "The shaper's link cap (absent when only counting).",
    class_bytes: Counter "drl_shaping_class_bytes" "Bytes granted to each traffic class.",
    class_rate: Gauge "drl_shaping_class_rate_bytes_per_second" "Each class's rate over the last ~2 seconds.",
    class_guarantee: Gauge "drl_shaping_class_guarantee_bytes_per_second" "Each class's guaranteed rate (with a link cap).",
    class_queued: Gauge "drl_shaping_class_queued_bytes" "Bytes waiting for the shaper, by class.",
    class_waiting: Gauge "drl_shaping_class_waiting_requests" "Requests waiting for the shaper, by class.",
    resync_rate: Gauge "drl_shaping_resync_rate_bytes_per_second" "The adaptive resync controller's current rate (absent when unlimited).",
    jobs: Gauge "drl_jobs" "Stream and restore jobs the daemon knows, by kind and state.",
    job_bytes: Gauge "drl_job_transferred_bytes" "Bytes a running job has sent to or fetched from the store.",
}

impl Families {
    fn resource(&mut self, l: &Labels, st: &Json) {
        let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        let disks: Vec<&str> = DiskState::ALL.iter().map(|d| d.as_str()).collect();
        let conns: Vec<&str> = ConnState::ALL.iter().map(|c| c.as_str()).collect();
        let repls: Vec<&str> = ReplState::ALL.iter().map(|r| r.as_str()).collect();
        self.role.state_set(l, "role", &roles, s(st, "role"));
        self.disk.state_set(l, "state", &disks, s(st, "disk"));
        self.conn.state_set(l, "state", &conns, s(st, "connection"));
        self.repl
            .state_set(l, "state", &repls, s(st, "replication"));
        self.peer_role
            .state_set(l, "role", &roles, s(st, "peer_role"));
        self.peer_disk
            .state_set(l, "state", &disks, s(st, "peer_disk"));
        self.size.push(l.clone(), u(st, "size_bytes"));
        self.oos.push(l.clone(), u(st, "out_of_sync_bytes"));
        let with = |k: &'static str, v: &str| {
            let mut x = l.clone();
            x.push((k, v.to_owned()));
            x
        };
        if st.get("send_queue_bytes").is_some() {
            // A replicated resource.
            self.send_queue.push(l.clone(), u(st, "send_queue_bytes"));
            self.send_buffer_max
                .push(l.clone(), u(st, "max_buffer_bytes"));
            self.inflight.push(l.clone(), u(st, "inflight_writes"));
            self.lag.push(l.clone(), u(st, "lag_ms") as f64 / 1000.0);
            self.sent
                .push(with("class", "replication"), u(st, "sent_bytes"));
            self.sent
                .push(with("class", "resync"), u(st, "resync_bytes_sent"));
            self.received
                .push(with("class", "replication"), u(st, "received_bytes"));
            self.received
                .push(with("class", "resync"), u(st, "resync_bytes_received"));
            self.resync_zero.push(l.clone(), u(st, "resync_zero_bytes"));
            let pct = st
                .get("resync_percent")
                .and_then(Json::as_f64)
                .unwrap_or(0.0);
            self.resync_progress.push(l.clone(), pct / 100.0);
            self.resync_eta.push(l.clone(), u(st, "resync_eta_s"));
            let sb = st
                .get("split_brain")
                .is_some_and(|v| !v.is_null() && v != &Json::Bool(false));
            self.split_brain.push(l.clone(), sb);
            self.protocol_errors
                .push(l.clone(), u(st, "protocol_errors"));
            self.connects.push(l.clone(), u(st, "connects"));
            if let Some(refused) = st.get("peer_refused").and_then(Json::as_object) {
                for (why, n) in refused {
                    self.peer_refused
                        .push(with("reason", why), n.as_u64().unwrap_or(0));
                }
            }
            for side in ["verify", "verify_peer"] {
                if let Some(v) = st.get(side).filter(|v| !v.is_null()) {
                    let who = if side == "verify" { "local" } else { "peer" };
                    self.verify_checked
                        .push(with("side", who), u(v, "checked_bytes"));
                    self.verify_diff
                        .push(with("side", who), u(v, "differing_blocks"));
                }
            }
            let last = st.get("verify_last").filter(|v| !v.is_null());
            self.verify_last_oos
                .push(l.clone(), last.map_or(0, |v| u(v, "out_of_sync_bytes")));
            self.verify_last_checked
                .push(l.clone(), last.map_or(0, |v| u(v, "checked_bytes")));
            self.verify_last_ok.push(
                l.clone(),
                last.is_some_and(|v| s(v, "outcome") == "completed"),
            );
        }
        if let Some(n) = st.get("nbd").and_then(|n| n.get("stats")) {
            for (op, key) in [
                ("read", "requests_read"),
                ("write", "requests_write"),
                ("flush", "requests_flush"),
                ("trim", "requests_trim"),
                ("write_zeroes", "requests_write_zeroes"),
                ("disconnect", "requests_disc"),
                ("unknown", "requests_unknown"),
            ] {
                self.nbd_requests.push(with("op", op), u(n, key));
            }
            self.nbd_bytes
                .push(with("direction", "read"), u(n, "bytes_read"));
            self.nbd_bytes
                .push(with("direction", "write"), u(n, "bytes_written"));
            self.nbd_errors.push(l.clone(), u(n, "error_replies"));
            self.nbd_conns.push(l.clone(), u(n, "connections_active"));
            self.nbd_inflight.push(l.clone(), u(n, "requests_inflight"));
        }
        if let Some(io) = st.get("io") {
            self.disk_bytes
                .push(with("direction", "read"), u(io, "bytes_read"));
            self.disk_bytes
                .push(with("direction", "write"), u(io, "bytes_written"));
            self.disk_errors.push(l.clone(), u(io, "errors"));
        }
    }

    fn shaping(&mut self, shaping: &crate::shaping::NodeShaping) {
        let st = shaping.shaper.stats();
        if let Some(r) = st.link_bytes_per_s {
            self.link_limit.push(Vec::new(), r);
        }
        for c in &st.classes {
            let l: Labels = vec![("class", c.class.name().to_owned())];
            self.class_bytes.push(l.clone(), c.granted_bytes);
            self.class_rate.push(l.clone(), c.rate_bytes_per_s);
            if let Some(g) = c.guarantee_bytes_per_s {
                self.class_guarantee.push(l.clone(), g);
            }
            self.class_queued.push(l.clone(), c.queued_bytes);
            self.class_waiting.push(l, c.waiting_requests);
        }
        if let Some(r) = shaping.resync.stats().rate_bytes_per_s {
            self.resync_rate.push(Vec::new(), r);
        }
    }

    fn jobs(&mut self, list: &Json) {
        let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
        for kind in ["stream", "restore"] {
            for state in ["running", "done", "failed", "cancelled"] {
                counts.insert((kind.into(), state.into()), 0);
            }
        }
        for j in list
            .get("jobs")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
        {
            let key = (s(j, "kind").to_owned(), s(j, "state").to_owned());
            *counts.entry(key).or_default() += 1;
            if s(j, "state") == "running" {
                if let Some(p) = j.get("progress").filter(|p| !p.is_null()) {
                    let l: Labels = vec![
                        ("job", s(j, "name").to_owned()),
                        ("kind", s(j, "kind").to_owned()),
                        ("resource", s(j, "resource").to_owned()),
                    ];
                    self.job_bytes.push(l, u(p, "bytes_transferred"));
                }
            }
        }
        for ((kind, state), n) in counts {
            self.jobs.push(vec![("kind", kind), ("state", state)], n);
        }
    }
}
