//! The DNS server's metrics in the Prometheus text format: queries by type
//! and response code, answer latency, DNS programming latency (a change seen
//! on a watch → the first answer that carries it), forwarding and loops.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The query types counted by name; everything else is `other`.
pub const QTYPES: [&str; 11] = [
    "A", "AAAA", "CNAME", "SRV", "PTR", "TXT", "SOA", "NS", "ANY", "AXFR", "other",
];
/// The response codes counted by name; everything else is `other`.
pub const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other",
];

/// A latency histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds_us: &'static [u64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds_us: &'static [u64]) -> Self {
        Histogram {
            bounds_us,
            buckets: bounds_us.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        // Only the first bucket that holds it; cumulative sums are made when rendering.
        if let Some(i) = self.bounds_us.iter().position(|b| us <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in self.bounds_us.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *b as f64 / 1e6
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const ANSWER_US: [u64; 12] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000, 1_000_000,
];
const PROGRAMMING_US: [u64; 12] = [
    1_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    5_000_000,
    30_000_000,
    300_000_000,
];

/// Everything the DNS server counts.
#[derive(Debug)]
pub struct Metrics {
    queries: [[AtomicU64; RCODES.len()]; QTYPES.len()],
    /// Request received → response sent.
    pub answer_latency: Histogram,
    /// Object change seen → first answer carrying it.
    pub programming_latency: Histogram,
    /// Queries forwarded upstream.
    pub forwarded: AtomicU64,
    /// Forwards that failed (timeout, refused connection, bad reply).
    pub forward_errors: AtomicU64,
    /// Forwarding loops detected (a loop probe of ours came back to us).
    pub forward_loops: AtomicU64,
    /// Forwards refused because the bound on forwards in flight was reached.
    pub forward_busy: AtomicU64,
    /// Outside names answered from the cache.
    pub cache_hits: AtomicU64,
    /// Outside names not in the cache (asked upstream).
    pub cache_misses: AtomicU64,
    /// Requests that could not be parsed (answered FORMERR or dropped).
    pub malformed: AtomicU64,
    /// Objects skipped because they could not be read.
    pub invalid_objects: AtomicU64,
    /// Watch errors (retried with backoff).
    pub watch_errors: AtomicU64,
    /// Names in the zone.
    pub zone_names: AtomicU64,
    /// 1 once the first full sync is done.
    pub synced: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            queries: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            answer_latency: Histogram::new(&ANSWER_US),
            programming_latency: Histogram::new(&PROGRAMMING_US),
            forwarded: AtomicU64::new(0),
            forward_errors: AtomicU64::new(0),
            forward_loops: AtomicU64::new(0),
            forward_busy: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            invalid_objects: AtomicU64::new(0),
            watch_errors: AtomicU64::new(0),
            zone_names: AtomicU64::new(0),
            synced: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one answered query.
    pub fn count_query(&self, qtype: &str, rcode: &str) {
        let t = QTYPES
            .iter()
            .position(|x| *x == qtype)
            .unwrap_or(QTYPES.len() - 1);
        let r = RCODES
            .iter()
            .position(|x| *x == rcode)
            .unwrap_or(RCODES.len() - 1);
        self.queries[t][r].fetch_add(1, Ordering::Relaxed);
    }

    /// Queries answered with this type and response code.
    pub fn queries(&self, qtype: &str, rcode: &str) -> u64 {
        match (
            QTYPES.iter().position(|x| *x == qtype),
            RCODES.iter().position(|x| *x == rcode),
        ) {
            (Some(t), Some(r)) => self.queries[t][r].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// The Prometheus exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let name = "signpost_dns_queries_total";
        let _ = writeln!(
            out,
            "# HELP {name} Queries answered, by type and response code.\n# TYPE {name} counter"
        );
        for (t, row) in QTYPES.iter().zip(&self.queries) {
            for (r, n) in RCODES.iter().zip(row) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(out, "{name}{{type=\"{t}\",rcode=\"{r}\"}} {n}");
                }
            }
        }
        self.answer_latency.render(
            &mut out,
            "signpost_dns_request_duration_seconds",
            "Request received to response sent.",
        );
        self.programming_latency.render(
            &mut out,
            "signpost_dns_programming_duration_seconds",
            "Object change seen on a watch to the first answer carrying it.",
        );
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, v, help) in [
            (
                "signpost_dns_forwarded_total",
                g(&self.forwarded),
                "Queries forwarded upstream.",
            ),
            (
                "signpost_dns_forward_errors_total",
                g(&self.forward_errors),
                "Forwards that failed.",
            ),
            (
                "signpost_dns_forward_loops_total",
                g(&self.forward_loops),
                "Forwarding loops detected and refused.",
            ),
            (
                "signpost_dns_forward_busy_total",
                g(&self.forward_busy),
                "Forwards answered SERVFAIL because too many were in flight.",
            ),
            (
                "signpost_dns_cache_hits_total",
                g(&self.cache_hits),
                "Outside names answered from the cache of forwarded answers.",
            ),
            (
                "signpost_dns_cache_misses_total",
                g(&self.cache_misses),
                "Outside names not in the cache, asked upstream.",
            ),
            (
                "signpost_dns_malformed_requests_total",
                g(&self.malformed),
                "Requests that could not be parsed.",
            ),
            (
                "signpost_dns_invalid_objects_total",
                g(&self.invalid_objects),
                "Objects skipped as invalid.",
            ),
            (
                "signpost_dns_watch_errors_total",
                g(&self.watch_errors),
                "Watch errors, retried with backoff.",
            ),
            (
                "signpost_dns_zone_names",
                g(&self.zone_names),
                "Names in the cluster zone.",
            ),
            (
                "signpost_dns_synced",
                g(&self.synced),
                "1 once the first full list of every watched kind is done.",
            ),
        ] {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}
