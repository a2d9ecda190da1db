//! UDP serving: one loop per socket. An answer the zone index gave is kept
//! in wire form, keyed by its query without the ID and with the name in
//! lower case, and the same query is answered again from it (the client's
//! ID and the question's letter case copied in) until the index moves to
//! another generation. Everything else — forwarded names, errors, rate
//! limited or rotated answers, the first asking after a change — goes
//! through the hickory request path ([`Handler`]) in a task of its own, so
//! a slow upstream holds up no other client.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_proto::op::{Header, MessageType, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tracing::{debug, warn};

use crate::server::{Handler, Shared};

/// Wire answers kept at most in a small zone; when full, all are dropped
/// (the next queries rebuild them). See [`wire_capacity`].
pub const WIRE_CAPACITY: usize = 16_384;

/// Wire answers kept at most for a zone of `services` Services: room for
/// two questions per Service (A and AAAA, or a name and its SRV), so that
/// clients asking for every Service do not empty the cache over and over;
/// never less than [`WIRE_CAPACITY`].
pub fn wire_capacity(services: usize) -> usize {
    WIRE_CAPACITY.max(services.saturating_mul(2))
}

/// The largest datagram read; longer ones are cut and fail to parse.
const MAX_DATAGRAM: usize = 4096;

tokio::task_local! {
    /// Set by the request path when its answer came from the index alone
    /// and may be kept in wire form.
    pub(crate) static KEEPABLE: Cell<bool>;
}

/// Marks the answer being built as one the wire cache may keep (outside a
/// UDP request: nothing).
pub(crate) fn mark_keepable() {
    let _ = KEEPABLE.try_with(|k| k.set(true));
}

/// A plain query: exactly one question, no answer or authority records, at
/// most an OPT record without options, nothing after. `question_end` is
/// the offset after the question's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plain {
    /// Offset just after the name.
    pub name_end: usize,
    /// Offset just after the question.
    pub question_end: usize,
    /// The question's type.
    pub qtype: u16,
}

/// The offset just after the question's name (uncompressed, at most 255
/// bytes), which starts right after the header.
pub fn name_end(msg: &[u8]) -> Option<usize> {
    let mut i = 12;
    loop {
        let len = usize::from(*msg.get(i)?);
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xc0 != 0 {
            return None;
        }
        i += 1 + len;
        if i - 12 > 255 {
            return None;
        }
    }
}

/// Whether `msg` is a plain query, and where its parts are.
pub fn plain_query(msg: &[u8]) -> Option<Plain> {
    let count = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    if msg.len() < 12 || msg[2] & 0xf8 != 0 {
        // A response, or an opcode other than QUERY.
        return None;
    }
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    let name_end = name_end(msg)?;
    let question_end = name_end + 4;
    let qtype = u16::from_be_bytes([*msg.get(name_end)?, *msg.get(name_end + 1)?]);
    let end = if count(10) == 1 {
        // OPT: root name, type 41, class, TTL, empty RDATA.
        let opt = msg.get(question_end..question_end + 11)?;
        if opt[0] != 0 || opt[1..3] != [0, 41] || opt[9..11] != [0, 0] {
            return None;
        }
        question_end + 11
    } else {
        question_end
    };
    (end == msg.len()).then_some(Plain {
        name_end,
        question_end,
        qtype,
    })
}

/// The cache key of a plain query: everything after the ID, the name in
/// lower case (label lengths are below 64, so no length byte is a letter).
fn key_into(msg: &[u8], plain: Plain, key: &mut Vec<u8>) {
    key.clear();
    key.extend_from_slice(&msg[2..]);
    key[10..plain.name_end - 2].make_ascii_lowercase();
}

#[derive(Debug)]
struct Wire {
    generation: u64,
    bytes: Box<[u8]>,
    qtype: &'static str,
}

/// Answers from the index in wire form.
#[derive(Debug, Default)]
pub struct WireCache {
    entries: Mutex<HashMap<Box<[u8]>, Wire>>,
}

impl WireCache {
    /// Entries held (stale ones included until replaced).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the kept answer to `query` into `out` if it is of
    /// `generation`; returns its type label.
    fn answer_into(
        &self,
        key: &[u8],
        generation: u64,
        query: &[u8],
        plain: Plain,
        out: &mut Vec<u8>,
    ) -> Option<&'static str> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let wire = entries.get(key).filter(|w| w.generation == generation)?;
        out.clear();
        out.extend_from_slice(&wire.bytes);
        let qtype = wire.qtype;
        drop(entries);
        out[..2].copy_from_slice(&query[..2]);
        out[12..plain.question_end].copy_from_slice(&query[12..plain.question_end]);
        Some(qtype)
    }

    /// Keeps `response` to `query` (asked at `generation`) if it is a
    /// complete, authoritative NOERROR answer echoing the question.
    fn keep(&self, key: Box<[u8]>, kept: Kept, query: &[u8], plain: Plain, response: &[u8]) {
        let q = plain.question_end;
        let keepable = response.len() > q
            && response[2] & 0x80 != 0 // QR
            && response[2] & 0x04 != 0 // AA
            && response[2] & 0x02 == 0 // not TC
            && response[3] & 0x0f == 0 // NOERROR
            && response[12..q] == query[12..q];
        if !keepable {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= kept.capacity && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(
            key,
            Wire {
                generation: kept.generation,
                bytes: response.into(),
                qtype: qtype_label(plain.qtype),
            },
        );
    }
}

/// The zone an answer was computed from: its generation and the cache's
/// capacity for a zone of its size.
#[derive(Debug, Clone, Copy)]
struct Kept {
    generation: u64,
    capacity: usize,
}

fn qtype_label(t: u16) -> &'static str {
    crate::server::qtype_label(hickory_proto::rr::RecordType::from(t))
}

/// Encodes a response for the task to send.
#[derive(Clone)]
struct Reply {
    dst: SocketAddr,
    sent: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl ResponseHandler for Reply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // RFC 1035 4.2.1 and RFC 6891: no more than the client takes (the
        // request path clamps its EDNS payload), else truncated.
        let max = response.edns().map_or(512, |e| e.max_payload());
        let metadata = *response.metadata();
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(e) => {
                warn!(error = %e, dst = %self.dst, "could not encode a response; answering SERVFAIL");
                bytes.clear();
                let mut encoder = BinEncoder::new(&mut bytes);
                let mut m = metadata;
                m.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata: m,
                    counts: Default::default(),
                };
                header.emit(&mut encoder)?;
                ResponseInfo::from(header)
            }
        };
        // Sent by the task once the request path is done with it (counted,
        // kept): a client that has its answer sees both.
        *self.sent.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        Ok(info)
    }
}

/// Whether a response may be sent to `src` (not port 0, not an
/// unspecified or broadcast address: reflection).
fn answerable(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            std::net::IpAddr::V4(a) => !a.is_unspecified() && !a.is_broadcast(),
            std::net::IpAddr::V6(a) => !a.is_unspecified(),
        }
}

/// A query the cache could not answer, through the request path.
async fn slow(
    handler: Handler,
    socket: Arc<std::net::UdpSocket>,
    raw: Vec<u8>,
    src: SocketAddr,
    keep: Option<(Box<[u8]>, Plain, Kept)>,
) {
    let Ok(header) = Header::read(&mut BinDecoder::new(&raw)) else {
        // Shorter than a header: nothing to answer.
        return;
    };
    if header.metadata.message_type == MessageType::Response {
        return;
    }
    let reply = Reply {
        dst: src,
        sent: Arc::default(),
    };
    let send = |reply: &Reply| {
        let bytes = reply.sent.lock().unwrap_or_else(|p| p.into_inner()).take();
        // A UDP send does not wait (a full buffer drops the datagram).
        if let Some(bytes) = bytes
            && let Err(e) = socket.send_to(&bytes, src)
        {
            debug!(error = %e, %src, "could not send a response");
        }
    };
    let request = match Request::from_bytes(raw, src, Protocol::Udp) {
        Ok(r) => r,
        Err(e) => {
            handler.0.metrics.malformed.inc();
            debug!(%src, error = %e, "undecodable query; answering FORMERR");
            let Ok(empty) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
                return;
            };
            let mut formerr = reply.clone();
            let response = MessageResponseBuilder::new(&empty, None)
                .error_msg(&header.metadata, ResponseCode::FormErr);
            if let Err(e) = formerr.send_response(response).await {
                warn!(error = %e, %src, "could not encode FORMERR");
            }
            send(&reply);
            return;
        }
    };
    let keepable = KEEPABLE
        .scope(Cell::new(false), async {
            handler
                .handle_request::<_, TokioTime>(&request, reply.clone())
                .await;
            KEEPABLE.with(Cell::get)
        })
        .await;
    if let (true, Some((key, plain, kept))) = (keepable, keep)
        && let Some(cache) = handler.0.wire.as_ref()
        && let Some(bytes) = reply
            .sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
    {
        cache.keep(key, kept, request.as_slice(), plain, bytes);
    }
    send(&reply);
}

/// How often a blocked receive looks at the stop flag.
const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Serves queries on `socket` in a thread of its own (blocking receives
/// and sends, as the simplest UDP server does: no wake-ups between a
/// datagram and its answer) until `stop` is set; queries the cache cannot
/// answer become tasks on `runtime`. `done` gets the outcome: an error
/// only when the socket fails for good.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    socket: std::net::UdpSocket,
    stop: Arc<std::sync::atomic::AtomicBool>,
    runtime: tokio::runtime::Handle,
    done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(STOP_POLL))?;
    let name = format!("dns-udp {}", socket.local_addr()?);
    std::thread::Builder::new().name(name).spawn(move || {
        let _ = done.send(serve(&shared, Arc::new(socket), &stop, &runtime));
    })?;
    Ok(())
}

fn serve(
    shared: &Arc<Shared>,
    socket: Arc<std::net::UdpSocket>,
    stop: &std::sync::atomic::AtomicBool,
    runtime: &tokio::runtime::Handle,
) -> std::io::Result<()> {
    use std::io::ErrorKind;
    let handler = Handler(shared.clone());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let (mut key, mut out) = (Vec::with_capacity(300), Vec::with_capacity(512));
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (n, src) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) if fatal(&e) => return Err(e),
            Err(e) => {
                warn!(error = %e, "receiving on the UDP socket failed");
                continue;
            }
        };
        if !answerable(src) {
            debug!(%src, "not answering a datagram from this source");
            continue;
        }
        let query = &buf[..n];
        let started = Instant::now();
        let plain = plain_query(query);
        let mut keep = None;
        if let (Some(plain), Some(cache)) = (plain, shared.wire.as_ref()) {
            key_into(query, plain, &mut key);
            // Read before the request path reads the index: an answer
            // built from a newer zone is only ever kept as older.
            let kept = {
                let index = shared.index.read().unwrap_or_else(|e| e.into_inner());
                Kept {
                    generation: index.generation(),
                    capacity: wire_capacity(index.services()),
                }
            };
            let generation = kept.generation;
            if let Some(qtype) = cache.answer_into(&key, generation, query, plain, &mut out) {
                // Counted before it is sent, as the request path's answers
                // are: a client that has its answer sees it counted.
                shared.metrics.count_query(
                    qtype,
                    "NOERROR",
                    false,
                    src.is_ipv6(),
                    started.elapsed(),
                );
                if let Err(e) = socket.send_to(&out, src) {
                    debug!(error = %e, %src, "could not send a response");
                }
                continue;
            }
            keep = Some((key.as_slice().into(), plain, kept));
        }
        runtime.spawn(slow(
            handler.clone(),
            socket.clone(),
            query.to_vec(),
            src,
            keep,
        ));
    }
    Ok(())
}

/// Errors after which the socket is no use.
fn fatal(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::NotConnected | ErrorKind::BrokenPipe | ErrorKind::Unsupported
    ) || e.raw_os_error() == Some(9) // EBADF
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(name: &str, edns: bool) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn plain_queries_are_recognized_and_keyed_without_id_or_case() {
        let a = query("Voy.Default.svc.cluster.local.", false);
        let p = plain_query(&a).unwrap();
        assert_eq!(p.qtype, 1);
        assert_eq!(p.question_end, a.len());
        let b = query("voy.default.SVC.cluster.local.", false);
        let (mut ka, mut kb) = (Vec::new(), Vec::new());
        key_into(&a, p, &mut ka);
        key_into(&b, plain_query(&b).unwrap(), &mut kb);
        assert_eq!(ka, kb);
        // EDNS is part of the key.
        let e = query("voy.default.svc.cluster.local.", true);
        let pe = plain_query(&e).unwrap();
        assert_eq!(pe.question_end + 11, e.len());
        let mut ke = Vec::new();
        key_into(&e, pe, &mut ke);
        assert_ne!(ka, ke);
    }

    /// `q` answered with one A record (QR, AA, NOERROR).
    fn answered(q: &[u8]) -> Vec<u8> {
        let mut a = q.to_vec();
        a[2] |= 0x84;
        a[7] = 1;
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 96, 0, 1]);
        a
    }

    /// Seen in the 50k-Service benchmark: dnsperf asking 55k names went at
    /// 27% of the rig's ceiling (92–97% at 10k) because a fixed 16,384-entry
    /// cache emptied itself every 16k queries and nearly every answer was
    /// built again. Room grows with the zone.
    #[test]
    fn the_wire_cache_holds_two_answers_per_service_of_a_large_zone() {
        let cache = WireCache::default();
        let services = 20_000;
        let kept = Kept {
            generation: 1,
            capacity: wire_capacity(services),
        };
        let (mut key, mut out) = (Vec::new(), Vec::new());
        let asked: Vec<Vec<u8>> = (0..2 * services)
            .map(|i| query(&format!("s{i}.default.svc.cluster.local."), false))
            .collect();
        for q in &asked {
            let plain = plain_query(q).unwrap();
            key_into(q, plain, &mut key);
            cache.keep(key.as_slice().into(), kept, q, plain, &answered(q));
        }
        assert_eq!(cache.len(), 2 * services);
        let first = &asked[0];
        let plain = plain_query(first).unwrap();
        key_into(first, plain, &mut key);
        assert!(cache.answer_into(&key, 1, first, plain, &mut out).is_some());
        // Still bounded: one more empties it.
        let extra = query("one-more.default.svc.cluster.local.", false);
        let plain = plain_query(&extra).unwrap();
        key_into(&extra, plain, &mut key);
        cache.keep(
            key.as_slice().into(),
            kept,
            &extra,
            plain,
            &answered(&extra),
        );
        assert_eq!(cache.len(), 1);
        assert_eq!(wire_capacity(10), WIRE_CAPACITY);
    }

    #[test]
    fn anything_else_is_not_plain() {
        let q = query("voy.default.svc.cluster.local.", false);
        // A response.
        let mut r = q.clone();
        r[2] |= 0x80;
        assert_eq!(plain_query(&r), None);
        // Another opcode (NOTIFY).
        let mut n = q.clone();
        n[2] |= 4 << 3;
        assert_eq!(plain_query(&n), None);
        // Trailing bytes, a cut name, two questions, a compression pointer.
        let mut t = q.clone();
        t.push(0);
        assert_eq!(plain_query(&t), None);
        assert_eq!(plain_query(&q[..20]), None);
        let mut two = q.clone();
        two[5] = 2;
        assert_eq!(plain_query(&two), None);
        let mut ptr = q[..12].to_vec();
        ptr.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(plain_query(&ptr), None);
        // An OPT record with options (a cookie) is not plain.
        let mut m = Message::from_vec(&query("voy.default.svc.cluster.local.", true)).unwrap();
        m.edns.as_mut().unwrap().options_mut().insert(
            hickory_proto::rr::rdata::opt::EdnsOption::Unknown(10, vec![1; 8]),
        );
        assert_eq!(plain_query(&m.to_vec().unwrap()), None);
        assert_eq!(plain_query(&[0u8; 11]), None);
    }
}
