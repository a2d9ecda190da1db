//! `signpost-bench endpoints [--services S] [--pods P] [--sample K]`: time
//! from a Pod's Ready condition being written to its endpoint showing
//! `ready: true`, for `signpost endpoints` and kube-controller-manager's
//! EndpointSlice controller, both watching the same P Pods spread over S
//! Services while the Node's status is written every 3 seconds (as a
//! kubelet's heartbeat is). K Pods are turned ready one at a time; the CPU
//! time each controller spent over those K changes (from `/proc`) is
//! reported per change.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod as KPod, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use signpost_endpoints::{KCM_MANAGED_BY, MANAGED_BY};
use signpost_harness::LocalCluster;
use signpost_harness::cluster::NODE_NAME;
use signpost_harness::process::{Daemon, workspace_binary};

use crate::percentile;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const WHO: [&str; 2] = ["signpost", "kube-controller-manager"];

/// Per (controller, slice name): endpoints with readiness.
type SliceTally = HashMap<(&'static str, String), Vec<(String, bool)>>;

/// User plus system CPU time of a process, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces) start at ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11..13).map_or(f64::NAN, |t| {
        t.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    // USER_HZ is 100 on Linux.
    ticks * 10.0
}

fn pod_ip(i: u32) -> String {
    format!("10.{}.{}.{}", 128 + i / 65536, (i / 256) % 256, i % 256)
}

async fn create(client: kube::Client, services: u32, pods: u32) -> Result<(), BoxError> {
    let svcs: Api<KService> = Api::namespaced(client.clone(), "default");
    futures::stream::iter(0..services)
        .map(|s| {
            let svcs = svcs.clone();
            async move {
                let svc: KService = serde_json::from_value(json!({
                    "metadata": { "name": format!("bench-{s}") },
                    "spec": { "selector": { "app": format!("bench-{s}") }, "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] },
                }))?;
                svcs.create(&PostParams::default(), &svc).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await?;
    let api: Api<KPod> = Api::namespaced(client, "default");
    let t = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move {
                let pod: KPod = serde_json::from_value(json!({
                    "metadata": { "name": format!("bench-{i}"), "labels": { "app": format!("bench-{}", i % services) } },
                    "spec": { "nodeName": NODE_NAME, "containers": [{ "name": "c", "image": "x" }] },
                }))?;
                api.create(&PostParams::default(), &pod).await?;
                let ip = pod_ip(i);
                let status = json!({ "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }], "conditions": [{ "type": "Ready", "status": "False" }] } });
                api.patch_status(
                    &format!("bench-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await?;
                if (i + 1) % 5000 == 0 {
                    eprintln!(
                        "bench endpoints: {} Pods created ({:.0?})",
                        i + 1,
                        t.elapsed()
                    );
                }
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
}

/// The next slice the watch shows within a second (`None`: nothing yet).
async fn next_slice(
    stream: &mut (impl futures::Stream<Item = Result<KSlice, watcher::Error>> + Unpin),
) -> Result<Option<KSlice>, BoxError> {
    match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
        Ok(Some(Ok(s))) => Ok(Some(s)),
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(None) => Err("watch ended".into()),
        Err(_) => Ok(None),
    }
}

/// Runs the benchmark.
pub fn main(args: &[String]) -> Result<(), BoxError> {
    let flag = |name: &str| crate::flag(args, name);
    let services: u32 = flag("--services")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1);
    let pods: u32 = flag("--pods")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100);
    let sample: u32 = flag("--sample")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(pods.min(200));
    let out = flag("--out").unwrap_or_else(|| "reports/bench-endpoints.json".into());

    eprintln!(
        "bench endpoints: a local cluster with kube-controller-manager and signpost endpoints; {services} Services, {pods} Pods"
    );
    let cluster = LocalCluster::new("bench-eps")?
        .with_controller_manager()
        .start()?;
    let kcm_pid = *cluster
        .pids()
        .get(2)
        .ok_or("no kube-controller-manager process")?;
    let bin = workspace_binary("signpost")?;
    let sp_args = vec![
        format!("--kubeconfig={}", cluster.kubeconfig().display()),
        "endpoints".into(),
        "--metrics-addr=127.0.0.1:10290".into(),
    ];
    let signpost = Daemon::spawn(
        cluster.node_namespace(),
        "signpost endpoints",
        &bin,
        &sp_args,
        cluster.logs().join("signpost.log"),
    )?;
    let pids = [signpost.pid(), kcm_pid];

    let result = cluster.block_on(|client| async move {
        let t = Instant::now();
        create(client.clone(), services, pods).await?;
        eprintln!("bench endpoints: {services} Services and {pods} Pods written ({:.0?})", t.elapsed());
        // The kubelet's heartbeat: the Node's status is written every 3 s.
        let nodes: Api<Node> = Api::all(client.clone());
        let heartbeat = tokio::spawn(async move {
            loop {
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let status = json!({ "status": { "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now }] } });
                let _ = nodes.patch_status(NODE_NAME, &PatchParams::default(), &Patch::Strategic(&status)).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        });
        let api: Api<KPod> = Api::namespaced(client.clone(), "default");
        let slices: Api<KSlice> = Api::namespaced(client.clone(), "default");
        let mut stream = watcher(slices, watcher::Config::default()).applied_objects().boxed();
        let mut shown: HashMap<(&'static str, String), Instant> = HashMap::new();
        let mut per_slice: SliceTally = HashMap::new();
        let manager_of = |s: &KSlice| -> Option<&'static str> {
            match s.metadata.labels.as_ref()?.get("endpointslice.kubernetes.io/managed-by")?.as_str() {
                m if m == MANAGED_BY => Some(WHO[0]),
                m if m == KCM_MANAGED_BY => Some(WHO[1]),
                _ => None,
            }
        };
        // When each controller last wrote a slice (to wait for both to settle).
        let last_write: std::cell::RefCell<HashMap<&'static str, Instant>> = Default::default();
        let absorb = |s: KSlice, per_slice: &mut SliceTally, shown: &mut HashMap<(&'static str, String), Instant>| {
            let Some(m) = manager_of(&s) else { return };
            last_write.borrow_mut().insert(m, Instant::now());
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
            per_slice.insert((m, s.metadata.name.unwrap_or_default()), eps);
        };
        // Wait until both list every Pod (not ready).
        // kube-controller-manager writes about 50 endpoints a second here
        // (30k Pods: about 10 minutes), so the wait grows with the Pods.
        let listing = Duration::from_secs(120) + Duration::from_millis(50) * pods;
        let t_listed = Instant::now();
        let deadline = t_listed + listing;
        let mut last_note = Instant::now();
        // Seconds from the last Pod written to each controller listing all of them.
        let mut first_listed: [Option<f64>; 2] = [None, None];
        loop {
            let listed: Vec<usize> = WHO
                .iter()
                .map(|m| per_slice.iter().filter(|((mm, _), _)| mm == m).map(|(_, e)| e.len()).sum())
                .collect();
            for (k, n) in listed.iter().enumerate() {
                if *n as u32 == pods && first_listed[k].is_none() {
                    first_listed[k] = Some(t_listed.elapsed().as_secs_f64());
                }
            }
            if listed.iter().all(|n| *n as u32 == pods) {
                break;
            }
            if last_note.elapsed() > Duration::from_secs(10) {
                eprintln!("bench endpoints: endpoints listed: signpost {}, kube-controller-manager {} of {pods}", listed[0], listed[1]);
                last_note = Instant::now();
            }
            if Instant::now() > deadline {
                return Err(format!("controllers did not list all pods: {listed:?}").into());
            }
            if let Some(s) = next_slice(&mut stream).await? {
                absorb(s, &mut per_slice, &mut shown);
            }
        }
        eprintln!("bench endpoints: every Pod listed after {first_listed:?} s (signpost, kube-controller-manager)");
        // Listing every Pod is not the end of the work: a controller may
        // still be rewriting slices (kube-controller-manager's client is
        // limited to 20 requests/s). The samples measure a settled
        // cluster: no slice written by either for QUIET.
        const QUIET: Duration = Duration::from_secs(10);
        let t_settle = Instant::now();
        let settle_deadline = t_settle + Duration::from_secs(120) + Duration::from_millis(20) * pods;
        loop {
            let quiet = WHO.iter().all(|m| last_write.borrow().get(m).is_none_or(|t| t.elapsed() >= QUIET));
            if quiet || Instant::now() > settle_deadline {
                eprintln!(
                    "bench endpoints: {} after {:.0?} more",
                    if quiet { "both settled" } else { "still writing slices; sampling anyway" },
                    t_settle.elapsed()
                );
                break;
            }
            if let Some(s) = next_slice(&mut stream).await? {
                absorb(s, &mut per_slice, &mut shown);
            }
        }
        let settled_s = t_settle.elapsed().as_secs_f64();
        eprintln!("bench endpoints: turning {sample} of the {pods} Pods ready one at a time");
        let cpu0 = pids.map(cpu_ms);
        let mut lat: HashMap<&'static str, Vec<f64>> = HashMap::new();
        let mut capped: HashMap<&'static str, u32> = HashMap::new();
        // Spread the sample over the Services.
        let step = (pods / sample.max(1)).max(1);
        for k in 0..sample {
            let name = format!("bench-{}", (k * step) % pods);
            let status = json!({ "status": { "conditions": [{ "type": "Ready", "status": "True" }] } });
            let t0 = Instant::now();
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
            // A sample not shown within SAMPLE_CAP counts as SAMPLE_CAP
            // (a lower bound), and the report says how many were capped.
            const SAMPLE_CAP: Duration = Duration::from_secs(60);
            let deadline = t0 + SAMPLE_CAP;
            while WHO.iter().any(|m| !shown.contains_key(&(*m, name.clone()))) {
                if Instant::now() > deadline {
                    for m in WHO {
                        if let std::collections::hash_map::Entry::Vacant(e) = shown.entry((m, name.clone())) {
                            eprintln!("bench endpoints: {m} did not show {name} ready within {SAMPLE_CAP:?}");
                            *capped.entry(m).or_default() += 1;
                            e.insert(t0 + SAMPLE_CAP);
                        }
                    }
                    break;
                }
                if let Some(s) = next_slice(&mut stream).await? {
                    absorb(s, &mut per_slice, &mut shown);
                }
            }
            for m in WHO {
                let t = shown[&(m, name.clone())];
                lat.entry(m).or_default().push(t.saturating_duration_since(t0).as_secs_f64() * 1000.0);
            }
        }
        let cpu1 = pids.map(cpu_ms);
        heartbeat.abort();
        let cpu = [(cpu1[0] - cpu0[0]) / f64::from(sample), (cpu1[1] - cpu0[1]) / f64::from(sample)];
        Ok::<_, BoxError>((lat, cpu, first_listed, settled_s, capped))
    })?;
    let (mut lat, cpu, first_listed, settled_s, capped) = result.map_err(|e| e.to_string())?;
    let mut report = serde_json::Map::new();
    report.insert("services".into(), json!(services));
    report.insert("pods".into(), json!(pods));
    report.insert("sample".into(), json!(sample));
    report.insert("settle_s".into(), json!(settled_s));
    for (i, m) in WHO.iter().enumerate() {
        let v = lat.entry(m).or_default();
        v.sort_by(f64::total_cmp);
        report.insert(
            (*m).to_owned(),
            json!({ "p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99), "samples": v.len(), "capped_samples": capped.get(m).copied().unwrap_or(0), "cpu_ms_per_change": cpu[i], "all_listed_s": first_listed[i] }),
        );
    }
    let (sp, kcm) = (&lat[WHO[0]], &lat[WHO[1]]);
    let ratio50 = percentile(sp, 0.5) / percentile(kcm, 0.5);
    let ratio99 = percentile(sp, 0.99) / percentile(kcm, 0.99);
    report.insert(
        "ratio_signpost_over_kcm".into(),
        json!({ "p50": ratio50, "p99": ratio99, "cpu_per_change": cpu[0] / cpu[1] }),
    );
    println!(
        "Pod ready -> endpoint ready ({services} Services, {pods} Pods, {sample} turned ready one at a time):"
    );
    println!(
        "  signpost endpoints       p50 {:7.1} ms  p99 {:7.1} ms  CPU {:.2} ms/change",
        percentile(sp, 0.5),
        percentile(sp, 0.99),
        cpu[0]
    );
    println!(
        "  kube-controller-manager  p50 {:7.1} ms  p99 {:7.1} ms  CPU {:.2} ms/change",
        percentile(kcm, 0.5),
        percentile(kcm, 0.99),
        cpu[1]
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
