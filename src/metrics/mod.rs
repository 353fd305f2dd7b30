//! Prometheus metrics: the exposition format and the HTTP endpoint (`[[node]] metrics-listen`).
//!
//! A scrape is a snapshot: the daemon gathers its state once per scrape into [`Family`]s
//! (`crate::daemon::metrics`, from the same sources as `drl status`), and this module writes
//! them in the Prometheus text format (0.0.4) with `prometheus-client`'s encoder, which does
//! the escaping and the `_total` / unit rules. Nothing is registered or updated on the data
//! path except the NBD latency histograms ([`histogram`]: atomics, no lock).
//!
//! The endpoint is a minimal HTTP/1.1 server: `GET /metrics` (or `/`), one request per
//! connection, request head bounded in bytes and time, connections bounded in count. It binds
//! only where the admin says (off by default): the metrics carry resource names and states,
//! nothing secret.
//!
//! Naming follows Prometheus' conventions: `drl_` prefix, base units (`_bytes`, `_seconds`,
//! `_ratio`), counters end in `_total`, and states are state sets as in drbd-reactor's exporter
//! (one sample per possible state, 1 for the current one, 0 for the others), so a query can
//! both select and alert on a state.

pub mod histogram;
mod server;

pub use server::{serve, MetricsError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use histogram::HistogramSnapshot;

/// Labels of one sample, in order.
pub type Labels = Vec<(&'static str, String)>;

/// One sample's value.
#[derive(Clone, Debug)]
pub enum Value {
    Int(i64),
    Float(f64),
    Histogram(HistogramSnapshot),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(i64::from(v))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// The name given without `_total`: the encoder appends it.
    Counter,
    Histogram,
}

/// One metric family: name (with `drl_` and the unit, without `_total`), help and samples.
#[derive(Clone, Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<(Labels, Value)>,
}

impl Family {
    pub fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    pub fn push(&mut self, labels: Labels, v: impl Into<Value>) {
        self.samples.push((labels, v.into()));
    }

    /// A state set: one sample per state in `all`, 1 for `current`, 0 for the others.
    /// `current` not in `all` still gets its sample (a state added later never disappears).
    pub fn state_set(&mut self, labels: &Labels, key: &'static str, all: &[&str], current: &str) {
        for s in all {
            let mut l = labels.clone();
            l.push((key, (*s).to_owned()));
            self.push(l, *s == current);
        }
        if !all.contains(&current) && !current.is_empty() {
            let mut l = labels.clone();
            l.push((key, current.to_owned()));
            self.push(l, true);
        }
    }
}

#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let t = match f.kind {
                Kind::Gauge => MetricType::Gauge,
                Kind::Counter => MetricType::Counter,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut m = encoder.encode_descriptor(f.name, f.help, None, t)?;
            for (labels, v) in &f.samples {
                let mut s = m.encode_family(labels)?;
                match (f.kind, v) {
                    (Kind::Counter, Value::Int(i)) => {
                        s.encode_counter::<Labels, _, f64>(&(u64::try_from(*i).unwrap_or(0)), None)?
                    }
                    (Kind::Counter, Value::Float(x)) => {
                        s.encode_counter::<Labels, _, f64>(x, None)?
                    }
                    (Kind::Gauge, Value::Int(i)) => s.encode_gauge(i)?,
                    (Kind::Gauge, Value::Float(x)) => s.encode_gauge(x)?,
                    (_, Value::Histogram(h)) => {
                        s.encode_histogram::<Labels>(h.sum_seconds, h.count, &h.buckets, None)?
                    }
                    // A histogram family with a plain value: a bug in the gatherer; skip it
                    // rather than write an invalid exposition.
                    (Kind::Histogram, _) => {}
                }
            }
        }
        Ok(())
    }
}

/// The families in the Prometheus text format.
pub fn render(families: Vec<Family>) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(Snapshot(families)));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_prometheus_text() {
        let mut role = Family::new("drl_resource_role", Kind::Gauge, "role (state set)");
        role.state_set(
            &vec![("resource", "r0".into())],
            "role",
            &["Primary", "Secondary"],
            "Primary",
        );
        let mut sent = Family::new("drl_replication_sent_bytes", Kind::Counter, "bytes sent");
        sent.push(vec![("resource", "r\"0".into())], 42u64);
        let h = histogram::LatencyHistogram::default();
        h.observe(std::time::Duration::from_micros(700));
        let mut lat = Family::new("drl_nbd_request_duration_seconds", Kind::Histogram, "lat");
        lat.push(vec![("op", "read".into())], Value::Histogram(h.snapshot()));
        let text = render(vec![role, sent, lat]);
        assert!(text.contains("# TYPE drl_resource_role gauge\n"), "{text}");
        assert!(
            text.contains("drl_resource_role{resource=\"r0\",role=\"Primary\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("drl_resource_role{resource=\"r0\",role=\"Secondary\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE drl_replication_sent_bytes_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("drl_replication_sent_bytes_total{resource=\"r\\\"0\"} 42\n"),
            "{text}"
        );
        assert!(
            text.contains("drl_nbd_request_duration_seconds_bucket{op=\"read\",le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("drl_nbd_request_duration_seconds_count{op=\"read\"} 1\n"),
            "{text}"
        );
    }
}
