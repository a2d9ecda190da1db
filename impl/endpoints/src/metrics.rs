//! The controller's metrics, registered in a `prometheus-client` registry
//! (see `signpost_runtime::metrics`).

use std::time::Duration;

use signpost_runtime::metrics::{self, Counter, Gauge, Histogram, Registry};

/// The controller's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Slice creates, updates and deletes that succeeded.
    pub writes: Counter,
    /// Writes that lost an optimistic-concurrency race.
    pub conflicts: Counter,
    /// Writes not made: past the renew deadline of the leader lease.
    pub fenced: Counter,
    /// Objects skipped because they could not be converted (EPS-10).
    pub invalid_objects: Counter,
    /// Reconciles that failed for another reason.
    pub errors: Counter,
    /// Watch errors (retried with backoff).
    pub watch_errors: Counter,
    /// 1 while this replica holds the lease.
    pub leader: Gauge,
    /// Services whose reconcile waits for the slice cache to show our own
    /// writes (PROTO-4); one that stays here is stuck.
    pub waiting_on_cache: Gauge,
    /// The longest such wait now, in seconds.
    pub longest_wait_seconds: Gauge,
    /// One reconcile's duration.
    pub sync_duration: Histogram,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            writes: Counter::default(),
            conflicts: Counter::default(),
            fenced: Counter::default(),
            invalid_objects: Counter::default(),
            errors: Counter::default(),
            watch_errors: Counter::default(),
            leader: Gauge::default(),
            waiting_on_cache: Gauge::default(),
            longest_wait_seconds: Gauge::default(),
            sync_duration: metrics::histogram(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "signpost_endpoints_writes",
            "EndpointSlice writes",
            m.writes.clone(),
        );
        r.register(
            "signpost_endpoints_conflicts",
            "EndpointSlice write conflicts",
            m.conflicts.clone(),
        );
        r.register(
            "signpost_endpoints_fenced_writes",
            "Writes not made because this replica was past its lease's renew deadline",
            m.fenced.clone(),
        );
        r.register(
            "signpost_endpoints_invalid_objects",
            "Objects skipped as invalid",
            m.invalid_objects.clone(),
        );
        r.register(
            "signpost_endpoints_errors",
            "Failed reconciles",
            m.errors.clone(),
        );
        r.register(
            "signpost_endpoints_watch_errors",
            "Watch errors, retried with backoff",
            m.watch_errors.clone(),
        );
        r.register(
            "signpost_endpoints_leader",
            "1 while holding the lease",
            m.leader.clone(),
        );
        r.register(
            "signpost_endpoints_services_waiting_on_cache",
            "Services waiting for the slice cache to show this controller's writes",
            m.waiting_on_cache.clone(),
        );
        r.register(
            "signpost_endpoints_longest_cache_wait_seconds",
            "The longest current wait for the slice cache, whole seconds",
            m.longest_wait_seconds.clone(),
        );
        r.register(
            "signpost_endpoints_sync_duration_seconds",
            "Reconcile duration",
            m.sync_duration.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Records one reconcile's duration.
    pub fn observe_sync(&self, d: Duration) {
        metrics::observe(&self.sync_duration, d);
    }

    /// The exposition.
    pub fn render(&self) -> String {
        metrics::render(&self.registry)
    }
}
