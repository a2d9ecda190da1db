//! Which sources are masqueraded and which node addresses carry NodePorts:
//! kube-proxy's `masqueradeAll`, `clusterCIDR` and `nodePortAddresses`.
//!
//! - By default, traffic to a ClusterIP keeps its source (a backend sees
//!   the client), except hairpin traffic and NodePort traffic, which both
//!   planes always masquerade so replies come back through the node.
//! - `--cluster-cidr`: traffic to a ClusterIP from outside these ranges
//!   (from the node itself or off the cluster) is masqueraded.
//! - `--masquerade-all`: all traffic to a ClusterIP is masqueraded.
//! - `--nodeport-addresses`: NodePorts answer only on the node's addresses
//!   inside these ranges (`primary`: the node's first InternalIP of each
//!   family). Default: every InternalIP of the Node object.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses a comma-separated list of CIDRs (`10.244.0.0/16,fd00:10:244::/56`).
/// Host bits are cleared and a range inside another is dropped, so the
/// ranges of one family never overlap (an nftables interval set refuses
/// overlapping elements).
pub fn parse_cidrs(text: &str) -> Result<Vec<IpNet>, String> {
    let mut out: Vec<IpNet> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let net: IpNet = part
            .parse()
            .map_err(|_| format!("{part:?} is not a CIDR (e.g. 10.244.0.0/16)"))?;
        out.push(net.trunc());
    }
    Ok(disjoint(out))
}

/// `nets` without ranges contained in another one, sorted.
fn disjoint(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    nets.sort();
    nets.dedup();
    let all = nets.clone();
    nets.retain(|n| !all.iter().any(|o| o != n && o.contains(n)));
    nets
}

/// Whose traffic to a ClusterIP is masqueraded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Masquerade {
    /// `--masquerade-all`: everyone's.
    pub all: bool,
    /// `--cluster-cidr`: everyone's from outside these ranges.
    pub cluster_cidrs: Vec<IpNet>,
}

impl Masquerade {
    /// The source ranges of one family whose traffic to a ClusterIP is NOT
    /// masqueraded (what the planes' `no-masquerade` sets hold): everything
    /// by default, the cluster's ranges of that family with `--cluster-cidr`
    /// (everything if it names none of that family), nothing with
    /// `--masquerade-all`.
    pub fn exempt(&self, v6: bool) -> Vec<IpNet> {
        if self.all {
            return Vec::new();
        }
        let mine: Vec<IpNet> = self
            .cluster_cidrs
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)) == v6)
            .copied()
            .collect();
        if mine.is_empty() {
            vec![if v6 {
                "::/0".parse().expect("a CIDR")
            } else {
                "0.0.0.0/0".parse().expect("a CIDR")
            }]
        } else {
            mine
        }
    }

    /// Whether traffic from `src` to a ClusterIP is masqueraded.
    pub fn masquerades(&self, src: IpAddr) -> bool {
        !self.exempt(src.is_ipv6()).iter().any(|n| n.contains(&src))
    }
}

/// The node addresses NodePorts answer on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePortAddresses {
    /// `primary`: the node's first InternalIP of each family.
    pub primary: bool,
    /// Addresses inside these ranges.
    pub cidrs: Vec<IpNet>,
}

impl NodePortAddresses {
    /// Parses kube-proxy's list: CIDRs and/or `primary`.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut out = NodePortAddresses::default();
        let mut cidrs = Vec::new();
        for item in items.into_iter().flat_map(|i| i.split(',')).map(str::trim) {
            match item {
                "" => {}
                "primary" => out.primary = true,
                cidr => cidrs.extend(parse_cidrs(cidr)?),
            }
        }
        out.cidrs = disjoint(cidrs);
        Ok(out)
    }

    /// Whether this is the default (every InternalIP).
    pub fn is_default(&self) -> bool {
        !self.primary && self.cidrs.is_empty()
    }

    /// The addresses, of the node's InternalIPs (in order), that carry NodePorts.
    pub fn select(&self, internal_ips: &[IpAddr]) -> Vec<IpAddr> {
        if self.is_default() {
            return internal_ips.to_vec();
        }
        let first_v4 = internal_ips.iter().find(|ip| ip.is_ipv4());
        let first_v6 = internal_ips.iter().find(|ip| ip.is_ipv6());
        internal_ips
            .iter()
            .filter(|ip| {
                (self.primary && (Some(*ip) == first_v4 || Some(*ip) == first_v6))
                    || self.cidrs.iter().any(|n| n.contains(*ip))
            })
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_are_truncated_and_nested_ones_dropped() {
        let got = parse_cidrs("10.244.1.7/16, 10.0.0.0/8,fd00::1/64").unwrap();
        let want: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/64".parse().unwrap()];
        assert_eq!(got, want);
        assert!(
            parse_cidrs("10.244.0.0")
                .unwrap_err()
                .contains("not a CIDR")
        );
        assert!(parse_cidrs("").unwrap().is_empty());
    }

    #[test]
    fn who_is_masqueraded() {
        let default = Masquerade::default();
        assert!(!default.masquerades(ip("192.168.1.1")));
        assert!(!default.masquerades(ip("fd00::1")));
        let all = Masquerade {
            all: true,
            ..Masquerade::default()
        };
        assert!(all.masquerades(ip("10.244.0.5")) && all.masquerades(ip("fd00::1")));
        assert!(all.exempt(false).is_empty());
        let cluster = Masquerade {
            all: false,
            cluster_cidrs: parse_cidrs("10.244.0.0/16").unwrap(),
        };
        assert!(!cluster.masquerades(ip("10.244.3.4")));
        assert!(cluster.masquerades(ip("192.168.0.10")));
        // No IPv6 range named: IPv6 sources keep their address.
        assert!(!cluster.masquerades(ip("fd00::1")));
    }

    #[test]
    fn node_port_addresses_select_from_the_internal_ips() {
        let ips = [
            ip("10.0.0.5"),
            ip("192.168.7.2"),
            ip("fd00::5"),
            ip("fd01::9"),
        ];
        assert_eq!(NodePortAddresses::default().select(&ips), ips.to_vec());
        let primary = NodePortAddresses::parse(["primary"]).unwrap();
        assert_eq!(primary.select(&ips), vec![ip("10.0.0.5"), ip("fd00::5")]);
        let ranged = NodePortAddresses::parse(["192.168.0.0/16,fd01::/64"]).unwrap();
        assert_eq!(ranged.select(&ips), vec![ip("192.168.7.2"), ip("fd01::9")]);
        let none = NodePortAddresses::parse(["172.16.0.0/12"]).unwrap();
        assert!(none.select(&ips).is_empty());
        assert!(NodePortAddresses::parse(["bogus"]).is_err());
    }
}
