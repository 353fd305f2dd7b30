//! The suspicion core: no I/O, no clock of its own. The shell tells it when a probe was sent,
//! answered or when time passed (`now_ms` on any monotonic clock); it keeps per indicator the
//! RTT, the misses and the loss, and per site whether it is alive, suspected or down.
//!
//! Rules (miss counting; ARCHITECTURE.md says why not phi accrual):
//! - a probe not answered within `timeout_ms` of being sent is a miss;
//! - an indicator is *missing* once its last `misses` probes in a row were missed;
//! - a site is *suspected* when every one of its indicators is missing, and *alive* again as
//!   soon as any of them answers (a late answer counts: the site is not dead);
//! - a site suspected for `down_after_ms` without interruption is *down*.
//!
//! Answers are matched to probes by sequence number, each probe at most once: an answer that
//! matches nothing this core sent (or one already answered) is refused, so a replayed answer
//! never revives a dead site.

use std::collections::VecDeque;

use serde::Serialize;

/// What the core needs to know of the configuration.
#[derive(Clone, Copy, Debug)]
pub struct CoreConfig {
    pub timeout_ms: u64,
    pub misses: u32,
    pub down_after_ms: u64,
    /// Probes remembered per indicator for matching answers.
    pub outstanding_max: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Alive,
    Suspected,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Alive => "alive",
            Health::Suspected => "suspected",
            Health::Down => "down",
        }
    }
}

/// A site's health moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteChange {
    pub site: usize,
    pub from: Health,
    pub to: Health,
    pub at_ms: u64,
    /// For `Suspected`: how long since the site's last answer.
    pub silent_ms: u64,
}

#[derive(Clone, Debug)]
struct Sent {
    seq: u64,
    at_ms: u64,
    timed_out: bool,
}

/// One indicator's counters (what `drl detect status` shows).
#[derive(Clone, Debug, Default, Serialize)]
pub struct IndicatorStats {
    pub sent: u64,
    pub answered: u64,
    pub missed: u64,
    /// Answers that came after their probe had already counted as a miss.
    pub late: u64,
    /// Misses in a row right now.
    pub misses_in_row: u32,
    pub rtt_last_ms: Option<f64>,
    /// Exponentially weighted moving average (1/8, as TCP's SRTT).
    pub rtt_avg_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
}

#[derive(Clone, Debug)]
struct Indicator {
    site: usize,
    outstanding: VecDeque<Sent>,
    stats: IndicatorStats,
    last_answer_ms: Option<u64>,
}

#[derive(Clone, Debug)]
struct Site {
    health: Health,
    since_ms: u64,
}

/// The core. Indicators and sites are numbered by the shell in the order it added them.
#[derive(Clone, Debug)]
pub struct Core {
    cfg: CoreConfig,
    sites: Vec<Site>,
    indicators: Vec<Indicator>,
    started_ms: u64,
}

impl Core {
    /// `sites` sites, all alive from `now_ms` (a site never heard from becomes suspected after
    /// its misses, as a dead one does).
    pub fn new(cfg: CoreConfig, sites: usize, now_ms: u64) -> Core {
        assert!(cfg.misses >= 1 && cfg.outstanding_max >= cfg.misses as usize);
        Core {
            cfg,
            sites: vec![
                Site {
                    health: Health::Alive,
                    since_ms: now_ms
                };
                sites
            ],
            indicators: Vec::new(),
            started_ms: now_ms,
        }
    }

    /// Add an indicator of `site`; returns its number.
    pub fn add_indicator(&mut self, site: usize) -> usize {
        assert!(site < self.sites.len());
        self.indicators.push(Indicator {
            site,
            outstanding: VecDeque::with_capacity(self.cfg.outstanding_max),
            stats: IndicatorStats::default(),
            last_answer_ms: None,
        });
        self.indicators.len() - 1
    }

    pub fn health(&self, site: usize) -> Health {
        self.sites[site].health
    }

    /// Since when the site has its current health.
    pub fn since_ms(&self, site: usize) -> u64 {
        self.sites[site].since_ms
    }

    pub fn stats(&self, ind: usize) -> &IndicatorStats {
        &self.indicators[ind].stats
    }

    /// A probe with `seq` left for indicator `ind`.
    pub fn probe_sent(&mut self, ind: usize, seq: u64, now_ms: u64) {
        let i = &mut self.indicators[ind];
        if i.outstanding.len() == self.cfg.outstanding_max {
            i.outstanding.pop_front();
        }
        i.outstanding.push_back(Sent {
            seq,
            at_ms: now_ms,
            timed_out: false,
        });
        i.stats.sent += 1;
    }

    /// An authenticated answer to probe `seq` of indicator `ind`. Returns its RTT, or `None`
    /// when it matches no probe this core remembers (unsolicited or replayed: ignored).
    pub fn answered(
        &mut self,
        ind: usize,
        seq: u64,
        now_ms: u64,
    ) -> (Option<u64>, Vec<SiteChange>) {
        let i = &mut self.indicators[ind];
        let Some(pos) = i.outstanding.iter().position(|s| s.seq == seq) else {
            return (None, Vec::new());
        };
        let Some(sent) = i.outstanding.remove(pos) else {
            return (None, Vec::new());
        };
        let rtt = now_ms.saturating_sub(sent.at_ms);
        let st = &mut i.stats;
        st.answered += 1;
        if sent.timed_out {
            st.late += 1;
        }
        st.misses_in_row = 0;
        let r = rtt as f64;
        st.rtt_last_ms = Some(r);
        st.rtt_avg_ms = Some(st.rtt_avg_ms.map_or(r, |a| a + (r - a) / 8.0));
        st.rtt_max_ms = Some(st.rtt_max_ms.map_or(r, |m| m.max(r)));
        i.last_answer_ms = Some(now_ms);
        (Some(rtt), self.evaluate(now_ms))
    }

    /// Time passed: count the probes that timed out and re-evaluate the sites.
    pub fn tick(&mut self, now_ms: u64) -> Vec<SiteChange> {
        let timeout = self.cfg.timeout_ms;
        for i in &mut self.indicators {
            for s in i.outstanding.iter_mut() {
                if !s.timed_out && now_ms >= s.at_ms + timeout {
                    s.timed_out = true;
                    i.stats.missed += 1;
                    i.stats.misses_in_row = i.stats.misses_in_row.saturating_add(1);
                }
            }
        }
        self.evaluate(now_ms)
    }

    fn missing(&self, ind: &Indicator) -> bool {
        ind.stats.misses_in_row >= self.cfg.misses
    }

    fn evaluate(&mut self, now_ms: u64) -> Vec<SiteChange> {
        let mut out = Vec::new();
        for s in 0..self.sites.len() {
            let mut any = false;
            let mut all_missing = true;
            let mut last_answer = None::<u64>;
            for i in self.indicators.iter().filter(|i| i.site == s) {
                any = true;
                all_missing &= self.missing(i);
                last_answer = last_answer.max(i.last_answer_ms);
            }
            if !any {
                continue;
            }
            let cur = self.sites[s].health;
            let next = match (cur, all_missing) {
                (_, false) => Health::Alive,
                (Health::Alive, true) => Health::Suspected,
                (Health::Suspected, true)
                    if now_ms >= self.sites[s].since_ms + self.cfg.down_after_ms =>
                {
                    Health::Down
                }
                (h, true) => h,
            };
            if next != cur {
                self.sites[s] = Site {
                    health: next,
                    since_ms: now_ms,
                };
                out.push(SiteChange {
                    site: s,
                    from: cur,
                    to: next,
                    at_ms: now_ms,
                    silent_ms: now_ms - last_answer.unwrap_or(self.started_ms),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> Core {
        Core::new(
            CoreConfig {
                timeout_ms: 100,
                misses: 2,
                down_after_ms: 1000,
                outstanding_max: 8,
            },
            2,
            0,
        )
    }

    /// One probe per 100 ms to every indicator from `from` to `to` (exclusive); answers
    /// after `rtt` ms if `answer(ind)`.
    fn run(
        c: &mut Core,
        inds: &[usize],
        seq: &mut u64,
        from: u64,
        to: u64,
        answer: impl Fn(usize) -> bool,
    ) -> Vec<SiteChange> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            for &i in inds {
                *seq += 1;
                c.probe_sent(i, *seq, t);
                if answer(i) {
                    out.extend(c.answered(i, *seq, t + 3).1);
                }
            }
            for step in (t + 10..=t + 100).step_by(10) {
                out.extend(c.tick(step));
            }
            t += 100;
        }
        out
    }

    #[test]
    fn a_site_is_suspected_only_when_all_its_indicators_miss() {
        let mut c = core();
        let a1 = c.add_indicator(0);
        let a2 = c.add_indicator(0);
        let b1 = c.add_indicator(1);
        let mut seq = 0;
        assert!(run(&mut c, &[a1, a2, b1], &mut seq, 0, 1000, |_| true).is_empty());
        assert_eq!(c.stats(a1).rtt_last_ms, Some(3.0));
        // a1 dies: its site stays alive while a2 answers.
        let ch = run(&mut c, &[a1, a2, b1], &mut seq, 1000, 2000, |i| i != a1);
        assert!(ch.is_empty(), "{ch:?}");
        assert!(c.stats(a1).misses_in_row >= 2);
        // Both die: suspected within timeout + (misses - 1) intervals of the first lost probe.
        let ch = run(&mut c, &[a1, a2, b1], &mut seq, 2000, 2400, |i| i == b1);
        assert_eq!(ch.len(), 1, "{ch:?}");
        assert_eq!((ch[0].site, ch[0].to), (0, Health::Suspected));
        assert_eq!(ch[0].at_ms, 2200, "second miss of a2 at 2100 + 100");
        assert_eq!(c.health(1), Health::Alive);
    }

    #[test]
    fn suspicion_becomes_down_after_the_delay_and_any_answer_revives() {
        let mut c = core();
        let a = c.add_indicator(0);
        let mut seq = 0;
        run(&mut c, &[a], &mut seq, 0, 500, |_| true);
        let ch = run(&mut c, &[a], &mut seq, 500, 2000, |_| false);
        let tos: Vec<_> = ch.iter().map(|c| (c.to, c.at_ms)).collect();
        assert_eq!(
            tos,
            vec![(Health::Suspected, 700), (Health::Down, 1700)],
            "{ch:?}"
        );
        assert_eq!(ch[0].silent_ms, 700 - 403);
        let ch = run(&mut c, &[a], &mut seq, 2000, 2100, |_| true);
        assert_eq!(ch.len(), 1);
        assert_eq!((ch[0].from, ch[0].to), (Health::Down, Health::Alive));
    }

    #[test]
    fn one_lost_probe_is_not_a_suspicion_and_late_answers_count_as_alive() {
        let mut c = core();
        let a = c.add_indicator(0);
        c.probe_sent(a, 1, 0);
        assert!(c.tick(100).is_empty());
        c.probe_sent(a, 2, 100);
        assert_eq!(c.tick(200).len(), 1, "two misses: suspected");
        // The first probe's answer arrives late: alive again, counted as late.
        let (rtt, ch) = c.answered(a, 1, 250);
        assert_eq!(rtt, Some(250));
        assert_eq!(ch[0].to, Health::Alive);
        assert_eq!(c.stats(a).late, 1);
        assert_eq!(c.stats(a).misses_in_row, 0);
    }

    #[test]
    fn replayed_or_unsolicited_answers_are_refused() {
        let mut c = core();
        let a = c.add_indicator(0);
        c.probe_sent(a, 7, 0);
        assert_eq!(c.answered(a, 7, 5).0, Some(5));
        assert_eq!(c.answered(a, 7, 6).0, None, "the same answer twice");
        assert_eq!(c.answered(a, 99, 6).0, None, "never sent");
        c.probe_sent(a, 8, 100);
        c.probe_sent(a, 9, 200);
        c.tick(300);
        assert_eq!(c.health(0), Health::Suspected);
        assert_eq!(c.answered(a, 7, 301).0, None, "a replay revives nothing");
        assert_eq!(c.health(0), Health::Suspected);
        assert_eq!(c.stats(a).answered, 1);
    }

    #[test]
    fn outstanding_probes_are_bounded() {
        let mut c = core();
        let a = c.add_indicator(0);
        for s in 0..100 {
            c.probe_sent(a, s, s * 10);
        }
        assert_eq!(c.answered(a, 0, 1000).0, None, "forgotten");
        assert!(c.answered(a, 99, 1000).0.is_some());
    }
}
