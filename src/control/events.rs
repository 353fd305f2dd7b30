//! The event bus: every part of the daemon publishes state changes here, and control-socket
//! subscribers (`drl events`, the orchestrator) receive them as they happen.
//!
//! The bus is a `tokio::sync::broadcast` channel holding at most
//! [`EVENTS_BUFFER_COUNT_MAX`](crate::limits::EVENTS_BUFFER_COUNT_MAX) events per subscriber.
//! Publishing never blocks and never fails: a subscriber that falls behind loses the oldest
//! events and is told how many it lost ([`Received::Lost`]), the way `drbdsetup events2` users
//! re-read the full state after a gap. The vocabulary (`change`/`create`/`destroy` of a
//! `resource`/`connection`/`peer-device`/`device`) follows DRBD's events2 so DRBD users can
//! read it; `progress` and `job` are drl's additions for resyncs, snapshots and streams.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::limits::EVENTS_BUFFER_COUNT_MAX;

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Change,
    Create,
    Destroy,
    Progress,
}

/// What kind of object it happened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectKind {
    Resource,
    Connection,
    PeerDevice,
    Device,
    Job,
    Snapshot,
    /// A site's health as this node's pingers see it (`[detect]`; name: the site).
    Site,
    /// A protection scope's lease in etcd and this node's fence (`[detect]`; name: the resource).
    Lease,
    /// A protection plan (name: the plan): its recovery or fail back (field `state`:
    /// `failover-armed`, `failing-over`, `failed-over`, `failover-error`, `failing-back`,
    /// `enabled`; `automatic` says whether the daemon or `drl dr` ran it), or its RPO alarm
    /// (field `rpo_alarm` true or false).
    Plan,
}

/// One state change. `name` is the resource the object belongs to (for a job, the job's
/// name); `fields` carries the rest (`role`, `disk`, `connection`, `percent`, `peer`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time of the change, milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    pub kind: EventKind,
    pub object: ObjectKind,
    pub name: String,
    /// The volume of a consistency group a `device` or `peer-device` event is about (DRBD's
    /// `volume:N`); absent for a one-volume resource and for the resource's own objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<u16>,
    #[serde(default)]
    pub fields: Map<String, Value>,
}

impl Event {
    /// An event stamped with the current time and no fields.
    pub fn new(kind: EventKind, object: ObjectKind, name: impl Into<String>) -> Self {
        let time_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Event {
            time_unix_ms,
            kind,
            object,
            name: name.into(),
            volume: None,
            fields: Map::new(),
        }
    }

    /// Name the group's volume the event is about (builder style).
    pub fn volume(mut self, volume: u16) -> Self {
        self.volume = Some(volume);
        self
    }

    /// Add one field (builder style): `Event::new(..).field("role", "Primary")`.
    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.to_string(), value.into());
        self
    }
}

/// Which events a subscriber wants. The empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Only events whose `name` is this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, event: &Event) -> bool {
        self.resource.as_ref().is_none_or(|r| *r == event.name)
    }
}

/// What a subscriber receives: an event, or the news that it fell behind and lost some.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Event(Event),
    Lost(u64),
}

/// The publish side. Cheap to clone; every part of the daemon keeps one.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus buffering [`EVENTS_BUFFER_COUNT_MAX`] events per subscriber.
    pub fn new() -> Self {
        Self::with_capacity(EVENTS_BUFFER_COUNT_MAX)
    }

    /// A bus with a different buffer (tests use a small one to provoke lag).
    pub fn with_capacity(events_max: usize) -> Self {
        let (tx, _) = broadcast::channel(events_max.max(1));
        EventBus { tx }
    }

    /// Hand the event to every current subscriber. Never blocks; without subscribers the
    /// event is dropped.
    pub fn publish(&self, event: Event) {
        // An error only means nobody is subscribed, which is fine.
        let _ = self.tx.send(event);
    }

    /// Receive every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// One subscriber's view of the bus.
pub struct Subscription {
    rx: broadcast::Receiver<Event>,
}

impl Subscription {
    /// The next event, or how many were lost since the last call. `None` once every
    /// [`EventBus`] handle is gone. Cancel safe (it can sit in a `select!`).
    pub async fn recv(&mut self) -> Option<Received> {
        match self.rx.recv().await {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::RecvError::Lagged(lost)) => Some(Received::Lost(lost)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn subscribers_get_events_in_order_and_lagging_ones_learn_how_many_they_lost() {
        let bus = EventBus::with_capacity(4);
        let mut sub = bus.subscribe();
        for i in 0..10u64 {
            bus.publish(Event::new(EventKind::Change, ObjectKind::Resource, "r0").field("seq", i));
        }
        assert_eq!(sub.recv().await, Some(Received::Lost(6)));
        for i in 6..10u64 {
            match sub.recv().await {
                Some(Received::Event(e)) => assert_eq!(e.fields["seq"], json!(i)),
                other => panic!("expected event {i}, got {other:?}"),
            }
        }
    }

    #[test]
    fn events_serialize_with_events2_vocabulary() {
        let e = Event::new(EventKind::Change, ObjectKind::PeerDevice, "r0")
            .field("replication", "SyncSource");
        let v = serde_json::to_value(&e).expect("serialize");
        assert_eq!(v["kind"], json!("change"));
        assert_eq!(v["object"], json!("peer-device"));
        assert_eq!(v["fields"]["replication"], json!("SyncSource"));
        assert!(v["time_unix_ms"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000));
        // A one-volume resource's events have no volume; a group's name theirs.
        assert!(v.get("volume").is_none(), "{v}");
        let g = serde_json::to_value(e.volume(1)).expect("serialize");
        assert_eq!(g["volume"], json!(1));
        let back: Event = serde_json::from_value(g).expect("deserialize");
        assert_eq!(back.volume, Some(1));
    }

    #[test]
    fn the_filter_matches_by_resource_name() {
        let e = Event::new(EventKind::Create, ObjectKind::Device, "r1");
        assert!(EventFilter::default().matches(&e));
        assert!(EventFilter {
            resource: Some("r1".into())
        }
        .matches(&e));
        assert!(!EventFilter {
            resource: Some("r0".into())
        }
        .matches(&e));
    }
}
