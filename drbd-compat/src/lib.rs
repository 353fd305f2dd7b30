//! DRBD compatibility: DRBD's state names and the text formats DRBD users read.
//!
//! drl speaks DRBD's vocabulary so that an operator who knows DRBD can read drl's state without
//! a glossary: the same role, disk, connection and replication state names (see [`states`]),
//! a `drbdsetup status`-like summary (see [`status`]) and `drbdsetup events2`-like event lines
//! (see [`events`]). Nothing here talks to the DRBD kernel module; it is pure formatting and
//! parsing, usable by the control socket, the CLI and tests.
//!
//! # Layout
//! - [`states`]: `Role`, `DiskState`, `ConnState`, `ReplState` with Display/FromStr/serde.
//! - [`status`]: plain status structs and the `drbdsetup status` text formatter.
//! - [`events`]: `drbdsetup events2` lines (`change resource name:r0 role:Primary`).
//! - [`res`]: DRBD resource files parsed; [`import`]: mapped to drl's TOML (`drl import-drbd`).

pub mod events;
pub mod import;
pub mod res;
pub mod states;
pub mod status;

pub use events::{Event, EventKind, EventObject};
pub use states::{ConnState, DiskState, ParseStateError, ReplState, Role};
pub use status::{PeerDeviceStatus, PeerStatus, ResourceStatus, VolumeStatus};
