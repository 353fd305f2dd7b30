//! The client side of the control socket, used by the `drl` CLI and the orchestrator.
//!
//! [`Client::call`] sends one request and waits for its reply; an error the daemon returns
//! surfaces as [`ControlError::Rpc`] with the daemon's message. [`Client::subscribe`] turns the
//! connection into an [`EventStream`]. Replies are read with the same bounded reader as the
//! server uses, so a confused peer cannot make the client buffer without limit.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

type Reader = BufReader<Box<dyn AsyncRead + Send + Unpin>>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

use super::connection::{
    read_line_bounded, LineRead, EVENTS_LOST_NOTIFICATION, EVENT_NOTIFICATION,
};
use super::events::{Event, EventFilter, Received};
use super::rpc::{Request, Response};
use super::ControlError;
use crate::limits::CONTROL_REPLY_BYTES_MAX;

/// One connection to the daemon's control socket.
pub struct Client {
    path: PathBuf,
    reader: Reader,
    writer: Writer,
    next_id: u64,
}

impl Client {
    /// Connect, with an error that tells the admin what to check when nobody answers.
    pub async fn connect(path: &Path) -> Result<Client, ControlError> {
        let stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| ControlError::Unreachable {
                    path: path.to_path_buf(),
                    source,
                })?;
        let (reader, writer) = stream.into_split();
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(Box::new(reader)),
            writer: Box::new(writer),
            next_id: 1,
        })
    }

    /// Connect to a daemon's TCP control endpoint and authenticate with `token`
    /// (see [`super::tcp`]).
    pub async fn connect_tcp(
        addr: std::net::SocketAddr,
        token: &super::tcp::Token,
    ) -> Result<Client, ControlError> {
        let s = super::tcp::connect(addr, token).await?;
        let held = s.buffer().to_vec();
        let (reader, writer) = s.into_inner().into_split();
        let reader: Box<dyn AsyncRead + Send + Unpin> = if held.is_empty() {
            Box::new(reader)
        } else {
            Box::new(std::io::Cursor::new(held).chain(reader))
        };
        Ok(Client {
            path: PathBuf::from(format!("tcp:{addr}")),
            reader: BufReader::new(reader),
            writer: Box::new(writer),
            next_id: 1,
        })
    }

    /// Call `method` and wait for its result. `params` may be `Value::Null` (no params).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ControlError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&Request::new(id, method, params))
            .map_err(|e| ControlError::Protocol(format!("cannot encode the request: {e}")))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .map_err(|source| ControlError::Io {
                what: "sending a request to the daemon",
                source,
            })?;
        loop {
            let Some(value) = read_message(&mut self.reader, &self.path).await? else {
                return Err(ControlError::Closed {
                    path: self.path.clone(),
                });
            };
            if value.get("method").is_some() {
                continue; // a notification (events) interleaved with the reply
            }
            let reply: Response = serde_json::from_value(value)
                .map_err(|e| ControlError::Protocol(format!("malformed reply: {e}")))?;
            // A null id answers a line the daemon could not attribute (line too long,
            // connection refused as busy): it is the answer to this call.
            if reply.id != id && !reply.id.is_null() {
                return Err(ControlError::Protocol(format!(
                    "reply for id {} while waiting for {id}",
                    reply.id
                )));
            }
            return reply.into_result().map_err(|error| ControlError::Rpc {
                method: method.to_string(),
                error,
            });
        }
    }

    /// Subscribe to events (optionally of one resource) and turn the connection into a stream.
    pub async fn subscribe(mut self, filter: EventFilter) -> Result<EventStream, ControlError> {
        let params = serde_json::to_value(&filter)
            .map_err(|e| ControlError::Protocol(format!("cannot encode the filter: {e}")))?;
        self.call("events.subscribe", params).await?;
        Ok(EventStream {
            path: self.path,
            reader: self.reader,
            _writer: self.writer,
        })
    }
}

/// Events as the daemon streams them; ends when the daemon closes the connection.
pub struct EventStream {
    path: PathBuf,
    reader: Reader,
    /// Kept open: dropping it would half-close the connection.
    _writer: Writer,
}

impl EventStream {
    /// The next event or lost-events notice; `Ok(None)` when the daemon closed the stream.
    pub async fn next(&mut self) -> Result<Option<Received>, ControlError> {
        loop {
            let Some(value) = read_message(&mut self.reader, &self.path).await? else {
                return Ok(None);
            };
            match value.get("method").and_then(Value::as_str) {
                Some(EVENT_NOTIFICATION) => {
                    let params = value.get("params").cloned().unwrap_or(Value::Null);
                    let event: Event = serde_json::from_value(params)
                        .map_err(|e| ControlError::Protocol(format!("malformed event: {e}")))?;
                    return Ok(Some(Received::Event(event)));
                }
                Some(EVENTS_LOST_NOTIFICATION) => {
                    let lost = value
                        .pointer("/params/lost")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| {
                            ControlError::Protocol(format!(
                                "malformed {EVENTS_LOST_NOTIFICATION} notice: {value}"
                            ))
                        })?;
                    return Ok(Some(Received::Lost(lost)));
                }
                // Notifications a newer daemon may add are skipped; stray replies too.
                _ => continue,
            }
        }
    }
}

impl EventStream {
    /// The same events as a [`futures::Stream`]; it ends when the daemon closes the connection.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Received, ControlError>> {
        futures::stream::unfold(Some(self), |state| async move {
            let mut events = state?;
            match events.next().await {
                Ok(Some(received)) => Some((Ok(received), Some(events))),
                Ok(None) => None,
                // After an error the stream ends: the connection is in an unknown state.
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

/// One JSON message from the daemon, or `None` at EOF.
async fn read_message(reader: &mut Reader, path: &Path) -> Result<Option<Value>, ControlError> {
    let mut line = Vec::new();
    loop {
        let read = read_line_bounded(reader, &mut line, CONTROL_REPLY_BYTES_MAX)
            .await
            .map_err(|source| ControlError::Io {
                what: "reading from the daemon",
                source,
            })?;
        match read {
            LineRead::Eof => return Ok(None),
            LineRead::TooLong => {
                return Err(ControlError::Protocol(format!(
                    "the daemon at {} sent a line longer than {CONTROL_REPLY_BYTES_MAX} bytes",
                    path.display()
                )))
            }
            LineRead::Line if line.trim_ascii().is_empty() => line.clear(),
            LineRead::Line => {
                return serde_json::from_slice(&line).map(Some).map_err(|e| {
                    ControlError::Protocol(format!("the daemon sent invalid JSON: {e}"))
                })
            }
        }
    }
}
