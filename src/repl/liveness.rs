//! Liveness of one session, without I/O: the first piece of the sans-I/O session core
//! (ARCHITECTURE.md, "Toward a sans-I/O replication core").
//!
//! Events in: something arrived from the peer or one of the session's own disk operations
//! completed ([`Liveness::on_receive`]), a timer tick with the time, how long frames have
//! waited for a peer that takes nothing from the socket, and whether this side holds back
//! ([`Liveness::on_tick`]). Actions out: send a keepalive Ping, or end the session with a
//! reason ([`SessionEnd`]). The rule the Secondary's wedge broke is kept by construction: the
//! session asks this on every tick, whatever else it waits for, so a silent or non-reading
//! peer always ends the session.
//!
//! Silence is the time this side *could have heard* the peer and did not: it is summed tick
//! by tick, and two intervals are not the peer's fault, so they do not count:
//! - **this side was not running**: a gap between ticks longer than a ping interval (the
//!   shell ticks every 100 ms) means this process was starved (a loaded host); only a ping
//!   interval of it counts. The frames the peer sent meanwhile sit unread in the socket;
//! - **this side holds back**: it stopped reading the socket because its own disk work is
//!   pending (the receive queue is full behind writes or a flush, `Core::wants_input`), so
//!   the peer's frames, pings included, sit unread behind the data. DRBD answers pings on a
//!   separate socket and thread, so its ping timeout never fires for its own slow disk; here
//!   the clock pauses until the disk completes something (which also counts as life). A disk
//!   that completes nothing at all is not a peer failure, and not detected here.
//!
//! Keepalive pings still go out by the wall clock, so the peer hears from a side that holds
//! back.

use crate::limits::{REPL_PEER_TIMEOUT_MS, REPL_PING_INTERVAL_MS};

/// Why a session ended for liveness.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionEnd {
    #[error("no frame from the peer for {0} ms")]
    PeerSilent(u64),
    #[error("the peer has read nothing for {0} ms while frames wait for it")]
    PeerNotReading(u64),
}

/// What the session must do after a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveAction {
    /// Send `Ping { seq }` (keepalive: the peer answers, so silence means it is gone).
    Ping(u64),
    Close(SessionEnd),
}

/// The liveness clocks of one session (times in ms on the session's clock).
#[derive(Debug, Clone)]
pub struct Liveness {
    last_rx_ms: u64,
    last_tick_ms: u64,
    /// Silence that counts against the peer since `last_rx_ms` (module docs).
    silent_ms: u64,
    last_ping_ms: u64,
    ping_seq: u64,
}

impl Liveness {
    pub fn new(now_ms: u64) -> Self {
        Liveness {
            last_rx_ms: now_ms,
            last_tick_ms: now_ms,
            silent_ms: 0,
            last_ping_ms: now_ms,
            ping_seq: 0,
        }
    }

    /// Bytes from the peer, or a completion of the session's own disk work (it is applying
    /// what the peer sent: not silence).
    pub fn on_receive(&mut self, now_ms: u64) {
        self.last_rx_ms = self.last_rx_ms.max(now_ms);
        self.silent_ms = 0;
    }

    /// A tick at `now_ms`; `stalled_ms` is how long frames have waited with the socket
    /// taking nothing, when that is past the stall bound ([`crate::repl::link::Link::stalled`]);
    /// `holding_back`: this side is not reading the socket because its own disk work is
    /// pending (module docs).
    pub fn on_tick(
        &mut self,
        now_ms: u64,
        stalled_ms: Option<u64>,
        holding_back: bool,
    ) -> Option<LiveAction> {
        let since = self.last_tick_ms.max(self.last_rx_ms);
        self.last_tick_ms = self.last_tick_ms.max(now_ms);
        if !holding_back {
            self.silent_ms += now_ms.saturating_sub(since).min(REPL_PING_INTERVAL_MS);
        }
        if self.silent_ms > REPL_PEER_TIMEOUT_MS {
            return Some(LiveAction::Close(SessionEnd::PeerSilent(self.silent_ms)));
        }
        if let Some(ms) = stalled_ms {
            return Some(LiveAction::Close(SessionEnd::PeerNotReading(ms)));
        }
        let idle = now_ms.saturating_sub(self.last_rx_ms);
        if idle > REPL_PING_INTERVAL_MS
            && now_ms.saturating_sub(self.last_ping_ms) > REPL_PING_INTERVAL_MS
        {
            self.ping_seq += 1;
            self.last_ping_ms = now_ms;
            return Some(LiveAction::Ping(self.ping_seq));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Ev {
        /// Time passes by this many ms, then a tick.
        Tick(u64),
        /// As `Tick`, while this side holds back (not reading: its own disk work pending).
        HeldTick(u64),
        Receive,
        Stall(u64),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            6 => (1u64..2_500).prop_map(Ev::Tick),
            2 => (1u64..2_500).prop_map(Ev::HeldTick),
            3 => Just(Ev::Receive),
            1 => (0u64..100_000).prop_map(Ev::Stall),
        ]
    }

    /// Ticks every 100 ms for `ms`, holding back or not; the first close, if any.
    fn ticks(l: &mut Liveness, now: &mut u64, ms: u64, held: bool) -> Option<LiveAction> {
        let mut pings = 0;
        for _ in 0..ms / 100 {
            *now += 100;
            match l.on_tick(*now, None, held) {
                Some(LiveAction::Ping(_)) => pings += 1,
                Some(close) => return Some(close),
                None => {}
            }
        }
        // One per ping interval (strictly more than it apart, so every 1.1 s at 100 ms ticks).
        assert!(pings + 1 >= ms / 1_100, "{pings} pings in {ms} ms");
        None
    }

    #[test]
    fn a_silent_peer_ends_the_session_after_the_timeout() {
        let (mut now, mut l) = (0, Liveness::new(0));
        assert_eq!(ticks(&mut l, &mut now, REPL_PEER_TIMEOUT_MS, false), None);
        assert!(matches!(
            ticks(&mut l, &mut now, 200, false),
            Some(LiveAction::Close(SessionEnd::PeerSilent(_)))
        ));
    }

    /// This process did not run for 7 s (a starved host): the first tick after the gap
    /// finds the peer's frames unread, which is not the peer's silence.
    #[test]
    fn a_starved_side_does_not_blame_the_peer() {
        let (mut now, mut l) = (0, Liveness::new(0));
        ticks(&mut l, &mut now, 1_000, false);
        now += 7_000;
        assert_eq!(l.on_tick(now, None, false), Some(LiveAction::Ping(1)));
        l.on_receive(now + 10);
        // A peer really gone is still found, on this side's own clock.
        assert!(matches!(
            ticks(&mut l, &mut now, 7_000, false),
            Some(LiveAction::Close(SessionEnd::PeerSilent(_)))
        ));
    }

    /// This side stopped reading for 30 s because its disk completes nothing (a stalled
    /// disk behind a full receive queue): no close, and keepalives still go out so the peer
    /// hears from it. Once it reads again, silence counts again.
    #[test]
    fn holding_back_for_its_own_disk_pauses_the_silence_clock() {
        let (mut now, mut l) = (0, Liveness::new(0));
        ticks(&mut l, &mut now, 3_000, false);
        assert_eq!(ticks(&mut l, &mut now, 30_000, true), None);
        assert_eq!(
            ticks(&mut l, &mut now, 3_000, false),
            None,
            "3 s + 3 s < timeout"
        );
        assert!(matches!(
            ticks(&mut l, &mut now, 1_000, false),
            Some(LiveAction::Close(SessionEnd::PeerSilent(ms))) if ms > REPL_PEER_TIMEOUT_MS
        ));
    }

    proptest! {
        /// Seeded histories (proptest replays a failure from its seed): a session closes at
        /// the first tick after more than the peer timeout of counted silence (the time since
        /// the last receive, tick by tick, at most a ping interval per tick and nothing while
        /// holding back), never before; pings go out by the wall clock only after a ping
        /// interval without a receive, at most one per interval, numbered 1, 2, 3 ...; a
        /// stalled peer closes the session at once.
        #[test]
        fn silence_always_ends_the_session_and_only_silence_does(evs in prop::collection::vec(ev(), 1..200)) {
            let mut now = 0u64;
            let mut l = Liveness::new(now);
            let (mut last_rx, mut last_tick, mut counted) = (0u64, 0u64, 0u64);
            let (mut last_ping, mut pings) = (None::<u64>, 0u64);
            for e in evs {
                match e {
                    Ev::Receive => { l.on_receive(now); last_rx = now; counted = 0; }
                    Ev::Tick(dt) | Ev::HeldTick(dt) | Ev::Stall(dt) => {
                        now += dt;
                        let stall = matches!(e, Ev::Stall(_)).then_some(dt);
                        let held = matches!(e, Ev::HeldTick(_));
                        if !held {
                            counted += (now - last_tick.max(last_rx)).min(REPL_PING_INTERVAL_MS);
                        }
                        last_tick = now;
                        match l.on_tick(now, stall, held) {
                            Some(LiveAction::Close(SessionEnd::PeerSilent(ms))) => {
                                prop_assert!(counted > REPL_PEER_TIMEOUT_MS);
                                prop_assert_eq!(ms, counted);
                                return Ok(());
                            }
                            Some(LiveAction::Close(SessionEnd::PeerNotReading(_))) => {
                                prop_assert!(stall.is_some());
                                return Ok(());
                            }
                            other => {
                                prop_assert!(counted <= REPL_PEER_TIMEOUT_MS, "silent {} ms, no close", counted);
                                prop_assert!(stall.is_none());
                                if let Some(LiveAction::Ping(seq)) = other {
                                    pings += 1;
                                    prop_assert_eq!(seq, pings);
                                    prop_assert!(now - last_rx > REPL_PING_INTERVAL_MS);
                                    if let Some(p) = last_ping {
                                        prop_assert!(now - p > REPL_PING_INTERVAL_MS);
                                    }
                                    last_ping = Some(now);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
