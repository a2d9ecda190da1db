//! A transaction ([`Tx`]) in nft's own language, for `nft -f -`: the
//! writer that goes through the `nft` program. (Its JSON input of the
//! release Debian ships cannot declare a map by `typeof`, and crashes on a
//! `dnat ... map` rule, both of which the backend maps need.)

use std::fmt::Write;
use std::net::SocketAddr;

use signpost_model::cluster::VirtualKey;

use super::ruleset::{Cmd, Elem, SetKind, Stmt, Tx};
use super::{MASQ_MARK, TABLE};

fn fam(v6: bool) -> &'static str {
    if v6 { "ip6" } else { "ip" }
}

fn addr_type(v6: bool) -> &'static str {
    if v6 { "ipv6_addr" } else { "ipv4_addr" }
}

fn tuple(v6: bool) -> String {
    format!("{} daddr . meta l4proto . th dport", fam(v6))
}

fn endpoint(to: &SocketAddr) -> String {
    match to {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// One statement.
pub fn stmt(s: &Stmt) -> String {
    match s {
        Stmt::Nfproto { v6 } => format!("meta nfproto {}", if *v6 { "ipv6" } else { "ipv4" }),
        Stmt::DaddrIn { v6, set } => format!("{} daddr @{set}", fam(*v6)),
        Stmt::SaddrIn { v6, set } => format!("{} saddr @{set}", fam(*v6)),
        Stmt::SaddrNotIn { v6, set } => format!("{} saddr != @{set}", fam(*v6)),
        Stmt::SaddrIs(ip) => format!("{} saddr {ip}", fam(ip.is_ipv6())),
        Stmt::TupleIn { v6, set } => format!("{} @{set}", tuple(*v6)),
        Stmt::TupleVmap { v6, map } => format!("{} vmap @{map}", tuple(*v6)),
        Stmt::L4proto(p) => format!("meta l4proto {}", p.as_lower()),
        Stmt::MarkedForMasquerade => format!("meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x}"),
        Stmt::MarkForMasquerade => format!("meta mark set meta mark | {MASQ_MARK:#x}"),
        Stmt::NumgenZero(n) => format!("numgen random mod {n} == 0"),
        Stmt::UpdateSaddr { v6, set } => format!("update @{set} {{ {} saddr }}", fam(*v6)),
        Stmt::Masquerade => "masquerade".into(),
        Stmt::RejectTcpReset => "reject with tcp reset".into(),
        Stmt::RejectPortUnreachable => "reject with icmpx port-unreachable".into(),
        Stmt::Dnat(to) => format!("dnat {} to {}", fam(to.is_ipv6()), endpoint(to)),
        Stmt::DnatPick {
            v6,
            protocol,
            n,
            map,
        } => format!(
            "dnat {0} to {0} daddr . {1} dport . numgen random mod {n} map @{map}",
            fam(*v6),
            protocol.as_lower()
        ),
        Stmt::CtDnat => "ct status dnat".into(),
        Stmt::PairIn { v6, set } => format!("{0} saddr . {0} daddr @{set}", fam(*v6)),
        Stmt::Jump(c) => format!("jump {c}"),
        Stmt::Goto(c) => format!("goto {c}"),
    }
}

fn key(k: &VirtualKey) -> String {
    format!("{} . {} . {}", k.ip, k.protocol.as_lower(), k.port)
}

/// One element; `data`: with what it maps to (an addition).
fn elem(e: &Elem, data: bool) -> String {
    match e {
        Elem::Addr(ip) => ip.to_string(),
        Elem::Prefix(net) => net.to_string(),
        Elem::Tuple(k) => key(k),
        Elem::TupleGoto(k, chain) if data => format!("{} : goto {chain}", key(k)),
        Elem::TupleGoto(k, _) => key(k),
        Elem::Pick { key, index, to } if data => format!(
            "{} . {} . {index} : {} . {}",
            key.ip,
            key.port,
            to.ip(),
            to.port()
        ),
        Elem::Pick { key, index, .. } => format!("{} . {} . {index}", key.ip, key.port),
        Elem::Pair(ip) => format!("{ip} . {ip}"),
    }
}

fn set_body(kind: SetKind) -> String {
    match kind {
        SetKind::Addrs { v6 } => format!("type {};", addr_type(v6)),
        SetKind::Intervals { v6 } => format!("type {}; flags interval;", addr_type(v6)),
        SetKind::Tuples { v6 } => format!("type {} . inet_proto . inet_service;", addr_type(v6)),
        SetKind::Vmap { v6 } => {
            format!(
                "type {} . inet_proto . inet_service : verdict;",
                addr_type(v6)
            )
        }
        SetKind::Affinity { v6, timeout } => {
            format!("type {}; flags timeout; timeout {timeout}s;", addr_type(v6))
        }
        SetKind::Backends { v6, protocol, n } => format!(
            "typeof {0} daddr . {1} dport . numgen random mod {n} : {0} daddr . {1} dport;",
            fam(v6),
            protocol.as_lower()
        ),
        SetKind::Pairs { v6 } => format!("type {0} . {0};", addr_type(v6)),
    }
}

fn elements(out: &mut String, verb: &str, set: &str, elems: &[Elem]) {
    if elems.is_empty() {
        return;
    }
    let data = verb == "add";
    let _ = write!(out, "{verb} element inet {TABLE} {set} {{ ");
    for (i, e) in elems.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&elem(e, data));
    }
    out.push_str(" }\n");
}

/// The transaction as an nft script: one command per line, applied by
/// `nft -f` as one transaction.
pub fn script(tx: &Tx) -> String {
    let mut out = String::new();
    for c in &tx.0 {
        match c {
            Cmd::AddTable => {
                let _ = writeln!(out, "add table inet {TABLE}");
            }
            Cmd::DeleteTable => {
                let _ = writeln!(out, "delete table inet {TABLE}");
            }
            Cmd::AddChain(name, None) => {
                let _ = writeln!(out, "add chain inet {TABLE} {name}");
            }
            Cmd::AddChain(name, Some(h)) => {
                let _ = writeln!(
                    out,
                    "add chain inet {TABLE} {name} {{ type {} hook {} priority {}; policy accept; }}",
                    h.kind, h.hook, h.prio
                );
            }
            Cmd::FlushChain(name) => {
                let _ = writeln!(out, "flush chain inet {TABLE} {name}");
            }
            Cmd::DeleteChain(name) => {
                let _ = writeln!(out, "delete chain inet {TABLE} {name}");
            }
            Cmd::AddRule(chain, stmts) => {
                let body: Vec<String> = stmts.iter().map(stmt).collect();
                let _ = writeln!(out, "add rule inet {TABLE} {chain} {}", body.join(" "));
            }
            Cmd::AddSet(name, kind) => {
                let what = if kind.is_map() { "map" } else { "set" };
                let _ = writeln!(
                    out,
                    "add {what} inet {TABLE} {name} {{ {} }}",
                    set_body(*kind)
                );
            }
            Cmd::DeleteSet(name) => {
                let _ = writeln!(out, "delete set inet {TABLE} {name}");
            }
            Cmd::DeleteMap(name) => {
                let _ = writeln!(out, "delete map inet {TABLE} {name}");
            }
            Cmd::AddElems(set, elems) => elements(&mut out, "add", set, elems),
            Cmd::DeleteElems(set, elems) => elements(&mut out, "delete", set, elems),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_read_as_nft_writes_them() {
        let to: SocketAddr = "[fd00::2]:8080".parse().unwrap();
        assert_eq!(stmt(&Stmt::Dnat(to)), "dnat ip6 to [fd00::2]:8080");
        assert_eq!(
            stmt(&Stmt::MarkForMasquerade),
            "meta mark set meta mark | 0x4000"
        );
        assert_eq!(
            stmt(&Stmt::PairIn {
                v6: false,
                set: "hairpin-v4".into()
            }),
            "ip saddr . ip daddr @hairpin-v4"
        );
        let pick = Elem::Pick {
            key: VirtualKey {
                ip: "10.96.0.1".parse().unwrap(),
                protocol: signpost_model::cluster::Protocol::Tcp,
                port: 80,
            },
            index: 3,
            to: "10.244.0.2:80".parse().unwrap(),
        };
        assert_eq!(elem(&pick, true), "10.96.0.1 . 80 . 3 : 10.244.0.2 . 80");
        assert_eq!(elem(&pick, false), "10.96.0.1 . 80 . 3");
    }
}
