//! Observations after a step, each compared with the oracle over the API
//! server's actual objects: EndpointSlices as listed, DNS answers over UDP
//! and TCP from a client Pod, `getent` through its kubelet-style
//! resolv.conf, and TCP/UDP connections through every ClusterIP:port and
//! NodePort (who answered, refused or timed out). Each check names the
//! rules it exercises.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use signpost_model::cluster::{
    AddressFamily, ClusterIps, DnsOutcome, Endpoint, Protocol, Question, RData, RType, Rcode,
    Record, Service, ServiceKind, TargetPort, TrafficPolicy,
};
use signpost_model::spec::{
    DnsSnapshot, PodsMode, dns_answer, endpoint_dns_name, endpoints_for, proxy_table, reverse_name,
};

use crate::live::{Live, NODE_LISTENER_PORT, Seen, Snapshot};
use crate::sut::{DnsChoice, ProxyChoice};

/// The cluster zone every DNS under test serves.
pub const ZONE: &str = "cluster.local";

/// One comparison of what a component did with what the oracle says.
#[derive(Debug, Clone)]
pub struct Check {
    /// The rules it exercises.
    pub rules: Vec<&'static str>,
    /// What was checked, for people.
    pub what: String,
    /// Whether it matched.
    pub ok: bool,
    /// Expected and observed, when it did not.
    pub evidence: String,
}

impl Check {
    fn new(rules: Vec<&'static str>, what: String, want: String, got: String) -> Check {
        let ok = want == got;
        Check {
            rules,
            what,
            ok,
            evidence: if ok {
                String::new()
            } else {
                format!("expected {want}, observed {got}")
            },
        }
    }
}

/// Every observation of namespace `ns`, against the snapshot `snap`.
/// `named` are the Services the scenario has applied so far: those gone
/// from the snapshot are asked about too (a deleted name must stop
/// resolving, REG-4, DNS-20).
pub fn observe(
    live: &Live,
    ns: &str,
    snap: &Snapshot,
    named: &BTreeSet<&'static str>,
) -> Vec<Check> {
    let mut out = endpoints(ns, snap);
    if live.sut().proxy != ProxyChoice::None {
        out.extend(proxy(live, ns, snap));
    }
    if live.sut().dns != DnsChoice::None {
        out.extend(dns(live, ns, snap, named));
        out.extend(resolution(live, ns, snap));
    }
    out
}

/// The namespace's Services, without the API server's own `kubernetes`
/// Service in `default` (the platform's, not a scenario's).
fn in_ns<'a>(snap: &'a Snapshot, ns: &'a str) -> impl Iterator<Item = &'a Service> {
    snap.services
        .iter()
        .filter(move |s| s.key.namespace == ns && !(ns == "default" && s.key.name == "kubernetes"))
}

fn strip(ep: &Endpoint) -> Endpoint {
    Endpoint {
        zone: None,
        ..ep.clone()
    }
}

/// EPS: the controller's slices against `endpoints_for`.
fn endpoints(ns: &str, snap: &Snapshot) -> Vec<Check> {
    let pods: Vec<_> = snap.pods.iter().collect();
    let mut out = Vec::new();
    for svc in in_ns(snap, ns) {
        let ours: Vec<_> = snap
            .slices
            .iter()
            .filter(|s| s.key.namespace == ns && s.service == svc.key.name)
            .collect();
        let managed = svc.selector.as_ref().is_some_and(|s| !s.0.is_empty())
            && !matches!(svc.kind, ServiceKind::ExternalName(_));
        if !managed {
            out.push(Check::new(
                vec!["EPS-1"],
                format!(
                    "Service {} has no controller-managed EndpointSlices",
                    svc.key.name
                ),
                "0 slices".into(),
                format!("{} slices", ours.len()),
            ));
            continue;
        }
        let want: BTreeMap<_, BTreeSet<Endpoint>> = endpoints_for(svc, pods.iter().copied())
            .into_iter()
            .map(|(shape, eps)| (shape, eps.iter().map(strip).collect()))
            .filter(|(_, eps): &(_, BTreeSet<Endpoint>)| !eps.is_empty())
            .collect();
        let mut got: BTreeMap<_, BTreeSet<Endpoint>> = BTreeMap::new();
        for s in &ours {
            let shape = signpost_model::spec::SliceShape {
                family: s.family,
                ports: s.ports.clone(),
            };
            got.entry(shape)
                .or_default()
                .extend(s.endpoints.iter().map(strip));
        }
        got.retain(|_, eps| !eps.is_empty());
        let mut rules = vec!["EPS-11", "EPS-2", "EPS-12"];
        let all_want: Vec<&Endpoint> = want.values().flatten().collect();
        if all_want.iter().any(|e| e.terminating) {
            rules.push("EPS-3");
        }
        if all_want.iter().any(|e| !e.ready || !e.serving) {
            rules.push("EPS-4");
        }
        if svc.publish_not_ready {
            rules.push("EPS-5");
        }
        if svc
            .ports
            .iter()
            .any(|p| matches!(p.target_port, TargetPort::Name(_)))
        {
            rules.push("EPS-6");
        }
        if all_want.iter().any(|e| e.hostname.is_some()) {
            rules.push("EPS-7");
        }
        if svc.families.len() > 1 {
            rules.push("EPS-8");
        }
        out.push(Check::new(
            rules,
            format!("EndpointSlices of {}", svc.key.name),
            format!("{want:?}"),
            format!("{got:?}"),
        ));
        if want.is_empty() {
            let empty = ours.iter().filter(|s| s.endpoints.is_empty()).count();
            out.push(Check {
                rules: vec!["EPS-14"],
                what: format!(
                    "{} has no endpoints: one empty placeholder slice",
                    svc.key.name
                ),
                ok: ours.len() == 1 && empty == 1,
                evidence: format!("{} slices, {empty} of them empty", ours.len()),
            });
        }
        let biggest = ours.iter().map(|s| s.endpoints.len()).max().unwrap_or(0);
        out.push(Check {
            rules: vec!["EPS-9"],
            what: format!("slices of {} hold at most 100 endpoints", svc.key.name),
            ok: biggest <= signpost_model::spec::MAX_ENDPOINTS_PER_SLICE,
            evidence: format!("a slice holds {biggest}"),
        });
    }
    out
}

fn pod_names(snap: &Snapshot) -> BTreeMap<IpAddr, String> {
    snap.pods
        .iter()
        .flat_map(|p| p.ips.iter().map(|ip| (*ip, p.key.name.clone())))
        .collect()
}

/// PXY: connections through every virtual address of the namespace's Services.
fn proxy(live: &Live, ns: &str, snap: &Snapshot) -> Vec<Check> {
    let Some(node) = &snap.node else {
        return vec![Check {
            rules: vec!["PXY-10"],
            what: "the proxy's Node object".into(),
            ok: false,
            evidence: "node-a not found".into(),
        }];
    };
    let slices: Vec<_> = snap.all_slices.iter().collect();
    let table = proxy_table(&snap.services, &slices, node);
    let names = pod_names(snap);
    let mut out = Vec::new();
    for svc in in_ns(snap, ns) {
        let ClusterIps::Ips(ips) = &svc.cluster_ips else {
            continue;
        };
        if matches!(svc.kind, ServiceKind::ExternalName(_)) {
            continue;
        }
        let eps: Vec<&Endpoint> = slices
            .iter()
            .filter(|s| s.key.namespace == ns && s.service == svc.key.name)
            .flat_map(|s| s.endpoints.iter())
            .collect();
        let mut keys: Vec<(SocketAddr, Protocol, bool)> = Vec::new();
        for ip in ips {
            for p in &svc.ports {
                keys.push((SocketAddr::new(*ip, p.port), p.protocol, false));
                if let (Some(np), ServiceKind::NodePort | ServiceKind::LoadBalancer) =
                    (p.node_port, &svc.kind)
                {
                    for a in node
                        .addresses
                        .iter()
                        .filter(|a| AddressFamily::of(a) == AddressFamily::of(ip))
                    {
                        keys.push((SocketAddr::new(*a, np), p.protocol, true));
                    }
                }
            }
        }
        for (addr, protocol, node_port) in keys {
            let key = signpost_model::cluster::VirtualKey {
                ip: addr.ip(),
                protocol,
                port: addr.port(),
            };
            let Some(vs) = table.get(&key) else { continue };
            let want: BTreeSet<String> = vs
                .backends
                .iter()
                .map(|b| names.get(&b.ip()).cloned().unwrap_or_else(|| b.to_string()))
                .collect();
            let udp = protocol == Protocol::Udp;
            let mut rules = vec!["PXY-10"];
            if want.is_empty() {
                rules.push("PXY-3");
            } else {
                rules.extend(["PXY-1", "PXY-9"]);
            }
            if eps.iter().any(|e| !e.ready) {
                rules.push("PXY-2");
            }
            if svc.internal_traffic_policy == TrafficPolicy::Local && !node_port {
                rules.push("PXY-4");
            }
            if svc.ports.len() > 1 {
                rules.push("PXY-6");
            }
            if node_port {
                rules.push("PXY-7");
            }
            let what = format!(
                "{} connections to {addr}/{} ({})",
                if udp { "UDP" } else { "TCP" },
                protocol.as_lower(),
                svc.key.name
            );
            if let (Some(_), false) = (vs.affinity_timeout, want.is_empty()) {
                rules.push("PXY-5");
                let seen = live.connect(ns, addr, udp, 15).unwrap_or_default();
                let distinct: BTreeSet<&Seen> = seen.iter().collect();
                let ok = distinct.len() == 1
                    && matches!(distinct.first(), Some(Seen::Pod(p)) if want.contains(p));
                out.push(Check {
                    rules,
                    what: format!("{what}: 15 consecutive from one client stick to one backend"),
                    ok,
                    evidence: format!("backends {want:?}, observed {distinct:?}"),
                });
                continue;
            }
            let n = if want.is_empty() { 2 } else { 10 * want.len() };
            let seen = match live.connect(ns, addr, udp, n) {
                Ok(s) => s,
                Err(e) => vec![Seen::Error(e.to_string())],
            };
            let mut counts: BTreeMap<Seen, usize> = BTreeMap::new();
            for s in seen {
                *counts.entry(s).or_default() += 1;
            }
            let expected: BTreeSet<Seen> = if want.is_empty() {
                BTreeSet::from([Seen::Refused])
            } else {
                want.iter().cloned().map(Seen::Pod).collect()
            };
            let got: BTreeSet<Seen> = counts.keys().cloned().collect();
            // PXY-1: each backend is picked; with 10 tries per backend a
            // uniform choice gives each fewer than 2 with p < 1e-4.
            let spread = want.len() < 2 || counts.values().all(|c| *c >= 2);
            out.push(Check {
                rules,
                what,
                ok: got == expected && spread,
                evidence: format!(
                    "expected only {expected:?} (each at least twice), observed {counts:?}"
                ),
            });
        }
        // PXY-12: ports no Service declares are rejected on a ClusterIP, even
        // where a Pod's target port or a node listener would answer.
        for ip in ips {
            for port in [8080, NODE_LISTENER_PORT] {
                if svc.ports.iter().any(|p| p.port == port) {
                    continue;
                }
                let addr = SocketAddr::new(*ip, port);
                let seen = live.connect(ns, addr, false, 1).unwrap_or_default();
                out.push(Check::new(
                    vec!["PXY-12"],
                    format!("TCP to undeclared port {addr} ({})", svc.key.name),
                    format!("{:?}", [Seen::Refused]),
                    format!("{seen:?}"),
                ));
            }
        }
    }
    out
}

/// A question for the DNS under test, with the rules it exercises.
struct Ask {
    name: String,
    rtype: RType,
    rules: Vec<&'static str>,
    tcp: bool,
}

fn ask(name: String, rtype: RType, rules: &[&'static str]) -> Ask {
    Ask {
        name,
        rtype,
        rules: rules.to_vec(),
        tcp: false,
    }
}

fn questions(ns: &str, snap: &Snapshot, named: &BTreeSet<&'static str>) -> Vec<Ask> {
    let mut qs: Vec<Ask> = named
        .iter()
        .filter(|n| !in_ns(snap, ns).any(|s| s.key.name == **n))
        .map(|n| {
            ask(
                format!("{n}.{ns}.svc.{ZONE}"),
                RType::A,
                &["REG-4", "DNS-13"],
            )
        })
        .collect();
    qs.extend([
        ask(format!("dns-version.{ZONE}"), RType::Txt, &["DNS-11"]),
        ask(format!("{ns}.svc.{ZONE}"), RType::A, &["DNS-14", "DNS-13"]),
        ask(format!("no-such-ns-x.svc.{ZONE}"), RType::A, &["DNS-14"]),
    ]);
    let mut axfr = ask(ZONE.to_owned(), RType::Other(252), &["DNS-17"]);
    axfr.tcp = true;
    qs.push(axfr);
    for svc in in_ns(snap, ns) {
        let base = format!("{}.{ns}.svc.{ZONE}", svc.key.name);
        let main: &[&'static str] = match (&svc.kind, &svc.cluster_ips) {
            (ServiceKind::ExternalName(_), _) => &["DNS-10"],
            (_, ClusterIps::Headless) => &["DNS-3", "DNS-5", "DNS-4", "DNS-21"],
            _ => &["DNS-2", "DNS-21"],
        };
        for rtype in [RType::A, RType::Aaaa] {
            qs.push(ask(base.clone(), rtype, main));
        }
        let mut over_tcp = ask(base.clone(), RType::A, main);
        over_tcp.tcp = true;
        qs.push(over_tcp);
        let other_type: &[&'static str] = if matches!(svc.kind, ServiceKind::ExternalName(_)) {
            &["DNS-10"]
        } else {
            &["DNS-13"]
        };
        qs.push(ask(base.clone(), RType::Txt, other_type));
        qs.push(ask(
            format!("no-such-{}.{ns}.svc.{ZONE}", svc.key.name),
            RType::A,
            &["DNS-13"],
        ));
        qs.push(ask(base.to_ascii_uppercase(), RType::A, &["DNS-12"]));
        if matches!(svc.kind, ServiceKind::ExternalName(_)) {
            continue;
        }
        qs.push(ask(base.clone(), RType::Srv, &["DNS-7", "DNS-8"]));
        for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
            qs.push(ask(
                format!("_{}._{}.{base}", p.name, p.protocol.as_lower()),
                RType::Srv,
                &["DNS-7", "DNS-8"],
            ));
        }
        if let ClusterIps::Ips(ips) = &svc.cluster_ips {
            for ip in ips {
                qs.push(ask(reverse_name(*ip), RType::Ptr, &["DNS-9"]));
            }
        }
        for slice in snap
            .all_slices
            .iter()
            .filter(|s| s.key.namespace == ns && s.service == svc.key.name)
        {
            for ep in &slice.endpoints {
                let label = endpoint_dns_name(ep);
                let rules: &[&'static str] = if ep.ready {
                    &["DNS-6"]
                } else {
                    &["DNS-6", "DNS-4"]
                };
                let rtype = if ep.address.is_ipv4() {
                    RType::A
                } else {
                    RType::Aaaa
                };
                qs.push(ask(format!("{label}.{base}"), rtype, rules));
                if svc.is_headless() {
                    qs.push(ask(reverse_name(ep.address), RType::Ptr, &["DNS-9"]));
                }
            }
        }
    }
    if let Some(p) = snap.pods.iter().find(|p| p.key.namespace == ns)
        && let Some(IpAddr::V4(v4)) = p.ips.first()
    {
        let dashed = v4.to_string().replace('.', "-");
        qs.push(ask(
            format!("{dashed}.{ns}.pod.{ZONE}"),
            RType::A,
            &["DNS-15"],
        ));
    }
    qs
}

fn rtype_wire(r: RType) -> RecordType {
    match r {
        RType::A => RecordType::A,
        RType::Aaaa => RecordType::AAAA,
        RType::Cname => RecordType::CNAME,
        RType::Srv => RecordType::SRV,
        RType::Ptr => RecordType::PTR,
        RType::Txt => RecordType::TXT,
        RType::Soa => RecordType::SOA,
        RType::Ns => RecordType::NS,
        RType::Any => RecordType::ANY,
        RType::Other(n) => RecordType::from(n),
    }
}

fn encode(id: u16, name: &str, rtype: RType) -> Option<Vec<u8>> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    let mut q = Query::query(Name::from_ascii(name).ok()?, rtype_wire(rtype));
    q.set_query_class(DNSClass::IN);
    msg.add_query(q);
    msg.to_vec().ok()
}

fn lower(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// A reply as the oracle spells outcomes: response code and answer records.
fn decode(bytes: &[u8]) -> Result<DnsOutcome, String> {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RData as W;
    let msg = Message::from_vec(bytes).map_err(|e| format!("reply does not parse: {e}"))?;
    let rcode = match msg.metadata.response_code {
        ResponseCode::NoError => Rcode::NoError,
        ResponseCode::NXDomain => Rcode::NxDomain,
        ResponseCode::ServFail => Rcode::ServFail,
        ResponseCode::Refused => Rcode::Refused,
        other => return Err(format!("response code {other:?}")),
    };
    let mut records = BTreeSet::new();
    for r in &msg.answers {
        let data = match &r.data {
            W::A(a) => RData::A(a.0),
            W::AAAA(a) => RData::Aaaa(a.0),
            W::CNAME(c) => RData::Cname(lower(&c.0)),
            W::PTR(p) => RData::Ptr(lower(&p.0)),
            W::SRV(s) => RData::Srv {
                priority: s.priority,
                weight: s.weight,
                port: s.port,
                target: lower(&s.target),
            },
            W::TXT(t) => RData::Txt(
                t.txt_data
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect(),
            ),
            other => return Err(format!("unexpected record {other:?}")),
        };
        records.insert(Record {
            name: lower(&r.name),
            data,
        });
    }
    Ok(DnsOutcome::Answer { rcode, records })
}

fn show(o: &DnsOutcome) -> String {
    match o {
        DnsOutcome::Forward => "forwarded".into(),
        DnsOutcome::Answer { rcode, records } => {
            let rs: Vec<String> = records
                .iter()
                .map(|r| format!("{} {:?}", r.name, r.data))
                .collect();
            format!("{rcode:?} [{}]", rs.join(", "))
        }
    }
}

/// DNS: every question about the namespace's names, against `dns_answer`.
fn dns(live: &Live, ns: &str, snap: &Snapshot, named: &BTreeSet<&'static str>) -> Vec<Check> {
    let dsnap = DnsSnapshot {
        zone: ZONE,
        synced: true,
        services: snap.services.iter().collect(),
        slices: snap.all_slices.iter().collect(),
        pods: snap.pods.iter().collect(),
        namespaces: snap.namespaces.iter().map(String::as_str).collect(),
        pods_mode: PodsMode::Insecure,
    };
    let mut out = Vec::new();
    for (i, q) in questions(ns, snap, named).into_iter().enumerate() {
        let question = Question::new(q.name.clone(), q.rtype);
        let mut want = dns_answer(&dsnap, &question);
        if want == DnsOutcome::Forward {
            // Not cluster data: the answer is the upstream's business.
            continue;
        }
        if matches!(q.rtype, RType::Other(252)) {
            // Refusing a transfer may be said with REFUSED or NOTIMP; compare codes only.
            want = DnsOutcome::rcode(Rcode::Refused);
        }
        let mut rules = q.rules.clone();
        rules.push("DNS-20");
        let what = format!(
            "{} {:?} over {}",
            q.name,
            q.rtype,
            if q.tcp { "TCP" } else { "UDP" }
        );
        let id = u16::try_from(i % 60000).unwrap_or(0) + 1;
        let got = match encode(id, &q.name, q.rtype) {
            None => Err(format!("cannot encode {}", q.name)),
            Some(msg) => live
                .dns_exchange(ns, msg, q.tcp)
                .map_err(|e| e.to_string())
                .and_then(|b| decode(&b)),
        };
        let got = match got {
            Ok(o) => show(&o),
            Err(e) => e,
        };
        out.push(Check::new(rules, what, show(&want), got));
    }
    out
}

/// RES: glibc resolves each Service's short name through the search list.
fn resolution(live: &Live, ns: &str, snap: &Snapshot) -> Vec<Check> {
    let mut out = Vec::new();
    for svc in in_ns(snap, ns) {
        let want: BTreeSet<IpAddr> = match &svc.cluster_ips {
            ClusterIps::Ips(ips) if !matches!(svc.kind, ServiceKind::ExternalName(_)) => {
                ips.iter().copied().collect()
            }
            _ => continue,
        };
        let got: BTreeSet<IpAddr> = live
            .getent(ns, &svc.key.name)
            .unwrap_or_default()
            .into_iter()
            .collect();
        out.push(Check::new(
            vec!["RES-1", "RES-3"],
            format!("getent ahosts {} in a Pod of {ns}", svc.key.name),
            format!("{want:?}"),
            format!("{got:?}"),
        ));
    }
    out
}
