//! The oracle: the spec of `spec/` as slow, obviously-correct functions, one
//! per section. Each cites the rule IDs it implements; a test checks that
//! every cited ID exists in `spec/` and every rule is traced somewhere.

mod dns;
mod endpoints;
mod proxy;
mod resolve;

pub use dns::{
    DEFAULT_TTL_SECS, DNS_SCHEMA_VERSION, DnsSnapshot, PodsMode, dns_answer, endpoint_dns_name,
    name_records, outcome, parse_reverse, pod_label_ip, reverse_name, service_records,
};
pub use endpoints::{
    MAX_ENDPOINTS_PER_SLICE, SliceShape, endpoints_for, managed, placeholder_shape,
    pod_in_endpoints,
};
pub use proxy::{proxy_table, usable_endpoints};
pub use resolve::{Lookup, Resolution, candidates, classify, resolve};
