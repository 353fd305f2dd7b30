//! A `drbdsetup status`-like text summary of one resource.
//!
//! The caller fills plain structs (no behaviour, serde-able for the control socket) and
//! [`ResourceStatus::to_drbd_text`] prints them the way DRBD 9's `drbdsetup status` does:
//!
//! ```text
//! r0 role:Primary
//!   disk:UpToDate
//!   peer role:Secondary
//!     replication:SyncSource peer-disk:Inconsistent done:42.10
//! ```
//!
//! DRBD's conventions kept here: a single volume 0 is printed without `volume:0`; a peer that
//! is not `Connected` shows only its `connection:` state; `replication:` is printed only when it
//! is not `Established`; `done:` only while a resync runs.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::states::{ConnState, DiskState, ReplState, Role};

/// Status of one resource on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub name: String,
    pub role: Role,
    pub volumes: Vec<VolumeStatus>,
    pub peers: Vec<PeerStatus>,
}

/// The local disk of one volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub volume: u32,
    pub disk: DiskState,
}

/// One peer (connection) of the resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub connection: ConnState,
    pub role: Role,
    pub devices: Vec<PeerDeviceStatus>,
}

/// One volume as seen towards one peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerDeviceStatus {
    pub volume: u32,
    pub replication: ReplState,
    pub peer_disk: DiskState,
    /// Resync progress in percent, when a resync runs.
    pub done_percent: Option<f64>,
}

impl ResourceStatus {
    fn single_volume_zero(&self) -> bool {
        self.volumes.len() <= 1 && self.volumes.iter().all(|v| v.volume == 0)
    }

    /// The `drbdsetup status` text (ends with a newline).
    pub fn to_drbd_text(&self) -> String {
        let mut out = String::new();
        let hide_volume = self.single_volume_zero();
        let _ = writeln!(out, "{} role:{}", self.name, self.role);
        for v in &self.volumes {
            if hide_volume {
                let _ = writeln!(out, "  disk:{}", v.disk);
            } else {
                let _ = writeln!(out, "  volume:{} disk:{}", v.volume, v.disk);
            }
        }
        for p in &self.peers {
            if p.connection != ConnState::Connected {
                let _ = writeln!(out, "  {} connection:{}", p.name, p.connection);
                continue;
            }
            let _ = writeln!(out, "  {} role:{}", p.name, p.role);
            for d in &p.devices {
                let mut fields = Vec::new();
                if !hide_volume {
                    fields.push(format!("volume:{}", d.volume));
                }
                if d.replication != ReplState::Established {
                    fields.push(format!("replication:{}", d.replication));
                }
                fields.push(format!("peer-disk:{}", d.peer_disk));
                if let Some(done) = d.done_percent {
                    if d.replication.is_resyncing() {
                        fields.push(format!("done:{done:.2}"));
                    }
                }
                let _ = writeln!(out, "    {}", fields.join(" "));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syncing() -> ResourceStatus {
        ResourceStatus {
            name: "r0".into(),
            role: Role::Primary,
            volumes: vec![VolumeStatus {
                volume: 0,
                disk: DiskState::UpToDate,
            }],
            peers: vec![PeerStatus {
                name: "peer".into(),
                connection: ConnState::Connected,
                role: Role::Secondary,
                devices: vec![PeerDeviceStatus {
                    volume: 0,
                    replication: ReplState::SyncSource,
                    peer_disk: DiskState::Inconsistent,
                    done_percent: Some(42.1),
                }],
            }],
        }
    }

    #[test]
    fn syncing_single_volume_matches_drbd_layout() {
        assert_eq!(
            syncing().to_drbd_text(),
            "r0 role:Primary\n  disk:UpToDate\n  peer role:Secondary\n    \
             replication:SyncSource peer-disk:Inconsistent done:42.10\n"
        );
    }

    #[test]
    fn established_hides_replication_and_done() {
        let mut s = syncing();
        s.peers[0].devices[0].replication = ReplState::Established;
        s.peers[0].devices[0].peer_disk = DiskState::UpToDate;
        assert_eq!(
            s.to_drbd_text(),
            "r0 role:Primary\n  disk:UpToDate\n  peer role:Secondary\n    peer-disk:UpToDate\n"
        );
    }

    #[test]
    fn disconnected_peer_shows_only_connection_state() {
        let mut s = syncing();
        s.peers[0].connection = ConnState::Connecting;
        assert_eq!(
            s.to_drbd_text(),
            "r0 role:Primary\n  disk:UpToDate\n  peer connection:Connecting\n"
        );
    }

    #[test]
    fn several_volumes_are_numbered() {
        let mut s = syncing();
        s.volumes.push(VolumeStatus {
            volume: 1,
            disk: DiskState::Outdated,
        });
        let text = s.to_drbd_text();
        assert!(
            text.contains("  volume:0 disk:UpToDate\n  volume:1 disk:Outdated\n"),
            "{text}"
        );
        assert!(
            text.contains("    volume:0 replication:SyncSource"),
            "{text}"
        );
    }
}
