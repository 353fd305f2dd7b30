//! Reaching the peer: TCP listen and connect, reconnect backoff, and the handshake driven over
//! a socket with a deadline.
//!
//! Who connects: both nodes listen on their own `address`; only the node whose name sorts
//! first connects out. So there is never a second, simultaneous connection to resolve: the
//! lexically smaller node always initiates, the other one always accepts. A node that
//! restarts is reached again because the initiator retries with exponential backoff and
//! jitter (`REPL_RECONNECT_MIN_MS` doubling to `REPL_RECONNECT_MAX_MS`).
//!
//! The handshake ([`crate::repl::handshake`]) runs before anything else is read or written:
//! the whole exchange must finish within `REPL_HANDSHAKE_TIMEOUT_MS`, and every byte goes
//! through the checked [`Decoder`]. A peer that fails it (wrong secret, other resource or size,
//! garbage) is dropped with a log line and never sees a data frame.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::{REPL_HANDSHAKE_TIMEOUT_MS, REPL_RECONNECT_MAX_MS, REPL_RECONNECT_MIN_MS};
use crate::repl::frame::Frame;
use crate::repl::handshake::{Established, Handshake, HandshakeError, LocalInfo};
use crate::repl::wire::{features, resource_id, Decoder, Encoder, WireError};

/// Why a connection attempt or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{what} {addr}: {source}")]
    Io {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("from {addr}: {source}")]
    Wire {
        addr: String,
        #[source]
        source: WireError,
    },
    #[error("handshake with {addr}: {source}")]
    Handshake {
        addr: String,
        #[source]
        source: HandshakeError,
    },
    #[error("handshake with {addr} did not finish within {ms} ms")]
    Timeout { addr: String, ms: u64 },
    #[error("{addr} closed the connection during the handshake")]
    Closed { addr: String },
}

/// An authenticated connection, ready for the session.
pub struct Conn {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    pub est: Established,
    /// What this node announced in its Hello: the sync decision must be taken on exactly
    /// this (the peer decides on it too), not on the state at the end of the handshake.
    pub local: LocalInfo,
    pub enc: Encoder,
    pub dec: Decoder,
    /// Bytes read after the handshake's last frame (the session decodes them first).
    pub rbuf: BytesMut,
}

/// Whether this node initiates connections (its name sorts before the peer's).
pub fn initiates(local_node: &str, peer_node: &str) -> bool {
    local_node < peer_node
}

/// The delay before reconnect attempt `attempt` (0-based): exponential with +-25% jitter.
pub fn backoff_ms(attempt: u32) -> u64 {
    let base = REPL_RECONNECT_MIN_MS
        .saturating_mul(1u64 << attempt.min(16))
        .min(REPL_RECONNECT_MAX_MS);
    let jitter = base / 4;
    let r: u64 = rand::random::<u64>() % (2 * jitter + 1);
    base - jitter + r
}

/// Connect to `addr` (no retry: the caller loops with [`backoff_ms`]).
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, PeerError> {
    let s = tokio::time::timeout(
        Duration::from_millis(REPL_HANDSHAKE_TIMEOUT_MS),
        TcpStream::connect(addr),
    )
    .await
    .map_err(|_| PeerError::Io {
        what: "connecting to",
        addr: addr.to_string(),
        source: std::io::Error::from(std::io::ErrorKind::TimedOut),
    })?
    .map_err(|source| PeerError::Io {
        what: "connecting to",
        addr: addr.to_string(),
        source,
    })?;
    refuse_self_connect(s, addr)
}

/// A connect to a port on this host where nothing listens can succeed with the connection
/// joined to itself (TCP simultaneous open, when the kernel picks that very port as the
/// source). The socket then echoes our own handshake back and, worse, holds the port the peer
/// is about to listen on, so the peer could never start its listener. Drop such a connection
/// at once; the caller retries after its backoff, by which time the peer may listen.
fn refuse_self_connect(s: TcpStream, addr: SocketAddr) -> Result<TcpStream, PeerError> {
    match (s.local_addr(), s.peer_addr()) {
        (Ok(local), Ok(peer)) if local == peer => Err(PeerError::Io {
            what: "connecting to",
            addr: addr.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "the connection joined itself (nothing listens there yet); dropped",
            ),
        }),
        _ => Ok(s),
    }
}

/// Run the handshake on `stream` with a deadline.
pub async fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    local: LocalInfo,
    secret: &[u8],
) -> Result<Conn, PeerError> {
    let ms = REPL_HANDSHAKE_TIMEOUT_MS;
    let a = addr.to_string();
    match tokio::time::timeout(
        Duration::from_millis(ms),
        handshake_inner(stream, addr, local, secret),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(PeerError::Timeout { addr: a, ms }),
    }
}

async fn handshake_inner(
    mut stream: TcpStream,
    addr: SocketAddr,
    local: LocalInfo,
    secret: &[u8],
) -> Result<Conn, PeerError> {
    let a = || addr.to_string();
    let _ = stream.set_nodelay(true);
    let rid = resource_id(&local.resource);
    let mut enc = Encoder::new(rid);
    let mut dec = Decoder::new(rid);
    let mut hs = Handshake::new(local.clone(), secret)
        .map_err(|source| PeerError::Handshake { addr: a(), source })?;
    send_all(&mut stream, &enc, &hs.start(), addr).await?;
    let mut rbuf = BytesMut::with_capacity(8192);
    loop {
        let frame = loop {
            match dec
                .decode(&mut rbuf)
                .map_err(|source| PeerError::Wire { addr: a(), source })?
            {
                Some(f) => break f,
                None => {
                    let n = stream
                        .read_buf(&mut rbuf)
                        .await
                        .map_err(|source| PeerError::Io {
                            what: "reading from",
                            addr: a(),
                            source,
                        })?;
                    if n == 0 {
                        return Err(PeerError::Closed { addr: a() });
                    }
                }
            }
        };
        let out = hs.on_frame(frame);
        send_all(&mut stream, &enc, &out.send, addr).await?;
        match out.result {
            None => {}
            Some(Err(source)) => return Err(PeerError::Handshake { addr: a(), source }),
            Some(Ok(est)) => {
                let z = est.features & features::ZSTD != 0;
                enc.set_zstd(z);
                dec.set_zstd(z);
                return Ok(Conn {
                    stream,
                    addr,
                    est,
                    local,
                    enc,
                    dec,
                    rbuf,
                });
            }
        }
    }
}

async fn send_all(
    stream: &mut TcpStream,
    enc: &Encoder,
    frames: &[Frame],
    addr: SocketAddr,
) -> Result<(), PeerError> {
    if frames.is_empty() {
        return Ok(());
    }
    let mut out = BytesMut::new();
    for f in frames {
        enc.encode(f, &mut out).map_err(|source| PeerError::Wire {
            addr: addr.to_string(),
            source,
        })?;
    }
    stream
        .write_all(&out)
        .await
        .map_err(|source| PeerError::Io {
            what: "writing to",
            addr: addr.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_smaller_name_initiates() {
        assert!(initiates("alpha", "beta"));
        assert!(!initiates("beta", "alpha"));
    }

    #[tokio::test]
    async fn a_connection_joined_to_itself_is_dropped_and_frees_the_port() {
        // Make a self-connect on purpose: bind a port, then connect from it to it.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(true).unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = sock.local_addr().unwrap();
        let s = sock.connect(addr).await.unwrap();
        assert_eq!(s.local_addr().unwrap(), s.peer_addr().unwrap());
        let err = refuse_self_connect(s, addr).unwrap_err().to_string();
        assert!(err.contains("joined itself"), "{err}");
        // The port is free again: the peer can start its listener there.
        tokio::net::TcpListener::bind(addr).await.unwrap();

        // An ordinary connection passes.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = l.local_addr().unwrap();
        let s = TcpStream::connect(to).await.unwrap();
        assert!(refuse_self_connect(s, to).is_ok());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..40 {
            let d = backoff_ms(attempt);
            assert!(d >= REPL_RECONNECT_MIN_MS * 3 / 4, "attempt {attempt}: {d}");
            assert!(d <= REPL_RECONNECT_MAX_MS * 5 / 4, "attempt {attempt}: {d}");
        }
        assert!(backoff_ms(0) <= REPL_RECONNECT_MIN_MS * 5 / 4);
        assert!(backoff_ms(20) >= REPL_RECONNECT_MAX_MS * 3 / 4);
    }
}
