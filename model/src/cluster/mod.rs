//! Domain values of a cluster, small and ordered so the model checker can hash
//! them and the oracle can compare them as sets.

mod dns;
mod error;
mod kube;
mod names;
mod objects;
mod proxy;
mod resolv;

pub use dns::{DnsOutcome, Question, RData, RType, Rcode, Record};
pub use error::{Error, Result};
pub use names::{
    validate_dns1035_label, validate_dns1123_label, validate_dns1123_subdomain, validate_label_key,
    validate_label_value,
};
pub use objects::{
    AddressFamily, ClusterIps, ContainerPort, Endpoint, EndpointPort, EndpointSlice, Node,
    ObjectKey, Pod, PodPhase, Protocol, Selector, Service, ServiceKind, ServicePort, TargetPort,
    TrafficPolicy,
};
pub use proxy::{ProxyTable, VirtualKey, VirtualService};
pub use resolv::{ResolvConf, ResolverLib};
