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
//!
//! TLS (a resource with `tls = true`, see [`crate::repl::tls`]) is set up here too, on the
//! plain TCP connection and before the handshake, under the same deadline; the session gets a
//! [`PeerStream`] and cannot tell the two apart.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::limits::{REPL_HANDSHAKE_TIMEOUT_MS, REPL_RECONNECT_MAX_MS, REPL_RECONNECT_MIN_MS};
use crate::repl::frame::Frame;
use crate::repl::handshake::{Established, Handshake, HandshakeError, LocalInfo};
use crate::repl::tls::Refusal;
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
    #[error("TLS with {addr} refused ({}): {message}", reason.as_str())]
    Tls {
        addr: String,
        reason: Refusal,
        message: String,
    },
}

impl PeerError {
    /// The TLS refusal this error is, if any (for the per-reason count).
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            PeerError::Tls { reason, .. } if *reason != Refusal::Closed => Some(*reason),
            _ => None,
        }
    }
}

/// How to secure a connection: TLS as the client (this node initiated) or the server, with
/// the peer node's name its certificate must carry.
#[derive(Clone, Debug)]
pub struct TlsRole {
    pub initiator: bool,
    pub peer_node: String,
}

/// The connection to the peer: plain TCP or TLS over TCP.
pub enum PeerStream {
    Plain(TcpStream),
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The reading half of a [`PeerStream`].
pub enum PeerRead {
    Plain(tokio::net::tcp::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<PeerStream>),
}

/// The writing half of a [`PeerStream`].
pub enum PeerWrite {
    Plain(tokio::net::tcp::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<PeerStream>),
}

impl PeerStream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(s) => s,
            PeerStream::TlsClient(s) => s.get_ref().0,
            PeerStream::TlsServer(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, PeerStream::Plain(_))
    }

    /// Halves for the session's reader and writer tasks: a TCP stream splits without a lock;
    /// a TLS stream shares one (tokio's `split`), since a read may have to write (TLS 1.3 key
    /// updates) and both halves drive the same TLS state.
    pub fn into_split(self) -> (PeerRead, PeerWrite) {
        match self {
            PeerStream::Plain(s) => {
                let (r, w) = s.into_split();
                (PeerRead::Plain(r), PeerWrite::Plain(w))
            }
            tls => {
                let (r, w) = tokio::io::split(tls);
                (PeerRead::Tls(r), PeerWrite::Tls(w))
            }
        }
    }
}

impl std::os::fd::AsFd for PeerStream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.tcp().as_fd()
    }
}

macro_rules! delegate_io {
    ($ty:ident: $($variant:ident),+) => {
        impl AsyncRead for $ty {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)+ }
            }
        }
    };
    (write $ty:ident: $($variant:ident),+) => {
        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)+ }
            }
            // Vectored writes pass through: the session's writer gathers a batch of frames
            // into one writev (the default would write the first slice alone).
            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+ }
            }
            fn is_write_vectored(&self) -> bool {
                match self { $($ty::$variant(s) => s.is_write_vectored(),)+ }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_flush(cx),)+ }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_shutdown(cx),)+ }
            }
        }
    };
}

delegate_io!(PeerStream: Plain, TlsClient, TlsServer);
delegate_io!(write PeerStream: Plain, TlsClient, TlsServer);
delegate_io!(PeerRead: Plain, Tls);
delegate_io!(write PeerWrite: Plain, Tls);

/// Wrap `stream` in TLS as `tls` says (or leave it plain), within the handshake deadline.
pub async fn secure(
    stream: TcpStream,
    addr: SocketAddr,
    tls: Option<&TlsRole>,
) -> Result<PeerStream, PeerError> {
    let Some(role) = tls else {
        return Ok(PeerStream::Plain(stream));
    };
    let a = addr.to_string();
    let Some(cfg) = crate::repl::tls::node() else {
        return Err(PeerError::Tls {
            addr: a,
            reason: Refusal::TlsError,
            message: "this node has no TLS certificate loaded ([tls] ca, tls-cert, tls-key)".into(),
        });
    };
    let ms = REPL_HANDSHAKE_TIMEOUT_MS;
    let fut = async {
        if role.initiator {
            crate::repl::tls::connect(&cfg, stream, &role.peer_node)
                .await
                .map(|s| PeerStream::TlsClient(Box::new(s)))
        } else {
            crate::repl::tls::accept(&cfg, stream, &role.peer_node)
                .await
                .map(|s| PeerStream::TlsServer(Box::new(s)))
        }
    };
    match tokio::time::timeout(Duration::from_millis(ms), fut).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(f)) => Err(PeerError::Tls {
            addr: a,
            reason: f.refusal,
            message: f.message,
        }),
        Err(_) => Err(PeerError::Timeout { addr: a, ms }),
    }
}

/// An authenticated connection, ready for the session.
pub struct Conn {
    pub stream: PeerStream,
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

/// Secure `stream` as `tls` says, then run the handshake on it, all within one deadline.
pub async fn handshake(
    stream: TcpStream,
    addr: SocketAddr,
    local: LocalInfo,
    secret: &[u8],
    tls: Option<&TlsRole>,
) -> Result<Conn, PeerError> {
    let ms = REPL_HANDSHAKE_TIMEOUT_MS;
    let a = addr.to_string();
    let _ = stream.set_nodelay(true);
    let run = async {
        let stream = secure(stream, addr, tls).await?;
        handshake_inner(stream, addr, local, secret).await
    };
    match tokio::time::timeout(Duration::from_millis(ms), run).await {
        Ok(r) => r,
        Err(_) => Err(PeerError::Timeout { addr: a, ms }),
    }
}

async fn handshake_inner(
    mut stream: PeerStream,
    addr: SocketAddr,
    local: LocalInfo,
    secret: &[u8],
) -> Result<Conn, PeerError> {
    let a = || addr.to_string();
    let tls = stream.is_tls();
    let rid = resource_id(&local.resource);
    let mut enc = Encoder::new(rid);
    let mut dec = Decoder::new(rid);
    let mut hs = Handshake::new(local.clone(), secret)
        .map_err(|source| PeerError::Handshake { addr: a(), source })?;
    send_all(&mut stream, &enc, &hs.start(), addr).await?;
    let mut rbuf = BytesMut::with_capacity(8192);
    loop {
        let frame = loop {
            match dec.decode(&mut rbuf).map_err(|source| {
                // A TLS record (handshake, 0x16) where a frame belongs: the peer has TLS on.
                if !tls && rbuf.first() == Some(&0x16) {
                    return PeerError::Tls {
                        addr: a(),
                        reason: Refusal::PeerUsesTls,
                        message: "the peer speaks TLS, but this resource has no tls = true".into(),
                    };
                }
                PeerError::Wire { addr: a(), source }
            })? {
                Some(f) => break f,
                None => {
                    let n = stream.read_buf(&mut rbuf).await.map_err(|source| {
                        // TLS 1.3: the server checks our certificate after our side of the
                        // handshake is done, so its refusal arrives here, as an alert.
                        match crate::repl::tls::explain_io(&source) {
                            Some((reason, message)) => PeerError::Tls {
                                addr: a(),
                                reason,
                                message,
                            },
                            None => PeerError::Io {
                                what: "reading from",
                                addr: a(),
                                source,
                            },
                        }
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
    stream: &mut PeerStream,
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
