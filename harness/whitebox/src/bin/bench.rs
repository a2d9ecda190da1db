//! `signpost-bench`: benchmarks that run Signpost beside its upstream peer in
//! the same local cluster and report ratios (never timed assertions).
//!
//! `signpost-bench proxy-nft [--sizes 1000,10000] [--out FILE]`: full sync of
//! N Services × 5 endpoints and one endpoint change at the largest N, for
//! `signpost proxy --mode nftables` and kube-proxy `--proxy-mode=nftables`,
//! one after the other against the same API objects, each timed by its own
//! sync-duration metrics and from outside (API write → sync counted).
//!
//! `signpost-bench nft-plane [--sizes 1000,10000,50000]`: the nftables
//! data plane alone (no API server): full sync and one endpoint change,
//! planned and committed, by table size (see `bench/nft_plane.rs`).
//!
//! `signpost-bench dns [--services N] [--out FILE]`: `signpost dns` and
//! CoreDNS over the same N Services, one core each: QPS at saturation,
//! p50/p99 latency, RSS, Service create → resolvable (see `bench/dns.rs`).
//!
//! `signpost-bench proxy-ipvs [--sizes 1000,10000]`: the IPVS proxy core in
//! the kernel VM: full sync, read-back, one change (see `bench/proxy_ipvs.rs`).
//!
//! `signpost-bench endpoints [--services S] [--pods P] [--out FILE]`: time
//! from a Pod's Ready condition being written to its endpoint showing
//! `ready: true`, for `signpost endpoints` and kube-controller-manager's
//! EndpointSlice controller, both watching the same Pods (see
//! `bench/endpoints.rs`).
//!
//! `signpost-bench report [--dir reports]`: `bench.json` and `bench.html`
//! from the files the others wrote (see `bench/report.rs`).

#[path = "bench/dns.rs"]
mod dns;
#[path = "bench/endpoints.rs"]
mod endpoints;
#[path = "bench/nft_plane.rs"]
mod nft_plane;
#[path = "bench/proxy_ipvs.rs"]
mod proxy_ipvs;
#[path = "bench/proxy_nft.rs"]
mod proxy_nft;
#[path = "bench/report.rs"]
mod report;

/// The value after `name` on the command line.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Writes a report as pretty JSON, creating its directory.
fn write_report(out: &str, report: &serde_json::Value) -> std::io::Result<()> {
    if let Some(dir) = std::path::Path::new(out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(report)?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // A run stopped by a signal leaves no cluster or namespace behind.
    signpost_harness::netns::clean_up_on_signals("signpost-bench");
    if args.first().map(String::as_str) == Some("proxy-nft") {
        return proxy_nft::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("nft-plane") {
        return nft_plane::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("proxy-ipvs") {
        return proxy_ipvs::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("dns") {
        return dns::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("udp-responder") {
        return dns::responder(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("report") {
        return report::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("endpoints") {
        return endpoints::main(&args[1..]);
    }
    Err("usage: signpost-bench endpoints [--services S] [--pods P] [--sample K] [--out FILE] | proxy-nft [--sizes 1000,10000] [--peer-max N] [--out FILE] | nft-plane [--sizes 1000,10000,50000] [--changes K] [--out FILE] | dns [--services N] [--out FILE] | proxy-ipvs [--sizes 1000,10000] [--side N] [--out FILE] | report [--dir reports]".into())
}
