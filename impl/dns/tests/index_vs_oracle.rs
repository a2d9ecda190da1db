//! The zone index against the oracle: random event sequences (Service
//! add/update/delete including type changes, EndpointSlice add/update/move
//! /delete, Namespaces, Pods in every pod-record mode, sync), and after every event every generated question is
//! answered exactly as `dns_answer` answers it over the same objects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use proptest::prelude::*;
use signpost_dns::{Change, ZoneIndex};
use signpost_model::cluster::{
    AddressFamily, ClusterIps, Endpoint, EndpointPort, EndpointSlice, ObjectKey, Pod, PodPhase,
    Protocol, Question, RType, Selector, Service, ServiceKind, ServicePort, TargetPort,
    TrafficPolicy,
};
use signpost_model::spec::{DnsSnapshot, PodsMode, dns_answer, endpoint_dns_name};

const NS: [&str; 2] = ["default", "prod"];
const NAMES: [&str; 3] = ["voy", "ent", "web"];

fn service(ns: usize, name: usize, kind: u8, v6: bool, named: bool) -> Service {
    let ip4 = IpAddr::from([
        10,
        96,
        u8::try_from(ns).unwrap(),
        u8::try_from(name).unwrap() + 1,
    ]);
    let ip6: IpAddr = format!("fd00:96::{ns}:{name}").parse().unwrap();
    let (k, ips) = match kind {
        0 => (
            ServiceKind::ClusterIp,
            ClusterIps::Ips(if v6 { vec![ip4, ip6] } else { vec![ip4] }),
        ),
        1 => (ServiceKind::ClusterIp, ClusterIps::Headless),
        2 => (
            ServiceKind::ExternalName("example.com".into()),
            ClusterIps::Unset,
        ),
        _ => (ServiceKind::NodePort, ClusterIps::Ips(vec![ip6])),
    };
    Service {
        key: ObjectKey::new(NS[ns], NAMES[name]),
        selector: Some(Selector::from_pairs([("app", "x")])),
        kind: k,
        cluster_ips: ips,
        families: vec![AddressFamily::V4, AddressFamily::V6],
        ports: vec![
            ServicePort {
                name: if named { "http".into() } else { String::new() },
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
                node_port: None,
            },
            ServicePort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53,
                target_port: TargetPort::Number(53),
                node_port: None,
            },
        ],
        publish_not_ready: false,
        affinity_timeout: None,
        internal_traffic_policy: TrafficPolicy::Cluster,
    }
}

fn slice(ns: usize, name: usize, id: u8, v6: bool, eps: &[(u8, bool, bool)]) -> EndpointSlice {
    EndpointSlice {
        key: ObjectKey::new(NS[ns], format!("{}-{id}", NAMES[name])),
        service: NAMES[name].into(),
        family: if v6 {
            AddressFamily::V6
        } else {
            AddressFamily::V4
        },
        ports: vec![
            EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            },
            EndpointPort {
                name: "dns".into(),
                port: 53,
                protocol: Protocol::Udp,
            },
        ],
        endpoints: eps
            .iter()
            .map(|(i, ready, host)| Endpoint {
                address: if v6 {
                    format!("fd00:244::{i}").parse().unwrap()
                } else {
                    IpAddr::from([10, 244, 0, *i])
                },
                ready: *ready,
                serving: *ready,
                terminating: false,
                hostname: host.then(|| format!("h{i}")),
                node: None,
                zone: None,
                pod: None,
            })
            .collect(),
    }
}

#[derive(Debug, Clone)]
enum Ev {
    Svc(usize, usize, u8, bool, bool),
    DelSvc(usize, usize),
    Slice(usize, usize, u8, bool, Vec<(u8, bool, bool)>),
    DelSlice(usize, usize, u8),
    /// A Namespace object (index into NS_OBJECTS) appears or goes.
    Ns(usize, bool),
    /// A Pod in a namespace with an address (10.244.0.x), or its deletion.
    Pod(usize, u8, Option<u8>),
    Synced,
}

const NS_OBJECTS: [&str; 3] = ["default", "prod", "quiet"];

fn pod(ns: usize, id: u8, ip: u8) -> Pod {
    Pod {
        key: ObjectKey::new(NS_OBJECTS[ns], format!("p{id}")),
        labels: BTreeMap::new(),
        ips: vec![IpAddr::from([10, 244, 0, ip])],
        node: None,
        phase: PodPhase::Running,
        ready: true,
        terminating: false,
        hostname: None,
        subdomain: None,
        ports: Vec::new(),
    }
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        (0..2usize, 0..3usize, 0..4u8, any::<bool>(), any::<bool>())
            .prop_map(|(a, b, c, d, e)| Ev::Svc(a, b, c, d, e)),
        (0..2usize, 0..3usize).prop_map(|(a, b)| Ev::DelSvc(a, b)),
        (
            0..2usize,
            0..3usize,
            0..2u8,
            any::<bool>(),
            proptest::collection::vec((1..6u8, any::<bool>(), any::<bool>()), 0..4)
        )
            .prop_map(|(a, b, c, d, e)| Ev::Slice(a, b, c, d, e)),
        (0..2usize, 0..3usize, 0..2u8).prop_map(|(a, b, c)| Ev::DelSlice(a, b, c)),
        (0..3usize, any::<bool>()).prop_map(|(a, b)| Ev::Ns(a, b)),
        (0..3usize, 0..3u8, proptest::option::of(1..4u8)).prop_map(|(a, b, c)| Ev::Pod(a, b, c)),
        Just(Ev::Synced),
    ]
}

fn questions(
    services: &BTreeMap<ObjectKey, Service>,
    slices: &BTreeMap<ObjectKey, EndpointSlice>,
) -> Vec<Question> {
    let zone = "cluster.local";
    let mut names: BTreeSet<String> = [
        zone.to_owned(),
        format!("svc.{zone}"),
        format!("pod.{zone}"),
        format!("dns-version.{zone}"),
        format!("nope.{zone}"),
        format!("svc..{zone}"),
        format!("a..default.svc.{zone}"),
        format!(".{zone}"),
        "example.org".into(),
    ]
    .into();
    for ns in NS_OBJECTS {
        names.insert(format!("{ns}.svc.{zone}"));
        names.insert(format!("{ns}.pod.{zone}"));
        for ip in 1..4 {
            names.insert(format!("10-244-0-{ip}.{ns}.pod.{zone}"));
        }
        names.insert(format!("fd00-244--1.{ns}.pod.{zone}"));
        names.insert(format!("1--2-3.{ns}.pod.{zone}"));
        names.insert(format!("not-an-ip.{ns}.pod.{zone}"));
    }
    for ns in NS {
        for n in NAMES {
            let fqdn = format!("{n}.{ns}.svc.{zone}");
            names.extend([
                format!("_http._tcp.{fqdn}"),
                format!("_dns._udp.{fqdn}"),
                format!("_http.{fqdn}"),
                format!("_tcp.{fqdn}"),
                format!("_udp.{fqdn}"),
                format!("_dns._tcp.{fqdn}"),
                format!("x.{fqdn}"),
                fqdn.to_uppercase(),
                fqdn,
            ]);
        }
    }
    for s in slices.values() {
        for e in &s.endpoints {
            names.insert(format!(
                "{}.{}.{}.svc.{zone}",
                endpoint_dns_name(e),
                s.service,
                s.key.namespace
            ));
            names.insert(reverse(e.address));
        }
    }
    for s in services.values() {
        names.extend(s.cluster_ips.ips().iter().map(|ip| reverse(*ip)));
    }
    names.insert(reverse(IpAddr::from([10, 1, 2, 3])));
    let mut out = Vec::new();
    for n in names {
        for t in [
            RType::A,
            RType::Aaaa,
            RType::Srv,
            RType::Ptr,
            RType::Cname,
            RType::Txt,
            RType::Any,
            RType::Other(252),
        ] {
            out.push(Question::new(n.clone(), t));
        }
    }
    out
}

fn reverse(ip: IpAddr) -> String {
    signpost_model::spec::reverse_name(ip)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_index_answers_as_the_oracle(
        events in proptest::collection::vec(ev(), 1..14),
        mode in prop_oneof![Just(PodsMode::Disabled), Just(PodsMode::Insecure), Just(PodsMode::Verified)],
    ) {
        let mut index = ZoneIndex::with_pods("cluster.local", mode);
        let mut namespaces: BTreeSet<&str> = BTreeSet::new();
        let mut pods: BTreeMap<ObjectKey, Pod> = BTreeMap::new();
        let mut services: BTreeMap<ObjectKey, Service> = BTreeMap::new();
        let mut slices: BTreeMap<ObjectKey, EndpointSlice> = BTreeMap::new();
        let mut synced = false;
        // Every change, for a second index that takes them as one batch.
        let mut all: Vec<(Change, Instant)> = Vec::new();
        for e in events {
            match e {
                Ev::Svc(ns, n, kind, v6, named) => {
                    let s = service(ns, n, kind, v6, named);
                    services.insert(s.key.clone(), s.clone());
                    step(&mut index, &mut all, Change::Service(s));
                }
                Ev::DelSvc(ns, n) => {
                    let k = ObjectKey::new(NS[ns], NAMES[n]);
                    services.remove(&k);
                    step(&mut index, &mut all, Change::ServiceDeleted(k));
                }
                Ev::Slice(ns, n, id, v6, eps) => {
                    let s = slice(ns, n, id, v6, &eps);
                    slices.insert(s.key.clone(), s.clone());
                    step(&mut index, &mut all, Change::Slice(s));
                }
                Ev::DelSlice(ns, n, id) => {
                    let k = ObjectKey::new(NS[ns], format!("{}-{id}", NAMES[n]));
                    slices.remove(&k);
                    step(&mut index, &mut all, Change::SliceDeleted(k));
                }
                Ev::Ns(i, true) => {
                    namespaces.insert(NS_OBJECTS[i]);
                    step(&mut index, &mut all, Change::Namespace(NS_OBJECTS[i].to_owned()));
                }
                Ev::Ns(i, false) => {
                    namespaces.remove(NS_OBJECTS[i]);
                    step(&mut index, &mut all, Change::NamespaceDeleted(NS_OBJECTS[i].to_owned()));
                }
                Ev::Pod(ns, id, Some(ip)) => {
                    let p = pod(ns, id, ip);
                    pods.insert(p.key.clone(), p.clone());
                    step(&mut index, &mut all, Change::Pod(p));
                }
                Ev::Pod(ns, id, None) => {
                    let k = ObjectKey::new(NS_OBJECTS[ns], format!("p{id}"));
                    pods.remove(&k);
                    step(&mut index, &mut all, Change::PodDeleted(k));
                }
                Ev::Synced => {
                    synced = true;
                    step(&mut index, &mut all, Change::Synced);
                }
            }
            let snap = snapshot(&services, &slices, &pods, &namespaces, synced, mode);
            for q in questions(&services, &slices) {
                prop_assert_eq!(index.answer(&q), dns_answer(&snap, &q), "{:?}", q);
            }
        }
        // The same changes as one batch end in the same zone, each Service
        // recomputed once.
        let touched = all.len();
        let mut batched = ZoneIndex::with_pods("cluster.local", mode);
        batched.apply_batch(all);
        prop_assert!(batched.refreshes() <= touched.min(NS.len() * NAMES.len()) as u64);
        let snap = snapshot(&services, &slices, &pods, &namespaces, synced, mode);
        for q in questions(&services, &slices) {
            prop_assert_eq!(batched.answer(&q), dns_answer(&snap, &q), "batched: {:?}", q);
        }
    }
}

/// The oracle's view of the objects so far.
fn snapshot<'a>(
    services: &'a BTreeMap<ObjectKey, Service>,
    slices: &'a BTreeMap<ObjectKey, EndpointSlice>,
    pods: &'a BTreeMap<ObjectKey, Pod>,
    namespaces: &BTreeSet<&'a str>,
    synced: bool,
    mode: PodsMode,
) -> DnsSnapshot<'a> {
    DnsSnapshot {
        zone: "cluster.local",
        synced,
        services: services.values().collect(),
        slices: slices.values().collect(),
        pods: pods.values().collect(),
        namespaces: namespaces.clone(),
        pods_mode: mode,
    }
}

fn step(index: &mut ZoneIndex, all: &mut Vec<(Change, Instant)>, change: Change) {
    let now = Instant::now();
    all.push((change.clone(), now));
    index.apply_at(change, now);
}

/// Issue 13, finding 8: a burst of changes to one large headless Service
/// recomputes it once, not once per change (each recomputation is O(E):
/// 20 slice changes to a Service of 10 000 endpoints took 20 × 42 ms).
#[test]
fn a_batch_recomputes_each_service_once() {
    let mut index = ZoneIndex::new("cluster.local");
    let svc = service(0, 0, 1, false, true);
    assert!(svc.is_headless());
    let changes: Vec<(Change, Instant)> = std::iter::once(Change::Service(svc))
        .chain((0..50u8).map(|i| {
            Change::Slice(slice(
                0,
                0,
                0,
                false,
                &[(i, true, true), (i + 1, i % 2 == 0, true)],
            ))
        }))
        .chain([Change::Synced])
        .map(|c| (c, Instant::now()))
        .collect();
    index.apply_batch(changes);
    assert_eq!(index.refreshes(), 1, "one Service touched by 51 changes");
}

/// Programming latency is reported once per change of a Service's records:
/// the first answer carrying them says how long after the change it came,
/// later answers say nothing, a change that leaves the records as they were
/// (a not-ready endpoint appearing) does not start a new measurement, and a
/// real one does.
#[test]
fn programming_latency_is_reported_once_per_change() {
    let mut index = ZoneIndex::new("cluster.local");
    let svc = service(0, 0, 1, false, true);
    let q = Question::new("voy.default.svc.cluster.local", RType::A);
    let t0 = Instant::now();
    index.apply_batch([
        (Change::Service(svc), t0),
        (
            Change::Slice(slice(0, 0, 0, false, &[(1, true, false)])),
            t0,
        ),
        (Change::Synced, t0),
    ]);
    let (_, first) = index.answer_timed(&q);
    assert!(first.is_some(), "the first answer after the change");
    assert_eq!(index.answer_timed(&q).1, None, "measured once");
    let unchanged = slice(0, 0, 0, false, &[(1, true, false), (2, false, false)]);
    index.apply(Change::Slice(unchanged));
    assert_eq!(index.answer_timed(&q).1, None, "the records did not change");
    let changed = slice(0, 0, 0, false, &[(1, true, false), (2, true, false)]);
    index.apply(Change::Slice(changed));
    assert!(index.answer_timed(&q).1.is_some(), "a second endpoint");
    // The Service name, `_http._tcp`, `_dns._udp`, `_tcp`, `_udp` and one
    // name per endpoint of this headless Service.
    assert_eq!(index.len(), 7);
    index.apply(Change::ServiceDeleted(ObjectKey::new("default", "voy")));
    assert_eq!(index.len(), 0);
}
