//! A latency histogram for hot paths: fixed buckets of atomic counters, no lock.
//!
//! `prometheus-client`'s own `Histogram` takes a mutex per observation; the NBD front end
//! records every request, from many connection tasks at once, so it uses this instead: one
//! `fetch_add` on the bucket and one on the sum (both `Relaxed`). A scrape reads the buckets
//! one by one, so it may see an observation in the count and not yet in the sum (or the
//! reverse): Prometheus tolerates that, and nothing on the hot path waits for a scrape.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the buckets, in microseconds (the `+Inf` bucket is implicit): 50 us (a
/// page-cache hit) to 10 s (a stalled disk or a blocked replication buffer).
pub const LATENCY_BOUNDS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// Durations in microseconds, bucketed by [`LATENCY_BOUNDS_US`].
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Not cumulative: `buckets[i]` counts observations in (bound[i-1], bound[i]].
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

/// A copy of a [`LatencyHistogram`] for the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// Cumulative `(upper bound in seconds, count)`, the last one `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    /// Record one duration.
    #[inline]
    pub fn observe(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0u64;
        let mut buckets = Vec::with_capacity(BUCKETS);
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b.load(Relaxed);
            let le = LATENCY_BOUNDS_US
                .get(i)
                .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
            buckets.push((le, acc));
        }
        HistogramSnapshot {
            sum_seconds: self.sum_us.load(Relaxed) as f64 / 1e6,
            count: acc,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn observations_land_in_their_bucket_and_cumulate() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50)); // le 50us (bounds are inclusive)
        h.observe(Duration::from_micros(51)); // le 100us
        h.observe(Duration::from_millis(3)); // le 5ms
        h.observe(Duration::from_secs(60)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.00005, 1));
        assert_eq!(s.buckets[1], (0.0001, 2));
        assert_eq!(s.buckets[5].1, 2, "le 2.5ms: {:?}", s.buckets);
        assert_eq!(s.buckets[6], (0.005, 3));
        assert_eq!(s.buckets[BUCKETS - 2].1, 3);
        assert_eq!(s.buckets[BUCKETS - 1], (f64::INFINITY, 4));
        assert!(
            (s.sum_seconds - 60.003101).abs() < 1e-9,
            "{}",
            s.sum_seconds
        );
    }
}
