//! `drl-drill`: the disaster drill's workload and checker (see `scripts/drill.sh`).
//!
//!   drl-drill write --socket A0.nbd --socket A1.nbd --log w.log [--rate 2000] [--duration 30]
//!   drl-drill check --log w.log --socket B0.nbd --socket B1.nbd [--json] [--no-loss] [--wait S]
//!   drl-drill check --log w.log --file B0.img --file B1.img [--json]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use drl::drill::{check, record, writer};
use drl::frontend::nbd::client::NbdClient;

#[derive(Parser)]
#[command(
    name = "drl-drill",
    version,
    about = "The disaster drill's logged writer and prefix checker"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write dependent 4 KiB records over the volumes (one at a time, alternating volumes),
    /// logging each write before it is sent and when it is acknowledged. Runs until
    /// --duration passes or a write fails (the site died); prints how it ended.
    Write {
        /// A volume's NBD unix socket; repeat for each volume, in a fixed order.
        #[arg(long = "socket", required = true)]
        sockets: Vec<PathBuf>,
        /// The log to write (truncated first).
        #[arg(long)]
        log: PathBuf,
        /// Blocks per volume to spread the writes over (default: the smallest volume's, at
        /// most 16384).
        #[arg(long)]
        blocks: Option<u32>,
        /// Writes per second (0: as fast as the volumes answer).
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// Stop after this many seconds (default: run until a write fails).
        #[arg(long)]
        duration: Option<f64>,
        /// Seed of the block choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Read the volumes (same order as the writer's) and hold them against the log: each
    /// volume a prefix of the writes, nothing damaged, and which acknowledged writes are lost.
    /// Exits 1 when a volume is not a prefix (or, with --no-loss, when any write is lost).
    Check {
        /// The writer's log.
        #[arg(long)]
        log: PathBuf,
        /// A volume's NBD unix socket, in the writer's order.
        #[arg(
            long = "socket",
            required_unless_present = "files",
            conflicts_with = "files"
        )]
        sockets: Vec<PathBuf>,
        /// Read the volumes from these files instead (in the writer's order): an imported
        /// volume as Cinder's own target would serve it, around drl.
        #[arg(long = "file")]
        files: Vec<PathBuf>,
        /// Keep trying to reach each volume for up to this many seconds (every 20 ms), and
        /// read an NBD export only once it is writable (Primary): run at a kill, the first
        /// answered read is when the volumes were recovered.
        #[arg(long, default_value_t = 0.0)]
        wait: f64,
        /// Print the verdict as JSON (with the times of the first answered read and of the
        /// first read of the last volume).
        #[arg(long)]
        json: bool,
        /// Also fail when any acknowledged write is missing (a planned switchover: RPO 0).
        #[arg(long)]
        no_loss: bool,
        /// Also fail unless the volumes share one cut (a consistency group).
        #[arg(long)]
        group: bool,
        /// Judge only the blocks this log wrote: the volumes held an earlier run's data (the
        /// run at the backup, checked at the old primary after a switchover back).
        #[arg(long)]
        only_written: bool,
    },
}

fn default_blocks(sockets: &[PathBuf]) -> Result<u32, String> {
    let mut smallest = u64::MAX;
    for s in sockets {
        let c = NbdClient::connect(s).map_err(|e| format!("{}: {e}", s.display()))?;
        smallest = smallest.min(c.size);
        c.disconnect();
    }
    Ok((smallest / record::BLOCK_BYTES as u64).min(16384) as u32)
}

fn write(o: writer::WriterOptions) -> ExitCode {
    match writer::run(&o) {
        Ok(end) => {
            match end.error {
                Some(e) => println!(
                    "writer stopped after {} acknowledged writes: {e}",
                    end.acked
                ),
                None => println!("writer done: {} acknowledged writes", end.acked),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("drl-drill: {e}");
            ExitCode::from(2)
        }
    }
}

/// `read_volume`, retried every 20 ms until it answers or `wait` has passed.
fn read_waiting(
    src: &writer::Source,
    run: u64,
    volume: u32,
    blocks: u32,
    wait: Duration,
) -> std::io::Result<(Vec<drl::drill::record::Block>, u64)> {
    let t0 = std::time::Instant::now();
    loop {
        match writer::read_volume(src, run, volume, blocks, !wait.is_zero()) {
            Ok(r) => return Ok(r),
            Err(e) if t0.elapsed() >= wait => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn check_cmd(
    log: PathBuf,
    sources: Vec<writer::Source>,
    wait: Duration,
    json: bool,
    no_loss: bool,
    group: bool,
    scope: check::Scope,
) -> ExitCode {
    let l = match std::fs::read_to_string(&log)
        .map_err(|e| e.to_string())
        .and_then(|t| record::parse_log(&t))
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("drl-drill: {}: {e}", log.display());
            return ExitCode::from(2);
        }
    };
    if sources.len() != l.volumes as usize {
        eprintln!(
            "drl-drill: the log has {} volumes, {} given",
            l.volumes,
            sources.len()
        );
        return ExitCode::from(2);
    }
    let mut vols = Vec::new();
    let mut first_read_ns = None;
    // Every volume answered (read in turn: the last one's first read).
    let mut all_read_ns = 0u64;
    for (v, s) in sources.iter().enumerate() {
        match read_waiting(s, l.run, v as u32, l.blocks, wait) {
            Ok((b, t)) => {
                first_read_ns.get_or_insert(t);
                all_read_ns = all_read_ns.max(t);
                vols.push(b);
            }
            Err(e) => {
                eprintln!("drl-drill: reading {}: {e}", s.path().display());
                return ExitCode::from(2);
            }
        }
    }
    let v = check::check(&l, &vols, scope);
    if json {
        let mut j = serde_json::to_value(&v).expect("a verdict serialises");
        j["first_read_ns"] = first_read_ns.into();
        j["all_read_ns"] = all_read_ns.into();
        println!("{j}");
    } else {
        println!(
            "writes sent {}, acknowledged {}",
            v.writes_sent, v.writes_acked
        );
        println!("{:>6}  {:>10}  {:>6}  VIOLATIONS", "VOLUME", "CUT", "LOST");
        for vv in &v.volumes {
            println!(
                "{:>6}  {:>10}  {:>6}  {}",
                vv.volume,
                vv.cut_seq,
                vv.lost_writes,
                vv.violations.len()
            );
            for x in vv.violations.iter().take(10) {
                println!("        {x}");
            }
        }
        println!(
            "prefix {}, group prefix {}, lost {} writes ({} bytes) over {:.3} s",
            v.prefix, v.group_prefix, v.lost_writes, v.lost_bytes, v.rpo_seconds
        );
    }
    let ok = v.prefix && (!no_loss || v.lost_writes == 0) && (!group || v.group_prefix);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Write {
            sockets,
            log,
            blocks,
            rate,
            duration,
            seed,
        } => {
            let blocks = match blocks.map(Ok).unwrap_or_else(|| default_blocks(&sockets)) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("drl-drill: cannot reach a volume: {e}");
                    return ExitCode::from(2);
                }
            };
            write(writer::WriterOptions {
                sockets,
                log,
                blocks,
                rate,
                duration: duration.map(Duration::from_secs_f64),
                seed,
            })
        }
        Cmd::Check {
            log,
            sockets,
            files,
            wait,
            json,
            no_loss,
            group,
            only_written,
        } => {
            let scope = if only_written {
                check::Scope::WrittenBlocks
            } else {
                check::Scope::WholeVolume
            };
            let sources = if files.is_empty() {
                sockets.into_iter().map(writer::Source::Nbd).collect()
            } else {
                files.into_iter().map(writer::Source::File).collect()
            };
            if !(0.0..=3600.0).contains(&wait) {
                eprintln!("drl-drill: --wait must be 0..3600 seconds, not {wait}");
                return ExitCode::from(2);
            }
            let wait = Duration::from_secs_f64(wait);
            check_cmd(log, sources, wait, json, no_loss, group, scope)
        }
    }
}
