//! The messages byte for byte, without root or a kernel: facts of the IPVS
//! ABI (16-byte addresses, network-order ports, 8-byte flags with a mask,
//! the two netmask encodings, required attributes) and parse round trips.

use std::net::IpAddr;

use ipvs_genl::message::{Attr, DestAttr, IpvsMessage, SvcAttr};
use ipvs_genl::{Destination, Family, Forward, Protocol, Service, ServiceKey, build};
use netlink_packet_core::{Emitable, ParseableParametrized};
use netlink_packet_generic::GenlHeader;

const REQUEST_ACK: u16 = 0x1 | 0x4;

fn tcp(addr: &str, port: u16) -> ServiceKey {
    ServiceKey::Tuple {
        addr: addr.parse().unwrap(),
        protocol: Protocol::Tcp,
        port,
    }
}

fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::new();
    out.extend((len as u16).to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(value);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

#[test]
fn new_service_is_laid_out_as_the_kernel_reads_it() {
    let svc = Service::new(tcp("10.96.0.10", 80)).persistent(10800);
    let bytes = build::encode(build::new_service(&svc), 0x20, REQUEST_ACK, 1);

    let mut inner = Vec::new();
    inner.extend(attr(1, &2u16.to_ne_bytes())); // AF_INET
    inner.extend(attr(2, &6u16.to_ne_bytes())); // TCP
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&[10, 96, 0, 10]);
    inner.extend(attr(3, &addr)); // 16 bytes even for IPv4
    inner.extend(attr(4, &[0x00, 0x50])); // port 80, network order
    inner.extend(attr(6, b"rr\0"));
    let mut flags = Vec::new();
    flags.extend(1u32.to_ne_bytes()); // PERSISTENT
    flags.extend(u32::MAX.to_ne_bytes()); // mask
    inner.extend(attr(7, &flags)); // 8 bytes: {flags, mask}
    inner.extend(attr(8, &10800u32.to_ne_bytes()));
    inner.extend(attr(9, &[0xff, 0xff, 0xff, 0xff])); // /32, network order
    let outer = attr(0x8001, &inner); // nested service

    let mut want = Vec::new();
    let total = 16 + 4 + outer.len();
    want.extend((total as u32).to_ne_bytes());
    want.extend(0x20u16.to_ne_bytes()); // family id
    want.extend(REQUEST_ACK.to_ne_bytes());
    want.extend(1u32.to_ne_bytes()); // seq
    want.extend(0u32.to_ne_bytes()); // port id
    want.extend([1, 1, 0, 0]); // cmd NEW_SERVICE, version 1
    want.extend(outer);
    assert_eq!(bytes, want);
    assert_eq!(bytes.len(), 104);
}

#[test]
fn ipv4_netmask_is_a_network_order_mask() {
    let mut s = Service::new(tcp("10.96.0.10", 80)).persistent(60);
    s.netmask_prefix = 24;
    assert_eq!(s.netmask_raw(), [255, 255, 255, 0]);
    s.netmask_prefix = 0;
    assert_eq!(s.netmask_raw(), [0, 0, 0, 0]);
}

#[test]
fn ipv6_netmask_is_a_host_order_prefix_length() {
    let s = Service::new(tcp("fd00:10:96::a", 80)).persistent(60);
    assert_eq!(s.netmask_raw(), 128u32.to_ne_bytes());
    let attrs = s.attrs();
    assert!(attrs.contains(&SvcAttr::Af(10)));
    assert!(attrs.contains(&SvcAttr::Netmask(128u32.to_ne_bytes())));
    let addr: std::net::Ipv6Addr = "fd00:10:96::a".parse().unwrap();
    assert!(attrs.contains(&SvcAttr::Addr(addr.octets())));
}

#[test]
fn service_new_and_set_carry_scheduler_flags_timeout_and_netmask() {
    let s = Service::new(tcp("10.96.0.10", 80));
    for msg in [build::new_service(&s), build::set_service(&s)] {
        let Attr::Service(a) = &msg.attrs[0] else {
            panic!("no service attribute")
        };
        let kinds: Vec<u16> = a.iter().map(netlink_packet_core::Nla::kind).collect();
        for k in [1, 2, 3, 4, 6, 7, 8, 9] {
            assert!(kinds.contains(&k), "attribute {k} missing from {kinds:?}");
        }
    }
    // Delete names the service only.
    let Attr::Service(a) = &build::del_service(&s.key).attrs[0] else {
        panic!()
    };
    assert_eq!(a.len(), 4);
}

#[test]
fn destination_new_and_set_carry_forwarding_weight_and_both_thresholds() {
    let key = tcp("10.96.0.10", 80);
    let d = Destination::new("10.244.0.5".parse().unwrap(), 8080);
    for msg in [build::new_dest(&key, &d), build::set_dest(&key, &d)] {
        assert!(
            matches!(msg.attrs[0], Attr::Service(_)),
            "the service key comes first"
        );
        let Attr::Dest(a) = &msg.attrs[1] else {
            panic!("no destination attribute")
        };
        assert!(a.contains(&DestAttr::FwdMethod(0)));
        assert!(a.contains(&DestAttr::Weight(1)));
        assert!(a.contains(&DestAttr::UpperThreshold(0)));
        assert!(a.contains(&DestAttr::LowerThreshold(0)));
        assert!(a.contains(&DestAttr::Port(8080)));
    }
    // The port goes out in network order.
    let mut buf = vec![0u8; DestAttr::Port(8080).buffer_len()];
    DestAttr::Port(8080).emit(&mut buf);
    assert_eq!(&buf[4..6], &[0x1f, 0x90]);
}

#[test]
fn a_destination_dump_names_its_service() {
    let key = tcp("10.96.0.10", 80);
    let msg = build::get_dests(&key);
    assert_eq!(msg.attrs, vec![Attr::Service(key.attrs())]);
}

#[test]
fn fwmark_services_are_named_by_family_and_mark() {
    let key = ServiceKey::Fwmark {
        family: Family::V6,
        mark: 0x4000,
    };
    assert_eq!(key.attrs(), vec![SvcAttr::Af(10), SvcAttr::Fwmark(0x4000)]);
}

#[test]
fn messages_parse_back_to_themselves() {
    let key = tcp("fd00:10:96::a", 53);
    let mut svc = Service::new(ServiceKey::Tuple {
        addr: "fd00:10:96::a".parse().unwrap(),
        protocol: Protocol::Udp,
        port: 53,
    })
    .persistent(300);
    svc.scheduler = "wrr".into();
    let mut d = Destination::new("fd00:10:244::7".parse::<IpAddr>().unwrap(), 5353);
    d.weight = 0;
    d.forward = Forward::Masquerade;
    for msg in [
        build::new_service(&svc),
        build::new_dest(&key, &d),
        build::del_dest(&key, &d),
        build::flush(),
    ] {
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        let header = GenlHeader {
            cmd: msg.cmd.number(),
            version: 1,
        };
        let back = IpvsMessage::parse_with_param(&buf[..], header).unwrap();
        assert_eq!(back, msg);
    }
    let Attr::Service(a) = &build::new_service(&svc).attrs[0] else {
        panic!()
    };
    assert_eq!(Service::from_attrs(a).unwrap(), svc);
    let Attr::Dest(a) = &build::new_dest(&key, &d).attrs[1] else {
        panic!()
    };
    assert_eq!(Destination::from_attrs(a, Family::V6).unwrap(), d);
}
