//! PXY: what a node's service proxy programs for every virtual address.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::cluster::{
    AddressFamily, Endpoint, EndpointSlice, Node, ProxyTable, Service, ServiceKind, ServicePort,
    TrafficPolicy, VirtualKey, VirtualService,
};

/// PXY-1..PXY-4: the backends a Service port may pick on `node` for the
/// given family. Ready endpoints if any; else serving-and-terminating ones
/// (PXY-2); `local_only` keeps endpoints on this node (PXY-4).
pub fn usable_endpoints<'a>(
    svc: &Service,
    port: &ServicePort,
    family: AddressFamily,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &str,
    local_only: bool,
) -> std::collections::BTreeSet<SocketAddr> {
    // Deduplicate by backend address across slices (EPS-8 keeps one per Pod).
    let mut all: BTreeMap<SocketAddr, &Endpoint> = BTreeMap::new();
    for slice in slices {
        if slice.key.namespace != svc.key.namespace
            || slice.service != svc.key.name
            || slice.family != family
        {
            continue;
        }
        let Some(ep_port) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            if local_only && ep.node.as_deref() != Some(node) {
                continue;
            }
            all.entry(SocketAddr::new(ep.address, ep_port.port))
                .or_insert(ep);
        }
    }
    let ready: std::collections::BTreeSet<SocketAddr> = all
        .iter()
        .filter(|(_, ep)| ep.ready)
        .map(|(a, _)| *a)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    all.iter()
        .filter(|(_, ep)| ep.serving && ep.terminating)
        .map(|(a, _)| *a)
        .collect()
}

/// The PXY oracle: the whole table of `node`. Every ClusterIP:port of every
/// Service with ClusterIPs is present (PXY-1); no usable endpoint means an
/// empty backend set, which data planes turn into a reject (PXY-3). NodePort
/// and LoadBalancer Services also answer on the node's addresses (PXY-7).
pub fn proxy_table<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: &[&'a EndpointSlice],
    node: &Node,
) -> ProxyTable {
    let mut table = ProxyTable::new();
    // Slices grouped by their Service once, so the table costs O(slices + services).
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        by_service
            .entry((slice.key.namespace.as_str(), slice.service.as_str()))
            .or_default()
            .push(slice);
    }
    // Services in key order, so that even a (never admitted) NodePort clash
    // resolves the same way whatever the input order.
    let mut services: Vec<&Service> = services.into_iter().collect();
    services.sort_by(|a, b| a.key.cmp(&b.key));
    for svc in services {
        if matches!(svc.kind, ServiceKind::ExternalName(_)) {
            continue;
        }
        let local = svc.internal_traffic_policy == TrafficPolicy::Local;
        let own: &[&EndpointSlice] = by_service
            .get(&(svc.key.namespace.as_str(), svc.key.name.as_str()))
            .map_or(&[], Vec::as_slice);
        for ip in svc.cluster_ips.ips() {
            let family = AddressFamily::of(ip);
            for port in &svc.ports {
                let backends =
                    usable_endpoints(svc, port, family, own.iter().copied(), &node.name, local);
                let vs = VirtualService {
                    backends,
                    affinity_timeout: svc.affinity_timeout,
                };
                table.insert(
                    VirtualKey {
                        ip: *ip,
                        protocol: port.protocol,
                        port: port.port,
                    },
                    vs,
                );
                if let (Some(node_port), ServiceKind::NodePort | ServiceKind::LoadBalancer) =
                    (port.node_port, &svc.kind)
                {
                    // NodePorts use the cluster-wide endpoints (externalTrafficPolicy: Cluster).
                    let backends =
                        usable_endpoints(svc, port, family, own.iter().copied(), &node.name, false);
                    for addr in node
                        .addresses
                        .iter()
                        .filter(|a| AddressFamily::of(a) == family)
                    {
                        let key = VirtualKey {
                            ip: *addr,
                            protocol: port.protocol,
                            port: node_port,
                        };
                        table.entry(key).or_insert_with(|| VirtualService {
                            backends: backends.clone(),
                            affinity_timeout: svc.affinity_timeout,
                        });
                    }
                }
            }
        }
    }
    table
}
