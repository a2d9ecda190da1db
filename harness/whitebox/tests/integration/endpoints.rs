//! `signpost endpoints` against the real API server: random sequences of
//! Service and Pod changes, after which our slices equal the oracle and
//! kube-controller-manager's slices (in the same cluster, each controller
//! managing its own) hold the same endpoints; and leader election.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod as KPod, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use serde_json::json;
use signpost_endpoints::{KCM_MANAGED_BY, MANAGED_BY};
use signpost_harness::LocalCluster;
use signpost_harness::process::{Daemon, workspace_binary};
use signpost_model::cluster::{Endpoint, EndpointSlice, Pod, Service};
use signpost_model::spec::{SliceShape, endpoints_for};

use crate::require_rig;

const APPS: [&str; 2] = ["voy", "ent"];

#[derive(Debug, Clone)]
enum Op {
    Service {
        svc: u8,
        app: u8,
        named_target: bool,
        publish_not_ready: bool,
        headless: bool,
    },
    DeleteService(u8),
    Pod {
        pod: u8,
        app: u8,
        ready: bool,
        serves_http: bool,
        hostname: bool,
    },
    SetReady(u8, bool),
    Terminate(u8),
    DeletePod(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2u8, 0..2u8, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(svc, app, named_target, publish_not_ready, headless)| Op::Service {
                svc,
                app,
                named_target,
                publish_not_ready,
                headless
            }
        ),
        (0..2u8).prop_map(Op::DeleteService),
        (0..4u8, 0..2u8, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(pod, app, ready, serves_http, hostname)| Op::Pod {
                pod,
                app,
                ready,
                serves_http,
                hostname
            }
        ),
        (0..4u8, any::<bool>()).prop_map(|(p, r)| Op::SetReady(p, r)),
        (0..4u8).prop_map(Op::Terminate),
        (0..4u8).prop_map(Op::DeletePod),
    ]
}

fn svc_name(i: u8) -> String {
    format!("svc-{i}")
}
fn pod_name(i: u8) -> String {
    format!("pod-{i}")
}

async fn apply(client: &kube::Client, ns: &str, case: u32, op: &Op) -> Result<(), kube::Error> {
    let services: Api<KService> = Api::namespaced(client.clone(), ns);
    let pods: Api<KPod> = Api::namespaced(client.clone(), ns);
    let ignore_missing = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        other => other,
    };
    match op {
        Op::Service {
            svc,
            app,
            named_target,
            publish_not_ready,
            headless,
        } => {
            let target = if *named_target {
                json!("http")
            } else {
                json!(8080)
            };
            let mut spec = json!({
                "selector": { "app": APPS[usize::from(*app)] },
                "publishNotReadyAddresses": publish_not_ready,
                "ports": [{ "name": "http", "port": 80, "targetPort": target }, { "name": "metrics", "port": 9090, "targetPort": 9090 }],
            });
            if *headless {
                spec["clusterIP"] = json!("None");
            }
            let obj: KService = serde_json::from_value(
                json!({ "metadata": { "name": svc_name(*svc) }, "spec": spec }),
            )
            .unwrap();
            // Changing a Service's ClusterIP is not allowed: replace it.
            ignore_missing(
                services
                    .delete(&svc_name(*svc), &DeleteParams::default())
                    .await
                    .map(|_| ()),
            )?;
            for _ in 0..50 {
                match services.create(&PostParams::default(), &obj).await {
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    other => return other.map(|_| ()),
                }
            }
            Ok(())
        }
        Op::DeleteService(svc) => ignore_missing(
            services
                .delete(&svc_name(*svc), &DeleteParams::default())
                .await
                .map(|_| ()),
        ),
        Op::Pod {
            pod,
            app,
            ready,
            serves_http,
            hostname,
        } => {
            let ports = if *serves_http {
                json!([{ "name": "http", "containerPort": 8000 + u16::from(*pod) }])
            } else {
                json!([])
            };
            let mut spec = json!({ "nodeName": "node-a", "containers": [{ "name": "c", "image": "x", "ports": ports }] });
            if *hostname {
                spec["hostname"] = json!(pod_name(*pod));
                spec["subdomain"] = json!("svc-0");
            }
            let obj: KPod = serde_json::from_value(json!({
                "metadata": { "name": pod_name(*pod), "labels": { "app": APPS[usize::from(*app)] } },
                "spec": spec,
            }))
            .unwrap();
            match pods.create(&PostParams::default(), &obj).await {
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
                other => other?,
            };
            let ip = format!("10.250.{}.{}", case % 250, pod + 1);
            let status = json!({ "status": {
                "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }],
                "conditions": [{ "type": "Ready", "status": if *ready { "True" } else { "False" } }],
            }});
            pods.patch_status(
                &pod_name(*pod),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
            .map(|_| ())
        }
        Op::SetReady(pod, ready) => {
            let status = json!({ "status": { "conditions": [{ "type": "Ready", "status": if *ready { "True" } else { "False" } }] } });
            ignore_missing(
                pods.patch_status(
                    &pod_name(*pod),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await
                .map(|_| ()),
            )
        }
        Op::Terminate(pod) => {
            let dp = DeleteParams {
                grace_period_seconds: Some(3600),
                ..DeleteParams::default()
            };
            ignore_missing(pods.delete(&pod_name(*pod), &dp).await.map(|_| ()))
        }
        Op::DeletePod(pod) => {
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            ignore_missing(pods.delete(&pod_name(*pod), &dp).await.map(|_| ()))
        }
    }
}

type View = BTreeMap<String, BTreeMap<SliceShape, BTreeSet<Endpoint>>>;

/// (oracle, ours, kube-controller-manager's) for a namespace.
async fn views(client: &kube::Client, ns: &str) -> Result<(View, View, View), kube::Error> {
    let services = Api::<KService>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    let pods = Api::<KPod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    let slices = Api::<KSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    let pods: Vec<Pod> = pods
        .items
        .iter()
        .filter_map(|p| Pod::try_from(p).ok())
        .collect();
    let mut oracle = View::new();
    for s in services
        .items
        .iter()
        .filter_map(|s| Service::try_from(s).ok())
    {
        // A managed Service without endpoints has the placeholder shape,
        // empty (EPS-14): both controllers must keep that one empty slice.
        let eps = endpoints_for(&s, &pods);
        if !eps.is_empty() {
            oracle.insert(s.key.name.clone(), eps);
        }
    }
    let (mut ours, mut kcm) = (View::new(), View::new());
    for k in &slices.items {
        let manager = k
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("endpointslice.kubernetes.io/managed-by"))
            .cloned()
            .unwrap_or_default();
        let Ok(s) = EndpointSlice::try_from(k) else {
            continue;
        };
        let view = if manager == MANAGED_BY {
            &mut ours
        } else if manager == KCM_MANAGED_BY {
            &mut kcm
        } else {
            continue;
        };
        let shape = SliceShape {
            family: s.family,
            ports: s.ports.clone(),
        };
        view.entry(s.service.clone())
            .or_default()
            .entry(shape)
            .or_default()
            .extend(s.endpoints);
    }
    Ok((oracle, ours, kcm))
}

/// A view without empty shapes (EPS-14's placeholder). kube-controller-manager
/// was seen without its placeholder 15 s after a Service was deleted and
/// created again under the same name (the old one's placeholder went with
/// it by garbage collection); spec/endpoints.md lists it.
fn non_empty(view: &View) -> View {
    view.iter()
        .map(|(svc, shapes)| {
            let shapes: BTreeMap<_, _> = shapes
                .iter()
                .filter(|(_, eps)| !eps.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (svc.clone(), shapes)
        })
        .filter(|(_, shapes)| !shapes.is_empty())
        .collect()
}

fn start_signpost(
    cluster: &LocalCluster<signpost_harness::Running>,
    identity: &str,
    port: u16,
    lease_secs: u64,
) -> Daemon {
    let bin = workspace_binary("signpost")
        .expect("the signpost binary (cargo builds it for its own tests)");
    // With exactly deploy/'s RBAC (a missing verb fails the test).
    let kc = cluster
        .component_kubeconfig(signpost_harness::deploy::Component::Endpoints)
        .unwrap();
    let args = vec![
        format!("--kubeconfig={}", kc.display()),
        "endpoints".into(),
        format!("--identity={identity}"),
        format!("--lease-duration={lease_secs}"),
        format!("--metrics-addr=127.0.0.1:{port}"),
    ];
    Daemon::spawn(
        cluster.node_namespace(),
        &format!("signpost endpoints {identity}"),
        &bin,
        &args,
        cluster.logs().join(format!("signpost-{identity}.log")),
    )
    .unwrap()
}

#[test]
fn slices_equal_the_oracle_and_kube_controller_manager_over_generated_sequences() {
    require_rig!();
    let cluster = LocalCluster::new("eps-diff")
        .unwrap()
        .with_controller_manager()
        .start()
        .unwrap();
    let _ours = start_signpost(&cluster, "a", 10281, 15);
    let cases = AtomicU32::new(0);
    let mut runner = TestRunner::new(PtConfig {
        cases: 50,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let started = Instant::now();
    let result = runner.run(&proptest::collection::vec(op(), 1..8), |ops| {
        let case = cases.fetch_add(1, Ordering::Relaxed);
        let ns = format!("seq-{case}");
        let outcome = cluster
            .block_on(|client| async move {
                let nss: Api<Namespace> = Api::all(client.clone());
                let obj: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } })).unwrap();
                nss.create(&PostParams::default(), &obj).await.map_err(|e| e.to_string())?;
                for op in &ops {
                    apply(&client, &ns, case, op).await.map_err(|e| format!("{op:?}: {e}"))?;
                }
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let (oracle, ours, kcm) = views(&client, &ns).await.map_err(|e| e.to_string())?;
                    // kube-controller-manager is held to EPS-14 only where it
                    // keeps it: see non_empty.
                    if oracle == ours && non_empty(&oracle) == non_empty(&kcm) {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(format!("{ns} after {ops:?}:\n oracle {oracle:#?}\n signpost {ours:#?}\n kube-controller-manager {kcm:#?}"));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        outcome.map_err(TestCaseError::fail)
    });
    eprintln!(
        "{} sequences in {:.1}s",
        cases.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{e}\nlogs in {}", cluster.logs().display());
    }
    assert!(cases.load(Ordering::Relaxed) >= 50);
}

fn metric(cluster: &LocalCluster<signpost_harness::Running>, port: u16, name: &str) -> Option<u64> {
    cluster.metric(port, name).map(|v| v as u64)
}

fn holder(cluster: &LocalCluster<signpost_harness::Running>) -> Option<String> {
    cluster
        .block_on(|client| async move {
            let leases: Api<Lease> = Api::namespaced(client, "kube-system");
            leases
                .get_opt("signpost-endpoints")
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec?.holder_identity)
        })
        .ok()
        .flatten()
}

#[test]
fn one_leader_writes_and_the_standby_takes_over_within_the_lease() {
    require_rig!();
    let lease = 4;
    let cluster = LocalCluster::new("eps-lease").unwrap().start().unwrap();
    let mut a = start_signpost(&cluster, "a", 10282, lease);
    std::thread::sleep(Duration::from_millis(500));
    let mut b = start_signpost(&cluster, "b", 10283, lease);
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(h) = holder(&cluster) {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "nobody took the lease; logs in {}",
            cluster.logs().display()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (leader_port, standby_port, standby_id) = if first == "a" {
        (10282, 10283, "b")
    } else {
        (10283, 10282, "a")
    };
    let wait_slices = |pod: u8| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = cluster
                .block_on(|client| async move {
                    let (_, ours, _) = views(&client, "default").await.unwrap();
                    ours.values()
                        .flat_map(|m| m.values())
                        .flatten()
                        .filter(|e| e.pod.as_deref() == Some(&pod_name(pod)))
                        .count()
                })
                .unwrap();
            if n > 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no endpoint for {}; logs in {}",
                pod_name(pod),
                cluster.logs().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    cluster
        .block_on(|client| async move {
            apply(
                &client,
                "default",
                0,
                &Op::Service {
                    svc: 0,
                    app: 0,
                    named_target: false,
                    publish_not_ready: false,
                    headless: false,
                },
            )
            .await
            .unwrap();
            apply(
                &client,
                "default",
                0,
                &Op::Pod {
                    pod: 0,
                    app: 0,
                    ready: true,
                    serves_http: true,
                    hostname: false,
                },
            )
            .await
            .unwrap();
        })
        .unwrap();
    wait_slices(0);
    // The counter moves once the create has returned, which can be after
    // the slice is already visible through the API: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&cluster, leader_port, "signpost_endpoints_writes_total").unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the leader wrote");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(&cluster, standby_port, "signpost_endpoints_writes_total"),
        Some(0),
        "the standby never writes"
    );
    assert_eq!(
        metric(&cluster, standby_port, "signpost_endpoints_leader"),
        Some(0)
    );

    // Crash the leader; the standby takes over within the lease time.
    let killed = Instant::now();
    if first == "a" {
        a.kill()
    } else {
        b.kill()
    }
    cluster
        .block_on(|client| async move {
            apply(
                &client,
                "default",
                0,
                &Op::Pod {
                    pod: 1,
                    app: 0,
                    ready: true,
                    serves_http: true,
                    hostname: false,
                },
            )
            .await
            .unwrap();
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3 * lease);
    while holder(&cluster).as_deref() != Some(standby_id) {
        assert!(
            Instant::now() < deadline,
            "the standby did not take over; logs in {}",
            cluster.logs().display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let takeover = killed.elapsed();
    wait_slices(1);
    let serving = killed.elapsed();
    eprintln!(
        "lease {lease}s: standby {standby_id} took over {:.2}s after the leader was killed; new endpoint written after {:.2}s",
        takeover.as_secs_f64(),
        serving.as_secs_f64()
    );
    // Within the lease duration plus one retry period of the standby (lease/5) and scheduling slack.
    assert!(
        takeover <= Duration::from_secs(lease) + Duration::from_millis(lease * 200 + 500),
        "{takeover:?}"
    );
    assert!(metric(&cluster, standby_port, "signpost_endpoints_writes_total").unwrap() > 0);
}

#[test]
fn a_leader_stopped_gracefully_hands_the_lease_over_at_once() {
    require_rig!();
    // A long lease: without a release the standby would wait it out (20 s).
    let lease = 20;
    let cluster = LocalCluster::new("eps-release").unwrap().start().unwrap();
    let mut a = start_signpost(&cluster, "a", 10284, lease);
    let deadline = Instant::now() + Duration::from_secs(20);
    while holder(&cluster).as_deref() != Some("a") {
        assert!(
            Instant::now() < deadline,
            "a never led; logs in {}",
            cluster.logs().display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut b = start_signpost(&cluster, "b", 10285, lease);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        holder(&cluster).as_deref(),
        Some("a"),
        "b waits while a leads"
    );
    let stopped = Instant::now();
    a.terminate();
    let status = a
        .wait_exit(Duration::from_secs(10))
        .expect("a exits on SIGTERM");
    assert!(status.success(), "a exits cleanly: {status}");
    let log = std::fs::read_to_string(cluster.logs().join("signpost-a.log")).unwrap();
    assert!(
        log.contains("released the lease"),
        "a says it released:\n{log}"
    );
    let deadline = stopped + Duration::from_secs(lease / 2);
    while holder(&cluster).as_deref() != Some("b") {
        assert!(
            Instant::now() < deadline,
            "b did not take over within {}s of a's graceful stop (lease {lease}s); holder {:?}",
            lease / 2,
            holder(&cluster)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "b leads {:.1}s after a's SIGTERM (lease {lease}s)",
        stopped.elapsed().as_secs_f64()
    );
    b.check_running().unwrap();
}

#[test]
fn without_leader_election_it_writes_at_once_and_takes_no_lease() {
    require_rig!();
    let cluster = LocalCluster::new("eps-noelect").unwrap().start().unwrap();
    let kc = cluster
        .component_kubeconfig(signpost_harness::deploy::Component::Endpoints)
        .unwrap();
    let _eps = Daemon::spawn(
        cluster.node_namespace(),
        "signpost endpoints solo",
        &workspace_binary("signpost").unwrap(),
        &[
            format!("--kubeconfig={}", kc.display()),
            "endpoints".into(),
            "--leader-elect=false".into(),
            "--metrics-addr=127.0.0.1:10286".into(),
        ],
        cluster.logs().join("signpost-solo.log"),
    )
    .unwrap();
    cluster
        .block_on(|client| async move {
            let svc = Op::Service {
                svc: 0,
                app: 0,
                named_target: false,
                publish_not_ready: false,
                headless: false,
            };
            apply(&client, "default", 0, &svc).await.unwrap();
            let pod = Op::Pod {
                pod: 0,
                app: 0,
                ready: true,
                serves_http: true,
                hostname: false,
            };
            apply(&client, "default", 0, &pod).await.unwrap();
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let written = metric(&cluster, 10286, "signpost_endpoints_writes_total").unwrap_or(0);
        if written > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing written; logs in {}",
            cluster.logs().display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        metric(&cluster, 10286, "signpost_endpoints_leader"),
        Some(1)
    );
    assert_eq!(holder(&cluster), None, "no lease was taken");
}

/// Issue 13, finding 7: a Node status update (as a kubelet heartbeat) makes
/// no reconcile, and a Pod change reconciles only the Service selecting
/// it — before, every Node update requeued every Service and every Pod
/// event its whole namespace. Counted from the reconcile histogram.
#[test]
fn node_heartbeats_and_a_pod_change_reconcile_only_what_they_touch() {
    require_rig!();
    let cluster = LocalCluster::new("eps-route").unwrap().start().unwrap();
    let kc = cluster
        .component_kubeconfig(signpost_harness::deploy::Component::Endpoints)
        .unwrap();
    let _eps = Daemon::spawn(
        cluster.node_namespace(),
        "signpost endpoints routing",
        &workspace_binary("signpost").unwrap(),
        &[
            format!("--kubeconfig={}", kc.display()),
            "endpoints".into(),
            "--leader-elect=false".into(),
            "--metrics-addr=127.0.0.1:10287".into(),
        ],
        cluster.logs().join("signpost-route.log"),
    )
    .unwrap();
    const OTHERS: usize = 12;
    cluster
        .block_on(|client| async move {
            let svc = Op::Service {
                svc: 0,
                app: 0,
                named_target: false,
                publish_not_ready: false,
                headless: false,
            };
            apply(&client, "default", 0, &svc).await.unwrap();
            let services: Api<KService> = Api::namespaced(client.clone(), "default");
            for i in 0..OTHERS {
                let obj: KService = serde_json::from_value(json!({
                    "metadata": { "name": format!("other-{i}") },
                    "spec": { "selector": { "app": format!("other-{i}") }, "ports": [{ "port": 80 }] },
                }))
                .unwrap();
                services.create(&PostParams::default(), &obj).await.unwrap();
            }
            let pod = Op::Pod {
                pod: 0,
                app: 0,
                ready: true,
                serves_http: true,
                hostname: false,
            };
            apply(&client, "default", 0, &pod).await.unwrap();
        })
        .unwrap();
    let syncs = || {
        metric(
            &cluster,
            10287,
            "signpost_endpoints_sync_duration_seconds_count",
        )
        .unwrap_or(0)
    };
    // Quiet: the slice of svc-0 is written and nothing more happens for 1 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (syncs(), Instant::now());
    while metric(&cluster, 10287, "signpost_endpoints_writes_total").unwrap_or(0) == 0
        || last.1.elapsed() < Duration::from_secs(1)
    {
        assert!(
            Instant::now() < deadline,
            "never quiet; logs in {}",
            cluster.logs().display()
        );
        std::thread::sleep(Duration::from_millis(100));
        let now = syncs();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let before = syncs();
    cluster
        .block_on(|client| async move {
            let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
            for beat in 0..5 {
                let patch = json!({ "metadata": { "annotations": { "signpost.test/heartbeat": beat.to_string() } } });
                nodes
                    .patch(signpost_harness::cluster::NODE_NAME, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let after_nodes = syncs();
    assert_eq!(after_nodes, before, "Node heartbeats reconciled Services");
    cluster
        .block_on(|client| async move {
            let pods: Api<KPod> = Api::namespaced(client, "default");
            let patch = json!({ "metadata": { "labels": { "signpost.test/touched": "yes" } } });
            pods.patch(&pod_name(0), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let after_pod = syncs();
    assert!(
        after_pod > after_nodes && after_pod - after_nodes <= 2,
        "one Pod change made {} reconciles with {} other Services in its namespace",
        after_pod - after_nodes,
        OTHERS
    );
}

/// Issue 13, finding 1: two controllers that both write (split brain: here
/// two replicas without leader election) and plan the same create from the
/// same view do not duplicate a slice. Slices are created under a name
/// hashed from their content, so the second create is refused (409) and
/// that writer re-reads; with `generateName` both creates succeeded.
/// Counted from both controllers' writes: one create per Service, and one
/// slice per Service in the end.
#[test]
fn two_writers_never_duplicate_a_slice() {
    require_rig!();
    let cluster = LocalCluster::new("eps-split").unwrap().start().unwrap();
    let kc = cluster
        .component_kubeconfig(signpost_harness::deploy::Component::Endpoints)
        .unwrap();
    let spawn = |who: &str, port: u16| {
        Daemon::spawn(
            cluster.node_namespace(),
            &format!("signpost endpoints {who}"),
            &workspace_binary("signpost").unwrap(),
            &[
                format!("--kubeconfig={}", kc.display()),
                "endpoints".into(),
                "--leader-elect=false".into(),
                format!("--metrics-addr=127.0.0.1:{port}"),
            ],
            cluster.logs().join(format!("signpost-{who}.log")),
        )
        .unwrap()
    };
    let _a = spawn("a", 10287);
    let _b = spawn("b", 10288);
    let services = 8u8;
    cluster
        .block_on(|client| async move {
            // Pods first, ready: each Service then needs exactly one create.
            for pod in 0..3 {
                let op = Op::Pod {
                    pod,
                    app: 0,
                    ready: true,
                    serves_http: true,
                    hostname: false,
                };
                apply(&client, "default", 0, &op).await.unwrap();
            }
            // Both controllers have listed (each wrote its metrics once up).
            tokio::time::sleep(Duration::from_secs(2)).await;
            let all = (0..services).map(|svc| {
                let client = client.clone();
                async move {
                    let op = Op::Service {
                        svc,
                        app: 0,
                        named_target: false,
                        publish_not_ready: false,
                        headless: false,
                    };
                    apply(&client, "default", 0, &op).await
                }
            });
            for r in futures::future::join_all(all).await {
                r.unwrap();
            }
        })
        .unwrap();
    let writes = || {
        metric(&cluster, 10287, "signpost_endpoints_writes_total").unwrap_or(0)
            + metric(&cluster, 10288, "signpost_endpoints_writes_total").unwrap_or(0)
    };
    let ours = || {
        cluster
            .block_on(|client| async move {
                Api::<KSlice>::namespaced(client, "default")
                    .list(&ListParams::default().labels(&format!(
                        "endpointslice.kubernetes.io/managed-by={MANAGED_BY}"
                    )))
                    .await
                    .unwrap()
                    .items
            })
            .unwrap()
    };
    // Settled: every Service has its slice and no write for 3 s.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = (u64::MAX, Instant::now());
    loop {
        let w = writes();
        if w != last.0 {
            last = (w, Instant::now());
        }
        let per_service: BTreeSet<String> = ours()
            .iter()
            .filter_map(|s| {
                s.metadata
                    .labels
                    .as_ref()?
                    .get("kubernetes.io/service-name")
                    .cloned()
            })
            .collect();
        if per_service.len() == usize::from(services) && last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {w} writes; logs in {}",
            cluster.logs().display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let slices = ours();
    let names: Vec<_> = slices
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        slices.len(),
        usize::from(services),
        "one slice per Service: {names:?}"
    );
    assert_eq!(
        writes(),
        u64::from(services),
        "one create per Service and nothing else (a duplicate is a create and then a delete); \
         conflicts: {:?} + {:?}; logs in {}",
        metric(&cluster, 10287, "signpost_endpoints_conflicts_total"),
        metric(&cluster, 10288, "signpost_endpoints_conflicts_total"),
        cluster.logs().display()
    );
}

/// A leader frozen past its lease (SIGSTOP: a paused VM, a long stall)
/// while the standby takes over and Pods change, then thawed: it writes
/// nothing (every write first checks the renew deadline of its last
/// renewal: a fenced write is counted, not sent), steps down, and the
/// slices end equal to what the API says.
#[test]
fn a_leader_thawed_after_its_lease_writes_nothing() {
    require_rig!();
    let cluster = LocalCluster::new("eps-thaw").unwrap().start().unwrap();
    let a = start_signpost(&cluster, "a", 10301, 6);
    let deadline = Instant::now() + Duration::from_secs(20);
    while holder(&cluster).as_deref() != Some("a") {
        assert!(Instant::now() < deadline, "a never led");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _b = start_signpost(&cluster, "b", 10302, 6);
    let pod = |i: u8| Op::Pod {
        pod: i,
        app: 0,
        ready: true,
        serves_http: true,
        hostname: false,
    };
    let svc = Op::Service {
        svc: 0,
        app: 0,
        named_target: false,
        publish_not_ready: false,
        headless: false,
    };
    cluster
        .block_on(|client| async move {
            apply(&client, "default", 0, &svc).await.unwrap();
            apply(&client, "default", 0, &pod(0)).await.unwrap();
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&cluster, 10301, "signpost_endpoints_writes_total").unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "a never wrote");
        std::thread::sleep(Duration::from_millis(100));
    }
    let written_by_a = metric(&cluster, 10301, "signpost_endpoints_writes_total").unwrap();
    a.signal(nix::sys::signal::Signal::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(30);
    while holder(&cluster).as_deref() != Some("b") {
        assert!(Instant::now() < deadline, "b never took over");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Changes a's watches queue up while it is frozen.
    cluster
        .block_on(|client| async move {
            for i in 1..4 {
                apply(&client, "default", 0, &pod(i)).await.unwrap();
            }
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&cluster, 10302, "signpost_endpoints_writes_total").unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "b never wrote");
        std::thread::sleep(Duration::from_millis(100));
    }
    a.signal(nix::sys::signal::Signal::SIGCONT);
    std::thread::sleep(Duration::from_secs(4));
    let after = metric(&cluster, 10301, "signpost_endpoints_writes_total").unwrap_or(0);
    let fenced = metric(&cluster, 10301, "signpost_endpoints_fenced_writes_total");
    let conflicts = metric(&cluster, 10301, "signpost_endpoints_conflicts_total");
    eprintln!(
        "thawed leader: writes {written_by_a} -> {after}, fenced {fenced:?}, conflicts {conflicts:?}"
    );
    assert_eq!(after, written_by_a, "the thawed leader wrote");
    assert_eq!(holder(&cluster).as_deref(), Some("b"));
    assert_eq!(
        metric(&cluster, 10301, "signpost_endpoints_leader"),
        Some(0)
    );
}

/// Leader failover under churn (issue 13), checked from the API server's
/// audit log: Pods change all along while the leader is killed (-9, no
/// release), restarted as a standby, and the next leader is frozen past
/// its lease and thawed. Every EndpointSlice write the API server took
/// came from the replica that held the Lease at that moment (the last
/// Lease write before it, told apart by User-Agent), and the slices equal
/// the oracle at the end.
#[test]
fn leader_failover_under_churn_never_has_two_writers() {
    require_rig!();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("audit-policy.yaml");
    let audit = dir.path().join("audit.log");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
         - level: Metadata\n  verbs: [create, update, patch, delete]\n  resources:\n\
         \x20 - group: discovery.k8s.io\n    resources: [endpointslices]\n\
         \x20 - group: coordination.k8s.io\n    resources: [leases]\n\
         - level: None\n",
    )
    .unwrap();
    let cluster = LocalCluster::new("eps-audit")
        .unwrap()
        .apiserver_arg(format!("--audit-policy-file={}", policy.display()))
        .apiserver_arg(format!("--audit-log-path={}", audit.display()))
        .start()
        .unwrap();
    let mut a = start_signpost(&cluster, "a", 10303, 6);
    let deadline = Instant::now() + Duration::from_secs(20);
    while holder(&cluster).as_deref() != Some("a") {
        assert!(Instant::now() < deadline, "a never led");
        std::thread::sleep(Duration::from_millis(100));
    }
    let b = start_signpost(&cluster, "b", 10304, 6);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let changes = std::thread::scope(|scope| {
        let churning = stop.clone();
        let churn = scope.spawn(|| {
            cluster
                .block_on(move |client| async move {
                    let mut n = 0u32;
                    let svc = Op::Service {
                        svc: 0,
                        app: 0,
                        named_target: false,
                        publish_not_ready: false,
                        headless: false,
                    };
                    apply(&client, "default", 0, &svc).await.unwrap();
                    while !churning.load(Ordering::Relaxed) {
                        let i = u8::try_from(n % 6).unwrap();
                        let op = if n < 6 {
                            Op::Pod {
                                pod: i,
                                app: 0,
                                ready: true,
                                serves_http: true,
                                hostname: false,
                            }
                        } else {
                            Op::SetReady(i, (n / 6).is_multiple_of(2))
                        };
                        apply(&client, "default", 0, &op).await.unwrap();
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(150)).await;
                    }
                    n
                })
                .unwrap()
        });
        // The leader dies without releasing; it comes back as a standby.
        std::thread::sleep(Duration::from_secs(4));
        a.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        while holder(&cluster).as_deref() != Some("b") {
            assert!(Instant::now() < deadline, "b never took over");
            std::thread::sleep(Duration::from_millis(200));
        }
        let _a2 = start_signpost(&cluster, "a", 10303, 6);
        std::thread::sleep(Duration::from_secs(3));
        // The new leader freezes past its lease, and thaws.
        b.signal(nix::sys::signal::Signal::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(30);
        while holder(&cluster).as_deref() != Some("a") {
            assert!(Instant::now() < deadline, "a never took over again");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(2));
        b.signal(nix::sys::signal::Signal::SIGCONT);
        std::thread::sleep(Duration::from_secs(4));
        stop.store(true, Ordering::Relaxed);
        let changes = churn.join().unwrap();
        // Settled: the slices equal the oracle.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (oracle, ours, _) = cluster
                .block_on(|client| async move { views(&client, "default").await })
                .unwrap()
                .unwrap();
            if oracle == ours {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "slices {ours:?} != oracle {oracle:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        changes
    });
    // The audit: (completed at, who, what) of every successful write.
    let text = std::fs::read_to_string(&audit).unwrap();
    let mut events: Vec<(String, String, String)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            e["responseStatus"]["code"]
                .as_u64()
                .is_some_and(|c| c < 300)
        })
        .filter_map(|e| {
            let agent = e["userAgent"].as_str()?;
            // `signpost-endpoints/<version> (<identity>)`
            let who = agent
                .strip_prefix("signpost-endpoints/")?
                .split_once(" (")?
                .1
                .strip_suffix(')')?
                .to_owned();
            Some((
                e["stageTimestamp"].as_str()?.to_owned(),
                who,
                e["objectRef"]["resource"].as_str()?.to_owned(),
            ))
        })
        .collect();
    events.sort();
    let mut holder_now: Option<&str> = None;
    let (mut writes, mut by): (usize, BTreeMap<&str, usize>) = (0, BTreeMap::new());
    for (at, who, resource) in &events {
        if resource == "leases" {
            holder_now = Some(who);
        } else {
            writes += 1;
            *by.entry(who).or_default() += 1;
            assert_eq!(
                holder_now,
                Some(who.as_str()),
                "{who} wrote a slice at {at} while {holder_now:?} held the lease"
            );
        }
    }
    eprintln!(
        "failover under churn: {changes} Pod changes, {writes} slice writes ({by:?}), each by the lease holder of the moment; slices equal the oracle"
    );
    assert!(by.len() == 2, "both replicas led and wrote: {by:?}");
}
