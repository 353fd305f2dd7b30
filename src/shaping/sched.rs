//! The shaping policy, without sockets or timers: who may send how many bytes, and when.
//!
//! - **Link cap**: one GCRA limiter (governor) over all classes, `link-rate` with a burst.
//! - **Shares**: start-time fair queueing (SFQ) over the backlogged classes, weighted by each
//!   class's `share`. A backlogged class gets at least `share / sum(shares)` of the link; a class
//!   with nothing to send leaves its share to the others (work-conserving, like HTB's borrowing).
//!   Every share is at least 1, so no class starves.
//! - **Priority within the share**: ties in virtual time go to the higher class (replication
//!   first), and a class that was idle starts at the current virtual time, so a replication
//!   write arriving on a busy link is served next rather than after a backlog.
//! - **Ceilings**: an optional per-class limiter; a class over its ceiling is skipped until it
//!   conforms again.
//!
//! A request of a class without a ceiling is granted when the link allows it and not committed
//! before: a request that arrives while the link refills competes on its start tag (a sender
//! with one request at a time, like the replication writer, would otherwise lose every turn to
//! a class with many queued requests). A class with a ceiling is committed once its ceiling is
//! charged (governor has no "peek"; committing keeps the ceiling from being charged for a
//! request that is not sent), at the cost of at most one request of latency for a class
//! arriving meanwhile.
//!
//! Grants are counted in cells of [`CELL_BYTES`] so that integer nanosecond periods stay exact
//! to a few parts in ten thousand at WAN rates.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::{Class, CLASSES};

/// Bytes per limiter cell.
pub const CELL_BYTES: u64 = 256;

#[derive(Clone, Debug, PartialEq)]
pub struct ClassParams {
    /// Relative guaranteed share (the guarantee is share / sum of shares of the link).
    pub share: u32,
    /// Optional ceiling in bytes per second.
    pub ceil_bytes_per_s: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub link_bytes_per_s: u64,
    pub burst_bytes: u64,
    pub classes: [ClassParams; 4],
}

impl Params {
    /// The guaranteed rate of `class` in bytes per second.
    pub fn guarantee_bytes_per_s(&self, class: Class) -> u64 {
        let total: u64 = self.classes.iter().map(|c| u64::from(c.share)).sum();
        self.link_bytes_per_s * u64::from(self.classes[class as usize].share) / total.max(1)
    }

    /// The largest single grant: a request larger than this must be split by the caller.
    ///
    /// A quarter of the burst: the bucket then keeps credit for the waiter's timer slack
    /// (tokio sleeps in whole milliseconds). With grants as large as the burst, every grant
    /// waits for an empty bucket to refill exactly, and each millisecond of oversleep is lost
    /// link time (measured: 12% of a 64 Mbit link with a 64 KiB burst).
    pub fn grant_bytes_max(&self) -> u64 {
        grant_bytes_max(self.burst_bytes)
    }
}

/// The largest grant for a burst of `burst_bytes` (see [`Params::grant_bytes_max`]).
pub fn grant_bytes_max(burst_bytes: u64) -> u64 {
    (burst_bytes / 4).max(CELL_BYTES)
}

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

fn limiter<C: Clock + Clone>(bytes_per_s: u64, burst_bytes: u64, clock: &C) -> Limiter<C> {
    let cells_per_s = (bytes_per_s / CELL_BYTES).max(1);
    let period = Duration::from_nanos((1_000_000_000 / cells_per_s).max(1));
    let burst =
        NonZeroU32::new((burst_bytes.div_ceil(CELL_BYTES)).clamp(1, u64::from(u32::MAX)) as u32)
            .expect("non-zero");
    let quota = Quota::with_period(period)
        .expect("non-zero period")
        .allow_burst(burst);
    RateLimiter::direct_with_clock(quota, clock.clone())
}

fn cells(bytes: u64) -> NonZeroU32 {
    NonZeroU32::new(bytes.div_ceil(CELL_BYTES).clamp(1, u64::from(u32::MAX)) as u32)
        .expect("non-zero")
}

/// What `poll` decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send now: the request `ticket` of `class` for `bytes`.
    Grant {
        ticket: u64,
        class: Class,
        bytes: u64,
    },
    /// Nothing may go before this much time has passed.
    Wait(Duration),
    /// Nothing is queued.
    Idle,
}

struct ClassState<C: Clock + Clone> {
    queue: VecDeque<(u64, u64)>,
    /// SFQ start tag of the head request, in virtual bytes.
    start: f64,
    /// SFQ finish tag of the last request served.
    finish: f64,
    ceil: Option<Limiter<C>>,
    granted_bytes: u64,
    queued_bytes: u64,
}

pub struct Scheduler<C: Clock + Clone> {
    params: Params,
    clock: C,
    link: Limiter<C>,
    classes: Vec<ClassState<C>>,
    vtime: f64,
    committed: Option<(Class, u64, u64)>,
}

impl<C: Clock + Clone> Scheduler<C> {
    pub fn new(params: Params, clock: C) -> Self {
        let link = limiter(params.link_bytes_per_s, params.burst_bytes, &clock);
        let classes = CLASSES
            .iter()
            .map(|&c| ClassState {
                queue: VecDeque::new(),
                start: 0.0,
                finish: 0.0,
                ceil: params.classes[c as usize]
                    .ceil_bytes_per_s
                    .map(|r| limiter(r, params.burst_bytes, &clock)),
                granted_bytes: 0,
                queued_bytes: 0,
            })
            .collect();
        Scheduler {
            params,
            clock,
            link,
            classes,
            vtime: 0.0,
            committed: None,
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Change rates and shares under load: queues and fairness state are kept, limiters restart.
    pub fn set_params(&mut self, params: Params) {
        self.link = limiter(params.link_bytes_per_s, params.burst_bytes, &self.clock);
        for &c in &CLASSES {
            self.classes[c as usize].ceil = params.classes[c as usize]
                .ceil_bytes_per_s
                .map(|r| limiter(r, params.burst_bytes, &self.clock));
        }
        // A smaller burst: queued and committed requests must still fit the new limiters.
        let max = params.grant_bytes_max().max(1);
        for cs in &mut self.classes {
            for (_, b) in cs.queue.iter_mut() {
                if *b > max {
                    cs.queued_bytes -= *b - max;
                    *b = max;
                }
            }
        }
        if let Some((_, _, b)) = self.committed.as_mut() {
            *b = (*b).min(max);
        }
        self.params = params;
    }

    /// Queue a request of `bytes` (at most `grant_bytes_max`; larger ones are clamped: the
    /// caller splits its sends to that size).
    pub fn enqueue(&mut self, class: Class, bytes: u64, ticket: u64) {
        let bytes = bytes.clamp(1, self.params.grant_bytes_max());
        let cs = &mut self.classes[class as usize];
        if cs.queue.is_empty() {
            cs.start = cs.finish.max(self.vtime);
        }
        cs.queue.push_back((ticket, bytes));
        cs.queued_bytes += bytes;
    }

    /// Forget a queued request (its sender went away). Returns whether it was queued.
    pub fn cancel(&mut self, ticket: u64) -> bool {
        if matches!(self.committed, Some((_, t, _)) if t == ticket) {
            // Already charged to its ceiling: still let it go through the link accounting.
            return false;
        }
        for cs in &mut self.classes {
            if let Some(i) = cs.queue.iter().position(|&(t, _)| t == ticket) {
                let (_, b) = cs.queue.remove(i).expect("present");
                cs.queued_bytes -= b;
                return true;
            }
        }
        false
    }

    pub fn poll(&mut self) -> Decision {
        if self.committed.is_none() {
            match self.pick() {
                Ok(None) => {}
                Ok(Some(grant)) => return grant,
                Err(d) => return d,
            }
        }
        let (class, ticket, bytes) = self.committed.expect("committed");
        match self.link.check_n(cells(bytes)) {
            Ok(Ok(())) => {
                self.committed = None;
                self.classes[class as usize].granted_bytes += bytes;
                Decision::Grant {
                    ticket,
                    class,
                    bytes,
                }
            }
            Ok(Err(not_until)) => Decision::Wait(not_until.wait_time_from(self.clock.now())),
            Err(_) => unreachable!("requests are clamped to the burst"),
        }
    }

    /// Serve the next request: the backlogged, under-ceiling class with the smallest start tag
    /// (ties: the higher class). A class without a ceiling is granted at once if the link
    /// allows, and otherwise nothing is committed (`Err(Wait)`), so that a request arriving
    /// meanwhile with a smaller start tag still goes first: a sender with one request at a
    /// time (the replication writer) keeps its share. A class with a ceiling is committed
    /// (`Ok(None)`) once its ceiling is charged.
    fn pick(&mut self) -> Result<Option<Decision>, Decision> {
        let mut order: Vec<Class> = CLASSES
            .iter()
            .copied()
            .filter(|&c| !self.classes[c as usize].queue.is_empty())
            .collect();
        if order.is_empty() {
            return Err(Decision::Idle);
        }
        order.sort_by(|a, b| {
            let (sa, sb) = (
                self.classes[*a as usize].start,
                self.classes[*b as usize].start,
            );
            sa.partial_cmp(&sb)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then((*a as usize).cmp(&(*b as usize)))
        });
        let now = self.clock.now();
        let mut wait: Option<Duration> = None;
        for c in order {
            let cs = &mut self.classes[c as usize];
            let (ticket, bytes) = *cs.queue.front().expect("backlogged");
            let direct = match &cs.ceil {
                Some(ceil) => {
                    if let Ok(Err(nu)) = ceil.check_n(cells(bytes)) {
                        let w = nu.wait_time_from(now);
                        wait = Some(wait.map_or(w, |x: Duration| x.min(w)));
                        continue;
                    }
                    false
                }
                None => match self.link.check_n(cells(bytes)) {
                    Ok(Ok(())) => true,
                    Ok(Err(nu)) => return Err(Decision::Wait(nu.wait_time_from(now))),
                    Err(_) => unreachable!("requests are clamped to the burst"),
                },
            };
            cs.queue.pop_front();
            cs.queued_bytes -= bytes;
            self.vtime = cs.start;
            cs.finish =
                cs.start + bytes as f64 / f64::from(self.params.classes[c as usize].share.max(1));
            cs.start = cs.finish;
            if direct {
                cs.granted_bytes += bytes;
                return Ok(Some(Decision::Grant {
                    ticket,
                    class: c,
                    bytes,
                }));
            }
            self.committed = Some((c, ticket, bytes));
            return Ok(None);
        }
        Err(Decision::Wait(wait.unwrap_or(Duration::from_millis(1))))
    }

    /// Bytes granted to `class` so far.
    pub fn granted_bytes(&self, class: Class) -> u64 {
        self.classes[class as usize].granted_bytes
    }

    /// Bytes waiting in `class`'s queue.
    pub fn queued_bytes(&self, class: Class) -> u64 {
        self.classes[class as usize].queued_bytes
    }
}

#[cfg(test)]
mod tests;
