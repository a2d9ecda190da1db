//! The tracer against the oracle: for generated clusters, every
//! ClusterIP:port goes exactly to the oracle's backends (or is rejected),
//! from any source, after a full sync and after a partial one, and is
//! masqueraded exactly when the masquerade policy says so.

use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;
use signpost_model::cluster::{
    AddressFamily, ClusterIps, Endpoint, EndpointPort, EndpointSlice, Node, ObjectKey, Protocol,
    ProxyTable, Selector, Service, ServiceKind, ServicePort, TargetPort, TrafficPolicy,
};
use signpost_model::spec::proxy_table;
use signpost_proxy::addresses::{Masquerade, parse_cidrs};
use signpost_proxy::nftables::build::{full, partial};
use signpost_proxy::nftables::tracer::Tracer;

fn pod_ip(i: u8, v6: bool) -> IpAddr {
    if v6 {
        format!("fd00:244::{:x}", i + 2).parse().unwrap()
    } else {
        IpAddr::from([10, 244, 0, i + 2])
    }
}

fn arb_cluster() -> impl Strategy<Value = (Vec<Service>, Vec<EndpointSlice>)> {
    let svc = (
        0..3u8,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    );
    let ep = (0..6u8, any::<bool>(), any::<bool>(), any::<bool>(), 0..2u8);
    (
        proptest::collection::vec(svc, 1..4),
        proptest::collection::vec(proptest::collection::vec(ep, 0..5), 4),
    )
        .prop_map(|(svcs, eps)| {
            let mut services = Vec::new();
            let mut slices = Vec::new();
            for (i, (kind, dual, affinity, local, udp)) in svcs.into_iter().enumerate() {
                let i = u8::try_from(i).unwrap();
                let name = format!("s{i}");
                let v4 = IpAddr::from([10, 96, 0, i + 1]);
                let v6: IpAddr = format!("fd00:96::{:x}", i + 1).parse().unwrap();
                let (k, ips) = match kind {
                    0 => (
                        ServiceKind::ClusterIp,
                        ClusterIps::Ips(if dual { vec![v4, v6] } else { vec![v4] }),
                    ),
                    1 => (ServiceKind::NodePort, ClusterIps::Ips(vec![v4])),
                    _ => (ServiceKind::ClusterIp, ClusterIps::Headless),
                };
                let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
                services.push(Service {
                    key: ObjectKey::new("default", name.clone()),
                    selector: Some(Selector::from_pairs([("app", "x")])),
                    kind: k,
                    cluster_ips: ips,
                    families: if dual {
                        vec![AddressFamily::V4, AddressFamily::V6]
                    } else {
                        vec![AddressFamily::V4]
                    },
                    ports: vec![
                        ServicePort {
                            name: "http".into(),
                            protocol,
                            port: 80,
                            target_port: TargetPort::Number(8080),
                            node_port: (kind == 1).then_some(30000 + u16::from(i)),
                        },
                        ServicePort {
                            name: "admin".into(),
                            protocol: Protocol::Tcp,
                            port: 81,
                            target_port: TargetPort::Number(9090),
                            node_port: None,
                        },
                    ],
                    publish_not_ready: false,
                    affinity_timeout: affinity.then_some(60),
                    internal_traffic_policy: if local {
                        TrafficPolicy::Local
                    } else {
                        TrafficPolicy::Cluster
                    },
                });
                for (fam, v6) in [(AddressFamily::V4, false), (AddressFamily::V6, true)] {
                    let endpoints: Vec<Endpoint> = eps[usize::from(i)]
                        .iter()
                        .map(|(p, ready, serving, terminating, node)| Endpoint {
                            address: pod_ip(*p, v6),
                            ready: *ready && !*terminating,
                            serving: *serving,
                            terminating: *terminating,
                            hostname: None,
                            node: Some(format!("node-{node}")),
                            zone: None,
                            pod: Some(format!("p{p}")),
                        })
                        .collect();
                    slices.push(EndpointSlice {
                        key: ObjectKey::new("default", format!("{name}-{v6}")),
                        service: name.clone(),
                        family: fam,
                        ports: vec![EndpointPort {
                            name: "http".into(),
                            port: 8080,
                            protocol,
                        }],
                        endpoints,
                    });
                }
            }
            (services, slices)
        })
}

fn node_ips() -> Vec<IpAddr> {
    node().addresses
}

fn node() -> Node {
    Node {
        name: "node-0".into(),
        addresses: vec!["10.0.0.1".parse().unwrap()],
        zone: None,
    }
}

fn table((services, slices): &(Vec<Service>, Vec<EndpointSlice>)) -> ProxyTable {
    let refs: Vec<&EndpointSlice> = slices.iter().collect();
    proxy_table(services, &refs, &node())
}

/// The policies: the default, `--masquerade-all`, and `--cluster-cidr`
/// naming the Pod ranges (one family or both).
fn arb_masquerade() -> impl Strategy<Value = Masquerade> {
    prop_oneof![
        Just(Masquerade::default()),
        Just(Masquerade {
            all: true,
            cluster_cidrs: Vec::new()
        }),
        Just(Masquerade {
            all: false,
            cluster_cidrs: parse_cidrs("10.244.0.0/24").unwrap()
        }),
        Just(Masquerade {
            all: false,
            cluster_cidrs: parse_cidrs("10.244.0.0/24,fd00:244::/120").unwrap()
        }),
    ]
}

fn check(tracer: &Tracer, t: &ProxyTable, policy: &Masquerade) -> Result<(), TestCaseError> {
    for (key, vs) in t {
        // Pod addresses, and sources off the Pod ranges.
        let sources: Vec<IpAddr> = if key.ip.is_ipv4() {
            vec![
                IpAddr::from([10, 244, 9, 9]),
                IpAddr::from([192, 168, 5, 5]),
                pod_ip(0, false),
                pod_ip(3, false),
            ]
        } else {
            vec![
                "fd00:244::99".parse().unwrap(),
                "fd99::5".parse().unwrap(),
                pod_ip(0, true),
            ]
        };
        for src in sources {
            let tr = tracer
                .trace(src, key.ip, key.protocol, key.port)
                .map_err(TestCaseError::fail)?;
            if vs.rejects() {
                prop_assert!(
                    tr.rejected && tr.dnat.is_empty(),
                    "{key:?} from {src}: {tr:?}"
                );
            } else {
                prop_assert_eq!(&tr.backends(), &vs.backends, "{:?} from {}", key, src);
                prop_assert!(!tr.rejected);
                // Hairpin traffic, and all NodePort traffic, is masqueraded;
                // traffic to a ClusterIP as the policy says.
                let nodeport = node_ips().contains(&key.ip);
                for (backend, masq) in &tr.dnat {
                    prop_assert_eq!(
                        *masq,
                        nodeport || backend.ip() == src || policy.masquerades(src),
                        "masquerade for {} from {}",
                        backend,
                        src
                    );
                }
            }
        }
        // An unknown port on a ClusterIP is rejected; on the node's address it passes.
        let tr = tracer
            .trace(IpAddr::from([10, 244, 9, 9]), key.ip, Protocol::Tcp, 7)
            .map_err(TestCaseError::fail)?;
        if !node_ips().contains(&key.ip) && t.keys().all(|k| !(k.ip == key.ip && k.port == 7)) {
            prop_assert!(tr.rejected, "unknown port on {} not rejected", key.ip);
        }
        if node_ips().contains(&key.ip) {
            prop_assert!(
                !tr.rejected,
                "the node address must not be rejected wholesale"
            );
        }
    }
    // An address that is no ClusterIP passes untouched.
    let tr = tracer
        .trace(
            IpAddr::from([10, 244, 9, 9]),
            IpAddr::from([10, 97, 0, 1]),
            Protocol::Tcp,
            80,
        )
        .map_err(TestCaseError::fail)?;
    prop_assert!(!tr.rejected && tr.dnat.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn full_sync_traces_to_the_oracle(c in arb_cluster(), m in arb_masquerade()) {
        let t = table(&c);
        let mut tracer = Tracer::default();
        tracer.apply(&full(&t, &node_ips(), &m).json()).map_err(TestCaseError::fail)?;
        check(&tracer, &t, &m)?;
    }

    #[test]
    fn partial_sync_traces_to_the_oracle(a in arb_cluster(), b in arb_cluster(), m in arb_masquerade()) {
        let (ta, tb) = (table(&a), table(&b));
        let mut tracer = Tracer::default();
        tracer.apply(&full(&ta, &node_ips(), &m).json()).map_err(TestCaseError::fail)?;
        if let Some(tx) = partial(&ta, &tb, &node_ips()) {
            tracer.apply(&tx.json()).map_err(TestCaseError::fail)?;
        }
        check(&tracer, &tb, &m)?;
    }
}

#[test]
fn the_tracer_refuses_shapes_it_does_not_know() {
    let mut tracer = Tracer::default();
    let tx = serde_json::json!({ "nftables": [{ "add": { "table": { "family": "inet", "name": "signpost" } } },
        { "add": { "chain": { "family": "inet", "table": "signpost", "name": "nat-prerouting" } } },
        { "add": { "rule": { "family": "inet", "table": "signpost", "chain": "nat-prerouting", "expr": [{ "counter": null }] } } }] });
    tracer.apply(&tx).unwrap();
    assert!(
        tracer
            .trace(
                IpAddr::from([1, 1, 1, 1]),
                IpAddr::from([10, 96, 0, 1]),
                Protocol::Tcp,
                80
            )
            .is_err()
    );
    let _ = SocketAddr::from(([0, 0, 0, 0], 0));
}
