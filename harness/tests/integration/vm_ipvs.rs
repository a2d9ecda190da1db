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
        (
            PathBuf::from(env!("CARGO_BIN_EXE_signpost-echo")),
            "/test/signpost-echo",
        ),
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
    for section in ["genl", "dataplane", "restart", "drain", "cleanup"] {
        assert!(
            out.console
                .lines()
                .any(|l| l.trim() == format!("PASS {section}")),
            "section {section} did not pass:\n{}",
            vm::tail(&out.console, 80)
        );
    }
}
