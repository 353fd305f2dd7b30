//! The async shaper: the pure [`Scheduler`] behind a mutex, driven by the tasks that wait on it.
//!
//! `acquire(class, bytes).await` returns when the link and the class's share and ceiling allow
//! `bytes` to go. A request is split into grants of at most a quarter of the burst,
//! each queued in turn. Dropping the future cancels its queued grant (the sender went away);
//! a grant already committed by the scheduler is charged to the link anyway, like a packet
//! already at the head of a NIC queue.
//!
//! There is no driver task: whoever waits polls the scheduler when its timer fires or when it
//! is woken, and hands out every grant that is due, to itself or to the other waiters (each
//! has its own `Notify`, which keeps a permit, so no wakeup is lost). That needs no runtime of
//! its own, so the daemon's shaper (see [`super::NodeShaping`]) works from any tokio runtime, and
//! an idle shaper costs nothing.
//!
//! Without a `link-rate` the shaper only counts: grants are immediate (no link cap, no shares,
//! no ceilings), and the per-class counters still run. Switching to counting-only under load
//! releases every waiter at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use serde::Serialize;
use tokio::sync::Notify;

use super::sched::{ClassParams, Decision, Params, Scheduler};
use super::{Class, CLASSES};
use crate::limits::{SHAPING_BURST_BYTES_MIN, SHAPING_BURST_MS_DEFAULT, SHAPING_SHARES_DEFAULT};

/// The shaper's settings as configured (`[shaping]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShapingConfig {
    /// The link cap in bytes per second; `None`: count only.
    pub link_bytes_per_s: Option<u64>,
    /// The link's burst in bytes (grants are at most a quarter of it).
    pub burst_bytes: u64,
    pub classes: [ClassConfig; 4],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClassConfig {
    pub share: u32,
    pub ceil_bytes_per_s: Option<u64>,
}

impl Default for ShapingConfig {
    fn default() -> Self {
        ShapingConfig {
            link_bytes_per_s: None,
            burst_bytes: SHAPING_BURST_BYTES_MIN,
            classes: SHAPING_SHARES_DEFAULT.map(|share| ClassConfig {
                share,
                ceil_bytes_per_s: None,
            }),
        }
    }
}

impl ShapingConfig {
    /// The default burst for a link rate: `SHAPING_BURST_MS_DEFAULT` of it, at least
    /// `SHAPING_BURST_BYTES_MIN`.
    pub fn default_burst(link_bytes_per_s: Option<u64>) -> u64 {
        link_bytes_per_s.map_or(SHAPING_BURST_BYTES_MIN, |r| {
            (r * SHAPING_BURST_MS_DEFAULT / 1000).max(SHAPING_BURST_BYTES_MIN)
        })
    }

    /// The guaranteed rate of `class` (share of the link), if there is a link rate.
    pub fn guarantee_bytes_per_s(&self, class: Class) -> Option<u64> {
        let total: u64 = self.classes.iter().map(|c| u64::from(c.share)).sum();
        self.link_bytes_per_s
            .map(|l| l * u64::from(self.classes[class as usize].share) / total.max(1))
    }

    /// Check the meaning; on error, the key (relative to `shaping.`) and the reason.
    pub fn check(&self) -> Result<(), (String, String)> {
        use crate::limits::{SHAPING_BURST_BYTES_MAX, SHAPING_SHARE_MAX};
        use crate::units::{format_bytes, format_rate};
        if !(SHAPING_BURST_BYTES_MIN..=SHAPING_BURST_BYTES_MAX).contains(&self.burst_bytes) {
            return Err((
                "burst".into(),
                format!(
                    "{}: must be from {} to {}",
                    format_bytes(self.burst_bytes),
                    format_bytes(SHAPING_BURST_BYTES_MIN),
                    format_bytes(SHAPING_BURST_BYTES_MAX)
                ),
            ));
        }
        for &c in &CLASSES {
            let cc = &self.classes[c as usize];
            if !(1..=SHAPING_SHARE_MAX).contains(&cc.share) {
                return Err((
                    format!("class.{c}.share"),
                    format!(
                        "{}: must be 1 to {SHAPING_SHARE_MAX} (a relative weight)",
                        cc.share
                    ),
                ));
            }
            if let Some(ceil) = cc.ceil_bytes_per_s {
                match self.link_bytes_per_s {
                    None => {
                        return Err((
                            format!("class.{c}.ceil"),
                            "a ceiling needs shaping.link-rate (without it the shaper only counts)"
                                .into(),
                        ))
                    }
                    Some(l) if ceil > l => {
                        return Err((
                            format!("class.{c}.ceil"),
                            format!(
                                "{} is above the link rate {}",
                                format_rate(ceil),
                                format_rate(l)
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// The largest single grant: a quarter of the burst (see [`Params::grant_bytes_max`]).
    pub fn grant_bytes_max(&self) -> u64 {
        super::sched::grant_bytes_max(self.burst_bytes)
    }

    /// The scheduler's parameters. Replication and resync share one ordered TCP connection,
    /// whose frames the scheduler sees as one flow in the replication class (see
    /// `repl::shaped::write_repl_frames`): that flow is weighted with both shares, and the adaptive
    /// resync controller ([`super::resync`]) splits it.
    fn sched_params(&self) -> Option<Params> {
        self.link_bytes_per_s.map(|l| {
            let mut classes = self.classes.map(|c| ClassParams {
                share: c.share.max(1),
                ceil_bytes_per_s: c.ceil_bytes_per_s,
            });
            classes[Class::Replication as usize].share += classes[Class::Resync as usize].share;
            Params {
                link_bytes_per_s: l,
                burst_bytes: self.burst_bytes,
                classes,
            }
        })
    }
}

/// Bytes per time slot of the rate meter, and how many slots it keeps.
const METER_SLOT_MS: u64 = 250;
const METER_SLOTS: usize = 8;

/// A sliding-window rate: bytes in the last `METER_SLOTS - 1` complete slots.
#[derive(Debug, Default)]
struct Meter {
    slots: [u64; METER_SLOTS],
    /// Index of the current slot (milliseconds since the shaper started / slot length).
    cur: u64,
}

impl Meter {
    fn advance(&mut self, slot: u64) {
        if slot <= self.cur {
            return;
        }
        let gap = (slot - self.cur).min(METER_SLOTS as u64);
        for i in 1..=gap {
            self.slots[((self.cur + i) % METER_SLOTS as u64) as usize] = 0;
        }
        self.cur = slot;
    }

    fn add(&mut self, slot: u64, bytes: u64) {
        self.advance(slot);
        self.slots[(self.cur % METER_SLOTS as u64) as usize] += bytes;
    }

    /// Bytes per second over the complete slots of the window.
    fn rate(&mut self, slot: u64) -> u64 {
        self.advance(slot);
        let cur = (self.cur % METER_SLOTS as u64) as usize;
        let sum: u64 = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != cur)
            .map(|(_, b)| b)
            .sum();
        sum * 1000 / (METER_SLOT_MS * (METER_SLOTS as u64 - 1))
    }
}

struct Waiter {
    granted: bool,
    notify: Arc<Notify>,
    /// The class whose counters the grant goes to.
    count: Class,
}

struct Inner {
    cfg: ShapingConfig,
    /// `None` while counting only.
    sched: Option<Scheduler<DefaultClock>>,
    waiters: HashMap<u64, Waiter>,
    next_ticket: u64,
    meters: [Meter; 4],
}

/// One class's counters, for `drl shaping show` and `drl status --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassStats {
    pub class: Class,
    pub share: u32,
    pub guarantee_bytes_per_s: Option<u64>,
    pub ceil_bytes_per_s: Option<u64>,
    /// Granted bytes per second over the last ~2 seconds.
    pub rate_bytes_per_s: u64,
    pub granted_bytes: u64,
    pub queued_bytes: u64,
    pub waiting_requests: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShaperStats {
    pub link_bytes_per_s: Option<u64>,
    pub burst_bytes: u64,
    pub classes: Vec<ClassStats>,
}

pub struct Shaper {
    inner: Mutex<Inner>,
    granted: [AtomicU64; 4],
    waiting: [AtomicU64; 4],
    epoch: Instant,
}

impl std::fmt::Debug for Shaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shaper")
            .field("config", &self.lock().cfg)
            .finish_non_exhaustive()
    }
}

impl Shaper {
    pub fn new(cfg: ShapingConfig) -> Shaper {
        let sched = cfg
            .sched_params()
            .map(|p| Scheduler::new(p, DefaultClock::default()));
        Shaper {
            inner: Mutex::new(Inner {
                cfg,
                sched,
                waiters: HashMap::new(),
                next_ticket: 0,
                meters: Default::default(),
            }),
            granted: Default::default(),
            waiting: Default::default(),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 / METER_SLOT_MS
    }

    /// Whether there is a link cap (false: counting only).
    pub fn is_capped(&self) -> bool {
        self.lock().sched.is_some()
    }

    pub fn config(&self) -> ShapingConfig {
        self.lock().cfg.clone()
    }

    /// Change the settings under load: queued requests keep their place; limiters restart.
    pub fn set_config(&self, cfg: ShapingConfig) {
        let mut g = self.lock();
        match (cfg.sched_params(), g.sched.as_mut()) {
            (Some(p), Some(s)) => s.set_params(p),
            (Some(p), None) => g.sched = Some(Scheduler::new(p, DefaultClock::default())),
            (None, _) => {
                // Counting only from now on: every queued request may go.
                g.sched = None;
                for w in g.waiters.values_mut() {
                    w.granted = true;
                    w.notify.notify_one();
                }
            }
        }
        g.cfg = cfg;
    }

    /// Wait until `bytes` of `class` may be sent. Cancellation-safe.
    pub async fn acquire(&self, class: Class, bytes: u64) {
        self.acquire_as(class, class, bytes).await
    }

    /// Like [`Self::acquire`], scheduled in class `sched` but counted for class `count`.
    pub async fn acquire_as(&self, sched: Class, count: Class, bytes: u64) {
        let class = count;
        let mut left = bytes;
        loop {
            let grant = {
                let mut g = self.lock();
                if g.sched.is_none() {
                    let slot = self.slot();
                    g.meters[class as usize].add(slot, left);
                    self.granted[class as usize].fetch_add(left, Ordering::Relaxed);
                    return;
                }
                let max = g.cfg.grant_bytes_max();
                let n = left.min(max);
                g.next_ticket += 1;
                let ticket = g.next_ticket;
                let notify = Arc::new(Notify::new());
                g.waiters.insert(
                    ticket,
                    Waiter {
                        granted: false,
                        notify: notify.clone(),
                        count,
                    },
                );
                if let Some(s) = g.sched.as_mut() {
                    s.enqueue(sched, n, ticket);
                }
                (ticket, n, notify)
            };
            let (ticket, n, notify) = grant;
            let mut guard = Ticket {
                shaper: self,
                ticket,
                class,
                done: false,
            };
            self.waiting[class as usize].fetch_add(1, Ordering::Relaxed);
            loop {
                match self.drive(ticket) {
                    None => break,
                    Some(wait) => {
                        tokio::select! {
                            _ = notify.notified() => {}
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
            guard.done = true;
            drop(guard);
            left = left.saturating_sub(n);
            if left == 0 {
                return;
            }
        }
    }

    /// Hand out every grant that is due. `None` if `ticket` was granted (and is forgotten),
    /// else how long to sleep at most.
    fn drive(&self, ticket: u64) -> Option<Duration> {
        let mut g = self.lock();
        let g = &mut *g;
        loop {
            if g.waiters.get(&ticket).is_some_and(|w| w.granted) {
                g.waiters.remove(&ticket);
                return None;
            }
            let Some(s) = g.sched.as_mut() else {
                // Switched to counting only; set_config granted everyone.
                g.waiters.remove(&ticket);
                return None;
            };
            match s.poll() {
                Decision::Grant {
                    ticket: t,
                    class,
                    bytes,
                } => {
                    let slot = self.epoch.elapsed().as_millis() as u64 / METER_SLOT_MS;
                    let count = g.waiters.get(&t).map_or(class, |w| w.count);
                    g.meters[count as usize].add(slot, bytes);
                    self.granted[count as usize].fetch_add(bytes, Ordering::Relaxed);
                    if let Some(w) = g.waiters.get_mut(&t) {
                        w.granted = true;
                        if t != ticket {
                            w.notify.notify_one();
                        }
                    }
                }
                Decision::Wait(d) => return Some(d.max(Duration::from_micros(100))),
                // Our ticket is neither granted nor queued: cannot happen while we hold it;
                // poll again soon rather than hang.
                Decision::Idle => return Some(Duration::from_millis(10)),
            }
        }
    }

    /// Bytes granted to `class` since start.
    pub fn granted_bytes(&self, class: Class) -> u64 {
        self.granted[class as usize].load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> ShaperStats {
        let slot = self.slot();
        let mut g = self.lock();
        let cfg = g.cfg.clone();
        let classes = CLASSES
            .iter()
            .map(|&c| ClassStats {
                class: c,
                share: cfg.classes[c as usize].share,
                guarantee_bytes_per_s: cfg.guarantee_bytes_per_s(c),
                ceil_bytes_per_s: cfg.classes[c as usize].ceil_bytes_per_s,
                rate_bytes_per_s: g.meters[c as usize].rate(slot),
                granted_bytes: self.granted_bytes(c),
                queued_bytes: g.sched.as_ref().map_or(0, |s| s.queued_bytes(c)),
                waiting_requests: self.waiting[c as usize].load(Ordering::Relaxed),
            })
            .collect();
        ShaperStats {
            link_bytes_per_s: cfg.link_bytes_per_s,
            burst_bytes: cfg.burst_bytes,
            classes,
        }
    }
}

/// A queued grant; dropping it before it is granted takes it out of the queue.
struct Ticket<'a> {
    shaper: &'a Shaper,
    ticket: u64,
    class: Class,
    done: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.shaper.waiting[self.class as usize].fetch_sub(1, Ordering::Relaxed);
        if self.done {
            return;
        }
        let mut g = self.shaper.lock();
        g.waiters.remove(&self.ticket);
        if let Some(s) = g.sched.as_mut() {
            s.cancel(self.ticket);
        }
    }
}

#[cfg(test)]
mod tests;
