//! The IPVS data plane in the kernel VM rig (this machine's kernel has no
//! IPVS): the library against the kernel, the proxy core's generated tables
//! checked with real TCP and UDP connections, restart adoption and cleanup.
//! One boot runs every section of `signpost-vmtest`; the test fails if the
//! VM cannot boot.

use std::path::PathBuf;
use std::time::Duration;

use signpost_harness::process::workspace_binary;
use signpost_harness::vm;

fn vm_available() -> Result<(), String> {
    let why = match vm::available() {
        Ok(()) => return Ok(()),
        Err(why) => why,
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but the kernel VM rig cannot run: {why}");
    }
    Err(why)
}

#[test]
fn ipvs_in_the_kernel_vm() {
    if let Err(why) = vm_available() {
        eprintln!("SKIPPED (not in CI): {why}");
        return;
    }
    let image = vm::image().expect("the VM image builds");
    let files: Vec<(PathBuf, &str)> = vec![
        (
            PathBuf::from(env!("CARGO_BIN_EXE_signpost-vmtest")),
            "/test/signpost-vmtest",
        ),
        (crate::echo_bin(), "/test/signpost-echo"),
        (
            workspace_binary("signpost").expect("the signpost binary"),
            "/test/signpost",
        ),
    ];
    let script = "set -e\n\
        /test/signpost-vmtest genl\n\
        /test/signpost-vmtest dataplane --cases 10\n\
        /test/signpost-vmtest restart\n\
        /test/signpost-vmtest drain\n\
        /test/signpost-vmtest nodeips\n\
        /test/signpost-vmtest masquerade\n\
        /test/signpost-vmtest cleanup\n";
    let out =
        vm::run(&image, &files, script, Duration::from_secs(900)).expect("the VM boots and runs");
    let report: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.starts_with("PASS ") || l.starts_with("FAIL ") || l.contains(": "))
        .filter(|l| !l.starts_with('['))
        .collect();
    eprintln!("VM ({:.1?}):\n{}", out.elapsed, report.join("\n"));
    assert!(
        out.success(),
        "the VM script failed (exit {:?}):\n{}",
        out.code,
        vm::tail(&out.console, 80)
    );
    for section in [
        "genl",
        "dataplane",
        "restart",
        "drain",
        "nodeips",
        "masquerade",
        "cleanup",
    ] {
        assert!(
            out.console
                .lines()
                .any(|l| l.trim() == format!("PASS {section}")),
            "section {section} did not pass:\n{}",
            vm::tail(&out.console, 80)
        );
    }
}

#[test]
fn signpost_proxy_ipvs_follows_the_api_server() {
    proxy_in_the_vm_follows_the_api_server("signpost");
}

/// The same check on upstream kube-proxy `--proxy-mode=ipvs`: the rig's
/// Service and slice, real connections through its IPVS table.
#[test]
fn kube_proxy_ipvs_follows_the_api_server() {
    proxy_in_the_vm_follows_the_api_server("kube-proxy");
}

fn proxy_in_the_vm_follows_the_api_server(which: &str) {
    use k8s_openapi::api::core::v1::Service as KService;
    use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
    use kube::api::{Api, PostParams};
    use serde_json::json;

    crate::require_rig!();
    if let Err(why) = vm_available() {
        eprintln!("SKIPPED (not in CI): {why}");
        return;
    }
    let cluster = signpost_harness::LocalCluster::new("vmipvs")
        .unwrap()
        .start()
        .unwrap();
    let svc: KService = serde_json::from_value(json!({
        "metadata": { "name": "voy" },
        "spec": { "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] },
    }))
    .unwrap();
    let slice: KSlice = serde_json::from_value(json!({
        "metadata": { "name": "voy-1", "labels": { "kubernetes.io/service-name": "voy" } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": [
            { "addresses": ["10.244.0.1"], "conditions": { "ready": true }, "nodeName": "node-a" },
            { "addresses": ["10.244.0.2"], "conditions": { "ready": true }, "nodeName": "node-a" },
        ],
    }))
    .unwrap();
    let vip = cluster
        .block_on(|client| async move {
            let created = Api::<KService>::namespaced(client.clone(), "default")
                .create(&PostParams::default(), &svc)
                .await
                .unwrap();
            Api::<KSlice>::namespaced(client, "default")
                .create(&PostParams::default(), &slice)
                .await
                .unwrap();
            created.spec.unwrap().cluster_ip.unwrap()
        })
        .unwrap();
    let kc = vm::guest_kubeconfig(&cluster).unwrap();
    let image = vm::image().expect("the VM image builds");
    let mut files: Vec<(PathBuf, &str)> = vec![
        (
            PathBuf::from(env!("CARGO_BIN_EXE_signpost-vmtest")),
            "/test/signpost-vmtest",
        ),
        (crate::echo_bin(), "/test/signpost-echo"),
        (kc, "/test/kubeconfig"),
    ];
    if which == "kube-proxy" {
        files.push((
            signpost_harness::upstream::binary("kube-proxy").expect("kube-proxy (ci/upstream)"),
            "/test/kube-proxy",
        ));
    } else {
        files.push((
            workspace_binary("signpost").expect("the signpost binary"),
            "/test/signpost",
        ));
    }
    let out = vm::run_with(
        &image,
        &files,
        &format!("/test/signpost-vmtest e2e --vip {vip} --port 80 --proxy {which}\n"),
        Duration::from_secs(600),
        Some(vm::Forwards {
            netns: cluster.node_namespace(),
        }),
    )
    .expect("the VM boots and runs");
    eprintln!(
        "{}",
        out.console
            .lines()
            .filter(|l| l.starts_with("e2e:") || l.starts_with("PASS") || l.starts_with("FAIL"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.success(), "e2e failed:\n{}", vm::tail(&out.console, 80));
}
