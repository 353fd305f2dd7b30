//! Streams and restores of a consistency group (issue 15): the volumes stay together.
//!
//! A group's snapshot `S` streamed to location `L` is one stream per volume, volume `v` at
//! `L/volume-v` (its own manifest and chunks, incremental against its own parent, as any
//! stream), one after another in one job, and then the group record `L/S/group.json`: the
//! resource, the snapshot and every volume's size. The record is written last, so its presence
//! says every volume's stream completed; a restore of a group reads it first and refuses a
//! location without one (an interrupted group stream, or a one-volume stream), or one whose
//! volumes differ from the resource's, before it writes anything. The volumes' snapshots were
//! cut at one point in time (`Resource::snapshot_create`), so the restored volumes together are
//! the group at that point.

use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::limits::GROUP_RECORD_BYTES_MAX;
use crate::stream::Report;

/// Where volume `v` of a group streams under `loc`.
fn volume_location(loc: &Location, v: usize) -> Location {
    Location::new(loc.container.clone(), loc.join(&format!("volume-{v}")))
}

/// The group record of `snapshot` under `loc`.
fn record_object(loc: &Location, snapshot: &str) -> String {
    loc.join(&format!("{snapshot}/group.json"))
}

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
    let record = json!({
        "resource": res.name(),
        "snapshot": p.snapshot,
        "volumes": devs.iter().map(|d| d.size_bytes()).collect::<Vec<_>>(),
    });
    let record_name = record_object(&loc, &p.snapshot);
    let job = n
        .jobs
        .start("stream", &p.resource, move |progress| async move {
            let mut total = Report::default();
            for prep in preps {
                total.absorb(&prep.run(&progress).await.map_err(|e| e.to_string())?);
            }
            store
                .put(
                    &loc.container,
                    &record_name,
                    Bytes::from(record.to_string()),
                )
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
    let job = n.jobs.start("restore", res.name(), move |progress| async move {
        let record_name = record_object(&loc, &snapshot);
        let text = store
            .get(&loc.container, &record_name, GROUP_RECORD_BYTES_MAX)
            .await
            .map_err(|e| {
                format!("{record_name}: no group record ({e}): not a complete stream of a consistency group, nothing restored")
            })?;
        let record: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{record_name}: not a group record: {e}"))?;
        let sizes: Vec<u64> = record["volumes"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        if sizes.len() != devs.len() {
            return Err(format!(
                "{record_name}: a group of {} volumes, resource {name} has {}: nothing restored",
                sizes.len(),
                devs.len()
            ));
        }
        let mut total = Report::default();
        for (v, dev) in devs.iter().enumerate() {
            let vloc = volume_location(&loc, v);
            let r = restore_to_device(store.as_ref(), &vloc, &snapshot, dev.as_ref(), &opts, &progress)
                .await
                .map_err(|e| format!("volume {v}: {e}"))?;
            total.absorb(&r);
        }
        Ok(total)
    })?;
    Ok(json!({ "job": job }))
}
