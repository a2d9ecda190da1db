//! Forwarding names that are not the cluster's (DNS-19) to the upstream
//! resolvers, over the protocol the client used.
//!
//! - **Bounded**: at most `limit` forwards are in flight; one more is
//!   answered SERVFAIL at once (a blackholed upstream at any query rate
//!   holds `limit` waiters, not one per query).
//! - **One UDP socket per upstream**, its replies routed to the waiting
//!   forward by query ID; a reply is taken only if it is a response (QR) to
//!   the same question, so a stray or spoofed datagram neither answers nor
//!   ends a forward.
//! - **Loops are found by probes**, as CoreDNS's `loop` plugin does: a query
//!   for a random two-label name goes to each upstream at start, every
//!   [`PROBE_EVERY`] and whenever the in-flight bound is hit. Such a name
//!   reaches this server only if an upstream forwards back to it; that
//!   upstream is then skipped for [`LOOP_QUARANTINE`]. Ordinary traffic
//!   can never look like a loop (an earlier design matched client query
//!   IDs against our own forwards and, at a few hundred queries per second
//!   of one name, quarantined healthy upstreams by ID collision).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Notify, OnceCell, Semaphore, oneshot};

/// How long an upstream found looping is skipped.
pub const LOOP_QUARANTINE: Duration = Duration::from_secs(30);
/// How often every upstream is probed for a loop.
pub const PROBE_EVERY: Duration = Duration::from_secs(10);
/// Default bound on forwards in flight.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Receive buffer asked for each upstream's UDP socket.
const RECV_BUFFER: usize = 1 << 20;

/// Why a forward did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream is configured.
    #[error("no upstream resolvers configured")]
    NoUpstream,
    /// Every upstream loops back to this server.
    #[error("every upstream forwards back to this server (loop)")]
    Loop,
    /// The bound on forwards in flight is reached.
    #[error("{0} forwards in flight already")]
    Busy(usize),
    /// Every upstream failed.
    #[error("every upstream failed; last error: {0}")]
    Failed(io::Error),
}

/// A forward waiting for its reply: the question it asked, lower-cased.
struct Waiting {
    question: Vec<u8>,
    reply: oneshot::Sender<Vec<u8>>,
}

/// One upstream's UDP socket and the forwards waiting on it, by query ID.
struct Channel {
    socket: Arc<UdpSocket>,
    waiting: Arc<Mutex<HashMap<u16, Waiting>>>,
}

impl Channel {
    async fn open(upstream: SocketAddr) -> io::Result<Channel> {
        let bind: SocketAddr = if upstream.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        // A burst of replies to one socket must not overflow its receive
        // buffer while the routing task is busy: ask for 1 MiB (the kernel
        // caps it at net.core.rmem_max).
        let raw = socket2::Socket::new(
            socket2::Domain::for_address(bind),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if let Err(e) = raw.set_recv_buffer_size(RECV_BUFFER) {
            tracing::warn!(%upstream, error = %e, "could not enlarge the forward socket's receive buffer");
        }
        raw.set_nonblocking(true)?;
        raw.bind(&bind.into())?;
        let socket = Arc::new(UdpSocket::from_std(raw.into())?);
        socket.connect(upstream).await?;
        let waiting: Arc<Mutex<HashMap<u16, Waiting>>> = Arc::default();
        let (s, w) = (socket.clone(), waiting.clone());
        // One receive buffer per upstream, not one per forward.
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let n = match s.recv(&mut buf).await {
                    Ok(n) => n,
                    // ICMP errors surface here on a connected socket; the
                    // waiting forwards time out on their own.
                    Err(_) => continue,
                };
                let reply = &buf[..n];
                if n < 12 {
                    continue;
                }
                let id = u16::from_be_bytes([reply[0], reply[1]]);
                let mut waiting = w.lock().unwrap_or_else(|e| e.into_inner());
                let answers = waiting
                    .get(&id)
                    .is_some_and(|f| is_response_to(reply, &f.question));
                if answers && let Some(f) = waiting.remove(&id) {
                    let _ = f.reply.send(reply.to_vec());
                }
            }
        });
        Ok(Channel { socket, waiting })
    }
}

/// One upstream.
struct Upstream {
    addr: SocketAddr,
    udp: OnceCell<Channel>,
}

/// The upstream resolvers, the forwards in flight to them and the loop probes.
pub struct Forwarder {
    upstreams: Vec<Upstream>,
    timeout: Duration,
    limit: usize,
    in_flight: Semaphore,
    /// Probe names sent and not yet seen, with the upstream each went to.
    probes: Mutex<HashMap<String, (SocketAddr, Instant)>>,
    looping: Mutex<HashMap<SocketAddr, Instant>>,
    probe_now: Notify,
    seed: std::collections::hash_map::RandomState,
    counter: AtomicU64,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("upstreams", &self.upstreams())
            .field("limit", &self.limit)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// Reads the `nameserver` lines of a resolv.conf (port 53).
pub fn upstreams_from_resolv_conf(path: &Path) -> io::Result<Vec<SocketAddr>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        // A zone index (`fe80::1%eth0`) is not supported: such lines are skipped.
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect())
}

/// The question section of a one-question DNS message, names lower-cased;
/// `None` if it has not exactly one uncompressed question.
pub fn question(msg: &[u8]) -> Option<Vec<u8>> {
    if msg.len() < 12 || msg[4..6] != [0, 1] {
        return None;
    }
    let i = crate::udp::name_end(msg)?;
    let end = i + 4;
    (end <= msg.len()).then(|| msg[12..end].to_ascii_lowercase())
}

/// Whether `reply` is a response (QR set) to `question`.
fn is_response_to(reply: &[u8], question_bytes: &[u8]) -> bool {
    reply.len() >= 12 && reply[2] & 0x80 != 0 && question(reply).as_deref() == Some(question_bytes)
}

fn normalized(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Forwarder {
    /// A forwarder to `upstreams`, tried in order, each for at most
    /// `timeout`, with at most [`MAX_IN_FLIGHT`] forwards in flight.
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Self::with_limit(upstreams, timeout, MAX_IN_FLIGHT)
    }

    /// The same with another bound on forwards in flight.
    pub fn with_limit(upstreams: Vec<SocketAddr>, timeout: Duration, limit: usize) -> Self {
        Forwarder {
            upstreams: upstreams
                .into_iter()
                .map(|addr| Upstream {
                    addr,
                    udp: OnceCell::new(),
                })
                .collect(),
            timeout,
            limit,
            in_flight: Semaphore::new(limit),
            probes: Mutex::new(HashMap::new()),
            looping: Mutex::new(HashMap::new()),
            probe_now: Notify::new(),
            seed: Default::default(),
            counter: AtomicU64::new(0),
        }
    }

    /// The upstreams.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.upstreams.iter().map(|u| u.addr).collect()
    }

    /// Forwards in flight now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.in_flight.available_permits()
    }

    /// Whether a query for `name` arriving now is one of this server's loop
    /// probes: an upstream forwarded it back here. That upstream is skipped
    /// for [`LOOP_QUARANTINE`]. Any other name is never a loop.
    pub fn is_loop(&self, name: &str) -> bool {
        let probe = self
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&normalized(name));
        match probe {
            Some((upstream, _)) => {
                self.looping
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(upstream, Instant::now());
                true
            }
            None => false,
        }
    }

    fn random(&self) -> u64 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.seed.hash_one(n)
    }

    fn usable(&self) -> Vec<&Upstream> {
        let mut looping = self.looping.lock().unwrap_or_else(|e| e.into_inner());
        looping.retain(|_, since| since.elapsed() < LOOP_QUARANTINE);
        self.upstreams
            .iter()
            .filter(|u| !looping.contains_key(&u.addr))
            .collect()
    }

    /// Sends `query` (a whole DNS message) for `name` to the usable
    /// upstreams in turn and returns the first reply that answers its
    /// question, its id set back to the query's. `tcp` picks the transport.
    pub async fn forward(
        &self,
        query: &[u8],
        _name: &str,
        tcp: bool,
    ) -> Result<Vec<u8>, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            // A storm (a loop not yet probed, a dead upstream): probe now.
            self.probe_now.notify_one();
            return Err(ForwardError::Busy(self.limit));
        };
        let usable = self.usable();
        if usable.is_empty() {
            return Err(ForwardError::Loop);
        }
        let asked = question(query).ok_or_else(|| {
            ForwardError::Failed(io::Error::other("the query has not exactly one question"))
        })?;
        let client_id = [query[0], query[1]];
        let mut last = io::Error::other("not tried");
        for upstream in usable {
            let result = if tcp {
                self.exchange_tcp(upstream.addr, query, &asked).await
            } else {
                self.exchange_udp(upstream, query, &asked).await
            };
            match result {
                Ok(mut reply) => {
                    reply[..2].copy_from_slice(&client_id);
                    return Ok(reply);
                }
                Err(e) => last = io::Error::new(e.kind(), format!("{}: {e}", upstream.addr)),
            }
        }
        Err(ForwardError::Failed(last))
    }

    async fn exchange_udp(
        &self,
        upstream: &Upstream,
        query: &[u8],
        asked: &[u8],
    ) -> io::Result<Vec<u8>> {
        let ch = upstream
            .udp
            .get_or_try_init(|| Channel::open(upstream.addr))
            .await?;
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut waiting = ch.waiting.lock().unwrap_or_else(|e| e.into_inner());
            // A free ID (at most `limit` are taken, of 65,536).
            let id = loop {
                let id = (self.random() & 0xffff) as u16;
                if !waiting.contains_key(&id) {
                    break id;
                }
            };
            waiting.insert(
                id,
                Waiting {
                    question: asked.to_vec(),
                    reply: tx,
                },
            );
            id
        };
        let mut msg = query.to_vec();
        msg[..2].copy_from_slice(&id.to_be_bytes());
        let result = async {
            ch.socket.send(&msg).await?;
            match tokio::time::timeout(self.timeout, rx).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(io::Error::other("reply channel closed")),
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            }
        }
        .await;
        ch.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        result
    }

    async fn exchange_tcp(
        &self,
        upstream: SocketAddr,
        query: &[u8],
        asked: &[u8],
    ) -> io::Result<Vec<u8>> {
        let id = (self.random() & 0xffff) as u16;
        let mut msg = query.to_vec();
        msg[..2].copy_from_slice(&id.to_be_bytes());
        let exchange = async {
            let mut stream = TcpStream::connect(upstream).await?;
            let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("query too long"))?;
            let mut framed = Vec::with_capacity(msg.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&msg);
            stream.write_all(&framed).await?;
            let n = stream.read_u16().await?;
            let mut buf = vec![0u8; usize::from(n)];
            stream.read_exact(&mut buf).await?;
            Ok::<_, io::Error>(buf)
        };
        let reply = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out"))??;
        if reply[..2.min(reply.len())] != id.to_be_bytes() || !is_response_to(&reply, asked) {
            return Err(io::Error::other("the reply does not answer the query"));
        }
        Ok(reply)
    }

    /// A probe query (HINFO for a random two-label name) and its name.
    fn probe_query(&self) -> (String, Vec<u8>) {
        let name = format!("{:016x}.{:016x}", self.random(), self.random());
        let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 13, 0, 1]);
        (name, q)
    }

    /// Sends one loop probe to every upstream (not through the in-flight
    /// bound) and waits for their replies or timeouts.
    pub async fn probe_loops(&self) {
        {
            let mut probes = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            probes.retain(|_, (_, sent)| sent.elapsed() < LOOP_QUARANTINE);
        }
        let sends = self.upstreams.iter().map(|u| {
            let (name, q) = self.probe_query();
            self.probes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name, (u.addr, Instant::now()));
            async move {
                let asked = question(&q).unwrap_or_default();
                let _ = self.exchange_udp(u, &q, &asked).await;
            }
        });
        futures::future::join_all(sends).await;
    }

    /// Probes every upstream for loops now, then every [`PROBE_EVERY`] and
    /// whenever the in-flight bound is hit (at most once a second). Runs forever.
    pub async fn run_loop_probes(&self) {
        if self.upstreams.is_empty() {
            return;
        }
        loop {
            self.probe_loops().await;
            tokio::select! {
                () = tokio::time::sleep(PROBE_EVERY) => {}
                () = self.probe_now.notified() => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// The distinct upstreams, in order.
pub fn dedup(upstreams: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = HashSet::new();
    upstreams.into_iter().filter(|u| seen.insert(*u)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_read() {
        let dir = std::env::temp_dir().join(format!("signpost-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("resolv.conf");
        std::fs::write(
            &p,
            "# c\nsearch a b\nnameserver 10.0.0.2\nnameserver fd00::53\nnameserver fe80::1%eth0\noptions ndots:5\n",
        )
        .unwrap();
        let got = upstreams_from_resolv_conf(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got,
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn a_forward_to_nobody_fails_cleanly() {
        let f = Forwarder::new(Vec::new(), Duration::from_millis(100));
        let q = query(7, "example.org");
        assert!(matches!(
            f.forward(&q, "example.org", false).await,
            Err(ForwardError::NoUpstream)
        ));
    }

    /// A query for `name`, type A, with id `id`.
    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    /// The reply to `q`: QR set, NOERROR, no records.
    fn reply_to(q: &[u8]) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] |= 0x80;
        r
    }

    /// A real UDP DNS responder on loopback: answers every query after
    /// `delay`, first sending `decoys` replies that must not be taken (QR
    /// unset; another question). Returns its address.
    async fn responder(delay: Duration, decoys: bool) -> SocketAddr {
        // Room for a burst of hundreds of queries (the default buffer holds
        // about 256 small datagrams on loopback).
        let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        raw.set_recv_buffer_size(RECV_BUFFER).unwrap();
        raw.set_nonblocking(true).unwrap();
        raw.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let s = Arc::new(UdpSocket::from_std(raw.into()).unwrap());
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, from) = s.recv_from(&mut buf).await.unwrap();
                let q = buf[..n].to_vec();
                let s = s.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if decoys {
                        // Not a response; then a response to another question.
                        let _ = s.send_to(&q, from).await;
                        let mut other = reply_to(&query(0, "elsewhere.example"));
                        other[..2].copy_from_slice(&q[..2]);
                        let _ = s.send_to(&other, from).await;
                    }
                    let _ = s.send_to(&reply_to(&q), from).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn many_clients_asking_one_name_are_never_taken_for_a_loop() {
        // Hundreds of forwards of one name in flight while clients keep
        // asking it with every possible query ID: the old design matched
        // (client ID, name) against its own forwards, so some of these
        // collided, the upstream was quarantined and every outside name
        // was refused for 30 s.
        let up = responder(Duration::from_millis(200), false).await;
        let f = Arc::new(Forwarder::new(vec![up], Duration::from_secs(2)));
        let mut forwards = Vec::new();
        for i in 0..400u16 {
            let f = f.clone();
            forwards.push(tokio::spawn(async move {
                f.forward(&query(i, "example.org"), "example.org.", false)
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(f.in_flight() > 0);
        // The server asks `is_loop` of every query it receives.
        for _ in 0..1000 {
            assert!(!f.is_loop("example.org."));
            tokio::task::yield_now().await;
        }
        let mut results = Vec::new();
        for h in forwards {
            results.push(h.await.unwrap());
        }
        let failed = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(
            failed,
            0,
            "{failed} of 400 not answered: {:?}",
            results.iter().find(|r| r.is_err())
        );
        for (i, reply) in results.into_iter().enumerate() {
            let reply = reply.expect("answered");
            assert_eq!(
                u16::from_be_bytes([reply[0], reply[1]]),
                i as u16,
                "the client's id comes back"
            );
        }
        assert!(
            f.forward(&query(1, "example.com"), "example.com.", false)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_blackholed_upstream_holds_at_most_the_bound_and_the_rest_fail_at_once() {
        // An upstream that never answers.
        let hole = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let f = Arc::new(Forwarder::with_limit(
            vec![hole.local_addr().unwrap()],
            Duration::from_millis(500),
            50,
        ));
        let mut forwards = Vec::new();
        for i in 0..500u16 {
            let f = f.clone();
            forwards.push(tokio::spawn(async move {
                f.forward(&query(i, "slow.example"), "slow.example.", false)
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(f.in_flight(), 50, "in flight: {}", f.in_flight());
        let mut busy = 0;
        let mut timed_out = 0;
        for h in forwards {
            match h.await.unwrap() {
                Err(ForwardError::Busy(50)) => busy += 1,
                Err(ForwardError::Failed(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    timed_out += 1
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((busy, timed_out), (450, 50));
        assert_eq!(f.in_flight(), 0);
    }

    #[tokio::test]
    async fn only_a_response_to_the_same_question_is_taken() {
        let up = responder(Duration::from_millis(10), true).await;
        let f = Forwarder::new(vec![up], Duration::from_secs(2));
        let q = query(0xbeef, "example.org");
        let reply = f.forward(&q, "example.org.", false).await.unwrap();
        assert_eq!(reply, {
            let mut r = reply_to(&q);
            r[..2].copy_from_slice(&0xbeef_u16.to_be_bytes());
            r
        });
    }

    #[tokio::test]
    async fn a_probe_that_comes_back_quarantines_its_upstream() {
        // An "upstream" that forwards back to us: every query it receives
        // is checked as if it had arrived at this server.
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up = s.local_addr().unwrap();
        let f = Arc::new(Forwarder::new(vec![up], Duration::from_millis(300)));
        let (seen_tx, seen_rx) = oneshot::channel();
        let g = f.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            let (n, _) = s.recv_from(&mut buf).await.unwrap();
            // The probe's name, as the server would read it.
            let q = question(&buf[..n]).unwrap();
            let mut labels = Vec::new();
            let mut i = 0;
            while q[i] != 0 {
                let len = usize::from(q[i]);
                labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + len]).into_owned());
                i += 1 + len;
            }
            let _ = seen_tx.send(g.is_loop(&format!("{}.", labels.join("."))));
        });
        f.probe_loops().await;
        assert!(seen_rx.await.unwrap(), "the probe was recognised");
        assert!(matches!(
            f.forward(&query(1, "example.org"), "example.org.", false)
                .await,
            Err(ForwardError::Loop)
        ));
    }

    #[test]
    fn questions_are_read_case_insensitively_and_garbage_is_none() {
        assert_eq!(
            question(&query(1, "Example.ORG")),
            question(&query(2, "example.org"))
        );
        assert_eq!(question(&[0u8; 11]), None);
        let mut two = query(1, "a.b");
        two[5] = 2;
        assert_eq!(question(&two), None);
        let mut cut = query(1, "example.org");
        cut.truncate(20);
        assert_eq!(question(&cut), None);
    }
}
