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

use std::sync::Arc;

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

/// One daemon's WAN shaping: its shaper over all of its WAN traffic and its resync controller.
/// The daemon makes one at start and passes it to every part that sends (replication, streams,
/// jobs, metrics, `adjust`); a clone is another handle to the same instances. Two daemons in
/// one process (tests) never share a link budget.
#[derive(Clone)]
pub struct NodeShaping {
    pub shaper: Arc<Shaper>,
    pub resync: Arc<resync::ResyncGovernor>,
}

impl NodeShaping {
    pub fn new(cfg: ShapingConfig, tuning: resync::ResyncTuning) -> Self {
        let shaper = Arc::new(Shaper::new(cfg));
        let resync = Arc::new(resync::ResyncGovernor::new(shaper.clone(), tuning));
        NodeShaping { shaper, resync }
    }

    /// A shaper without a link rate (it only counts) and the default resync tuning: for a
    /// command-line stream or a test that shapes nothing.
    pub fn counting() -> Self {
        Self::new(ShapingConfig::default(), resync::ResyncTuning::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: the shaper and the resync controller are per daemon. Two daemons in one
    /// process (every pair test) must not share a link budget or a replication estimate.
    #[tokio::test]
    async fn two_daemons_share_no_shaper_and_no_resync_controller() {
        let capped = ShapingConfig {
            link_bytes_per_s: Some(1 << 30),
            ..ShapingConfig::default()
        };
        let a = NodeShaping::new(capped.clone(), resync::ResyncTuning::default());
        let b = NodeShaping::counting();
        a.shaper.acquire(Class::Snapshot, 4096).await;
        assert_eq!(a.shaper.granted_bytes(Class::Snapshot), 4096);
        assert_eq!(b.shaper.granted_bytes(Class::Snapshot), 0);
        assert_eq!(a.shaper.config(), capped);
        assert_eq!(b.shaper.config().link_bytes_per_s, None);
        // The resync controller follows its own daemon's shaper: a has a cap, b has none.
        assert!(a.resync.stats().rate_bytes_per_s.is_some());
        assert_eq!(b.resync.stats().rate_bytes_per_s, None);
        // A clone is a handle to the same instances.
        let a2 = a.clone();
        assert!(Arc::ptr_eq(&a.shaper, &a2.shaper) && Arc::ptr_eq(&a.resync, &a2.resync));
    }
}
