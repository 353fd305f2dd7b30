//! The pinger and the responder: the thin tokio shell around [`super::core`] and
//! [`super::probe`]. One UDP socket on `[detect.on.NODE] listen` answers the probes of the
//! other nodes and sends this node's probes to every other node of `[detect.on]` each
//! `probe-interval`; one task owns it. Site changes are published on the event bus and wake
//! the lease tasks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Notify};

use super::core::{Core, CoreConfig, Health, SiteChange};
use super::etcd::unix_ms;
use super::probe::{Codec, Datagram, Kind, Reject, RejectCounts, Responder, PROBE_BYTES};
use crate::control::{Event, EventBus, EventKind, ObjectKind};
use crate::detect::options::DetectConfig;
use crate::limits::{DETECT_LOG_LINES_PER_S, DETECT_PROBES_OUTSTANDING_COUNT};
use crate::logrl::LogLimiter;

struct IndicatorInfo {
    node: String,
    site: usize,
    addr: SocketAddr,
}

struct Inner {
    core: Core,
    responder: Responder,
    /// Refused answers (to this node's probes).
    answer_rejects: RejectCounts,
    /// Authentic answers that matched no outstanding probe (replayed or very late).
    answers_unmatched: u64,
    /// When each site last changed health, wall clock.
    site_since_unix_ms: Vec<u64>,
}

pub struct Probes {
    cfg: Arc<DetectConfig>,
    codec: Codec,
    sites: Vec<String>,
    indicators: Vec<IndicatorInfo>,
    inner: Mutex<Inner>,
    origin: Instant,
    events: EventBus,
    rl: LogLimiter,
    /// Signalled after every change of a site's health.
    pub changed: Notify,
}

impl Probes {
    pub fn new(cfg: Arc<DetectConfig>, events: EventBus) -> Arc<Probes> {
        let mut sites: Vec<String> = cfg.nodes.iter().map(|n| n.site.clone()).collect();
        sites.sort();
        sites.dedup();
        let core_cfg = CoreConfig {
            timeout_ms: cfg.probe_timeout_ms,
            misses: cfg.suspect_misses,
            down_after_ms: cfg.lease_ttl_ms,
            outstanding_max: DETECT_PROBES_OUTSTANDING_COUNT.max(cfg.suspect_misses as usize),
        };
        let mut core = Core::new(core_cfg, sites.len(), 0);
        let mut indicators = Vec::new();
        for n in cfg.nodes.iter().filter(|n| n.node != cfg.me.node) {
            let site = sites.iter().position(|s| *s == n.site).expect("listed");
            core.add_indicator(site);
            indicators.push(IndicatorInfo {
                node: n.node.clone(),
                site,
                addr: n.listen,
            });
        }
        let codec = Codec::new(cfg.probe_key.expose().as_bytes(), &cfg.cluster);
        let known = cfg.nodes.iter().map(|n| n.node.clone()).collect();
        let responder = Responder::new(codec.clone(), &cfg.me.node, known);
        let now = unix_ms();
        Arc::new(Probes {
            codec,
            inner: Mutex::new(Inner {
                core,
                responder,
                answer_rejects: RejectCounts::default(),
                answers_unmatched: 0,
                site_since_unix_ms: vec![now; sites.len()],
            }),
            sites,
            indicators,
            origin: Instant::now(),
            events,
            rl: LogLimiter::new(DETECT_LOG_LINES_PER_S),
            changed: Notify::new(),
            cfg,
        })
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The health of `site` as this node sees it (None: no such site).
    pub fn site_health(&self, site: &str) -> Option<Health> {
        let s = self.sites.iter().position(|x| x == site)?;
        Some(self.inner().core.health(s))
    }

    /// Bind the probe socket (a clear error if the address is wrong or taken).
    pub async fn bind(&self) -> std::io::Result<UdpSocket> {
        UdpSocket::bind(self.cfg.me.listen).await
    }

    /// Answer probes and probe the other nodes until `shutdown`.
    pub async fn run(self: Arc<Self>, sock: UdpSocket, mut shutdown: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.cfg.probe_interval_ms);
        let step = (self.cfg.probe_interval_ms.min(self.cfg.probe_timeout_ms) / 4).max(5);
        let mut ticker = tokio::time::interval(Duration::from_millis(step));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_probe = tokio::time::Instant::now();
        // Sequence numbers start at the wall clock in microseconds: they keep growing across
        // restarts, so a responder's replay check needs no state on disk.
        let mut seq = unix_ms() * 1000;
        let mut buf = [0u8; PROBE_BYTES + 1];
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                r = sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.on_datagram(&sock, &buf[..n], from).await,
                    Err(e) => crate::warn_rl!(self.rl, error = %e, "probe socket receive failed"),
                },
                _ = ticker.tick() => {
                    if tokio::time::Instant::now() >= next_probe {
                        next_probe += interval;
                        seq = seq.max(unix_ms() * 1000);
                        for (i, ind) in self.indicators.iter().enumerate() {
                            seq += 1;
                            let d = self.codec.encode(&Datagram {
                                kind: Kind::Probe,
                                seq,
                                unix_ms: unix_ms(),
                                name: self.cfg.me.node.clone(),
                            });
                            // A send error (network unreachable while a link is down) is a miss.
                            let _ = sock.try_send_to(&d, ind.addr);
                            let now = self.now_ms();
                            self.inner().core.probe_sent(i, seq, now);
                        }
                    }
                    let now = self.now_ms();
                    let changes = self.inner().core.tick(now);
                    self.publish(changes);
                }
            }
        }
    }

    async fn on_datagram(&self, sock: &UdpSocket, b: &[u8], from: SocketAddr) {
        // Everything but an answer-shaped datagram goes to the responder, which counts it.
        if b.len() != PROBE_BYTES || b[5] != Kind::Answer as u8 {
            let r = self.inner().responder.handle(b, unix_ms());
            match r {
                Ok(answer) => {
                    let _ = sock.try_send_to(&answer, from);
                }
                Err(e) => self.log_reject("probe", &e, from),
            }
            return;
        }
        let d = match self.codec.decode(b) {
            Ok(d) if d.kind == Kind::Answer => d,
            Ok(_) => return,
            Err(e) => {
                self.inner().answer_rejects.count(&e);
                self.log_reject("answer", &e, from);
                return;
            }
        };
        let Some(ind) = self.indicators.iter().position(|i| i.node == d.name) else {
            let e = Reject::Unknown(d.name);
            self.inner().answer_rejects.count(&e);
            self.log_reject("answer", &e, from);
            return;
        };
        let now = self.now_ms();
        let (rtt, changes) = {
            let mut inner = self.inner();
            let r = inner.core.answered(ind, d.seq, now);
            if r.0.is_none() {
                inner.answers_unmatched += 1;
            }
            r
        };
        if rtt.is_none() {
            self.log_reject("answer", &Reject::Replayed(d.name), from);
        }
        self.publish(changes);
    }

    fn log_reject(&self, what: &str, e: &Reject, from: SocketAddr) {
        crate::warn_rl!(self.rl, %from, "refused a {what}: {e}");
    }

    fn publish(&self, changes: Vec<SiteChange>) {
        if changes.is_empty() {
            return;
        }
        let now = unix_ms();
        for c in changes {
            self.inner().site_since_unix_ms[c.site] = now;
            let site = &self.sites[c.site];
            tracing::info!(site = %site, from = c.from.as_str(), to = c.to.as_str(), silent_ms = c.silent_ms, "site health");
            self.events.publish(
                Event::new(EventKind::Change, ObjectKind::Site, site)
                    .field("health", c.to.as_str())
                    .field("previous", c.from.as_str())
                    .field("silent_ms", c.silent_ms)
                    .field("observer", self.cfg.me.node.clone()),
            );
        }
        self.changed.notify_waiters();
    }

    /// Sites, indicators and refusal counters for `drl detect status`.
    pub fn status_json(&self) -> Value {
        let inner = self.inner();
        let sites: Vec<Value> = self
            .sites
            .iter()
            .enumerate()
            .map(|(s, name)| {
                let inds: Vec<Value> = self
                    .indicators
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| i.site == s)
                    .map(|(n, i)| {
                        json!({ "node": i.node, "address": i.addr.to_string(), "stats": inner.core.stats(n) })
                    })
                    .collect();
                let probed = !inds.is_empty();
                json!({
                    "site": name,
                    "local": *name == self.cfg.me.site,
                    "health": if probed { inner.core.health(s).as_str() } else { "not-probed" },
                    "since_unix_ms": inner.site_since_unix_ms[s],
                    "indicators": inds,
                })
            })
            .collect();
        json!({
            "listen": self.cfg.me.listen.to_string(),
            "probe_interval_ms": self.cfg.probe_interval_ms,
            "probe_timeout_ms": self.cfg.probe_timeout_ms,
            "suspect_misses": self.cfg.suspect_misses,
            "sites": sites,
            "probes_answered": inner.responder.answered,
            "probes_refused": inner.responder.rejected,
            "answers_refused": inner.answer_rejects,
            "answers_unmatched": inner.answers_unmatched,
        })
    }
}
