//! The drill's verdict: is what a site holds a prefix of the writer's acknowledged writes, and
//! what was lost (RPO)?
//!
//! With DRBD protocol A the backup applies the primary's writes in order, so after a disaster
//! each replicated volume must hold exactly the writes up to some point of the sequence (its
//! *cut*), nothing later and nothing torn. The checker finds each volume's cut (the newest
//! sequence number on it), then demands that every block holds the newest write to it at or
//! before the cut. Volumes replicated together in one consistency group must share one cut;
//! separate resources each have their own, which is why `group_prefix` is reported apart.
//!
//! Lost writes are the acknowledged writes after their volume's cut: their count, bytes and the
//! time they span (from the oldest one's submission to the newest one's acknowledgement) are the
//! RPO. A write that was sent but never acknowledged may or may not be there; it is never lost.

use std::collections::HashMap;

use serde::Serialize;

use super::record::{Block, Log, BLOCK_BYTES};

/// What one volume holds against the log.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VolumeVerdict {
    pub volume: u32,
    /// The newest write found on the volume (0: none).
    pub cut_seq: u64,
    /// Blocks that are not the newest write at or before the cut, or are damaged.
    pub violations: Vec<String>,
    /// Acknowledged writes to this volume after its cut.
    pub lost_writes: u64,
}

/// The whole verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub volumes: Vec<VolumeVerdict>,
    pub writes_sent: u64,
    pub writes_acked: u64,
    /// Every volume is a prefix of the sequence (each with its own cut).
    pub prefix: bool,
    /// All volumes together are one prefix (one cut): crash-consistent as a group.
    pub group_prefix: bool,
    pub lost_writes: u64,
    pub lost_bytes: u64,
    /// From the submission of the oldest lost acknowledged write to the acknowledgement of
    /// the newest one; 0 when nothing was lost.
    pub rpo_seconds: f64,
}

/// Newest write to each (volume, block) at or before each point is found by scanning the log
/// once per cut; logs are at most a few million writes.
fn expected_at(log: &Log, cut: u64, volume: u32) -> HashMap<u32, u64> {
    let mut m = HashMap::new();
    for w in log.writes.iter().take_while(|w| w.seq <= cut) {
        if w.volume == volume {
            m.insert(w.block, w.seq);
        }
    }
    m
}

fn compare(log: &Log, blocks: &[Block], volume: u32, cut: u64, scope: Scope) -> Vec<String> {
    let want = expected_at(log, cut, volume);
    let touched = match scope {
        Scope::WholeVolume => None,
        Scope::WrittenBlocks => Some(expected_at(log, u64::MAX, volume)),
    };
    let mut out = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let i = i as u32;
        if touched.as_ref().is_some_and(|t| !t.contains_key(&i)) {
            continue;
        }
        let have = match b {
            Block::Empty => 0,
            Block::Written(r) => r.seq,
            Block::Bad(why) => {
                out.push(format!("volume {volume} block {i}: {why}"));
                continue;
            }
        };
        let expect = want.get(&i).copied().unwrap_or(0);
        if have != expect {
            out.push(format!(
                "volume {volume} block {i} holds write {have}, a prefix up to {cut} needs {expect}"
            ));
        }
    }
    out
}

/// Which blocks a check judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every block: the volumes started empty before the log's run (a drill's first run).
    WholeVolume,
    /// Only blocks the log wrote: the volumes held an earlier run's data (a run after a
    /// failover, checked after the switchover back).
    WrittenBlocks,
}

/// Check `volumes[v]` (every block of volume v, decoded) against `log`.
pub fn check(log: &Log, volumes: &[Vec<Block>], scope: Scope) -> Verdict {
    let mut vv = Vec::new();
    for (v, blocks) in volumes.iter().enumerate() {
        let v = v as u32;
        let mut violations = Vec::new();
        let mut cut = 0;
        let written = expected_at(log, u64::MAX, v);
        for (i, b) in blocks.iter().enumerate() {
            if scope == Scope::WrittenBlocks && !written.contains_key(&(i as u32)) {
                continue;
            }
            if let Block::Written(r) = b {
                match log.writes.get((r.seq as usize).wrapping_sub(1)) {
                    Some(w) if w.volume == v && w.block == i as u32 => cut = cut.max(r.seq),
                    _ => violations.push(format!(
                        "volume {v} block {i} holds write {} that the log never sent there",
                        r.seq
                    )),
                }
            }
        }
        violations.extend(compare(log, blocks, v, cut, scope));
        let lost = log
            .writes
            .iter()
            .filter(|w| w.volume == v && w.seq > cut && w.ack_ns.is_some())
            .count() as u64;
        vv.push(VolumeVerdict {
            volume: v,
            cut_seq: cut,
            violations,
            lost_writes: lost,
        });
    }
    let prefix = vv.iter().all(|v| v.violations.is_empty());
    let group_cut = vv.iter().map(|v| v.cut_seq).max().unwrap_or(0);
    let group_prefix = prefix
        && volumes
            .iter()
            .enumerate()
            .all(|(v, b)| compare(log, b, v as u32, group_cut, scope).is_empty());
    let cut_of: HashMap<u32, u64> = vv.iter().map(|v| (v.volume, v.cut_seq)).collect();
    let lost: Vec<_> = log
        .writes
        .iter()
        .filter(|w| w.ack_ns.is_some() && w.seq > cut_of.get(&w.volume).copied().unwrap_or(0))
        .collect();
    let rpo_seconds = match (
        lost.iter().map(|w| w.submit_ns).min(),
        lost.iter().filter_map(|w| w.ack_ns).max(),
    ) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
        _ => 0.0,
    };
    Verdict {
        volumes: vv,
        writes_sent: log.writes.len() as u64,
        writes_acked: log.writes.iter().filter(|w| w.ack_ns.is_some()).count() as u64,
        prefix,
        group_prefix,
        lost_writes: lost.len() as u64,
        lost_bytes: lost.len() as u64 * BLOCK_BYTES as u64,
        rpo_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{LoggedWrite, Record};
    use super::*;

    fn log(ws: &[(u32, u32, bool)]) -> Log {
        Log {
            run: 1,
            volumes: 2,
            blocks: 4,
            writes: ws
                .iter()
                .enumerate()
                .map(|(i, &(volume, block, acked))| LoggedWrite {
                    seq: i as u64 + 1,
                    volume,
                    block,
                    submit_ns: (i as u64 + 1) * 1000,
                    ack_ns: acked.then_some((i as u64 + 1) * 1000 + 500),
                })
                .collect(),
        }
    }

    /// The volumes as the log leaves them after applying writes 1..=cut[v] to volume v.
    fn image(l: &Log, cuts: &[u64]) -> Vec<Vec<Block>> {
        (0..l.volumes)
            .map(|v| {
                let mut b = vec![Block::Empty; l.blocks as usize];
                for w in l
                    .writes
                    .iter()
                    .filter(|w| w.volume == v && w.seq <= cuts[v as usize])
                {
                    b[w.block as usize] = Block::Written(Record {
                        seq: w.seq,
                        t_ns: w.submit_ns,
                        volume: v,
                        block: w.block,
                        run: 1,
                    });
                }
                b
            })
            .collect()
    }

    #[test]
    fn a_whole_prefix_loses_the_tail() {
        // writes alternate volumes; the backup holds 1..=4, the log acked 1..=6, 7 in flight
        let l = log(&[
            (0, 0, true),
            (1, 0, true),
            (0, 1, true),
            (1, 1, true),
            (0, 0, true),
            (1, 2, true),
            (0, 3, false),
        ]);
        let v = check(&l, &image(&l, &[3, 4]), Scope::WholeVolume);
        assert!(v.prefix && v.group_prefix, "{v:?}");
        assert_eq!(v.lost_writes, 2);
        assert_eq!(v.lost_bytes, 2 * 4096);
        assert!((v.rpo_seconds - (6500.0 - 5000.0) / 1e9).abs() < 1e-12);
        // the unacknowledged write 7 being there too is fine
        let v = check(&l, &image(&l, &[7, 6]), Scope::WholeVolume);
        assert!(v.prefix && v.group_prefix && v.lost_writes == 0, "{v:?}");
    }

    #[test]
    fn separate_cuts_are_prefixes_but_not_a_group() {
        let l = log(&[(0, 0, true), (1, 0, true), (0, 1, true), (1, 1, true)]);
        // volume 0 has 1 and 3, volume 1 only... nothing: not one cut (2 is missing before 3)
        let v = check(&l, &image(&l, &[3, 0]), Scope::WholeVolume);
        assert!(v.prefix, "each volume alone is a prefix");
        assert!(!v.group_prefix, "write 2 is missing while 3 is there");
        assert_eq!(v.lost_writes, 2);
    }

    #[test]
    fn a_hole_or_damage_is_a_violation() {
        let l = log(&[(0, 0, true), (0, 1, true), (0, 2, true)]);
        let mut img = image(&l, &[3, 0]);
        img[0][1] = Block::Empty; // write 2 missing while 3 is there
        let v = check(&l, &img, Scope::WholeVolume);
        assert!(!v.prefix);
        assert_eq!(v.volumes[0].violations.len(), 1, "{v:?}");
        let mut img = image(&l, &[3, 0]);
        img[0][2] = Block::Bad("torn".into());
        assert!(!check(&l, &img, Scope::WholeVolume).prefix);
        let mut img = image(&l, &[3, 0]);
        if let Block::Written(r) = &mut img[0][0] {
            r.seq = 2; // write 2 went to block 1, not 0
        }
        assert!(!check(&l, &img, Scope::WholeVolume).prefix);
    }

    #[test]
    fn written_blocks_scope_ignores_an_earlier_runs_data() {
        let l = log(&[(0, 0, true), (0, 1, true)]);
        let mut img = image(&l, &[2, 0]);
        img[0][3] = Block::Bad("record of another run".into());
        assert!(!check(&l, &img, Scope::WholeVolume).prefix);
        let v = check(&l, &img, Scope::WrittenBlocks);
        assert!(v.prefix && v.lost_writes == 0, "{v:?}");
        img[0][1] = Block::Bad("record of another run".into()); // write 2 lost under it
        assert!(!check(&l, &img, Scope::WrittenBlocks).prefix);
    }
}
