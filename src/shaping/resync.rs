//! The adaptive resync rate, in the spirit of DRBD's dynamic resync controller (c-plan-ahead,
//! c-fill-target, c-min-rate, c-max-rate): resync fills the link while the application is idle
//! and yields to replication as soon as writes arrive.
//!
//! Resync answers and application writes share one ordered TCP connection (and the ordered
//! send queue in front of it), so a resync frame queued now delays every write queued after
//! it. Two mechanisms bound that:
//!
//! - **Fill target**: a resync answer is queued only while the send queue in front of it holds
//!   less than `fill-target` bytes (the kernel's unsent part is bounded separately by
//!   TCP_NOTSENT_LOWAT on replication sockets). An application write therefore waits behind at
//!   most about `fill-target` of resync data.
//! - **Rate**: every tick the controller estimates the replication rate (from the shaper's
//!   replication counter; it jumps up at once and decays over `plan-ahead`) and sets the resync
//!   rate to what the link leaves: `cap - 1.2 * replication`, at least `min-rate`, at most
//!   `cap` (= `max-rate`, or the link-rate). Decreases apply at once; increases ramp over
//!   `plan-ahead`, so a short pause in the writes does not flood the link with resync.
//!
//! Pacing charges a resync answer after it is queued (zero ranges cost nothing on the wire and
//! are free), and the next answer waits until that debt is paid, at most
//! [`RESYNC_ADMIT_WAIT_MS_MAX`]. The resync class's ceiling (`[shaping.class.resync] ceil`),
//! which the shaper alone cannot enforce because resync frames travel in the replication
//! connection, is a second, strict pacer: its wait is never cut short (the answers run in
//! their own task, so it delays no acks).
//! The policy here is pure (time is a parameter); [`ResyncGovernor`] is the daemon's instance
//! of it that the replication session calls.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Class, Shaper};
use crate::limits::{
    RESYNC_ADMIT_WAIT_MS_MAX, RESYNC_FILL_TARGET_BYTES_DEFAULT, RESYNC_MIN_RATE_DEFAULT,
    RESYNC_PLAN_AHEAD_MS_DEFAULT,
};

/// The controller's settings (`[shaping.resync]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResyncTuning {
    pub plan_ahead_ms: u64,
    pub fill_target_bytes: u64,
    pub min_rate_bytes_per_s: u64,
    /// `None`: the link-rate (or unlimited without one).
    pub max_rate_bytes_per_s: Option<u64>,
}

impl Default for ResyncTuning {
    fn default() -> Self {
        ResyncTuning {
            plan_ahead_ms: RESYNC_PLAN_AHEAD_MS_DEFAULT,
            fill_target_bytes: RESYNC_FILL_TARGET_BYTES_DEFAULT,
            min_rate_bytes_per_s: RESYNC_MIN_RATE_DEFAULT,
            max_rate_bytes_per_s: None,
        }
    }
}

/// The controller's state, for `shaping.get`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResyncStats {
    pub tuning: ResyncTuning,
    /// The current resync rate; `None`: unlimited (no link-rate, no max-rate).
    pub rate_bytes_per_s: Option<u64>,
    /// The replication rate the controller assumes.
    pub replication_estimate_bytes_per_s: u64,
}

/// The pure controller. Times are offsets from any fixed origin.
#[derive(Debug)]
pub struct ResyncController {
    tuning: ResyncTuning,
    rate: f64,
    repl_est: f64,
    last: Option<(Duration, u64)>,
    /// Pacing: when the bytes charged so far are paid off.
    next_free: Duration,
    cap: Option<u64>,
    /// The resync class's ceiling (`[shaping.class.resync] ceil`): the rate never exceeds it.
    class_ceil: Option<u64>,
    /// Strict pacing at `class_ceil`: when the bytes charged so far are paid off at it.
    ceil_next_free: Duration,
}

impl ResyncController {
    pub fn new(tuning: ResyncTuning) -> Self {
        let rate = tuning.min_rate_bytes_per_s as f64;
        ResyncController {
            tuning,
            rate,
            repl_est: 0.0,
            last: None,
            next_free: Duration::ZERO,
            cap: None,
            class_ceil: None,
            ceil_next_free: Duration::ZERO,
        }
    }

    pub fn set_tuning(&mut self, t: ResyncTuning) {
        self.tuning = t;
    }

    /// Set the resync class's ceiling (`None`: none). Resync frames travel inside the
    /// replication connection, which the shaper schedules as one flow, so the shaper cannot
    /// hold resync to its ceiling by itself: this controller paces it there.
    pub fn set_class_ceil(&mut self, ceil: Option<u64>) {
        self.class_ceil = ceil;
    }

    /// The resync rate cap: the smallest of max-rate, the link-rate and the resync class's
    /// ceiling; none when none is set.
    fn cap_for(&self, link: Option<u64>) -> Option<u64> {
        [self.tuning.max_rate_bytes_per_s, link, self.class_ceil]
            .into_iter()
            .flatten()
            .min()
    }

    /// Feed the time, the replication class's cumulative granted bytes and the link-rate;
    /// returns the resync rate (`None`: unlimited).
    pub fn update(&mut self, now: Duration, repl_granted: u64, link: Option<u64>) -> Option<u64> {
        let plan = Duration::from_millis(self.tuning.plan_ahead_ms.max(1)).as_secs_f64();
        let (t0, b0) = *self.last.get_or_insert((now, repl_granted));
        let dt = now.saturating_sub(t0).as_secs_f64();
        if dt >= 0.01 {
            let inst = repl_granted.saturating_sub(b0) as f64 / dt;
            // Up at once (yield fast), down over plan-ahead.
            self.repl_est = if inst >= self.repl_est {
                inst
            } else {
                self.repl_est + (inst - self.repl_est) * (dt / plan).min(1.0)
            };
            self.last = Some((now, repl_granted));
        }
        self.cap = self.cap_for(link);
        let cap = self.cap? as f64;
        let min = (self.tuning.min_rate_bytes_per_s as f64).min(cap);
        let target = (cap - 1.2 * self.repl_est).clamp(min, cap);
        if target < self.rate {
            self.rate = target;
        } else if dt >= 0.01 {
            // Ramp up over plan-ahead (at least 5% of the cap per step, so it gets there).
            let step = ((target - self.rate) * (dt / plan).min(1.0))
                .max(cap * 0.05 * (dt / plan).min(1.0));
            self.rate = (self.rate + step).min(target);
        }
        Some(self.rate as u64)
    }

    /// Whether a resync answer may be queued behind `queued` bytes (the first always may).
    pub fn fill_allows(&self, queued: u64) -> bool {
        queued < self.tuning.fill_target_bytes
    }

    /// How long until paced resync may go on (zero: now).
    pub fn pacing_wait(&self, now: Duration) -> Duration {
        if self.cap.is_none() {
            return Duration::ZERO;
        }
        self.next_free.saturating_sub(now)
    }

    /// How long until the resync class's ceiling allows more (zero: now, or no ceiling).
    /// Unlike [`Self::pacing_wait`], a hard limit: [`admit`] always waits it out.
    pub fn ceiling_wait(&self, now: Duration) -> Duration {
        if self.class_ceil.is_none() {
            return Duration::ZERO;
        }
        self.ceil_next_free.saturating_sub(now)
    }

    /// Charge `bytes` of resync data queued at `now`.
    pub fn charge(&mut self, now: Duration, bytes: u64) {
        if let Some(ceil) = self.class_ceil.filter(|c| *c > 0) {
            let start = self.ceil_next_free.max(now);
            self.ceil_next_free = start + Duration::from_secs_f64(bytes as f64 / ceil as f64);
        }
        if self.cap.is_none() || self.rate < 1.0 {
            return;
        }
        // No credit is kept for idle time, so a pause does not turn into a burst.
        let start = self.next_free.max(now);
        self.next_free = start + Duration::from_secs_f64(bytes as f64 / self.rate);
    }

    pub fn stats(&self) -> ResyncStats {
        ResyncStats {
            tuning: self.tuning.clone(),
            rate_bytes_per_s: self.cap.map(|_| self.rate as u64),
            replication_estimate_bytes_per_s: self.repl_est as u64,
        }
    }
}

struct State {
    ctl: ResyncController,
    epoch: Instant,
}

/// One daemon's resync controller, over its shaper: every replicated resource of the daemon
/// asks it before queueing a resync answer ([`ResyncGovernor::admit`]) and charges it after
/// ([`ResyncGovernor::sent`]). Made by [`super::NodeShaping`], passed in; no process-wide state.
pub struct ResyncGovernor {
    shaper: Arc<Shaper>,
    state: Mutex<State>,
}

impl ResyncGovernor {
    pub fn new(shaper: Arc<Shaper>, tuning: ResyncTuning) -> Self {
        ResyncGovernor {
            shaper,
            state: Mutex::new(State {
                ctl: ResyncController::new(tuning),
                epoch: Instant::now(),
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut ResyncController, Duration) -> T) -> T {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = g.epoch.elapsed();
        let cfg = self.shaper.config();
        let (repl, link) = (
            self.shaper.granted_bytes(Class::Replication),
            cfg.link_bytes_per_s,
        );
        g.ctl
            .set_class_ceil(cfg.classes[Class::Resync as usize].ceil_bytes_per_s);
        g.ctl.update(now, repl, link);
        f(&mut g.ctl, now)
    }

    /// Set the tuning (from `[shaping.resync]`, at start and on `adjust`).
    pub fn set_tuning(&self, t: ResyncTuning) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ctl
            .set_tuning(t);
    }

    pub fn stats(&self) -> ResyncStats {
        self.with(|c, _| c.stats())
    }

    /// Wait until a resync answer may be queued: the send queue (`queued()` bytes) is below
    /// the fill target and the adaptive pacing debt is paid, for at most
    /// [`RESYNC_ADMIT_WAIT_MS_MAX`] (resync never stalls completely); then, always, until the
    /// resync class's ceiling allows it (a hard limit, bounded by one answer at the ceiling;
    /// the answers run in their own task, so this wait delays no acks).
    pub async fn admit(&self, queued: impl Fn() -> u64) {
        let deadline = Instant::now() + Duration::from_millis(RESYNC_ADMIT_WAIT_MS_MAX);
        loop {
            let q = queued();
            let (wait, ceiling) = self.with(|c, now| {
                let w = if c.fill_allows(q) {
                    c.pacing_wait(now)
                } else {
                    Duration::from_millis(5).max(c.pacing_wait(now))
                };
                (w, c.ceiling_wait(now))
            });
            let soft_done = wait.is_zero() || Instant::now() >= deadline;
            if soft_done && ceiling.is_zero() {
                return;
            }
            let w = if soft_done {
                ceiling
            } else {
                wait.max(ceiling)
            };
            tokio::time::sleep(w.min(Duration::from_millis(50))).await;
        }
    }

    /// Charge `bytes` of resync data that were just queued.
    pub fn sent(&self, bytes: u64) {
        self.with(|c, now| c.charge(now, bytes))
    }
}

#[cfg(test)]
mod tests;
