//! `signpost-bench dns`: `signpost dns` beside CoreDNS over the same local
//! cluster holding N Services (80% ClusterIP, 20% headless, 5 endpoints
//! each; past [`CLUSTER_IP_CAP`] every Service is headless). Both servers are pinned to CPU 1 and dnsperf to CPU 0. Reported:
//! QPS at saturation, p50/p99 latency at a fixed rate below both servers'
//! saturation, resident memory, and Service create → resolvable latency.
//! The rig's ceiling is measured the same way: dnsperf against
//! [`responder`], a minimal UDP responder on the same core that echoes each
//! query back as an empty answer without looking at it, so the report
//! shows each server as a fraction of what this kernel, core and load
//! generator can carry at all.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hickory_proto::rr::RecordType;
use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use signpost_harness::cluster::NODE_IP;
use signpost_harness::dns::{decode_answer, encode_query, exchange_udp};
use signpost_harness::process::{Daemon, workspace_binary};
use signpost_harness::{LocalCluster, Running, upstream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SP_PORT: u16 = 53;
const CD_PORT: u16 = 1053;
const CEILING_PORT: u16 = 1153;

/// `signpost-bench udp-responder ADDR`: answers every datagram with itself,
/// marked as a response (QR set, no answers: NODATA), and nothing else.
pub fn responder(args: &[String]) -> Result<(), BoxError> {
    let addr: SocketAddr = args.first().ok_or("udp-responder ADDR")?.parse()?;
    let sock = std::net::UdpSocket::bind(addr)?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, peer) = sock.recv_from(&mut buf)?;
        if n < 12 {
            continue;
        }
        buf[2] |= 0x80;
        let _ = sock.send_to(&buf[..n], peer);
    }
}

/// Services numbered from here on are headless. kube-apiserver 1.37's
/// ClusterIP allocator counts the addresses it holds by listing them all
/// after each allocation (`createIPAddress` in
/// pkg/registry/core/service/ipallocator), so each new ClusterIP costs time
/// in proportion to those before it: here creation fell from about 400 to
/// 12 Services per second by 17k, and 40k ClusterIPs would take most of an
/// hour. A headless Service of 5 endpoints has more names than a ClusterIP
/// one (one per endpoint), so the larger points are no lighter for DNS.
pub const CLUSTER_IP_CAP: u32 = 10_000;

fn headless(i: u32) -> bool {
    i.is_multiple_of(5) || i >= CLUSTER_IP_CAP
}

fn slice(i: u32) -> Result<KSlice, BoxError> {
    let eps: Vec<_> = (0..5u32)
        .map(|e| {
            let n = i * 5 + e;
            json!({ "addresses": [format!("10.{}.{}.{}", 128 + n / 65536, (n / 256) % 256, n % 256)], "conditions": { "ready": true }, "nodeName": "node-a" })
        })
        .collect();
    Ok(serde_json::from_value(json!({
        "metadata": { "name": format!("bench-{i}-0"), "labels": { "kubernetes.io/service-name": format!("bench-{i}"), "endpointslice.kubernetes.io/managed-by": "bench" } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": eps,
    }))?)
}

fn service(name: &str, headless: bool) -> Result<KService, BoxError> {
    let mut spec = json!({ "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] });
    if headless {
        spec["clusterIP"] = json!("None");
    }
    Ok(serde_json::from_value(
        json!({ "metadata": { "name": name }, "spec": spec }),
    )?)
}

async fn create(client: kube::Client, from: u32, to: u32) -> Result<(), BoxError> {
    let svcs: Api<KService> = Api::namespaced(client.clone(), "default");
    let slices: Api<KSlice> = Api::namespaced(client, "default");
    futures::stream::iter(from..to)
        .map(|i| {
            let (svcs, slices) = (svcs.clone(), slices.clone());
            async move {
                svcs.create(
                    &PostParams::default(),
                    &service(&format!("bench-{i}"), headless(i))?,
                )
                .await?;
                slices.create(&PostParams::default(), &slice(i)?).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
}

fn pinned(
    cluster: &LocalCluster<Running>,
    name: &str,
    cpu: &str,
    bin: &Path,
    args: &[String],
) -> Result<Daemon, BoxError> {
    let mut all = vec!["-c".to_owned(), cpu.to_owned(), bin.display().to_string()];
    all.extend(args.iter().cloned());
    Ok(Daemon::spawn(
        cluster.node_namespace(),
        name,
        Path::new("taskset"),
        &all,
        cluster.logs().join(format!("{name}.log")),
    )?)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn resolves(server: SocketAddr, name: &str) -> bool {
    let Ok(q) = encode_query(7, name, RecordType::A, None) else {
        return false;
    };
    exchange_udp(server, &q, Duration::from_millis(200))
        .ok()
        .and_then(|r| decode_answer(&r).ok())
        .is_some_and(|a| a.rcode == "NoError" && !a.records.is_empty())
}

fn wait_resolves(
    cluster: &LocalCluster<Running>,
    server: SocketAddr,
    name: &str,
    within: Duration,
) -> Result<Duration, BoxError> {
    let name = name.to_owned();
    cluster.node_namespace().within(move || {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if resolves(server, &name) {
                return Ok(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("{name} not resolvable on {server} within {within:?}").into())
    })?
}

struct Perf {
    qps: f64,
    lost: f64,
}

fn dnsperf(
    cluster: &LocalCluster<Running>,
    port: u16,
    file: &Path,
    extra: &[&str],
) -> Result<String, BoxError> {
    let out = cluster
        .node_namespace()
        .command("taskset")
        .args(["-c", "0", "dnsperf", "-s", &NODE_IP.to_string()])
        .args(["-p", &port.to_string(), "-d", &file.display().to_string()])
        .args(extra)
        .output()?;
    if !out.status.success() {
        return Err(format!("dnsperf failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn saturation(cluster: &LocalCluster<Running>, port: u16, file: &Path) -> Result<Perf, BoxError> {
    let text = dnsperf(
        cluster,
        port,
        file,
        &["-l", "10", "-c", "8", "-q", "500", "-t", "2"],
    )?;
    let field = |key: &str| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Perf {
        qps: field("Queries per second"),
        lost: field("Queries lost"),
    })
}

/// p50 and p99 in milliseconds at a fixed rate, from dnsperf's per-query lines.
fn latency(
    cluster: &LocalCluster<Running>,
    port: u16,
    file: &Path,
    rate: u32,
) -> Result<(f64, f64), BoxError> {
    let text = dnsperf(
        cluster,
        port,
        file,
        &["-l", "5", "-c", "4", "-Q", &rate.to_string(), "-v"],
    )?;
    // Lines: `> NOERROR name A 0.000123`
    let mut lat: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with('>'))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect();
    if lat.is_empty() {
        return Err("dnsperf -v printed no per-query latencies".into());
    }
    lat.sort_by(f64::total_cmp);
    Ok((crate::percentile(&lat, 0.50), crate::percentile(&lat, 0.99)))
}

/// Service create → resolvable on both servers, for `n` new Services.
/// Service create → resolvable on each server, and → the API server's
/// watch event reaching a watcher of the bench's own (the floor under
/// both servers, which learn of the Service the same way), in ms.
fn propagation(
    cluster: &LocalCluster<Running>,
    servers: [SocketAddr; 2],
    n: u32,
) -> Result<[Vec<f64>; 3], BoxError> {
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..n {
        let name = format!("fresh-{i}");
        let fqdn = format!("{name}.default.svc.cluster.local.");
        let t0 = Instant::now();
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let done = done.clone();
            let fqdn = fqdn.clone();
            let ns = cluster.node_namespace();
            std::thread::scope(|scope| -> Result<[f64; 3], BoxError> {
                let h = scope.spawn(move || {
                    ns.within(move || {
                        let mut got = [f64::NAN; 2];
                        while t0.elapsed() < Duration::from_secs(30) {
                            for (k, s) in servers.iter().enumerate() {
                                if got[k].is_nan() && resolves(*s, &fqdn) {
                                    got[k] = t0.elapsed().as_secs_f64() * 1000.0;
                                }
                            }
                            if got.iter().all(|g| !g.is_nan()) {
                                break;
                            }
                            std::thread::sleep(Duration::from_micros(500));
                        }
                        done.store(true, Ordering::Relaxed);
                        got
                    })
                });
                let svc = service(&name, false)?;
                let watched = cluster.block_on(|client| {
                    let name = name.clone();
                    async move {
                        let api = Api::<KService>::namespaced(client, "default");
                        let wp = WatchParams::default().fields(&format!("metadata.name={name}"));
                        // Established before the create: its first event is this Service.
                        let mut events = api.watch(&wp, "0").await?.boxed();
                        // Every time is from the create on (the poller's from t0).
                        let created = t0.elapsed().as_secs_f64() * 1000.0;
                        api.create(&PostParams::default(), &svc).await?;
                        while let Some(ev) = events.try_next().await? {
                            if matches!(ev, WatchEvent::Added(_)) {
                                return Ok((created, t0.elapsed().as_secs_f64() * 1000.0));
                            }
                        }
                        Ok::<_, kube::Error>((created, f64::NAN))
                    }
                })??;
                let got = h
                    .join()
                    .map_err(|_| "poller panicked")?
                    .map_err(|e| -> BoxError { e.to_string().into() })?;
                let (created, watched) = watched;
                Ok([got[0] - created, got[1] - created, watched - created])
            })?
        };
        for (k, v) in watcher.iter().enumerate() {
            out[k].push(*v);
        }
    }
    Ok(out)
}

fn stats(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (crate::percentile(&s, 0.5), crate::percentile(&s, 0.99))
}

/// Runs the benchmark.
pub fn main(args: &[String]) -> Result<(), BoxError> {
    let flag = |name: &str| crate::flag(args, name);
    let n: u32 = flag("--services")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let out = flag("--out").unwrap_or_else(|| "reports/bench-dns.json".into());
    eprintln!("bench dns: starting a local cluster");
    let cluster = LocalCluster::new("bench-dns")?.start()?;
    let t = Instant::now();
    for chunk in (0..n).step_by(1000) {
        let to = (chunk + 1000).min(n);
        cluster.block_on(|client| create(client, chunk, to))??;
        eprintln!(
            "bench dns: {to}/{n} Services with slices created ({:.0?})",
            t.elapsed()
        );
    }
    let sp_addr = SocketAddr::new(IpAddr::V4(NODE_IP), SP_PORT);
    let cd_addr = SocketAddr::new(IpAddr::V4(NODE_IP), CD_PORT);
    let signpost_bin = workspace_binary("signpost")?;
    let t_sp = Instant::now();
    let sp = pinned(
        &cluster,
        "signpost-dns",
        "1",
        &signpost_bin,
        &[
            format!("--kubeconfig={}", cluster.kubeconfig().display()),
            "dns".into(),
            format!("--listen={sp_addr}"),
            "--metrics-addr=127.0.0.1:10282".into(),
            "--upstream=127.0.0.1:9".into(),
        ],
    )?;
    let last = format!("bench-{}.default.svc.cluster.local.", n - 1);
    wait_resolves(&cluster, sp_addr, &last, Duration::from_secs(300))?;
    let sp_sync = t_sp.elapsed();
    let corefile = cluster.logs().join("bench.Corefile");
    std::fs::write(
        &corefile,
        format!(
            ".:{CD_PORT} {{\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        kubeconfig {}\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n        ttl 30\n    }}\n    prometheus 127.0.0.1:9153\n    loadbalance\n}}\n",
            cluster.kubeconfig().display()
        ),
    )?;
    let t_cd = Instant::now();
    let cd = pinned(
        &cluster,
        "coredns",
        "1",
        &upstream::binary("coredns")?,
        &["-conf".into(), corefile.display().to_string()],
    )?;
    wait_resolves(&cluster, cd_addr, &last, Duration::from_secs(300))?;
    let cd_sync = t_cd.elapsed();
    eprintln!(
        "bench dns: both servers serve {n} Services (first sync: signpost {sp_sync:.1?}, coredns {cd_sync:.1?})"
    );
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = [rss_kib(sp.pid()), rss_kib(cd.pid())];

    // Query mix: A for every Service (ClusterIP and headless), AAAA for one in ten (NODATA).
    let file = cluster.logs().join("queries.txt");
    let mut q = String::new();
    for i in 0..n {
        q.push_str(&format!("bench-{i}.default.svc.cluster.local A\n"));
        if i % 10 == 0 {
            q.push_str(&format!("bench-{i}.default.svc.cluster.local AAAA\n"));
        }
    }
    std::fs::write(&file, q)?;

    let _ceiling = pinned(
        &cluster,
        "udp-responder",
        "1",
        &std::env::current_exe()?,
        &[
            "udp-responder".into(),
            SocketAddr::new(IpAddr::V4(NODE_IP), CEILING_PORT).to_string(),
        ],
    )?;
    let mut perf = Vec::new();
    for (label, port) in [
        ("signpost", SP_PORT),
        ("coredns", CD_PORT),
        ("the minimal responder (ceiling)", CEILING_PORT),
    ] {
        eprintln!("bench dns: saturating {label}");
        perf.push(saturation(&cluster, port, &file)?);
    }
    let rss_loaded = [rss_kib(sp.pid()), rss_kib(cd.pid())];
    let rate = 3000;
    let mut lat = Vec::new();
    for (label, port) in [("signpost", SP_PORT), ("coredns", CD_PORT)] {
        eprintln!("bench dns: latency of {label} at {rate} qps");
        lat.push(latency(&cluster, port, &file, rate)?);
    }
    eprintln!("bench dns: Service create → resolvable, 40 Services");
    let prop = propagation(&cluster, [sp_addr, cd_addr], 40)?;
    let (sp_p50, sp_p99) = stats(&prop[0]);
    let (cd_p50, cd_p99) = stats(&prop[1]);
    let (watch_p50, watch_p99) = stats(&prop[2]);

    let mut report: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
    report.insert("services", json!(n));
    let headless_n = (0..n).filter(|i| headless(*i)).count();
    report.insert(
        "mix",
        json!({ "cluster_ip": n as usize - headless_n, "headless": headless_n, "endpoints_per_service": 5 }),
    );
    report.insert(
        "ceiling",
        json!({
            "what": "dnsperf against a minimal UDP responder pinned to the same core as the servers",
            "qps": perf[2].qps,
            "signpost_fraction": perf[0].qps / perf[2].qps,
            "coredns_fraction": perf[1].qps / perf[2].qps,
        }),
    );
    report.insert(
        "create_to_watch_event_ms",
        json!({ "what": "Service create → its watch event at a watcher of the bench's own: the floor under both servers", "p50": watch_p50, "p99": watch_p99 }),
    );
    report.insert(
        "signpost",
        json!({
            "qps": perf[0].qps, "lost": perf[0].lost, "p50_ms": lat[0].0, "p99_ms": lat[0].1,
            "rss_kib_idle": rss_idle[0], "rss_kib_loaded": rss_loaded[0],
            "create_to_resolvable_ms": { "p50": sp_p50, "p99": sp_p99 },
            "first_sync_s": sp_sync.as_secs_f64(),
        }),
    );
    report.insert(
        "coredns",
        json!({
            "qps": perf[1].qps, "lost": perf[1].lost, "p50_ms": lat[1].0, "p99_ms": lat[1].1,
            "rss_kib_idle": rss_idle[1], "rss_kib_loaded": rss_loaded[1],
            "create_to_resolvable_ms": { "p50": cd_p50, "p99": cd_p99 },
            "first_sync_s": cd_sync.as_secs_f64(),
        }),
    );
    let ratio = |a: f64, b: f64| a / b;
    report.insert(
        "ratios_signpost_over_coredns",
        json!({
            "qps": ratio(perf[0].qps, perf[1].qps),
            "p50": ratio(lat[0].0, lat[1].0),
            "p99": ratio(lat[0].1, lat[1].1),
            "rss_loaded": ratio(rss_loaded[0] as f64, rss_loaded[1] as f64),
            "create_to_resolvable_p50": ratio(sp_p50, cd_p50),
            "create_to_resolvable_p99": ratio(sp_p99, cd_p99),
        }),
    );
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(dir) = Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &text)?;
    println!("{text}");
    println!(
        "dns @ {n} Services: the rig's ceiling (minimal responder) {:.0} QPS; signpost at {:.0}% of it, coredns at {:.0}%",
        perf[2].qps,
        100.0 * perf[0].qps / perf[2].qps,
        100.0 * perf[1].qps / perf[2].qps
    );
    println!(
        "dns @ {n} Services, one core each: QPS signpost {:.0} / coredns {:.0} = {:.2}; p99 at {rate} qps {:.3} / {:.3} ms = {:.2}; RSS {} / {} KiB = {:.2}; create→resolvable p50 {:.0} / {:.0} ms, p99 {:.0} / {:.0} ms",
        perf[0].qps,
        perf[1].qps,
        perf[0].qps / perf[1].qps,
        lat[0].1,
        lat[1].1,
        lat[0].1 / lat[1].1,
        rss_loaded[0],
        rss_loaded[1],
        rss_loaded[0] as f64 / rss_loaded[1] as f64,
        sp_p50,
        cd_p50,
        sp_p99,
        cd_p99
    );
    Ok(())
}
