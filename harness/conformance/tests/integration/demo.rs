//! `signpost demo` as a user runs it: the real `signpost` binary execs the
//! rig's `signpost-demo`, which starts a cluster and Signpost's components
//! and tells the seed's story; it must end with a voyager Pod's reply. With
//! `--dataplane ipvs` on this kernel (no IPVS) the node runs in the kernel
//! VM rig, and the story is the same.

use std::process::Command;

/// Runs `signpost demo ARGS` and checks its story; `in_vm`: the story's
/// lines come from the guest, prefixed `vm| `.
fn demo_tells_the_story(args: &[&str], in_vm: bool) {
    let signpost = signpost_harness::process::workspace_binary("signpost")
        .expect("the signpost binary (cargo build -p signpost)");
    let out = Command::new(&signpost)
        .arg("demo")
        .args(args)
        .args(["--voyagers", "2", "--scale-to", "3"])
        .output()
        .expect("running signpost demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "signpost demo failed:\n{stdout}\n{stderr}"
    );
    let story: Vec<&str> = stdout
        .lines()
        .filter_map(|l| {
            if in_vm {
                l.strip_prefix("vm| ")
            } else {
                Some(l)
            }
        })
        .collect();
    let told = story.join("\n");
    for step in [
        "EndpointSlice written by signpost endpoints: 2 ready endpoint(s)",
        "EndpointSlice of voy: 3 ready endpoints",
    ] {
        assert!(told.contains(step), "no {step:?} in:\n{stdout}");
    }
    // Each of these names the ClusterIP, from the rig's Service CIDR.
    let cluster_ip_after = |step: &str| -> bool {
        told.split(step).skip(1).any(|rest| {
            rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
                .and_then(|ip| ip.parse().ok())
                .is_some_and(signpost_harness::cluster::in_service_cidr)
        })
    };
    for step in [
        "POST admitted: ClusterIP ",
        "DNS: voy.default.svc.cluster.local -> ",
        "proxy programmed: ",
        "enterprise-1: getent ahosts voy -> ",
    ] {
        assert!(
            cluster_ip_after(step),
            "no {step:?} with a ClusterIP in:\n{stdout}"
        );
    }
    // Scaled to three, every voyager answered through the ClusterIP.
    let spread = story
        .iter()
        .find(|l| l.contains(" proxy: ") && l.contains(" connections)"))
        .unwrap_or_else(|| panic!("no spread line in:\n{stdout}"));
    for pod in ["voyager-1", "voyager-2", "voyager-3"] {
        assert!(spread.contains(pod), "{pod} missing: {spread}");
    }
    let last_reply = story
        .iter()
        .rev()
        .find(|l| l.starts_with("enterprise-1: connect voy:80"))
        .unwrap_or_else(|| panic!("no final connection in:\n{stdout}"));
    assert!(last_reply.contains("answered by voyager-"), "{last_reply}");
}

#[test]
fn signpost_demo_ends_with_the_voyager_pods_reply() {
    crate::require_rig!();
    demo_tells_the_story(&[], false);
}

#[test]
fn signpost_demo_over_ipvs_runs_the_node_in_the_kernel_vm() {
    crate::require_rig!();
    if signpost_conformance::sut::ipvs_here() {
        // This kernel has IPVS: the demo runs here, as over nftables.
        demo_tells_the_story(&["--dataplane", "ipvs"], false);
        return;
    }
    if let Err(why) = signpost_harness::vm::available() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but the kernel VM rig cannot run: {why}");
        }
        eprintln!("SKIPPED (not in CI): {why}");
        return;
    }
    demo_tells_the_story(&["--dataplane", "ipvs"], true);
}
