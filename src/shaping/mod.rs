//! The WAN shaper: one link cap over all of the daemon's WAN traffic, and four traffic classes
//! with guaranteed shares, optional ceilings and borrowing (see [`sched`] for the policy).
//!
//! Classes, highest first: `replication` (application writes: latency first), `resync`,
//! `snapshot`, `image`. Sockets carry their class as SO_PRIORITY and DSCP so that tc on the host
//! can enforce the same split (`drl shaping tc DEV`).

pub mod control;
pub mod resync;
pub mod sched;
pub mod shaper;
pub mod tc;

pub use shaper::{ClassConfig, ClassStats, Shaper, ShaperStats, ShapingConfig};

use std::sync::{Arc, OnceLock};

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

pub const CLASSES: [Class; 4] = [
    Class::Replication,
    Class::Resync,
    Class::Snapshot,
    Class::Image,
];

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
        CLASSES
            .iter()
            .copied()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!("unknown traffic class {s:?} (replication, resync, snapshot, image)")
            })
    }
}

/// Mark a socket with `class`: SO_PRIORITY and the DSCP (TOS byte = DSCP << 2), so that tc
/// on the host can classify it (`drl shaping tc`). Replication sockets also get a small
/// TCP_NOTSENT_LOWAT, so that the kernel keeps little unsent data and the shaper above the
/// socket decides what goes next.
pub fn mark_socket(
    fd: std::os::fd::BorrowedFd<'_>,
    class: Class,
) -> Result<(), kernel_glue::sockopt::SockoptError> {
    use kernel_glue::sockopt;
    sockopt::set_priority(fd, class.so_priority())?;
    sockopt::set_tos(fd, class.dscp() << 2)?;
    if matches!(class, Class::Replication | Class::Resync) {
        sockopt::set_notsent_lowat(fd, crate::limits::SHAPING_NOTSENT_LOWAT_BYTES)?;
    }
    Ok(())
}

/// [`mark_socket`] for a replication socket; a failure is logged, not fatal (the user-space
/// shaper still works, only tc on the host cannot tell the class).
pub fn mark_repl_socket(s: &impl std::os::fd::AsFd) {
    if let Err(e) = mark_socket(s.as_fd(), Class::Replication) {
        tracing::warn!(error = %e, "cannot mark the replication socket with its traffic class");
    }
}

static NODE: OnceLock<Arc<Shaper>> = OnceLock::new();

/// The node's shaper: one per daemon process, over all of its WAN traffic. Until the daemon
/// configures it ([`Shaper::set_config`]), it counts only.
pub fn node() -> &'static Arc<Shaper> {
    NODE.get_or_init(|| Arc::new(Shaper::new(ShapingConfig::default())))
}
