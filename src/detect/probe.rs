//! The probe datagram: one fixed-size UDP message each way, authenticated, without I/O.
//!
//! ```text
//! 0   magic "DRLp"   4  version (1)   5  kind (1 probe, 2 answer)   6  name length   7  0
//! 8   seq u64 BE     the prober's sequence number (an answer echoes it)
//! 16  unix ms u64 BE the sender's wall clock when it sent this datagram
//! 24  name [32]      the sender's node name, zero padded
//! 56  mac [32]       HMAC-SHA256(key, cluster || bytes 0..56)
//! ```
//!
//! A probe is answered only if its MAC is right (the key: `[detect] probe-key`, by default the
//! resource secret), its sender is a node of `[detect.on]`, its sequence number is above every
//! earlier one of that sender and its timestamp within `DETECT_PROBE_CLOCK_SKEW_MS_MAX` of ours
//! (sequence numbers start at the sender's clock in microseconds, so they grow across its
//! restarts and the responder keeps no state on disk). Everything else is refused and counted.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::limits::{DETECT_PROBE_CLOCK_SKEW_MS_MAX, DETECT_SENDERS_COUNT_MAX};

pub const PROBE_BYTES: usize = 88;
const MAGIC: &[u8; 4] = b"DRLp";
const VERSION: u8 = 1;
const NAME_BYTES: usize = 32;
const MAC_AT: usize = 56;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Probe = 1,
    Answer = 2,
}

/// A decoded, authenticated datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub kind: Kind,
    pub seq: u64,
    pub unix_ms: u64,
    pub name: String,
}

/// Why a datagram was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("malformed datagram: {0}")]
    Malformed(&'static str),
    #[error("bad MAC (forged, or a different probe-key)")]
    Forged,
    #[error("unknown sender {0:?} (not in [detect.on])")]
    Unknown(String),
    #[error("replayed or stale probe from {0:?}")]
    Replayed(String),
}

/// Counters of refused datagrams, for `drl detect status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RejectCounts {
    pub malformed: u64,
    pub forged: u64,
    pub unknown_sender: u64,
    pub replayed: u64,
}

impl RejectCounts {
    pub fn count(&mut self, r: &Reject) {
        match r {
            Reject::Malformed(_) => self.malformed += 1,
            Reject::Forged => self.forged += 1,
            Reject::Unknown(_) => self.unknown_sender += 1,
            Reject::Replayed(_) => self.replayed += 1,
        }
    }
}

/// Key and cluster name: what makes a datagram authentic.
#[derive(Clone)]
pub struct Codec {
    key: Vec<u8>,
    cluster: Vec<u8>,
}

impl Codec {
    pub fn new(key: &[u8], cluster: &str) -> Codec {
        Codec {
            key: key.to_vec(),
            cluster: cluster.as_bytes().to_vec(),
        }
    }

    fn mac(&self, body: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key");
        m.update(&self.cluster);
        m.update(&[0]);
        m.update(body);
        m.finalize().into_bytes().into()
    }

    /// Encode. `name` longer than 32 bytes is a programming error (config names are checked).
    pub fn encode(&self, d: &Datagram) -> [u8; PROBE_BYTES] {
        let mut b = [0u8; PROBE_BYTES];
        let name = d.name.as_bytes();
        assert!(name.len() <= NAME_BYTES, "node name longer than 32 bytes");
        b[..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[5] = d.kind as u8;
        b[6] = name.len() as u8;
        b[8..16].copy_from_slice(&d.seq.to_be_bytes());
        b[16..24].copy_from_slice(&d.unix_ms.to_be_bytes());
        b[24..24 + name.len()].copy_from_slice(name);
        let mac = self.mac(&b[..MAC_AT]);
        b[MAC_AT..].copy_from_slice(&mac);
        b
    }

    /// Check length, magic and MAC, then decode.
    pub fn decode(&self, b: &[u8]) -> Result<Datagram, Reject> {
        if b.len() != PROBE_BYTES {
            return Err(Reject::Malformed("wrong length"));
        }
        if &b[..4] != MAGIC || b[4] != VERSION {
            return Err(Reject::Malformed("bad magic or version"));
        }
        let want = self.mac(&b[..MAC_AT]);
        // Constant time is not needed for a liveness probe, but costs nothing.
        if want
            .iter()
            .zip(&b[MAC_AT..])
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            != 0
        {
            return Err(Reject::Forged);
        }
        let kind = match b[5] {
            1 => Kind::Probe,
            2 => Kind::Answer,
            _ => return Err(Reject::Malformed("unknown kind")),
        };
        let n = b[6] as usize;
        if n > NAME_BYTES {
            return Err(Reject::Malformed("name length"));
        }
        let name = std::str::from_utf8(&b[24..24 + n])
            .map_err(|_| Reject::Malformed("name is not UTF-8"))?
            .to_owned();
        Ok(Datagram {
            kind,
            seq: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
            unix_ms: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
            name,
        })
    }
}

/// The answering side: checks probes and builds answers. Pure; the shell owns the socket.
pub struct Responder {
    codec: Codec,
    me: String,
    known: Vec<String>,
    last_seq: HashMap<String, u64>,
    pub rejected: RejectCounts,
    pub answered: u64,
}

impl Responder {
    pub fn new(codec: Codec, me: &str, known: Vec<String>) -> Responder {
        Responder {
            codec,
            me: me.to_owned(),
            known,
            last_seq: HashMap::new(),
            rejected: RejectCounts::default(),
            answered: 0,
        }
    }

    /// A datagram arrived at `now_unix_ms`: the answer to send back, or why not.
    pub fn handle(&mut self, b: &[u8], now_unix_ms: u64) -> Result<[u8; PROBE_BYTES], Reject> {
        let r = self.check(b, now_unix_ms);
        match &r {
            Ok(_) => self.answered += 1,
            Err(e) => self.rejected.count(e),
        }
        r
    }

    fn check(&mut self, b: &[u8], now_unix_ms: u64) -> Result<[u8; PROBE_BYTES], Reject> {
        let d = self.codec.decode(b)?;
        if d.kind != Kind::Probe {
            return Err(Reject::Malformed("an answer where a probe was expected"));
        }
        if !self.known.contains(&d.name) {
            return Err(Reject::Unknown(d.name));
        }
        if now_unix_ms.abs_diff(d.unix_ms) > DETECT_PROBE_CLOCK_SKEW_MS_MAX {
            return Err(Reject::Replayed(d.name));
        }
        if self.last_seq.get(&d.name).is_some_and(|&l| d.seq <= l) {
            return Err(Reject::Replayed(d.name));
        }
        if self.last_seq.len() >= DETECT_SENDERS_COUNT_MAX && !self.last_seq.contains_key(&d.name) {
            return Err(Reject::Unknown(d.name));
        }
        self.last_seq.insert(d.name.clone(), d.seq);
        Ok(self.codec.encode(&Datagram {
            kind: Kind::Answer,
            seq: d.seq,
            unix_ms: now_unix_ms,
            name: self.me.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> Codec {
        Codec::new(b"correct horse", "c1")
    }

    fn probe(name: &str, seq: u64, ms: u64) -> [u8; PROBE_BYTES] {
        codec().encode(&Datagram {
            kind: Kind::Probe,
            seq,
            unix_ms: ms,
            name: name.into(),
        })
    }

    fn responder() -> Responder {
        Responder::new(codec(), "site-b", vec!["site-a".into(), "site-b".into()])
    }

    #[test]
    fn a_probe_is_answered_with_an_authentic_echo() {
        let mut r = responder();
        let ans = r
            .handle(&probe("site-a", 10, 1_000_000), 1_000_050)
            .unwrap();
        let d = codec().decode(&ans).unwrap();
        assert_eq!(d.kind, Kind::Answer);
        assert_eq!(
            (d.seq, d.name.as_str(), d.unix_ms),
            (10, "site-b", 1_000_050)
        );
    }

    #[test]
    fn forged_unknown_replayed_and_malformed_probes_are_refused_and_counted() {
        let mut r = responder();
        let now = 5_000_000;
        let other = Codec::new(b"wrong key", "c1").encode(&Datagram {
            kind: Kind::Probe,
            seq: 1,
            unix_ms: now,
            name: "site-a".into(),
        });
        assert_eq!(r.handle(&other, now), Err(Reject::Forged));
        let other_cluster = Codec::new(b"correct horse", "c2").encode(&Datagram {
            kind: Kind::Probe,
            seq: 1,
            unix_ms: now,
            name: "site-a".into(),
        });
        assert_eq!(r.handle(&other_cluster, now), Err(Reject::Forged));
        let mut flipped = probe("site-a", 2, now);
        flipped[9] ^= 1;
        assert_eq!(r.handle(&flipped, now), Err(Reject::Forged));
        assert_eq!(
            r.handle(&probe("mallory", 3, now), now),
            Err(Reject::Unknown("mallory".into()))
        );
        assert!(r.handle(&probe("site-a", 4, now), now).is_ok());
        assert_eq!(
            r.handle(&probe("site-a", 4, now), now),
            Err(Reject::Replayed("site-a".into())),
            "the same probe again"
        );
        assert_eq!(
            r.handle(&probe("site-a", 3, now), now),
            Err(Reject::Replayed("site-a".into())),
            "an older one"
        );
        assert_eq!(
            r.handle(&probe("site-a", 99, now - 60_000), now),
            Err(Reject::Replayed("site-a".into())),
            "a stale timestamp (a replay after a restart)"
        );
        assert_eq!(
            r.handle(&[0u8; 10], now),
            Err(Reject::Malformed("wrong length"))
        );
        let ans = r.handle(&probe("site-a", 5, now), now).unwrap();
        assert!(
            matches!(r.handle(&ans, now), Err(Reject::Malformed(_))),
            "an answer reflected back"
        );
        assert_eq!(r.answered, 2);
        let c = &r.rejected;
        assert_eq!(
            (c.forged, c.unknown_sender, c.replayed, c.malformed),
            (3, 1, 3, 2)
        );
    }
}
