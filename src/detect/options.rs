//! The options of site-failure detection (`[detect]`): the config maps TOML onto these types
//! (`config::detect`), detection owns them.

use std::net::SocketAddr;

use crate::limits;
use crate::secret::Secret;

/// DRBD's `on-no-quorum`: what a Primary that cannot renew its lease does with writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnNoQuorum {
    /// Hold them (the client waits) until the lease is renewed or the node is demoted.
    SuspendIo,
    /// Fail them with EIO.
    IoError,
}

impl OnNoQuorum {
    pub fn as_str(self) -> &'static str {
        match self {
            OnNoQuorum::SuspendIo => "suspend-io",
            OnNoQuorum::IoError => "io-error",
        }
    }
}

/// One node that answers probes: an indicator of its site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectNode {
    pub node: String,
    pub site: String,
    pub listen: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct DetectConfig {
    pub cluster: String,
    pub etcd_endpoints: Vec<String>,
    pub probe_key: Secret,
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
    pub suspect_misses: u32,
    pub lease_ttl_ms: u64,
    pub on_no_quorum: OnNoQuorum,
    pub auto_promote: bool,
    /// This node's entry.
    pub me: DetectNode,
    /// Every node of `[detect.on]`, this one included.
    pub nodes: Vec<DetectNode>,
}

impl DetectConfig {
    /// The site of `node`, if it is listed.
    pub fn site_of(&self, node: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.node == node)
            .map(|n| n.site.as_str())
    }

    /// The fence margin for this TTL: the fixed margin plus the allowed clock drift.
    pub fn fence_margin_ms(&self) -> u64 {
        limits::DETECT_FENCE_MARGIN_MS
            + self.lease_ttl_ms * limits::DETECT_CLOCK_DRIFT_PPM / 1_000_000
    }
}
