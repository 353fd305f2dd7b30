//! The resync decision after a connect: compare both nodes' generation ids, roles, disk
//! states and dirty-bit counts, and decide who syncs from whom — DRBD's `uuid_compare`,
//! reproduced from the DRBD user guide ("Generation Identifiers", "Split brain").
//!
//! Pure: both nodes call [`decide`] with the arguments swapped and get mirrored answers
//! (a proptest checks it), so they agree without another round trip.
//!
//! # Rules, in order (`l` = local, `p` = peer; "current" etc. are the generation ids)
//!
//! | rule | condition | decision |
//! |---|---|---|
//! | 5 | either disk is not Inconsistent/Outdated/Consistent/UpToDate | NoSync (nothing to compare) |
//! | 10 | both current are 0 (fresh pair, never synced) | NoSync: wait until one side is forced Primary |
//! | 20 | l.current is 0, p.current is not | FullSyncTarget (initial full sync; zero blocks may be skipped) |
//! | 30 | p.current is 0, l.current is not | FullSyncSource |
//! | 40 | l.current == p.current | see 41–44 |
//! | 41 | ... one disk Inconsistent, the other has good data | bitmap sync from the good disk |
//! | 42 | ... only one side has dirty bits | bitmap sync from the side with bits (crashed Primary) |
//! | 43 | ... both have dirty bits | the Primary is source; neither Primary: more bits is source; else split brain |
//! | 44 | ... no dirty bits | NoSync |
//! | 50 | l.current == p.bitmap (peer moved on from our generation) | BitmapSyncTarget |
//! | 70 | l.bitmap == p.current (we moved on from the peer's generation) | BitmapSyncSource |
//! | 60 | l.current is in p.history (peer moved on more than once) | FullSyncTarget |
//! | 80 | p.current is in l.history | FullSyncSource |
//! | 90 | l.bitmap == p.bitmap != 0 (both moved on from the same generation) | split brain, bitmap resolvable |
//! | 100 | a history id (or bitmap) of one side is in the other's history | split brain, full sync to resolve |
//! | 1000 | nothing in common | Unrelated: refuse, never sync |
//!
//! A pair of mirrored rules that both hold (50 and 70, or 60 and 80) means both sides moved
//! on: split brain. A decided source whose disk holds no good data (Inconsistent) cannot be
//! a source: rule 4, NoSync until the admin decides.
//!
//! # Split brain
//!
//! Never resolved silently unless a policy says so (DRBD `after-sb-*`):
//! - no Primary: `after-sb-0pri` = `disconnect` (default) or `discard-zero-changes` (the side
//!   without dirty bits becomes target);
//! - one Primary: `after-sb-1pri` = `discard-secondary` (drl's default: the Secondary's
//!   changes are thrown away, it becomes SyncTarget; DRBD's own default is `disconnect`) or
//!   `disconnect`;
//! - two Primaries: always `disconnect`.
//!
//! In a bitmap sync the source sends every block that is dirty in either bitmap: the target's
//! own dirty bits (its writes the source never saw) must be overwritten too. The union is made
//! by exchanging BitmapChunk frames.

use drbd_compat::{DiskState, ReplState, Role};
use serde::{Deserialize, Serialize};

use crate::repl::gen::GenIds;

/// What one node knows about itself at connect time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    pub role: Role,
    pub disk: DiskState,
    pub gen: GenIds,
    pub dirty_bits: u64,
}

/// What `drl primary` does on a node with a live link to its peer (issue 12, the two-Primary
/// window). Pure: the daemon ([`crate::repl::replicator::Replicator::primary`]) and the
/// deterministic simulator (`tests/sim`) take the same decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// Become Primary now.
    Go,
    /// Refused, with the reason for the admin.
    Refuse(&'static str),
    /// Not yet: writes received from the old Primary are still on their way to the disk (it
    /// demoted, but its last writes were queued or being applied here). A user write of the
    /// new Primary must not be overtaken by an older one of the old Primary: wait until the
    /// receiver is idle.
    WaitForReceivedWrites,
}

/// [`Promotion`] from what the node knows: the peer's role as its last StateChange or Hello
/// said, the replication state, and whether every write received on the link is on the disk.
pub fn promotion(peer_role: Option<Role>, repl: ReplState, rx_idle: bool) -> Promotion {
    if peer_role == Some(Role::Primary) {
        Promotion::Refuse(
            "the peer is Primary: demote it first (two Primaries would overwrite each other)",
        )
    } else if repl == ReplState::SyncTarget {
        Promotion::Refuse("this node is SyncTarget: its data is incomplete until the resync ends")
    } else if !rx_idle {
        Promotion::WaitForReceivedWrites
    } else {
        Promotion::Go
    }
}

/// Whether a promotion has taken effect for application writes: over a live link once the
/// peer confirmed it (its PingAck behind the StateChange: it applied the new role), or once
/// the link closed (the next handshake carries the role). Before that, two nodes promoted at
/// the same instant would both acknowledge while connected until their StateChanges cross.
pub fn promotion_settled(link_open: bool, peer_confirmed: bool) -> bool {
    !link_open || peer_confirmed
}

/// The outcome of the comparison, from the local node's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncDecision {
    NoSync,
    BitmapSyncSource,
    BitmapSyncTarget,
    FullSyncSource,
    FullSyncTarget,
    SplitBrain,
    Unrelated,
}

impl SyncDecision {
    /// The same decision seen from the peer.
    pub fn mirror(self) -> Self {
        use SyncDecision::*;
        match self {
            BitmapSyncSource => BitmapSyncTarget,
            BitmapSyncTarget => BitmapSyncSource,
            FullSyncSource => FullSyncTarget,
            FullSyncTarget => FullSyncSource,
            other => other,
        }
    }

    /// The replication state to enter; `None`: drop the connection and stay StandAlone.
    pub fn repl_state(self) -> Option<ReplState> {
        use SyncDecision::*;
        match self {
            NoSync => Some(ReplState::Established),
            BitmapSyncSource => Some(ReplState::WFBitMapS),
            BitmapSyncTarget => Some(ReplState::WFBitMapT),
            FullSyncSource => Some(ReplState::StartingSyncS),
            FullSyncTarget => Some(ReplState::StartingSyncT),
            SplitBrain | Unrelated => None,
        }
    }

    fn is_source(self) -> bool {
        matches!(
            self,
            SyncDecision::BitmapSyncSource | SyncDecision::FullSyncSource
        )
    }
}

/// DRBD `after-sb-0pri`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSb0Pri {
    #[default]
    Disconnect,
    DiscardZeroChanges,
}

/// DRBD `after-sb-1pri`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSb1Pri {
    #[default]
    DiscardSecondary,
    Disconnect,
}

/// The split-brain policies (two Primaries always disconnect).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SplitBrainPolicy {
    pub after_sb_0pri: AfterSb0Pri,
    pub after_sb_1pri: AfterSb1Pri,
}

/// A decision and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub decision: SyncDecision,
    /// The rule of the table above that decided (for logs: "by rule 70", like DRBD).
    pub rule: u32,
    /// A split brain was detected and a policy resolved it (the loser's changes are lost:
    /// log it loudly).
    pub split_brain_resolved: bool,
}

/// Decide the resync direction for `local` connecting to `peer` (DRBD's `uuid_compare` plus
/// its split-brain policies).
pub fn decide(local: &NodeState, peer: &NodeState, policy: &SplitBrainPolicy) -> Decision {
    let (raw, rule) = compare(local, peer);
    let plain = |decision| Decision {
        decision,
        rule,
        split_brain_resolved: false,
    };
    match raw {
        Raw::Decided(d) => {
            let source_disk = if d.is_source() {
                Some(local.disk)
            } else if d.mirror().is_source() {
                Some(peer.disk)
            } else {
                None
            };
            match source_disk {
                Some(disk) if !disk.has_good_data() => Decision {
                    decision: SyncDecision::NoSync,
                    rule: 4,
                    split_brain_resolved: false,
                },
                _ => plain(d),
            }
        }
        Raw::SplitBrain { full } => resolve_split_brain(local, peer, policy, rule, full),
    }
}

/// This node's replication state once its peer reported (in a StateChange) whether it is
/// Ahead: DRBD pairs a Primary's Ahead with the Secondary's Behind. Only an idle connection
/// (Established) goes Behind, and only Behind goes back; a resync state is left alone (the
/// resync back from Ahead makes the Secondary SyncTarget through the bitmap exchange).
pub fn with_peer_ahead(current: ReplState, peer_ahead: bool) -> ReplState {
    match (current, peer_ahead) {
        // An online verify running then stops (it needs writes shipped in order).
        (ReplState::Established | ReplState::VerifyS | ReplState::VerifyT, true) => {
            ReplState::Behind
        }
        (ReplState::Behind, false) => ReplState::Established,
        (s, _) => s,
    }
}

enum Raw {
    Decided(SyncDecision),
    /// `full`: bitmaps do not cover the divergence; resolving needs a full sync.
    SplitBrain {
        full: bool,
    },
}

fn usable(d: DiskState) -> bool {
    matches!(
        d,
        DiskState::Inconsistent | DiskState::Outdated | DiskState::Consistent | DiskState::UpToDate
    )
}

fn in_history(id: u64, g: &GenIds) -> bool {
    id != 0 && g.history.contains(&id)
}

fn compare(l: &NodeState, p: &NodeState) -> (Raw, u32) {
    use SyncDecision::*;
    let d = |x| Raw::Decided(x);
    let (lg, pg) = (&l.gen, &p.gen);
    if !usable(l.disk) || !usable(p.disk) {
        return (d(NoSync), 5);
    }
    match (lg.current == 0, pg.current == 0) {
        (true, true) => return (d(NoSync), 10),
        (true, false) => return (d(FullSyncTarget), 20),
        (false, true) => return (d(FullSyncSource), 30),
        (false, false) => {}
    }
    if lg.current == pg.current {
        return equal_generations(l, p);
    }
    let r50 = lg.current == pg.bitmap;
    let r70 = lg.bitmap != 0 && lg.bitmap == pg.current;
    match (r50, r70) {
        (true, true) => return (Raw::SplitBrain { full: false }, 90),
        (true, false) => return (d(BitmapSyncTarget), 50),
        (false, true) => return (d(BitmapSyncSource), 70),
        (false, false) => {}
    }
    let r60 = in_history(lg.current, pg);
    let r80 = in_history(pg.current, lg);
    match (r60, r80) {
        (true, true) => return (Raw::SplitBrain { full: true }, 100),
        (true, false) => return (d(FullSyncTarget), 60),
        (false, true) => return (d(FullSyncSource), 80),
        (false, false) => {}
    }
    if lg.bitmap != 0 && lg.bitmap == pg.bitmap {
        return (Raw::SplitBrain { full: false }, 90);
    }
    let shared = [lg.bitmap, lg.history[0], lg.history[1]]
        .iter()
        .any(|&id| id != 0 && (id == pg.bitmap || in_history(id, pg)));
    if shared {
        return (Raw::SplitBrain { full: true }, 100);
    }
    (d(Unrelated), 1000)
}

/// Rules 41–44: same generation on both sides.
fn equal_generations(l: &NodeState, p: &NodeState) -> (Raw, u32) {
    use SyncDecision::*;
    let d = |x| Raw::Decided(x);
    let (li, pi) = (
        l.disk == DiskState::Inconsistent,
        p.disk == DiskState::Inconsistent,
    );
    match (li, pi) {
        (true, false) => return (d(BitmapSyncTarget), 41),
        (false, true) => return (d(BitmapSyncSource), 41),
        (true, true) => return (d(NoSync), 41),
        (false, false) => {}
    }
    match (l.dirty_bits > 0, p.dirty_bits > 0) {
        (false, false) => (d(NoSync), 44),
        (true, false) => (d(BitmapSyncSource), 42),
        (false, true) => (d(BitmapSyncTarget), 42),
        (true, true) => {
            let (lp, pp) = (l.role == Role::Primary, p.role == Role::Primary);
            match (lp, pp) {
                (true, false) => (d(BitmapSyncSource), 43),
                (false, true) => (d(BitmapSyncTarget), 43),
                (true, true) => (Raw::SplitBrain { full: false }, 43),
                (false, false) => match l.dirty_bits.cmp(&p.dirty_bits) {
                    std::cmp::Ordering::Greater => (d(BitmapSyncSource), 43),
                    std::cmp::Ordering::Less => (d(BitmapSyncTarget), 43),
                    std::cmp::Ordering::Equal => (Raw::SplitBrain { full: false }, 43),
                },
            }
        }
    }
}

fn resolve_split_brain(
    l: &NodeState,
    p: &NodeState,
    policy: &SplitBrainPolicy,
    rule: u32,
    full: bool,
) -> Decision {
    let (src, tgt) = if full {
        (SyncDecision::FullSyncSource, SyncDecision::FullSyncTarget)
    } else {
        (
            SyncDecision::BitmapSyncSource,
            SyncDecision::BitmapSyncTarget,
        )
    };
    let unresolved = Decision {
        decision: SyncDecision::SplitBrain,
        rule,
        split_brain_resolved: false,
    };
    let resolved = |decision| Decision {
        decision,
        rule,
        split_brain_resolved: true,
    };
    // A side that cannot be a source never wins a split brain.
    let (lg, pg) = (l.disk.has_good_data(), p.disk.has_good_data());
    let primaries = (l.role == Role::Primary, p.role == Role::Primary);
    match primaries {
        (true, true) => unresolved,
        (false, false) => match policy.after_sb_0pri {
            AfterSb0Pri::Disconnect => unresolved,
            AfterSb0Pri::DiscardZeroChanges => match (l.dirty_bits == 0, p.dirty_bits == 0) {
                (true, false) if pg => resolved(tgt),
                (false, true) if lg => resolved(src),
                _ => unresolved,
            },
        },
        (lp, _) => match policy.after_sb_1pri {
            AfterSb1Pri::Disconnect => unresolved,
            AfterSb1Pri::DiscardSecondary => match (lp, lg, pg) {
                (true, true, _) => resolved(src),
                (false, _, true) => resolved(tgt),
                _ => unresolved,
            },
        },
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
