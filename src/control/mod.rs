//! The control socket: a Unix socket (mode 0600 by default) speaking newline-delimited
//! JSON-RPC 2.0, and the event bus behind `drl events`.
//!
//! - [`rpc`]: the message types, validation and error codes (standard and drl's own).
//! - [`server`]: [`ControlServer`] binds the socket safely and accepts up to a limit of
//!   clients; a [`Router`] maps method names to async handlers registered by every part of the
//!   daemon.
//! - `connection`: one client: bounded line reads, write and idle deadlines, handler panics
//!   turned into errors, and event streaming after `events.subscribe`.
//! - [`events`]: [`EventBus`], the broadcast of state changes (`change`/`create`/`destroy`/
//!   `progress` of a `resource`/`connection`/`peer-device`/`device`/`job`).
//! - [`client`]: what the CLI uses: [`Client::call`] and [`Client::subscribe`].
//!
//! Built-in methods: `methods` (the sorted list of callable methods) and `events.subscribe`
//! (params: optional `{"resource": NAME}`; replies `{"subscribed": true, ...}`, then sends
//! `{"jsonrpc":"2.0","method":"event","params":EVENT}` notifications until the connection
//! closes, and `{"method":"events.lost","params":{"lost":N}}` when the subscriber fell behind).
//! Batch requests are refused with `-32600`.
//!
//! The socket is a trust boundary: whoever can open it controls the daemon (hence 0600), but a
//! buggy or hostile client can only get errors or be disconnected; it cannot stall the daemon
//! or grow its memory past the limits in [`crate::limits`].

use std::io;
use std::path::PathBuf;

pub mod client;
pub(crate) mod connection;
pub mod events;
pub mod rpc;
pub mod server;
pub mod tcp;

pub use client::{Client, EventStream};
pub use connection::{EVENTS_LOST_NOTIFICATION, EVENT_NOTIFICATION};
pub use events::{Event, EventBus, EventFilter, EventKind, ObjectKind, Received, Subscription};
pub use rpc::{code, RpcError};
pub use server::{ControlServer, Router, ServerOptions, BUILTIN_METHODS};

/// Errors of the control socket, server and client side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the drl daemon at {}: {source} — is `drl daemon` running?", path.display())]
    Unreachable { path: PathBuf, source: io::Error },
    #[error("another daemon is listening on {}", path.display())]
    AlreadyListening { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot create the control socket directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot bind the control socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("control socket: {what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("the drl daemon at {} closed the connection", path.display())]
    Closed { path: PathBuf },
    #[error("control protocol: {0}")]
    Protocol(String),
    #[error("{method}: {error}")]
    Rpc {
        method: String,
        error: rpc::RpcError,
    },
}

impl ControlError {
    /// The JSON-RPC error the daemon answered with, if that is what this is.
    pub fn rpc_error(&self) -> Option<&rpc::RpcError> {
        match self {
            ControlError::Rpc { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The message for an admin: the daemon's own words for a refusal (without the method,
    /// which the admin just typed, and without the JSON-RPC code, which `--json` and the exit
    /// status keep), the full text for anything else.
    pub fn admin_message(&self) -> String {
        match self {
            ControlError::Rpc { error, .. } => error.message.clone(),
            other => other.to_string(),
        }
    }
}
