//! One control-socket connection: read a line, answer it, repeat; stream events once the
//! client has subscribed.
//!
//! Everything a client can do wrong ends in an error reply or a closed connection, never in
//! unbounded memory or a stuck server task:
//! - lines are read with a bounded reader: a line longer than the limit gets one
//!   `-32600` reply and the connection is closed, without buffering the rest;
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

/// Serve one accepted connection until it closes; the permit is held for as long.
pub(crate) async fn serve(stream: UnixStream, shared: Arc<Shared>, _permit: OwnedSemaphorePermit) {
    let (reader, writer) = stream.into_split();
    let mut conn = Connection {
        reader: BufReader::new(reader),
        writer,
        line: Vec::new(),
        subscription: None,
        shared,
    };
    match conn.run().await {
        Ok(()) => tracing::debug!("control client disconnected"),
        Err(reason) => tracing::debug!(?reason, "control connection closed"),
    }
}

/// Refuse a connection over the limit: one error line, then close.
pub(crate) async fn refuse(
    mut stream: UnixStream,
    write_timeout: Duration,
    connections_max: usize,
) {
    let reply = Response::failure(
        Value::Null,
        RpcError::busy(format!(
            "too many control connections (max {connections_max}); try again later"
        )),
    );
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
}

impl Connection {
    async fn run(&mut self) -> Result<(), Closed> {
        let idle_timeout = self.shared.options.idle_timeout;
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
                            return Err(Closed::LineTooLong);
                        }
                        LineRead::Line => {
                            let line = std::mem::take(&mut self.line);
                            self.handle_line(&line).await?;
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
                () = &mut idle, if self.subscription.is_none() => return Err(Closed::Idle),
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
