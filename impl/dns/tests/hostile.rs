//! Hostile input on the whole request path (hickory's decoder, our handler,
//! the encoder), over real UDP and TCP sockets on loopback: arbitrary bytes,
//! mutated queries, and well-formed but strange queries (names of 255
//! bytes, compression loops, unknown types and classes, odd counts, opcodes,
//! EDNS versions, the response bit). Every reply must parse and be a
//! response; no task may panic; the server answers a normal query after
//! every 10,000 inputs and at the end.
//!
//! `SIGNPOST_HOSTILE_INPUTS` sets how many inputs (default 100,000;
//! the closing note of #4 quotes a run of several million).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use signpost_dns::forward::Forwarder;
use signpost_dns::server::{Shared, serve_sockets};
use signpost_dns::{Change, ZoneIndex};
use signpost_model::cluster::{ClusterIps, ObjectKey, Service, ServicePort};

static PANICS: AtomicU64 = AtomicU64::new(0);

/// xorshift64*: deterministic, fast, good enough to make garbage.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 24) as u8
    }
}

fn service(name: &str, ip: [u8; 4]) -> Service {
    Service::cluster_ip(
        ObjectKey::new("default", name),
        ClusterIps::Ips(vec![IpAddr::from(ip)]),
        vec![ServicePort::tcp("http", 80, 8080)],
    )
}

fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

/// One hostile input.
fn input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(8) {
        // Arbitrary bytes.
        0 | 1 => (0..rng.below(600)).map(|_| rng.byte()).collect(),
        // A valid query with bytes flipped, cut or appended.
        2 | 3 => {
            let mut q = seeds[rng.below(seeds.len() as u64) as usize].clone();
            for _ in 0..=rng.below(6) {
                let i = rng.below(q.len() as u64) as usize;
                match rng.below(3) {
                    0 => q[i] ^= 1 << rng.below(8),
                    1 => q[i] = rng.byte(),
                    _ => q.truncate(i.max(1)),
                }
            }
            if rng.below(4) == 0 {
                q.extend((0..rng.below(40)).map(|_| rng.byte()));
            }
            q
        }
        // A name that points at itself (compression loop) or forward.
        4 => {
            let mut q = vec![rng.byte(), rng.byte(), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            match rng.below(3) {
                0 => q.extend([0xc0, 12]),
                1 => q.extend([3, b'a', b'b', b'c', 0xc0, 12]),
                _ => q.extend([0xc0, 0xff]),
            }
            q.extend([0, 1, 0, 1]);
            q
        }
        // Long names: many labels up to and past the 255-byte limit.
        5 => {
            let mut q = vec![rng.byte(), rng.byte(), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            let labels = 1 + rng.below(10);
            for _ in 0..labels {
                let len = 1 + rng.below(63) as u8;
                q.push(len);
                q.extend((0..len).map(|_| b'a' + (rng.byte() % 26)));
            }
            q.extend(b"\x07cluster\x05local\x00");
            q.extend(rng.byte().to_be_bytes());
            q.extend([rng.byte(), 0, rng.byte()]);
            q
        }
        // Well-formed header, strange fields: counts, opcode, QR, types, classes.
        6 => {
            let mut q = seeds[rng.below(seeds.len() as u64) as usize].clone();
            q[2] = rng.byte(); // QR, opcode, AA, TC, RD
            q[3] = rng.byte(); // RA, Z, AD, CD, rcode
            if rng.below(2) == 0 {
                q[4] = rng.byte();
                q[5] = rng.byte(); // qdcount
            }
            if rng.below(2) == 0 {
                q[10] = rng.byte();
                q[11] = rng.byte(); // arcount
            }
            let n = q.len();
            q[n - 4] = rng.byte();
            q[n - 3] = rng.byte(); // type
            q[n - 2] = rng.byte();
            q[n - 1] = rng.byte(); // class
            q
        }
        // EDNS with random version, payload and options.
        _ => {
            let mut m = Message::new(rng.next() as u16, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(
                Name::from_ascii("voy.default.svc.cluster.local.").unwrap(),
                RecordType::from(rng.next() as u16),
            ));
            let mut e = Edns::new();
            e.set_max_payload(rng.next() as u16);
            e.set_version(if rng.below(2) == 0 { 0 } else { rng.byte() });
            m.set_edns(e);
            let mut v = m.to_vec().unwrap();
            if rng.below(2) == 0 {
                v.extend((0..rng.below(30)).map(|_| rng.byte()));
            }
            v
        }
    }
}

fn check_reply(reply: &[u8]) {
    let m = Message::from_vec(reply)
        .unwrap_or_else(|e| panic!("a reply that does not parse ({e}): {reply:02x?}"));
    assert_eq!(m.metadata.message_type, MessageType::Response);
}

fn assert_answers(sock: &std::net::UdpSocket, server: SocketAddr) {
    let q = query(0xabcd, "voy.default.svc.cluster.local.", RecordType::A);
    sock.send_to(&q, server).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "the server stopped answering");
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        check_reply(&buf[..n]);
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.metadata.id == 0xabcd {
            assert_eq!(m.answers.len(), 1, "{m:?}");
            return;
        }
    }
}

#[test]
fn hostile_input_never_breaks_the_server() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        prev(info);
    }));
    let inputs: u64 = std::env::var("SIGNPOST_HOSTILE_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut index = ZoneIndex::new("cluster.local");
    index.apply(Change::Service(service("voy", [10, 96, 0, 10])));
    index.apply(Change::Service(service("web", [10, 96, 0, 11])));
    index.apply(Change::Synced);
    // Forwarded names go to a port nobody listens on: quick failures.
    let shared = Arc::new(Shared::new(
        index,
        5,
        Forwarder::new(
            vec!["127.0.0.1:9".parse().unwrap()],
            Duration::from_millis(50),
        ),
    ));
    let (udp_addr, tcp_addr) = rt.block_on(async {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let server = serve_sockets(shared.clone(), vec![udp], vec![tcp], Duration::from_secs(2));
        // Keep the server alive for the whole test.
        tokio::spawn(async move {
            let mut server = server;
            let _ = server.block_until_done().await;
        });
        addrs
    });

    let seeds: Vec<Vec<u8>> = [
        ("voy.default.svc.cluster.local.", RecordType::A),
        ("_http._tcp.voy.default.svc.cluster.local.", RecordType::SRV),
        ("10.0.96.10.in-addr.arpa.", RecordType::PTR),
        ("dns-version.cluster.local.", RecordType::TXT),
        ("cluster.local.", RecordType::AXFR),
        ("voy.default.svc.cluster.local.", RecordType::ANY),
        ("example.org.", RecordType::A),
    ]
    .iter()
    .map(|(n, t)| query(1, n, *t))
    .collect();

    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut rng = Rng(0x5157_0057_2026_1129);
    let mut replies = 0u64;
    let mut buf = [0u8; 65535];
    let started = Instant::now();
    let window = 256;
    let mut sent = 0u64;
    while sent < inputs {
        for _ in 0..window.min(inputs - sent) {
            sock.send_to(&input(&mut rng, &seeds), udp_addr).unwrap();
            sent += 1;
        }
        // Drain what came back; a drop is allowed, a malformed reply is not.
        sock.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            check_reply(&buf[..n]);
            replies += 1;
        }
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if sent % 10_000 < window {
            assert_answers(&sock, udp_addr);
        }
    }
    // TCP: garbage frames, short frames, frames that lie about their length.
    for i in 0..200u64 {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(tcp_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let body = input(&mut rng, &seeds);
        let len = if i % 3 == 0 {
            rng.next() as u16
        } else {
            body.len() as u16
        };
        let _ = s.write_all(&len.to_be_bytes());
        let _ = s.write_all(&body);
        let mut l = [0u8; 2];
        if s.read_exact(&mut l).is_ok() {
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(l))];
            if s.read_exact(&mut reply).is_ok() {
                check_reply(&reply);
            }
        }
    }
    assert_answers(&sock, udp_addr);
    let elapsed = started.elapsed();
    eprintln!(
        "hostile input: {sent} UDP inputs + 200 TCP in {elapsed:.1?} ({:.0}/s), {replies} replies, all well-formed; {} malformed requests counted",
        sent as f64 / elapsed.as_secs_f64(),
        shared.metrics.malformed.get()
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a task panicked");
    assert!(
        replies > sent / 10,
        "only {replies} replies to {sent} inputs"
    );
}
