//! Signpost's nftables vocabulary as data: the few commands and rule
//! statements [`super::build`] lays the table out with. One transaction is
//! a list of [`Cmd`]s, written to the kernel either as an nft script
//! ([`super::script`], for `nft -f`) or as one netlink
//! batch ([`super::wire`]) — the same commands, so the same table; as JSON
//! ([`Tx::json`]) for the tracer and people.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};
use signpost_model::cluster::{Protocol, VirtualKey};

use super::{MASQ_MARK, TABLE};

/// A rule statement (a match, an action or a verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    /// `meta nfproto ipv4|ipv6`.
    Nfproto {
        /// IPv6.
        v6: bool,
    },
    /// `ip[6] daddr @set`.
    DaddrIn {
        /// IPv6.
        v6: bool,
        /// The set.
        set: String,
    },
    /// `ip[6] saddr @set`.
    SaddrIn {
        /// IPv6.
        v6: bool,
        /// The set.
        set: String,
    },
    /// `ip[6] saddr != @set`.
    SaddrNotIn {
        /// IPv6.
        v6: bool,
        /// The set.
        set: String,
    },
    /// `ip[6] saddr ADDR`.
    SaddrIs(IpAddr),
    /// `ip[6] daddr . meta l4proto . th dport @set`.
    TupleIn {
        /// IPv6.
        v6: bool,
        /// The set.
        set: String,
    },
    /// `ip[6] daddr . meta l4proto . th dport vmap @map`.
    TupleVmap {
        /// IPv6.
        v6: bool,
        /// The verdict map.
        map: String,
    },
    /// `meta l4proto P`.
    L4proto(Protocol),
    /// `meta mark & MASQ_MARK == MASQ_MARK`.
    MarkedForMasquerade,
    /// `meta mark set meta mark | MASQ_MARK`.
    MarkForMasquerade,
    /// `numgen random mod N == 0`.
    NumgenZero(u32),
    /// `update @set { ip[6] saddr }`.
    UpdateSaddr {
        /// IPv6.
        v6: bool,
        /// The set.
        set: String,
    },
    /// `masquerade`.
    Masquerade,
    /// `reject with tcp reset`.
    RejectTcpReset,
    /// `reject with icmpx port-unreachable`.
    RejectPortUnreachable,
    /// `dnat ip[6] to ADDR:PORT`.
    Dnat(SocketAddr),
    /// `dnat ip[6] to ip[6] daddr . P dport . numgen random mod N map
    /// @map`: the backend under the packet's address and port and a random
    /// index below `n`.
    DnatPick {
        /// IPv6.
        v6: bool,
        /// The transport protocol.
        protocol: Protocol,
        /// The number of backends of every address in the map.
        n: u32,
        /// The backends map.
        map: String,
    },
    /// `ct status dnat`.
    CtDnat,
    /// `ip[6] saddr . ip[6] daddr @set`.
    PairIn {
        /// IPv6.
        v6: bool,
        /// The set.
        set: String,
    },
    /// `jump CHAIN`.
    Jump(String),
    /// `goto CHAIN`.
    Goto(String),
}

/// What a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    /// Addresses.
    Addrs {
        /// IPv6.
        v6: bool,
    },
    /// Address ranges.
    Intervals {
        /// IPv6.
        v6: bool,
    },
    /// `address . protocol . port` tuples.
    Tuples {
        /// IPv6.
        v6: bool,
    },
    /// A verdict map from tuples.
    Vmap {
        /// IPv6.
        v6: bool,
    },
    /// Source addresses that expire after `timeout` seconds.
    Affinity {
        /// IPv6.
        v6: bool,
        /// Seconds.
        timeout: u64,
    },
    /// A map from `address . port . index` to `address . port`: `typeof
    /// ip[6] daddr . P dport . numgen random mod N : ip[6] daddr . P
    /// dport`, the backends of every virtual address with `n` of them.
    Backends {
        /// IPv6.
        v6: bool,
        /// The ports' protocol (part of the map's declared type).
        protocol: Protocol,
        /// The number of backends of each address.
        n: u32,
    },
    /// `address . address` pairs.
    Pairs {
        /// IPv6.
        v6: bool,
    },
}

impl SetKind {
    /// Whether nft calls it a map.
    pub fn is_map(self) -> bool {
        matches!(self, SetKind::Vmap { .. } | SetKind::Backends { .. })
    }
}

/// A set element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elem {
    /// An address.
    Addr(IpAddr),
    /// A range of addresses.
    Prefix(ipnet::IpNet),
    /// A virtual address as a tuple.
    Tuple(VirtualKey),
    /// A tuple mapped to `goto CHAIN`.
    TupleGoto(VirtualKey, String),
    /// Backend number `index` of virtual address `key` in a backends map.
    Pick {
        /// The virtual address.
        key: VirtualKey,
        /// The backend's index.
        index: u32,
        /// The backend.
        to: SocketAddr,
    },
    /// `address . address`.
    Pair(IpAddr),
}

/// A base chain's hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// `nat` or `filter`.
    pub kind: &'static str,
    /// `prerouting`, `input`, `forward`, `output` or `postrouting`.
    pub hook: &'static str,
    /// Priority.
    pub prio: i32,
}

/// One command of a transaction, always in table `inet signpost`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// Create the table (kept if there).
    AddTable,
    /// Delete the table and all in it.
    DeleteTable,
    /// Create a chain (kept if there).
    AddChain(String, Option<Hook>),
    /// Remove every rule of a chain.
    FlushChain(String),
    /// Delete an empty, unreferenced chain.
    DeleteChain(String),
    /// Append a rule.
    AddRule(String, Vec<Stmt>),
    /// Create a set.
    AddSet(String, SetKind),
    /// Delete a set.
    DeleteSet(String),
    /// Delete a map.
    DeleteMap(String),
    /// Add elements.
    AddElems(String, Vec<Elem>),
    /// Delete elements.
    DeleteElems(String, Vec<Elem>),
}

/// A transaction: all of it applies, or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tx(pub Vec<Cmd>);

impl Tx {
    /// The transaction as nft's JSON.
    pub fn json(&self) -> Value {
        json!({ "nftables": self.0.iter().map(json).collect::<Vec<_>>() })
    }
}

impl std::fmt::Display for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.json())
    }
}

fn fam(v6: bool) -> &'static str {
    if v6 { "ip6" } else { "ip" }
}

fn addr_type(v6: bool) -> &'static str {
    if v6 { "ipv6_addr" } else { "ipv4_addr" }
}

fn payload(family: &str, field: &str) -> Value {
    json!({ "payload": { "protocol": family, "field": field } })
}

fn meta(key: &str) -> Value {
    json!({ "meta": { "key": key } })
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    json!({ "match": { "op": op, "left": left, "right": right } })
}

fn tuple(v6: bool) -> Value {
    json!({ "concat": [payload(fam(v6), "daddr"), meta("l4proto"), payload("th", "dport")] })
}

fn base(name: &str) -> Value {
    json!({ "family": "inet", "table": TABLE, "name": name })
}

/// One statement as nft's JSON.
pub fn stmt(s: &Stmt) -> Value {
    match s {
        Stmt::Nfproto { v6 } => matches(
            "==",
            meta("nfproto"),
            json!(if *v6 { "ipv6" } else { "ipv4" }),
        ),
        Stmt::DaddrIn { v6, set } => {
            matches("==", payload(fam(*v6), "daddr"), json!(format!("@{set}")))
        }
        Stmt::SaddrIn { v6, set } => {
            matches("==", payload(fam(*v6), "saddr"), json!(format!("@{set}")))
        }
        Stmt::SaddrNotIn { v6, set } => {
            matches("!=", payload(fam(*v6), "saddr"), json!(format!("@{set}")))
        }
        Stmt::SaddrIs(ip) => matches(
            "==",
            payload(fam(ip.is_ipv6()), "saddr"),
            json!(ip.to_string()),
        ),
        Stmt::TupleIn { v6, set } => matches("==", tuple(*v6), json!(format!("@{set}"))),
        Stmt::TupleVmap { v6, map } => {
            json!({ "vmap": { "key": tuple(*v6), "data": format!("@{map}") } })
        }
        Stmt::L4proto(p) => matches("==", meta("l4proto"), json!(p.as_lower())),
        Stmt::MarkedForMasquerade => matches(
            "==",
            json!({ "&": [meta("mark"), MASQ_MARK] }),
            json!(MASQ_MARK),
        ),
        Stmt::MarkForMasquerade => {
            json!({ "mangle": { "key": meta("mark"), "value": { "|": [meta("mark"), MASQ_MARK] } } })
        }
        Stmt::NumgenZero(n) => matches(
            "==",
            json!({ "numgen": { "mode": "random", "mod": n, "offset": 0 } }),
            json!(0),
        ),
        Stmt::UpdateSaddr { v6, set } => {
            json!({ "set": { "op": "update", "elem": payload(fam(*v6), "saddr"), "set": format!("@{set}") } })
        }
        Stmt::Masquerade => json!({ "masquerade": null }),
        Stmt::RejectTcpReset => json!({ "reject": { "type": "tcp reset" } }),
        Stmt::RejectPortUnreachable => {
            json!({ "reject": { "type": "icmpx", "expr": "port-unreachable" } })
        }
        Stmt::Dnat(to) => {
            json!({ "dnat": { "family": fam(to.is_ipv6()), "addr": to.ip().to_string(), "port": to.port() } })
        }
        Stmt::DnatPick {
            v6,
            protocol,
            n,
            map,
        } => {
            json!({ "dnat": { "family": fam(*v6), "addr": { "map": {
                "key": { "concat": [
                    payload(fam(*v6), "daddr"),
                    payload(protocol.as_lower(), "dport"),
                    { "numgen": { "mode": "random", "mod": n, "offset": 0 } },
                ] },
                "data": format!("@{map}"),
            } } } })
        }
        Stmt::CtDnat => matches("in", json!({ "ct": { "key": "status" } }), json!("dnat")),
        Stmt::PairIn { v6, set } => matches(
            "==",
            json!({ "concat": [payload(fam(*v6), "saddr"), payload(fam(*v6), "daddr")] }),
            json!(format!("@{set}")),
        ),
        Stmt::Jump(c) => json!({ "jump": { "target": c } }),
        Stmt::Goto(c) => json!({ "goto": { "target": c } }),
    }
}

/// A virtual address as a tuple element.
pub fn tuple_elem(key: &VirtualKey) -> Value {
    json!({ "concat": [key.ip.to_string(), key.protocol.as_lower(), key.port] })
}

/// One element; `data`: with what it maps to (an addition; a deletion
/// names the key only).
fn elem(e: &Elem, data: bool) -> Value {
    match e {
        Elem::Addr(ip) => json!(ip.to_string()),
        Elem::Prefix(net) => {
            json!({ "prefix": { "addr": net.network().to_string(), "len": net.prefix_len() } })
        }
        Elem::Tuple(k) => tuple_elem(k),
        Elem::TupleGoto(k, chain) if data => {
            json!([tuple_elem(k), { "goto": { "target": chain } }])
        }
        Elem::TupleGoto(k, _) => tuple_elem(k),
        Elem::Pick { key, index, .. } if !data => {
            json!({ "concat": [key.ip.to_string(), key.port, index] })
        }
        Elem::Pick { key, index, to } => json!([
            { "concat": [key.ip.to_string(), key.port, index] },
            { "concat": [to.ip().to_string(), to.port()] },
        ]),
        Elem::Pair(ip) => json!({ "concat": [ip.to_string(), ip.to_string()] }),
    }
}

fn elements(set: &str, elems: &[Elem], data: bool) -> Value {
    let list: Vec<Value> = elems.iter().map(|e| elem(e, data)).collect();
    json!({ "element": { "family": "inet", "table": TABLE, "name": set, "elem": list } })
}

fn set(name: &str, kind: SetKind) -> Value {
    let mut b = base(name);
    let tuple_type = |v6| json!([addr_type(v6), "inet_proto", "inet_service"]);
    let kind_name = match kind {
        SetKind::Addrs { v6 } => {
            b["type"] = json!(addr_type(v6));
            "set"
        }
        SetKind::Intervals { v6 } => {
            b["type"] = json!(addr_type(v6));
            b["flags"] = json!(["interval"]);
            "set"
        }
        SetKind::Tuples { v6 } => {
            b["type"] = tuple_type(v6);
            "set"
        }
        SetKind::Vmap { v6 } => {
            b["type"] = tuple_type(v6);
            b["map"] = json!("verdict");
            "map"
        }
        SetKind::Affinity { v6, timeout } => {
            b["type"] = json!(addr_type(v6));
            b["flags"] = json!(["timeout"]);
            b["timeout"] = json!(timeout);
            "set"
        }
        // As nft lists it (its JSON of this release cannot declare `typeof`).
        SetKind::Backends { v6, .. } => {
            b["type"] = json!([addr_type(v6), "inet_service", "integer"]);
            b["map"] = json!([addr_type(v6), "inet_service"]);
            "map"
        }
        SetKind::Pairs { v6 } => {
            b["type"] = json!([addr_type(v6), addr_type(v6)]);
            "set"
        }
    };
    json!({ kind_name: b })
}

/// One command as nft's JSON.
pub fn json(c: &Cmd) -> Value {
    let table = || json!({ "table": { "family": "inet", "name": TABLE } });
    let chain = |name: &str| json!({ "chain": base(name) });
    match c {
        Cmd::AddTable => json!({ "add": table() }),
        Cmd::DeleteTable => json!({ "delete": table() }),
        Cmd::AddChain(name, None) => json!({ "add": chain(name) }),
        Cmd::AddChain(name, Some(h)) => {
            let mut b = base(name);
            b["type"] = json!(h.kind);
            b["hook"] = json!(h.hook);
            b["prio"] = json!(h.prio);
            b["policy"] = json!("accept");
            json!({ "add": { "chain": b } })
        }
        Cmd::FlushChain(name) => json!({ "flush": chain(name) }),
        Cmd::DeleteChain(name) => json!({ "delete": chain(name) }),
        Cmd::AddRule(chain, stmts) => json!({ "add": { "rule": {
            "family": "inet", "table": TABLE, "chain": chain,
            "expr": stmts.iter().map(stmt).collect::<Vec<_>>(),
        } } }),
        Cmd::AddSet(name, kind) => json!({ "add": set(name, *kind) }),
        Cmd::DeleteSet(name) => json!({ "delete": { "set": base(name) } }),
        Cmd::DeleteMap(name) => json!({ "delete": { "map": base(name) } }),
        Cmd::AddElems(name, elems) => json!({ "add": elements(name, elems, true) }),
        Cmd::DeleteElems(name, elems) => json!({ "delete": elements(name, elems, false) }),
    }
}
