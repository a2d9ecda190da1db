//! A transaction ([`Tx`]) as one nf_tables netlink batch, sent on a
//! `NETLINK_NETFILTER` socket: the kernel applies every message between
//! BATCH_BEGIN and BATCH_END or none of them, exactly as for `nft -f`, but
//! without nft parsing JSON, evaluating it and first reading the whole table
//! into its cache (which is most of the time a sync took through `nft`).
//!
//! Each statement is lowered to the expressions `nft` itself generates for
//! it (as `nft --debug=netlink` shows them), so `nft list` prints the table
//! the same whichever way it was written; a rig test holds the two writers
//! to that.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};
use signpost_model::cluster::{Protocol, VirtualKey};

use super::TABLE;
use super::ruleset::{Cmd, Elem, Hook, SetKind, Stmt, Tx};

// Message types and attributes of <linux/netfilter/nf_tables.h>.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NEWTABLE: u16 = 0;
const DELTABLE: u16 = 2;
const NEWCHAIN: u16 = 3;
const DELCHAIN: u16 = 5;
const NEWRULE: u16 = 6;
const DELRULE: u16 = 8;
const NEWSET: u16 = 9;
const DELSET: u16 = 11;
const NEWSETELEM: u16 = 12;
const DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_APPEND: u16 = 0x800;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

// Register numbers as nft uses them: 0 the verdict, 1 and 2 the first
// 128-bit registers, 9..13 32-bit ones.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;

const NFT_GOTO: i32 = -4;
const NFT_JUMP: i32 = -3;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

// nft's datatype numbers (what `nft list` prints a set's type from).
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_IPV6_ADDR: u32 = 8;
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_INTEGER: u32 = 4;
const TYPE_BITS: u32 = 6;

const SET_INTERVAL: u32 = 0x4;
const SET_MAP: u32 = 0x8;
const SET_TIMEOUT: u32 = 0x10;
const SET_EVAL: u32 = 0x20;
const ELEM_INTERVAL_END: u32 = 0x1;

/// Bytes of set elements per message: an attribute's length is 16 bits.
const ELEMENTS_PER_MESSAGE_BYTES: usize = 48 * 1024;

/// How long to wait for the kernel's answer once the batch is sent.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// A netlink message being written: attributes append to `buf`.
struct Msg<'a> {
    buf: &'a mut Vec<u8>,
}

impl Msg<'_> {
    fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.buf
            .extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn str(&mut self, kind: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(kind, &v);
    }

    fn be32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }

    fn nest(&mut self, kind: u16, inner: impl FnOnce(&mut Msg<'_>)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        inner(&mut Msg { buf: self.buf });
        let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// `NFTA_DATA_VALUE` inside a nest of `kind`.
    fn value(&mut self, kind: u16, bytes: &[u8]) {
        self.nest(kind, |m| m.attr(1, bytes));
    }

    /// One expression of a rule: `NFTA_LIST_ELEM { NAME, DATA { .. } }`.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Msg<'_>)) {
        self.nest(1, |m| {
            m.str(1, name);
            m.nest(2, data);
        });
    }
}

/// A batch under construction.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// Sequence number and description of each command message.
    sent: Vec<(u32, String)>,
    /// Where the last command message starts.
    last: Option<usize>,
}

impl Batch {
    fn new(seq: u32) -> Self {
        let mut b = Batch {
            buf: Vec::with_capacity(1 << 16),
            seq,
            sent: Vec::new(),
            last: None,
        };
        b.control(NFNL_MSG_BATCH_BEGIN);
        b
    }

    fn header(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        at
    }

    fn finish(&mut self, at: usize) {
        let len = u32::try_from(self.buf.len() - at).unwrap_or(u32::MAX);
        self.buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
        self.seq += 1;
    }

    fn control(&mut self, kind: u16) {
        let at = self.header(kind, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.finish(at);
    }

    fn command(
        &mut self,
        msg: u16,
        flags: u16,
        what: impl FnOnce() -> String,
        attrs: impl FnOnce(&mut Msg<'_>),
    ) {
        let at = self.header(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | flags,
            NFPROTO_INET,
            0,
        );
        attrs(&mut Msg { buf: &mut self.buf });
        self.sent.push((self.seq, what()));
        self.last = Some(at);
        self.finish(at);
    }

    /// Ends the batch; the last command asks for an acknowledgement (errors
    /// are reported for any message without asking).
    fn end(mut self) -> (Vec<u8>, Vec<(u32, String)>) {
        if let Some(at) = self.last {
            let flags = u16::from_ne_bytes([self.buf[at + 6], self.buf[at + 7]]) | NLM_F_ACK;
            self.buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        self.control(NFNL_MSG_BATCH_END);
        (self.buf, self.sent)
    }
}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// A tuple key as registers hold it: each field padded to 4 bytes.
fn tuple_key(k: &VirtualKey) -> Vec<u8> {
    let mut v = addr_bytes(&k.ip);
    v.extend_from_slice(&[proto_number(k.protocol), 0, 0, 0]);
    v.extend_from_slice(&k.port.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v
}

fn meta_load(m: &mut Msg<'_>, key: u32, reg: u32) {
    m.expr("meta", |d| {
        d.be32(1, reg);
        d.be32(2, key);
    });
}

fn cmp_eq(m: &mut Msg<'_>, reg: u32, data: &[u8]) {
    cmp(m, reg, 0, data);
}

/// `op`: 0 equal, 1 not equal.
fn cmp(m: &mut Msg<'_>, reg: u32, op: u32, data: &[u8]) {
    m.expr("cmp", |d| {
        d.be32(1, reg);
        d.be32(2, op);
        d.value(3, data);
    });
}

fn payload_load(m: &mut Msg<'_>, base: u32, offset: u32, len: u32, reg: u32) {
    m.expr("payload", |d| {
        d.be32(1, reg);
        d.be32(2, base);
        d.be32(3, offset);
        d.be32(4, len);
    });
}

const META_MARK: u32 = 3;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const NETWORK: u32 = 1;
const TRANSPORT: u32 = 2;

/// The masquerade mark as a register holds it.
const MARK: u32 = super::MASQ_MARK as u32;

/// The conntrack entry's status, and its bit for a destination NAT.
const CT_STATUS: u32 = 2;
const IPS_DST_NAT: u32 = 0x20;

/// Loads the packet mark into register 1 as `(mark & mask) ^ xor`.
fn mark_bitwise(m: &mut Msg<'_>, mask: u32, xor: u32) {
    meta_load(m, META_MARK, REG_1);
    bitwise(m, mask, xor);
}

/// Register 1 becomes `(reg 1 & mask) ^ xor`.
fn bitwise(m: &mut Msg<'_>, mask: u32, xor: u32) {
    m.expr("bitwise", |d| {
        d.be32(1, REG_1);
        d.be32(2, REG_1);
        d.be32(3, 4);
        d.value(4, &mask.to_ne_bytes());
        d.value(5, &xor.to_ne_bytes());
    });
}

/// Loads an address of the network header into register 1.
fn addr_load(m: &mut Msg<'_>, v6: bool, source: bool) {
    let (offset, len) = match (v6, source) {
        (false, true) => (12, 4),
        (false, false) => (16, 4),
        (true, true) => (8, 16),
        (true, false) => (24, 16),
    };
    payload_load(m, NETWORK, offset, len, REG_1);
}

fn lookup(m: &mut Msg<'_>, set: &str, dreg: Option<u32>, invert: bool) {
    m.expr("lookup", |d| {
        d.str(1, set);
        d.be32(2, REG_1);
        if let Some(r) = dreg {
            d.be32(3, r);
        }
        if invert {
            d.be32(5, 1);
        }
    });
}

fn verdict(m: &mut Msg<'_>, code: i32, chain: &str) {
    m.nest(2, |v| {
        v.attr(1, &code.to_be_bytes());
        v.str(2, chain);
    });
}

/// The rule's statements as expressions. `nfproto` tracks the family the
/// rule has already matched, so the dependency nft adds before a network
/// header load in an `inet` table is added once, as nft does.
fn lower(m: &mut Msg<'_>, stmts: &[Stmt]) {
    let mut nfproto: Option<bool> = None;
    let mut family = |m: &mut Msg<'_>, v6: bool| {
        if nfproto != Some(v6) {
            meta_load(m, META_NFPROTO, REG_1);
            cmp_eq(m, REG_1, &[if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }]);
            nfproto = Some(v6);
        }
    };
    let tuple_load = |m: &mut Msg<'_>, v6: bool| {
        addr_load(m, v6, false);
        let (proto_reg, port_reg) = if v6 { (REG_2, 13) } else { (9, 10) };
        meta_load(m, META_L4PROTO, proto_reg);
        payload_load(m, TRANSPORT, 2, 2, port_reg);
    };
    for s in stmts {
        match s {
            Stmt::Nfproto { v6 } => family(m, *v6),
            Stmt::DaddrIn { v6, set } => {
                family(m, *v6);
                addr_load(m, *v6, false);
                lookup(m, set, None, false);
            }
            Stmt::SaddrIn { v6, set } => {
                family(m, *v6);
                addr_load(m, *v6, true);
                lookup(m, set, None, false);
            }
            Stmt::SaddrNotIn { v6, set } => {
                family(m, *v6);
                addr_load(m, *v6, true);
                lookup(m, set, None, true);
            }
            Stmt::SaddrIs(ip) => {
                family(m, ip.is_ipv6());
                addr_load(m, ip.is_ipv6(), true);
                cmp_eq(m, REG_1, &addr_bytes(ip));
            }
            Stmt::TupleIn { v6, set } => {
                family(m, *v6);
                tuple_load(m, *v6);
                lookup(m, set, None, false);
            }
            Stmt::TupleVmap { v6, map } => {
                family(m, *v6);
                tuple_load(m, *v6);
                lookup(m, map, Some(REG_VERDICT), false);
            }
            Stmt::L4proto(p) => {
                meta_load(m, META_L4PROTO, REG_1);
                cmp_eq(m, REG_1, &[proto_number(*p)]);
            }
            Stmt::MarkedForMasquerade => {
                // mark & MASQ == MASQ
                mark_bitwise(m, MARK, 0);
                cmp_eq(m, REG_1, &MARK.to_ne_bytes());
            }
            Stmt::MarkForMasquerade => {
                // mark | MASQ, as nft writes an OR: (mark & !MASQ) ^ MASQ
                mark_bitwise(m, !MARK, MARK);
                m.expr("meta", |d| {
                    d.be32(2, META_MARK);
                    d.be32(3, REG_1);
                });
            }
            Stmt::NumgenZero(n) => {
                m.expr("numgen", |d| {
                    d.be32(1, REG_1);
                    d.be32(2, *n);
                    d.be32(3, 1);
                    d.be32(4, 0);
                });
                cmp_eq(m, REG_1, &0u32.to_ne_bytes());
            }
            Stmt::UpdateSaddr { v6, set } => {
                family(m, *v6);
                addr_load(m, *v6, true);
                m.expr("dynset", |d| {
                    d.str(1, set);
                    d.be32(3, 1);
                    d.be32(4, REG_1);
                });
            }
            Stmt::Masquerade => m.nest(1, |e| e.str(1, "masq")),
            Stmt::RejectTcpReset => m.expr("reject", |d| d.be32(1, 1)),
            Stmt::RejectPortUnreachable => m.expr("reject", |d| {
                d.be32(1, 2);
                d.attr(2, &[1]);
            }),
            Stmt::Dnat(to) => {
                m.expr("immediate", |d| {
                    d.be32(1, REG_1);
                    d.value(2, &addr_bytes(&to.ip()));
                });
                m.expr("immediate", |d| {
                    d.be32(1, REG_2);
                    d.value(2, &to.port().to_be_bytes());
                });
                m.expr("nat", |d| {
                    d.be32(1, 1);
                    d.be32(
                        2,
                        u32::from(if to.is_ipv6() {
                            NFPROTO_IPV6
                        } else {
                            NFPROTO_IPV4
                        }),
                    );
                    d.be32(3, REG_1);
                    d.be32(5, REG_2);
                    d.be32(7, 2);
                });
            }
            Stmt::DnatPick {
                v6,
                protocol,
                n,
                map,
            } => {
                family(m, *v6);
                meta_load(m, META_L4PROTO, REG_1);
                cmp_eq(m, REG_1, &[proto_number(*protocol)]);
                // The key `daddr . dport . index` in consecutive registers
                // from register 1: the address fills 4 (or 16) bytes, the
                // port and the index a 32-bit register each after it.
                addr_load(m, *v6, false);
                let (port_reg, index_reg) = if *v6 { (REG_2, 13) } else { (9, 10) };
                payload_load(m, TRANSPORT, 2, 2, port_reg);
                m.expr("numgen", |d| {
                    d.be32(1, index_reg);
                    d.be32(2, *n);
                    d.be32(3, 1);
                    d.be32(4, 0);
                });
                lookup(m, map, Some(REG_1), false);
                // The backend's address and port land where the key's did.
                m.expr("nat", |d| {
                    d.be32(1, 1);
                    d.be32(2, u32::from(if *v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }));
                    d.be32(3, REG_1);
                    d.be32(5, port_reg);
                });
            }
            Stmt::CtDnat => {
                m.expr("ct", |d| {
                    d.be32(2, CT_STATUS);
                    d.be32(1, REG_1);
                });
                bitwise(m, IPS_DST_NAT, 0);
                cmp(m, REG_1, 1, &0u32.to_ne_bytes());
            }
            Stmt::PairIn { v6, set } => {
                family(m, *v6);
                addr_load(m, *v6, true);
                let (offset, len) = if *v6 { (24, 16) } else { (16, 4) };
                payload_load(m, NETWORK, offset, len, if *v6 { REG_2 } else { 9 });
                lookup(m, set, None, false);
            }
            Stmt::Jump(c) | Stmt::Goto(c) => {
                let code = if matches!(s, Stmt::Jump(_)) {
                    NFT_JUMP
                } else {
                    NFT_GOTO
                };
                m.expr("immediate", |d| {
                    d.be32(1, REG_VERDICT);
                    d.nest(2, |v| verdict(v, code, c));
                });
            }
        }
    }
}

fn hook_number(h: &Hook) -> u32 {
    match h.hook {
        "prerouting" => 0,
        "input" => 1,
        "forward" => 2,
        "output" => 3,
        _ => 4,
    }
}

fn addr_type(v6: bool) -> u32 {
    if v6 { TYPE_IPV6_ADDR } else { TYPE_IPV4_ADDR }
}

/// nft's description of a set's `typeof` (`NFTA_SET_USERDATA`), which is
/// what `nft list` prints its type from: type-length-value items of one
/// byte each for type and length, numbers in host order.
struct Udata(Vec<u8>);

impl Udata {
    fn item(&mut self, kind: u8, value: &[u8]) {
        self.0.push(kind);
        self.0.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
        self.0.extend_from_slice(value);
    }

    fn u32(&mut self, kind: u8, v: u32) {
        self.item(kind, &v.to_ne_bytes());
    }

    fn nest(&mut self, kind: u8, inner: impl FnOnce(&mut Udata)) {
        let mut u = Udata(Vec::new());
        inner(&mut u);
        self.item(kind, &u.0);
    }
}

// nft's numbers for the items of a `typeof` description.
const UDATA_KEY_BYTEORDER: u8 = 0;
const UDATA_DATA_BYTEORDER: u8 = 1;
const UDATA_KEY_TYPEOF: u8 = 3;
const UDATA_DATA_TYPEOF: u8 = 4;
const UDATA_DATA_INTERVAL: u8 = 6;
const EXPR_PAYLOAD: u32 = 7;
const EXPR_CONCAT: u32 = 13;
const EXPR_NUMGEN: u32 = 23;

/// nft's numbers for header fields: (protocol, field).
fn daddr_field(v6: bool) -> (u32, u32) {
    if v6 { (13, 9) } else { (12, 12) }
}

fn dport_field(p: Protocol) -> (u32, u32) {
    match p {
        Protocol::Tcp => (8, 2),
        Protocol::Udp => (6, 2),
        Protocol::Sctp => (10, 2),
    }
}

/// `typeof ip[6] daddr . P dport . numgen random mod N : ip[6] daddr . P dport`.
fn backends_udata(v6: bool, protocol: Protocol, backends: u32) -> Vec<u8> {
    let payload = |u: &mut Udata, i: u8, (proto, field): (u32, u32)| {
        u.nest(i, |e| {
            e.u32(0, EXPR_PAYLOAD);
            e.nest(1, |f| {
                f.u32(0, proto);
                f.u32(1, field);
            });
        });
    };
    let mut u = Udata(Vec::new());
    u.u32(UDATA_KEY_BYTEORDER, 0);
    u.u32(UDATA_DATA_BYTEORDER, 0);
    u.nest(UDATA_KEY_TYPEOF, |k| {
        k.u32(0, EXPR_CONCAT);
        k.nest(1, |parts| {
            payload(parts, 0, daddr_field(v6));
            payload(parts, 1, dport_field(protocol));
            parts.nest(2, |e| {
                e.u32(0, EXPR_NUMGEN);
                e.nest(1, |n| {
                    n.u32(0, 1);
                    n.u32(1, backends);
                    n.u32(2, 0);
                });
            });
        });
    });
    u.nest(UDATA_DATA_TYPEOF, |d| {
        d.u32(0, EXPR_CONCAT);
        d.nest(1, |parts| {
            payload(parts, 0, daddr_field(v6));
            payload(parts, 1, dport_field(protocol));
        });
    });
    u.u32(UDATA_DATA_INTERVAL, 0);
    u.0
}

/// (flags, key type, key length, data type and length) of a set.
fn set_shape(kind: SetKind) -> (u32, u32, u32, Option<(u32, u32)>) {
    let addr_len = |v6: bool| if v6 { 16 } else { 4 };
    let tuple_type =
        |v6| (((addr_type(v6) << TYPE_BITS) | TYPE_INET_PROTO) << TYPE_BITS) | TYPE_INET_SERVICE;
    match kind {
        SetKind::Addrs { v6 } => (0, addr_type(v6), addr_len(v6), None),
        SetKind::Intervals { v6 } => (SET_INTERVAL, addr_type(v6), addr_len(v6), None),
        SetKind::Tuples { v6 } => (0, tuple_type(v6), addr_len(v6) + 8, None),
        SetKind::Vmap { v6 } => (
            SET_MAP,
            tuple_type(v6),
            addr_len(v6) + 8,
            Some((NFT_DATA_VERDICT, 0)),
        ),
        SetKind::Affinity { v6, .. } => (SET_TIMEOUT | SET_EVAL, addr_type(v6), addr_len(v6), None),
        SetKind::Backends { v6, .. } => (
            SET_MAP,
            (((addr_type(v6) << TYPE_BITS) | TYPE_INET_SERVICE) << TYPE_BITS) | TYPE_INTEGER,
            addr_len(v6) + 8,
            Some((
                (addr_type(v6) << TYPE_BITS) | TYPE_INET_SERVICE,
                addr_len(v6) + 4,
            )),
        ),
        SetKind::Pairs { v6 } => (
            0,
            (addr_type(v6) << TYPE_BITS) | addr_type(v6),
            2 * addr_len(v6),
            None,
        ),
    }
}

/// Interval elements of ranges as nft writes them: a range is its first
/// address and, flagged as an end, the address after its last; a leading
/// end at 0 closes the space before the first range; overlapping and
/// touching ranges are merged first.
fn intervals(nets: &[ipnet::IpNet]) -> Vec<(Vec<u8>, u32)> {
    let mut ranges: Vec<(u128, u128, bool)> = nets
        .iter()
        .map(|n| match n {
            ipnet::IpNet::V4(n) => (
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
                false,
            ),
            ipnet::IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast()), true),
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128, bool)> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if last.1.checked_add(1).is_none_or(|next| r.0 <= next) => {
                last.1 = last.1.max(r.1);
            }
            _ => merged.push(r),
        }
    }
    let bytes = |v: u128, v6: bool| -> Vec<u8> {
        if v6 {
            v.to_be_bytes().to_vec()
        } else {
            u32::try_from(v).unwrap_or(u32::MAX).to_be_bytes().to_vec()
        }
    };
    let mut out = Vec::new();
    if let Some((start, _, v6)) = merged.first()
        && *start != 0
    {
        out.push((bytes(0, *v6), ELEM_INTERVAL_END));
    }
    for (start, end, v6) in merged {
        out.push((bytes(start, v6), 0));
        let max = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        if end < max {
            out.push((bytes(end + 1, v6), ELEM_INTERVAL_END));
        }
    }
    out
}

/// What a map element maps its key to.
enum Data<'a> {
    None,
    Goto(&'a str),
    Value(Vec<u8>),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::None => 0,
            Data::Goto(c) => c.len(),
            Data::Value(v) => v.len(),
        }
    }
}

/// An element as sent: key, flags, data.
type Item<'a> = (Vec<u8>, u32, Data<'a>);

/// Element messages for `set`, split so no attribute outgrows 16 bits.
/// Deletions name keys only.
fn elements(b: &mut Batch, msg: u16, set: &str, elems: &[Elem]) {
    let adding = msg == NEWSETELEM;
    let mut items: Vec<Item<'_>> = Vec::new();
    let prefixes: Vec<ipnet::IpNet> = elems
        .iter()
        .filter_map(|e| match e {
            Elem::Prefix(n) => Some(*n),
            _ => None,
        })
        .collect();
    items.extend(
        intervals(&prefixes)
            .into_iter()
            .map(|(k, f)| (k, f, Data::None)),
    );
    for e in elems {
        match e {
            Elem::Addr(ip) => items.push((addr_bytes(ip), 0, Data::None)),
            Elem::Tuple(k) => items.push((tuple_key(k), 0, Data::None)),
            Elem::TupleGoto(k, chain) if adding => {
                items.push((tuple_key(k), 0, Data::Goto(chain.as_str())));
            }
            Elem::TupleGoto(k, _) => items.push((tuple_key(k), 0, Data::None)),
            // `address . port . index`, the index in host order as numgen
            // leaves it.
            Elem::Pick { key, index, to } => {
                let data = if adding {
                    let mut v = addr_bytes(&to.ip());
                    v.extend_from_slice(&to.port().to_be_bytes());
                    v.extend_from_slice(&[0, 0]);
                    Data::Value(v)
                } else {
                    Data::None
                };
                let mut k = addr_bytes(&key.ip);
                k.extend_from_slice(&key.port.to_be_bytes());
                k.extend_from_slice(&[0, 0]);
                k.extend_from_slice(&index.to_ne_bytes());
                items.push((k, 0, data));
            }
            Elem::Pair(ip) => {
                let mut k = addr_bytes(ip);
                k.extend_from_slice(&addr_bytes(ip));
                items.push((k, 0, Data::None));
            }
            Elem::Prefix(_) => {}
        }
    }
    let mut rest = &items[..];
    while !rest.is_empty() {
        let mut size = 0;
        let mut n = 0;
        while n < rest.len() && (n == 0 || size < ELEMENTS_PER_MESSAGE_BYTES) {
            size += rest[n].0.len() + rest[n].2.len() + 48;
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let flags = if msg == NEWSETELEM { NLM_F_CREATE } else { 0 };
        let verb = if msg == NEWSETELEM { "add" } else { "delete" };
        b.command(
            msg,
            flags,
            || format!("{verb} {} element(s) of set {set}", chunk.len()),
            |m| {
                m.str(1, TABLE);
                m.str(2, set);
                m.nest(3, |list| {
                    for (key, flags, data) in chunk {
                        list.nest(1, |e| {
                            e.value(1, key);
                            match data {
                                Data::None => {}
                                Data::Goto(c) => e.nest(2, |d| verdict(d, NFT_GOTO, c)),
                                Data::Value(v) => e.value(2, v),
                            }
                            if *flags != 0 {
                                e.be32(3, *flags);
                            }
                        });
                    }
                });
            },
        );
    }
}

fn encode(b: &mut Batch, cmd: &Cmd, set_id: &mut u32) {
    match cmd {
        Cmd::AddTable => b.command(
            NEWTABLE,
            NLM_F_CREATE,
            || "add table".into(),
            |m| {
                m.str(1, TABLE);
            },
        ),
        Cmd::DeleteTable => b.command(
            DELTABLE,
            0,
            || "delete table".into(),
            |m| {
                m.str(1, TABLE);
            },
        ),
        Cmd::AddChain(name, hook) => b.command(
            NEWCHAIN,
            NLM_F_CREATE,
            || format!("add chain {name}"),
            |m| {
                m.str(1, TABLE);
                m.str(3, name);
                if let Some(h) = hook {
                    m.nest(4, |n| {
                        n.be32(1, hook_number(h));
                        n.attr(2, &h.prio.to_be_bytes());
                    });
                    m.be32(5, 1);
                    m.str(7, h.kind);
                }
            },
        ),
        Cmd::FlushChain(name) => b.command(
            DELRULE,
            0,
            || format!("flush chain {name}"),
            |m| {
                m.str(1, TABLE);
                m.str(2, name);
            },
        ),
        Cmd::DeleteChain(name) => b.command(
            DELCHAIN,
            0,
            || format!("delete chain {name}"),
            |m| {
                m.str(1, TABLE);
                m.str(3, name);
            },
        ),
        Cmd::AddRule(chain, stmts) => b.command(
            NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            || format!("add rule to chain {chain}"),
            |m| {
                m.str(1, TABLE);
                m.str(2, chain);
                m.nest(4, |e| lower(e, stmts));
            },
        ),
        Cmd::AddSet(name, kind) => {
            *set_id += 1;
            let id = *set_id;
            let (flags, key_type, key_len, data_type) = set_shape(*kind);
            b.command(
                NEWSET,
                NLM_F_CREATE,
                || format!("add set {name}"),
                |m| {
                    m.str(1, TABLE);
                    m.str(2, name);
                    m.be32(3, flags);
                    m.be32(4, key_type);
                    m.be32(5, key_len);
                    if let Some((t, len)) = data_type {
                        m.be32(6, t);
                        if len > 0 {
                            m.be32(7, len);
                        }
                    }
                    m.be32(10, id);
                    if let SetKind::Affinity { timeout, .. } = kind {
                        m.attr(11, &(timeout.saturating_mul(1000)).to_be_bytes());
                    }
                    if let SetKind::Backends { v6, protocol, n } = kind {
                        m.attr(13, &backends_udata(*v6, *protocol, *n));
                    }
                },
            );
        }
        Cmd::DeleteSet(name) | Cmd::DeleteMap(name) => b.command(
            DELSET,
            0,
            || format!("delete set {name}"),
            |m| {
                m.str(1, TABLE);
                m.str(2, name);
            },
        ),
        Cmd::AddElems(set, elems) => elements(b, NEWSETELEM, set, elems),
        Cmd::DeleteElems(set, elems) => elements(b, DELSETELEM, set, elems),
    }
}

/// The batch datagram of `tx` and, per command message, its sequence
/// number and what it does (to name a refused one).
pub fn batch(tx: &Tx, seq: u32) -> (Vec<u8>, Vec<(u32, String)>) {
    let mut b = Batch::new(seq);
    let mut set_id = 0;
    for cmd in &tx.0 {
        encode(&mut b, cmd, &mut set_id);
    }
    b.end()
}

/// Why a batch did not apply.
#[derive(Debug)]
pub enum Failure {
    /// The kernel refused a message (so none of the batch applied).
    Refused(String),
    /// The socket failed or the kernel did not answer.
    Io(String),
}

/// Open sockets, one per network namespace (by the inode of its handle),
/// each with the sequence number its next batch starts at. Closing an
/// nf_tables socket waits for the kernel's RCU grace period (5 to 15 ms
/// measured here, more than a small sync's whole commit), so each sync
/// reuses the socket of its namespace.
static SOCKETS: std::sync::Mutex<std::collections::BTreeMap<u64, (Socket, u32)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// The network namespace the calling thread is in.
fn namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

fn open_socket() -> Result<Socket, Failure> {
    let io = |what: &str, e: std::io::Error| Failure::Io(format!("netlink {what}: {e}"));
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| io("socket", e))?;
    let _ = nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::RcvBufForce,
        &(1usize << 20),
    );
    socket.bind_auto().map_err(|e| io("bind", e))?;
    socket
        .connect(&NlAddr::new(0, 0))
        .map_err(|e| io("connect", e))?;
    socket
        .set_non_blocking(true)
        .map_err(|e| io("non-blocking", e))?;
    Ok(socket)
}

/// Sends `tx` as one batch and waits for the kernel's verdict.
pub fn send(tx: &Tx) -> Result<(), Failure> {
    let ns = namespace();
    let cached = ns.and_then(|n| SOCKETS.lock().ok()?.remove(&n));
    let (socket, seq) = match cached {
        Some(s) => s,
        None => (open_socket()?, 1),
    };
    let (result, next) = exchange(&socket, tx, seq);
    // A socket that failed may hold unread answers: it is closed, not kept.
    if !matches!(result, Err(Failure::Io(_)))
        && let Some(n) = ns
        && let Ok(mut open) = SOCKETS.lock()
    {
        open.insert(n, (socket, next));
    }
    result
}

/// One batch over `socket`, its messages numbered from `seq`: the result,
/// and the number the next batch starts at.
fn exchange(socket: &Socket, tx: &Tx, seq: u32) -> (Result<(), Failure>, u32) {
    let (buf, sent) = batch(tx, seq);
    let next = seq
        .wrapping_add(u32::try_from(sent.len()).unwrap_or(u32::MAX))
        .wrapping_add(2);
    let Some(&(last, _)) = sent.last() else {
        return (Ok(()), seq);
    };
    (wait(socket, &buf, &sent, last), next)
}

fn wait(socket: &Socket, buf: &[u8], sent: &[(u32, String)], last: u32) -> Result<(), Failure> {
    let io = |what: &str, e: std::io::Error| Failure::Io(format!("netlink {what}: {e}"));
    // A full sync is one datagram of megabytes: the send buffer must hold
    // it (root may exceed net.core.wmem_max).
    let size = buf.len() + (1 << 16);
    if nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::SndBufForce, &size).is_err()
    {
        nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::SndBuf, &size)
            .map_err(|e| io("send buffer", e.into()))?;
    }
    socket.send(buf, 0).map_err(|e| io("send", e))?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut refused: Vec<String> = Vec::new();
    // From the batch's BEGIN message, numbered one before its first command.
    let first = sent.first().map_or(last, |(s, _)| *s).saturating_sub(1);
    loop {
        let data = match socket.recv_from_full() {
            Ok((data, _)) => data,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(Failure::Io(format!(
                        "netlink: no answer from the kernel within {REPLY_TIMEOUT:?}"
                    )));
                }
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            Err(e) => return Err(io("receive", e)),
        };
        let mut off = 0;
        while off + 16 <= data.len() {
            let len = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
            if len < 16 || off + len > data.len() {
                break;
            }
            let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
            let seq = u32::from_ne_bytes(data[off + 8..off + 12].try_into().unwrap_or([0; 4]));
            // NLMSG_ERROR: an errno (0 = acknowledged), then the request's
            // header. The socket is reused: answers to another batch's
            // messages (none is expected) are not this one's.
            let ours = (first..=last.saturating_add(1)).contains(&seq);
            if kind == 2 && len >= 20 && ours {
                let errno =
                    i32::from_ne_bytes(data[off + 16..off + 20].try_into().unwrap_or([0; 4]));
                if errno != 0 {
                    let what = sent
                        .iter()
                        .find(|(s, _)| *s == seq)
                        .map_or("a message", |(_, w)| w.as_str());
                    refused.push(format!(
                        "{what}: {}",
                        std::io::Error::from_raw_os_error(-errno)
                    ));
                }
                if seq == last {
                    return if refused.is_empty() {
                        Ok(())
                    } else {
                        Err(Failure::Refused(refused.join("; ")))
                    };
                }
            }
            off += len.next_multiple_of(4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_written_as_nft_writes_them() {
        let n = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        // Everything: one open start.
        assert_eq!(intervals(&[n("0.0.0.0/0")]), vec![(vec![0, 0, 0, 0], 0)]);
        // A range: a leading end at 0, its start, the end after it.
        assert_eq!(
            intervals(&[n("10.244.0.0/16")]),
            vec![
                (vec![0, 0, 0, 0], ELEM_INTERVAL_END),
                (vec![10, 244, 0, 0], 0),
                (vec![10, 245, 0, 0], ELEM_INTERVAL_END),
            ]
        );
        // Overlapping and touching ranges merge.
        assert_eq!(
            intervals(&[n("10.0.0.0/9"), n("10.128.0.0/9"), n("10.1.0.0/16")]),
            vec![
                (vec![0, 0, 0, 0], ELEM_INTERVAL_END),
                (vec![10, 0, 0, 0], 0),
                (vec![11, 0, 0, 0], ELEM_INTERVAL_END),
            ]
        );
        assert!(intervals(&[]).is_empty());
    }

    /// The bytes `nft add map ... { typeof ip daddr . tcp dport . numgen
    /// random mod 5 : ip daddr . tcp dport; }` sent (nftables 1.0.6, seen
    /// with strace): without them `nft list` could not print the map as a
    /// script it reads back.
    #[test]
    fn a_backends_map_is_described_as_nft_describes_it() {
        let nft = "000400000000010400000000035000040d00000001480014000407000000010c00040c\
                   00000001040c0000000114000407000000010c000408000000010402000000021a0004\
                   170000000112000401000000010405000000020400000000043400040d000000012c00\
                   14000407000000010c00040c00000001040c0000000114000407000000010c00040800\
                   0000010402000000060400000000";
        let ours: String = backends_udata(false, Protocol::Tcp, 5)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(ours, nft);
    }

    #[test]
    fn a_big_element_list_is_split_below_the_attribute_limit() {
        let keys: Vec<Elem> = (0..5000u32)
            .map(|i| Elem::Addr(IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i)))))
            .collect();
        let (buf, sent) = batch(&Tx(vec![Cmd::AddElems("s".into(), keys)]), 1);
        assert!(sent.len() > 1, "{} messages", sent.len());
        let mut off = 0;
        while off < buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            assert!(len < 65_000, "a message of {len} bytes");
            off += len.next_multiple_of(4);
        }
    }

    #[test]
    fn only_the_last_command_asks_for_an_acknowledgement() {
        let tx = Tx(vec![Cmd::AddTable, Cmd::DeleteTable, Cmd::AddTable]);
        let (buf, sent) = batch(&tx, 1);
        assert_eq!(
            sent.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        let mut flags = Vec::new();
        let mut off = 0;
        while off < buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            flags.push(u16::from_ne_bytes([buf[off + 6], buf[off + 7]]) & NLM_F_ACK != 0);
            off += len.next_multiple_of(4);
        }
        assert_eq!(flags, vec![false, false, false, true, false]);
    }
}
