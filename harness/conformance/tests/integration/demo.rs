//! `signpost demo` as a user runs it: the real `signpost` binary execs the
//! rig's `signpost-demo`, which starts a cluster and Signpost's components
//! and tells the seed's story; it must end with a voyager Pod's reply.

use std::process::Command;

#[test]
fn signpost_demo_ends_with_the_voyager_pods_reply() {
    crate::require_rig!();
    let signpost = signpost_harness::process::workspace_binary("signpost")
        .expect("the signpost binary (cargo build -p signpost)");
    let out = Command::new(&signpost)
        .args(["demo", "--voyagers", "2", "--scale-to", "3"])
        .output()
        .expect("running signpost demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "signpost demo failed:\n{stdout}\n{stderr}"
    );
    for step in [
        "POST admitted: ClusterIP 10.96.",
        "EndpointSlice written by signpost endpoints: 2 ready endpoint(s)",
        "DNS: voy.default.svc.cluster.local -> 10.96.",
        "proxy programmed: 10.96.",
        "enterprise-1: getent ahosts voy -> 10.96.",
        "EndpointSlice of voy: 3 ready endpoints",
    ] {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }
    // Scaled to three, every voyager answered through the ClusterIP.
    let spread = stdout
        .lines()
        .find(|l| l.contains("proxy: 10.96."))
        .unwrap_or_else(|| panic!("no spread line in:\n{stdout}"));
    for pod in ["voyager-1", "voyager-2", "voyager-3"] {
        assert!(spread.contains(pod), "{pod} missing: {spread}");
    }
    let last_reply = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("enterprise-1: connect voy:80"))
        .unwrap_or_else(|| panic!("no final connection in:\n{stdout}"));
    assert!(last_reply.contains("answered by voyager-"), "{last_reply}");
}
