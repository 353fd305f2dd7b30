//! drl — the data path of a Disaster Recovery Layer for OpenStack clouds.
//!
//! # Layout
//! - [`limits`]: every limit and default in one place, units last in the name.
//! - [`logrl`]: rate limiting for log lines a peer or client can cause.
//! - [`units`], [`table`], [`secret`]: leaf helpers every layer may use: human units (sizes,
//!   rates, durations), plain-text tables, credentials that never print.
//! - [`config`]: the TOML configuration, per-node sections, validation; maps TOML onto each
//!   layer's own option types.
//! - [`volume`]: the backing disk (io_uring through `kernel-glue`), metadata (superblock,
//!   generation ids, dirty bitmap, activity log) and the [`volume::BlockDevice`] contract.
//! - [`frontend`]: how users reach a volume: the NBD server (unix and TCP sockets).
//! - [`control`]: the control socket (newline-delimited JSON-RPC 2.0) and the event bus.
//! - [`cli`]: the `drl` command line (clap), a thin client of the control socket.
//! - [`daemon`]: wires config, volumes, front ends and the control socket together; signals.
//! - [`repl`]: replication: wire protocol, handshake, the I/O-free state machine, peers.
//! - [`snapshot`], [`stream`]: copy-on-write snapshots, chunked streaming to Swift, restore.
//! - [`pipeline`]: the one write path of a volume (snapshot preservation, then the disk) that
//!   every writer takes: NBD clients, restore, the replication receiver, the resync target.
//! - [`shaping`]: the WAN shaper: link cap and traffic classes.
//! - [`metrics`]: the Prometheus exposition and its HTTP endpoint; atomic latency histograms.
//! - [`drill`]: the disaster drill's logged writer and prefix checker (`drl-drill`).
//! - [`detect`]: site-failure detection (UDP probes), leases in etcd, self-fencing.
//! - [`orchestrator`]: protection plans, recovery through Cinder and Heat, fail back.
//! - `fuzzing`: the fuzz harnesses (cargo-fuzz targets in `fuzz/`, corpora replayed by
//!   `tests/fuzz_corpus.rs`).
//!
//! See ARCHITECTURE.md at the repository root for the write path, threads and trust boundaries.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod detect;
pub mod drill;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod logrl;
pub mod metrics;
pub mod orchestrator;
pub mod pipeline;
pub mod repl;
pub mod secret;
pub mod shaping;
pub mod snapshot;
pub mod stream;
pub mod table;
pub mod units;
pub mod volume;
