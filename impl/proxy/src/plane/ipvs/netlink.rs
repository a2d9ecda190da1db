//! nftables set elements over netlink (`NETLINK_NETFILTER`, subsystem
//! `NFTABLES`): the IPVS data plane's sets change with one batch datagram
//! per sync instead of one `nft` process. The table, its sets and rules are
//! still created once by `nft` ([`super::sets::nft_base`]). This module
//! knows set names and key bytes only; what the keys mean is `sets`'s.
//!
//! A batch is all or nothing, as an `nft -f` script is: the kernel applies
//! every message between BATCH_BEGIN and BATCH_END or none of them.

use std::collections::BTreeMap;
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

const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// Elements per set-element message (each is at most 48 bytes on the wire,
/// so a message stays far below the 64 KiB attribute limit).
const PER_MESSAGE: usize = 256;

/// The most element changes sent as one netlink datagram; a larger change
/// (a first sync over a big table) is left to `nft`, which sizes its own
/// socket buffers for big batches.
pub const MAX_ELEMENTS: usize = 2048;

/// How long to wait for the kernel's acknowledgements.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Element keys by set name.
pub type KeysBySet = BTreeMap<String, Vec<Vec<u8>>>;

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

fn elements(table: &str, set: &str, keys: &[Vec<u8>]) -> SetElementMessage {
    SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.to_owned()),
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

/// One batch datagram deleting `del` and adding `add` in `table`'s sets,
/// sequence numbers from `seq`; also the sequence numbers that will be
/// acknowledged. `None` when there is nothing to send.
pub fn batch(
    table: &str,
    del: &KeysBySet,
    add: &KeysBySet,
    seq: u32,
) -> Option<(Vec<u8>, Vec<u32>)> {
    if del.values().all(Vec::is_empty) && add.values().all(Vec::is_empty) {
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
    for (set, keys) in del {
        for chunk in keys.chunks(PER_MESSAGE) {
            next += 1;
            let m = NetfilterMessage::new(
                inet(),
                NfTablesMessage::DeleteSetElement(elements(table, set, chunk)),
            );
            buf.extend(message(m, NLM_F_REQUEST | NLM_F_ACK, next));
            acked.push(next);
        }
    }
    for (set, keys) in add {
        for chunk in keys.chunks(PER_MESSAGE) {
            next += 1;
            let m = NetfilterMessage::new(
                inet(),
                NfTablesMessage::NewSetElement(elements(table, set, chunk)),
            );
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

/// Deletes `del` and adds `add` (disjoint) in one batch and waits for the
/// kernel's verdict on each message. Returns how many messages the batch
/// held (0: nothing to do, nothing sent); an error says what the kernel or
/// the socket refused.
pub fn send(table: &str, del: &KeysBySet, add: &KeysBySet) -> Result<usize, String> {
    // With disjoint sets, "from `del` to `add`" deletes `del` and adds `add`.
    let Some((buf, acked)) = batch(table, del, add, 1) else {
        return Ok(0);
    };
    let io = |what: &str, e: std::io::Error| format!("netlink {what}: {e}");
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
                    return Err(format!(
                        "netlink: no answer for {} of {} set-element messages",
                        pending.len(),
                        acked.len()
                    ));
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
        Some(e) => Err(e),
        None => Ok(acked.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "signpost-ipvs";

    fn keys(set: &str, n: u32, width: usize) -> KeysBySet {
        let keys = (0..n).map(|i| {
            let mut k = vec![0u8; width];
            k[..4].copy_from_slice(&i.to_be_bytes());
            k
        });
        KeysBySet::from([(set.to_owned(), keys.collect())])
    }

    #[test]
    fn big_changes_are_split_into_messages_below_the_attribute_limit() {
        let add = keys("hairpin_v6", 1000, 32);
        let (buf, acked) = batch(T, &KeysBySet::new(), &add, 1).unwrap();
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
        let mut del = keys("hairpin_v4", 1, 8);
        del.extend(keys("reject_v4", 1, 12));
        let add = keys("hairpin_v4", 1, 8);
        assert!(batch(T, &KeysBySet::new(), &KeysBySet::new(), 1).is_none());
        let (buf, acked) = batch(T, &del, &add, 1).unwrap();
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
    }
}
