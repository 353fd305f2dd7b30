//! Log lines a peer can cause are rate-limited, the INFO state-change lines too (issue 12):
//! a peer that flaps the link made about eight lines per reconnect on the other node (904
//! lines/s while a proxy flipped bits). Here node a disconnects and reconnects as fast as the
//! CLI allows; node b, which only reacts to its peer, must log its state changes at no more
//! than `REPL_STATE_LOG_LINES_PER_S` (10) per second, and say how many it suppressed.

mod common;

use common::pair::*;
use std::time::Instant;

const STATE_LINES: [&str; 5] = [
    "connection state",
    "peer-device state",
    "connected: sync decision",
    "disconnected:",
    "the peer disconnects",
];

fn state_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| STATE_LINES.iter().any(|s| l.contains(s)))
        .count()
}

#[test]
fn a_flapping_peer_cannot_flood_the_log_with_state_changes() {
    let p = Pair::start(PairOpts::new(16 * MIB));
    p.force_primary_and_sync("a");
    let before = strip_ansi(&p.b.log_text());
    let t0 = Instant::now();
    let cycles = 40;
    for i in 0..cycles {
        p.cli_ok("a", &["disconnect", "r0"]);
        p.cli_ok("a", &["connect", "r0"]);
        p.wait(&format!("cycle {i}: connected again"), WAIT, |a, b| {
            a.is_some_and(|a| a["connection"] == "Connected")
                && b.is_some_and(|b| b["connection"] == "Connected")
        });
    }
    let secs = t0.elapsed().as_secs_f64();
    p.wait_in_sync("a", "after the flapping");
    let after = strip_ansi(&p.b.log_text());
    let storm = &after[before.len().min(after.len())..];
    let lines = state_lines(storm);
    // One window of 10 lines per started second (windows start at the first line, not on
    // wall-clock seconds), and the lines of the final reconnect once the storm is over.
    let bound = (10.0 * (secs.ceil() + 1.0)) as usize + 10;
    assert!(
        lines <= bound,
        "b logged {lines} state-change lines in {secs:.1} s of {cycles} reconnects by its peer \
         (at most {bound} allowed: 10 per second)\n{}",
        p.report()
    );
    // The count of what was dropped rides on the first line let through after a suppressed
    // stretch. A storm shorter than one window (a quiet machine runs 40 reconnects in about
    // a second) ends with the count still pending: reconnect again until a window opens and
    // a state-change line carries it. Bounded by WAIT.
    let says_suppressed = |text: &str| {
        text.lines().any(|l| {
            STATE_LINES.iter().any(|s| l.contains(s))
                && l.split("suppressed=")
                    .nth(1)
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
        })
    };
    let t1 = Instant::now();
    loop {
        let after = strip_ansi(&p.b.log_text());
        if says_suppressed(&after[before.len().min(after.len())..]) {
            break;
        }
        assert!(
            t1.elapsed() < WAIT,
            "no state-change line says how many lines were suppressed\n{}",
            p.report()
        );
        p.cli_ok("a", &["disconnect", "r0"]);
        p.cli_ok("a", &["connect", "r0"]);
        p.wait("connected again", WAIT, |a, b| {
            a.is_some_and(|a| a["connection"] == "Connected")
                && b.is_some_and(|b| b["connection"] == "Connected")
        });
    }
}
