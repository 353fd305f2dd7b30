//! The daemon-wide bound on NBD payload bytes in flight.
//!
//! Each connection already holds at most [`NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX`] of payload
//! (WRITE payloads read, READ buffers allocated, until their replies are written). With many
//! exports and [`NBD_CONNECTIONS_PER_EXPORT_MAX`] connections each, those bounds alone would let
//! clients pin gigabytes of memory. One [`PayloadBudget`] is shared by every connection of every
//! export of the daemon: a request's payload is read (or its READ started) only once its bytes
//! are granted here, and they return when its reply has been written.
//!
//! Grants are first come, first served (a tokio semaphore counting bytes): a large request
//! waiting for its turn is not overtaken forever by small ones. A request never needs more than
//! [`NBD_PAYLOAD_BYTES_MAX`] and the budget is at least that, so every request can be granted;
//! a connection waiting here still writes its replies, which is what frees bytes.
//!
//! [`NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX`]: crate::limits::NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX
//! [`NBD_CONNECTIONS_PER_EXPORT_MAX`]: crate::limits::NBD_CONNECTIONS_PER_EXPORT_MAX

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::{NBD_INFLIGHT_DAEMON_BYTES_MAX, NBD_PAYLOAD_BYTES_MAX};

/// Bytes of NBD payload the whole daemon may hold in flight; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct PayloadBudget {
    sem: Arc<Semaphore>,
    total: u64,
}

impl PayloadBudget {
    /// A budget of `total_bytes`, raised to [`NBD_PAYLOAD_BYTES_MAX`] if smaller (one request
    /// of the largest size must always fit).
    pub fn new(total_bytes: u64) -> Self {
        let total = total_bytes.max(u64::from(NBD_PAYLOAD_BYTES_MAX));
        PayloadBudget {
            sem: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// The size of the budget.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Bytes not granted right now.
    pub fn available_bytes(&self) -> u64 {
        self.sem.available_permits() as u64
    }

    /// Grant `len` bytes now, or `None` if they are not free (or others wait before us).
    pub(crate) fn try_grant(&self, len: u32) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().try_acquire_many_owned(len).ok()
    }

    /// Wait for `len` bytes (first come, first served).
    pub(crate) async fn grant(self, len: u32) -> OwnedSemaphorePermit {
        // The semaphore is never closed (nothing calls `close`), so this cannot fail.
        self.sem
            .acquire_many_owned(len)
            .await
            .expect("the NBD payload budget is never closed")
    }
}

impl Default for PayloadBudget {
    /// A budget of [`NBD_INFLIGHT_DAEMON_BYTES_MAX`].
    fn default() -> Self {
        PayloadBudget::new(NBD_INFLIGHT_DAEMON_BYTES_MAX)
    }
}
