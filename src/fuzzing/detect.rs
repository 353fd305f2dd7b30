//! Detection harness: probe datagrams into the answering side.
//!
//! A sequence of datagrams, each built from arbitrary fields and encoded with the cluster's
//! key (or another key), optionally with one byte changed, or raw bytes, delivered to a
//! [`Responder`] at arbitrary times. Checked: an intact datagram decodes to what was encoded;
//! a changed or foreign-keyed one never decodes; an answer goes only to a known node, for a
//! probe within the clock window whose sequence number is higher than any answered before from
//! that node (no replay is ever answered).

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};

use crate::detect::probe::{Codec, Datagram, Kind, Responder, PROBE_BYTES};
use crate::limits::DETECT_PROBE_CLOCK_SKEW_MS_MAX;

const KNOWN: [&str; 3] = ["site-a", "site-b", "witness"];

#[derive(Debug, Arbitrary)]
enum Probe {
    Signed {
        answer: bool,
        seq: u64,
        /// Milliseconds from "now", signed.
        skew_ms: i32,
        name: u8,
        other_name: String,
        foreign_key: bool,
        corrupt: Option<(u8, u8)>,
    },
    Raw(Vec<u8>),
}

/// Datagrams into a responder (see the module doc).
pub fn probe(data: &[u8]) {
    let Ok((start_ms, probes)) =
        <(u32, Vec<(u16, Probe)>)>::arbitrary_take_rest(Unstructured::new(data))
    else {
        return;
    };
    let codec = Codec::new(b"probe key", "cluster");
    let foreign = Codec::new(b"another key", "cluster");
    let mut responder = Responder::new(
        Codec::new(b"probe key", "cluster"),
        "site-b",
        KNOWN.iter().map(|s| s.to_string()).collect(),
    );
    let mut now = u64::from(start_ms) + 1_000_000_000;
    let mut answered_seq: HashMap<String, u64> = HashMap::new();
    for (advance, p) in probes {
        now += u64::from(advance);
        match p {
            Probe::Raw(b) => {
                let r = responder.handle(&b, now);
                if b.len() == PROBE_BYTES {
                    let _ = codec.decode(&b);
                }
                if let Ok(answer) = r {
                    // Raw bytes only pass with the key's MAC: treat as a signed probe.
                    let d = codec.decode(&b).expect("an answered probe decodes");
                    note_answer(&mut answered_seq, &d, &codec, &answer);
                }
            }
            Probe::Signed {
                answer,
                seq,
                skew_ms,
                name,
                other_name,
                foreign_key,
                corrupt,
            } => {
                let name = match name % 4 {
                    3 => other_name.chars().take(32).collect::<String>(),
                    i => KNOWN[usize::from(i)].to_string(),
                };
                if name.len() > 32 {
                    continue;
                }
                let d = Datagram {
                    kind: if answer { Kind::Answer } else { Kind::Probe },
                    seq,
                    unix_ms: now.saturating_add_signed(i64::from(skew_ms)),
                    name,
                };
                let mut b = if foreign_key { &foreign } else { &codec }.encode(&d);
                if let Some((at, xor)) = corrupt {
                    b[usize::from(at) % PROBE_BYTES] ^= xor | 1;
                }
                let intact = corrupt.is_none() && !foreign_key;
                match codec.decode(&b) {
                    Ok(got) => {
                        assert!(intact, "a changed or foreign datagram decoded: {got:?}");
                        assert_eq!(got, d);
                    }
                    Err(e) => assert!(!intact, "an intact datagram refused: {e}"),
                }
                if let Ok(a) = responder.handle(&b, now) {
                    assert!(intact);
                    assert_eq!(d.kind, Kind::Probe, "answered an answer");
                    assert!(KNOWN.contains(&d.name.as_str()), "answered {:?}", d.name);
                    assert!(now.abs_diff(d.unix_ms) <= DETECT_PROBE_CLOCK_SKEW_MS_MAX);
                    note_answer(&mut answered_seq, &d, &codec, &a);
                }
            }
        }
    }
}

/// Record an answer to `d`; its sequence number must rise per sender.
fn note_answer(seen: &mut HashMap<String, u64>, d: &Datagram, codec: &Codec, answer: &[u8]) {
    if let Some(&last) = seen.get(&d.name) {
        assert!(
            d.seq > last,
            "answered a replay from {}: seq {} after {last}",
            d.name,
            d.seq
        );
    }
    seen.insert(d.name.clone(), d.seq);
    let a = codec.decode(answer).expect("our own answer decodes");
    assert_eq!((a.kind, a.seq), (Kind::Answer, d.seq));
}
