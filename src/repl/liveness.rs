//! Liveness of one session, without I/O: the first piece of the sans-I/O session core
//! (ARCHITECTURE.md, "Toward a sans-I/O replication core").
//!
//! Events in: something arrived from the peer or one of the session's own disk operations
//! completed ([`Liveness::on_receive`]), a timer tick with the time and how long frames have
//! waited for a peer that takes nothing from the socket ([`Liveness::on_tick`]). Actions out:
//! send a keepalive Ping, or end the session with a reason ([`SessionEnd`]). The rule the
//! Secondary's wedge broke is kept by construction: the session asks this on every tick,
//! whatever else it waits for, so a silent or non-reading peer always ends the session.

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
    last_ping_ms: u64,
    ping_seq: u64,
}

impl Liveness {
    pub fn new(now_ms: u64) -> Self {
        Liveness {
            last_rx_ms: now_ms,
            last_ping_ms: now_ms,
            ping_seq: 0,
        }
    }

    /// Bytes from the peer, or a completion of the session's own disk work (it is applying
    /// what the peer sent: not silence).
    pub fn on_receive(&mut self, now_ms: u64) {
        self.last_rx_ms = self.last_rx_ms.max(now_ms);
    }

    /// A tick at `now_ms`; `stalled_ms` is how long frames have waited with the socket
    /// taking nothing, when that is past the stall bound ([`crate::repl::link::Link::stalled`]).
    pub fn on_tick(&mut self, now_ms: u64, stalled_ms: Option<u64>) -> Option<LiveAction> {
        let idle = now_ms.saturating_sub(self.last_rx_ms);
        if idle > REPL_PEER_TIMEOUT_MS {
            return Some(LiveAction::Close(SessionEnd::PeerSilent(idle)));
        }
        if let Some(ms) = stalled_ms {
            return Some(LiveAction::Close(SessionEnd::PeerNotReading(ms)));
        }
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
        Receive,
        Stall(u64),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            6 => (1u64..2_500).prop_map(Ev::Tick),
            3 => Just(Ev::Receive),
            1 => (0u64..100_000).prop_map(Ev::Stall),
        ]
    }

    proptest! {
        /// Seeded histories (proptest replays a failure from its seed): a session closes at
        /// the first tick after more than the peer timeout of silence, never before; pings
        /// go out only after a ping interval of silence, at most one per interval, numbered
        /// 1, 2, 3 ...; a stalled peer closes the session at once.
        #[test]
        fn silence_always_ends_the_session_and_only_silence_does(evs in prop::collection::vec(ev(), 1..200)) {
            let mut now = 0u64;
            let mut l = Liveness::new(now);
            let (mut last_rx, mut last_ping, mut pings) = (0u64, None::<u64>, 0u64);
            for e in evs {
                match e {
                    Ev::Receive => { l.on_receive(now); last_rx = now; }
                    Ev::Tick(dt) | Ev::Stall(dt) => {
                        now += dt;
                        let stall = matches!(e, Ev::Stall(_)).then_some(dt);
                        let silent = now - last_rx;
                        match l.on_tick(now, stall) {
                            Some(LiveAction::Close(SessionEnd::PeerSilent(ms))) => {
                                prop_assert!(silent > REPL_PEER_TIMEOUT_MS);
                                prop_assert_eq!(ms, silent);
                                return Ok(());
                            }
                            Some(LiveAction::Close(SessionEnd::PeerNotReading(_))) => {
                                prop_assert!(stall.is_some());
                                return Ok(());
                            }
                            other => {
                                prop_assert!(silent <= REPL_PEER_TIMEOUT_MS, "silent {} ms, no close", silent);
                                prop_assert!(stall.is_none());
                                if let Some(LiveAction::Ping(seq)) = other {
                                    pings += 1;
                                    prop_assert_eq!(seq, pings);
                                    prop_assert!(silent > REPL_PING_INTERVAL_MS);
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
