//! The remote control endpoint: off by default; with `[[node]] control-tcp = "IP:PORT"` and
//! `control-token-file`, the daemon also answers its control protocol over TCP, for an
//! orchestrator at another host of the site (several backup-site nodes per plan).
//!
//! Authentication is a challenge-response over the shared token, so the token itself never
//! crosses the network and a recorded exchange cannot be replayed:
//!
//! ```text
//! server -> {"drl_control": 1, "nonce": "<32 random bytes, hex>"}
//! client -> {"hmac": hex(HMAC-SHA256(token, "drl-control-v1" || nonce))}
//! server -> {"ok": true}          (or {"error": "..."} and close)
//! then the connection is the control protocol (newline-delimited JSON-RPC 2.0)
//! ```
//!
//! An authenticated connection is spliced to the daemon's own Unix control socket, so the
//! methods, limits, timeouts and events are exactly the local ones (and count against the
//! same connection limit). Before authentication a client gets one bounded line and
//! [`CONTROL_TCP_AUTH_TIMEOUT_MS`]; at most [`CONTROL_TCP_HANDSHAKES_MAX`] handshakes run at
//! once; failures are logged rate-limited. The channel is not encrypted: use it on a
//! management network or inside a tunnel (TLS is the next step; see ARCHITECTURE.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{watch, Semaphore};

use super::ControlError;
use crate::limits::{
    CONTROL_TCP_AUTH_TIMEOUT_MS, CONTROL_TCP_HANDSHAKES_MAX, CONTROL_TCP_TOKEN_BYTES_MIN,
};

const CONTEXT: &[u8] = b"drl-control-v1";
const AUTH_LINE_BYTES_MAX: u64 = 256;

/// The shared token of a TCP control endpoint.
#[derive(Clone)]
pub struct Token(Arc<Vec<u8>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    /// Read a token file: at least [`CONTROL_TCP_TOKEN_BYTES_MIN`] bytes (surrounding white
    /// space ignored), not readable by group or others.
    pub fn from_file(path: &Path) -> Result<Token, String> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{}: mode {:o} lets others read the token; chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let t = text.trim_ascii().to_vec();
        if t.len() < CONTROL_TCP_TOKEN_BYTES_MIN {
            return Err(format!(
                "{}: the token has {} bytes, at least {CONTROL_TCP_TOKEN_BYTES_MIN} are needed",
                path.display(),
                t.len()
            ));
        }
        Ok(Token(Arc::new(t)))
    }

    /// A token from its bytes (the fuzz harness; files go through [`Token::from_file`]).
    pub(crate) fn from_bytes(token: &[u8]) -> Token {
        Token(Arc::new(token.to_vec()))
    }

    /// HMAC-SHA256(token, context || nonce): what a client answers to `nonce`.
    pub(crate) fn answer(&self, nonce: &[u8]) -> String {
        hex::encode(self.mac(nonce).finalize().into_bytes())
    }

    fn mac(&self, nonce: &[u8]) -> Hmac<Sha256> {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(CONTEXT);
        m.update(nonce);
        m
    }
}

async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Value, String> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(AUTH_LINE_BYTES_MAX)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| e.to_string())?;
    if n == 0 || !line.ends_with(b"\n") {
        return Err("no complete line".into());
    }
    serde_json::from_slice(&line).map_err(|e| format!("not JSON: {e}"))
}

async fn write_line<W: AsyncWrite + Unpin>(w: &mut W, v: &Value) -> std::io::Result<()> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    w.write_all(&b).await
}

/// Serve `addr` until `shutdown`: authenticate, then splice to the Unix socket `unix`.
pub async fn serve(
    addr: SocketAddr,
    token: Token,
    unix: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ControlError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ControlError::Bind {
            path: PathBuf::from(addr.to_string()),
            source,
        })?;
    tracing::info!(address = %addr, "control endpoint listening on TCP (token authenticated)");
    let handshakes = Arc::new(Semaphore::new(CONTROL_TCP_HANDSHAKES_MAX));
    let rl = Arc::new(crate::logrl::LogLimiter::new(
        crate::limits::LOG_LINES_PER_SOURCE_PER_SECOND_MAX,
    ));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            acc = listener.accept() => {
                let Ok((stream, peer)) = acc else { continue };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    continue; // dropped: too many unauthenticated connections at once
                };
                let (token, unix, rl) = (token.clone(), unix.clone(), rl.clone());
                tokio::spawn(async move {
                    let authed = tokio::time::timeout(
                        Duration::from_millis(CONTROL_TCP_AUTH_TIMEOUT_MS),
                        authenticate(stream, &token),
                    )
                    .await;
                    drop(permit);
                    match authed {
                        Ok(Ok(stream)) => splice(stream, &unix, peer).await,
                        Ok(Err(why)) => crate::warn_rl!(rl, peer = %peer, "control over TCP refused: {why}"),
                        Err(_) => crate::warn_rl!(rl, peer = %peer, "control over TCP refused: no authentication within {CONTROL_TCP_AUTH_TIMEOUT_MS} ms"),
                    }
                });
            }
        }
    }
}

async fn authenticate(stream: TcpStream, token: &Token) -> Result<BufReader<TcpStream>, String> {
    authenticate_with(stream, token, rand::random()).await
}

/// The server side of the challenge-response on any stream, with the nonce given (the
/// fuzz harness drives it over an in-memory stream).
pub(crate) async fn authenticate_with<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    token: &Token,
    nonce: [u8; 32],
) -> Result<BufReader<S>, String> {
    let mut s = BufReader::new(stream);
    write_line(
        s.get_mut(),
        &json!({"drl_control": 1, "nonce": hex::encode(nonce)}),
    )
    .await
    .map_err(|e| e.to_string())?;
    let answer = read_line(&mut s).await?;
    let mac = answer
        .get("hmac")
        .and_then(Value::as_str)
        .and_then(|h| hex::decode(h).ok())
        .ok_or("the answer carries no hmac")?;
    if token.mac(&nonce).verify_slice(&mac).is_err() {
        let _ = write_line(s.get_mut(), &json!({"error": "authentication failed"})).await;
        return Err("wrong token".into());
    }
    write_line(s.get_mut(), &json!({"ok": true}))
        .await
        .map_err(|e| e.to_string())?;
    Ok(s)
}

async fn splice(tcp: BufReader<TcpStream>, unix: &Path, peer: SocketAddr) {
    let mut local = match UnixStream::connect(unix).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(peer = %peer, "control over TCP: the local socket {}: {e}", unix.display());
            return;
        }
    };
    // Bytes the BufReader already holds go first.
    let held = tcp.buffer().to_vec();
    if !held.is_empty() && local.write_all(&held).await.is_err() {
        return;
    }
    let mut tcp = tcp.into_inner();
    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut local).await;
}

/// The client side: connect and authenticate; the stream then speaks the control protocol.
pub async fn connect(
    addr: SocketAddr,
    token: &Token,
) -> Result<BufReader<TcpStream>, ControlError> {
    let io = |what: &'static str| move |source| ControlError::Io { what, source };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(io("connecting to the daemon's TCP control endpoint"))?;
    client_handshake(stream, token, &addr.to_string()).await
}

/// The client side of the challenge-response on any stream (`who` names the daemon in
/// errors); what a daemon, or whoever answers in its place, sends is parsed here.
pub(crate) async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    token: &Token,
    who: &str,
) -> Result<BufReader<S>, ControlError> {
    let io = |what: &'static str| move |source| ControlError::Io { what, source };
    let addr = who;
    let mut s = BufReader::new(stream);
    let hello = read_line(&mut s)
        .await
        .map_err(|e| ControlError::Protocol(format!("{addr}: no challenge: {e}")))?;
    let nonce = hello
        .get("nonce")
        .and_then(Value::as_str)
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| ControlError::Protocol(format!("{addr}: not a drl control endpoint")))?;
    let mac = token.answer(&nonce);
    write_line(s.get_mut(), &json!({ "hmac": mac }))
        .await
        .map_err(io("authenticating to the daemon"))?;
    let ok = read_line(&mut s)
        .await
        .map_err(|e| ControlError::Protocol(format!("{addr}: {e}")))?;
    if ok.get("ok") != Some(&Value::Bool(true)) {
        return Err(ControlError::Protocol(format!(
            "{addr}: the daemon refused the token: {}",
            ok.get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason")
        )));
    }
    Ok(s)
}
