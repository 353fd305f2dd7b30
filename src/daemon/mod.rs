//! The daemon: wires the config, the resources, their NBD exports and the control socket
//! together, and owns the process lifecycle.
//!
//! Start: load and validate the config (refuse with file/key/reason), open every resource (disk
//! through io_uring, metadata checked — a corrupt metadata file stops the start, it is never
//! reinitialised), bind the NBD exports and the control socket, then serve.
//!
//! Stop (SIGTERM/SIGINT): a `watch` channel flips to `true`; the NBD servers stop accepting and
//! let in-flight requests finish and reply; then every resource flushes its disk, marks its
//! metadata clean and stops its engine. The whole drain is bounded by
//! `limits::SHUTDOWN_DRAIN_TIMEOUT_MS`; the process exits 0 when the drain completed.

mod adjust;
mod autofail;
mod autopromote;
mod device;
mod jobs;
pub(crate) mod logging;
mod metrics;
mod metrics_detect;
mod null;
mod progress;
mod resize;
mod resource;
mod rpc;
mod rpc_detect;
mod rpc_dr;
mod rpc_shaping;
mod rpc_stream;
mod rpo;
mod schedule;
pub mod sd_notify;
pub mod shards;
mod updown;

pub use null::{serve_null, NullServeError};
pub use resource::{claim_targets, create_meta, plan_volumes, Claimed, Resource};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{self, NodeConfig};
use crate::control::{ControlServer, EventBus};
use crate::limits;

/// Everything the control methods can see.
pub struct Node {
    /// The config the daemon was started with (its file is what `adjust` re-reads).
    pub config: NodeConfig,
    /// The resources up now: `drl up`, `down` and `adjust` change the list at run time.
    resources: std::sync::RwLock<Vec<Arc<Resource>>>,
    pub events: EventBus,
    pub jobs: Arc<jobs::Jobs>,
    pub started: std::time::Instant,
    /// The daemon's WAN shaping: its shaper and resync controller.
    pub shaping: crate::shaping::NodeShaping,
    /// Site-failure detection and leases (`[detect]`), if configured.
    pub detect: Option<Arc<crate::detect::Detect>>,
    /// What a resource brought up at run time needs: the NBD payload budget every export
    /// shares, and the daemon's shutdown.
    nbd_budget: crate::frontend::nbd::PayloadBudget,
    shutdown: watch::Receiver<bool>,
    /// One `up`, `down`, `resize` or `adjust` at a time.
    lifecycle: tokio::sync::Mutex<()>,
    /// The data path's threads; each resource has a home among them (`shards.rs`).
    shards: Arc<shards::Shards>,
}

impl Node {
    pub fn resource(&self, name: &str) -> Option<Arc<Resource>> {
        self.resources().into_iter().find(|r| r.name() == name)
    }

    /// The resources up now, in config order.
    pub fn resources(&self) -> Vec<Arc<Resource>> {
        self.resources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The daemon's own arguments (`drl daemon ...`); the command line only parses them.
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Log format: text or json lines on stderr, or journal (the systemd journal, with
    /// structured fields). auto: the journal when systemd connected stderr to it
    /// ($JOURNAL_STREAM names stderr), text otherwise.
    #[arg(long, value_parser = ["auto", "text", "json", "journal"], default_value = "auto")]
    pub log_format: String,
}

/// How [`main`] ended; the command line turns it into the process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Drained and stopped cleanly.
    Ok,
    /// Refused to start: a missing or bad config.
    Usage,
    /// Failed while starting or running.
    Failed,
}

/// Run the daemon for `node` from `config_file` until SIGTERM / SIGINT.
pub fn main(config_file: Option<std::path::PathBuf>, node: &str, a: &DaemonArgs) -> Exit {
    logging::init(&a.log_format);
    let Some(file) = config_file else {
        eprintln!("drl daemon: --config FILE is required");
        return Exit::Usage;
    };
    let cfg = match config::load(&file, node) {
        Ok(c) => c,
        Err(e) => {
            error!("refusing to start: {e}");
            eprintln!("drl daemon: refusing to start: {e}");
            return Exit::Usage;
        }
    };
    let workers = cfg.worker_threads;
    match block_on_with_shards(workers, |shards| run(cfg, shards)) {
        Err(e) => {
            eprintln!("drl daemon: cannot start the async runtime: {e}");
            Exit::Failed
        }
        Ok(Ok(())) => Exit::Ok,
        Ok(Err(e)) => {
            error!("{e}");
            eprintln!("drl daemon: {e}");
            Exit::Failed
        }
    }
}

/// The data path's threads (`shards.rs`): `workers` (`[[node]] worker-threads`), else one per
/// CPU (or `TOKIO_WORKER_THREADS`, as for the control runtime).
pub(crate) fn shard_count(workers: Option<usize>) -> usize {
    workers
        .or_else(|| std::env::var("TOKIO_WORKER_THREADS").ok()?.parse().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1)
}

/// Run `main` on the control runtime ([`runtime`]) beside the shards ([`shard_count`]), then
/// stop the shards before the control runtime: whatever `main` left running (a drain that
/// timed out), no export or replication session runs on while the control runtime waits for
/// its blocking tasks. The daemon's and `drl serve-null`'s threads.
pub(crate) fn block_on_with_shards<F, Fut>(
    workers: Option<usize>,
    main: F,
) -> std::io::Result<Fut::Output>
where
    F: FnOnce(Arc<shards::Shards>) -> Fut,
    Fut: std::future::Future,
{
    let rt = runtime(workers)?;
    let shards = Arc::new(shards::Shards::start(shard_count(workers))?);
    let out = rt.block_on(main(shards.clone()));
    shards.signal_stop();
    drop(rt);
    shards.join();
    Ok(out)
}

/// The daemon's control runtime (also `drl serve-null`'s): multi-thread, `workers` worker
/// threads (`[[node]] worker-threads`); None: tokio's default, one per CPU or
/// `TOKIO_WORKER_THREADS`. The data path runs on the shards beside it (`shards.rs`).
pub(crate) fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.enable_all().thread_name("drl-worker").build()
}

/// Open resource `rc` on the next shard, its home from now on (`shards.rs`): its disks'
/// completions are reaped there and its tasks run there.
async fn open_on_shard(
    shards: &shards::Shards,
    rc: &config::ResourceConfig,
    node: &str,
    events: &EventBus,
    claimed: Claimed,
    shaping: &crate::shaping::NodeShaping,
) -> Result<Arc<Resource>, resource::ResourceError> {
    let mut place = shards.from(shards.pick());
    let home = place.remove(0);
    let (rc, node, events, shaping) =
        (rc.clone(), node.to_owned(), events.clone(), shaping.clone());
    let open = async move { Resource::open(&rc, &node, events, claimed, &shaping, place).await };
    shards::run_on(&home, open).await.map(Arc::new)
}

/// Errors that stop the daemon from starting or make it exit.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("resource {name}: {source}")]
    Resource {
        name: String,
        #[source]
        source: resource::ResourceError,
    },
    #[error("control socket: {0}")]
    Control(#[from] crate::control::ControlError),
    #[error("{0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::repl::tls::TlsError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("{0}")]
    Detect(#[from] crate::detect::DetectError),
    #[error("control over TCP: {0}")]
    ControlTcp(String),
}

/// Run the node until SIGTERM/SIGINT.
pub(crate) async fn run(cfg: NodeConfig, shards: Arc<shards::Shards>) -> Result<(), DaemonError> {
    // Signals first: a SIGTERM during the start (or a SIGHUP at any time) must never meet
    // the default action, which kills the process without a word or a drain.
    let mut signals = Signals::install().map_err(DaemonError::Signal)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let events = EventBus::new();
    let mut resources = Vec::new();
    // This daemon's WAN shaping: one shaper and one resync controller, passed to every part.
    let shaping = crate::shaping::NodeShaping::new(cfg.shaping.clone(), cfg.resync.clone());
    // Every resource's files are locked and checked before any is created or grown, so a
    // refused start changes nothing.
    let mut claims = Vec::new();
    crate::repl::tls::init(cfg.tls.as_ref(), &cfg.node)?;
    for rc in &cfg.resources {
        claims.push(
            resource::Claimed::take(rc).map_err(|source| DaemonError::Resource {
                name: rc.name.clone(),
                source,
            })?,
        );
    }
    for (rc, claimed) in cfg.resources.iter().zip(claims) {
        let r = open_on_shard(&shards, rc, &cfg.node, &events, claimed, &shaping)
            .await
            .map_err(|source| DaemonError::Resource {
                name: rc.name.clone(),
                source,
            })?;
        resources.push(r);
    }
    let jobs = jobs::Jobs::new(events.clone());
    let mut tasks = tokio::task::JoinSet::new();
    // Before the exports start: the fences must stand in front of the first write.
    let detect = match &cfg.detect {
        Some(dc) => Some(
            crate::detect::Detect::start(dc, events.clone(), &mut tasks, shutdown_rx.clone())
                .await?,
        ),
        None => None,
    };
    if let Some(d) = &detect {
        for r in &resources {
            r.protect(d);
        }
    }
    let node = Arc::new(Node {
        config: cfg.clone(),
        resources: std::sync::RwLock::new(resources),
        events: events.clone(),
        jobs,
        started: std::time::Instant::now(),
        detect,
        shaping,
        nbd_budget: crate::frontend::nbd::PayloadBudget::default(),
        shutdown: shutdown_rx.clone(),
        lifecycle: tokio::sync::Mutex::new(()),
        shards: shards.clone(),
    });

    for r in node.resources() {
        r.start(shutdown_rx.clone(), &node.nbd_budget)
            .await
            .map_err(|source| DaemonError::Resource {
                name: r.name().to_owned(),
                source,
            })?;
    }
    let control = ControlServer::bind(
        &cfg.control_socket,
        cfg.control_socket_mode,
        rpc::router(node.clone()),
        events,
    )?;
    tasks.spawn({
        let rx = shutdown_rx.clone();
        async move {
            if let Err(e) = control.run(rx).await {
                error!("control socket stopped: {e}");
            }
        }
    });
    schedule::spawn(&node, &mut tasks, shutdown_rx.clone());
    rpo::spawn(&node, &mut tasks, shutdown_rx.clone());
    autofail::spawn(&node, &mut tasks, shutdown_rx.clone());
    if let Some((addr, token_file)) = &cfg.control_tcp {
        let token =
            crate::control::tcp::Token::from_file(token_file).map_err(DaemonError::ControlTcp)?;
        let (addr, unix, rx) = (*addr, cfg.control_socket.clone(), shutdown_rx.clone());
        tasks.spawn(async move {
            if let Err(e) = crate::control::tcp::serve(addr, token, unix, rx).await {
                error!("control endpoint on TCP stopped: {e}");
            }
        });
    }
    if let Some(addr) = cfg.metrics_listen {
        let n = node.clone();
        let render = move || {
            let n = n.clone();
            async move { crate::metrics::render(metrics::gather(&n).await) }
        };
        let serve = crate::metrics::serve(addr, render, shutdown_rx.clone()).await?;
        tasks.spawn(serve);
    }
    let count = node.resources().len();
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    info!(node = %cfg.node, resources = count, socket = %cfg.control_socket.display(),
        worker_threads = workers, shards = shards.count(), "drl daemon ready");
    sd_notify::ready(&format!("{count} resources"));
    if let Some(every) = sd_notify::watchdog_interval() {
        tasks.spawn(sd_notify::watchdog_loop(every, shutdown_rx.clone()));
    }

    signals.wait_for_stop(&node).await;
    info!("shutting down: draining in-flight I/O");
    sd_notify::stopping();
    let _ = shutdown_tx.send(true);
    node.jobs.abort_all();
    let drain = async {
        while tasks.join_next().await.is_some() {}
        // Taken under the lifecycle lock: an `up` or `down` running now finishes first.
        let _one = node.lifecycle.lock().await;
        for r in node.resources() {
            r.stop_tasks().await;
            if let Err(e) = r.close().await {
                error!(resource = r.name(), "shutdown: {e}");
            }
        }
    };
    match tokio::time::timeout(
        Duration::from_millis(limits::SHUTDOWN_DRAIN_TIMEOUT_MS),
        drain,
    )
    .await
    {
        Ok(()) => {
            let _ = std::fs::remove_file(&cfg.control_socket);
            info!("stopped cleanly");
            Ok(())
        }
        Err(_) => {
            warn!(
                "drain did not finish within {} ms; exiting with metadata marked unclean",
                limits::SHUTDOWN_DRAIN_TIMEOUT_MS
            );
            Ok(())
        }
    }
}

/// The signals the daemon handles: SIGTERM and SIGINT stop it (drain, flush, exit 0);
/// SIGHUP re-reads the config and applies what it can (`drl adjust`; it used to kill the
/// daemon silently).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Until SIGTERM or SIGINT; a SIGHUP adjusts meanwhile.
    async fn wait_for_stop(&mut self, node: &Node) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return info!("SIGTERM received"),
                _ = self.int.recv() => return info!("SIGINT received"),
                _ = self.hup.recv() => {
                    info!(config = %node.config.file.display(), "SIGHUP received: adjusting to the config file");
                    sd_notify::reloading();
                    let result = adjust::adjust(node, None).await;
                    sd_notify::ready("adjusted");
                    match result {
                        Ok(r) => {
                            for a in &r.applied {
                                info!("adjust: {a}");
                            }
                            for p in &r.pending {
                                warn!("adjust: {p}");
                            }
                            for p in &r.refused {
                                error!("adjust: {p}");
                            }
                            if r.applied.is_empty() && r.pending.is_empty() && r.refused.is_empty() {
                                info!("adjust: nothing changed");
                            }
                        }
                        Err(e) => error!("adjust refused, running on the config it has: {e}"),
                    }
                }
            }
        }
    }
}
