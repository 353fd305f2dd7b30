//! The control socket server: binds the Unix socket, accepts clients up to a limit, and hands
//! each connection to [`connection`](super::connection), which dispatches requests through the
//! [`Router`].
//!
//! Binding is careful about the path: a socket a live daemon answers on is never stolen (the
//! server connects first, and refuses if someone answers); a stale socket left by a dead daemon
//! is removed; anything else at the path (a regular file) is an error. The socket is bound under
//! a temporary name, chmod-ed, then renamed into place, so it is never reachable with wider
//! permissions than asked for. On shutdown the server removes the socket if it is still its own.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::connection;
use super::events::EventBus;
use super::rpc::RpcError;
use super::ControlError;
use crate::limits::{
    CONTROL_CONNECTIONS_MAX, CONTROL_IDLE_TIMEOUT_MS, CONTROL_LINE_BYTES_MAX,
    CONTROL_RESERVED_CONNECTIONS_MAX, CONTROL_RESERVED_IDLE_MS, CONTROL_WRITE_TIMEOUT_MS,
};

/// Methods the server answers itself; a [`Router`] may not register them.
pub const BUILTIN_METHODS: [&str; 2] = ["events.subscribe", "methods"];

pub(crate) type Handler =
    Arc<dyn Fn(Value) -> BoxFuture<'static, Result<Value, RpcError>> + Send + Sync>;

/// Method name -> async handler. Every part of the daemon registers its methods here.
#[derive(Clone, Default)]
pub struct Router {
    methods: HashMap<&'static str, Handler>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `name`. Handlers run on their own task: a panic becomes a `-32603` reply, and
    /// the server keeps serving.
    ///
    /// # Panics
    /// If `name` is already registered or is a built-in method: two handlers for one name is a
    /// programming error to catch at start-up, not something a client can cause.
    pub fn method<F, Fut>(&mut self, name: &'static str, f: F) -> &mut Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, RpcError>> + Send + 'static,
    {
        assert!(
            !BUILTIN_METHODS.contains(&name),
            "control method {name:?} is built in"
        );
        let handler: Handler = Arc::new(move |params| Box::pin(f(params)));
        let previous = self.methods.insert(name, handler);
        assert!(
            previous.is_none(),
            "control method {name:?} registered twice"
        );
        self
    }

    /// Every method a client may call, built-ins included, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .methods
            .keys()
            .copied()
            .chain(BUILTIN_METHODS)
            .collect();
        names.sort_unstable();
        names
    }

    pub(crate) fn get(&self, name: &str) -> Option<Handler> {
        self.methods.get(name).cloned()
    }
}

/// Limits of one server. [`Default`] takes them from [`crate::limits`]; tests shorten the
/// timeouts.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub line_bytes_max: usize,
    pub connections_max: usize,
    /// A client that completes no request line for this long is disconnected (event
    /// subscribers are exempt: they are waiting for the server, not idle).
    pub idle_timeout: Duration,
    /// A reply or event that cannot be written within this time closes the connection.
    pub write_timeout: Duration,
    /// Connections served beyond `connections_max`, for one read-only call each (the admin's
    /// `status` always gets through), and how long such a client may take to send it.
    pub reserved_max: usize,
    pub reserved_idle_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            line_bytes_max: CONTROL_LINE_BYTES_MAX,
            connections_max: CONTROL_CONNECTIONS_MAX,
            idle_timeout: Duration::from_millis(CONTROL_IDLE_TIMEOUT_MS),
            write_timeout: Duration::from_millis(CONTROL_WRITE_TIMEOUT_MS),
            reserved_max: CONTROL_RESERVED_CONNECTIONS_MAX,
            reserved_idle_timeout: Duration::from_millis(CONTROL_RESERVED_IDLE_MS),
        }
    }
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) events: EventBus,
    pub(crate) options: ServerOptions,
}

/// A bound control socket, ready to [`run`](ControlServer::run).
pub struct ControlServer {
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
    /// (device, inode) of the socket file we created, to remove only our own on shutdown.
    identity: (u64, u64),
    shared: Arc<Shared>,
}

impl ControlServer {
    /// Bind `path` with permissions `mode` (0600 is the default drl uses) and default limits.
    pub fn bind(
        path: &Path,
        mode: u32,
        router: Router,
        events: EventBus,
    ) -> Result<Self, ControlError> {
        Self::bind_with(path, mode, router, events, ServerOptions::default())
    }

    /// [`bind`](Self::bind) with explicit limits.
    pub fn bind_with(
        path: &Path,
        mode: u32,
        router: Router,
        events: EventBus,
        options: ServerOptions,
    ) -> Result<Self, ControlError> {
        let path = path.to_path_buf();
        clear_stale_socket(&path)?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|source| ControlError::CreateDir {
            path: parent.clone(),
            source,
        })?;
        // Short, so a path near the 108-byte sun_path limit still fits while binding.
        static BINDS: AtomicU64 = AtomicU64::new(0);
        let serial = BINDS.fetch_add(1, Ordering::Relaxed);
        let temp = parent.join(format!(".b{}.{serial}", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        let bind_err = |source| ControlError::Bind {
            path: path.clone(),
            source,
        };
        let listener = std::os::unix::net::UnixListener::bind(&temp).map_err(bind_err)?;
        let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
            .and_then(|()| std::fs::rename(&temp, &path))
            .and_then(|()| listener.set_nonblocking(true))
            .and_then(|()| std::fs::metadata(&path));
        let meta = match placed {
            Ok(meta) => meta,
            Err(source) => {
                let _ = std::fs::remove_file(&temp);
                return Err(bind_err(source));
            }
        };
        tracing::info!(path = %path.display(), mode = format_args!("{mode:o}"), "control socket listening");
        Ok(ControlServer {
            path,
            listener,
            identity: (meta.dev(), meta.ino()),
            shared: Arc::new(Shared {
                router,
                events,
                options,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve until `shutdown` becomes true (or its sender is dropped). Open connections are
    /// closed, then the socket file is removed.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), ControlError> {
        let ControlServer {
            path,
            listener,
            identity,
            shared,
        } = self;
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(|source| ControlError::Bind {
                path: path.clone(),
                source,
            })?;
        let connections_max = shared.options.connections_max;
        let permits = Arc::new(Semaphore::new(connections_max));
        let reserved = Arc::new(Semaphore::new(shared.options.reserved_max));
        let mut tasks = JoinSet::new();
        let mut refused_log = RateLimitedLog::new(Duration::from_secs(1));
        let mut accept_log = RateLimitedLog::new(Duration::from_secs(1));
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = joined {
                        tracing::error!(error = %e, "control connection task failed");
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            tasks.spawn(connection::serve(stream, shared.clone(), permit));
                        }
                        Err(_) => if let Ok(permit) = reserved.clone().try_acquire_owned() {
                            tasks.spawn(connection::serve_reserved(stream, shared.clone(), permit));
                        } else {
                            if let Some(suppressed) = refused_log.ready() {
                                tracing::warn!(connections_max, suppressed, "control socket full, connection refused");
                            }
                            tasks.spawn(connection::refuse(stream, shared.options.write_timeout, connections_max));
                        }
                    },
                    Err(e) => {
                        if let Some(suppressed) = accept_log.ready() {
                            tracing::warn!(error = %e, suppressed, "control socket accept failed");
                        }
                        // EMFILE and friends: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        tasks.shutdown().await;
        remove_if_ours(&path, identity);
        tracing::info!(path = %path.display(), "control socket closed");
        Ok(())
    }
}

/// Refuse a path a live daemon answers on; remove a dead daemon's socket; refuse non-sockets.
fn clear_stale_socket(path: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ControlError::AlreadyListening {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale control socket");
            std::fs::remove_file(path).map_err(|source| ControlError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(ControlError::Bind {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn remove_if_ours(path: &Path, identity: (u64, u64)) {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if (meta.dev(), meta.ino()) == identity {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// At most one log line per interval; reports how many were suppressed in between.
struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(interval: Duration) -> Self {
        RateLimitedLog {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed_count)` when a line may be logged now.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}
