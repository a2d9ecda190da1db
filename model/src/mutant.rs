//! The mutation seam: deliberate, named faults the real components can be
//! started with (`signpost proxy|dns --mutant NAME`), so that the
//! conformance harness can show it catches each one by the rule it breaks.
//!
//! A mutant is a pure transform at one of the components' decision points —
//! the inputs the oracle reads (Services, EndpointSlices), the proxy table
//! the oracle produces, the DNS outcome of a question. [`Seam::identity`]
//! changes nothing and is what production runs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use crate::cluster::{
    DnsOutcome, EndpointSlice, Protocol, ProxyTable, Question, RData, RType, Rcode, Record,
    Service, TrafficPolicy, VirtualKey,
};

/// Which component a mutant lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// The service proxy.
    Proxy,
    /// The cluster DNS.
    Dns,
}

/// One deliberate fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Mutant {
    /// Proxy: not-ready endpoints are used like ready ones.
    ProxyIgnoreReadiness,
    /// Proxy: no fallback to serving-and-terminating endpoints.
    ProxyNoTerminatingFallback,
    /// Proxy: backends get the Service port instead of the target port.
    ProxyWrongTargetPort,
    /// Proxy: a backend once programmed for an address stays there.
    ProxyStaleEndpoints,
    /// Proxy: `sessionAffinity: ClientIP` ignored.
    ProxyNoAffinity,
    /// Proxy: a port without endpoints drops (to an address nobody has) instead of rejecting.
    ProxyDropNotReject,
    /// Proxy: TCP and UDP ports programmed with each other's protocol.
    ProxyWrongProtocol,
    /// Proxy: every virtual port programmed one higher.
    ProxyOffByOnePort,
    /// Proxy: `internalTrafficPolicy: Local` treated as `Cluster`.
    ProxyIgnoreItpLocal,
    /// Proxy: a ClusterIP also forwards its target ports (undeclared ports pass through).
    ProxyUnknownPortPassThrough,
    /// DNS: NODATA answered as NXDOMAIN and NXDOMAIN as NODATA.
    DnsNodataNxdomainSwap,
    /// DNS: a deleted Service's records stay.
    DnsStaleAfterDelete,
    /// DNS: SRV records only for a Service's first port.
    DnsMissingSrvSecondPort,
    /// DNS: PTR answers name the wrong host.
    DnsWrongPtr,
    /// DNS: headless answers also list not-ready endpoints.
    DnsHeadlessNotReady,
    /// DNS: names match only in lower case.
    DnsCaseSensitive,
}

impl Mutant {
    /// Every mutant.
    pub const ALL: [Mutant; 16] = [
        Mutant::ProxyIgnoreReadiness,
        Mutant::ProxyNoTerminatingFallback,
        Mutant::ProxyWrongTargetPort,
        Mutant::ProxyStaleEndpoints,
        Mutant::ProxyNoAffinity,
        Mutant::ProxyDropNotReject,
        Mutant::ProxyWrongProtocol,
        Mutant::ProxyOffByOnePort,
        Mutant::ProxyIgnoreItpLocal,
        Mutant::ProxyUnknownPortPassThrough,
        Mutant::DnsNodataNxdomainSwap,
        Mutant::DnsStaleAfterDelete,
        Mutant::DnsMissingSrvSecondPort,
        Mutant::DnsWrongPtr,
        Mutant::DnsHeadlessNotReady,
        Mutant::DnsCaseSensitive,
    ];

    /// The name given to `--mutant`.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::ProxyIgnoreReadiness => "proxy-ignore-readiness",
            Mutant::ProxyNoTerminatingFallback => "proxy-no-terminating-fallback",
            Mutant::ProxyWrongTargetPort => "proxy-wrong-target-port",
            Mutant::ProxyStaleEndpoints => "proxy-stale-endpoints",
            Mutant::ProxyNoAffinity => "proxy-no-affinity",
            Mutant::ProxyDropNotReject => "proxy-drop-not-reject",
            Mutant::ProxyWrongProtocol => "proxy-wrong-protocol",
            Mutant::ProxyOffByOnePort => "proxy-off-by-one-port",
            Mutant::ProxyIgnoreItpLocal => "proxy-ignore-itp-local",
            Mutant::ProxyUnknownPortPassThrough => "proxy-unknown-port-pass-through",
            Mutant::DnsNodataNxdomainSwap => "dns-nodata-nxdomain-swap",
            Mutant::DnsStaleAfterDelete => "dns-stale-after-delete",
            Mutant::DnsMissingSrvSecondPort => "dns-missing-srv-second-port",
            Mutant::DnsWrongPtr => "dns-wrong-ptr",
            Mutant::DnsHeadlessNotReady => "dns-headless-not-ready",
            Mutant::DnsCaseSensitive => "dns-case-sensitive",
        }
    }

    /// The spec rule the mutant breaks (and must be caught by).
    pub fn rule(self) -> &'static str {
        match self {
            Mutant::ProxyIgnoreReadiness | Mutant::ProxyNoTerminatingFallback => "PXY-2",
            Mutant::ProxyWrongTargetPort | Mutant::ProxyOffByOnePort => "PXY-1",
            Mutant::ProxyStaleEndpoints => "PXY-10",
            Mutant::ProxyNoAffinity => "PXY-5",
            Mutant::ProxyDropNotReject => "PXY-3",
            Mutant::ProxyUnknownPortPassThrough => "PXY-12",
            Mutant::ProxyWrongProtocol => "PXY-6",
            Mutant::ProxyIgnoreItpLocal => "PXY-4",
            Mutant::DnsNodataNxdomainSwap => "DNS-13",
            Mutant::DnsStaleAfterDelete => "DNS-20",
            Mutant::DnsMissingSrvSecondPort => "DNS-7",
            Mutant::DnsWrongPtr => "DNS-9",
            Mutant::DnsHeadlessNotReady => "DNS-4",
            Mutant::DnsCaseSensitive => "DNS-12",
        }
    }

    /// The component it is built into.
    pub fn component(self) -> Component {
        if self.name().starts_with("dns-") {
            Component::Dns
        } else {
            Component::Proxy
        }
    }

    /// The mutant called `name`.
    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// `--mutant` named no mutant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mutant {0:?} (known: {known})", known = Mutant::ALL.map(Mutant::name).join(", "))]
pub struct UnknownMutant(pub String);

impl std::str::FromStr for Mutant {
    type Err = UnknownMutant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mutant::from_name(s).ok_or_else(|| UnknownMutant(s.to_owned()))
    }
}

/// Where [`Mutant::ProxyDropNotReject`] sends connections: an address of the
/// rig's Pod network that no Pod has, so they time out inside the node.
pub const BLACKHOLE_V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 255, 254));
/// The IPv6 counterpart of [`BLACKHOLE_V4`].
pub const BLACKHOLE_V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(
    0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0xfffe,
));

/// The seam one component runs through: a mutant (or none) and the memory a
/// stateful mutant keeps.
#[derive(Debug, Clone, Default)]
pub struct Seam {
    mutant: Option<Mutant>,
    seen_backends: BTreeMap<VirtualKey, BTreeSet<SocketAddr>>,
}

impl Seam {
    /// The production seam: every transform is the identity.
    pub fn identity() -> Self {
        Seam::default()
    }

    /// A seam with `mutant` built in.
    pub fn with(mutant: Option<Mutant>) -> Self {
        Seam {
            mutant,
            ..Seam::default()
        }
    }

    /// The mutant, if any.
    pub fn mutant(&self) -> Option<Mutant> {
        self.mutant
    }

    /// Proxy inputs, before the oracle's `proxy_table`.
    pub fn proxy_inputs(&self, services: &mut [Service], slices: &mut [EndpointSlice]) {
        match self.mutant {
            Some(Mutant::ProxyIgnoreReadiness) => {
                for ep in slices.iter_mut().flat_map(|s| s.endpoints.iter_mut()) {
                    ep.ready = true;
                }
            }
            Some(Mutant::ProxyNoTerminatingFallback) => {
                for s in slices.iter_mut() {
                    s.endpoints.retain(|ep| !ep.terminating);
                }
            }
            Some(Mutant::ProxyIgnoreItpLocal) => {
                for s in services.iter_mut() {
                    s.internal_traffic_policy = TrafficPolicy::Cluster;
                }
            }
            _ => {}
        }
    }

    /// The proxy table, after the oracle and before the data plane.
    pub fn proxy_table(&mut self, table: ProxyTable) -> ProxyTable {
        let Some(mutant) = self.mutant else {
            return table;
        };
        match mutant {
            Mutant::ProxyWrongTargetPort => table
                .into_iter()
                .map(|(k, mut vs)| {
                    vs.backends = vs
                        .backends
                        .iter()
                        .map(|b| SocketAddr::new(b.ip(), k.port))
                        .collect();
                    (k, vs)
                })
                .collect(),
            Mutant::ProxyStaleEndpoints => {
                let mut out = table;
                for (k, vs) in out.iter_mut() {
                    let seen = self.seen_backends.entry(*k).or_default();
                    seen.extend(vs.backends.iter().copied());
                    vs.backends.clone_from(seen);
                }
                out
            }
            Mutant::ProxyNoAffinity => table
                .into_iter()
                .map(|(k, mut vs)| {
                    vs.affinity_timeout = None;
                    (k, vs)
                })
                .collect(),
            Mutant::ProxyDropNotReject => table
                .into_iter()
                .map(|(k, mut vs)| {
                    if vs.backends.is_empty() {
                        let hole = if k.ip.is_ipv4() {
                            BLACKHOLE_V4
                        } else {
                            BLACKHOLE_V6
                        };
                        vs.backends.insert(SocketAddr::new(hole, k.port));
                    }
                    (k, vs)
                })
                .collect(),
            Mutant::ProxyWrongProtocol => table
                .into_iter()
                .map(|(mut k, vs)| {
                    k.protocol = match k.protocol {
                        Protocol::Tcp => Protocol::Udp,
                        Protocol::Udp => Protocol::Tcp,
                        other => other,
                    };
                    (k, vs)
                })
                .collect(),
            Mutant::ProxyOffByOnePort => table
                .into_iter()
                .map(|(mut k, vs)| {
                    k.port = k.port.wrapping_add(1);
                    (k, vs)
                })
                .collect(),
            Mutant::ProxyUnknownPortPassThrough => {
                let mut out = table.clone();
                for (k, vs) in &table {
                    for b in &vs.backends {
                        let key = VirtualKey {
                            port: b.port(),
                            ..*k
                        };
                        out.entry(key).or_insert_with(|| vs.clone());
                    }
                }
                out
            }
            _ => table,
        }
    }

    /// A Service the DNS is told about.
    pub fn dns_service(&self, mut svc: Service) -> Service {
        if self.mutant == Some(Mutant::DnsMissingSrvSecondPort) {
            svc.ports.truncate(1);
        }
        svc
    }

    /// Whether the DNS forgets a deleted Service.
    pub fn dns_forgets_deleted_services(&self) -> bool {
        self.mutant != Some(Mutant::DnsStaleAfterDelete)
    }

    /// An EndpointSlice the DNS is told about.
    pub fn dns_slice(&self, mut slice: EndpointSlice) -> EndpointSlice {
        match self.mutant {
            Some(Mutant::DnsHeadlessNotReady) => {
                for ep in &mut slice.endpoints {
                    ep.ready = true;
                }
            }
            Some(Mutant::DnsMissingSrvSecondPort) => slice.ports.truncate(1),
            _ => {}
        }
        slice
    }

    /// The outcome of a question, after the zone and before the wire.
    pub fn dns_outcome(&self, question: &Question, outcome: DnsOutcome) -> DnsOutcome {
        match self.mutant {
            Some(Mutant::DnsNodataNxdomainSwap) => {
                if outcome.is_nodata() {
                    DnsOutcome::rcode(Rcode::NxDomain)
                } else if outcome.code() == Some(Rcode::NxDomain) {
                    DnsOutcome::records(BTreeSet::new())
                } else {
                    outcome
                }
            }
            Some(Mutant::DnsCaseSensitive)
                if question.name.chars().any(|c| c.is_ascii_uppercase())
                    && outcome != DnsOutcome::Forward =>
            {
                DnsOutcome::rcode(Rcode::NxDomain)
            }
            Some(Mutant::DnsWrongPtr) if question.rtype == RType::Ptr => match outcome {
                DnsOutcome::Answer { records, .. } => DnsOutcome::records(
                    records
                        .into_iter()
                        .map(|r| match r.data {
                            RData::Ptr(target) => Record {
                                data: RData::Ptr(format!("wrong.{target}")),
                                ..r
                            },
                            _ => r,
                        })
                        .collect(),
                ),
                other => other,
            },
            _ => outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::VirtualService;

    fn key(port: u16, protocol: Protocol) -> VirtualKey {
        VirtualKey {
            ip: "10.96.0.5".parse().unwrap(),
            protocol,
            port,
        }
    }

    fn table(backends: &[&str]) -> ProxyTable {
        ProxyTable::from([(
            key(80, Protocol::Tcp),
            VirtualService {
                backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
                affinity_timeout: Some(30),
            },
        )])
    }

    #[test]
    fn names_round_trip_and_every_mutant_names_a_rule() {
        for m in Mutant::ALL {
            assert_eq!(m.name().parse::<Mutant>(), Ok(m));
            assert!(m.rule().contains('-'));
        }
        assert!("proxy-nonsense".parse::<Mutant>().is_err());
        assert_eq!(
            Mutant::ALL
                .iter()
                .filter(|m| m.component() == Component::Proxy)
                .count(),
            10
        );
    }

    #[test]
    fn identity_changes_nothing() {
        let mut seam = Seam::identity();
        let t = table(&["10.244.0.2:8080"]);
        assert_eq!(seam.proxy_table(t.clone()), t);
        let q = Question::new("VOY.default.svc.cluster.local", RType::A);
        let o = DnsOutcome::rcode(Rcode::NxDomain);
        assert_eq!(seam.dns_outcome(&q, o.clone()), o);
    }

    #[test]
    fn every_proxy_table_mutant_changes_a_table() {
        for m in [
            Mutant::ProxyWrongTargetPort,
            Mutant::ProxyNoAffinity,
            Mutant::ProxyWrongProtocol,
            Mutant::ProxyOffByOnePort,
            Mutant::ProxyUnknownPortPassThrough,
        ] {
            let t = table(&["10.244.0.2:8080"]);
            assert_ne!(Seam::with(Some(m)).proxy_table(t.clone()), t, "{m:?}");
        }
        let mut drop = Seam::with(Some(Mutant::ProxyDropNotReject));
        let t = drop.proxy_table(table(&[]));
        assert!(!t[&key(80, Protocol::Tcp)].rejects());
    }

    #[test]
    fn stale_endpoints_remember_removed_backends() {
        let mut seam = Seam::with(Some(Mutant::ProxyStaleEndpoints));
        seam.proxy_table(table(&["10.244.0.2:8080", "10.244.0.3:8080"]));
        let after = seam.proxy_table(table(&["10.244.0.3:8080"]));
        assert_eq!(after[&key(80, Protocol::Tcp)].backends.len(), 2);
    }
}
