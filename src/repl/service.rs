//! The per-resource replication task: listen, connect (or accept), handshake, run a session,
//! and again, until the daemon stops; StandAlone while the admin (or a split brain) says so.
//!
//! An accept task runs for the daemon's lifetime: at most `REPL_PENDING_CONNECTIONS_MAX`
//! incoming connections are handshaken at once, each within `REPL_HANDSHAKE_TIMEOUT_MS`; a
//! peer that fails the handshake (wrong secret, wrong resource or size, garbage, a node other
//! than the configured peer) is logged (rate-limited) and dropped. While a session runs, an
//! incoming connection only gets its first frame checked (so garbage is named in the log) and
//! then a `Refuse`: the live session is never disturbed, and a peer that restarted reconnects
//! (with backoff) once the old session noticed the loss (TCP reset, or
//! `REPL_PEER_TIMEOUT_MS` without a frame).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use drbd_compat::{ConnState, ReplState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::limits::{REPL_HANDSHAKE_TIMEOUT_MS, REPL_PENDING_CONNECTIONS_MAX};
use crate::repl::frame::Frame;
use crate::repl::wire::{resource_id, Decoder, Encoder};

use crate::repl::peer::{self, Conn, PeerError};
use crate::repl::replicator::Replicator;
use crate::repl::session;
use crate::volume::BlockDevice;

/// Run the replication of `rep` until `shutdown` turns true.
pub async fn run(rep: Arc<Replicator>, mut shutdown: watch::Receiver<bool>) {
    let (Some(local), Some(peer_pl)) = (rep.cfg.local.address, rep.cfg.peer.clone()) else {
        tracing::error!(resource = %rep.name, "replication needs the address of both nodes");
        return;
    };
    if rep.peer_address().is_none() {
        return;
    }
    let initiator = peer::initiates(&rep.node, &peer_pl.node);
    let listener = loop {
        match TcpListener::bind(local).await {
            Ok(l) => break l,
            Err(e) => {
                crate::warn_rl!(rep.rl, resource = %rep.name, address = %local, "cannot listen for the peer: {e}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    tracing::info!(resource = %rep.name, address = %local, peer = ?rep.peer_address(), initiator, "replication listening");
    let (in_tx, mut incoming) = mpsc::channel::<Conn>(1);
    let acceptor = tokio::spawn(accept_loop(listener, rep.clone(), in_tx));
    let _stop_acceptor = AbortOnDrop(acceptor);
    let mut attempt: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let wake = rep.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        if rep.state().standalone {
            rep.update(|st| {
                st.conn = ConnState::StandAlone;
                st.repl = ReplState::Off;
            });
            tokio::select! {
                _ = wake => {}
                _ = shutdown.changed() => return,
            }
            attempt = 0;
            continue;
        }
        rep.update(|st| {
            if st.conn != ConnState::Connecting {
                st.conn = ConnState::Connecting;
            }
        });
        let renegotiate = std::mem::take(&mut rep.state().renegotiate);
        if renegotiate {
            attempt = 0;
        }
        // Read for every attempt: `drl adjust` may have moved the peer.
        let Some(peer_addr) = rep.peer_address() else {
            return;
        };
        let got: Result<Conn, PeerError> = tokio::select! {
            Some(c) = incoming.recv() => Ok(c),
            r = connect_one(peer_addr, &rep, attempt), if initiator => r,
            _ = wake => continue,
            _ = shutdown.changed() => return,
        };
        match got {
            Ok(conn) => {
                if conn.est.peer.node_name != peer_pl.node {
                    crate::warn_rl!(rep.rl, resource = %rep.name, from = %conn.addr,
                        "refusing node {:?}: the configured peer is {:?}", conn.est.peer.node_name, peer_pl.node);
                    continue;
                }
                attempt = 0;
                if rep.state().standalone {
                    // `disconnect` came while this handshake ran.
                    continue;
                }
                rep.update(|st| st.peer_size_bytes = Some(conn.est.peer.size_bytes));
                // Both nodes apply the agreed size before their sessions start (online grow).
                if let Err(why) = rep.grow_to(conn.est.agreed_bytes).await {
                    let e = format!(
                        "growing the volume to the size agreed with the peer ({} bytes) failed: {why}",
                        conn.est.agreed_bytes
                    );
                    crate::warn_rl!(rep.rl, resource = %rep.name, "{e}; dropping the connection");
                    rep.update(|st| st.last_error = Some(e));
                    attempt = attempt.saturating_add(1);
                    continue;
                }
                let reason = session::run(&rep, conn, shutdown.clone()).await;
                tracing::debug!(resource = %rep.name, "session ended: {reason}");
                // A connection handshaken during the session carries stale generation ids.
                while incoming.try_recv().is_ok() {}
            }
            Err(e) => {
                attempt = attempt.saturating_add(1);
                let quiet = matches!(
                    &e,
                    PeerError::Io {
                        what: "connecting to",
                        ..
                    }
                );
                if quiet {
                    tracing::debug!(resource = %rep.name, "{e}");
                } else {
                    crate::warn_rl!(rep.rl, resource = %rep.name, "peer connection refused: {e}");
                    rep.update(|st| st.last_error = Some(e.to_string()));
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accept for the daemon's lifetime; hand authenticated connections to the service loop.
async fn accept_loop(listener: TcpListener, rep: Arc<Replicator>, out: mpsc::Sender<Conn>) {
    let slots = Arc::new(Semaphore::new(REPL_PENDING_CONNECTIONS_MAX));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                crate::warn_rl!(rep.rl, resource = %rep.name, "accepting a replication connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            crate::warn_rl!(rep.rl, resource = %rep.name, from = %addr,
                "more than {REPL_PENDING_CONNECTIONS_MAX} replication connections being handshaken: dropping this one");
            continue;
        };
        let (rep, out) = (rep.clone(), out.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let busy = rep.state().link.is_some() || rep.state().standalone;
            let tls = tls_role(&rep, false);
            if busy {
                match peer::secure(stream, addr, tls.as_ref()).await {
                    Ok(s) => refuse_busy(&rep, s, addr).await,
                    Err(e) => refused(&rep, &e),
                }
                return;
            }
            let secret = rep.cfg.secret.clone().unwrap_or_default();
            let local = session::local_info(&rep);
            match peer::handshake(stream, addr, local, secret.as_bytes(), tls.as_ref()).await {
                Ok(conn) => {
                    if out.try_send(conn).is_err() {
                        tracing::debug!(resource = %rep.name, from = %addr, "authenticated connection not needed now");
                    }
                }
                Err(e @ PeerError::Tls { .. }) => refused(&rep, &e),
                Err(e) => {
                    rep.stats
                        .protocol_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    crate::warn_rl!(rep.rl, resource = %rep.name, "replication connection refused: {e}");
                    rep.update(|st| st.last_error = Some(e.to_string()));
                }
            }
        });
    }
}

/// TLS for this resource's connections (`tls = true`): client when initiating, else server.
fn tls_role(rep: &Replicator, initiator: bool) -> Option<peer::TlsRole> {
    let peer = rep.cfg.peer.as_ref()?;
    rep.cfg.tls.then(|| peer::TlsRole {
        initiator,
        peer_node: peer.node.clone(),
    })
}

/// A peer refused for TLS reasons: log it (rate-limited), count it by reason, show it.
fn refused(rep: &Replicator, e: &PeerError) {
    if let Some(why) = e.refusal() {
        crate::repl::tls::count_refused(&rep.name, why);
    }
    crate::warn_rl!(rep.rl, resource = %rep.name, "replication peer refused: {e}");
    rep.update(|st| st.last_error = Some(e.to_string()));
}

/// A connection while a session runs (or while StandAlone): check its first frame for the
/// log, then refuse it.
async fn refuse_busy(rep: &Replicator, mut stream: peer::PeerStream, addr: SocketAddr) {
    let rid = resource_id(&rep.name);
    let mut dec = Decoder::new(rid);
    let mut buf = BytesMut::with_capacity(4096);
    let first = tokio::time::timeout(Duration::from_millis(REPL_HANDSHAKE_TIMEOUT_MS), async {
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Err("closed before a frame".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let why = if rep.state().standalone {
        "this node is StandAlone"
    } else {
        "already connected to the peer"
    };
    let bad = |rep: &Replicator| {
        rep.stats
            .protocol_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
    match first {
        Ok(Ok(Frame::Hello(h))) => {
            crate::info_rl!(rep.rl, resource = %rep.name, from = %addr, node = %h.node_name,
                "refusing a replication connection: {why}");
        }
        Ok(Ok(f)) => {
            bad(rep);
            crate::warn_rl!(rep.rl, resource = %rep.name, from = %addr,
                "refusing a replication connection: {} frame before the handshake", f.frame_type().name());
        }
        Ok(Err(e)) => {
            bad(rep);
            crate::warn_rl!(rep.rl, resource = %rep.name, from = %addr, "refusing a replication connection: {e}");
        }
        Err(_) => {
            crate::warn_rl!(rep.rl, resource = %rep.name, from = %addr,
                "refusing a replication connection: no frame within {REPL_HANDSHAKE_TIMEOUT_MS} ms");
        }
    }
    let mut out = BytesMut::new();
    if Encoder::new(rid)
        .encode(
            &Frame::Refuse {
                reason: why.to_owned(),
            },
            &mut out,
        )
        .is_ok()
    {
        let _ = stream.write_all(&out).await;
    }
    let _ = stream.shutdown().await;
}

async fn connect_one(
    addr: SocketAddr,
    rep: &Arc<Replicator>,
    attempt: u32,
) -> Result<Conn, PeerError> {
    if attempt > 0 {
        tokio::time::sleep(Duration::from_millis(peer::backoff_ms(attempt - 1))).await;
    }
    let stream = peer::connect(addr).await?;
    let secret = rep.cfg.secret.clone().unwrap_or_default();
    let tls = tls_role(rep, true);
    let r = peer::handshake(
        stream,
        addr,
        session::local_info(rep),
        secret.as_bytes(),
        tls.as_ref(),
    )
    .await;
    if let Err(e) = &r {
        if let Some(why) = e.refusal() {
            crate::repl::tls::count_refused(&rep.name, why);
        }
    }
    r
}

/// Persist the bitmap every `period` while the daemon runs (bits set by writes reach the
/// metadata even without an AL eviction or a disconnect).
pub async fn persist_loop(
    rep: Arc<Replicator>,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = session::persist_bitmap(&rep).await {
            crate::warn_rl!(rep.rl, resource = %rep.name, "persisting the bitmap: {e}");
        }
        // Batched with the persist: activity-log extents whose writes the peer has all
        // acknowledged, and this node's disk has all flushed, leave the persisted hot set, so
        // a crash resyncs only what was unacknowledged (not every extent written since the
        // last eviction). The flush first: an extent retired over a write still in the disk's
        // volatile cache would let a power loss diverge the pair silently (tests/sim).
        // Each volume of a group has its own activity log, retired against its own disk.
        for (n, v) in rep.vols().iter().enumerate() {
            let flushed = v.al.writes_done();
            if let Err(e) = v.disk.flush().await {
                crate::warn_rl!(rep.rl, resource = %rep.name, volume = n, "flushing before retiring activity-log extents: {e}");
                continue;
            }
            let (al, meta, bm) = (v.al.clone(), v.meta.clone(), v.bitmap.clone());
            let r = tokio::task::spawn_blocking(move || al.retire_clean(&meta, &bm, flushed))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
            if let Err(e) = r {
                crate::warn_rl!(rep.rl, resource = %rep.name, volume = n, "retiring acknowledged activity-log extents: {e}");
            }
        }
    }
}
