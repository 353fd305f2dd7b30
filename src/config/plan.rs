//! `[openstack]`, `[primary-openstack]`, `[dr]` and `[[plan]]`: the backup site's cloud, the
//! primary site's cloud (fail back brings the workload up there) and the protection plans the
//! recovery orchestrator (`crate::orchestrator`) runs.
//!
//! Plans are validated against the whole file, not one node's view: a plan names resources
//! that live on several nodes of both sites. Which node of a resource is the backup is decided
//! when the orchestrator runs, by site: the `on` node whose `[[node]] site` equals the site of
//! the node the orchestrator runs as (`--node`); a node without `site` is a site of its own.
//!
//! A plan lists resources; a consistency group is one resource. `[plan.volume.K]` maps a
//! volume to the template: `K` is `RES` for a one-volume resource and `RES/N` for volume N of
//! a group, as DRBD addresses volumes (`[plan.volume."db/1"]`); `RES` alone for a group is
//! refused (which of its volumes would it be?), as is a number the group does not hold.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, DurationMs, RawConfig};
use crate::stream::auth::{Secret, SwiftAuth};

/// `[openstack]`: Keystone v3 credentials of the backup site's cloud.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawOpenStack {
    pub auth_url: String,
    pub username: String,
    pub password: String,
    pub project: String,
    pub user_domain: Option<String>,
    pub project_domain: Option<String>,
    pub region: Option<String>,
}

/// `[dr]`: where the orchestrator keeps its journals and checkpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDr {
    /// Journals of recoveries and fail backs (one file per plan).
    pub state_dir: Option<PathBuf>,
    /// Store URL of checkpoints (`swift://C/P`, `C/P` in the vault, `ROOT::C/P`).
    pub checkpoints: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPlan {
    pub name: String,
    pub resources: Vec<String>,
    pub template: PathBuf,
    pub cinder_host: String,
    pub failover: Option<String>,
    pub rpo_target: Option<DurationMs>,
    /// Stack name at the backup site (default: the plan's name).
    pub stack_name: Option<String>,
    /// Directory of the Cinder backend's share in which drl puts a symlink to each replica's
    /// disk (NFS driver); without it the reference is the disk's file name (LVM: the LV name).
    pub cinder_export_dir: Option<PathBuf>,
    /// The share as Cinder names it (default `127.0.0.1:<cinder-export-dir>`).
    pub cinder_share: Option<String>,
    /// Take a snapshot of every resource of the plan this often (on the node where it is
    /// Primary), in the daemon.
    pub snapshot_every: Option<DurationMs>,
    /// Scheduled snapshots kept per resource (the oldest are deleted).
    pub keep: Option<u32>,
    /// Stream every scheduled snapshot (incrementally) to this store URL, under one location
    /// per resource (`URL/RESOURCE`), and record the action in the checkpoint store.
    pub snapshot_to: Option<String>,
    /// The workload's stack at the primary site: fail back creates it from the plan's
    /// template (primary IDs as written) in `[primary-openstack]`'s cloud.
    pub primary_stack_name: Option<String>,
    /// VM images copied to the store on every tick of the snapshot schedule.
    #[serde(default)]
    pub images: Vec<RawPlanImage>,
    #[serde(default)]
    pub volume: BTreeMap<String, RawPlanVolume>,
}

/// One entry of `[[plan]] images`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPlanImage {
    /// The image file on the node that runs the plan's schedule.
    pub file: PathBuf,
    /// Store URL of the object (`swift://CONTAINER/OBJECT`, or a vault location).
    pub to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPlanVolume {
    pub primary_id: Option<String>,
    #[serde(default)]
    pub bootable: bool,
    /// The template parameter that carries this volume's ID (else the ID is found by value).
    pub parameter: Option<String>,
}

/// `failover`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failover {
    Manual,
    Automatic,
}

/// One volume of a plan: a one-volume resource, or one volume of a consistency group.
#[derive(Clone, Debug)]
pub struct PlanVolume {
    pub resource: String,
    /// The volume's number in a consistency group (`[plan.volume."RES/N"]`); None for a
    /// one-volume resource (`[plan.volume.RES]`).
    pub volume: Option<u16>,
    pub primary_id: Option<String>,
    pub bootable: bool,
    pub parameter: Option<String>,
}

impl PlanVolume {
    /// How the plan, the journal and the report name the volume: `RES`, or `RES/N` in a
    /// group (DRBD's `resource/volume`).
    pub fn key(&self) -> String {
        match self.volume {
            None => self.resource.clone(),
            Some(n) => format!("{}/{n}", self.resource),
        }
    }

    /// The key without a slash, for file and Cinder names: `RES`, or `RES-N` in a group.
    pub fn flat_key(&self) -> String {
        self.key().replace('/', "-")
    }
}

/// A validated `[[plan]]`.
#[derive(Clone, Debug)]
pub struct PlanConfig {
    pub name: String,
    pub volumes: Vec<PlanVolume>,
    pub template: PathBuf,
    pub cinder_host: String,
    pub failover: Failover,
    pub rpo_target_ms: Option<u64>,
    pub stack_name: String,
    pub cinder_export_dir: Option<PathBuf>,
    pub cinder_share: Option<String>,
    /// (interval ms, snapshots kept) of the daemon's snapshot schedule.
    pub snapshots: Option<(u64, usize)>,
    /// The stack fail back creates at the primary site; None: the admin brings it up.
    pub primary_stack_name: Option<String>,
    /// Store URL the scheduled snapshots are streamed to (`URL/RESOURCE` per resource).
    pub snapshot_to: Option<String>,
    /// Images copied on every tick of the schedule (`images`).
    pub images: Vec<PlanImage>,
}

impl PlanConfig {
    /// The plan's resources in order, each once (a group's volumes share one): what is
    /// checked, promoted, verified and switched over, one point in time per resource.
    pub fn resources(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for v in &self.volumes {
            if out.last() != Some(&v.resource.as_str()) {
                out.push(&v.resource);
            }
        }
        out
    }
}

/// One image of a plan: the file and the store URL of its object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanImage {
    pub file: PathBuf,
    pub to: String,
}

/// `[dr]`, validated.
#[derive(Clone, Debug)]
pub struct DrConfig {
    pub state_dir: PathBuf,
    pub checkpoints: String,
}

pub const DEFAULT_DR_STATE_DIR: &str = "/var/lib/drl/dr";
pub const DEFAULT_CHECKPOINTS: &str = "drl-plans";

/// A node of the file and its site (`[[node]] site`, default its own name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub name: String,
    pub site: String,
    pub control_socket: PathBuf,
    /// The node's TCP control endpoint and token file, if it has one.
    pub control_tcp: Option<(std::net::SocketAddr, PathBuf)>,
}

/// `[openstack]` or `[primary-openstack]` (`table`) as Keystone v3 credentials.
pub(super) fn openstack_auth(
    table: &str,
    o: &RawOpenStack,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<SwiftAuth, ConfigError> {
    if !(o.auth_url.starts_with("http://") || o.auth_url.starts_with("https://")) {
        return Err(invalid(
            format!("{table}.auth-url"),
            format!("{:?} is not an http(s) URL", o.auth_url),
        ));
    }
    for (k, v) in [
        ("username", &o.username),
        ("project", &o.project),
        ("password", &o.password),
    ] {
        if v.is_empty() {
            return Err(invalid(format!("{table}.{k}"), "must not be empty".into()));
        }
    }
    Ok(SwiftAuth::KeystoneV3 {
        auth_url: o.auth_url.clone(),
        username: o.username.clone(),
        password: Secret::new(o.password.clone()),
        project_name: o.project.clone(),
        user_domain_name: o.user_domain.clone().unwrap_or_else(|| "Default".into()),
        project_domain_name: o.project_domain.clone().unwrap_or_else(|| "Default".into()),
        region: o.region.clone(),
    })
}

pub(super) fn dr_config(
    d: Option<&RawDr>,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<DrConfig, ConfigError> {
    let state_dir = d
        .and_then(|d| d.state_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DR_STATE_DIR));
    if !state_dir.is_absolute() {
        return Err(invalid(
            "dr.state-dir".into(),
            format!("{} must be an absolute path", state_dir.display()),
        ));
    }
    let checkpoints = d
        .and_then(|d| d.checkpoints.clone())
        .unwrap_or_else(|| DEFAULT_CHECKPOINTS.into());
    crate::stream::store::StoreUrl::parse(&checkpoints)
        .map_err(|e| invalid("dr.checkpoints".into(), e.to_string()))?;
    Ok(DrConfig {
        state_dir,
        checkpoints,
    })
}

/// Every node of the file with its site.
pub(super) fn nodes(
    raw: &RawConfig,
    tcp: &std::collections::HashMap<String, (std::net::SocketAddr, PathBuf)>,
) -> Vec<NodeEntry> {
    raw.node
        .iter()
        .map(|n| NodeEntry {
            name: n.name.clone(),
            site: n.site.clone().unwrap_or_else(|| n.name.clone()),
            control_socket: n
                .control_socket
                .clone()
                .unwrap_or_else(|| PathBuf::from(super::DEFAULT_CONTROL_SOCKET)),
            control_tcp: tcp.get(&n.name).cloned(),
        })
        .collect()
}

pub(super) fn plans(
    raw: &RawConfig,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<Vec<PlanConfig>, ConfigError> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for p in &raw.plan {
        let key = |k: &str| format!("plan.{}.{k}", p.name);
        super::check_name(&p.name).map_err(|r| invalid("plan.name".into(), r))?;
        if !names.insert(p.name.as_str()) {
            return Err(invalid(key("name"), "plan is defined twice".into()));
        }
        if p.resources.is_empty() {
            return Err(invalid(
                key("resources"),
                "a plan needs at least one resource".into(),
            ));
        }
        let mut seen = HashSet::new();
        for r in &p.resources {
            let Some(res) = raw.resource.iter().find(|x| &x.name == r) else {
                return Err(invalid(
                    key("resources"),
                    format!("resource {r:?} is not defined in [[resource]]"),
                ));
            };
            if res.on.len() != 2 {
                return Err(invalid(
                    key("resources"),
                    format!("resource {r:?} is not replicated (it needs two [resource.on.NODE] sections)"),
                ));
            }
            if !seen.insert(r.as_str()) {
                return Err(invalid(key("resources"), format!("{r:?} is listed twice")));
            }
            if let Some(other) = out
                .iter()
                .find(|o: &&PlanConfig| o.volumes.iter().any(|v| &v.resource == r))
            {
                return Err(invalid(
                    key("resources"),
                    format!("{r:?} already belongs to plan {:?}", other.name),
                ));
            }
        }
        for k in p.volume.keys() {
            volume_key(raw, &p.resources, k)
                .map_err(|r| invalid(key(&format!("volume.{k}")), r))?;
        }
        if !p.template.is_absolute() {
            return Err(invalid(
                key("template"),
                format!("{} must be an absolute path", p.template.display()),
            ));
        }
        if p.cinder_host.is_empty() || !p.cinder_host.contains('@') {
            return Err(invalid(
                key("cinder-host"),
                format!(
                    "{:?} is not a Cinder backend pool like \"host@backend#pool\"",
                    p.cinder_host
                ),
            ));
        }
        let failover = match p.failover.as_deref() {
            None | Some("manual") => Failover::Manual,
            Some("automatic") => Failover::Automatic,
            Some(o) => {
                return Err(invalid(
                    key("failover"),
                    format!("{o:?}: one of \"manual\", \"automatic\""),
                ))
            }
        };
        if let Some(d) = &p.cinder_export_dir {
            if !d.is_absolute() {
                return Err(invalid(
                    key("cinder-export-dir"),
                    format!("{} must be an absolute path", d.display()),
                ));
            }
        }
        let snapshots = match (p.snapshot_every, p.keep) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid(key("keep"), "keep without snapshot-every".into()))
            }
            (Some(every), keep) => {
                if every.0 < crate::limits::DR_SNAPSHOT_EVERY_MS_MIN {
                    return Err(invalid(
                        key("snapshot-every"),
                        format!(
                            "{} ms: at least {} ms",
                            every.0,
                            crate::limits::DR_SNAPSHOT_EVERY_MS_MIN
                        ),
                    ));
                }
                let keep = keep.unwrap_or(crate::limits::DR_SNAPSHOT_KEEP_DEFAULT) as usize;
                if keep == 0 || keep >= crate::limits::SNAPSHOTS_PER_RESOURCE_MAX {
                    return Err(invalid(
                        key("keep"),
                        format!(
                            "{keep}: 1 to {} (a resource holds at most {} snapshots)",
                            crate::limits::SNAPSHOTS_PER_RESOURCE_MAX - 1,
                            crate::limits::SNAPSHOTS_PER_RESOURCE_MAX
                        ),
                    ));
                }
                Some((every.0, keep))
            }
        };
        if let Some(to) = &p.snapshot_to {
            if snapshots.is_none() {
                return Err(invalid(
                    key("snapshot-to"),
                    "snapshot-to without snapshot-every".into(),
                ));
            }
            crate::stream::store::StoreUrl::parse(to)
                .map_err(|e| invalid(key("snapshot-to"), e.to_string()))?;
        }
        let images = plan_images(p, snapshots.is_some(), &key, invalid)?;
        if p.primary_stack_name.is_some() && raw.primary_openstack.is_none() {
            return Err(invalid(
                key("primary-stack-name"),
                "needs [primary-openstack]: the primary site's cloud where fail back creates the stack".into(),
            ));
        }
        if p.primary_stack_name.as_deref() == Some("") {
            return Err(invalid(
                key("primary-stack-name"),
                "must not be empty".into(),
            ));
        }
        let mut volumes = Vec::new();
        for r in &p.resources {
            for number in group_numbers(raw, r) {
                let v = PlanVolume {
                    resource: r.clone(),
                    volume: number,
                    primary_id: None,
                    bootable: false,
                    parameter: None,
                };
                let raw_v = p.volume.get(&v.key());
                let primary_id = raw_v.and_then(|v| v.primary_id.clone());
                if let Some(id) = &primary_id {
                    if id.len() < 8
                        || id.len() > 64
                        || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    {
                        return Err(invalid(
                            key(&format!("volume.{}.primary-id", v.key())),
                            format!("{id:?} does not look like a Cinder volume ID"),
                        ));
                    }
                }
                volumes.push(PlanVolume {
                    primary_id,
                    bootable: raw_v.is_some_and(|v| v.bootable),
                    parameter: raw_v.and_then(|v| v.parameter.clone()),
                    ..v
                });
            }
        }
        if volumes
            .iter()
            .all(|v| v.primary_id.is_none() && v.parameter.is_none())
        {
            return Err(invalid(
                key("volume"),
                "no [plan.volume.RES] (or RES/N of a group) names a primary-id or parameter: the template could not refer to any recovered volume".into(),
            ));
        }
        out.push(PlanConfig {
            name: p.name.clone(),
            volumes,
            template: p.template.clone(),
            cinder_host: p.cinder_host.clone(),
            failover,
            rpo_target_ms: p.rpo_target.map(|d| d.0),
            stack_name: p.stack_name.clone().unwrap_or_else(|| p.name.clone()),
            cinder_share: p.cinder_share.clone().or_else(|| {
                p.cinder_export_dir
                    .as_ref()
                    .map(|d| format!("127.0.0.1:{}", d.display()))
            }),
            cinder_export_dir: p.cinder_export_dir.clone(),
            snapshots,
            primary_stack_name: p.primary_stack_name.clone(),
            snapshot_to: p
                .snapshot_to
                .as_ref()
                .map(|t| t.trim_end_matches('/').to_owned()),
            images,
        });
    }
    Ok(out)
}

/// The volume numbers a plan addresses in resource `r`: `[None]` for a one-volume resource
/// (also one written as a single `[[resource.volume]]`: the daemon serves it as one volume),
/// `[Some(0), Some(1), ..]` for a group.
fn group_numbers(raw: &RawConfig, r: &str) -> Vec<Option<u16>> {
    let Some(res) = raw.resource.iter().find(|x| x.name == r) else {
        return Vec::new();
    };
    if res.volume.len() <= 1 {
        return vec![None];
    }
    let mut n: Vec<u16> = res
        .volume
        .iter()
        .filter_map(|v| u16::try_from(v.number).ok())
        .collect();
    n.sort_unstable();
    n.into_iter().map(Some).collect()
}

/// Check a `[plan.volume.K]` key: `RES` for a one-volume resource of the plan, `RES/N` for
/// volume N of a group (DRBD's addressing); the reason otherwise.
fn volume_key(raw: &RawConfig, resources: &[String], k: &str) -> Result<(), String> {
    let (r, n) = match k.split_once('/') {
        None => (k, None),
        Some((r, n)) => (r, Some(n)),
    };
    if !resources.iter().any(|x| x == r) {
        return Err(format!("{r:?} is not one of the plan's resources"));
    }
    let numbers = group_numbers(raw, r);
    let list = || {
        numbers
            .iter()
            .flatten()
            .map(|n| format!("\"{r}/{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (n, numbers.first()) {
        (None, Some(None)) => Ok(()),
        (None, _) => Err(format!(
            "{r:?} is a consistency group of {} volumes: name each volume, as {}",
            numbers.len(),
            list()
        )),
        (Some(_), Some(None)) => Err(format!(
            "{r:?} has one volume: name it {r:?}, without a volume number"
        )),
        (Some(n), _) => match n.parse::<u16>() {
            Ok(v) if numbers.contains(&Some(v)) && n == v.to_string() => Ok(()),
            _ => Err(format!(
                "{r:?} has no volume {n:?}: its volumes are {}",
                list()
            )),
        },
    }
}

/// `[[plan]] images`: absolute files, store URLs that name an object, no object twice.
fn plan_images(
    p: &RawPlan,
    scheduled: bool,
    key: &dyn Fn(&str) -> String,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<Vec<PlanImage>, ConfigError> {
    if p.images.is_empty() {
        return Ok(Vec::new());
    }
    if !scheduled {
        return Err(invalid(
            key("images"),
            "images without snapshot-every (they are copied on the schedule's ticks)".into(),
        ));
    }
    if p.images.len() > crate::limits::DR_PLAN_IMAGES_COUNT_MAX {
        return Err(invalid(
            key("images"),
            format!(
                "{} images: at most {}",
                p.images.len(),
                crate::limits::DR_PLAN_IMAGES_COUNT_MAX
            ),
        ));
    }
    let mut out: Vec<PlanImage> = Vec::new();
    for (i, im) in p.images.iter().enumerate() {
        let k = |f: &str| key(&format!("images[{i}].{f}"));
        if !im.file.is_absolute() {
            return Err(invalid(
                k("file"),
                format!("{} must be an absolute path", im.file.display()),
            ));
        }
        let to = im.to.trim_end_matches('/').to_owned();
        crate::stream::store::StoreUrl::parse(&to)
            .and_then(|u| crate::stream::image::object_of(&u))
            .map_err(|e| invalid(k("to"), e.to_string()))?;
        if out.iter().any(|o| o.to == to) {
            return Err(invalid(
                k("to"),
                format!("{to:?}: two images of the plan would overwrite each other"),
            ));
        }
        out.push(PlanImage {
            file: im.file.clone(),
            to,
        });
    }
    Ok(out)
}
