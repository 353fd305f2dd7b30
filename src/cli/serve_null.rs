//! `drl serve-null`: drl's NBD server over the null volume, for benchmarks only.
//!
//! The serving is `daemon::serve_null`. The export discards every write and reads back zeroes ([`NullDevice`]); it needs no config,
//! no disk and no metadata. `scripts/bench-nbd.sh` runs it beside qemu-storage-daemon's
//! `null-co` driver to measure the transport ceiling: what a request costs in drl's NBD server
//! alone, the yardstick for the real write path's cost per I/O.

use clap::Args;

use super::exit;
use crate::config::units::parse_size;

#[derive(Args, Debug)]
pub struct ServeNullArgs {
    /// Where to listen: a unix socket path (`unix:PATH` or a plain path) or `tcp:HOST:PORT`.
    #[arg(long, value_name = "LISTEN")]
    pub nbd: String,
    /// Size of the export ("1GiB", "512MiB", bytes).
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    pub size: String,
    /// Export name (the empty default name selects it too).
    #[arg(long, value_name = "NAME", default_value = "null")]
    pub name: String,
    /// Threads, as the daemon's `[[node]] worker-threads` (default: the daemon's default, one
    /// per CPU): the export lives on one data-path thread (shard) and its connections spread
    /// over the others by load, exactly as a daemon's export, so the ceiling is measured on
    /// the threads the daemon runs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=crate::limits::DAEMON_WORKER_THREADS_MAX as i64))]
    pub worker_threads: Option<u16>,
}

/// Serve until SIGTERM or SIGINT; exit 0, or 2 on a bad argument, 1 when the socket cannot be
/// bound.
pub fn serve_null(a: &ServeNullArgs) -> i32 {
    crate::daemon::logging::init("text");
    let size = match parse_size(&a.size) {
        Ok(s) if s > 0 => s,
        Ok(_) => {
            eprintln!("drl serve-null: --size must be more than 0 bytes");
            return exit::USAGE;
        }
        Err(e) => {
            eprintln!("drl serve-null: --size {:?}: {e}", a.size);
            return exit::USAGE;
        }
    };
    match crate::daemon::serve_null(&a.nbd, &a.name, size, a.worker_threads.map(usize::from)) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("drl serve-null: {e}");
            match e {
                crate::daemon::NullServeError::Usage(_) => exit::USAGE,
                crate::daemon::NullServeError::Failed(_) => exit::FAILED,
            }
        }
    }
}
