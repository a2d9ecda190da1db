//! The nftables data plane as data: a [`ProxyTable`] becomes one
//! transaction ([`Tx`], written as an nft script or as one netlink batch). A
//! full sync creates the whole table; a partial sync rewrites only the
//! virtual services whose entry changed (PXY-8), and an endpoint change of
//! a service without affinity changes only elements of hashed maps (see
//! [`Group`]): the kernel checks the whole table's chain graph at every
//! commit that adds a rule or chain but not at one that only changes set
//! elements.
//!
//! Layout of table `inet signpost`:
//! - `nat-prerouting`, `nat-output` (nat hooks) jump to `services`, which
//!   looks `daddr . l4proto . dport` up in the verdict maps `service-ips-v4`
//!   and `service-ips-v6` and goes to the service's group chain, or to its
//!   own chain `s-<key>` (a NodePort, marked for masquerade, or a service
//!   with affinity);
//! - the virtual addresses without affinity are grouped by family,
//!   protocol and number of backends: group chain `pick-v4-tcp-3` has one
//!   rule, `dnat ip to ip daddr . tcp dport . numgen random mod 3 map
//!   @backends-v4-tcp-3`, and the group's map holds each address's
//!   backends under indices 0..3 (PXY-1: each with chance 1/n);
//! - a service with ClientIP affinity (PXY-5) sends clients found in an
//!   endpoint's affinity set `a-<key>-<n>` to that endpoint and others to
//!   one endpoint chosen at random by a cascade: endpoint `i` of `n` is
//!   taken when `numgen random mod (n - i)` is 0, the last one always, so
//!   each is taken with chance 1/n. Its endpoint chains `e-<key>-<n>`
//!   record the client and DNAT.
//! - `filter-input`, `filter-forward`, `filter-output` reject anything still addressed to a
//!   ClusterIP after DNAT: ports without endpoints and unknown ports (PXY-3);
//! - `nat-postrouting` masquerades marked packets, and hairpin traffic (an
//!   endpoint reaching itself through a service: its `saddr . daddr` pair
//!   is in `hairpin-v4/v6`); `services` marks traffic to a ClusterIP from
//!   a source outside `no-masquerade-v4/v6` (interval sets holding the
//!   [`Masquerade`] policy: everything by default).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use signpost_model::cluster::{Protocol, ProxyTable, VirtualKey, VirtualService};

pub use super::census::Census;
use super::census::{self, Change};
pub use super::ruleset::Tx;
use super::ruleset::{Cmd, Elem, Hook, SetKind, Stmt};
use crate::addresses::Masquerade;
use crate::plane::has_address;

/// The chain that refuses traffic to a ClusterIP port without endpoints.
/// Not `reject`: that is a keyword of nft's language, and a table with a
/// chain of that name is listed by `nft list` as text `nft -f` refuses, so
/// an administrator's save and restore of the ruleset would fail.
pub const REJECT_CHAIN: &str = "reject-chain";

/// The set of sources whose traffic to a ClusterIP is not masqueraded.
pub fn no_masquerade_set(v6: bool) -> String {
    format!("no-masquerade-{}", if v6 { "v6" } else { "v4" })
}

fn proto(p: Protocol) -> &'static str {
    p.as_lower()
}

fn hex(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
        IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// The service chain of a virtual address: `s-<ip hex>-<proto>-<port>`.
pub fn service_chain(key: &VirtualKey) -> String {
    format!("s-{}-{}-{}", hex(&key.ip), proto(key.protocol), key.port)
}

/// The endpoint chain of a backend of a virtual address.
pub fn endpoint_chain(key: &VirtualKey, backend: &SocketAddr) -> String {
    format!(
        "e-{}-{}-{}-{}-{}",
        hex(&key.ip),
        proto(key.protocol),
        key.port,
        hex(&backend.ip()),
        backend.port()
    )
}

/// The group of a virtual address without affinity: its family, protocol
/// and number of backends `n`. The pick chain of a family and protocol
/// has one rule per group, `dnat to daddr . dport . numgen random mod n
/// map @backends-...-n`; a group's map holds its addresses' backends under
/// indices 0..n, so the first rule whose map knows the packet's address
/// and port picks one of its backends, each with chance 1/n. Every
/// address goes to the same chain whatever its group, so an endpoint
/// change only moves elements of hashed maps (constant time in the kernel;
/// a verdict change would make the kernel re-check every element of the
/// verdict map), and a table holds few sets (the kernel finds a set by
/// name in a list, so a set per Service would make a full sync quadratic:
/// 1.6 s for 10k empty sets, 8.2 s for 20k; interval maps over many
/// addresses cost time linear in their size at each change: 15 ms to
/// delete one range of 15k).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Group {
    /// IPv6.
    pub v6: bool,
    /// The transport protocol.
    pub protocol: Protocol,
    /// Backends of each address.
    pub n: u32,
}

impl Group {
    /// The group of `key` with `vs`'s backends.
    pub fn of(key: &VirtualKey, vs: &VirtualService) -> Group {
        Group {
            v6: key.ip.is_ipv6(),
            protocol: key.protocol,
            n: u32::try_from(vs.backends.len()).unwrap_or(u32::MAX),
        }
    }

    fn name(self, prefix: &str) -> String {
        format!(
            "{prefix}-{}-{}-{}",
            if self.v6 { "v6" } else { "v4" },
            proto(self.protocol),
            self.n
        )
    }

    /// The map of the group's backends (`backends-v4-tcp-3`).
    pub fn map(self) -> String {
        self.name("backends")
    }
}

/// The backends of `key` as elements of its group's map: backend `i` (in
/// order) under index `i`.
pub fn picks(key: &VirtualKey, vs: &VirtualService) -> Vec<Elem> {
    vs.backends
        .iter()
        .enumerate()
        .map(|(i, to)| Elem::Pick {
            key: *key,
            index: u32::try_from(i).unwrap_or(u32::MAX),
            to: *to,
        })
        .collect()
}

/// The chain that picks a backend for the addresses of a family and
/// protocol (`pick-v4-tcp`).
pub fn pick_chain(v6: bool, protocol: Protocol) -> String {
    format!("pick-{}-{}", if v6 { "v6" } else { "v4" }, proto(protocol))
}

/// The pick chain of `key`.
fn pick_chain_of(key: &VirtualKey) -> String {
    pick_chain(key.ip.is_ipv6(), key.protocol)
}

const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// The groups a table uses: of its entries with backends and no affinity.
fn groups(table: &ProxyTable) -> BTreeSet<Group> {
    table
        .iter()
        .filter(|(_, vs)| vs.affinity_timeout.is_none() && !vs.rejects())
        .map(|(k, vs)| Group::of(k, vs))
        .collect()
}

fn add_group_map(g: Group, out: &mut Vec<Cmd>) {
    out.push(Cmd::AddSet(
        g.map(),
        SetKind::Backends {
            v6: g.v6,
            protocol: g.protocol,
            n: g.n,
        },
    ));
}

/// The rules of the pick chains whose groups differ between `before` and
/// `after` (all of them over an empty `before` into fresh chains): one
/// rule per group, fewest backends first.
fn pick_rules(before: &BTreeSet<Group>, after: &BTreeSet<Group>, fresh: bool, out: &mut Vec<Cmd>) {
    for v6 in [false, true] {
        for protocol in PROTOCOLS {
            let of = |set: &BTreeSet<Group>| -> Vec<Group> {
                set.iter()
                    .filter(|g| g.v6 == v6 && g.protocol == protocol)
                    .copied()
                    .collect()
            };
            let now = of(after);
            if !fresh && of(before) == now {
                continue;
            }
            let chain = pick_chain(v6, protocol);
            if !fresh {
                out.push(Cmd::FlushChain(chain.clone()));
            }
            for g in now {
                out.push(rule(
                    &chain,
                    vec![Stmt::DnatPick {
                        v6,
                        protocol,
                        n: g.n,
                        map: g.map(),
                    }],
                ));
            }
        }
    }
}

/// The set of hairpin `address . address` pairs.
pub fn hairpin_set(v6: bool) -> String {
    format!("hairpin-{}", if v6 { "v6" } else { "v4" })
}

/// The affinity set of an endpoint chain.
pub fn affinity_set(key: &VirtualKey, backend: &SocketAddr) -> String {
    format!("a{}", &endpoint_chain(key, backend)[1..])
}

fn v(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "v4" } else { "v6" }
}

fn rule(chain: &str, stmts: Vec<Stmt>) -> Cmd {
    Cmd::AddRule(chain.to_owned(), stmts)
}

fn goto(target: &str) -> Stmt {
    Stmt::Goto(target.to_owned())
}

/// The skeleton: table, maps, sets and base chains with their fixed rules.
fn skeleton() -> Vec<Cmd> {
    let mut out = vec![Cmd::AddTable];
    for (ver, v6) in [("v4", false), ("v6", true)] {
        out.push(Cmd::AddSet(
            format!("service-ips-{ver}"),
            SetKind::Vmap { v6 },
        ));
        out.push(Cmd::AddSet(
            format!("cluster-ips-{ver}"),
            SetKind::Addrs { v6 },
        ));
        out.push(Cmd::AddSet(
            format!("rejecting-{ver}"),
            SetKind::Tuples { v6 },
        ));
        out.push(Cmd::AddSet(
            no_masquerade_set(v6),
            SetKind::Intervals { v6 },
        ));
        out.push(Cmd::AddSet(hairpin_set(v6), SetKind::Pairs { v6 }));
    }
    for v6 in [false, true] {
        for protocol in PROTOCOLS {
            out.push(Cmd::AddChain(pick_chain(v6, protocol), None));
        }
    }
    out.push(Cmd::AddChain("services".into(), None));
    for (ver, v6) in [("v4", false), ("v6", true)] {
        out.push(rule(
            "services",
            vec![
                Stmt::DaddrIn {
                    v6,
                    set: format!("cluster-ips-{ver}"),
                },
                Stmt::SaddrNotIn {
                    v6,
                    set: no_masquerade_set(v6),
                },
                Stmt::MarkForMasquerade,
            ],
        ));
    }
    for (ver, v6) in [("v4", false), ("v6", true)] {
        out.push(rule(
            "services",
            vec![
                Stmt::Nfproto { v6 },
                Stmt::TupleVmap {
                    v6,
                    map: format!("service-ips-{ver}"),
                },
            ],
        ));
    }
    for (name, hook) in [("nat-prerouting", "prerouting"), ("nat-output", "output")] {
        out.push(Cmd::AddChain(
            name.into(),
            Some(Hook {
                kind: "nat",
                hook,
                prio: -100,
            }),
        ));
        out.push(rule(name, vec![Stmt::Jump("services".into())]));
    }
    out.push(Cmd::AddChain(
        "nat-postrouting".into(),
        Some(Hook {
            kind: "nat",
            hook: "postrouting",
            prio: 100,
        }),
    ));
    out.push(rule(
        "nat-postrouting",
        vec![Stmt::MarkedForMasquerade, Stmt::Masquerade],
    ));
    for v6 in [false, true] {
        out.push(rule(
            "nat-postrouting",
            vec![
                Stmt::CtDnat,
                Stmt::PairIn {
                    v6,
                    set: hairpin_set(v6),
                },
                Stmt::Masquerade,
            ],
        ));
    }
    out.push(Cmd::AddChain(REJECT_CHAIN.into(), None));
    out.push(rule(
        REJECT_CHAIN,
        vec![Stmt::L4proto(Protocol::Tcp), Stmt::RejectTcpReset],
    ));
    out.push(rule(REJECT_CHAIN, vec![Stmt::RejectPortUnreachable]));
    // Untranslated ClusterIP traffic is delivered locally (input) only if a
    // route says so; a node's default route forwards it instead, so the
    // forward hook rejects it too.
    for (name, hook) in [
        ("filter-input", "input"),
        ("filter-forward", "forward"),
        ("filter-output", "output"),
    ] {
        out.push(Cmd::AddChain(
            name.into(),
            Some(Hook {
                kind: "filter",
                hook,
                prio: 0,
            }),
        ));
        for (ver, v6) in [("v4", false), ("v6", true)] {
            out.push(rule(
                name,
                vec![
                    Stmt::TupleIn {
                        v6,
                        set: format!("rejecting-{ver}"),
                    },
                    goto(REJECT_CHAIN),
                ],
            ));
            out.push(rule(
                name,
                vec![
                    Stmt::DaddrIn {
                        v6,
                        set: format!("cluster-ips-{ver}"),
                    },
                    goto(REJECT_CHAIN),
                ],
            ));
        }
    }
    out
}

/// The commands that create one virtual service (its chains and map element).
/// `fresh`: the table was created in this transaction, so no chain of the
/// service exists yet and none needs flushing.
fn add_service(
    key: &VirtualKey,
    vs: &VirtualService,
    node_ips: &[IpAddr],
    fresh: bool,
    out: &mut Vec<Cmd>,
) {
    add_service_keeping(key, vs, node_ips, &BTreeSet::new(), fresh, out);
}

/// [`add_service`] where the affinity sets of the backends in `kept` are
/// already there (the kernel refuses to add a set twice).
fn add_service_keeping(
    key: &VirtualKey,
    vs: &VirtualService,
    node_ips: &[IpAddr],
    kept: &BTreeSet<SocketAddr>,
    fresh: bool,
    out: &mut Vec<Cmd>,
) {
    if vs.rejects() {
        out.push(Cmd::AddElems(
            format!("rejecting-{}", v(&key.ip)),
            vec![Elem::Tuple(*key)],
        ));
        return;
    }
    let svc = service_chain(key);
    let node_port = node_ips.contains(&key.ip);
    // A service without affinity needs a chain of its own only as a
    // NodePort (to mark it); else its address goes straight to its group.
    if node_port || vs.affinity_timeout.is_some() {
        // `add chain` keeps a chain the kernel already has (one the table read
        // back did not show): flushing it makes re-adding never duplicate rules.
        out.push(Cmd::AddChain(svc.clone(), None));
        if !fresh {
            out.push(Cmd::FlushChain(svc.clone()));
        }
    }
    if node_port {
        // A NodePort: traffic from off the node is masqueraded so replies come back through it.
        out.push(rule(&svc, vec![Stmt::MarkForMasquerade]));
    }
    if vs.affinity_timeout.is_none() {
        out.push(Cmd::AddElems(Group::of(key, vs).map(), picks(key, vs)));
        let target = if node_port {
            out.push(rule(&svc, vec![goto(&pick_chain_of(key))]));
            svc
        } else {
            pick_chain_of(key)
        };
        out.push(Cmd::AddElems(
            format!("service-ips-{}", v(&key.ip)),
            vec![Elem::TupleGoto(*key, target)],
        ));
        return;
    }
    let backends: Vec<&SocketAddr> = vs.backends.iter().collect();
    for b in &backends {
        let ep = endpoint_chain(key, b);
        out.push(Cmd::AddChain(ep.clone(), None));
        if !fresh {
            out.push(Cmd::FlushChain(ep.clone()));
        }
        let bv6 = b.is_ipv6();
        if let Some(timeout) = vs.affinity_timeout {
            let set = affinity_set(key, b);
            if !kept.contains(b) {
                out.push(Cmd::AddSet(
                    set.clone(),
                    SetKind::Affinity {
                        v6: bv6,
                        timeout: timeout.into(),
                    },
                ));
            }
            out.push(rule(
                &ep,
                vec![Stmt::UpdateSaddr {
                    v6: bv6,
                    set: set.clone(),
                }],
            ));
            out.push(rule(
                &svc,
                vec![
                    Stmt::SaddrIn {
                        v6: key.ip.is_ipv6(),
                        set,
                    },
                    goto(&ep),
                ],
            ));
        }
        out.push(rule(
            &ep,
            vec![Stmt::L4proto(key.protocol), Stmt::Dnat(**b)],
        ));
    }
    let n = backends.len();
    for (i, b) in backends.iter().enumerate() {
        let mut stmts = Vec::new();
        let left = n - i;
        if left > 1 {
            stmts.push(Stmt::NumgenZero(u32::try_from(left).unwrap_or(u32::MAX)));
        }
        stmts.push(goto(&endpoint_chain(key, b)));
        out.push(rule(&svc, stmts));
    }
    out.push(Cmd::AddElems(
        format!("service-ips-{}", v(&key.ip)),
        vec![Elem::TupleGoto(*key, svc)],
    ));
}

/// The commands that remove one virtual service.
fn delete_service(key: &VirtualKey, vs: &VirtualService, node_ips: &[IpAddr], out: &mut Vec<Cmd>) {
    delete_service_keeping(key, vs, node_ips, &BTreeSet::new(), out);
}

/// [`delete_service`], keeping the affinity sets of the backends in `keep`.
fn delete_service_keeping(
    key: &VirtualKey,
    vs: &VirtualService,
    node_ips: &[IpAddr],
    keep: &BTreeSet<SocketAddr>,
    out: &mut Vec<Cmd>,
) {
    if vs.rejects() {
        out.push(Cmd::DeleteElems(
            format!("rejecting-{}", v(&key.ip)),
            vec![Elem::Tuple(*key)],
        ));
        return;
    }
    let svc = service_chain(key);
    out.push(Cmd::DeleteElems(
        format!("service-ips-{}", v(&key.ip)),
        vec![Elem::Tuple(*key)],
    ));
    if vs.affinity_timeout.is_none() {
        out.push(Cmd::DeleteElems(Group::of(key, vs).map(), picks(key, vs)));
        if node_ips.contains(&key.ip) {
            out.push(Cmd::FlushChain(svc.clone()));
            out.push(Cmd::DeleteChain(svc));
        }
        return;
    }
    // Chains must be empty and unreferenced before they go: flush, then delete.
    out.push(Cmd::FlushChain(svc.clone()));
    for b in &vs.backends {
        out.push(Cmd::FlushChain(endpoint_chain(key, b)));
    }
    out.push(Cmd::DeleteChain(svc));
    for b in &vs.backends {
        out.push(Cmd::DeleteChain(endpoint_chain(key, b)));
        if vs.affinity_timeout.is_some() && !keep.contains(b) {
            out.push(Cmd::DeleteSet(affinity_set(key, b)));
        }
    }
}

/// The virtual addresses of `table` that are the node's own (NodePorts),
/// so not in the ClusterIP sets. A partial sync is only right over a table
/// written with the same ones: it adds and deletes ClusterIP set elements
/// by this split.
/// One range lookup per node address (keys sort by address first).
pub fn node_port_ips(table: &ProxyTable, node_ips: &[IpAddr]) -> BTreeSet<IpAddr> {
    node_ips
        .iter()
        .filter(|ip| has_address(table, **ip))
        .copied()
        .collect()
}

/// ClusterIPs (every virtual address but the node's own, which carry NodePorts).
fn cluster_ips(table: &ProxyTable, node_ips: &[IpAddr]) -> BTreeSet<IpAddr> {
    table
        .keys()
        .map(|k| k.ip)
        .filter(|ip| !node_ips.contains(ip))
        .collect()
}

/// Every backend address (each is in the hairpin sets).
fn backend_ips(table: &ProxyTable) -> BTreeSet<IpAddr> {
    table
        .values()
        .flat_map(|vs| vs.backends.iter().map(SocketAddr::ip))
        .collect()
}

/// Adds (or deletes) one element per address, in the set of its family.
fn family_elements(
    ips: &BTreeSet<IpAddr>,
    set: fn(bool) -> String,
    elem: fn(IpAddr) -> Elem,
    out: &mut Vec<Cmd>,
    add: bool,
) {
    for v6 in [false, true] {
        let elems: Vec<Elem> = ips
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(|ip| elem(*ip))
            .collect();
        if !elems.is_empty() {
            out.push(if add {
                Cmd::AddElems(set(v6), elems)
            } else {
                Cmd::DeleteElems(set(v6), elems)
            });
        }
    }
}

fn hairpin_elements(ips: &BTreeSet<IpAddr>, out: &mut Vec<Cmd>, add: bool) {
    family_elements(ips, hairpin_set, Elem::Pair, out, add);
}

fn ip_elements(ips: &BTreeSet<IpAddr>, out: &mut Vec<Cmd>, add: bool) {
    let set = |v6: bool| format!("cluster-ips-{}", if v6 { "v6" } else { "v4" });
    family_elements(ips, set, Elem::Addr, out, add);
}

/// A full sync: delete whatever table exists and build `table` from scratch,
/// in one transaction (no moment without rules), with `masq` as the
/// masquerade policy.
pub fn full(table: &ProxyTable, node_ips: &[IpAddr], masq: &Masquerade) -> Tx {
    let mut out = vec![Cmd::AddTable, Cmd::DeleteTable];
    out.extend(skeleton());
    for v6 in [false, true] {
        let elems: Vec<Elem> = masq.exempt(v6).iter().copied().map(Elem::Prefix).collect();
        if !elems.is_empty() {
            out.push(Cmd::AddElems(no_masquerade_set(v6), elems));
        }
    }
    ip_elements(&cluster_ips(table, node_ips), &mut out, true);
    hairpin_elements(&backend_ips(table), &mut out, true);
    let in_use = groups(table);
    for g in &in_use {
        add_group_map(*g, &mut out);
    }
    pick_rules(&BTreeSet::new(), &in_use, true, &mut out);
    for (key, vs) in table {
        add_service(key, vs, node_ips, true, &mut out);
    }
    Tx(out)
}

/// A partial sync from `old` (what the kernel holds) to `new`: only virtual
/// services whose entry differs are rewritten. `None` when nothing changed.
pub fn partial(old: &ProxyTable, new: &ProxyTable, node_ips: &[IpAddr]) -> Option<Tx> {
    partial_of(old, new, &changes(old, new), &Census::of(old), node_ips)
}

/// The same when only entries under `keys` may differ, with `census` the
/// counts of `old`: planned from those entries alone, so its cost grows
/// with the change, not with the table (the caller moves `census` on with
/// [`Census::update`] once the transaction is taken).
pub fn partial_keys(
    old: &ProxyTable,
    new: &ProxyTable,
    keys: &BTreeSet<VirtualKey>,
    census: &Census,
    node_ips: &[IpAddr],
) -> Option<Tx> {
    partial_of(
        old,
        new,
        &census::changes_among(old, new, keys),
        census,
        node_ips,
    )
}

/// The same from the entries that differ (as [`changes`] or
/// [`census::changes_among`] give them), for a caller that needs them too.
pub fn partial_of(
    old: &ProxyTable,
    new: &ProxyTable,
    changed: &[Change<'_>],
    census: &Census,
    node_ips: &[IpAddr],
) -> Option<Tx> {
    let mut out = Vec::new();
    if changed.is_empty() {
        return None;
    }
    // Group maps come first and go last: elements and rules name them.
    let (groups_before, groups_after) = (census.groups(), census.groups_after(changed));
    for g in groups_after.difference(&groups_before) {
        add_group_map(*g, &mut out);
    }
    pick_rules(&groups_before, &groups_after, false, &mut out);
    for &(key, was, is) in changed {
        let Some(vs) = was else { continue };
        match is {
            Some(n) if picks_only(vs, n) => {}
            // Affinity sets of backends that stay (same timeout) are kept:
            // the clients stuck to them stay stuck (the set is re-referenced
            // by the chains re-added below in the same transaction).
            Some(n) if n.affinity_timeout == vs.affinity_timeout && !n.rejects() => {
                delete_service_keeping(key, vs, node_ips, &n.backends, &mut out);
            }
            _ => delete_service(key, vs, node_ips, &mut out),
        }
    }
    // The ClusterIPs and backend addresses that come or go: only those of
    // changed entries can.
    let ips: BTreeSet<IpAddr> = changed
        .iter()
        .map(|(k, _, _)| k.ip)
        .filter(|ip| !node_ips.contains(ip))
        .collect();
    let (gone, came): (BTreeSet<IpAddr>, BTreeSet<IpAddr>) = (
        ips.iter()
            .filter(|ip| has_address(old, **ip) && !has_address(new, **ip))
            .copied()
            .collect(),
        ips.iter()
            .filter(|ip| !has_address(old, **ip) && has_address(new, **ip))
            .copied()
            .collect(),
    );
    ip_elements(&gone, &mut out, false);
    ip_elements(&came, &mut out, true);
    let candidates = census::touched_backends(changed);
    let (before, after) = (
        census.backends_among(&candidates),
        census.backends_after_among(changed, &candidates),
    );
    hairpin_elements(
        &before.difference(&after).copied().collect(),
        &mut out,
        false,
    );
    hairpin_elements(
        &after.difference(&before).copied().collect(),
        &mut out,
        true,
    );
    for &(key, was, is) in changed {
        let Some(vs) = is else { continue };
        match was {
            Some(o) if picks_only(o, vs) => move_picks(key, o, vs, &mut out),
            Some(o) if o.affinity_timeout == vs.affinity_timeout && !o.rejects() => {
                add_service_keeping(key, vs, node_ips, &o.backends, false, &mut out);
            }
            _ => add_service(key, vs, node_ips, false, &mut out),
        }
    }
    for g in groups_before.difference(&groups_after) {
        out.push(Cmd::DeleteMap(g.map()));
    }
    if out.is_empty() { None } else { Some(Tx(out)) }
}

/// The keys whose entry differs between `old` and `new`, in order (one
/// pass over both).
pub fn changed_keys(old: &ProxyTable, new: &ProxyTable) -> Vec<VirtualKey> {
    changes(old, new).into_iter().map(|(k, _, _)| *k).collect()
}

/// The entries that differ, in key order (one pass over both tables).
pub fn changes<'a>(old: &'a ProxyTable, new: &'a ProxyTable) -> Vec<Change<'a>> {
    let mut out = Vec::new();
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek().copied(), b.peek().copied()) {
            (None, None) => return out,
            (Some((k, v)), None) => {
                out.push((k, Some(v), None));
                a.next();
            }
            (None, Some((k, v))) => {
                out.push((k, None, Some(v)));
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.push((ka, Some(va), None));
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push((kb, None, Some(vb)));
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        out.push((ka, Some(va), Some(vb)));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// An endpoint change of an address without affinity: the elements that
/// differ, or, when the number of backends changed, its elements moved to
/// the other group's map (its verdict stays: the same pick chain).
fn move_picks(key: &VirtualKey, old: &VirtualService, new: &VirtualService, out: &mut Vec<Cmd>) {
    let (from, to) = (Group::of(key, old), Group::of(key, new));
    let (was, is) = (picks(key, old), picks(key, new));
    if from == to {
        let gone: Vec<Elem> = was.iter().filter(|e| !is.contains(e)).cloned().collect();
        let came: Vec<Elem> = is.iter().filter(|e| !was.contains(e)).cloned().collect();
        // An element is replaced by deleting its key and adding it again.
        if !gone.is_empty() {
            out.push(Cmd::DeleteElems(to.map(), gone));
        }
        if !came.is_empty() {
            out.push(Cmd::AddElems(to.map(), came));
        }
        return;
    }
    // Added before the old ones go: the address always finds a backend.
    out.push(Cmd::AddElems(to.map(), is));
    out.push(Cmd::DeleteElems(from.map(), was));
}

/// Whether going from `old` to `new` only moves backends map elements
/// (both without affinity, both with backends).
fn picks_only(old: &VirtualService, new: &VirtualService) -> bool {
    old.affinity_timeout.is_none()
        && new.affinity_timeout.is_none()
        && !old.rejects()
        && !new.rejects()
}

/// The table as the data plane holds it: a rejecting entry carries no
/// affinity (there is no backend to stick to).
pub fn normalize(mut table: ProxyTable) -> ProxyTable {
    for vs in table.values_mut() {
        if vs.rejects() {
            vs.affinity_timeout = None;
        }
    }
    table
}

/// Removes the table (`--cleanup`).
pub fn cleanup() -> Tx {
    Tx(vec![Cmd::AddTable, Cmd::DeleteTable])
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn key(ip: &str, port: u16) -> VirtualKey {
        VirtualKey {
            ip: ip.parse().unwrap(),
            protocol: Protocol::Tcp,
            port,
        }
    }

    fn vs(backends: &[&str]) -> VirtualService {
        VirtualService {
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            affinity_timeout: None,
        }
    }

    #[test]
    fn names_encode_the_key() {
        let k = key("10.96.0.1", 80);
        assert_eq!(service_chain(&k), "s-0a600001-tcp-80");
        assert_eq!(
            endpoint_chain(&k, &"10.244.0.2:8080".parse().unwrap()),
            "e-0a600001-tcp-80-0af40002-8080"
        );
    }

    #[test]
    fn a_backend_added_to_a_sticky_service_keeps_the_other_backends_affinity_sets() {
        // Issue 13, finding 11: every endpoint change deleted and recreated
        // every affinity set of the service, so every client was reshuffled.
        let k = key("10.96.0.1", 80);
        let sticky = |backends: &[&str]| VirtualService {
            affinity_timeout: Some(60),
            ..vs(backends)
        };
        let old: ProxyTable = [(k, sticky(&["10.244.0.2:8080"]))].into();
        let new: ProxyTable = [(k, sticky(&["10.244.0.2:8080", "10.244.0.3:8080"]))].into();
        let deletes = |tx: &str, set: &str| {
            tx.contains(&format!(
                r#"{{"delete":{{"set":{{"family":"inet","name":"{set}""#
            ))
        };
        let kept = affinity_set(&k, &"10.244.0.2:8080".parse().unwrap());
        let added = affinity_set(&k, &"10.244.0.3:8080".parse().unwrap());
        let tx = partial(&old, &new, &[]).unwrap().to_string();
        assert!(!deletes(&tx, &kept), "{tx}");
        assert!(tx.contains(&format!(r#""name":"{added}""#)), "{tx}");
        // The backend that goes takes its set, the one that stays keeps its own.
        let tx = partial(&new, &old, &[]).unwrap().to_string();
        assert!(deletes(&tx, &added) && !deletes(&tx, &kept), "{tx}");
        // A changed timeout replaces the sets.
        let longer: ProxyTable = [(
            k,
            VirtualService {
                affinity_timeout: Some(120),
                ..sticky(&["10.244.0.2:8080"])
            },
        )]
        .into();
        let tx = partial(&old, &longer, &[]).unwrap().to_string();
        assert!(deletes(&tx, &kept), "{tx}");
    }

    /// The cascade's chances (services with affinity): the first rule whose
    /// `numgen random mod k` draws 0 is taken (an unconditional rule
    /// always), so a backend's chance is its rule's times the chance every
    /// earlier one passed. PXY-1: each of the n backends gets exactly 1/n.
    #[test]
    fn every_backend_is_chosen_with_the_same_chance() {
        for n in 1..=7usize {
            let backends: Vec<String> =
                (0..n).map(|i| format!("10.244.0.{}:8080", i + 2)).collect();
            let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
            let k = key("10.96.0.1", 80);
            let sticky = VirtualService {
                affinity_timeout: Some(60),
                ..vs(&refs)
            };
            let mut cmds = Vec::new();
            add_service(&k, &sticky, &[], true, &mut cmds);
            let out = Tx(cmds).json()["nftables"].as_array().unwrap().clone();
            let svc = service_chain(&k);
            // (numerator, denominator) of the chance to reach each rule.
            let (mut reach_num, mut reach_den) = (1u64, 1u64);
            let mut chances = Vec::new();
            for cmd in &out {
                let Some(r) = cmd.pointer("/add/rule") else {
                    continue;
                };
                if r["chain"] != svc.as_str() {
                    continue;
                }
                let expr = r["expr"].as_array().unwrap();
                if expr[0]
                    .pointer("/match/right")
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.starts_with("@a-"))
                {
                    continue; // a client already stuck to an endpoint
                }
                let target = expr.last().unwrap().pointer("/goto/target").unwrap();
                assert!(target.as_str().unwrap().starts_with("e-"), "{r}");
                match expr[0]
                    .pointer("/match/left/numgen/mod")
                    .and_then(Value::as_u64)
                {
                    Some(m) => {
                        chances.push((reach_num, reach_den * m));
                        reach_num *= m - 1;
                        reach_den *= m;
                    }
                    None => chances.push((reach_num, reach_den)),
                }
            }
            assert_eq!(chances.len(), n);
            for (num, den) in chances {
                assert_eq!(
                    num * n as u64,
                    den,
                    "n = {n}: a backend's chance is {num}/{den}"
                );
            }
        }
    }

    /// PXY-1 for services without affinity: the group's rule draws
    /// `numgen random mod n`, and the map has each of the `n` indices once
    /// under the address, each backend once.
    #[test]
    fn every_backend_has_one_index_of_n() {
        for n in [1usize, 2, 5, 40, 1000] {
            let backends: Vec<String> = (0..n)
                .map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 2))
                .collect();
            let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
            let (k, service) = (key("10.96.0.1", 80), vs(&refs));
            let g = Group::of(&k, &service);
            assert_eq!(g.n as usize, n);
            let (mut indices, mut owners) = (Vec::new(), Vec::new());
            for e in picks(&k, &service) {
                let Elem::Pick {
                    key: under,
                    index,
                    to,
                } = e
                else {
                    panic!("{e:?}");
                };
                assert_eq!(under, k);
                indices.push(index as usize);
                owners.push(to);
            }
            assert_eq!(indices, (0..n).collect::<Vec<_>>());
            assert_eq!(owners, service.backends.iter().copied().collect::<Vec<_>>());
            let mut cmds = Vec::new();
            pick_rules(&BTreeSet::new(), &[g].into(), true, &mut cmds);
            assert!(cmds.iter().any(|c| matches!(c,
                Cmd::AddRule(_, s) if s.iter().any(|s| matches!(s, Stmt::DnatPick { n: m, .. } if *m as usize == n)))));
        }
    }

    /// An endpoint change of a service without affinity is element-only:
    /// no rule, chain or set is added or removed, so the kernel does not
    /// re-check the table's chain graph; with the same number of backends
    /// only the elements that differ move, with another number the address
    /// moves to that group (created, or deleted when left empty, with its
    /// chain).
    #[test]
    fn an_endpoint_change_only_moves_map_elements() {
        let (k, other) = (key("10.96.0.1", 80), key("10.96.0.2", 80));
        let two = vs(&["10.244.0.2:8080", "10.244.0.3:8080"]);
        let three = vs(&["10.244.0.2:8080", "10.244.0.3:8080", "10.244.0.4:8080"]);
        let replaced = vs(&["10.244.0.2:8080", "10.244.0.9:8080"]);
        // `other` and `third` keep both groups in use.
        let third = key("10.96.0.3", 80);
        let table = |of_k: &VirtualService| -> ProxyTable {
            [
                (k, of_k.clone()),
                (other, three.clone()),
                (third, two.clone()),
            ]
            .into()
        };
        let (base, grown, swapped) = (table(&two), table(&three), table(&replaced));
        for (a, b) in [(&base, &grown), (&grown, &base), (&base, &swapped)] {
            let tx = partial(a, b, &[]).unwrap();
            for c in &tx.0 {
                assert!(
                    matches!(c, Cmd::AddElems(..) | Cmd::DeleteElems(..)),
                    "{c:?}"
                );
            }
        }
        // Same number: one element of the map replaced (and the new
        // address's hairpin pair added), nothing else.
        let tx = partial(&base, &swapped, &[]).unwrap();
        let map = Group::of(&k, &two).map();
        let on_map: Vec<&Cmd> = tx
            .0
            .iter()
            .filter(|c| matches!(c, Cmd::AddElems(m, e) | Cmd::DeleteElems(m, e) if *m == map && e.len() == 1))
            .collect();
        assert_eq!((on_map.len(), tx.0.len()), (2, 3), "{tx:?}");
        // A group left empty: its map goes after its last element, and the
        // pick chain's rules are rewritten without it.
        let alone: ProxyTable = [(k, two.clone())].into();
        let tx = partial(&alone, &[(k, three.clone())].into(), &[]).unwrap();
        let g2 = Group::of(&k, &two).map();
        assert_eq!(tx.0.last(), Some(&Cmd::DeleteMap(g2)), "{tx:?}");
        assert!(
            tx.0.contains(&Cmd::FlushChain(pick_chain(false, Protocol::Tcp))),
            "{tx:?}"
        );
    }

    #[test]
    fn one_endpoint_change_rewrites_one_service() {
        let mut a = ProxyTable::new();
        for i in 1..=50u8 {
            a.insert(
                key(&format!("10.96.0.{i}"), 80),
                vs(&["10.244.0.2:8080", "10.244.0.3:8080"]),
            );
        }
        let mut b = a.clone();
        b.insert(key("10.96.0.7", 80), vs(&["10.244.0.2:8080"]));
        let tx = partial(&a, &b, &[]).unwrap().to_string();
        assert!(tx.contains(r#""10.96.0.7""#), "{tx}");
        assert!(
            !tx.contains(r#"{"delete":{"map""#),
            "the 2-backend group stays: {tx}"
        );
        for other in [r#""10.96.0.6""#, r#""10.96.0.8""#] {
            assert!(!tx.contains(other), "{other} rewritten");
        }
        assert!(partial(&b, &b, &[]).is_none());
    }
}
