//! `drbdsetup events2`-like event lines.
//!
//! One line per state change, in DRBD's shape: the kind (`exists`, `create`, `change`,
//! `destroy`), the object (`resource`, `device`, `connection`, `peer-device`), its identity
//! (`name:r0`, `volume:0`, `conn-name:peer`) and then only the fields that are known, as
//! `key:value` pairs, for example:
//!
//! ```text
//! change resource name:r0 role:Primary
//! change peer-device name:r0 conn-name:peer volume:0 replication:SyncSource done:42.10
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::states::{ConnState, DiskState, ReplState, Role};

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Exists,
    Create,
    Change,
    Destroy,
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventKind::Exists => "exists",
            EventKind::Create => "create",
            EventKind::Change => "change",
            EventKind::Destroy => "destroy",
        })
    }
}

/// The object an event is about, with the fields that changed (`None` = not reported).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventObject {
    Resource {
        name: String,
        role: Option<Role>,
    },
    Device {
        name: String,
        volume: u32,
        disk: Option<DiskState>,
    },
    Connection {
        name: String,
        conn_name: String,
        connection: Option<ConnState>,
        role: Option<Role>,
    },
    PeerDevice {
        name: String,
        conn_name: String,
        volume: u32,
        replication: Option<ReplState>,
        peer_disk: Option<DiskState>,
        done_percent: Option<f64>,
    },
}

/// One `events2` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub object: EventObject,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.kind)?;
        match &self.object {
            EventObject::Resource { name, role } => {
                write!(f, "resource name:{name}")?;
                if let Some(r) = role {
                    write!(f, " role:{r}")?;
                }
            }
            EventObject::Device { name, volume, disk } => {
                write!(f, "device name:{name} volume:{volume}")?;
                if let Some(d) = disk {
                    write!(f, " disk:{d}")?;
                }
            }
            EventObject::Connection {
                name,
                conn_name,
                connection,
                role,
            } => {
                write!(f, "connection name:{name} conn-name:{conn_name}")?;
                if let Some(c) = connection {
                    write!(f, " connection:{c}")?;
                }
                if let Some(r) = role {
                    write!(f, " role:{r}")?;
                }
            }
            EventObject::PeerDevice {
                name,
                conn_name,
                volume,
                replication,
                peer_disk,
                done_percent,
            } => {
                write!(
                    f,
                    "peer-device name:{name} conn-name:{conn_name} volume:{volume}"
                )?;
                if let Some(r) = replication {
                    write!(f, " replication:{r}")?;
                }
                if let Some(d) = peer_disk {
                    write!(f, " peer-disk:{d}")?;
                }
                if let Some(done) = done_percent {
                    write!(f, " done:{done:.2}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_role_change_line() {
        let e = Event {
            kind: EventKind::Change,
            object: EventObject::Resource {
                name: "r0".into(),
                role: Some(Role::Primary),
            },
        };
        assert_eq!(e.to_string(), "change resource name:r0 role:Primary");
    }

    #[test]
    fn peer_device_sync_progress_line() {
        let e = Event {
            kind: EventKind::Change,
            object: EventObject::PeerDevice {
                name: "r0".into(),
                conn_name: "peer".into(),
                volume: 0,
                replication: Some(ReplState::SyncSource),
                peer_disk: None,
                done_percent: Some(42.1),
            },
        };
        assert_eq!(
            e.to_string(),
            "change peer-device name:r0 conn-name:peer volume:0 replication:SyncSource done:42.10"
        );
    }

    #[test]
    fn connection_and_device_lines_print_only_known_fields() {
        let c = Event {
            kind: EventKind::Exists,
            object: EventObject::Connection {
                name: "r0".into(),
                conn_name: "peer".into(),
                connection: Some(ConnState::Connecting),
                role: None,
            },
        };
        assert_eq!(
            c.to_string(),
            "exists connection name:r0 conn-name:peer connection:Connecting"
        );
        let d = Event {
            kind: EventKind::Destroy,
            object: EventObject::Device {
                name: "r0".into(),
                volume: 0,
                disk: None,
            },
        };
        assert_eq!(d.to_string(), "destroy device name:r0 volume:0");
    }
}
