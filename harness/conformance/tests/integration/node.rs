//! The real node: kubelet and containerd in the node namespace run Pods
//! as containers. A client's resolv.conf is the one the kubelet wrote;
//! through it the client resolves `voy` with Signpost's DNS and connects
//! through Signpost's proxy to a voyager container (busybox nc), its
//! endpoints written by Signpost's EndpointSlice controller from the
//! readiness the kubelet reports.

use std::net::Ipv4Addr;
use std::time::Duration;

use signpost_conformance::live::Live;
use signpost_conformance::step::{ServiceSpec, Step};
use signpost_conformance::sut::{ClusterChoice, Sut};
use signpost_harness::cluster::KUBELET_POD_RANGE;

const NS: &str = "default";

/// The container's script: the resolv.conf it was given, then `voy:80`
/// by name (busybox nc: glibc's resolver over that resolv.conf), retried
/// while the Service is being programmed.
const SCRIPT: &str = "cat /etc/resolv.conf; echo ---; \
    for i in $(seq 1 60); do \
      out=$(nc -w 2 voy 80 </dev/null 2>&1) && [ -n \"$out\" ] && break; sleep 0.5; \
    done; echo \"reply: $out\"";

#[test]
fn a_kubelet_pod_resolves_voy_and_connects_through_signpost() {
    crate::require_rig!();
    let sut = Sut {
        cluster: ClusterChoice::LocalKubelet,
        ..Sut::default()
    };
    let mut live = Live::start(&sut).expect("a local cluster with a kubelet node and Signpost");
    // The backends run on the node too: the kubelet owns node-a's Pods.
    for name in ["voyager-1", "voyager-2"] {
        live.start_container(
            NS,
            name,
            "voyager",
            &format!("exec nc -ll -p 8080 -e /bin/busybox echo {name}"),
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}\nlogs: {}", live.logs().display()));
    }
    live.apply(NS, &Step::Service("voy", ServiceSpec::selecting("voyager")))
        .expect("Service voy");

    let run = live
        .run_container(NS, "enterprise", SCRIPT, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("the container Pod: {e}\nlogs: {}", live.logs().display()));
    let out = &run.output;
    assert_eq!(run.phase, "Succeeded", "{out}");
    let (conf, rest) = out.split_once("---").unwrap_or((out, ""));
    // RES-1 as the kubelet writes it (ClusterFirst): the namespace's search
    // path, ndots:5, and the cluster DNS address it was given.
    assert!(conf.contains("nameserver 10.0.0.1"), "{conf}");
    assert!(
        conf.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{conf}"
    );
    assert!(conf.contains("options ndots:5"), "{conf}");
    assert!(
        rest.contains("reply: voyager-1") || rest.contains("reply: voyager-2"),
        "no voyager answered through voy:80:\n{out}\nlogs: {}",
        live.logs().display()
    );
    // The Pod's address came from the node's CNI plugin, not from the rig.
    let ip: Ipv4Addr = run
        .pod_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no Pod IP: {run:?}"));
    assert!(
        (KUBELET_POD_RANGE.0..=KUBELET_POD_RANGE.1).contains(&ip),
        "{ip} is not from the CNI range {KUBELET_POD_RANGE:?}"
    );
    live.delete_container_pod(NS, "enterprise")
        .expect("deleting the container Pod");
}
