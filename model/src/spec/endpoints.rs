//! EPS: which endpoints a Service has, derived from its selector and Pods.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::{
    AddressFamily, Endpoint, EndpointPort, Pod, PodPhase, Service, ServiceKind, TargetPort,
};

/// EPS-9: the most endpoints one EndpointSlice holds.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// What makes endpoints share a slice: address family and resolved ports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SliceShape {
    /// `addressType`.
    pub family: AddressFamily,
    /// The ports, in Service port order.
    pub ports: Vec<EndpointPort>,
}

/// EPS-3: a Pod is an endpoint candidate when it has an IP and is not in a
/// terminal phase. Terminating Pods stay (with `terminating: true`).
pub fn pod_in_endpoints(pod: &Pod) -> bool {
    !pod.ips.is_empty() && !matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed)
}

/// EPS-6: the ports a Pod serves for a Service. A named target port is looked
/// up among the Pod's container ports with the same protocol; a Pod without
/// it is left out of that port.
fn resolved_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    svc.ports
        .iter()
        .filter_map(|sp| {
            let port = match &sp.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => pod
                    .ports
                    .iter()
                    .find(|cp| &cp.name == name && cp.protocol == sp.protocol)
                    .map(|cp| cp.port),
            }?;
            Some(EndpointPort {
                name: sp.name.clone(),
                port,
                protocol: sp.protocol,
            })
        })
        .collect()
}

/// EPS-4, EPS-5: an endpoint's conditions. `serving` is the Pod's Ready
/// condition; `ready` is serving and not terminating, or always true with
/// `publishNotReadyAddresses` (which leaves `serving` alone).
fn endpoint(svc: &Service, pod: &Pod, address: std::net::IpAddr) -> Endpoint {
    let serving = pod.ready;
    let ready = svc.publish_not_ready || (pod.ready && !pod.terminating);
    // EPS-7: the hostname is published only when the Pod's subdomain names this Service.
    let hostname = match (&pod.hostname, &pod.subdomain) {
        (Some(h), Some(sub)) if sub == &svc.key.name && !h.is_empty() => Some(h.clone()),
        _ => None,
    };
    Endpoint {
        address,
        ready,
        serving,
        terminating: pod.terminating,
        hostname,
        node: pod.node.clone(),
        zone: None,
        pod: Some(pod.key.name.clone()),
    }
}

/// The oracle for EPS: the endpoints a Service should have, grouped by slice
/// shape. Services without a selector, and ExternalName Services, have none
/// (EPS-1). Pods are matched in the Service's namespace only (EPS-2), one
/// endpoint per Pod and address family (EPS-8). A managed Service with no
/// endpoints has the placeholder shape with none (EPS-14): one empty slice.
pub fn endpoints_for<'a>(
    svc: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> BTreeMap<SliceShape, BTreeSet<Endpoint>> {
    let mut out = matched_endpoints(svc, pods);
    if out.is_empty() && managed(svc) {
        out.insert(placeholder_shape(svc), BTreeSet::new());
    }
    out
}

/// EPS-1: whether the controller keeps slices for `svc` at all.
pub fn managed(svc: &Service) -> bool {
    svc.selector.as_ref().is_some_and(|s| !s.0.is_empty())
        && !matches!(svc.kind, ServiceKind::ExternalName(_))
}

/// EPS-14: the shape of the empty slice a managed Service with no endpoints
/// keeps: its primary family, no ports (as kube-controller-manager writes it).
pub fn placeholder_shape(svc: &Service) -> SliceShape {
    SliceShape {
        family: svc.families.first().copied().unwrap_or(AddressFamily::V4),
        ports: Vec::new(),
    }
}

fn matched_endpoints<'a>(
    svc: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> BTreeMap<SliceShape, BTreeSet<Endpoint>> {
    let mut out: BTreeMap<SliceShape, BTreeSet<Endpoint>> = BTreeMap::new();
    let Some(selector) = &svc.selector else {
        return out;
    };
    if matches!(svc.kind, ServiceKind::ExternalName(_)) || selector.0.is_empty() {
        return out;
    }
    for pod in pods {
        if pod.key.namespace != svc.key.namespace
            || !selector.matches(&pod.labels)
            || !pod_in_endpoints(pod)
        {
            continue;
        }
        let ports = resolved_ports(svc, pod);
        for family in &svc.families {
            let Some(ip) = pod.ips.iter().find(|ip| AddressFamily::of(ip) == *family) else {
                continue;
            };
            let shape = SliceShape {
                family: *family,
                ports: ports.clone(),
            };
            out.entry(shape)
                .or_default()
                .insert(endpoint(svc, pod, *ip));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{
        ClusterIps, ContainerPort, ObjectKey, Protocol, Selector, ServicePort, TrafficPolicy,
    };

    fn svc(target: TargetPort) -> Service {
        Service {
            key: ObjectKey::new("default", "voy"),
            selector: Some(Selector::from_pairs([("app", "voy")])),
            kind: ServiceKind::ClusterIp,
            cluster_ips: ClusterIps::Ips(vec!["10.96.0.2".parse().unwrap()]),
            families: vec![AddressFamily::V4],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: target,
                node_port: None,
            }],
            publish_not_ready: false,
            affinity_timeout: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
        }
    }

    fn pod(name: &str, ip: &str, ready: bool, port: Option<u16>) -> Pod {
        Pod {
            key: ObjectKey::new("default", name),
            labels: [("app".to_owned(), "voy".to_owned())].into(),
            ips: vec![ip.parse().unwrap()],
            node: Some("node-a".into()),
            phase: PodPhase::Running,
            ready,
            terminating: false,
            hostname: None,
            subdomain: None,
            ports: port
                .map(|p| ContainerPort {
                    name: "web".into(),
                    port: p,
                    protocol: Protocol::Tcp,
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn named_ports_split_slices_per_resolution() {
        let s = svc(TargetPort::Name("web".into()));
        let pods = [
            pod("a", "10.0.0.1", true, Some(8080)),
            pod("b", "10.0.0.2", true, Some(9090)),
            pod("c", "10.0.0.3", true, None),
        ];
        let eps = endpoints_for(&s, &pods);
        assert_eq!(eps.len(), 3, "{eps:#?}");
        let empty = eps
            .keys()
            .find(|k| k.ports.is_empty())
            .expect("pod without the port has a port-less shape");
        assert_eq!(eps[empty].len(), 1);
    }

    #[test]
    fn terminating_pods_are_serving_but_not_ready() {
        let s = svc(TargetPort::Number(8080));
        let mut p = pod("a", "10.0.0.1", true, None);
        p.terminating = true;
        let eps = endpoints_for(&s, [&p]);
        let ep = eps.values().next().unwrap().iter().next().unwrap();
        assert!(!ep.ready && ep.serving && ep.terminating);
        let mut pub_s = s.clone();
        pub_s.publish_not_ready = true;
        p.ready = false;
        let ep = endpoints_for(&pub_s, [&p])
            .into_values()
            .next()
            .unwrap()
            .into_iter()
            .next()
            .unwrap();
        assert!(
            ep.ready && !ep.serving,
            "publishNotReadyAddresses makes it ready, not serving"
        );
    }

    #[test]
    fn other_namespaces_and_ipless_pods_are_ignored() {
        let s = svc(TargetPort::Number(8080));
        let mut other = pod("a", "10.0.0.1", true, None);
        other.key.namespace = "prod".into();
        let mut no_ip = pod("b", "10.0.0.2", true, None);
        no_ip.ips.clear();
        let mut done = pod("c", "10.0.0.3", true, None);
        done.phase = PodPhase::Succeeded;
        let eps = endpoints_for(&s, [&other, &no_ip, &done]);
        assert!(eps.values().all(BTreeSet::is_empty), "{eps:#?}");
    }

    #[test]
    fn a_managed_service_without_endpoints_keeps_one_empty_placeholder_shape() {
        let s = svc(TargetPort::Number(8080));
        let eps = endpoints_for(&s, []);
        assert_eq!(
            eps,
            BTreeMap::from([(placeholder_shape(&s), BTreeSet::new())])
        );
        assert!(placeholder_shape(&s).ports.is_empty());
        let mut unmanaged = s.clone();
        unmanaged.selector = None;
        assert!(
            endpoints_for(&unmanaged, []).is_empty(),
            "EPS-1: no slices at all"
        );
        // With an endpoint, no placeholder.
        let p = pod("a", "10.0.0.1", true, None);
        let eps = endpoints_for(&s, [&p]);
        assert_eq!(eps.len(), 1);
        assert!(eps.values().all(|e| e.len() == 1));
    }
}
