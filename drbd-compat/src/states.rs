//! DRBD's state names, spelled exactly as `drbdsetup` prints them.
//!
//! Each enum implements `Display` (the DRBD name), `FromStr` (exact, case-sensitive DRBD
//! name) and serde (the same name as a string), so state travels through JSON, logs and the
//! CLI under one spelling.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A string that is not one of DRBD's names for the given kind of state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown DRBD {kind} state {value:?}")]
pub struct ParseStateError {
    /// Which kind of state was parsed ("role", "disk", ...).
    pub kind: &'static str,
    /// The rejected text.
    pub value: String,
}

macro_rules! drbd_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal, { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in DRBD's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The DRBD name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseStateError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $(stringify!($variant) => Ok($name::$variant),)+
                    _ => Err(ParseStateError { kind: $kind, value: s.to_string() }),
                }
            }
        }
    };
}

drbd_enum!(
    /// The role of a node for a resource (DRBD `role:`).
    Role, "role", { Primary, Secondary, Unknown }
);

drbd_enum!(
    /// The state of the local (or the peer's) backing disk (DRBD `disk:` / `peer-disk:`).
    DiskState, "disk", {
        Diskless, Attaching, Inconsistent, Outdated, DUnknown, Consistent, UpToDate, Failed
    }
);

drbd_enum!(
    /// The state of the connection to a peer (DRBD `connection:`).
    ConnState, "connection", {
        StandAlone, Connecting, Connected, Disconnecting, NetworkFailure, ProtocolError,
        Unconnected, Timeout, BrokenPipe
    }
);

drbd_enum!(
    /// The replication state of one volume towards one peer (DRBD `replication:`).
    ReplState, "replication", {
        Off, Established, StartingSyncS, StartingSyncT, WFBitMapS, WFBitMapT, SyncSource,
        SyncTarget, PausedSyncS, PausedSyncT, Ahead, Behind, VerifyS, VerifyT
    }
);

impl DiskState {
    /// Whether the disk holds data a peer may sync from (DRBD: `Consistent` or better, but
    /// not `DUnknown` which only describes a peer we cannot see).
    pub fn has_good_data(self) -> bool {
        matches!(
            self,
            DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated
        )
    }
}

impl ReplState {
    /// Whether a resync is running or about to run in this state.
    pub fn is_resyncing(self) -> bool {
        matches!(
            self,
            ReplState::StartingSyncS
                | ReplState::StartingSyncT
                | ReplState::WFBitMapS
                | ReplState::WFBitMapT
                | ReplState::SyncSource
                | ReplState::SyncTarget
                | ReplState::PausedSyncS
                | ReplState::PausedSyncT
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip_for_every_name() {
        for r in Role::ALL {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), *r);
        }
        for d in DiskState::ALL {
            assert_eq!(d.to_string().parse::<DiskState>().unwrap(), *d);
        }
        for c in ConnState::ALL {
            assert_eq!(c.to_string().parse::<ConnState>().unwrap(), *c);
        }
        for s in ReplState::ALL {
            assert_eq!(s.to_string().parse::<ReplState>().unwrap(), *s);
        }
    }

    #[test]
    fn names_are_drbds_exact_spelling() {
        assert_eq!(DiskState::UpToDate.to_string(), "UpToDate");
        assert_eq!(DiskState::DUnknown.to_string(), "DUnknown");
        assert_eq!(ConnState::StandAlone.to_string(), "StandAlone");
        assert_eq!(ReplState::WFBitMapS.to_string(), "WFBitMapS");
        assert_eq!(ReplState::PausedSyncT.to_string(), "PausedSyncT");
    }

    #[test]
    fn parse_is_case_sensitive_and_names_the_kind() {
        let err = "uptodate".parse::<DiskState>().unwrap_err();
        assert_eq!(err.kind, "disk");
        assert_eq!(err.to_string(), "unknown DRBD disk state \"uptodate\"");
        assert!("primary".parse::<Role>().is_err());
    }

    #[test]
    fn serde_uses_the_drbd_name() {
        let json = serde_json::to_string(&ReplState::SyncSource).unwrap();
        assert_eq!(json, "\"SyncSource\"");
        let back: ConnState = serde_json::from_str("\"NetworkFailure\"").unwrap();
        assert_eq!(back, ConnState::NetworkFailure);
        assert!(serde_json::from_str::<Role>("\"Boss\"").is_err());
    }
}
