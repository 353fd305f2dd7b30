//! The WAN shaper: one link cap over all of the daemon's WAN traffic, and four traffic classes
//! with guaranteed shares, optional ceilings and borrowing (see [`sched`] for the policy).
//!
//! Classes, highest first: `replication` (application writes: latency first), `resync`,
//! `snapshot`, `image`. Sockets carry their class as SO_PRIORITY and DSCP so that tc on the host
//! can enforce the same split (`drl shaping tc DEV`).

pub mod sched;

use serde::{Deserialize, Serialize};

/// A traffic class. The order is the priority order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Replication = 0,
    Resync = 1,
    Snapshot = 2,
    Image = 3,
}

pub const CLASSES: [Class; 4] = [Class::Replication, Class::Resync, Class::Snapshot, Class::Image];

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Replication => "replication",
            Class::Resync => "resync",
            Class::Snapshot => "snapshot",
            Class::Image => "image",
        }
    }

    /// SO_PRIORITY for sockets of this class (tc's default prio map: 6 interactive .. 2 bulk).
    pub fn so_priority(self) -> u32 {
        match self {
            Class::Replication => 6,
            Class::Resync => 4,
            Class::Snapshot => 2,
            Class::Image => 1,
        }
    }

    /// DSCP code point: AF41 replication, AF31 resync, AF21 snapshot, CS1 (lower effort) image.
    pub fn dscp(self) -> u8 {
        match self {
            Class::Replication => 34,
            Class::Resync => 26,
            Class::Snapshot => 18,
            Class::Image => 8,
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Class {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CLASSES.iter().copied().find(|c| c.name() == s).ok_or_else(|| format!("unknown traffic class {s:?} (replication, resync, snapshot, image)"))
    }
}
