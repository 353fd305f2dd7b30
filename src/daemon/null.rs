//! The null volume served over NBD (`drl serve-null`, benchmarks only): drl's NBD server on the
//! daemon's own threads (a home shard, `shards.rs`) over [`NullDevice`], which discards every write and reads back zeroes.
//! No config, disk or metadata. The command line parses the arguments; this wires the parts.

use std::sync::Arc;

use crate::frontend::nbd::{ExportConfig, NbdListen, NbdServer};
use crate::volume::null::NullDevice;

/// Why serving the null volume stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NullServeError {
    /// A bad argument (the listen address).
    #[error("{0}")]
    Usage(String),
    /// The runtime, the socket or the signal handler failed.
    #[error("{0}")]
    Failed(String),
}

/// Serve a null export of `size_bytes` named `name` on `listen` (`unix:PATH`, a path or
/// `tcp:HOST:PORT`) until SIGTERM or SIGINT.
pub fn serve_null(
    listen: &str,
    name: &str,
    size_bytes: u64,
    workers: Option<usize>,
) -> Result<(), NullServeError> {
    let listen = NbdListen::parse(listen).map_err(|e| NullServeError::Usage(e.to_string()))?;
    let failed =
        |what: &str, e: &dyn std::fmt::Display| NullServeError::Failed(format!("{what}{e}"));
    let export = ExportConfig {
        name: name.to_string(),
        description: "drl null volume (benchmarks only: writes are discarded, reads are zeroes)"
            .into(),
    };
    let dev = Arc::new(NullDevice::new(name, size_bytes));
    // The daemon's threading: the export's home is a shard, its connections spread from there.
    let served = super::block_on_with_shards(workers, |shards| async move {
        let place = shards.from(shards.pick());
        let home = place[0].clone();
        let mut server = super::shards::run_on(&home, NbdServer::bind(listen, export, dev))
            .await
            .map_err(|e| failed("", &e))?;
        server.set_shards(place);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = home.spawn(server.run(stop_rx));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| failed("signal handler: ", &e))?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop_tx.send(true).ok();
        match task.await {
            Ok(r) => r.map_err(|e| failed("", &e)),
            Err(e) => Err(failed("", &e)),
        }
    });
    served.map_err(|e| failed("cannot start the async runtime: ", &e))?
}
