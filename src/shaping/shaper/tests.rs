//! Shaper tests on the real clock (governor's quanta clock and tokio timers), with short runs
//! and tolerances wide enough for a loaded 2-core machine.

use super::*;

const KIB: u64 = 1024;

fn capped(link: u64, shares: [u32; 4]) -> ShapingConfig {
    ShapingConfig {
        link_bytes_per_s: Some(link),
        burst_bytes: 64 * KIB,
        classes: shares.map(|share| ClassConfig {
            share,
            ceil_bytes_per_s: None,
        }),
    }
}

#[test]
fn meter_counts_the_complete_slots_of_the_window() {
    let mut m = Meter::default();
    for slot in 0..8 {
        m.add(slot, 1000);
    }
    // Slots 1..7 complete (the first was overwritten), 7 slots of 1000 bytes over 1.75 s.
    assert_eq!(m.rate(8), 7000 * 1000 / 1750);
    // Idle for longer than the window: zero.
    assert_eq!(m.rate(100), 0);
}

#[tokio::test]
async fn without_a_link_rate_it_only_counts() {
    let s = Shaper::new(ShapingConfig::default());
    let t0 = Instant::now();
    for _ in 0..100 {
        s.acquire(Class::Snapshot, 10 << 20).await;
    }
    assert!(t0.elapsed() < Duration::from_millis(2000));
    assert_eq!(s.granted_bytes(Class::Snapshot), 1000 << 20);
    let st = s.stats();
    assert!(
        st.classes[Class::Snapshot as usize].rate_bytes_per_s > 0
            || t0.elapsed() < Duration::from_millis(250)
    );
    assert_eq!(st.classes[Class::Replication as usize].granted_bytes, 0);
}

#[tokio::test]
async fn a_large_request_is_split_and_takes_its_time_at_the_cap() {
    let s = Shaper::new(capped(4 << 20, [50, 25, 15, 10]));
    let t0 = Instant::now();
    // The first 64 KiB are the burst; the other 2 MiB - 64 KiB take ~0.48 s at 4 MiB/s.
    s.acquire(Class::Image, 2 << 20).await;
    let e = t0.elapsed();
    assert!(
        e >= Duration::from_millis(400),
        "2 MiB at 4 MiB/s took only {e:?}"
    );
    assert!(
        // Upper bound loose: on a loaded machine the tasks run late; the cap is the lower one.
        e <= Duration::from_millis(3000),
        "2 MiB at 4 MiB/s took {e:?}"
    );
    assert_eq!(s.granted_bytes(Class::Image), 2 << 20);
}

/// Two classes keep a backlog for `secs`; returns the bytes each got.
async fn contend(s: &Arc<Shaper>, a: Class, b: Class, secs: f64) -> (u64, u64) {
    let (a0, b0) = (s.granted_bytes(a), s.granted_bytes(b));
    let mut tasks = Vec::new();
    for c in [a, a, b, b] {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs_f64(secs);
            while Instant::now() < end {
                s.acquire(c, 32 * KIB).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (s.granted_bytes(a) - a0, s.granted_bytes(b) - b0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_split_the_link_and_change_live() {
    let link = 8 << 20;
    let s = Arc::new(Shaper::new(capped(link, [75, 1, 1, 25])));
    let (r, i) = contend(&s, Class::Replication, Class::Image, 1.0).await;
    let ratio = r as f64 / i as f64;
    assert!(
        // A wall-clock run on a shared 2-core machine: tasks that are not polled in time leave
        // their class idle for a moment and the other borrows, pulling the split towards
        // 1:1. The exact split and the full use of the link are checked on a fake clock in
        // sched/tests.rs; here only that the live shaper's shares steer the split, and the
        // cap (which a late task can only make safer).
        ratio > 1.2 && ratio <= 4.5,
        "75:25 shares gave {r} : {i} bytes (ratio {ratio:.2})"
    );
    let total = (r + i) as f64;
    assert!(
        total <= link as f64 * 1.15 + 64.0 * 1024.0,
        "cap exceeded: {total} bytes in 1 s at {link} B/s"
    );
    assert!(total > 0.0, "nothing granted in 1 s");

    // Reconfigure under load: swap the shares.
    s.set_config(capped(link, [25, 1, 1, 75]));
    let (r, i) = contend(&s, Class::Replication, Class::Image, 1.0).await;
    let ratio = i as f64 / r as f64;
    assert!(
        // As above: the swap must steer the split the other way.
        ratio > 1.2 && ratio <= 4.5,
        "25:75 shares gave {r} : {i} bytes (ratio {ratio:.2})"
    );
}

#[tokio::test]
async fn a_dropped_acquire_leaves_the_queue() {
    let s = Shaper::new(capped(64 * KIB, [50, 25, 15, 10]));
    s.acquire(Class::Snapshot, 64 * KIB).await; // the whole burst
    let r = tokio::time::timeout(
        Duration::from_millis(50),
        s.acquire(Class::Snapshot, 64 * KIB),
    )
    .await;
    assert!(
        r.is_err(),
        "the link was empty, the second grant must wait ~1 s"
    );
    let st = s.stats();
    assert_eq!(st.classes[Class::Snapshot as usize].waiting_requests, 0);
    assert!(s.lock().waiters.is_empty());
    // The cancelled request is out of the queue; a replication grant is not behind it for
    // longer than one committed request.
    let t0 = Instant::now();
    s.acquire(Class::Replication, 1024).await;
    assert!(t0.elapsed() < Duration::from_millis(2100));
}

#[tokio::test]
async fn switching_to_counting_only_releases_waiters() {
    let s = Arc::new(Shaper::new(capped(64 * KIB, [50, 25, 15, 10])));
    let s2 = s.clone();
    let t0 = Instant::now();
    let h = tokio::spawn(async move { s2.acquire(Class::Resync, 4 << 20).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !h.is_finished(),
        "4 MiB at 64 KiB/s cannot be done in 100 ms"
    );
    s.set_config(ShapingConfig::default());
    tokio::time::timeout(Duration::from_secs(1), h)
        .await
        .expect("released")
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_smaller_burst_under_load_does_not_break_queued_requests() {
    let s = Arc::new(Shaper::new(ShapingConfig {
        burst_bytes: 1 << 20,
        ..capped(2 << 20, [50, 25, 15, 10])
    }));
    let mut hs = Vec::new();
    for _ in 0..4 {
        let s = s.clone();
        hs.push(tokio::spawn(async move {
            s.acquire(Class::Image, 1 << 20).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.set_config(capped(8 << 20, [50, 25, 15, 10]));
    for h in hs {
        tokio::time::timeout(Duration::from_secs(3), h)
            .await
            .expect("granted")
            .unwrap();
    }
}
