//! The drill's workload: dependent 4 KiB writes over one or more volumes, every one logged
//! before it is sent and again when its reply arrives.
//!
//! One write at a time (each waits for the previous reply), so the acknowledged writes form one
//! sequence the checker can hold a site against. Blocks and volumes are chosen by a seeded
//! generator; `rate` paces the writes (0: as fast as the volume answers).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::record::{self, Block, Record, BLOCK_BYTES};
use crate::frontend::nbd::client::NbdClient;

/// Nanoseconds since the Unix epoch (the drill compares times across processes).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What the writer does.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub sockets: Vec<PathBuf>,
    pub log: PathBuf,
    /// Blocks per volume the writes spread over (at most the smallest volume's).
    pub blocks: u32,
    /// Writes per second; 0 is unpaced.
    pub rate: u32,
    /// Stop after this long (None: until a write fails).
    pub duration: Option<Duration>,
    pub seed: u64,
}

/// How the writer ended.
#[derive(Debug)]
pub struct WriterEnd {
    pub acked: u64,
    /// The error that stopped it (None: the duration ran out).
    pub error: Option<io::Error>,
}

fn append(f: &mut File, line: &str) -> io::Result<()> {
    // One write(2) per line: a killed writer leaves whole lines in the page cache.
    f.write_all(line.as_bytes())
}

/// Run the writer until `duration` passes or a write fails (the site died).
pub fn run(o: &WriterOptions) -> io::Result<WriterEnd> {
    let mut clients = o
        .sockets
        .iter()
        .map(|s| {
            NbdClient::connect(s)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", s.display())))
        })
        .collect::<io::Result<Vec<_>>>()?;
    let smallest = clients
        .iter()
        .map(|c| c.size / BLOCK_BYTES as u64)
        .min()
        .unwrap_or(0);
    if clients.is_empty() || (o.blocks as u64) > smallest || o.blocks == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--blocks {} must be 1..={smallest} (the smallest volume's 4 KiB blocks)",
                o.blocks
            ),
        ));
    }
    let run = o.seed ^ now_ns().rotate_left(17) | 1;
    let mut log = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&o.log)?;
    append(
        &mut log,
        &record::header(run, clients.len() as u32, o.blocks),
    )?;
    let start = Instant::now();
    let mut x = o.seed | 1;
    let mut seq = 0u64;
    loop {
        if let Some(d) = o.duration {
            if start.elapsed() >= d {
                return Ok(WriterEnd {
                    acked: seq,
                    error: None,
                });
            }
        }
        if o.rate > 0 {
            let due = Duration::from_secs_f64(seq as f64 / o.rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait); // pacing the workload, not synchronisation
            }
        }
        seq += 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let volume = (seq % clients.len() as u64) as u32;
        let block = ((x >> 8) % o.blocks as u64) as u32;
        let t = now_ns();
        let r = Record {
            seq,
            t_ns: t,
            volume,
            block,
            run,
        };
        append(&mut log, &format!("S {seq} {volume} {block} {t}\n"))?;
        let c = &mut clients[volume as usize];
        if let Err(e) = c.write(block as u64 * BLOCK_BYTES as u64, &record::encode(&r)) {
            return Ok(WriterEnd {
                acked: seq - 1,
                error: Some(e),
            });
        }
        append(&mut log, &format!("A {seq} {}\n", now_ns()))?;
    }
}

/// Where the checker reads a volume: drl's NBD export, or the file behind it (an imported
/// volume as Cinder's own target serves it).
#[derive(Debug, Clone)]
pub enum Source {
    Nbd(PathBuf),
    File(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::Nbd(p) | Source::File(p) => p,
        }
    }
}

/// Read the first `blocks` blocks of `volume` from `src`, decoded against run `run`. Returns
/// the blocks and the time (ns since the epoch) the first read was answered. `writable`: an
/// NBD export that is read-only (a Secondary's) is an error, not read: the volume is
/// recovered only where its user can write again.
pub fn read_volume(
    src: &Source,
    run: u64,
    volume: u32,
    blocks: u32,
    writable: bool,
) -> io::Result<(Vec<Block>, u64)> {
    enum Reader {
        Nbd(NbdClient),
        File(File),
    }
    let mut r = match src {
        Source::Nbd(p) => {
            let c = NbdClient::connect(p)?;
            if writable && c.read_only() {
                c.disconnect();
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{}: the export is read-only (Secondary)", p.display()),
                ));
            }
            Reader::Nbd(c)
        }
        Source::File(p) => Reader::File(File::open(p)?),
    };
    let per = (1 << 20) / BLOCK_BYTES as u32;
    let mut out = Vec::with_capacity(blocks as usize);
    let mut first = None;
    let mut i = 0;
    while i < blocks {
        let n = per.min(blocks - i);
        let (off, len) = (i as u64 * BLOCK_BYTES as u64, n * BLOCK_BYTES as u32);
        let data = match &mut r {
            Reader::Nbd(c) => c.read(off, len)?,
            Reader::File(f) => {
                let mut buf = vec![0u8; len as usize];
                std::os::unix::fs::FileExt::read_exact_at(f, &mut buf, off)?;
                buf
            }
        };
        first.get_or_insert_with(now_ns);
        for (k, b) in data.chunks(BLOCK_BYTES).enumerate() {
            out.push(record::decode(b, run, volume, i + k as u32));
        }
        i += n;
    }
    if let Reader::Nbd(c) = r {
        c.disconnect();
    }
    Ok((out, first.unwrap_or_else(now_ns)))
}
