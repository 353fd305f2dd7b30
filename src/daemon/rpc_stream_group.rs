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

/// `stream.start` of a group: every volume's snapshot, then the group record.
pub(super) async fn start_stream(
    n: &Arc<Node>,
    res: &Arc<Resource>,
    p: StreamParams,
) -> Result<Value, RpcError> {
    let url = StoreUrl::parse(&p.to).map_err(stream_err)?;
    let store = store_for(n, &url)?;
    let loc = url.location();
    let devs = res.volume_devices();
    let mut preps = Vec::with_capacity(devs.len());
    for (v, dev) in devs.iter().enumerate() {
        let vol = Volume {
            resource: res.name(),
            dev,
            snapshot: &p.snapshot,
        };
        let vloc = volume_location(&loc, v);
        let mut prep =
            prepare_volume(n, vol, store.clone(), vloc, p.parent.clone(), p.chunk_size).await?;
        p.apply_options(&mut prep.opts);
        preps.push(prep);
    }
    let parent = preps[0].parent.clone();
    let record = GroupRecord {
        resource: res.name().to_owned(),
        snapshot: p.snapshot.clone(),
        volumes: devs.iter().map(|d| d.size_bytes()).collect(),
    };
    let record_name = record_object(&loc, &p.snapshot);
    let job = n
        .jobs
        .start("stream", &p.resource, move |progress| async move {
            let mut total = Report::default();
            for prep in preps {
                total.absorb(&prep.run(&progress).await.map_err(|e| e.to_string())?);
            }
            store
                .put(&loc.container, &record_name, record.to_bytes())
                .await
                .map_err(|e| format!("writing the group record {record_name}: {e}"))?;
            Ok(total)
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
