//! Miss counting or phi accrual? The measurement behind the choice in ARCHITECTURE.md
//! ("Site-failure detection").
//!
//! A prober sends an authenticated probe (drl's real datagram and HMAC) every 100 ms over
//! loopback to a responder thread, for `SECS` seconds (default 20), and records when each answer
//! arrived. Run it with a CPU hog beside it (`yes >/dev/null &` twice) to see this loaded
//! machine's scheduling stalls. Then both detectors replay the same arrivals:
//! - miss counting (drl's core, timeout 100 ms, 2 misses in a row);
//! - phi accrual (Hayashibara et al.; normal distribution over the last 100 inter-arrival
//!   times, thresholds 8 and 12, with and without Akka's 100 ms minimum standard deviation),
//!
//! counting false suspicions (the responder never died) and, for a death after the last
//! answer, the time to suspicion.
//!
//!     cargo bench --bench detect_choice            (SECS=60 for a longer run)

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use drl::detect::core::{Core, CoreConfig, Health};
use drl::detect::probe::{Codec, Datagram, Kind, Responder};

const INTERVAL_MS: u64 = 100;

fn main() {
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let codec = Codec::new(b"bench key", "bench");
    let resp_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let resp_addr = resp_sock.local_addr().unwrap();
    let c2 = codec.clone();
    std::thread::spawn(move || {
        let mut r = Responder::new(c2, "b", vec!["a".into()]);
        let mut buf = [0u8; 256];
        loop {
            let Ok((n, from)) = resp_sock.recv_from(&mut buf) else {
                return;
            };
            let now = unix_ms();
            if let Ok(a) = r.handle(&buf[..n], now) {
                let _ = resp_sock.send_to(&a, from);
            }
        }
    });
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let t0 = Instant::now();
    let mut next = t0;
    let mut seq = unix_ms() * 1000;
    let mut sent: Vec<(u64, u64)> = Vec::new(); // (seq, ms)
    let mut answers: Vec<(u64, u64)> = Vec::new(); // (seq, ms)
    let mut buf = [0u8; 256];
    while t0.elapsed() < Duration::from_secs(secs) {
        if Instant::now() >= next {
            seq += 1;
            let d = codec.encode(&Datagram {
                kind: Kind::Probe,
                seq,
                unix_ms: unix_ms(),
                name: "a".into(),
            });
            sock.send_to(&d, resp_addr).unwrap();
            sent.push((seq, t0.elapsed().as_millis() as u64));
            next += Duration::from_millis(INTERVAL_MS);
        }
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Ok(d) = codec.decode(&buf[..n]) {
                answers.push((d.seq, t0.elapsed().as_millis() as u64));
            }
        }
    }
    let end = t0.elapsed().as_millis() as u64;
    let gaps: Vec<f64> = answers
        .windows(2)
        .map(|w| (w[1].1 - w[0].1) as f64)
        .collect();
    let max_gap = gaps.iter().cloned().fold(0.0, f64::max);
    let mean = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    let sd =
        (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len().max(1) as f64).sqrt();
    println!("{} probes, {} answers over {secs} s; answer gaps: mean {mean:.1} ms, sd {sd:.1} ms, max {max_gap:.0} ms", sent.len(), answers.len());

    // Miss counting on drl's core, fed the recorded sends and answers in time order.
    let (fs, det) = miss_counting(&sent, &answers, end);
    println!("miss counting (timeout 100 ms, 2 misses): {fs} false suspicions; a death after the last answer is suspected after {det} ms");
    for (thr, min_sd) in [(8.0, 0.0), (12.0, 0.0), (8.0, 100.0)] {
        let (fs, det) = phi(&answers, end, thr, min_sd);
        println!("phi accrual (threshold {thr}, min sd {min_sd} ms): {fs} false suspicions; a death after the last answer is suspected after {det} ms");
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn miss_counting(sent: &[(u64, u64)], answers: &[(u64, u64)], end: u64) -> (usize, u64) {
    let cfg = CoreConfig {
        timeout_ms: 100,
        misses: 2,
        down_after_ms: u64::MAX / 4,
        outstanding_max: 32,
    };
    let mut c = Core::new(cfg, 1, 0);
    let i = c.add_indicator(0);
    let mut ev: Vec<(u64, u8, u64)> = sent.iter().map(|&(s, t)| (t, 0, s)).collect();
    ev.extend(answers.iter().map(|&(s, t)| (t, 1, s)));
    ev.sort();
    let mut false_susp = 0;
    let mut t = 0;
    for (at, kind, s) in ev {
        while t < at {
            t += 1;
            false_susp += c
                .tick(t)
                .iter()
                .filter(|x| x.to == Health::Suspected)
                .count();
        }
        if kind == 0 {
            c.probe_sent(i, s, at)
        } else {
            false_susp += c
                .answered(i, s, at)
                .1
                .iter()
                .filter(|x| x.to == Health::Suspected)
                .count()
        }
    }
    let _ = end;
    // Death right after the last answer: probes keep going every interval, none answered.
    let last = answers.last().map_or(0, |a| a.1);
    let mut next = sent.last().map_or(0, |s| s.1) + INTERVAL_MS;
    let mut s = u64::MAX / 2;
    loop {
        t += 1;
        if t >= next {
            s += 1;
            c.probe_sent(i, s, t);
            next += INTERVAL_MS;
        }
        if c.tick(t).iter().any(|x| x.to == Health::Suspected) || c.health(0) != Health::Alive {
            return (false_susp, t - last);
        }
    }
}

/// Phi accrual over the answers' inter-arrival times: (false suspicions, detection time).
fn phi(answers: &[(u64, u64)], _end: u64, threshold: f64, min_sd: f64) -> (usize, u64) {
    let mut window: std::collections::VecDeque<f64> = Default::default();
    let mut false_susp = 0;
    let phi_at = |w: &std::collections::VecDeque<f64>, since: f64| -> f64 {
        let n = w.len().max(1) as f64;
        let m = w.iter().sum::<f64>() / n;
        let sd = (w.iter().map(|g| (g - m).powi(2)).sum::<f64>() / n)
            .sqrt()
            .max(min_sd)
            .max(0.1);
        let y = (since - m) / sd;
        // Logistic approximation of the normal CDF's tail (as Akka's).
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let p = if since > m {
            e / (1.0 + e)
        } else {
            1.0 - 1.0 / (1.0 + e)
        };
        -p.max(1e-300).log10()
    };
    for w in answers.windows(2) {
        let (prev, next) = (w[0].1, w[1].1);
        if window.len() >= 10 {
            for t in prev + 1..next {
                if phi_at(&window, (t - prev) as f64) > threshold {
                    false_susp += 1; // at most once per gap
                    break;
                }
            }
        }
        window.push_back((next - prev) as f64);
        if window.len() > 100 {
            window.pop_front();
        }
    }
    let mut t = 1;
    while phi_at(&window, t as f64) <= threshold {
        t += 1;
    }
    (false_susp, t)
}
