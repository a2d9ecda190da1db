//! Conversions from k8s-openapi objects at the edge. Anything the model
//! cannot represent becomes a typed [`Error`], never a panic (REG-1, EPS-10).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{
    validate_dns1123_label, validate_dns1123_subdomain, validate_label_key, validate_label_value,
};
use super::{
    AddressFamily, ClusterIps, ContainerPort, Endpoint, EndpointPort, EndpointSlice, Error, Node,
    ObjectKey, Pod, PodPhase, Protocol, Result, Selector, Service, ServiceKind, ServicePort,
    TargetPort, TrafficPolicy,
};

/// EPS-13: the label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn key_of(kind: &str, meta: &ObjectMeta) -> Result<(ObjectKey, String)> {
    let name = meta.name.clone().ok_or_else(|| Error::MissingField {
        object: format!("{kind}/<unnamed>"),
        field: "metadata.name",
    })?;
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    validate_dns1123_label("namespace", &namespace)?;
    let key = ObjectKey::new(namespace, name);
    let object = format!("{kind} {key}");
    Ok((key, object))
}

fn parse_ip(object: &str, field: &'static str, value: &str) -> Result<IpAddr> {
    value.parse().map_err(|_| Error::BadIp {
        object: object.to_owned(),
        field,
        value: value.to_owned(),
    })
}

fn protocol(object: &str, value: Option<&str>) -> Result<Protocol> {
    match value.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(Error::UnknownProtocol {
            object: object.to_owned(),
            value: other.to_owned(),
        }),
    }
}

fn port(object: &str, field: &'static str, value: i32) -> Result<u16> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(Error::BadPort {
            object: object.to_owned(),
            field,
            value: value.into(),
        })
}

fn labels(map: &Option<BTreeMap<String, String>>) -> Result<BTreeMap<String, String>> {
    let map = map.clone().unwrap_or_default();
    for (k, v) in &map {
        validate_label_key(k)?;
        validate_label_value(v)?;
    }
    Ok(map)
}

fn family(object: &str, field: &'static str, value: &str) -> Result<AddressFamily> {
    match value {
        "IPv4" => Ok(AddressFamily::V4),
        "IPv6" => Ok(AddressFamily::V6),
        other => Err(Error::Unsupported {
            object: object.to_owned(),
            field,
            value: other.to_owned(),
        }),
    }
}

impl TryFrom<&core::Service> for Service {
    type Error = Error;

    fn try_from(svc: &core::Service) -> Result<Self> {
        let (key, object) = key_of("Service", &svc.metadata)?;
        // REG-1: a DNS-1123 label since Kubernetes 1.37 (RelaxedServiceNameValidation,
        // GA and locked on): a Service name may start with a digit.
        validate_dns1123_label("Service name", &key.name)?;
        let spec = svc.spec.clone().unwrap_or_default();
        let kind = match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => ServiceKind::ClusterIp,
            "NodePort" => ServiceKind::NodePort,
            "LoadBalancer" => ServiceKind::LoadBalancer,
            "ExternalName" => {
                let target = spec
                    .external_name
                    .clone()
                    .ok_or_else(|| Error::MissingField {
                        object: object.clone(),
                        field: "spec.externalName",
                    })?;
                let target = target.trim_end_matches('.').to_ascii_lowercase();
                validate_dns1123_subdomain("externalName", &target)?;
                ServiceKind::ExternalName(target)
            }
            other => {
                return Err(Error::Unsupported {
                    object,
                    field: "spec.type",
                    value: other.to_owned(),
                });
            }
        };
        let ip_texts: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips.clone(),
            (_, Some(ip)) if !ip.is_empty() => vec![ip.clone()],
            _ => Vec::new(),
        };
        // REG-6: a Service changed to ExternalName has no ClusterIP, even if the field lingers.
        let cluster_ips = if matches!(kind, ServiceKind::ExternalName(_)) {
            ClusterIps::Unset
        } else if ip_texts.first().map(String::as_str) == Some("None") {
            ClusterIps::Headless
        } else if ip_texts.is_empty() {
            ClusterIps::Unset
        } else {
            let ips = ip_texts
                .iter()
                .map(|t| parse_ip(&object, "spec.clusterIPs", t))
                .collect::<Result<Vec<_>>>()?;
            ClusterIps::Ips(ips)
        };
        let mut families = match &spec.ip_families {
            Some(f) => f
                .iter()
                .map(|f| family(&object, "spec.ipFamilies", f))
                .collect::<Result<Vec<_>>>()?,
            None => cluster_ips.ips().iter().map(AddressFamily::of).collect(),
        };
        if families.is_empty() && !matches!(kind, ServiceKind::ExternalName(_)) {
            families.push(AddressFamily::V4);
        }
        let mut ports = Vec::new();
        for p in spec.ports.iter().flatten() {
            let name = p.name.clone().unwrap_or_default();
            if !name.is_empty() {
                validate_dns1123_label("Service port name", &name)?;
            }
            let number = port(&object, "spec.ports[].port", p.port)?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(number),
                Some(IntOrString::Int(0)) => TargetPort::Number(number),
                Some(IntOrString::Int(n)) => {
                    TargetPort::Number(port(&object, "spec.ports[].targetPort", *n)?)
                }
                Some(IntOrString::String(s)) => match s.parse::<i32>() {
                    Ok(n) => TargetPort::Number(port(&object, "spec.ports[].targetPort", n)?),
                    Err(_) => {
                        validate_dns1123_label("targetPort name", s)?;
                        TargetPort::Name(s.clone())
                    }
                },
            };
            let node_port = match p.node_port {
                None | Some(0) => None,
                Some(n) => Some(port(&object, "spec.ports[].nodePort", n)?),
            };
            ports.push(ServicePort {
                name,
                protocol: protocol(&object, p.protocol.as_deref())?,
                port: number,
                target_port,
                node_port,
            });
        }
        let selector = match &spec.selector {
            Some(s) if !s.is_empty() => Some(Selector(labels(&Some(s.clone()))?)),
            _ => None,
        };
        let affinity_timeout = match spec.session_affinity.as_deref() {
            Some("ClientIP") => {
                let t = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .unwrap_or(10_800);
                Some(
                    u32::try_from(t)
                        .ok()
                        .filter(|t| (1..=86_400).contains(t))
                        .ok_or(Error::Unsupported {
                            object: object.clone(),
                            field: "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            value: t.to_string(),
                        })?,
                )
            }
            None | Some("None") => None,
            Some(other) => {
                return Err(Error::Unsupported {
                    object,
                    field: "spec.sessionAffinity",
                    value: other.to_owned(),
                });
            }
        };
        let internal_traffic_policy = match spec.internal_traffic_policy.as_deref() {
            None | Some("Cluster") => TrafficPolicy::Cluster,
            Some("Local") => TrafficPolicy::Local,
            Some(other) => {
                return Err(Error::Unsupported {
                    object,
                    field: "spec.internalTrafficPolicy",
                    value: other.to_owned(),
                });
            }
        };
        Ok(Service {
            key,
            selector,
            kind,
            cluster_ips,
            families,
            ports,
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
            affinity_timeout,
            internal_traffic_policy,
        })
    }
}

impl TryFrom<&core::Pod> for Pod {
    type Error = Error;

    fn try_from(pod: &core::Pod) -> Result<Self> {
        let (key, object) = key_of("Pod", &pod.metadata)?;
        validate_dns1123_subdomain("Pod name", &key.name)?;
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let mut ips = Vec::new();
        for ip in status.pod_ips.iter().flatten() {
            ips.push(parse_ip(&object, "status.podIPs", &ip.ip)?);
        }
        if ips.is_empty()
            && let Some(ip) = status.pod_ip.as_deref().filter(|s| !s.is_empty())
        {
            ips.push(parse_ip(&object, "status.podIP", ip)?);
        }
        let phase = match status.phase.as_deref() {
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            _ => PodPhase::Pending,
        };
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let mut ports = Vec::new();
        // EPS-6: a named port is looked up in the containers, then in the
        // sidecars (init containers with restartPolicy Always), in that order.
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        for c in spec.containers.iter().chain(sidecars) {
            for p in c.ports.iter().flatten() {
                ports.push(ContainerPort {
                    name: p.name.clone().unwrap_or_default(),
                    port: port(
                        &object,
                        "spec.containers[].ports[].containerPort",
                        p.container_port,
                    )?,
                    protocol: protocol(&object, p.protocol.as_deref())?,
                });
            }
        }
        for name in [&spec.hostname, &spec.subdomain].into_iter().flatten() {
            validate_dns1123_label("Pod hostname or subdomain", name)?;
        }
        Ok(Pod {
            key,
            labels: labels(&pod.metadata.labels)?,
            ips,
            node: spec.node_name.clone(),
            phase,
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            hostname: spec.hostname.clone(),
            subdomain: spec.subdomain.clone(),
            ports,
        })
    }
}

impl TryFrom<&discovery::EndpointSlice> for EndpointSlice {
    type Error = Error;

    fn try_from(slice: &discovery::EndpointSlice) -> Result<Self> {
        let (key, object) = key_of("EndpointSlice", &slice.metadata)?;
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned()
            .ok_or(Error::MissingField {
                object: object.clone(),
                field: "metadata.labels[kubernetes.io/service-name]",
            })?;
        let family = family(&object, "addressType", &slice.address_type)?;
        let mut ports = Vec::new();
        for p in slice.ports.iter().flatten() {
            // The API admits a port without a number ("not restricted, to
            // be interpreted by the consumer"): no Service port maps to it,
            // so it is left out, and the slice's other ports and its
            // endpoints stay (as kube-proxy ignores such a port). Rejecting
            // the whole slice turned an admitted object into a deletion.
            if p.port.is_none_or(|n| n == 0) {
                continue;
            }
            ports.push(EndpointPort {
                name: p.name.clone().unwrap_or_default(),
                port: port(&object, "ports[].port", p.port.unwrap_or(0))?,
                protocol: protocol(&object, p.protocol.as_deref())?,
            });
        }
        let mut endpoints = Vec::new();
        for ep in slice.endpoints.iter().flatten() {
            let text = ep.addresses.first().ok_or(Error::MissingField {
                object: object.clone(),
                field: "endpoints[].addresses",
            })?;
            let address = parse_ip(&object, "endpoints[].addresses", text)?;
            if AddressFamily::of(&address) != family {
                return Err(Error::BadIp {
                    object,
                    field: "endpoints[].addresses",
                    value: text.clone(),
                });
            }
            let c = ep.conditions.clone().unwrap_or_default();
            // Per the EndpointSlice API, a nil ready/serving means true.
            let ready = c.ready.unwrap_or(true);
            endpoints.push(Endpoint {
                address,
                ready,
                serving: c.serving.unwrap_or(ready),
                terminating: c.terminating.unwrap_or(false),
                hostname: ep.hostname.clone(),
                node: ep.node_name.clone(),
                zone: ep.zone.clone(),
                pod: ep.target_ref.as_ref().and_then(|r| r.name.clone()),
            });
        }
        Ok(EndpointSlice {
            key,
            service,
            family,
            ports,
            endpoints,
        })
    }
}

impl TryFrom<&core::Node> for Node {
    type Error = Error;

    fn try_from(node: &core::Node) -> Result<Self> {
        let name = node.metadata.name.clone().ok_or(Error::MissingField {
            object: "Node/<unnamed>".to_owned(),
            field: "metadata.name",
        })?;
        let object = format!("Node {name}");
        let mut addresses = Vec::new();
        for a in node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
        {
            if a.type_ == "InternalIP" {
                addresses.push(parse_ip(&object, "status.addresses", &a.address)?);
            }
        }
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("topology.kubernetes.io/zone"))
            .cloned();
        Ok(Node {
            name,
            addresses,
            zone,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus, ServiceSpec};

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        }
    }

    fn svc(spec: ServiceSpec) -> core::Service {
        core::Service {
            metadata: meta("voy"),
            spec: Some(spec),
            ..Default::default()
        }
    }

    fn port(n: i32, proto: Option<&str>) -> core::ServicePort {
        core::ServicePort {
            port: n,
            protocol: proto.map(Into::into),
            ..Default::default()
        }
    }

    /// ci/e2e found it: upstream's "DNS should work with a service name that
    /// starts with a digit" creates `1kubernetes`, which Signpost rejected.
    #[test]
    fn a_service_name_may_start_with_a_digit_but_not_be_upper_case() {
        let mut k = svc(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            ..Default::default()
        });
        k.metadata.name = Some("1kubernetes".into());
        assert_eq!(Service::try_from(&k).unwrap().key.name, "1kubernetes");
        k.metadata.name = Some("Voy".into());
        assert!(Service::try_from(&k).is_err());
    }

    #[test]
    fn a_plain_service_converts() {
        let s = Service::try_from(&svc(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            selector: Some([("app".to_owned(), "voy".to_owned())].into()),
            ports: Some(vec![port(80, None)]),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            s.cluster_ips,
            ClusterIps::Ips(vec!["10.96.0.10".parse().unwrap()])
        );
        assert_eq!(s.ports[0].target_port, TargetPort::Number(80));
        assert_eq!(s.families, vec![AddressFamily::V4]);
        assert!(s.selector.is_some());
    }

    #[test]
    fn bad_services_are_typed_errors() {
        let bad_ip = Service::try_from(&svc(ServiceSpec {
            cluster_ip: Some("10.96.0.300".into()),
            ..Default::default()
        }));
        assert!(bad_ip.unwrap_err().is_bad_ip());
        let bad_proto = Service::try_from(&svc(ServiceSpec {
            ports: Some(vec![port(80, Some("ICMP"))]),
            ..Default::default()
        }));
        assert!(matches!(bad_proto, Err(Error::UnknownProtocol { .. })));
        let bad_port = Service::try_from(&svc(ServiceSpec {
            ports: Some(vec![port(70_000, None)]),
            ..Default::default()
        }));
        assert!(matches!(bad_port, Err(Error::BadPort { .. })));
        let mut long = svc(ServiceSpec::default());
        long.metadata.name = Some("x".repeat(64));
        assert!(Service::try_from(&long).unwrap_err().is_invalid_name());
        let mut unnamed = svc(ServiceSpec::default());
        unnamed.metadata.name = None;
        assert!(matches!(
            Service::try_from(&unnamed),
            Err(Error::MissingField { .. })
        ));
        let bad_label = Service::try_from(&svc(ServiceSpec {
            selector: Some([("app".to_owned(), "-bad".to_owned())].into()),
            ..Default::default()
        }));
        assert!(bad_label.unwrap_err().is_invalid_name());
        let no_target = Service::try_from(&svc(ServiceSpec {
            type_: Some("ExternalName".into()),
            ..Default::default()
        }));
        assert!(matches!(
            no_target,
            Err(Error::MissingField {
                field: "spec.externalName",
                ..
            })
        ));
    }

    #[test]
    fn headless_and_external_name() {
        let h = Service::try_from(&svc(ServiceSpec {
            cluster_ip: Some("None".into()),
            ..Default::default()
        }))
        .unwrap();
        assert!(h.is_headless());
        let e = Service::try_from(&svc(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some("Example.COM.".into()),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(e.external_name(), Some("example.com"));
        assert_eq!(e.cluster_ips, ClusterIps::Unset);
    }

    #[test]
    fn pods_convert_and_reject_bad_ips() {
        let mut pod = core::Pod {
            metadata: meta("voyager-0"),
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ips: Some(vec![PodIP {
                    ip: "10.244.0.5".into(),
                }]),
                phase: Some("Running".into()),
                ..Default::default()
            }),
        };
        let p = Pod::try_from(&pod).unwrap();
        assert_eq!(p.ips, vec!["10.244.0.5".parse::<IpAddr>().unwrap()]);
        assert!(!p.ready);
        pod.status.as_mut().unwrap().pod_ips = Some(vec![PodIP {
            ip: "banana".into(),
        }]);
        assert!(Pod::try_from(&pod).unwrap_err().is_bad_ip());
    }

    /// ci/e2e found it: upstream's "should connect to the named ports
    /// exposed by restartable init containers" names a sidecar's port.
    #[test]
    fn a_sidecars_named_port_counts_after_the_containers_ports() {
        use k8s_openapi::api::core::v1::{Container, ContainerPort as KPort};
        let port = |name: &str, n: i32| KPort {
            name: Some(name.into()),
            container_port: n,
            ..Default::default()
        };
        let container = |ports: Vec<KPort>, restart: Option<&str>| Container {
            name: "c".into(),
            ports: Some(ports),
            restart_policy: restart.map(str::to_owned),
            ..Default::default()
        };
        let pod = core::Pod {
            metadata: meta("voyager-0"),
            spec: Some(PodSpec {
                containers: vec![container(vec![port("http", 80)], None)],
                init_containers: Some(vec![
                    container(
                        vec![port("sidecar", 8080), port("http", 81)],
                        Some("Always"),
                    ),
                    container(vec![port("setup", 9090)], None),
                ]),
                ..Default::default()
            }),
            status: None,
        };
        let p = Pod::try_from(&pod).unwrap();
        let got: Vec<(&str, u16)> = p.ports.iter().map(|p| (p.name.as_str(), p.port)).collect();
        assert_eq!(got, vec![("http", 80), ("sidecar", 8080), ("http", 81)]);
    }

    #[test]
    fn slices_convert_with_nil_conditions_as_ready() {
        let slice = discovery::EndpointSlice {
            metadata: ObjectMeta {
                labels: Some([(SERVICE_NAME_LABEL.to_owned(), "voy".to_owned())].into()),
                ..meta("voy-abc")
            },
            address_type: "IPv4".into(),
            endpoints: Some(vec![discovery::Endpoint {
                addresses: vec!["10.244.0.5".into()],
                ..Default::default()
            }]),
            ports: None,
        };
        let s = EndpointSlice::try_from(&slice).unwrap();
        assert!(s.endpoints[0].ready && s.endpoints[0].serving && !s.endpoints[0].terminating);
        let mut wrong = slice.clone();
        wrong.address_type = "FQDN".into();
        assert!(matches!(
            EndpointSlice::try_from(&wrong),
            Err(Error::Unsupported { .. })
        ));
        let mut mixed = slice.clone();
        mixed.endpoints.as_mut().unwrap()[0].addresses = vec!["fd00::1".into()];
        assert!(EndpointSlice::try_from(&mixed).unwrap_err().is_bad_ip());
        // A port without a number is admitted by the API server: it is left
        // out, the rest of the slice stays (it was rejected whole before).
        let mut nil_port = slice;
        nil_port.ports = Some(vec![
            discovery::EndpointPort {
                name: Some("any".into()),
                port: None,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            discovery::EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]);
        let s = EndpointSlice::try_from(&nil_port).unwrap();
        assert_eq!(s.ports.len(), 1);
        assert_eq!(s.ports[0].name, "http");
        assert_eq!(s.endpoints.len(), 1);
    }
}
