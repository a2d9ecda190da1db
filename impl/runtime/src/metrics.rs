//! Metrics through `prometheus-client`: components register counters,
//! gauges and histograms in a [`Registry`] and render it as OpenMetrics
//! text. Every histogram uses [`buckets`]: durations in seconds from
//! 100 µs to 5 min, so one dashboard reads all three components.

pub use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The one bucket convention, upper bounds in seconds.
pub const BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A duration histogram with [`BUCKETS`].
pub fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Records a duration in seconds.
pub fn observe(h: &Histogram, d: std::time::Duration) {
    h.observe(d.as_secs_f64());
}

/// The OpenMetrics text of a registry.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in
    // a metric's own encoding, and then the exposition is cut short.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sub_millisecond_observation_lands_in_its_own_bucket() {
        // The old endpoints histogram bucketed by whole milliseconds rounded
        // down, so 1.9 ms counted under le="0.001".
        let mut r = Registry::default();
        let h = histogram();
        r.register("t_duration_seconds", "test", h.clone());
        observe(&h, std::time::Duration::from_micros(1900));
        let text = render(&r);
        assert!(
            text.contains("t_duration_seconds_bucket{le=\"0.001\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("t_duration_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE t_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn counters_get_total_and_help() {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        r.register("t_writes", "writes done", c.clone());
        c.inc_by(3);
        let text = render(&r);
        assert!(text.contains("# HELP t_writes writes done."), "{text}");
        assert!(text.contains("t_writes_total 3"), "{text}");
    }
}
