//! The drill's block record and its log.
//!
//! Every write of the drill's writer fills one 4 KiB block with a self-describing record, so
//! the checker can tell from a volume alone which write each block holds:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `DRLDRIL1` |
//! | 8..16 | sequence number (little endian, from 1, one sequence over all volumes) |
//! | 16..24 | submission time, ns since the Unix epoch |
//! | 24..28 | volume index (the writer's `--socket` order) |
//! | 28..32 | block index inside the volume |
//! | 32..40 | run id (random per drill run: an earlier run's data is never taken for this one's) |
//! | 40..4092 | filler from a xorshift seeded by sequence and run (incompressible) |
//! | 4092..4096 | crc32 of bytes 0..4092 |
//!
//! The log is text, one line per event, appended with one `write(2)` each so a killed writer
//! leaves every line it finished in the page cache:
//! `# drl-drill log v1 run=HEX volumes=N blocks=M` (header), `S SEQ VOL BLOCK T_NS` before a
//! write is sent, `A SEQ T_NS` once its reply arrived. A torn last line is ignored.

use std::collections::HashMap;

/// Size of one record: the unit of every drill write.
pub const BLOCK_BYTES: usize = 4096;
const MAGIC: &[u8; 8] = b"DRLDRIL1";
const CRC_AT: usize = BLOCK_BYTES - 4;

/// One decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub t_ns: u64,
    pub volume: u32,
    pub block: u32,
    pub run: u64,
}

/// What a block of a volume holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// All zeroes: never written by the drill.
    Empty,
    /// A record that checks.
    Written(Record),
    /// Not zero and not a record whose crc, run and place check: damage.
    Bad(String),
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// The record for `r`, as the bytes of one block.
pub fn encode(r: &Record) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_BYTES];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&r.seq.to_le_bytes());
    b[16..24].copy_from_slice(&r.t_ns.to_le_bytes());
    b[24..28].copy_from_slice(&r.volume.to_le_bytes());
    b[28..32].copy_from_slice(&r.block.to_le_bytes());
    b[32..40].copy_from_slice(&r.run.to_le_bytes());
    let mut x = r.seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ r.run | 1;
    for c in b[40..CRC_AT].chunks_mut(8) {
        x = xorshift(x);
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let crc = crc32fast::hash(&b[..CRC_AT]);
    b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decode the block at index `block` of volume `volume`, expecting run `run`.
pub fn decode(b: &[u8], run: u64, volume: u32, block: u32) -> Block {
    if b.len() != BLOCK_BYTES {
        return Block::Bad(format!("{} bytes, not {BLOCK_BYTES}", b.len()));
    }
    if b.iter().all(|&x| x == 0) {
        return Block::Empty;
    }
    if &b[..8] != MAGIC {
        return Block::Bad("not a drill record (no magic)".into());
    }
    let crc = u32::from_le_bytes(b[CRC_AT..].try_into().unwrap());
    if crc != crc32fast::hash(&b[..CRC_AT]) {
        return Block::Bad("record's crc32 does not match: torn or corrupt".into());
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let r = Record {
        seq: u64_at(8),
        t_ns: u64_at(16),
        volume: u32_at(24),
        block: u32_at(28),
        run: u64_at(32),
    };
    if r.run != run {
        return Block::Bad(format!("record of another run ({:016x})", r.run));
    }
    if r.volume != volume || r.block != block {
        return Block::Bad(format!(
            "record of volume {} block {} found at volume {volume} block {block}",
            r.volume, r.block
        ));
    }
    Block::Written(r)
}

/// One write of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedWrite {
    pub seq: u64,
    pub volume: u32,
    pub block: u32,
    pub submit_ns: u64,
    /// When its reply arrived; `None`: sent, never acknowledged (in flight at the kill).
    pub ack_ns: Option<u64>,
}

/// A parsed log.
#[derive(Debug, Clone, Default)]
pub struct Log {
    pub run: u64,
    pub volumes: u32,
    pub blocks: u32,
    /// In sequence order, sequence numbers 1, 2, 3, ...
    pub writes: Vec<LoggedWrite>,
}

/// The log's header line.
pub fn header(run: u64, volumes: u32, blocks: u32) -> String {
    format!("# drl-drill log v1 run={run:016x} volumes={volumes} blocks={blocks}\n")
}

/// Parse a log; a torn last line (no newline) is ignored, anything else malformed is an error
/// naming the line.
pub fn parse_log(text: &str) -> Result<Log, String> {
    let mut log = Log::default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i + 1],
        None => "",
    };
    let mut lines = complete.lines().enumerate();
    let (_, h) = lines.next().ok_or("empty log: no header line")?;
    let mut kv: HashMap<&str, &str> = HashMap::new();
    let rest = h
        .strip_prefix("# drl-drill log v1 ")
        .ok_or_else(|| format!("line 1 is not a drl-drill v1 header: {h:?}"))?;
    for w in rest.split_whitespace() {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("header word {w:?}"))?;
        kv.insert(k, v);
    }
    let get = |k: &str| {
        kv.get(k)
            .copied()
            .ok_or_else(|| format!("header lacks {k}="))
    };
    log.run = u64::from_str_radix(get("run")?, 16).map_err(|e| format!("header run: {e}"))?;
    log.volumes = get("volumes")?
        .parse()
        .map_err(|e| format!("header volumes: {e}"))?;
    log.blocks = get("blocks")?
        .parse()
        .map_err(|e| format!("header blocks: {e}"))?;
    for (i, line) in lines {
        let n = i + 1;
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |s: &str| -> Result<u64, String> {
            s.parse().map_err(|e| format!("line {n}: {s:?}: {e}"))
        };
        match f.as_slice() {
            ["S", seq, vol, block, t] => {
                let seq = num(seq)?;
                if seq != log.writes.len() as u64 + 1 {
                    return Err(format!("line {n}: write {seq} out of sequence"));
                }
                let (volume, block) = (num(vol)? as u32, num(block)? as u32);
                if volume >= log.volumes || block >= log.blocks {
                    return Err(format!(
                        "line {n}: volume {volume} block {block} out of range"
                    ));
                }
                log.writes.push(LoggedWrite {
                    seq,
                    volume,
                    block,
                    submit_ns: num(t)?,
                    ack_ns: None,
                });
            }
            ["A", seq, t] => {
                let seq = num(seq)?;
                let w = log
                    .writes
                    .get_mut((seq as usize).wrapping_sub(1))
                    .ok_or_else(|| format!("line {n}: ack of write {seq} never sent"))?;
                w.ack_ns = Some(num(t)?);
            }
            _ => return Err(format!("line {n}: malformed: {line:?}")),
        }
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_damage_is_named() {
        let r = Record {
            seq: 7,
            t_ns: 99,
            volume: 1,
            block: 5,
            run: 42,
        };
        let b = encode(&r);
        assert_eq!(decode(&b, 42, 1, 5), Block::Written(r));
        assert!(matches!(decode(&b, 43, 1, 5), Block::Bad(_)), "other run");
        assert!(matches!(decode(&b, 42, 1, 6), Block::Bad(_)), "misplaced");
        let mut torn = b.clone();
        torn[100] ^= 1;
        assert!(matches!(decode(&torn, 42, 1, 5), Block::Bad(_)));
        assert_eq!(decode(&vec![0; BLOCK_BYTES], 42, 1, 5), Block::Empty);
    }

    #[test]
    fn log_parses_and_ignores_a_torn_tail() {
        let text = format!("{}S 1 0 3 10\nA 1 11\nS 2 1 4 12\nA 2", header(5, 2, 8));
        let log = parse_log(&text).unwrap();
        assert_eq!(log.run, 5);
        assert_eq!(log.writes.len(), 2);
        assert_eq!(log.writes[0].ack_ns, Some(11));
        assert_eq!(log.writes[1].ack_ns, None, "the torn ack line is not taken");
        assert!(parse_log(&format!("{}S 2 0 0 1\n", header(5, 1, 8))).is_err());
        assert!(parse_log(&format!("{}S 1 3 0 1\n", header(5, 1, 8))).is_err());
    }
}
