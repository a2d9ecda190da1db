//! PXY-11: forgets stale UDP flows. Connection-tracking entries whose
//! original destination is a virtual address and whose reply comes from a
//! backend that address no longer uses are deleted over ctnetlink
//! (`NETLINK_NETFILTER`, subsystem `CTNETLINK`), in the calling thread's
//! network namespace.
//!
//! Deleting "every entry from A to B" takes a dump and one delete per
//! entry: for each stale flow, a dump the kernel filters (original
//! destination, reply source), then a delete by each entry's original tuple.
//! Nothing runs when there is nothing to forget.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol as CtProtocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};
use signpost_model::cluster::{Protocol, ProxyTable, VirtualKey};
use signpost_model::reconcile::{ProxyOp, stale_udp_flows};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// What went wrong talking to ctnetlink.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket could not be opened, bound or used.
    #[error("ctnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel answered a request with an error.
    #[error("ctnetlink {op}: errno {errno}")]
    Kernel {
        /// The request.
        op: &'static str,
        /// The positive errno.
        errno: i32,
    },
    /// The kernel sent something that does not parse.
    #[error("ctnetlink: undecodable message: {0}")]
    Decode(String),
}

/// Result with this module's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One connection-tracking entry, as much of it as PXY-11 needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// IP protocol number (17 for UDP).
    pub protocol: u8,
    /// Original direction: the client.
    pub orig_src: SocketAddr,
    /// Original direction: the address the client sent to.
    pub orig_dst: SocketAddr,
    /// Reply direction: who answers (the backend after DNAT or IPVS).
    pub reply_src: SocketAddr,
    /// The original tuple as the kernel sent it, used to delete the entry.
    orig: Vec<Tuple>,
    family: u8,
}

impl Entry {
    /// True when this entry carries `key`'s traffic to `backend`.
    pub fn carries(&self, key: &VirtualKey, backend: &SocketAddr) -> bool {
        self.protocol == ip_protocol(key.protocol)
            && self.orig_dst == SocketAddr::new(key.ip, key.port)
            && self.reply_src == *backend
    }
}

fn ip_protocol(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// One ctnetlink request as bytes: netlink header, nfgenmsg (`family`,
/// version 0, resource 0), attributes, then `raw` (whole attributes,
/// already aligned) for those the netfilter crate cannot emit.
fn encode(family: u8, msg: ConntrackMessage, raw: &[u8], flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let body = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::from(family), 0, 0),
        msg,
    );
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(body));
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    if !raw.is_empty() {
        buf.extend_from_slice(raw);
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        buf[0..4].copy_from_slice(&len.to_ne_bytes());
    }
    buf
}

/// A blocking ctnetlink connection.
pub struct Conntrack {
    socket: Socket,
    seq: u32,
}

impl Conntrack {
    /// Opens a socket in the current network namespace.
    pub fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(Error::Socket)?;
        socket.bind_auto().map_err(Error::Socket)?;
        socket.connect(&NlAddr::new(0, 0)).map_err(Error::Socket)?;
        Ok(Self { socket, seq: 0 })
    }

    fn send(&mut self, family: u8, msg: ConntrackMessage, raw: &[u8], flags: u16) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let buf = encode(family, msg, raw, flags, self.seq);
        self.socket.send(&buf, 0).map_err(Error::Socket)?;
        Ok(self.seq)
    }

    /// Reads replies to request `seq` until it is done (dump end or ack),
    /// handing each conntrack message to `each`.
    fn receive(
        &mut self,
        op: &'static str,
        seq: u32,
        mut each: impl FnMut(u8, ConntrackMessage),
    ) -> Result<()> {
        loop {
            let (buf, _) = self.socket.recv_from_full().map_err(Error::Socket)?;
            let mut off = 0;
            while off < buf.len() {
                let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..])
                    .map_err(|e| Error::Decode(e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(Error::Decode("zero-length netlink message".into()));
                }
                off += len.next_multiple_of(4);
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(Error::Kernel {
                                op,
                                errno: code.get().abs(),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        let family = u8::from(m.header.family);
                        if let NetfilterMessageInner::Conntrack(ct) = m.inner {
                            each(family, ct);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every entry of the table (both families) that `keep` accepts.
    pub fn entries(&mut self, keep: impl FnMut(&Entry) -> bool) -> Result<Vec<Entry>> {
        self.dump(0, Vec::new(), &[], keep)
    }

    /// The entries that carry `key`'s traffic to `backend`. The kernel
    /// filters the dump (Linux 5.9 and later: `CTA_FILTER` on the original
    /// destination and the reply source); the same test runs here too, so a
    /// kernel that ignores the filter only costs a longer dump.
    pub fn entries_of(&mut self, key: &VirtualKey, backend: &SocketAddr) -> Result<Vec<Entry>> {
        if backend.is_ipv4() != key.ip.is_ipv4() {
            return Ok(Vec::new());
        }
        self.filtered_dump(key, backend, |e| e.carries(key, backend))
    }

    /// What the kernel's filter alone returns for `key` and `backend` (no
    /// check here): lets a test see that the kernel honours the filter.
    pub fn kernel_filtered(
        &mut self,
        key: &VirtualKey,
        backend: &SocketAddr,
    ) -> Result<Vec<Entry>> {
        self.filtered_dump(key, backend, |_| true)
    }

    /// A dump of `key`'s family with the kernel filter for `key` and
    /// `backend`, keeping what `keep` accepts.
    fn filtered_dump(
        &mut self,
        key: &VirtualKey,
        backend: &SocketAddr,
        keep: impl FnMut(&Entry) -> bool,
    ) -> Result<Vec<Entry>> {
        let family = if key.ip.is_ipv4() { AF_INET } else { AF_INET6 };
        let (tuples, raw) = filter(key, backend);
        self.dump(family, tuples, &raw, keep)
    }

    fn dump(
        &mut self,
        family: u8,
        attrs: Vec<ConntrackAttribute>,
        raw: &[u8],
        mut keep: impl FnMut(&Entry) -> bool,
    ) -> Result<Vec<Entry>> {
        let seq = self.send(
            family,
            ConntrackMessage::Get(attrs),
            raw,
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        self.receive("dump", seq, |family, msg| {
            if let Some(e) = entry(family, msg)
                && keep(&e)
            {
                out.push(e);
            }
        })?;
        Ok(out)
    }

    /// Deletes one entry; `Ok(false)` when it was already gone.
    pub fn delete(&mut self, e: &Entry) -> Result<bool> {
        let seq = self.send(
            e.family,
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(e.orig.clone())]),
            &[],
            NLM_F_REQUEST | NLM_F_ACK,
        )?;
        match self.receive("delete", seq, |_, _| {}) {
            Ok(()) => Ok(true),
            // ENOENT: it expired, or IPVS dropped it, since the dump.
            Err(Error::Kernel { errno: 2, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Deletes the entries of every flow in `flows` (PXY-11); returns how many
/// went. Does nothing, not even open a socket, when `flows` is empty.
pub fn forget(flows: &BTreeSet<(VirtualKey, SocketAddr)>) -> Result<usize> {
    if flows.is_empty() {
        return Ok(0);
    }
    let mut ct = Conntrack::open()?;
    let mut deleted = 0;
    for (key, backend) in flows {
        for e in &ct.entries_of(key, backend)? {
            if ct.delete(e)? {
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

/// After `ops` were applied over `observed`: forgets the UDP flows they
/// took away (PXY-11), logging and counting the outcome. A failure here
/// leaves the rules right, so it is reported and the proxy goes on.
pub fn forget_stale(ops: &[ProxyOp], observed: &ProxyTable, metrics: &Metrics) {
    let flows = stale_udp_flows(ops, observed);
    if flows.is_empty() {
        return;
    }
    match forget(&flows) {
        Ok(n) => {
            metrics
                .conntrack_deleted
                .inc_by(u64::try_from(n).unwrap_or(0));
            info!(flows = flows.len(), deleted = n, "forgot stale UDP flows");
        }
        Err(e) => {
            metrics.conntrack_errors.inc();
            warn!(flows = flows.len(), error = %e, "deleting stale UDP conntrack entries failed");
        }
    }
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `CTA_FILTER` (nested) and its members.
const CTA_FILTER: u16 = 25;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
/// Which tuple fields the kernel compares.
const F_IP_SRC: u32 = 1 << 0;
const F_IP_DST: u32 = 1 << 1;
const F_PROTO_NUM: u32 = 1 << 3;
const F_PROTO_SRC_PORT: u32 = 1 << 4;
const F_PROTO_DST_PORT: u32 = 1 << 5;

/// Dump attributes selecting the entries sent to `key` and answered by
/// `backend`: original destination address, protocol and port; reply
/// source address, protocol and port. The `CTA_FILTER` attribute comes as
/// raw bytes: the kernel wants it marked nested, and the crate's generic
/// attribute cannot carry that flag.
fn filter(key: &VirtualKey, backend: &SocketAddr) -> (Vec<ConntrackAttribute>, Vec<u8>) {
    let proto = match key.protocol {
        Protocol::Tcp => CtProtocol::Tcp,
        Protocol::Udp => CtProtocol::Udp,
        Protocol::Sctp => CtProtocol::Sctp,
    };
    let nla = |kind: u16, v: u32| {
        let mut b = Vec::with_capacity(8);
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&v.to_ne_bytes());
        b
    };
    // IPv6 addresses are not given to the kernel: its IPv6 address test in
    // dump filters is inverted (an entry is skipped when the address is
    // equal; seen on Linux 6.18 in the nftables test, and so in the source),
    // so for IPv6 the kernel filters on protocol and ports and `carries`
    // checks the addresses.
    let (dst, src) = if key.ip.is_ipv4() {
        (F_IP_DST, F_IP_SRC)
    } else {
        (0, 0)
    };
    let mut flags = nla(CTA_FILTER_ORIG_FLAGS, dst | F_PROTO_NUM | F_PROTO_DST_PORT);
    flags.extend(nla(
        CTA_FILTER_REPLY_FLAGS,
        src | F_PROTO_NUM | F_PROTO_SRC_PORT,
    ));
    let tuples = vec![
        ConntrackAttribute::CtaTupleOrig(vec![
            Tuple::Ip(vec![IPTuple::DestinationAddress(key.ip)]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(proto),
                ProtoTuple::DestinationPort(key.port),
            ]),
        ]),
        ConntrackAttribute::CtaTupleReply(vec![
            Tuple::Ip(vec![IPTuple::SourceAddress(backend.ip())]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(proto),
                ProtoTuple::SourcePort(backend.port()),
            ]),
        ]),
    ];
    let mut raw = Vec::with_capacity(4 + flags.len());
    raw.extend_from_slice(&u16::try_from(4 + flags.len()).unwrap_or(0).to_ne_bytes());
    raw.extend_from_slice(&(CTA_FILTER | NLA_F_NESTED).to_ne_bytes());
    raw.extend(flags);
    (tuples, raw)
}

fn tuple_addrs(tuple: &[Tuple]) -> Option<(u8, SocketAddr, SocketAddr)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for t in tuple {
        match t {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(p) => proto = Some(u8::from(*p)),
                        ProtoTuple::SourcePort(p) => sport = Some(*p),
                        ProtoTuple::DestinationPort(p) => dport = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let (src, dst): (IpAddr, IpAddr) = (src?, dst?);
    Some((
        proto?,
        SocketAddr::new(src, sport.unwrap_or(0)),
        SocketAddr::new(dst, dport.unwrap_or(0)),
    ))
}

fn entry(family: u8, msg: ConntrackMessage) -> Option<Entry> {
    let ConntrackMessage::New(attrs) = msg else {
        return None;
    };
    let mut orig = None;
    let mut reply = None;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(t),
            _ => {}
        }
    }
    let orig = orig?;
    let (protocol, orig_src, orig_dst) = tuple_addrs(&orig)?;
    let (_, reply_src, _) = tuple_addrs(&reply?)?;
    Some(Entry {
        protocol,
        orig_src,
        orig_dst,
        reply_src,
        orig,
        family,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(src.parse().unwrap()),
                IPTuple::DestinationAddress(dst.parse().unwrap()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(netlink_packet_netfilter::conntrack::Protocol::Udp),
                ProtoTuple::SourcePort(sport),
                ProtoTuple::DestinationPort(dport),
            ]),
        ]
    }

    /// A DNATed UDP flow: client → ClusterIP, answered by the backend.
    fn dump_reply() -> ConntrackMessage {
        ConntrackMessage::New(vec![
            ConntrackAttribute::CtaTupleOrig(tuple("10.244.0.9", "10.96.0.10", 41000, 53)),
            ConntrackAttribute::CtaTupleReply(tuple("10.244.0.1", "10.244.0.9", 8053, 41000)),
            ConntrackAttribute::CtaMark(0),
        ])
    }

    #[test]
    fn a_dumped_entry_knows_its_virtual_address_and_backend() {
        let e = entry(2, dump_reply()).unwrap();
        assert_eq!(e.protocol, 17);
        assert_eq!(e.orig_src, "10.244.0.9:41000".parse().unwrap());
        assert_eq!(e.orig_dst, "10.96.0.10:53".parse().unwrap());
        assert_eq!(e.reply_src, "10.244.0.1:8053".parse().unwrap());
        let key = |port, protocol| VirtualKey {
            ip: "10.96.0.10".parse().unwrap(),
            protocol,
            port,
        };
        let backend: SocketAddr = "10.244.0.1:8053".parse().unwrap();
        assert!(e.carries(&key(53, Protocol::Udp), &backend));
        assert!(!e.carries(&key(53, Protocol::Tcp), &backend));
        assert!(!e.carries(&key(54, Protocol::Udp), &backend));
        assert!(!e.carries(&key(53, Protocol::Udp), &"10.244.0.2:8053".parse().unwrap()));
        // Not an entry: a delete, or a message without a reply tuple.
        assert!(entry(2, ConntrackMessage::Delete(Vec::new())).is_none());
        assert!(
            entry(
                2,
                ConntrackMessage::New(vec![ConntrackAttribute::CtaTupleOrig(tuple(
                    "10.0.0.1", "10.0.0.2", 1, 2
                ))])
            )
            .is_none()
        );
    }

    #[test]
    fn a_delete_request_is_ctnetlink_delete_with_the_original_tuple() {
        let e = entry(2, dump_reply()).unwrap();
        let buf = encode(
            e.family,
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(e.orig.clone())]),
            &[],
            NLM_F_REQUEST | NLM_F_ACK,
            7,
        );
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len());
        // Type: subsystem CTNETLINK (1) << 8 | IPCTNL_MSG_CT_DELETE (2).
        assert_eq!(u16::from_ne_bytes([buf[4], buf[5]]), 0x0102);
        assert_eq!(
            u16::from_ne_bytes([buf[6], buf[7]]),
            NLM_F_REQUEST | NLM_F_ACK
        );
        assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), 7);
        // nfgenmsg: AF_INET, version 0, resource id 0.
        assert_eq!(&buf[16..20], &[2, 0, 0, 0]);
        // First attribute: CTA_TUPLE_ORIG (1), nested.
        assert_eq!(u16::from_ne_bytes([buf[22], buf[23]]) & 0x3fff, 1);
        // It parses back to the same tuple.
        let back = NetlinkMessage::<NetfilterMessage>::deserialize(&buf).unwrap();
        let NetlinkPayload::InnerMessage(m) = back.payload else {
            panic!("not a netfilter message");
        };
        assert_eq!(
            m.inner,
            NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(vec![
                ConntrackAttribute::CtaTupleOrig(e.orig)
            ]))
        );
    }
}
