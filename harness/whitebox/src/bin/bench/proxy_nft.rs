//! `signpost-bench proxy-nft`: Signpost's nftables proxy beside kube-proxy's.
//!
//! At each size, after Signpost's full sync, the kernel's share is measured
//! alone: the table Signpost wrote is listed, deleted and loaded again by
//! `nft -f` under `strace -T`, and the time spent inside the `sendmsg`
//! calls that carry the batch (the kernel validates and commits a batch in
//! the sender's call) is the floor no user-space programmer can go under.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use signpost_harness::process::{Daemon, workspace_binary};
use signpost_harness::{LocalCluster, Running, upstream};
use signpost_proxy::nftables::TABLE;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SP_PORT: u16 = 10291;
const KP_PORT: u16 = 10249;

pub(crate) fn slice(i: u32, bump: u32) -> Result<KSlice, BoxError> {
    let eps: Vec<_> = (0..5u32)
        .map(|e| {
            let n = i * 5 + e + bump;
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

pub(crate) async fn create(client: kube::Client, from: u32, to: u32) -> Result<(), BoxError> {
    let svcs: Api<KService> = Api::namespaced(client.clone(), "default");
    let slices: Api<KSlice> = Api::namespaced(client, "default");
    futures::stream::iter(from..to)
        .map(|i| {
            let (svcs, slices) = (svcs.clone(), slices.clone());
            async move {
                let svc: KService = serde_json::from_value(json!({
                    "metadata": { "name": format!("bench-{i}") },
                    "spec": { "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] },
                }))?;
                svcs.create(&PostParams::default(), &svc).await?;
                slices.create(&PostParams::default(), &slice(i, 0)?).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
}

/// Polls a metric until `done` holds, returning the value and the time it took.
fn wait_metric(
    cluster: &LocalCluster<Running>,
    port: u16,
    name: &str,
    deadline: Duration,
    done: impl Fn(f64) -> bool,
) -> Result<(f64, Duration), BoxError> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = cluster.metric(port, name)
            && done(v)
        {
            return Ok((v, t0.elapsed()));
        }
        if t0.elapsed() > deadline {
            return Err(format!(
                "{name} on port {port}: no progress after {deadline:?}; logs in {}",
                cluster.logs().display()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Figures {
    full_ms: f64,
    /// Kernel time of a full-table commit (Signpost's run only).
    floor_ms: f64,
    /// Kernel time of the smallest commit that adds a rule, over the full
    /// table (Signpost's run only): the floor under a one-change sync.
    small_floor_ms: f64,
    /// Kernel time of a commit that only changes set elements (Signpost's
    /// run only): the floor under an endpoint change of its layout.
    element_floor_ms: f64,
    incr_ms: f64,
    incr_e2e_ms: f64,
}

fn change_one(cluster: &LocalCluster<Running>, i: u32, bump: u32) -> Result<(), BoxError> {
    let s = slice(i, bump)?;
    cluster.block_on(|client| async move {
        let api: Api<KSlice> = Api::namespaced(client, "default");
        api.patch(
            &format!("bench-{i}-0"),
            &PatchParams::default(),
            &Patch::Merge(&s),
        )
        .await
        .map(|_| ())
    })??;
    Ok(())
}

fn signpost(
    cluster: &LocalCluster<Running>,
    n: u32,
    measure_incremental: bool,
) -> Result<Figures, BoxError> {
    let bin = workspace_binary("signpost")?;
    let _ = cluster
        .node_namespace()
        .command(&bin)
        .args(["proxy", "--cleanup"])
        .output();
    let args = vec![
        format!("--kubeconfig={}", cluster.kubeconfig().display()),
        "proxy".into(),
        "--mode=nftables".into(),
        "--node-name=node-a".into(),
        format!("--metrics-addr=127.0.0.1:{SP_PORT}"),
    ];
    let _proxy = Daemon::spawn(
        cluster.node_namespace(),
        "signpost proxy",
        &bin,
        &args,
        cluster.logs().join(format!("signpost-proxy-{n}.log")),
    )?;
    wait_metric(
        cluster,
        SP_PORT,
        "signpost_proxy_full_syncs_total",
        Duration::from_secs(300),
        |v| v >= 1.0,
    )?;
    let full_ms = cluster
        .metric(SP_PORT, "signpost_proxy_last_sync_microseconds")
        .unwrap_or(f64::NAN)
        / 1000.0;
    let floor_ms = kernel_commit_ms(cluster).unwrap_or_else(|e| {
        eprintln!("  kernel commit floor not measured: {e}");
        f64::NAN
    });
    let small_floor_ms = small_commit_ms(cluster).unwrap_or_else(|e| {
        eprintln!("  kernel small-commit floor not measured: {e}");
        f64::NAN
    });
    let element_floor_ms = element_commit_ms(cluster).unwrap_or_else(|e| {
        eprintln!("  kernel element-commit floor not measured: {e}");
        f64::NAN
    });
    let (mut incr_ms, mut incr_e2e_ms) = (f64::NAN, f64::NAN);
    if measure_incremental {
        let before = cluster
            .metric(SP_PORT, "signpost_proxy_partial_syncs_total")
            .unwrap_or(0.0);
        let t0 = Instant::now();
        change_one(cluster, n / 2, 7)?;
        wait_metric(
            cluster,
            SP_PORT,
            "signpost_proxy_partial_syncs_total",
            Duration::from_secs(60),
            |v| v > before,
        )?;
        incr_e2e_ms = t0.elapsed().as_secs_f64() * 1000.0;
        incr_ms = cluster
            .metric(SP_PORT, "signpost_proxy_last_sync_microseconds")
            .unwrap_or(f64::NAN)
            / 1000.0;
        change_one(cluster, n / 2, 0)?;
    }
    Ok(Figures {
        full_ms,
        floor_ms,
        small_floor_ms,
        element_floor_ms,
        incr_ms,
        incr_e2e_ms,
    })
}

/// The kernel's time to commit the whole of the table Signpost wrote: the
/// table is listed, deleted and loaded again by `nft -f` under `strace -T`;
/// the sum of the `sendmsg` times is the batch's validation and commit
/// (nft's parsing, evaluation and cache reads happen outside them). The
/// proxy is running, so it is loaded again as it was (its next resync finds
/// it identical).
fn kernel_commit_ms(cluster: &LocalCluster<Running>) -> Result<f64, BoxError> {
    let ns = cluster.node_namespace();
    let listed = ns
        .command("nft")
        .args(["list", "table", "inet", TABLE])
        .output()?;
    if !listed.status.success() {
        return Err(format!("nft list: {}", String::from_utf8_lossy(&listed.stderr)).into());
    }
    let file = cluster.logs().join("floor.nft");
    let mut text = format!("delete table inet {TABLE}\n").into_bytes();
    text.extend_from_slice(&listed.stdout);
    std::fs::write(&file, text)?;
    let out = ns
        .command("strace")
        .args(["-f", "-T", "-e", "trace=sendmsg", "nft", "-f"])
        .arg(&file)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "nft -f under strace: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let trace = String::from_utf8_lossy(&out.stderr);
    let secs = sendmsg_seconds(&trace);
    if secs == 0.0 {
        return Err("strace showed no sendmsg".into());
    }
    Ok(secs * 1000.0)
}

/// The kernel's time to commit one new chain with one rule into the table
/// as it stands (then the probe is deleted): nf_tables validates the
/// table's chain graph on such a commit, so this grows with the table and
/// bounds from below any sync that changes rules.
fn small_commit_ms(cluster: &LocalCluster<Running>) -> Result<f64, BoxError> {
    probe_commit_ms(
        cluster,
        &format!("add chain inet {TABLE} floor-probe\nadd rule inet {TABLE} floor-probe accept\n"),
        &format!("delete chain inet {TABLE} floor-probe\n"),
    )
}

/// The kernel's time to commit one set element into the table as it
/// stands (a documentation address in the hairpin set, deleted after):
/// the floor under an endpoint change, which only moves map elements.
fn element_commit_ms(cluster: &LocalCluster<Running>) -> Result<f64, BoxError> {
    let elem = format!("element inet {TABLE} hairpin-v4 {{ 192.0.2.1 . 192.0.2.1 }}\n");
    probe_commit_ms(cluster, &format!("add {elem}"), &format!("delete {elem}"))
}

/// The best of three kernel times (`sendmsg` under `strace -T`) of the
/// script `probe`, each undone by `undo`.
fn probe_commit_ms(
    cluster: &LocalCluster<Running>,
    probe: &str,
    undo: &str,
) -> Result<f64, BoxError> {
    let ns = cluster.node_namespace();
    let (file, undo_file) = (
        cluster.logs().join("probe.nft"),
        cluster.logs().join("undo.nft"),
    );
    std::fs::write(&file, probe)?;
    std::fs::write(&undo_file, undo)?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let out = ns
            .command("strace")
            .args(["-f", "-T", "-e", "trace=sendmsg", "nft", "-f"])
            .arg(&file)
            .output()?;
        if !out.status.success() {
            return Err(format!("nft -f: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        best = best.min(sendmsg_seconds(&String::from_utf8_lossy(&out.stderr)) * 1000.0);
        ns.command("nft").arg("-f").arg(&undo_file).output()?;
    }
    Ok(best)
}

/// Sums the `<seconds>` strace -T appends to each `sendmsg` line.
fn sendmsg_seconds(trace: &str) -> f64 {
    trace
        .lines()
        .filter(|l| l.contains("sendmsg("))
        .filter_map(|l| {
            let (_, t) = l.rsplit_once('<')?;
            t.strip_suffix('>')?.parse::<f64>().ok()
        })
        .sum()
}

fn kube_proxy(
    cluster: &LocalCluster<Running>,
    n: u32,
    measure_incremental: bool,
) -> Result<Figures, BoxError> {
    let bin = upstream::binary("kube-proxy")?;
    let kc = cluster.kubeconfig().display().to_string();
    let args = vec![
        format!("--kubeconfig={kc}"),
        "--proxy-mode=nftables".into(),
        "--hostname-override=node-a".into(),
        format!("--metrics-bind-address=127.0.0.1:{KP_PORT}"),
        "--healthz-bind-address=127.0.0.1:10256".into(),
        "--conntrack-max-per-core=0".into(),
        "--cluster-cidr=10.244.0.0/16".into(),
    ];
    let _kp = Daemon::spawn(
        cluster.node_namespace(),
        "kube-proxy",
        &bin,
        &args,
        cluster.logs().join(format!("kube-proxy-{n}.log")),
    )?;
    // kube-proxy runs one proxier per IP family; the first sync of each is a
    // full one. Signpost programs both families in one transaction, so the
    // comparable figure is the sum over both families.
    let full = "kubeproxy_sync_full_proxy_rules_duration_seconds";
    wait_metric(
        cluster,
        KP_PORT,
        &format!("{full}_count"),
        Duration::from_secs(300),
        |v| v >= 2.0,
    )?;
    let full_ms = cluster
        .metric(KP_PORT, &format!("{full}_sum"))
        .unwrap_or(f64::NAN)
        * 1000.0;
    let (mut incr_ms, mut incr_e2e_ms) = (f64::NAN, f64::NAN);
    if measure_incremental {
        let partial = "kubeproxy_sync_partial_proxy_rules_duration_seconds";
        // Let kube-proxy's minimum sync period pass so the change is not held back by the first sync.
        std::thread::sleep(Duration::from_secs(2));
        let (c0, s0) = (
            cluster
                .metric(KP_PORT, &format!("{partial}_count"))
                .unwrap_or(0.0),
            cluster
                .metric(KP_PORT, &format!("{partial}_sum"))
                .unwrap_or(0.0),
        );
        let t0 = Instant::now();
        change_one(cluster, n / 2, 7)?;
        wait_metric(
            cluster,
            KP_PORT,
            &format!("{partial}_count"),
            Duration::from_secs(60),
            |v| v > c0,
        )?;
        incr_e2e_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (c1, s1) = (
            cluster
                .metric(KP_PORT, &format!("{partial}_count"))
                .unwrap_or(0.0),
            cluster
                .metric(KP_PORT, &format!("{partial}_sum"))
                .unwrap_or(0.0),
        );
        incr_ms = (s1 - s0) / (c1 - c0) * 1000.0;
        change_one(cluster, n / 2, 0)?;
    }
    // kube-proxy leaves its tables behind when stopped; remove them so the next run starts clean.
    drop(_kp);
    for family in ["ip", "ip6"] {
        let _ = cluster
            .node_namespace()
            .command("nft")
            .args(["delete", "table", family, "kube-proxy"])
            .output();
    }
    Ok(Figures {
        full_ms,
        floor_ms: f64::NAN,
        small_floor_ms: f64::NAN,
        element_floor_ms: f64::NAN,
        incr_ms,
        incr_e2e_ms,
    })
}

fn write(out: &str, report: &serde_json::Map<String, serde_json::Value>) -> Result<(), BoxError> {
    Ok(crate::write_report(
        out,
        &serde_json::Value::Object(report.clone()),
    )?)
}

pub fn main(args: &[String]) -> Result<(), BoxError> {
    let flag = |name: &str| crate::flag(args, name);
    let sizes: Vec<u32> = flag("--sizes")
        .unwrap_or_else(|| "1000,10000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // kube-proxy's full sync grows superlinearly (54 s at 10k Services):
    // beyond `--peer-max` Signpost runs alone.
    let peer_max: u32 = flag("--peer-max")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(u32::MAX);
    let out = flag("--out").unwrap_or_else(|| "reports/bench-proxy-nft.json".into());
    eprintln!("bench proxy-nft: starting a local cluster");
    let cluster = LocalCluster::new("bench-nft")?.start()?;
    let mut report = serde_json::Map::new();
    let mut have = 0;
    for n in sizes {
        let t0 = Instant::now();
        cluster.block_on(move |client| create(client, have, n))??;
        have = n;
        eprintln!(
            "bench proxy-nft: {n} Services × 5 endpoints in the API server ({:.1}s to create)",
            t0.elapsed().as_secs_f64()
        );
        let incr = true;
        let sp = signpost(&cluster, n, incr)?;
        eprintln!(
            "  signpost   full {:9.1} ms  one change {:8.1} ms (API write → synced {:8.1} ms); kernel commit of the full table {:.1} ms, of one new rule {:.1} ms, of one element {:.1} ms",
            sp.full_ms,
            sp.incr_ms,
            sp.incr_e2e_ms,
            sp.floor_ms,
            sp.small_floor_ms,
            sp.element_floor_ms
        );
        if n > peer_max {
            report.insert(
                n.to_string(),
                json!({ "signpost": { "full_sync_ms": sp.full_ms, "one_change_sync_ms": sp.incr_ms, "one_change_e2e_ms": sp.incr_e2e_ms, "kernel_commit_ms": sp.floor_ms, "kernel_small_commit_ms": sp.small_floor_ms, "kernel_element_commit_ms": sp.element_floor_ms } }),
            );
            write(&out, &report)?;
            continue;
        }
        let kp = kube_proxy(&cluster, n, incr)?;
        eprintln!(
            "  kube-proxy full {:9.1} ms  one change {:8.1} ms (API write → synced {:8.1} ms)",
            kp.full_ms, kp.incr_ms, kp.incr_e2e_ms
        );
        report.insert(
            n.to_string(),
            json!({
                "signpost": { "full_sync_ms": sp.full_ms, "one_change_sync_ms": sp.incr_ms, "one_change_e2e_ms": sp.incr_e2e_ms, "kernel_commit_ms": sp.floor_ms, "kernel_small_commit_ms": sp.small_floor_ms, "kernel_element_commit_ms": sp.element_floor_ms },
                "kube_proxy_nftables": { "full_sync_ms": kp.full_ms, "one_change_sync_ms": kp.incr_ms, "one_change_e2e_ms": kp.incr_e2e_ms },
                "ratio_signpost_over_kube_proxy": { "full": sp.full_ms / kp.full_ms, "one_change": sp.incr_ms / kp.incr_ms, "one_change_e2e": sp.incr_e2e_ms / kp.incr_e2e_ms },
            }),
        );
        // Written after every size, so a run stopped at a larger one keeps the smaller ones.
        write(&out, &report)?;
        println!(
            "{n:>6} Services: full sync signpost {:.1} ms vs kube-proxy {:.1} ms (ratio {:.2})",
            sp.full_ms,
            kp.full_ms,
            sp.full_ms / kp.full_ms
        );
        if incr {
            println!(
                "{n:>6} Services: one endpoint change: sync signpost {:.1} ms vs kube-proxy {:.1} ms (ratio {:.2}); API write → synced {:.1} ms vs {:.1} ms (ratio {:.2})",
                sp.incr_ms,
                kp.incr_ms,
                sp.incr_ms / kp.incr_ms,
                sp.incr_e2e_ms,
                kp.incr_e2e_ms,
                sp.incr_e2e_ms / kp.incr_e2e_ms
            );
        }
    }
    write(&out, &report)?;
    println!("written to {out}");
    Ok(())
}
