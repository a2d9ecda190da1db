//! Not an open resolver (issue 13, finding 10), over real UDP and TCP on
//! loopback: outside names are forwarded only for clients in the allow-list
//! (127.0.0.1 here; a query from 127.0.0.2 is refused, while cluster names
//! are answered to both), and a flood of NXDOMAIN answers to one client is
//! rate limited — over the rate, half slip out truncated and half are
//! dropped — while cluster answers and TCP are not limited.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use signpost_dns::forward::Forwarder;
use signpost_dns::server::{Shared, serve_sockets};
use signpost_dns::{Change, ZoneIndex};
use signpost_model::cluster::{ClusterIps, ObjectKey, Service, ServicePort};

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// An upstream that answers every query NOERROR with no records.
fn upstream() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            r.metadata.recursion_available = true;
            for qq in &q.queries {
                r.add_query(qq.clone());
            }
            let _ = s.send_to(&r.to_vec().unwrap(), from);
        }
    });
    addr
}

/// Sends every query from `from`, then collects replies until none comes
/// for 300 ms: the reply per id (`None`: no reply).
fn exchange(from: &str, to: SocketAddr, queries: &[(u16, &str)]) -> HashMap<u16, Option<Message>> {
    let s = UdpSocket::bind((from, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for (id, name) in queries {
        s.send_to(&query(*id, name), to).unwrap();
    }
    let mut out: HashMap<u16, Option<Message>> =
        queries.iter().map(|(id, _)| (*id, None)).collect();
    let mut buf = [0u8; 4096];
    while let Ok((n, _)) = s.recv_from(&mut buf) {
        let m = Message::from_vec(&buf[..n]).unwrap();
        out.insert(m.metadata.id, Some(m));
    }
    out
}

fn tcp_exchange(to: SocketAddr, id: u16, name: &str) -> Message {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(to).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let q = query(id, name);
    c.write_all(&u16::try_from(q.len()).unwrap().to_be_bytes())
        .unwrap();
    c.write_all(&q).unwrap();
    let mut len = [0u8; 2];
    c.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    c.read_exact(&mut body).unwrap();
    Message::from_vec(&body).unwrap()
}

#[test]
fn forwarding_is_for_allowed_clients_and_nxdomain_floods_are_rate_limited() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut index = ZoneIndex::new("cluster.local");
    index.apply(Change::Service(Service::cluster_ip(
        ObjectKey::new("default", "voy"),
        ClusterIps::Ips(vec![IpAddr::from([10, 96, 0, 10])]),
        vec![ServicePort::tcp("http", 80, 8080)],
    )));
    index.apply(Change::Synced);
    let shared = Arc::new(
        Shared::new(
            index,
            5,
            Forwarder::new(vec![upstream()], Duration::from_millis(500)),
        )
        .with_forward_allow(vec!["127.0.0.1/32".parse().unwrap()])
        .with_rrl(20),
    );
    let (udp, tcp) = rt.block_on(async {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let mut server =
            serve_sockets(shared.clone(), vec![udp], vec![tcp], Duration::from_secs(2));
        tokio::spawn(async move { server.block_until_done().await });
        addrs
    });
    let code = |m: &Option<Message>| m.as_ref().map(|m| m.metadata.response_code);

    // The allow-list: 127.0.0.2 is refused outside names, not cluster ones.
    let outside = exchange(
        "127.0.0.2",
        udp,
        &[(1, "example.org."), (2, "voy.default.svc.cluster.local.")],
    );
    assert_eq!(
        code(&outside[&1]),
        Some(ResponseCode::Refused),
        "forwarded for a client outside the allow-list"
    );
    assert_eq!(code(&outside[&2]), Some(ResponseCode::NoError));
    let inside = exchange("127.0.0.1", udp, &[(3, "example.org.")]);
    assert_eq!(
        code(&inside[&3]),
        Some(ResponseCode::NoError),
        "the allowed client is forwarded"
    );
    assert_eq!(shared.metrics.forward_refused.get(), 1);

    // A flood of 120 NXDOMAIN queries from one client at 20 a second.
    let flood: Vec<(u16, &str)> = (100..220)
        .map(|id| (id, "nope.default.svc.cluster.local."))
        .collect();
    let got = exchange("127.0.0.1", udp, &flood);
    let answered = got
        .values()
        .filter(|m| {
            m.as_ref()
                .is_some_and(|m| m.metadata.response_code == ResponseCode::NXDomain)
        })
        .count();
    let slipped = got
        .values()
        .filter(|m| {
            m.as_ref().is_some_and(|m| {
                m.metadata.truncation
                    && m.answers.is_empty()
                    && m.metadata.response_code == ResponseCode::NoError
            })
        })
        .count();
    let dropped = got.values().filter(|m| m.is_none()).count();
    assert!(
        (20..=30).contains(&answered),
        "NXDOMAIN answered {answered} of 120 at 20/s"
    );
    assert!(
        slipped >= 40 && dropped >= 40,
        "slipped {slipped}, dropped {dropped}"
    );
    assert_eq!(answered + slipped + dropped, 120);
    assert_eq!(shared.metrics.rrl_slipped.get() as usize, slipped);
    assert_eq!(shared.metrics.rrl_dropped.get() as usize, dropped);

    // Cluster answers are not limited, and TCP is never limited.
    let names: Vec<(u16, &str)> = (300..400)
        .map(|id| (id, "voy.default.svc.cluster.local."))
        .collect();
    let ok = exchange("127.0.0.1", udp, &names);
    assert!(
        ok.values().all(|m| code(m) == Some(ResponseCode::NoError)),
        "a cluster answer was limited"
    );
    for id in 500..505 {
        let m = tcp_exchange(tcp, id, "nope.default.svc.cluster.local.");
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "TCP was limited"
        );
    }
}
