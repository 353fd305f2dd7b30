//! Self-fencing: the gate a Primary's acknowledgements pass.
//!
//! The gate is open until a deadline on this node's monotonic clock: the send time of the last
//! successful lease renewal plus the TTL minus the fence margin (`DetectConfig::
//! fence_margin_ms`). It closes by itself when the deadline passes: no task has to notice a
//! lost lease in time, every write compares the clock with the deadline. etcd counts the TTL
//! from when it *received* that renewal, later than we sent it, so the gate closes at least the
//! margin before the lease can expire anywhere and another node can take the key.
//!
//! A write passes the gate twice: before it starts (a fenced Primary writes nothing new) and
//! after it completed, before the reply (a write in flight when the gate closed is not
//! acknowledged). While closed, `suspend-io` holds the write until the gate opens again (a
//! renewal got through) or the node is demoted (the write fails: it was never acknowledged);
//! `io-error` fails it at once. Reads pass.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

use crate::detect::options::OnNoQuorum;
use crate::volume::VolumeError;

pub struct Fence {
    resource: String,
    mode: OnNoQuorum,
    origin: Instant,
    /// Milliseconds since `origin` (plus one) until which acknowledgements may leave; 0: closed.
    open_until_ms: AtomicU64,
    /// The node was demoted while writes were held: they fail.
    demoted: AtomicBool,
    changed: Notify,
    /// Writes held or failed at the gate.
    pub fenced_writes: AtomicU64,
}

impl Fence {
    /// A closed gate (nothing is acknowledged before the first lease is held).
    pub fn new(resource: &str, mode: OnNoQuorum) -> Fence {
        Fence {
            resource: resource.to_owned(),
            mode,
            origin: Instant::now(),
            open_until_ms: AtomicU64::new(0),
            demoted: AtomicBool::new(false),
            changed: Notify::new(),
            fenced_writes: AtomicU64::new(0),
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.origin).as_millis() as u64 + 1
    }

    /// Open the gate until `deadline` (a renewal got through).
    pub fn open_until(&self, deadline: Instant) {
        self.demoted.store(false, Ordering::Release);
        self.open_until_ms
            .store(self.ms(deadline), Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Close the gate now (the lease is gone).
    pub fn close(&self) {
        self.open_until_ms.store(0, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Close the gate and fail the writes it holds: the node was demoted.
    pub fn demote(&self) {
        self.demoted.store(true, Ordering::Release);
        self.close();
    }

    pub fn is_open(&self) -> bool {
        self.ms(Instant::now()) < self.open_until_ms.load(Ordering::Acquire)
    }

    /// Until when the gate is open (None: closed).
    pub fn open_until_instant(&self) -> Option<Instant> {
        let ms = self.open_until_ms.load(Ordering::Acquire);
        (ms > 0).then(|| self.origin + std::time::Duration::from_millis(ms - 1))
    }

    /// How long ago the gate closed by reaching its deadline (None: open, or closed by hand).
    pub fn closed_since(&self) -> Option<std::time::Duration> {
        let t = self.open_until_instant()?;
        let now = Instant::now();
        (now >= t).then(|| now - t)
    }

    fn refused(&self, why: &str) -> VolumeError {
        VolumeError::Io {
            name: self.resource.clone(),
            what: "self-fenced (no lease: this Primary lost its quorum)",
            source: std::io::Error::other(why.to_owned()),
        }
    }

    /// Let a write (or its acknowledgement) pass: at once while open, else as `on-no-quorum`
    /// says.
    pub async fn admit(&self) -> Result<(), VolumeError> {
        if self.is_open() {
            return Ok(());
        }
        self.fenced_writes.fetch_add(1, Ordering::Relaxed);
        loop {
            // Registered before the checks: an opening in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_open() {
                return Ok(());
            }
            if self.demoted.load(Ordering::Acquire) {
                return Err(self.refused("demoted: another node holds the lease"));
            }
            match self.mode {
                OnNoQuorum::IoError => return Err(self.refused("on-no-quorum = io-error")),
                OnNoQuorum::SuspendIo => changed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn the_gate_closes_by_itself_at_the_deadline() {
        let f = Fence::new("r0", OnNoQuorum::IoError);
        assert!(f.admit().await.is_err(), "closed until a lease is held");
        // Open long enough that a preempted test thread cannot see it close before the
        // admit; then reopened with a short deadline and waited past it (waiting longer is
        // always safe).
        f.open_until(Instant::now() + Duration::from_secs(30));
        assert!(f.admit().await.is_ok());
        f.open_until(Instant::now() + Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!f.is_open());
        assert!(f.admit().await.is_err());
        assert_eq!(f.fenced_writes.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn suspend_io_holds_writes_until_renewed_or_demoted() {
        let f = Arc::new(Fence::new("r0", OnNoQuorum::SuspendIo));
        let held = tokio::spawn({
            let f = f.clone();
            async move { f.admit().await }
        });
        tokio::task::yield_now().await;
        assert!(!held.is_finished());
        f.open_until(Instant::now() + Duration::from_secs(5));
        assert!(held.await.unwrap().is_ok());
        f.close();
        let held = tokio::spawn({
            let f = f.clone();
            async move { f.admit().await }
        });
        tokio::task::yield_now().await;
        f.demote();
        assert!(
            held.await.unwrap().is_err(),
            "demoted: the held write fails"
        );
    }
}
