//! UDP answers sent again from their wire form (`signpost_dns::udp`), over
//! real UDP on loopback: a repeated question gets the client's ID and its
//! own letter case back; a change to the zone is answered at once (never
//! an answer kept from before it, positive or negative); forwarded and
//! NXDOMAIN answers are never kept.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use signpost_dns::forward::Forwarder;
use signpost_dns::server::{Shared, serve_sockets};
use signpost_dns::{Change, ZoneIndex};
use signpost_model::cluster::{ClusterIps, ObjectKey, Service, ServicePort};

fn voy(ip: [u8; 4]) -> Change {
    Change::Service(Service::cluster_ip(
        ObjectKey::new("default", "voy"),
        ClusterIps::Ips(vec![IpAddr::from(ip)]),
        vec![ServicePort::tcp("http", 80, 8080)],
    ))
}

/// An upstream that answers every query NOERROR, authoritative, with no records.
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
            r.metadata.authoritative = true;
            for qq in &q.queries {
                r.add_query(qq.clone());
            }
            let _ = s.send_to(&r.to_vec().unwrap(), from);
        }
    });
    addr
}

fn ask(to: SocketAddr, id: u16, name: &str, qtype: RecordType) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    s.send_to(&m.to_vec().unwrap(), to).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = s.recv_from(&mut buf).expect("no answer");
    Message::from_vec(&buf[..n]).unwrap()
}

fn a_records(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

fn serial(m: &Message) -> Option<u32> {
    m.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(s) => Some(s.serial),
        _ => None,
    })
}

#[test]
fn kept_answers_follow_the_zone_and_echo_each_client() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut index = ZoneIndex::new("cluster.local");
    index.apply(voy([10, 96, 0, 10]));
    index.apply(Change::Synced);
    let shared = Arc::new(Shared::new(
        index,
        5,
        Forwarder::new(vec![upstream()], Duration::from_millis(500)),
    ));
    let udp = rt.block_on(async {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let mut server = serve_sockets(shared.clone(), vec![udp], vec![], Duration::from_secs(2));
        tokio::spawn(async move { server.block_until_done().await });
        addr
    });
    let wire = shared.wire.as_ref().unwrap();
    let name = "voy.default.svc.cluster.local.";

    // Asked once through the request path, then from the wire form.
    let first = ask(udp, 1, name, RecordType::A);
    assert_eq!(a_records(&first), [IpAddr::from([10, 96, 0, 10])]);
    assert_eq!(wire.len(), 1, "the index answer was not kept");
    let hits = shared.metrics.queries("A", "NOERROR");
    let again = ask(udp, 2, "VOY.Default.svc.cluster.local.", RecordType::A);
    assert_eq!(again.metadata.id, 2);
    assert_eq!(
        again.queries[0].name().to_ascii(),
        "VOY.Default.svc.cluster.local.",
        "the client's letter case is echoed"
    );
    assert_eq!(a_records(&again), [IpAddr::from([10, 96, 0, 10])]);
    assert!(again.metadata.authoritative && again.metadata.recursion_desired);
    assert_eq!(
        shared.metrics.queries("A", "NOERROR"),
        hits + 1,
        "not counted"
    );

    // NODATA is kept too, with its SOA.
    let nodata = ask(udp, 3, name, RecordType::AAAA);
    assert!(nodata.answers.is_empty());
    let serial_before = serial(&nodata).expect("no SOA in NODATA");
    assert_eq!(wire.len(), 2);

    // The zone changes: the next answers are the new ones.
    std::thread::sleep(Duration::from_millis(1100));
    {
        let mut index = shared.index.write().unwrap();
        shared.serial.store(
            signpost_dns::server::epoch_secs(),
            std::sync::atomic::Ordering::Relaxed,
        );
        index.apply(voy([10, 96, 0, 11]));
    }
    let moved = ask(udp, 4, name, RecordType::A);
    assert_eq!(
        a_records(&moved),
        [IpAddr::from([10, 96, 0, 11])],
        "an answer kept from before the change"
    );
    let nodata = ask(udp, 5, name, RecordType::AAAA);
    assert!(
        serial(&nodata).unwrap() > serial_before,
        "a negative answer kept from before the change"
    );
    {
        let mut index = shared.index.write().unwrap();
        index.apply(Change::ServiceDeleted(ObjectKey::new("default", "voy")));
    }
    let gone = ask(udp, 6, name, RecordType::A);
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);

    // Neither NXDOMAIN nor a forwarded answer (even an authoritative one) is kept.
    let kept = wire.len();
    let nx = ask(udp, 7, "nope.default.svc.cluster.local.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    let fwd = ask(udp, 8, "example.org.", RecordType::A);
    assert_eq!(fwd.metadata.response_code, ResponseCode::NoError);
    assert_eq!(wire.len(), kept, "an NXDOMAIN or forwarded answer was kept");
}
