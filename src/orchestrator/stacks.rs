//! Heat stacks as the flows need them: create one idempotently (looked up by name first; a
//! `*_FAILED` one from an earlier run is deleted and created again), wait for
//! `CREATE_COMPLETE` (a `*_FAILED` status is an error with Heat's reason), delete one and wait
//! until it is gone. Recovery creates the workload's stack at the backup site; fail back
//! deletes it there and creates the workload's stack at the primary site.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::openstack::{Cloud, Stack};
use super::OrchError;
use crate::limits::*;

/// The stack `name`: the existing one (not failed), or a new one from `tpl` with `params`.
/// Returns its ID.
pub async fn ensure(
    cloud: &Cloud,
    name: &str,
    tpl: &Value,
    params: &BTreeMap<String, String>,
    say: &(dyn Fn(&str) + Sync),
) -> Result<String, OrchError> {
    match cloud.find_stack(name).await? {
        Some(s) if s.stack_status.ends_with("_FAILED") => {
            say(&format!(
                "stack {name} ({}) is {} from an earlier run: deleting it before creating it again",
                s.id, s.stack_status
            ));
            delete(cloud, name, &s.id).await?;
        }
        Some(s) => {
            say(&format!(
                "stack {name} exists ({}, {})",
                s.id, s.stack_status
            ));
            return Ok(s.id);
        }
        None => {}
    }
    say(&format!("create stack {name} with parameters {params:?}"));
    cloud.create_stack(name, tpl, params).await
}

/// Delete the stack and wait until Heat no longer lists it (or lists it DELETE_COMPLETE).
pub async fn delete(cloud: &Cloud, name: &str, id: &str) -> Result<(), OrchError> {
    cloud.delete_stack(name, id).await?;
    let t0 = Instant::now();
    while cloud
        .find_stack(name)
        .await?
        .is_some_and(|s| s.stack_status != "DELETE_COMPLETE")
    {
        if t0.elapsed() > Duration::from_millis(DR_STACK_TIMEOUT_MS) {
            return Err(OrchError::Timeout(format!(
                "stack {name} not deleted after {} s",
                DR_STACK_TIMEOUT_MS / 1000
            )));
        }
        tokio::time::sleep(Duration::from_millis(DR_POLL_INTERVAL_MS)).await;
    }
    Ok(())
}

/// Wait for `CREATE_COMPLETE`; `*_FAILED` is [`OrchError::Stack`] with Heat's reason.
pub async fn wait_complete(cloud: &Cloud, name: &str, id: &str) -> Result<Stack, OrchError> {
    let t0 = Instant::now();
    loop {
        let s = cloud.show_stack(name, id).await?;
        match s.stack_status.as_str() {
            "CREATE_COMPLETE" | "ADOPT_COMPLETE" => return Ok(s),
            st if st.ends_with("_FAILED") => {
                return Err(OrchError::Stack {
                    stack: name.into(),
                    id: id.into(),
                    status: st.into(),
                    reason: s.stack_status_reason.clone().unwrap_or_default(),
                })
            }
            _ => {}
        }
        if t0.elapsed() > Duration::from_millis(DR_STACK_TIMEOUT_MS) {
            return Err(OrchError::Timeout(format!(
                "stack {name} still {} after {} s",
                s.stack_status,
                DR_STACK_TIMEOUT_MS / 1000
            )));
        }
        tokio::time::sleep(Duration::from_millis(DR_POLL_INTERVAL_MS)).await;
    }
}
