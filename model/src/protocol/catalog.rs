//! The fixed cast of the model: the seed's `ent` and `voy` Services (plus
//! `ent-v2`, a second Service over the enterprise Pods that can take a
//! released ClusterIP), their Pods, two nodes and the client.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::cluster::{
    AddressFamily, ClusterIps, ContainerPort, Node, ObjectKey, Pod, PodPhase, Protocol, ResolvConf,
    Selector, Service, ServiceKind, ServicePort, TargetPort, TrafficPolicy,
};

/// Namespace of every object in the model.
pub const NAMESPACE: &str = "default";
/// The cluster zone.
pub const ZONE: &str = "cluster.local";
/// The Service port every catalog Service exposes.
pub const SERVICE_PORT: u16 = 80;
/// The container port behind it (named `http`).
pub const CONTAINER_PORT: u16 = 8080;

/// Service templates: name and the `app` label it selects.
pub const SERVICES: [(&str, &str); 3] = [("ent", "ent"), ("voy", "voy"), ("ent-v2", "ent")];
/// Pod templates: name, `app` label, node index, IP.
pub const PODS: [(&str, &str, usize, &str); 4] = [
    ("enterprise-0", "ent", 0, "10.244.0.10"),
    ("voyager-0", "voy", 1, "10.244.1.10"),
    ("voyager-1", "voy", 0, "10.244.0.11"),
    ("voyager-2", "voy", 1, "10.244.1.11"),
];
/// Node names and addresses.
pub const NODES: [(&str, &str); 2] = [("node-a", "10.0.0.1"), ("node-b", "10.0.0.2")];
/// The client Pod (index into [`PODS`]) and the name it resolves.
pub const CLIENT: (usize, &str) = (0, "voy");
/// The cluster DNS Service IP (outside the allocator's pool).
pub const DNS_IP: &str = "10.96.0.10";

/// The ClusterIP pool: `10.96.0.1 ..= 10.96.0.<n>`.
pub fn service_ip(i: u8) -> IpAddr {
    IpAddr::from([10, 96, 0, i + 1])
}

/// A catalog Service with the given ClusterIP.
pub fn service(index: usize, ip: IpAddr) -> Service {
    let (name, app) = SERVICES[index];
    Service {
        key: ObjectKey::new(NAMESPACE, name),
        selector: Some(Selector::from_pairs([("app", app)])),
        kind: ServiceKind::ClusterIp,
        cluster_ips: ClusterIps::Ips(vec![ip]),
        families: vec![AddressFamily::V4],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: SERVICE_PORT,
            target_port: TargetPort::Name("http".into()),
            node_port: None,
        }],
        publish_not_ready: false,
        affinity_timeout: None,
        internal_traffic_policy: TrafficPolicy::Cluster,
    }
}

/// Index of a catalog Service by name.
pub fn service_index(name: &str) -> Option<usize> {
    SERVICES.iter().position(|(n, _)| *n == name)
}

/// Index of a catalog Pod by name.
pub fn pod_index(name: &str) -> Option<usize> {
    PODS.iter().position(|(n, ..)| *n == name)
}

/// The selector label of a catalog Service name.
pub fn selects(service: &str, pod: usize) -> bool {
    SERVICES
        .iter()
        .any(|(n, app)| *n == service && PODS[pod].1 == *app)
}

/// A catalog Pod, running, ready or not.
pub fn pod(index: usize, ready: bool, nodes: u8) -> Pod {
    let (name, app, node, ip) = PODS[index];
    Pod {
        key: ObjectKey::new(NAMESPACE, name),
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        ips: vec![ip.parse().expect("catalog IP")],
        node: Some(NODES[node % usize::from(nodes.max(1))].0.to_owned()),
        phase: PodPhase::Running,
        ready,
        terminating: false,
        hostname: None,
        subdomain: None,
        ports: vec![ContainerPort {
            name: "http".into(),
            port: CONTAINER_PORT,
            protocol: Protocol::Tcp,
        }],
    }
}

/// The Pod owning an address, if any.
pub fn pod_by_ip(ip: IpAddr) -> Option<usize> {
    PODS.iter()
        .position(|p| p.3.parse::<IpAddr>().ok() == Some(ip))
}

/// A catalog Node.
pub fn node(index: usize) -> Node {
    let (name, ip) = NODES[index];
    Node {
        name: name.to_owned(),
        addresses: vec![ip.parse().expect("catalog IP")],
        zone: None,
    }
}

/// The client's resolv.conf, as the kubelet writes it.
pub fn client_resolv_conf() -> ResolvConf {
    ResolvConf::kubelet(NAMESPACE, ZONE, DNS_IP.parse().expect("catalog IP"))
}
