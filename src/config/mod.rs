//! Configuration: one TOML file can serve every node, DRBD-style.
//!
//! `[[node]]` lists the nodes (name, control socket); `[[resource]]` lists the volumes, each with
//! one `[resource.on.NODE]` section per node that holds it. A daemon started as node N keeps the
//! resources that have an `on.N` section; a resource with a second section is replicated to that
//! peer, one with only N's section runs unreplicated.
//!
//! Loading happens in two steps: serde parses the text into the `Raw*` structs (unknown keys are
//! refused, so a typo never silently becomes a default), then [`validate`] checks meaning and
//! produces a [`NodeConfig`]. Every error names the file, the key and the reason.

pub mod detect;
pub mod ops;
pub mod plan;
pub mod shaping;
pub use crate::units;
pub mod volumes;

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use units::{ByteSize, DurationMs};
pub use volumes::VolumeConfig;

use crate::limits;

/// The config file `drl` reads when no --config (or $DRL_CONFIG) is given and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/drl/drl.toml";

/// Where the control socket lives when the config names none.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/drl/drl.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: {key}: {reason}")]
    Invalid {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

// ---- raw, as written in the file ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    #[serde(default)]
    pub node: Vec<RawNode>,
    #[serde(default)]
    pub resource: Vec<RawResource>,
    pub swift: Option<RawSwift>,
    pub stream: Option<RawStream>,
    pub shaping: Option<shaping::RawShaping>,
    pub detect: Option<detect::RawDetect>,
    pub openstack: Option<plan::RawOpenStack>,
    pub primary_openstack: Option<plan::RawOpenStack>,
    pub dr: Option<plan::RawDr>,
    #[serde(default)]
    pub plan: Vec<plan::RawPlan>,
    pub tls: Option<ops::RawTls>,
}

/// `[swift]`: how to reach Swift. Without it, `swift://` URLs use the OpenStack environment
/// (`OS_AUTH_URL`, `OS_USERNAME`, ..., or `OS_CLOUD` with clouds.yaml).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSwift {
    /// "tempauth" (v1.0) or "keystone-v3".
    pub auth: String,
    /// tempauth: the auth URL (e.g. http://127.0.0.1:8080/auth/v1.0); keystone-v3: the
    /// identity endpoint (e.g. http://keystone:5000/v3).
    pub url: String,
    /// tempauth: "account:user"; keystone-v3: the user name.
    pub user: String,
    /// tempauth: the key; keystone-v3: the password.
    pub key: String,
    pub project: Option<String>,
    pub user_domain: Option<String>,
    pub project_domain: Option<String>,
    pub region: Option<String>,
}

/// `[stream]`: defaults of snapshot streams, restores and image transfers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawStream {
    /// Where plain `CONTAINER/PREFIX` locations (no `swift://`) are kept.
    pub vault_dir: Option<PathBuf>,
    pub chunk_size: Option<ByteSize>,
    pub parallelism: Option<usize>,
    /// Object bodies one running stream holds at once.
    pub memory: Option<ByteSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawNode {
    pub name: String,
    pub control_socket: Option<PathBuf>,
    /// Octal permission bits of the control socket, as a string ("0600") or a number.
    pub control_socket_mode: Option<String>,
    /// The site (datacenter) the node is in; the recovery orchestrator recovers a plan on the
    /// nodes of its own site. Default: the node's name (a site of its own).
    pub site: Option<String>,
    /// The remote control endpoint `IP:PORT` (off by default; needs `control-token-file`).
    pub control_tcp: Option<String>,
    /// The shared token of the TCP control endpoint (a file only root can read).
    pub control_token_file: Option<PathBuf>,
    /// Prometheus metrics endpoint, `IP:PORT` (see [`ops`]).
    pub metrics_listen: Option<String>,
    /// This node's certificate (PEM) for TLS on the replication link.
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The daemon's threads (see [`NodeConfig::worker_threads`]).
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawResource {
    pub name: String,
    /// The size of a one-volume resource (volume 0); a group gives sizes in `volume`.
    pub size: Option<ByteSize>,
    /// `[[resource.volume]]`: the volumes of a consistency group (issue 15).
    #[serde(default)]
    pub volume: Vec<volumes::RawVolume>,
    pub secret: Option<String>,
    /// COW space for this resource's snapshots (default: a quarter of `size`).
    pub snapshot_space: Option<ByteSize>,
    /// Copy-on-write granularity of snapshots (a power of two, 4 KiB to 4 MiB).
    pub snapshot_chunk: Option<ByteSize>,
    /// Replication protocol: only "A" (asynchronous) exists.
    pub protocol: Option<String>,
    /// What a full send buffer does: "block" (default), "pull-ahead" or "disconnect".
    pub on_congestion: Option<String>,
    /// Bound of the replication send buffer (default `limits::REPL_SEND_BUFFER_BYTES_MAX`).
    pub max_buffer: Option<ByteSize>,
    /// Split-brain recovery with one Primary: "discard-secondary" (default) or "disconnect".
    pub after_sb_1pri: Option<String>,
    /// Split-brain recovery with no Primary: "disconnect" (default) or "discard-zero-changes".
    pub after_sb_0pri: Option<String>,
    /// A static cap on this resource's resync (DRBD's `resync-rate`), without a link-rate.
    pub resync_rate: Option<units::Rate>,
    /// TLS on the replication link; a resource with TLS refuses cleartext peers.
    pub tls: Option<bool>,
    /// DRBD 9's `auto-promote` (default true): a Secondary becomes Primary at an NBD client's
    /// first write when that cannot split the brain, and Secondary when the last writer left.
    pub auto_promote: Option<bool>,
    #[serde(default)]
    pub on: BTreeMap<String, RawOn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawOn {
    pub address: Option<String>,
    /// A one-volume resource's files and export; a group names them per volume in `volume`.
    pub disk: Option<PathBuf>,
    pub meta: Option<PathBuf>,
    pub nbd: Option<String>,
    /// Snapshot store directory (default: the meta path with ".snap" appended).
    pub snapshot_dir: Option<PathBuf>,
    /// `volume.N = { disk, meta, nbd }`: this node's files of a group's volume N.
    #[serde(default)]
    pub volume: BTreeMap<String, volumes::RawOnVolume>,
}

// ---- validated, for one node ----

/// Where an NBD export listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdEndpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl NbdEndpoint {
    /// "tcp:HOST:PORT" or an absolute unix socket path.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("tcp:") {
            return rest
                .parse::<SocketAddr>()
                .map(NbdEndpoint::Tcp)
                .map_err(|e| format!("{text:?}: not tcp:HOST:PORT with a numeric address ({e})"));
        }
        let p = PathBuf::from(text);
        if !p.is_absolute() {
            return Err(format!(
                "{text:?}: must be an absolute unix socket path or tcp:HOST:PORT"
            ));
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if text.len() > 107 {
            return Err(format!("{text:?}: unix socket path longer than 107 bytes"));
        }
        Ok(NbdEndpoint::Unix(p))
    }

    /// The NBD URI a client such as qemu-io or nbdinfo takes.
    pub fn uri(&self) -> String {
        match self {
            NbdEndpoint::Unix(p) => format!("nbd+unix:///?socket={}", p.display()),
            NbdEndpoint::Tcp(a) => format!("nbd://{a}/"),
        }
    }
}

impl std::fmt::Display for NbdEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdEndpoint::Unix(p) => write!(f, "{}", p.display()),
            NbdEndpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// One node's view of a resource's placement.
#[derive(Clone, Debug)]
pub struct Placement {
    pub node: String,
    pub address: Option<SocketAddr>,
    pub disk: PathBuf,
    pub meta: PathBuf,
    pub nbd: Option<NbdEndpoint>,
    pub snapshot_dir: PathBuf,
}

#[derive(Clone, Debug)]
pub struct ResourceConfig {
    pub name: String,
    /// Volume 0's size (every resource has a volume 0).
    pub size_bytes: u64,
    pub secret: Option<String>,
    pub snapshot_space_bytes: u64,
    pub snapshot_chunk_bytes: u64,
    /// This node's section (volume 0's files).
    pub local: Placement,
    /// The peer's section (volume 0's files), if the resource is replicated.
    pub peer: Option<Placement>,
    /// Every volume, in number order (0, 1, ..); one for a resource written with `size`.
    pub volumes: Vec<VolumeConfig>,
    /// Replication settings (used when `peer` is set).
    pub repl: ReplConfig,
    /// TLS on the replication link (`tls = true`; needs [`NodeConfig::tls`]).
    pub tls: bool,
}

impl ResourceConfig {
    /// The volume layer's view of this resource's files, one per volume in number order, for
    /// `volume::claim::plan` (volume 0's size is the resource's `size_bytes`).
    pub fn claim_targets(&self) -> Vec<crate::volume::claim::Target<'_>> {
        self.volumes
            .iter()
            .map(|v| crate::volume::claim::Target {
                name: &self.name,
                size_bytes: if v.number == 0 {
                    self.size_bytes
                } else {
                    v.size_bytes
                },
                disk: &v.local.disk,
                meta: &v.local.meta,
                replicated: self.peer.is_some(),
            })
            .collect()
    }
}

/// Replication settings of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplConfig {
    pub on_congestion: OnCongestion,
    pub max_buffer_bytes: u64,
    pub split_brain: crate::repl::state::SplitBrainPolicy,
    /// `resync-rate`: this resource's resync answers never exceed it (bytes per second).
    pub resync_rate_bytes_per_s: Option<u64>,
    /// `auto-promote` (default true): see `daemon::autopromote`.
    pub auto_promote: bool,
}

impl Default for ReplConfig {
    fn default() -> Self {
        ReplConfig {
            on_congestion: OnCongestion::Block,
            max_buffer_bytes: limits::REPL_SEND_BUFFER_BYTES_MAX,
            split_brain: Default::default(),
            resync_rate_bytes_per_s: None,
            auto_promote: true,
        }
    }
}

pub use crate::repl::options::OnCongestion;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub file: PathBuf,
    pub node: String,
    pub control_socket: PathBuf,
    pub control_socket_mode: u32,
    /// This node's TCP control endpoint and its token file, if configured.
    pub control_tcp: Option<(SocketAddr, PathBuf)>,
    pub resources: Vec<ResourceConfig>,
    pub swift: Option<crate::stream::auth::SwiftAuth>,
    pub stream: StreamConfig,
    pub shaping: crate::shaping::ShapingConfig,
    pub resync: crate::shaping::resync::ResyncTuning,
    /// `[detect]`; `None`: no detection, promotion is manual.
    pub detect: Option<detect::DetectConfig>,
    /// `[openstack]`: the backup site's cloud (Keystone v3); None: `OS_*` / `OS_CLOUD`.
    pub openstack: Option<crate::stream::auth::SwiftAuth>,
    /// `[primary-openstack]`: the primary site's cloud, where fail back creates the workload's
    /// stack (`[[plan]] primary-stack-name`).
    pub primary_openstack: Option<crate::stream::auth::SwiftAuth>,
    pub dr: plan::DrConfig,
    pub plans: Vec<plan::PlanConfig>,
    /// Every node of the file with its site and control socket (the orchestrator reaches the
    /// daemons of its site through them).
    pub nodes: Vec<plan::NodeEntry>,
    /// Every replicated resource of the file: name and its two nodes.
    pub all_resources: Vec<(String, Vec<String>)>,
    /// Prometheus metrics endpoint (`metrics-listen`); none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// This node's TLS files (`[tls] ca`, `tls-cert`, `tls-key`).
    pub tls: Option<ops::TlsFiles>,
    /// `worker-threads`: the daemon's data-path threads (shards, `daemon/shards.rs`) and the
    /// worker threads of its control runtime; None: one per CPU (or `TOKIO_WORKER_THREADS`).
    pub worker_threads: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub vault_dir: PathBuf,
    pub chunk_bytes: u64,
    pub parallelism: usize,
    /// `memory`: object bodies one running stream holds at once.
    pub inflight_bytes: u64,
}

impl NodeConfig {
    pub fn resource(&self, name: &str) -> Option<&ResourceConfig> {
        self.resources.iter().find(|r| r.name == name)
    }
}

/// Read, parse and validate `file` for node `node`.
pub fn load(file: &Path, node: &str) -> Result<NodeConfig, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_owned(),
        source,
    })?;
    let raw = parse(file, &text)?;
    validate(file, &raw, node)
}

/// `drl import-drbd`: a DRBD resource file as drl's TOML, or why not. The TOML is checked with
/// drl's own parser before anyone sees it, so a mapping the importer gets wrong (a value DRBD
/// takes and drl does not, a key given twice) is a clear refusal naming the line, never a
/// config that only fails at the daemon's start.
pub fn import_drbd(
    text: &str,
    opts: &drbd_compat::import::ImportOptions,
) -> Result<drbd_compat::import::Imported, String> {
    let got = drbd_compat::import::import(text, opts).map_err(|e| e.to_string())?;
    parse(Path::new("imported.toml"), &got.toml).map_err(|e| {
        format!(
            "the drl configuration it maps to does not load ({e}); nothing was printed: fix that \
             setting in the .res file (or pass --size), then import again"
        )
    })?;
    Ok(got)
}

/// Parse TOML text. Unknown keys and wrong types are errors that name the key and position.
pub fn parse(file: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// Check the meaning of a parsed config and keep what node `node` runs.
pub fn validate(file: &Path, raw: &RawConfig, node: &str) -> Result<NodeConfig, ConfigError> {
    let invalid = |key: String, reason: String| ConfigError::Invalid {
        file: file.to_owned(),
        key,
        reason,
    };

    let mut node_names = HashSet::new();
    for (i, n) in raw.node.iter().enumerate() {
        check_name(&n.name).map_err(|r| invalid(format!("node[{i}].name"), r))?;
        if !node_names.insert(n.name.as_str()) {
            return Err(invalid(
                format!("node[{i}].name"),
                format!("node {:?} is listed twice", n.name),
            ));
        }
    }
    let Some(me) = raw.node.iter().find(|n| n.name == node) else {
        let known: Vec<_> = raw.node.iter().map(|n| n.name.as_str()).collect();
        return Err(invalid(
            "node".into(),
            format!("this node {node:?} is not listed (known: {known:?}); pass --node NAME or add a [[node]] section"),
        ));
    };
    let control_socket = me
        .control_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));
    let control_socket_mode = match &me.control_socket_mode {
        None => 0o600,
        Some(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                invalid(
                    format!("node.{node}.control-socket-mode"),
                    format!("{s:?} is not an octal mode like \"0600\""),
                )
            })?,
    };

    let metrics_listen = ops::metrics_listen(me, &invalid)?;
    let worker_threads = ops::worker_threads(me, &invalid)?;
    let tls = ops::tls_files(raw, me, &invalid)?;
    let mut resources = Vec::new();
    let mut res_names = HashSet::new();
    let mut paths: HashSet<PathBuf> = HashSet::new();
    for r in &raw.resource {
        let key = |k: &str| format!("resource.{}.{k}", r.name);
        check_name(&r.name).map_err(|reason| invalid("resource.name".into(), reason))?;
        if !res_names.insert(r.name.as_str()) {
            return Err(invalid(key("name"), "resource is defined twice".into()));
        }
        let declared = volumes::declared(r, &key, &invalid)?;
        for name in r.on.keys() {
            if !node_names.contains(name.as_str()) {
                return Err(invalid(
                    key(&format!("on.{name}")),
                    format!("node {name:?} is not listed in [[node]]"),
                ));
            }
        }
        if r.on.len() > 2 {
            return Err(invalid(
                key("on"),
                format!(
                    "{} nodes hold this resource; drl replicates between exactly two",
                    r.on.len()
                ),
            ));
        }
        let Some(local_raw) = r.on.get(node) else {
            continue;
        };
        let locals = placements(r, node, local_raw, &declared, &key, &invalid)?;
        let peers = match r.on.iter().find(|(n, _)| n.as_str() != node) {
            None => None,
            Some((pn, praw)) => Some(placements(r, pn, praw, &declared, &key, &invalid)?),
        };
        let local = locals[0].clone();
        let peer = peers.as_ref().map(|p| p[0].clone());
        if let Some(p) = &peer {
            for (pl, who) in [(&local, node), (p, p.node.as_str())] {
                if pl.address.is_none() {
                    return Err(invalid(
                        key(&format!("on.{who}.address")),
                        "a replicated resource needs the replication address of both nodes".into(),
                    ));
                }
            }
            match &r.secret {
                Some(s) if !s.is_empty() => {}
                _ => {
                    return Err(invalid(
                        key("secret"),
                        "a replicated resource needs a non-empty shared secret".into(),
                    ))
                }
            }
        }
        for (i, l) in locals.iter().enumerate() {
            let vkey = |k: &str| match r.volume.is_empty() {
                true => key(&format!("on.{node}.{k}")),
                false => key(&format!("on.{node}.volume.{}.{k}", declared[i].0)),
            };
            for (p, k) in [(&l.disk, "disk"), (&l.meta, "meta")] {
                if !paths.insert(p.clone()) {
                    return Err(invalid(
                        vkey(k),
                        format!("{} is used twice on this node", p.display()),
                    ));
                }
            }
            if let Some(NbdEndpoint::Unix(p)) = &l.nbd {
                if !paths.insert(p.clone()) {
                    return Err(invalid(
                        vkey("nbd"),
                        format!("{} is used twice on this node", p.display()),
                    ));
                }
            }
        }
        let size = declared[0].1;
        let snapshot_chunk_bytes = r
            .snapshot_chunk
            .map_or(limits::SNAPSHOT_CHUNK_BYTES_DEFAULT, ByteSize::bytes);
        if !snapshot_chunk_bytes.is_power_of_two()
            || !(4096..=4 << 20).contains(&snapshot_chunk_bytes)
        {
            return Err(invalid(
                key("snapshot-chunk"),
                format!("{snapshot_chunk_bytes} bytes: must be a power of two from 4KiB to 4MiB"),
            ));
        }
        let space_of = |size: u64| {
            r.snapshot_space.map_or(
                size / 100 * limits::SNAPSHOT_SPACE_PERCENT_DEFAULT,
                ByteSize::bytes,
            )
        };
        let snapshot_space_bytes = space_of(size);
        for (n, vsize) in &declared {
            let space = space_of(*vsize);
            if space < snapshot_chunk_bytes {
                let k = match r.snapshot_space.is_some() || r.volume.is_empty() {
                    true => key("snapshot-space"),
                    false => key(&format!("volume.{n}.size")),
                };
                return Err(invalid(k, format!("{space} bytes of snapshot space: smaller than one snapshot chunk ({snapshot_chunk_bytes})")));
            }
        }
        let volumes = declared
            .iter()
            .enumerate()
            .map(|(i, (number, size_bytes))| VolumeConfig {
                number: *number,
                size_bytes: *size_bytes,
                snapshot_space_bytes: space_of(*size_bytes),
                local: locals[i].clone(),
                peer: peers.as_ref().map(|p| p[i].clone()),
            })
            .collect();
        let repl = repl_config(r, &key, &invalid)?;
        let res_tls = r.tls.unwrap_or(false);
        ops::check_resource_tls(
            &r.name,
            res_tls,
            peer.is_some(),
            tls.as_ref(),
            node,
            &invalid,
        )?;
        resources.push(ResourceConfig {
            name: r.name.clone(),
            size_bytes: size,
            secret: r.secret.clone(),
            snapshot_space_bytes,
            snapshot_chunk_bytes,
            local,
            peer,
            volumes,
            repl,
            tls: res_tls,
        });
    }
    let swift = raw
        .swift
        .as_ref()
        .map(|s| swift_auth(s, &invalid))
        .transpose()?;
    let stream = stream_config(raw.stream.as_ref(), &invalid)?;
    let shaping = shaping::shaping_config(raw.shaping.as_ref(), &invalid)?;
    let resync = shaping::resync_tuning(raw.shaping.as_ref(), &invalid)?;
    let detect =
        detect::detect_config(raw.detect.as_ref(), node, &node_names, &resources, &invalid)?;
    for (i, n) in raw.node.iter().enumerate() {
        if let Some(s) = &n.site {
            check_name(s).map_err(|r| invalid(format!("node[{i}].site"), r))?;
        }
    }
    let mut tcp_of = std::collections::HashMap::new();
    for (i, n) in raw.node.iter().enumerate() {
        let ep = match (&n.control_tcp, &n.control_token_file) {
            (None, None) => continue,
            (Some(a), Some(f)) => {
                let addr = a.parse::<SocketAddr>().map_err(|e| {
                    invalid(
                        format!("node[{i}].control-tcp"),
                        format!("{a:?} is not IP:PORT ({e})"),
                    )
                })?;
                if !f.is_absolute() {
                    return Err(invalid(
                        format!("node[{i}].control-token-file"),
                        format!("{} must be an absolute path", f.display()),
                    ));
                }
                (addr, f.clone())
            }
            (Some(_), None) => {
                return Err(invalid(
                    format!("node[{i}].control-token-file"),
                    "control-tcp needs a token file (the endpoint is authenticated)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    format!("node[{i}].control-tcp"),
                    "control-token-file without control-tcp".into(),
                ))
            }
        };
        tcp_of.insert(n.name.clone(), ep);
    }
    let openstack = raw
        .openstack
        .as_ref()
        .map(|o| plan::openstack_auth("openstack", o, &invalid))
        .transpose()?;
    let primary_openstack = raw
        .primary_openstack
        .as_ref()
        .map(|o| plan::openstack_auth("primary-openstack", o, &invalid))
        .transpose()?;
    let dr = plan::dr_config(raw.dr.as_ref(), &invalid)?;
    let plans = plan::plans(raw, &invalid)?;
    Ok(NodeConfig {
        file: file.to_owned(),
        node: node.to_owned(),
        control_socket,
        control_socket_mode,
        control_tcp: tcp_of.get(node).cloned(),
        resources,
        swift,
        stream,
        shaping,
        resync,
        detect,
        openstack,
        primary_openstack,
        dr,
        plans,
        nodes: plan::nodes(raw, &tcp_of),
        all_resources: raw
            .resource
            .iter()
            .map(|r| (r.name.clone(), r.on.keys().cloned().collect()))
            .collect(),
        metrics_listen,
        tls,
        worker_threads,
    })
}

fn swift_auth(
    s: &RawSwift,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<crate::stream::auth::SwiftAuth, ConfigError> {
    use crate::stream::auth::{Secret, SwiftAuth};
    if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
        return Err(invalid(
            "swift.url".into(),
            format!("{:?} is not an http(s) URL", s.url),
        ));
    }
    match s.auth.as_str() {
        "tempauth" => Ok(SwiftAuth::TempAuth {
            url: s.url.clone(),
            user: s.user.clone(),
            key: Secret::new(s.key.clone()),
        }),
        "keystone-v3" => Ok(SwiftAuth::KeystoneV3 {
            auth_url: s.url.clone(),
            username: s.user.clone(),
            password: Secret::new(s.key.clone()),
            project_name: s.project.clone().ok_or_else(|| {
                invalid("swift.project".into(), "keystone-v3 needs a project".into())
            })?,
            user_domain_name: s.user_domain.clone().unwrap_or_else(|| "Default".into()),
            project_domain_name: s.project_domain.clone().unwrap_or_else(|| "Default".into()),
            region: s.region.clone(),
        }),
        other => Err(invalid(
            "swift.auth".into(),
            format!("{other:?}: use \"tempauth\" or \"keystone-v3\""),
        )),
    }
}

/// Stream defaults when no config file is given.
pub fn default_stream_config() -> StreamConfig {
    stream_config(None, &|key, reason| ConfigError::Invalid {
        file: PathBuf::new(),
        key,
        reason,
    })
    .expect("defaults are valid")
}

fn stream_config(
    s: Option<&RawStream>,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<StreamConfig, ConfigError> {
    let chunk_bytes = s
        .and_then(|s| s.chunk_size)
        .map_or(limits::STREAM_CHUNK_BYTES_DEFAULT, ByteSize::bytes);
    if !(limits::STREAM_CHUNK_BYTES_MIN..=limits::STREAM_CHUNK_BYTES_MAX).contains(&chunk_bytes)
        || !chunk_bytes.is_multiple_of(limits::BITMAP_BLOCK_BYTES)
    {
        return Err(invalid(
            "stream.chunk-size".into(),
            format!(
                "{chunk_bytes} bytes: must be a multiple of 4KiB from {} to {}",
                units::format_bytes(limits::STREAM_CHUNK_BYTES_MIN),
                units::format_bytes(limits::STREAM_CHUNK_BYTES_MAX)
            ),
        ));
    }
    let parallelism = s
        .and_then(|s| s.parallelism)
        .unwrap_or(limits::STREAM_PARALLELISM_DEFAULT);
    if !(1..=limits::STREAM_PARALLELISM_MAX).contains(&parallelism) {
        return Err(invalid(
            "stream.parallelism".into(),
            format!(
                "{parallelism}: must be 1 to {}",
                limits::STREAM_PARALLELISM_MAX
            ),
        ));
    }
    let inflight_bytes = s
        .and_then(|s| s.memory)
        .map_or(limits::STREAM_INFLIGHT_BYTES_DEFAULT, ByteSize::bytes);
    if !(limits::STREAM_INFLIGHT_BYTES_MIN..=limits::STREAM_INFLIGHT_BYTES_MAX)
        .contains(&inflight_bytes)
    {
        return Err(invalid(
            "stream.memory".into(),
            format!(
                "{}: must be {} to {}",
                units::format_bytes(inflight_bytes),
                units::format_bytes(limits::STREAM_INFLIGHT_BYTES_MIN),
                units::format_bytes(limits::STREAM_INFLIGHT_BYTES_MAX)
            ),
        ));
    }
    let vault_dir = s
        .and_then(|s| s.vault_dir.clone())
        .unwrap_or_else(|| PathBuf::from(crate::stream::store::DEFAULT_VAULT_DIR));
    if !vault_dir.is_absolute() {
        return Err(invalid(
            "stream.vault-dir".into(),
            format!("{} must be an absolute path", vault_dir.display()),
        ));
    }
    Ok(StreamConfig {
        vault_dir,
        chunk_bytes,
        parallelism,
        inflight_bytes,
    })
}

fn repl_config(
    r: &RawResource,
    key: &dyn Fn(&str) -> String,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<ReplConfig, ConfigError> {
    use crate::repl::state::{AfterSb0Pri, AfterSb1Pri};
    let mut c = ReplConfig::default();
    if let Some(p) = &r.protocol {
        if p != "A" {
            return Err(invalid(
                key("protocol"),
                format!("{p:?}: drl replicates asynchronously, only protocol \"A\" exists"),
            ));
        }
    }
    if let Some(v) = &r.on_congestion {
        c.on_congestion = match v.as_str() {
            "block" => OnCongestion::Block,
            "pull-ahead" => OnCongestion::PullAhead,
            "disconnect" => OnCongestion::Disconnect,
            _ => {
                return Err(invalid(
                    key("on-congestion"),
                    format!("{v:?}: one of \"block\", \"pull-ahead\", \"disconnect\""),
                ))
            }
        };
    }
    c.resync_rate_bytes_per_s = r.resync_rate.map(|r| r.0);
    c.auto_promote = r.auto_promote.unwrap_or(true);
    if let Some(b) = r.max_buffer {
        let b = b.bytes();
        let min = 2 * u64::from(limits::REPL_FRAME_DATA_BYTES_MAX);
        if !(min..=limits::REPL_MAX_BUFFER_BYTES_LIMIT).contains(&b) {
            return Err(invalid(
                key("max-buffer"),
                format!(
                    "{b} bytes: must be from {min} to {}",
                    limits::REPL_MAX_BUFFER_BYTES_LIMIT
                ),
            ));
        }
        c.max_buffer_bytes = b;
    }
    if let Some(v) = &r.after_sb_1pri {
        c.split_brain.after_sb_1pri = match v.as_str() {
            "discard-secondary" => AfterSb1Pri::DiscardSecondary,
            "disconnect" => AfterSb1Pri::Disconnect,
            _ => {
                return Err(invalid(
                    key("after-sb-1pri"),
                    format!("{v:?}: one of \"discard-secondary\", \"disconnect\""),
                ))
            }
        };
    }
    if let Some(v) = &r.after_sb_0pri {
        c.split_brain.after_sb_0pri = match v.as_str() {
            "disconnect" => AfterSb0Pri::Disconnect,
            "discard-zero-changes" => AfterSb0Pri::DiscardZeroChanges,
            _ => {
                return Err(invalid(
                    key("after-sb-0pri"),
                    format!("{v:?}: one of \"disconnect\", \"discard-zero-changes\""),
                ))
            }
        };
    }
    Ok(c)
}

/// Node `node`'s placement of every declared volume of `r` (its section `on`).
fn placements(
    r: &RawResource,
    node: &str,
    on: &RawOn,
    declared: &[(u16, u64)],
    key: &dyn Fn(&str) -> String,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<Vec<Placement>, ConfigError> {
    let on_key = |k: &str| key(&format!("on.{node}.{k}"));
    let paths = volumes::paths_on(r, on, declared, &on_key, invalid)?;
    paths
        .into_iter()
        .zip(declared)
        .map(|(p, (n, _))| {
            let vkey = |k: &str| match r.volume.is_empty() {
                true => on_key(k),
                false => on_key(&format!("volume.{n}.{k}")),
            };
            placement(node, on.address.as_deref(), p, &vkey, invalid)
        })
        .collect()
}

fn placement(
    node: &str,
    address: Option<&str>,
    raw: volumes::RawPaths,
    key: &dyn Fn(&str) -> String,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<Placement, ConfigError> {
    let address = match address {
        None => None,
        Some(a) => Some(a.parse::<SocketAddr>().map_err(|e| {
            invalid(
                key("address"),
                format!("{a:?} is not HOST:PORT with a numeric address ({e})"),
            )
        })?),
    };
    let nbd = match raw.nbd {
        None => None,
        Some(s) => Some(NbdEndpoint::parse(s).map_err(|r| invalid(key("nbd"), r))?),
    };
    for (p, k) in [(raw.disk, "disk"), (raw.meta, "meta")] {
        if !p.is_absolute() {
            return Err(invalid(
                key(k),
                format!("{} must be an absolute path", p.display()),
            ));
        }
    }
    if raw.disk == raw.meta {
        return Err(invalid(
            key("meta"),
            "meta must be a different file than disk".into(),
        ));
    }
    let snapshot_dir = match raw.snapshot_dir {
        Some(d) if !d.is_absolute() => {
            return Err(invalid(
                key("snapshot-dir"),
                format!("{} must be an absolute path", d.display()),
            ))
        }
        Some(d) => d.to_owned(),
        None => {
            let mut s = raw.meta.to_owned().into_os_string();
            s.push(".snap");
            PathBuf::from(s)
        }
    };
    Ok(Placement {
        node: node.to_owned(),
        address,
        disk: raw.disk.to_owned(),
        meta: raw.meta.to_owned(),
        nbd,
        snapshot_dir,
    })
}

/// Names of nodes and resources: what DRBD allows, and safe in paths and logs.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > limits::NAME_BYTES_MAX {
        return Err(format!(
            "{name:?}: a name must be 1 to {} bytes long",
            limits::NAME_BYTES_MAX
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
    {
        return Err(format!(
            "{name:?}: use only letters, digits, '-', '_' and '.' (not first)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
