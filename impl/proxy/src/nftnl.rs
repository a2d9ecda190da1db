//! nftables set elements over netlink (`NETLINK_NETFILTER`, subsystem
//! `NFTABLES`): the IPVS data plane's reject and hairpin sets change with one
//! batch datagram per sync instead of one `nft` process. The table, its sets
//! and rules are still created once by `nft` (`ipvs::nft_base`).
//!
//! A batch is all or nothing, as an `nft -f` script is: the kernel applies
//! every message between BATCH_BEGIN and BATCH_END or none of them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
    SetElementMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};
use signpost_model::cluster::Protocol;

use crate::ipvs::{Error, NFT_TABLE, NftElements};

const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// Elements per set-element message (each is at most 48 bytes on the wire,
/// so a message stays far below the 64 KiB attribute limit).
const PER_MESSAGE: usize = 256;

/// The most element changes sent as one netlink datagram; a larger change
/// (a first sync over a big table) is left to `nft`, which sizes its own
/// socket buffers for big batches.
pub const MAX_ELEMENTS: usize = 2048;

/// How many elements change from `have` to `want`.
pub fn changed(have: &NftElements, want: &NftElements) -> usize {
    have.reject.symmetric_difference(&want.reject).count()
        + have.hairpin.symmetric_difference(&want.hairpin).count()
        + have.vips.symmetric_difference(&want.vips).count()
}

/// How long to wait for the kernel's acknowledgements.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn fam(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "v4" } else { "v6" }
}

/// A concatenated set key: each part starts on a 4-byte boundary (nft
/// registers are 32 bits wide), zero-padded.
fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

/// `reject_v4`/`reject_v6` key: `addr . inet_proto . inet_service` (the
/// protocol number as one byte, the port big-endian).
pub fn reject_key(e: &(IpAddr, Protocol, u16)) -> (String, Vec<u8>) {
    (
        format!("reject_{}", fam(&e.0)),
        concat(&[&ip_bytes(&e.0), &[proto_number(e.1)], &e.2.to_be_bytes()]),
    )
}

/// `hairpin_v4`/`hairpin_v6` key: `addr . addr`.
pub fn hairpin_key(ip: &IpAddr) -> (String, Vec<u8>) {
    let b = ip_bytes(ip);
    (format!("hairpin_{}", fam(ip)), concat(&[&b, &b]))
}

/// `vips_v4`/`vips_v6` key: the address.
pub fn vip_key(ip: &IpAddr) -> (String, Vec<u8>) {
    (format!("vips_{}", fam(ip)), ip_bytes(ip))
}

/// Element keys by set name.
pub type KeysBySet = BTreeMap<String, Vec<Vec<u8>>>;

/// The element changes taking `have` to `want`: deletions, then additions,
/// grouped by set.
pub fn changes(have: &NftElements, want: &NftElements) -> (KeysBySet, KeysBySet) {
    let mut del = KeysBySet::new();
    let mut add = KeysBySet::new();
    let put = |m: &mut KeysBySet, (set, key): (String, Vec<u8>)| {
        m.entry(set).or_default().push(key);
    };
    for e in have.reject.difference(&want.reject) {
        put(&mut del, reject_key(e));
    }
    for e in want.reject.difference(&have.reject) {
        put(&mut add, reject_key(e));
    }
    for ip in have.hairpin.difference(&want.hairpin) {
        put(&mut del, hairpin_key(ip));
    }
    for ip in want.hairpin.difference(&have.hairpin) {
        put(&mut add, hairpin_key(ip));
    }
    for ip in have.vips.difference(&want.vips) {
        put(&mut del, vip_key(ip));
    }
    for ip in want.vips.difference(&have.vips) {
        put(&mut add, vip_key(ip));
    }
    (del, add)
}

fn message(inner: NetfilterMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(inner));
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

fn elements(set: &str, keys: &[Vec<u8>]) -> SetElementMessage {
    SetElementMessage {
        attributes: vec![
            SetElementList::Table(NFT_TABLE.to_owned()),
            SetElementList::Set(set.to_owned()),
            SetElementList::Elements(
                keys.iter()
                    .map(|k| {
                        ListAttribute::Element(vec![SetElementAttribute::Key(
                            DataAttribute::Value(k.clone()),
                        )])
                    })
                    .collect(),
            ),
        ],
    }
}

/// One batch datagram with the changes from `have` to `want`, sequence
/// numbers from `seq`; also the sequence numbers that will be acknowledged.
/// `None` when nothing changes.
pub fn batch(have: &NftElements, want: &NftElements, seq: u32) -> Option<(Vec<u8>, Vec<u32>)> {
    let (del, add) = changes(have, want);
    if del.is_empty() && add.is_empty() {
        return None;
    }
    let control = |m: ControlMessage| {
        NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
            m,
        )
    };
    let mut buf = message(control(ControlMessage::BatchBegin), NLM_F_REQUEST, seq);
    let mut acked = Vec::new();
    let mut next = seq;
    let inet = || NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0);
    // An attribute's length is 16 bits: at most PER_MESSAGE elements (of at
    // most 32 key bytes) go in one message.
    for (set, keys) in &del {
        for chunk in keys.chunks(PER_MESSAGE) {
            next += 1;
            let m = NetfilterMessage::new(
                inet(),
                NfTablesMessage::DeleteSetElement(elements(set, chunk)),
            );
            buf.extend(message(m, NLM_F_REQUEST | NLM_F_ACK, next));
            acked.push(next);
        }
    }
    for (set, keys) in &add {
        for chunk in keys.chunks(PER_MESSAGE) {
            next += 1;
            let m =
                NetfilterMessage::new(inet(), NfTablesMessage::NewSetElement(elements(set, chunk)));
            buf.extend(message(m, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, next));
            acked.push(next);
        }
    }
    buf.extend(message(
        control(ControlMessage::BatchEnd),
        NLM_F_REQUEST,
        next + 1,
    ));
    Some((buf, acked))
}

/// Sends the changes from `have` to `want` as one batch and waits for the
/// kernel's verdict on each message. Returns how many messages the batch held
/// (0: nothing to do, nothing sent).
pub fn apply(have: &NftElements, want: &NftElements) -> Result<usize, Error> {
    let minus = |a: &NftElements, b: &NftElements| NftElements {
        reject: a.reject.difference(&b.reject).copied().collect(),
        hairpin: a.hairpin.difference(&b.hairpin).copied().collect(),
        vips: a.vips.difference(&b.vips).copied().collect(),
    };
    apply_changes(&minus(have, want), &minus(want, have))
}

/// Deletes the elements of `del` and adds those of `add` (disjoint) in one
/// batch; as `apply`.
pub fn apply_changes(del: &NftElements, add: &NftElements) -> Result<usize, Error> {
    // With disjoint sets, "from `del` to `add`" deletes `del` and adds `add`.
    let Some((buf, acked)) = batch(del, add, 1) else {
        return Ok(0);
    };
    let io = |what: &str, e: std::io::Error| Error::Nft(format!("netlink {what}: {e}"));
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| io("socket", e))?;
    socket.bind_auto().map_err(|e| io("bind", e))?;
    socket
        .connect(&NlAddr::new(0, 0))
        .map_err(|e| io("connect", e))?;
    socket.send(&buf, 0).map_err(|e| io("send", e))?;
    socket
        .set_non_blocking(true)
        .map_err(|e| io("non-blocking", e))?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut pending: Vec<u32> = acked.clone();
    let mut first_error: Option<String> = None;
    while !pending.is_empty() {
        let data = match socket.recv_from_full() {
            Ok((data, _)) => data,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(Error::Nft(format!(
                        "netlink: no answer for {} of {} set-element messages",
                        pending.len(),
                        acked.len()
                    )));
                }
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            Err(e) => return Err(io("receive", e)),
        };
        let mut off = 0;
        while off + 16 <= data.len() {
            let len = u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                as usize;
            if len < 16 || off + len > data.len() {
                break;
            }
            let seq =
                u32::from_ne_bytes([data[off + 8], data[off + 9], data[off + 10], data[off + 11]]);
            let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
            // NLMSG_ERROR (2): an errno (0 = acknowledged), then the request's header.
            if kind == 2 && len >= 20 {
                let errno = i32::from_ne_bytes([
                    data[off + 16],
                    data[off + 17],
                    data[off + 18],
                    data[off + 19],
                ]);
                if errno != 0 && first_error.is_none() {
                    first_error = Some(format!(
                        "the kernel refused a set-element message: {}",
                        std::io::Error::from_raw_os_error(-errno)
                    ));
                }
                pending.retain(|s| *s != seq);
            }
            off += len.next_multiple_of(4);
        }
    }
    match first_error {
        Some(e) => Err(Error::Nft(e)),
        None => Ok(acked.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_concatenations_of_32_bit_registers() {
        let (set, key) = reject_key(&("10.96.0.1".parse().unwrap(), Protocol::Udp, 53));
        assert_eq!(set, "reject_v4");
        assert_eq!(key, [10, 96, 0, 1, 17, 0, 0, 0, 0, 53, 0, 0]);
        let (set, key) = reject_key(&("fd00::1".parse().unwrap(), Protocol::Sctp, 0x1f90));
        assert_eq!(set, "reject_v6");
        assert_eq!(key.len(), 24);
        assert_eq!(&key[16..], &[132, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        let (set, key) = hairpin_key(&"10.244.0.5".parse().unwrap());
        assert_eq!(set, "hairpin_v4");
        assert_eq!(key, [10, 244, 0, 5, 10, 244, 0, 5]);
        assert_eq!(hairpin_key(&"fd00::5".parse().unwrap()).1.len(), 32);
    }

    #[test]
    fn big_changes_are_split_into_messages_below_the_attribute_limit() {
        let want = NftElements {
            reject: Default::default(),
            hairpin: (0..1000u32)
                .map(|i| IpAddr::from(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i))))
                .collect(),
            ..NftElements::default()
        };
        assert_eq!(changed(&NftElements::default(), &want), 1000);
        let (buf, acked) = batch(&NftElements::default(), &want, 1).unwrap();
        assert_eq!(acked.len(), 1000usize.div_ceil(PER_MESSAGE));
        let mut off = 0;
        while off < buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            assert!(len < 65_536 / 2, "a message of {len} bytes");
            off += len.next_multiple_of(4);
        }
    }

    #[test]
    fn a_batch_is_begin_deletes_adds_end() {
        let have = NftElements {
            reject: [("10.96.0.1".parse().unwrap(), Protocol::Tcp, 80)].into(),
            hairpin: ["10.244.0.1".parse().unwrap()].into(),
            ..NftElements::default()
        };
        let want = NftElements {
            reject: Default::default(),
            hairpin: ["10.244.0.2".parse().unwrap()].into(),
            ..NftElements::default()
        };
        assert!(batch(&have, &have, 1).is_none());
        let (buf, acked) = batch(&have, &want, 1).unwrap();
        // Walk the datagram: (type, flags, seq, nfgen family, res_id).
        let mut seen = Vec::new();
        let mut off = 0;
        while off < buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            let flags = u16::from_ne_bytes([buf[off + 6], buf[off + 7]]);
            let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
            let family = buf[off + 16];
            let res = u16::from_be_bytes([buf[off + 18], buf[off + 19]]);
            seen.push((kind, flags, seq, family, res));
            off += len.next_multiple_of(4);
        }
        let (req, ack, create) = (NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE);
        assert_eq!(
            seen,
            vec![
                (16, req, 1, 0, 10),                           // BATCH_BEGIN for nftables
                ((10 << 8) | 14, req | ack, 2, 1, 0),          // DELSETELEM hairpin_v4
                ((10 << 8) | 14, req | ack, 3, 1, 0),          // DELSETELEM reject_v4
                ((10 << 8) | 12, req | ack | create, 4, 1, 0), // NEWSETELEM hairpin_v4
                (17, req, 5, 0, 10),                           // BATCH_END
            ]
        );
        assert_eq!(acked, vec![2, 3, 4]);
        // The element messages parse back with their table, set and key.
        let second = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[20..]).unwrap();
        let NetlinkPayload::InnerMessage(m) = second.payload else {
            panic!("not a netfilter message")
        };
        assert_eq!(
            m.inner,
            netlink_packet_netfilter::NetfilterMessageInner::NfTables(
                NfTablesMessage::DeleteSetElement(elements(
                    "hairpin_v4",
                    &[vec![10, 244, 0, 1, 10, 244, 0, 1]]
                ))
            )
        );
    }
}
