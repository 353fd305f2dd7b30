//! Operations keys: the metrics endpoint (`[[node]] metrics-listen`), the runtime's worker
//! threads (`[[node]] worker-threads`) and TLS on the replication link (`[tls] ca`, `[[node]] tls-cert` / `tls-key`, `[[resource]] tls`).
//!
//! Only presence and form are checked here; the certificate files are read and checked by
//! [`crate::repl::tls`] when the daemon starts (and again on a reload), so `drl check-config`
//! and a start both name a missing or unreadable file.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, RawConfig, RawNode};

/// `[tls]`: the certificate authority every node's certificate is checked against.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTls {
    /// PEM file with the CA certificate(s).
    pub ca: PathBuf,
}

pub use crate::repl::tls::TlsFiles;

type Invalid<'a> = &'a dyn Fn(String, String) -> ConfigError;

/// `metrics-listen` of this node: a TCP `IP:PORT` (no metrics endpoint when unset).
pub fn metrics_listen(me: &RawNode, invalid: Invalid) -> Result<Option<SocketAddr>, ConfigError> {
    match &me.metrics_listen {
        None => Ok(None),
        Some(s) => s.parse::<SocketAddr>().map(Some).map_err(|e| {
            invalid(
                format!("node.{}.metrics-listen", me.name),
                format!("{s:?} is not an IP:PORT address ({e})"),
            )
        }),
    }
}

/// `worker-threads` of this node: 1 to [`DAEMON_WORKER_THREADS_MAX`] (unset: the runtime's
/// default).
///
/// [`DAEMON_WORKER_THREADS_MAX`]: crate::limits::DAEMON_WORKER_THREADS_MAX
pub fn worker_threads(me: &RawNode, invalid: Invalid) -> Result<Option<usize>, ConfigError> {
    let max = crate::limits::DAEMON_WORKER_THREADS_MAX;
    match me.worker_threads {
        Some(n) if n == 0 || n > max => Err(invalid(
            format!("node.{}.worker-threads", me.name),
            format!("{n} is not between 1 and {max}"),
        )),
        n => Ok(n),
    }
}

/// This node's TLS files, when `[tls]` and the node's `tls-cert` and `tls-key` are all set.
pub fn tls_files(
    raw: &RawConfig,
    me: &RawNode,
    invalid: Invalid,
) -> Result<Option<TlsFiles>, ConfigError> {
    let key = |k: &str| format!("node.{}.{k}", me.name);
    for (p, k) in [(&me.tls_cert, "tls-cert"), (&me.tls_key, "tls-key")] {
        if let Some(p) = p {
            if !p.is_absolute() {
                return Err(invalid(
                    key(k),
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
    }
    if let Some(t) = &raw.tls {
        if !t.ca.is_absolute() {
            return Err(invalid(
                "tls.ca".into(),
                format!("{} is not an absolute path", t.ca.display()),
            ));
        }
    }
    match (&raw.tls, &me.tls_cert, &me.tls_key) {
        (Some(t), Some(c), Some(k)) => Ok(Some(TlsFiles {
            ca: t.ca.clone(),
            cert: c.clone(),
            key: k.clone(),
        })),
        (_, Some(_), None) => Err(invalid(
            key("tls-key"),
            "tls-cert is set but tls-key is not".into(),
        )),
        (_, None, Some(_)) => Err(invalid(
            key("tls-cert"),
            "tls-key is set but tls-cert is not".into(),
        )),
        _ => Ok(None),
    }
}

/// A replicated resource with `tls = true` needs this node's TLS files.
pub fn check_resource_tls(
    resource: &str,
    tls: bool,
    replicated: bool,
    files: Option<&TlsFiles>,
    node: &str,
    invalid: Invalid,
) -> Result<(), ConfigError> {
    if tls && replicated && files.is_none() {
        return Err(invalid(
            format!("resource.{resource}.tls"),
            format!(
                "tls = true needs [tls] ca and tls-cert and tls-key in the [[node]] section of {node:?}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{parse, validate, NodeConfig};
    use std::path::Path;

    /// The issue's TLS example, as written, on a two-node resource.
    const TLS: &str = r#"
[tls]
ca = "/etc/drl/ca.crt"

[[node]]
name = "site-a"
tls-cert = "/etc/drl/site-a.crt"     # CN or SAN = the node name
tls-key = "/etc/drl/site-a.key"
metrics-listen = "127.0.0.1:9942"

[[node]]
name = "site-b"

[[resource]]
name = "r0"
size = "256MiB"
secret = "s"
tls = true                           # a resource with tls refuses cleartext peers

[resource.on.site-a]
address = "127.0.0.1:7789"
disk = "/tmp/a.img"
meta = "/tmp/a.meta"

[resource.on.site-b]
address = "127.0.0.1:7790"
disk = "/tmp/b.img"
meta = "/tmp/b.meta"
"#;

    fn check(text: &str, node: &str) -> Result<NodeConfig, String> {
        let f = Path::new("t.toml");
        parse(f, text)
            .and_then(|r| validate(f, &r, node))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_example_works_as_written() {
        let c = check(TLS, "site-a").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9942".parse().unwrap()));
        let t = c.tls.unwrap();
        assert_eq!(t.ca, Path::new("/etc/drl/ca.crt"));
        assert_eq!(t.cert, Path::new("/etc/drl/site-a.crt"));
        assert!(c.resources[0].tls);
    }

    #[test]
    fn bad_ops_keys_are_refused_with_the_key() {
        // site-b has no certificate: its resource with tls = true cannot start.
        let e = check(TLS, "site-b").unwrap_err();
        assert!(
            e.contains("resource.r0.tls") && e.contains("\"site-b\""),
            "{e}"
        );
        let e = check(&TLS.replace("127.0.0.1:9942", "localhost"), "site-a").unwrap_err();
        assert!(e.contains("node.site-a.metrics-listen"), "{e}");
        let e = check(
            &TLS.replace("tls-key = \"/etc/drl/site-a.key\"", ""),
            "site-a",
        )
        .unwrap_err();
        assert!(e.contains("node.site-a.tls-key"), "{e}");
        let e = check(
            &TLS.replace("\"/etc/drl/site-a.crt\"", "\"site-a.crt\""),
            "site-a",
        )
        .unwrap_err();
        assert!(e.contains("not an absolute path"), "{e}");
        let e = check(&TLS.replace("tls = true ", "tls = \"yes\""), "site-a").unwrap_err();
        assert!(e.contains("tls"), "{e}");
        // Without `tls = true` the node's certificate is simply unused.
        let c = check(&TLS.replace("tls = true ", ""), "site-b").unwrap();
        assert!(!c.resources[0].tls && c.tls.is_none());
    }

    #[test]
    fn worker_threads_are_checked() {
        assert_eq!(check(TLS, "site-a").unwrap().worker_threads, None);
        let with = |n: &str| {
            TLS.replace(
                "metrics-listen = \"127.0.0.1:9942\"",
                &format!("metrics-listen = \"127.0.0.1:9942\"\nworker-threads = {n}"),
            )
        };
        assert_eq!(check(&with("2"), "site-a").unwrap().worker_threads, Some(2));
        for bad in ["0", "257"] {
            let e = check(&with(bad), "site-a").unwrap_err();
            assert!(
                e.contains("node.site-a.worker-threads") && e.contains("between 1 and 256"),
                "{e}"
            );
        }
        let e = check(&with("-1"), "site-a").unwrap_err();
        assert!(e.contains("worker-threads"), "{e}");
    }
}
