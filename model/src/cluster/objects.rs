//! The API objects of registration and discovery, reduced to the fields the
//! spec talks about.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// Namespace and name of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// A key from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Transport protocol of a port (PXY-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP, the default.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The lower-case name used in SRV owner names (`_tcp`).
    pub fn as_lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// IP family of an address or an EndpointSlice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl AddressFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() {
            AddressFamily::V4
        } else {
            AddressFamily::V6
        }
    }
}

/// The port a Service port forwards to on its Pods (EPS-6).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetPort {
    /// A port number, used as is.
    Number(u16),
    /// A container port name, resolved per Pod.
    Name(String),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    /// The port name; empty for the single unnamed port.
    pub name: String,
    /// The protocol.
    pub protocol: Protocol,
    /// The port on the ClusterIP.
    pub port: u16,
    /// Where it goes on the Pod.
    pub target_port: TargetPort,
    /// The NodePort, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
}

impl ServicePort {
    /// A TCP port `port` → `target`, no NodePort.
    pub fn tcp(name: &str, port: u16, target: u16) -> Self {
        ServicePort {
            name: name.to_owned(),
            protocol: Protocol::Tcp,
            port,
            target_port: TargetPort::Number(target),
            node_port: None,
        }
    }
}

/// The type of a Service (REG-5).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKind {
    /// A virtual IP inside the cluster (or headless, see [`ClusterIps`]).
    ClusterIp,
    /// A ClusterIP plus a port on every node.
    NodePort,
    /// A NodePort Service with an external load balancer in front.
    LoadBalancer,
    /// A DNS alias for an external name; no ClusterIP, no endpoints.
    ExternalName(String),
}

/// The ClusterIP state of a Service (REG-2..REG-4).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterIps {
    /// No ClusterIP: ExternalName, or a Service not yet admitted.
    Unset,
    /// `clusterIP: None`: headless.
    Headless,
    /// Allocated ClusterIPs, primary family first.
    Ips(Vec<IpAddr>),
}

impl ClusterIps {
    /// The allocated addresses (empty for headless and unset).
    pub fn ips(&self) -> &[IpAddr] {
        match self {
            ClusterIps::Ips(ips) => ips,
            _ => &[],
        }
    }
}

/// `internalTrafficPolicy` (PXY-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TrafficPolicy {
    /// Any endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on the client's node.
    Local,
}

/// An equality-based label selector (`spec.selector`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Selector(pub BTreeMap<String, String>);

impl Selector {
    /// A selector from pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Selector(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
    /// EPS-2: every pair of the selector is among the labels. An empty
    /// selector is treated as "no selector" by the caller, never as match-all.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A Service, as the spec sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Service {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `spec.selector`; `None` means the Service has no selector and no
    /// controller-managed endpoints (EPS-1).
    pub selector: Option<Selector>,
    /// The Service type.
    pub kind: ServiceKind,
    /// Allocated ClusterIPs, or headless.
    pub cluster_ips: ClusterIps,
    /// IP families of the Service (from `spec.ipFamilies`), primary first.
    pub families: Vec<AddressFamily>,
    /// The ports.
    pub ports: Vec<ServicePort>,
    /// `publishNotReadyAddresses` (EPS-5).
    pub publish_not_ready: bool,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` for no affinity.
    pub affinity_timeout: Option<u32>,
    /// `internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
}

impl Service {
    /// A `ClusterIP` Service with the API server's defaults: no selector,
    /// the families of its addresses (IPv4 when it has none), no affinity,
    /// `internalTrafficPolicy: Cluster`.
    pub fn cluster_ip(key: ObjectKey, cluster_ips: ClusterIps, ports: Vec<ServicePort>) -> Self {
        let families = match &cluster_ips {
            ClusterIps::Ips(ips) => ips.iter().map(AddressFamily::of).collect(),
            ClusterIps::Headless | ClusterIps::Unset => vec![AddressFamily::V4],
        };
        Service {
            key,
            selector: None,
            kind: ServiceKind::ClusterIp,
            cluster_ips,
            families,
            ports,
            publish_not_ready: false,
            affinity_timeout: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
        }
    }

    /// True for `clusterIP: None`.
    pub fn is_headless(&self) -> bool {
        matches!(self.cluster_ips, ClusterIps::Headless)
    }
    /// The ExternalName target, if any.
    pub fn external_name(&self) -> Option<&str> {
        match &self.kind {
            ServiceKind::ExternalName(n) => Some(n),
            _ => None,
        }
    }
}

/// `status.phase` of a Pod, as far as endpoints care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PodPhase {
    /// Pending or unknown.
    Pending,
    /// Running.
    #[default]
    Running,
    /// Terminal: succeeded.
    Succeeded,
    /// Terminal: failed.
    Failed,
}

/// A named container port of a Pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    /// Port name (may be empty).
    pub name: String,
    /// Port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// A Pod, as the spec sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pod {
    /// Namespace and name.
    pub key: ObjectKey,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `status.podIPs`, primary first; empty until the Pod has an IP.
    pub ips: Vec<IpAddr>,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// `status.phase`.
    pub phase: PodPhase,
    /// The Ready condition.
    pub ready: bool,
    /// A deletionTimestamp is set.
    pub terminating: bool,
    /// `spec.hostname`.
    pub hostname: Option<String>,
    /// `spec.subdomain`.
    pub subdomain: Option<String>,
    /// Container ports, across containers.
    pub ports: Vec<ContainerPort>,
}

/// A Node: its name, addresses (for NodePorts) and zone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// InternalIP addresses.
    pub addresses: Vec<IpAddr>,
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointPort {
    /// The Service port name it serves.
    pub name: String,
    /// The resolved port on the Pod.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// One endpoint of an EndpointSlice (EPS-3, EPS-4).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The address (one per endpoint, as upstream writes them).
    pub address: IpAddr,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// `hostname` (EPS-7).
    pub hostname: Option<String>,
    /// `nodeName`.
    pub node: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// Name of the Pod in `targetRef`.
    pub pod: Option<String>,
}

/// An EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointSlice {
    /// Namespace and name.
    pub key: ObjectKey,
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub service: String,
    /// `addressType`.
    pub family: AddressFamily,
    /// Ports, in Service port order.
    pub ports: Vec<EndpointPort>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSlice {
    /// The key of the Service this slice belongs to.
    pub fn service_key(&self) -> ObjectKey {
        ObjectKey::new(self.key.namespace.clone(), self.service.clone())
    }
}
