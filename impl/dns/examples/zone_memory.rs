//! Resident memory of the zone index for N Services (80% ClusterIP, 20%
//! headless, one slice of 5 endpoints each): `cargo run --release -p
//! signpost-dns --example zone_memory -- 10000`.

use std::net::IpAddr;

use signpost_dns::{Change, ZoneIndex};
use signpost_model::cluster::{
    AddressFamily, ClusterIps, Endpoint, EndpointPort, EndpointSlice, ObjectKey, Protocol,
    Selector, Service, ServicePort,
};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let before = rss_kib();
    let mut index = ZoneIndex::new("cluster.local");
    for i in 0..n {
        let headless = i % 5 == 0;
        let name = format!("bench-{i}");
        let mut svc = Service::cluster_ip(
            ObjectKey::new("default", &name),
            if headless {
                ClusterIps::Headless
            } else {
                ClusterIps::Ips(vec![IpAddr::from([
                    10,
                    96,
                    (i / 256) as u8,
                    (i % 256) as u8,
                ])])
            },
            vec![ServicePort::tcp("http", 80, 8080)],
        );
        svc.selector = Some(Selector::from_pairs([("app", name.as_str())]));
        index.apply(Change::Service(svc));
        index.apply(Change::Slice(EndpointSlice {
            key: ObjectKey::new("default", format!("{name}-0")),
            service: name.clone(),
            family: AddressFamily::V4,
            ports: vec![EndpointPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            endpoints: (0..5u32)
                .map(|e| {
                    let k = i * 5 + e;
                    Endpoint {
                        address: IpAddr::from([10, 128 + (k >> 16) as u8, (k >> 8) as u8, k as u8]),
                        ready: true,
                        serving: true,
                        terminating: false,
                        hostname: None,
                        node: Some("node-a".into()),
                        zone: None,
                        pod: Some(format!("{name}-pod-{e}")),
                    }
                })
                .collect(),
        }));
    }
    index.apply(Change::Synced);
    let after = rss_kib();
    println!(
        "{n} Services: {} names, {} KiB resident for the index ({:.0} B per Service)",
        index.len(),
        after - before,
        (after - before) as f64 * 1024.0 / f64::from(n)
    );
}
