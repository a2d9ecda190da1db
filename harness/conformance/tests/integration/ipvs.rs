//! Signpost's IPVS proxy certified in the kernel VM rig: `signpost-conform
//! --proxy signpost-ipvs` on this kernel (no IPVS) runs the control plane
//! here and the node in the guest, and the reports come back over the
//! console. PXY-12 is the rule whose failure this found: a Pod reached the
//! node's own listener through `ClusterIP:2222`.

use crate::{reports_dir, require_rig};

#[test]
fn signpost_ipvs_certifies_in_the_kernel_vm() {
    require_rig!();
    if let Err(why) = signpost_harness::vm::available() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but the kernel VM rig cannot run: {why}");
        }
        eprintln!("SKIPPED (not in CI): {why}");
        return;
    }
    let out = reports_dir();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_signpost-conform"))
        .args(["--proxy", "signpost-ipvs", "--no-features", "--walks", "1"])
        .args(["--name", "test-signpost-ipvs", "--out"])
        .arg(&out)
        .status()
        .expect("signpost-conform runs");
    let json = std::fs::read_to_string(out.join("test-signpost-ipvs.json"))
        .expect("the report came back from the VM");
    let report: serde_json::Value = serde_json::from_str(&json).expect("the report is JSON");
    let verdict = |id: &str| {
        report["rules"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["id"] == id))
            .map(|r| r["verdict"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    for id in ["PXY-1", "PXY-2", "PXY-3", "PXY-6", "PXY-12", "DNS-2"] {
        assert_eq!(verdict(id), "pass", "{id} in the VM:\n{json}");
    }
    assert!(status.success(), "signpost-conform exited {status}");
    assert_eq!(report["certified"], true);
    for ext in ["junit.xml", "html"] {
        assert!(
            out.join(format!("test-signpost-ipvs.{ext}")).is_file(),
            "{ext} report"
        );
    }
}
