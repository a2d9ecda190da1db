//! The local cluster: a real API server allocates ClusterIPs, a real
//! kube-controller-manager writes EndpointSlices, and teardown leaves nothing.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use signpost_harness::{Error, LocalCluster, netns, process};

use crate::{echo_bin, require_rig};

#[test]
fn service_gets_a_cluster_ip_and_kcm_lists_both_pods_then_teardown_is_clean() {
    require_rig!();
    let t0 = Instant::now();
    let cluster = LocalCluster::new("kcm")
        .unwrap()
        .with_controller_manager()
        .echo_binary(echo_bin())
        .start()
        .unwrap();
    eprintln!(
        "LocalCluster::start to ready API server: {:.1}s (whole start {:.1}s)",
        cluster.startup_time().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let node_ns = cluster.node_namespace().name().to_owned();
    let mut pids = cluster.pids();
    let mut namespaces = vec![node_ns.clone()];
    {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "voy", "namespace": "default" },
            "spec": { "selector": { "app": "voy" }, "ports": [{ "name": "http", "port": 80, "targetPort": "http" }] },
        }))
        .unwrap();
        let cluster_ip = cluster
            .block_on(|client| async move {
                let api: Api<Service> = Api::namespaced(client, "default");
                api.create(&PostParams::default(), &svc)
                    .await
                    .map(|s| s.spec.unwrap().cluster_ip.unwrap())
            })
            .unwrap()
            .unwrap();
        let ip: Ipv4Addr = cluster_ip.parse().unwrap();
        assert!(
            signpost_harness::cluster::in_service_cidr(ip),
            "ClusterIP {ip} is not inside {}",
            signpost_harness::cluster::SERVICE_CIDR
        );

        let a = cluster
            .pod("voyager-0")
            .label("app", "voy")
            .start()
            .unwrap();
        let b = cluster
            .pod("voyager-1")
            .label("app", "voy")
            .start()
            .unwrap();
        namespaces.extend([a.netns().name().to_owned(), b.netns().name().to_owned()]);
        let want = {
            let mut v = vec![a.ip().to_string(), b.ip().to_string()];
            v.sort();
            v
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = cluster
                .block_on(|client| async move {
                    let api: Api<EndpointSlice> = Api::namespaced(client, "default");
                    let lp = ListParams::default().labels("kubernetes.io/service-name=voy");
                    let mut ips: Vec<String> = api
                        .list(&lp)
                        .await
                        .map(|l| {
                            l.items
                                .into_iter()
                                .flat_map(|s| s.endpoints.unwrap_or_default())
                                .flat_map(|e| e.addresses)
                                .collect()
                        })
                        .unwrap_or_default();
                    ips.sort();
                    ips
                })
                .unwrap();
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "EndpointSlices list {got:?}, want {want:?}; logs in {}",
                cluster.logs().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Each echo server is a process of ours too.
        pids.extend([a.echo_pid(), b.echo_pid()]);
    }
    drop(cluster);
    let left = netns::list().unwrap();
    for ns in &namespaces {
        assert!(!left.contains(ns), "namespace {ns} left behind");
    }
    for pid in pids {
        assert!(!process::alive(pid), "process {pid} left running");
    }
}

#[test]
fn a_missing_binary_is_named() {
    require_rig!();
    let empty = tempfile::tempdir().unwrap();
    // Tests run in parallel, so the cluster is given the directory rather
    // than SIGNPOST_UPSTREAM_BIN being changed for the whole process.
    let err = LocalCluster::new("missing")
        .unwrap()
        .upstream_dir(empty.path())
        .start()
        .unwrap_err();
    assert!(err.is_missing_binary());
    let text = err.to_string();
    assert!(
        text.contains("etcd") && text.contains(&empty.path().display().to_string()),
        "{text}"
    );
}

#[test]
fn an_api_server_that_fails_to_start_names_itself_and_its_log() {
    require_rig!();
    let err = LocalCluster::new("badflag")
        .unwrap()
        .apiserver_arg("--no-such-flag=1")
        .start()
        .unwrap_err();
    match &err {
        Error::ProcessExited { name, log, .. } => {
            assert_eq!(name, "kube-apiserver");
            assert!(log.ends_with("kube-apiserver.log"), "{}", log.display());
        }
        other => panic!("expected kube-apiserver to exit, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("kube-apiserver") && text.contains("kube-apiserver.log"),
        "{text}"
    );
}
