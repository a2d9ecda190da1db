//! RES: how a Pod's stub resolver turns a name into addresses with the
//! kubelet's resolv.conf, for glibc and musl.

use std::net::IpAddr;

use crate::cluster::{DnsOutcome, RData, Rcode, ResolvConf, ResolverLib};

/// The outcome of asking the DNS for one absolute name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lookup {
    /// The name has addresses.
    Addresses(Vec<IpAddr>),
    /// NXDOMAIN.
    NxDomain,
    /// The name exists without addresses.
    NoData,
    /// SERVFAIL or no answer.
    ServFail,
}

/// The result of a whole resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Absolute names asked, in order (no trailing dot).
    pub tried: Vec<String>,
    /// Addresses, or the error the library reports.
    pub result: Result<Vec<IpAddr>, Lookup>,
}

/// Reads a cluster DNS outcome as a stub resolver does: address records are
/// addresses; an answer without them is NODATA.
pub fn classify(outcome: &DnsOutcome) -> Lookup {
    match outcome {
        DnsOutcome::Answer {
            rcode: Rcode::NoError,
            records,
        } => {
            let ips: Vec<IpAddr> = records
                .iter()
                .filter_map(|r| match r.data {
                    RData::A(a) => Some(IpAddr::V4(a)),
                    RData::Aaaa(a) => Some(IpAddr::V6(a)),
                    _ => None,
                })
                .collect();
            if ips.is_empty() {
                Lookup::NoData
            } else {
                Lookup::Addresses(ips)
            }
        }
        DnsOutcome::Answer {
            rcode: Rcode::NxDomain,
            ..
        } => Lookup::NxDomain,
        DnsOutcome::Answer { .. } => Lookup::ServFail,
        // Forwarded upstream: in the model there is nothing beyond the cluster.
        DnsOutcome::Forward => Lookup::NxDomain,
    }
}

/// RES-2..RES-4: the absolute names a resolver tries, in order.
///
/// A trailing dot means the name is absolute and only it is tried. Otherwise
/// with fewer than `ndots` dots the search list comes first and the name as
/// given last; with `ndots` or more the name as given comes first — glibc
/// then walks the search list, musl does not use it at all.
pub fn candidates(conf: &ResolvConf, name: &str, lib: ResolverLib) -> Vec<String> {
    if let Some(abs) = name.strip_suffix('.') {
        return vec![abs.to_owned()];
    }
    let dots = name.matches('.').count();
    let searched = conf.search.iter().map(|d| format!("{name}.{d}"));
    if dots >= usize::from(conf.ndots) {
        match lib {
            ResolverLib::Glibc => std::iter::once(name.to_owned()).chain(searched).collect(),
            ResolverLib::Musl => vec![name.to_owned()],
        }
    } else {
        searched.chain(std::iter::once(name.to_owned())).collect()
    }
}

/// The RES oracle: resolve `name` through `lookup` (one absolute name → its
/// outcome) with the library's search-walk rules. glibc goes on after
/// NXDOMAIN, NODATA and SERVFAIL (RES-3); musl only after NXDOMAIN (RES-4).
pub fn resolve(
    conf: &ResolvConf,
    name: &str,
    lib: ResolverLib,
    mut lookup: impl FnMut(&str) -> Lookup,
) -> Resolution {
    let mut tried = Vec::new();
    let (mut saw_nodata, mut saw_servfail) = (false, false);
    for candidate in candidates(conf, name, lib) {
        let outcome = lookup(&candidate);
        tried.push(candidate);
        match (outcome, lib) {
            (Lookup::Addresses(ips), _) => {
                return Resolution {
                    tried,
                    result: Ok(ips),
                };
            }
            (Lookup::NxDomain, _) => {}
            (Lookup::NoData, ResolverLib::Glibc) => saw_nodata = true,
            (Lookup::ServFail, ResolverLib::Glibc) => saw_servfail = true,
            (other, ResolverLib::Musl) => {
                return Resolution {
                    tried,
                    result: Err(other),
                };
            }
        }
    }
    let err = if saw_nodata {
        Lookup::NoData
    } else if saw_servfail {
        Lookup::ServFail
    } else {
        Lookup::NxDomain
    };
    Resolution {
        tried,
        result: Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> ResolvConf {
        ResolvConf::kubelet("default", "cluster.local", "10.96.0.10".parse().unwrap())
    }

    #[test]
    fn short_names_walk_the_search_list_first() {
        assert_eq!(
            candidates(&conf(), "voy", ResolverLib::Glibc),
            [
                "voy.default.svc.cluster.local",
                "voy.svc.cluster.local",
                "voy.cluster.local",
                "voy"
            ]
        );
        assert_eq!(
            candidates(&conf(), "voy", ResolverLib::Musl),
            candidates(&conf(), "voy", ResolverLib::Glibc)
        );
    }

    #[test]
    fn long_names_go_absolute_first_and_musl_stops_there() {
        let name = "voy.default.svc.cluster.local";
        assert_eq!(
            candidates(&conf(), name, ResolverLib::Glibc).len(),
            1 + 3,
            "4 dots < ndots 5"
        );
        let long = "a.b.c.d.e.f";
        assert_eq!(candidates(&conf(), long, ResolverLib::Glibc)[0], long);
        assert_eq!(candidates(&conf(), long, ResolverLib::Glibc).len(), 4);
        assert_eq!(candidates(&conf(), long, ResolverLib::Musl), [long]);
        assert_eq!(candidates(&conf(), "voy.", ResolverLib::Glibc), ["voy"]);
    }

    #[test]
    fn glibc_walks_past_nodata_and_musl_stops() {
        let lookup = |n: &str| match n {
            "voy.default.svc.cluster.local" => Lookup::NoData,
            "voy.svc.cluster.local" => Lookup::Addresses(vec!["10.0.0.1".parse().unwrap()]),
            _ => Lookup::NxDomain,
        };
        assert!(
            resolve(&conf(), "voy", ResolverLib::Glibc, lookup)
                .result
                .is_ok()
        );
        let musl = resolve(&conf(), "voy", ResolverLib::Musl, lookup);
        assert_eq!(musl.result, Err(Lookup::NoData));
        assert_eq!(musl.tried.len(), 1);
    }
}
