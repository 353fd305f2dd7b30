//! Counters of one NBD server (one export), readable at any time without locks.
//!
//! The control socket and tests read them through [`NbdStats::snapshot`]. All counters only
//! grow, except `connections_active` and `requests_inflight`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::command::Kind;
use crate::metrics::histogram::LatencyHistogram;

/// Live counters; see [`NbdStatsSnapshot`] for the meaning of each field.
#[derive(Debug, Default)]
pub struct NbdStats {
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
    pub connections_refused: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub requests_read: AtomicU64,
    pub requests_write: AtomicU64,
    pub requests_flush: AtomicU64,
    pub requests_trim: AtomicU64,
    pub requests_write_zeroes: AtomicU64,
    pub requests_disc: AtomicU64,
    pub requests_unknown: AtomicU64,
    pub requests_inflight: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub error_replies: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub budget_waits: AtomicU64,
    /// The clients in transmission now (they hold the export open), for `secondary`'s
    /// refusal and `status`: one entry per connection, its peer description.
    clients: std::sync::Mutex<Vec<String>>,
    /// Request latency by kind (see [`NbdStats::latency`]): from the request being complete
    /// (header, and payload for a write) to its reply written to the socket.
    latency: [LatencyHistogram; LATENCY_KINDS.len()],
}

/// Removes a client from [`NbdStats::clients`] when its connection ends, however it ends.
pub(crate) struct OpenGuard {
    stats: std::sync::Arc<NbdStats>,
    peer: String,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut c = self.stats.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = c.iter().position(|p| *p == self.peer) {
            c.swap_remove(i);
        }
    }
}

/// The kinds whose latency is recorded, in the order of [`NbdStats::latency`]'s array.
pub const LATENCY_KINDS: [(Kind, &str); 5] = [
    (Kind::Read, "read"),
    (Kind::Write, "write"),
    (Kind::Flush, "flush"),
    (Kind::Trim, "trim"),
    (Kind::WriteZeroes, "write_zeroes"),
];

/// A point-in-time copy of [`NbdStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NbdStatsSnapshot {
    /// Connections accepted and admitted (within the connection limit).
    pub connections_accepted: u64,
    /// Connections currently open (handshake or transmission).
    pub connections_active: u64,
    /// Connections turned away because of the connection limit or shutdown.
    pub connections_refused: u64,
    /// Handshakes that ended without reaching transmission (errors, timeouts, aborts).
    pub handshakes_failed: u64,
    pub requests_read: u64,
    pub requests_write: u64,
    pub requests_flush: u64,
    pub requests_trim: u64,
    pub requests_write_zeroes: u64,
    pub requests_disc: u64,
    pub requests_unknown: u64,
    /// Requests dispatched whose reply has not been written yet.
    pub requests_inflight: u64,
    /// Payload bytes sent to clients by successful reads.
    pub bytes_read: u64,
    /// Payload bytes received from clients by successful writes.
    pub bytes_written: u64,
    /// Requests answered with an error.
    pub error_replies: u64,
    /// Connections closed because the client broke the protocol (bad magic, bad flags, ...).
    pub protocol_errors: u64,
    /// Requests that had to wait for the daemon-wide payload budget (every export's clients
    /// together had [`NBD_INFLIGHT_DAEMON_BYTES_MAX`](crate::limits::NBD_INFLIGHT_DAEMON_BYTES_MAX)
    /// in flight).
    pub budget_waits: u64,
}

impl NbdStats {
    /// Record `peer` as holding the export open until the guard is dropped.
    pub(crate) fn opened(self: &std::sync::Arc<Self>, peer: &str) -> OpenGuard {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(peer.to_owned());
        OpenGuard {
            stats: self.clone(),
            peer: peer.to_owned(),
        }
    }

    /// The clients holding the export open (in transmission), oldest first.
    pub fn clients(&self) -> Vec<String> {
        let mut c = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        c.sort();
        c
    }

    pub(crate) fn count_request(&self, kind: Kind) {
        let c = match kind {
            Kind::Read => &self.requests_read,
            Kind::Write => &self.requests_write,
            Kind::Flush => &self.requests_flush,
            Kind::Trim => &self.requests_trim,
            Kind::WriteZeroes => &self.requests_write_zeroes,
            Kind::Disc => &self.requests_disc,
            Kind::Unknown => &self.requests_unknown,
        };
        c.fetch_add(1, Relaxed);
    }

    /// Record a request of `kind` that took `d` (other kinds are not recorded).
    #[inline]
    pub(crate) fn observe(&self, kind: Kind, d: std::time::Duration) {
        let i = match kind {
            Kind::Read => 0,
            Kind::Write => 1,
            Kind::Flush => 2,
            Kind::Trim => 3,
            Kind::WriteZeroes => 4,
            Kind::Disc | Kind::Unknown => return,
        };
        self.latency[i].observe(d);
    }

    /// The latency histogram of each kind in [`LATENCY_KINDS`], by its name.
    pub fn latency(&self) -> impl Iterator<Item = (&'static str, &LatencyHistogram)> {
        LATENCY_KINDS.iter().map(|k| k.1).zip(self.latency.iter())
    }

    pub fn snapshot(&self) -> NbdStatsSnapshot {
        NbdStatsSnapshot {
            connections_accepted: self.connections_accepted.load(Relaxed),
            connections_active: self.connections_active.load(Relaxed),
            connections_refused: self.connections_refused.load(Relaxed),
            handshakes_failed: self.handshakes_failed.load(Relaxed),
            requests_read: self.requests_read.load(Relaxed),
            requests_write: self.requests_write.load(Relaxed),
            requests_flush: self.requests_flush.load(Relaxed),
            requests_trim: self.requests_trim.load(Relaxed),
            requests_write_zeroes: self.requests_write_zeroes.load(Relaxed),
            requests_disc: self.requests_disc.load(Relaxed),
            requests_unknown: self.requests_unknown.load(Relaxed),
            requests_inflight: self.requests_inflight.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            error_replies: self.error_replies.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            budget_waits: self.budget_waits.load(Relaxed),
        }
    }
}
