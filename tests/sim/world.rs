//! The simulated world: two nodes, a network between them, a seeded clock, a workload, admin
//! actions and faults, and the invariants checked after every step.
//!
//! Network: one connection at a time; each direction is a FIFO (TCP keeps order within a
//! connection) with a random delay per frame; frames cross as bytes through the production
//! encoder and decoder. A cut either resets the connection (both sides see it at once) or
//! silently drops everything (each side finds out by its own liveness timeout). A crashed
//! node resets its connection; it restarts as the daemon does (Secondary, AL replayed).

use std::collections::VecDeque;

use bytes::BytesMut;
use drbd_compat::{DiskState, ReplState, Role};
use drl::repl::frame::Frame;
use drl::repl::state::{
    decide, promotion, promotion_settled, Promotion, SplitBrainPolicy, SyncDecision,
};
use drl::repl::wire::{resource_id, Decoder, Encoder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::node::{gen_of, gen_to_meta, Node, BS};

#[path = "world_admin.rs"]
mod admin;

/// Ping with this bit asks the peer to confirm the StateChange before it (`link::STATE_PING_BIT`).
const STATE_PING_BIT: u64 = drl::repl::link::STATE_PING_BIT;
const TICK_MS: u64 = 100;
const PERSIST_MS: u64 = 5_000;

/// What a run exercised (the suite asserts the faults it claims to test happened).
#[derive(Debug, Default, Clone, Copy)]
pub struct Coverage {
    pub connects: u64,
    pub resyncs: u64,
    pub split_brains: u64,
    pub crashes_primary: u64,
    pub crashes_secondary: u64,
    pub cuts_reset: u64,
    pub cuts_silent: u64,
    pub liveness_ends: u64,
    pub eio_ends: u64,
    pub prefix_checks_with_writes: u64,
    pub crash_prefix_checks: u64,
    pub acked_writes: u64,
    /// Connects after both nodes acknowledged writes the other lacks, each after the other's
    /// last promotion (two Primaries that both acknowledged).
    pub two_primary_connects: u64,
    /// Resync requests served for a group's volume 1 (its own dirty bits resynced).
    pub group_volume_resyncs: u64,
    /// Online verify runs that ended, and those that found blocks (silent corruption).
    pub verify_runs: u64,
    pub verify_found: u64,
    /// Healing verify runs of a group that found and marked blocks of its volume 1.
    pub group_verify_found: u64,
    /// Blocks silently corrupted on one node (bit rot: no write, no bit).
    pub corruptions: u64,
    /// Snapshots taken on a Secondary, and checks of a snapshot after replicated or resync
    /// writes reached its node.
    pub snapshots_secondary: u64,
    pub snapshot_checks_after_peer_writes: u64,
}

impl Coverage {
    pub fn add(&mut self, o: &Coverage) {
        self.connects += o.connects;
        self.resyncs += o.resyncs;
        self.split_brains += o.split_brains;
        self.crashes_primary += o.crashes_primary;
        self.crashes_secondary += o.crashes_secondary;
        self.cuts_reset += o.cuts_reset;
        self.cuts_silent += o.cuts_silent;
        self.liveness_ends += o.liveness_ends;
        self.eio_ends += o.eio_ends;
        self.prefix_checks_with_writes += o.prefix_checks_with_writes;
        self.crash_prefix_checks += o.crash_prefix_checks;
        self.acked_writes += o.acked_writes;
        self.two_primary_connects += o.two_primary_connects;
        self.group_volume_resyncs += o.group_volume_resyncs;
        self.verify_runs += o.verify_runs;
        self.verify_found += o.verify_found;
        self.group_verify_found += o.group_verify_found;
        self.corruptions += o.corruptions;
        self.snapshots_secondary += o.snapshots_secondary;
        self.snapshot_checks_after_peer_writes += o.snapshot_checks_after_peer_writes;
    }
}

/// Knobs of one run.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    pub blocks: u64,
    /// Probability (per mille) of each fault kind per step.
    pub faults_permille: u32,
    pub admin_permille: u32,
    pub max_write_blocks: usize,
    pub delay_max_ms: u64,
    /// A consistency group (issue 15): volume 0 has this many blocks, volume 1 the rest; a
    /// write lies in one volume.
    pub group_split: Option<u64>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            blocks: 64,
            faults_permille: 4,
            admin_permille: 6,
            max_write_blocks: 8,
            delay_max_ms: 40,
            group_split: None,
        }
    }
}

struct Net {
    conn: u64,
    /// `q[i]`: frames on their way to node `i`, with their arrival time (FIFO).
    q: [VecDeque<(u64, BytesMut)>; 2],
    enc: Encoder,
    dec: [Decoder; 2],
    rbuf: [BytesMut; 2],
    /// Silently cut: everything is dropped, nobody is told.
    silent: bool,
}

/// Writes of the clean session being checked for the prefix invariant.
struct Hist {
    conn: u64,
    primary: usize,
    base: Vec<u64>,
    writes: Vec<(u64, usize, Vec<u64>)>,
}

pub struct World {
    /// The seed this world runs from (printed with a failure).
    pub seed: u64,
    pub rng: StdRng,
    pub now: u64,
    pub n: [Node; 2],
    net: Option<Net>,
    conns: u64,
    next_tag: u64,
    hist: Option<Hist>,
    last_persist: u64,
    /// State confirmations asked and answered per node (admin `primary` completes on it).
    asked: [u64; 2],
    answered: [u64; 2],
    discard: [bool; 2],
    /// Per node: block -> (tag, step) of each write it acknowledged that the peer's disk
    /// does not hold (yet).
    unshared: [std::collections::HashMap<usize, (u64, u64)>; 2],
    /// Per node: the step of its last promotion.
    promoted_at: [u64; 2],
    knobs: Knobs,
    dir: std::path::PathBuf,
    pub trace: VecDeque<String>,
    pub steps: u64,
    /// The workload writes (off while healing and settling).
    pub writes_on: bool,
    pub cov: Coverage,
    /// The periodic bitmap persist and AL retire run.
    pub persist_on: bool,
    /// Blocks silently corrupted on one node and not yet equal on both again.
    rot: std::collections::BTreeSet<usize>,
    /// Verify runs that ended (node, report), checked.
    pub verify_done: Vec<(usize, drl::repl::core::VerifyEnd)>,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl World {
    pub fn new(seed: u64, knobs: Knobs) -> World {
        let dir = std::path::PathBuf::from(format!(
            "/dev/shm/drl-sim-{}-{seed}-{}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("sim dir");
        let size = knobs.blocks * BS;
        let gen = 0x5eed_0000_0000_0001 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let a = Node::new(&dir, "a", size, gen, knobs.group_split);
        let b = Node::new(&dir, "b", size, gen, knobs.group_split);
        let mut w = World {
            seed,
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            n: [a, b],
            net: None,
            conns: 0,
            next_tag: 1,
            hist: None,
            last_persist: 0,
            asked: [0; 2],
            answered: [0; 2],
            discard: [false; 2],
            unshared: Default::default(),
            promoted_at: [0; 2],
            knobs,
            dir,
            trace: VecDeque::new(),
            steps: 0,
            writes_on: true,
            cov: Coverage::default(),
            persist_on: true,
            rot: Default::default(),
            verify_done: Vec::new(),
        };
        w.note("start".into());
        w
    }

    pub fn note(&mut self, s: String) {
        if self.trace.len() >= 60 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!(
            "seed={} t={} step={} {s}",
            self.seed, self.now, self.steps
        ));
    }

    fn fresh_gen(&mut self) -> u64 {
        self.rng.random::<u64>() | 1
    }

    pub fn primary(&self) -> Option<usize> {
        (0..2).find(|&i| self.n[i].up && self.n[i].role() == Role::Primary)
    }

    /// Node `i` acknowledges application writes: Primary, and its promotion settled (the
    /// daemon's rule, `repl::state::promotion_settled`: the peer confirmed it, or there is no
    /// live link).
    pub fn writable(&self, i: usize) -> bool {
        let n = &self.n[i];
        n.up && n.role() == Role::Primary
            && promotion_settled(n.sess.is_some(), self.answered[i] >= self.asked[i])
    }

    // ---- connection ----

    pub fn connect(&mut self) {
        if self.net.is_some() || !self.n.iter().all(|n| n.up && !n.standalone) {
            return;
        }
        let mut hello = [self.n[0].hello(), self.n[1].hello()];
        for (i, h) in hello.iter_mut().enumerate() {
            if self.discard[i] {
                // `connect --discard-my-data`: present the generation branched from.
                if h.gen.bitmap != 0 {
                    h.gen.current = h.gen.bitmap;
                    h.gen.bitmap = 0;
                } else {
                    h.gen = Default::default();
                }
                h.disk = DiskState::Outdated;
            }
        }
        let discarded = std::mem::take(&mut self.discard);
        self.conns += 1;
        let conn = self.conns;
        let policy = SplitBrainPolicy::default();
        let full = [
            decide(&hello[0], &hello[1], &policy),
            decide(&hello[1], &hello[0], &policy),
        ];
        let d = [full[0].decision, full[1].decision];
        self.note(format!(
            "connect #{conn}: {:?} / {:?}, hello {:?} / {:?}",
            d[0], d[1], hello[0], hello[1]
        ));
        self.cov.connects += 1;
        // A split brain the configured policy resolved (`after-sb-1pri = discard-secondary`,
        // drl's default) is the admin's standing decision, like `--discard-my-data`.
        let by_policy = full[0].split_brain_resolved || full[1].split_brain_resolved;
        let decided_by_admin = [discarded[0] || by_policy, discarded[1] || by_policy];
        self.check_nothing_overwritten_silently(&d, decided_by_admin);
        if d[0] == SyncDecision::SplitBrain || d[0] == SyncDecision::Unrelated {
            self.cov.split_brains += 1;
        } else if d[0] != SyncDecision::NoSync {
            self.cov.resyncs += 1;
        }
        let id = resource_id("sim");
        self.net = Some(Net {
            conn,
            q: [VecDeque::new(), VecDeque::new()],
            enc: Encoder::new(id),
            dec: [Decoder::new(id), Decoder::new(id)],
            rbuf: [BytesMut::new(), BytesMut::new()],
            silent: false,
        });
        let clean =
            d.iter().all(|&x| x == SyncDecision::NoSync) && hello.iter().all(|h| h.dirty_bits == 0);
        if clean {
            // Convergence: a pair that decides "nothing to sync" holds the same data (but
            // for bit rot, which only verify finds).
            let (v0, v1) = (self.n[0].view(), self.n[1].view());
            let differ: Vec<usize> = (0..v0.len())
                .filter(|&b| v0[b] != v1[b])
                .filter(|b| !self.rot.contains(b))
                .collect();
            assert!(
                differ.is_empty(),
                "nodes decided NoSync with clean bitmaps but their disks differ in blocks {differ:?}"
            );
        }
        self.hist = None;
        if let Some(p) = self.primary().filter(|_| clean) {
            self.hist = Some(Hist {
                conn,
                primary: p,
                base: self.n[p].view(),
                writes: Vec::new(),
            });
        }
        let now = self.now;
        for i in 0..2 {
            let peer_current = hello[1 - i].gen.current;
            self.n[i].start_session(conn, peer_current, now);
            if let Some(s) = self.n[i].sess.as_mut() {
                s.clean_start = clean;
            }
            self.n[i].peer_role = Some(hello[1 - i].role);
            let di = d[i];
            self.n[i].step(now, |c, ctx| c.start(ctx, di));
        }
        self.asked = [0; 2];
        self.answered = [0; 2];
        self.pump();
    }

    /// Both sides learn that the connection is gone (reset) and end their sessions.
    fn drop_conn(&mut self, why: &str) {
        let Some(net) = self.net.take() else { return };
        self.note(format!("connection #{} dropped: {why}", net.conn));
        for i in 0..2 {
            if self.n[i].up {
                let g = self.fresh_gen();
                let mut rng = StdRng::seed_from_u64(self.rng.random());
                self.n[i].finish(&mut rng, g);
            }
        }
        self.hist = None;
    }

    /// Move frames the cores produced onto the network; end sessions that closed.
    fn pump(&mut self) {
        for i in 0..2 {
            let frames: Vec<Frame> = match self.n[i].sess.as_mut() {
                Some(s) => std::mem::take(&mut s.out),
                None => continue,
            };
            for f in frames {
                if let Frame::BarrierAck { epoch } = f {
                    if let Some(s) = self.n[i].sess.as_mut() {
                        s.flushed_epoch = epoch;
                    }
                }
                let delay = self.rng.random_range(0..=self.knobs.delay_max_ms);
                let Some(net) = self.net.as_mut() else { break };
                if net.silent {
                    continue;
                }
                let mut b = BytesMut::new();
                net.enc.encode(&f, &mut b).expect("encode");
                let q = &mut net.q[1 - i];
                // TCP: never before the frame sent ahead of it.
                let at = q.back().map_or(0, |x| x.0).max(self.now + delay);
                q.push_back((at, b));
            }
        }
        let ended: Vec<String> = (0..2)
            .filter_map(|i| self.n[i].sess.as_ref().and_then(|s| s.end.clone()))
            .collect();
        if let Some(why) = ended.first() {
            let why = why.clone();
            if why.contains("simulated") {
                self.cov.eio_ends += 1;
            }
            if why.contains("no frame from the peer") {
                self.cov.liveness_ends += 1;
            }
            self.drop_conn(&why);
        }
    }

    fn deliver(&mut self, to: usize) {
        let Some(net) = self.net.as_mut() else { return };
        let Some((_, b)) = net.q[to].pop_front() else {
            return;
        };
        net.rbuf[to].extend_from_slice(&b);
        let f = match net.dec[to].decode(&mut net.rbuf[to]) {
            Ok(Some(f)) => f,
            other => panic!("the decoder refused a frame the encoder made: {other:?}"),
        };
        let now = self.now;
        if let Frame::PingAck { seq } = f {
            if seq & STATE_PING_BIT != 0 {
                self.answered[to] = self.answered[to].max(seq & !STATE_PING_BIT);
            }
        }
        let n = &mut self.n[to];
        if let Some(s) = n.sess.as_mut() {
            s.core.on_bytes(now);
        }
        n.step(now, |c, ctx| c.on_frame(ctx, f));
    }

    // ---- admin ----

    /// `drl primary` on node `i` (with `--force` when not connected).
    pub fn admin_primary(&mut self, i: usize) -> bool {
        let n = &self.n[i];
        if !n.up || n.role() == Role::Primary || n.disk_state() != DiskState::UpToDate {
            return false;
        }
        let connected = n.sess.is_some();
        if let Some(s) = n.sess.as_ref().filter(|_| connected) {
            // The daemon's rule (`drl primary` over a live link): refused while the peer is
            // Primary or this node SyncTarget, held (the admin retries) while writes received
            // from the old Primary are still landing.
            if promotion(n.peer_role, n.repl, s.core.idle()) != Promotion::Go {
                return false;
            }
        }
        if !connected
            && self.n[1 - i].up
            && self.n[1 - i].role() == Role::Primary
            && !self.n[1 - i].standalone
            && !self.n[i].standalone
        {
            // A forced promotion with the peer alive as Primary is the admin making a split
            // brain: allowed (the next connect detects it), but rare.
            if self.rng.random_range(0..4) != 0 {
                return false;
            }
        }
        let g = self.fresh_gen();
        self.n[i]
            .meta
            .update(|sb| {
                sb.role = drl::volume::meta::Role::Primary;
                sb.flags |= drl::volume::meta::flags::WAS_PRIMARY;
                if !connected {
                    let mut x = gen_of(sb.gen);
                    x.start_new_generation(g);
                    sb.gen = gen_to_meta(x);
                }
            })
            .expect("metadata");
        self.state_change(i);
        self.promoted_at[i] = self.steps;
        self.note(format!("admin: primary on {i}"));
        if self.hist.as_ref().is_some_and(|h| h.primary != i) {
            self.hist = None;
        }
        self.hist_on_promotion(i);
        true
    }

    /// A promotion in a session that started clean: the prefix check starts here if both
    /// disks hold the same data and nothing is in flight.
    fn hist_on_promotion(&mut self, p: usize) {
        let Some(conn) = self.net.as_ref().map(|n| n.conn) else {
            return;
        };
        if self.hist.is_some() {
            return;
        }
        let quiet = self.n.iter().all(|n| {
            n.sess.as_ref().is_some_and(|s| {
                s.conn == conn
                    && s.clean_start
                    && s.end.is_none()
                    && s.ops.is_empty()
                    && s.core.idle()
                    && s.tracker.lock().unwrap().inflight_writes() == 0
            })
        });
        if quiet
            && self.n[0].view() == self.n[1].view()
            && self.n[0].view() == self.n[1 - p].stable()
        {
            self.hist = Some(Hist {
                conn,
                primary: p,
                base: self.n[p].view(),
                writes: Vec::new(),
            });
        }
    }

    pub fn admin_secondary(&mut self, i: usize) -> bool {
        if !self.n[i].up || self.n[i].role() != Role::Primary {
            return false;
        }
        self.n[i].app_flush();
        self.n[i]
            .meta
            .update(|sb| sb.role = drl::volume::meta::Role::Secondary)
            .expect("metadata");
        self.state_change(i);
        self.note(format!("admin: secondary on {i}"));
        true
    }

    fn state_change(&mut self, i: usize) {
        let (role, disk) = (self.n[i].role(), self.n[i].disk_state());
        if let Some(s) = self.n[i].sess.as_mut() {
            self.asked[i] += 1;
            s.out.push(Frame::StateChange {
                role,
                disk,
                ahead: false,
            });
            s.out.push(Frame::Ping {
                seq: STATE_PING_BIT | self.asked[i],
            });
        }
        self.pump();
    }

    pub fn admin_disconnect(&mut self, i: usize) {
        self.n[i].standalone = true;
        self.note(format!("admin: disconnect on {i}"));
        if let Some(s) = self.n[i].sess.as_mut() {
            s.out.push(Frame::Disconnect {
                reason: "admin".into(),
            });
        }
        self.drop_conn("admin disconnect");
    }

    pub fn admin_connect(&mut self, i: usize, discard: bool) {
        self.n[i].standalone = false;
        self.discard[i] = discard;
        self.note(format!("admin: connect on {i} discard={discard}"));
    }

    // ---- faults ----

    pub fn crash(&mut self, i: usize) {
        self.note(format!("crash of node {i}"));
        if self.n[i].role() == Role::Primary {
            self.cov.crashes_primary += 1;
        } else {
            self.cov.crashes_secondary += 1;
        }
        self.check_prefix(None);
        let flushed = self
            .hist
            .as_ref()
            .filter(|h| h.primary != i)
            .and_then(|h| self.n[i].sess.as_ref().filter(|s| s.conn == h.conn))
            .map(|s| s.flushed_epoch);
        // The peer sees a reset.
        if self.net.take().is_some() {
            let g = self.fresh_gen();
            let mut rng = StdRng::seed_from_u64(self.rng.random());
            self.n[1 - i].finish(&mut rng, g);
        }
        let mut rng = StdRng::seed_from_u64(self.rng.random());
        self.n[i].crash_and_restart(&mut rng);
        // Writes the crash took back were the application's to lose (it did not flush).
        let view = self.n[i].view();
        self.unshared[i].retain(|&b, &mut (t, _)| view[b] == t);
        if let Some(k) = flushed {
            // The crashed Secondary's surviving image (unflushed writes lost, torn, reordered).
            let img = self.n[i].stable();
            self.check_prefix(Some((k, &img)));
            self.cov.crash_prefix_checks += 1;
        }
        self.hist = None;
    }

    // ---- the run ----

    /// One random step.
    pub fn step(&mut self, faults: bool) {
        self.steps += 1;
        let k = self.knobs;
        let r = self.rng.random_range(0..1000u32);
        let due = |w: &World, i: usize| {
            // The shell reads only while the core takes input (e.g. not while online verify
            // holds a VerifyDigests until every earlier write is on the disk).
            let takes = w.n[i].sess.as_ref().is_none_or(|s| s.core.wants_input());
            takes
                && w.net
                    .as_ref()
                    .and_then(|n| n.q[i].front())
                    .is_some_and(|f| f.0 <= w.now)
        };
        if faults && r < k.faults_permille {
            match self.rng.random_range(0..7) {
                0 => {
                    if self.net.is_some() {
                        self.cov.cuts_reset += 1;
                    }
                    self.drop_conn("cut (reset)")
                }
                1 => {
                    if let Some(n) = self.net.as_mut() {
                        self.cov.cuts_silent += 1;
                        n.silent = true;
                        n.q = [VecDeque::new(), VecDeque::new()];
                        self.note("cut (silent)".into());
                    }
                }
                2 | 3 => {
                    let i = self.rng.random_range(0..2);
                    self.crash(i);
                }
                6 => {
                    let i = self.rng.random_range(0..2);
                    let b = self.rng.random_range(0..self.knobs.blocks as usize);
                    self.corrupt(i, b);
                }
                _ => {
                    let i = self.rng.random_range(0..2);
                    self.n[i].eio = true;
                    self.note(format!("EIO armed on {i}"));
                }
            }
        } else if faults && r < k.faults_permille + k.admin_permille {
            let i = self.rng.random_range(0..2);
            match self.rng.random_range(0..7) {
                5 => {
                    self.admin_verify(i);
                }
                6 => self.admin_snapshot(i),
                0 => {
                    self.admin_primary(i);
                }
                1 => {
                    self.admin_secondary(i);
                }
                2 => self.admin_disconnect(i),
                _ => {
                    let discard = self.n[i].standalone
                        && self.rng.random_range(0..2) == 0
                        && self.n[i].role() == Role::Secondary;
                    self.admin_connect(i, discard)
                }
            }
        } else if r < 400 {
            if let Some(p) = self
                .primary()
                .filter(|&p| self.writes_on && self.writable(p))
            {
                let len = self
                    .rng
                    .random_range(1..=k.max_write_blocks)
                    .min(k.blocks as usize);
                let mut first = self.rng.random_range(0..=(k.blocks as usize - len));
                let mut len = len;
                if let Some(split) = k.group_split.map(|b| b as usize) {
                    // A write lies in one volume of the group.
                    if first < split && first + len > split {
                        if self.rng.random_bool(0.5) {
                            len = split - first;
                        } else {
                            len -= split - first;
                            first = split;
                        }
                    }
                }
                let fua = self.rng.random_range(0..10) == 0;
                self.write(p, first, len, fua);
            } else {
                self.tick();
            }
        } else if r < 430 && self.writes_on {
            if let Some(p) = self.primary() {
                self.n[p].app_flush();
            }
        } else if r < 700 && (due(self, 0) || due(self, 1)) {
            let to = if due(self, 0) && (!due(self, 1) || self.rng.random_range(0..2) == 0) {
                0
            } else {
                1
            };
            self.deliver(to);
        } else if r < 900
            && self
                .n
                .iter()
                .any(|n| n.sess.as_ref().is_some_and(|s| !s.ops.is_empty()))
        {
            let i = if self.n[0].sess.as_ref().is_some_and(|s| !s.ops.is_empty())
                && (self.n[1].sess.as_ref().is_none_or(|s| s.ops.is_empty())
                    || self.rng.random_range(0..2) == 0)
            {
                0
            } else {
                1
            };
            let len = self.n[i].sess.as_ref().map_or(0, |s| s.ops.len());
            let j = self.rng.random_range(0..len);
            let now = self.now;
            self.n[i].complete(j, now);
        } else if self.net.is_none() && self.rng.random_range(0..4) == 0 {
            self.connect();
        } else {
            self.tick();
        }
        self.pump();
        self.check();
    }

    pub fn write(&mut self, p: usize, first: usize, len: usize, fua: bool) -> bool {
        let tags: Vec<u64> = (0..len as u64).map(|i| self.next_tag + i).collect();
        let now = self.now;
        let Some(epoch) = self.n[p].app_write(first, &tags, fua, now) else {
            return false;
        };
        self.next_tag += len as u64;
        self.cov.acked_writes += 1;
        for (k, t) in tags.iter().enumerate() {
            self.unshared[p].insert(first + k, (*t, self.steps));
        }
        if let Some(net) = &self.net {
            let conn = net.conn;
            // Never two Primaries that both acknowledge while connected (a forced promotion
            // during a cut is the admin's split brain, found at the next connect).
            assert!(
                !self.writable(1 - p),
                "two Primaries acknowledge writes in connection #{conn}"
            );
            if let Some(h) = self
                .hist
                .as_mut()
                .filter(|h| h.conn == conn && h.primary == p)
            {
                h.writes.push((epoch, first, tags));
            }
        }
        true
    }

    pub fn tick(&mut self) {
        self.now += TICK_MS;
        let now = self.now;
        for i in 0..2 {
            self.n[i].step(now, |c, ctx| c.on_tick(ctx, None));
        }
        if self.persist_on && now - self.last_persist >= PERSIST_MS {
            self.last_persist = now;
            for n in self.n.iter_mut().filter(|n| n.up) {
                n.persist();
            }
        }
    }

    // ---- invariants ----

    fn check(&mut self) {
        let (v0, v1) = (self.n[0].view(), self.n[1].view());
        self.rot.retain(|&b| v0[b] != v1[b]);
        self.check_verify_ends();
        for i in 0..2 {
            let peer = self.n[1 - i].view();
            self.unshared[i].retain(|&b, &mut (t, _)| peer[b] != t);
        }
        // Status equals the state the next admin command acts on: a node's replication state
        // matches its core's resync role.
        for n in &self.n {
            if let Some(s) = n.sess.as_ref().filter(|s| s.end.is_none()) {
                use drl::repl::core::SyncRole;
                match s.core.sync_role() {
                    Some(SyncRole::Target) => assert!(
                        matches!(n.repl, ReplState::WFBitMapT | ReplState::SyncTarget),
                        "node {} is SyncTarget in its core but shows {:?}",
                        n.name,
                        n.repl
                    ),
                    Some(SyncRole::Source) => assert!(
                        matches!(n.repl, ReplState::WFBitMapS | ReplState::SyncSource),
                        "node {} is SyncSource in its core but shows {:?}",
                        n.name,
                        n.repl
                    ),
                    None => assert!(
                        !matches!(
                            n.repl,
                            ReplState::SyncTarget
                                | ReplState::SyncSource
                                | ReplState::WFBitMapS
                                | ReplState::WFBitMapT
                        ),
                        "node {} shows {:?} without a resync in its core",
                        n.name,
                        n.repl
                    ),
                }
            }
        }
        self.check_prefix(None);
        self.check_snapshots();
    }

    /// No acknowledged write is overwritten without the admin's decision (issue 12, the
    /// two-Primary window): a node that becomes SyncTarget (without `--discard-my-data` or a
    /// split-brain policy that chose it) may
    /// lose only writes it acknowledged before the source's last promotion (a failover: the
    /// asynchronous replication's loss). A write it acknowledged after that promotion means
    /// both were Primary and acknowledged: the connect must find the split brain.
    fn check_nothing_overwritten_silently(&mut self, d: &[SyncDecision; 2], by_admin: [bool; 2]) {
        let after = |w: &World, i: usize| -> Vec<(usize, u64, u64)> {
            let mut v: Vec<_> = w.unshared[i]
                .iter()
                .filter(|(_, &(_, at))| at > w.promoted_at[1 - i])
                .map(|(&b, &(t, at))| (b, t, at))
                .collect();
            v.sort_unstable();
            v
        };
        if !after(self, 0).is_empty() && !after(self, 1).is_empty() {
            self.cov.two_primary_connects += 1;
        }
        for i in 0..2 {
            if by_admin[i] {
                self.unshared[i].clear();
                continue;
            }
            let target = matches!(
                d[i],
                SyncDecision::BitmapSyncTarget | SyncDecision::FullSyncTarget
            );
            if !target {
                continue;
            }
            let lost = after(self, i);
            assert!(
                lost.is_empty(),
                "node {i} becomes SyncTarget ({:?}) and loses writes it acknowledged after node {}'s promotion at step {}: (block, tag, step) {lost:?}",
                d[i],
                1 - i,
                self.promoted_at[1 - i]
            );
            // Older ones were lost to the failover.
            self.unshared[i].clear();
        }
    }

    /// Crash consistency: the Secondary's stable disk is the Primary's image after every
    /// write of the epochs it acked, plus any subset of the next epoch's writes.
    fn check_prefix(&mut self, at: Option<(u64, &[u64])>) {
        if self.hist.as_ref().is_some_and(|h| !h.writes.is_empty()) {
            self.cov.prefix_checks_with_writes += 1;
        }
        let Some(h) = &self.hist else { return };
        let s = 1 - h.primary;
        let stable;
        let (k, img_s) = match at {
            Some(x) => x,
            None => {
                let Some(sess) = self.n[s].sess.as_ref().filter(|x| x.conn == h.conn) else {
                    return;
                };
                stable = self.n[s].stable();
                (sess.flushed_epoch, &stable[..])
            }
        };
        let mut img = h.base.clone();
        for (e, first, tags) in &h.writes {
            if *e <= k {
                img[*first..*first + tags.len()].copy_from_slice(tags);
            }
        }
        for b in 0..img.len() {
            if img_s[b] == img[b] {
                continue;
            }
            let next = h.writes.iter().any(|(e, first, tags)| {
                *e == k + 1
                    && (*first..*first + tags.len()).contains(&b)
                    && tags[b - first] == img_s[b]
            });
            assert!(
                next,
                "the Secondary's disk is not a prefix of the Primary's writes: block {b} holds {} where epoch {k} gives {}",
                img_s[b], img[b]
            );
        }
    }

    /// Heal: no more faults, everyone up and connected, the data settled. Then both disks
    /// must be identical.
    pub fn heal(&mut self) {
        self.heal_nodes();
        self.cov.group_volume_resyncs = self.n.iter().map(|n| n.served_later_volumes).sum();
    }

    fn heal_nodes(&mut self) {
        self.note("heal".into());
        self.writes_on = false;
        for i in 0..2 {
            self.n[i].eio = false;
        }
        if let Some(n) = self.net.as_ref().filter(|n| n.silent) {
            let _ = n;
            self.drop_conn("heal: the silent cut ends");
        }
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 50, "the pair did not converge");
            if self.n.iter().any(|n| n.standalone) {
                // A split brain, or an admin disconnect: the admin decides (the Secondary,
                // or node b, discards its data).
                let loser =
                    if self.n[1].role() == Role::Primary && self.n[0].role() != Role::Primary {
                        0
                    } else {
                        1
                    };
                if self.n[loser].role() == Role::Primary {
                    self.admin_secondary(loser);
                }
                self.drop_conn("heal");
                self.admin_connect(1 - loser, false);
                self.admin_connect(loser, true);
            }
            self.connect();
            // Run until quiet.
            let mut n = 0;
            while n < 20_000 {
                n += 1;
                self.step(false);
                if self.settled() {
                    break;
                }
            }
            if self.settled() {
                break;
            }
            self.drop_conn("heal: retry");
        }
        if let Some(p) = self.primary() {
            self.n[p].app_flush();
        }
        self.settle();
        self.verify_and_repair();
        assert_eq!(
            self.n[0].view(),
            self.n[1].view(),
            "after healing the disks differ"
        );
        assert_eq!(self.n[0].dirty_bits(), 0);
        assert_eq!(self.n[1].dirty_bits(), 0);
    }

    /// Nothing on its way in either direction.
    pub fn idle_net(&self) -> bool {
        self.net
            .as_ref()
            .is_none_or(|n| n.q.iter().all(|q| q.is_empty()))
    }

    /// Connected, both Established, nothing in flight, every bit clean.
    pub fn settled(&self) -> bool {
        let Some(net) = &self.net else { return false };
        net.q.iter().all(|q| q.is_empty())
            && self.n.iter().all(|n| {
                n.repl == ReplState::Established
                    && n.disk_state() == DiskState::UpToDate
                    && n.dirty_bits() == 0
                    && n.sess.as_ref().is_some_and(|s| {
                        s.ops.is_empty()
                            && s.core.idle()
                            && s.tracker.lock().unwrap().inflight_writes() == 0
                    })
            })
    }

    /// Run until settled (no faults); panics if it does not.
    pub fn settle(&mut self) {
        let on = std::mem::replace(&mut self.writes_on, false);
        for _ in 0..200_000 {
            if self.settled() {
                self.writes_on = on;
                return;
            }
            self.step(false);
        }
        panic!("did not settle: {}", self.dump());
    }

    pub fn dump(&self) -> String {
        let mut out = format!(
            "net: {}",
            self.net.as_ref().map_or("none".to_string(), |n| format!(
                "#{} silent={} q=[{}, {}]",
                n.conn,
                n.silent,
                n.q[0].len(),
                n.q[1].len()
            ))
        );
        for n in &self.n {
            out += &format!(
                "\n  {}: up={} role={:?} disk={:?} repl={:?} standalone={} dirty={} sess={}",
                n.name,
                n.up,
                n.role(),
                n.disk_state(),
                n.repl,
                n.standalone,
                n.dirty_bits(),
                n.sess.as_ref().map_or("none".to_string(), |s| format!(
                    "#{} end={:?} ops={} idle={} inflight={} sync={:?}",
                    s.conn,
                    s.end,
                    s.ops.len(),
                    s.core.idle(),
                    s.tracker.lock().unwrap().inflight_writes(),
                    s.core.sync_role()
                ))
            );
        }
        out
    }

    /// Deliver every frame on its way to node `to` now, in order (a directed test's
    /// "the network delivered everything").
    pub fn deliver_all(&mut self, to: usize) {
        while self.net.as_ref().is_some_and(|n| !n.q[to].is_empty()) {
            self.deliver(to);
            self.pump();
        }
    }

    /// Complete one disk operation node `i` issued; false if none is pending.
    pub fn complete_one(&mut self, i: usize) -> bool {
        if self.n[i].sess.as_ref().is_none_or(|s| s.ops.is_empty()) {
            return false;
        }
        let now = self.now;
        self.n[i].complete(0, now);
        self.pump();
        true
    }

    /// A connection is up (both sessions run on it).
    pub fn connected(&self) -> bool {
        self.net.is_some()
    }

    /// Disk operations node `i` issued and that did not complete yet.
    pub fn ops_pending(&self, i: usize) -> usize {
        self.n[i].sess.as_ref().map_or(0, |s| s.ops.len())
    }

    pub fn pause_ms(&mut self, ms: u64) {
        let on = std::mem::replace(&mut self.writes_on, false);
        let end = self.now + ms;
        while self.now < end {
            self.step(false);
        }
        self.writes_on = on;
    }
}
