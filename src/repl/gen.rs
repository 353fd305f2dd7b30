//! DRBD-style generation identifiers (the "GI tuple") and how they change.
//!
//! A data generation is named by a random 64-bit id. Each node keeps (DRBD user guide,
//! "Generation Identifiers"):
//! - `current`: the generation its data belongs to (equal on both nodes while connected and
//!   in sync);
//! - `bitmap`: the generation the dirty bitmap tracks changes against (0 while connected and
//!   in sync; set when this node moves on without its peer);
//! - `history[2]`: the two generations before `current`.
//!
//! `0` means "none". A fresh volume has all four at 0 ("just created" in DRBD).
//!
//! Transitions (DRBD user guide, "How generation identifiers change"):
//!
//! | event | change |
//! |---|---|
//! | a new data generation starts: a disconnected node is promoted (also with `--force`), or a Primary loses its peer | `bitmap := current` (if `bitmap` was 0, else `current` goes to history), `current := new random` |
//! | resync finished, this node was SyncSource | `history := [bitmap, history[0]]`, `bitmap := 0` |
//! | resync finished, this node was SyncTarget | `history := [current, history[0]]`, `current := source's current`, `bitmap := 0` |
//! | connected, generations equal, nothing to sync | `bitmap := 0` (moved to history) |
//! | first forced promotion of a fresh pair | `current := new random` (the full sync that follows makes the peer adopt it) |

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The generation identifier tuple of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct GenIds {
    pub current: u64,
    pub bitmap: u64,
    pub history: [u64; 2],
}

impl std::fmt::Display for GenIds {
    /// DRBD's `show-gi` order: current:bitmap:history0:history1 in hex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:016X}:{:016X}:{:016X}:{:016X}",
            self.current, self.bitmap, self.history[0], self.history[1]
        )
    }
}

/// A fresh random generation id (never 0, which means "none").
pub fn new_uuid() -> u64 {
    new_uuid_from(&mut rand::rng())
}

/// A fresh generation id from the given generator (deterministic simulations pass a seeded one).
pub fn new_uuid_from<R: Rng + ?Sized>(rng: &mut R) -> u64 {
    loop {
        let v: u64 = rng.random();
        if v != 0 {
            return v;
        }
    }
}

impl GenIds {
    /// A volume that was never synced ("just created").
    pub fn fresh() -> Self {
        GenIds::default()
    }

    /// Whether this volume never had a data generation.
    pub fn is_fresh(&self) -> bool {
        self.current == 0
    }

    fn push_history(&mut self, id: u64) {
        if id != 0 && self.history[0] != id {
            self.history[1] = self.history[0];
            self.history[0] = id;
        }
    }

    /// Start a new data generation with the id `new` (DRBD `new-current-uuid`).
    ///
    /// Used when a Secondary is promoted while its peer is away (also `--force`), and when a
    /// Primary loses its peer. If the bitmap already tracks an older generation (this node was
    /// already running without its peer), the bitmap keeps tracking it: its dirty bits still
    /// cover everything since the peer last saw this node.
    pub fn start_new_generation(&mut self, new: u64) {
        if self.current == 0 {
            // First generation of a fresh volume: nothing to track against.
        } else if self.bitmap == 0 {
            self.bitmap = self.current;
        } else {
            self.push_history(self.current);
        }
        self.current = new;
    }

    /// [`Self::start_new_generation`] with a random id, for a node promoted without a peer.
    pub fn new_current_on_promote_without_peer(&mut self) -> u64 {
        let id = new_uuid();
        self.start_new_generation(id);
        id
    }

    /// [`Self::start_new_generation`] with a random id, for a Primary that lost its peer.
    pub fn new_current_on_peer_lost_as_primary(&mut self) -> u64 {
        let id = new_uuid();
        self.start_new_generation(id);
        id
    }

    /// A resync in which this node was SyncSource finished: the peer now holds `current`.
    pub fn on_resync_finished_as_source(&mut self) {
        if self.bitmap != 0 {
            self.push_history(self.bitmap);
            self.bitmap = 0;
        }
    }

    /// A resync in which this node was SyncTarget finished: it now holds `source_current`.
    pub fn on_resync_finished_as_target(&mut self, source_current: u64) {
        if self.current != source_current {
            self.push_history(self.current);
        }
        self.current = source_current;
        self.bitmap = 0;
    }

    /// Connected with equal generations and nothing to sync: the bitmap tracks nothing.
    pub fn on_connected_in_sync(&mut self) {
        if self.bitmap != 0 {
            self.push_history(self.bitmap);
            self.bitmap = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_without_peer_moves_current_to_bitmap() {
        // DRBD user guide, "Start of a new data generation": current -> bitmap, new current.
        let mut g = GenIds {
            current: 0xA,
            bitmap: 0,
            history: [0x9, 0x8],
        };
        g.start_new_generation(0xB);
        assert_eq!(
            g,
            GenIds {
                current: 0xB,
                bitmap: 0xA,
                history: [0x9, 0x8]
            }
        );
        // A second new generation while still apart keeps the bitmap's base generation.
        g.start_new_generation(0xC);
        assert_eq!(
            g,
            GenIds {
                current: 0xC,
                bitmap: 0xA,
                history: [0xB, 0x9]
            }
        );
    }

    #[test]
    fn resync_end_moves_bitmap_to_history_on_source_and_adopts_current_on_target() {
        // DRBD user guide, "Completion of re-synchronization".
        let mut src = GenIds {
            current: 0xB,
            bitmap: 0xA,
            history: [0x9, 0x8],
        };
        let mut tgt = GenIds {
            current: 0xA,
            bitmap: 0,
            history: [0x9, 0x8],
        };
        src.on_resync_finished_as_source();
        tgt.on_resync_finished_as_target(src.current);
        assert_eq!(
            src,
            GenIds {
                current: 0xB,
                bitmap: 0,
                history: [0xA, 0x9]
            }
        );
        assert_eq!(
            tgt,
            GenIds {
                current: 0xB,
                bitmap: 0,
                history: [0xA, 0x9]
            }
        );
    }

    #[test]
    fn fresh_volume_gets_a_first_generation_without_bitmap() {
        let mut g = GenIds::fresh();
        assert!(g.is_fresh());
        let id = g.new_current_on_promote_without_peer();
        assert_ne!(id, 0);
        assert_eq!(
            g,
            GenIds {
                current: id,
                bitmap: 0,
                history: [0, 0]
            }
        );
    }

    #[test]
    fn display_is_drbd_show_gi_order() {
        let g = GenIds {
            current: 0x7622BD9FADB3F245,
            bitmap: 0xF41008BDA13DED73,
            history: [1, 0],
        };
        assert_eq!(
            g.to_string(),
            "7622BD9FADB3F245:F41008BDA13DED73:0000000000000001:0000000000000000"
        );
    }
}
