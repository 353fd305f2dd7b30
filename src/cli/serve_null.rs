//! `drl serve-null`: drl's NBD server over the null volume, for benchmarks only.
//!
//! The export discards every write and reads back zeroes ([`NullDevice`]); it needs no config,
//! no disk and no metadata. `scripts/bench-nbd.sh` runs it beside qemu-storage-daemon's
//! `null-co` driver to measure the transport ceiling: what a request costs in drl's NBD server
//! alone, the yardstick for the real write path's cost per I/O.

use std::sync::Arc;

use clap::Args;

use super::exit;
use crate::config::units::parse_size;
use crate::frontend::nbd::{ExportConfig, NbdListen, NbdServer};
use crate::volume::null::NullDevice;

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
    let listen = match NbdListen::parse(&a.nbd) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("drl serve-null: {e}");
            return exit::USAGE;
        }
    };
    let rt = match crate::daemon::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drl serve-null: cannot start the async runtime: {e}");
            return exit::FAILED;
        }
    };
    let export = ExportConfig {
        name: a.name.clone(),
        description: "drl null volume (benchmarks only: writes are discarded, reads are zeroes)"
            .into(),
    };
    let dev = Arc::new(NullDevice::new(&a.name, size));
    rt.block_on(async move {
        let server = match NbdServer::bind(listen, export, dev).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("drl serve-null: {e}");
                return exit::FAILED;
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(server.run(stop_rx));
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("drl serve-null: signal handler: {e}");
                    return exit::FAILED;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop_tx.send(true).ok();
        match task.await {
            Ok(Ok(())) => exit::OK,
            Ok(Err(e)) => {
                eprintln!("drl serve-null: {e}");
                exit::FAILED
            }
            Err(e) => {
                eprintln!("drl serve-null: {e}");
                exit::FAILED
            }
        }
    })
}
