//! The disaster drill's own parts: a workload whose every acknowledged write is logged, and a
//! checker that holds a site's volumes against that log (prefix, damage, RPO).
//!
//! `scripts/drill.sh` runs the whole disaster (sites, kill, detection, recovery, fail back) and
//! calls these through the `drl-drill` binary (`src/bin/drl-drill.rs`).
//!
//! - [`record`]: the self-describing 4 KiB block record and the log format.
//! - [`writer`]: the dependent writer over NBD, and reading a volume back.
//! - [`check`]: the prefix verdict and the RPO.

pub mod check;
pub mod record;
pub mod writer;
