//! Serves a zone of N generated Services without an API server, for
//! profiling the request path: `cargo run --release -p signpost-dns
//! --example serve_static -- 127.0.0.1:5300 10000`, then dnsperf at it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use signpost_dns::forward::Forwarder;
use signpost_dns::server::{Shared, serve};
use signpost_dns::{Change, ZoneIndex};
use signpost_model::cluster::{ClusterIps, ObjectKey, Service, ServicePort};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5300".into());
    let n: u32 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let mut index = ZoneIndex::new("cluster.local");
    for i in 0..n {
        index.apply(Change::Service(Service::cluster_ip(
            ObjectKey::new("default", format!("bench-{i}")),
            ClusterIps::Ips(vec![IpAddr::from([
                10,
                96,
                (i / 256) as u8,
                (i % 256) as u8,
            ])]),
            vec![ServicePort::tcp("http", 80, 8080)],
        )));
    }
    index.apply(Change::Synced);
    let shared = Arc::new(Shared::new(
        index,
        5,
        Forwarder::new(Vec::new(), Duration::from_secs(1)),
    ));
    let mut server = serve(
        shared,
        &[addr.parse().expect("ip:port")],
        Duration::from_secs(5),
    )
    .await?;
    eprintln!("serving {n} Services on {addr}");
    server
        .block_until_done()
        .await
        .map_err(std::io::Error::other)
}
