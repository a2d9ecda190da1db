//! The DNS server's metrics, registered in a `prometheus-client` registry
//! (see `signpost_runtime::metrics`): queries by type and response code,
//! answer latency, DNS programming latency (a change seen on a watch → the
//! first answer that carries it), forwarding, the cache and loops; and
//! CoreDNS's own names and labels for the same events, so dashboards and
//! alerts written for CoreDNS keep working.
//!
//! The query path touches only atomics: every labelled series a query can
//! move is created up front.

use std::time::Duration;

use signpost_runtime::metrics::{
    self, Counter, EncodeLabelSet, Family, Gauge, Histogram, Registry,
};

/// The query types counted by name; everything else is `other`.
pub const QTYPES: [&str; 11] = [
    "A", "AAAA", "CNAME", "SRV", "PTR", "TXT", "SOA", "NS", "ANY", "AXFR", "other",
];
/// The response codes counted by name; everything else is `other`.
pub const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeRcode {
    r#type: &'static str,
    rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CoreRequest {
    server: String,
    zone: String,
    view: String,
    proto: &'static str,
    family: &'static str,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CoreResponse {
    server: String,
    zone: String,
    view: String,
    rcode: &'static str,
    plugin: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CoreDuration {
    server: String,
    zone: String,
    view: String,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CoreCache {
    server: String,
    r#type: &'static str,
    zones: String,
    view: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CoreServer {
    server: String,
    zones: String,
    view: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: &'static str,
}

fn index(table: &[&str], x: &str) -> usize {
    table
        .iter()
        .position(|t| *t == x)
        .unwrap_or(table.len() - 1)
}

/// Everything the DNS server counts.
#[derive(Debug)]
pub struct Metrics {
    queries: Vec<Vec<Counter>>,
    /// CoreDNS's requests by [tcp][v6][type].
    core_requests: [[Vec<Counter>; 2]; 2],
    core_responses: Vec<Counter>,
    core_durations: Vec<Histogram>,
    core_cache_success: Counter,
    core_cache_misses: Counter,
    /// Request received → response sent.
    pub answer_latency: Histogram,
    /// Object change seen → first answer carrying it.
    pub programming_latency: Histogram,
    /// Queries forwarded upstream.
    pub forwarded: Counter,
    /// Forwards that failed (timeout, refused connection, bad reply).
    pub forward_errors: Counter,
    /// Forwarding loops detected (a loop probe of ours came back to us).
    pub forward_loops: Counter,
    /// Forwards refused because the bound on forwards in flight was reached.
    pub forward_busy: Counter,
    /// Outside names refused to a client outside the forwarding allow-list.
    pub forward_refused: Counter,
    /// UDP responses over the client's rate sent as empty truncated answers.
    pub rrl_slipped: Counter,
    /// UDP responses over the client's rate not sent.
    pub rrl_dropped: Counter,
    /// Outside names answered from the cache.
    pub cache_hits: Counter,
    /// Outside names not in the cache (asked upstream).
    pub cache_misses: Counter,
    /// Requests that could not be parsed (answered FORMERR or dropped).
    pub malformed: Counter,
    /// Objects skipped because they could not be read.
    pub invalid_objects: Counter,
    /// Watch errors (retried with backoff).
    pub watch_errors: Counter,
    /// Names in the zone.
    pub zone_names: Gauge,
    /// 1 once the first full sync is done.
    pub synced: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new("dns://:53")
    }
}

impl Metrics {
    /// The metrics of a server whose CoreDNS `server` label is `server`
    /// (as CoreDNS writes it: `dns://:53`).
    pub fn new(server: &str) -> Self {
        let mut r = Registry::default();
        let server = server.to_owned();
        let (zone, view) = (".".to_owned(), String::new());
        let queries_family = Family::<TypeRcode, Counter>::default();
        let queries = QTYPES
            .iter()
            .map(|t| {
                RCODES
                    .iter()
                    .map(|rc| {
                        queries_family
                            .get_or_create(&TypeRcode {
                                r#type: t,
                                rcode: rc,
                            })
                            .clone()
                    })
                    .collect()
            })
            .collect();
        let requests = Family::<CoreRequest, Counter>::default();
        let core_requests = [("udp", 0), ("tcp", 1)].map(|(proto, _)| {
            [("1", 0), ("2", 1)].map(|(family, _)| {
                QTYPES
                    .iter()
                    .map(|t| {
                        requests
                            .get_or_create(&CoreRequest {
                                server: server.clone(),
                                zone: zone.clone(),
                                view: view.clone(),
                                proto,
                                family,
                                r#type: t,
                            })
                            .clone()
                    })
                    .collect()
            })
        });
        let responses = Family::<CoreResponse, Counter>::default();
        let core_responses = RCODES
            .iter()
            .map(|rc| {
                responses
                    .get_or_create(&CoreResponse {
                        server: server.clone(),
                        zone: zone.clone(),
                        view: view.clone(),
                        rcode: rc,
                        plugin: "",
                    })
                    .clone()
            })
            .collect();
        let durations = Family::<CoreDuration, Histogram>::new_with_constructor(
            metrics::histogram as fn() -> Histogram,
        );
        let core_durations = QTYPES
            .iter()
            .map(|t| {
                durations
                    .get_or_create(&CoreDuration {
                        server: server.clone(),
                        zone: zone.clone(),
                        view: view.clone(),
                        r#type: t,
                    })
                    .clone()
            })
            .collect();
        let cache_hits = Family::<CoreCache, Counter>::default();
        let core_cache_success = cache_hits
            .get_or_create(&CoreCache {
                server: server.clone(),
                r#type: "success",
                zones: ".".into(),
                view: view.clone(),
            })
            .clone();
        let cache_misses = Family::<CoreServer, Counter>::default();
        let core_cache_misses = cache_misses
            .get_or_create(&CoreServer {
                server: server.clone(),
                zones: ".".into(),
                view,
            })
            .clone();
        let build = Family::<Build, Gauge>::default();
        build
            .get_or_create(&Build {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let m = Metrics {
            queries,
            core_requests,
            core_responses,
            core_durations,
            core_cache_success,
            core_cache_misses,
            answer_latency: metrics::histogram(),
            programming_latency: metrics::histogram(),
            forwarded: Counter::default(),
            forward_errors: Counter::default(),
            forward_loops: Counter::default(),
            forward_busy: Counter::default(),
            forward_refused: Counter::default(),
            rrl_slipped: Counter::default(),
            rrl_dropped: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            malformed: Counter::default(),
            invalid_objects: Counter::default(),
            watch_errors: Counter::default(),
            zone_names: Gauge::default(),
            synced: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "signpost_dns_queries",
            "Queries answered, by type and response code",
            queries_family,
        );
        r.register(
            "signpost_dns_request_duration_seconds",
            "Request received to response sent",
            m.answer_latency.clone(),
        );
        r.register(
            "signpost_dns_programming_duration_seconds",
            "Object change seen on a watch to the first answer carrying it",
            m.programming_latency.clone(),
        );
        r.register(
            "signpost_dns_forwarded",
            "Queries forwarded upstream",
            m.forwarded.clone(),
        );
        r.register(
            "signpost_dns_forward_errors",
            "Forwards that failed",
            m.forward_errors.clone(),
        );
        r.register(
            "signpost_dns_forward_loops",
            "Forwarding loops detected and refused",
            m.forward_loops.clone(),
        );
        r.register(
            "signpost_dns_forward_busy",
            "Forwards answered SERVFAIL because too many were in flight",
            m.forward_busy.clone(),
        );
        r.register(
            "signpost_dns_forward_refused",
            "Outside names refused to clients outside the forwarding allow-list",
            m.forward_refused.clone(),
        );
        r.register(
            "signpost_dns_rrl_slipped",
            "UDP responses over the client's rate sent as empty truncated answers",
            m.rrl_slipped.clone(),
        );
        r.register(
            "signpost_dns_rrl_dropped",
            "UDP responses over the client's rate not sent",
            m.rrl_dropped.clone(),
        );
        r.register(
            "signpost_dns_cache_hits",
            "Outside names answered from the cache of forwarded answers",
            m.cache_hits.clone(),
        );
        r.register(
            "signpost_dns_cache_misses",
            "Outside names not in the cache, asked upstream",
            m.cache_misses.clone(),
        );
        r.register(
            "signpost_dns_malformed_requests",
            "Requests that could not be parsed",
            m.malformed.clone(),
        );
        r.register(
            "signpost_dns_invalid_objects",
            "Objects skipped as invalid",
            m.invalid_objects.clone(),
        );
        r.register(
            "signpost_dns_watch_errors",
            "Watch errors, retried with backoff",
            m.watch_errors.clone(),
        );
        r.register(
            "signpost_dns_zone_names",
            "Names in the cluster zone",
            m.zone_names.clone(),
        );
        r.register(
            "signpost_dns_synced",
            "1 once the first full list of every watched kind is done",
            m.synced.clone(),
        );
        r.register("signpost_build_info", "The running Signpost version", build);
        // CoreDNS's names (its `prometheus`, `cache` and `forward` plugins).
        r.register(
            "coredns_dns_requests",
            "Requests by protocol, family and type (CoreDNS's name)",
            requests,
        );
        r.register(
            "coredns_dns_responses",
            "Responses by response code (CoreDNS's name)",
            responses,
        );
        r.register(
            "coredns_dns_request_duration_seconds",
            "Request duration by type (CoreDNS's name)",
            durations,
        );
        r.register(
            "coredns_cache_hits",
            "Cache hits (CoreDNS's name)",
            cache_hits,
        );
        r.register(
            "coredns_cache_misses",
            "Cache misses (CoreDNS's name)",
            cache_misses,
        );
        r.register(
            "coredns_forward_requests",
            "Queries forwarded (CoreDNS's name)",
            m.forwarded.clone(),
        );
        r.register(
            "coredns_kubernetes_dns_programming_duration_seconds",
            "Object change seen to the first answer carrying it (CoreDNS's name)",
            m.programming_latency.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Counts one answered query: its type, response code, transport,
    /// client address family and time to answer.
    pub fn count_query(&self, qtype: &str, rcode: &str, tcp: bool, v6: bool, took: Duration) {
        let t = index(&QTYPES, qtype);
        let r = index(&RCODES, rcode);
        self.queries[t][r].inc();
        self.core_requests[usize::from(tcp)][usize::from(v6)][t].inc();
        self.core_responses[r].inc();
        metrics::observe(&self.core_durations[t], took);
        metrics::observe(&self.answer_latency, took);
    }

    /// Counts a forwarded name answered from the cache.
    pub fn cache_hit(&self) {
        self.cache_hits.inc();
        self.core_cache_success.inc();
    }

    /// Counts a forwarded name not in the cache.
    pub fn cache_miss(&self) {
        self.cache_misses.inc();
        self.core_cache_misses.inc();
    }

    /// Queries answered with this type and response code.
    pub fn queries(&self, qtype: &str, rcode: &str) -> u64 {
        match (
            QTYPES.iter().position(|x| *x == qtype),
            RCODES.iter().position(|x| *x == rcode),
        ) {
            (Some(t), Some(r)) => self.queries[t][r].get(),
            _ => 0,
        }
    }

    /// The exposition.
    pub fn render(&self) -> String {
        metrics::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_query_moves_ours_and_coredns_series() {
        let m = Metrics::new("dns://:53");
        m.count_query("A", "NOERROR", false, false, Duration::from_micros(300));
        m.count_query("SRV", "NXDOMAIN", true, true, Duration::from_millis(3));
        assert_eq!(m.queries("A", "NOERROR"), 1);
        let text = m.render();
        for line in [
            "signpost_dns_queries_total{type=\"A\",rcode=\"NOERROR\"} 1",
            "coredns_dns_requests_total{server=\"dns://:53\",zone=\".\",view=\"\",proto=\"udp\",family=\"1\",type=\"A\"} 1",
            "coredns_dns_requests_total{server=\"dns://:53\",zone=\".\",view=\"\",proto=\"tcp\",family=\"2\",type=\"SRV\"} 1",
            "coredns_dns_responses_total{server=\"dns://:53\",zone=\".\",view=\"\",rcode=\"NXDOMAIN\",plugin=\"\"} 1",
            "signpost_dns_request_duration_seconds_bucket{le=\"0.0005\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
