//! Control methods for snapshot streams, restores into a resource, and jobs.
//!
//! | method | params | result |
//! |---|---|---|
//! | `stream.start` | `{resource, snapshot, to, parent?, chunk_size?, object_size?, parallelism?, compression?}` | `{job, parent}` |
//! | `restore.start` | `{from, resource, parallelism?}` | `{job}` |
//! | `job.list` | `{}` | `{jobs: [...]}` |
//! | `job.cancel` | `{job}` | `{}` |
//!
//! Without `parent`, a stream is incremental automatically when an older snapshot of the same
//! resource (live, or deleted but kept as a change-set tombstone) is already in the store at
//! the same location: the newest such one is the parent.
//!
//! A consistency group streams and restores its volumes together (`rpc_stream_group.rs`).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::device::ResourceDevice;
use super::resource::Resource;

#[path = "rpc_stream_group.rs"]
pub(super) mod group;
use super::rpc::add;
use super::Node;
use crate::control::{rpc, Router, RpcError};
use crate::snapshot::SnapshotDevice;
use crate::stream::restore::{restore_to_device, RestoreOptions};
use crate::stream::store::{open_store, AnyStore, ObjectStore, StoreUrl};
use crate::stream::upload::{stream_device, Location, StreamOptions};
use crate::stream::{ChangedChunks, Compression, StreamError};
use crate::volume::disk::Disk;
use crate::volume::BlockDevice;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamParams {
    resource: String,
    snapshot: String,
    to: String,
    parent: Option<String>,
    chunk_size: Option<u64>,
    object_size: Option<u64>,
    parallelism: Option<usize>,
    compression: Option<Compression>,
}

impl StreamParams {
    /// The options the caller may set on a prepared stream.
    fn apply_options(&self, opts: &mut StreamOptions) {
        if let Some(o) = self.object_size {
            opts.object_bytes = o;
        }
        if let Some(par) = self.parallelism {
            opts.parallelism = par;
        }
        opts.compression = self.compression.unwrap_or_default();
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreParams {
    from: String,
    resource: String,
    parallelism: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobParams {
    job: String,
}

fn stream_err(e: StreamError) -> RpcError {
    match e {
        StreamError::Config(_) | StreamError::SnapshotExists(_) => {
            RpcError::invalid_params(e.to_string())
        }
        _ => RpcError::internal(e.to_string()),
    }
}

fn store_for(node: &Node, url: &StoreUrl) -> Result<Arc<AnyStore>, RpcError> {
    open_store(
        url,
        node.config.swift.clone(),
        &node.config.stream.vault_dir,
    )
    .map(Arc::new)
    .map_err(stream_err)
}

/// The newest older entry of `snapshot`'s chain whose manifest is already in the store.
async fn auto_parent(
    store: &AnyStore,
    loc: &Location,
    chain: &[(String, bool)],
    snapshot: &str,
) -> Result<Option<String>, RpcError> {
    let Some(pos) = chain.iter().position(|(n, _)| n == snapshot) else {
        return Ok(None);
    };
    for (name, _) in chain[..pos].iter().rev() {
        if store
            .head(&loc.container, &loc.manifest_object(name))
            .await
            .map_err(stream_err)?
            .is_some()
        {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

/// A stream of one snapshot, ready to run: what `stream.start` and the plans' schedule
/// (`daemon::schedule`) both need.
pub(super) struct PreparedStream {
    pub dev: SnapshotDevice<Disk>,
    pub changed: Option<ChangedChunks>,
    pub store: Arc<AnyStore>,
    pub loc: Location,
    pub opts: StreamOptions,
    pub parent: Option<String>,
}

impl PreparedStream {
    pub async fn run(
        self,
        progress: impl Fn(crate::stream::Progress) + Send + Sync,
    ) -> Result<crate::stream::Report, StreamError> {
        stream_device(
            &self.dev,
            self.changed.as_ref(),
            self.store.as_ref(),
            &self.loc,
            &self.opts,
            progress,
        )
        .await
    }
}

/// Prepare a stream of `snapshot` of `res` to `to`: the parent (given, or the newest older
/// one already at the location), and the chunks changed since it when it is in the chain.
pub(super) async fn prepare_stream(
    n: &Node,
    res: &Resource,
    snapshot: &str,
    to: &str,
    parent: Option<String>,
    chunk_bytes: Option<u64>,
) -> Result<PreparedStream, RpcError> {
    let url = StoreUrl::parse(to).map_err(stream_err)?;
    let store = store_for(n, &url)?;
    let vol = Volume {
        resource: res.name(),
        dev: res.device(),
        snapshot,
    };
    prepare_volume(n, vol, store, url.location(), parent, chunk_bytes).await
}

/// One volume's snapshot to stream (a resource's only volume, or one of a group's).
pub(super) struct Volume<'a> {
    resource: &'a str,
    dev: &'a ResourceDevice,
    snapshot: &'a str,
}

/// [`prepare_stream`] of one volume to `loc` in `store`.
async fn prepare_volume(
    n: &Node,
    vol: Volume<'_>,
    store: Arc<AnyStore>,
    loc: Location,
    parent: Option<String>,
    chunk_bytes: Option<u64>,
) -> Result<PreparedStream, RpcError> {
    let Volume {
        resource,
        dev,
        snapshot,
    } = vol;
    let snaps = dev.snapshots().clone();
    if !snaps.list().await.iter().any(|s| s.name == snapshot) {
        return Err(RpcError::invalid_params(format!(
            "resource {resource} has no snapshot {snapshot:?}"
        )));
    }
    let chain = snaps.chain().await;
    let parent = match parent {
        Some(parent) => Some(parent),
        None => auto_parent(&store, &loc, &chain, snapshot).await?,
    };
    let mut opts = StreamOptions::new(snapshot.to_owned());
    opts.chunk_bytes = chunk_bytes.unwrap_or(n.config.stream.chunk_bytes);
    opts.parallelism = n.config.stream.parallelism;
    opts.inflight_bytes = n.config.stream.inflight_bytes;
    opts.parent = parent.clone();
    opts.shaper = n.shaping.shaper.clone();
    let size = dev.size_bytes();
    // Change tracking since the parent, when the parent is in this resource's chain;
    // otherwise the stream compares chunk hashes with the parent chain in the store.
    let changed = match &parent {
        Some(par) if chain.iter().any(|(c, _)| c == par) => {
            let set = snaps
                .changed_between(par, snapshot)
                .await
                .map_err(|e| RpcError::invalid_params(e.to_string()))?;
            Some(ChangedChunks::from_block_bitmap(
                &set.bits,
                set.chunk_bytes,
                opts.chunk_bytes,
                size,
            ))
        }
        _ => None,
    };
    Ok(PreparedStream {
        dev: SnapshotDevice::new(snaps, snapshot),
        changed,
        store,
        loc,
        opts,
        parent,
    })
}

pub fn register(r: &mut Router, node: &Arc<Node>) {
    add(r, node, "stream.start", |n, params| async move {
        let p: StreamParams = rpc::params(params)?;
        let res = n
            .resource(&p.resource)
            .ok_or_else(|| RpcError::no_such_resource(&p.resource))?;
        if res.is_group() {
            return group::start_stream(&n, &res, p).await;
        }
        let mut prep =
            prepare_stream(&n, &res, &p.snapshot, &p.to, p.parent.clone(), p.chunk_size).await?;
        p.apply_options(&mut prep.opts);
        let parent = prep.parent.clone();
        let job = n
            .jobs
            .start("stream", &p.resource, move |progress| async move {
                prep.run(progress).await.map_err(|e| e.to_string())
            })?;
        Ok(json!({ "job": job, "parent": parent }))
    });
    add(r, node, "restore.start", |n, params| async move {
        let p: RestoreParams = rpc::params(params)?;
        let res = n
            .resource(&p.resource)
            .ok_or_else(|| RpcError::no_such_resource(&p.resource))?;
        if !res.device().writable_now() {
            return Err(RpcError::state_refused(format!(
                "resource {} is not writable here (Secondary?): restore on the Primary",
                p.resource
            )));
        }
        let url = StoreUrl::parse(&p.from).map_err(stream_err)?;
        let (loc, snapshot) = url.split_last().map_err(stream_err)?;
        let store = store_for(&n, &url)?;
        let opts = RestoreOptions {
            parallelism: p.parallelism.unwrap_or(n.config.stream.parallelism),
        };
        if res.is_group() {
            return group::start_restore(&n, &res, store, loc, snapshot, opts);
        }
        let dev = res.device().clone();
        let job = n
            .jobs
            .start("restore", &p.resource, move |progress| async move {
                restore_to_device(
                    store.as_ref(),
                    &loc,
                    &snapshot,
                    dev.as_ref(),
                    &opts,
                    progress,
                )
                .await
                .map_err(|e| e.to_string())
            })?;
        Ok(json!({ "job": job }))
    });
    add(r, node, "job.list", |n, _params: Value| async move {
        Ok(n.jobs.list())
    });
    add(r, node, "job.cancel", |n, params| async move {
        let p: JobParams = rpc::params(params)?;
        n.jobs.cancel(&p.job)?;
        Ok(json!({}))
    });
}
