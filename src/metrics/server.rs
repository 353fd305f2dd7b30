//! The metrics endpoint: just enough HTTP/1.1 for a Prometheus scrape.
//!
//! One request per connection (`Connection: close`), `GET` or `HEAD` of `/metrics` or `/`.
//! The request head is bounded by [`METRICS_REQUEST_BYTES_MAX`] and, with the answer, by
//! [`METRICS_IO_TIMEOUT_MS`]; at most [`METRICS_CONNECTIONS_MAX`] are served at once. A
//! malformed request gets a 4xx and the connection is closed; the daemon goes on.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::limits::{METRICS_CONNECTIONS_MAX, METRICS_IO_TIMEOUT_MS, METRICS_REQUEST_BYTES_MAX};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics-listen {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Bind `addr` now (so a taken port stops the start with a clear error), then serve scrapes
/// with `render` until `shutdown` turns true.
pub async fn serve<F, Fut>(
    addr: SocketAddr,
    render: F,
    shutdown: watch::Receiver<bool>,
) -> Result<impl Future<Output = ()>, MetricsError>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(listen = %local, "metrics endpoint ready");
    Ok(run(listener, Arc::new(render), shutdown))
}

async fn run<F, Fut>(listener: TcpListener, render: Arc<F>, mut shutdown: watch::Receiver<bool>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(METRICS_CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let t = Duration::from_millis(METRICS_IO_TIMEOUT_MS);
            if let Err(e) = tokio::time::timeout(t, answer(stream, &*render)).await {
                tracing::debug!(%peer, error = %e, "metrics request timed out");
            }
        });
    }
}

async fn answer<F, Fut>(mut s: TcpStream, render: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = String>,
{
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() > METRICS_REQUEST_BYTES_MAX {
            let _ = reply(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
                true,
            )
            .await;
            // Read the rest before closing: closing with unread input would reset the
            // connection and the client could lose the answer (bounded by the timeout).
            while let Ok(1..) = s.read(&mut buf).await {}
            return;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let with_body = method != "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => {
            let body = render().await;
            let ct = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
            let _ = reply(&mut s, "200 OK", ct, body.as_bytes(), with_body).await;
        }
        ("GET" | "HEAD", _) => {
            let _ = reply(
                &mut s,
                "404 Not Found",
                "text/plain",
                b"drl serves /metrics\n",
                with_body,
            )
            .await;
        }
        _ => {
            let _ = reply(
                &mut s,
                "405 Method Not Allowed",
                "text/plain",
                b"GET /metrics\n",
                true,
            )
            .await;
        }
    }
}

async fn reply(
    s: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    if with_body {
        s.write_all(body).await?;
    }
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_refuses_the_rest() {
        let (_tx, rx) = watch::channel(false);
        // Port 0: find the port through a probe listener first.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let fut = serve(addr, || async { "drl_up 1\n".to_owned() }, rx)
            .await
            .unwrap();
        tokio::spawn(fut);
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.ends_with("\r\n\r\ndrl_up 1\n"), "{ok}");
        let nf = get(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        let bad = get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 405"), "{bad}");
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', METRICS_REQUEST_BYTES_MAX + 10));
        let too_big = get(addr, &big).await;
        assert!(too_big.starts_with("HTTP/1.1 431"), "{too_big}");
        // A taken port is a clear start error.
        let (_tx2, rx2) = watch::channel(false);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = serve(taken.local_addr().unwrap(), || async { String::new() }, rx2)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot listen"), "{e}");
    }
}
