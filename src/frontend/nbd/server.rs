//! The listener: binding, the accept loop, per-connection tasks, connection limits, shutdown.
//!
//! Each accepted socket becomes one task: handshake under a deadline, then the transmission
//! loop ([`super::conn`]). At most [`NBD_CONNECTIONS_PER_EXPORT_MAX`] connections are served at
//! once; the next ones (up to [`NBD_REFUSED_HANDSHAKES_MAX`] at a time) get a handshake whose
//! NBD_OPT_GO is answered with NBD_REP_ERR_POLICY "too many connections", so the client sees a
//! clear error; beyond that they are closed right after accept.
//!
//! Shutdown: when the signal fires, the listener is closed (and a unix socket file removed),
//! connections still negotiating are closed, connections in transmission stop reading new
//! requests, finish the ones in flight and write their replies, then close. Whatever is still
//! running after the drain timeout is aborted.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::budget::PayloadBudget;
use super::command::ExportView;
use super::conn::{transmission, ConnCtx, End};
use super::handshake::{negotiate, Admission, ExportInfo, HandshakeEnd};
use super::idle::Registry;
use super::proto::STRING_BYTES_MAX;
use super::stats::NbdStats;
use super::{ExportConfig, NbdError, NbdListen};
use crate::limits::{
    LOG_LINES_PER_SOURCE_PER_SECOND_MAX, NBD_CONNECTIONS_PER_EXPORT_MAX, NBD_EVICT_WAIT_MS,
    NBD_HANDSHAKE_TIMEOUT_MS, NBD_IDLE_EVICT_MS, NBD_REFUSED_HANDSHAKES_MAX,
    SHUTDOWN_DRAIN_TIMEOUT_MS,
};
use crate::logrl::LogLimiter;
use crate::volume::BlockDevice;

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_RETRY_MS: u64 = 100;

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// An NBD server exporting one [`BlockDevice`] on one socket.
pub struct NbdServer<D: BlockDevice> {
    listener: Listener,
    bound: NbdListen,
    shared: Arc<Shared<D>>,
    drain_timeout: Duration,
    placement: Placement,
}

/// Where connections run (`daemon/shards.rs`): on the runtime of the accept loop (index 0),
/// or moved to another shard's runtime when that one serves fewer of this export's
/// connections. One connection thus stays on the accept loop's thread; a multi-conn client's
/// connections spread over the shards.
#[derive(Default)]
struct Placement {
    /// Index 0 is the accept loop's own runtime; empty: every connection stays there.
    shards: Vec<tokio::runtime::Handle>,
    /// Live connections per shard (same indices).
    live: Arc<[std::sync::atomic::AtomicUsize]>,
}

impl Placement {
    /// The shard serving the fewest connections now, the lowest index of those first.
    fn choose(&self) -> usize {
        (0..self.live.len())
            .min_by_key(|&i| (self.live[i].load(Relaxed), i))
            .unwrap_or(0)
    }
}

/// A connection's place on a shard; given back when the connection task ends.
struct Seat(Arc<[std::sync::atomic::AtomicUsize]>, usize);

impl Seat {
    fn take(live: &Arc<[std::sync::atomic::AtomicUsize]>, i: usize) -> Seat {
        if let Some(n) = live.get(i) {
            n.fetch_add(1, Relaxed);
        }
        Seat(live.clone(), i)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(n) = self.0.get(self.1) {
            n.fetch_sub(1, Relaxed);
        }
    }
}

struct Shared<D> {
    dev: Arc<D>,
    info: ExportInfo,
    stats: Arc<NbdStats>,
    /// One limiter for every line a client of this export can cause (including new
    /// connections, which are new sources each time).
    log: Arc<LogLimiter>,
    handshake_timeout: Duration,
    budget: PayloadBudget,
    /// The connections in transmission, for idle eviction when the export is full.
    idle: Arc<Registry>,
}

impl<D: BlockDevice> NbdServer<D> {
    /// Bind the socket. For a unix socket, a stale socket file left by a previous run is
    /// removed first; a file that is not a socket, or a socket someone still listens on, is an
    /// error.
    pub async fn bind(
        listen: NbdListen,
        export: ExportConfig,
        dev: Arc<D>,
    ) -> Result<Self, NbdError> {
        if export.name.len() > STRING_BYTES_MAX || export.description.len() > STRING_BYTES_MAX {
            return Err(NbdError::BadExport {
                name: export.name.chars().take(64).collect(),
                why: "name and description must be at most 4096 bytes",
            });
        }
        let min_block = dev.min_block_bytes();
        if !min_block.is_power_of_two() || min_block > 65536 {
            return Err(NbdError::BadBlockSize {
                device: dev.name().into(),
                min_block,
            });
        }
        let (listener, bound) = match &listen {
            NbdListen::Unix(path) => {
                remove_stale_socket(path)?;
                let l = UnixListener::bind(path).map_err(|source| NbdError::Bind {
                    listen: listen.to_string(),
                    source,
                })?;
                (Listener::Unix(l, path.clone()), listen.clone())
            }
            NbdListen::Tcp(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| NbdError::Bind {
                        listen: listen.to_string(),
                        source,
                    })?;
                let actual = l.local_addr().map_err(|source| NbdError::Bind {
                    listen: listen.to_string(),
                    source,
                })?;
                (Listener::Tcp(l), NbdListen::Tcp(actual))
            }
        };
        let info = ExportInfo {
            name: export.name,
            description: export.description,
            size: dev.size_bytes(),
            read_only: dev.read_only(),
            min_block,
        };
        tracing::info!(listen = %bound, export = %info.name, device = dev.name(),
            size = info.size, read_only = info.read_only, "NBD server listening");
        Ok(NbdServer {
            listener,
            bound,
            shared: Arc::new(Shared {
                dev,
                info,
                stats: Arc::new(NbdStats::default()),
                log: Arc::new(LogLimiter::new(LOG_LINES_PER_SOURCE_PER_SECOND_MAX)),
                handshake_timeout: Duration::from_millis(NBD_HANDSHAKE_TIMEOUT_MS),
                budget: PayloadBudget::default(),
                idle: Arc::new(Registry::new(Duration::from_millis(NBD_IDLE_EVICT_MS))),
            }),
            drain_timeout: Duration::from_millis(SHUTDOWN_DRAIN_TIMEOUT_MS),
            placement: Placement::default(),
        })
    }

    /// The address actually bound (a TCP port 0 is resolved to the real port).
    pub fn local_addr(&self) -> &NbdListen {
        &self.bound
    }

    /// Counters of this server; they stay readable after `run` returns.
    pub fn stats(&self) -> Arc<NbdStats> {
        self.shared.stats.clone()
    }

    /// Change the handshake deadline (default [`NBD_HANDSHAKE_TIMEOUT_MS`]); must be called
    /// before [`run`](Self::run).
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.handshake_timeout = timeout;
        }
    }

    /// Change how long a connection must have been idle before a new client may take its
    /// slot when the export is full (default [`NBD_IDLE_EVICT_MS`]).
    pub fn set_idle_evict(&mut self, idle: Duration) {
        self.shared.idle.set_min_idle(idle);
    }

    /// Share `budget` (the bound on payload bytes in flight) with other servers; by default
    /// each server has a budget of its own of
    /// [`NBD_INFLIGHT_DAEMON_BYTES_MAX`](crate::limits::NBD_INFLIGHT_DAEMON_BYTES_MAX). A
    /// daemon gives all its exports one budget. Must be called before [`run`](Self::run).
    pub fn set_payload_budget(&mut self, budget: PayloadBudget) {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.budget = budget;
        }
    }

    /// Let connections run on `shards` (`daemon/shards.rs`): the first must be the runtime
    /// [`run`](Self::run) runs on; a new connection goes to the one serving the fewest of this
    /// export's connections (the first on a tie), so one client stays on the accept loop's
    /// thread and a multi-conn client spreads. Must be called before `run`.
    pub fn set_shards(&mut self, shards: Vec<tokio::runtime::Handle>) {
        self.placement = Placement {
            live: shards.iter().map(|_| Default::default()).collect(),
            shards,
        };
    }

    /// Change how long shutdown waits for in-flight requests (default
    /// [`SHUTDOWN_DRAIN_TIMEOUT_MS`]).
    pub fn set_drain_timeout(&mut self, timeout: Duration) {
        self.drain_timeout = timeout;
    }

    /// Serve until `shutdown` turns `true` (or its sender is dropped), then drain and return.
    ///
    /// The signal is a `tokio::sync::watch::Receiver<bool>`: the daemon keeps the sender and
    /// sends `true` on SIGTERM; one sender can stop any number of servers.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), NbdError> {
        let NbdServer {
            listener,
            bound,
            shared,
            drain_timeout,
            placement,
        } = self;
        let conn_slots = Arc::new(Semaphore::new(NBD_CONNECTIONS_PER_EXPORT_MAX));
        let refuse_slots = Arc::new(Semaphore::new(NBD_REFUSED_HANDSHAKES_MAX));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut next_conn_id: u64 = 0;

        loop {
            tokio::select! {
                _ = stopped(&mut shutdown) => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            tracing::error!(listen = %bound, error = %e, "NBD connection task panicked");
                        }
                    }
                }
                accepted = accept(&listener) => match accepted {
                    Ok((conn, peer)) => {
                        // Unix peers all look alike: number the connections for the logs.
                        next_conn_id += 1;
                        let peer = format!("{peer}#{next_conn_id}");
                        let admission = match conn_slots.clone().try_acquire_owned() {
                            Ok(p) => Some((Admission::Admit, p)),
                            Err(_) if shared.idle.evict_idlest() => {
                                // An idle connection makes room; this client takes its slot.
                                let (sh, stop, slots, refuse) = (shared.clone(), stop_rx.clone(), conn_slots.clone(), refuse_slots.clone());
                                // Served here, the accept loop's runtime (shard index 0).
                                let live = placement.live.clone();
                                let wait = Duration::from_millis(NBD_EVICT_WAIT_MS);
                                tasks.spawn(async move {
                                    let (admission, slot) = match tokio::time::timeout(wait, slots.acquire_owned()).await {
                                        Ok(Ok(p)) => (Admission::Admit, p),
                                        _ => match refuse.try_acquire_owned() {
                                            Ok(p) => (Admission::Refuse("too many connections to this export"), p),
                                            Err(_) => return,
                                        },
                                    };
                                    let admitted = admission == Admission::Admit;
                                    if admitted {
                                        sh.stats.connections_accepted.fetch_add(1, Relaxed);
                                    } else {
                                        sh.stats.connections_refused.fetch_add(1, Relaxed);
                                    }
                                    let _seat = admitted.then(|| Seat::take(&live, 0));
                                    serve_conn(conn, sh, admission, slot, stop, peer).await
                                });
                                continue;
                            }
                            Err(_) => {
                                shared.stats.connections_refused.fetch_add(1, Relaxed);
                                crate::warn_rl!(shared.log, peer = %peer,
                                    max = NBD_CONNECTIONS_PER_EXPORT_MAX,
                                    "NBD connection refused: too many connections");
                                refuse_slots.clone().try_acquire_owned().ok().map(|p| {
                                    (Admission::Refuse("too many connections to this export"), p)
                                })
                            }
                        };
                        if let Some((admission, slot)) = admission {
                            if admission == Admission::Admit {
                                shared.stats.connections_accepted.fetch_add(1, Relaxed);
                            }
                            let (sh, stop) = (shared.clone(), stop_rx.clone());
                            // A refusal is only a handshake: answered here, taking no seat.
                            let admitted = admission == Admission::Admit;
                            let i = if admitted { placement.choose() } else { 0 };
                            let seat = admitted.then(|| Seat::take(&placement.live, i));
                            if i == 0 {
                                tasks.spawn(async move {
                                    let _seat = seat;
                                    serve_conn(conn, sh, admission, slot, stop, peer).await
                                });
                                continue;
                            }
                            // Off this reactor, registered again with the other shard's there.
                            match conn.into_std() {
                                Ok(c) => {
                                    tasks.spawn_on(async move {
                                        let _seat = seat;
                                        match c.into_tokio() {
                                            Ok(conn) => serve_conn(conn, sh, admission, slot, stop, peer).await,
                                            Err(e) => crate::warn_rl!(sh.log, peer = %peer, error = %e,
                                                "NBD connection closed: it could not join its thread's reactor"),
                                        }
                                    }, &placement.shards[i]);
                                }
                                Err(e) => crate::warn_rl!(shared.log, peer = %peer, error = %e,
                                    "NBD connection closed: it could not leave the accept loop's reactor"),
                            }
                        }
                    }
                    Err(e) => {
                        crate::warn_rl!(shared.log, listen = %bound, error = %e,
                            "NBD accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                    }
                },
            }
        }

        // Stop accepting, then let connections drain.
        if let Listener::Unix(_, path) = &listener {
            let _ = std::fs::remove_file(path);
        }
        drop(listener);
        let _ = stop_tx.send(true);
        tracing::info!(listen = %bound, connections = tasks.len(), "NBD server shutting down");
        let drained = tokio::time::timeout(drain_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(listen = %bound, connections = tasks.len(),
                timeout_ms = drain_timeout.as_millis() as u64,
                "NBD connections did not drain in time; aborting them");
            tasks.shutdown().await;
        }
        Ok(())
    }
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

/// A connection taken off one runtime's reactor, to be registered with another's.
enum StdConn {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Conn {
    /// Off this runtime's reactor (a failure, which only deregistration can cause, closes it).
    fn into_std(self) -> std::io::Result<StdConn> {
        Ok(match self {
            Conn::Unix(s) => StdConn::Unix(s.into_std()?),
            Conn::Tcp(s) => StdConn::Tcp(s.into_std()?),
        })
    }
}

impl StdConn {
    /// Onto the current runtime's reactor (the socket is still non-blocking).
    fn into_tokio(self) -> std::io::Result<Conn> {
        Ok(match self {
            StdConn::Unix(s) => Conn::Unix(tokio::net::UnixStream::from_std(s)?),
            StdConn::Tcp(s) => Conn::Tcp(tokio::net::TcpStream::from_std(s)?),
        })
    }
}

async fn serve_conn<D: BlockDevice>(
    conn: Conn,
    sh: Arc<Shared<D>>,
    admission: Admission,
    slot: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
    peer: String,
) {
    match conn {
        Conn::Unix(s) => serve(s, sh, admission, slot, stop, peer).await,
        Conn::Tcp(s) => serve(s, sh, admission, slot, stop, peer).await,
    }
}

async fn accept(l: &Listener) -> std::io::Result<(Conn, String)> {
    match l {
        Listener::Unix(l, path) => {
            let (s, _) = l.accept().await?;
            // The client's pid and command name, so `secondary` can say who holds the export.
            let who = match s.peer_cred().ok().and_then(|c| c.pid()) {
                Some(pid) => {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    format!(" pid {pid} ({})", comm.trim())
                }
                None => String::new(),
            };
            Ok((Conn::Unix(s), format!("unix:{}{who}", path.display())))
        }
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            // Small replies (write acks) must not wait for Nagle.
            let _ = s.set_nodelay(true);
            Ok((Conn::Tcp(s), peer.to_string()))
        }
    }
}

/// Remove a socket file left behind by a previous run; refuse anything else.
fn remove_stale_socket(path: &Path) -> Result<(), NbdError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(NbdError::Stale {
                path: path.into(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(NbdError::NotASocket { path: path.into() });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(NbdError::InUse { path: path.into() });
    }
    std::fs::remove_file(path).map_err(|source| NbdError::Stale {
        path: path.into(),
        source,
    })
}

/// Resolves when the value turns true or the sender is gone (the guard of `wait_for` is not
/// `Send`, so it must not live in a `select!` of a spawned task).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Decrements `connections_active` when a connection task ends, however it ends.
struct ActiveGuard(Arc<NbdStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Relaxed);
    }
}

/// One connection: handshake under a deadline, then transmission.
async fn serve<S, D>(
    mut stream: S,
    sh: Arc<Shared<D>>,
    admission: Admission,
    _slot: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
    peer: String,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: BlockDevice,
{
    sh.stats.connections_active.fetch_add(1, Relaxed);
    let _active = ActiveGuard(sh.stats.clone());
    let mut stop_hs = stop.clone();
    // Read-only is decided per connection: a replicated device becomes writable on promotion.
    // Size and writability as they are now: `drl resize` and role changes apply to the next
    // connection (NBD has no notice for an open one).
    let info = ExportInfo {
        size: sh.dev.size_bytes(),
        read_only: sh.dev.read_only(),
        ..sh.info.clone()
    };
    let hs = tokio::select! {
        r = tokio::time::timeout(sh.handshake_timeout, negotiate(&mut stream, &info, admission))
            => r,
        _ = stopped(&mut stop_hs) => return, // shutting down: drop negotiating clients
    };
    let structured = match hs {
        Ok(Ok(HandshakeEnd::Transmission { structured })) => structured,
        Ok(Ok(HandshakeEnd::Aborted)) => {
            sh.stats.handshakes_failed.fetch_add(1, Relaxed);
            tracing::debug!(peer = %peer, "NBD client aborted the handshake");
            return;
        }
        Ok(Err(e)) => {
            sh.stats.handshakes_failed.fetch_add(1, Relaxed);
            if e.is_disconnect() {
                tracing::debug!(peer = %peer, error = %e, "NBD client left during the handshake");
            } else {
                sh.stats.protocol_errors.fetch_add(1, Relaxed);
                crate::warn_rl!(sh.log, peer = %peer, error = %e, "NBD handshake failed");
            }
            return;
        }
        Err(_elapsed) => {
            sh.stats.handshakes_failed.fetch_add(1, Relaxed);
            crate::warn_rl!(sh.log, peer = %peer,
                timeout_ms = sh.handshake_timeout.as_millis() as u64,
                "NBD handshake timed out");
            return;
        }
    };
    tracing::debug!(peer = %peer, structured, "NBD client entered transmission");
    let _open = sh.stats.opened(&peer);
    let ctx = ConnCtx {
        dev: sh.dev.clone(),
        view: ExportView {
            name: sh.info.name.clone(),
            size: info.size,
            read_only: info.read_only,
            structured,
        },
        stats: sh.stats.clone(),
        log: sh.log.clone(),
        peer: peer.clone(),
        budget: sh.budget.clone(),
        idle: Some(sh.idle.register()),
    };
    match transmission(stream, ctx, stop).await {
        Ok(End::ProtocolError) | Ok(End::Disconnect) | Ok(End::Stopped) => {}
        Ok(End::ClientClosed) => {
            tracing::debug!(peer = %peer, "NBD client closed the connection");
        }
        Err(e) => {
            crate::warn_rl!(sh.log, peer = %peer, error = %e, "NBD connection failed");
        }
    }
}
