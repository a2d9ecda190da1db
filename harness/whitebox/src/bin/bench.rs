//! `signpost-bench`: benchmarks that run Signpost beside its upstream peer in
//! the same local cluster and report ratios (never timed assertions).
//!
//! `signpost-bench proxy-nft [--sizes 1000,10000] [--out FILE]`: full sync of
//! N Services × 5 endpoints and one endpoint change at the largest N, for
//! `signpost proxy --mode nftables` and kube-proxy `--proxy-mode=nftables`,
//! one after the other against the same API objects, each timed by its own
//! sync-duration metrics and from outside (API write → sync counted).
//!
//! `signpost-bench dns [--services N] [--out FILE]`: `signpost dns` and
//! CoreDNS over the same N Services, one core each: QPS at saturation,
//! p50/p99 latency, RSS, Service create → resolvable (see `bench/dns.rs`).
//!
//! `signpost-bench proxy-ipvs [--sizes 1000,10000]`: the IPVS proxy core in
//! the kernel VM: full sync, read-back, one change (see `bench/proxy_ipvs.rs`).
//!
//! `signpost-bench endpoints [--pods N] [--out FILE]`: time from a Pod's Ready
//! condition being written to its endpoint showing `ready: true`, for
//! `signpost endpoints` and kube-controller-manager's EndpointSlice
//! controller, both watching the same Pods.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod as KPod, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use signpost_endpoints::{KCM_MANAGED_BY, MANAGED_BY};
use signpost_harness::LocalCluster;
use signpost_harness::process::{Daemon, workspace_binary};

#[path = "bench/dns.rs"]
mod dns;
#[path = "bench/proxy_ipvs.rs"]
mod proxy_ipvs;
#[path = "bench/proxy_nft.rs"]
mod proxy_nft;

/// Per (controller, slice name): generation seen and endpoints with readiness.
type SliceTally = HashMap<(&'static str, String), (usize, Vec<(String, bool)>)>;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("proxy-nft") {
        return proxy_nft::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("proxy-ipvs") {
        return proxy_ipvs::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("dns") {
        return dns::main(&args[1..]);
    }
    if args.first().map(String::as_str) != Some("endpoints") {
        return Err("usage: signpost-bench endpoints [--pods N] [--out FILE] | proxy-nft [--sizes 1000,10000] [--out FILE] | dns [--services N] [--out FILE] | proxy-ipvs [--sizes 1000,10000] [--out FILE]".into());
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let pods: u32 = flag("--pods")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100);
    let out = flag("--out").unwrap_or_else(|| "reports/bench-endpoints.json".into());

    eprintln!(
        "bench endpoints: starting a local cluster with kube-controller-manager and signpost endpoints"
    );
    let cluster = LocalCluster::new("bench-eps")?
        .with_controller_manager()
        .start()?;
    let bin = workspace_binary("signpost")?;
    let sp_args = vec![
        format!("--kubeconfig={}", cluster.kubeconfig().display()),
        "endpoints".into(),
        "--metrics-addr=127.0.0.1:10290".into(),
    ];
    let _signpost = Daemon::spawn(
        cluster.node_namespace(),
        "signpost endpoints",
        &bin,
        &sp_args,
        cluster.logs().join("signpost.log"),
    )?;

    let result = cluster.block_on(|client| async move {
        let svc: KService = serde_json::from_value(json!({
            "metadata": { "name": "bench" },
            "spec": { "selector": { "app": "bench" }, "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] },
        }))?;
        Api::<KService>::namespaced(client.clone(), "default").create(&PostParams::default(), &svc).await?;
        let api: Api<KPod> = Api::namespaced(client.clone(), "default");
        for i in 0..pods {
            let pod: KPod = serde_json::from_value(json!({
                "metadata": { "name": format!("bench-{i}"), "labels": { "app": "bench" } },
                "spec": { "nodeName": "node-a", "containers": [{ "name": "c", "image": "x" }] },
            }))?;
            api.create(&PostParams::default(), &pod).await?;
            let ip = format!("10.251.{}.{}", i / 250, i % 250 + 1);
            let status = json!({ "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }], "conditions": [{ "type": "Ready", "status": "False" }] } });
            api.patch_status(&format!("bench-{i}"), &PatchParams::default(), &Patch::Merge(&status)).await?;
        }
        // Watch slices: per manager, the set of pods shown ready, with the time first seen.
        let slices: Api<KSlice> = Api::namespaced(client.clone(), "default");
        let mut stream = watcher(slices, watcher::Config::default().labels("kubernetes.io/service-name=bench")).applied_objects().boxed();
        let mut listed: HashMap<&'static str, usize> = HashMap::new();
        let mut shown: HashMap<(&'static str, String), Instant> = HashMap::new();
        // Wait until both list every Pod (not ready).
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut per_slice: SliceTally = HashMap::new();
        let manager_of = |s: &KSlice| -> Option<&'static str> {
            match s.metadata.labels.as_ref()?.get("endpointslice.kubernetes.io/managed-by")?.as_str() {
                m if m == MANAGED_BY => Some("signpost"),
                m if m == KCM_MANAGED_BY => Some("kube-controller-manager"),
                _ => None,
            }
        };
        let absorb = |s: KSlice, per_slice: &mut SliceTally, shown: &mut HashMap<(&'static str, String), Instant>| {
            let Some(m) = manager_of(&s) else { return };
            let eps: Vec<(String, bool)> = s
                .endpoints
                .unwrap_or_default()
                .into_iter()
                .map(|e| (e.target_ref.and_then(|r| r.name).unwrap_or_default(), e.conditions.and_then(|c| c.ready).unwrap_or(true)))
                .collect();
            for (pod, ready) in &eps {
                if *ready {
                    shown.entry((m, pod.clone())).or_insert_with(Instant::now);
                }
            }
            per_slice.insert((m, s.metadata.name.unwrap_or_default()), (eps.len(), eps));
        };
        loop {
            for m in ["signpost", "kube-controller-manager"] {
                listed.insert(m, per_slice.iter().filter(|((mm, _), _)| *mm == m).map(|(_, (n, _))| n).sum());
            }
            if listed.values().all(|n| *n as u32 == pods) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("controllers did not list all pods: {listed:?}").into());
            }
            match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
                Ok(Some(Ok(s))) => absorb(s, &mut per_slice, &mut shown),
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => return Err("watch ended".into()),
                Err(_) => {}
            }
        }
        eprintln!("bench endpoints: {pods} pods listed by both; flipping them ready one at a time");
        let mut lat: HashMap<&'static str, Vec<f64>> = HashMap::new();
        for i in 0..pods {
            let name = format!("bench-{i}");
            let status = json!({ "status": { "conditions": [{ "type": "Ready", "status": "True" }] } });
            let t0 = Instant::now();
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
            let deadline = t0 + Duration::from_secs(30);
            while ["signpost", "kube-controller-manager"].iter().any(|m| !shown.contains_key(&(*m, name.clone()))) {
                if Instant::now() > deadline {
                    return Err(format!("{name} never shown ready").into());
                }
                match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
                    Ok(Some(Ok(s))) => absorb(s, &mut per_slice, &mut shown),
                    Ok(Some(Err(e))) => return Err(e.into()),
                    Ok(None) => return Err("watch ended".into()),
                    Err(_) => {}
                }
            }
            for m in ["signpost", "kube-controller-manager"] {
                let t = shown[&(m, name.clone())];
                lat.entry(m).or_default().push(t.saturating_duration_since(t0).as_secs_f64() * 1000.0);
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(lat)
    })?;
    let mut lat = result.map_err(|e| e.to_string())?;
    let mut report = serde_json::Map::new();
    for (m, v) in &mut lat {
        v.sort_by(f64::total_cmp);
        report.insert((*m).to_owned(), json!({ "p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99), "samples": v.len() }));
    }
    let sp = &lat["signpost"];
    let kcm = &lat["kube-controller-manager"];
    let ratio50 = percentile(sp, 0.5) / percentile(kcm, 0.5);
    let ratio99 = percentile(sp, 0.99) / percentile(kcm, 0.99);
    report.insert(
        "ratio_signpost_over_kcm".into(),
        json!({ "p50": ratio50, "p99": ratio99 }),
    );
    println!("Pod ready -> endpoint ready ({pods} pods, one at a time):");
    println!(
        "  signpost endpoints       p50 {:7.1} ms  p99 {:7.1} ms",
        percentile(sp, 0.5),
        percentile(sp, 0.99)
    );
    println!(
        "  kube-controller-manager  p50 {:7.1} ms  p99 {:7.1} ms",
        percentile(kcm, 0.5),
        percentile(kcm, 0.99)
    );
    println!("  ratio signpost/kcm       p50 {ratio50:.2}  p99 {ratio99:.2}");
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::Value::Object(report))?,
    )?;
    println!("written to {out}");
    Ok(())
}
