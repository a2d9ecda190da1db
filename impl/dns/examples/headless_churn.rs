//! The cost of one EndpointSlice change to a large headless Service in the
//! zone index (issue 13, finding 8): one Service of E ready endpoints in
//! slices of 100, then 20 changes to one slice (an endpoint flips ready),
//! each applied alone, and 20 applied as one batch:
//! `cargo run --release -p signpost-dns --example headless_churn -- 1000 5000 10000`.

use std::net::IpAddr;
use std::time::Instant;

use signpost_dns::{Change, ZoneIndex};
use signpost_model::cluster::{
    AddressFamily, ClusterIps, Endpoint, EndpointPort, EndpointSlice, ObjectKey, Protocol, Service,
    ServicePort,
};

fn slice(s: u32, per: u32, flipped: Option<u32>) -> EndpointSlice {
    EndpointSlice {
        key: ObjectKey::new("default", format!("big-{s}")),
        service: "big".into(),
        family: AddressFamily::V4,
        ports: vec![EndpointPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        endpoints: (0..per)
            .map(|e| {
                let k = s * per + e;
                Endpoint {
                    address: IpAddr::from([10, 128 + (k >> 16) as u8, (k >> 8) as u8, k as u8]),
                    ready: flipped != Some(e),
                    serving: true,
                    terminating: false,
                    hostname: None,
                    node: None,
                    zone: None,
                    pod: None,
                }
            })
            .collect(),
    }
}

fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    for e in if sizes.is_empty() {
        vec![1000, 5000]
    } else {
        sizes
    } {
        let per = 100;
        let mut index = ZoneIndex::new("cluster.local");
        index.apply(Change::Service(Service::cluster_ip(
            ObjectKey::new("default", "big"),
            ClusterIps::Headless,
            vec![ServicePort::tcp("http", 80, 8080)],
        )));
        for s in 0..e / per {
            index.apply(Change::Slice(slice(s, per, None)));
        }
        index.apply(Change::Synced);
        let changes = 20;
        let t = Instant::now();
        for i in 0..changes {
            index.apply(Change::Slice(slice(0, per, Some(i % per))));
        }
        let alone = t.elapsed() / changes;
        let t = Instant::now();
        index.apply_batch((0..changes).map(|i| {
            (
                Change::Slice(slice(0, per, Some((i + 1) % per))),
                Instant::now(),
            )
        }));
        let batch = t.elapsed();
        println!(
            "{e} endpoints, {} names: one change {:.2} ms; {changes} changes in one batch {:.2} ms",
            index.len(),
            alone.as_secs_f64() * 1e3,
            batch.as_secs_f64() * 1e3
        );
    }
}
