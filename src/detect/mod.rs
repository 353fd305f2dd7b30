//! Site-failure detection and safe promotion (`[detect]`; absent: nothing here runs and
//! promotion stays manual).
//!
//! Layout:
//! - `core`: the suspicion core, pure (probe sent / answered / time passed in; per indicator
//!   RTT and misses, per site alive / suspected / down out), tested on a fake clock;
//! - `probe`: the authenticated probe datagram and the responder's checks, pure;
//! - `pinger`: the tokio shell: one UDP socket answers probes and probes every other node;
//! - `etcd`: the etcd requests (one client per member, "require leader");
//! - `lease`: per protection scope (a replicated resource) the lease key, takeover, demotion;
//! - `fence`: the self-fencing gate in the resource's write path.
//!
//! Fast suspicion comes from the pingers; authority only from the lease in etcd, which needs a
//! majority of members (one per site and a witness): a cut between the two sites alone never
//! moves a key while the witness sees its holder. See ARCHITECTURE.md, "Site-failure
//! detection", for the timeline and the decisions.

pub mod core;
pub mod etcd;
pub mod fence;
pub mod lease;
pub mod options;
pub mod pinger;
pub mod probe;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::control::{Event, EventBus, EventKind, ObjectKind};
use crate::repl::replicator::Replicator;
use options::DetectConfig;

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("[detect] probe socket {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("[detect] etcd: {0}")]
    Etcd(#[from] etcd::EtcdError),
}

/// The running detection of one daemon.
pub struct Detect {
    cfg: Arc<DetectConfig>,
    probes: Arc<pinger::Probes>,
    etcd: Arc<etcd::Etcd>,
    events: EventBus,
    /// One per replicated resource that is up (`drl up` / `down` change the list).
    scopes: std::sync::Mutex<Vec<Arc<lease::Scope>>>,
}

impl Detect {
    /// Bind the probe socket, connect to etcd and start the tasks (in `tasks`, until
    /// `shutdown`); the daemon then adds a scope per replicated resource ([`Detect::add_scope`])
    /// before its export starts. An etcd that does
    /// not answer at start is logged and reported (`etcd-unreachable` events); the daemon runs
    /// on and nothing is promoted until it answers.
    pub async fn start(
        cfg: &DetectConfig,
        events: EventBus,
        tasks: &mut tokio::task::JoinSet<()>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Detect>, DetectError> {
        let cfg = Arc::new(cfg.clone());
        let probes = pinger::Probes::new(cfg.clone(), events.clone());
        let sock = probes.bind().await.map_err(|source| DetectError::Bind {
            addr: cfg.me.listen,
            source,
        })?;
        let etcd = Arc::new(etcd::Etcd::new(&cfg.etcd_endpoints).await?);
        let d = Arc::new(Detect {
            cfg: cfg.clone(),
            probes: probes.clone(),
            etcd: etcd.clone(),
            events: events.clone(),
            scopes: std::sync::Mutex::new(Vec::new()),
        });
        tasks.spawn(probes.clone().run(sock, shutdown.clone()));
        tasks.spawn(members_loop(etcd.clone(), events, shutdown));
        tracing::info!(site = %cfg.me.site, listen = %cfg.me.listen, etcd = ?cfg.etcd_endpoints, "detection running");
        Ok(d)
    }

    /// Protect a replicated resource (at start, or brought up later by `drl up` / `adjust`):
    /// `install` puts the scope's fence in front of the resource's writes before its lease
    /// task starts; the task runs until `stop`. A resource without a peer has no scope, so
    /// the daemon does not call this for it.
    pub fn add_scope(
        &self,
        repl: &Arc<Replicator>,
        stop: watch::Receiver<bool>,
        install: impl FnOnce(&Arc<lease::Scope>),
    ) {
        let s = lease::Scope::new(
            self.cfg.clone(),
            repl.clone(),
            self.etcd.clone(),
            self.probes.clone(),
            self.events.clone(),
        );
        install(&s);
        tokio::spawn(s.clone().run(stop));
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        scopes.retain(|x| x.resource != s.resource);
        scopes.push(s);
    }

    /// Forget the scope of a resource taken down (its lease task ended with the resource's
    /// tasks; the key was given back when it was demoted).
    pub fn remove_scope(&self, resource: &str) {
        self.scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.resource != resource);
    }

    fn scopes(&self) -> Vec<Arc<lease::Scope>> {
        self.scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The scope of a resource (None: not replicated, so not protected).
    pub fn scope(&self, resource: &str) -> Option<Arc<lease::Scope>> {
        self.scopes().into_iter().find(|s| s.resource == resource)
    }

    /// `drl detect status`.
    pub fn status_json(&self) -> Value {
        let mut v = self.probes.status_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("node".into(), json!(self.cfg.me.node));
            o.insert("site".into(), json!(self.cfg.me.site));
            o.insert("cluster".into(), json!(self.cfg.cluster));
            o.insert("lease_ttl_ms".into(), json!(self.cfg.lease_ttl_ms));
            o.insert("fence_margin_ms".into(), json!(self.cfg.fence_margin_ms()));
            o.insert("on_no_quorum".into(), json!(self.cfg.on_no_quorum.as_str()));
            o.insert("auto_promote".into(), json!(self.cfg.auto_promote));
            let scopes: Vec<Value> = self
                .scopes()
                .iter()
                .map(|s| serde_json::to_value(s.view()).unwrap_or_default())
                .collect();
            o.insert("scopes".into(), json!(scopes));
            o.insert("etcd".into(), json!(self.etcd.seen()));
        }
        v
    }
}

/// Refresh which etcd members answer (for `status`), and say when none does.
async fn members_loop(
    etcd: Arc<etcd::Etcd>,
    events: EventBus,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reachable = None;
    loop {
        etcd.refresh_members().await;
        let now = etcd.seen().iter().any(|e| e.reachable);
        if reachable != Some(now) {
            if !now {
                tracing::error!(endpoints = ?etcd.seen().iter().map(|e| e.url.clone()).collect::<Vec<_>>(),
                    "no etcd member with a quorum answers: no lease can be taken or renewed, no promotion");
            }
            events.publish(
                Event::new(EventKind::Change, ObjectKind::Site, "etcd").field("reachable", now),
            );
            reachable = Some(now);
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(2_000)) => {}
        }
    }
}
