//! Reads Signpost's table back from `nft -j list table inet signpost` into a
//! [`ProxyTable`] (PXY-8): the map elements name the virtual addresses and
//! where they go: a group's pick chain (or a NodePort's chain going there),
//! whose backends map holds the backends under the address and port, or a random
//! cascade naming the endpoint chains, whose DNAT rules name the backends,
//! with affinity from the endpoint sets' timeouts. So a restarted proxy plans against what the kernel really
//! holds.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde_json::Value;
use signpost_model::cluster::{Protocol, ProxyTable, VirtualKey, VirtualService};

fn protocol(s: &str) -> Option<Protocol> {
    match s {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn key(v: &Value) -> Option<VirtualKey> {
    let parts = v.get("concat").and_then(Value::as_array)?;
    let ip: IpAddr = parts.first()?.as_str()?.parse().ok()?;
    let protocol = protocol(parts.get(1)?.as_str()?)?;
    let port = u16::try_from(parts.get(2)?.as_u64()?).ok()?;
    Some(VirtualKey { ip, protocol, port })
}

fn elems(obj: &Value) -> Vec<Value> {
    obj.get("elem")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// `address . port` of a backend map element.
fn backend(v: &Value) -> Option<SocketAddr> {
    let parts = v.get("concat").and_then(Value::as_array)?;
    let ip: IpAddr = parts.first()?.as_str()?.parse().ok()?;
    let port = u16::try_from(parts.get(1)?.as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

/// Whether a listing has the layout this release writes (its hairpin
/// sets). A table from an older release is rewritten whole, not patched.
pub fn current_layout(listing: &Value) -> bool {
    let names: Vec<&str> = listing
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("set")?.get("name")?.as_str())
        .collect();
    [false, true]
        .iter()
        .all(|v6| names.contains(&super::build::hairpin_set(*v6).as_str()))
}

/// The table a listing describes; `None` for no listing (no table).
pub fn table(listing: Option<&Value>) -> ProxyTable {
    let mut out = ProxyTable::new();
    let Some(items) = listing
        .and_then(|l| l.get("nftables"))
        .and_then(Value::as_array)
    else {
        return out;
    };
    let mut rules: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut set_timeouts: BTreeMap<String, u32> = BTreeMap::new();
    let mut service_chains: Vec<(VirtualKey, String)> = Vec::new();
    // (address, protocol, port) → backends, from the backends maps.
    let mut grouped: BTreeMap<(IpAddr, Protocol, u16), Vec<SocketAddr>> = BTreeMap::new();
    for item in items {
        if let Some(r) = item.get("rule") {
            let chain = r
                .get("chain")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            rules
                .entry(chain)
                .or_default()
                .push(r.get("expr").cloned().unwrap_or(Value::Null));
        } else if let Some(m) = item.get("map") {
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
            if let Some(p) = name
                .strip_prefix("backends-")
                .and_then(|rest| rest.split('-').nth(1))
                .and_then(protocol)
            {
                for e in elems(m) {
                    let Some(pair) = e.as_array() else { continue };
                    let under = pair
                        .first()
                        .and_then(|k| k.get("concat"))
                        .and_then(Value::as_array)
                        .and_then(|k| {
                            let ip: IpAddr = k.first()?.as_str()?.parse().ok()?;
                            let port = u16::try_from(k.get(1)?.as_u64()?).ok()?;
                            Some((ip, p, port))
                        });
                    if let (Some(under), Some(to)) = (under, pair.get(1).and_then(backend)) {
                        grouped.entry(under).or_default().push(to);
                    }
                }
            }
            if name.starts_with("service-ips-") {
                for e in elems(m) {
                    let pair = e.as_array().cloned().unwrap_or_default();
                    if let (Some(k), Some(target)) = (
                        pair.first().and_then(key),
                        pair.get(1)
                            .and_then(|v| v.pointer("/goto/target"))
                            .and_then(Value::as_str),
                    ) {
                        service_chains.push((k, target.to_owned()));
                    }
                }
            }
        } else if let Some(s) = item.get("set") {
            let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.starts_with("rejecting-") {
                for e in elems(s) {
                    let e = e
                        .get("elem")
                        .and_then(|x| x.get("val"))
                        .unwrap_or(&e)
                        .clone();
                    if let Some(k) = key(&e) {
                        out.insert(k, VirtualService::default());
                    }
                }
            } else if name.starts_with("a-")
                && let Some(t) = s.get("timeout").and_then(Value::as_u64)
            {
                set_timeouts.insert(name.to_owned(), u32::try_from(t).unwrap_or(u32::MAX));
            }
        }
    }
    for (k, chain) in service_chains {
        let mut vs = VirtualService::default();
        let from_group = |vs: &mut VirtualService| {
            vs.backends.extend(
                grouped
                    .get(&(k.ip, k.protocol, k.port))
                    .into_iter()
                    .flatten()
                    .copied(),
            );
        };
        if chain.starts_with("pick-") {
            from_group(&mut vs);
        }
        for expr in rules.get(&chain).into_iter().flatten() {
            let expr = expr.as_array().cloned().unwrap_or_default();
            for e in &expr {
                if let Some(set) = e
                    .pointer("/match/right")
                    .and_then(Value::as_str)
                    .and_then(|s| s.strip_prefix('@'))
                {
                    vs.affinity_timeout = set_timeouts.get(set).copied().or(vs.affinity_timeout);
                }
                if e.pointer("/goto/target")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.starts_with("pick-"))
                {
                    from_group(&mut vs);
                }
                // The endpoint chains: the targets of the random cascade's
                // rules (and of the affinity rules, the same chains), or
                // of a `numgen` vmap (the layout before the cascade).
                let targets: Vec<&Value> =
                    match e.pointer("/vmap/data/set").and_then(Value::as_array) {
                        Some(choices) => choices.iter().filter_map(|c| c.get(1)).collect(),
                        None => vec![e],
                    };
                {
                    for c in targets {
                        let Some(ep) = c
                            .pointer("/goto/target")
                            .and_then(Value::as_str)
                            .filter(|t| t.starts_with("e-"))
                        else {
                            continue;
                        };
                        for ep_expr in rules.get(ep).into_iter().flatten() {
                            for st in ep_expr.as_array().into_iter().flatten() {
                                if let Some(d) = st.get("dnat") {
                                    let addr = d
                                        .get("addr")
                                        .and_then(Value::as_str)
                                        .and_then(|a| a.parse::<IpAddr>().ok());
                                    let port = d
                                        .get("port")
                                        .and_then(Value::as_u64)
                                        .and_then(|p| u16::try_from(p).ok());
                                    if let (Some(a), Some(p)) = (addr, port) {
                                        vs.backends.insert(SocketAddr::new(a, p));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out.insert(k, vs);
    }
    out
}

/// The masquerade policy a listing holds: the elements of its
/// `no-masquerade-v4` and `no-masquerade-v6` sets (`None` when either set
/// is missing: a table from before the sets existed, or no table).
pub fn no_masquerade(listing: Option<&Value>) -> Option<[Vec<ipnet::IpNet>; 2]> {
    let items = listing?.get("nftables")?.as_array()?;
    let mut found: [Option<Vec<ipnet::IpNet>>; 2] = [None, None];
    for s in items.iter().filter_map(|i| i.get("set")) {
        let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
        let slot = match name {
            "no-masquerade-v4" => 0,
            "no-masquerade-v6" => 1,
            _ => continue,
        };
        let mut nets: Vec<ipnet::IpNet> = elems(s)
            .iter()
            .filter_map(|e| {
                let p = e.get("prefix")?;
                let addr: IpAddr = p.get("addr")?.as_str()?.parse().ok()?;
                let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                ipnet::IpNet::new(addr, len).ok()
            })
            .collect();
        nets.sort();
        found[slot] = Some(nets);
    }
    let [v4, v6] = found;
    Some([v4?, v6?])
}

/// The virtual addresses of `read` (the listing's [`table`], already read)
/// that were written as the node's own (NodePorts): those not in the
/// listing's `cluster-ips-v4/v6` sets.
pub fn node_port_ips(
    listing: Option<&Value>,
    read: &ProxyTable,
) -> std::collections::BTreeSet<IpAddr> {
    let mut cluster = std::collections::BTreeSet::new();
    for s in listing
        .and_then(|l| l.get("nftables"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("set"))
    {
        if s.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.starts_with("cluster-ips-"))
        {
            cluster.extend(
                elems(s)
                    .iter()
                    .filter_map(|e| e.as_str().and_then(|a| a.parse::<IpAddr>().ok())),
            );
        }
    }
    read.keys()
        .map(|k| k.ip)
        .filter(|ip| !cluster.contains(ip))
        .collect()
}
