//! The request path on hickory-server: one question per request, answered
//! from the zone index (DNS-1..DNS-18) or forwarded (DNS-19). Negative
//! answers carry the zone's SOA (RFC 2308) so resolvers cache them for the
//! TTL; ANY is minimal and transfers are refused (DNS-17); EDNS0 is echoed
//! with the client's payload size, and answers over it are truncated (TC).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData as HRData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use signpost_model::cluster::{DnsOutcome, Question, RData, RType, Rcode};
use tracing::{debug, warn};

use crate::ZoneIndex;
use crate::forward::{ForwardError, Forwarder};
use crate::metrics::Metrics;

/// The largest UDP payload answered, whatever a client advertises.
pub const MAX_UDP_PAYLOAD: u16 = 4096;

/// What the request path shares with the watchers.
#[derive(Debug)]
pub struct Shared {
    /// The zone, written by the watchers, read by every query.
    pub index: RwLock<ZoneIndex>,
    /// TTL of cluster records (DNS-16).
    pub ttl: u32,
    /// Counters and histograms.
    pub metrics: Metrics,
    /// The upstreams for other names.
    pub forwarder: Forwarder,
    /// SOA serial: seconds since the epoch at the last change.
    pub serial: AtomicU32,
    /// The cluster zone, lower-case without trailing dot.
    pub zone: String,
    /// The mutation seam (the identity in production).
    pub seam: signpost_model::mutant::Seam,
    /// Rotate the order of address answers per query (CoreDNS's
    /// `loadbalance`): clients that take the first address spread out.
    pub loadbalance: bool,
    rotor: std::sync::atomic::AtomicUsize,
    /// Forwarded answers kept for their TTL (none: every outside name is asked upstream).
    pub cache: Option<crate::cache::AnswerCache>,
    /// Clients whose outside names are forwarded; others get REFUSED.
    pub forward_allow: Vec<crate::guard::Cidr>,
    /// Rate limit of forwarded and NXDOMAIN answers over UDP, per client.
    pub rrl: Option<crate::guard::Rrl>,
    /// Index answers kept in wire form for UDP (none with a mutant built
    /// in: its faults are per query).
    pub wire: Option<crate::udp::WireCache>,
}

impl Shared {
    /// A shared state around an index.
    pub fn new(index: ZoneIndex, ttl: u32, forwarder: Forwarder) -> Self {
        Shared {
            zone: index.zone().to_owned(),
            index: RwLock::new(index),
            ttl,
            metrics: Metrics::default(),
            forwarder,
            serial: AtomicU32::new(epoch_secs()),
            seam: signpost_model::mutant::Seam::identity(),
            loadbalance: false,
            rotor: std::sync::atomic::AtomicUsize::new(0),
            cache: None,
            forward_allow: crate::guard::default_forward_allow(),
            rrl: None,
            wire: Some(crate::udp::WireCache::default()),
        }
    }

    /// The same with forwarded answers cached at most `max_ttl` (zero: no cache).
    pub fn with_cache(mut self, max_ttl: Duration) -> Self {
        self.cache = (!max_ttl.is_zero()).then(|| crate::cache::AnswerCache::new(max_ttl));
        self
    }

    /// The same forwarding only for clients in `allow`.
    pub fn with_forward_allow(mut self, allow: Vec<crate::guard::Cidr>) -> Self {
        self.forward_allow = allow;
        self
    }

    /// The same with forwarded and NXDOMAIN answers over UDP limited to
    /// `rate` a second per client (0: no limit).
    pub fn with_rrl(mut self, rate: u32) -> Self {
        self.rrl = (rate > 0).then(|| crate::guard::Rrl::new(rate));
        self
    }

    /// The same with address answers rotated per query.
    pub fn with_loadbalance(mut self, on: bool) -> Self {
        self.loadbalance = on;
        self
    }

    /// The same with a deliberate fault built in (the conformance harness's mutation test).
    pub fn with_mutant(mut self, mutant: Option<signpost_model::mutant::Mutant>) -> Self {
        self.seam = signpost_model::mutant::Seam::with(mutant);
        if mutant.is_some() {
            self.wire = None;
        }
        self
    }

    /// Whether the first full sync happened.
    pub fn synced(&self) -> bool {
        self.index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .synced()
    }
}

/// The current time in seconds since the epoch (SOA serials).
pub fn epoch_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// The hickory request handler.
#[derive(Debug, Clone)]
pub struct Handler(pub Arc<Shared>);

fn rtype(t: RecordType) -> RType {
    match t {
        RecordType::A => RType::A,
        RecordType::AAAA => RType::Aaaa,
        RecordType::CNAME => RType::Cname,
        RecordType::SRV => RType::Srv,
        RecordType::PTR => RType::Ptr,
        RecordType::TXT => RType::Txt,
        RecordType::SOA => RType::Soa,
        RecordType::NS => RType::Ns,
        RecordType::ANY => RType::Any,
        other => RType::Other(u16::from(other)),
    }
}

pub(crate) fn qtype_label(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::CNAME => "CNAME",
        RecordType::SRV => "SRV",
        RecordType::PTR => "PTR",
        RecordType::TXT => "TXT",
        RecordType::SOA => "SOA",
        RecordType::NS => "NS",
        RecordType::ANY => "ANY",
        RecordType::AXFR | RecordType::IXFR => "AXFR",
        _ => "other",
    }
}

fn rcode_label(r: ResponseCode) -> &'static str {
    match r {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "other",
    }
}

fn absolute(name: &str) -> Option<Name> {
    let mut n = Name::from_ascii(name).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// The hickory record for one of the oracle's.
fn record(owner: &Name, data: &RData, ttl: u32) -> Option<Record> {
    let rdata = match data {
        RData::A(ip) => HRData::A(A(*ip)),
        RData::Aaaa(ip) => HRData::AAAA(AAAA(*ip)),
        RData::Cname(t) => HRData::CNAME(CNAME(absolute(t)?)),
        RData::Ptr(t) => HRData::PTR(PTR(absolute(t)?)),
        RData::Txt(t) => HRData::TXT(TXT::new(vec![t.clone()])),
        RData::Srv {
            priority,
            weight,
            port,
            target,
        } => HRData::SRV(SRV::new(*priority, *weight, *port, absolute(target)?)),
    };
    Some(Record::from_rdata(owner.clone(), ttl, rdata))
}

/// The SOA of the zone that owns `name` (the cluster zone, or the reverse zone).
fn soa(shared: &Shared, zone: &str, name: &str, ttl: u32) -> Option<Record> {
    let apex = if name == zone || name.ends_with(&format!(".{zone}")) {
        zone.to_owned()
    } else if name.ends_with("in-addr.arpa") {
        "in-addr.arpa".to_owned()
    } else {
        "ip6.arpa".to_owned()
    };
    let soa = SOA::new(
        absolute(&format!("ns.dns.{zone}"))?,
        absolute(&format!("hostmaster.{zone}"))?,
        shared.serial.load(Ordering::Relaxed),
        7200,
        1800,
        86400,
        ttl,
    );
    Some(Record::from_rdata(absolute(&apex)?, ttl, HRData::SOA(soa)))
}

impl Handler {
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut handle: R,
        edns: Option<&Edns>,
        metadata: Metadata,
        [answers, authorities, additionals]: [&[Record]; 3],
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::new(&request.queries, edns);
        let fallback = ResponseInfo::from(Header {
            metadata,
            counts: HeaderCounts::default(),
        });
        match handle
            .send_response(builder.build(
                metadata,
                answers.iter(),
                authorities.iter(),
                std::iter::empty(),
                additionals.iter(),
            ))
            .await
        {
            Ok(info) => info,
            Err(e) => {
                warn!(error = %e, src = %request.src(), "could not send a response");
                fallback
            }
        }
    }

    async fn error<R: ResponseHandler>(
        &self,
        request: &Request,
        handle: R,
        edns: Option<&Edns>,
        code: ResponseCode,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = code;
        self.respond(request, handle, edns, metadata, [&[], &[], &[]])
            .await
    }

    async fn forward<R: ResponseHandler>(
        &self,
        request: &Request,
        handle: R,
        edns: Option<&Edns>,
        name: &str,
        qtype: RecordType,
    ) -> ResponseInfo {
        let shared = &self.0;
        let key: crate::cache::Key = (name.to_owned(), u16::from(qtype), 1);
        if let Some(cache) = &shared.cache {
            if let Some(hit) = cache.get(&key, Instant::now()) {
                shared.metrics.cache_hit();
                let mut metadata = hit.metadata;
                metadata.id = request.metadata.id;
                let [a, n, x] = &hit.sections;
                return self
                    .respond(request, handle, edns, metadata, [a, n, x])
                    .await;
            }
            shared.metrics.cache_miss();
        }
        shared.metrics.forwarded.inc();
        let tcp = !matches!(request.protocol(), Protocol::Udp);
        let reply = match shared
            .forwarder
            .forward(request.as_slice(), name, tcp)
            .await
        {
            Ok(reply) => reply,
            Err(ForwardError::Busy(limit)) => {
                shared.metrics.forward_busy.inc();
                tracing::debug!(%name, limit, "forward refused: too many in flight");
                return self
                    .error(request, handle, edns, ResponseCode::ServFail)
                    .await;
            }
            Err(ForwardError::Loop) => {
                shared.metrics.forward_loops.inc();
                warn!(%name, "every upstream loops back here; refusing");
                return self
                    .error(request, handle, edns, ResponseCode::Refused)
                    .await;
            }
            Err(e) => {
                shared.metrics.forward_errors.inc();
                warn!(%name, error = %e, "forward failed");
                return self
                    .error(request, handle, edns, ResponseCode::ServFail)
                    .await;
            }
        };
        let msg = match Message::from_vec(&reply) {
            Ok(m) => m,
            Err(e) => {
                shared.metrics.forward_errors.inc();
                warn!(%name, error = %e, "upstream reply does not parse");
                return self
                    .error(request, handle, edns, ResponseCode::ServFail)
                    .await;
            }
        };
        if let Some(cache) = &shared.cache {
            cache.put(key, &msg, Instant::now());
        }
        let mut metadata = msg.metadata;
        metadata.id = request.metadata.id;
        self.respond(
            request,
            handle,
            edns,
            metadata,
            [&msg.answers, &msg.authorities, &msg.additionals],
        )
        .await
    }

    /// RRL: `Some(what was done)` when a UDP response to this client is
    /// over the rate (an empty truncated answer, or nothing), `None` to answer.
    async fn limited<R: ResponseHandler>(
        &self,
        request: &Request,
        handle: R,
        edns: Option<&Edns>,
    ) -> Result<R, ResponseInfo> {
        let shared = &self.0;
        let Some(rrl) = &shared.rrl else {
            return Ok(handle);
        };
        if !matches!(request.protocol(), Protocol::Udp) {
            return Ok(handle);
        }
        match rrl.check(request.src().ip(), Instant::now()) {
            crate::guard::Limit::Answer => Ok(handle),
            crate::guard::Limit::Slip => {
                shared.metrics.rrl_slipped.inc();
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.truncation = true;
                metadata.recursion_available = true;
                Err(self
                    .respond(request, handle, edns, metadata, [&[], &[], &[]])
                    .await)
            }
            crate::guard::Limit::Drop => {
                shared.metrics.rrl_dropped.inc();
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::Refused;
                Err(ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                }))
            }
        }
    }

    async fn handle<R: ResponseHandler>(&self, request: &Request, handle: R) -> ResponseInfo {
        let shared = &self.0;
        let mut resp_edns = Edns::new();
        let edns = match request.edns.as_ref() {
            Some(req) => {
                resp_edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
                resp_edns.set_version(0);
                if req.version() > 0 {
                    return self
                        .error(request, handle, Some(&resp_edns), ResponseCode::BADVERS)
                        .await;
                }
                Some(&resp_edns)
            }
            None => None,
        };
        if request.metadata.message_type != MessageType::Query {
            return self
                .error(request, handle, edns, ResponseCode::FormErr)
                .await;
        }
        if request.metadata.op_code != OpCode::Query {
            return self
                .error(request, handle, edns, ResponseCode::NotImp)
                .await;
        }
        let Ok(info) = request.request_info() else {
            shared.metrics.malformed.inc();
            debug!(src = %request.src(), "not exactly one question");
            return self
                .error(request, handle, edns, ResponseCode::FormErr)
                .await;
        };
        let query = info.query.original();
        let qname = query.name().to_ascii();
        let qtype = query.query_type();
        let question = Question::new(qname, rtype(qtype));
        let name = question.normalized_name();
        if !matches!(query.query_class(), DNSClass::IN) {
            return self
                .error(request, handle, edns, ResponseCode::Refused)
                .await;
        }
        let (outcome, first_served) = shared
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .answer_timed(&question);
        let outcome = shared.seam.dns_outcome(&question, outcome);
        if let Some(d) = first_served {
            signpost_runtime::metrics::observe(&shared.metrics.programming_latency, d);
        }
        let (rcode, records) = match outcome {
            DnsOutcome::Forward => {
                if shared.forwarder.is_loop(&name) {
                    shared.metrics.forward_loops.inc();
                    warn!(%name, src = %request.src(), "this server's loop probe came back: an upstream forwards to us; it is skipped for a while");
                    return self
                        .error(request, handle, edns, ResponseCode::Refused)
                        .await;
                }
                if !shared
                    .forward_allow
                    .iter()
                    .any(|c| c.contains(request.src().ip()))
                {
                    shared.metrics.forward_refused.inc();
                    debug!(%name, src = %request.src(), "not forwarding for a client outside --forward-allow");
                    return self
                        .error(request, handle, edns, ResponseCode::Refused)
                        .await;
                }
                let handle = match self.limited(request, handle, edns).await {
                    Ok(h) => h,
                    Err(done) => return done,
                };
                return self.forward(request, handle, edns, &name, qtype).await;
            }
            DnsOutcome::Answer { rcode, records } => (rcode, records),
        };
        let handle = if rcode == Rcode::NxDomain {
            match self.limited(request, handle, edns).await {
                Ok(h) => h,
                Err(done) => return done,
            }
        } else {
            handle
        };
        let negative = rcode == Rcode::NxDomain || (rcode == Rcode::NoError && records.is_empty());
        let code = match rcode {
            Rcode::NoError => ResponseCode::NoError,
            Rcode::NxDomain => ResponseCode::NXDomain,
            Rcode::ServFail => ResponseCode::ServFail,
            Rcode::Refused => ResponseCode::Refused,
        };
        let owner = query.name().clone();
        let mut answers: Vec<Record> = records
            .iter()
            .filter_map(|r| record(&owner, &r.data, shared.ttl))
            .collect();
        if shared.loadbalance
            && answers.len() > 1
            && answers
                .iter()
                .all(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
        {
            let turn = shared.rotor.fetch_add(1, Ordering::Relaxed);
            let n = answers.len();
            answers.rotate_left(turn % n);
        } else if code == ResponseCode::NoError {
            // The same question gets the same answer until the index
            // changes: UDP may send it again from its wire form.
            crate::udp::mark_keepable();
        }
        let mut authorities = Vec::new();
        if negative {
            let zone = &shared.zone;
            let soa = soa(shared, zone, &name, shared.ttl);
            // The SOA of the apex is a record of the apex itself.
            if name == *zone && qtype == RecordType::SOA && code == ResponseCode::NoError {
                answers.extend(soa);
            } else {
                authorities.extend(soa);
            }
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = code;
        metadata.authoritative = code != ResponseCode::ServFail && code != ResponseCode::Refused;
        metadata.recursion_available = true;
        self.respond(
            request,
            handle,
            edns,
            metadata,
            [&answers, &authorities, &[]],
        )
        .await
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let qtype = request
            .request_info()
            .map(|i| qtype_label(i.query.query_type()))
            .unwrap_or("other");
        let info = self.handle(request, response_handle).await;
        self.0.metrics.count_query(
            qtype,
            rcode_label(info.response_code),
            !matches!(request.protocol(), Protocol::Udp),
            request.src().is_ipv6(),
            started.elapsed(),
        );
        info
    }
}

/// The DNS server: UDP loops ([`crate::udp`]) and hickory's TCP listeners.
pub struct Server {
    tcp: hickory_server::Server<Handler>,
    tcp_listeners: bool,
    udp: tokio::task::JoinSet<std::io::Result<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Server {
    /// Waits until a listener fails for good (an error) or all of them
    /// stopped.
    pub async fn block_until_done(&mut self) -> std::io::Result<()> {
        let tcp = async {
            if self.tcp_listeners {
                self.tcp
                    .block_until_done()
                    .await
                    .map_err(std::io::Error::other)
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            r = tcp => r,
            Some(r) = self.udp.join_next() => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(std::io::Error::other(e)),
            },
        }
    }

    /// Stops serving: UDP loops end, TCP connections finish what they read.
    pub async fn shutdown_gracefully(&mut self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        while self.udp.join_next().await.is_some() {}
        self.tcp
            .shutdown_gracefully()
            .await
            .map_err(std::io::Error::other)
    }
}

/// Binds UDP and TCP on every address and serves in the background.
pub async fn serve(
    shared: Arc<Shared>,
    listen: &[SocketAddr],
    tcp_timeout: Duration,
) -> std::io::Result<Server> {
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for addr in listen {
        udp.push(tokio::net::UdpSocket::bind(addr).await?);
        tcp.push(tokio::net::TcpListener::bind(addr).await?);
    }
    Ok(serve_sockets(shared, udp, tcp, tcp_timeout))
}

/// Serves on sockets bound by the caller, in the background: UDP in a
/// thread per socket, TCP and every query that needs the request path on
/// the current Tokio runtime (this must be called within one).
pub fn serve_sockets(
    shared: Arc<Shared>,
    udp: Vec<tokio::net::UdpSocket>,
    tcp: Vec<tokio::net::TcpListener>,
    tcp_timeout: Duration,
) -> Server {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = tokio::task::JoinSet::new();
    for s in udp {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let started = s.into_std().and_then(|s| {
            crate::udp::spawn(
                shared.clone(),
                s,
                stop.clone(),
                tokio::runtime::Handle::current(),
                done,
            )
        });
        loops.spawn(async move {
            started?;
            outcome.await.unwrap_or(Ok(()))
        });
    }
    let tcp_listeners = !tcp.is_empty();
    let mut server = hickory_server::Server::new(Handler(shared));
    for l in tcp {
        server.register_listener(l, tcp_timeout, 64 * 1024);
    }
    Server {
        tcp: server,
        tcp_listeners,
        udp: loops,
        stop,
    }
}
