//! One control-socket connection: read a line, answer it, repeat; stream events once the
//! client has subscribed.
//!
//! Everything a client can do wrong ends in an error reply or a closed connection, never in
//! unbounded memory or a stuck server task:
//! - lines are read with a bounded reader: a line longer than the limit gets one
//!   `-32600` reply; the rest of the line is read and discarded without buffering (at most
//!   `CONTROL_DISCARD_BYTES_MAX`, within the write timeout), so a client still writing it
//!   reads the reply instead of a broken pipe, and then the connection is closed;
//! - a connection in a reserved slot (over `connections_max`) may make one read-only call
//!   (`status`, `methods`) within `CONTROL_RESERVED_IDLE_MS`, anything else gets `busy`;
//! - malformed JSON gets `-32700` and the connection keeps going;
//! - every write has a deadline: a client that does not read its replies (or its events) is
//!   dropped when the deadline passes;
//! - a client that completes no line within the idle timeout is dropped, unless it is an event
//!   subscriber;
//! - a handler runs on its own task, so its panic becomes a `-32603` reply.
//!
//! Requests on one connection are answered in order, one at a time.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep, timeout, Instant};

use super::events::{EventFilter, Received, Subscription};
use super::rpc::{self, Notification, Request, Response, RpcError};
use super::server::Shared;
use crate::limits::CONTROL_DISCARD_BYTES_MAX;

/// Notification method carrying one [`Event`](super::events::Event).
pub const EVENT_NOTIFICATION: &str = "event";
/// Notification method telling a lagging subscriber how many events it lost: `{"lost": N}`.
pub const EVENTS_LOST_NOTIFICATION: &str = "events.lost";

/// Why a connection ended (for the debug log).
#[derive(Debug)]
enum Closed {
    LineTooLong,
    Idle,
    WriteTimeout,
    Io(#[allow(dead_code)] io::Error),
}

/// What one bounded read produced.
#[derive(Debug, PartialEq)]
pub(crate) enum LineRead {
    /// A complete line is in the buffer (without its `\n`).
    Line,
    /// The peer closed and no partial line is pending.
    Eof,
    /// The line exceeded the limit; what was read of it is discarded.
    TooLong,
}

/// Read one `\n`-terminated line into `line`, holding at most `max` bytes of it. Cancel safe:
/// bytes already taken from the reader stay in `line`, so call again with the same buffer.
/// A final line without `\n` before EOF counts as a line.
pub(crate) async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if line.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if line.len() + take > max {
            let used = if done { take + 1 } else { take };
            reader.consume(used);
            line.clear();
            return Ok(LineRead::TooLong);
        }
        line.extend_from_slice(&available[..take]);
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(LineRead::Line);
        }
    }
}

/// Methods a connection in a reserved slot may call: read-only and quick.
pub(crate) const RESERVED_METHODS: [&str; 2] = ["status", "methods"];

/// Read and drop the rest of an oversized line: up to its `\n`, the client's end of the
/// stream, `max` bytes or `deadline`, whichever comes first.
async fn discard_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize, deadline: Duration) {
    let drain = async {
        let mut dropped = 0usize;
        while dropped < max {
            let Ok(available) = reader.fill_buf().await else {
                return;
            };
            if available.is_empty() {
                return;
            }
            if let Some(i) = available.iter().position(|&b| b == b'\n') {
                reader.consume(i + 1);
                return;
            }
            let n = available.len();
            reader.consume(n);
            dropped += n;
        }
    };
    let _ = timeout(deadline, drain).await;
}

/// Serve one accepted connection until it closes; the permit is held for as long.
pub(crate) async fn serve(stream: UnixStream, shared: Arc<Shared>, _permit: OwnedSemaphorePermit) {
    serve_with(stream, shared, false).await
}

/// Serve a connection in a reserved slot: one read-only call, then close.
pub(crate) async fn serve_reserved(
    stream: UnixStream,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    serve_with(stream, shared, true).await
}

async fn serve_with(stream: UnixStream, shared: Arc<Shared>, reserved: bool) {
    let (reader, writer) = stream.into_split();
    let mut conn = Connection {
        reader: BufReader::new(reader),
        writer,
        line: Vec::new(),
        subscription: None,
        shared,
        reserved,
    };
    match conn.run().await {
        Ok(()) => tracing::debug!("control client disconnected"),
        Err(reason) => tracing::debug!(?reason, "control connection closed"),
    }
}

fn busy(connections_max: usize) -> RpcError {
    RpcError::busy(format!(
        "too many control connections (max {connections_max}); try again later \
         (`status` still gets through)"
    ))
}

/// Refuse a connection over the limit: one error line, then close.
pub(crate) async fn refuse(
    mut stream: UnixStream,
    write_timeout: Duration,
    connections_max: usize,
) {
    let reply = Response::failure(Value::Null, busy(connections_max));
    if let Ok(line) = to_line(&reply) {
        let _ = timeout(write_timeout, stream.write_all(&line)).await;
    }
    let _ = timeout(write_timeout, stream.shutdown()).await;
}

struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The line being read; survives cancelled reads.
    line: Vec<u8>,
    subscription: Option<(Subscription, EventFilter)>,
    shared: Arc<Shared>,
    /// A reserved slot: one call of [`RESERVED_METHODS`], a short idle timeout.
    reserved: bool,
}

impl Connection {
    async fn run(&mut self) -> Result<(), Closed> {
        let idle_timeout = if self.reserved {
            self.shared.options.reserved_idle_timeout
        } else {
            self.shared.options.idle_timeout
        };
        let line_max = self.shared.options.line_bytes_max;
        let idle = sleep(idle_timeout);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                read = read_line_bounded(&mut self.reader, &mut self.line, line_max) => {
                    match read.map_err(Closed::Io)? {
                        LineRead::Eof => return Ok(()),
                        LineRead::TooLong => {
                            let error = RpcError::invalid_request(format!(
                                "request line longer than {line_max} bytes; closing the connection"
                            ));
                            self.send(&Response::failure(Value::Null, error)).await?;
                            let wt = self.shared.options.write_timeout;
                            discard_line(&mut self.reader, CONTROL_DISCARD_BYTES_MAX, wt).await;
                            let _ = timeout(wt, self.writer.shutdown()).await;
                            return Err(Closed::LineTooLong);
                        }
                        LineRead::Line => {
                            let line = std::mem::take(&mut self.line);
                            self.handle_line(&line).await?;
                            if self.reserved && !line.trim_ascii().is_empty() {
                                let _ = timeout(self.shared.options.write_timeout, self.writer.shutdown()).await;
                                return Ok(());
                            }
                            idle.as_mut().reset(Instant::now() + idle_timeout);
                        }
                    }
                }
                received = next_event(&mut self.subscription) => match received {
                    Some(Received::Event(event)) => {
                        self.send(&Notification::new(EVENT_NOTIFICATION, json!(event))).await?;
                    }
                    Some(Received::Lost(lost)) => {
                        self.send(&Notification::new(EVENTS_LOST_NOTIFICATION, json!({"lost": lost}))).await?;
                    }
                    None => self.subscription = None,
                },
                () = &mut idle, if self.subscription.is_none() => {
                    if self.reserved {
                        let max = self.shared.options.connections_max;
                        let _ = self.send(&Response::failure(Value::Null, busy(max))).await;
                    }
                    return Err(Closed::Idle);
                }
            }
        }
    }

    async fn handle_line(&mut self, line: &[u8]) -> Result<(), Closed> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return Ok(());
        }
        let request = match rpc::parse_request(line) {
            Ok(request) => request,
            Err(reply) => return self.send(&*reply).await,
        };
        let id = request.id.clone();
        let result = self.dispatch(request).await;
        match id {
            Some(id) => self.send(&Response::from_result(id, result)).await,
            None => Ok(()),
        }
    }

    async fn dispatch(&mut self, request: Request) -> Result<Value, RpcError> {
        if self.reserved && !RESERVED_METHODS.contains(&request.method.as_str()) {
            return Err(busy(self.shared.options.connections_max));
        }
        match request.method.as_str() {
            "methods" => Ok(json!(self.shared.router.names())),
            "events.subscribe" => {
                let filter: EventFilter = rpc::params(request.params)?;
                // Subscribe before replying, so no event after the reply is missed.
                self.subscription = Some((self.shared.events.subscribe(), filter.clone()));
                Ok(json!({"subscribed": true, "filter": filter}))
            }
            name => {
                let Some(handler) = self.shared.router.get(name) else {
                    return Err(RpcError::method_not_found(name));
                };
                let params = request.params;
                // Its own task: a panic (even in the synchronous part of the handler) comes
                // back as a JoinError instead of unwinding through the server.
                match tokio::spawn(async move { handler(params).await }).await {
                    Ok(result) => result,
                    Err(e) if e.is_panic() => {
                        tracing::error!(method = name, "control method handler panicked");
                        Err(RpcError::internal(format!(
                            "the handler of {name:?} panicked"
                        )))
                    }
                    Err(_) => Err(RpcError::internal(format!(
                        "the handler of {name:?} was cancelled"
                    ))),
                }
            }
        }
    }

    async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), Closed> {
        let line = to_line(message).map_err(|e| Closed::Io(io::Error::other(e)))?;
        match timeout(
            self.shared.options.write_timeout,
            self.writer.write_all(&line),
        )
        .await
        {
            Ok(written) => written.map_err(Closed::Io),
            Err(_) => Err(Closed::WriteTimeout),
        }
    }
}

/// The next event matching the filter; pending forever without a subscription.
async fn next_event(subscription: &mut Option<(Subscription, EventFilter)>) -> Option<Received> {
    let Some((events, filter)) = subscription else {
        return std::future::pending().await;
    };
    loop {
        match events.recv().await {
            Some(Received::Event(event)) if !filter.matches(&event) => continue,
            other => return other,
        }
    }
}

fn to_line<T: Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bounded_reader_splits_lines_and_refuses_long_ones_without_buffering_them() {
        let input: &[u8] = b"short\nthis-line-is-too-long\nok\nlast-without-newline";
        let mut reader = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        assert_eq!(
            read_line_bounded(&mut reader, &mut line, 8).await.ok(),
            Some(LineRead::Line)
        );
        assert_eq!(line, b"short");
        line.clear();
        assert_eq!(
            read_line_bounded(&mut reader, &mut line, 8).await.ok(),
            Some(LineRead::TooLong)
        );
        assert!(line.len() <= 8, "never holds more than the limit");
        line.clear();
        // The server closes after TooLong; reading on anyway shows the reader stopped near the
        // limit and stays usable (the tail of the long line reads as a line of its own).
        let mut rest = Vec::new();
        loop {
            match read_line_bounded(&mut reader, &mut line, 64).await.ok() {
                Some(LineRead::Line) => rest.push(std::mem::take(&mut line)),
                Some(LineRead::Eof) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            rest.last().map(Vec::as_slice),
            Some(&b"last-without-newline"[..])
        );
        assert!(rest.iter().any(|l| l == b"ok"));
    }
}
