//! The `drl` command line: `drl daemon` runs the node; every other command is a thin client of
//! the daemon's control socket (newline-delimited JSON-RPC 2.0, see `control`).
//!
//! Socket resolution, first match wins: `--socket PATH`, `$DRL_SOCKET`, the control socket that
//! `--config FILE [--node NAME]` names, then the default `/run/drl/drl.sock`.

mod admin;
mod detect;
pub mod dr;
mod events2;
mod gen;
mod serve_null;
mod shaping;
mod snapshot;
mod status;
mod stream;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use crate::config;
pub use crate::table::align_columns;

const ABOUT: &str = "drl — the data path of a Disaster Recovery Layer.

One daemon runs on every storage node. It serves each volume over NBD from an io_uring engine,
mirrors writes asynchronously (DRBD protocol A) to the peer node in the backup site, shapes its
WAN traffic and streams snapshots to Swift. The admin commands below talk to the daemon's control
socket.";

const AFTER: &str = "ENVIRONMENT:
    DRL_SOCKET    control socket of the daemon to talk to (overridden by --socket)
    DRL_CONFIG    config file (overridden by --config)
    DRL_LOG       log filter for the daemon, tracing syntax (default: info)

EXIT STATUS:
    0 success; 1 the daemon refused or failed the request; 2 usage or configuration error;
    3 the daemon cannot be reached.

EXAMPLES:
    drl daemon --config /etc/drl/drl.toml --node site-a
    drl status
    drl status r0 --json
    drl primary r0 --force
    drl connect r0 --discard-my-data";

#[derive(Parser, Debug)]
#[command(name = "drl", version, about = ABOUT, long_about = ABOUT, after_long_help = AFTER)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Control socket of the daemon (default: from --config, else /run/drl/drl.sock).
    #[arg(long, global = true, env = "DRL_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Config file, used to find the control socket (and by `daemon`); default
    /// /etc/drl/drl.toml when it exists.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "DRL_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// This node's name in the config (default: the host name).
    #[arg(long, global = true, value_name = "NAME")]
    pub node: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon for this node: serve its resources and answer the control socket.
    ///
    /// Loads the config (refusing it with the file, key and reason if it is bad), opens or
    /// creates each resource's disk and metadata, starts the NBD exports and the control socket.
    /// SIGTERM or SIGINT drains in-flight I/O, flushes, persists metadata and exits 0. SIGHUP
    /// re-reads the config file and applies what changed, as `drl adjust` does (the result is
    /// logged, one line per change).
    Daemon(crate::daemon::DaemonArgs),
    /// Show the state of the resources (DRBD-style names: role, disk, connection, replication).
    Status(StatusArgs),
    /// Stream state changes as they happen, one line each, until interrupted.
    ///
    /// Once the daemon has confirmed the subscription, `drl events: subscribed` goes to stderr:
    /// every change after that line is printed (a script can wait for it before it acts).
    Events(EventsArgs),
    /// The state and its changes as `drbdsetup events2` prints them, for tools written for
    /// DRBD.
    ///
    /// First an `exists` line per object (resource, connection, device, peer-device) and
    /// `exists -`, then `change` lines with DRBD's keys (`role:`, `disk:`, `conn-name:`,
    /// `connection:`, `replication:`, `peer-disk:`, `done:` during a resync), `destroy` lines
    /// when a resource goes down. Exits 3 with a message when the daemon goes away.
    Events2(events2::Events2Args),
    /// Point-in-time snapshots of a resource (copy-on-write, crash-consistent).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Promote a resource to Primary (its users may write; the peer receives the writes).
    ///
    /// Refused while the peer is Primary. `--force` promotes data that is not UpToDate (the
    /// first promotion of a new pair, which starts the initial full sync) or a node whose peer
    /// is unreachable (failover; starts a new data generation). With `[detect]` the node first
    /// takes the resource's lease in etcd: refused while another node holds it or while no
    /// majority of etcd members answers.
    ///
    /// With `auto-promote` (the default) an admin rarely needs this: a Secondary promotes
    /// itself at an NBD client's first write when its peer is connected and Secondary (or it
    /// holds the lease), and demotes when the last writer leaves. A node promoted with this
    /// command stays Primary until `drl secondary`.
    Primary(PrimaryArgs),
    /// Demote a resource to Secondary (read-only; receives the peer's writes).
    Secondary(ResArgs),
    /// Connect a resource to its peer again (after `disconnect` or a split brain).
    ///
    /// `--discard-my-data` (on a Secondary): this node's changes since the nodes parted are
    /// overwritten by the peer's data: the admin's resolution of a split brain.
    Connect(ConnectArgs),
    /// Disconnect a resource from its peer and stay StandAlone until `connect`.
    Disconnect(ResArgs),
    /// Discard this node's data of a resource: a full resync from the peer follows (DRBD's
    /// `invalidate`).
    ///
    /// This disk becomes Inconsistent and SyncTarget of every block. Refused on a Primary and
    /// unless the peer is connected, Established and UpToDate. `drl wait-sync RES` follows it.
    Invalidate(ResArgs),
    /// Discard the peer's data of a resource: a full resync from this node follows (DRBD's
    /// `invalidate-remote`).
    ///
    /// This node becomes SyncSource of every block. Needs this disk UpToDate, the peer
    /// connected, Established and Secondary.
    InvalidateRemote(ResArgs),
    /// Hold this node's part of the resync of a resource (DRBD's `pause-sync`).
    ///
    /// A SyncSource answers no more requests, a SyncTarget asks for no more ranges; status
    /// shows PausedSyncS / PausedSyncT. The flag stays until `resume-sync`, also across a new
    /// resync.
    PauseSync(ResArgs),
    /// Clear this node's resync pause flag (DRBD's `resume-sync`).
    ResumeSync(ResArgs),
    /// Mark this node's data Outdated, so it is not promoted without `--force` (DRBD's
    /// `outdate`, used for fencing).
    ///
    /// Refused on a Primary and while connected.
    Outdate(ResArgs),
    /// Online verify: compare this node's data with the peer's, block by block, while the
    /// volume stays in use (DRBD's `verify`). Only digests cross the link.
    ///
    /// This node becomes VerifyS, the peer VerifyT; `status` shows the progress. Blocks that
    /// differ are marked out of sync on the Primary (nothing is marked with no Primary) and
    /// resynced from it by `drl disconnect RES` then `drl connect RES`, as in DRBD. Verify itself
    /// changes no data. Needs replication Established (no resync running).
    ///
    /// Follows the run with a progress bar and prints the result (`--json`: the report as
    /// JSON); exits 0 when the run completed, whatever it found.
    Verify(VerifyArgs),
    /// Stream a snapshot to Swift (or the local vault) as chunks plus a manifest; incremental
    /// against an older snapshot already there. Resumes an interrupted stream.
    Stream(stream::StreamArgs),
    /// Rebuild a volume from a streamed snapshot chain (full plus incrementals), verified.
    Restore(stream::RestoreArgs),
    /// VM images to and from Swift as Static Large Objects.
    #[command(subcommand)]
    Image(stream::ImageCmd),
    /// The daemon's long-running jobs (streams, restores).
    #[command(subcommand)]
    Job(stream::JobCmd),
    /// The WAN shaper: per-class shares, ceilings and counters; tc rules for the host.
    #[command(subcommand)]
    Shaping(shaping::ShapingCmd),
    /// Site-failure detection ([detect]): sites, indicators, leases in etcd, fencing.
    #[command(subcommand)]
    Detect(detect::DetectCmd),
    /// Check a config file and print what this node would run.
    ///
    /// Also checks each resource's files as a start would (directories exist, metadata
    /// matches, block devices large enough) and lists the files a start would create or grow.
    CheckConfig,
    /// Re-read the daemon's config file and apply what changed (DRBD's `adjust`; SIGHUP does
    /// the same).
    ///
    /// Applied live: `[shaping]`, `[shaping.resync]`, the TLS certificates (read again for new
    /// connections), a resource new in the file (brought up, as `drl up`), a resource gone
    /// from it (taken down, as `drl down`; refused while in use, and it stays up), a resource
    /// taken down by the admin that is still in the file (up again), and a changed peer
    /// `address` (the resource reconnects there; a Primary stays Primary), a grown `size`
    /// (the volume grows online, as `drl resize`; a smaller one is refused: shrinking needs
    /// `drl resize --allow-shrink`). Listed as pending
    /// (they apply when the resource is next brought up): a running resource's disk, meta,
    /// nbd, own address, peer node, secret or replication options. A config that does not
    /// load is refused with its error; the daemon keeps running on the one it has.
    ///
    /// Prints one line per change: `applied:`, `pending:` or `refused:`. Exit 0 when nothing
    /// was refused, 1 otherwise.
    Adjust(AdjustArgs),
    /// Change a running volume's size to the `size` its config file now says (DRBD's
    /// `resize`), while it is in use.
    ///
    /// Edit `size` in the config file first. Growing: writes pause for a moment (in-flight
    /// ones finish, new ones wait), the backing file is extended sparse, the metadata's bitmap
    /// area and superblock follow, and the new area, zero, needs no sync. A Primary stays
    /// Primary and NBD clients keep their connections; a client sees the new size when it
    /// next connects (NBD advertises the size per connection). `drl status --verbose` (and
    /// `--json`) shows the size.
    ///
    /// A replicated volume grows DRBD's way: its size is the smaller of the two nodes'
    /// `size`, so raise `size` and run `drl resize` (or `drl adjust`) on both nodes. On the
    /// first, the change waits for the peer (said so, and in `drl status`); on the second,
    /// both grow together, connected, and the new area needs no resync. A replicated volume
    /// never shrinks.
    ///
    /// Shrinking is refused unless --allow-shrink is given, and even then only when the tail
    /// is unused: the backing file must hold no data past the new end (SEEK_DATA finds
    /// only holes there). A tail with data, a block device, or a file system that cannot
    /// tell is refused, and nothing changes. Data is never cut silently.
    ///
    /// Refused, with the reason: a resource with snapshots (delete them first).
    ///
    /// Exit 0 when the size is the config's (changed, already so, or waiting for the peer),
    /// 1 when refused.
    Resize(ResizeArgs),
    /// Bring a resource up without restarting the daemon (DRBD's `up`).
    ///
    /// Reads the resource's section from the daemon's config file as it is now, claims and
    /// checks its files as a start does (a refusal changes nothing), opens it (a replicated
    /// resource comes up Secondary and connects to its peer) and starts its NBD export. A
    /// resource already up is left as it is.
    Up(ResArgs),
    /// Take a resource down without stopping the daemon (DRBD's `down`).
    ///
    /// Refused while it is in use, naming the users: NBD clients holding the export open, or
    /// the daemon's jobs (streams, restores) on it. A Primary with no user is demoted first
    /// (with `[detect]` its lease is given back); the peer is told, the export stops, the disk
    /// is flushed, the metadata marked clean and the files' locks released. `drl up` brings it
    /// back.
    Down(ResArgs),
    /// Create a resource's metadata (DRBD's `create-md`), before its first start.
    ///
    /// Works from the config without the daemon. Refused when the metadata exists (drl never
    /// reinitialises metadata) or while a daemon holds the resource. Without it, the first
    /// start creates the metadata and says so loudly in the log.
    CreateMd(ResArgs),
    /// Print the drl configuration equivalent to a DRBD resource file.
    ///
    /// Maps the `on HOST` sections (node names, address, disk, external meta-disk), protocol A,
    /// shared-secret, on-congestion, max-buffers, after-sb-0pri / -1pri, resync-rate, the resync controller
    /// (c-plan-ahead, c-fill-target, c-min-rate, c-max-rate) and size. Everything else is
    /// listed on stderr with the reason (and as comments in the TOML); nothing is dropped.
    ImportDrbd(admin::ImportDrbdArgs),
    /// Wait until a resource is connected to its peer (DRBD's `wait-connect`).
    ///
    /// Follows the daemon's events (no polling). Fails at once when the resource is StandAlone
    /// (disconnected by the admin, or a split brain: the reason is printed) or not replicated.
    /// Exit 0 when Connected; 1 on timeout or refusal; 3 when the daemon goes away.
    WaitConnect(WaitArgs),
    /// Wait until a resource's resync is done: Connected, Established, both disks UpToDate
    /// (DRBD's `wait-sync`).
    ///
    /// Follows the daemon's events (no polling) and shows the resync progress on a terminal.
    /// Exit codes as for `wait-connect`.
    WaitSync(WaitArgs),
    /// Disaster recovery: protection plans, recover a plan at this site, fail back.
    #[command(subcommand)]
    Dr(dr::DrCmd),
    /// Generate man pages and shell completions (for packagers).
    #[command(subcommand)]
    Gen(gen::GenCmd),
    /// Print the completion script of SHELL on standard output (the same as `drl gen
    /// completions SHELL`).
    ///
    /// bash: save as /usr/share/bash-completion/completions/drl; zsh: as _drl in a directory
    /// of $fpath; fish: as ~/.config/fish/completions/drl.fish.
    Completions(gen::CompletionArgs),
    /// Serve a null volume over NBD, for benchmarks only: writes are discarded, reads return
    /// zeroes.
    ///
    /// drl's own NBD server over a volume that keeps nothing, with no config, disk or
    /// metadata: it measures the transport (socket, request parsing, replies, task wakeups)
    /// without the disk, the ceiling the real write path is judged against
    /// (`scripts/bench-nbd.sh` runs it beside qemu-storage-daemon's `null-co` driver). Never
    /// use it for data: everything written is lost. Runs until SIGTERM or SIGINT.
    ///
    /// Example: drl serve-null --nbd /tmp/null.nbd --size 1GiB
    ServeNull(serve_null::ServeNullArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this resource.
    pub resource: Option<String>,
    /// Machine-readable JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Details below the table: NBD endpoint and clients, peer, send queue, generation ids.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The resource (its name in the config).
    pub resource: String,
    /// Start the run and return at once (`status` follows it).
    #[arg(long)]
    pub no_wait: bool,
    /// Read at most this much per second on each node ("100MiB/s", "400Mbit"); each range
    /// briefly holds the Primary's writes, so a slower run disturbs the application less.
    #[arg(long, value_name = "RATE", default_value = "100MiB/s")]
    pub rate: String,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PrimaryArgs {
    /// The resource (its name in the config).
    pub resource: String,
    /// Promote even if the local data is not UpToDate or the peer is unreachable.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ResArgs {
    /// The resource (its name in the config).
    pub resource: String,
}

#[derive(Args, Debug)]
pub struct ResizeArgs {
    /// The resource (its name in the config); RES/N names volume N of a consistency group
    /// (DRBD's res/vol; refused for now: a group does not resize yet).
    pub resource: String,
    /// Allow a smaller size: the tail past the new end is cut, but only if it holds no data.
    #[arg(long)]
    pub allow_shrink: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AdjustArgs {
    /// Only this resource (default: all, and the node-wide settings).
    pub resource: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// The resource (its name in the config).
    pub resource: String,
    /// Give up after this many seconds (0: wait for ever).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// The resource (its name in the config).
    pub resource: String,
    /// Resolve a split brain by discarding this node's changes (this node becomes SyncTarget).
    #[arg(long)]
    pub discard_my_data: bool,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only events of this resource.
    pub resource: Option<String>,
    /// One JSON object per line instead of drbdsetup-events2-style text.
    #[arg(long)]
    pub json: bool,
}

/// Exit codes (documented in `drl --help`).
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const UNREACHABLE: i32 = 3;
}

/// Parse the command line and run; returns the exit code.
pub fn main() -> i32 {
    let mut cli = Cli::parse();
    if cli.global.config.is_none() {
        // A packaged node keeps its config here: `drl status` works without --config.
        let default = std::path::Path::new(config::DEFAULT_CONFIG_FILE);
        if default.exists() {
            cli.global.config = Some(default.to_owned());
        }
    }
    match cli.cmd {
        Command::Daemon(ref a) => {
            match crate::daemon::main(cli.global.config.clone(), &node_name(&cli.global), a) {
                crate::daemon::Exit::Ok => exit::OK,
                crate::daemon::Exit::Usage => exit::USAGE,
                crate::daemon::Exit::Failed => exit::FAILED,
            }
        }
        Command::CheckConfig => check_config(&cli.global),
        Command::CreateMd(ref a) => admin::create_md(&cli.global, &a.resource),
        Command::Adjust(ref a) => admin::adjust(&cli.global, a.resource.as_deref(), a.json),
        Command::Up(ref a) => {
            let name = a.resource.clone();
            call_and_print(
                &cli.global,
                "up",
                serde_json::json!({ "resource": a.resource }),
                false,
                move |v| {
                    if v["already_up"] == true {
                        format!("{name}: already up\n")
                    } else {
                        format!("{name}: up\n")
                    }
                },
            )
        }
        Command::Resize(ref a) => {
            let name = a.resource.clone();
            call_and_print(
                &cli.global,
                "resize",
                serde_json::json!({ "resource": a.resource, "allow_shrink": a.allow_shrink }),
                a.json,
                move |v| format!("{name}: {}\n", v["result"].as_str().unwrap_or("resized")),
            )
        }
        Command::Down(ref a) => {
            let msg = format!("{}: down\n", a.resource);
            call_and_print(
                &cli.global,
                "down",
                serde_json::json!({ "resource": a.resource }),
                false,
                move |_| msg.clone(),
            )
        }
        Command::ImportDrbd(ref a) => admin::import_drbd(a),
        Command::WaitConnect(ref a) => {
            admin::wait(&cli.global, &a.resource, admin::WaitFor::Connect, a.timeout)
        }
        Command::WaitSync(ref a) => {
            admin::wait(&cli.global, &a.resource, admin::WaitFor::Sync, a.timeout)
        }
        Command::Status(ref a) => status::status(&cli.global, a),
        Command::Events(ref a) => status::events(&cli.global, a),
        Command::Events2(ref a) => events2::events2(&cli.global, a),
        Command::Snapshot(ref c) => snapshot::run(&cli.global, c),
        Command::Primary(ref a) => {
            let msg = format!("{}: Primary\n", a.resource);
            call_and_print(
                &cli.global,
                "primary",
                serde_json::json!({ "resource": a.resource, "force": a.force }),
                false,
                move |_| msg.clone(),
            )
        }
        Command::Secondary(ref a) => {
            let msg = format!("{}: Secondary\n", a.resource);
            call_and_print(
                &cli.global,
                "secondary",
                serde_json::json!({ "resource": a.resource }),
                false,
                move |_| msg.clone(),
            )
        }
        Command::Connect(ref a) => {
            let msg = format!("{}: connecting\n", a.resource);
            let p =
                serde_json::json!({ "resource": a.resource, "discard_my_data": a.discard_my_data });
            call_and_print(&cli.global, "connect", p, false, move |_| msg.clone())
        }
        Command::Disconnect(ref a) => {
            let msg = format!("{}: StandAlone\n", a.resource);
            call_and_print(
                &cli.global,
                "disconnect",
                serde_json::json!({ "resource": a.resource }),
                false,
                move |_| msg.clone(),
            )
        }
        Command::Invalidate(ref a) => simple(&cli.global, "invalidate", &a.resource),
        Command::InvalidateRemote(ref a) => simple(&cli.global, "invalidate-remote", &a.resource),
        Command::Outdate(ref a) => simple(&cli.global, "outdate", &a.resource),
        Command::PauseSync(ref a) => simple(&cli.global, "pause-sync", &a.resource),
        Command::ResumeSync(ref a) => simple(&cli.global, "resume-sync", &a.resource),
        Command::Verify(ref a) => status::verify(&cli.global, a),
        Command::Stream(ref a) => stream::stream(&cli.global, a),
        Command::Restore(ref a) => stream::restore(&cli.global, a),
        Command::Image(ref c) => stream::image(&cli.global, c),
        Command::Job(ref c) => stream::job(&cli.global, c),
        Command::Shaping(ref c) => shaping::run(&cli.global, c),
        Command::Detect(ref c) => detect::run(&cli.global, c),
        Command::Dr(ref c) => dr::run(&cli.global, c),
        Command::Gen(ref c) => gen::run(c),
        Command::Completions(ref a) => gen::completions(a),
        Command::ServeNull(ref a) => serve_null::serve_null(a),
    }
}

/// Call a `{resource}` method and print `RES: STATE` (the disk or replication state it left).
fn simple(g: &Global, method: &str, resource: &str) -> i32 {
    call_and_print(
        g,
        method,
        serde_json::json!({ "resource": resource }),
        false,
        |v| {
            format!(
                "{}: {}\n",
                v["resource"].as_str().unwrap_or("-"),
                v["disk"]
                    .as_str()
                    .or(v["replication"].as_str())
                    .unwrap_or("-")
            )
        },
    )
}

/// A small single-threaded runtime for the admin commands (the daemon builds its own).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the CLI")
}

/// Connect to the daemon's control socket, or print why not and return the exit code.
pub async fn connect(g: &Global) -> Result<crate::control::Client, i32> {
    let path = socket_path(g).map_err(|e| {
        eprintln!("drl: {e}");
        exit::USAGE
    })?;
    crate::control::Client::connect(&path).await.map_err(|e| {
        eprintln!("drl: {e}");
        exit::UNREACHABLE
    })
}

/// Call `method` and print the result (pretty JSON with `json`, else via `render`).
pub fn call_and_print(
    g: &Global,
    method: &str,
    params: serde_json::Value,
    json: bool,
    render: impl Fn(&serde_json::Value) -> String,
) -> i32 {
    runtime().block_on(async {
        let mut client = match connect(g).await {
            Ok(c) => c,
            Err(code) => return code,
        };
        print_result(method, client.call(method, params).await, json, render)
    })
}

fn print_result(
    method: &str,
    res: Result<serde_json::Value, crate::control::ControlError>,
    json: bool,
    render: impl Fn(&serde_json::Value) -> String,
) -> i32 {
    match res {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", render(&v));
            }
            exit::OK
        }
        Err(e) => print_error(method, &e, json),
    }
}

/// Print a failed call once, in the admin's terms (the daemon's message, without the method
/// and the JSON-RPC code); with `json`, the error object (code included) on stdout. Returns
/// the exit status (1: the daemon refused or failed the request).
pub fn print_error(method: &str, e: &crate::control::ControlError, json: bool) -> i32 {
    let rpc = e.rpc_error();
    if json {
        let v = match rpc {
            Some(r) => serde_json::json!({ "error": r }),
            None => serde_json::json!({ "error": { "message": e.to_string() } }),
        };
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else if rpc.is_some() {
        eprintln!("drl: {}", e.admin_message());
    } else {
        eprintln!("drl: {method}: {e}");
    }
    exit::FAILED
}

/// This node's name: `--node`, else the host name.
pub fn node_name(g: &Global) -> String {
    g.node.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
    })
}

/// The control socket to talk to (see the module doc for the order).
pub fn socket_path(g: &Global) -> Result<PathBuf, String> {
    if let Some(s) = &g.socket {
        return Ok(s.clone());
    }
    if let Some(file) = &g.config {
        let node = node_name(g);
        return config::load(file, &node)
            .map(|c| c.control_socket)
            .map_err(|e| e.to_string());
    }
    Ok(PathBuf::from(config::DEFAULT_CONTROL_SOCKET))
}

fn check_config(g: &Global) -> i32 {
    let Some(file) = &g.config else {
        eprintln!("drl check-config: --config FILE is required");
        return exit::USAGE;
    };
    let node = node_name(g);
    match config::load(file, &node) {
        Ok(c) => {
            println!("{}: valid for node {}", file.display(), c.node);
            println!(
                "control socket: {} (mode {:o})",
                c.control_socket.display(),
                c.control_socket_mode
            );
            let mut ok = true;
            for r in &c.resources {
                let peer = r
                    .peer
                    .as_ref()
                    .map_or("none (unreplicated)".to_owned(), |p| {
                        format!(
                            "{} at {}",
                            p.node,
                            p.address.map_or("?".into(), |a| a.to_string())
                        )
                    });
                let nbd =
                    |p: &config::Placement| p.nbd.as_ref().map_or("none".into(), |n| n.to_string());
                println!(
                    "resource {}: size {}, disk {}, meta {}, nbd {}, peer {}",
                    r.name,
                    crate::units::format_bytes(r.size_bytes),
                    r.local.disk.display(),
                    r.local.meta.display(),
                    nbd(&r.local),
                    peer
                );
                // A consistency group: volume 0 is the line above, one line per other volume.
                for v in &r.volumes[1..] {
                    println!(
                        "  volume {}: size {}, disk {}, meta {}, nbd {}",
                        v.number,
                        crate::units::format_bytes(v.size_bytes),
                        v.local.disk.display(),
                        v.local.meta.display(),
                        nbd(&v.local)
                    );
                }
                ok &= admin::report_plan(r);
            }
            for p in &c.plans {
                println!(
                    "plan {}: volumes {}, template {}, cinder-host {}, stack {}",
                    p.name,
                    p.volumes
                        .iter()
                        .map(|v| v.key())
                        .collect::<Vec<_>>()
                        .join(","),
                    p.template.display(),
                    p.cinder_host,
                    p.stack_name
                );
            }
            if let Some(m) = c.metrics_listen {
                println!("metrics: http://{m}/metrics");
            }
            if let Some(t) = &c.tls {
                // The same checks as at start: readable, signed by the CA, valid now, named.
                if let Err(e) = crate::repl::tls::load(t, &c.node) {
                    eprintln!("drl: TLS: {e}");
                    return exit::USAGE;
                }
                println!(
                    "tls: {} for node {} (ca {})",
                    t.cert.display(),
                    c.node,
                    t.ca.display()
                );
            }
            if ok {
                exit::OK
            } else {
                exit::USAGE
            }
        }
        Err(e) => {
            eprintln!("drl: {e}");
            exit::USAGE
        }
    }
}
