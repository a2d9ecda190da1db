//! Counters and a latency histogram, rendered in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS_MS: [u64; 10] = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000];

/// The controller's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Slice creates, updates and deletes that succeeded.
    pub writes: AtomicU64,
    /// Writes that lost an optimistic-concurrency race.
    pub conflicts: AtomicU64,
    /// Objects skipped because they could not be converted (EPS-10).
    pub invalid_objects: AtomicU64,
    /// Reconciles that failed for another reason.
    pub errors: AtomicU64,
    /// 1 while this replica holds the lease.
    pub leader: AtomicU64,
    sync_count: AtomicU64,
    sync_sum_us: AtomicU64,
    sync_buckets: [AtomicU64; BUCKETS_MS.len()],
}

impl Metrics {
    /// Records one reconcile's duration.
    pub fn observe_sync(&self, d: Duration) {
        self.sync_count.fetch_add(1, Ordering::Relaxed);
        self.sync_sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            if ms <= *le {
                self.sync_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        for (name, help, v) in [
            (
                "signpost_endpoints_writes_total",
                "EndpointSlice writes",
                g(&self.writes),
            ),
            (
                "signpost_endpoints_conflicts_total",
                "EndpointSlice write conflicts",
                g(&self.conflicts),
            ),
            (
                "signpost_endpoints_invalid_objects_total",
                "objects skipped as invalid",
                g(&self.invalid_objects),
            ),
            (
                "signpost_endpoints_errors_total",
                "failed reconciles",
                g(&self.errors),
            ),
            (
                "signpost_endpoints_leader",
                "1 while holding the lease",
                g(&self.leader),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {}\n{name} {v}",
                if name.ends_with("_total") {
                    "counter"
                } else {
                    "gauge"
                }
            );
        }
        let h = "signpost_endpoints_sync_duration_seconds";
        let _ = writeln!(out, "# HELP {h} reconcile duration\n# TYPE {h} histogram");
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{h}_bucket{{le=\"{}\"}} {}",
                *le as f64 / 1000.0,
                g(&self.sync_buckets[i])
            );
        }
        let _ = writeln!(out, "{h}_bucket{{le=\"+Inf\"}} {}", g(&self.sync_count));
        let _ = writeln!(out, "{h}_sum {}", g(&self.sync_sum_us) as f64 / 1e6);
        let _ = writeln!(out, "{h}_count {}", g(&self.sync_count));
        out
    }
}
