//! The proxy's metrics, registered in a `prometheus-client` registry (see
//! `signpost_runtime::metrics`), kube-proxy's names alongside ours.

use std::time::Duration;

use signpost_runtime::metrics::{
    self, Counter, EncodeLabelSet, Family, Gauge, Histogram, Registry,
};

/// The kinds of ops, in the order of [`Metrics::ops`].
pub const OP_KINDS: [&str; 5] = [
    "add_service",
    "edit_service",
    "delete_service",
    "add_backend",
    "remove_backend",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

/// Sync latency, ops by kind, errors.
#[derive(Debug)]
pub struct Metrics {
    /// Full syncs applied.
    pub full_syncs: Counter,
    /// Partial syncs applied.
    pub partial_syncs: Counter,
    /// Virtual services rewritten by partial syncs.
    pub services_rewritten: Counter,
    /// Transactions the kernel rejected.
    pub errors: Counter,
    /// Objects skipped as invalid.
    pub invalid_objects: Counter,
    /// Virtual services the kernel refuses now (left out, the rest programmed).
    pub services_refused: Gauge,
    /// Watch errors (retried with backoff).
    pub watch_errors: Counter,
    /// Duration of the last sync in microseconds.
    pub last_sync_us: Gauge,
    /// Conntrack entries of stale UDP flows deleted (PXY-11).
    pub conntrack_deleted: Counter,
    /// Failed attempts to delete stale UDP flows.
    pub conntrack_errors: Counter,
    /// IPVS mode: ops applied, by kind (add/edit/delete service, add/remove backend).
    pub ops: [Counter; 5],
    /// One sync's duration (also as kube-proxy's `kubeproxy_sync_proxy_rules_duration_seconds`).
    pub sync_duration: Histogram,
    /// When the last sync was applied, seconds since the epoch (kube-proxy's
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds`).
    pub last_sync_timestamp: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let ops_family = Family::<Kind, Counter>::default();
        let m = Metrics {
            full_syncs: Counter::default(),
            partial_syncs: Counter::default(),
            services_rewritten: Counter::default(),
            errors: Counter::default(),
            invalid_objects: Counter::default(),
            services_refused: Gauge::default(),
            watch_errors: Counter::default(),
            last_sync_us: Gauge::default(),
            conntrack_deleted: Counter::default(),
            conntrack_errors: Counter::default(),
            ops: OP_KINDS.map(|kind| ops_family.get_or_create(&Kind { kind }).clone()),
            sync_duration: metrics::histogram(),
            last_sync_timestamp: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "signpost_proxy_full_syncs",
            "Full syncs applied",
            m.full_syncs.clone(),
        );
        r.register(
            "signpost_proxy_partial_syncs",
            "Partial syncs applied",
            m.partial_syncs.clone(),
        );
        r.register(
            "signpost_proxy_services_rewritten",
            "Virtual services rewritten by partial syncs",
            m.services_rewritten.clone(),
        );
        r.register(
            "signpost_proxy_errors",
            "Kernel transactions that failed",
            m.errors.clone(),
        );
        r.register(
            "signpost_proxy_conntrack_entries_deleted",
            "Conntrack entries of stale UDP flows deleted",
            m.conntrack_deleted.clone(),
        );
        r.register(
            "signpost_proxy_conntrack_errors",
            "Failed deletions of stale UDP flows",
            m.conntrack_errors.clone(),
        );
        r.register(
            "signpost_proxy_invalid_objects",
            "Objects skipped as invalid",
            m.invalid_objects.clone(),
        );
        r.register(
            "signpost_proxy_services_refused",
            "Virtual services the kernel refuses now; every other one is programmed",
            m.services_refused.clone(),
        );
        r.register(
            "signpost_proxy_watch_errors",
            "Watch errors, retried with backoff",
            m.watch_errors.clone(),
        );
        r.register(
            "signpost_proxy_last_sync_microseconds",
            "Duration of the last sync",
            m.last_sync_us.clone(),
        );
        r.register(
            "signpost_proxy_ops",
            "IPVS ops applied, by kind",
            ops_family,
        );
        r.register(
            "signpost_proxy_sync_duration_seconds",
            "Sync duration",
            m.sync_duration.clone(),
        );
        // kube-proxy's names, for dashboards and alerts written for it.
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "Sync duration (kube-proxy's name)",
            m.sync_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "When the last sync was applied (kube-proxy's name)",
            m.last_sync_timestamp.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures",
            "Kernel transactions that failed (kube-proxy's name; nft or netlink here)",
            m.errors.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

impl Metrics {
    /// Records one sync.
    pub fn observe_sync(&self, d: Duration) {
        self.last_sync_us
            .set(i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        metrics::observe(&self.sync_duration, d);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_sync_timestamp
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// The exposition.
    pub fn render(&self) -> String {
        metrics::render(&self.registry)
    }
}
