//! The resync controller on virtual time: it fills an idle link, yields to replication at once,
//! keeps its minimum under full load, ramps back over plan-ahead, paces what it charges, and
//! keeps at most the fill target queued in front of application writes.

use super::*;

const LINK: u64 = 12_500_000; // 100 Mbit

fn tuning() -> ResyncTuning {
    ResyncTuning {
        plan_ahead_ms: 2_000,
        fill_target_bytes: 2 << 20,
        min_rate_bytes_per_s: 250 * 1024,
        max_rate_bytes_per_s: None,
    }
}

/// Run the controller for `secs` with replication at `repl_rate`, 100 ms ticks; returns the
/// last rate.
fn run(
    c: &mut ResyncController,
    t: &mut Duration,
    repl: &mut u64,
    repl_rate: u64,
    secs: f64,
) -> u64 {
    let end = *t + Duration::from_secs_f64(secs);
    let mut r = 0;
    while *t < end {
        *t += Duration::from_millis(100);
        *repl += repl_rate / 10;
        r = c.update(*t, *repl, Some(LINK)).unwrap();
    }
    r
}

#[test]
fn fills_an_idle_link_and_yields_to_writes_at_once() {
    let mut c = ResyncController::new(tuning());
    let (mut t, mut repl) = (Duration::ZERO, 0);
    // Idle application: resync ramps to the link-rate within a few plan-aheads.
    let r = run(&mut c, &mut t, &mut repl, 0, 8.0);
    assert!(r as f64 >= LINK as f64 * 0.95, "idle link: resync rate {r}");
    // Writes at 60% of the link arrive: within one tick resync leaves them room.
    let r = run(&mut c, &mut t, &mut repl, LINK * 6 / 10, 0.1);
    assert!(
        r <= LINK - LINK * 6 / 10,
        "writes at 60%: resync still at {r}"
    );
    assert!(
        r as f64 >= LINK as f64 * 0.2,
        "writes at 60%: resync dropped too far, to {r}"
    );
    // The link full of writes: resync keeps its minimum (it never stops).
    let r = run(&mut c, &mut t, &mut repl, LINK, 2.0);
    assert_eq!(r, 250 * 1024);
    // Writes stop: resync does not jump back at once, it ramps over plan-ahead.
    let r1 = run(&mut c, &mut t, &mut repl, 0, 0.3);
    assert!(
        r1 < LINK / 2,
        "resync jumped to {r1} 0.3 s after writes stopped"
    );
    let r2 = run(&mut c, &mut t, &mut repl, 0, 10.0);
    assert!(
        r2 as f64 >= LINK as f64 * 0.95,
        "resync did not recover: {r2}"
    );
}

#[test]
fn max_rate_caps_and_no_link_rate_means_unlimited() {
    let mut c = ResyncController::new(ResyncTuning {
        max_rate_bytes_per_s: Some(1_000_000),
        ..tuning()
    });
    let (mut t, mut repl) = (Duration::ZERO, 0);
    assert_eq!(run(&mut c, &mut t, &mut repl, 0, 10.0), 1_000_000);
    let mut c = ResyncController::new(tuning());
    assert_eq!(c.update(Duration::from_secs(1), 0, None), None);
    c.charge(Duration::from_secs(1), 1 << 30);
    assert_eq!(c.pacing_wait(Duration::from_secs(1)), Duration::ZERO);
}

#[test]
fn pacing_holds_the_rate_and_keeps_no_credit_for_idle_time() {
    let mut c = ResyncController::new(ResyncTuning {
        max_rate_bytes_per_s: Some(4 << 20),
        ..tuning()
    });
    let (mut t, mut repl) = (Duration::ZERO, 0);
    run(&mut c, &mut t, &mut repl, 0, 10.0);
    // Send 1 MiB answers as fast as pacing allows for 10 virtual seconds.
    let rate = paced_rate(&mut c, &mut t, repl);
    assert!(
        (rate - (4 << 20) as f64).abs() <= (4 << 20) as f64 * 0.11,
        "paced at {rate} B/s, want 4 MiB/s"
    );
    // A long pause, then a burst of answers: the second already waits.
    t += Duration::from_secs(30);
    c.update(t, repl, Some(LINK));
    assert!(c.pacing_wait(t).is_zero());
    c.charge(t, 1 << 20);
    assert!(
        c.pacing_wait(t) >= Duration::from_millis(200),
        "{:?}",
        c.pacing_wait(t)
    );
}

#[test]
fn fill_target_bounds_what_waits_in_front_of_writes() {
    let c = ResyncController::new(tuning());
    assert!(c.fill_allows(0));
    assert!(c.fill_allows((2 << 20) - 1));
    assert!(!c.fill_allows(2 << 20));
}

/// `[shaping.class.resync] ceil` holds: resync traffic rides inside the replication flow, so
/// the controller itself paces it to the class ceiling (it ran at 5x the ceiling before).
#[test]
fn the_resync_class_ceiling_caps_the_paced_rate() {
    let ceil = 5_000_000; // 40 Mbit
    let mut c = ResyncController::new(tuning());
    c.set_class_ceil(Some(ceil));
    let (mut t, mut repl) = (Duration::ZERO, 0);
    let r = run(&mut c, &mut t, &mut repl, 0, 10.0);
    assert!(r <= ceil, "rate {r} above the ceiling {ceil}");
    let rate = paced_rate(&mut c, &mut t, repl);
    assert!(c.ceiling_wait(t) > Duration::ZERO || rate > 0.0);
    assert!(
        rate <= ceil as f64 * 1.1 && rate >= ceil as f64 * 0.85,
        "paced at {rate} B/s, ceiling {ceil}"
    );
    // Without a link-rate, the ceiling alone caps it.
    let mut c = ResyncController::new(tuning());
    c.set_class_ceil(Some(ceil));
    assert_eq!(
        c.update(Duration::from_secs(1), 0, None).map(|r| r <= ceil),
        Some(true)
    );
}

/// Send 1 MiB answers as fast as pacing allows for 10 virtual seconds; the rate they got.
fn paced_rate(c: &mut ResyncController, t: &mut Duration, repl: u64) -> f64 {
    let start = *t;
    let mut sent = 0u64;
    while *t < start + Duration::from_secs(10) {
        let w = c.pacing_wait(*t);
        if w.is_zero() {
            c.charge(*t, 1 << 20);
            sent += 1 << 20;
        } else {
            *t += w;
        }
        c.update(*t, repl, Some(LINK));
    }
    sent as f64 / 10.0
}
