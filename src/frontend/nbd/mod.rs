//! The NBD server: serves one [`BlockDevice`](crate::volume::BlockDevice) as one NBD export on a unix or TCP socket.
//!
//! Protocol: fixed newstyle negotiation with NBD_OPT_GO / INFO / LIST / ABORT /
//! STRUCTURED_REPLY / EXPORT_NAME, simple and structured replies, commands READ, WRITE (FUA),
//! FLUSH, TRIM, WRITE_ZEROES (NO_HOLE, FUA) and DISC, following the NBD protocol document
//! (NetworkBlockDevice/nbd, doc/proto.md). The export answers to its configured name and to
//! the empty (default) name.
//!
//! Layout:
//! - [`proto`]: wire constants, parsers and serializers, no I/O.
//! - [`command`]: validation of a request header into a [`command::Command`], errors as
//!   [`VolumeError`](crate::volume::VolumeError) so `nbd_errno` is the one errno mapping.
//! - [`handshake`]: option haggling.
//! - `conn`: one connection's transmission phase (reader, concurrent requests, one writer).
//! - `server`: listener, accept loop, connection limit, shutdown.
//! - [`stats`]: counters of requests, bytes and errors.
//! - [`client`]: a minimal synchronous client (the drill's writer and checker, the tests).
//!
//! Trust boundary: everything a client sends is untrusted. Lengths are checked against
//! [`crate::limits`] before anything is read or allocated for them; a broken frame closes only
//! its own connection; log lines a client can cause go through [`crate::logrl`].
//!
//! Memory a client can pin: per connection at most [`NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX`]
//! of request/reply payload (no single payload over [`NBD_PAYLOAD_BYTES_MAX`]), one option of
//! at most [`NBD_OPTION_BYTES_MAX`] during the handshake, and two 64 KiB socket buffers; at most
//! [`NBD_CONNECTIONS_PER_EXPORT_MAX`] such connections per export.
//!
//! [`NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX`]: crate::limits::NBD_INFLIGHT_PER_CONNECTION_BYTES_MAX
//! [`NBD_PAYLOAD_BYTES_MAX`]: crate::limits::NBD_PAYLOAD_BYTES_MAX
//! [`NBD_OPTION_BYTES_MAX`]: crate::limits::NBD_OPTION_BYTES_MAX
//! [`NBD_CONNECTIONS_PER_EXPORT_MAX`]: crate::limits::NBD_CONNECTIONS_PER_EXPORT_MAX
//!
//! ```no_run
//! # async fn demo<D: drl::volume::BlockDevice>(dev: std::sync::Arc<D>) -> Result<(), drl::frontend::nbd::NbdError> {
//! use drl::frontend::nbd::{ExportConfig, NbdListen, NbdServer};
//! let listen = NbdListen::parse("tcp:127.0.0.1:10809")?;
//! let export = ExportConfig { name: "vol1".into(), description: "volume 1".into() };
//! let server = NbdServer::bind(listen, export, dev).await?;
//! let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
//! let stats = server.stats();
//! let task = tokio::spawn(server.run(stop_rx));
//! // ... on SIGTERM:
//! stop_tx.send(true).ok();
//! task.await.ok();
//! println!("{:?}", stats.snapshot());
//! # Ok(()) }
//! ```

mod budget;
pub mod client;
pub mod command;
pub(crate) mod conn;
pub mod handshake;
mod idle;
pub mod proto;
mod server;
pub mod stats;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

pub use budget::PayloadBudget;
pub use server::NbdServer;
pub use stats::{NbdStats, NbdStatsSnapshot};

#[cfg(test)]
mod tests;

/// The export a server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// Export name (NBD_OPT_GO / EXPORT_NAME); the empty name selects it too.
    pub name: String,
    /// Free text shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION.
    pub description: String,
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdListen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl NbdListen {
    /// Parse the config form: `tcp:HOST:PORT` (an IP address, IPv6 as `tcp:[::1]:10809`, or a
    /// host name resolved now to its first address), `unix:PATH`, or a plain unix socket path.
    pub fn parse(s: &str) -> Result<NbdListen, NbdError> {
        let bad = |why| NbdError::BadListen {
            input: s.into(),
            why,
        };
        if let Some(addr) = s.strip_prefix("tcp:") {
            if let Ok(a) = addr.parse::<SocketAddr>() {
                return Ok(NbdListen::Tcp(a));
            }
            // A host name (e.g. `localhost`) is resolved once, here, at config time.
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| bad("expected tcp:HOST:PORT"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| bad("port is not a number up to 65535"))?;
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            return (host, port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut it| it.next())
                .map(NbdListen::Tcp)
                .ok_or_else(|| bad("host name does not resolve"));
        }
        let path = s.strip_prefix("unix:").unwrap_or(s);
        if path.is_empty() {
            return Err(bad("empty unix socket path"));
        }
        if path.contains('\0') {
            return Err(bad("unix socket path contains a NUL byte"));
        }
        Ok(NbdListen::Unix(PathBuf::from(path)))
    }
}

impl fmt::Display for NbdListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdListen::Unix(p) => write!(f, "unix:{}", p.display()),
            NbdListen::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Errors of the NBD front end that reach the daemon (per-connection problems are logged and
/// end only their connection).
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("NBD listen address {input:?}: {why}")]
    BadListen { input: String, why: &'static str },
    #[error("NBD export {name:?}: {why}")]
    BadExport { name: String, why: &'static str },
    #[error("NBD export of device {device}: minimum block size {min_block} is not a power of two up to 65536")]
    BadBlockSize { device: String, min_block: u32 },
    #[error("NBD socket path {path:?} exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    #[error("NBD socket path {path:?}: another server is listening on it")]
    InUse { path: PathBuf },
    #[error("NBD socket path {path:?}: cannot remove the stale socket: {source}")]
    Stale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("NBD cannot bind {listen}: {source}")]
    Bind {
        listen: String,
        #[source]
        source: std::io::Error,
    },
}
