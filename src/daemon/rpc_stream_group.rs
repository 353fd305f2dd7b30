//! Streams and restores of a consistency group (issue 15): the volumes stay together.
//!
//! The layout in the store (a stream per volume at `L/volume-v`, the group record written last)
//! and the record's check are `stream::group`'s, shared with the restore into files. The
//! volumes' snapshots were cut at one point in time (`Resource::snapshot_create`), so the
//! restored volumes together are the group at that point.

use serde_json::json;

use super::*;
use crate::stream::group::{record_object, volume_location, GroupRecord};
use crate::stream::Report;

/// A group stream ready to run: every volume's stream, then the record.
pub(crate) struct PreparedGroupStream {
    preps: Vec<PreparedStream>,
    store: Arc<AnyStore>,
    loc: Location,
    record_name: String,
    record: GroupRecord,
    /// Volume 0's parent (the group's volumes share their snapshot names).
    pub parent: Option<String>,
}

impl PreparedGroupStream {
    /// Stream every volume, one after another, then write the group record.
    pub async fn run(
        self,
        progress: impl Fn(crate::stream::Progress) + Send + Sync,
    ) -> Result<Report, String> {
        let mut total = Report::default();
        for prep in self.preps {
            total.absorb(&prep.run(&progress).await.map_err(|e| e.to_string())?);
        }
        self.store
            .put(
                &self.loc.container,
                &self.record_name,
                self.record.to_bytes(),
            )
            .await
            .map_err(|e| format!("writing the group record {}: {e}", self.record_name))?;
        Ok(total)
    }
}

/// Prepare the stream of group snapshot `snapshot` of `res` to `to` (what `stream.start` of a
/// group and the plans' schedule both run).
pub(crate) async fn prepare_group_stream(
    n: &Node,
    res: &Resource,
    snapshot: &str,
    to: &str,
    parent: Option<String>,
    chunk_bytes: Option<u64>,
) -> Result<PreparedGroupStream, RpcError> {
    let url = StoreUrl::parse(to).map_err(stream_err)?;
    let store = store_for(n, &url)?;
    let loc = url.location();
    let devs = res.volume_devices();
    let mut preps = Vec::with_capacity(devs.len());
    for (v, dev) in devs.iter().enumerate() {
        let vol = Volume {
            resource: res.name(),
            dev,
            snapshot,
        };
        let vloc = volume_location(&loc, v);
        preps.push(prepare_volume(n, vol, store.clone(), vloc, parent.clone(), chunk_bytes).await?);
    }
    Ok(PreparedGroupStream {
        parent: preps[0].parent.clone(),
        preps,
        store,
        record_name: record_object(&loc, snapshot),
        record: GroupRecord {
            resource: res.name().to_owned(),
            snapshot: snapshot.to_owned(),
            volumes: devs.iter().map(|d| d.size_bytes()).collect(),
        },
        loc,
    })
}

/// `stream.start` of a group: every volume's snapshot, then the group record.
pub(super) async fn start_stream(
    n: &Arc<Node>,
    res: &Arc<Resource>,
    p: StreamParams,
) -> Result<Value, RpcError> {
    let mut prep =
        prepare_group_stream(n, res, &p.snapshot, &p.to, p.parent.clone(), p.chunk_size).await?;
    for v in &mut prep.preps {
        p.apply_options(&mut v.opts);
    }
    let parent = prep.parent.clone();
    let job = n
        .jobs
        .start("stream", &p.resource, move |progress| async move {
            prep.run(progress).await
        })?;
    Ok(json!({ "job": job, "parent": parent }))
}

/// `restore.start` of a group from `loc`/`snapshot`: the group record checked first, then
/// every volume restored into its device.
pub(super) fn start_restore(
    n: &Arc<Node>,
    res: &Arc<Resource>,
    store: Arc<AnyStore>,
    loc: Location,
    snapshot: String,
    opts: RestoreOptions,
) -> Result<Value, RpcError> {
    let devs = res.volume_devices();
    let name = res.name().to_owned();
    let job = n
        .jobs
        .start("restore", res.name(), move |progress| async move {
            let record = GroupRecord::read(store.as_ref(), &loc, &snapshot).await?;
            if record.volumes.len() != devs.len() {
                return Err(format!(
                    "{}: a group of {} volumes, resource {name} has {}: nothing restored",
                    record_object(&loc, &snapshot),
                    record.volumes.len(),
                    devs.len()
                ));
            }
            let mut total = Report::default();
            for (v, dev) in devs.iter().enumerate() {
                let vloc = volume_location(&loc, v);
                let r = restore_to_device(
                    store.as_ref(),
                    &vloc,
                    &snapshot,
                    dev.as_ref(),
                    &opts,
                    &progress,
                )
                .await
                .map_err(|e| format!("volume {v}: {e}"))?;
                total.absorb(&r);
            }
            Ok(total)
        })?;
    Ok(json!({ "job": job }))
}
