//! `[detect]`: site-failure detection, leases in etcd and self-fencing (see `crate::detect`).
//! Without the table nothing of it runs: promotion stays the admin's (`drl primary --force`).
//!
//! ```toml
//! [detect]
//! cluster = "drl"                  # etcd keys live under /drl/<cluster>/
//! etcd = ["http://198.19.77.2:2379", "http://198.19.77.18:2379", "http://198.19.77.34:2379"]
//! probe-key = "..."                # HMAC key of probes; default: the first replicated resource's secret
//! probe-interval = "100ms"
//! probe-timeout = "100ms"
//! suspect-misses = 2               # consecutive misses of every indicator of a site: suspected
//! lease-ttl = "5s"
//! on-no-quorum = "suspend-io"      # or "io-error": what a Primary that lost its lease does with writes
//! auto-promote = true              # promote a resource once this node holds its key after a failure
//!
//! [detect.on.site-a]               # every node that answers probes (each is an indicator of its site)
//! listen = "198.19.77.2:7790"
//! site = "site-a"                  # default: the node's name
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

use super::units::DurationMs;
use super::{check_name, ConfigError, ResourceConfig};
use crate::limits;
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDetect {
    pub cluster: Option<String>,
    #[serde(default)]
    pub etcd: Vec<String>,
    pub probe_key: Option<String>,
    pub probe_interval: Option<DurationMs>,
    pub probe_timeout: Option<DurationMs>,
    pub suspect_misses: Option<u32>,
    pub lease_ttl: Option<DurationMs>,
    pub on_no_quorum: Option<String>,
    pub auto_promote: Option<bool>,
    #[serde(default)]
    pub on: BTreeMap<String, RawDetectOn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDetectOn {
    pub listen: String,
    pub site: Option<String>,
}

pub use crate::detect::options::{DetectConfig, DetectNode, OnNoQuorum};

pub(super) fn detect_config(
    raw: Option<&RawDetect>,
    node: &str,
    node_names: &std::collections::HashSet<&str>,
    resources: &[ResourceConfig],
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<Option<DetectConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let key = |k: &str| format!("detect.{k}");
    let cluster = raw.cluster.clone().unwrap_or_else(|| "drl".into());
    check_name(&cluster).map_err(|r| invalid(key("cluster"), r))?;
    if raw.etcd.is_empty() {
        return Err(invalid(
            key("etcd"),
            "list the etcd endpoints (one member per site and one at a witness site), e.g. [\"http://10.0.0.1:2379\"]".into(),
        ));
    }
    if raw.etcd.len() > limits::DETECT_ETCD_ENDPOINTS_COUNT_MAX {
        return Err(invalid(
            key("etcd"),
            format!(
                "{} endpoints: at most {}",
                raw.etcd.len(),
                limits::DETECT_ETCD_ENDPOINTS_COUNT_MAX
            ),
        ));
    }
    for e in &raw.etcd {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(invalid(key("etcd"), format!("{e:?} is not an http(s) URL")));
        }
    }
    let probe_key = match (
        &raw.probe_key,
        resources
            .iter()
            .find_map(|r| r.secret.as_ref().filter(|_| r.peer.is_some())),
    ) {
        (Some(k), _) if !k.is_empty() => k.clone(),
        (Some(_), _) => return Err(invalid(key("probe-key"), "must not be empty".into())),
        (None, Some(s)) => s.clone(),
        (None, None) => {
            return Err(invalid(
                key("probe-key"),
                "needed when no replicated resource has a secret to authenticate probes with"
                    .into(),
            ))
        }
    };
    let probe_interval_ms = raw
        .probe_interval
        .map_or(limits::DETECT_PROBE_INTERVAL_MS_DEFAULT, |d| d.0);
    if !(limits::DETECT_PROBE_INTERVAL_MS_MIN..=limits::DETECT_PROBE_INTERVAL_MS_MAX)
        .contains(&probe_interval_ms)
    {
        return Err(invalid(
            key("probe-interval"),
            format!(
                "{probe_interval_ms} ms: must be {} to {} ms",
                limits::DETECT_PROBE_INTERVAL_MS_MIN,
                limits::DETECT_PROBE_INTERVAL_MS_MAX
            ),
        ));
    }
    let probe_timeout_ms = raw
        .probe_timeout
        .map_or(limits::DETECT_PROBE_TIMEOUT_MS_DEFAULT, |d| d.0);
    if probe_timeout_ms == 0 || probe_timeout_ms > 10 * probe_interval_ms {
        return Err(invalid(
            key("probe-timeout"),
            format!("{probe_timeout_ms} ms: must be 1 ms to 10 probe intervals"),
        ));
    }
    let suspect_misses = raw
        .suspect_misses
        .unwrap_or(limits::DETECT_SUSPECT_MISSES_DEFAULT);
    if !(1..=100).contains(&suspect_misses) {
        return Err(invalid(
            key("suspect-misses"),
            format!("{suspect_misses}: must be 1 to 100"),
        ));
    }
    let lease_ttl_ms = raw
        .lease_ttl
        .map_or(limits::DETECT_LEASE_TTL_MS_DEFAULT, |d| d.0);
    if !(limits::DETECT_LEASE_TTL_MS_MIN..=limits::DETECT_LEASE_TTL_MS_MAX).contains(&lease_ttl_ms)
        || lease_ttl_ms % 1000 != 0
    {
        return Err(invalid(
            key("lease-ttl"),
            format!(
                "{lease_ttl_ms} ms: must be whole seconds (etcd's unit) from {} to {} s",
                limits::DETECT_LEASE_TTL_MS_MIN / 1000,
                limits::DETECT_LEASE_TTL_MS_MAX / 1000
            ),
        ));
    }
    let on_no_quorum = match raw.on_no_quorum.as_deref() {
        None | Some("suspend-io") => OnNoQuorum::SuspendIo,
        Some("io-error") => OnNoQuorum::IoError,
        Some(o) => {
            return Err(invalid(
                key("on-no-quorum"),
                format!("{o:?}: use \"suspend-io\" or \"io-error\""),
            ))
        }
    };
    let mut nodes = Vec::new();
    for (name, on) in &raw.on {
        let k = |f: &str| key(&format!("on.{name}.{f}"));
        if !node_names.contains(name.as_str()) {
            return Err(invalid(
                k("listen"),
                format!("node {name:?} is not listed in [[node]]"),
            ));
        }
        let listen: SocketAddr = on
            .listen
            .parse()
            .map_err(|e| invalid(k("listen"), format!("{:?} is not IP:PORT ({e})", on.listen)))?;
        let site = on.site.clone().unwrap_or_else(|| name.clone());
        check_name(&site).map_err(|r| invalid(k("site"), r))?;
        nodes.push(DetectNode {
            node: name.clone(),
            site,
            listen,
        });
    }
    if nodes.len() > limits::DETECT_INDICATORS_COUNT_MAX {
        return Err(invalid(
            key("on"),
            format!(
                "{} nodes: at most {}",
                nodes.len(),
                limits::DETECT_INDICATORS_COUNT_MAX
            ),
        ));
    }
    let Some(me) = nodes.iter().find(|n| n.node == node).cloned() else {
        return Err(invalid(
            key(&format!("on.{node}")),
            format!(
                "this node {node:?} has no [detect.on.{node}] section (its probe listen address)"
            ),
        ));
    };
    for r in resources.iter().filter(|r| r.peer.is_some()) {
        let peer = &r.peer.as_ref().map(|p| p.node.clone()).unwrap_or_default();
        match nodes.iter().find(|n| &n.node == peer) {
            None => {
                return Err(invalid(
                    key(&format!("on.{peer}")),
                    format!(
                    "resource {} replicates to {peer:?}, which has no [detect.on.{peer}] section",
                    r.name
                ),
                ))
            }
            Some(p) if p.site == me.site => {
                return Err(invalid(
                    key(&format!("on.{peer}.site")),
                    format!(
                        "resource {} replicates within site {:?}: detection protects across sites",
                        r.name, me.site
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(Some(DetectConfig {
        cluster,
        etcd_endpoints: raw.etcd.clone(),
        probe_key: Secret::new(probe_key),
        probe_interval_ms,
        probe_timeout_ms,
        suspect_misses,
        lease_ttl_ms,
        on_no_quorum,
        auto_promote: raw.auto_promote.unwrap_or(true),
        me,
        nodes,
    }))
}

#[cfg(test)]
mod tests {
    use super::OnNoQuorum;
    use crate::config::{parse, validate};
    use std::path::Path;

    fn cfg(detect: &str) -> String {
        format!(
            r#"[[node]]
name = "a"
[[node]]
name = "b"
[[resource]]
name = "r0"
size = "1MiB"
secret = "s3cret"
[resource.on.a]
address = "10.0.0.1:7789"
disk = "/d/a.img"
meta = "/d/a.meta"
[resource.on.b]
address = "10.0.0.2:7789"
disk = "/d/b.img"
meta = "/d/b.meta"
{detect}
"#
        )
    }

    fn load(detect: &str) -> Result<crate::config::NodeConfig, String> {
        let f = Path::new("drl.toml");
        let raw = parse(f, &cfg(detect)).map_err(|e| e.to_string())?;
        validate(f, &raw, "a").map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"[detect]
etcd = ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]
lease-ttl = "3s"
[detect.on.a]
listen = "10.0.0.1:7790"
site = "dc1"
[detect.on.b]
listen = "10.0.0.2:7790"
site = "dc2"
"#;

    #[test]
    fn absent_means_off_and_a_good_table_gets_defaults() {
        assert!(load("").unwrap().detect.is_none());
        let d = load(GOOD).unwrap().detect.unwrap();
        assert_eq!((d.me.site.as_str(), d.site_of("b")), ("dc1", Some("dc2")));
        assert_eq!(
            d.probe_key.expose(),
            "s3cret",
            "the resource secret by default"
        );
        assert_eq!(
            (d.probe_interval_ms, d.suspect_misses, d.lease_ttl_ms),
            (100, 2, 3000)
        );
        assert_eq!(d.on_no_quorum, OnNoQuorum::SuspendIo);
        assert!(d.auto_promote);
        assert_eq!(d.fence_margin_ms(), 503);
        assert!(
            !format!("{d:?}").contains("s3cret"),
            "the key never shows in Debug"
        );
    }

    #[test]
    fn bad_tables_are_refused_with_the_key() {
        let cases = [
            (GOOD.replace("etcd = [", "etcd = [] #"), "detect.etcd"),
            (GOOD.replace("3s", "2500ms"), "detect.lease-ttl"),
            (
                GOOD.replace("3s\"", "3s\"\non-no-quorum = \"panic\""),
                "detect.on-no-quorum",
            ),
            (
                GOOD.replace("site = \"dc2\"", "site = \"dc1\""),
                "detect.on.b.site",
            ),
            (
                GOOD.replace(
                    "[detect.on.b]\nlisten = \"10.0.0.2:7790\"\nsite = \"dc2\"\n",
                    "",
                ),
                "detect.on.b",
            ),
            (
                GOOD.replace("10.0.0.1:7790", "nowhere"),
                "detect.on.a.listen",
            ),
            (GOOD.replace("lease-ttl", "lease-tll"), "lease-tll"),
        ];
        for (text, key) in cases {
            let e = load(&text).expect_err(key);
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
