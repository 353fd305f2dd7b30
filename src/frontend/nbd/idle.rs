//! Idle connections under pressure: an export holds at most
//! [`NBD_CONNECTIONS_PER_EXPORT_MAX`](crate::limits::NBD_CONNECTIONS_PER_EXPORT_MAX)
//! connections, and clients that finish the handshake and then sit idle must not keep others
//! out for ever. When a new client finds the export full, the connection that has had no
//! request in flight for the longest time, if that is at least the idle bound
//! ([`NBD_IDLE_EVICT_MS`](crate::limits::NBD_IDLE_EVICT_MS)), is closed to make room (its
//! in-flight count is zero, so no request is cut). A connection that is busy, or idle for
//! less, is never closed, and while the export has room nobody is: a VM that writes nothing
//! for an hour keeps its connection unless someone needs the slot.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What one connection tells the registry about itself.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// When the connection last had a request in flight (ms since the registry was made).
    last_ms: AtomicU64,
    busy: AtomicUsize,
    evicted: AtomicBool,
    evict: Notify,
}

impl Activity {
    /// `inflight` requests are running now (called by the connection's loop).
    pub(crate) fn set_busy(&self, inflight: usize, now_ms: u64) {
        self.busy.store(inflight, Ordering::Relaxed);
        if inflight > 0 {
            self.last_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Resolves once the registry chose this connection to make room.
    pub(crate) async fn evicted(&self) {
        self.evict.notified().await
    }
}

/// The connections of one export, for [`Registry::evict_idlest`].
#[derive(Debug)]
pub(crate) struct Registry {
    born: Instant,
    next_id: AtomicU64,
    min_idle: Mutex<Duration>,
    conns: Mutex<Vec<(u64, Arc<Activity>)>>,
}

impl Registry {
    pub(crate) fn new(min_idle: Duration) -> Registry {
        Registry {
            born: Instant::now(),
            next_id: AtomicU64::new(0),
            min_idle: Mutex::new(min_idle),
            conns: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn set_min_idle(&self, d: Duration) {
        *self.min_idle.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// A connection entered transmission; it is idle from now on until it sends a request.
    pub(crate) fn register(self: &Arc<Self>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let a = Arc::new(Activity::default());
        a.last_ms.store(self.now_ms(), Ordering::Relaxed);
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, a.clone()));
        Registered {
            reg: self.clone(),
            id,
            activity: a,
        }
    }

    /// Close the connection idle the longest, if it has been idle for the bound; true if one
    /// was told to go.
    pub(crate) fn evict_idlest(&self) -> bool {
        let now = self.now_ms();
        let min = self
            .min_idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_millis() as u64;
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let idlest = conns
            .iter()
            .filter(|(_, a)| {
                a.busy.load(Ordering::Relaxed) == 0 && !a.evicted.load(Ordering::Relaxed)
            })
            .map(|(_, a)| (now.saturating_sub(a.last_ms.load(Ordering::Relaxed)), a))
            .filter(|(idle, _)| *idle >= min)
            .max_by_key(|(idle, _)| *idle);
        match idlest {
            Some((_, a)) => {
                a.evicted.store(true, Ordering::Relaxed);
                // A stored permit: the connection sees it even if it is not waiting now.
                a.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A connection's entry; leaves the registry when dropped.
pub(crate) struct Registered {
    reg: Arc<Registry>,
    id: u64,
    pub(crate) activity: Arc<Activity>,
}

impl Registered {
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.reg
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.reg
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connection_idle_for_the_bound_is_chosen_and_the_idlest_first() {
        let reg = Arc::new(Registry::new(Duration::ZERO));
        let a = reg.register();
        let b = reg.register();
        a.activity.set_busy(1, reg.now_ms());
        assert!(reg.evict_idlest(), "b is idle");
        assert!(b.activity.evicted.load(Ordering::Relaxed));
        assert!(!reg.evict_idlest(), "a is busy, b already chosen");
        a.activity.set_busy(0, reg.now_ms());
        reg.set_min_idle(Duration::from_secs(3600));
        assert!(!reg.evict_idlest(), "a was busy just now");
        drop(a);
        drop(b);
        assert!(reg.conns.lock().unwrap().is_empty());
    }
}
