//! The per-resource replication task: listen, connect (or accept), handshake, run a session,
//! and again, until the daemon stops; StandAlone while the admin (or a split brain) says so.
//!
//! One incoming connection is handshaken at a time, within `REPL_HANDSHAKE_TIMEOUT_MS`;
//! a peer that fails the handshake (wrong secret, wrong resource or size, garbage, a node
//! other than the configured peer) is logged (rate-limited) and dropped. While a session runs
//! no other connection is accepted: a peer that restarted reconnects once the old session
//! noticed the loss (TCP reset, or `REPL_PEER_TIMEOUT_MS` without a frame).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use drbd_compat::{ConnState, ReplState};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::repl::peer::{self, Conn, PeerError};
use crate::repl::replicator::Replicator;
use crate::repl::session;

/// Run the replication of `rep` until `shutdown` turns true.
pub async fn run(rep: Arc<Replicator>, mut shutdown: watch::Receiver<bool>) {
    let (Some(local), Some(peer_pl)) = (rep.cfg.local.address, rep.cfg.peer.clone()) else {
        tracing::error!(resource = %rep.name, "replication needs the address of both nodes");
        return;
    };
    let Some(peer_addr) = peer_pl.address else {
        return;
    };
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
    tracing::info!(resource = %rep.name, address = %local, peer = %peer_addr, initiator, "replication listening");
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
        let got: Result<Conn, PeerError> = tokio::select! {
            r = accept_one(&listener, &rep) => r,
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
                let reason = session::run(&rep, conn, shutdown.clone()).await;
                tracing::debug!(resource = %rep.name, "session ended: {reason}");
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

async fn accept_one(listener: &TcpListener, rep: &Arc<Replicator>) -> Result<Conn, PeerError> {
    let (stream, addr) = listener.accept().await.map_err(|source| PeerError::Io {
        what: "accepting on",
        addr: listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        source,
    })?;
    let secret = rep.cfg.secret.clone().unwrap_or_default();
    peer::handshake(stream, addr, session::local_info(rep), secret.as_bytes()).await
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
    peer::handshake(stream, addr, session::local_info(rep), secret.as_bytes()).await
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
    }
}
