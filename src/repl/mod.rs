//! Replication: DRBD protocol-A style mirroring of a volume to a peer in another site.
//!
//! The protocol core is I/O free: frames in, frames and actions out, so that the TCP driver,
//! the volume and a deterministic simulator can all drive the same code. The I/O part (TCP,
//! tasks, the write-path hook) is in `peer`, `link`, `session`, `resync`, `service` and
//! `replicator`.
//!
//! # Layout
//! - [`wire`]: the 64-byte frame header, checksums, errors, the encoder, zstd when it pays.
//! - [`compress`]: zstd per payload when it pays: reused contexts, a sample, back-off on misses.
//! - [`bitmap`]: dirty-bitmap exchange (BitmapChunk frames) so a resync covers the union.
//! - [`decode`]: the incremental decoder: checks in order, never trusts a length early.
//! - [`frame`]: the frame values (Hello, Data, Barrier, ...) and wire codes of DRBD states.
//! - [`handshake`]: the symmetric handshake: version, resource, size, mutual HMAC auth.
//! - [`gen`]: DRBD-style generation ids (current, bitmap, history) and their transitions.
//! - [`state`]: the resync decision after a connect (sync direction, split brain, policies).
//! - [`epoch`]: protocol-A epochs, sender side: sequence numbers, epochs, barrier acks,
//!   dirty bits that may be cleared, lag, the send-buffer bound.
//! - [`receiver`]: protocol-A epochs, receiver side: apply in order, flush then ack.
//! - [`peer`]: TCP connect/accept, reconnect backoff, the handshake over a socket with a deadline.
//! - [`link`]: the ordered send queue of one connection and its epoch tracker (`max-buffer`).
//! - [`core`]: the sans-I/O core of one connection (events in, actions out), driven by
//!   `session` and by the deterministic simulator.
//! - [`session`]: one connection from the sync decision to its end (with `session_rx.rs`: the
//!   receiving half, `session_sync.rs`: bitmap exchange and resync).
//! - [`resync`]: SyncTarget request pump, SyncSource answers, bitmap bytes.
//! - [`service`]: the per-resource task: listen, connect, handshake, sessions, StandAlone.
//! - [`replicator`]: per-resource state, the write-path hook (with `replicator_admin.rs`: admin
//!   operations and status).

pub mod bitmap;
pub mod compress;
pub mod core;
pub mod decode;
pub mod epoch;
pub mod frame;
pub mod gen;
pub mod handshake;
pub mod link;
pub mod liveness;
pub mod options;
pub mod overlap;
pub mod peer;
pub mod receiver;
pub mod replicator;
pub mod resync;
pub mod service;
pub mod session;
pub mod shaped;
pub mod state;
pub mod tls;
pub mod verify;
pub mod wire;

#[cfg(test)]
mod wire_tests;

#[cfg(test)]
mod sim_tests;
