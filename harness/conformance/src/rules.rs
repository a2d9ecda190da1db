//! The spec's numbered rules, read from `spec/*.md` at build time, the
//! profiles they belong to, and the deviations `spec/deviations.md` lists
//! for named implementations.

use std::collections::BTreeMap;

const SPEC: [&str; 6] = [
    include_str!("../../../spec/registration.md"),
    include_str!("../../../spec/endpoints.md"),
    include_str!("../../../spec/dns.md"),
    include_str!("../../../spec/resolution.md"),
    include_str!("../../../spec/proxy.md"),
    include_str!("../../../spec/protocol.md"),
];
const DEVIATIONS: &str = include_str!("../../../spec/deviations.md");

/// One rule: its ID and its first sentence.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rule {
    /// `PXY-3`.
    pub id: String,
    /// The rule's text up to its first *Why:*.
    pub text: String,
}

/// Every rule of the spec, in ID order.
pub fn all() -> Vec<Rule> {
    let mut out = BTreeMap::new();
    for doc in SPEC {
        for line in doc.lines() {
            let Some(rest) = line.strip_prefix("- **") else {
                continue;
            };
            let Some((id, text)) = rest.split_once("** ") else {
                continue;
            };
            if !id.contains('-') {
                continue;
            }
            let text = text.split(" *Why:*").next().unwrap_or(text).trim();
            out.insert(
                sort_key(id),
                Rule {
                    id: id.to_owned(),
                    text: text.to_owned(),
                },
            );
        }
    }
    out.into_values().collect()
}

fn sort_key(id: &str) -> (String, u32) {
    let (p, n) = id.split_once('-').unwrap_or((id, "0"));
    (p.to_owned(), n.parse().unwrap_or(0))
}

/// A conformance profile, as Gateway API reports group their tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// What every service proxy must do.
    ProxyCore,
    /// Optional proxy features (ITP Local, affinity, NodePorts, stale UDP flows).
    ProxyExtended,
    /// What every cluster DNS must do.
    DnsCore,
    /// The rest of the DNS specification and Signpost's choices where it is silent.
    DnsExtended,
    /// The EndpointSlice controller.
    EndpointsCore,
    /// Search-path resolution in Pods (kubelet + DNS).
    Resolution,
    /// Rules about the API server and the protocol, not about a component.
    Platform,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 7] = [
        Profile::ProxyCore,
        Profile::ProxyExtended,
        Profile::DnsCore,
        Profile::DnsExtended,
        Profile::EndpointsCore,
        Profile::Resolution,
        Profile::Platform,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Profile::ProxyCore => "proxy-core",
            Profile::ProxyExtended => "proxy-extended",
            Profile::DnsCore => "dns-core",
            Profile::DnsExtended => "dns-extended",
            Profile::EndpointsCore => "endpoints-core",
            Profile::Resolution => "resolution",
            Profile::Platform => "platform",
        }
    }

    /// Whether a failure here fails the certification.
    pub fn is_core(self) -> bool {
        matches!(
            self,
            Profile::ProxyCore | Profile::DnsCore | Profile::EndpointsCore
        )
    }
}

/// The profile a rule belongs to.
pub fn profile(id: &str) -> Profile {
    let (prefix, n) = sort_key(id);
    match prefix.as_str() {
        "PXY" if matches!(n, 4 | 5 | 7 | 11) => Profile::ProxyExtended,
        "PXY" => Profile::ProxyCore,
        "DNS" if matches!(n, 1..=9 | 12 | 13 | 18 | 20 | 21) => Profile::DnsCore,
        "DNS" => Profile::DnsExtended,
        "EPS" => Profile::EndpointsCore,
        "RES" => Profile::Resolution,
        _ => Profile::Platform,
    }
}

/// A deviation an implementation has from a rule, with its reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Deviation {
    /// Which implementation (`kube-proxy-nftables`, `coredns`, ...).
    pub implementation: String,
    /// The rule.
    pub rule: String,
    /// Why it differs.
    pub reason: String,
}

/// The deviations listed in `spec/deviations.md` (a table:
/// `| implementation | rule | reason |`).
pub fn deviations() -> Vec<Deviation> {
    DEVIATIONS
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            match cells.as_slice() {
                [imp, rule, reason]
                    if rule.contains('-') && !imp.starts_with('-') && *imp != "implementation" =>
                {
                    Some(Deviation {
                        implementation: imp.trim_matches('`').to_owned(),
                        rule: (*rule).to_owned(),
                        reason: (*reason).to_owned(),
                    })
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_has_its_rules_and_each_has_a_profile() {
        let rules = all();
        assert!(rules.len() >= 60, "{} rules", rules.len());
        for id in ["PXY-1", "DNS-20", "EPS-11", "RES-6", "REG-4", "PROTO-1"] {
            assert!(rules.iter().any(|r| r.id == id), "{id} missing");
        }
        assert_eq!(profile("PXY-3"), Profile::ProxyCore);
        assert_eq!(profile("PXY-5"), Profile::ProxyExtended);
        assert!(profile("DNS-12").is_core());
    }

    #[test]
    fn deviations_name_known_rules() {
        let ids: Vec<String> = all().into_iter().map(|r| r.id).collect();
        for d in deviations() {
            assert!(ids.contains(&d.rule), "{d:?} names no rule");
            assert!(!d.reason.is_empty());
        }
    }
}
