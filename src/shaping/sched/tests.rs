//! Scheduler tests on a fake clock: shares under contention, borrowing, no starvation, cap
//! accuracy over time, ceilings, reconfiguration under load, replication latency.

use super::*;
use governor::clock::FakeRelativeClock;

const MBIT: u64 = 1_000_000 / 8;

fn params(link_mbit: u64, shares: [u32; 4]) -> Params {
    Params {
        link_bytes_per_s: link_mbit * MBIT,
        burst_bytes: 64 * 1024,
        classes: shares.map(|share| ClassParams {
            share,
            ceil_bytes_per_s: None,
        }),
    }
}

/// Drive the scheduler for `secs` of virtual time. `demand[c]` says whether class c keeps a
/// backlog (re-queues a request of `req` bytes whenever it has fewer than 4 queued).
/// Returns bytes granted per class.
struct Sim {
    clock: FakeRelativeClock,
    s: Scheduler<FakeRelativeClock>,
    ticket: u64,
    elapsed: Duration,
}

impl Sim {
    fn new(p: Params) -> Sim {
        let clock = FakeRelativeClock::default();
        Sim {
            s: Scheduler::new(p, clock.clone()),
            clock,
            ticket: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn run(&mut self, secs: f64, demand: [bool; 4], req: u64) -> [u64; 4] {
        let before: Vec<u64> = CLASSES.iter().map(|&c| self.s.granted_bytes(c)).collect();
        let end = self.elapsed + Duration::from_secs_f64(secs);
        while self.elapsed < end {
            for &c in &CLASSES {
                while demand[c as usize] && self.s.queued_bytes(c) < 4 * req {
                    self.ticket += 1;
                    self.s.enqueue(c, req, self.ticket);
                }
            }
            match self.s.poll() {
                Decision::Grant { .. } => {}
                Decision::Wait(d) => self.advance(d.max(Duration::from_nanos(1))),
                Decision::Idle => self.advance(Duration::from_millis(1)),
            }
        }
        let mut out = [0; 4];
        for &c in &CLASSES {
            out[c as usize] = self.s.granted_bytes(c) - before[c as usize];
        }
        out
    }

    fn advance(&mut self, d: Duration) {
        self.clock.advance(d);
        self.elapsed += d;
    }
}

fn rate(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs
}

#[test]
fn link_cap_is_accurate_over_time() {
    for mbit in [50, 100, 500] {
        let mut sim = Sim::new(params(mbit, [50, 25, 15, 10]));
        sim.run(1.0, [true, false, false, false], 64 * 1024); // past the initial burst
        let got = sim.run(10.0, [true, false, false, false], 64 * 1024);
        let r = rate(got.iter().sum(), 10.0) / (mbit * MBIT) as f64;
        assert!((0.99..=1.01).contains(&r), "{mbit} Mbit: rate ratio {r}");
    }
}

#[test]
fn shares_hold_under_full_contention() {
    let p = params(100, [50, 25, 15, 10]);
    let mut sim = Sim::new(p.clone());
    sim.run(1.0, [true; 4], 32 * 1024);
    let got = sim.run(20.0, [true; 4], 32 * 1024);
    for &c in &CLASSES {
        let want = p.guarantee_bytes_per_s(c) as f64;
        let r = rate(got[c as usize], 20.0) / want;
        assert!((0.95..=1.05).contains(&r), "{c:?}: {r} of its guarantee");
    }
}

#[test]
fn idle_classes_lend_their_share() {
    let p = params(100, [50, 25, 15, 10]);
    let mut sim = Sim::new(p.clone());
    sim.run(1.0, [false, true, false, true], 32 * 1024);
    let got = sim.run(10.0, [false, true, false, true], 32 * 1024);
    let total = rate(got.iter().sum(), 10.0) / p.link_bytes_per_s as f64;
    assert!(
        total > 0.98,
        "work-conserving: the link is used fully ({total})"
    );
    let ratio = got[Class::Resync as usize] as f64 / got[Class::Image as usize] as f64;
    assert!(
        (2.3..=2.7).contains(&ratio),
        "borrowed bandwidth split by share 25:10, got {ratio}"
    );
}

#[test]
fn tiny_share_never_starves() {
    let mut sim = Sim::new(params(100, [1000, 1000, 1000, 1]));
    let got = sim.run(10.0, [true; 4], 16 * 1024);
    let image = got[Class::Image as usize];
    let want = 100 * MBIT * 10 / 3001;
    assert!(
        image as f64 >= want as f64 * 0.8,
        "image got {image} bytes, guarantee {want}"
    );
}

#[test]
fn ceiling_caps_a_class_and_others_take_the_rest() {
    let mut p = params(100, [50, 25, 15, 10]);
    p.classes[Class::Resync as usize].ceil_bytes_per_s = Some(10 * MBIT);
    let mut sim = Sim::new(p);
    sim.run(1.0, [false, true, false, true], 32 * 1024);
    let got = sim.run(10.0, [false, true, false, true], 32 * 1024);
    let resync = rate(got[Class::Resync as usize], 10.0) / (10 * MBIT) as f64;
    assert!(
        (0.95..=1.02).contains(&resync),
        "resync at {resync} of its ceiling"
    );
    let total = rate(got.iter().sum(), 10.0) / (100 * MBIT) as f64;
    assert!(
        total > 0.97,
        "image borrows what resync may not use ({total})"
    );
}

#[test]
fn reconfiguration_under_load_takes_effect() {
    let mut sim = Sim::new(params(100, [50, 25, 15, 10]));
    sim.run(2.0, [true; 4], 32 * 1024);
    sim.s.set_params(params(20, [10, 10, 10, 70]));
    sim.run(0.5, [true; 4], 32 * 1024);
    let got = sim.run(10.0, [true; 4], 32 * 1024);
    let total = rate(got.iter().sum(), 10.0) / (20 * MBIT) as f64;
    assert!((0.98..=1.02).contains(&total), "new link rate ({total})");
    let image = got[Class::Image as usize] as f64 / got.iter().sum::<u64>() as f64;
    assert!((0.66..=0.74).contains(&image), "new shares ({image})");
}

#[test]
fn replication_arriving_on_a_busy_link_goes_next() {
    let mut sim = Sim::new(params(50, [50, 25, 15, 10]));
    sim.run(2.0, [false, true, true, true], 64 * 1024);
    // One replication write arrives: at most the committed request is ahead of it.
    sim.ticket += 1;
    let t = sim.ticket;
    sim.s.enqueue(Class::Replication, 4096, t);
    let mut grants_before = 0;
    loop {
        match sim.s.poll() {
            Decision::Grant { ticket, .. } if ticket == t => break,
            Decision::Grant { .. } => grants_before += 1,
            Decision::Wait(d) => sim.advance(d),
            Decision::Idle => panic!("replication request lost"),
        }
    }
    assert!(
        grants_before <= 1,
        "{grants_before} requests went before the replication write"
    );
}

#[test]
fn cancelled_requests_are_not_granted() {
    let mut sim = Sim::new(params(100, [50, 25, 15, 10]));
    sim.s.enqueue(Class::Snapshot, 1000, 1);
    sim.s.enqueue(Class::Snapshot, 1000, 2);
    assert!(sim.s.cancel(2));
    assert!(matches!(sim.s.poll(), Decision::Grant { ticket: 1, .. }));
    assert_eq!(sim.s.poll(), Decision::Idle);
}

/// The replication writer has one request queued at a time and queues the next only after
/// its grant was handed out (and the scheduler already polled again for the others). It must
/// still get its share against a class with many queued requests.
#[test]
fn a_sender_with_one_request_at_a_time_keeps_its_share() {
    let mut sim = Sim::new(params(64, [75, 1, 1, 25]));
    let req = 16 * 1024;
    let mut repl_queued = false;
    let end = Duration::from_secs(10);
    while sim.elapsed < end {
        if !repl_queued {
            sim.ticket += 1;
            sim.s.enqueue(Class::Replication, req, sim.ticket);
            repl_queued = true;
        }
        while sim.s.queued_bytes(Class::Image) < 8 * req {
            sim.ticket += 1;
            sim.s.enqueue(Class::Image, req, sim.ticket);
        }
        match sim.s.poll() {
            Decision::Grant { class, .. } => {
                if class == Class::Replication {
                    repl_queued = false;
                    // The drive loop polls again before the writer is back.
                    if let Decision::Wait(d) = sim.s.poll() {
                        sim.advance(d.max(Duration::from_nanos(1)));
                    }
                }
            }
            Decision::Wait(d) => sim.advance(d.max(Duration::from_nanos(1))),
            Decision::Idle => sim.advance(Duration::from_millis(1)),
        }
    }
    let (r, i) = (
        sim.s.granted_bytes(Class::Replication) as f64,
        sim.s.granted_bytes(Class::Image) as f64,
    );
    let frac = r / (r + i);
    assert!(
        (0.70..=0.80).contains(&frac),
        "replication got {:.1}% with a 75% share",
        frac * 100.0
    );
}
