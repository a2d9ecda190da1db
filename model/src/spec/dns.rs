//! DNS: what the cluster DNS answers for a question, given the Services,
//! EndpointSlices, Pods and namespaces it has seen (Kubernetes DNS-Based
//! Service Discovery 1.1.0, plus CoreDNS behaviour where that is silent).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cluster::{
    ClusterIps, DnsOutcome, Endpoint, EndpointSlice, Pod, Question, RData, RType, Rcode, Record,
    Service,
};

/// DNS-11: the schema version served at `dns-version.<zone>`.
pub const DNS_SCHEMA_VERSION: &str = "1.1.0";

/// DNS-16: the TTL of cluster records unless configured otherwise.
pub const DEFAULT_TTL_SECS: u32 = 5;

/// DNS-15: how `<dashed-ip>.<ns>.pod.<zone>` is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PodsMode {
    /// No pod records: NXDOMAIN.
    #[default]
    Disabled,
    /// Any well-formed dashed IP answers with itself.
    Insecure,
    /// Only IPs of Pods in that namespace answer.
    Verified,
}

/// Everything the cluster DNS knows.
#[derive(Debug, Clone)]
pub struct DnsSnapshot<'a> {
    /// The cluster zone, lower-case without trailing dot (`cluster.local`).
    pub zone: &'a str,
    /// DNS-18: false until the first full list of every watched kind.
    pub synced: bool,
    /// Services.
    pub services: Vec<&'a Service>,
    /// EndpointSlices.
    pub slices: Vec<&'a EndpointSlice>,
    /// Pods (for verified pod records).
    pub pods: Vec<&'a Pod>,
    /// Namespaces known to exist (besides those holding Services).
    pub namespaces: BTreeSet<&'a str>,
    /// Pod record mode.
    pub pods_mode: PodsMode,
}

/// DNS-6: the DNS label of an endpoint: its hostname, else its address with
/// `.` or `:` replaced by `-`, and a `0` after a trailing `-` (an IPv6
/// address ending in `::`), as CoreDNS spells it.
pub fn endpoint_dns_name(ep: &Endpoint) -> String {
    match &ep.hostname {
        Some(h) => h.to_ascii_lowercase(),
        None => {
            let mut label = ep.address.to_string().replace(['.', ':'], "-");
            if label.ends_with('-') {
                label.push('0');
            }
            label
        }
    }
}

/// DNS-4: ready endpoints of one Service by address, with the slice each came from.
type Ready<'a> = BTreeMap<IpAddr, (&'a Endpoint, &'a EndpointSlice)>;

enum Node {
    /// Not in the cluster zone or a reverse zone we hold data for.
    NotOurs,
    /// No such name (NXDOMAIN).
    Missing,
    /// The name exists with these records (maybe none: an empty non-terminal).
    Exists(Vec<RData>),
}

fn addr(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(v4),
        IpAddr::V6(v6) => RData::Aaaa(v6),
    }
}

impl<'a> DnsSnapshot<'a> {
    /// DNS-14: a namespace exists if it is known or holds a Service.
    fn namespace_exists(&self, ns: &str) -> bool {
        self.namespaces.contains(ns) || self.services.iter().any(|s| s.key.namespace == ns)
    }

    fn service(&self, ns: &str, name: &str) -> Option<&'a Service> {
        self.services
            .iter()
            .copied()
            .find(|s| s.key.namespace == ns && s.key.name == name)
    }

    /// DNS-4: ready endpoints of a Service (never not-ready ones) with the
    /// slice each came from, deduplicated by address.
    fn ready_endpoints(&self, svc: &Service) -> Ready<'a> {
        let mut out = BTreeMap::new();
        for slice in &self.slices {
            if slice.key.namespace != svc.key.namespace || slice.service != svc.key.name {
                continue;
            }
            for ep in slice.endpoints.iter().filter(|e| e.ready) {
                out.entry(ep.address).or_insert((ep, *slice));
            }
        }
        out
    }

    fn fqdn(&self, svc: &Service) -> String {
        format!("{}.{}.svc.{}", svc.key.name, svc.key.namespace, self.zone)
    }

    /// DNS-7: the (target, port, address) triples behind a Service's SRV
    /// records, for the ports `port` accepts: a ClusterIP Service's
    /// ClusterIPs × its ports, a headless Service's ready endpoints × their
    /// slice's ports; `endpoint` keeps only endpoints of that name.
    fn srv_pairs(
        &self,
        svc: &Service,
        ready: &Ready<'a>,
        port: impl Fn(&str, crate::cluster::Protocol) -> bool,
        endpoint: Option<&str>,
    ) -> Vec<(String, u16, IpAddr)> {
        let mut out = Vec::new();
        let fqdn = self.fqdn(svc);
        match (&svc.cluster_ips, endpoint) {
            (ClusterIps::Ips(ips), None) => {
                for ip in ips {
                    for sp in svc.ports.iter().filter(|p| port(&p.name, p.protocol)) {
                        out.push((fqdn.clone(), sp.port, *ip));
                    }
                }
            }
            (ClusterIps::Ips(_) | ClusterIps::Headless, _) => {
                for (ep, slice) in ready.values() {
                    let label = endpoint_dns_name(ep);
                    if endpoint.is_some_and(|e| e != label) {
                        continue;
                    }
                    if endpoint.is_none() && !svc.is_headless() {
                        continue;
                    }
                    for p in slice.ports.iter().filter(|p| port(&p.name, p.protocol)) {
                        out.push((format!("{label}.{fqdn}"), p.port, ep.address));
                    }
                }
            }
            (ClusterIps::Unset, _) => {}
        }
        out
    }

    /// DNS-8: SRV records over triples: priority 0, weight ⌊100 / n⌋ for n
    /// triples (records that coincide still count, as in CoreDNS).
    fn srv_records(pairs: &[(String, u16, IpAddr)]) -> Vec<RData> {
        let weight = u16::try_from(100 / pairs.len().max(1)).unwrap_or(0);
        let set: BTreeSet<RData> = pairs
            .iter()
            .map(|(target, port, _)| RData::Srv {
                priority: 0,
                weight,
                port: *port,
                target: target.clone(),
            })
            .collect();
        set.into_iter().collect()
    }

    /// DNS-2..DNS-5, DNS-7: the records at `<svc>.<ns>.svc.<zone>`.
    fn service_node(&self, svc: &Service, ready: &Ready<'a>) -> Node {
        if let Some(target) = svc.external_name() {
            return Node::Exists(vec![RData::Cname(target.to_owned())]);
        }
        let mut records: Vec<RData> = match &svc.cluster_ips {
            ClusterIps::Ips(ips) => ips.iter().copied().map(addr).collect(),
            // DNS-3: a headless Service answers with its ready endpoints.
            ClusterIps::Headless => {
                let eps = ready;
                if eps.is_empty() {
                    // DNS-5: a headless Service with no ready endpoints does not exist.
                    return Node::Missing;
                }
                eps.keys().copied().map(addr).collect()
            }
            ClusterIps::Unset => return Node::Missing,
        };
        // DNS-7: SRV over every port at the Service name.
        records.extend(Self::srv_records(&self.srv_pairs(
            svc,
            ready,
            |_, _| true,
            None,
        )));
        Node::Exists(records)
    }

    /// DNS-6: `<endpoint>.<svc>.<ns>.svc.<zone>`: its addresses, and SRV over its ports.
    fn endpoint_node(&self, svc: &Service, ready: &Ready<'a>, label: &str) -> Node {
        let mut records: Vec<RData> = ready
            .values()
            .filter(|(ep, _)| endpoint_dns_name(ep) == label)
            .map(|(ep, _)| addr(ep.address))
            .collect();
        if records.is_empty() {
            return Node::Missing;
        }
        records.extend(Self::srv_records(&self.srv_pairs(
            svc,
            ready,
            |_, _| true,
            Some(label),
        )));
        Node::Exists(records)
    }

    /// DNS-7, DNS-8: `_<port>._<proto>.<svc>.<ns>.svc.<zone>`: SRV over the
    /// named port, and the addresses behind it.
    fn srv_node(&self, svc: &Service, ready: &Ready<'a>, port: &str, proto: &str) -> Node {
        let pairs = self.srv_pairs(
            svc,
            ready,
            |name, protocol| !name.is_empty() && name == port && protocol.as_lower() == proto,
            None,
        );
        if pairs.is_empty() {
            return Node::Missing;
        }
        let addrs: BTreeSet<IpAddr> = pairs.iter().map(|(_, _, ip)| *ip).collect();
        let mut records: Vec<RData> = addrs.into_iter().map(addr).collect();
        records.extend(Self::srv_records(&pairs));
        Node::Exists(records)
    }

    /// DNS-15: `<dashed-ip>.<ns>.pod.<zone>`.
    fn pod_node(&self, ns: &str, label: &str) -> Node {
        if !self.namespace_exists(ns) {
            return Node::Missing;
        }
        let Some(ip) = pod_label_ip(label) else {
            return Node::Missing;
        };
        let known = || {
            self.pods
                .iter()
                .any(|p| p.key.namespace == ns && p.ips.contains(&ip))
        };
        match self.pods_mode {
            PodsMode::Disabled => Node::Missing,
            PodsMode::Insecure => Node::Exists(vec![addr(ip)]),
            PodsMode::Verified if known() => Node::Exists(vec![addr(ip)]),
            PodsMode::Verified => Node::Missing,
        }
    }

    /// DNS-9: PTR for ClusterIPs and ready endpoint addresses.
    fn reverse_node(&self, ip: IpAddr) -> Node {
        if let Some(svc) = self
            .services
            .iter()
            .find(|s| s.cluster_ips.ips().contains(&ip))
        {
            return Node::Exists(vec![RData::Ptr(self.fqdn(svc))]);
        }
        let mut ptrs = BTreeSet::new();
        for svc in &self.services {
            if let Some((ep, _)) = self.ready_endpoints(svc).get(&ip) {
                ptrs.insert(RData::Ptr(format!(
                    "{}.{}",
                    endpoint_dns_name(ep),
                    self.fqdn(svc)
                )));
            }
        }
        if ptrs.is_empty() {
            Node::NotOurs
        } else {
            Node::Exists(ptrs.into_iter().collect())
        }
    }

    /// DNS-7: the named ports under a Service: its own and, for its
    /// endpoints, their slices', each (name, protocol) once.
    fn port_names<'s>(
        svc: &'s Service,
        ready: &'s Ready<'_>,
    ) -> BTreeSet<(&'s str, crate::cluster::Protocol)> {
        svc.ports
            .iter()
            .map(|p| (p.name.as_str(), p.protocol))
            .chain(
                ready
                    .values()
                    .flat_map(|(_, sl)| sl.ports.iter().map(|p| (p.name.as_str(), p.protocol))),
            )
            .filter(|(name, _)| !name.is_empty())
            .collect()
    }

    /// DNS-7: `_<proto>` under a Service is an empty non-terminal exactly
    /// when some `_<port>._<proto>` below it exists.
    fn proto_exists(&self, svc: &Service, ready: &Ready<'a>, proto: &str) -> bool {
        Self::port_names(svc, ready)
            .into_iter()
            .any(|(name, protocol)| {
                protocol.as_lower() == proto
                    && matches!(self.srv_node(svc, ready, name, proto), Node::Exists(_))
            })
    }

    fn zone_node(&self, rest: &[&str]) -> Node {
        match rest {
            [] | ["svc"] | ["pod"] => Node::Exists(Vec::new()),
            ["dns-version"] => Node::Exists(vec![RData::Txt(DNS_SCHEMA_VERSION.to_owned())]),
            ["svc", ns] | ["pod", ns] => {
                if self.namespace_exists(ns) {
                    Node::Exists(Vec::new())
                } else {
                    Node::Missing
                }
            }
            ["svc", ns, name] => match self.service(ns, name) {
                Some(svc) => self.service_node(svc, &self.ready_endpoints(svc)),
                None => Node::Missing,
            },
            ["svc", ns, name, label] => match self.service(ns, name) {
                None => Node::Missing,
                // DNS-7: `_<proto>` under a Service is an empty non-terminal when a named port has that protocol.
                Some(svc) if label.starts_with('_') => {
                    let ready = self.ready_endpoints(svc);
                    if self.proto_exists(svc, &ready, &label[1..]) {
                        Node::Exists(Vec::new())
                    } else {
                        Node::Missing
                    }
                }
                Some(svc) => self.endpoint_node(svc, &self.ready_endpoints(svc), label),
            },
            // Labels run from the zone outwards: `_<port>._<proto>.<svc>` reads svc, proto, port.
            ["svc", ns, name, proto, port] if port.starts_with('_') && proto.starts_with('_') => {
                match self.service(ns, name) {
                    Some(svc) => {
                        self.srv_node(svc, &self.ready_endpoints(svc), &port[1..], &proto[1..])
                    }
                    None => Node::Missing,
                }
            }
            ["pod", ns, label] => self.pod_node(ns, label),
            _ => Node::Missing,
        }
    }

    fn node(&self, name: &str) -> Node {
        if let Some(ip) = parse_reverse(name) {
            return self.reverse_node(ip);
        }
        let rest = if name == self.zone {
            ""
        } else if let Some(r) = name
            .strip_suffix(self.zone)
            .and_then(|r| r.strip_suffix('.'))
        {
            r
        } else {
            return Node::NotOurs;
        };
        let mut labels: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('.').collect()
        };
        labels.reverse();
        self.zone_node(&labels)
    }
}

/// DNS-15: the address spelled by a pod label: three dashes and no `--`
/// spell IPv4, anything else IPv6 (as CoreDNS reads them).
pub fn pod_label_ip(label: &str) -> Option<IpAddr> {
    let v4 = label.matches('-').count() == 3 && !label.contains("--");
    label
        .replace('-', if v4 { "." } else { ":" })
        .parse::<IpAddr>()
        .ok()
}

/// The reverse-lookup name of an address (no trailing dot): the inverse
/// of [`parse_reverse`].
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut nibbles: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 15])
                .map(|n| format!("{n:x}"))
                .collect();
            nibbles.reverse();
            format!("{}.ip6.arpa", nibbles.join("."))
        }
    }
}

/// Parses a full reverse-lookup name (`4.3.2.1.in-addr.arpa`, 32 nibbles of `ip6.arpa`).
pub fn parse_reverse(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut octets: Vec<u8> = rest
            .split('.')
            .map(|l| l.parse().ok())
            .collect::<Option<_>>()?;
        if octets.len() != 4 {
            return None;
        }
        octets.reverse();
        return Some(IpAddr::V4(Ipv4Addr::new(
            octets[0], octets[1], octets[2], octets[3],
        )));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = rest
        .split('.')
        .map(|l| {
            if l.len() == 1 {
                u8::from_str_radix(l, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, pair) in nibbles.rchunks(2).enumerate() {
        // rchunks walks from the end: the last two labels are the first byte.
        bytes[i] = (pair[1] << 4) | pair[0];
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

/// The DNS oracle: the outcome of one question (DNS-1: authoritative for the
/// cluster zone and for reverse names of addresses it knows; DNS-2..DNS-19).
pub fn dns_answer(snap: &DnsSnapshot<'_>, question: &Question) -> DnsOutcome {
    let name = question.normalized_name();
    let node = snap.node(&name);
    if matches!(node, Node::NotOurs) {
        return DnsOutcome::Forward;
    }
    let rdatas = match node {
        Node::Missing => None,
        Node::Exists(r) => Some(r),
        Node::NotOurs => unreachable!("handled above"),
    };
    outcome(&name, rdatas, question.rtype, snap.synced)
}

/// Every record at `name` (`None` if the name is missing or not ours): the
/// zone as data, for indexes that precompute it.
pub fn name_records(snap: &DnsSnapshot<'_>, name: &str) -> Option<Vec<RData>> {
    match snap.node(name) {
        Node::Exists(r) => Some(r),
        Node::Missing | Node::NotOurs => None,
    }
}

/// Every name under one Service that exists, with its records — what
/// [`name_records`] gives for each of them: the Service name, its
/// `_<port>._<proto>` and `_<proto>` names and, with `endpoints`, its
/// endpoint names (DNS-2..DNS-8). One pass over the Service's ready
/// endpoints, so an index refreshing a headless Service of E endpoints
/// does O(E log E) work, where asking name by name is O(E²).
pub fn service_records(
    snap: &DnsSnapshot<'_>,
    svc: &Service,
    endpoints: bool,
) -> Vec<(String, Vec<RData>)> {
    let fqdn = snap.fqdn(svc);
    let ready = snap.ready_endpoints(svc);
    let mut out = Vec::new();
    if let Node::Exists(r) = snap.service_node(svc, &ready) {
        out.push((fqdn.clone(), r));
    }
    let mut protos = BTreeSet::new();
    for (name, protocol) in DnsSnapshot::port_names(svc, &ready) {
        let proto = protocol.as_lower();
        if let Node::Exists(r) = snap.srv_node(svc, &ready, name, proto) {
            out.push((format!("_{name}._{proto}.{fqdn}"), r));
            protos.insert(proto);
        }
    }
    out.extend(
        protos
            .into_iter()
            .map(|proto| (format!("_{proto}.{fqdn}"), Vec::new())),
    );
    if endpoints {
        let mut by_label: BTreeMap<String, Ready<'_>> = BTreeMap::new();
        for (ip, found) in &ready {
            by_label
                .entry(endpoint_dns_name(found.0))
                .or_default()
                .insert(*ip, *found);
        }
        // A label starting with `_` names a protocol, never an endpoint.
        for (label, group) in by_label.iter().filter(|(l, _)| !l.starts_with('_')) {
            if let Node::Exists(r) = snap.endpoint_node(svc, group, label) {
                out.push((format!("{label}.{fqdn}"), r));
            }
        }
    }
    out
}

/// The answer for a name of ours, given its records (`None`: it does not
/// exist). Shared by the oracle and by indexes that look records up their own
/// way, so the answering rules are written once.
pub fn outcome(name: &str, rdatas: Option<Vec<RData>>, rtype: RType, synced: bool) -> DnsOutcome {
    // DNS-18: nothing authoritative before the first full sync.
    if !synced {
        return DnsOutcome::rcode(Rcode::ServFail);
    }
    // DNS-17: zone transfers are refused.
    if matches!(rtype, RType::Other(251 | 252)) {
        return DnsOutcome::rcode(Rcode::Refused);
    }
    let Some(rdatas) = rdatas else {
        return DnsOutcome::rcode(Rcode::NxDomain);
    };
    let record = |data: RData| Record {
        name: name.to_owned(),
        data,
    };
    let cname = rdatas.iter().find(|d| matches!(d, RData::Cname(_)));
    let records: BTreeSet<Record> = match (rtype, cname) {
        // DNS-10: an alias answers every type with the CNAME.
        (t, Some(c)) if t != RType::Cname => [record(c.clone())].into(),
        // DNS-17: ANY is answered minimally (RFC 8482): the records of one type.
        (RType::Any, _) => {
            let first = rdatas.iter().map(RData::rtype).min();
            rdatas
                .into_iter()
                .filter(|d| Some(d.rtype()) == first)
                .map(record)
                .collect()
        }
        (t, _) => rdatas
            .into_iter()
            .filter(|d| d.rtype() == t)
            .map(record)
            .collect(),
    };
    // DNS-13: an existing name without records of the type is NODATA, never NXDOMAIN.
    DnsOutcome::records(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names_parse() {
        assert_eq!(
            parse_reverse("10.0.96.10.in-addr.arpa"),
            Some("10.96.0.10".parse().unwrap())
        );
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let IpAddr::V6(v6a) = v6 else { unreachable!() };
        let mut labels: Vec<String> = v6a
            .octets()
            .iter()
            .flat_map(|b| [b >> 4, b & 15])
            .map(|n| format!("{n:x}"))
            .collect();
        labels.reverse();
        assert_eq!(
            parse_reverse(&format!("{}.ip6.arpa", labels.join("."))),
            Some(v6)
        );
        assert_eq!(parse_reverse("0.96.10.in-addr.arpa"), None);
        for ip in ["10.96.0.10", "fd00:10:96::a", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse_reverse(&reverse_name(ip)), Some(ip));
        }
        assert_eq!(parse_reverse("x.0.96.10.in-addr.arpa"), None);
    }

    #[test]
    fn srv_records_answer_for_named_ports() {
        use crate::cluster::{ObjectKey, ServicePort};
        let svc = Service::cluster_ip(
            ObjectKey::new("default", "voy"),
            ClusterIps::Ips(vec!["10.96.0.5".parse().unwrap()]),
            vec![ServicePort::tcp("http", 80, 8080)],
        );
        let snap = DnsSnapshot {
            zone: "cluster.local",
            synced: true,
            services: vec![&svc],
            slices: Vec::new(),
            pods: Vec::new(),
            namespaces: BTreeSet::new(),
            pods_mode: PodsMode::Disabled,
        };
        let ask = |n: &str| dns_answer(&snap, &Question::new(n, RType::Srv));
        let name = "_http._tcp.voy.default.svc.cluster.local";
        assert_eq!(
            ask(name),
            DnsOutcome::records(
                [Record {
                    name: name.into(),
                    data: RData::Srv {
                        priority: 0,
                        weight: 100,
                        port: 80,
                        target: "voy.default.svc.cluster.local".into(),
                    },
                }]
                .into()
            )
        );
        assert_eq!(
            ask("_tcp._http.voy.default.svc.cluster.local").code(),
            Some(Rcode::NxDomain)
        );
        assert_eq!(
            ask("_http._udp.voy.default.svc.cluster.local").code(),
            Some(Rcode::NxDomain)
        );
    }

    #[test]
    fn endpoint_names_dash_addresses() {
        let ep = Endpoint {
            address: "fd00::1".parse().unwrap(),
            ready: true,
            serving: true,
            terminating: false,
            hostname: None,
            node: None,
            zone: None,
            pod: None,
        };
        assert_eq!(endpoint_dns_name(&ep), "fd00--1");
        let ep = Endpoint {
            address: "fd00:10:244::".parse().unwrap(),
            ..ep
        };
        assert_eq!(endpoint_dns_name(&ep), "fd00-10-244--0");
        let ep = Endpoint {
            address: "10.244.0.7".parse().unwrap(),
            ..ep
        };
        assert_eq!(endpoint_dns_name(&ep), "10-244-0-7");
    }
}
