//! A Pod's resolver configuration (RES-1) and the resolver library reading it.

use std::net::IpAddr;

/// The stub resolver implementation in the client's libc (RES-3, RES-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResolverLib {
    /// GNU libc.
    Glibc,
    /// musl libc.
    Musl,
}

/// `/etc/resolv.conf` as far as resolution order goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResolvConf {
    /// `nameserver` lines.
    pub nameservers: Vec<IpAddr>,
    /// `search` domains, in order, without trailing dots.
    pub search: Vec<String>,
    /// `options ndots:N`.
    pub ndots: u8,
}

impl ResolvConf {
    /// RES-1: what the kubelet writes for a Pod with `dnsPolicy: ClusterFirst`.
    pub fn kubelet(namespace: &str, zone: &str, dns: IpAddr) -> Self {
        ResolvConf {
            nameservers: vec![dns],
            search: vec![
                format!("{namespace}.svc.{zone}"),
                format!("svc.{zone}"),
                zone.to_owned(),
            ],
            ndots: 5,
        }
    }

    /// The file text, as the kubelet lays it out.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.search.is_empty() {
            out.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        out.push_str(&format!("options ndots:{}\n", self.ndots));
        out
    }
}
