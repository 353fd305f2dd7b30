//! `drl events2`: the daemon's state and its changes in `drbdsetup events2`'s text format,
//! through drbd-compat's formatter, so tools written for DRBD can follow drl.
//!
//! As drbdsetup does: first one `exists` line per object (resource, connection, device,
//! peer-device) from a status read, then `exists -` (the dump is complete), then a `change`
//! line per change with DRBD's key names (`role:`, `disk:`, `connection:`, `conn-name:`,
//! `replication:`, `peer-disk:`, `done:` while a resync runs), and `destroy` lines when a
//! resource goes down. A consistency group's device and peer-device lines come one per volume
//! (`volume:N`), as DRBD prints a resource of several volumes. `--timestamps` puts the time of the change first (ISO 8601, UTC, as
//! `drbdsetup events2 --timestamps`). The subscription is made before the status is read, so
//! nothing between the dump and the first change is lost. When the daemon goes away the
//! command says so on stderr and exits 3.

use drbd_compat::{ConnState, DiskState, Event, EventKind, EventObject, ReplState, Role};
use serde_json::Value;

use super::{connect, exit, Global};
use crate::control::{EventFilter, Received};

#[derive(clap::Args, Debug)]
pub struct Events2Args {
    /// Only this resource.
    pub resource: Option<String>,
    /// Prefix each line with the time of the change (ISO 8601, UTC, microseconds).
    #[arg(long)]
    pub timestamps: bool,
    /// Print the current state (the `exists` lines) and exit.
    #[arg(long)]
    pub now: bool,
}

pub fn events2(g: &Global, a: &Events2Args) -> i32 {
    super::runtime().block_on(async {
        let sub = match connect(g).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let mut events = match sub
            .subscribe(EventFilter {
                resource: a.resource.clone(),
            })
            .await
        {
            Ok(s) => s,
            Err(e) => return super::admin::gone_or_refused("events2", &e),
        };
        let mut client = match connect(g).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let params = match &a.resource {
            Some(r) => serde_json::json!({ "resource": r }),
            None => serde_json::json!({}),
        };
        let status = match client.call("status", params).await {
            Ok(v) => v,
            Err(e) => return super::admin::gone_or_refused("events2", &e),
        };
        drop(client);
        let now_ms = crate::control::Event::new(
            crate::control::EventKind::Change,
            crate::control::ObjectKind::Resource,
            "",
        )
        .time_unix_ms;
        for e in exists_lines(&status) {
            println!("{}", line(a.timestamps, now_ms, &e.to_string()));
        }
        println!("{}", line(a.timestamps, now_ms, "exists -"));
        if a.now {
            return exit::OK;
        }
        loop {
            match events.next().await {
                Ok(Some(Received::Event(ev))) => {
                    for e in translate(&ev) {
                        println!("{}", line(a.timestamps, ev.time_unix_ms, &e.to_string()));
                    }
                }
                Ok(Some(Received::Lost(n))) => {
                    eprintln!("drl events2: {n} events lost (this reader fell behind); run it again for the current state");
                    return exit::FAILED;
                }
                Ok(None) | Err(_) => {
                    eprintln!("drl events2: the daemon went away (connection closed)");
                    return exit::UNREACHABLE;
                }
            }
        }
    })
}

fn line(timestamps: bool, ms: u64, text: &str) -> String {
    if timestamps {
        format!("{} {text}", iso8601_utc(ms))
    } else {
        text.to_owned()
    }
}

fn parse<T: std::str::FromStr>(v: &Value) -> Option<T> {
    v.as_str().and_then(|s| s.parse().ok())
}

/// The `exists` lines of every resource in a `status` answer.
pub fn exists_lines(status: &Value) -> Vec<Event> {
    let mut out = Vec::new();
    let empty = vec![];
    for r in status["resources"].as_array().unwrap_or(&empty) {
        let name = r["name"].as_str().unwrap_or("-").to_owned();
        let exists = |object| Event {
            kind: EventKind::Exists,
            object,
        };
        out.push(exists(EventObject::Resource {
            name: name.clone(),
            role: parse(&r["role"]),
        }));
        if let Some(peer) = r["peer_node"].as_str() {
            out.push(exists(EventObject::Connection {
                name: name.clone(),
                conn_name: peer.to_owned(),
                connection: parse(&r["connection"]),
                role: parse::<Role>(&r["peer_role"]).or(Some(Role::Unknown)),
            }));
        }
        // A consistency group lists its volumes; a one-volume resource is volume 0.
        let volumes: Vec<u32> = match r["volumes"].as_array() {
            Some(vs) => vs
                .iter()
                .filter_map(|v| v["volume"].as_u64())
                .map(|v| v as u32)
                .collect(),
            None => vec![0],
        };
        for &volume in &volumes {
            out.push(exists(EventObject::Device {
                name: name.clone(),
                volume,
                disk: parse(&r["disk"]),
            }));
        }
        if let Some(peer) = r["peer_node"].as_str() {
            for &volume in &volumes {
                out.push(exists(EventObject::PeerDevice {
                    name: name.clone(),
                    conn_name: peer.to_owned(),
                    volume,
                    replication: parse(&r["replication"]),
                    peer_disk: parse::<DiskState>(&r["peer_disk"]).or(Some(DiskState::DUnknown)),
                    done_percent: r["resync_percent"].as_f64(),
                }));
            }
        }
    }
    out
}

/// The events2 lines of one drl event (none for drl's own objects: jobs, snapshots).
pub fn translate(ev: &crate::control::Event) -> Vec<Event> {
    use crate::control::{EventKind as K, ObjectKind as O};
    let name = ev.name.clone();
    let f = &ev.fields;
    let peer = f
        .get("peer")
        .and_then(Value::as_str)
        .unwrap_or("peer")
        .to_owned();
    let change = |object| Event {
        kind: EventKind::Change,
        object,
    };
    // A group's device and peer-device events name their volume.
    let volume = u32::from(ev.volume.unwrap_or(0));
    match (ev.kind, ev.object) {
        // A resource that went down (daemon stop, `drl down`): DRBD destroys its objects.
        (K::Change | K::Destroy, O::Resource)
            if ev.kind == K::Destroy
                || f.get("disk").and_then(Value::as_str) == Some("Detached") =>
        {
            let destroy = |object| Event {
                kind: EventKind::Destroy,
                object,
            };
            let mut out = Vec::new();
            if let Some(p) = f.get("peer").and_then(Value::as_str) {
                out.push(destroy(EventObject::PeerDevice {
                    name: name.clone(),
                    conn_name: p.to_owned(),
                    volume: 0,
                    replication: None,
                    peer_disk: None,
                    done_percent: None,
                }));
                out.push(destroy(EventObject::Connection {
                    name: name.clone(),
                    conn_name: p.to_owned(),
                    connection: None,
                    role: None,
                }));
            }
            out.push(destroy(EventObject::Device {
                name: name.clone(),
                volume: 0,
                disk: None,
            }));
            out.push(destroy(EventObject::Resource { name, role: None }));
            out
        }
        (K::Change, O::Resource) => match f.get("role").and_then(parse_field::<Role>) {
            Some(role) => vec![change(EventObject::Resource {
                name,
                role: Some(role),
            })],
            None => vec![],
        },
        (K::Change, O::Device) => vec![change(EventObject::Device {
            name,
            volume,
            disk: f.get("disk").and_then(parse_field::<DiskState>),
        })],
        (K::Change, O::Connection) => vec![change(EventObject::Connection {
            name,
            conn_name: peer,
            connection: f.get("connection").and_then(parse_field::<ConnState>),
            role: f.get("peer_role").and_then(parse_field::<Role>),
        })],
        (K::Change | K::Progress, O::PeerDevice) => vec![change(EventObject::PeerDevice {
            name,
            conn_name: peer,
            volume,
            replication: f.get("replication").and_then(parse_field::<ReplState>),
            peer_disk: f.get("peer_disk").and_then(parse_field::<DiskState>),
            done_percent: f.get("done").and_then(Value::as_f64),
        })],
        _ => vec![],
    }
}

fn parse_field<T: std::str::FromStr>(v: &Value) -> Option<T> {
    parse(v)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` for milliseconds since the Unix epoch.
pub fn iso8601_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        (ms % 1000) * 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_are_iso8601_utc() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00.000000+00:00");
        // 2026-12-05T20:16:05.123Z
        assert_eq!(
            iso8601_utc(1_796_501_765_123),
            "2026-12-05T20:16:05.123000+00:00"
        );
        assert_eq!(
            iso8601_utc(951_782_400_000),
            "2000-02-29T00:00:00.000000+00:00"
        );
    }

    #[test]
    fn status_becomes_exists_lines_with_drbd_keys() {
        let st = json!({"resources": [{"name": "r0", "role": "Primary", "disk": "UpToDate",
            "connection": "Connected", "replication": "SyncSource", "peer_node": "b",
            "peer_role": "Secondary", "peer_disk": "Inconsistent", "resync_percent": 12.5}]});
        let lines: Vec<String> = exists_lines(&st).iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "exists resource name:r0 role:Primary",
                "exists connection name:r0 conn-name:b connection:Connected role:Secondary",
                "exists device name:r0 volume:0 disk:UpToDate",
                "exists peer-device name:r0 conn-name:b volume:0 replication:SyncSource peer-disk:Inconsistent done:12.50",
            ]
        );
        // A group: a device and a peer-device per volume.
        let st = json!({"resources": [{"name": "db", "role": "Primary", "disk": "UpToDate",
            "connection": "Connected", "replication": "Established", "peer_node": "b",
            "peer_role": "Secondary", "peer_disk": "UpToDate",
            "volumes": [{"volume": 0}, {"volume": 1}]}]});
        let lines: Vec<String> = exists_lines(&st).iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert_eq!(lines[3], "exists device name:db volume:1 disk:UpToDate");
        assert_eq!(
            lines[5],
            "exists peer-device name:db conn-name:b volume:1 replication:Established peer-disk:UpToDate"
        );
    }

    #[test]
    fn drl_events_translate_to_change_and_destroy_lines() {
        use crate::control::{Event as E, EventKind as K, ObjectKind as O};
        let ev = E::new(K::Change, O::PeerDevice, "r0")
            .field("peer", "b")
            .field("replication", "Established")
            .field("peer_disk", "UpToDate");
        assert_eq!(
            translate(&ev)[0].to_string(),
            "change peer-device name:r0 conn-name:b volume:0 replication:Established peer-disk:UpToDate"
        );
        let down = E::new(K::Change, O::Resource, "r0").field("disk", "Detached");
        let lines: Vec<String> = translate(&down).iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "destroy device name:r0 volume:0",
                "destroy resource name:r0"
            ]
        );
        assert!(translate(&E::new(K::Create, O::Job, "j1")).is_empty());
        // A group's events name the volume, as DRBD's do.
        let v1 = E::new(K::Change, O::Device, "db")
            .volume(1)
            .field("disk", "Inconsistent");
        assert_eq!(
            translate(&v1)[0].to_string(),
            "change device name:db volume:1 disk:Inconsistent"
        );
    }
}
