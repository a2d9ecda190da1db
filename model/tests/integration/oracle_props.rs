//! Property tests of the oracle and of the reconcile functions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use signpost_model::cluster::{
    AddressFamily, ClusterIps, ContainerPort, EndpointSlice, Node, ObjectKey, Pod, PodPhase,
    Protocol, ProxyTable, Question, RType, Rcode, ResolvConf, ResolverLib, Selector, Service,
    ServiceKind, ServicePort, TargetPort, TrafficPolicy, VirtualKey, VirtualService,
};
use signpost_model::reconcile::{
    SliceWrite, apply_ops, plan, plan_slices, plan_slices_with, stale_udp_flows,
};
use signpost_model::spec::{
    DnsSnapshot, Lookup, PodsMode, SliceShape, candidates, dns_answer, endpoint_dns_name,
    endpoints_for, proxy_table, resolve,
};

const APPS: [&str; 3] = ["a", "b", "c"];
const NAMESPACES: [&str; 2] = ["default", "prod"];

fn arb_pod(i: usize) -> impl Strategy<Value = Pod> {
    (
        0..2usize,
        0..3usize,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0..4u8,
        proptest::option::of(0..2usize),
        any::<bool>(),
    )
        .prop_map(
            move |(ns, app, ready, terminating, v6, phase, host, named)| Pod {
                key: ObjectKey::new(NAMESPACES[ns], format!("pod-{i}")),
                labels: BTreeMap::from([("app".to_owned(), APPS[app].to_owned())]),
                ips: {
                    let v4: IpAddr = IpAddr::from([10, 244, 0, u8::try_from(i).unwrap() + 1]);
                    let v6a: IpAddr = format!("fd00::{:x}", i + 1).parse().unwrap();
                    if v6 { vec![v4, v6a] } else { vec![v4] }
                },
                node: Some(format!("node-{}", i % 2)),
                phase: [
                    PodPhase::Running,
                    PodPhase::Running,
                    PodPhase::Pending,
                    PodPhase::Succeeded,
                ][usize::from(phase)],
                ready,
                terminating,
                hostname: host.map(|h| format!("host-{h}")),
                subdomain: host.map(|_| APPS[app].to_owned()),
                ports: if named {
                    vec![ContainerPort {
                        name: "http".into(),
                        port: 8000 + u16::try_from(i).unwrap(),
                        protocol: Protocol::Tcp,
                    }]
                } else {
                    Vec::new()
                },
            },
        )
}

fn arb_service(i: usize) -> impl Strategy<Value = Service> {
    (
        0..2usize,
        0..4u8,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(ns, kind, dual, named_target, publish, local)| {
            let name = APPS[i];
            let v4: IpAddr = IpAddr::from([10, 96, 0, u8::try_from(i).unwrap() + 1]);
            let v6: IpAddr = format!("fd00:96::{:x}", i + 1).parse().unwrap();
            let (svc_kind, cluster_ips) = match kind {
                0 => (
                    ServiceKind::ClusterIp,
                    ClusterIps::Ips(if dual { vec![v4, v6] } else { vec![v4] }),
                ),
                1 => (ServiceKind::NodePort, ClusterIps::Ips(vec![v4])),
                2 => (ServiceKind::ClusterIp, ClusterIps::Headless),
                _ => (
                    ServiceKind::ExternalName("example.com".into()),
                    ClusterIps::Unset,
                ),
            };
            let families = if dual {
                vec![AddressFamily::V4, AddressFamily::V6]
            } else {
                vec![AddressFamily::V4]
            };
            Service {
                key: ObjectKey::new(NAMESPACES[ns], name),
                selector: Some(Selector::from_pairs([("app", name)])),
                kind: svc_kind,
                cluster_ips,
                families,
                ports: vec![
                    ServicePort {
                        name: "http".into(),
                        protocol: Protocol::Tcp,
                        port: 80,
                        target_port: if named_target {
                            TargetPort::Name("http".into())
                        } else {
                            TargetPort::Number(8080)
                        },
                        node_port: (kind == 1).then_some(30080 + u16::try_from(i).unwrap()),
                    },
                    ServicePort {
                        name: "dns".into(),
                        protocol: Protocol::Udp,
                        port: 53,
                        target_port: TargetPort::Number(5353),
                        node_port: None,
                    },
                ],
                publish_not_ready: publish,
                affinity_timeout: local.then_some(60),
                internal_traffic_policy: if local {
                    TrafficPolicy::Local
                } else {
                    TrafficPolicy::Cluster
                },
            }
        })
}

#[derive(Debug, Clone)]
struct World {
    services: Vec<Service>,
    pods: Vec<Pod>,
}

impl World {
    /// Slices as the controller would write them from nothing.
    fn slices(&self) -> Vec<EndpointSlice> {
        let mut out = Vec::new();
        for svc in &self.services {
            let desired = endpoints_for(svc, &self.pods);
            for (n, write) in plan_slices(&desired, &[]).into_iter().enumerate() {
                let SliceWrite::Create { shape, endpoints } = write else {
                    panic!("only creates from nothing")
                };
                out.push(EndpointSlice {
                    key: ObjectKey::new(svc.key.namespace.clone(), format!("{}-{n}", svc.key.name)),
                    service: svc.key.name.clone(),
                    family: shape.family,
                    ports: shape.ports,
                    endpoints,
                });
            }
        }
        out
    }
}

fn arb_world() -> impl Strategy<Value = World> {
    let services =
        (arb_service(0), arb_service(1), arb_service(2)).prop_map(|(a, b, c)| vec![a, b, c]);
    let pods = (0..6usize).map(arb_pod).collect::<Vec<_>>();
    (services, pods, any::<proptest::sample::Index>()).prop_map(|(services, pods, keep)| {
        let n = 1 + keep.index(services.len());
        World {
            services: services.into_iter().take(n).collect(),
            pods,
        }
    })
}

fn snapshot<'a>(w: &'a World, slices: &'a [EndpointSlice]) -> DnsSnapshot<'a> {
    DnsSnapshot {
        zone: "cluster.local",
        synced: true,
        services: w.services.iter().collect(),
        slices: slices.iter().collect(),
        pods: w.pods.iter().collect(),
        namespaces: BTreeSet::from(["default", "prod", "empty"]),
        pods_mode: PodsMode::Verified,
    }
}

/// Names worth asking about in a world: every Service, endpoint, SRV and pod
/// name, parents, and some that do not exist.
fn names(w: &World, slices: &[EndpointSlice]) -> Vec<String> {
    let mut out = vec![
        "cluster.local".to_owned(),
        "svc.cluster.local".to_owned(),
        "default.svc.cluster.local".to_owned(),
        "empty.svc.cluster.local".to_owned(),
        "nope.svc.cluster.local".to_owned(),
        "dns-version.cluster.local".to_owned(),
        "zz.default.svc.cluster.local".to_owned(),
        "10-244-0-1.default.pod.cluster.local".to_owned(),
    ];
    for svc in &w.services {
        let fqdn = format!("{}.{}.svc.cluster.local", svc.key.name, svc.key.namespace);
        out.push(format!("_http._tcp.{fqdn}"));
        out.push(format!("_http.{fqdn}"));
        out.push(format!("_dns._udp.{fqdn}"));
        out.push(format!("_http._udp.{fqdn}"));
        out.push(format!("x.{fqdn}"));
        out.push(fqdn.to_uppercase());
        out.push(fqdn);
    }
    for s in slices {
        for ep in &s.endpoints {
            out.push(format!(
                "{}.{}.{}.svc.cluster.local",
                endpoint_dns_name(ep),
                s.service,
                s.key.namespace
            ));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// EPS, PXY, DNS: the oracle does not depend on the order of its inputs.
    #[test]
    fn oracle_is_independent_of_input_order(w in arb_world(), seed in any::<u64>()) {
        let slices = w.slices();
        let mut shuffled = w.clone();
        let rot = usize::try_from(seed % 7).unwrap();
        let n = shuffled.pods.len();
        shuffled.pods.rotate_left(rot % n);
        shuffled.pods.reverse();
        shuffled.services.reverse();
        let mut slices_shuffled = slices.clone();
        slices_shuffled.reverse();
        for svc in &w.services {
            prop_assert_eq!(endpoints_for(svc, &w.pods), endpoints_for(svc, &shuffled.pods));
        }
        let node = Node { name: "node-0".into(), addresses: vec!["10.0.0.1".parse().unwrap()], zone: None };
        let refs: Vec<_> = slices.iter().collect();
        let refs2: Vec<_> = slices_shuffled.iter().collect();
        prop_assert_eq!(proxy_table(&w.services, &refs, &node), proxy_table(&shuffled.services, &refs2, &node));
        let (a, b) = (snapshot(&w, &slices), snapshot(&shuffled, &slices_shuffled));
        for name in names(&w, &slices) {
            for t in [RType::A, RType::Aaaa, RType::Srv, RType::Ptr, RType::Cname, RType::Txt] {
                let q = Question::new(name.clone(), t);
                prop_assert_eq!(dns_answer(&a, &q), dns_answer(&b, &q));
            }
        }
    }

    /// DNS-13: for every name, A and AAAA agree on whether it exists, so
    /// musl's search walk (which stops at NODATA) never diverges from glibc's.
    #[test]
    fn nxdomain_and_nodata_agree_across_a_and_aaaa(w in arb_world()) {
        let slices = w.slices();
        let snap = snapshot(&w, &slices);
        for name in names(&w, &slices) {
            let a = dns_answer(&snap, &Question::new(name.clone(), RType::A));
            let aaaa = dns_answer(&snap, &Question::new(name.clone(), RType::Aaaa));
            prop_assert_eq!(a.code() == Some(Rcode::NxDomain), aaaa.code() == Some(Rcode::NxDomain), "{}", name);
            let txt = dns_answer(&snap, &Question::new(name.clone(), RType::Txt));
            prop_assert_eq!(a.code(), txt.code(), "{} exists for one type but not another", name);
        }
    }

    /// RES-2..RES-4: names are tried in the documented order and the walk
    /// stops where each library stops.
    #[test]
    fn resolve_tries_names_in_the_documented_order(
        labels in proptest::collection::vec("[a-z]{1,3}", 1..8),
        absolute in any::<bool>(),
        ndots in 1u8..7,
        search in proptest::collection::vec("[a-z]{1,4}\\.[a-z]{2}", 0..4),
        outcomes in proptest::collection::vec(0u8..4, 8),
        musl in any::<bool>(),
    ) {
        let lib = if musl { ResolverLib::Musl } else { ResolverLib::Glibc };
        let name = format!("{}{}", labels.join("."), if absolute { "." } else { "" });
        let conf = ResolvConf { nameservers: vec!["10.96.0.10".parse().unwrap()], search: search.clone(), ndots };
        let cands = candidates(&conf, &name, lib);
        let bare = labels.join(".");
        let searched: Vec<String> = search.iter().map(|d| format!("{bare}.{d}")).collect();
        let dots = labels.len() - 1;
        let expected: Vec<String> = if absolute {
            vec![bare.clone()]
        } else if dots >= usize::from(ndots) {
            if musl { vec![bare.clone()] } else { std::iter::once(bare.clone()).chain(searched).collect() }
        } else {
            searched.into_iter().chain(std::iter::once(bare.clone())).collect()
        };
        prop_assert_eq!(&cands, &expected);
        let outcome_of = |n: &str| {
            let i = cands.iter().position(|c| c == n).unwrap();
            match outcomes[i % outcomes.len()] {
                0 => Lookup::NxDomain,
                1 => Lookup::NoData,
                2 => Lookup::ServFail,
                _ => Lookup::Addresses(vec!["10.0.0.1".parse().unwrap()]),
            }
        };
        let res = resolve(&conf, &name, lib, outcome_of);
        prop_assert!(cands.starts_with(&res.tried));
        let last = outcome_of(res.tried.last().unwrap());
        let stops = |l: &Lookup| match (l, lib) {
            (Lookup::Addresses(_), _) => true,
            (Lookup::NxDomain, _) => false,
            (_, ResolverLib::Glibc) => false,
            (_, ResolverLib::Musl) => true,
        };
        for t in &res.tried[..res.tried.len() - 1] {
            prop_assert!(!stops(&outcome_of(t)), "walked past a stop at {}", t);
        }
        prop_assert!(stops(&last) || res.tried.len() == cands.len());
        prop_assert_eq!(res.result.is_ok(), matches!(last, Lookup::Addresses(_)));
    }

    /// PXY-8: applying the plan to what is observed gives what is desired,
    /// and one backend change is one op.
    #[test]
    fn proxy_plan_reaches_desired(a in arb_table(), b in arb_table()) {
        let mut t = a.clone();
        apply_ops(&mut t, &plan(&b, &a));
        prop_assert_eq!(&t, &b);
        prop_assert!(plan(&b, &b).is_empty());
        if let Some((key, vs)) = b.iter().next() {
            let mut c = b.clone();
            let backend = SocketAddr::new("10.9.9.9".parse().unwrap(), 1);
            c.get_mut(key).unwrap().backends.insert(backend);
            prop_assert_eq!(plan(&c, &b).len(), 1, "{:?}", vs);
        }
    }

    /// PXY-11: the flows to forget are exactly the UDP (address, backend)
    /// pairs the old table had and the new one lacks.
    #[test]
    fn stale_udp_flows_are_the_udp_backends_taken_away(a in arb_table(), b in arb_table()) {
        let got = stale_udp_flows(&plan(&b, &a), &a);
        let want: BTreeSet<_> = a
            .iter()
            .filter(|(k, _)| k.protocol == Protocol::Udp)
            .flat_map(|(k, vs)| vs.backends.iter().map(move |be| (*k, *be)))
            .filter(|(k, be)| !b.get(k).is_some_and(|n| n.backends.contains(be)))
            .collect();
        prop_assert_eq!(got, want);
        prop_assert!(stale_udp_flows(&plan(&a, &a), &a).is_empty());
    }

    /// EPS-9, EPS-11: slice writes reach the desired endpoints, never exceed
    /// the per-slice maximum (100 by default, `--max-endpoints-per-slice`,
    /// also when it is lowered between two plans), and endpoints that stay
    /// do not move between slices unless their slice is over a lowered maximum.
    #[test]
    fn slice_plan_reaches_desired_with_minimal_churn(before in 0usize..250, after in 0usize..250, shift in 0usize..50, max_before in prop_oneof![Just(100usize), 1usize..120], max_after in prop_oneof![Just(100usize), 1usize..120]) {
        let shape = SliceShape { family: AddressFamily::V4, ports: Vec::new() };
        let ep = |i: usize| signpost_model::cluster::Endpoint {
            address: IpAddr::from([10, 1, u8::try_from(i / 256).unwrap(), u8::try_from(i % 256).unwrap()]),
            ready: true, serving: true, terminating: false, hostname: None, node: None, zone: None, pod: None,
        };
        let desired_before: BTreeMap<SliceShape, BTreeSet<_>> = [(shape.clone(), (0..before).map(ep).collect())].into();
        let desired_after: BTreeMap<SliceShape, BTreeSet<_>> = [(shape.clone(), (shift..shift + after).map(ep).collect())].into();
        let mut slices: Vec<EndpointSlice> = Vec::new();
        let apply = |slices: &mut Vec<EndpointSlice>, writes: Vec<SliceWrite>| {
            for w in writes {
                match w {
                    SliceWrite::Create { shape, endpoints } => {
                        let n = slices.len() + 1000;
                        slices.push(EndpointSlice { key: ObjectKey::new("default", format!("s-{n}")), service: "s".into(), family: shape.family, ports: shape.ports, endpoints });
                    }
                    SliceWrite::Update(s) => { let i = slices.iter().position(|x| x.key == s.key).unwrap(); slices[i] = s; }
                    SliceWrite::Delete(k) => slices.retain(|x| x.key != k),
                }
            }
        };
        apply(&mut slices, plan_slices_with(&desired_before, &[], max_before));
        if max_before == 100 {
            prop_assert_eq!(&slices, &{ let mut d = Vec::new(); apply(&mut d, plan_slices(&desired_before, &[])); d });
        }
        let home: BTreeMap<IpAddr, ObjectKey> = slices.iter().flat_map(|s| s.endpoints.iter().map(|e| (e.address, s.key.clone()))).collect();
        let refs: Vec<_> = slices.iter().collect();
        let writes = plan_slices_with(&desired_after, &refs, max_after);
        // No moment without endpoints: every delete comes after every create and update.
        if let Some(first_delete) = writes.iter().position(|w| matches!(w, SliceWrite::Delete(_))) {
            prop_assert!(writes[first_delete..].iter().all(|w| matches!(w, SliceWrite::Delete(_))), "a write after a delete: {:?}", writes);
        }
        apply(&mut slices, writes);
        let got: BTreeSet<_> = slices.iter().flat_map(|s| s.endpoints.iter().cloned()).collect();
        prop_assert_eq!(&got, &desired_after[&shape]);
        if after == 0 {
            // EPS-14: the placeholder, one empty slice.
            prop_assert!(slices.len() == 1 && slices[0].endpoints.is_empty(), "{:?}", slices);
        } else {
            prop_assert!(slices.iter().all(|s| s.endpoints.len() <= max_after && !s.endpoints.is_empty()));
        }
        if max_after < max_before {
            return Ok(());
        }
        for s in &slices {
            for e in &s.endpoints {
                if let Some(k) = home.get(&e.address) {
                    prop_assert_eq!(k, &s.key, "an endpoint that stayed moved slices");
                }
            }
        }
    }
}

fn arb_table() -> impl Strategy<Value = ProxyTable> {
    proptest::collection::btree_map(
        (0..4u8, 0..2u8).prop_map(|(ip, p)| VirtualKey {
            ip: IpAddr::from([10, 96, 0, ip]),
            protocol: if p == 0 { Protocol::Tcp } else { Protocol::Udp },
            port: 80,
        }),
        (
            proptest::collection::btree_set(0..6u8, 0..4),
            proptest::option::of(1..3u32),
        )
            .prop_map(|(b, a)| VirtualService {
                backends: b
                    .into_iter()
                    .map(|i| SocketAddr::new(IpAddr::from([10, 244, 0, i]), 8080))
                    .collect(),
                affinity_timeout: a,
            }),
        0..4,
    )
}

mod conversion {
    //! EPS-10: whatever a k8s-openapi object holds, conversion returns a
    //! value or a typed error; it never panics.
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use proptest::prelude::*;
    use signpost_model::cluster::{Pod, Service};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("None".to_owned()),
            Just("10.96.0.1".to_owned()),
            Just("fd00::1".to_owned()),
            Just("TCP".to_owned()),
            Just("ExternalName".to_owned()),
            "[a-z0-9.:-]{0,70}",
            ".{0,300}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn services_and_pods_never_panic(
            name in text(), ns in proptest::option::of(text()), ty in proptest::option::of(text()),
            ip in proptest::option::of(text()), ips in proptest::option::of(proptest::collection::vec(text(), 0..3)),
            port in any::<i32>(), target in proptest::option::of(prop_oneof![any::<i32>().prop_map(IntOrString::Int), text().prop_map(IntOrString::String)]),
            proto in proptest::option::of(text()), affinity in proptest::option::of(text()), sel in proptest::option::of(text()),
        ) {
            let svc = core::Service {
                metadata: ObjectMeta { name: Some(name.clone()), namespace: ns.clone(), ..Default::default() },
                spec: Some(core::ServiceSpec {
                    type_: ty.clone(),
                    cluster_ip: ip.clone(),
                    cluster_ips: ips.clone(),
                    external_name: ip.clone(),
                    session_affinity: affinity,
                    selector: sel.map(|v| [("app".to_owned(), v)].into()),
                    ports: Some(vec![core::ServicePort { port, target_port: target, protocol: proto.clone(), name: ty.clone(), ..Default::default() }]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let _ = Service::try_from(&svc);
            let pod = core::Pod {
                metadata: ObjectMeta { name: Some(name), namespace: ns, ..Default::default() },
                spec: Some(core::PodSpec { hostname: ty, containers: vec![core::Container {
                    ports: Some(vec![core::ContainerPort { container_port: port, protocol: proto, ..Default::default() }]),
                    ..Default::default()
                }], ..Default::default() }),
                status: Some(core::PodStatus { pod_ip: ip, pod_ips: ips.map(|v| v.into_iter().map(|ip| core::PodIP { ip }).collect()), ..Default::default() }),
            };
            let _ = Pod::try_from(&pod);
        }
    }
}

/// A ready endpoint at 10.244.0.5, for the slice-plan cases below.
fn ready_endpoint() -> signpost_model::cluster::Endpoint {
    signpost_model::cluster::Endpoint {
        address: IpAddr::from([10, 244, 0, 5]),
        ready: true,
        serving: true,
        terminating: false,
        hostname: None,
        node: None,
        zone: None,
        pod: None,
    }
}

/// Issue 13, finding 11: when a Service's ports change, the slice of the
/// new shape is created before the old one is deleted — deletes used to
/// come first, leaving a window in which the Service had no endpoints.
#[test]
fn a_port_change_creates_the_new_slice_before_deleting_the_old() {
    use signpost_model::cluster::EndpointPort;
    let ep = ready_endpoint();
    let port = |p: u16| EndpointPort {
        name: "http".into(),
        port: p,
        protocol: Protocol::Tcp,
    };
    let old = EndpointSlice {
        key: ObjectKey::new("default", "voy-abc"),
        service: "voy".into(),
        family: AddressFamily::V4,
        ports: vec![port(8080)],
        endpoints: vec![ep.clone()],
    };
    let shape = SliceShape {
        family: AddressFamily::V4,
        ports: vec![port(9090)],
    };
    let desired: BTreeMap<SliceShape, BTreeSet<_>> = [(shape, [ep].into())].into();
    let writes = plan_slices(&desired, &[&old]);
    assert!(
        matches!(
            writes.as_slice(),
            [SliceWrite::Create { .. }, SliceWrite::Delete(k)] if *k == old.key
        ),
        "{writes:?}"
    );
}

/// EPS-14: a managed Service without endpoints keeps exactly one empty
/// slice, as kube-controller-manager does (upstream's Conformance test
/// "Services should serve a basic endpoint from pods" waits for it). It is
/// created once, left alone while nothing changes, filled in place when
/// endpoints come (one write), emptied in place when they go, and a second
/// empty slice is deleted.
#[test]
fn a_service_without_endpoints_keeps_one_placeholder_slice() {
    let shape = SliceShape {
        family: AddressFamily::V4,
        ports: Vec::new(),
    };
    let ep = ready_endpoint();
    let empty: BTreeMap<SliceShape, BTreeSet<_>> = [(shape.clone(), BTreeSet::new())].into();
    let writes = plan_slices(&empty, &[]);
    assert_eq!(
        writes,
        vec![SliceWrite::Create {
            shape: shape.clone(),
            endpoints: Vec::new()
        }]
    );
    let placeholder = EndpointSlice {
        key: ObjectKey::new("default", "voy-abc"),
        service: "voy".into(),
        family: AddressFamily::V4,
        ports: Vec::new(),
        endpoints: Vec::new(),
    };
    assert_eq!(plan_slices(&empty, &[&placeholder]), vec![], "left alone");
    let one: BTreeMap<SliceShape, BTreeSet<_>> = [(shape.clone(), [ep.clone()].into())].into();
    let filled = EndpointSlice {
        endpoints: vec![ep.clone()],
        ..placeholder.clone()
    };
    assert_eq!(
        plan_slices(&one, &[&placeholder]),
        vec![SliceWrite::Update(filled.clone())],
        "filled in place"
    );
    assert_eq!(
        plan_slices(&empty, &[&filled]),
        vec![SliceWrite::Update(placeholder.clone())],
        "emptied in place"
    );
    let second = EndpointSlice {
        key: ObjectKey::new("default", "voy-def"),
        ..placeholder.clone()
    };
    assert_eq!(
        plan_slices(&empty, &[&second, &placeholder]),
        vec![SliceWrite::Delete(second.key.clone())],
        "one placeholder, the first by name"
    );
}
