//! The proxy's metrics in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000];

/// The kinds of ops, in the order of [`Metrics::ops`].
pub const OP_KINDS: [&str; 5] = [
    "add_service",
    "edit_service",
    "delete_service",
    "add_backend",
    "remove_backend",
];

/// Sync latency, ops by kind, errors.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Full syncs applied.
    pub full_syncs: AtomicU64,
    /// Partial syncs applied.
    pub partial_syncs: AtomicU64,
    /// Virtual services rewritten by partial syncs.
    pub services_rewritten: AtomicU64,
    /// Transactions the kernel rejected.
    pub errors: AtomicU64,
    /// Objects skipped as invalid.
    pub invalid_objects: AtomicU64,
    /// Duration of the last sync in microseconds.
    pub last_sync_us: AtomicU64,
    /// Conntrack entries of stale UDP flows deleted (PXY-11).
    pub conntrack_deleted: AtomicU64,
    /// Failed attempts to delete stale UDP flows.
    pub conntrack_errors: AtomicU64,
    /// IPVS mode: ops applied, by kind (add/edit/delete service, add/remove backend).
    pub ops: [AtomicU64; 5],
    sync_count: AtomicU64,
    sync_sum_us: AtomicU64,
    sync_buckets: [AtomicU64; BUCKETS_MS.len()],
}

impl Metrics {
    /// Records one sync.
    pub fn observe_sync(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.last_sync_us.store(us, Ordering::Relaxed);
        self.sync_count.fetch_add(1, Ordering::Relaxed);
        self.sync_sum_us.fetch_add(us, Ordering::Relaxed);
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            if us <= le * 1000 {
                self.sync_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The Prometheus exposition.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        for (name, v) in [
            ("signpost_proxy_full_syncs_total", g(&self.full_syncs)),
            ("signpost_proxy_partial_syncs_total", g(&self.partial_syncs)),
            (
                "signpost_proxy_services_rewritten_total",
                g(&self.services_rewritten),
            ),
            ("signpost_proxy_errors_total", g(&self.errors)),
            (
                "signpost_proxy_conntrack_entries_deleted_total",
                g(&self.conntrack_deleted),
            ),
            (
                "signpost_proxy_conntrack_errors_total",
                g(&self.conntrack_errors),
            ),
            (
                "signpost_proxy_invalid_objects_total",
                g(&self.invalid_objects),
            ),
            (
                "signpost_proxy_last_sync_microseconds",
                g(&self.last_sync_us),
            ),
        ] {
            let _ = writeln!(
                out,
                "# TYPE {name} {}\n{name} {v}",
                if name.ends_with("_total") {
                    "counter"
                } else {
                    "gauge"
                }
            );
        }
        let ops = "signpost_proxy_ops_total";
        let _ = writeln!(out, "# TYPE {ops} counter");
        for (kind, n) in OP_KINDS.iter().zip(&self.ops) {
            let _ = writeln!(out, "{ops}{{kind=\"{kind}\"}} {}", g(n));
        }
        let h = "signpost_proxy_sync_duration_seconds";
        let _ = writeln!(out, "# TYPE {h} histogram");
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{h}_bucket{{le=\"{}\"}} {}",
                *le as f64 / 1000.0,
                g(&self.sync_buckets[i])
            );
        }
        let _ = writeln!(
            out,
            "{h}_bucket{{le=\"+Inf\"}} {}\n{h}_sum {}\n{h}_count {}",
            g(&self.sync_count),
            g(&self.sync_sum_us) as f64 / 1e6,
            g(&self.sync_count)
        );
        out
    }
}
